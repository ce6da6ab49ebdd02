"""`python -m benchmarks.int8_summary --runs R1.json R2.json R3.json --agreement BA.json --out DIR`

Median and range over benchmarks.precision runs (fp32, static int8, dynamic int8 artifacts of one
model, each run timing all of them interleaved in one process), with benchmarks.batch_agreement's
counts; writes DIR/int8_static.json and DIR/INT8_STATIC.md."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.int8_summary")
    p.add_argument("--runs", nargs="+", required=True)
    p.add_argument("--agreement", default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--command", default="")
    a = p.parse_args(argv)
    runs = [json.loads(Path(r).read_text()) for r in a.runs]
    rows = []
    for i, first in enumerate(runs[0]["rows"]):
        get = lambda k, sub=None: [(r["rows"][i][k] if sub is None else r["rows"][i][k][sub]) for r in runs]  # noqa: E731
        rec = {"artifact": first["artifact"], "precision": first["precision"],
               "score_full_depth": first["score_full_depth"], "score_change_vs_fp32_points": first["score_change_vs_first_points"]}
        for k in ("mono_speedup_vs_first", "chain_speedup_vs_first", "early_exit_speedup_vs_first_monolithic"):
            v = get(k)
            rec[k] = {"median": float(np.median(v)), "min": float(min(v)), "max": float(max(v))}
        v = get("mono", "latency_ms_mean")
        rec["mono_latency_ms_mean"] = {"median": float(np.median(v)), "min": float(min(v)), "max": float(max(v))}
        rows.append(rec)
    agree = json.loads(Path(a.agreement).read_text()) if a.agreement else []
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    env = runs[0].get("env", {})
    (out / "int8_static.json").write_text(json.dumps({"runs": len(runs), "rows": rows, "batch_agreement": agree,
                                                       "env": env}, indent=2) + "\n")
    L = ["# Static vs dynamic int8 (SST-2 quick-start model)\n",
         f"Command: `{a.command}`  \n{len(runs)} runs of `benchmarks.precision` under `/work/diag/quiet.sh` (each run times "
         f"every artifact interleaved in one process at batch 1 over the {runs[0]['samples']} dev rows); median "
         f"[min, max] over runs. Machine: {env.get('cpu', env.get('machine', 'see JSON'))}.\n",
         "| artifact | int8 | full-depth accuracy | change vs fp32 (points) | monolithic ms | monolithic speed-up vs fp32 monolithic | full chain vs fp32 monolithic | early exit (default policy) vs fp32 monolithic |",
         "|---|---|---|---|---|---|---|---|"]
    m = {r["artifact"]: r.get("int8_method") for r in agree}
    f = lambda d: f"{d['median']:.2f} [{d['min']:.2f}, {d['max']:.2f}]"  # noqa: E731
    for r in rows:
        L.append(f"| {r['artifact']} | {m.get(r['artifact']) or r['precision']} | {r['score_full_depth']:.4f} | "
                 f"{r['score_change_vs_fp32_points']:+.2f} | {f(r['mono_latency_ms_mean'])} | {f(r['mono_speedup_vs_first'])}x | "
                 f"{f(r['chain_speedup_vs_first'])}x | {f(r['early_exit_speedup_vs_first_monolithic'])}x |")
    if agree:
        L += ["\n## Answers alone vs in random batches (`benchmarks.batch_agreement`, batch 32, compaction)\n",
              "| artifact | int8 | rows | answers differ | exit layers differ | max abs logit diff |", "|---|---|---|---|---|---|"]
        for r in agree:
            L.append(f"| {r['artifact']} | {r['int8_method'] or 'fp32'} | {r['rows']} | {r['answers_differ']} | "
                     f"{r['exit_layers_differ']} | {r['max_abs_logit_diff']:.3g} |")
    (out / "INT8_STATIC.md").write_text("\n".join(L) + "\n")
    print((out / "INT8_STATIC.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
