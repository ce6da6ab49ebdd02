"""`python -m runtime.calibrate --artifact ART --task T --target-relative-score 0.99`

Picks the exit threshold on a labelled split (dev by default) and writes it into the artifact's
manifest as the default policy, with the score and average exit layer it gives there:

  --target-relative-score R   fewest layers whose score >= R x the artifact's full-depth score
  --target-avg-layer A        best score whose average exit layer <= A

Then tries per-layer thresholds (coordinate descent from the single one) and keeps them only if
they beat it. The runtime's own graphs and exit rules are used, so what is calibrated is what runs.
Note: a threshold calibrated on dev and scored on dev is optimistic; pass another split to check.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass

import numpy as np

from .cli import finite_float, parser, positive_int
from .datasets import load_split
from .manifest import ArtifactError, write_manifest
from .metrics import score
from .policies import ExitPolicy, LayerOutputs, PolicyError, predictions_at_exit, simulate
from .model import EarlyExitModel
from .tasks import get_task
from .tokenize import InputError

SIGNAL_POLICIES = ("confidence", "entropy", "lte")


@dataclass(frozen=True)
class Point:
    policy: ExitPolicy
    score: float
    relative_score: float
    avg_exit_layer: float


def split_layer_outputs(model: EarlyExitModel, text_a, text_b, batch_size: int = 32) -> list[LayerOutputs]:
    """All layers' outputs for a whole split, in row order (batches of similar length)."""
    n = len(text_a)
    order = np.argsort([len(t) + (len(text_b[i]) if text_b else 0) for i, t in enumerate(text_a)], kind="stable")
    parts: list[list[LayerOutputs]] = []
    for s in range(0, n, batch_size):
        idx = order[s:s + batch_size]
        enc = model.encode([text_a[i] for i in idx], None if text_b is None else [text_b[i] for i in idx])
        parts.append(model.layer_outputs(enc))
    inv = np.argsort(order)
    cat = lambda k, i: None if getattr(parts[0][i], k) is None else np.concatenate([getattr(p[i], k) for p in parts])[inv]  # noqa: E731
    return [LayerOutputs(cat("logits", i), cat("confidence", i), cat("entropy", i), cat("lte", i))
            for i in range(model.manifest.num_exits)]


def _evaluate(model: EarlyExitModel, per_layer, gold, full: float, name: str, threshold=None, per_layer_t=None) -> Point:
    pol = model.policy(name, threshold=threshold, per_layer=per_layer_t)
    ex = simulate(pol, per_layer, model.task.kind)
    sc = score(model.task.metric, predictions_at_exit(per_layer, ex, pol.exits), gold, model.task.kind)
    return Point(pol, sc, sc / full if full else float("nan"), float(ex.mean()))


def _candidates(values: np.ndarray, name: str, k: int) -> list[float]:
    qs = np.unique(np.quantile(values, np.linspace(0, 1, k)))
    lo, hi = (0.0, 1.0) if name != "entropy" else (0.0, float(values.max()) + 1e-6)
    return sorted({float(np.clip(q, lo, hi)) for q in qs} | {lo, hi})


def _better(a: Point, b: Point | None, target_rel: float | None, target_avg: float | None) -> bool:
    """Is a feasible and better than b?"""
    if target_rel is not None:
        if a.relative_score < target_rel:
            return False
        return b is None or (a.avg_exit_layer, -a.score) < (b.avg_exit_layer, -b.score)
    if a.avg_exit_layer > target_avg:
        return False
    return b is None or (a.score, -a.avg_exit_layer) > (b.score, -b.avg_exit_layer)


