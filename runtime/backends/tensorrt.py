"""Backend `tensorrt`: the artifact's own TensorRT engines (built by `export.build --tensorrt`) on one
CUDA stream with preallocated device buffers.

    host ids/mask --H2D--> embeddings engine -> hidden[0] -> stage 1 engine -> hidden[1] -> ...
                                                               |
                                          logits + signals --D2H (b x (C+3) floats, pinned)--> the loop

Per stage only the head's logits and exit signals come back to the host (one small copy, one
wait). Rows that exit leave the batch: the survivors' hidden states and mask rows are packed to
the front of the same buffers with device-to-device copies, and the engines run on the smaller
batch. Buffers are sized once for the profile's largest batch and sequence, so the backend holds
one workspace (`max_workspaces = 1`): the chain's pool serialises runs, which makes sharing a
model between threads safe.

Uses TensorRT 10's tensor-address API (set_input_shape, set_tensor_address, execute_async_v3) and
cuda-python's runtime bindings. NOT RUN in this project: no machine it was built on has TensorRT.
Selection, record checks and errors are tested without a GPU.
"""
from __future__ import annotations

import ctypes

import numpy as np

from .. import manifest as M
from ..fsutil import ArtifactError, read_verified
from .base import Backend, BackendError, StageOutputs, Workspace

INSTALL = ("TensorRT 10 and cuda-python: `pip install 'berxit-rt[tensorrt]'`, on a machine with an NVIDIA GPU, "
           "and an artifact exported with `python -m export.build ... --tensorrt`")


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            raise BackendError(f"backend 'tensorrt' needs cuda-python, which is not installed. Install {INSTALL}.") from None
    return cudart


def require() -> tuple[object, object]:
    """(tensorrt, cudart) or BackendError naming what to install."""
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendError(f"backend 'tensorrt' needs the tensorrt package, which is not installed. "
                           f"Install {INSTALL}.") from None
    return trt, _cudart()


