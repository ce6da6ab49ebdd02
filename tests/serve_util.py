"""A real server process on a free loopback port, and a small HTTP client (stdlib only)."""
from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class Server:
    """`python -m runtime.serve ... --port 0` (through tests/serve_boot.py), ready when constructed."""

    def __init__(self, artifact, *args: str, env: dict | None = None, ready_timeout: float = 90.0,
                 wait_ready: bool = True):
        e = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **(env or {})}
        threads = [] if "--threads" in args else ["--threads", "1"]
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "serve_boot.py"), "--artifact", str(artifact),
                                      "--port", "0", *threads, *args],
                                     cwd=ROOT, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._port = threading.Event()
        self.port = None
        threading.Thread(target=self._read, daemon=True).start()
        if not self._port.wait(ready_timeout):
            self.stop()
            raise RuntimeError("server did not start:\n" + "".join(self.lines))
        if not wait_ready:
            return
        t_end = time.monotonic() + ready_timeout
        while time.monotonic() < t_end:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited:\n" + "".join(self.lines))
            try:
                if self.get("/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("server never became ready:\n" + "".join(self.lines))

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            m = re.search(r"listening on http://[\d.]+:(\d+)", line)
            if m and self.port is None:
                self.port = int(m.group(1))
                self._port.set()

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float = 30.0) -> tuple[int, dict, bytes]:
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            c.close()

    def get(self, path: str) -> tuple[int, bytes]:
        s, _, b = self.request("GET", path, timeout=5)
        return s, b

    def classify(self, payload, timeout: float = 30.0) -> tuple[int, dict, dict]:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        s, h, b = self.request("POST", "/v1/classify", body, {"Content-Type": "application/json"}, timeout)
        return s, h, json.loads(b)

    def metrics(self) -> dict[str, float]:
        """Metric lines as {'name{labels}': value}."""
        s, b = self.get("/metrics")
        assert s == 200
        out = {}
        for ln in b.decode().splitlines():
            if ln and not ln.startswith("#"):
                k, v = ln.rsplit(" ", 1)
                out[k] = float(v)
        return out

    def terminate(self, timeout: float = 60.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def random_requests(model, dev, n: int, seed: int) -> list:
    """`n` encoded requests of 1-3 random rows each of a pair task's split (a server's traffic)."""
    import random
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        idx = [rng.randrange(len(dev)) for _ in range(rng.randint(1, 3))]
        out.append(model.encode([dev.text_a[i] for i in idx], [dev.text_b[i] for i in idx]))
    return out
