"""Trade-off analysis: the area metric on known curves, envelopes, Limit training, and the
analysis on tiny runs of every strategy."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.tradeoff import area_between, envelope, main as tradeoff_main


def test_area_between_known_lines():
    x = np.linspace(0, 2, 2001)
    a, b = area_between(x, x, x, 2 - x)  # A = x, B = 2 - x cross at x = 1
    assert a == pytest.approx(1.0, abs=1e-6) and b == pytest.approx(1.0, abs=1e-6)
    a, b = area_between(x, x + 1, x, x)  # A above B by 1 over a range of 2
    assert a == pytest.approx(2.0) and b == 0.0


def test_envelope_is_best_score_at_or_below_x():
    pts = [{"avg_exit_layer": 1.5, "score": 0.6}, {"avg_exit_layer": 2.0, "score": 0.55},
           {"avg_exit_layer": 3.0, "score": 0.8}]
    xs, ys = envelope(pts, 3, step=0.5)
    assert xs.tolist() == [1.0, 1.5, 2.0, 2.5, 3.0]
    assert np.isnan(ys[0]) and ys[1:].tolist() == [0.6, 0.6, 0.6, 0.8]


def test_limit_strategy_truncates_and_trains_one_exit(tiny_dir, data_dir, tmp_path):
    from train.finetune import TrainConfig, finetune
    from train.model import load_checkpoint
    with pytest.raises(ValueError, match="limit-layer"):
        TrainConfig(task="rte", out="x", strategy="limit")
    with pytest.raises(ValueError, match="limit-layer"):
        TrainConfig(task="rte", out="x", strategy="joint", limit_layer=1)
    out = tmp_path / "limit1"
    finetune(TrainConfig(task="rte", out=str(out), model=str(tiny_dir), data_dir=str(data_dir), strategy="limit",
                         limit_layer=1, epochs=1, batch_size=8, max_seq_len=32), progress=False)
    model, _ = load_checkpoint(out)
    assert model.cfg.num_layers == 1 and model.backbone.config.num_hidden_layers == 1
    with pytest.raises(ValueError, match="out of range"):
        finetune(TrainConfig(task="rte", out=str(tmp_path / "bad"), model=str(tiny_dir), data_dir=str(data_dir),
                             strategy="limit", limit_layer=3, epochs=1), progress=False)


def test_tradeoff_on_tiny_runs(tiny_dir, data_dir, tmp_path):
    from train.finetune import TrainConfig, finetune
    runs = []
    for strat in ("two_stage", "joint", "alternating"):
        out = tmp_path / strat
        finetune(TrainConfig(task="rte", out=str(out), model=str(tiny_dir), data_dir=str(data_dir), strategy=strat,
                             lte=True, epochs=2, batch_size=8, lr=3e-3, max_seq_len=32), progress=False)
        runs.append(str(out))
    assert tradeoff_main(["--runs", *runs, "--out", str(tmp_path / "res")]) == 0
    r = json.loads((tmp_path / "res" / "tradeoff_rte.json").read_text())
    assert r["baseline"] == "two_stage final layer"
    two = next(x for x in r["runs"] if x["strategy"] == "two_stage")
    assert two["layer_wise_relative"][-1] == pytest.approx(1.0)
    assert "area_alt_over_joint" in r and r["area_alt_over_joint"] >= 0 and r["area_joint_over_alt"] >= 0
    assert [p["seed"] for p in r["area_by_seed"]] == [42]
    for x in r["runs"]:
        assert set(x["tradeoff"]) == {"confidence", "lte"} and len(x["patience"]) == 1
        assert set(x["lte_vs_layer_wise"]) == {"area_lte_over_layer_wise", "area_layer_wise_over_lte"}
        assert [t["target"] for t in x["table2"]] == [0.99, 0.97, 0.95]
        assert all(1 <= p["avg_exit_layer"] <= 2 for p in x["tradeoff"]["confidence"])


def test_reproduce_resumes_and_summarises(tiny_dir, data_dir, tmp_path):
    from benchmarks.reproduce import main as repro_main
    args = ["--tasks", "rte", "--seeds", "1", "--model", str(tiny_dir), "--data-dir", str(data_dir),
            "--max-train-samples", "16", "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "res"),
            "--report", str(tmp_path / "REPRODUCTION.md")]
    args += ["--limit-task", "rte"]  # the tiny backbone has 2 layers: two Limit runs
    assert repro_main(args) == 0
    s = json.loads((tmp_path / "res" / "summary.json").read_text())
    assert set(s["rte"]["final_layer"]) == {"two_stage", "joint", "alternating"}
    assert [r["layer"] for r in s["rte"]["limit"]] == [1, 2]
    res = json.loads((tmp_path / "res" / "tradeoff_rte.json").read_text())
    limit2 = json.loads((tmp_path / "runs" / "rte" / "limit2_seed1" / "eval.json").read_text())
    assert res["limit"][1]["score"] == limit2["layer_scores"][-1]["accuracy"]
    assert res["limit"][1]["relative_score"] == pytest.approx(limit2["layer_scores"][-1]["accuracy"]
                                                              / res["runs"][0]["baseline_score"])
    report = (tmp_path / "REPRODUCTION.md").read_text()
    assert "## rte" in report and "Two-stage best at the last layer" in report and "area of ALT's" in report
    assert "![rte](res/tradeoff_rte.png)" in report and "Table-2 form" in report and "at a glance" in report
    assert "Runs finished: 5 of the 5 planned (rte: 5)" in report
    assert "| Limit (one model per layer, no LTE) | 1 |" in report and "Limit minus the best strategy's" in report
    assert "## Final-layer scores" in report and "| rte (accuracy) | " in report
    ckpt = tmp_path / "runs" / "rte" / "joint_lte_seed1" / "eval.json"
    stamp = ckpt.stat().st_mtime_ns
    assert repro_main(args) == 0  # second call: everything done, nothing retrained
    assert ckpt.stat().st_mtime_ns == stamp


def test_reproduce_plan_order_and_limit_runs():
    from benchmarks.reproduce import plan
    runs = plan(["rte", "sst2", "stsb"], [1, 2], num_layers=3)
    names = [r.name for r in runs]
    # Seed-major: every task's first seed before any second seed; sst2 gets one seed only.
    assert names[:9] == [f"{t}/{s}_lte_seed1" for t in ("rte", "sst2", "stsb") for s in ("two_stage", "joint", "alternating")]
    assert not any(n.startswith("sst2/") and n.endswith("seed2") for n in names)
    assert names[-3:] == ["stsb/limit1_seed1", "stsb/limit2_seed1", "stsb/limit3_seed1"]
    assert runs[-1].argv(Path("o"), [])[-2:] == ["--limit-layer", "3"] and not runs[-1].lte
    sst2 = [r for r in plan(["sst2"], [1], num_layers=2, limit_task="sst2") if r.strategy == "limit"]
    assert [r.limit_layer for r in sst2] == [1, 2] and all(r.epochs == 1.0 and "--max-train-samples" in r.extra for r in sst2)
    assert not [r for r in plan(["rte"], [1], limit_task=None) if r.strategy == "limit"]
    assert not [r for r in plan(["rte"], [1]) if r.strategy == "limit"]  # default Limit task (stsb) not asked for


def test_reproduce_rejects_a_limit_task_outside_the_plan(capsys):
    from benchmarks.reproduce import main as repro_main
    with pytest.raises(SystemExit) as e:
        repro_main(["--tasks", "rte", "--limit-task", "sst2", "--plan"])
    assert e.value.code == 2 and "--limit-task sst2 is not among --tasks (rte)" in capsys.readouterr().err


def test_table2_and_lte_vs_layer_wise_on_a_known_case():
    from benchmarks.tradeoff import lte_vs_layer_wise, table2_rows
    # 4 layers; layer-wise relative 0.8, 0.9, 0.95, 1.0. LTE points: one at 2.0 layers with 0.98.
    row = {"layer_wise": [0.8, 0.9, 0.95, 1.0], "layer_wise_relative": [0.8, 0.9, 0.95, 1.0],
           "tradeoff": {"lte": [{"threshold": 0.2, "score": 0.8, "relative_score": 0.8, "avg_exit_layer": 1.0},
                                {"threshold": 0.5, "score": 0.98, "relative_score": 0.98, "avg_exit_layer": 2.0},
                                {"threshold": 0.9, "score": 1.0, "relative_score": 1.0, "avg_exit_layer": 4.0}]}}
    t = table2_rows(row)
    assert t[0]["avg_exit_layer"] == 4.0 and t[1]["avg_exit_layer"] == 2.0 and t[1]["saved_layers"] == 0.5
    assert t[1]["threshold"] == 0.5 and t[2]["relative_score"] == 0.98
    a = lte_vs_layer_wise(row)
    # Envelope: 80 on [1,2), 98 on [2,4); baseline line 80->90->95->100. Above: from x=2 to 4 the gap is
    # 8 at x=2, 3 at x=3, -2 at x=4 (crossing at 3.6): 5.5 + 3*0.6/2 = 6.4. Below: 0 to 10 over [1,2) = ~5,
    # and 2*0.4/2 = 0.4 near the end.
    assert a["area_lte_over_layer_wise"] == pytest.approx(6.4, abs=0.15)
    assert a["area_layer_wise_over_lte"] == pytest.approx(5.4, abs=0.2)


def test_committed_reproduction_numbers_come_from_the_committed_runs():
    # results/reproduction/per_layer holds every run's per-layer dev outputs (no weights): the
    # committed analysis must be what benchmarks.tradeoff computes from them.
    from benchmarks.reproduce import limit_scores
    from benchmarks.tradeoff import analyse
    root = Path(__file__).resolve().parents[1] / "results" / "reproduction"
    for task in ("rte", "stsb"):
        runs = sorted(p for p in (root / "per_layer" / task).iterdir() if not p.name.startswith("limit"))
        assert len(runs) == 9
        res = analyse(runs)
        saved = json.loads((root / f"tradeoff_{task}.json").read_text())
        assert np.allclose([r["layer_wise"] for r in res["runs"]], [r["layer_wise"] for r in saved["runs"]])
        assert np.allclose([(p["joint_over_alt"], p["alt_over_joint"]) for p in res["area_by_seed"]],
                           [(p["joint_over_alt"], p["alt_over_joint"]) for p in saved["area_by_seed"]])
        if task == "stsb":
            got = limit_scores(root / "per_layer" / task, res)
            assert np.allclose([r["relative_score"] for r in got], [r["relative_score"] for r in saved["limit"]])
            assert [r["layer"] for r in saved["limit"]] == [1, 2, 3, 4, 5, 6]
