"""A lean open-loop HTTP load generator for `benchmarks.serve` (loopback, bounded in time).

It shares the machine's cores with the server it measures, so every microsecond it spends per
request is taken from the server. What it does per request, and nothing more:

    request bytes     built once per text (request line, headers, JSON body), before any timing
    arrivals          Poisson: the schedule (times and texts) is drawn up front from `seed`, and
                      each arrival fires from one event-loop timer (`loop.call_at`)
    connections       HTTP/1.1 keep-alive, one request at a time per connection (no pipelining);
                      an arrival takes an idle connection or opens a new one, so a slow server
                      never delays later sends (open loop: no coordinated omission)
    answers           asyncio Protocol callbacks, no streams; the status, Content-Length and
                      the `exit_layer` field are read from the bytes, the JSON is not decoded
    latency           from each request's *scheduled* send time to its last byte
uvloop drives the event loop when it is installed (it comes with uvicorn[standard], the server's
extra); the result records which loop ran.
"""
from __future__ import annotations

import asyncio
import json
import random
import re
import time

_CONTENT_LENGTH = re.compile(rb"(?i)\r\ncontent-length: *(\d+)")
_EXIT_LAYER = b'"exit_layer":'


def request_bytes(texts: list[str], path: str = "/v1/classify") -> list[bytes]:
    """One complete POST per text: {"texts": [text]}."""
    out = []
    for t in texts:
        body = json.dumps({"texts": [t]}).encode()
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        out.append(head + body)
    return out


def schedule(n_texts: int, rate: float, seconds: float, seed: int) -> list[tuple[float, int]]:
    """(send time in s from the start, text index) of Poisson arrivals at `rate` per second."""
    rng = random.Random(seed)
    t, out = 0.0, []
    while True:
        t += rng.expovariate(rate)
        if t > seconds:
            return out
        out.append((t, rng.randrange(n_texts)))


def event_loop_name() -> str:
    try:
        import uvloop  # noqa: F401
        return "uvloop"
    except ImportError:
        return "asyncio"


def run(coro):
    """asyncio.run on uvloop when installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


class _Conn(asyncio.Protocol):
    """One keep-alive connection; `on_answer(conn, status, body)` when a response is complete,
    `on_lost(conn)` when the connection closes with a request in flight."""

    def __init__(self, on_answer, on_lost):
        self.on_answer, self.on_lost = on_answer, on_lost
        self.transport = None
        self.buf = b""
        self.need = -1  # bytes of the whole response once its header is read
        self.busy = None  # (scheduled perf_counter time) of the request in flight
        self.ready = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.ready.set_result(None)

    def send(self, data: bytes, t_sched: float) -> None:
        self.busy = t_sched
        self.buf, self.need = b"", -1
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.need < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            m = _CONTENT_LENGTH.search(self.buf, 0, end + 2)
            if m is None:  # every answer of the server has a length; anything else is an error
                self.transport.close()
                return
            self.need = end + 4 + int(m.group(1))
        if len(self.buf) >= self.need:
            buf, self.buf, self.need = self.buf, b"", -1
            status = int(buf[9:12])
            head_end = buf.find(b"\r\n\r\n") + 4
            self.on_answer(self, status, buf[head_end:])

    def connection_lost(self, exc) -> None:
        if self.busy is not None:
            self.on_lost(self)


async def load(port: int, requests: list[bytes], rate: float, seconds: float, seed: int,
               timeout: float = 10.0, host: str = "127.0.0.1") -> dict:
    """One open-loop segment. Returns latencies (ms) of 200 answers, statuses (-1: connection
    error or no answer within `timeout`), exit-layer counts, requests sent, wall time and the
    CPU seconds this process used."""
    loop = asyncio.get_running_loop()
    plan = schedule(len(requests), rate, seconds, seed)
    idle: list[_Conn] = []
    conns: list[_Conn] = []
    lat: list[float] = []
    statuses: dict[int, int] = {}
    layers: dict[int, int] = {}
    pending = [0]
    all_done = loop.create_future()

    def finish(status: int) -> None:
        statuses[status] = statuses.get(status, 0) + 1
        pending[0] -= 1
        if pending[0] == 0 and sent[0] == len(plan) and not all_done.done():
            all_done.set_result(None)

    def on_answer(c: _Conn, status: int, body: bytes) -> None:
        dt = time.perf_counter() - c.busy
        c.busy = None
        idle.append(c)
        if status == 200 and dt <= timeout:
            lat.append(dt * 1e3)
            i = body.find(_EXIT_LAYER)
            if i >= 0:
                j = i + len(_EXIT_LAYER)
                k = j
                while k < len(body) and body[k:k + 1].isdigit():
                    k += 1
                layer = int(body[j:k])
                layers[layer] = layers.get(layer, 0) + 1
        finish(status if dt <= timeout else -1)

    def on_lost(c: _Conn) -> None:
        c.busy = None
        if c in idle:
            idle.remove(c)
        finish(-1)

    async def connect_and_send(data: bytes, t_sched: float) -> None:
        try:
            _, c = await loop.create_connection(lambda: _Conn(on_answer, on_lost), host, port)
        except OSError:
            finish(-1)
            return
        conns.append(c)
        c.send(data, t_sched)

    sent = [0]

    def fire(i: int, t_sched: float) -> None:
        sent[0] += 1
        pending[0] += 1
        data = requests[i]
        while idle:
            c = idle.pop()
            if not c.transport.is_closing():
                c.send(data, t_sched)
                return
        loop.create_task(connect_and_send(data, t_sched))

    # A few connections up front, so the first arrivals do not all pay for a connect.
    for _ in range(min(8, max(1, len(plan)))):
        try:
            _, c = await loop.create_connection(lambda: _Conn(on_answer, on_lost), host, port)
        except OSError:
            break
        conns.append(c)
        idle.append(c)
    cpu0 = time.process_time()
    t0_loop, t0 = loop.time() + 0.005, time.perf_counter() + 0.005
    for t, i in plan:
        loop.call_at(t0_loop + t, fire, i, t0 + t)
    if plan:
        try:
            await asyncio.wait_for(all_done, seconds + timeout + 5.0)
        except asyncio.TimeoutError:
            pass
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    lost = len(plan) - sum(statuses.values())
    if lost > 0:
        statuses[-1] = statuses.get(-1, 0) + lost
    for c in conns:
        c.busy = None
        if c.transport is not None:
            c.transport.close()
    return {"lat": lat, "statuses": statuses, "layers": layers, "sent": len(plan), "wall": wall, "gen_cpu": cpu}
