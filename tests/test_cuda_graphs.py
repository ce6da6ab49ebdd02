"""The CUDA executor over the per-layer split. Without a GPU its pieces run eagerly on the CPU
(capture=False): the same code computes the same signals and exit decisions as the training
model and the policies; the capture itself is checked by the GPU tests (marked `gpu`)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from train.cuda_graphs import CudaGraphBackend, random_model, seq_bucket
from runtime.policies import LayerOutputs, make_policy, simulate
from train.model import exit_signals

GPU = torch.cuda.is_available()


def _inputs(b: int, s: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, 30000, (b, s)).astype(np.int64)
    lengths = rng.integers(1, s + 1, b)
    lengths[0] = s
    mask = (np.arange(s)[None, :] < lengths[:, None]).astype(np.int64)
    ids[mask == 0] = 0
    tt = np.zeros_like(ids)
    tt[:, s // 2:] = 1
    return ids, tt * mask, mask


def _reference(model, ids, tt, mask) -> list[LayerOutputs]:
    with torch.no_grad():
        out = model(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(tt))
    res = []
    for lg, u in zip(out.logits, out.lte):
        c, e = exit_signals(lg)
        res.append(LayerOutputs(lg.numpy(), c.numpy(), e.numpy(), u.numpy()))
    return res


def test_seq_bucket():
    assert [seq_bucket(n, 512) for n in (1, 16, 17, 100, 128, 129, 512)] == [16, 16, 32, 128, 128, 256, 512]
    assert seq_bucket(40, 48) == 48  # capped at the model's maximum
    with pytest.raises(ValueError, match="exceed"):
        seq_bucket(600, 512)
    with pytest.raises(ValueError):
        seq_bucket(0, 512)


def test_pieces_match_the_training_model_on_cpu():
    model = random_model("tiny", max_len=64).eval()
    ids, tt, mask = _inputs(5, 23)
    ref = _reference(model, ids, tt, mask)
    ex = CudaGraphBackend(model, device="cpu", dtype="fp32")
    assert ex.capture is False
    sig = ex.run_layers(ids, tt, mask)  # padded to the 32 bucket: padding must not change anything
    assert sig.shape == (2, 5, 2 + 3)
    for i, r in enumerate(ref):
        np.testing.assert_allclose(sig[i, :, :2], r.logits, atol=1e-5)
        np.testing.assert_allclose(sig[i, :, 2], r.confidence, atol=1e-5)
        np.testing.assert_allclose(sig[i, :, 3], r.entropy, atol=1e-5)
        np.testing.assert_allclose(sig[i, :, 4], r.lte, atol=1e-5)
    mono = ex.run_monolithic(ids, tt, mask)
    np.testing.assert_allclose(mono, sig[-1], atol=1e-5)


@pytest.mark.parametrize("name,kw", [("confidence", {"threshold": None}), ("lte", {"threshold": None}),
                                     ("patience", {"patience": 1}), ("fixed", {"exit_layer": 1})])
def test_exit_decisions_and_compaction_equal_the_simulation(name, kw):
    model = random_model("tiny", max_len=64).eval()
    ids, tt, mask = _inputs(9, 30, seed=1)
    ref = _reference(model, ids, tt, mask)
    if "threshold" in kw:  # a threshold that splits the batch at layer 1, so compaction happens
        kw = {"threshold": float(np.median(ref[0].confidence if name == "confidence" else ref[0].lte))}
    pol = make_policy(name, task_kind="classification", num_layers=2, signals=("confidence", "entropy", "lte"), **kw)
    want = simulate(pol, ref, "classification")
    ex = CudaGraphBackend(model, device="cpu", dtype="fp32")
    got = ex.chain().run(ids, tt, mask, pol)
    np.testing.assert_array_equal(got.exit_layer, want)
    stacked = np.stack([r.logits for r in ref])
    np.testing.assert_allclose(got.logits, stacked[want - 1, np.arange(len(want))], atol=1e-5)
    if name in ("confidence", "lte"):
        assert set(want) == {1, 2}


def test_cuda_device_without_a_gpu_says_so():
    if GPU:
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="needs a CUDA build of PyTorch and a GPU"):
        CudaGraphBackend(random_model("tiny"), device="cuda")
    with pytest.raises(ValueError, match="CUDA graphs need"):
        CudaGraphBackend(random_model("tiny"), device="cpu", capture=True)


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA GPU (run scripts/gpu_check.sh on the device machine)")
@pytest.mark.parametrize("dtype,atol", [("fp32", 2e-3), ("fp16", 3e-2)])
def test_captured_graphs_match_eager_on_gpu(dtype, atol):
    model = random_model("minilm-l6").eval()
    ids, tt, mask = _inputs(4, 100, seed=2)
    ref = _reference(model, ids, tt, mask)  # float32 on the CPU
    ex = CudaGraphBackend(model, device="cuda", dtype=dtype)
    assert ex.capture
    sig = ex.run_layers(ids, tt, mask)
    for i, r in enumerate(ref):
        assert np.abs(sig[i, :, :2] - r.logits).max() < atol * max(1.0, np.abs(r.logits).max())
    pol = make_policy("fixed", task_kind="classification", num_layers=6, signals=("confidence", "entropy", "lte"),
                      exit_layer=3)
    assert (ex.chain().run(ids, tt, mask, pol).exit_layer == 3).all()
    again = ex.run_layers(ids, tt, mask)  # replays reuse the captured graphs and give the same values
    np.testing.assert_array_equal(sig, again)


def test_gpu_benchmark_ratios():
    from benchmarks.gpu import derive
    # 4 layers, a layer costs 1.0, the chain adds 0.1 per layer wait, the graph-wide floor 0.2.
    med = {"monolithic": 4.2, "chain": 4.6, "chain_nosync": 4.3, "eager_chain": 9.2, "eager_mono": 8.4}
    med.update({f"exit@{k}": 0.2 + 1.1 * k for k in range(1, 5)})
    d = derive(med, 4)
    assert d["chain_overhead"] == pytest.approx(4.6 / 4.2)
    assert d["realization_by_exit_layer"]["4"] == pytest.approx(1.0)
    assert d["realization_by_exit_layer"]["1"] == pytest.approx((4.6 / 1.3) / 4)
    assert d["exit_time_fit_ms"]["slope_ms_per_layer"] == pytest.approx(1.1)
    assert d["realization_uniform_mix"] == pytest.approx((4.6 / np.mean([1.3, 2.4, 3.5, 4.6])) / (4 / 2.5))
    assert d["eager_chain_over_chain"] == pytest.approx(2.0)


def test_gpu_benchmark_without_a_gpu_says_so(capsys):
    if GPU:
        pytest.skip("a GPU is present")
    from benchmarks.latency import main
    assert main(["--backend", "cuda-graphs", "--config", "tiny"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    # --backend cpu is the ordinary onnxruntime benchmark (here it stops at the missing artifact).
    assert main(["--backend", "cpu", "--artifact", "no/such/artifact", "--task", "rte"]) == 2
    err = capsys.readouterr().err
    assert "CUDA" not in err and "no/such/artifact" in err
