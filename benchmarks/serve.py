"""`python -m benchmarks.serve --artifact ART --out results/serve [--rates 50 100 ...] [--search-steps 3 --passes 3]`

Open-loop load (Poisson arrivals, one SST-2 dev sentence per request, loopback only, bounded in
time) at rising offered load against servers started here as subprocesses:

    ee-layer      python -m runtime.serve (early exit, continuous batching at layer boundaries)
    ee-request    early exit, dynamic batching of whole requests
    ee-none       early exit, one request at a time
    mono-request  --mode monolithic: the artifact's single graph, dynamic batching (the baseline)
    *-nospin      the same with --thread-pool per-session (onnxruntime threads do not spin)
    *-native      the same on the C runtime (--backend native; "monolithic" = its run without exit checks)
    *-1t          the same with --threads 1 (one intra-op thread: the model on one core; also
                  *-native-1t)
    ray-1, ray-2  python -m runtime.serve_ray with 1 / 2 replicas (one intra-op thread each),
                  against plain-1t: the plain server with one intra-op thread
All servers run at once and each load step is split into segments interleaved across them (the
same arrival times for each), so a busy machine's drift touches them alike. The load comes from
benchmarks/loadgen.py (request bytes built once, one timer per arrival, keep-alive connections,
no JSON decoding of answers; latency from each request's scheduled send time, so no
coordinated omission); it shares the machine's cores, so its own CPU per request is reported
(--pin puts the server on core 0 and the generator on core 1).
Per load step: throughput (answers/s), p50/p99, errors, exit-layer mix, server and generator CPU
per request. Per pass: a ramp over --rates, then --search-steps bisection steps per server
between the highest ramp rate whose p99 met --p99-target-ms and the lowest above it that did
not. `max_rps_at_p99`: per pass, the highest measured throughput of a step that met the target
(>= 99% answered); median [min, max] over --passes, and early exit over the monolithic server
with the same threading per pass. Writes NAME.json and NAME_p99_vs_throughput.png.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from . import loadgen
from .timing import environment, save_figure, steal_seconds, write_result

ROOT = Path(__file__).resolve().parents[1]
SERVERS = {
    "ee-layer": ["-m", "runtime.serve", "--batching", "layer"],
    "ee-request": ["-m", "runtime.serve", "--batching", "request"],
    "ee-none": ["-m", "runtime.serve", "--batching", "none"],
    "mono-request": ["-m", "runtime.serve", "--mode", "monolithic", "--batching", "request"],
    "mono-none": ["-m", "runtime.serve", "--mode", "monolithic", "--batching", "none"],
    "plain-1t": ["-m", "runtime.serve", "--batching", "layer", "--threads", "1"],
    "ee-layer-1t": ["-m", "runtime.serve", "--batching", "layer", "--threads", "1"],
    "mono-request-1t": ["-m", "runtime.serve", "--mode", "monolithic", "--batching", "request", "--threads", "1"],
    "ee-layer-nospin": ["-m", "runtime.serve", "--batching", "layer", "--thread-pool", "per-session"],
    "mono-request-nospin": ["-m", "runtime.serve", "--mode", "monolithic", "--batching", "request",
                            "--thread-pool", "per-session"],
    "ee-layer-native": ["-m", "runtime.serve", "--batching", "layer", "--backend", "native"],
    "mono-request-native": ["-m", "runtime.serve", "--mode", "monolithic", "--batching", "request",
                            "--backend", "native"],
    "ee-layer-native-1t": ["-m", "runtime.serve", "--batching", "layer", "--backend", "native", "--threads", "1"],
    "mono-request-native-1t": ["-m", "runtime.serve", "--mode", "monolithic", "--batching", "request",
                               "--backend", "native", "--threads", "1"],
    "ray-1": ["-m", "runtime.serve_ray", "--replicas", "1", "--threads", "1", "--num-cpus", "2"],
    "ray-2": ["-m", "runtime.serve_ray", "--replicas", "2", "--threads", "1", "--num-cpus", "2"],
}


class ServerProc:
    """A server subprocess on a free loopback port; ready once /readyz answers 200."""

    def __init__(self, name: str, artifact: str, pin: bool, timeout: float = 180.0, extra: list[str] | None = None):
        args = SERVERS[name] + ["--artifact", artifact] + (list(extra or []) if not name.startswith("ray") else [])
        if name.startswith("ray"):
            port = _free_port()
            args += ["--port", str(port)]
        else:
            args += ["--port", "0", "--max-queue-rows", "2048"]
        cmd = [sys.executable, *args]
        if pin:
            cmd = ["taskset", "-c", "0", *cmd]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)
        self.port, self.lines = None, []
        got = threading.Event()

        def read():
            for line in self.proc.stdout:
                self.lines.append(line)
                m = re.search(r"listening on http://[\d.]+:(\d+)", line)
                if m and self.port is None:
                    self.port = int(m.group(1))
                    got.set()
        threading.Thread(target=read, daemon=True).start()
        t_end = time.monotonic() + timeout
        if not got.wait(timeout):
            self.stop()
            raise RuntimeError(f"{name} did not start:\n{''.join(self.lines[-30:])}")
        while time.monotonic() < t_end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited:\n{''.join(self.lines[-30:])}")
            if _get(self.port, "/readyz") == 200:
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{name} never became ready")

    def cpu_seconds(self) -> float:
        import psutil
        try:
            p = psutil.Process(self.proc.pid)
            procs = [p] + p.children(recursive=True)
            return sum(q.cpu_times().user + q.cpu_times().system for q in procs)
        except psutil.Error:
            return float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def _free_port() -> int:
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _get(port: int, path: str) -> int | None:
    import http.client
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", path)
        return c.getresponse().status
    except OSError:
        return None


def _summary(rate: float, raws: list[dict]) -> dict:
    """One load step over all its segments (rounds)."""
    lat = [x for r in raws for x in r["lat"]]
    a = np.asarray(lat) if lat else np.asarray([np.nan])
    st: dict = {}
    lay: dict = {}
    for r in raws:
        for k, v in r["statuses"].items():
            st[k] = st.get(k, 0) + v
        for k, v in r["layers"].items():
            lay[k] = lay.get(k, 0) + v
    wall = sum(r["wall"] for r in raws)
    n_ok = st.get(200, 0)
    return {"offered_rps": rate, "sent": sum(r["sent"] for r in raws), "wall_s": round(wall, 3),
            "throughput_rps": round(n_ok / wall, 2),
            "latency_ms_p50": round(float(np.percentile(a, 50)), 3), "latency_ms_p99": round(float(np.percentile(a, 99)), 3),
            "statuses": {str(k): v for k, v in sorted(st.items())},
            "exit_layers": {str(k): v for k, v in sorted(lay.items())},
            "avg_exit_layer": round(sum(int(k) * v for k, v in lay.items()) / max(n_ok, 1), 3),
            "generator_cpu_s": round(sum(r["gen_cpu"] for r in raws), 3),
            "generator_cpu_ms_per_request": round(sum(r["gen_cpu"] for r in raws) / max(n_ok, 1) * 1e3, 3)}


def _passes(row: dict, target_ms: float) -> bool:
    """A load step the server sustained: p99 within the target and >= 99% answered with 200."""
    return row["latency_ms_p99"] <= target_ms and row["statuses"].get("200", 0) >= 0.99 * row["sent"]


def _step(servers: dict, rates: dict[str, float], requests: list[bytes], seconds: float, rounds: int,
          seed: int) -> dict[str, dict]:
    """One load step: `rounds` segments per server, interleaved (A, B, ..., A, B, ...), each
    segment with the same arrival times (seed) scaled to that server's rate."""
    raws: dict[str, list[dict]] = {n: [] for n in rates}
    cpu = {n: 0.0 for n in rates}
    steal: dict[str, float | None] = {n: 0.0 for n in rates}
    for r in range(rounds):
        for n, rate in rates.items():
            c0, s0 = servers[n].cpu_seconds(), steal_seconds()
            raws[n].append(loadgen.run(loadgen.load(servers[n].port, requests, rate, seconds, seed=seed + r)))
            cpu[n] += servers[n].cpu_seconds() - c0
            s1 = steal_seconds()
            steal[n] = None if s0 is None or s1 is None or steal[n] is None else steal[n] + s1 - s0
    out = {}
    for n, rate in rates.items():
        row = _summary(rate, raws[n])
        row["server_cpu_s"] = round(cpu[n], 3)
        row["server_cpu_ms_per_request"] = round(cpu[n] / max(row["statuses"].get("200", 0), 1) * 1e3, 3)
        # CPU time the hypervisor took from this machine during the step's segments, as a share of
        # all its CPUs' time: tails from a step with steal say more about the host than the server
        row["host_steal_s"] = None if steal[n] is None else round(steal[n], 3)
        row["host_steal_pct"] = None if steal[n] is None else round(
            100 * steal[n] / max(row["wall_s"] * (os.cpu_count() or 1), 1e-9), 2)
        out[n] = row
    return out


