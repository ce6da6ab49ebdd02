"""Backend `tensorrt`: chains an artifact's TensorRT engines (built by `export.build --tensorrt`)
on one CUDA stream with preallocated device buffers.

    host ids/mask --H2D--> embeddings engine -> hidden[0] -> layer 1 engine -> hidden[1] -> ...
                                                               |
                                          logits + signals --D2H (B x (C+3) floats, pinned)--> decide

Per layer the host copies back only the head's logits and exit signals, waits for that copy,
runs the same `decide` as the onnxruntime backend, and enqueues the next layer. Rows that exit
leave the batch: the survivors' hidden states and mask rows are packed to the front of the
same buffers with device-to-device copies (rows are contiguous), and the engines run on the
smaller batch. Buffers are sized once for the profile's largest batch and sequence.

Uses TensorRT 10's tensor-address API (set_input_shape, set_tensor_address, execute_async_v3)
and cuda-python's runtime bindings. NOT RUN in this project yet: no machine here has TensorRT
(the H200 lent to some tasks has neither TensorRT nor cuda-python's TensorRT counterpart); the
README says so. Selection and its errors are tested without a GPU.
"""
from __future__ import annotations

import ctypes
import hashlib

import numpy as np

from . import manifest as M
from .backends import BackendError
from .manifest import ArtifactError
from .policies import ExitPolicy, LayerOutputs, PolicyState, decide

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


