"""The packaged all-MiniLM-L6-v2 through train -> export -> runtime (small slices: about a minute)."""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.real


def test_minilm_end_to_end(tmp_path, data_dir):
    from export.build import main as export_main
    from runtime import EarlyExitModel
    from train.finetune import main as finetune_main

    ck, art = tmp_path / "ck", tmp_path / "art"
    assert finetune_main(["--task", "rte", "--data-dir", str(data_dir), "--strategy", "alternating", "--lte",
                          "--epochs", "1", "--batch-size", "8", "--max-seq-len", "32", "--max-train-samples", "16",
                          "--out", str(ck)]) == 0
    ev = json.loads((ck / "eval.json").read_text())
    assert [r["layer"] for r in ev["layer_scores"]] == [1, 2, 3, 4, 5, 6]
    assert export_main(["--checkpoint", str(ck), "--out", str(art), "--layers", "3"]) == 0
    m = EarlyExitModel(art, threads=2)
    assert m.num_layers == 3 and m.hidden_size == 384
    assert m.manifest.validation["max_abs_diff"] < 1e-4
    p = m.predict(["A man is playing a guitar."], ["Someone plays music."], policy=m.policy("fixed", exit_layer=2))[0]
    assert p.exit_layer == 2 and p.label in ("entailment", "not_entailment")
