"""Micro precision / recall / F1 of exact (span, polarity) matches, ×100 (DTCA §3.1, released `cal_f1`).

An aspect counts as correct only when both its word span and its polarity equal a gold one. Counts
are summed over the whole split before dividing (micro averaging); F1 = 2PR/(P+R), 0 when P+R = 0.
Gold aspects that the model can never predict (cut off by truncation) stay in the recall denominator.
"""

from __future__ import annotations

from typing import Hashable, Iterable, Sequence


def span_counts(gold: Iterable[Hashable], pred: Iterable[Hashable]) -> tuple[int, int, int]:
    """(correct, predicted, gold) for one sentence; each gold item is counted, matches are set-wise."""
    gold, pred = list(gold), list(pred)
    correct = len(set(gold) & set(pred))
    return correct, len(set(pred)), len(gold)


def span_f1(gold: Sequence[Iterable[Hashable]], pred: Sequence[Iterable[Hashable]]) -> dict[str, float]:
    """Micro P/R/F1 (×100) over sentences; `gold[i]`/`pred[i]` are sentence i's (span, polarity) items."""
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sentences but {len(pred)} predicted")
    correct = predicted = total = 0
    for g, p in zip(gold, pred):
        c, n_pred, n_gold = span_counts(g, p)
        correct, predicted, total = correct + c, predicted + n_pred, total + n_gold
    precision = correct / predicted if predicted else 0.0
    recall = correct / total if total else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": 100.0 * precision, "recall": 100.0 * recall, "f1": 100.0 * f1,
            "correct": float(correct), "predicted": float(predicted), "gold": float(total)}
