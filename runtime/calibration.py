"""Choosing an exit policy from per-layer outputs of calibration rows (the library behind
`python -m runtime.calibrate`).

Methods:
  ltt-bootstrap   the fastest threshold whose relative score (score / full-depth score) meets the
                  target with probability >= 1 - delta on new rows of the same distribution
                  (Learn then Test: fixed-sequence testing, runtime/bounds.py), labelled rows
  ltt-binomial    the same for agreement with the full-depth answer (label-free): the share of
                  rows whose early answer equals the full-depth one (regression: within a tolerance);
                  exact and distribution-free for new rows (runtime/bounds.py)
  point           the old point estimate: the fastest threshold meeting the target on the rows
                  themselves (optimistic on new rows; kept for comparison and --target-avg-layer)
  latency-budget  the most accurate threshold whose predicted mean batch-1 latency fits a budget

Per-layer thresholds are a richer family; with `per_layer=True` the rows are split: a search on
one part (coordinate descent, point estimates) gives a path of per-layer candidates from
conservative to aggressive, tested in order on the other part. Each family gets delta / 2
(Bonferroni), so the faster of the two certified policies keeps the 1 - delta guarantee.

Where the target is checked (`new_rows`): by default on a new set as large as the calibration
rows (a deployment scores its own window of traffic, an evaluation its own held-out rows, and
either has sampling noise of its own); `new_rows=N` for N new rows; `new_rows=math.inf` for the
distribution itself (the population score; runtime/bounds.py explains both).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from .bounds import PairedBootstrap, BoundTest, binomial_test, fixed_sequence
from .metrics import predictions, score_batch
from .policies import ExitPolicy, LayerOutputs, PolicyError, make_policy, predictions_at_exit, simulate

SIGNAL_POLICIES = ("confidence", "entropy", "lte")
METHODS = ("ltt-bootstrap", "ltt-binomial", "point", "latency-budget")


@dataclass(frozen=True)
class Target:
    """Exactly one of: relative_score, agreement (+ tolerance for regression), avg_exit_layer, latency_ms."""

    relative_score: float | None = None
    agreement: float | None = None
    tolerance: float | None = None
    avg_exit_layer: float | None = None
    latency_ms: float | None = None

    def __post_init__(self):
        given = [k for k in ("relative_score", "agreement", "avg_exit_layer", "latency_ms") if getattr(self, k) is not None]
        if len(given) != 1:
            raise PolicyError("give exactly one target: --target-relative-score, --target-agreement, "
                              "--target-avg-layer or --target-latency-ms.")
        if self.relative_score is not None and not 0 < self.relative_score <= 1.5:
            raise PolicyError(f"--target-relative-score must lie in (0, 1.5], got {self.relative_score}.")
        if self.agreement is not None and not 0 < self.agreement <= 1:
            raise PolicyError(f"--target-agreement must lie in (0, 1], got {self.agreement}.")
        if self.tolerance is not None and not self.tolerance >= 0:
            raise PolicyError(f"--agreement-tolerance must be >= 0, got {self.tolerance}.")
        if self.latency_ms is not None and not self.latency_ms > 0:
            raise PolicyError(f"--target-latency-ms must be > 0, got {self.latency_ms}.")

    @property
    def kind(self) -> str:
        return next(k for k in ("relative_score", "agreement", "avg_exit_layer", "latency_ms") if getattr(self, k) is not None)

    def to_json(self) -> dict:
        d = {self.kind: getattr(self, self.kind)}
        if self.tolerance is not None:
            d["tolerance"] = self.tolerance
        return d


@dataclass(frozen=True)
class Point:
    """A policy and what it gives on some rows."""

    policy: ExitPolicy
    avg_exit_layer: float
    agreement: float | None  # share of rows answering as at full depth (regression: within tolerance)
    score: float | None = None  # labelled rows only
    relative_score: float | None = None
    accuracy_relative: float | None = None  # F1 tasks: accuracy / full-depth accuracy
    positive_rate: float | None = None  # F1 tasks: share of rows answered positive
    majority: str | None = None  # why the answers look like a majority-class collapse (F1 tasks)
    bound: float | None = None  # lower confidence bound on the target quantity (ltt methods)
    p_value: float | None = None
    predicted_ms: float | None = None

    def to_json(self) -> dict:
        p = self.policy
        d = {"policy": p.name, "threshold": p.threshold}
        if p.per_layer is not None:
            d["per_layer_thresholds"] = list(p.per_layer)
        if p.exit_layer is not None:
            d["exit_layer"] = p.exit_layer
        for k in ("score", "relative_score", "avg_exit_layer", "agreement", "accuracy_relative", "positive_rate",
                  "majority", "bound", "p_value", "predicted_ms"):
            v = getattr(self, k)
            if v is not None:
                d[k] = v
        return d


class Judge:
    """Scores policies on a fixed set of rows: per-exit outputs [E][N], gold labels (or None)."""

    def __init__(self, per_layer: list[LayerOutputs], gold: np.ndarray | None, *, kind: str, metric: str,
                 num_layers: int, signals, exits=None, num_classes: int = 2, tolerance: float | None = None,
                 majority_margin: float = 0.1, costs_ms: np.ndarray | None = None):
        self.per_layer, self.gold, self.kind, self.metric = per_layer, gold, kind, metric
        self.num_layers, self.signals, self.exits, self.num_classes = num_layers, signals, exits, num_classes
        self.tolerance, self.majority_margin = tolerance, majority_margin
        self.costs_ms = costs_ms  # [E + 1]: mean batch-1 ms of a row leaving at exit position k (0: unused)
        self.n = per_layer[0].logits.shape[0]
        self.full_pred = predictions(per_layer[-1].logits, kind)
        self.full_score = None if gold is None else self._score(self.full_pred)
        self.f1_task = kind == "classification" and metric == "f1"
        if self.f1_task:
            self.full_acc = None if gold is None else float(np.mean(self.full_pred == gold))
            ref = [float(np.mean(self.full_pred == 1))] + ([] if gold is None else [float(np.mean(gold == 1))])
            self.ref_positive_rate = max(ref)
        self._boot: PairedBootstrap | None = None

    def take(self, rows: np.ndarray, **kw) -> "Judge":
        """The same judge on a subset of rows."""
        return Judge([o.take(rows) for o in self.per_layer], None if self.gold is None else self.gold[rows],
                     kind=self.kind, metric=self.metric, num_layers=self.num_layers, signals=self.signals,
                     exits=self.exits, num_classes=self.num_classes, tolerance=self.tolerance,
                     majority_margin=self.majority_margin, costs_ms=self.costs_ms, **kw)

    def _score(self, pred: np.ndarray) -> float:
        return float(score_batch(self.metric, pred[None], self.gold[None])[0])

    def policy(self, name: str, threshold=None, per_layer=None, exit_layer=None) -> ExitPolicy:
        return make_policy(name, task_kind=self.kind, num_layers=self.num_layers, signals=self.signals,
                           num_classes=self.num_classes, threshold=threshold, per_layer=per_layer,
                           exit_layer=exit_layer, exits=self.exits)

    def losses(self, pred: np.ndarray) -> np.ndarray:
        """1 where the early answer differs from the full-depth answer [N]."""
        if self.kind == "classification":
            return pred != self.full_pred
        if self.tolerance is None:
            raise PolicyError("agreement on a regression model needs --agreement-tolerance TOL (the largest "
                              "difference from the full-depth value that counts as the same answer).")
        return np.abs(pred - self.full_pred) > self.tolerance

    def point(self, policy: ExitPolicy) -> tuple[Point, np.ndarray]:
        ex = simulate(policy, self.per_layer, self.kind)
        pred = predictions(predictions_at_exit(self.per_layer, ex, policy.exits), self.kind)
        agree = None if self.kind == "regression" and self.tolerance is None else 1.0 - float(np.mean(self.losses(pred)))
        p = Point(policy, float(ex.mean()), agree)
        if self.gold is not None:
            s = self._score(pred)
            p = replace(p, score=s, relative_score=s / self.full_score if self.full_score else float("nan"))
        if self.f1_task:
            rate = float(np.mean(pred == 1))
            top = max(rate, 1 - rate)
            why = None
            if rate > self.ref_positive_rate + self.majority_margin:
                why = (f"answers positive for {rate:.1%} of rows (full depth / gold: at most "
                       f"{self.ref_positive_rate:.1%})")
            elif top >= 0.98 and max(self.ref_positive_rate, 1 - self.ref_positive_rate) < 0.95:
                why = f"near-constant answers ({top:.1%} one class)"
            acc_rel = None if self.gold is None or not self.full_acc else float(np.mean(pred == self.gold)) / self.full_acc
            p = replace(p, positive_rate=rate, majority=why, accuracy_relative=acc_rel)
        if self.costs_ms is not None:
            pos = ex if policy.exits is None else np.searchsorted(np.asarray(policy.exits), ex) + 1
            p = replace(p, predicted_ms=float(np.mean(self.costs_ms[pos])))
        return p, pred

    def bootstrap(self, resamples: int, seed: int) -> PairedBootstrap:
        if self._boot is None:
            self._boot = PairedBootstrap(self.metric, self.gold, self.full_pred, resamples, seed)
        return self._boot


def candidates(judge: Judge, name: str, grid: int, values: np.ndarray | None = None) -> list[float]:
    """Thresholds at quantiles of the signal (non-final exits), ordered conservative -> aggressive."""
    if values is None:
        E = len(judge.per_layer)
        values = np.concatenate([getattr(judge.per_layer[i], name) for i in range(max(1, E - 1))])
    qs = np.unique(np.quantile(values, np.linspace(0, 1, grid)))
    lo, hi = (0.0, 1.0) if name != "entropy" else (0.0, min(float(values.max()) + 1e-6, float(np.log(judge.num_classes))))
    ts = sorted({float(np.clip(q, lo, hi)) for q in qs} | {lo, hi})
    return ts if name == "entropy" else ts[::-1]


def _refused(p: Point, allow_majority: bool) -> bool:
    return p.majority is not None and not allow_majority


def _test(judge: Judge, target: Target, delta: float, allow_majority: bool, resamples: int, seed: int,
          new_rows: float = math.inf):
    """A test function for fixed_sequence: policy -> (Point with bound) or None (refused). Called
    in the sequence's order: agreement on new rows tests the running maximum of each row's loss."""
    lost = np.zeros(judge.n, dtype=bool)

    def run(policy: ExitPolicy):
        p, pred = judge.point(policy)
        if _refused(p, allow_majority):
            return None
        if target.relative_score is not None:
            early = p.avg_exit_layer < judge.num_layers  # some row leaves before the last layer
            disc = int(np.sum(pred != judge.full_pred)) if judge.kind == "classification" and early else None
            t = judge.bootstrap(resamples, seed).test(pred, target.relative_score, delta, p.relative_score, new_rows,
                                                      discordant=disc, full_score=judge.full_score)
        else:
            losses = judge.losses(pred)
            if not math.isinf(new_rows):
                lost[:] |= losses
                losses = lost
            t = binomial_test(losses, 1.0 - target.agreement, delta, new_rows)
        return replace(p, bound=t.bound, p_value=t.p_value)
    return run


def _ltt(judge: Judge, policies: list[ExitPolicy], target: Target, delta: float, allow_majority: bool,
         resamples: int, seed: int, new_rows: float = math.inf) -> list[Point]:
    cache: dict[int, Point] = {}
    run = _test(judge, target, delta, allow_majority, resamples, seed, new_rows)

    def test(i: int) -> BoundTest | None:
        p = run(policies[i])
        if p is None:
            return None
        cache[i] = p
        return BoundTest(p.p_value, p.bound, p.relative_score if p.relative_score is not None else p.agreement)
    return [cache[i] for i, _ in fixed_sequence(range(len(policies)), test, delta)]


def _fastest(points: list[Point]) -> Point | None:
    key = lambda p: (p.avg_exit_layer, -(p.score if p.score is not None else (p.agreement or 0.0)))  # noqa: E731
    return min(points, key=key) if points else None


def _feasible(p: Point, target: Target, allow_majority: bool) -> bool:
    if _refused(p, allow_majority):
        return False
    if target.relative_score is not None:
        return p.relative_score is not None and p.relative_score >= target.relative_score
    if target.agreement is not None:
        return p.agreement is not None and p.agreement >= target.agreement
    if target.avg_exit_layer is not None:
        return p.avg_exit_layer <= target.avg_exit_layer
    return p.predicted_ms is not None and p.predicted_ms <= target.latency_ms


def _quality(p: Point) -> float:
    return p.score if p.score is not None else (p.agreement if p.agreement is not None else 0.0)


def _better(a: Point, b: Point | None, target: Target) -> bool:
    """a (feasible) better than b? Quality targets: fewer layers; budgets: higher quality."""
    if b is None:
        return True
    if target.relative_score is not None or target.agreement is not None:
        return (a.avg_exit_layer, -_quality(a)) < (b.avg_exit_layer, -_quality(b))
    return (_quality(a), -a.avg_exit_layer) > (_quality(b), -b.avg_exit_layer)


def point_search(judge: Judge, name: str, target: Target, *, per_layer: bool, allow_majority: bool = True,
                 grid: int = 200, layer_grid: int = 60) -> tuple[Point | None, Point | None, list[Point]]:
    """The point-estimate search: (best single, best overall, path of per-layer improvements)."""
    best = None
    for t in candidates(judge, name, grid):
        p, _ = judge.point(judge.policy(name, threshold=t))
        if _feasible(p, target, allow_majority) and _better(p, best, target):
            best = p
    single, path = best, []
    E = len(judge.per_layer)
    if per_layer and single is not None and E > 1:
        current = [single.policy.threshold] * E
        for _ in range(2):  # coordinate descent passes over the non-final exits
            for j in range(E - 1):
                for t in candidates(judge, name, layer_grid, getattr(judge.per_layer[j], name)):
                    trial = current[:j] + [t] + current[j + 1:]
                    p, _ = judge.point(judge.policy(name, per_layer=trial))
                    if _feasible(p, target, allow_majority) and _better(p, best, target):
                        best, current = p, trial
                        path.append(p)
    return single, best, path


def calibrate(judge: Judge, name: str, target: Target, *, method: str = "ltt", delta: float = 0.1,
              per_layer: bool = False, allow_majority: bool = False, resamples: int = 1000, seed: int = 0,
              grid: int = 100, new_rows: float | None = None) -> dict:
    """Choose a policy. Returns {"best", "single", "per_layer" (or None), "method", "delta", "rows",
    "rows_search", "rows_certify", "new_rows"}; raises PolicyError when nothing qualifies.
    new_rows: where the guarantee's target is checked (None: as many new rows as calibrate;
    math.inf: the distribution itself)."""
    if name not in SIGNAL_POLICIES:
        raise PolicyError(f"calibration tunes a threshold of {', '.join(SIGNAL_POLICIES)}, not '{name}'.")
    judge.policy(name, threshold=0.5 if name != "entropy" else 0.1)  # applicable to this model?
    if target.relative_score is not None and judge.gold is None:
        raise PolicyError("--target-relative-score needs labelled rows; for unlabelled text use --target-agreement.")
    if target.latency_ms is not None and judge.costs_ms is None:
        raise PolicyError("--target-latency-ms needs the per-layer costs measured on the artifact.")
    if target.avg_exit_layer is not None and not 1 <= target.avg_exit_layer <= judge.num_layers:
        raise PolicyError(f"--target-avg-layer must lie in [1, {judge.num_layers}], got {target.avg_exit_layer}.")
    if not 0 < delta < 1:
        raise PolicyError(f"--delta must lie in (0, 1), got {delta}.")
    if new_rows is None:
        new_rows = judge.n
    if not (new_rows == math.inf or (new_rows >= 1 and float(new_rows).is_integer())):
        raise PolicyError(f"--new-rows must be a whole number >= 1 or inf, got {new_rows}.")
    if target.agreement is not None and judge.kind == "regression" and judge.tolerance is None:
        judge.losses(judge.full_pred)  # raises the tolerance message
    out = {"rows": judge.n, "delta": None, "rows_search": None, "rows_certify": None, "per_layer": None,
           "new_rows": None}
    guaranteed = target.relative_score is not None or target.agreement is not None
    if method == "point" or not guaranteed:
        single, best, _ = point_search(judge, name, target, per_layer=per_layer, allow_majority=allow_majority,
                                       grid=max(grid, 200))
        if best is None:
            raise PolicyError(_none_msg(judge, target, name, "on these rows"))
        meth = "point" if target.latency_ms is None else "latency-budget"
        return {**out, "best": best, "single": single, "method": meth,
                "per_layer": best if best is not single else None}
    meth = "ltt-bootstrap" if target.relative_score is not None else "ltt-binomial"
    d_single = delta / 2 if per_layer else delta
    pols = [judge.policy(name, threshold=t) for t in candidates(judge, name, grid)]
    single = _fastest(_ltt(judge, pols, target, d_single, allow_majority, resamples, seed, new_rows))
    pl = None
    if per_layer and len(judge.per_layer) > 1 and judge.n >= 20:
        perm = np.random.default_rng(seed + 1).permutation(judge.n)
        a, b = perm[: judge.n // 2], perm[judge.n // 2:]
        ja, jb = judge.take(a), judge.take(b)
        _, _, path = point_search(ja, name, target, per_layer=True, allow_majority=allow_majority)
        kept = _ltt(jb, [p.policy for p in path], target, delta / 2, allow_majority, resamples, seed, new_rows)
        if kept:
            cert = _fastest(kept)
            full, _ = judge.point(cert.policy)  # reported on all rows; the bound is the held-out part's
            pl = replace(full, bound=cert.bound, p_value=cert.p_value)
        out.update(rows_search=len(a), rows_certify=len(b))
    cands = [p for p in (single, pl) if p is not None]
    if not cands:
        raise PolicyError(_none_msg(judge, target, name, f"with probability >= {1 - delta:g}") +
                          " Or pass more rows, or a larger --delta.")
    best = _fastest(cands)
    return {**out, "best": best, "single": single, "per_layer": pl, "method": meth, "delta": delta,
            "new_rows": None if math.isinf(new_rows) else int(new_rows)}


def _none_msg(judge: Judge, target: Target, name: str, how: str) -> str:
    full = f" (full-depth score {judge.full_score:.4f})" if judge.full_score is not None else ""
    return f"no {name} threshold reaches the target {target.to_json()} {how}{full}; lower the target."