def _show(n: str, row: dict) -> None:
    print(f"{n:20s} offered {row['offered_rps']:6.1f}/s -> {row['throughput_rps']:7.1f}/s  p50 {row['latency_ms_p50']:7.1f} "
          f"ms  p99 {row['latency_ms_p99']:8.1f} ms  {row['statuses']}  server cpu {row['server_cpu_ms_per_request']:.2f} "
          f"ms/req  generator {row['generator_cpu_ms_per_request']:.2f} ms/req  steal {row.get('host_steal_pct')}%  "
          f"[{row['phase']} pass {row['pass']}]",
          flush=True)


def bench(names: list[str], artifact: str, texts: list[str], rates: list[float], seconds: float, rounds: int,
          pin: bool, stop_p99_ms: float, target_ms: float = 50.0, search_steps: int = 0, passes: int = 1,
          server_args: list[str] | None = None) -> list[dict]:
    """All servers up at once; every load step runs `rounds` segments per server, interleaved
    (server A, B, ..., A, B, ...) with the same arrival times, so drift on a shared machine
    touches them alike. Per pass: a ramp over `rates` (a server leaves it once saturated), then
    `search_steps` bisection steps per server between the highest ramp rate that met the p99
    target and the lowest above it that did not (all servers' steps interleaved as well).
    Each returned row carries its pass and phase ("ramp" or "search")."""
    servers = {}
    requests = loadgen.request_bytes(texts)
    try:
        for n in names:
            servers[n] = ServerProc(n, artifact, pin, extra=server_args)
            loadgen.run(loadgen.load(servers[n].port, requests, min(rates), 2.0, seed=99))  # warm-up
        rows: dict[str, list[dict]] = {n: [] for n in names}
        step = 0
        for p in range(passes):
            active = list(names)
            ramp: dict[str, list[dict]] = {n: [] for n in names}
            for rate in rates:
                step += 1
                for n, row in _step(servers, {n: rate for n in active}, requests, seconds, rounds, 1000 * step).items():
                    row.update({"pass": p + 1, "phase": "ramp"})
                    rows[n].append(row)
                    ramp[n].append(row)
                    _show(n, row)
                    if row["latency_ms_p99"] > stop_p99_ms or row["statuses"].get("200", 0) < 0.9 * row["sent"]:
                        active.remove(n)  # saturated: higher loads only queue
                if not active:
                    break
            bracket = {}
            for n in names:
                ok = [r["offered_rps"] for r in ramp[n] if _passes(r, target_ms)]
                lo = max(ok) if ok else 0.0
                above = [r["offered_rps"] for r in ramp[n] if r["offered_rps"] > lo and not _passes(r, target_ms)]
                if above:
                    bracket[n] = [lo, min(above)]
            for _ in range(search_steps):
                if not bracket:
                    break
                step += 1
                mids = {n: round((lo + hi) / 2, 1) for n, (lo, hi) in bracket.items()}
                for n, row in _step(servers, mids, requests, seconds, rounds, 1000 * step).items():
                    row.update({"pass": p + 1, "phase": "search"})
                    rows[n].append(row)
                    _show(n, row)
                    bracket[n][0 if _passes(row, target_ms) else 1] = mids[n]
        return [{"server": n, "loads": rows[n]} for n in names]
    finally:
        for srv in servers.values():
            srv.stop()


