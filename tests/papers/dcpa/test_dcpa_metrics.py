"""Retrieval metrics against a plain reference loop (SCAN's evaluation.i2t/t2i with a stable sort),
ties included; COCO 5-fold averaging with RSUM = sum of averaged recalls; the blocked evaluator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmbench.papers.dcpa.evaluate import blocked_all_pairs
from mmbench.metrics.retrieval import caption_ranks, fold_metrics, recall_metrics, retrieval_metrics


def reference(s_i2t: np.ndarray, s_t2i: np.ndarray) -> dict[str, float]:
    n = s_i2t.shape[0]
    i2t = np.zeros(n)
    for i in range(n):
        order = np.argsort(-s_i2t[i], kind="stable")
        i2t[i] = min(np.where(order == j)[0][0] for j in range(5 * i, 5 * i + 5))
    t2i = np.zeros(5 * n)
    for j in range(5 * n):
        order = np.argsort(-s_t2i[:, j], kind="stable")
        t2i[j] = np.where(order == j // 5)[0][0]
    out = {}
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k in (1, 5, 10):
            out[f"{name}_r{k}"] = 100.0 * len(np.where(ranks < k)[0]) / len(ranks)
        out[f"{name}_medr"] = np.floor(np.median(ranks)) + 1
    out["rsum"] = sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    return out


@pytest.mark.parametrize("levels", [None, 3])  # continuous scores, and scores from 3 values (many ties)
def test_recall_matches_reference_loop(levels):
    rng = np.random.default_rng(0)
    for trial in range(4):
        n = 12
        s_i2t = rng.normal(size=(n, 5 * n)).astype(np.float32)
        s_t2i = rng.normal(size=(n, 5 * n)).astype(np.float32)
        if levels:
            s_i2t, s_t2i = np.round(s_i2t * levels / 4) , np.round(s_t2i * levels / 4)
        # plant some strong positives so that recalls are not all tiny
        for i in range(0, n, 2):
            s_i2t[i, 5 * i + trial % 5] += 3
            s_t2i[i, 5 * i : 5 * i + 5] += 3
        ours = retrieval_metrics(torch.from_numpy(s_i2t), torch.from_numpy(s_t2i))
        ref = reference(s_i2t, s_t2i)
        for key, value in ref.items():
            assert ours[key] == pytest.approx(value), (key, levels, trial)


def test_ties_rank_lower_index_first():
    s = torch.zeros(2, 10)  # every score equal: stable order is the index order
    i2t, t2i = caption_ranks(s, s)
    assert i2t.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]  # image 1's captions sit behind image 0's
    assert t2i.tolist() == [0] * 5 + [1] * 5
    m = recall_metrics(i2t, t2i)
    assert m["i2t_r1"] == 50.0 and m["i2t_r5"] == 50.0 and m["i2t_r10"] == 100.0 and m["t2i_r1"] == 50.0


def test_five_fold_averages_each_metric_and_rsum_is_sum_of_averaged_recalls():
    rng = np.random.default_rng(1)
    n, fold = 20, 4
    s_i2t, s_t2i = rng.normal(size=(n, 5 * n)), rng.normal(size=(n, 5 * n))
    for i in range(n):
        s_i2t[i, 5 * i] += 1.5
        s_t2i[i, 5 * i + 1] += 1.5
    ours = fold_metrics(torch.tensor(s_i2t), torch.tensor(s_t2i), fold_images=fold)
    folds = [reference(s_i2t[f * fold : (f + 1) * fold, 5 * f * fold : 5 * (f + 1) * fold],
                       s_t2i[f * fold : (f + 1) * fold, 5 * f * fold : 5 * (f + 1) * fold]) for f in range(n // fold)]
    for key in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"):
        assert ours[f"fold1k_{key}"] == pytest.approx(np.mean([f[key] for f in folds]))
    averaged = sum(np.mean([f[k] for f in folds]) for k in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"))
    assert ours["fold1k_rsum"] == pytest.approx(averaged)
    # SCAN's printed "rsum" (6 × the mean i2t recall) is a different number on this case
    assert ours["fold1k_rsum"] != pytest.approx(2 * (ours["fold1k_i2t_r1"] + ours["fold1k_i2t_r5"] + ours["fold1k_i2t_r10"]))


def test_blocked_all_pairs_equals_unblocked_exactly():
    torch.manual_seed(0)
    images, captions = torch.randn(11, 3, 8), torch.randn(23, 4, 8)

    def encode(indices):
        return captions[indices]

    def score(i0, i1, caps):  # a non-linear pairwise function, like the Inter-PAM's (broadcast, no BLAS:
        # each pair's value then does not depend on the block shape, so equality can be exact)
        pair = (images[i0:i1, None, :, None, :] * caps[None, :, None, :, :]).sum(-1)
        return pair.amax(-1).mean(-1), torch.tanh(pair).sum((-1, -2))

    whole = blocked_all_pairs(11, 23, encode, score, image_block=11, caption_block=23)
    blocked = blocked_all_pairs(11, 23, encode, score, image_block=4, caption_block=6, progress=True)
    shuffled = blocked_all_pairs(11, 23, encode, score, image_block=4, caption_block=6,
                                 caption_order=torch.randperm(23).tolist(), device=torch.device("cpu"))
    for a, b, c in zip(whole, blocked, shuffled):
        assert torch.equal(a, b) and torch.equal(a, c)  # any caption order gives the file-order matrix
    with pytest.raises(ValueError, match="permutation"):
        blocked_all_pairs(11, 23, encode, score, 4, 6, caption_order=[0] * 23)
