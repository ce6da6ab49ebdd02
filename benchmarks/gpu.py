"""`python -m benchmarks.gpu --config bert-base --batch-size 1 --seq-len 128 --dtype fp16 --out results/gpu`
(also reached as `python -m benchmarks.latency --backend cuda-graphs ...`)

Times the CUDA executor (train.cuda_graphs) with CUDA events, all variants interleaved in one
run, over several input sets (so that no variant times a cache-warm copy of one input):

  monolithic     the whole model (embeddings, all layers, last head) as one CUDA graph
  chain          embeddings + every layer graph, waiting for each layer's exit signals (what an
                 early-exit run that never exits costs)
  chain_nosync   the same graphs, one wait at the end (the floor for a chain of graphs)
  exit@k         forced exit after layer k (k = 1..L), waiting per layer as the runtime does
  eager_chain    the same per-layer pieces without graphs (PyTorch eager, per-layer waits)
  eager_mono     the whole model in PyTorch eager

Derived: chain_overhead = chain / monolithic; realization(k) = (chain / exit@k) / (L / k), and for a
workload whose exits are spread uniformly over the layers; a linear fit of exit@k against k.
Weights are random (the backbone's shape is what sets the time); exit decisions come from
the `fixed` policy, so every number is about speed, none about quality.
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np
from runtime.cli import HelpFormatter, positive_int

from .timing import linear_fit


def _events_time(fn, reps: int) -> list[float]:
    import torch
    out = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b))
    return out


def _wall_time(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def stats(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms, dtype=np.float64)
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()), "n": int(a.size)}


def derive(med: dict[str, float], num_layers: int) -> dict:
    """Ratios from median times: chain overhead, realization per forced exit and for a uniform mix."""
    L = num_layers
    chain = med["chain"]
    ks = [k for k in range(1, L + 1) if f"exit@{k}" in med]
    real = {k: (chain / med[f"exit@{k}"]) / (L / k) for k in ks}
    out = {"chain_overhead": chain / med["monolithic"],
           "chain_nosync_overhead": med["chain_nosync"] / med["monolithic"] if "chain_nosync" in med else None,
           "realization_by_exit_layer": {str(k): r for k, r in real.items()}}
    if ks:
        # Uniform exits over 1..L: mean time over k against the layer-count estimate L / mean(k).
        mix_t = float(np.mean([med[f"exit@{k}"] for k in ks]))
        mix_k = float(np.mean(ks))
        out["realization_uniform_mix"] = (chain / mix_t) / (L / mix_k)
        out["speedup_vs_monolithic_uniform_mix"] = med["monolithic"] / mix_t
        fit = linear_fit(np.array(ks), np.array([med[f"exit@{k}"] for k in ks]))
        out["exit_time_fit_ms"] = fit
    if "eager_chain" in med:
        out["eager_chain_over_chain"] = med["eager_chain"] / chain
    if "eager_mono" in med:
        out["eager_mono_over_monolithic"] = med["eager_mono"] / med["monolithic"]
    return out


def run(config: str, batch: int, seq: int, dtype: str, reps: int, input_sets: int, eager: bool,
        checkpoint: str | None = None) -> dict:
    import torch

    from train.cuda_graphs import CudaGraphBackend, random_model

    if not torch.cuda.is_available():
        raise RuntimeError("benchmarks.gpu needs a CUDA GPU and a CUDA build of PyTorch; this machine has none "
                           "(scripts/gpu_check.sh runs it on the device machine).")
    if checkpoint:
        from train.model import load_checkpoint
        model, _ = load_checkpoint(checkpoint)
    else:
        model = random_model(config, max_len=max(512, seq))
    L = model.cfg.num_layers
    t0 = time.time()
    ex = CudaGraphBackend(model, device="cuda", dtype=dtype)
    rng = np.random.default_rng(0)
    sets = []
    for _ in range(input_sets):
        ids = rng.integers(1000, 29000, (batch, seq)).astype(np.int64)
        sets.append((ids, np.zeros_like(ids), np.ones_like(ids)))
    ex.bucket(batch, seq)  # capture outside the timing
    capture_s = time.time() - t0
    eager_ex = CudaGraphBackend(model, device="cuda", dtype=dtype, capture=False) if eager else None

    def on(i):
        return sets[i % len(sets)]

    variants = {
        "monolithic": lambda i: ex.run_monolithic(*on(i)),
        "chain": lambda i: ex.run_layers(*on(i), k=L, sync_each=True),
        "chain_nosync": lambda i: ex.run_layers(*on(i), k=L, sync_each=False),
    }
    for k in range(1, L + 1):
        variants[f"exit@{k}"] = (lambda kk: lambda i: ex.run_layers(*on(i), k=kk, sync_each=True))(k)
    if eager_ex is not None:
        variants["eager_chain"] = lambda i: eager_ex.run_layers(*on(i), k=L, sync_each=True)

        def eager_mono(i):
            ids, tt, mask = on(i)
            with torch.inference_mode():
                dev = ex.device
                o = ex.model(torch.from_numpy(ids).to(dev), torch.from_numpy(mask).to(dev), torch.from_numpy(tt).to(dev))
                o.logits[-1].float().cpu()
        variants["eager_mono"] = eager_mono

    # Correctness before timing: graphs vs eager pieces on the same weights.
    check = {}
    if eager_ex is not None:
        a, b = ex.run_layers(*sets[0]), eager_ex.run_layers(*sets[0])
        check["max_abs_diff_graph_vs_eager"] = float(np.abs(a - b).max())
        check["finite"] = bool(np.isfinite(a).all())

    for name, fn in variants.items():  # warm-up
        for i in range(10):
            fn(i)
    torch.cuda.synchronize()
    ev = {n: [] for n in variants}
    wall = {n: [] for n in variants}
    order = list(variants)
    r = random.Random(0)
    for rep in range(reps):
        r.shuffle(order)
        for n in order:
            ev[n] += _events_time(lambda: variants[n](rep), 1)
            wall[n] += _wall_time(lambda: variants[n](rep), 1)
    med = {n: float(np.median(v)) for n, v in ev.items()}
    props = torch.cuda.get_device_properties(0)
    return {
        "command": "python -m benchmarks.gpu " + " ".join(sys.argv[1:]),
        "config": config if not checkpoint else checkpoint, "num_layers": L,
        "hidden_size": model.backbone.config.hidden_size, "batch_size": batch, "seq_len": seq, "dtype": dtype,
        "timing": "CUDA events around each call (host waits included), variants interleaved in shuffled order",
        "repeats": reps, "input_sets": input_sets, "capture_seconds": capture_s,
        "check": check,
        "events": {n: stats(v) for n, v in ev.items()},
        "wall": {n: stats(v) for n, v in wall.items()},
        "derived": derive(med, L),
        "environment": {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                        "sm_count": props.multi_processor_count, "torch": torch.__version__,
                        "cuda": torch.version.cuda, "python": platform.python_version(),
                        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    }


def table(res: dict) -> str:
    e, d = res["events"], res["derived"]
    lines = [f"{res['config']} b{res['batch_size']} s{res['seq_len']} {res['dtype']} on {res['environment']['gpu']}",
             f"{'variant':14} {'p50 ms':>9} {'p99 ms':>9}"]
    for n, s in e.items():
        lines.append(f"{n:14} {s['p50_ms']:9.4f} {s['p99_ms']:9.4f}")
    lines.append(f"chain_overhead {d['chain_overhead']:.3f}  nosync {d['chain_nosync_overhead']:.3f}  "
                 f"realization(uniform mix) {d.get('realization_uniform_mix', float('nan')):.3f}  "
                 f"min realization {min(d['realization_by_exit_layer'].values()):.3f}")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(formatter_class=HelpFormatter, prog="python -m benchmarks.gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="cuda-graphs", choices=["cuda-graphs"])
    p.add_argument("--config", default="bert-base", help="bert-base | minilm-l6 (random weights)")
    p.add_argument("--checkpoint", default=None, help="time a fine-tuned checkpoint instead of a random config")
    p.add_argument("--batch-size", type=positive_int, default=1)
    p.add_argument("--seq-len", type=positive_int, default=128)
    p.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    p.add_argument("--repeats", type=positive_int, default=300)
    p.add_argument("--input-sets", type=positive_int, default=8)
    p.add_argument("--no-eager", action="store_true")
    p.add_argument("--out", default="results/gpu")
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    try:
        res = run(a.config, a.batch_size, a.seq_len, a.dtype, a.repeats, a.input_sets, not a.no_eager, a.checkpoint)
    except (RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"{Path(res['config']).name}_b{a.batch_size}_s{a.seq_len}_{a.dtype}.json"
    (out / name).write_text(json.dumps(res, indent=2) + "\n")
    print(table(res))
    print(f"written: {out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
