"""`python -m benchmarks.scheduler --artifact ART --out results/serve [--rates 50 100 200] [--rounds 4]`

The batching schedulers compared without HTTP: one model in this process, Poisson arrivals of
one SST-2 dev sentence each (pre-tokenized), submitted to `runtime.scheduler.Scheduler` under
each batching (layer, request, none; layer and request also with --mix-lengths). Modes are interleaved in short segments (round-robin over
modes, --rounds times per rate) so that a busy machine slows them alike; latency runs from each
row's scheduled arrival to its answer. Reports p50/p99 and throughput per mode and rate, and
the mean rows per graph call (what batching achieved).
"""
from __future__ import annotations

import argparse
import random
import sys
import time

import numpy as np

from .timing import environment, write_result

# name -> SchedulerConfig fields; "-mix": rows of different lengths may share a call (padded)
MODES = {"layer": {"batching": "layer"}, "layer-mix": {"batching": "layer", "mix_lengths": True},
         "request": {"batching": "request"}, "request-mix": {"batching": "request", "mix_lengths": True},
         "none": {"batching": "none"}}


def segment(model, scheduler, encs: list, rate: float, seconds: float, seed: int) -> dict:
    """Open-loop arrivals for `seconds`; returns latencies (ms) and answered count."""
    rng = random.Random(seed)
    pol = model.policy()
    t0 = time.perf_counter()
    t, futs = 0.0, []
    while True:
        t += rng.expovariate(rate)
        if t > seconds:
            break
        d = t0 + t - time.perf_counter()
        if d > 0:
            time.sleep(d)
        f = scheduler.submit(rng.choice(encs), pol)
        sched = t0 + t
        f.add_done_callback(lambda f, s=sched: setattr(f, "latency_ms", (time.perf_counter() - s) * 1e3))
        futs.append(f)
    for f in futs:
        f.result(60)
    wall = time.perf_counter() - t0
    return {"lat": [f.latency_ms for f in futs], "n": len(futs), "wall": wall}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scheduler", description=__doc__.splitlines()[0])
    p.add_argument("--artifact", required=True, help="a calibrated SST-2 artifact (with its monolithic graph)")
    p.add_argument("--rates", nargs="+", type=float, default=[50, 100, 150, 200, 300],
                   help="offered loads, rows per second (Poisson arrivals)")
    p.add_argument("--seconds", type=float, default=3.0, help="length of one segment")
    p.add_argument("--rounds", type=int, default=4, help="segments per mode and rate")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads")
    p.add_argument("--thread-pool", default="shared", choices=["shared", "per-session"],
                   help="onnxruntime threading (runtime.backends.ort)")
    p.add_argument("--data-dir", default=None, help="folder with glue/ (default: ../shared/data)")
    p.add_argument("--out", default="results/serve", help="output folder")
    a = p.parse_args(argv)
    from runtime import EarlyExitModel
    from runtime.datasets import load_split
    from runtime.scheduler import Scheduler, SchedulerConfig
    texts = load_split("sst2", "dev", a.data_dir).text_a
    model = EarlyExitModel(a.artifact, threads=a.threads, thread_pool=a.thread_pool, load_monolithic=False)
    encs = [model.encode([t]) for t in texts]
    rows = []
    for rate in a.rates:
        acc = {m: {"lat": [], "n": 0, "wall": 0.0, "calls": []} for m in MODES}
        for r in range(a.rounds):
            for m in MODES:
                calls: list[int] = []
                s = Scheduler(model.chain, SchedulerConfig(**MODES[m]), on_run=calls.append)
                try:
                    seg = segment(model, s, encs, rate, a.seconds, seed=r)
                finally:
                    s.close()
                acc[m]["lat"] += seg["lat"]
                acc[m]["n"] += seg["n"]
                acc[m]["wall"] += seg["wall"]
                acc[m]["calls"] += calls
        for m in MODES:
            lat = np.asarray(acc[m]["lat"])
            row = {"offered_rps": rate, "batching": m, "requests": acc[m]["n"],
                   "throughput_rps": round(acc[m]["n"] / acc[m]["wall"], 2),
                   "latency_ms_p50": round(float(np.percentile(lat, 50)), 3),
                   "latency_ms_p99": round(float(np.percentile(lat, 99)), 3),
                   "rows_per_call_mean": round(float(np.mean(acc[m]["calls"])), 3)}
            rows.append(row)
            print(f"rate {rate:5.0f}/s {m:12s} p50 {row['latency_ms_p50']:8.2f} ms  p99 {row['latency_ms_p99']:8.2f} ms  "
                  f"rows/call {row['rows_per_call_mean']:.2f}", flush=True)
    model.close()
    res = {"artifact": a.artifact, "segments": {"seconds": a.seconds, "rounds": a.rounds}, "rows": rows,
           "env": environment(a.threads)}
    write_result(a.out, "scheduler.json", res, "benchmarks.scheduler", argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
