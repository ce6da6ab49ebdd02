"""`python -m runtime.place_exits --artifact ART --task T --target-relative-score 0.99`

Where should a model have exits? Every exit costs time whether or not rows leave there (its head,
and a graph boundary); an exit that few rows take is a loss. From an artifact with an exit at
every layer this measures, at batch 1 on the task's dev rows,

    e0     the embeddings graph
    c_l    layer l alone (its stage graph with the head cut off)
    h      what an exit adds on top of its layer (head, boundary, the loop's decision)

and predicts the mean latency of any exit set E under a policy whose threshold is the fastest
that keeps the target relative score on dev with E's exits:

    latency(row) = e0 + sum_{l <= exit(row)} c_l + h * |{x in E : x <= exit(row)}|

(layers between exits run inside the next exit's graph, so they cost c_l only). Every subset of
layers 1..L-1 (plus L) is tried; the fastest is printed with the export command that builds it
(`python -m export.build ... --exit-layers ...`). Exit outputs do not depend on which other
exits exist, so the all-exit artifact's per-layer dev outputs score every subset exactly.
Thresholds are point estimates on dev (as runtime.calibrate's); calibrate the exported artifact.
"""
from __future__ import annotations

import itertools
import json
import sys
import time
from dataclasses import dataclass

import numpy as np

from .cli import fail, parser, positive_int, unit_float
from .policies import LayerOutputs, PolicyError, make_policy, predictions_at_exit, simulate


@dataclass(frozen=True)
class Costs:
    embeddings_ms: float
    layer_ms: tuple[float, ...]  # c_l, l = 1..L
    exit_ms: float  # h


@dataclass(frozen=True)
class Placement:
    exits: tuple[int, ...]
    threshold: float
    relative_score: float
    avg_exit_layer: float
    predicted_ms: float


def predict_ms(costs: Costs, exits: tuple[int, ...], exit_layers: np.ndarray) -> float:
    """Mean predicted latency of rows leaving at `exit_layers` with exits at `exits`."""
    cum = np.concatenate([[0.0], np.cumsum(costs.layer_ms)])
    passed = np.searchsorted(np.asarray(exits), exit_layers, side="right")  # exits at or before the row's exit
    return float(costs.embeddings_ms + np.mean(cum[exit_layers] + costs.exit_ms * passed))


def _subset(per_layer: list[LayerOutputs], exits: tuple[int, ...]) -> list[LayerOutputs]:
    return [per_layer[x - 1] for x in exits]


def best_threshold(per_layer, exits, policy, kind, metric, gold, full, target, signals, L, grid: int = 120):
    """The fastest single threshold of `policy` on exit set `exits` with relative score >= target."""
    from .metrics import score
    sub = _subset(per_layer, exits)
    vals = np.unique(np.concatenate([getattr(o, policy) for o in sub[:-1]])) if len(sub) > 1 else np.array([1.0])
    mids = (vals[:-1] + vals[1:]) / 2 if len(vals) > 1 else vals
    cands = np.unique(np.quantile(mids, np.linspace(0, 1, grid), method="nearest"))
    best = None
    for t in cands:
        t = float(np.clip(t, 0.0, 1.0)) if policy != "entropy" else float(max(t, 0.0))
        pol = make_policy(policy, task_kind=kind, num_layers=L, signals=signals, threshold=t, exits=exits)
        ex = simulate(pol, sub, kind)
        rel = score(metric, predictions_at_exit(sub, ex, pol.exits), gold, kind) / full
        if rel >= target and (best is None or ex.mean() < best[2].mean()):
            best = (t, rel, ex)
    return best


def choose(per_layer: list[LayerOutputs], gold: np.ndarray, costs: Costs, *, policy: str, kind: str, metric: str,
           signals: tuple[str, ...], target: float, max_exits: int | None = None) -> list[Placement]:
    """Every exit set that meets the target, fastest first (predicted)."""
    from .metrics import score
    L = len(per_layer)
    full = score(metric, per_layer[-1].logits, gold, kind)
    out = []
    for r in range(0, L):
        if max_exits is not None and r + 1 > max_exits:
            break
        for combo in itertools.combinations(range(1, L), r):
            exits = tuple(combo) + (L,)
            b = best_threshold(per_layer, exits, policy, kind, metric, gold, full, target, signals, L)
            if b is not None:
                t, rel, ex = b
                out.append(Placement(exits, t, float(rel), float(ex.mean()), predict_ms(costs, exits, ex)))
    return sorted(out, key=lambda p: p.predicted_ms)


def measure_costs(model, encs: list, repeats: int = 3) -> Costs:
    """e0, c and h from the runtime itself, batch 1, interleaved over `encs`: forced exits at every
    layer, T(k) = e0 + k (c + h), fitted by least squares (the encoder's layers have one shape, so
    one cost per layer; differences of neighbouring means would carry their noise twice), and the
    monolithic graph, T_mono = e0 + L c, so h = (T(L) - T_mono) / L. e0 holds the embeddings and
    every fixed cost of a run. Needs every layer to be an exit and a monolithic graph."""
    L = model.num_layers
    if model.exits != tuple(range(1, L + 1)) or not model.backend.has_monolithic:
        raise PolicyError("exit placement measures an artifact with an exit at every layer and a monolithic graph; "
                          "export one without --exit-layers and without --no-monolithic.")
    fns = {"mono": lambda i: model.run_monolithic(encs[i])}
    for k in range(1, L + 1):
        fns[f"exit_{k}"] = (lambda p: lambda i: model.run(encs[i], p))(model.policy("fixed", exit_layer=k))
    t = _time(fns, len(encs), repeats)
    ks = np.arange(1, L + 1, dtype=np.float64)
    slope, e0 = np.polyfit(ks, [t[f"exit_{k}"] for k in range(1, L + 1)], 1) if L > 1 else (t["exit_1"], 0.0)
    e0 = max(0.0, float(e0))
    h = max(0.0, (e0 + L * float(slope) - t["mono"]) / L)
    c = max(0.0, float(slope) - h)
    return Costs(e0, (c,) * L, h)


