"""The overall score over tasks and the per-class report of a classification task (each task's
own metric is its kind's: mtbert_jax/tasks.py)."""

from __future__ import annotations

from typing import Mapping

import numpy as np


def overall_score(metrics: Mapping[str, Mapping[str, float]]) -> float:
    """(SST acc + Quora acc + (STS r + 1) / 2) / 3, averaged over the tasks present (CFIMDB's
    accuracy counts like SST's)."""
    terms = [(m["pearson"] + 1) / 2 if "pearson" in m else m["accuracy"] for m in metrics.values()]
    return float(np.mean(terms))


def classification_report(predicted: np.ndarray, gold: np.ndarray, num_classes: int) -> dict:
    """Per-class precision, recall, F1 and support, and the confusion matrix (rows: gold)."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (gold.astype(int), predicted.astype(int)), 1)
    per_class = {}
    for c in range(num_classes):
        tp = matrix[c, c]
        precision = tp / matrix[:, c].sum() if matrix[:, c].sum() else 0.0
        recall = tp / matrix[c].sum() if matrix[c].sum() else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[str(c)] = {"precision": float(precision), "recall": float(recall), "f1": float(f1),
                             "support": int(matrix[c].sum())}
    macro_f1 = float(np.mean([v["f1"] for v in per_class.values()]))
    return {"per_class": per_class, "macro_f1": macro_f1, "confusion_matrix": matrix.tolist()}
