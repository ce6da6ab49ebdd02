"""Execution backends for the chained graphs, and the errors that say what to install.

    cpu           onnxruntime, CPUExecutionProvider (the measured path)
    cuda          onnxruntime-gpu, CUDAExecutionProvider (inputs bound from host buffers: onnxruntime
                  copies them; device-resident IOBinding is not implemented yet)
    ort-tensorrt  onnxruntime-gpu with TensorrtExecutionProvider (needs TensorRT installed)
    tensorrt      the artifact's own TensorRT engines (export.build --tensorrt), chained by
                  runtime.trt_engine with preallocated device buffers (needs tensorrt + cuda-python)

Only `cpu` has been run and measured in this project (no machine here has TensorRT or
onnxruntime-gpu); the others are selected and checked here so that asking for them fails early
with an install hint. The CUDA-graph executor measured on a GPU is runtime.cuda_graphs.
"""
from __future__ import annotations

import onnxruntime as ort

BACKENDS = ("cpu", "cuda", "ort-tensorrt", "tensorrt")
ORT_BACKENDS = ("cpu", "cuda", "ort-tensorrt")

_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "ort-tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}

_INSTALL = {
    "cuda": "the CUDA build of onnxruntime: `pip uninstall -y onnxruntime && pip install 'berxit-rt[gpu]'` "
            "(onnxruntime-gpu), on a machine with an NVIDIA GPU and CUDA 12",
    "ort-tensorrt": "onnxruntime-gpu and TensorRT: `pip uninstall -y onnxruntime && pip install 'berxit-rt[gpu,tensorrt]'`, "
                    "with TensorRT's libraries on LD_LIBRARY_PATH",
}


class BackendError(RuntimeError):
    """The requested backend cannot run here; the message says what to install."""


def providers_for(backend: str, available: list[str] | None = None) -> list[str]:
    """onnxruntime execution providers for `backend`, or BackendError if they are not available."""
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend '{backend}'; choose one of {', '.join(BACKENDS)}.")
    if backend not in ORT_BACKENDS:
        raise BackendError(f"backend '{backend}' does not run on onnxruntime sessions (see runtime.trt_engine).")
    have = set(available if available is not None else ort.get_available_providers())
    want = _PROVIDERS[backend]
    if want[0] not in have:
        raise BackendError(f"backend '{backend}' needs onnxruntime's {want[0]}, which this onnxruntime "
                           f"({ort.__version__}; providers: {', '.join(sorted(have))}) does not have. "
                           f"Install {_INSTALL[backend]}.")
    return [p for p in want if p in have]