def _check(res):
    """cuda-python returns (err, *values): raise on error, return the values."""
    err, *vals = res if isinstance(res, tuple) else (res,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return vals[0] if len(vals) == 1 else vals


def engine_record(manifest: M.Manifest) -> dict:
    """The manifest's `tensorrt` record, checked: profile sizes, one engine per graph, file names."""
    rec = manifest.tensorrt
    if not rec:
        raise ArtifactError(f"{manifest.root}: this artifact has no TensorRT engines; export it with "
                            f"`python -m export.build ... --tensorrt` on the GPU that will run it.")
    prof = rec.get("profile")
    if not isinstance(prof, dict):
        raise ArtifactError("manifest.json: tensorrt.profile is missing; re-export with --tensorrt.")
    for k in ("max_batch", "max_seq"):
        v = prof.get(k)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ArtifactError(f"manifest.json: tensorrt.profile.{k} must be a positive integer, got {v!r}.")
    if prof["max_seq"] < manifest.max_seq_len:
        raise ArtifactError(f"the TensorRT engines take at most {prof['max_seq']} tokens but the artifact's "
                            f"max_seq_len is {manifest.max_seq_len}; re-export with --tensorrt.")
    engines = rec.get("engines")
    if not isinstance(engines, dict):
        raise ArtifactError("manifest.json: tensorrt.engines is missing; re-export with --tensorrt.")
    for role in (M.EMBEDDINGS, *manifest.stage_roles):
        e = engines.get(role)
        if not isinstance(e, dict) or not isinstance(e.get("file"), str) or not isinstance(e.get("sha256"), str):
            raise ArtifactError(f"{manifest.root}: no TensorRT engine for '{role}'; re-export with --tensorrt.")
    return rec


class TrtBackend(Backend):
    """The engines of one artifact."""

    name = "tensorrt"
    max_workspaces = 1

    def __init__(self, manifest: M.Manifest, gpu_name: str | None = None):
        rec = engine_record(manifest)
        trt, cudart = require()
        self.trt, self.cudart, self.manifest = trt, cudart, manifest
        if rec.get("tensorrt_version") != trt.__version__:
            raise ArtifactError(f"engines were built with TensorRT {rec.get('tensorrt_version')}, this is "
                                f"{trt.__version__}: rebuild them (export with --tensorrt) here.")
        if gpu_name is not None and rec.get("gpu") != gpu_name:
            raise ArtifactError(f"engines were built for {rec.get('gpu')}, this GPU is {gpu_name}: rebuild them here.")
        self.max_batch, self.max_seq = int(rec["profile"]["max_batch"]), int(rec["profile"]["max_seq"])
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engines, self.contexts = {}, {}
        for role in (M.EMBEDDINGS, *manifest.stage_roles):
            e = rec["engines"][role]
            data = read_verified(manifest.root, e["file"], e["sha256"], f"tensorrt.engines.{role}")
            engine = self.runtime.deserialize_cuda_engine(data)
            if engine is None:
                raise ArtifactError(f"{e['file']}: TensorRT cannot load this engine; rebuild it on this machine.")
            self.engines[role], self.contexts[role] = engine, engine.create_execution_context()
        self._ws: TrtWorkspace | None = None

    def workspace(self) -> "TrtWorkspace":
        if self._ws is None:
            self._ws = TrtWorkspace(self)
        return self._ws

    def close(self) -> None:
        if self._ws is not None:
            self._ws.free()
            self._ws = None


class TrtWorkspace(Workspace):
    def __init__(self, be: TrtBackend):
        self.be, cud = be, be.cudart
        m = be.manifest
        self.h, self.c = m.hidden_size, m.task.num_outputs
        self.stream = _check(cud.cudaStreamCreate())
        b, s, h = be.max_batch, be.max_seq, self.h
        self.d_ids = _check(cud.cudaMalloc(b * s * 8))
        self.d_tt = _check(cud.cudaMalloc(b * s * 8))
        self.d_mask = _check(cud.cudaMalloc(b * s * 8))
        self.d_hidden = [_check(cud.cudaMalloc(b * s * h * 4)) for _ in range(2)]
        self.outs = [M.LOGITS, *m.signals]
        self.width = {n: (self.c if n == M.LOGITS else 1) for n in self.outs}
        self.d_out = {n: _check(cud.cudaMalloc(b * self.width[n] * 4)) for n in self.outs}
        self.h_out, self._pinned = {}, []  # pinned host memory for the few floats read back per stage
        for n in self.outs:
            ptr = _check(cud.cudaMallocHost(b * self.width[n] * 4))
            self._pinned.append(ptr)
            arr = np.ctypeslib.as_array((ctypes.c_float * (b * self.width[n])).from_address(int(ptr)))
            self.h_out[n] = arr.reshape(b, self.width[n]) if n == M.LOGITS else arr
        self.b = self.s = 0
        self.cur = 0

    def _run(self, role: str) -> None:
        if not self.be.contexts[role].execute_async_v3(self.stream):
            raise RuntimeError(f"TensorRT failed to run {role}")

    def _h2d(self, dst, arr: np.ndarray) -> None:
        a = np.ascontiguousarray(arr, dtype=np.int64)
        _check(self.be.cudart.cudaMemcpyAsync(dst, a.ctypes.data, a.nbytes,
                                              self.be.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))
        _check(self.be.cudart.cudaStreamSynchronize(self.stream))  # `a` may be a temporary

    def embed(self, input_ids, token_type_ids, attention_mask) -> None:
        b, s = input_ids.shape
        if b > self.be.max_batch or s > self.be.max_seq:
            raise ValueError(f"batch {b} x {s} tokens exceeds the engines' profile ({self.be.max_batch} x "
                             f"{self.be.max_seq}); the model splits batches to the profile's size.")
        self.b, self.s, self.cur = b, s, 0
        self._h2d(self.d_ids, input_ids)
        self._h2d(self.d_tt, token_type_ids)
        self._h2d(self.d_mask, attention_mask)
        role = M.EMBEDDINGS
        ctx, eng = self.be.contexts[role], self.be.engines[role]
        ctx.set_input_shape(M.INPUT_IDS, (b, s))
        ctx.set_tensor_address(M.INPUT_IDS, int(self.d_ids))
        if eng.get_tensor_mode(M.TOKEN_TYPE_IDS) == self.be.trt.TensorIOMode.INPUT:
            ctx.set_input_shape(M.TOKEN_TYPE_IDS, (b, s))
            ctx.set_tensor_address(M.TOKEN_TYPE_IDS, int(self.d_tt))
        ctx.set_tensor_address(M.HIDDEN_IN, int(self.d_hidden[0]))
        self._run(role)

    def run_stage(self, k: int) -> StageOutputs:
        cud, role = self.be.cudart, self.be.manifest.stage_roles[k]
        ctx, b, s = self.be.contexts[role], self.b, self.s
        ctx.set_input_shape(M.HIDDEN_IN, (b, s, self.h))
        ctx.set_input_shape(M.ATTENTION_MASK, (b, s))
        ctx.set_tensor_address(M.HIDDEN_IN, int(self.d_hidden[self.cur]))
        ctx.set_tensor_address(M.ATTENTION_MASK, int(self.d_mask))
        ctx.set_tensor_address(M.HIDDEN_OUT, int(self.d_hidden[1 - self.cur]))
        for n in self.outs:
            ctx.set_tensor_address(n, int(self.d_out[n]))
        self._run(role)
        self.cur = 1 - self.cur
        d2h = cud.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for n in self.outs:
            _check(cud.cudaMemcpyAsync(self.h_out[n].ctypes.data, self.d_out[n], b * self.width[n] * 4, d2h, self.stream))
        _check(cud.cudaStreamSynchronize(self.stream))
        return StageOutputs(self.h_out[M.LOGITS][:b], {n: self.h_out[n][:b] for n in self.outs if n != M.LOGITS})

    def keep(self, rows: np.ndarray, seq: int) -> None:
        # Pack survivors to the front (row j -> slot t, t <= j: in-order copies never overwrite a
        # row still to be read). The sequence stays as it is: rows keep their padded stride.
        cud = self.be.cudart
        d2d = cud.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        row_h, row_m = self.s * self.h * 4, self.s * 8
        for t, j in enumerate(rows.tolist()):
            if t != j:
                _check(cud.cudaMemcpyAsync(int(self.d_hidden[self.cur]) + t * row_h,
                                           int(self.d_hidden[self.cur]) + j * row_h, row_h, d2d, self.stream))
                _check(cud.cudaMemcpyAsync(int(self.d_mask) + t * row_m, int(self.d_mask) + j * row_m, row_m, d2d,
                                           self.stream))
        self.b = len(rows)

    def close(self) -> None:
        """Kept for the next run (the backend owns the one workspace; TrtBackend.close frees it)."""

    def free(self) -> None:
        cud = self.be.cudart
        for p in [self.d_ids, self.d_tt, self.d_mask, *self.d_hidden, *self.d_out.values()]:
            cud.cudaFree(p)
        for p in self._pinned:
            cud.cudaFreeHost(p)
        cud.cudaStreamDestroy(self.stream)
