"""Chains an artifact's per-layer ONNX graphs on onnxruntime (CPU) and exits early.

    encode -> embeddings -> layer 1 -> decide -> layer 2 -> decide -> ... -> layer L
                                        |                  |
                                   rows that exit      rows that exit

Three things make a chain of sessions as fast as one graph on a small CPU (../shared/PROBE.md):
  * one process-wide thread pool shared by every session (per-session pools keep spinning after
    their call and starve the next session);
  * one process-wide CPU arena shared by every session (a working set spread over one arena per
    graph costs cache misses);
  * IOBinding onto preallocated numpy buffers: layer i writes its hidden states straight into
    the buffer layer i+1 reads (ping-pong), and the exit signals land in small arrays the
    policy reads in place. Buffers and bindings are cached per (batch, seq) shape.
Rows that exit leave the batch between layers (compaction) and trailing padding no row needs
any more is cut, so the remaining layers run on less data.
"""
from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort

from . import manifest as M
from .backends import BackendError, providers_for
from .manifest import ArtifactError, Manifest, load_manifest
from .policies import ExitPolicy, LayerOutputs, PolicyState, decide, make_policy
from .tokenize import Encoded, TextEncoder

log = logging.getLogger(__name__)

_POOL_LOCK = threading.Lock()
_POOL_THREADS: int | None = None


def _ensure_global_pool(threads: int) -> None:
    """Create onnxruntime's process-wide thread pool once (it must exist before any session)."""
    global _POOL_THREADS
    with _POOL_LOCK:
        if _POOL_THREADS is None:
            from onnxruntime.capi import _pybind_state as C
            C.set_global_thread_pool_sizes(threads, 1)
            # One CPU arena shared by every session (session.use_env_allocators below): a chain
            # of per-session arenas spreads its working set over 7 arenas, and the caches pay
            # for it (it lowered chain vs monolithic in an interleaved A/B; see README).
            ort.create_and_register_allocator(
                ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT), None)
            _POOL_THREADS = threads
        elif _POOL_THREADS != threads:
            log.warning("onnxruntime's global thread pool already has %d threads; %d requested is ignored "
                        "(one pool per process).", _POOL_THREADS, threads)


def make_session(path: str | os.PathLike | bytes, threads: int | None = None,
                 providers: list[str] | None = None) -> ort.InferenceSession:
    """A CPU session on the process-wide pool. Every session of a process must use it once the
    pool exists (onnxruntime refuses per-session pools then), so all code here opens graphs this way."""
    _ensure_global_pool(threads or default_threads())
    so = ort.SessionOptions()
    so.use_per_session_threads = False
    so.add_session_config_entry("session.use_env_allocators", "1")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    src = path if isinstance(path, bytes) else str(path)  # bytes: a serialized model
    return ort.InferenceSession(src, sess_options=so, providers=providers or ["CPUExecutionProvider"])


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


@dataclass
class Prediction:
    """One row's result, in input order."""

    label: str | None  # classification: the predicted label
    score: float | None  # regression: the predicted value
    exit_layer: int
    logits: list[float]
    signals: dict[str, float]
    truncated: bool


@dataclass
class ChainResult:
    exit_layer: np.ndarray  # [B] int64, 1-based
    logits: np.ndarray  # [B, C]
    signals: dict[str, np.ndarray]  # name -> [B], at the exit layer


