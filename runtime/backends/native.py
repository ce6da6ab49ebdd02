"""`native`: the C runtime (runtime/native/, libberxit) through ctypes.

The artifact's weights file (native_weights.bin, written by export.build) is read once, its
sha256 checked against the manifest, and handed to the library from memory (so a file swapped
after its check is never used). Two ways in:

  * `run_early_exit`: one C call runs the whole early-exit loop (embed, layers, exit heads,
    signals, decisions, compaction) and fills the result in input order. EarlyExitModel.run
    uses it for this backend: no Python between layers.
  * the Backend / Workspace interface (embed, run_stage, keep) that runtime/chain.py drives,
    stage by stage: layer outputs for evaluation and calibration, and the monolithic
    reference (every layer, the last head only: the library's run without exit checks).

The library is found at $BERXIT_NATIVE_LIB, else runtime/native/libberxit.so (built by
`pip install -e .`; see README "Use from C").
"""
from __future__ import annotations

import ctypes as C
import os
import threading
from pathlib import Path

import numpy as np

from .. import manifest as M
from ..fsutil import ArtifactError, read_verified
from .base import Backend, BackendError, HiddenState, StageOutputs, Workspace

LIB_ENV = "BERXIT_NATIVE_LIB"
DEFAULT_LIB = Path(__file__).resolve().parent.parent / "native" / "libberxit.so"
POLICY_KIND = {"confidence": 1, "entropy": 2, "lte": 3, "patience": 4, "fixed": 5}
POLICY_NONE = 6
NONFINITE_STATUS = 7

_i32p, _f32p, _i64p = C.POINTER(C.c_int32), C.POINTER(C.c_float), C.POINTER(C.c_int64)


class ModelInfo(C.Structure):
    _fields_ = [("num_layers", C.c_int32), ("num_exits", C.c_int32), ("exits", C.c_int32 * 64),
                ("num_outputs", C.c_int32), ("task_kind", C.c_int32), ("pooling", C.c_int32), ("has_lte", C.c_int32),
                ("max_seq_len", C.c_int32), ("hidden_size", C.c_int32), ("num_heads", C.c_int32),
                ("intermediate_size", C.c_int32), ("vocab_size", C.c_int32), ("type_vocab_size", C.c_int32),
                ("blas", C.c_char_p)]


class Policy(C.Structure):
    _fields_ = [("kind", C.c_int32), ("threshold", C.c_float), ("exit_layer", C.c_int32), ("patience", C.c_int32),
                ("per_layer", _f32p), ("num_per_layer", C.c_int32)]


class Result(C.Structure):  # pointers as addresses (numpy's .ctypes.data): no pointer objects per call
    _fields_ = [(n, C.c_void_p) for n in ("label", "value", "exit_layer", "status", "logits", "confidence", "entropy",
                                          "lte")]


_LIB = None
_LIB_LOCK = threading.Lock()


def library_path() -> Path:
    return Path(os.environ.get(LIB_ENV) or DEFAULT_LIB)


def load_library() -> C.CDLL:
    """libberxit, its function signatures declared (BackendError says how to build it)."""
    global _LIB
    with _LIB_LOCK:
        if _LIB is not None:
            return _LIB
        path = library_path()
        if not path.is_file():
            raise BackendError(f"the native library {path} is not built: run `pip install -e .` with a C compiler "
                               f"(cc) installed, or build it with the cc line in README 'Use from C' and point "
                               f"${LIB_ENV} at it.")
        try:
            lib = C.CDLL(str(path))
        except OSError as e:
            raise BackendError(f"cannot load the native library {path} ({e}); rebuild it (`pip install -e .`).") from None
        vp, cp = C.c_void_p, C.c_char_p
        sig = {
            "berxit_open_memory": (C.c_int, [C.c_char_p, C.c_size_t, C.POINTER(vp)]),
            "berxit_open_errmsg": (cp, []),
            "berxit_info": (C.c_int, [vp, C.POINTER(ModelInfo)]),
            "berxit_run": (C.c_int, [vp, vp, vp, vp, C.c_int32, C.c_int32, C.POINTER(Policy), C.POINTER(Result)]),
            "berxit_errmsg": (cp, [vp]),
            "berxit_set_threads": (C.c_int, [vp, C.c_int32]),
            "berxit_close": (None, [vp]),
            "berxit_workspace_new": (C.c_int, [vp, C.POINTER(vp)]),
            "berxit_workspace_free": (None, [vp]),
            "berxit_ws_embed": (C.c_int, [vp, _i64p, _i64p, _i64p, C.c_int32, C.c_int32]),
            "berxit_ws_stage": (C.c_int, [vp, C.c_int32, _f32p]),
            "berxit_ws_keep": (C.c_int, [vp, _i64p, C.c_int32]),
            "berxit_ws_errmsg": (cp, [vp]),
            "berxit_ws_max_len": (C.c_int32, [vp]),
            "berxit_ws_save": (C.c_int, [vp, _f32p, _i64p, C.c_int32]),
            "berxit_ws_load": (C.c_int, [vp, _f32p, _i64p, C.c_int32, C.c_int32, C.c_int32]),
        }
        for name, (res, args) in sig.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, args
        _LIB = lib
        return lib


