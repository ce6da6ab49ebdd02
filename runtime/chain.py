"""The one early-exit loop, for every backend.

    embed -> stage 1 -> decide -> stage 2 -> decide -> ... -> stage E (always exits)
                          |                    |
                     rows that exit       rows that exit      (non-finite rows leave with an error)

Between stages the loop reads each live row's logits and exit signals, asks the policy which
rows exit, checks that what they answer is finite, records them, and keeps only the others
(compaction), cut to the longest remaining row (right padding). Results come back in input
order. A backend only embeds, runs a stage and keeps rows (runtime/backends/base.py).

Runs can also be driven one stage at a time (`start` / `advance` / `merge` / `drop`): a server
(runtime/scheduler.py) batches rows of different requests that have reached the same exit into
one run of the next stage, and drops the rows of requests that were cancelled.
Workspaces come from a pool: one per concurrent run; backends with a single workspace (one CUDA
stream) serialise runs there, which makes every backend safe to share between threads.
"""
from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from .backends.base import Backend, HiddenState, Workspace
from .policies import POLICIES, ExitPolicy, LayerOutputs, PolicyState, decide, derive_signal, derive_signals

NONFINITE = "non-finite output"
_SENSE = {"confidence": 1, "lte": 1, "entropy": -1, "fixed": 0}  # batch-1 fast path: exit if signal >= / <= T


@dataclass
class ChainResult:
    """Per input row, in input order."""

    exit_layer: np.ndarray  # [B] int64, 1-based layer the row left at
    logits: np.ndarray  # [B, C] float32, the exit's logits (regression: [B, 1] values)
    signals: Mapping[str, np.ndarray]  # name -> [B] float32, at the exit
    error: list[str | None]  # None, or why the row has no trustworthy answer (non-finite outputs)


class _LazySignals(Mapping):
    """Every signal of a batch-1 exit, derived from (copies of) the head's outputs on first read.
    A caller that wants the label alone never pays for softmaxes it does not read: right after
    a graph run the caches are cold and deriving them costs ~0.1 ms, 1-2% of a 6-layer run."""

    def __init__(self, chain: "Chain", given: dict[str, np.ndarray], logits: np.ndarray, lte: np.ndarray | None):
        self._args: tuple | None = (chain.signals, logits, lte, given)
        self._d: dict[str, np.ndarray] = {}

    def _get(self) -> dict[str, np.ndarray]:
        if self._args is not None:
            self._d, self._args = derive_signals(*self._args), None
        return self._d

    def __getitem__(self, name: str) -> np.ndarray:
        return self._get()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())

    def __repr__(self) -> str:
        return repr(self._get())


@dataclass
class Finished:
    """Rows that left the chain at one stage (their caller-side ids)."""

    rows: np.ndarray  # [n] caller row ids
    exit_layer: np.ndarray  # [n]
    logits: np.ndarray  # [n, C]
    signals: dict[str, np.ndarray]
    error: list[str | None]


@dataclass
class Cohort:
    """Rows in flight: embedded, and past `stage` stages. Owns a workspace until it finishes."""

    policy: ExitPolicy
    rows: np.ndarray  # caller row ids, [b]
    lengths: np.ndarray  # real tokens per row, [b]
    state: PolicyState
    stage: int = 0  # stages already run
    ws: Workspace | None = field(default=None, repr=False)

    @property
    def size(self) -> int:
        return len(self.rows)

    @property
    def done(self) -> bool:
        return self.ws is None