class TrtChain:
    """The engines of one artifact, chained with early exit."""

    def __init__(self, manifest: M.Manifest, gpu_name: str | None = None):
        rec = manifest.raw.get("tensorrt")
        if not rec:
            raise ArtifactError(f"{manifest.root}: this artifact has no TensorRT engines; export it with "
                                f"`python -m export.build ... --tensorrt` on the GPU that will run it.")
        trt, cudart = require()
        self.trt, self.cudart = trt, cudart
        if rec.get("tensorrt_version") != trt.__version__:
            raise ArtifactError(f"engines were built with TensorRT {rec.get('tensorrt_version')}, this is "
                                f"{trt.__version__}: rebuild them (export with --tensorrt) here.")
        if gpu_name is not None and rec.get("gpu") != gpu_name:
            raise ArtifactError(f"engines were built for {rec.get('gpu')}, this GPU is {gpu_name}: rebuild them here.")
        self.kind = manifest.task.kind
        self.num_layers = manifest.num_layers
        self.c = manifest.task.num_outputs
        self.h = int(manifest.backbone["hidden_size"])
        prof = rec["profile"]
        self.max_b, self.max_s = int(prof["max_batch"]), int(prof["max_seq"])
        logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(logger)
        self.engines, self.contexts = {}, {}
        for role in ["embeddings"] + [manifest.layer_role(i) for i in range(1, self.num_layers + 1)]:
            e = rec["engines"].get(role)
            if e is None:
                raise ArtifactError(f"{manifest.root}: no TensorRT engine for '{role}'; re-export with --tensorrt.")
            path = manifest.root / e["file"]
            data = path.read_bytes() if path.is_file() else b""
            if hashlib.sha256(data).hexdigest() != e["sha256"]:
                raise ArtifactError(f"{path}: missing or checksum mismatch; re-export with --tensorrt.")
            engine = self.runtime.deserialize_cuda_engine(data)
            if engine is None:
                raise ArtifactError(f"{path}: TensorRT cannot load this engine; rebuild it on this machine.")
            self.engines[role], self.contexts[role] = engine, engine.create_execution_context()
        self.stream = _check(cudart.cudaStreamCreate())
        b, s, h = self.max_b, self.max_s, self.h
        f4, i8 = 4, 8
        self.d_ids = _check(cudart.cudaMalloc(b * s * i8))
        self.d_tt = _check(cudart.cudaMalloc(b * s * i8))
        self.d_mask = _check(cudart.cudaMalloc(b * s * i8))
        self.d_hidden = [_check(cudart.cudaMalloc(b * s * h * f4)) for _ in range(2)]
        self.outs = [M.LOGITS] + [n for n in (M.CONFIDENCE, M.ENTROPY, M.LTE) if n in manifest.signals]
        self.d_out = {n: _check(cudart.cudaMalloc(b * (self.c if n == M.LOGITS else 1) * f4)) for n in self.outs}
        # Pinned host memory for the few floats read back per layer.
        self.h_out, self._pinned = {}, []
        for n in self.outs:
            width = self.c if n == M.LOGITS else 1
            ptr = _check(cudart.cudaMallocHost(b * width * f4))
            self._pinned.append(ptr)
            arr = np.ctypeslib.as_array((ctypes.c_float * (b * width)).from_address(int(ptr)))
            self.h_out[n] = arr.reshape(b, width) if n == M.LOGITS else arr

    def _bind(self, role: str, b: int, s: int, i: int) -> None:
        ctx = self.contexts[role]
        if role == "embeddings":
            ctx.set_input_shape(M.INPUT_IDS, (b, s))
            ctx.set_tensor_address(M.INPUT_IDS, int(self.d_ids))
            if self.engines[role].get_tensor_mode(M.TOKEN_TYPE_IDS) == self.trt.TensorIOMode.INPUT:
                ctx.set_input_shape(M.TOKEN_TYPE_IDS, (b, s))
                ctx.set_tensor_address(M.TOKEN_TYPE_IDS, int(self.d_tt))
            ctx.set_tensor_address(M.HIDDEN_IN, int(self.d_hidden[0]))
            return
        ctx.set_input_shape(M.HIDDEN_IN, (b, s, self.h))
        ctx.set_input_shape(M.ATTENTION_MASK, (b, s))
        ctx.set_tensor_address(M.HIDDEN_IN, int(self.d_hidden[(i - 1) % 2]))
        ctx.set_tensor_address(M.ATTENTION_MASK, int(self.d_mask))
        ctx.set_tensor_address(M.HIDDEN_OUT, int(self.d_hidden[i % 2]))
        for n in self.outs:
            ctx.set_tensor_address(n, int(self.d_out[n]))

    def _h2d(self, dst, arr: np.ndarray) -> None:
        a = np.ascontiguousarray(arr, dtype=np.int64)
        _check(self.cudart.cudaMemcpyAsync(dst, a.ctypes.data, a.nbytes,
                                           self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))

    def run(self, input_ids: np.ndarray, token_type_ids: np.ndarray, attention_mask: np.ndarray,
            policy: ExitPolicy) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """(exit_layer [B], logits [B, C], signals at the exit layer) for one tokenized batch."""
        cud = self.cudart
        b, s = input_ids.shape
        if b > self.max_b or s > self.max_s:
            raise ValueError(f"batch {b} x {s} tokens exceeds the engines' profile ({self.max_b} x {self.max_s}); "
                             f"split the batch or re-export with a larger --trt-max-batch.")
        self._h2d(self.d_ids, input_ids)
        self._h2d(self.d_tt, token_type_ids)
        self._h2d(self.d_mask, attention_mask)
        self._bind("embeddings", b, s, 0)
        if not self.contexts["embeddings"].execute_async_v3(self.stream):
            raise RuntimeError("TensorRT failed to run the embeddings engine")
        exit_layer = np.zeros(b, np.int64)
        logits = np.zeros((b, self.c), np.float32)
        sig = {n: np.zeros(b, np.float32) for n in self.outs if n != M.LOGITS}
        rows, state, nb = np.arange(b), PolicyState(b), b
        d2h = cud.cudaMemcpyKind.cudaMemcpyDeviceToHost
        d2d = cud.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        for i in range(1, self.num_layers + 1):
            role = f"layer_{i:02d}"
            self._bind(role, nb, s, i)
            if not self.contexts[role].execute_async_v3(self.stream):
                raise RuntimeError(f"TensorRT failed to run {role}")
            for n in self.outs:
                width = self.c if n == M.LOGITS else 1
                _check(cud.cudaMemcpyAsync(self.h_out[n].ctypes.data, self.d_out[n], nb * width * 4, d2h, self.stream))
            _check(cud.cudaStreamSynchronize(self.stream))
            get = lambda n: self.h_out[n][:nb] if n in self.h_out else None  # noqa: E731
            out = LayerOutputs(get(M.LOGITS), get(M.CONFIDENCE), get(M.ENTROPY), get(M.LTE))
            done = decide(policy, i, out, state, self.kind, self.num_layers)
            if done.any():
                exit_layer[rows[done]] = i
                logits[rows[done]] = out.logits[done]
                for n in sig:
                    sig[n][rows[done]] = self.h_out[n][:nb][done]
                if done.all():
                    break
                keep = np.flatnonzero(~done)
                # Pack the surviving rows to the front (row j -> slot t, t <= j: in-order copies are safe).
                row_h, row_m = s * self.h * 4, s * 8
                for t, j in enumerate(keep):
                    if t != j:
                        _check(cud.cudaMemcpyAsync(int(self.d_hidden[i % 2]) + t * row_h,
                                                   int(self.d_hidden[i % 2]) + int(j) * row_h, row_h, d2d, self.stream))
                        _check(cud.cudaMemcpyAsync(int(self.d_mask) + t * row_m, int(self.d_mask) + int(j) * row_m,
                                                   row_m, d2d, self.stream))
                rows, state, nb = rows[keep], state.take(keep), len(keep)
        return exit_layer, logits, sig

    def close(self) -> None:
        cud = self.cudart
        for p in [self.d_ids, self.d_tt, self.d_mask, *self.d_hidden, *self.d_out.values()]:
            cud.cudaFree(p)
        for p in self._pinned:
            cud.cudaFreeHost(p)
        cud.cudaStreamDestroy(self.stream)
