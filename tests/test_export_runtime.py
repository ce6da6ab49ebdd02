"""train -> export -> runtime on tiny models: graphs match PyTorch, the runtime takes the exits
training-time evaluation takes, and outputs agree."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from runtime import EarlyExitModel, load_manifest, simulate
from runtime import manifest as M
from runtime.manifest import verify_files
from runtime.policies import derive_signal
from runtime.backends.ort import make_session
from train.data import load_split, tokenize
from train.evaluate import collect_layer_outputs
from train.model import additive_mask, exit_signals, load_checkpoint


def test_manifest_lists_every_graph_with_checksums(rte_art):
    m = load_manifest(rte_art)
    verify_files(m)  # every sha256
    assert m.num_layers == 2 and m.task.name == "rte" and m.task.text_pair
    assert set(m.graphs) == {"embeddings", "layer_01", "layer_02", "monolithic"}
    assert m.signals == ("confidence", "entropy", "lte")
    for role, g in m.graphs.items():
        assert (rte_art / g.file).is_file() and len(g.sha256) == 64
    v = m.validation
    assert v["max_abs_diff"] <= v["atol"] == 1e-4
    assert set(v["per_graph_max_abs_diff"]) == set(m.graphs)
    assert "tokenizer.json" in {f.file for f in m.tokenizer.files}
    assert m.head_layout == "logits" and m.head_width == 3  # 2 logits + the LTE logit
    assert list(m.graphs["layer_01"].outputs) == [M.HIDDEN_OUT, M.HEAD]
    assert list(m.graphs["layer_01"].inputs) == [M.HIDDEN_IN, M.ATTENTION_MASK]  # cls pooling: no pool weights
    assert list(m.graphs["monolithic"].outputs) == [M.LOGITS]


def test_each_layer_graph_matches_pytorch_on_new_inputs(rte_ckpt, rte_art):
    """Independent of the export's own check: other shapes (batch 3, seq 11, padding)."""
    model, _ = load_checkpoint(rte_ckpt)
    g = torch.Generator().manual_seed(7)
    h = torch.randn(3, 11, 32, generator=g)
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[0, 4:] = 0
    for i in range(2):
        sess = make_session(rte_art / M.layer_graph_name(i + 1))
        got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {M.HIDDEN_IN: h.numpy(), M.ATTENTION_MASK: mask.numpy()})))
        with torch.no_grad():
            h2 = model.layer(i, h, additive_mask(mask, h.dtype))
            pooled = model.pool(h2, mask)
            logits = model.head(i, pooled)
            conf, ent = exit_signals(logits)
            lte = model.lte(pooled)
        real = mask.bool().numpy()
        assert np.abs(got[M.HIDDEN_OUT][real] - h2.numpy()[real]).max() < 1e-4
        head = got[M.HEAD]
        derived = {M.LOGITS: head[:, :2], M.CONFIDENCE: derive_signal("confidence", head[:, :2], None),
                   M.ENTROPY: derive_signal("entropy", head[:, :2], None), M.LTE: derive_signal("lte", None, head[:, 2])}
        for name, ref in ((M.LOGITS, logits), (M.CONFIDENCE, conf), (M.ENTROPY, ent), (M.LTE, lte)):
            assert np.abs(derived[name] - ref.numpy()).max() < 1e-4, name


def test_both_head_layouts_give_the_same_answers(rte_ckpt, rte_art, sst2_ckpt, tmp_path, data_dir):
    """Signals computed in the graph (head 'signals') or derived by the runtime from the head's
    logits ('logits', with host pooling weights for mean pooling): same exits, same outputs."""
    from export.build import ExportConfig, build
    for ckpt, lean_art, task in ((rte_ckpt, rte_art, "rte"), (sst2_ckpt, None, "sst2")):
        lean_art = lean_art or build(ExportConfig(str(ckpt), str(tmp_path / f"{task}_lean")))
        full_art = build(ExportConfig(str(ckpt), str(tmp_path / f"{task}_signals"), head="signals"))
        a, b = EarlyExitModel(lean_art, threads=1), EarlyExitModel(full_art, threads=1)
        assert (a.manifest.head_layout, b.manifest.head_layout) == ("logits", "signals")
        assert a.manifest.uses_pool_weights == (task == "sst2")  # sst2_ckpt uses mean pooling
        dev = load_split(task, "dev", data_dir)
        enc = a.encode(dev.text_a, dev.text_b)
        la, lb = a.layer_outputs(enc), b.layer_outputs(enc)
        for x, y in zip(la, lb):
            for k in ("logits", "confidence", "entropy", "lte"):
                if getattr(y, k) is not None:
                    np.testing.assert_allclose(getattr(x, k), getattr(y, k), atol=1e-5, err_msg=k)
        pol_a = a.policy("confidence", threshold=float(np.median(lb[0].confidence)))
        ra, rb = a.run(enc, pol_a), b.run(enc, b.policy("confidence", threshold=pol_a.threshold))
        np.testing.assert_array_equal(ra.exit_layer, rb.exit_layer)
        assert set(ra.exit_layer.tolist()) == {1, 2}  # compaction ran
        for k in ra.signals:
            np.testing.assert_allclose(ra.signals[k], rb.signals[k], atol=1e-5)


