"""Backend selection: cpu runs; GPU backends fail early with what to install (no GPU here)."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from runtime import BackendError, EarlyExitModel, load_manifest
from runtime.backends import providers_for
from runtime.predict import main as predict_main


def test_cpu_backend_runs(rte_art):
    m = EarlyExitModel(rte_art, threads=1, backend="cpu")
    assert m.providers == ["CPUExecutionProvider"]
    assert m.predict(["a cat."], ["a dog."])[0].exit_layer in (1, 2)


def test_provider_lists():
    assert providers_for("cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == \
        ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers_for("ort-tensorrt", ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])[0] \
        == "TensorrtExecutionProvider"
    with pytest.raises(BackendError, match="unknown backend"):
        providers_for("metal", ["CPUExecutionProvider"])
    with pytest.raises(BackendError, match="TensorRT"):
        providers_for("ort-tensorrt", ["CUDAExecutionProvider", "CPUExecutionProvider"])


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="a CUDA onnxruntime is installed")
def test_gpu_backend_without_onnxruntime_gpu_says_what_to_install(rte_art, capsys):
    with pytest.raises(BackendError, match=r"pip install 'berxit-rt\[gpu\]'"):
        EarlyExitModel(rte_art, backend="cuda")
    assert predict_main(["--artifact", str(rte_art), "--backend", "cuda", "a", "b"]) == 2
    assert "onnxruntime-gpu" in capsys.readouterr().err


# -- TensorRT engines (export --tensorrt, backend 'tensorrt'): logic checked without TensorRT --------

def _has(mod: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(mod) is not None


def test_tensorrt_profile_shapes():
    from export.tensorrt import Profile, profile_for
    p = profile_for(max_seq_len=64, max_batch=16, opt_batch=4, opt_seq=128)
    assert (p.min_batch, p.opt_batch, p.max_batch, p.min_seq, p.opt_seq, p.max_seq) == (1, 4, 16, 1, 64, 64)
    sh = p.shapes(["hidden_states", "attention_mask"], hidden_size=384)
    assert sh["hidden_states"] == ((1, 1, 384), (4, 64, 384), (16, 64, 384))
    assert sh["attention_mask"] == ((1, 1), (4, 64), (16, 64))
    assert p.shapes(["input_ids", "token_type_ids"], 384)["input_ids"][2] == (16, 64)
    with pytest.raises(ValueError, match="min <= opt <= max batch"):
        Profile(max_batch=2, opt_batch=4)
    with pytest.raises(ValueError, match="no TensorRT profile rule"):
        p.shapes(["position_ids"], 384)


def test_tensorrt_manifest_record():
    from export.tensorrt import Profile, engine_record
    rec = engine_record("10.3.0", "NVIDIA H200 (sm_90)", "fp16", Profile(),
                        {"layer_01": {"file": "tensorrt/layer_01.plan", "onnx": "tensorrt/layer_01.onnx", "sha256": "0" * 64}})
    assert rec["tensorrt_version"] == "10.3.0" and rec["gpu"].startswith("NVIDIA H200")
    assert rec["profile"]["max_seq"] == 128 and rec["engines"]["layer_01"]["file"].endswith(".plan")


class _FakeTrt:
    """Records the calls build_engine makes through TensorRT 10's Python API (no TensorRT here)."""

    def __init__(self, parse_ok=True, build_ok=True):
        self.calls, self.parse_ok, self.build_ok = [], parse_ok, build_ok
        trt = self

        class Logger:
            WARNING = "warning"

            def __init__(self, level):
                pass

        class Network:
            pass

        class Profile:
            def set_shape(self, name, lo, opt, hi):
                trt.calls.append(("set_shape", name, lo, opt, hi))

        class Config:
            def set_memory_pool_limit(self, pool, n):
                trt.calls.append(("pool", pool, n))

            def set_flag(self, flag):
                trt.calls.append(("flag", flag))

            def add_optimization_profile(self, prof):
                trt.calls.append(("profile",))

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                trt.calls.append(("network", flags))
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                trt.calls.append(("build",))
                return b"PLAN" if trt.build_ok else None

        class OnnxParser:
            num_errors = 1

            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                trt.calls.append(("parse", path))
                return trt.parse_ok

            def get_error(self, i):
                return "node 3: unsupported operator Foo"

        self.Logger, self.Builder, self.OnnxParser = Logger, Builder, OnnxParser
        self.MemoryPoolType = type("MemoryPoolType", (), {"WORKSPACE": "workspace"})
        self.BuilderFlag = type("BuilderFlag", (), {"FP16": "fp16"})


