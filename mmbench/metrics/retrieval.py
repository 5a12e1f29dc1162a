"""Image–sentence retrieval metrics (SCAN / VSE++ protocol), as percentages.

Scores are [N_images, N_captions] with 5 consecutive captions per image (caption j ↔ image j // 5).
- image→text (i2t): an image's rank is the best rank of any of its 5 captions (a hit-rate, "any of 5");
- text→image (t2i): a caption's rank is the rank of its one image;
- R@K = 100 · fraction of queries with rank < K; RSUM = the six recalls summed;
- a decoupled model scores i2t and t2i with different matrices (`s_i2t`, `s_t2i`);
- COCO 1K: 5 folds of `testall` (fold f = images [f·1000, (f+1)·1000), their captions), each metric
  averaged over folds and RSUM = the sum of the averaged recalls (not SCAN's printed `mean[10]·6`).

Ties are broken like a stable descending sort (`argsort(-s, kind="stable")`): among equal scores the
lower index ranks first, so the result never depends on the sort algorithm.
"""

from __future__ import annotations

import numpy as np
import torch

KS = (1, 5, 10)


def _positions(scores: torch.Tensor, targets: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Position of `scores[q, targets[q, t]]` in row q sorted descending (stable): the number of
    strictly greater scores plus the number of equal scores at lower indices. [Q, T] → [Q, T]."""
    out = torch.empty(targets.shape, dtype=torch.long)
    columns = torch.arange(scores.shape[1])
    for start in range(0, scores.shape[0], chunk):
        rows = scores[start : start + chunk]
        tgt = targets[start : start + chunk]
        value = rows.gather(1, tgt)[:, :, None]  # [q, T, 1]
        greater = (rows[:, None, :] > value).sum(-1)
        tied_before = ((rows[:, None, :] == value) & (columns[None, None, :] < tgt[:, :, None])).sum(-1)
        out[start : start + chunk] = greater + tied_before
    return out


def caption_ranks(s_i2t: torch.Tensor, s_t2i: torch.Tensor, per_image: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Per caption j: (rank of caption j in its image's i2t query, rank of its image in its t2i query)."""
    s_i2t, s_t2i = torch.as_tensor(s_i2t).float().cpu(), torch.as_tensor(s_t2i).float().cpu()
    n_images, n_captions = s_i2t.shape
    if n_captions != per_image * n_images or s_t2i.shape != s_i2t.shape:
        raise ValueError(f"scores {tuple(s_i2t.shape)}/{tuple(s_t2i.shape)}: expected [N, {per_image}N]")
    own = torch.arange(n_captions).view(n_images, per_image)
    i2t = _positions(s_i2t, own).reshape(-1)
    t2i = _positions(s_t2i.t().contiguous(), (torch.arange(n_captions) // per_image)[:, None])[:, 0]
    return i2t.numpy(), t2i.numpy()


def recall_metrics(i2t_caption_rank: np.ndarray, t2i_rank: np.ndarray, per_image: int = 5, prefix: str = "") -> dict[str, float]:
    """Metrics from per-caption ranks (see `caption_ranks`); the i2t rank of an image is the min over its captions."""
    i2t = np.asarray(i2t_caption_rank).reshape(-1, per_image).min(1)
    t2i = np.asarray(t2i_rank)
    out = {}
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k in KS:
            out[f"{prefix}{name}_r{k}"] = 100.0 * float(np.mean(ranks < k))
        out[f"{prefix}{name}_medr"] = float(np.floor(np.median(ranks)) + 1)
        out[f"{prefix}{name}_meanr"] = float(ranks.mean() + 1)
    out[f"{prefix}rsum"] = rsum(out, prefix)
    return out


def rsum(metrics: dict[str, float], prefix: str = "") -> float:
    return sum(metrics[f"{prefix}{name}_r{k}"] for name in ("i2t", "t2i") for k in KS)


def retrieval_metrics(s_i2t, s_t2i=None, per_image: int = 5, prefix: str = "") -> dict[str, float]:
    s_t2i = s_i2t if s_t2i is None else s_t2i
    return recall_metrics(*caption_ranks(s_i2t, s_t2i, per_image), per_image=per_image, prefix=prefix)


def fold_metrics(s_i2t, s_t2i=None, fold_images: int = 1000, per_image: int = 5, prefix: str = "fold1k_") -> dict[str, float]:
    """COCO 1K protocol: metrics on each diagonal fold, averaged; RSUM = sum of averaged recalls."""
    s_t2i = s_i2t if s_t2i is None else s_t2i
    n_images = s_i2t.shape[0]
    if n_images % fold_images:
        raise ValueError(f"{n_images} images do not split into folds of {fold_images}")
    folds = []
    for f in range(n_images // fold_images):
        rows = slice(f * fold_images, (f + 1) * fold_images)
        cols = slice(f * fold_images * per_image, (f + 1) * fold_images * per_image)
        folds.append(retrieval_metrics(s_i2t[rows, cols], s_t2i[rows, cols], per_image))
    return average_folds(folds, prefix)


def average_folds(folds: list[dict[str, float]], prefix: str = "fold1k_") -> dict[str, float]:
    out = {f"{prefix}{key}": float(np.mean([f[key] for f in folds])) for key in folds[0] if key != "rsum"}
    out[f"{prefix}rsum"] = rsum(out, prefix)
    return out


def chance_rsum(n_images: int, per_image: int = 5) -> tuple[float, float]:
    """RSUM of random scores on n_images × (per_image · n_images) pairs: (expected value, an upper bound
    on its standard deviation). i2t R@K: one of an image's `per_image` captions among the first K of all
    N·per_image, 1 − C(N·p − p, K) / C(N·p, K); t2i R@K = K / N. The bound adds the six recalls'
    standard deviations (as if perfectly correlated)."""
    n_captions = n_images * per_image
    mean = std = 0.0
    for k in KS:
        miss = 1.0  # C(n_captions − per_image, k) / C(n_captions, k), as a product
        for j in range(min(k, n_captions)):
            miss *= max(0.0, (n_captions - per_image - j) / (n_captions - j))
        for p, queries in ((1.0 - miss, n_images), (min(1.0, k / n_images), n_captions)):
            mean += 100.0 * p
            std += 100.0 * float(np.sqrt(p * (1.0 - p) / queries))
    return mean, std
