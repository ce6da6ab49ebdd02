"""Backend selection: cpu runs; GPU backends fail early with what to install (no GPU here)."""
from __future__ import annotations

import onnxruntime as ort
import pytest

from runtime import BackendError, EarlyExitModel
from runtime.backends import providers_for
from runtime.predict import main as predict_main


def test_cpu_backend_runs(rte_art):
    m = EarlyExitModel(rte_art, threads=1, backend="cpu")
    assert m.providers == ["CPUExecutionProvider"]
    assert m.predict(["a cat."], ["a dog."])[0].exit_layer in (1, 2)


def test_provider_lists():
    assert providers_for("cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == \
        ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers_for("tensorrt", ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])[0] \
        == "TensorrtExecutionProvider"
    with pytest.raises(BackendError, match="unknown backend"):
        providers_for("metal", ["CPUExecutionProvider"])
    with pytest.raises(BackendError, match="TensorRT"):
        providers_for("tensorrt", ["CUDAExecutionProvider", "CPUExecutionProvider"])


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="a CUDA onnxruntime is installed")
def test_gpu_backend_without_onnxruntime_gpu_says_what_to_install(rte_art, capsys):
    with pytest.raises(BackendError, match=r"pip install 'berxit-rt\[gpu\]'"):
        EarlyExitModel(rte_art, backend="cuda")
    assert predict_main(["--artifact", str(rte_art), "--backend", "cuda", "a", "b"]) == 2
    assert "onnxruntime-gpu" in capsys.readouterr().err
