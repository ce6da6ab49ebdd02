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
from typing import Callable, Sequence

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
    """A validated policy. Build with `make_policy` (it checks the values against the model).

    Decisions are taken at the model's exits, counted 1..E in order (`position`); with every layer
    an exit (the default export) position k is layer k. `exits` holds the exit layers when they
    are a subset (export --exit-layers), None when every layer is an exit."""

    name: str
    threshold: float | None = None  # confidence / entropy / lte / patience tolerance (regression)
    exit_layer: int | None = None  # fixed: the 1-based layer
    patience: int | None = None  # patience: consecutive agreeing exits
    per_layer: tuple[float, ...] | None = None  # one threshold per exit (calibrated), overrides threshold
    exits: tuple[int, ...] | None = None

    def at(self, position: int) -> float:
        """The threshold that applies at 1-based exit `position`."""
        return self.per_layer[position - 1] if self.per_layer is not None else self.threshold

    @property
    def exit_position(self) -> int | None:
        """fixed: the exit position of exit_layer."""
        if self.exit_layer is None:
            return None
        return self.exit_layer if self.exits is None else self.exits.index(self.exit_layer) + 1

    def layers_of(self, positions: np.ndarray) -> np.ndarray:
        """1-based exit positions -> 1-based layer numbers."""
        positions = np.asarray(positions, dtype=np.int64)
        return positions if self.exits is None else np.asarray(self.exits, dtype=np.int64)[positions - 1]

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

    @staticmethod
    def concat(states: list["PolicyState"]) -> "PolicyState":
        """One state for rows of several batches at the same exit (a server merging batches)."""
        s = PolicyState(sum(len(x.count) for x in states))
        s.count = np.concatenate([x.count for x in states])
        prevs = [x.prev for x in states]
        if any(p is None for p in prevs):
            if not all(p is None for p in prevs):
                raise ValueError("cannot merge batches that are at different exits")
        else:
            s.prev = np.concatenate(prevs)
        return s


def softmax_signals(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, entropy) [B] of softmax(logits [B, C]) via log-softmax (no overflow), float32,
    as the training code's exit_signals computes them."""
    z = logits - logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1, keepdims=True))
    logp = z - lse
    return np.exp(-lse[:, 0]), -(np.exp(logp) * logp).sum(axis=1)


def derive_signal(name: str, logits: np.ndarray, lte_logit: np.ndarray | None) -> np.ndarray:
    """An exit signal from the exit head's raw outputs (head layout "logits"): the values
    `derive_signals` gives, bit for bit (the same operations in the same order and dtype), with
    fewer array calls. The early-exit loop calls it after every stage for the signal its policy
    reads, right after a graph run has flushed the caches, where each numpy call costs ~10 us."""
    if name == "confidence":  # max softmax = exp(0) / sum(exp(z))
        z = logits - logits.max(axis=1, keepdims=True)
        s = np.exp(z, out=z).sum(axis=1)
        return np.divide(1.0, s, out=s).astype(np.float32, copy=False)
    if name == "lte" and lte_logit is not None:
        t = np.negative(lte_logit)
        np.exp(t, out=t)
        np.add(1.0, t, out=t)
        return np.divide(1.0, t, out=t).astype(np.float32, copy=False)
    return derive_signals((name,), logits, lte_logit)[name]


