"""Which rows run the next stage together: the batching scheduler behind the HTTP server
(runtime/serve.py) and the Ray Serve deployment (runtime/serve_ray.py).

Requests (tokenized rows + a policy + a deadline) are submitted from any thread and answered
through a `concurrent.futures.Future`. One scheduler thread drives the model; exit decisions,
finiteness checks and result assembly stay in the early-exit loop (runtime/chain.py): this
module only decides which rows go into which `start` / `merge` / `advance` call.

Batching (`SchedulerConfig.batching`):
  layer    continuous batching at layer boundaries. Between two stage runs the scheduler looks at
           every group of rows that share a stage and a policy (newly arrived rows form the group
           "before stage 1"), picks one group, merges its cohorts (rows of many requests) and runs
           their next stage; rows that exit leave at once (their request is answered as soon as
           its last row is done), new rows join at the embeddings between any two steps.
           Which group: the least advanced one (most rows leave after a layer or two, so newly
           arrived rows run first, catch up with older ones and merge with them where they meet),
           unless a group has been passed over `max_passes` times: then the most advanced of those
           runs (no row starves; max_passes=0 is oldest-first).
  request  dynamic batching of whole requests: waiting requests (up to max_batch_rows rows) form
           one batch that runs until its last row exits; then the next batch.
  none     one request at a time.
Mode `monolithic` runs the artifact's single graph instead of the chain (request / none only):
the no-early-exit baseline behind the same server.

Answers do not depend on which rows share a batch: rows share a graph call only with rows of
the same token length (and policy), so no row is ever padded, and onnxruntime's fp32 kernels give
a row the same bits whatever the batch size (tests/test_serve.py checks alone == mixed, bit for
bit). Padding is masked, but a longer padded sequence changes the order of the float sums
(measured: last-bit differences in 1 of 6 rows); `mix_lengths=True` accepts that for bigger
batches of varied lengths. Dynamically quantized (int8-dynamic) graphs scale activations over the
whole batch, so there `isolate_rows=True` keeps every row in graph calls of its own; statically
quantized int8 graphs (calibrated, constant scales) batch like fp32 (runtime.serve.isolate_rows).
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .chain import Chain, ChainResult, Cohort, Finished
from .policies import ExitPolicy
from .tokenize import Encoded

log = logging.getLogger(__name__)

BATCHING = ("layer", "request", "none")
MODES = ("early-exit", "monolithic")


class SchedulerError(RuntimeError):
    """A request the scheduler did not answer; `kind` names why (the server maps it to a status)."""

    kind = "internal"


class QueueFull(SchedulerError):
    kind = "queue_full"

    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(SchedulerError):
    kind = "deadline_exceeded"


class ShuttingDown(SchedulerError):
    kind = "shutting_down"


class Cancelled(SchedulerError):
    kind = "cancelled"


@dataclass(frozen=True)
class SchedulerConfig:
    batching: str = "layer"
    mode: str = "early-exit"
    max_batch_rows: int = 32  # rows in one stage run (one graph call)
    max_queue_rows: int = 512  # rows accepted and not yet answered; more -> QueueFull
    max_passes: int = 2  # layer batching: times a group may be passed over by less advanced rows
    batch_wait_ms: float = 0.0  # request batching: wait this long for a batch to fill
    mix_lengths: bool = False  # let rows of different token lengths share a batch (see the module docstring)
    isolate_rows: bool = False  # every row in graph calls of its own (int8-dynamic: activation scales span the batch)

    def __post_init__(self):
        if self.batching not in BATCHING:
            raise ValueError(f"batching must be one of {', '.join(BATCHING)}, got {self.batching!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.mode == "monolithic" and self.batching == "layer":
            raise ValueError("the monolithic graph has no layer boundaries: use batching 'request' or 'none'")
        for name in ("max_batch_rows", "max_queue_rows"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if isinstance(self.max_passes, bool) or not isinstance(self.max_passes, int) or self.max_passes < 0:
            raise ValueError(f"max_passes must be an integer >= 0, got {self.max_passes!r}")
        if not 0 <= self.batch_wait_ms < 10_000:
            raise ValueError(f"batch_wait_ms must lie in [0, 10000), got {self.batch_wait_ms!r}")


class _Job:
    """One request: its rows' results fill in as they exit."""

    def __init__(self, enc: Encoded, policy: ExitPolicy, deadline: float | None, num_outputs: int,
                 signals: tuple[str, ...]):
        n = enc.shape[0]
        self.enc, self.policy, self.deadline, self.n = enc, policy, deadline, n
        self.arrival = time.monotonic()
        self.future: Future = Future()
        self.result = ChainResult(np.zeros(n, np.int64), np.zeros((n, num_outputs), np.float32),
                                  {s: np.zeros(n, np.float32) for s in signals}, [None] * n)
        self.remaining = n
        self.first_row = -1  # global id of row 0 once admitted
        self.cancelled = False
        self.open = True  # counted in the scheduler's open rows

    def fill(self, local: np.ndarray, f: Finished, sel: np.ndarray) -> None:
        r = self.result
        r.exit_layer[local] = f.exit_layer[sel]
        r.logits[local] = f.logits[sel]
        for k in r.signals:
            if k in f.signals:  # the monolithic graph gives no LTE signal
                r.signals[k][local] = f.signals[k][sel]
        for i, j in zip(local.tolist(), sel.tolist()):
            r.error[i] = f.error[j]
        self.remaining -= len(local)


