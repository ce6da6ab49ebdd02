"""`python -m benchmarks.precision --artifacts A B [...] --task T [--out DIR]`

Artifacts of one model at different precisions (fp32, int8), compared in one process: for each,
the monolithic graph, the full chain and early exit with its default (calibrated) policy run
interleaved sample by sample at batch 1; plus each one's dev score at full depth and with early
exit. Speed ratios are against the first artifact. Writes DIR/precision.json.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from runtime.datasets import load_split
from runtime.metrics import score
from runtime.backends.ort import default_threads
from runtime.model import EarlyExitModel
from runtime.tasks import get_task
from runtime.cli import HelpFormatter, positive_int

from .timing import environment, interleaved, percentiles, write_result


def run(artifacts: list[str], task_name: str, data_dir: str | None, max_samples: int | None, repeats: int,
        threads: int | None) -> dict:
    threads = threads or default_threads()
    task = get_task(task_name)
    dev = load_split(task.name, "dev", data_dir).head(max_samples)
    n = len(dev)
    models, variants, info = [], {}, []
    for k, art in enumerate(artifacts):
        m = EarlyExitModel(art, threads=threads, thread_pool="shared")
        if m.task.name != task.name:
            raise ValueError(f"artifact '{art}' was trained for task '{m.task.name}', not '{task.name}'.")
        encs = [m.encode([dev.text_a[i]], None if dev.text_b is None else [dev.text_b[i]]) for i in range(n)]
        pol, full = m.policy(), m.policy("fixed", exit_layer=m.num_layers)
        ee = [m.run(e, pol) for e in encs]
        fl = np.concatenate([m.run(e, full).logits for e in encs])
        lg = np.concatenate([r.logits for r in ee])
        info.append({"artifact": art, "precision": m.manifest.raw.get("precision", "fp32"), "policy": pol.describe(),
                     "score_full_depth": score(task.metric, fl, dev.labels, task.kind),
                     "score_early_exit": score(task.metric, lg, dev.labels, task.kind),
                     "avg_exit_layer": float(np.mean([r.exit_layer[0] for r in ee]))})
        variants[f"{k}_mono"] = (lambda m, encs: lambda i: m.run_monolithic(encs[i]))(m, encs)
        variants[f"{k}_chain"] = (lambda m, encs, p: lambda i: m.run(encs[i], p))(m, encs, full)
        variants[f"{k}_early"] = (lambda m, encs, p: lambda i: m.run(encs[i], p))(m, encs, pol)
        models.append(m)
    med = interleaved(variants, n, repeats)
    base = {v: med[f"0_{v}"].mean() for v in ("mono", "chain", "early")}
    for k, row in enumerate(info):
        for v in ("mono", "chain", "early"):
            row[v] = percentiles(med[f"{k}_{v}"])
            row[f"{v}_speedup_vs_first"] = float(base[v] / med[f"{k}_{v}"].mean())
        row["early_exit_speedup_vs_own_monolithic"] = float(med[f"{k}_mono"].mean() / med[f"{k}_early"].mean())
        row["early_exit_speedup_vs_first_monolithic"] = float(base["mono"] / med[f"{k}_early"].mean())
        row["score_change_vs_first_points"] = 100 * (row["score_full_depth"] - info[0]["score_full_depth"])
    return {"task": task.name, "samples": n, "repeats": repeats, "rows": info, "env": environment(threads)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(formatter_class=HelpFormatter, prog="python -m benchmarks.precision")
    p.add_argument("--artifacts", nargs="+", required=True)
    p.add_argument("--task", required=True)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--max-samples", type=positive_int, default=None)
    p.add_argument("--repeats", type=positive_int, default=2)
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--out", default="results/precision")
    a = p.parse_args(argv)
    try:
        res = run(a.artifacts, a.task, a.data_dir, a.max_samples, a.repeats, a.threads)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_result(a.out, "precision.json", res, "benchmarks.precision", argv)
    for r in res["rows"]:
        print(f"{r['precision']}: full-depth {r['score_full_depth']:.4f} ({r['score_change_vs_first_points']:+.2f} pt), "
              f"early exit {r['score_early_exit']:.4f} at {r['avg_exit_layer']:.2f} layers; monolithic "
              f"{r['mono']['latency_ms_mean']:.2f} ms ({r['mono_speedup_vs_first']:.2f}x), early exit "
              f"{r['early']['latency_ms_mean']:.2f} ms ({r['early_exit_speedup_vs_own_monolithic']:.2f}x own monolithic)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