class _Pool:
    """Workspaces handed to one run at a time; at most `limit` exist (None: no limit)."""

    def __init__(self, backend: Backend, keep_idle: int = 8):
        self.backend, self.limit, self.keep_idle = backend, backend.max_workspaces, keep_idle
        self.free: list[Workspace] = []
        self.count = 0
        self.cv = threading.Condition()
        self.closed = False

    def acquire(self) -> Workspace:
        with self.cv:
            while True:
                if self.closed:
                    raise RuntimeError("the model is closed")
                if self.free:
                    return self.free.pop()
                if self.limit is None or self.count < self.limit:
                    self.count += 1
                    break
                self.cv.wait()
        try:
            return self.backend.workspace()
        except BaseException:
            with self.cv:
                self.count -= 1
                self.cv.notify()
            raise

    def release(self, ws: Workspace) -> None:
        with self.cv:
            if not self.closed and len(self.free) < self.keep_idle:
                self.free.append(ws)
                self.cv.notify()
                return
            self.count -= 1
            self.cv.notify()
        ws.close()

    def close(self) -> None:
        with self.cv:
            self.closed = True
            free, self.free = self.free, []
            self.cv.notify_all()
        for ws in free:
            ws.close()


class Chain:
    """Early exit over a backend's stages. `exits` are the 1-based exit layers, one per stage."""

    def __init__(self, backend: Backend, exits: tuple[int, ...], task_kind: str, num_outputs: int,
                 signals: tuple[str, ...]):
        self.backend, self.exits, self.kind = backend, tuple(exits), task_kind
        self.num_outputs, self.signals = num_outputs, tuple(signals)
        self._exit_layers = np.asarray(self.exits, dtype=np.int64)
        self._pool = _Pool(backend)
        self._thr: dict[ExitPolicy, tuple[float, ...]] = {}

    @property
    def num_stages(self) -> int:
        return len(self.exits)

    # -- whole batches ------------------------------------------------------------------------
    def run(self, input_ids: np.ndarray, token_type_ids: np.ndarray, attention_mask: np.ndarray,
            policy: ExitPolicy) -> ChainResult:
        """One tokenized batch ([B, S] int64, right padded) through the chain with early exit."""
        if getattr(input_ids, "ndim", 0) == 2 and input_ids.shape[0] == 1 and policy.name in _SENSE:
            return self._run_one(input_ids, token_type_ids, attention_mask, policy)
        return self._run_batch(input_ids, token_type_ids, attention_mask, policy)

    def _run_one(self, input_ids: np.ndarray, token_type_ids: np.ndarray, attention_mask: np.ndarray,
                 policy: ExitPolicy) -> ChainResult:
        """Batch 1 under a threshold or fixed policy (the latency case): the same decisions as
        `decide` on plain Python floats, with no per-stage arrays or objects. Thresholds are
        compared as the float32 values `decide`'s numpy comparison casts them to."""
        ids, tt, mask, _ = _trim(input_ids, token_type_ids, attention_mask)
        sense, need = _SENSE[policy.name], POLICIES[policy.name].signal
        thr = self._thresholds(policy)
        last, fixed_at = self.num_stages, policy.exit_position
        ws = self._pool.acquire()
        try:
            ws.embed(ids, tt, mask)
            for k in range(last):
                o = ws.run_stage(k)
                logits, sig, lte = o.logits, o.signals, o.lte_logit
                # finite iff every value is (a float64 sum of float32 values cannot overflow)
                total = sum(logits[0].tolist())
                if lte is not None:
                    total += lte.item(0)
                for m in sig:
                    total += sig[m].item(0)
                v = 0.0
                if need is not None:
                    s = sig.get(need)
                    if s is None:
                        s = derive_signal(need, logits, lte)
                        sig = {**sig, need: s}
                    v = float(s[0])
                    total += v
                ok = math.isfinite(total)
                if ok and k + 1 < last:
                    if sense == 0:
                        go = k + 1 >= fixed_at
                    else:
                        go = v >= thr[k] if sense > 0 else v <= thr[k]
                    if not go:
                        continue
                layer = self.exits[k]
                err = None if ok else (f"{NONFINITE} (NaN or infinity) at layer {layer}: the artifact is broken; "
                                       f"re-export it")
                lg = logits.copy()  # the head's buffers are the workspace's: copied before it goes back
                sig = {n: v.copy() for n, v in sig.items()}
                return ChainResult(np.full(1, layer, np.int64), lg, _LazySignals(self, sig, lg,
                                                                                 None if lte is None else lte.copy()), [err])
            raise AssertionError("unreachable: the last stage always exits")
        finally:
            self._pool.release(ws)

    def _thresholds(self, policy: ExitPolicy) -> tuple[float, ...]:
        """The policy's threshold at every exit position, as float32 values (cached per policy)."""
        t = self._thr.get(policy)
        if t is None:
            t = () if policy.name == "fixed" else tuple(float(np.float32(policy.at(p)))
                                                        for p in range(1, self.num_stages + 1))
            if len(self._thr) >= 64:
                self._thr.clear()
            self._thr[policy] = t
        return t

    def _run_batch(self, input_ids: np.ndarray, token_type_ids: np.ndarray, attention_mask: np.ndarray,
                   policy: ExitPolicy) -> ChainResult:
        b = input_ids.shape[0]
        cohort = self.start(input_ids, token_type_ids, attention_mask, policy)
        res = None
        try:
            while cohort.ws is not None:
                f = self.advance(cohort)
                if f is None:
                    continue
                if res is None and len(f.rows) == b:  # the whole batch left at once (always, at batch 1)
                    return ChainResult(f.exit_layer, f.logits, f.signals, f.error)
                if res is None:
                    res = ChainResult(np.zeros(b, np.int64), np.zeros((b, self.num_outputs), np.float32),
                                      {n: np.zeros(b, np.float32) for n in self.signals}, [None] * b)
                res.exit_layer[f.rows] = f.exit_layer
                res.logits[f.rows] = f.logits
                for n in self.signals:
                    res.signals[n][f.rows] = f.signals[n]
                for r, e in zip(f.rows.tolist(), f.error):
                    res.error[r] = e
        finally:
            self.abandon(cohort)
        return res

    def all_outputs(self, input_ids: np.ndarray, token_type_ids: np.ndarray,
                    attention_mask: np.ndarray) -> list[LayerOutputs]:
        """Every exit's outputs for every row (no exits taken): evaluation and calibration."""
        ids, tt, mask, _ = _trim(input_ids, token_type_ids, attention_mask)
        ws = self._pool.acquire()
        try:
            ws.embed(ids, tt, mask)
            outs = []
            for k in range(self.num_stages):
                o = ws.run_stage(k)
                sig = self._all_signals(o.signals, o.logits, o.lte_logit)
                outs.append(LayerOutputs(o.logits.copy(), sig.get("confidence"), sig.get("entropy"), sig.get("lte")))
            return outs
        finally:
            self._pool.release(ws)

    def monolithic(self, input_ids: np.ndarray, token_type_ids: np.ndarray,
                   attention_mask: np.ndarray) -> LayerOutputs:
        """The backend's single-graph reference (all layers, last head), copied out."""
        ids, tt, mask, _ = _trim(input_ids, token_type_ids, attention_mask)
        ws = self._pool.acquire()
        try:
            o = ws.monolithic(ids, tt, mask)
            return LayerOutputs(o.logits.copy())
        finally:
            self._pool.release(ws)

    def run_monolithic(self, input_ids: np.ndarray, token_type_ids: np.ndarray,
                       attention_mask: np.ndarray) -> ChainResult:
        """The single graph as a plain deployment answers: every row at the last layer, its logits
        checked for finiteness, in `run`'s result layout (signals: those the logits give)."""
        lg = self.monolithic(input_ids, token_type_ids, attention_mask).logits
        bad = ~np.isfinite(lg).all(axis=1)
        layer = int(self._exit_layers[-1])
        err = [f"{NONFINITE} (NaN or infinity) in the monolithic graph: the artifact is broken; re-export it"
               if x else None for x in bad.tolist()]
        sig = {m: derive_signal(m, lg, None) for m in self.signals if m != "lte"}
        return ChainResult(np.full(lg.shape[0], layer, np.int64), lg, sig, err)

    # -- one stage at a time ------------------------------------------------------------------
    def start(self, input_ids: np.ndarray, token_type_ids: np.ndarray, attention_mask: np.ndarray,
              policy: ExitPolicy, rows: np.ndarray | None = None) -> Cohort:
        """Embed a batch; `rows` are the caller's ids for its rows (default 0..B-1)."""
        ids, tt, mask, lengths = _trim(input_ids, token_type_ids, attention_mask)
        b = ids.shape[0]
        rows = np.arange(b) if rows is None else np.asarray(rows)
        if len(rows) != b:
            raise ValueError(f"{len(rows)} row ids for a batch of {b}")
        ws = self._pool.acquire()
        try:
            ws.embed(ids, tt, mask)
        except BaseException:
            self._pool.release(ws)
            raise
        return Cohort(policy, rows, lengths, PolicyState(b), 0, ws)

    def advance(self, c: Cohort) -> Finished | None:
        """Run the cohort's next stage; return the rows that exit there (they leave the cohort), or
        None if none does. When no row is left the cohort's workspace goes back to the pool.
        (Batch-1 latency pays for every line here: keep it lean.)"""
        ws = c.ws
        if ws is None:
            raise ValueError("this cohort has finished")
        k = c.stage
        o = ws.run_stage(k)
        sig, logits = o.signals, o.logits
        need = POLICIES[c.policy.name].signal
        if need is not None and need not in sig:  # only the signal the policy reads is derived here
            sig = {**sig, need: derive_signal(need, logits, o.lte_logit)}
        out = LayerOutputs(logits, sig.get("confidence"), sig.get("entropy"), sig.get("lte"))
        done = decide(c.policy, k + 1, out, c.state, self.kind, self.num_stages)
        if len(done) == 1:  # batch 1 (the latency case): plain Python scalars, no array passes
            total = sum(logits[0].tolist()) + (o.lte_logit.item(0) if o.lte_logit is not None else 0.0)
            for m in sig:
                total += float(sig[m][0])
            ok = math.isfinite(total)
            c.stage = k + 1
            if ok and not done[0]:
                return None
            layer = self.exits[k]
            fin = Finished(c.rows, np.full(1, layer, np.int64), logits.copy(), self._all_signals(sig, logits, o.lte_logit),
                           [None if ok else f"{NONFINITE} (NaN or infinity) at layer {layer}: the artifact is broken; "
                                            f"re-export it"])
            self._finish(c)
            return fin
        # One pass for finiteness: a sum is NaN or infinite if any term is (inf - inf is NaN too).
        chk = logits.sum(axis=1, dtype=np.float64)  # float64: finite values never sum to infinity
        if o.lte_logit is not None:
            chk = chk + o.lte_logit
        for n in sig:
            chk = chk + sig[n]
        bad = ~np.isfinite(chk)
        if bad.any():
            done = done | bad
        c.stage = k + 1
        if not done.any():
            return None
        layer = self.exits[k]
        if done.all():
            idx = None
            rows, lg, bd = c.rows, logits.copy(), bad
            sg = self._all_signals(sig, logits, o.lte_logit)
        else:
            idx = np.flatnonzero(done)
            rows, lg, bd = c.rows[idx], logits[idx], bad[idx]
            sg = self._all_signals({m: v[idx] for m, v in sig.items()}, lg,
                                   None if o.lte_logit is None else o.lte_logit[idx])
        err = [None] * len(rows) if not bd.any() else [
            f"{NONFINITE} (NaN or infinity) at layer {layer}: the artifact is broken; re-export it" if x else None
            for x in bd.tolist()]
        fin = Finished(rows, np.full(len(rows), layer, np.int64), lg, sg, err)
        if idx is None:
            self._finish(c)
        else:
            keep = np.flatnonzero(~done)
            c.rows, c.lengths, c.state = c.rows[keep], c.lengths[keep], c.state.take(keep)
            ws.keep(keep, int(c.lengths.max()))
        return fin

    def _all_signals(self, sig: dict[str, np.ndarray], logits: np.ndarray,
                     lte_logit: np.ndarray | None) -> dict[str, np.ndarray]:
        """Every signal of the model for these rows (copies): given ones, the others derived."""
        return derive_signals(self.signals, logits, lte_logit, sig)

    def merge(self, cohorts: list[Cohort]) -> Cohort:
        """One cohort of the rows of several that have run the same stages under the same policy
        (their hidden states meet, padded to the longest row, in a fresh workspace)."""
        live = [c for c in cohorts if not c.done]
        if len(live) < 2:
            return live[0] if live else cohorts[0]
        stage, policy = live[0].stage, live[0].policy
        if any(c.stage != stage or c.policy != policy for c in live):
            raise ValueError("only cohorts at the same stage with the same policy can merge")
        if stage == 0:
            raise ValueError("cohorts merge after a stage has run (before it, batch the inputs)")
        saved = [c.ws.save() for c in live]
        s = max(h.hidden.shape[1] for h in saved)
        hidden = np.concatenate([_pad(h.hidden, s) for h in saved])
        mask = np.concatenate([_pad(h.mask, s) for h in saved])
        for c in live:
            self._finish(c)
        ws = self._pool.acquire()
        try:
            ws.load(HiddenState(hidden, mask, stage))
        except BaseException:
            self._pool.release(ws)
            raise
        return Cohort(policy, np.concatenate([c.rows for c in live]), np.concatenate([c.lengths for c in live]),
                      PolicyState.concat([c.state for c in live]), stage, ws)

    def drop(self, c: Cohort, rows: np.ndarray) -> None:
        """Take caller rows `rows` out of the cohort without an answer (a cancelled or timed-out
        request); the others go on. A cohort left with no row gives its workspace back."""
        if c.ws is None:
            return
        keep = np.flatnonzero(~np.isin(c.rows, np.asarray(rows)))
        if len(keep) == c.size:
            return
        if len(keep) == 0:
            self._finish(c)
            return
        c.rows, c.lengths, c.state = c.rows[keep], c.lengths[keep], c.state.take(keep)
        c.ws.keep(keep, int(c.lengths.max()))

    def abandon(self, c: Cohort) -> None:
        """Give a cohort's workspace back without finishing it (errors, cancelled requests)."""
        if c.ws is not None:
            self._finish(c)

    def _finish(self, c: Cohort) -> None:
        ws, c.ws = c.ws, None
        self._pool.release(ws)

    def close(self) -> None:
        self._pool.close()


