"""Task metrics in numpy (no torch, no scipy): accuracy, binary F1, Pearson, Spearman."""
from __future__ import annotations

from typing import Callable

import numpy as np


def accuracy(pred: np.ndarray, gold: np.ndarray) -> float:
    return float(np.mean(np.asarray(pred) == np.asarray(gold)))


def f1(pred: np.ndarray, gold: np.ndarray, positive: int = 1) -> float:
    """Binary F1 of the positive class (GLUE's MRPC metric)."""
    pred, gold = np.asarray(pred), np.asarray(gold)
    tp = float(np.sum((pred == positive) & (gold == positive)))
    fp = float(np.sum((pred == positive) & (gold != positive)))
    fn = float(np.sum((pred != positive) & (gold == positive)))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def pearson(pred: np.ndarray, gold: np.ndarray) -> float:
    x, y = np.asarray(pred, dtype=np.float64), np.asarray(gold, dtype=np.float64)
    x, y = x - x.mean(), y - y.mean()
    denom = np.sqrt(np.sum(x * x) * np.sum(y * y))
    return 0.0 if denom == 0 else float(np.sum(x * y) / denom)


def _ranks(a: np.ndarray) -> np.ndarray:
    """Ranks with ties given their average rank (as scipy.stats.rankdata)."""
    a = np.asarray(a, dtype=np.float64)
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    # Boundaries of runs of equal values.
    starts = np.concatenate(([True], sorted_a[1:] != sorted_a[:-1]))
    run_id = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    counts = np.diff(np.append(first, len(a)))
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks = np.empty(len(a))
    ranks[order] = avg[run_id]
    return ranks


def spearman(pred: np.ndarray, gold: np.ndarray) -> float:
    return pearson(_ranks(pred), _ranks(gold))


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "pearson": pearson,
    "spearman": spearman,
}


def score(metric: str, logits: np.ndarray, gold: np.ndarray, kind: str) -> float:
    """Score of [N, C] outputs against gold labels (class ids) or gold scores (regression)."""
    pred = logits[:, 0] if kind == "regression" else np.asarray(logits).argmax(axis=-1)
    return METRICS[metric](pred, gold)
