"""Exit policies: the one piece of decision code shared by training-time evaluation and the runtime.

A policy looks at one layer's outputs for a batch of rows and says which rows exit there. The
runtime calls `decide` between layers; evaluation calls `simulate` on per-layer outputs saved
for a whole split. Both run the same `decide`, so their exit layers agree for the same threshold.

Rules (DESIGN.md):
    confidence  max softmax >= threshold                      (classification)
    entropy     entropy of softmax <= threshold (DeeBERT)     (classification)
    lte         LTE certainty u_i >= threshold (BERxiT)       (any task with an LTE head)
    patience    same label for `patience` consecutive layers  (PABEE; regression: |delta| < tolerance)
    fixed       exit at layer `exit_layer`                    (layer-wise baseline, latency calibration)
Every policy exits at the last available layer whatever the signal says.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np


class PolicyError(ValueError):
    """A policy name, threshold or layer that cannot be used with this model."""


@dataclass(frozen=True)
class LayerOutputs:
    """One layer's outputs for a batch of B rows (numpy, float32)."""

    logits: np.ndarray  # [B, C] (C = 1 for regression)
    confidence: np.ndarray | None = None  # [B]
    entropy: np.ndarray | None = None  # [B]
    lte: np.ndarray | None = None  # [B]

    def take(self, rows: np.ndarray) -> "LayerOutputs":
        pick = lambda a: None if a is None else a[rows]  # noqa: E731
        return LayerOutputs(self.logits[rows], pick(self.confidence), pick(self.entropy), pick(self.lte))


@dataclass(frozen=True)
class ExitPolicy:
    """A validated policy. Build with `make_policy` (it checks the values against the model)."""

    name: str
    threshold: float | None = None  # confidence / entropy / lte / patience tolerance (regression)
    exit_layer: int | None = None  # fixed
    patience: int | None = None  # patience
    per_layer: tuple[float, ...] | None = None  # one threshold per layer (calibrated), overrides threshold

    def at(self, layer: int) -> float:
        """The threshold that applies after 1-based `layer`."""
        return self.per_layer[layer - 1] if self.per_layer is not None else self.threshold

    def describe(self) -> str:
        if self.per_layer is not None:
            return f"{self.name}(per_layer={[round(t, 4) for t in self.per_layer]})"
        if self.name == "fixed":
            return f"fixed(exit_layer={self.exit_layer})"
        if self.name == "patience":
            return f"patience(patience={self.patience}, tolerance={self.threshold})"
        return f"{self.name}(threshold={self.threshold})"


class PolicyState:
    """Per-row memory a policy keeps between layers (only patience needs any)."""

    def __init__(self, batch: int):
        self.prev: np.ndarray | None = None  # previous layer's prediction, [B] or [B] float
        self.count = np.zeros(batch, dtype=np.int64)  # consecutive agreeing layers

    def take(self, rows: np.ndarray) -> "PolicyState":
        s = PolicyState(len(rows))
        s.prev = None if self.prev is None else self.prev[rows]
        s.count = self.count[rows]
        return s


_Decide = Callable[[ExitPolicy, int, LayerOutputs, PolicyState, str], np.ndarray]


@dataclass(frozen=True)
class _Spec:
    decide: _Decide
    signal: str | None  # the layer output it needs (None: logits only)
    tasks: tuple[str, ...]  # task kinds it applies to
    needs_threshold: bool


def _confidence(p: ExitPolicy, layer: int, out: LayerOutputs, st: PolicyState, kind: str) -> np.ndarray:
    return out.confidence >= p.at(layer)


def _entropy(p: ExitPolicy, layer: int, out: LayerOutputs, st: PolicyState, kind: str) -> np.ndarray:
    return out.entropy <= p.at(layer)


def _lte(p: ExitPolicy, layer: int, out: LayerOutputs, st: PolicyState, kind: str) -> np.ndarray:
    return out.lte >= p.at(layer)


def _fixed(p: ExitPolicy, layer: int, out: LayerOutputs, st: PolicyState, kind: str) -> np.ndarray:
    return np.full(out.logits.shape[0], layer >= p.exit_layer)


def _patience(p: ExitPolicy, layer: int, out: LayerOutputs, st: PolicyState, kind: str) -> np.ndarray:
    # PABEE: count consecutive layers whose prediction agrees with the previous layer's.
    if kind == "classification":
        pred = out.logits.argmax(axis=-1)
        same = None if st.prev is None else pred == st.prev
    else:
        pred = out.logits[:, 0]
        same = None if st.prev is None else np.abs(pred - st.prev) < p.threshold
    st.count = np.zeros_like(st.count) if same is None else np.where(same, st.count + 1, 0)
    st.prev = pred
    return st.count >= p.patience


POLICIES: dict[str, _Spec] = {
    "confidence": _Spec(_confidence, "confidence", ("classification",), True),
    "entropy": _Spec(_entropy, "entropy", ("classification",), True),
    "lte": _Spec(_lte, "lte", ("classification", "regression"), True),
    "patience": _Spec(_patience, None, ("classification", "regression"), False),
    "fixed": _Spec(_fixed, None, ("classification", "regression"), False),
}


