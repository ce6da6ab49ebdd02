"""Soak: mixed load (good requests and every kind of bad one) against `python -m runtime.serve`
for --seconds (600 for the real run); resident memory must grow less than 5% after warm-up and
no answer may differ from the intended one.

    python -m benchmarks.serve_soak --artifact ART --seconds 600 --out results/serve/soak.json

Good requests carry 1-8 SST-2 dev sentences (policy override on some); bad ones are malformed
JSON, wrong types, empty text, bad policy values, too many texts and oversized bodies, each with
the status it must get. Clients are closed-loop threads (bounded: each waits for its answer, at
most 30 s). The server's RSS (psutil) is sampled every second; growth is measured from the
median of the first minute's last 10 samples (or of the first tenth of a short run) to the
median of the last 10.
"""
from __future__ import annotations

import argparse
import http.client
import json
import random
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

from .serve import ServerProc
from .timing import environment, write_result

BAD = [  # (body, status, kind)
    (b'{"texts": ', 400, "bad_json"),
    (b'{"texts": [1, 2]}', 400, "bad_request"),
    (b'{"texts": ["   "]}', 400, "bad_input"),
    (b'{"pairs": [["a", "b"]]}', 400, "bad_request"),
    (b'{"texts": ["ok"], "policy": {"name": "confidence", "threshold": 7}}', 400, "bad_policy"),
    (b'{"texts": ["ok"], "policy": {"name": "fixed", "exit_layer": 99}}', 400, "bad_policy"),
    (json.dumps({"texts": ["a"] * 40}).encode(), 413, "too_many_texts"),
    (json.dumps({"texts": ["x" * (1 << 20)]}).encode(), 413, "body_too_large"),
]


def soak(port: int, texts: list[str], seconds: float, clients: int, rss, seed: int = 0) -> dict:
    counts: Counter = Counter()
    unexpected: list[str] = []
    samples: list[tuple[float, float]] = []
    lock = threading.Lock()
    t0 = time.monotonic()
    t_end = t0 + seconds

    def client(k: int) -> None:
        rng = random.Random(seed + k)
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.monotonic() < t_end:
            if rng.random() < 0.3:
                body, want, kind = rng.choice(BAD)
            else:
                req = {"texts": rng.sample(texts, rng.randint(1, 8))}
                if rng.random() < 0.2:
                    req["policy"] = {"name": "confidence", "threshold": rng.choice([0.6, 0.8, 0.95])}
                body, want, kind = json.dumps(req).encode(), 200, "ok"
            try:
                c.request("POST", "/v1/classify", body, {"Content-Type": "application/json"})
                r = c.getresponse()
                data = r.read()
                got = json.loads(data)
                ok = r.status == want and (want == 200 and len(got["results"]) > 0 or
                                           want != 200 and got["error"]["kind"] == kind)
            except (OSError, ValueError, KeyError) as e:
                ok, data = False, repr(e).encode()
                c.close()
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            with lock:
                counts[kind] += 1
                if not ok and len(unexpected) < 20:
                    unexpected.append(f"{kind}: {data[:200]!r}")
                if not ok:
                    counts["unexpected"] += 1
        c.close()

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    while time.monotonic() < t_end:
        samples.append((time.monotonic() - t0, rss()))
        time.sleep(1.0)
    for t in threads:
        t.join(60)
    samples.append((time.monotonic() - t0, rss()))
    mib = np.asarray([s[1] for s in samples]) / 2**20
    warm_end = max(10, min(60, len(mib) // 10))
    base = float(np.median(mib[max(0, warm_end - 10):warm_end]))
    last = float(np.median(mib[-10:]))
    return {"seconds": seconds, "clients": clients, "requests": dict(counts), "total": sum(v for k, v in counts.items()
                                                                                          if k != "unexpected"),
            "unexpected": counts["unexpected"], "unexpected_examples": unexpected,
            "rss_mib_baseline": round(base, 1), "rss_mib_end": round(last, 1), "rss_mib_max": round(float(mib.max()), 1),
            "rss_growth": round((last - base) / base, 4), "rss_samples_mib": [round(float(x), 1) for x in mib[::10]],
            "stuck_clients": sum(t.is_alive() for t in threads)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serve_soak", description=__doc__.splitlines()[0])
    p.add_argument("--artifact", required=True, help="a calibrated SST-2 artifact (with its monolithic graph)")
    p.add_argument("--seconds", type=float, default=600.0, help="length of the soak")
    p.add_argument("--clients", type=int, default=4, help="concurrent client threads")
    p.add_argument("--data-dir", default=None, help="folder with glue/ (default: ../shared/data)")
    p.add_argument("--out", default="results/serve/soak.json", help="result file")
    a = p.parse_args(argv)
    import psutil

    from runtime.datasets import load_split
    texts = list(dict.fromkeys(load_split("sst2", "dev", a.data_dir).text_a))
    srv = ServerProc("ee-layer", a.artifact, pin=False)
    try:
        proc = psutil.Process(srv.proc.pid)
        res = soak(srv.port, texts, a.seconds, a.clients, lambda: proc.memory_info().rss)
        res["metrics_tail"] = _metrics(srv.port)
    finally:
        srv.stop()
    res.update(artifact=a.artifact, passed=res["unexpected"] == 0 and res["rss_growth"] < 0.05 and not res["stuck_clients"],
               env=environment(threads=0))
    write_result(Path(a.out).parent, Path(a.out).name, res, "benchmarks.serve_soak", argv)
    print(json.dumps({k: res[k] for k in ("total", "unexpected", "rss_mib_baseline", "rss_mib_end", "rss_growth", "passed")}))
    return 0 if res["passed"] else 1


def _metrics(port: int) -> dict:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    keep = ("berxit_requests_total", "berxit_errors_total", "berxit_rows_total")
    return {ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
            if ln.startswith(keep)}


if __name__ == "__main__":
    raise SystemExit(main())
