"""Every backbone family (BERT, RoBERTa, ALBERT with shared layers, DistilBERT) through
train -> export -> runtime on a tiny random config."""
from __future__ import annotations

import numpy as np

from export.build import ExportConfig, build
from runtime import EarlyExitModel, load_manifest
from runtime.datasets import load_split
from train.data import tokenize
from train.evaluate import collect_layer_outputs
from train.finetune import TrainConfig, finetune
from train.model import load_checkpoint


def test_family_end_to_end(family_dir, data_dir, tmp_path):
    family, folder = family_dir
    ck = tmp_path / "ck"
    finetune(TrainConfig(task="rte", out=str(ck), model=str(folder), data_dir=str(data_dir), strategy="alternating",
                         lte=True, epochs=1, batch_size=8, lr=1e-3, max_seq_len=32, seed=0), progress=False)
    art = build(ExportConfig(str(ck), str(tmp_path / "art")))
    m = load_manifest(art)
    assert m.backbone.model_type == family and m.validation["max_abs_diff"] <= 1e-4
    # Absolute-position embeddings (BERT, DistilBERT) fuse into one kernel; RoBERTa's
    # padding-offset positions and ALBERT's projected embeddings keep their unfused graph.
    fused_emb = m.raw["optimization"]["fused_operators"]["embeddings"].get("EmbedLayerNormalization") == 1
    assert fused_emb == (family in ("bert", "distilbert")), m.raw["optimization"]["fused_operators"]["embeddings"]
    assert (m.task.text_pair and ("token_type_ids" in m.graphs["embeddings"].inputs)) == (family in ("bert", "albert"))
    model, tok = load_checkpoint(ck)
    dev = load_split("rte", "dev", data_dir)
    ref = collect_layer_outputs(model, tokenize(dev, tok, 32), tok.pad_token_id, progress=False)
    rt = EarlyExitModel(art, threads=1)
    got = rt.layer_outputs(rt.encode(dev.text_a, dev.text_b))
    for a, b in zip(got, ref):
        assert np.abs(a.logits - b.logits).max() < 1e-4 and np.abs(a.lte - b.lte).max() < 1e-4
    pol = rt.policy("confidence", threshold=0.6)
    res = rt.run(rt.encode(dev.text_a, dev.text_b), pol)
    assert res.exit_layer.min() >= 1 and res.exit_layer.max() <= 2


def test_albert_layers_share_weights(family_dir):
    family, folder = family_dir
    if family != "albert":
        import pytest
        pytest.skip("ALBERT only")
    from train.model import ExitConfig, MultiExitModel, load_backbone
    bb, _ = load_backbone(str(folder))
    m = MultiExitModel(bb, ExitConfig("rte", "classification", 2, 2, False))
    assert m.family.layer(m.backbone, 0) is m.family.layer(m.backbone, 1)