def make_policy(name: str, *, task_kind: str, num_layers: int, signals: tuple[str, ...] | list[str],
                num_classes: int = 2, threshold: float | None = None, exit_layer: int | None = None,
                patience: int | None = None, per_layer: list[float] | None = None) -> ExitPolicy:
    """Check `name` and its values against the model and return the policy, or raise PolicyError."""
    if per_layer is not None:
        if name not in ("confidence", "entropy", "lte"):
            raise PolicyError(f"per-layer thresholds apply to confidence, entropy and lte, not '{name}'.")
        if len(per_layer) != num_layers:
            raise PolicyError(f"{len(per_layer)} per-layer thresholds for a model with {num_layers} layers.")
        checked = [make_policy(name, task_kind=task_kind, num_layers=num_layers, signals=signals,
                               num_classes=num_classes, threshold=t).threshold for t in per_layer]
        return ExitPolicy(name, threshold=checked[0], per_layer=tuple(checked))
    if name not in POLICIES:
        raise PolicyError(f"unknown policy '{name}'; choose one of {', '.join(POLICIES)}.")
    spec = POLICIES[name]
    if task_kind not in spec.tasks:
        raise PolicyError(f"policy '{name}' needs a classification task (it reads the softmax); this model is a "
                          f"{task_kind} model: use 'lte', 'patience' or 'fixed'.")
    if spec.signal is not None and spec.signal not in signals:
        hint = " (train with --lte to get one)" if spec.signal == "lte" else ""
        raise PolicyError(f"policy '{name}' needs the '{spec.signal}' signal, which this model does not output{hint}.")
    if name == "fixed":
        if exit_layer is None:
            raise PolicyError("policy 'fixed' needs --exit-layer K.")
        if isinstance(exit_layer, bool) or int(exit_layer) != exit_layer or not 1 <= exit_layer <= num_layers:
            raise PolicyError(f"exit layer {exit_layer} is out of range: this model has layers 1..{num_layers}.")
        return ExitPolicy(name, exit_layer=int(exit_layer))
    if name == "patience":
        if patience is None or int(patience) != patience or patience < 1:
            raise PolicyError(f"policy 'patience' needs an integer patience >= 1, got {patience!r}.")
        tol = 0.0 if threshold is None else _finite(threshold, name)
        if task_kind == "regression" and (threshold is None or tol <= 0):
            raise PolicyError("patience on a regression model needs --threshold TOL > 0 (the largest change "
                              "between layers that counts as agreement).")
        return ExitPolicy(name, threshold=tol, patience=int(patience))
    if threshold is None:
        raise PolicyError(f"policy '{name}' needs --threshold T.")
    t = _finite(threshold, name)
    if name in ("confidence", "lte") and not 0.0 <= t <= 1.0:
        raise PolicyError(f"{name} threshold must lie in [0, 1], got {t}.")
    if name == "entropy" and not 0.0 <= t <= math.log(max(num_classes, 2)) + 1e-6:
        raise PolicyError(f"entropy threshold must lie in [0, ln({num_classes}) = {math.log(max(num_classes, 2)):.4f}], "
                          f"got {t}.")
    return ExitPolicy(name, threshold=t)


def _finite(value: float, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise PolicyError(f"{name} threshold must be a number, got {value!r}.") from None
    if not math.isfinite(v):
        raise PolicyError(f"{name} threshold must be a finite number, got {value!r}.")
    return v


def decide(policy: ExitPolicy, layer: int, out: LayerOutputs, state: PolicyState, task_kind: str,
           last_layer: int) -> np.ndarray:
    """Boolean [B]: which rows exit after 1-based `layer`. Rows always exit at `last_layer`."""
    mask = np.asarray(POLICIES[policy.name].decide(policy, layer, out, state, task_kind), dtype=bool)
    if layer >= last_layer:
        mask = np.ones_like(mask)
    return mask


def simulate(policy: ExitPolicy, per_layer: list[LayerOutputs], task_kind: str) -> np.ndarray:
    """Exit layer (1-based, int64 [N]) of every row, given all layers' outputs for N rows."""
    n = per_layer[0].logits.shape[0]
    exit_at = np.zeros(n, dtype=np.int64)
    state = PolicyState(n)
    last = len(per_layer)
    for i, out in enumerate(per_layer, start=1):
        mask = decide(policy, i, out, state, task_kind, last)
        exit_at = np.where((exit_at == 0) & mask, i, exit_at)
    return exit_at


def predictions_at_exit(per_layer: list[LayerOutputs], exit_at: np.ndarray) -> np.ndarray:
    """The exit layer's logits for every row: [N, C]."""
    stacked = np.stack([o.logits for o in per_layer], axis=0)  # [L, N, C]
    return stacked[exit_at - 1, np.arange(stacked.shape[1])]