def _time(fns: dict, n: int, repeats: int) -> dict[str, float]:
    """Mean ms of each fn(i) over inputs i, interleaved, median over `repeats` rounds."""
    out = {k: [] for k in fns}
    for fn in fns.values():  # warm-up
        for i in range(min(n, 4)):
            fn(i)
    for _ in range(repeats):
        acc = {k: 0.0 for k in fns}
        for i in range(n):
            for k, fn in fns.items():
                t0 = time.perf_counter()
                fn(i)
                acc[k] += time.perf_counter() - t0
        for k in fns:
            out[k].append(acc[k] / n * 1e3)
    return {k: float(np.median(v)) for k, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    p = parser("python -m runtime.place_exits", "Choose the exit layers that minimise predicted mean latency at a "
               "target relative score (from an artifact with an exit at every layer).")
    p.add_argument("--artifact", required=True, help="artifact with an exit at every layer and a monolithic graph")
    p.add_argument("--task", required=True, help="task whose dev split scores the exit sets")
    p.add_argument("--data-dir", default=None, help="folder with glue/ and sick/ (default: ../shared/data)")
    p.add_argument("--target-relative-score", type=unit_float, default=0.99,
                   help="keep at least this share of the full-depth dev score")
    p.add_argument("--policy", default=None, choices=["confidence", "entropy", "lte"],
                   help="exit signal (default: confidence for classification, lte for regression)")
    p.add_argument("--max-samples", type=positive_int, default=None, help="first N dev rows only")
    p.add_argument("--timing-samples", type=positive_int, default=300, help="dev rows timed for the cost model")
    p.add_argument("--threads", type=positive_int, default=None, help="intra-op threads (default: all cores)")
    p.add_argument("--top", type=positive_int, default=5, help="exit sets to print")
    p.add_argument("--json", default=None, help="also write the result to this file")
    a = p.parse_args(argv)
    from .datasets import load_split
    from .fsutil import ArtifactError
    from .metrics import score
    from .model import EarlyExitModel
    from .tasks import get_task
    from .tokenize import InputError
    try:
        task = get_task(a.task)
        m = EarlyExitModel(a.artifact, threads=a.threads, thread_pool="shared")
        if m.task.name != task.name:
            raise PolicyError(f"the artifact was trained for task '{m.task.name}', not '{task.name}'.")
        policy = a.policy or ("confidence" if task.kind == "classification" else "lte")
        m.policy(policy, threshold=0.5)  # applicable to this model?
        if m.exits != tuple(range(1, m.num_layers + 1)) or not m.backend.has_monolithic:
            raise PolicyError("exit placement measures an artifact with an exit at every layer and a monolithic graph; "
                              "export one without --exit-layers and without --no-monolithic.")
        dev = load_split(task.name, "dev", a.data_dir).head(a.max_samples)
        encs = [m.encode([dev.text_a[i]], None if dev.text_b is None else [dev.text_b[i]]) for i in range(len(dev))]
        outs = [m.layer_outputs(e) for e in encs]
        per_layer = [LayerOutputs(np.concatenate([o[k].logits for o in outs]),
                                  *(None if getattr(outs[0][k], s_) is None else np.concatenate([getattr(o[k], s_) for o in outs])
                                    for s_ in ("confidence", "entropy", "lte"))) for k in range(m.num_layers)]
        step = max(1, len(encs) // a.timing_samples)
        costs = measure_costs(m, encs[::step][:a.timing_samples])
        ranked = choose(per_layer, dev.labels, costs, policy=policy, kind=task.kind, metric=task.metric,
                        signals=m.signals, target=a.target_relative_score)
    except (ArtifactError, PolicyError, InputError, FileNotFoundError, ValueError) as e:
        return fail(e)
    if not ranked:
        return fail(f"no exit set reaches relative score {a.target_relative_score} on dev; lower the target.")
    every = next((r for r in ranked if r.exits == tuple(range(1, m.num_layers + 1))), None)
    print(f"cost model (ms, batch 1): fixed per run (embeddings included) {costs.embeddings_ms:.3f}, per layer "
          f"{costs.layer_ms[0]:.3f}, per exit passed {costs.exit_ms:.3f}")
    for r in ranked[:a.top]:
        print(f"exits {','.join(map(str, r.exits)):<14} {policy} {r.threshold:.4f}  relative {r.relative_score:.4f}  "
              f"avg exit {r.avg_exit_layer:.2f}  predicted {r.predicted_ms:.3f} ms")
    if every is not None:
        print(f"every layer an exit: predicted {every.predicted_ms:.3f} ms ({every.predicted_ms / ranked[0].predicted_ms:.3f}x "
              f"the best set)")
    best = ranked[0]
    ckpt = (m.manifest.raw.get("source") or {}).get("checkpoint", "CKPT")
    print(f"build it: python -m export.build --checkpoint {ckpt} --out ART --exit-layers {','.join(map(str, best.exits))}")
    if a.json:
        from pathlib import Path
        Path(a.json).write_text(json.dumps({
            "artifact": a.artifact, "task": task.name, "policy": policy, "target_relative_score": a.target_relative_score,
            "costs": {"embeddings_ms": costs.embeddings_ms, "layer_ms": list(costs.layer_ms), "exit_ms": costs.exit_ms},
            "ranked": [r.__dict__ | {"exits": list(r.exits)} for r in ranked],
            "every_layer": None if every is None else every.__dict__ | {"exits": list(every.exits)}}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