class _Buffers:
    """Arrays and IOBindings for one (batch, seq) shape."""

    def __init__(self, model: "EarlyExitModel", b: int, s: int):
        h, c = model.hidden_size, model.num_outputs
        self.ids = np.zeros((b, s), np.int64)
        self.tt = np.zeros((b, s), np.int64)
        self.mask = np.zeros((b, s), np.int64)
        # Hidden states: numpy on the CPU backend; OrtValues in the execution provider's memory
        # (device IOBinding) on GPU backends, so they never cross to the host between layers.
        dev = model.buffer_device
        self.hidden_ov = None if dev is None else [
            ort.OrtValue.ortvalue_from_shape_and_type([b, s, h], np.float32, dev, 0) for _ in range(2)]
        self.hidden = [np.zeros((b, s, h), np.float32), np.zeros((b, s, h), np.float32)] if dev is None else None
        self.out = {M.LOGITS: np.zeros((b, c), np.float32)}
        for name in model.signals:
            self.out[name] = np.zeros((b,), np.float32)
        self.emb = model._sessions["embeddings"].io_binding()
        self._bind_in(self.emb, M.INPUT_IDS, self.ids)
        if model.uses_token_types:
            self._bind_in(self.emb, M.TOKEN_TYPE_IDS, self.tt)
        self._bind_hidden(self.emb, M.HIDDEN_IN, 0, out=True)
        self.layers = []
        for i in range(1, model.num_layers + 1):
            bnd = model._sessions[f"layer_{i:02d}"].io_binding()
            # Layer i reads hidden[(i-1) % 2] and writes hidden[i % 2].
            self._bind_hidden(bnd, M.HIDDEN_IN, (i - 1) % 2, out=False)
            self._bind_in(bnd, M.ATTENTION_MASK, self.mask)
            self._bind_hidden(bnd, M.HIDDEN_OUT, i % 2, out=True)
            for name, arr in self.out.items():
                self._bind_out(bnd, name, arr)
            self.layers.append(bnd)
        self.mono = None
        if "monolithic" in model._sessions:
            self.mono = model._sessions["monolithic"].io_binding()
            self._bind_in(self.mono, M.INPUT_IDS, self.ids)
            if model.uses_token_types:
                self._bind_in(self.mono, M.TOKEN_TYPE_IDS, self.tt)
            self._bind_in(self.mono, M.ATTENTION_MASK, self.mask)
            for name, arr in self.out.items():
                self._bind_out(self.mono, name, arr)

    def _bind_hidden(self, b: ort.IOBinding, name: str, j: int, out: bool) -> None:
        if self.hidden_ov is None:
            (self._bind_out if out else self._bind_in)(b, name, self.hidden[j])
        elif out:
            b.bind_ortvalue_output(name, self.hidden_ov[j])
        else:
            b.bind_ortvalue_input(name, self.hidden_ov[j])

    def take_rows(self, other: "_Buffers", j: int, keep: np.ndarray, s: int) -> None:
        """Compaction: rows `keep` of other's hidden[j] and mask, cut to s tokens, into this buffer."""
        if self.hidden_ov is None:
            self.hidden[j][:] = other.hidden[j][keep, :s]
        else:  # a round trip through the host, on compaction only
            self.hidden_ov[j].update_inplace(np.ascontiguousarray(other.hidden_ov[j].numpy()[keep, :s]))
        self.mask[:] = other.mask[keep, :s]

    @staticmethod
    def _bind_in(b: ort.IOBinding, name: str, arr: np.ndarray) -> None:
        b.bind_input(name, "cpu", 0, arr.dtype, list(arr.shape), arr.ctypes.data)

    @staticmethod
    def _bind_out(b: ort.IOBinding, name: str, arr: np.ndarray) -> None:
        b.bind_output(name, "cpu", 0, arr.dtype, list(arr.shape), arr.ctypes.data)

    def layer_outputs(self, n: int | None = None) -> LayerOutputs:
        """A copy of the small outputs of the layer that ran last (first n rows)."""
        g = lambda k: self.out[k][:n].copy() if k in self.out else None  # noqa: E731
        return LayerOutputs(self.out[M.LOGITS][:n].copy(), g(M.CONFIDENCE), g(M.ENTROPY), g(M.LTE))


