"""Metrics of class scores: top-k accuracy, mean average precision, per-class accuracy and the
confusion matrix (numpy only; what evaluation, ensembles, the report and the statistics share).
"""

from __future__ import annotations

import numpy as np


def topk_accuracy(scores: np.ndarray, targets: np.ndarray, k: int) -> float:
    """Percentage of rows whose target is among the k highest scores (ties: lowest index)."""
    if len(targets) == 0:
        return float("nan")
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float((top == targets[:, None]).any(axis=1).mean() * 100)


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Mean over classes with a positive of AP (mean precision at each positive, by score)."""
    aps = []
    for c in range(scores.shape[1]):
        positives = targets[:, c] > 0
        if not positives.any():
            continue
        order = np.argsort(-scores[:, c], kind="stable")
        hits = positives[order]
        precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        aps.append(precision_at[hits].mean())
    return float(np.mean(aps) * 100) if aps else float("nan")


def per_class_accuracy(scores: np.ndarray, targets: np.ndarray, num_classes: int) -> np.ndarray:
    """Top-1 accuracy (%) of each class; NaN for classes absent from `targets`."""
    pred = scores.argmax(axis=1)
    acc = np.full(num_classes, np.nan)
    for c in range(num_classes):
        mask = targets == c
        if mask.any():
            acc[c] = (pred[mask] == c).mean() * 100
    return acc


def confusion_matrix(scores: np.ndarray, targets: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts [true class, predicted class]."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (targets, scores.argmax(axis=1)), 1)
    return matrix


def summarize(scores: np.ndarray, targets: np.ndarray, multilabel: bool) -> dict[str, float]:
    if multilabel:
        return {"mAP": mean_average_precision(scores, targets)}
    return {"top1": topk_accuracy(scores, targets, 1), "top5": topk_accuracy(scores, targets, 5)}