def _trim(ids: np.ndarray, tt: np.ndarray, mask: np.ndarray):
    """Inputs cut to the longest row (right padding), as contiguous int64."""
    if ids.ndim != 2 or ids.shape != mask.shape or ids.shape != tt.shape:
        raise ValueError(f"input_ids, token_type_ids and attention_mask must share one [B, S] shape, "
                         f"got {ids.shape}, {tt.shape}, {mask.shape}")
    if ids.shape[0] == 0:
        raise ValueError("an empty batch")
    if ids.shape[0] == 1 and _plain(ids) and _plain(tt) and _plain(mask):  # batch 1: no copies when nothing is cut
        n = int(mask.sum())
        if n < 1:
            raise ValueError("every row needs at least one token")
        if n == ids.shape[1]:
            return ids, tt, mask, np.full(1, n, np.int64)
    lengths = mask.sum(axis=1).astype(np.int64)
    if (lengths < 1).any():
        raise ValueError("every row needs at least one token")
    s = int(lengths.max())
    c = lambda a: np.ascontiguousarray(a[:, :s], dtype=np.int64)  # noqa: E731
    return c(ids), c(tt), c(mask), lengths


def _plain(a: np.ndarray) -> bool:
    return a.dtype == np.int64 and a.flags.c_contiguous


def _pad(a: np.ndarray, s: int) -> np.ndarray:
    if a.shape[1] == s:
        return a
    width = [(0, 0), (0, s - a.shape[1])] + [(0, 0)] * (a.ndim - 2)
    return np.pad(a, width)