def _ptr(a: np.ndarray | None, t):
    return None if a is None else a.ctypes.data_as(t)


_CHAR = C.c_char


def _addr(a: np.ndarray) -> int:
    """The address of a C-contiguous array's data: a third of the cost of `a.ctypes.data` (a
    read-only or empty array takes that slower way)."""
    try:
        return C.addressof(_CHAR.from_buffer(a))
    except (TypeError, ValueError, BufferError):
        return a.ctypes.data


def _i64(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.int64)


def c_policy(policy, keep: list | None = None) -> Policy:
    """An ExitPolicy (runtime/policies.py, already checked) as the C struct. `keep` holds arrays
    the struct points into (alive until the call returns)."""
    if policy is None:
        return Policy(POLICY_NONE, 0.0, 0, 0, None, 0)
    p = Policy(POLICY_KIND[policy.name], float(policy.threshold or 0.0), int(policy.exit_layer or 0),
               int(policy.patience or 0), None, 0)
    if policy.per_layer is not None:
        arr = np.asarray(policy.per_layer, dtype=np.float32)
        if keep is not None:
            keep.append(arr)
        p.per_layer, p.num_per_layer = _ptr(arr, _f32p), len(arr)
    return p


class NativeBackend(Backend):
    """The artifact's native_weights.bin, run by libberxit."""

    name = "native"

    def __init__(self, manifest: M.Manifest, threads: int | None = None, **_):
        self.lib = load_library()  # what to build comes first
        self.manifest = m = manifest
        if m.native is None:
            note = m.raw.get("native_note") or "it was exported before the native runtime existed"
            raise BackendError(f"this artifact has no native weights file ({note}); re-export it with "
                               f"`python -m export.build` (fp32, BERT) to use backend 'native'.")
        data = read_verified(m.root, m.native.file, m.native.sha256, "native")
        h = C.c_void_p()
        if self.lib.berxit_open_memory(data, len(data), C.byref(h)) != 0:
            raise ArtifactError(f"the native runtime refuses {m.native.file}: "
                                f"{self.lib.berxit_open_errmsg().decode(errors='replace')}")
        self.handle = h
        from .ort import default_threads
        self.threads = min(2, threads or default_threads())  # the builtin sgemm: 1 or 2 threads per workspace
        self.lib.berxit_set_threads(h, self.threads)
        info = ModelInfo()
        self.lib.berxit_info(h, C.byref(info))
        self.info = info
        self.blas = info.blas.decode()
        want = (m.num_layers, m.num_exits, m.task.num_outputs, m.task.kind == "regression", M.LTE in m.signals,
                m.backbone.pooling == "mean", m.hidden_size, m.max_seq_len)
        got = (info.num_layers, info.num_exits, info.num_outputs, bool(info.task_kind), bool(info.has_lte),
               bool(info.pooling), info.hidden_size, info.max_seq_len)
        if want != got or tuple(info.exits[:min(64, info.num_exits)]) != tuple(m.exits[:64]):
            self.close()
            raise ArtifactError(f"{m.native.file} describes another model than manifest.json (layers, exits, labels, "
                                f"LTE, pooling, hidden size, max_seq_len: {got} vs {want}); re-export the artifact.")
        self.c, self.width, self.has_lte = m.task.num_outputs, m.head_width, M.LTE in m.signals
        self.kind = m.task.kind
        self._lock = threading.Lock()  # berxit_run serialises on the handle anyway; this guards close()
        self._policies: dict = {}  # ExitPolicy (frozen, hashable) -> (its C struct, arrays it points into)
        self._signal_slots = [(n, j) for j, n in enumerate((M.CONFIDENCE, M.ENTROPY, M.LTE)) if n in m.signals]
        self._run = self.lib.berxit_run

    @property
    def has_monolithic(self) -> bool:
        return True  # the library's run without exit checks: every layer, the last head only

    def workspace(self) -> "NativeWorkspace":
        if self.handle is None:
            raise RuntimeError("the native backend is closed")
        return NativeWorkspace(self)

    def run_early_exit(self, input_ids: np.ndarray, token_type_ids: np.ndarray, attention_mask: np.ndarray,
                       policy) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], np.ndarray]:
        """The whole loop in C: (exit_layer [B] int64, logits [B, C], signals at the exit, status [B]).
        The Python around the call is kept to a few microseconds: it runs right after the C loop has
        streamed the weights through the caches, so each numpy or ctypes call costs several times its
        hot cost, and at batch 1 it is the run's fixed part, which the layer count does not see. The
        outputs are views of one allocation, and every address is taken without numpy's `.ctypes`."""
        ids, tt, mask = _i64(input_ids), _i64(token_type_ids), _i64(attention_mask)
        b, s = ids.shape
        if ids.shape != tt.shape or ids.shape != mask.shape:
            raise ValueError(f"input_ids, token_type_ids and attention_mask must share one [B, S] shape, got "
                             f"{ids.shape}, {tt.shape}, {mask.shape}")
        try:
            pol = self._policies.get(policy) or self._policy_struct(policy)
        except TypeError:  # an unhashable policy (a list of per-layer thresholds): not cached
            keep: list = []
            pol = (c_policy(policy, keep), keep)
        c = self.c
        out = np.empty(b * (5 + c), np.int32)  # exit layer, status, logits [B, C], confidence, entropy, LTE
        o = _addr(out)
        f = out.view(np.float32)
        n2, nl = 2 * b, (2 + c) * b
        res = Result(None, None, o, o + 4 * b, o + 4 * n2, o + 4 * nl, o + 4 * (nl + b), o + 4 * (nl + 2 * b))
        rc = self._run(self.handle, _addr(ids), _addr(tt), _addr(mask), b, s, C.byref(pol[0]), C.byref(res))
        if rc != 0:
            raise ValueError(f"native runtime: {self.lib.berxit_errmsg(self.handle).decode(errors='replace')}")
        sig = {n: f[nl + b * j:nl + b * (j + 1)] for n, j in self._signal_slots}
        return out[:b].astype(np.int64), f[n2:nl].reshape(b, c), sig, out[b:n2]

    def _policy_struct(self, policy) -> tuple:
        """The C struct of an ExitPolicy (frozen, hashable), with the arrays it points into; cached
        (a bounded number: a server's requests may each carry their own policy)."""
        keep: list = []
        entry = (c_policy(policy, keep), keep)
        if len(self._policies) >= 256:
            self._policies.clear()
        self._policies[policy] = entry
        return entry

    def close(self) -> None:
        with self._lock if hasattr(self, "_lock") else _LIB_LOCK:
            if getattr(self, "handle", None) is not None:
                self.lib.berxit_close(self.handle)
                self.handle = None