class EarlyExitModel:
    """A loaded artifact: tokenizer + embeddings/layer sessions (+ monolithic reference).

    Thread safety: runs hold a lock per buffer shape, so one model can be shared by threads
    (they serialise on the same shape; onnxruntime's pool parallelises inside each graph).
    """

    def __init__(self, artifact_dir: str | os.PathLike, threads: int | None = None, verify: bool = True,
                 load_monolithic: bool = True, max_cached_shapes: int = 32, backend: str = "cpu",
                 device_buffers: bool | None = None):
        self.backend = backend
        self._trt = None
        if backend == "tensorrt":  # the artifact's own engines; fails first, with an install hint
            from .trt_engine import require
            require()
            self.providers: list[str] = []
        else:
            self.providers = providers_for(backend)  # fails first, with an install hint
        # Hidden states live in the provider's memory on GPU backends (device IOBinding);
        # device_buffers=True on the CPU backend runs that same code path with OrtValues in host memory.
        gpu = backend in ("cuda", "ort-tensorrt")
        self.buffer_device = ("cuda" if gpu else "cpu") if (device_buffers if device_buffers is not None else gpu) else None
        self.manifest: Manifest = load_manifest(artifact_dir, verify=verify)
        m = self.manifest
        self.task = m.task
        self.num_layers = m.num_layers
        self.signals = tuple(s for s in m.signals if s in (M.CONFIDENCE, M.ENTROPY, M.LTE))
        self.hidden_size = int(m.backbone.get("hidden_size", 0))
        if self.hidden_size <= 0:
            raise ArtifactError(f"{m.root / M.MANIFEST_FILE}: backbone.hidden_size is missing; re-export it.")
        self.num_outputs = m.task.num_outputs
        self.uses_token_types = M.TOKEN_TYPE_IDS in m.graphs["embeddings"].inputs
        self.threads = threads or default_threads()
        roles = ["embeddings"] + [m.layer_role(i) for i in range(1, m.num_layers + 1)]
        if load_monolithic and m.has_monolithic:
            roles.append("monolithic")
        if backend == "tensorrt":
            from .trt_engine import TrtChain
            self._trt = TrtChain(m)
            roles = []
        self._sessions: dict[str, ort.InferenceSession] = {}
        for role in roles:
            path = m.graph_path(role)
            try:
                self._sessions[role] = make_session(path, self.threads, self.providers)
            except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
                raise ArtifactError(f"onnxruntime cannot load '{path}' ({type(e).__name__}: {str(e)[:200]}); "
                                    f"the file is corrupt or from an incompatible exporter: re-export.") from e
        tok_file = m.root / "tokenizer.json"
        self.encoder = TextEncoder(tok_file, m.max_seq_len, m.task.text_pair,
                                   pad_id=m.raw.get("tokenizer", {}).get("pad_token_id"))
        self._buffers: OrderedDict[tuple[int, int], _Buffers] = OrderedDict()
        self._locks: dict[tuple[int, int], threading.Lock] = {}
        self._cache_lock = threading.Lock()
        self._max_cached = max_cached_shapes

    # -- policies -------------------------------------------------------------------------
    def policy(self, name: str | None = None, threshold: float | None = None, exit_layer: int | None = None,
               patience: int | None = None, per_layer: list[float] | None = None) -> ExitPolicy:
        """A policy checked against this model; with no name, the manifest's default."""
        if name is None:
            d = self.manifest.default_policy or {"name": "fixed", "exit_layer": self.num_layers}
            name, threshold = d.get("name"), d.get("threshold")
            exit_layer, patience = d.get("exit_layer"), d.get("patience")
            per_layer = d.get("per_layer_thresholds")
        return make_policy(name, task_kind=self.task.kind, num_layers=self.num_layers, signals=self.signals,
                           num_classes=max(self.num_outputs, 2), threshold=threshold, exit_layer=exit_layer,
                           patience=patience, per_layer=per_layer)

    # -- buffers --------------------------------------------------------------------------
    def _get(self, b: int, s: int) -> tuple[_Buffers, threading.Lock]:
        key = (b, s)
        with self._cache_lock:
            buf = self._buffers.get(key)
            if buf is None:
                buf = _Buffers(self, b, s)
                self._buffers[key] = buf
                self._locks.setdefault(key, threading.Lock())
                while len(self._buffers) > self._max_cached:
                    old, _ = self._buffers.popitem(last=False)
                    # The lock stays: a thread may hold it; the buffers go once nobody uses them.
            else:
                self._buffers.move_to_end(key)
            return buf, self._locks[key]

    def _need_sessions(self, what: str) -> None:
        if self._trt is not None:
            raise BackendError(f"{what} runs on onnxruntime sessions; open the artifact with backend 'cpu' "
                               f"(the 'tensorrt' backend runs the early-exit chain only).")

    # -- running --------------------------------------------------------------------------
    def encode(self, texts_a: Sequence[str], texts_b: Sequence[str] | None = None) -> Encoded:
        return self.encoder.encode(texts_a, texts_b)

    def run(self, enc: Encoded, policy: ExitPolicy) -> ChainResult:
        """Run the chain on a tokenized batch; rows leave the batch when `policy` says so."""
        if self._trt is not None:
            exit_layer, logits, sig = self._trt.run(enc.input_ids, enc.token_type_ids, enc.attention_mask, policy)
            return ChainResult(exit_layer, logits, sig)
        b, _ = enc.shape
        exit_layer = np.zeros(b, np.int64)
        logits = np.zeros((b, self.num_outputs), np.float32)
        sig = {name: np.zeros(b, np.float32) for name in self.signals}
        rows = np.arange(b)  # original index of every row still in the batch
        lengths = enc.attention_mask.sum(axis=1)
        s = int(lengths.max())
        buf, lock = self._get(b, s)
        lock.acquire()
        try:
            buf.ids[:] = enc.input_ids[:, :s]
            buf.tt[:] = enc.token_type_ids[:, :s]
            buf.mask[:] = enc.attention_mask[:, :s]
            self._sessions["embeddings"].run_with_iobinding(buf.emb)
            state = PolicyState(b)
            for i in range(1, self.num_layers + 1):
                self._sessions[f"layer_{i:02d}"].run_with_iobinding(buf.layers[i - 1])
                out = LayerOutputs(buf.out[M.LOGITS], buf.out.get(M.CONFIDENCE), buf.out.get(M.ENTROPY),
                                   buf.out.get(M.LTE))
                done = decide(policy, i, out, state, self.task.kind, self.num_layers)
                if done.any():
                    idx = rows[done]
                    exit_layer[idx] = i
                    logits[idx] = buf.out[M.LOGITS][done]
                    for name in self.signals:
                        sig[name][idx] = buf.out[name][done]
                    if done.all():
                        break
                    keep = ~done
                    rows, state = rows[keep], state.take(np.flatnonzero(keep))
                    # Compact: the rows that go on, cut to the longest of them (right padding).
                    s2 = int(lengths[rows].max())
                    nbuf, nlock = self._get(len(rows), s2)
                    nlock.acquire()
                    # From here the outer `finally` owns the new lock and this one the old, so an
                    # error in the copy can leave no shape locked for good.
                    obuf, olock, buf, lock = buf, lock, nbuf, nlock
                    try:
                        buf.take_rows(obuf, i % 2, keep, s2)
                    finally:
                        olock.release()
        finally:
            lock.release()
        return ChainResult(exit_layer, logits, sig)

    def layer_outputs(self, enc: Encoded) -> list[LayerOutputs]:
        """Every layer's outputs for every row (no exits): evaluation and calibration use this."""
        self._need_sessions("layer_outputs")
        b, s = enc.shape
        buf, lock = self._get(b, s)
        with lock:
            buf.ids[:], buf.tt[:], buf.mask[:] = enc.input_ids, enc.token_type_ids, enc.attention_mask
            self._sessions["embeddings"].run_with_iobinding(buf.emb)
            outs = []
            for i in range(1, self.num_layers + 1):
                self._sessions[f"layer_{i:02d}"].run_with_iobinding(buf.layers[i - 1])
                outs.append(buf.layer_outputs())
        return outs

    def run_monolithic(self, enc: Encoded) -> LayerOutputs:
        """The single-graph reference model (all layers, last head)."""
        self._need_sessions("run_monolithic")
        if "monolithic" not in self._sessions:
            raise ArtifactError("this artifact has no monolithic graph (or it was not loaded).")
        b, s = enc.shape
        buf, lock = self._get(b, s)
        with lock:
            buf.ids[:], buf.tt[:], buf.mask[:] = enc.input_ids, enc.token_type_ids, enc.attention_mask
            self._sessions["monolithic"].run_with_iobinding(buf.mono)
            return buf.layer_outputs()

    def predict(self, texts_a: Sequence[str], texts_b: Sequence[str] | None = None,
                policy: ExitPolicy | None = None) -> list[Prediction]:
        """Tokenize, run with early exit, and return one Prediction per input, in input order."""
        enc = self.encode(texts_a, texts_b)
        res = self.run(enc, policy or self.policy())
        preds = []
        for r in range(enc.shape[0]):
            lg = res.logits[r]
            if self.task.kind == "classification":
                label, value = self.task.labels[int(np.argmax(lg))], None
            else:
                label, value = None, float(lg[0])
            preds.append(Prediction(label, value, int(res.exit_layer[r]), [float(x) for x in lg],
                                    {k: float(v[r]) for k, v in res.signals.items()}, bool(enc.truncated[r])))
        return preds


def open_artifact(path: str | Path, **kw) -> EarlyExitModel:
    return EarlyExitModel(path, **kw)
