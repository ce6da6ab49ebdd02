"""`python -m runtime.calibrate ... --evaluate`: does the calibrated target hold on unseen rows?

Repeated random splits of the calibration rows: calibrate on one part, score the chosen policy
on the rest, for the old point-estimate method and the guaranteed one side by side. One
all-layer pass over the rows serves every split (the per-exit outputs are sliced), so 50 splits
cost little more than the calibrations themselves.
"""
from __future__ import annotations

import numpy as np

from .calibration import Judge, Target, calibrate
from .policies import PolicyError


def _spread(xs: list[float]) -> dict:
    a = np.asarray([x for x in xs if x is not None], dtype=np.float64)
    if a.size == 0:
        return {}
    return {"mean": float(a.mean()), "min": float(a.min()), "p05": float(np.quantile(a, 0.05)),
            "p50": float(np.median(a)), "p95": float(np.quantile(a, 0.95)), "max": float(a.max())}


def evaluate(judge: Judge, name: str, target: Target, *, splits: int = 50, fraction: float = 0.5, delta: float = 0.1,
             per_layer: bool = False, allow_majority: bool = False, resamples: int = 1000, seed: int = 0,
             methods: tuple[str, ...] = ("point", "ltt"), new_rows: float | None = None) -> dict:
    """Per method: how often the target held on the held-out part (a split where nothing was
    certified runs at full depth: counted, as met, in full_depth_fallback), and the spread of the
    held-out relative score (or agreement), avg exit layer and (F1 tasks) accuracy relative and
    predicted-positive rate. The point method runs as it always did (per-layer search on, no
    majority check); the guaranteed one with the options given, certifying the target on as many
    new rows as the held-out part has (new_rows, unless given)."""
    if not 0 < fraction < 1:
        raise PolicyError(f"--evaluate-fraction must lie in (0, 1), got {fraction}.")
    n = judge.n
    k = int(round(n * fraction))
    if k < 10 or n - k < 10:
        raise PolicyError(f"{n} rows are too few to split for --evaluate (need >= 10 on each side).")
    key = "relative_score" if target.relative_score is not None else "agreement"
    goal = target.relative_score if target.relative_score is not None else target.agreement
    rng = np.random.default_rng(seed)
    res = {m: {"met": 0, "failed": 0, "value": [], "avg_exit_layer": [], "accuracy_relative": [],
               "positive_rate": [], "per_layer_used": 0} for m in methods}
    for s in range(splits):
        perm = rng.permutation(n)
        cal, test = judge.take(perm[:k]), judge.take(perm[k:])
        for m in methods:
            r = res[m]
            try:
                if m == "point":
                    c = calibrate(cal, name, target, method="point", per_layer=True, allow_majority=True)
                else:  # "ltt" with the options given; "ltt-per-layer" with per-layer thresholds tried
                    c = calibrate(cal, name, target, method="ltt", delta=delta,
                                  per_layer=per_layer or m == "ltt-per-layer", allow_majority=allow_majority,
                                  resamples=resamples, seed=seed + s,
                                  new_rows=n - k if new_rows is None else new_rows)
                policy = c["best"].policy
            except PolicyError:
                # nothing qualified on this part: the deployment runs at full depth, which meets any
                # relative-score or agreement target by definition (and saves no layer)
                r["failed"] += 1
                policy = test.policy("fixed", exit_layer=judge.num_layers)
            p, _ = test.point(policy)
            v = getattr(p, key)
            r["met"] += int(v >= goal)
            r["value"].append(v)
            r["avg_exit_layer"].append(p.avg_exit_layer)
            r["accuracy_relative"].append(p.accuracy_relative)
            r["positive_rate"].append(p.positive_rate)
            r["per_layer_used"] += int(policy.per_layer is not None)
    out = {"splits": splits, "rows": n, "rows_calibrate": k, "rows_test": n - k, "target": target.to_json(),
           "delta": delta, "new_rows": (n - k if new_rows is None else None if np.isinf(new_rows) else int(new_rows)),
           "methods": {}}
    for m, r in res.items():
        out["methods"][m] = {
            "calibrated": splits - r["failed"], "full_depth_fallback": r["failed"], "met": r["met"],
            "met_rate": r["met"] / splits,
            key: _spread(r["value"]), "avg_exit_layer": _spread(r["avg_exit_layer"]),
            "layers_saved": None if not r["avg_exit_layer"] else 1 - float(np.mean(r["avg_exit_layer"])) / judge.num_layers,
            "per_layer_used": r["per_layer_used"],
            **({"accuracy_relative": _spread(r["accuracy_relative"]), "positive_rate": _spread(r["positive_rate"])}
               if judge.f1_task else {}),
        }
    if judge.f1_task and judge.gold is not None:
        out["gold_positive_rate"] = float(np.mean(judge.gold == 1))
        out["full_depth_positive_rate"] = float(np.mean(judge.full_pred == 1))
    return out


def format_table(ev: dict) -> str:
    """A plain-text side-by-side summary."""
    key = "relative_score" if "relative_score" in ev["target"] else "agreement"
    lines = [f"{ev['splits']} splits: calibrate on {ev['rows_calibrate']} rows, score on {ev['rows_test']}; "
             f"target {ev['target']}, delta {ev['delta']}",
             f"{'method':<8} {'met':>9} {key + ' p05/p50/p95':>28} {'avg layer p05/p50/p95':>24}"]
    for m, r in ev["methods"].items():
        v, a = r.get(key) or {}, r["avg_exit_layer"] or {}
        fmt = lambda d: "/".join(f"{d[q]:.4f}" for q in ("p05", "p50", "p95")) if d else "-"  # noqa: E731
        met = f"{r['met']}/{ev['splits']}"
        lines.append(f"{m:<8} {met:>9} {fmt(v):>28} {fmt(a):>24}")
        if "positive_rate" in r and r["positive_rate"]:
            lines.append(f"{'':<8} accuracy relative {fmt(r['accuracy_relative'])}, positive rate {fmt(r['positive_rate'])}")
    return "\n".join(lines)
