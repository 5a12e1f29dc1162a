"""Classification metrics through scikit-learn, as percentages (×100) like the papers print them.

macro-F1 is sklearn's mean of per-class F1 (`precision_recall_fscore_support(average='macro')`, the
convention of the TomBERT-lineage released code), not 2PR/(P+R) of the macro precision and recall."""

from __future__ import annotations

from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support


def classification_metrics(labels: list[int], preds: list[int], n_classes: int) -> dict[str, float]:
    classes = list(range(n_classes))
    precision, recall, macro_f1, _ = precision_recall_fscore_support(
        labels, preds, labels=classes, average="macro", zero_division=0
    )
    return {
        "accuracy": 100.0 * accuracy_score(labels, preds),
        "macro_f1": 100.0 * macro_f1,
        "macro_precision": 100.0 * precision,
        "macro_recall": 100.0 * recall,
        "weighted_f1": 100.0 * f1_score(labels, preds, labels=classes, average="weighted", zero_division=0),
    }
