"""The one timing helper: interleaved runs of several variants, percentiles, a linear fit, and the
environment stamp every result carries."""
from __future__ import annotations

import gc
import os
import platform
import random
import subprocess
import time
from pathlib import Path
from typing import Callable

import numpy as np


def percentiles(ms: np.ndarray) -> dict[str, float]:
    ms = np.asarray(ms, dtype=np.float64)
    return {"latency_ms_mean": float(ms.mean()), "latency_ms_p50": float(np.percentile(ms, 50)),
            "latency_ms_p90": float(np.percentile(ms, 90)), "latency_ms_p99": float(np.percentile(ms, 99))}


def interleaved(variants: dict[str, Callable[[int], object]], n_items: int, repeats: int, warmup: int = 1,
                seed: int = 0, progress: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
    """Time every variant on every item, alternating variants item by item so that machine
    drift hits all of them alike. Variant order is shuffled per item.

    variants: name -> fn(item_index). Returns name -> [n_items] per-item median (ms) over repeats.
    """
    names = list(variants)
    rng = random.Random(seed)
    times = {n: np.zeros((repeats, n_items)) for n in names}
    for w in range(warmup):  # first calls allocate buffers and warm caches
        for i in range(min(n_items, 8)):
            for n in names:
                variants[n](i)
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for r in range(repeats):
            for i in range(n_items):
                order = names[:]
                rng.shuffle(order)
                for n in order:
                    fn = variants[n]
                    t0 = time.perf_counter()
                    fn(i)
                    times[n][r, i] = (time.perf_counter() - t0) * 1e3
                if progress:
                    progress(r * n_items + i + 1, repeats * n_items)
            gc.collect()
    finally:
        if gc_was:
            gc.enable()
    return {n: np.median(t, axis=0) for n, t in times.items()}


def linear_fit(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Least squares y = intercept + slope * x, with r^2."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    slope, intercept = np.polyfit(x, y, 1)
    pred = intercept + slope * x
    ss_res, ss_tot = float(np.sum((y - pred) ** 2)), float(np.sum((y - y.mean()) ** 2))
    return {"intercept_ms": float(intercept), "slope_ms_per_layer": float(slope),
            "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")


def cpu_isa() -> list[str]:
    """The vector extensions of this CPU that decide which kernels run (x86 /proc/cpuinfo flags;
    empty elsewhere). Two hosts with the same model name ("AMD EPYC") can differ here."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in ISA_FLAGS if f in have]
    except OSError:
        pass
    return []


def steal_seconds() -> float | None:
    """CPU time the hypervisor gave to other guests, summed over this machine's CPUs, since boot
    (/proc/stat "steal"; None where it is not reported). A difference over a timing window says
    how much of it the host took away: timings from a window with steal are not from a quiet
    machine."""
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("cpu "):
                f = line.split()
                return int(f[8]) / os.sysconf("SC_CLK_TCK") if len(f) > 8 else None
    except (OSError, ValueError):
        pass
    return None


def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[1]
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(threads: int, backend: str = "onnxruntime-cpu", precision: str = "fp32") -> dict:
    from importlib.metadata import PackageNotFoundError, version

    def v(pkg):
        try:
            return version(pkg)
        except PackageNotFoundError:
            return None
    return {"backend": backend, "precision": precision, "threads": threads, "cpu": _cpu_model(),
            "isa": cpu_isa(), "cores": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
            "numpy": v("numpy"), "onnxruntime": v("onnxruntime"), "torch": v("torch"),
            "transformers": v("transformers"), "git_commit": _git_commit(),
            "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def write_result(out_dir: str | Path, name: str, res: dict, prog: str, argv: list[str] | None) -> Path:
    """Stamp `res` with the command that made it and write it as OUT/name (JSON)."""
    import json
    import sys
    res["command"] = f"python -m {prog} " + " ".join(sys.argv[1:] if argv is None else argv)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    path.write_text(json.dumps(res, indent=2) + "\n")
    return path


def save_figure(fig, axes, path: Path, dpi: int = 110) -> None:
    """Grid and legend on every axis, tight layout, write, close."""
    import matplotlib.pyplot as plt
    for ax in (axes if isinstance(axes, (list, tuple, np.ndarray)) else [axes]):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
