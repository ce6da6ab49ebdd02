"""`python -m benchmarks.native --artifact ART --task T [--example EXE] [--out DIR]`

The native C runtime (backend 'native') against onnxruntime on one artifact:

  parity     every dev row at batch 1: every exit's logits and signals (max |native - ort|), and
             the exit layers and labels of every threshold of benchmarks.latency's sweep, compared
             row by row (both backends' per-layer outputs through the same policy code)
  latency    batch 1, interleaved in one process, `passes` passes (medians and ranges): native
             full chain / native without exit checks / native early exit at the sweep's middle
             confidence (or lte) threshold / onnxruntime full chain / onnxruntime monolithic, on
             dev rows and on synthetic rows of --seq tokens
  startup    open-to-first-answer time and peak RSS of the C example host (runtime/native/examples,
             token ids given) and of a Python process (EarlyExitModel, native and cpu backends,
             text given), each in a fresh process, median of 3
Writes DIR/native.json.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from runtime.cli import HelpFormatter, positive_int
from runtime.model import EarlyExitModel
from runtime.policies import LayerOutputs, predictions_at_exit, simulate

from .latency import spread_thresholds
from .scaling import synthetic
from .timing import environment, interleaved, percentiles, write_result

log = logging.getLogger("benchmarks.native")
SIGNALS = ("confidence", "entropy", "lte")


def _stack(rows: list[list[LayerOutputs]]) -> list[LayerOutputs]:
    return [LayerOutputs(np.concatenate([r[i].logits for r in rows]),
                         *(None if getattr(rows[0][i], s) is None else np.concatenate([getattr(r[i], s) for r in rows])
                           for s in SIGNALS)) for i in range(len(rows[0]))]


def parity(nat: EarlyExitModel, ort: EarlyExitModel, encs: list, points: int) -> dict:
    pn = _stack([nat.layer_outputs(e) for e in encs])
    po = _stack([ort.layer_outputs(e) for e in encs])
    diff = {s: max(float(np.abs(getattr(a, s) - getattr(b, s)).max()) for a, b in zip(pn, po))
            for s in ("logits",) + SIGNALS if getattr(pn[0], s) is not None}
    per_policy = []
    for name in SIGNALS:
        if name not in nat.signals:
            continue
        for t in spread_thresholds(ort, po, name, points):
            pol = ort.policy(name, threshold=t)
            en, eo = simulate(pol, pn, ort.task.kind), simulate(pol, po, ort.task.kind)
            ln, lo = predictions_at_exit(pn, en, ort.exits), predictions_at_exit(po, eo, ort.exits)
            labels = int((ln.argmax(1) != lo.argmax(1)).sum()) if ort.task.kind == "classification" else None
            per_policy.append({"policy": name, "threshold": t, "avg_exit_layer": float(eo.mean()),
                               "exit_layers_differ": int((en != eo).sum()), "labels_differ": labels})
    # and the C loop itself (berxit_run) at each of those policies, against the simulation
    run_differ = 0
    for row in per_policy:
        pol = ort.policy(row["policy"], threshold=row["threshold"])
        got = np.array([nat.run(e, pol).exit_layer[0] for e in encs])
        row["c_loop_exit_layers_differ"] = int((got != simulate(pol, po, ort.task.kind)).sum())
        run_differ += row["c_loop_exit_layers_differ"]
    return {"rows": len(encs), "max_abs_diff_all_layers": diff, "policies": per_policy,
            "exit_layers_differ_total": sum(r["exit_layers_differ"] for r in per_policy),
            "labels_differ_total": sum(r["labels_differ"] or 0 for r in per_policy),
            "c_loop_exit_layers_differ_total": run_differ}


def latency(nat: EarlyExitModel, ort: EarlyExitModel, encs: list, repeats: int, passes: int, policy) -> dict:
    L = nat.num_layers
    full_n, full_o = nat.policy("fixed", exit_layer=L), ort.policy("fixed", exit_layer=L)
    variants = {"native_full_chain": lambda i: nat.run(encs[i], full_n),
                "native_no_exit_checks": lambda i: nat.run_monolithic(encs[i]),
                "native_early_exit": lambda i: nat.run(encs[i], policy),
                "ort_full_chain": lambda i: ort.run(encs[i], full_o),
                "ort_monolithic": lambda i: ort.run_monolithic(encs[i])}
    passes_ms = [interleaved(variants, len(encs), repeats, seed=p) for p in range(passes)]
    means = {k: [float(m[k].mean()) for m in passes_ms] for k in variants}
    pooled = {k: np.median(np.stack([m[k] for m in passes_ms]), axis=0) for k in variants}

    def ratio(a: str, b: str) -> dict:
        r = [x / y for x, y in zip(means[a], means[b])]
        return {"median": float(np.median(r)), "min": float(min(r)), "max": float(max(r))}
    return {"rows": len(encs), "seq_len_mean": float(np.mean([e.shape[1] for e in encs])), "repeats": repeats,
            "passes": passes, "early_exit_policy": policy.describe(),
            "avg_exit_layer": float(np.mean([nat.run(e, policy).exit_layer[0] for e in encs])),
            "latency": {k: percentiles(v) for k, v in pooled.items()},
            "latency_ms_mean_per_pass": means,
            "ratios": {"native_chain_overhead (full chain / no exit checks)": ratio("native_full_chain", "native_no_exit_checks"),
                       "native_full_chain / ort_full_chain": ratio("native_full_chain", "ort_full_chain"),
                       "native_full_chain / ort_monolithic": ratio("native_full_chain", "ort_monolithic"),
                       "native_no_exit_checks / ort_monolithic": ratio("native_no_exit_checks", "ort_monolithic"),
                       "native_early_exit / ort_monolithic": ratio("native_early_exit", "ort_monolithic"),
                       "ort_full_chain / ort_monolithic": ratio("ort_full_chain", "ort_monolithic")}}


_PY_FIRST = """
import sys, time, json
t0 = time.perf_counter()
from runtime import EarlyExitModel
m = EarlyExitModel(sys.argv[1], backend=sys.argv[2], load_monolithic=False, thread_pool='shared')
p = m.predict([sys.argv[3]], [sys.argv[4]] if m.task.text_pair else None)[0]
print(json.dumps({"seconds": time.perf_counter() - t0, "label": p.label, "exit_layer": p.exit_layer}))
"""


def _timed(cmd: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB, stdout) of a fresh process (GNU time's %M)."""
    t0 = time.perf_counter()
    r = subprocess.run(["/usr/bin/time", "-f", "RSS_KB=%M", *cmd], capture_output=True, text=True, check=True,
                       cwd=Path(__file__).resolve().parents[1])
    wall = time.perf_counter() - t0
    rss = [ln for ln in r.stderr.splitlines() if ln.startswith("RSS_KB=")][-1]
    return wall, int(rss.split("=")[1]) / 1024, r.stdout


