"""Fault test of the Ray Serve deployment: under load, kill one replica's process; every request
must get its answer or an explicit error (none hangs or disappears) and the replica must come back.

    python -m benchmarks.serve_fault --artifact ART [--seconds 20 --clients 4] --out results/serve/fault.json

Starts a local Ray instance (2 CPUs, no dashboard) with 2 replicas on a free loopback port.
Outcomes per request: ok (200 and the library's label), wrong (200, another label), http_error
(an explicit status), connection_error (reset or refused), hang (no answer within the client's
timeout). `run_fault` is also what tests/test_serve_ray.py calls, with a shorter load.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import threading
import time
from collections import Counter
from pathlib import Path


def post(port: int, payload: dict, timeout: float) -> tuple[str, int | None, dict | None]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("POST", "/v1/classify", json.dumps(payload).encode(), {"Content-Type": "application/json"})
        r = c.getresponse()
        body = r.read()
        try:
            return "answered", r.status, json.loads(body)
        except ValueError:
            return "answered", r.status, None
    except socket.timeout:
        return "hang", None, None
    except OSError:
        return "connection_error", None, None
    finally:
        c.close()


def replica_pids(port: int, want: int, timeout: float, exclude: set[int] = frozenset()) -> set[int]:
    """Distinct replica processes seen through the proxy (GET /healthz) until `want` are seen."""
    seen: set[int] = set()
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end and len(seen - exclude) < want:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/healthz")
            r = c.getresponse()
            body = r.read()
            if r.status == 200:
                seen.add(int(json.loads(body)["pid"]))
        except (OSError, ValueError, KeyError):
            time.sleep(0.2)
        finally:
            c.close()
    return seen


def run_fault(port: int, texts: list[str], expected: dict[str, str], seconds: float, clients: int,
              kill_after_s: float, client_timeout_s: float = 15.0, comeback_timeout_s: float = 90.0) -> dict:
    """Load the proxy on `port` from `clients` threads for `seconds`; SIGKILL one replica after
    `kill_after_s`; then wait for a new replica process. Returns the counts."""
    before = replica_pids(port, 2, 60)
    if len(before) < 2:
        raise RuntimeError(f"expected 2 replicas behind the proxy, saw {len(before)}")
    victim = min(before)
    outcomes: Counter = Counter()
    statuses: Counter = Counter()
    lock = threading.Lock()
    t_end = time.monotonic() + seconds

    def client(k: int) -> None:
        i = k
        while time.monotonic() < t_end:
            text = texts[i % len(texts)]
            i += clients
            how, status, body = post(port, {"texts": [text]}, client_timeout_s)
            if how == "answered" and status == 200 and body:
                how = "ok" if body["results"][0].get("label") == expected[text] else "wrong"
            elif how == "answered":
                how = "http_error"
            with lock:
                outcomes[how] += 1
                if status is not None and status != 200:
                    statuses[str(status)] += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(kill_after_s)
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic() - t0
    for t in threads:
        t.join(seconds + client_timeout_s + 10)
    stuck = sum(t.is_alive() for t in threads)
    after = replica_pids(port, 1, comeback_timeout_s, exclude=before)
    sent = sum(outcomes.values())
    return {"replicas": 2, "clients": clients, "seconds": seconds, "killed_pid": victim,
            "killed_at_s": round(killed_at, 2), "requests": sent, "outcomes": dict(outcomes),
            "error_statuses": dict(statuses), "stuck_clients": stuck,
            "replica_came_back": bool(after - before), "new_replica_pids": len(after - before),
            "every_request_accounted": stuck == 0 and outcomes["hang"] == 0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serve_fault", description=__doc__.splitlines()[0])
    p.add_argument("--artifact", required=True, help="a calibrated SST-2 artifact (with its monolithic graph)")
    p.add_argument("--seconds", type=float, default=20.0, help="length of the load; one replica is killed a third of the way in")
    p.add_argument("--clients", type=int, default=4, help="concurrent client threads")
    p.add_argument("--data-dir", default=None, help="folder with glue/ (default: ../shared/data)")
    p.add_argument("--out", default="results/serve/fault.json", help="result file")
    a = p.parse_args(argv)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a loopback-only local Ray
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # that sends no usage reports
    import ray
    from ray import serve

    from runtime import EarlyExitModel
    from runtime.datasets import load_split
    from runtime.serve import ServeConfig
    from runtime.serve_ray import run

    from .timing import environment, write_result
    dev = load_split("sst2", "dev", a.data_dir)
    texts = list(dict.fromkeys(dev.text_a))[:200]
    with EarlyExitModel(a.artifact, threads=1) as m:
        expected = {t: p.label for t, p in zip(texts, m.predict(texts, batch_size=1))}
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    t0 = time.monotonic()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        run(ServeConfig(os.path.abspath(a.artifact), threads=1), 2, "127.0.0.1", port)
        startup = time.monotonic() - t0
        res = run_fault(port, texts, expected, a.seconds, a.clients, kill_after_s=a.seconds / 3)
    finally:
        serve.shutdown()
        ray.shutdown()
    res.update(ray_startup_s=round(startup, 1), artifact=a.artifact, env=environment(1))
    write_result(Path(a.out).parent, Path(a.out).name, res, "benchmarks.serve_fault", argv)
    print(json.dumps({k: res[k] for k in ("requests", "outcomes", "error_statuses", "replica_came_back")}))
    return 0 if res["every_request_accounted"] and res["replica_came_back"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
