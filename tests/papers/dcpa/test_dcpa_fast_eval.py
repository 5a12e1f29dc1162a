"""Issue 16: the fast evaluation path (length-sorted caption blocks, the `batched` pair attention, score
matrices kept on the device) ranks exactly like the reference path; the bf16 path keeps float32 matrices;
SCAN's protocol details ([CLS]/[SEP], the first 1000 dev images) and the at-chance warning."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmbench.engine.precision import float64_compute
from mmbench.engine.trainer import build_session, fit
from mmbench.metrics.retrieval import caption_ranks, chance_rsum, retrieval_metrics
from mmbench.papers.dcpa.attention import MultiHeadAttention, set_pair_kernel
from mmbench.papers.dcpa.evaluate import score_all_pairs
from mmbench.papers.dcpa.model import DCPADims, DCPAModel
from mmbench.papers.dcpa.text import WordFeatures
from mmbench.recipes.loader import resolve

PAPER = DCPADims()  # 2048-d regions → 256, 16 heads, FFN 1024, 768-d BERT words


@pytest.fixture(autouse=True)
def _dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("MMBENCH_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("MMBENCH_RUNS", str(tmp_path / "runs"))


def _captions(n: int, dim: int, rng: np.random.Generator, low: int = 3, high: int = 30, dtype=np.float32) -> WordFeatures:
    lengths = rng.integers(low, high, n)
    offset = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return WordFeatures(rng.standard_normal((int(lengths.sum()), dim)).astype(dtype), offset, lengths, "keep")


def _model(dims: DCPADims, dtype=torch.float32) -> DCPAModel:
    torch.manual_seed(0)
    model = DCPAModel(dims, top_k=10).to(dtype).eval()
    model.stage.fill_(2)  # the full model: Intra-PAM + both Inter-PAM branches
    return model


def _score(model, regions, captions, n_images, n_captions, kernel, fast, blocks, precision="fp32"):
    set_pair_kernel(model, kernel)
    with torch.no_grad():
        return score_all_pairs(model, lambda idx: regions[idx], captions, n_images, n_captions, *blocks, fast=fast,
                               precision=precision)


def test_batched_pair_kernel_equals_broadcast_at_paper_width(monkeypatch):
    rng = np.random.default_rng(0)
    calls = []
    real = MultiHeadAttention._attend_pairs
    monkeypatch.setattr(MultiHeadAttention, "_attend_pairs", lambda self, *a: calls.append(1) or real(self, *a))
    with float64_compute():  # as smoke runs compute: the two kernels then differ by float64 rounding only
        model = _model(PAPER, torch.float64)
        regions = torch.randn(3, 36, 2048)
        captions = _captions(15, 768, rng)  # 3..29 words: every block has padding
        reference = _score(model, regions, captions, 3, 15, "broadcast", False, (2, 4))
        assert not calls  # the reference never takes the batched kernel
        fast = _score(model, regions, captions, 3, 15, "batched", True, (2, 4))
    assert len(calls) == 2 * 2 * 4  # both Inter-PAM branches of every block
    for a, b in zip(reference, fast):
        assert torch.equal(a, b)  # the float32 matrices of float64 scores
    assert not torch.equal(reference[0], reference[1])  # decoupled: two different matrices were compared


@pytest.mark.slow  # 52 CPU s: 5M pairs through both paths
def test_fast_and_reference_evaluation_rank_identically_on_1k_images_by_5k_captions():
    rng = np.random.default_rng(1)
    # small width (the paper-width equality is the test above), 5M pairs of 3–7 words (padding in every
    # block): 33 + 19 CPU s for the two paths (3–15 words took twice that)
    dims = DCPADims(region_dim=4, word_dim=4, dim=8, heads=2, ffn_dim=16, dropout=0.0, filters=4)
    model = _model(dims)
    n_images, n_captions = 1000, 5000
    regions = torch.randn(n_images, 4, 4)
    captions = _captions(n_captions, 4, rng, high=8)
    reference = _score(model, regions, captions, n_images, n_captions, "broadcast", False, (50, 250))
    fast = _score(model, regions, captions, n_images, n_captions, "batched", True, (40, 200))
    assert [m.device.type for m in fast] == ["cpu", "cpu"] and all(m.dtype == torch.float32 for m in fast)
    for a, b in zip(caption_ranks(*reference), caption_ranks(*fast)):
        np.testing.assert_array_equal(a, b)  # every rank, ties broken the same way
    ours, theirs = retrieval_metrics(*fast), retrieval_metrics(*reference)
    assert ours == theirs and ours["rsum"] > 0


def test_bf16_evaluation_computes_in_bf16_and_keeps_float32_matrices():
    rng = np.random.default_rng(2)
    model = _model(PAPER)
    regions, captions = torch.randn(6, 36, 2048), _captions(30, 768, rng)
    fp32 = _score(model, regions, captions, 6, 30, "batched", True, (4, 8))
    bf16 = _score(model, regions, captions, 6, 30, "batched", True, (4, 8), precision="bf16")  # the opt-in
    for a, b in zip(fp32, bf16):
        assert b.dtype == torch.float32 and torch.isfinite(b).all()
        difference = (a - b).abs().max().item()
        # bf16 keeps 8 significand bits (relative 2^-9 ≈ 0.002 a rounding); scores are weighted means of
        # cosines in [-1, 1] after three layers, so a few roundings' worth, never the scores' own spread
        assert 1e-5 < difference < 0.05, difference
        assert difference < 0.5 * (a.max() - a.min()).item()


def test_special_tokens_are_dropped_by_default_and_kept_when_asked():
    features = np.arange(10, dtype=np.float32)[:, None].repeat(2, 1)  # token t has features (t, t)
    offset, length = np.array([0, 5, 7]), np.array([5, 2, 3])  # [CLS] w w w [SEP] | [CLS] [SEP] | [CLS] w [SEP]
    drop = WordFeatures(features, offset, length)
    assert drop.lengths() == [3, 2, 1]  # a caption without words keeps its two tokens
    words, mask = drop.batch([0, 1, 2], torch.device("cpu"))
    assert words[0, :, 0].tolist() == [1, 2, 3] and words[2, 0, 0].item() == 8 and mask.sum(1).tolist() == [3, 2, 1]
    keep = WordFeatures(features, offset, length, "keep")
    assert keep.lengths() == [5, 2, 3] and keep.batch([0], torch.device("cpu"))[0][0, :, 0].tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="special_tokens"):
        WordFeatures(features, offset, length, "strip")


def test_recipes_read_words_only_and_validate_on_the_first_1000_dev_images():
    paper = resolve("dcpa/flickr30k").recipe.model
    assert paper["special_tokens"] == "drop" and paper["dev_images"] == 1000
    session = build_session(resolve("dcpa/flickr30k-intra", ["model.dev_images=3"], smoke=True), seed=0)
    assert session.method.examples["dev"] == list(range(15))  # SCAN: the first images' captions only
    kept = build_session(resolve("dcpa/flickr30k-intra", ["model.special_tokens=keep"], smoke=True), seed=0)
    dropped = session.method.words["dev"].lengths()
    assert [n + 2 for n in dropped] == kept.method.words["dev"].lengths()  # tiny-bert: [CLS] … [SEP]


def test_chance_rsum_matches_random_scores():
    mean, std = chance_rsum(16)
    rng = np.random.default_rng(3)
    samples = [retrieval_metrics(torch.tensor(rng.random((16, 80))))["rsum"] for _ in range(400)]
    assert abs(np.mean(samples) - mean) < 4 * np.std(samples) / np.sqrt(len(samples))
    assert std >= np.std(samples)  # an upper bound on the spread
    assert chance_rsum(1000)[0] == pytest.approx(3.2, abs=0.1)  # ≈ 2 · (1 + 5 + 10) / 1000 · 100


def test_training_warns_when_stage_one_does_not_learn():
    lines = []
    # lr ≈ 0: the random model never leaves chance (the learning smoke run, test_dcpa_method, logs none)
    result = fit(resolve("dcpa/flickr30k-intra", ["train.epochs=3", "model.stage1_epochs=3", "train.optimizers.main.lr=1e-12"],
                         smoke=True), seed=0, log=lines.append)
    log = [json.loads(line) for line in open(f"{result['run_dir']}/log.jsonl")]
    assert "warnings" not in log[0] and "warnings" not in log[2]  # checked once, after the stage's 2nd epoch
    warning = log[1]["warnings"][0]
    assert "stage 1 not learning" in warning and "first epoch" in warning and "max_violation_warmup_epochs" in warning
    assert sum("warning: stage 1" in line for line in lines) == 1


def _stage_warnings(stage1: list[float], stage2: list[float], overrides=()) -> list[list[str]]:
    method = build_session(resolve("dcpa/flickr30k", ["model.stage1_epochs=2", "train.epochs=4", *overrides], smoke=True),
                           seed=0).method
    out = []
    for epoch, rsum in enumerate(stage1 + stage2):
        method.stage = 1 if epoch < len(stage1) else 2
        out.append(method.epoch_warnings(epoch, {"rsum": rsum}))
    return out


def test_not_learning_statistic_per_stage():
    chance = chance_rsum(16)[0]  # smoke dev: 16 images, chance ≈ 184 (+ 0.05 of the headroom: ≈ 205)
    # stage 1 against random scores and its own first epoch
    assert _stage_warnings([300.0, 420.0], [430.0, 440.0]) == [[]] * 4
    near_chance = _stage_warnings([chance - 5.0, chance + 10.0], [430.0, 440.0])[1]
    assert "random scores" in near_chance[0] and "first epoch" not in near_chance[0]  # moved, but not above chance
    still = _stage_warnings([300.0, 290.0], [430.0, 440.0])[1]
    assert "first epoch" in still[0] and "random scores" not in still[0]  # above chance, but not moving
    # stage 2 against the stage-1 model it started from (400): better learns, no better does not —
    # even though its RSUM is far above chance (the old check could not fire in stage 2)
    flat = _stage_warnings([300.0, 400.0], [380.0, 399.0])
    assert flat[:3] == [[]] * 3 and "stage 2 not learning" in flat[3][0] and "stage-1 model" in flat[3][0]
    assert _stage_warnings([300.0, 400.0], [380.0, 401.0])[3] == []
    assert _stage_warnings([300.0, 400.0], [380.0, 399.0], ["model.not_learning_epochs=0"]) == [[]] * 4


def test_benchmark_times_both_paths_in_one_run_and_checks_they_agree(tmp_path, monkeypatch):
    import runpy
    import sys
    from pathlib import Path

    out = tmp_path / "dcpa_eval.json"
    script = Path(__file__).parents[3] / "benchmarks" / "dcpa_eval.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--images", "2", "--captions", "10", "--fast-blocks", "1", "4",
                                      "--bf16", "--out", str(out)])
    runpy.run_path(str(script), run_name="__main__")
    result = json.loads(out.read_text())
    assert set(result["paths"]) == {"reference", "fast", "fast_bf16"}
    fast = result["paths"]["fast"]
    assert fast["same_recalls_as_reference"] and fast["max_abs_score_difference_vs_reference"] < 1e-5
    assert fast["speedup_vs_reference"] > 0 and result["paths"]["reference"]["pair_attention"] == "broadcast"