def startup(artifact: str, example: str | None, ids: list[int], text: str, text_b: str, runs: int = 3) -> dict:
    out = {}
    if example:
        rs = [_timed([example, artifact, *map(str, ids)]) for _ in range(runs)]
        out["c_example_host"] = {"open_to_first_answer_s": float(np.median([r[0] for r in rs])),
                                 "peak_rss_mib": float(np.median([r[1] for r in rs])), "output": rs[0][2].strip(),
                                 "what": "whole process: exec, read + check weights, one row"}
    for be in ("native", "cpu"):
        rs = [_timed([sys.executable, "-c", _PY_FIRST, artifact, be, text, text_b]) for _ in range(runs)]
        out[f"python_{be}"] = {"open_to_first_answer_s": float(np.median([json.loads(r[2])["seconds"] for r in rs])),
                               "process_wall_s": float(np.median([r[0] for r in rs])),
                               "peak_rss_mib": float(np.median([r[1] for r in rs])), "output": rs[0][2].strip(),
                               "what": "imports + EarlyExitModel + tokenize + one prediction (no monolithic graph)"}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.native", formatter_class=HelpFormatter,
                                description="The native C runtime against onnxruntime: parity, latency, startup.")
    p.add_argument("--artifact", required=True)
    p.add_argument("--task", required=True)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--parity-samples", type=positive_int, default=None, help="dev rows for parity (default: all)")
    p.add_argument("--timing-samples", type=positive_int, default=200, help="dev rows timed")
    p.add_argument("--seq", type=positive_int, default=128, help="synthetic sequence length timed")
    p.add_argument("--seq-samples", type=positive_int, default=20)
    p.add_argument("--repeats", type=positive_int, default=2)
    p.add_argument("--passes", type=positive_int, default=3)
    p.add_argument("--points", type=positive_int, default=6, help="thresholds per policy (as benchmarks.latency)")
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--example", default=None, help="compiled runtime/native/examples/classify (startup timing)")
    p.add_argument("--skip", nargs="*", default=[], choices=["parity", "latency", "startup"])
    p.add_argument("--ort-pool", default="shared", choices=["shared", "per-session"],
                   help="onnxruntime's threads: shared = one process-wide pool (its fastest; its workers spin "
                        "between runs and take cores from the interleaved native runs), per-session = a pool per "
                        "session with spinning off (neither runtime then holds cores between runs)")
    p.add_argument("--out", default="results/native")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from runtime.backends.ort import default_threads
    from runtime.datasets import load_split
    threads = a.threads or default_threads()
    nat = EarlyExitModel(a.artifact, backend="native", threads=threads)
    ort = EarlyExitModel(a.artifact, threads=threads, thread_pool=a.ort_pool)
    dev = load_split(a.task, "dev", a.data_dir)
    enc_all = [ort.encode([dev.text_a[i]], None if dev.text_b is None else [dev.text_b[i]]) for i in range(len(dev))]
    res = {"artifact": str(Path(a.artifact).resolve()), "task": a.task, "native_blas": nat.backend.blas,
           "native_library": os.environ.get("BERXIT_NATIVE_LIB", "runtime/native/libberxit.so"),
           "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS"), "ort_pool": a.ort_pool, "env": environment(threads, "native vs onnxruntime-cpu")}
    if "parity" not in a.skip:
        res["parity"] = parity(nat, ort, enc_all[:a.parity_samples], a.points)
        log.info("parity: %s", {k: v for k, v in res["parity"].items() if k != "policies"})
    if "latency" not in a.skip:
        name = "confidence" if "confidence" in nat.signals else "lte"
        sub = enc_all[:a.timing_samples]
        po = _stack([ort.layer_outputs(e) for e in sub])
        ts = spread_thresholds(ort, po, name, a.points)
        pol = nat.policy(name, threshold=ts[len(ts) // 2])
        res["latency_dev"] = latency(nat, ort, sub, a.repeats, a.passes, pol)
        seq = [synthetic(min(a.seq, nat.manifest.max_seq_len), nat.manifest.backbone.vocab_size, seed=i)
               for i in range(a.seq_samples)]
        res["latency_seq"] = latency(nat, ort, seq, a.repeats, a.passes, pol)
        for k in ("latency_dev", "latency_seq"):
            log.info("%s: %s", k, json.dumps(res[k]["ratios"]))
    if "startup" not in a.skip:
        e = enc_all[0]
        res["startup"] = startup(a.artifact, a.example, e.input_ids[0].tolist(), dev.text_a[0],
                                 dev.text_b[0] if dev.text_b is not None else "")
        log.info("startup: %s", json.dumps(res["startup"]))
    path = write_result(a.out, "native.json", res, "benchmarks.native", argv)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