def derive_signals(names: Sequence[str], logits: np.ndarray, lte_logit: np.ndarray | None,
                   given: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Every signal in `names` (copies of those in `given`, the others derived from the head's raw
    outputs), float32. Confidence and entropy share the softmax's first steps: at batch 1 each
    small numpy call costs about a microsecond, and an exit reports every signal."""
    given = given or {}
    out: dict[str, np.ndarray] = {}
    z = s = None
    for name in names:
        if name in given:
            out[name] = given[name].copy()
        elif name in ("confidence", "entropy"):
            if s is None:
                z = logits - logits.max(axis=1, keepdims=True)
                s = np.exp(z).sum(axis=1, keepdims=True)
            if name == "confidence":  # max softmax = exp(0) / sum
                out[name] = (1.0 / s[:, 0]).astype(np.float32)
            else:  # via log-softmax, as softmax_signals
                logp = z - np.log(s)
                out[name] = (-(np.exp(logp) * logp).sum(axis=1)).astype(np.float32)
        elif name == "lte":
            out[name] = (1.0 / (1.0 + np.exp(-lte_logit))).astype(np.float32)
        else:
            raise ValueError(f"unknown signal {name!r}")
    return out


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
    return np.full(out.logits.shape[0], layer >= p.exit_position)


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
                patience: int | None = None, per_layer: list[float] | None = None,
                exits: tuple[int, ...] | list[int] | None = None) -> ExitPolicy:
    """Check `name` and its values against the model and return the policy, or raise PolicyError.
    `exits`: the model's exit layers when not every layer of `num_layers` has one."""
    if exits is not None:
        exits = tuple(int(x) for x in exits)
        if exits == tuple(range(1, num_layers + 1)):
            exits = None
    n_exits = num_layers if exits is None else len(exits)
    if not isinstance(name, str):
        raise PolicyError(f"policy name must be a string, got {name!r}.")
    if per_layer is not None:
        if name not in ("confidence", "entropy", "lte"):
            raise PolicyError(f"per-layer thresholds apply to confidence, entropy and lte, not '{name}'.")
        if isinstance(per_layer, (str, bytes)) or not hasattr(per_layer, "__len__"):
            raise PolicyError(f"per-layer thresholds must be a list of {n_exits} numbers, got {per_layer!r}.")
        if len(per_layer) != n_exits:
            raise PolicyError(f"{len(per_layer)} per-layer thresholds for a model with {n_exits} exits.")
        checked = [make_policy(name, task_kind=task_kind, num_layers=num_layers, signals=signals,
                               num_classes=num_classes, threshold=t, exits=exits).threshold for t in per_layer]
        return ExitPolicy(name, threshold=checked[0], per_layer=tuple(checked), exits=exits)
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
        if not _is_int(exit_layer) or not 1 <= exit_layer <= num_layers:
            raise PolicyError(f"exit layer {exit_layer!r} is out of range: this model has layers 1..{num_layers}.")
        if exits is not None and int(exit_layer) not in exits:
            raise PolicyError(f"layer {exit_layer} has no exit in this model; its exits are at layers "
                              f"{', '.join(map(str, exits))}.")
        return ExitPolicy(name, exit_layer=int(exit_layer), exits=exits)
    if name == "patience":
        if not _is_int(patience) or patience < 1:
            raise PolicyError(f"policy 'patience' needs an integer patience >= 1, got {patience!r}.")
        tol = 0.0 if threshold is None else _finite(threshold, name)
        if tol < 0:
            raise PolicyError(f"patience tolerance must be >= 0, got {tol}.")
        if task_kind == "regression" and (threshold is None or tol <= 0):
            raise PolicyError("patience on a regression model needs --threshold TOL > 0 (the largest change "
                              "between layers that counts as agreement).")
        return ExitPolicy(name, threshold=tol, patience=int(patience), exits=exits)
    if threshold is None:
        raise PolicyError(f"policy '{name}' needs --threshold T.")
    t = _finite(threshold, name)
    if name in ("confidence", "lte") and not 0.0 <= t <= 1.0:
        raise PolicyError(f"{name} threshold must lie in [0, 1], got {t}.")
    if name == "entropy" and not 0.0 <= t <= math.log(max(num_classes, 2)) + 1e-6:
        raise PolicyError(f"entropy threshold must lie in [0, ln({num_classes}) = {math.log(max(num_classes, 2)):.4f}], "
                          f"got {t}.")
    return ExitPolicy(name, threshold=t, exits=exits)


def _is_int(v: object) -> bool:
    """An integral number (3 or 3.0), not a bool, NaN or infinity."""
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, np.integer)):
        return True
    return isinstance(v, (float, np.floating)) and math.isfinite(v) and float(v).is_integer()


def _finite(value: float, name: str) -> float:
    if isinstance(value, (bool, str, bytes)):
        raise PolicyError(f"{name} threshold must be a number, got {value!r}.")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise PolicyError(f"{name} threshold must be a number, got {value!r}.") from None
    if not math.isfinite(v):
        raise PolicyError(f"{name} threshold must be a finite number, got {value!r}.")
    return v


def decide(policy: ExitPolicy, position: int, out: LayerOutputs, state: PolicyState, task_kind: str,
           last_position: int) -> np.ndarray:
    """Boolean [B]: which rows exit at 1-based exit `position`. Rows always exit at the last."""
    mask = np.asarray(POLICIES[policy.name].decide(policy, position, out, state, task_kind), dtype=bool)
    if position >= last_position:
        mask = np.ones_like(mask)
    return mask


def simulate(policy: ExitPolicy, per_layer: list[LayerOutputs], task_kind: str) -> np.ndarray:
    """Exit layer (1-based, int64 [N]) of every row, given every exit's outputs for N rows
    (`per_layer[k]` = exit k + 1's outputs; with a subset of exits, policy.exits maps them)."""
    n = per_layer[0].logits.shape[0]
    exit_at = np.zeros(n, dtype=np.int64)
    state = PolicyState(n)
    last = len(per_layer)
    if policy.exits is not None and len(policy.exits) != last:
        raise PolicyError(f"the policy is for {len(policy.exits)} exits; {last} exits' outputs were given.")
    for i, out in enumerate(per_layer, start=1):
        mask = decide(policy, i, out, state, task_kind, last)
        exit_at = np.where((exit_at == 0) & mask, i, exit_at)
    return policy.layers_of(exit_at)


def predictions_at_exit(per_layer: list[LayerOutputs], exit_at: np.ndarray,
                        exits: tuple[int, ...] | None = None) -> np.ndarray:
    """The exit's logits for every row: [N, C]. `exit_at` holds layers (as `simulate` returns);
    `exits` maps them to exits when not every layer has one."""
    stacked = np.stack([o.logits for o in per_layer], axis=0)  # [E, N, C]
    pos = np.asarray(exit_at, dtype=np.int64)
    if exits is not None:
        lookup = np.zeros(max(exits) + 1, dtype=np.int64)
        lookup[list(exits)] = np.arange(1, len(exits) + 1)
        pos = lookup[pos]
    return stacked[pos - 1, np.arange(stacked.shape[1])]