def _thresholds_between(values: np.ndarray, k: int = 5, gap: float = 2e-5) -> list[float]:
    """Up to k thresholds, each the midpoint of two neighbouring signal values at least `gap`
    apart, so float noise between ONNX and torch (~1e-7) cannot flip a compared decision."""
    v = np.unique(values)
    mids = [(a + b) / 2 for a, b in zip(v[:-1], v[1:]) if b - a > gap]
    if len(mids) <= k:
        return [float(m) for m in mids]
    return [float(mids[int(j)]) for j in np.linspace(0, len(mids) - 1, k)]


def test_runtime_exit_layers_equal_training_evaluation(rte_ckpt, rte_art, data_dir):
    model, tok = load_checkpoint(rte_ckpt)
    dev = load_split("rte", "dev", data_dir)
    per_layer = collect_layer_outputs(model, tokenize(dev, tok, 32), tok.pad_token_id, progress=False)
    rt = EarlyExitModel(rte_art, threads=1)
    enc = rt.encode(dev.text_a, dev.text_b)
    checked, mixed = 0, 0
    for name in ("confidence", "entropy", "lte"):
        # Only non-final layers decide anything (the last layer always exits).
        vals = np.concatenate([getattr(o, name) for o in per_layer[:-1]])
        for t in _thresholds_between(vals):
            pol = rt.policy(name, threshold=t)
            want = simulate(pol, per_layer, "classification")
            batched = rt.run(enc, pol)  # whole dev set as one batch: compaction between layers
            np.testing.assert_array_equal(batched.exit_layer, want)
            one = np.array([rt.run(enc.row(i), pol).exit_layer[0] for i in range(len(dev))])
            np.testing.assert_array_equal(one, want)
            # the logits returned are the exit layer's
            ref = np.stack([per_layer[k - 1].logits[i] for i, k in enumerate(want)])
            assert np.abs(batched.logits - ref).max() < 1e-4
            checked += 1
            mixed += len(set(want.tolist())) > 1  # both layers used: compaction really ran
    assert checked >= 10 and mixed >= 5
    # Fixed exits and the monolithic graph
    for k in (1, 2):
        assert (rt.run(enc, rt.policy("fixed", exit_layer=k)).exit_layer == k).all()
    mono = rt.run_monolithic(enc)
    assert np.abs(mono.logits - per_layer[-1].logits).max() < 1e-4


def test_layer_outputs_match_torch_for_regression(stsb_ckpt, stsb_art, data_dir):
    model, tok = load_checkpoint(stsb_ckpt)
    dev = load_split("stsb", "dev", data_dir)
    per_layer = collect_layer_outputs(model, tokenize(dev, tok, 32), tok.pad_token_id, progress=False)
    rt = EarlyExitModel(stsb_art, threads=1)
    assert rt.signals == ("lte",)
    outs = rt.layer_outputs(rt.encode(dev.text_a, dev.text_b))
    for a, b in zip(outs, per_layer):
        assert np.abs(a.logits - b.logits).max() < 1e-4 and np.abs(a.lte - b.lte).max() < 1e-4
    preds = rt.predict(dev.text_a[:3], dev.text_b[:3], policy=rt.policy("lte", threshold=0.5))
    assert all(p.label is None and isinstance(p.score, float) for p in preds)


