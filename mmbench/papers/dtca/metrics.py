"""Micro precision / recall / F1 of exact (span, polarity) matches, ×100 (DTCA §3.1, released `cal_f1`).

An aspect counts as correct only when both its word span and its polarity equal a gold one. Counts
are summed over the whole split before dividing (micro averaging); F1 = 2PR/(P+R), 0 when P+R = 0.
Gold aspects that the model can never predict (cut off by truncation) stay in the recall denominator.
`gold_as_set`: a sentence's gold items counted once each, as the released `cal_f1` does
(`set(p_pairs[i])`); otherwise an aspect annotated twice (two identical TomBERT rows) counts twice.
"""

from __future__ import annotations

from typing import Hashable, Iterable, Sequence


def span_counts(gold: Iterable[Hashable], pred: Iterable[Hashable], gold_as_set: bool = False) -> tuple[int, int, int]:
    """(correct, predicted, gold) for one sentence; each gold item is counted (once per distinct item
    with `gold_as_set`), matches are set-wise."""
    gold, pred = list(gold), list(pred)
    correct = len(set(gold) & set(pred))
    return correct, len(set(pred)), len(set(gold)) if gold_as_set else len(gold)


def span_f1(gold: Sequence[Iterable[Hashable]], pred: Sequence[Iterable[Hashable]], gold_as_set: bool = False) -> dict[str, float]:
    """Micro P/R/F1 (×100) over sentences; `gold[i]`/`pred[i]` are sentence i's (span, polarity) items."""
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sentences but {len(pred)} predicted")
    correct = predicted = total = 0
    for g, p in zip(gold, pred):
        c, n_pred, n_gold = span_counts(g, p, gold_as_set)
        correct, predicted, total = correct + c, predicted + n_pred, total + n_gold
    precision = correct / predicted if predicted else 0.0
    recall = correct / total if total else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": 100.0 * precision, "recall": 100.0 * recall, "f1": 100.0 * f1,
            "correct": float(correct), "predicted": float(predicted), "gold": float(total)}
