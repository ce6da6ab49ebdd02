"""`python -m benchmarks.concurrency --artifact ART --task T [--clients 1 2 4] [--intra-op 1 2] [--out DIR]`

Throughput of one loaded model served from several client threads (batch 1 requests, the
manifest's default policy), for each onnxruntime intra-op pool size. The pool is per process,
so every intra-op setting runs in its own subprocess; within it the client counts alternate
round by round. Also checks that every threaded result equals the serial one.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from runtime.cli import HelpFormatter, nonneg_int, positive_int

from .timing import environment


def _worker(artifact: str, task: str, data_dir: str | None, clients: list[int], intra: int, requests: int,
            rounds: int) -> dict:
    from runtime.datasets import load_split
    from runtime.model import EarlyExitModel

    model = EarlyExitModel(artifact, threads=intra, load_monolithic=False, thread_pool="shared")
    pol = model.policy()
    dev = load_split(task, "dev", data_dir)
    n = min(requests, len(dev))
    encs = [model.encode([dev.text_a[i]], None if dev.text_b is None else [dev.text_b[i]]) for i in range(n)]
    serial = [model.run(e, pol) for e in encs]
    out = {c: [] for c in clients}
    equal = True
    for _ in range(rounds):
        for c in clients:
            with ThreadPoolExecutor(max_workers=c) as ex:
                t0 = time.perf_counter()
                res = list(ex.map(lambda e: model.run(e, pol), encs))
                out[c].append(n / (time.perf_counter() - t0))
            equal &= all(np.array_equal(a.exit_layer, b.exit_layer) and np.allclose(a.logits, b.logits, atol=1e-5)
                         for a, b in zip(res, serial))
    return {"intra_op_threads": intra, "policy": pol.describe(), "requests": n,
            "throughput_rows_per_s_median": {str(c): float(np.median(v)) for c, v in out.items()},
            "results_equal_serial": bool(equal)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(formatter_class=HelpFormatter, prog="python -m benchmarks.concurrency")
    p.add_argument("--artifact", required=True)
    p.add_argument("--task", required=True)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--clients", type=positive_int, nargs="+", default=[1, 2, 4])
    p.add_argument("--intra-op", type=positive_int, nargs="+", default=[1, 2])
    p.add_argument("--requests", type=positive_int, default=300)
    p.add_argument("--rounds", type=positive_int, default=3)
    p.add_argument("--out", default="results/concurrency")
    p.add_argument("--_worker", type=nonneg_int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a._worker is not None:
        print(json.dumps(_worker(a.artifact, a.task, a.data_dir, a.clients, a._worker, a.requests, a.rounds)))
        return 0
    rows = []
    root = Path(__file__).resolve().parents[1]
    for intra in a.intra_op:
        cmd = [sys.executable, "-m", "benchmarks.concurrency", "--artifact", a.artifact, "--task", a.task,
               "--clients", *map(str, a.clients), "--requests", str(a.requests), "--rounds", str(a.rounds),
               "--_worker", str(intra)] + (["--data-dir", a.data_dir] if a.data_dir else [])
        r = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=3600)
        if r.returncode != 0:
            print(f"error: worker with {intra} intra-op threads failed:\n{r.stderr[-2000:]}", file=sys.stderr)
            return 2
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]))
    res = {"rows": rows, "env": environment(max(a.intra_op)),
           "command": "python -m benchmarks.concurrency " + " ".join(sys.argv[1:] if argv is None else argv)}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "concurrency.json").write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