def test_predict_keeps_input_order_with_mixed_exits(rte_art):
    rt = EarlyExitModel(rte_art, threads=1)
    a = ["the man plays guitar.", "a cat.", "the dog is running in the park with a ball and the man is happy."]
    b = ["someone plays music.", "a dog.", "a dog runs."]
    pol = rt.policy("fixed", exit_layer=1)
    batched = rt.predict(a, b, policy=rt.policy("lte", threshold=0.5))
    singles = [rt.predict([x], [y], policy=rt.policy("lte", threshold=0.5))[0] for x, y in zip(a, b)]
    for p, q in zip(batched, singles):
        assert p.exit_layer == q.exit_layer and p.label == q.label
        assert np.allclose(p.logits, q.logits, atol=1e-5)
    assert all(p.exit_layer == 1 for p in rt.predict(a, b, policy=pol))


def test_export_fewer_layers(rte_ckpt, tmp_path):
    from export.build import ExportConfig, build
    art = build(ExportConfig(str(rte_ckpt), str(tmp_path / "one"), layers=1))
    m = load_manifest(art)
    assert m.num_layers == 1 and "layer_02" not in m.graphs
    assert not (art / "layer_02.onnx").exists()
    rt = EarlyExitModel(art, threads=1)
    r = rt.predict(["a cat."], ["a dog."], policy=rt.policy("confidence", threshold=1.0))[0]
    assert r.exit_layer == 1  # the only layer: everything exits there
    assert json.loads((art / "manifest.json").read_text())["backbone"]["num_hidden_layers"] == 2


def test_single_text_mean_pooling_without_lte(sst2_ckpt, data_dir, tmp_path):
    from export.build import ExportConfig, build
    from runtime import PolicyError
    art = build(ExportConfig(str(sst2_ckpt), str(tmp_path / "sst2")))
    m = load_manifest(art)
    assert m.signals == ("confidence", "entropy") and not m.task.text_pair
    assert m.raw["backbone"]["pooling"] == "mean"
    model, tok = load_checkpoint(sst2_ckpt)
    dev = load_split("sst2", "dev", data_dir)
    per_layer = collect_layer_outputs(model, tokenize(dev, tok, 32), tok.pad_token_id, progress=False)
    rt = EarlyExitModel(art, threads=1)
    outs = rt.layer_outputs(rt.encode(dev.text_a))
    for a, b in zip(outs, per_layer):
        assert np.abs(a.logits - b.logits).max() < 1e-4 and np.abs(a.confidence - b.confidence).max() < 1e-4
    with pytest.raises(PolicyError, match="--lte"):
        rt.policy("lte", threshold=0.5)
    assert rt.predict(["good movie."])[0].label in ("negative", "positive")


def test_fused_graphs_record_their_fusions(rte_art):
    from export.optimize import op_counts
    m = load_manifest(rte_art)
    fused = m.raw["optimization"]["fused_operators"]
    for role in ("layer_01", "layer_02"):
        assert fused[role].get("Attention") == 1 and fused[role].get("SkipLayerNormalization") == 2
        ops = op_counts(rte_art / m.graphs[role].file)
        assert ops.get("Attention") == 1 and "LogSoftmax" not in ops  # fused attention; signals derived by the host
        head_ops = sum(v for k, v in ops.items() if k not in ("Attention", "MatMul", "SkipLayerNormalization",
                                                               "BiasGelu", "Cast", "ReduceSum", "Constant"))
        assert head_ops <= 3, ops  # cls pooling: Gather + one Gemm for logits and the LTE logit
    assert fused["monolithic"].get("Attention") == 2
    # BERT embeddings alone fuse into one kernel too (onnxruntime's optimizer only fuses them
    # ahead of an Attention node); the export validated the fused graph against PyTorch.
    assert fused["embeddings"].get("EmbedLayerNormalization") == 1
    assert op_counts(rte_art / m.graphs["embeddings"].file) == {"Cast": 2, "EmbedLayerNormalization": 1}


def test_mean_pooling_is_the_masked_token_mean(sst2_ckpt):
    import torch
    from train.model import load_checkpoint
    model, _ = load_checkpoint(sst2_ckpt)
    h = torch.randn(3, 5, model.backbone.config.hidden_size)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    want = torch.stack([h[0].mean(0), h[1, :2].mean(0), h[2, 0]])
    assert model.cfg.pooling == "mean"
    assert torch.allclose(model.pool(h, mask), want, atol=1e-6)


