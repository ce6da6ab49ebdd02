"""Task metrics: accuracy, binary F1 (scikit-learn), Pearson and Spearman (scipy).

scipy and scikit-learn come with the `eval` extra (`pip install 'berxit-rt[eval]'`); they are
imported only when a metric that needs them is computed, so running a model never loads them.

`score_batch` scores B resamples at once ([B, n] predictions and gold values), as calibration's
bootstrap needs; tests check it against the one-sample metrics."""
from __future__ import annotations

from typing import Callable

import numpy as np

EXTRA = "eval"


def _need(module: str):
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        pkg = {"scipy.stats": "scipy", "sklearn.metrics": "scikit-learn"}.get(module, module)
        raise ImportError(f"this metric needs {pkg}: install the '{EXTRA}' extra "
                          f"(pip install 'berxit-rt[{EXTRA}]') or pip install {pkg}.") from None


def accuracy(pred: np.ndarray, gold: np.ndarray) -> float:
    return float(np.mean(np.asarray(pred) == np.asarray(gold)))


def f1(pred: np.ndarray, gold: np.ndarray, positive: int = 1) -> float:
    """Binary F1 of the positive class (GLUE's MRPC metric); 0 when nothing is predicted positive."""
    m = _need("sklearn.metrics")
    return float(m.f1_score(np.asarray(gold), np.asarray(pred), pos_label=positive, average="binary",
                            labels=[positive], zero_division=0.0))


def pearson(pred: np.ndarray, gold: np.ndarray) -> float:
    x, y = np.asarray(pred, dtype=np.float64), np.asarray(gold, dtype=np.float64)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0  # a constant column has no correlation (scipy warns and returns NaN)
    return float(_need("scipy.stats").pearsonr(x, y).statistic)


def spearman(pred: np.ndarray, gold: np.ndarray) -> float:
    x, y = np.asarray(pred, dtype=np.float64), np.asarray(gold, dtype=np.float64)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    return float(_need("scipy.stats").spearmanr(x, y).statistic)


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "pearson": pearson,
    "spearman": spearman,
}


def predictions(logits: np.ndarray, kind: str) -> np.ndarray:
    """[N, C] outputs -> class ids [N] (classification) or values [N] (regression)."""
    logits = np.asarray(logits)
    return logits[:, 0] if kind == "regression" else logits.argmax(axis=-1)


def score(metric: str, logits: np.ndarray, gold: np.ndarray, kind: str) -> float:
    """Score of [N, C] outputs against gold labels (class ids) or gold scores (regression)."""
    return METRICS[metric](predictions(logits, kind), gold)


def _rowwise_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    st = _need("scipy.stats")
    out = np.zeros(x.shape[0])
    ok = (np.ptp(x, axis=1) > 0) & (np.ptp(y, axis=1) > 0)
    if ok.any():
        out[ok] = st.pearsonr(x[ok], y[ok], axis=1).statistic
    return out


def prepare_gold(metric: str, gold: np.ndarray) -> np.ndarray:
    """Gold [B, n] in the form score_batch(..., prepared=True) takes (Spearman: its ranks, once)."""
    return _need("scipy.stats").rankdata(gold, axis=1) if metric == "spearman" else gold


def score_batch(metric: str, pred: np.ndarray, gold: np.ndarray, positive: int = 1,
                prepared: bool = False) -> np.ndarray:
    """[B] scores of B samples: pred and gold [B, n] (class ids or values); `prepared`: gold comes
    from prepare_gold (a bootstrap reuses it for every policy it scores)."""
    if metric == "accuracy":
        return np.mean(pred == gold, axis=1)
    if metric == "f1":
        # the F1 formula on counts, per sample (sklearn's f1_score takes one sample at a time)
        pp, gp = pred == positive, gold == positive
        tp = np.sum(pp & gp, axis=1)
        den = np.sum(pp, axis=1) + np.sum(gp, axis=1)
        return np.where(tp > 0, 2.0 * tp / np.maximum(den, 1), 0.0)
    if metric == "pearson":
        return _rowwise_pearson(pred.astype(np.float64), gold.astype(np.float64))
    if metric == "spearman":
        st = _need("scipy.stats")
        return _rowwise_pearson(st.rankdata(pred, axis=1), gold if prepared else st.rankdata(gold, axis=1))
    raise ValueError(f"unknown metric {metric!r}")
