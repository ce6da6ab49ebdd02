"""`python -m benchmarks.serve --artifact ART --out results/serve [--rates 50 100 ...] [--seconds 10]`

Open-loop load (Poisson arrivals, one SST-2 dev sentence per request, loopback only, bounded in
time) at rising offered load against servers started here as subprocesses:

    ee-layer      python -m runtime.serve (early exit, continuous batching at layer boundaries)
    ee-request    early exit, dynamic batching of whole requests
    ee-none       early exit, one request at a time
    mono-request  --mode monolithic: the artifact's single graph, dynamic batching (the baseline)
    *-nospin      the same with --thread-pool per-session (onnxruntime threads do not spin)
    ray-1, ray-2  python -m runtime.serve_ray with 1 / 2 replicas (one intra-op thread each),
                  against plain-1t: the plain server with one intra-op thread
All servers run at once and each load step is split into segments interleaved across them (the
same arrival times for each), so a busy machine's drift touches them alike. Latency is
measured from each request's scheduled send time (no coordinated omission). Per load:
throughput (answers/s), p50/p99, errors, exit-layer mix, and the CPU the generator itself used
(it shares the machine's cores: --pin puts the server on core 0 and the generator on core 1).
Writes serve.json and p99_vs_throughput.png; `max_rps_at_p99` gives, per server, the highest
measured throughput whose p99 stayed within --p99-target-ms.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from .timing import environment, save_figure, write_result

ROOT = Path(__file__).resolve().parents[1]
SERVERS = {
    "ee-layer": ["-m", "runtime.serve", "--batching", "layer"],
    "ee-request": ["-m", "runtime.serve", "--batching", "request"],
    "ee-none": ["-m", "runtime.serve", "--batching", "none"],
    "mono-request": ["-m", "runtime.serve", "--mode", "monolithic", "--batching", "request"],
    "mono-none": ["-m", "runtime.serve", "--mode", "monolithic", "--batching", "none"],
    "plain-1t": ["-m", "runtime.serve", "--batching", "layer", "--threads", "1"],
    "ee-layer-nospin": ["-m", "runtime.serve", "--batching", "layer", "--thread-pool", "per-session"],
    "mono-request-nospin": ["-m", "runtime.serve", "--mode", "monolithic", "--batching", "request",
                            "--thread-pool", "per-session"],
    "ray-1": ["-m", "runtime.serve_ray", "--replicas", "1", "--threads", "1", "--num-cpus", "2"],
    "ray-2": ["-m", "runtime.serve_ray", "--replicas", "2", "--threads", "1", "--num-cpus", "2"],
}


class ServerProc:
    """A server subprocess on a free loopback port; ready once /readyz answers 200."""

    def __init__(self, name: str, artifact: str, pin: bool, timeout: float = 180.0):
        args = SERVERS[name] + ["--artifact", artifact]
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


async def _request(port: int, pool: list, body: bytes, timeout: float) -> tuple[int, bytes]:
    """One HTTP/1.1 POST over a kept-alive connection from `pool` (or a new one)."""
    reader, writer = pool.pop() if pool else await asyncio.open_connection("127.0.0.1", port)
    head = (f"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    try:
        writer.write(head + body)
        hdr = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        status = int(hdr.split(b" ", 2)[1])
        n = int(re.search(rb"(?i)content-length: *(\d+)", hdr).group(1))
        data = await asyncio.wait_for(reader.readexactly(n), timeout)
    except BaseException:
        writer.close()
        raise
    pool.append((reader, writer))
    return status, data


async def _load(port: int, texts: list[str], rate: float, seconds: float, seed: int, timeout: float = 10.0) -> dict:
    rng = random.Random(seed)
    pool: list = []
    lat, statuses, layers = [], {}, {}
    t0 = time.perf_counter()
    tasks = []

    async def one(t_sched: float, text: str):
        body = json.dumps({"texts": [text]}).encode()
        try:
            status, data = await _request(port, pool, body, timeout)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
            status, data = -1, b""
        done = time.perf_counter()
        statuses[status] = statuses.get(status, 0) + 1
        if status == 200:
            lat.append((done - t_sched) * 1e3)
            layer = json.loads(data)["results"][0]["exit_layer"]
            layers[layer] = layers.get(layer, 0) + 1

    t = 0.0
    cpu0 = time.process_time()
    while True:
        t += rng.expovariate(rate)
        if t > seconds:
            break
        delay = t0 + t - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(t0 + t, rng.choice(texts))))
    await asyncio.wait(tasks, timeout=timeout + 5) if tasks else None
    wall = time.perf_counter() - t0
    for w in pool:
        w[1].close()
    return {"lat": lat, "statuses": statuses, "layers": layers, "sent": len(tasks), "wall": wall,
            "gen_cpu": time.process_time() - cpu0}


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


def bench(names: list[str], artifact: str, texts: list[str], rates: list[float], seconds: float, rounds: int,
          pin: bool, stop_p99_ms: float) -> list[dict]:
    """All servers up at once; every load step runs `rounds` segments per server, interleaved
    (server A, B, ..., A, B, ...) with the same arrival times, so drift on a shared machine
    touches them alike. A server leaves the ramp once saturated."""
    servers = {}
    try:
        for n in names:
            servers[n] = ServerProc(n, artifact, pin)
            asyncio.run(_load(servers[n].port, texts, min(rates), 2.0, seed=99))  # warm-up
        rows: dict[str, list[dict]] = {n: [] for n in names}
        active = list(names)
        for i, rate in enumerate(rates):
            raws: dict[str, list[dict]] = {n: [] for n in active}
            cpu: dict[str, float] = {n: 0.0 for n in active}
            for r in range(rounds):
                for n in active:
                    c0 = servers[n].cpu_seconds()
                    raws[n].append(asyncio.run(_load(servers[n].port, texts, rate, seconds, seed=1000 * i + r)))
                    cpu[n] += servers[n].cpu_seconds() - c0
            for n in list(active):
                row = _summary(rate, raws[n])
                row["server_cpu_s"] = round(cpu[n], 3)
                row["server_cpu_ms_per_request"] = round(cpu[n] / max(row["statuses"].get("200", 0), 1) * 1e3, 3)
                rows[n].append(row)
                print(f"{n:20s} offered {rate:6.0f}/s -> {row['throughput_rps']:7.1f}/s  p50 {row['latency_ms_p50']:7.1f} "
                      f"ms  p99 {row['latency_ms_p99']:8.1f} ms  {row['statuses']}  server cpu "
                      f"{row['server_cpu_ms_per_request']:.1f} ms/req", flush=True)
                if row["latency_ms_p99"] > stop_p99_ms or row["statuses"].get("200", 0) < 0.9 * row["sent"]:
                    active.remove(n)  # saturated: higher loads only queue
            if not active:
                break
        return [{"server": n, "loads": rows[n]} for n in names]
    finally:
        for srv in servers.values():
            srv.stop()


def max_rps_at_p99(rows: list[dict], target_ms: float) -> float:
    ok = [r["throughput_rps"] for r in rows if r["latency_ms_p99"] <= target_ms and r["statuses"].get("200", 0) >= 0.99 * r["sent"]]
    return max(ok) if ok else 0.0


def plot(results: list[dict], target_ms: float, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        xs = [x["throughput_rps"] for x in r["loads"]]
        ys = [x["latency_ms_p99"] for x in r["loads"]]
        ax.plot(xs, ys, marker="o", label=r["server"])
    ax.axhline(target_ms, color="grey", ls="--", lw=1, label=f"p99 = {target_ms:.0f} ms")
    ax.set_yscale("log")
    ax.set_xlabel("throughput (requests/s, 1 sentence each)")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_title("SST-2 over HTTP: early exit vs monolithic (open-loop Poisson load)")
    save_figure(fig, ax, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serve", description=__doc__.splitlines()[0])
    p.add_argument("--artifact", required=True, help="a calibrated SST-2 artifact (with its monolithic graph)")
    p.add_argument("--servers", nargs="+", default=["ee-layer", "ee-request", "ee-none", "mono-request",
                                                    "ee-layer-nospin", "mono-request-nospin"],
                   choices=list(SERVERS), help="servers to compare (each started once, load segments interleaved)")
    p.add_argument("--rates", nargs="+", type=float, default=[25, 50, 100, 150, 200, 250, 300, 400, 500],
                   help="offered loads, requests per second (Poisson arrivals), in rising order")
    p.add_argument("--seconds", type=float, default=4.0, help="length of one segment")
    p.add_argument("--rounds", type=int, default=3, help="segments per server and load step (interleaved)")
    p.add_argument("--p99-target-ms", type=float, default=50.0,
                   help="the p99 latency at which sustained throughputs are compared")
    p.add_argument("--stop-p99-ms", type=float, default=1000.0, help="stop raising the load past this p99")
    p.add_argument("--pin", action="store_true", help="server on core 0, this generator on core 1")
    p.add_argument("--data-dir", default=None, help="folder with glue/ (default: ../shared/data)")
    p.add_argument("--out", default="results/serve", help="output folder")
    a = p.parse_args(argv)
    from runtime.datasets import load_split
    if a.pin:
        os.sched_setaffinity(0, {1})
    texts = load_split("sst2", "dev", a.data_dir).text_a
    results = bench(a.servers, a.artifact, texts, a.rates, a.seconds, a.rounds, a.pin, a.stop_p99_ms)
    best = {r["server"]: max_rps_at_p99(r["loads"], a.p99_target_ms) for r in results}
    res = {"artifact": a.artifact, "pinned": a.pin, "p99_target_ms": a.p99_target_ms,
           "segments": {"seconds": a.seconds, "rounds": a.rounds},
           "max_rps_at_p99": best, "results": results, "env": environment(threads=0)}
    ratios = {}
    for k, v in best.items():  # early exit over the monolithic server with the same thread pool
        base = best.get("mono-request-nospin" if k.endswith("-nospin") else "mono-request")
        if k.startswith("ee-") and base:
            ratios[k] = round(v / base, 3)
    if ratios:
        res["ee_over_monolithic_at_p99"] = ratios
    name = "serve_pinned" if a.pin else "serve"
    write_result(a.out, f"{name}.json", res, "benchmarks.serve", argv)
    plot(results, a.p99_target_ms, Path(a.out) / f"{name}_p99_vs_throughput.png")
    print(json.dumps({"max_rps_at_p99": best, **({"ratio": res["ee_over_monolithic_at_p99"]}
                                                  if "ee_over_monolithic_at_p99" in res else {})}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
