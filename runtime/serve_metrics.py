"""Prometheus text metrics of one server process (exposition format 0.0.4), thread-safe.

    berxit_requests_total{code}            answered requests by HTTP status
    berxit_errors_total{kind}              error answers (and rows without an answer) by kind
    berxit_request_duration_seconds        latency histogram (arrival to answer)
    berxit_rows_total                      rows answered
    berxit_exit_layer                      histogram of the layer each row left at
    berxit_batch_rows                      histogram of rows per graph call (what batching achieved)
    berxit_queue_rows / berxit_open_rows   rows waiting / accepted and not answered (gauges)
    berxit_model_ready                     1 once the model is loaded
With several worker processes each keeps its own figures (the process that answers /metrics).
"""
from __future__ import annotations

import bisect
import threading
from typing import Callable

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class _Histogram:
    def __init__(self, buckets):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)  # last: above every bucket
        self.sum = 0.0
        self.n = 0

    def observe(self, v: float, times: int = 1) -> None:
        self.counts[bisect.bisect_left(self.buckets, v)] += times
        self.sum += v * times
        self.n += times

    def lines(self, name: str) -> list[str]:
        out, acc = [], 0
        for b, c in zip(self.buckets, self.counts):
            acc += c
            out.append(f'{name}_bucket{{le="{_num(b)}"}} {acc}')
        out.append(f'{name}_bucket{{le="+Inf"}} {self.n}')
        out.append(f"{name}_sum {_num(self.sum)}")
        out.append(f"{name}_count {self.n}")
        return out


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


class Metrics:
    def __init__(self, num_layers: int = 1):
        self._lock = threading.Lock()
        self.requests: dict[int, int] = {}
        self.errors: dict[str, int] = {}
        self.latency = _Histogram(LATENCY_BUCKETS)
        self.exit_layer = _Histogram(range(1, max(num_layers, 1) + 1))
        self.batch = _Histogram(BATCH_BUCKETS)
        self.rows = 0
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}  # name -> (help, read)

    def set_layers(self, num_layers: int) -> None:
        with self._lock:
            self.exit_layer = _Histogram(range(1, num_layers + 1))

    def request(self, code: int, seconds: float, error_kind: str | None = None) -> None:
        with self._lock:
            self.requests[code] = self.requests.get(code, 0) + 1
            self.latency.observe(seconds)
            if error_kind is not None:
                self.errors[error_kind] = self.errors.get(error_kind, 0) + 1

    def answered_rows(self, exit_layers, row_errors: int = 0) -> None:
        with self._lock:
            for layer in exit_layers:
                self.exit_layer.observe(int(layer))
            self.rows += len(exit_layers)
            if row_errors:
                self.errors["nonfinite_output"] = self.errors.get("nonfinite_output", 0) + row_errors

    def batch_run(self, rows: int) -> None:
        with self._lock:
            self.batch.observe(rows)

    def text(self) -> str:
        with self._lock:
            out = ["# HELP berxit_requests_total Requests answered, by HTTP status.",
                   "# TYPE berxit_requests_total counter"]
            out += [f'berxit_requests_total{{code="{c}"}} {n}' for c, n in sorted(self.requests.items())]
            out += ["# HELP berxit_errors_total Error answers (and rows without an answer), by kind.",
                    "# TYPE berxit_errors_total counter"]
            out += [f'berxit_errors_total{{kind="{k}"}} {n}' for k, n in sorted(self.errors.items())]
            out += ["# HELP berxit_request_duration_seconds Time from arrival to answer.",
                    "# TYPE berxit_request_duration_seconds histogram"]
            out += self.latency.lines("berxit_request_duration_seconds")
            out += ["# HELP berxit_rows_total Rows answered.", "# TYPE berxit_rows_total counter",
                    f"berxit_rows_total {self.rows}"]
            out += ["# HELP berxit_exit_layer Layer each answered row left the model at.",
                    "# TYPE berxit_exit_layer histogram"]
            out += self.exit_layer.lines("berxit_exit_layer")
            out += ["# HELP berxit_batch_rows Rows per graph call.", "# TYPE berxit_batch_rows histogram"]
            out += self.batch.lines("berxit_batch_rows")
            gauges = dict(self.gauges)
        for name, (help_, fn) in sorted(gauges.items()):
            try:
                v = float(fn())
            except Exception:  # noqa: BLE001 - a gauge must never break /metrics
                continue
            out += [f"# HELP {name} {help_}", f"# TYPE {name} gauge", f"{name} {_num(v)}"]
        return "\n".join(out) + "\n"
