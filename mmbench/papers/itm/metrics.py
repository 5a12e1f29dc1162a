"""ITM's matching labels and metrics: the IoU soft alignment label (§4.3), image-target relevance
Acc/P/R/F1 (Table 4) and object-target alignment KL and R@k (Table 5), ×100 where percentages."""

from __future__ import annotations

import numpy as np

from mmbench.metrics.classification import classification_metrics


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU of every box of `a` [N, 4] with every box of `b` [M, 4], boxes as (x1, y1, x2, y2) → [N, M]."""
    a, b = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4), np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    area_a = (a[:, 2] - a[:, 0]).clip(0) * (a[:, 3] - a[:, 1]).clip(0)
    area_b = (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)
    w = (np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])).clip(0)
    h = (np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])).clip(0)
    inter = w * h
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def alignment_target(proposals: np.ndarray, gt_boxes: list, related: bool, threshold: float = 0.5,
                     inclusive: bool = False, first_box_only: bool = False) -> np.ndarray:
    """GT alignment distribution A over the proposals (§4.3): IoU of each proposal with the GT box,
    kept if > threshold (paper; ≥ with `inclusive`, as the released code), 0 otherwise, renormalised.
    A zero vector when the target is unrelated, has no box, or no proposal passes the threshold.
    Several annotated boxes: each proposal keeps its best IoU over them (`first_box_only`: the
    released code's max_GT_boxes=1)."""
    scores = np.zeros(len(proposals), dtype=np.float32)
    if not related or not gt_boxes:
        return scores
    boxes = gt_boxes[:1] if first_box_only else gt_boxes
    iou = box_iou(proposals, np.asarray(boxes)).max(axis=1)
    keep = iou >= threshold if inclusive else iou > threshold
    kept = np.where(keep, iou, 0.0)
    total = kept.sum()
    return (kept / total).astype(np.float32) if total > 0 else scores


def relevance_metrics(labels: list[int], preds: list[int]) -> dict[str, float]:
    """Table 4: accuracy and macro precision/recall/F1 over related/unrelated (sklearn's macro)."""
    base = classification_metrics(labels, preds, 2)
    return {"relevance_accuracy": base["accuracy"], "relevance_precision": base["macro_precision"],
            "relevance_recall": base["macro_recall"], "relevance_f1": base["macro_f1"]}


def kl_divergence(target: np.ndarray, dist: np.ndarray, eps: float = 1e-12) -> float:
    """KL(A || D) = Σ_i A_i log(A_i / D_i), with 0·log 0 = 0 (the quantity of eq 6 and Table 5)."""
    target, dist = np.asarray(target, dtype=np.float64), np.asarray(dist, dtype=np.float64)
    on = target > 0
    return float((target[on] * (np.log(target[on]) - np.log(np.maximum(dist[on], eps)))).sum())


def alignment_example(target: np.ndarray, dist: np.ndarray, ks=(1, 3, 5)) -> dict:
    """Per-example alignment record (only meaningful when `target` is a distribution)."""
    order = np.argsort(-np.asarray(dist), kind="stable")
    gold = int(np.argmax(target))
    return {"kl": kl_divergence(target, dist), **{f"hit@{k}": bool(gold in order[:k]) for k in ks}}


def alignment_metrics(records: list[dict], ks=(1, 3, 5)) -> dict[str, float]:
    """Table 5: mean KL(A||D) and R@k = share of examples whose top GT proposal (argmax A) is among
    the k highest-weighted proposals of D, over examples with a non-zero A."""
    if not records:
        return {}  # no related example with a GT alignment in this split
    out = {"alignment_kl": float(np.mean([r["kl"] for r in records]))}
    for k in ks:
        out[f"alignment_r{k}"] = 100.0 * float(np.mean([r[f"hit@{k}"] for r in records]))
    out["alignment_examples"] = float(len(records))
    return out