class NativeWorkspace(Workspace):
    """One libberxit workspace: stage-by-stage calls for runtime/chain.py."""

    def __init__(self, be: NativeBackend):
        self.be, self.lib = be, be.lib
        h = C.c_void_p()
        if self.lib.berxit_workspace_new(be.handle, C.byref(h)) != 0:
            raise MemoryError("native runtime: cannot create a workspace")
        self.ws = h
        self.b = 0
        self._head = np.zeros((0, be.width), np.float32)

    def _check(self, rc: int) -> None:
        if rc != 0:
            raise ValueError(f"native runtime: {self.lib.berxit_ws_errmsg(self.ws).decode(errors='replace')}")

    def embed(self, input_ids, token_type_ids, attention_mask) -> None:
        ids, tt, mask = _i64(input_ids), _i64(token_type_ids), _i64(attention_mask)
        b, s = ids.shape
        self._check(self.lib.berxit_ws_embed(self.ws, _ptr(ids, _i64p), _ptr(tt, _i64p), _ptr(mask, _i64p), b, s))
        self.b = b
        if self._head.shape[0] < b:
            self._head = np.zeros((b, self.be.width), np.float32)

    def run_stage(self, k: int) -> StageOutputs:
        head = self._head[:self.b]
        self._check(self.lib.berxit_ws_stage(self.ws, k, _ptr(head, _f32p)))
        c = self.be.c
        return StageOutputs(head[:, :c], {}, head[:, c] if self.be.has_lte else None)

    def keep(self, rows: np.ndarray, seq: int) -> None:
        rows = _i64(rows)
        self._check(self.lib.berxit_ws_keep(self.ws, _ptr(rows, _i64p), len(rows)))
        self.b = len(rows)

    def save(self) -> HiddenState:
        s = int(self.lib.berxit_ws_max_len(self.ws))
        hidden = np.zeros((self.b, s, self.be.manifest.hidden_size), np.float32)
        mask = np.zeros((self.b, s), np.int64)
        self._check(self.lib.berxit_ws_save(self.ws, _ptr(hidden, _f32p), _ptr(mask, _i64p), s))
        return HiddenState(hidden, mask)

    def load(self, state: HiddenState) -> None:
        b, s, h = state.hidden.shape
        if h != self.be.manifest.hidden_size or state.mask.shape != (b, s):
            raise ValueError(f"hidden states {state.hidden.shape} / mask {state.mask.shape} do not fit hidden size "
                             f"{self.be.manifest.hidden_size}")
        if state.stage is None:
            raise ValueError("the native runtime needs the number of stages already run on these rows (stage)")
        hidden = np.ascontiguousarray(state.hidden, np.float32)
        mask = _i64(state.mask)
        self._check(self.lib.berxit_ws_load(self.ws, _ptr(hidden, _f32p), _ptr(mask, _i64p), b, s, int(state.stage)))
        self.b = b
        if self._head.shape[0] < b:
            self._head = np.zeros((b, self.be.width), np.float32)

    def monolithic(self, input_ids, token_type_ids, attention_mask) -> StageOutputs:
        _, logits, _, _ = self.be.run_early_exit(input_ids, token_type_ids, attention_mask, None)
        return StageOutputs(logits, {})

    def close(self) -> None:
        if self.ws is not None:
            self.lib.berxit_workspace_free(self.ws)
            self.ws = None


