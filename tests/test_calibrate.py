"""Calibration picks a threshold that meets its target on the split, and the runtime uses it."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from runtime import EarlyExitModel, PolicyError, simulate
from runtime.calibrate import calibrate, main as calibrate_main, split_layer_outputs
from runtime.datasets import load_split
from runtime.metrics import score
from runtime.policies import predictions_at_exit


@pytest.fixture()
def art(rte_art, tmp_path):
    dst = tmp_path / "art"
    shutil.copytree(rte_art, dst)
    return dst


def test_split_layer_outputs_equal_one_batch(art, data_dir):
    rt = EarlyExitModel(art, threads=1)
    dev = load_split("rte", "dev", data_dir)
    a = split_layer_outputs(rt, dev.text_a, dev.text_b, batch_size=5)  # other padding per batch
    b = rt.layer_outputs(rt.encode(dev.text_a, dev.text_b))
    for x, y in zip(a, b):
        assert np.abs(x.logits - y.logits).max() < 1e-4


@pytest.mark.parametrize("target", [0.9, 0.97, 1.0])
def test_relative_score_target_is_met_with_fewest_layers(art, data_dir, target):
    rt = EarlyExitModel(art, threads=1)
    dev = load_split("rte", "dev", data_dir)
    per_layer = split_layer_outputs(rt, dev.text_a, dev.text_b)
    res = calibrate(rt, per_layer, dev.labels, "confidence", target_rel=target)
    best, single = res["best"], res["single"]
    full = res["full_depth_score"]
    for p in (best, single):
        ex = simulate(p.policy, per_layer, "classification")
        sc = score("accuracy", predictions_at_exit(per_layer, ex), dev.labels, "classification")
        assert sc / full >= target and sc == pytest.approx(p.score) and ex.mean() == pytest.approx(p.avg_exit_layer)
    assert best.avg_exit_layer <= single.avg_exit_layer
    # no single threshold of the grid does better than the one chosen
    for t in np.linspace(0, 1, 41):
        pol = rt.policy("confidence", threshold=float(t))
        ex = simulate(pol, per_layer, "classification")
        sc = score("accuracy", predictions_at_exit(per_layer, ex), dev.labels, "classification")
        if sc / full >= target:
            assert ex.mean() >= single.avg_exit_layer - 1e-9


def test_calibrate_cli_writes_default_policy(art, data_dir, capsys):
    before = json.loads((art / "manifest.json").read_text())
    assert calibrate_main(["--artifact", str(art), "--task", "rte", "--data-dir", str(data_dir),
                           "--target-avg-layer", "1.5", "--policy", "lte"]) == 0
    after = json.loads((art / "manifest.json").read_text())
    dp = after["default_policy"]
    assert dp["name"] == "lte" and dp["calibration"]["result"]["avg_exit_layer"] <= 1.5
    assert {k: v for k, v in after.items() if k != "default_policy"} == \
        {k: v for k, v in before.items() if k != "default_policy"}
    rt = EarlyExitModel(art, threads=1)  # checksums still verify; default policy is the calibrated one
    assert rt.policy().name == "lte"
    dev = load_split("rte", "dev", data_dir)
    ex = rt.run(rt.encode(dev.text_a, dev.text_b), rt.policy()).exit_layer
    assert ex.mean() == pytest.approx(dp["calibration"]["result"]["avg_exit_layer"])


def test_calibrate_errors(art, data_dir, capsys):
    assert calibrate_main(["--artifact", str(art), "--task", "sst2", "--data-dir", str(data_dir),
                           "--target-relative-score", "0.99"]) == 2
    assert "trained for task 'rte'" in capsys.readouterr().err
    assert calibrate_main(["--artifact", str(art), "--task", "rte", "--data-dir", str(data_dir),
                           "--target-avg-layer", "9"]) == 2
    assert "[1, 2]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        calibrate_main(["--artifact", str(art), "--task", "rte", "--target-avg-layer", "1",
                        "--target-relative-score", "0.9"])
    rt = EarlyExitModel(art, threads=1)
    with pytest.raises(PolicyError, match="per-layer"):
        rt.policy("fixed", exit_layer=1, per_layer=[0.5, 0.5])
    with pytest.raises(PolicyError, match="3 per-layer thresholds"):
        rt.policy("confidence", per_layer=[0.5, 0.5, 0.5])
