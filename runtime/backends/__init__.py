"""Execution backends, by name. Each is one small module implementing base.Backend; the early-exit
loop (runtime/chain.py) is the same for all of them.

    cpu           onnxruntime, CPUExecutionProvider (the measured path)
    cuda          onnxruntime-gpu, CUDAExecutionProvider, hidden states kept on the device
    ort-tensorrt  onnxruntime-gpu with TensorrtExecutionProvider (needs TensorRT installed)
    tensorrt      the artifact's own TensorRT engines (export.build --tensorrt)
    native        the C runtime (runtime/native/, libberxit) over the artifact's native_weights.bin

Only `cpu` has been run and measured in this project (no machine it was built on has a GPU with
TensorRT or onnxruntime-gpu); the others are selected and checked so that asking for them fails
early with an install hint.
"""
from __future__ import annotations

from typing import Callable

from ..manifest import Manifest
from .base import Backend, BackendError, HiddenState, StageOutputs, Workspace


def _ort(name: str) -> Callable[..., Backend]:
    def open_(manifest: Manifest, *, threads=None, thread_pool="per-session", load_monolithic=True,
              device_buffers=None, **_) -> Backend:
        from .ort import OrtBackend
        return OrtBackend(manifest, name, threads=threads, thread_pool=thread_pool, load_monolithic=load_monolithic,
                          device_buffers=device_buffers)
    return open_


def _tensorrt(manifest: Manifest, **_) -> Backend:
    from .tensorrt import TrtBackend, require
    require()  # what to install comes first, before anything about the artifact
    return TrtBackend(manifest)


def _native(manifest: Manifest, *, threads=None, **_) -> Backend:
    from .native import NativeBackend
    return NativeBackend(manifest, threads=threads)


# name -> opener(manifest, **options). A new backend adds one line here and one module.
REGISTRY: dict[str, Callable[..., Backend]] = {
    "cpu": _ort("cpu"),
    "cuda": _ort("cuda"),
    "ort-tensorrt": _ort("ort-tensorrt"),
    "tensorrt": _tensorrt,
    "native": _native,
}
BACKENDS = tuple(REGISTRY)


def open_backend(name: str, manifest: Manifest, **options) -> Backend:
    """Load `manifest`'s artifact on backend `name`; BackendError says what to install if it cannot run here."""
    if name not in REGISTRY:
        raise BackendError(f"unknown backend '{name}'; choose one of {', '.join(BACKENDS)}.")
    return REGISTRY[name](manifest, **options)


def providers_for(backend: str, available: list[str] | None = None) -> list[str]:
    """onnxruntime execution providers for an onnxruntime backend (BackendError if unavailable)."""
    if backend not in REGISTRY:
        raise BackendError(f"unknown backend '{backend}'; choose one of {', '.join(BACKENDS)}.")
    from .ort import providers_for as p
    return p(backend, available)


__all__ = ["Backend", "BackendError", "HiddenState", "StageOutputs", "Workspace", "BACKENDS", "REGISTRY",
           "open_backend", "providers_for"]