def test_tensorrt_build_engine_call_sequence(tmp_path):
    from export.tensorrt import Profile, build_engine
    onnx_path, plan = tmp_path / "layer_01.onnx", tmp_path / "layer_01.plan"
    onnx_path.write_bytes(b"onnx")
    shapes = Profile(opt_batch=2, max_batch=8, opt_seq=64, max_seq=128).shapes(["hidden_states", "attention_mask"], 32)
    trt = _FakeTrt()
    build_engine(trt, onnx_path, plan, shapes, fp16=True)
    assert plan.read_bytes() == b"PLAN"
    assert trt.calls[0] == ("network", 0) and trt.calls[1] == ("parse", str(onnx_path))
    assert ("flag", "fp16") in trt.calls and ("pool", "workspace", 4 << 30) in trt.calls
    assert ("set_shape", "hidden_states", (1, 1, 32), (2, 64, 32), (8, 128, 32)) in trt.calls
    assert ("set_shape", "attention_mask", (1, 1), (2, 64), (8, 128)) in trt.calls
    assert trt.calls.index(("profile",)) < trt.calls.index(("build",))
    fp32 = _FakeTrt()
    build_engine(fp32, onnx_path, tmp_path / "b.plan", shapes, fp16=False)
    assert not [c for c in fp32.calls if c[0] == "flag"]
    with pytest.raises(RuntimeError, match="cannot parse layer_01.onnx: node 3: unsupported operator Foo"):
        build_engine(_FakeTrt(parse_ok=False), onnx_path, tmp_path / "c.plan", shapes, fp16=False)
    with pytest.raises(RuntimeError, match="failed to build an engine for layer_01.onnx"):
        build_engine(_FakeTrt(build_ok=False), onnx_path, tmp_path / "d.plan", shapes, fp16=False)
    assert not (tmp_path / "c.plan").exists() and not (tmp_path / "d.plan").exists()


def test_tensorrt_export_options_are_checked():
    from export.build import ExportConfig, ExportError
    with pytest.raises(ExportError, match="add --tensorrt"):
        ExportConfig("ck", "out", precision="fp16")
    with pytest.raises(ExportError, match="int8 engines"):
        ExportConfig("ck", "out", precision="int8", tensorrt=True)
    with pytest.raises(ExportError, match="trt-opt-batch"):
        ExportConfig("ck", "out", tensorrt=True, trt_max_batch=2, trt_opt_batch=8)
    assert ExportConfig("ck", "out", precision="fp16", tensorrt=True).onnx_precision == "fp32"


@pytest.mark.skipif(_has("tensorrt"), reason="TensorRT is installed")
def test_tensorrt_export_without_tensorrt_fails_first_and_keeps_the_artifact(rte_ckpt, rte_art, tmp_path, capsys):
    import shutil

    from export.build import main as build_main
    out = tmp_path / "art"
    shutil.copytree(rte_art, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert build_main(["--checkpoint", str(rte_ckpt), "--out", str(out), "--tensorrt", "--precision", "fp16"]) == 2
    err = capsys.readouterr().err
    assert "tensorrt package" in err and "berxit-rt[tensorrt]" in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".art.tmp")]


@pytest.mark.skipif(_has("tensorrt"), reason="TensorRT is installed")
def test_tensorrt_backend_without_tensorrt_says_what_to_install(rte_art, capsys):
    with pytest.raises(BackendError, match=r"berxit-rt\[tensorrt\]"):
        EarlyExitModel(rte_art, backend="tensorrt")
    assert predict_main(["--artifact", str(rte_art), "--backend", "tensorrt", "a", "b"]) == 2
    assert "tensorrt" in capsys.readouterr().err


def test_tensorrt_chain_needs_engines_in_the_artifact(rte_art):
    from runtime import ArtifactError
    from runtime.backends.tensorrt import TrtBackend
    with pytest.raises(ArtifactError, match="no TensorRT engines"):
        TrtBackend(load_manifest(rte_art))
    with pytest.raises(BackendError, match="does not run on onnxruntime"):
        providers_for("tensorrt", ["CPUExecutionProvider"])


def test_device_buffer_path_gives_the_same_results(rte_art, data_dir):
    """GPU backends keep hidden states in OrtValues (device IOBinding); the same code path with
    OrtValues in host memory must give what the numpy buffers give, compaction included."""
    from runtime.datasets import load_split
    dev = load_split("rte", "dev", data_dir)
    a = EarlyExitModel(rte_art, threads=1)
    b = EarlyExitModel(rte_art, threads=1, device_buffers=True)
    assert a.buffer_device is None and b.buffer_device == "cpu"
    enc = a.encode(dev.text_a[:24], dev.text_b[:24])
    conf = np.concatenate([o.confidence for o in a.layer_outputs(enc)[:1]])
    pol = a.policy("confidence", threshold=float(np.median(conf)))  # about half exit at layer 1
    ra, rb = a.run(enc, pol), b.run(enc, pol)
    assert set(ra.exit_layer) == {1, 2}
    np.testing.assert_array_equal(ra.exit_layer, rb.exit_layer)
    np.testing.assert_allclose(ra.logits, rb.logits, atol=1e-6)