def test_unfused_and_int8_exports(rte_ckpt, data_dir, tmp_path):
    from export.build import ExportConfig, build
    from export.optimize import op_counts
    plain = build(ExportConfig(str(rte_ckpt), str(tmp_path / "plain"), fuse=False))
    q = build(ExportConfig(str(rte_ckpt), str(tmp_path / "int8"), precision="int8-dynamic"))
    assert "Attention" not in op_counts(plain / "layer_01.onnx")
    ops = op_counts(q / "layer_01.onnx")
    assert ops.get("DynamicQuantizeLinear", 0) + ops.get("MatMulInteger", 0) > 0
    mq = load_manifest(q)
    assert mq.raw["precision"] == "int8" and mq.validation["atol"] == 1.0
    assert mq.optimization["int8"]["method"] == "onnxruntime quantize_dynamic"
    dev = load_split("rte", "dev", data_dir)
    a, b = EarlyExitModel(plain, threads=1), EarlyExitModel(q, threads=1)
    la = a.layer_outputs(a.encode(dev.text_a, dev.text_b))
    lb = b.layer_outputs(b.encode(dev.text_a, dev.text_b))
    agree = np.mean(la[-1].logits.argmax(1) == lb[-1].logits.argmax(1))
    assert agree >= 0.8  # int8 keeps most predictions of the fp32 model


def test_export_max_seq_len_overrides_training_length(sst2_ckpt, tmp_path):
    """--max-seq-len sets the longest input the artifact takes (not the training length); out of
    the backbone's position range it is refused before anything is written."""
    from export.build import ExportConfig, ExportError, build, parse_args
    from runtime import EarlyExitModel
    art = build(ExportConfig(str(sst2_ckpt), str(tmp_path / "long"), max_seq_len=48, monolithic=False))
    with EarlyExitModel(art) as m:
        assert m.manifest.max_seq_len == 48
        r = m.predict(["good " * 100])[0]
        assert r.truncated
    assert parse_args(["--checkpoint", "c", "--out", "o", "--max-seq-len", "40"]).max_seq_len == 40
    with pytest.raises(ExportError, match="out of range"):
        build(ExportConfig(str(sst2_ckpt), str(tmp_path / "bad"), max_seq_len=100000))
    assert not (tmp_path / "bad").exists()


def test_static_int8_answers_do_not_depend_on_the_batch(rte_ckpt, data_dir, tmp_path):
    """Static int8 (the default int8): calibrated scales are graph constants, so every row's answer
    and exit layer are the same alone (batch 1) and inside random batches with compaction."""
    from export.build import ExportConfig, build
    from export.optimize import op_counts
    q = build(ExportConfig(str(rte_ckpt), str(tmp_path / "int8s"), precision="int8", calibration_rows=40,
                           data_dir=str(data_dir)))
    m = load_manifest(q)
    rec = m.optimization["int8"]
    assert m.precision == "int8" and rec["method"] == "onnxruntime quantize_static" and rec["rows"] == 40
    ops = op_counts(q / "layer_01.onnx")
    assert ops.get("QuantizeLinear", 0) > 0 and ops.get("DynamicQuantizeLinear", 0) == 0
    assert ops.get("QAttention") == 1 and "Attention" not in ops  # the attention is int8, statically scaled
    assert rec["attention"]["op"] == "QAttention" and rec["outputs"] == "fp32"
    import onnx
    g = onnx.load(str(q / "layer_01.onnx")).graph
    made_by = {o: n.op_type for n in g.node for o in n.output}
    for n in g.node:  # residual paths read fp32 tensors, never a dequantized activation
        if n.op_type == "SkipLayerNormalization":
            assert all(made_by.get(i) != "DequantizeLinear" for i in n.input[:2])
    assert not list(q.glob("*augmented*")) and not list(q.glob("*.qatt.onnx"))
    rt = EarlyExitModel(q, threads=1)
    dev = load_split("rte", "dev", data_dir)
    pol = rt.policy("lte", threshold=float(np.median(rt.layer_outputs(rt.encode(dev.text_a, dev.text_b))[0].lte)))
    alone = [rt.run(rt.encode([a], [b]), pol) for a, b in zip(dev.text_a, dev.text_b)]
    rng = np.random.default_rng(0)
    for _ in range(3):
        perm = rng.permutation(len(dev))
        for s in range(0, len(perm), 7):
            idx = perm[s:s + 7]
            res = rt.run(rt.encode([dev.text_a[i] for i in idx], [dev.text_b[i] for i in idx]), pol)
            for r, i in enumerate(idx):
                assert res.exit_layer[r] == alone[i].exit_layer[0]
                assert res.logits[r].argmax() == alone[i].logits[0].argmax()
                assert np.abs(res.logits[r] - alone[i].logits[0]).max() < 1e-3