def max_rps_at_p99(rows: list[dict], target_ms: float) -> float:
    """The highest measured throughput among the load steps that met the p99 target."""
    ok = [r["throughput_rps"] for r in rows if _passes(r, target_ms)]
    return max(ok) if ok else 0.0


def plot(results: list[dict], target_ms: float, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, r in enumerate(results):
        color = f"C{i}"
        npass = max((x.get("pass", 1) for x in r["loads"]), default=1)
        for p in range(1, npass + 1):  # one line per pass, its steps in order of offered load
            pts = sorted((x["offered_rps"], x["throughput_rps"], x["latency_ms_p99"]) for x in r["loads"]
                         if x.get("pass", 1) == p)
            ax.plot([q[1] for q in pts], [q[2] for q in pts], marker="o", ms=3, color=color, alpha=0.8,
                    label=r["server"] if p == 1 else None)
    ax.axhline(target_ms, color="grey", ls="--", lw=1, label=f"p99 = {target_ms:.0f} ms")
    ax.set_yscale("log")
    ax.set_xlabel("throughput (requests/s, 1 sentence each)")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_title("SST-2 over HTTP: early exit vs monolithic (open-loop Poisson load)")
    save_figure(fig, ax, path)


def _spread(xs: list[float]) -> dict:
    return {"median": round(float(np.median(xs)), 3), "min": round(min(xs), 3), "max": round(max(xs), 3)}


def summarize(results: list[dict], target_ms: float) -> dict:
    """Per server and pass: the highest throughput that met the p99 target; early exit over the
    monolithic server (same thread pool) per pass, as median [min, max] over the passes."""
    npass = max((r.get("pass", 1) for x in results for r in x["loads"]), default=1)
    per_pass = {x["server"]: [max_rps_at_p99([r for r in x["loads"] if r.get("pass", 1) == p], target_ms)
                              for p in range(1, npass + 1)] for x in results}
    out = {"max_rps_at_p99_per_pass": per_pass,
           "max_rps_at_p99": {n: _spread(v) for n, v in per_pass.items()}}
    steal = {p: [r["host_steal_pct"] for x in results for r in x["loads"]
                 if r.get("pass", 1) == p and r.get("host_steal_pct") is not None] for p in range(1, npass + 1)}
    if any(steal.values()):  # how much of each pass the hypervisor took (mean and worst step)
        out["host_steal_pct_per_pass"] = {str(p): {"mean": round(float(np.mean(v)), 2), "max": max(v)}
                                          for p, v in steal.items() if v}
    ratios = {}
    for k, v in per_pass.items():  # early exit over the monolithic server with the same thread pool
        suffix = next((x for x in ("-nospin", "-native-1t", "-1t", "-native") if k.endswith(x)), "")
        base = per_pass.get("mono-request" + suffix)
        if k.startswith("ee-") and base and all(base):
            ratios[k] = {"per_pass": [round(a / b, 3) for a, b in zip(v, base)],
                         **_spread([a / b for a, b in zip(v, base)])}
    if ratios:
        out["ee_over_monolithic_at_p99"] = ratios
    return out


def _cpu_flags() -> str:
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    return " ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16") if f in flags) or "no avx2"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serve", description=__doc__.splitlines()[0])
    p.add_argument("--artifact", required=True, help="a calibrated SST-2 artifact (with its monolithic graph)")
    p.add_argument("--servers", nargs="+", default=["ee-layer", "mono-request"],
                   choices=list(SERVERS), help="servers to compare (each started once, load segments interleaved)")
    p.add_argument("--rates", nargs="+", type=float, default=[25, 50, 100, 150, 200, 250, 300, 400, 500],
                   help="offered loads, requests per second (Poisson arrivals), in rising order")
    p.add_argument("--seconds", type=float, default=4.0, help="length of one segment")
    p.add_argument("--rounds", type=int, default=3, help="segments per server and load step (interleaved)")
    p.add_argument("--search-steps", type=int, default=0,
                   help="bisection steps per server and pass between the highest ramp rate that met the p99 "
                        "target and the lowest above it that did not")
    p.add_argument("--passes", type=int, default=1, help="ramp (+ search) passes; figures are median [min, max]")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads of every plain server (runtime.serve --threads; default: its own)")
    p.add_argument("--workers", type=int, default=None, help="worker processes of every plain server")
    p.add_argument("--p99-target-ms", type=float, default=50.0,
                   help="the p99 latency at which sustained throughputs are compared")
    p.add_argument("--stop-p99-ms", type=float, default=1000.0, help="stop raising the load past this p99")
    p.add_argument("--pin", action="store_true", help="server on core 0, this generator on core 1")
    p.add_argument("--data-dir", default=None, help="folder with glue/ (default: ../shared/data)")
    p.add_argument("--out", default="results/serve", help="output folder")
    p.add_argument("--name", default=None, help="file name stem (default: serve, or serve_pinned with --pin)")
    a = p.parse_args(argv)
    from runtime.datasets import load_split
    if a.pin:
        os.sched_setaffinity(0, {1})
    extra = (["--threads", str(a.threads)] if a.threads else []) + (["--workers", str(a.workers)] if a.workers else [])
    texts = load_split("sst2", "dev", a.data_dir).text_a
    results = bench(a.servers, a.artifact, texts, a.rates, a.seconds, a.rounds, a.pin, a.stop_p99_ms,
                    target_ms=a.p99_target_ms, search_steps=a.search_steps, passes=a.passes, server_args=extra)
    summary = summarize(results, a.p99_target_ms)
    res = {"artifact": a.artifact, "pinned": a.pin, "p99_target_ms": a.p99_target_ms,
           "segments": {"seconds": a.seconds, "rounds": a.rounds}, "passes": a.passes, "search_steps": a.search_steps,
           "server_args": extra, "generator": {"event_loop": loadgen.event_loop_name(), "kind": "benchmarks.loadgen"},
           "method": "max_rps_at_p99: per pass, the highest measured throughput among load steps (ramp and "
                     "bisection) whose p99 <= the target with >= 99% of requests answered 200; median [min, max] "
                     "over passes; ratios per pass",
           **summary, "results": results, "env": {**environment(threads=0), "cpu_flags": _cpu_flags()}}
    name = a.name or ("serve_pinned" if a.pin else "serve")
    write_result(a.out, f"{name}.json", res, "benchmarks.serve", argv)
    plot(results, a.p99_target_ms, Path(a.out) / f"{name}_p99_vs_throughput.png")
    print(json.dumps({k: summary[k] for k in summary if k != "max_rps_at_p99_per_pass"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