def _stack(encs: list[Encoded]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of several requests as one right-padded [B, S] batch."""
    if len(encs) == 1:  # the common case under light load: nothing to pad or copy
        e = encs[0]
        return e.input_ids, e.token_type_ids, e.attention_mask
    s = max(e.shape[1] for e in encs)
    pad = lambda a: np.pad(a, ((0, 0), (0, s - a.shape[1])))  # noqa: E731
    return tuple(np.concatenate([pad(getattr(e, k)) for e in encs])  # type: ignore[return-value]
                 for k in ("input_ids", "token_type_ids", "attention_mask"))


class Scheduler:
    """Batches requests onto one `Chain` from a thread of its own. `on_run(rows)` is called after
    every graph call with the number of rows it ran (metrics)."""

    def __init__(self, chain: Chain, config: SchedulerConfig = SchedulerConfig(),
                 on_run: Callable[[int], None] | None = None):
        self.chain, self.cfg, self.on_run = chain, config, on_run
        cap = chain.backend.max_batch
        self.cap = min(config.max_batch_rows, cap) if cap else config.max_batch_rows
        self._cv = threading.Condition()
        self._waiting: list[_Job] = []
        self._active: dict[_Job, None] = {}  # admitted, not answered (insertion order = age)
        self._owner: dict[int, tuple[_Job, int]] = {}  # global row id -> (job, row in job)
        self._cohorts: list[Cohort] = []
        self._passes: dict[int, int] = {}  # id(cohort) or 0 (the waiting rows) -> times passed over
        self._ids = itertools.count()
        self._rows_open = 0  # rows accepted, not answered
        self._row_seconds = 1e-3  # running mean of the time per row (Retry-After estimates)
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name="berxit-scheduler", daemon=True)
        self._thread.start()

    # -- the caller's side (any thread) ------------------------------------------------------------
    def submit(self, enc: Encoded, policy: ExitPolicy, deadline: float | None = None) -> Future:
        """Queue a tokenized request; its Future gives a ChainResult (its rows, in order) or raises
        a SchedulerError. `deadline`: time.monotonic() by which it must be answered."""
        n = enc.shape[0]
        if n > self.cap:
            raise ValueError(f"a request of {n} rows is larger than a batch ({self.cap} rows)")
        job = _Job(enc, policy, deadline, self.chain.num_outputs, self.chain.signals)
        with self._cv:
            if self._closing:
                raise ShuttingDown("the server is shutting down; retry on another replica")
            if self._rows_open + n > self.cfg.max_queue_rows:
                wait = max(1.0, self._rows_open * self._row_seconds)
                raise QueueFull(f"{self._rows_open} rows are queued or running (limit {self.cfg.max_queue_rows}); "
                                f"retry later", retry_after_s=wait)
            self._rows_open += n
            self._waiting.append(job)
            self._cv.notify()
        job.future.add_done_callback(lambda f: f.cancelled() and self._cancel(job))
        return job.future

    def _cancel(self, job: _Job) -> None:
        with self._cv:
            job.cancelled = True
            self._cv.notify()

    def cancel(self, future: Future) -> None:
        """Give up on a request (its rows leave their batches at the next step)."""
        future.cancel()

    @property
    def queued_rows(self) -> int:
        return sum(j.n for j in self._waiting)

    @property
    def alive(self) -> bool:
        """The scheduler thread runs (False after close)."""
        return self._thread.is_alive()

    @property
    def open_rows(self) -> int:
        return self._rows_open

    def close(self, timeout: float = 30.0) -> None:
        """Refuse new requests, answer the ones accepted (up to `timeout` seconds), then stop."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        self._thread.join(timeout)
        with self._cv:
            left = list(self._waiting) + list(self._active)
            self._waiting.clear()
        for job in left:
            self._fail(job, ShuttingDown("the server shut down before this request was answered"))
        if self._thread.is_alive():  # stuck in a graph call: it ends when that call returns
            log.warning("scheduler still busy after %.0f s of shutdown", timeout)

    # -- the scheduler thread --------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not (self._waiting or self._cohorts or self._closing):
                    self._cv.wait()
                if self._closing and not (self._waiting or self._cohorts or self._active):
                    return
            try:
                self._expire()
                if self.cfg.batching == "layer":
                    self._layer_step()
                else:
                    self._batch_step()
            except Exception as e:  # noqa: BLE001 - one failed batch must not stop the server
                log.exception("a batch failed")
                for c in self._cohorts:
                    self.chain.abandon(c)
                self._cohorts.clear()
                self._passes.clear()
                for job in list(self._active):
                    self._fail(job, SchedulerError(f"the model failed on this batch ({type(e).__name__}: {e})"))

    def _expire(self) -> None:
        """Requests past their deadline or cancelled: answered with an error, their rows dropped."""
        now = time.monotonic()
        gone = lambda j: j.cancelled or (j.deadline is not None and now >= j.deadline)  # noqa: E731
        with self._cv:
            dead_waiting = [j for j in self._waiting if gone(j)]
            if dead_waiting:
                self._waiting = [j for j in self._waiting if not gone(j)]
        dead = dead_waiting + [j for j in self._active if gone(j)]
        if not dead:
            return
        rows = np.concatenate([np.arange(j.first_row, j.first_row + j.n) for j in dead if j.first_row >= 0] or
                              [np.zeros(0, np.int64)])
        if len(rows):
            for c in self._cohorts:
                self.chain.drop(c, rows)
            self._cohorts = [c for c in self._cohorts if not c.done]
        for j in dead:
            self._fail(j, Cancelled("cancelled") if j.cancelled else
                       DeadlineExceeded(f"not answered within its deadline ({(now - j.arrival) * 1e3:.0f} ms after "
                                        f"it arrived)"))

    def _admit(self, max_jobs: int | None = None) -> list[_Job]:
        """Waiting requests, oldest first, of one policy, up to a batch of rows."""
        with self._cv:
            if not self._waiting:
                return []
            pol, rows, take, rest = self._waiting[0].policy, 0, [], []
            for j in self._waiting:
                fits = rows + j.n <= self.cap and (max_jobs is None or len(take) < max_jobs)
                if j.policy == pol and fits:
                    take.append(j)
                    rows += j.n
                else:
                    rest.append(j)
            self._waiting = rest
        for j in take:
            j.first_row = next(self._ids)
            for _ in range(j.n - 1):
                next(self._ids)
            for i in range(j.n):
                self._owner[j.first_row + i] = (j, i)
            self._active[j] = None
        return take

    def _start(self, jobs: list[_Job]) -> list[Cohort]:
        """Embed admitted rows: one cohort, or one per token length (unless mix_lengths)."""
        ids, tt, mask = _stack([j.enc for j in jobs])
        rows = np.concatenate([np.arange(j.first_row, j.first_row + j.n) for j in jobs])
        if self.cfg.mix_lengths and not self.cfg.isolate_rows:
            return [self.chain.start(ids, tt, mask, jobs[0].policy, rows)]
        lengths = mask.sum(axis=1)
        out = []
        for sel in self._groups(lengths):
            n = int(lengths[sel[0]])
            out.append(self.chain.start(ids[sel, :n], tt[sel, :n], mask[sel, :n], jobs[0].policy, rows[sel]))
        return out

    def _groups(self, lengths: np.ndarray) -> list[np.ndarray]:
        """Rows that may share a graph call: one per row (isolate_rows), or those of one length."""
        if self.cfg.isolate_rows:
            return [np.array([i]) for i in range(len(lengths))]
        if len(lengths) == 1:
            return [np.zeros(1, np.int64)]
        return [np.flatnonzero(lengths == n) for n in np.unique(lengths)]

    def _key(self, c: Cohort) -> tuple:
        """Cohorts that may merge: same stage, same policy (and same length unless mix_lengths)."""
        if self.cfg.isolate_rows:
            return (c.stage, c.policy, id(c))
        return (c.stage, c.policy) if self.cfg.mix_lengths else (c.stage, c.policy, int(c.lengths[0]))

    def _advance(self, c: Cohort) -> None:
        t0, n = time.perf_counter(), c.size
        f = self.chain.advance(c)
        self._timed(t0, n)
        self._deliver(f)

    def _timed(self, t0: float, rows: int) -> None:
        dt = time.perf_counter() - t0
        self._row_seconds = 0.9 * self._row_seconds + 0.1 * dt / max(rows, 1)
        if self.on_run is not None:
            self.on_run(rows)

    def _batch_step(self) -> None:
        """request / none batching: one batch from admission to its last row."""
        if self.cfg.batching == "request" and self.cfg.batch_wait_ms > 0:
            with self._cv:
                until = self._waiting[0].arrival + self.cfg.batch_wait_ms / 1e3 if self._waiting else 0
                while (sum(j.n for j in self._waiting) < self.cap and not self._closing
                       and time.monotonic() < until):
                    self._cv.wait(until - time.monotonic())
        jobs = self._admit(1 if self.cfg.batching == "none" else None)
        if not jobs:
            return
        if self.cfg.mode == "monolithic":
            ids, tt, mask = _stack([j.enc for j in jobs])
            rows = np.concatenate([np.arange(j.first_row, j.first_row + j.n) for j in jobs])
            lengths = mask.sum(axis=1)
            for sel in ([np.arange(len(rows))] if self.cfg.mix_lengths and not self.cfg.isolate_rows else
                        self._groups(lengths)):
                s = int(lengths[sel].max())
                t0 = time.perf_counter()
                res = self.chain.run_monolithic(ids[sel, :s], tt[sel, :s], mask[sel, :s])
                self._timed(t0, len(sel))
                self._deliver(Finished(rows[sel], res.exit_layer, res.logits, res.signals, res.error))
            return
        self._cohorts = self._start(jobs)
        try:
            for c in self._cohorts:
                while not c.done:
                    self._advance(c)
                    self._expire()
        finally:
            for c in self._cohorts:
                self.chain.abandon(c)
            self._cohorts = []

    def _layer_step(self) -> None:
        """layer batching: one stage run of the group chosen by the rule in the module docstring."""
        self._cohorts = [c for c in self._cohorts if not c.done]
        live = {id(c) for c in self._cohorts} | {0}
        self._passes = {k: v for k, v in self._passes.items() if k in live}
        groups: dict[tuple, list[Cohort]] = {}
        for c in self._cohorts:
            groups.setdefault(self._key(c), []).append(c)
        # (stage, passes, key): the waiting rows are the group at stage 0, key 0.
        cands = [(k[0], max(self._passes.get(id(c), 0) for c in g), k) for k, g in groups.items()]
        if self._waiting:
            cands.append((0, self._passes.get(0, 0), 0))
        if not cands:
            return
        starved = [x for x in cands if x[1] >= self.cfg.max_passes]
        pick = max(starved, key=lambda x: x[0]) if starved else min(cands, key=lambda x: x[0])
        for x in cands:  # everyone not picked has been passed over once more
            if x is not pick:
                for key in ([0] if x[2] == 0 else [id(c) for c in groups[x[2]]]):
                    self._passes[key] = self._passes.get(key, 0) + 1
        if pick[2] == 0:  # new rows: embedded and through their first stage (one run per length)
            self._passes.pop(0, None)
            jobs = self._admit()
            new = self._start(jobs) if jobs else []
            self._cohorts += new
            for c in new:
                self._advance(c)
            return
        group = groups[pick[2]]
        for g in group:
            self._passes.pop(id(g), None)
        self._advance(self._merge(group))

    def _merge(self, group: list[Cohort]) -> Cohort:
        """The group's cohorts (oldest first) merged up to a batch of rows; the rest wait."""
        take, rows = [], 0
        for g in group:
            if take and rows + g.size > self.cap:
                break
            take.append(g)
            rows += g.size
        if len(take) == 1:
            return take[0]
        passes = max(self._passes.pop(id(g), 0) for g in take)
        merged = self.chain.merge(take)
        gone = {id(g) for g in take}
        self._cohorts = [c for c in self._cohorts if id(c) not in gone] + [merged]
        if passes:
            self._passes[id(merged)] = passes
        return merged

    def _deliver(self, f: Finished | None) -> None:
        if f is None or not len(f.rows):  # no row left at this stage
            return
        by_job: dict[_Job, tuple[list[int], list[int]]] = {}
        for j, r in enumerate(f.rows.tolist()):
            owner = self._owner.pop(r, None)
            if owner is None:  # its request already failed (deadline) in this step
                continue
            loc, sel = by_job.setdefault(owner[0], ([], []))
            loc.append(owner[1])
            sel.append(j)
        for job, (loc, sel) in by_job.items():
            job.fill(np.asarray(loc), f, np.asarray(sel))
            if job.remaining == 0:
                late = job.deadline is not None and time.monotonic() > job.deadline
                if late:  # answered or 504: never a late answer the client stopped waiting for
                    self._fail(job, DeadlineExceeded(f"answered {(time.monotonic() - job.arrival) * 1e3:.0f} ms "
                                                     f"after it arrived, past its deadline"))
                elif self._done(job):
                    _settle(job.future, job.result)

    def _done(self, job: _Job) -> bool:
        """Count the job as answered (once); False if it already was."""
        with self._cv:
            self._active.pop(job, None)
            if not job.open:
                return False
            job.open = False
            self._rows_open -= job.n
            return True

    def _fail(self, job: _Job, err: SchedulerError) -> None:
        if job.first_row >= 0:
            for i in range(job.n):
                self._owner.pop(job.first_row + i, None)
        if self._done(job):
            _settle(job.future, error=err)


def _settle(fut: Future, result=None, error: BaseException | None = None) -> None:
    """Answer a Future unless its caller cancelled it meanwhile."""
    try:
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)
    except Exception:  # noqa: BLE001 - InvalidStateError: cancelled in the meantime
        pass
