"""Exit placement: the cost model's arithmetic, the search over exit sets, and the CLI on a tiny
artifact (no timing asserts: the measured costs only have to be well-formed)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from runtime.place_exits import Costs, choose, main as place_main, predict_ms
from runtime.policies import LayerOutputs


def test_predicted_latency_counts_layers_and_exits_passed():
    c = Costs(embeddings_ms=0.5, layer_ms=(1.0, 2.0, 3.0), exit_ms=0.25)
    # exits at 2 and 3: a row leaving at 2 ran layers 1-2 and passed 1 exit; at 3: 3 layers, 2 exits
    assert predict_ms(c, (2, 3), np.array([2])) == pytest.approx(0.5 + 3.0 + 0.25)
    assert predict_ms(c, (2, 3), np.array([3])) == pytest.approx(0.5 + 6.0 + 0.5)
    assert predict_ms(c, (1, 2, 3), np.array([3, 1])) == pytest.approx(0.5 + np.mean([6.0 + 0.75, 1.0 + 0.25]))


def _layers(rng, n=200):
    """3 layers; layer 1 is useless (random labels), layers 2 and 3 are right, layer 2 confident
    on most rows: the best exit set skips layer 1."""
    gold = rng.integers(0, 2, n)
    def out(correct, conf):
        lg = np.where(correct[:, None], np.eye(2)[gold], np.eye(2)[1 - gold]) * conf[:, None]
        p = np.exp(lg) / np.exp(lg).sum(1, keepdims=True)
        return LayerOutputs(lg.astype(np.float32), p.max(1).astype(np.float32),
                            (-(p * np.log(p)).sum(1)).astype(np.float32), None)
    l1 = out(rng.random(n) < 0.5, rng.uniform(0.1, 3, n))
    l2 = out(np.ones(n, bool), np.where(rng.random(n) < 0.8, 4.0, 0.2))
    l3 = out(np.ones(n, bool), np.full(n, 3.0))
    return [l1, l2, l3], gold


def test_choose_skips_an_exit_that_costs_more_than_it_saves():
    per_layer, gold = _layers(np.random.default_rng(0))
    costs = Costs(0.1, (1.0, 1.0, 1.0), exit_ms=0.3)
    ranked = choose(per_layer, gold, costs, policy="confidence", kind="classification", metric="accuracy",
                    signals=("confidence", "entropy"), target=0.99)
    assert ranked and all(r.relative_score >= 0.99 for r in ranked)
    assert ranked[0].exits == (2, 3)  # layer 1 never qualifies a row; its exit is pure cost
    assert [r.predicted_ms for r in ranked] == sorted(r.predicted_ms for r in ranked)
    assert {r.exits for r in ranked} >= {(2, 3), (1, 2, 3)}


def test_place_exits_cli(sst2_ckpt, tmp_path, data_dir, capsys):
    from export.build import ExportConfig, build
    art = build(ExportConfig(str(sst2_ckpt), str(tmp_path / "art")))
    out = tmp_path / "place.json"
    assert place_main(["--artifact", str(art), "--task", "sst2", "--data-dir", str(data_dir), "--target-relative-score",
                       "0.9", "--timing-samples", "4", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "--exit-layers" in text and "cost model" in text
    res = json.loads(out.read_text())
    assert len(res["costs"]["layer_ms"]) == 2 and res["costs"]["exit_ms"] >= 0
    assert res["ranked"][0]["exits"][-1] == 2
    sub = build(ExportConfig(str(sst2_ckpt), str(tmp_path / "sub"), exit_layers=(2,)))
    assert place_main(["--artifact", str(sub), "--task", "sst2", "--data-dir", str(data_dir)]) == 2
    assert "exit at every layer" in capsys.readouterr().err