class NativeTokenizer:
    """The C WordPiece tokenizer (berxit_tokenize) over ARTIFACT/native_{vocab,tokenizer}.txt: for
    parity checks against the `tokenizers` library (the Python runtime itself uses tokenizer.json)."""

    def __init__(self, artifact_dir: str | os.PathLike, max_len: int):
        self.lib = lib = load_library()
        vp = C.c_void_p
        lib.berxit_tokenizer_open.restype, lib.berxit_tokenizer_open.argtypes = C.c_int, [C.c_char_p, C.POINTER(vp)]
        lib.berxit_tokenize.restype = C.c_int
        lib.berxit_tokenize.argtypes = [vp, C.c_char_p, C.c_char_p, C.c_int32, vp, vp, C.POINTER(C.c_int32),
                                        C.POINTER(C.c_int32)]
        lib.berxit_tokenizer_errmsg.restype, lib.berxit_tokenizer_errmsg.argtypes = C.c_char_p, [vp]
        lib.berxit_tokenizer_close.restype, lib.berxit_tokenizer_close.argtypes = None, [vp]
        h = vp()
        if lib.berxit_tokenizer_open(str(artifact_dir).encode(), C.byref(h)) != 0:
            raise BackendError(f"native tokenizer: {lib.berxit_open_errmsg().decode(errors='replace')}")
        self.h, self.max_len = h, max_len
        self.ids, self.tt = np.zeros(max_len, np.int64), np.zeros(max_len, np.int64)

    def encode(self, a: str | bytes, b: str | bytes | None = None) -> tuple[list[int], list[int], bool]:
        """(ids, type ids, truncated); ValueError with the library's message for bad text."""
        enc = lambda s: s if isinstance(s, bytes) else s.encode("utf-8", "surrogatepass")  # noqa: E731
        n, cut = C.c_int32(), C.c_int32()
        rc = self.lib.berxit_tokenize(self.h, enc(a), None if b is None else enc(b), self.max_len, self.ids.ctypes.data,
                                      self.tt.ctypes.data, C.byref(n), C.byref(cut))
        if rc != 0:
            raise ValueError(self.lib.berxit_tokenizer_errmsg(self.h).decode(errors="replace"))
        return self.ids[:n.value].tolist(), self.tt[:n.value].tolist(), bool(cut.value)

    def close(self) -> None:
        if self.h is not None:
            self.lib.berxit_tokenizer_close(self.h)
            self.h = None
