"""`python -m benchmarks.native_forced --artifact ART --task T [--threads 1 2] [--passes 3] [--out DIR]`

The native runtime's fixed part per run, with nothing else in the process: forced exits at every
layer (policy "fixed"), batch 1, the variants shuffled row by row (benchmarks.timing.interleaved),
no onnxruntime session open. Fits time = fixed + per_layer * k per pass and reports what that
fixed part alone does to the layer estimate at an average exit layer of 1.4 and 2.3:
realization_bound(a) = (t(L) * a / L) / (fixed + per_layer * a) -- the best a policy exiting at
`a` layers on average can reach on this machine. Writes DIR/native_forced.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from runtime.cli import HelpFormatter, positive_int
from runtime.datasets import load_split
from runtime.model import EarlyExitModel

from .timing import environment, interleaved, linear_fit


def measure(artifact: str, task: str, data_dir: str | None, rows: int, threads: int, passes: int) -> dict:
    model = EarlyExitModel(artifact, backend="native", threads=threads)
    try:
        dev = load_split(task, "dev", data_dir).head(rows)
        encs = [model.encode([dev.text_a[i]], None if dev.text_b is None else [dev.text_b[i]]) for i in range(len(dev))]
        be, L = model.backend, model.num_layers
        variants = {}
        for k in model.exits:
            pol = model.policy("fixed", exit_layer=k)
            variants[k] = (lambda pol: lambda i: be.run_early_exit(encs[i].input_ids, encs[i].token_type_ids,
                                                                   encs[i].attention_mask, pol))(pol)
        per_pass = []
        for p in range(passes):
            t = interleaved({str(k): f for k, f in variants.items()}, len(encs), 1, seed=p)
            means = np.array([float(np.mean(t[str(k)])) for k in model.exits])
            fit = linear_fit(np.array(model.exits, float), means)
            bound = {str(a): float((means[-1] * a / L) / (fit["intercept_ms"] + fit["slope_ms_per_layer"] * a)) for a in (1.4, 2.3)}
            per_pass.append({"mean_ms": means.tolist(), "fixed_ms": fit["intercept_ms"], "per_layer_ms": fit["slope_ms_per_layer"],
                             "r2": fit["r2"], "realization_bound": bound})
        med = lambda f: float(np.median([f(r) for r in per_pass]))
        return {"threads": threads, "rows": len(encs), "passes": passes, "per_pass": per_pass,
                "fixed_ms": med(lambda r: r["fixed_ms"]), "per_layer_ms": med(lambda r: r["per_layer_ms"]),
                "fixed_over_per_layer": med(lambda r: r["fixed_ms"] / r["per_layer_ms"]),
                "realization_bound": {a: med(lambda r: r["realization_bound"][a]) for a in ("1.4", "2.3")},
                "blas": be.blas}
    finally:
        model.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.native_forced", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--artifact", required=True)
    p.add_argument("--task", required=True)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--rows", type=positive_int, default=300, help="dev rows timed")
    p.add_argument("--threads", type=positive_int, nargs="+", default=[1, 2])
    p.add_argument("--passes", type=positive_int, default=3)
    p.add_argument("--out", default="results/native/forced")
    a = p.parse_args(argv)
    runs = [measure(a.artifact, a.task, a.data_dir, a.rows, t, a.passes) for t in a.threads]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    res = {"artifact": a.artifact, "task": a.task, "runs": runs, "env": environment(max(a.threads), "native"),
           "command": "python -m benchmarks.native_forced " + " ".join(argv if argv is not None else sys.argv[1:])}
    (out / "native_forced.json").write_text(json.dumps(res, indent=1))
    for r in runs:
        print(f"threads {r['threads']}: fixed {r['fixed_ms']:.3f} ms + {r['per_layer_ms']:.3f} ms/layer "
              f"(fixed = {r['fixed_over_per_layer']:.2f} layer); realization bound at 1.4 / 2.3 layers: "
              f"{r['realization_bound']['1.4']:.3f} / {r['realization_bound']['2.3']:.3f}")
    print(f"wrote {out / 'native_forced.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