def calibrate(model: EarlyExitModel, per_layer: list[LayerOutputs], gold: np.ndarray, policy: str,
              target_rel: float | None = None, target_avg: float | None = None, per_layer_search: bool = True,
              grid: int = 200) -> dict:
    """Best single (and, if better, per-layer) threshold for the target. Raises PolicyError if none meets it."""
    if (target_rel is None) == (target_avg is None):
        raise PolicyError("give exactly one of --target-relative-score and --target-avg-layer.")
    if target_rel is not None and not 0 < target_rel <= 1.5:
        raise PolicyError(f"--target-relative-score must lie in (0, 1.5], got {target_rel}.")
    if target_avg is not None and not 1 <= target_avg <= model.num_layers:
        raise PolicyError(f"--target-avg-layer must lie in [1, {model.num_layers}], got {target_avg}.")
    model.policy(policy, threshold=0.5 if policy != "entropy" else 0.1)  # applicable to this model?
    L = model.manifest.num_exits
    full = score(model.task.metric, per_layer[-1].logits, gold, model.task.kind)
    sig = lambda i: getattr(per_layer[i], policy)  # noqa: E731
    values = np.concatenate([sig(i) for i in range(max(1, L - 1))])
    best = None
    for t in _candidates(values, policy, grid):
        p = _evaluate(model, per_layer, gold, full, policy, threshold=t)
        if _better(p, best, target_rel, target_avg):
            best = p
    if best is None:
        raise PolicyError(f"no {policy} threshold reaches the target on this split "
                          f"(full-depth score {full:.4f}); lower the target.")
    single = best
    if per_layer_search and L > 1:
        current = [single.policy.threshold] * L
        for _ in range(2):  # coordinate descent passes over the non-final layers
            for j in range(L - 1):
                for t in _candidates(sig(j), policy, 60):
                    trial = current[:j] + [t] + current[j + 1:]
                    p = _evaluate(model, per_layer, gold, full, policy, per_layer_t=trial)
                    if _better(p, best, target_rel, target_avg):
                        best, current = p, trial
    use_per_layer = best is not single
    return {"single": single, "best": best, "per_layer_used": use_per_layer, "full_depth_score": full}


def _point_json(p: Point) -> dict:
    d = {"policy": p.policy.name, "threshold": p.policy.threshold, "score": p.score,
         "relative_score": p.relative_score, "avg_exit_layer": p.avg_exit_layer}
    if p.policy.per_layer is not None:
        d["per_layer_thresholds"] = list(p.policy.per_layer)
    return d


def parse_args(argv=None) -> argparse.Namespace:
    p = parser("python -m runtime.calibrate", "Calibrate the default exit threshold.")
    p.add_argument("--artifact", required=True, help="artifact folder whose manifest gets the calibrated default policy")
    p.add_argument("--task", required=True, help="task whose labelled split calibrates")
    p.add_argument("--data-dir", default=None, help="folder with glue/ and sick/ (default: ../shared/data)")
    p.add_argument("--split", default="dev", choices=["dev", "train"], help="split to calibrate on")
    p.add_argument("--policy", default=None, choices=list(SIGNAL_POLICIES),
                   help="default: confidence for classification, lte for regression")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--target-relative-score", type=finite_float, default=None,
                   help="fewest layers whose score >= this share of the full-depth score")
    g.add_argument("--target-avg-layer", type=finite_float, default=None,
                   help="best score whose average exit layer <= this")
    p.add_argument("--no-per-layer", action="store_true", help="only a single threshold")
    p.add_argument("--max-samples", type=positive_int, default=None, help="first N rows of the split only")
    p.add_argument("--threads", type=positive_int, default=None, help="intra-op threads (default: all cores)")
    p.add_argument("--dry-run", action="store_true", help="print the result, leave the manifest as it is")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        model = EarlyExitModel(args.artifact, threads=args.threads, load_monolithic=False, thread_pool="shared")
        task = get_task(args.task)
        if task.name != model.task.name:
            raise PolicyError(f"the artifact was trained for task '{model.task.name}', not '{task.name}'.")
        policy = args.policy or ("confidence" if task.kind == "classification" else "lte")
        split = load_split(task.name, args.split, args.data_dir).head(args.max_samples)
        per_layer = split_layer_outputs(model, split.text_a, split.text_b)
        res = calibrate(model, per_layer, split.labels, policy, args.target_relative_score, args.target_avg_layer,
                        per_layer_search=not args.no_per_layer)
    except (ArtifactError, PolicyError, InputError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    best, single = res["best"], res["single"]
    record = {"name": best.policy.name, "threshold": best.policy.threshold,
              **({"per_layer_thresholds": list(best.policy.per_layer)} if best.policy.per_layer else {}),
              "calibration": {"task": task.name, "split": args.split, "rows": len(split),
                              "target": ({"relative_score": args.target_relative_score} if args.target_relative_score
                                         is not None else {"avg_exit_layer": args.target_avg_layer}),
                              "full_depth_score": res["full_depth_score"], "result": _point_json(best),
                              "single_threshold_result": _point_json(single),
                              "per_layer_used": res["per_layer_used"],
                              "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}
    print(json.dumps(record["calibration"], indent=2))
    if not args.dry_run:
        raw = dict(model.manifest.raw)
        raw["default_policy"] = record
        write_manifest(model.manifest.root, raw)
        print(f"default policy written to {model.manifest.root / 'manifest.json'}: {best.policy.describe()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
