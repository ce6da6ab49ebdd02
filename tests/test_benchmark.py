"""The latency benchmark on a tiny artifact: every field the results promise, consistent with
each other (no timing assertions: values depend on the machine)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.latency import main as latency_main
from benchmarks.timing import interleaved, linear_fit, percentiles


def test_linear_fit_and_percentiles():
    f = linear_fit(np.array([1, 2, 3, 4]), np.array([3.0, 5.0, 7.0, 9.0]))
    assert f["slope_ms_per_layer"] == pytest.approx(2.0) and f["intercept_ms"] == pytest.approx(1.0)
    assert f["r2"] == pytest.approx(1.0)
    p = percentiles(np.arange(1, 101, dtype=float))
    assert p["latency_ms_p50"] == pytest.approx(50.5) and p["latency_ms_p90"] == pytest.approx(90.1)


def test_interleaved_calls_every_variant_on_every_item():
    calls = []
    med = interleaved({"a": lambda i: calls.append(("a", i)), "b": lambda i: calls.append(("b", i))},
                      n_items=3, repeats=2, warmup=0)
    assert sorted(calls) == sorted([(v, i) for v in "ab" for i in range(3)] * 2)
    assert med["a"].shape == (3,)
    # interleaved: both variants of item 0 run before any variant of item 1
    first_of_1 = next(k for k, c in enumerate(calls) if c[1] == 1)
    assert {c[0] for c in calls[:first_of_1]} == {"a", "b"}


def test_latency_benchmark_end_to_end(rte_art, rte_ckpt, data_dir, tmp_path, capsys):
    out = tmp_path / "bench"
    code = latency_main(["--artifact", str(rte_art), "--task", "rte", "--data-dir", str(data_dir),
                         "--max-samples", "8", "--repeats", "1", "--passes", "2", "--out", str(out),
                         "--checkpoint", str(rte_ckpt)])
    assert code == 0
    r = json.loads((out / "latency.json").read_text())
    assert (out / "latency.png").stat().st_size > 10_000
    assert r["samples"] == 8 and r["num_layers"] == 2 and r["decision_mismatches"] == 0
    assert r["passes"] == 2 and len(r["chain_overhead_per_pass"]) == 2
    assert r["chain_overhead"] == pytest.approx(float(np.median(r["chain_overhead_per_pass"])))
    sp = r["spread"]["chain_overhead"]
    assert sp["min"] <= r["chain_overhead"] <= sp["max"]
    assert [f["exit_layer"] for f in r["forced_exit"]["per_layer"]] == [1, 2]
    assert {s["policy"] for s in r["sweep"]} == {"confidence", "entropy", "lte"}
    for s in r["sweep"]:
        assert 1.0 <= s["avg_exit_layer"] <= 2.0
        assert s["layer_estimate"] == pytest.approx(2 / s["avg_exit_layer"])
        assert s["realization"] == pytest.approx(s["speedup_vs_full_chain"] / s["layer_estimate"])
        assert s["spread"]["realization"]["min"] <= s["realization"] <= s["spread"]["realization"]["max"]
        rf = s["spread"]["realization_vs_forced_exits"]
        assert s["predicted_from_forced_exits_ms"] > 0 and rf["min"] <= s["realization_vs_forced_exits"] <= rf["max"]
        if s["avg_exit_layer"] in (1.0, 2.0):  # every row at one layer: the prediction is that forced exit's time
            f = r["forced_exit"]["per_layer"][int(s["avg_exit_layer"]) - 1]
            assert s["predicted_from_forced_exits_ms"] == pytest.approx(float(np.median(f["latency_ms_mean_per_pass"])))
        for k in ("latency_ms_p50", "latency_ms_p90", "speedup_vs_monolithic", "score", "relative_score"):
            assert k in s
    assert r["eager"] and r["eager"][0]["decisions"] == "full depth"
    env = r["env"]
    assert env["threads"] >= 1 and env["onnxruntime"] and "cpu" in env and "git_commit" in env
    assert r["command"].startswith("python -m benchmarks.latency")


def test_latency_benchmark_refuses_other_task(rte_art, data_dir, tmp_path, capsys):
    code = latency_main(["--artifact", str(rte_art), "--task", "sst2", "--data-dir", str(data_dir),
                         "--out", str(tmp_path)])
    assert code == 2 and "trained for task 'rte'" in capsys.readouterr().err


def test_throughput_benchmark_batches_keep_decisions(rte_art, data_dir, tmp_path):
    from benchmarks.throughput import main as tp_main
    out = tmp_path / "tp"
    assert tp_main(["--artifact", str(rte_art), "--task", "rte", "--data-dir", str(data_dir), "--batch-sizes", "1", "4",
                    "--policy", "confidence", "--threshold", "0.7", "--repeats", "1", "--out", str(out)]) == 0
    r = json.loads((out / "throughput.json").read_text())
    assert [row["batch_size"] for row in r["rows"]] == [1, 4]
    for row in r["rows"]:
        assert row["exit_layers_equal_batch1"]  # compaction in batches takes the batch-1 decisions
        assert set(row["throughput_rows_per_s"]) == {"early_exit", "full_chain", "monolithic"}
    assert 1.0 <= r["avg_exit_layer"] <= 2.0 and (out / "throughput.png").is_file()


def test_scaling_benchmark(rte_art, tmp_path):
    from benchmarks.scaling import main as sc_main
    out = tmp_path / "sc"
    assert sc_main(["--artifact", str(rte_art), "--seq-lens", "8", "64", "512", "--repeats", "1", "--out", str(out)]) == 0
    r = json.loads((out / "scaling.json").read_text())
    assert [row["seq_len"] for row in r["rows"]] == [8, 64]  # 512 > the tiny model's 128 positions: skipped
    assert len(r["rows"][0]["exit_at_layer_ms_mean"]) == 2
    m = r["memory"]["with_monolithic"]
    assert m["peak_rss_mib_loaded_and_served"] >= m["peak_rss_mib_after_imports"] > 10


def test_concurrency_benchmark(rte_art, data_dir, tmp_path):
    from benchmarks.concurrency import main as cc_main
    out = tmp_path / "cc"
    assert cc_main(["--artifact", str(rte_art), "--task", "rte", "--data-dir", str(data_dir), "--clients", "1", "3",
                    "--intra-op", "1", "--requests", "20", "--rounds", "1", "--out", str(out)]) == 0
    r = json.loads((out / "concurrency.json").read_text())
    row = r["rows"][0]
    assert row["intra_op_threads"] == 1 and row["results_equal_serial"]
    assert set(row["throughput_rows_per_s_median"]) == {"1", "3"}


def test_precision_benchmark(rte_ckpt, rte_art, data_dir, tmp_path):
    from benchmarks.precision import main as pr_main
    from export.build import ExportConfig, build
    q = build(ExportConfig(str(rte_ckpt), str(tmp_path / "q"), precision="int8"))
    out = tmp_path / "pr"
    assert pr_main(["--artifacts", str(rte_art), str(q), "--task", "rte", "--data-dir", str(data_dir),
                    "--max-samples", "6", "--repeats", "1", "--out", str(out)]) == 0
    r = json.loads((out / "precision.json").read_text())
    assert [x["precision"] for x in r["rows"]] == ["fp32", "int8"]
    assert r["rows"][0]["mono_speedup_vs_first"] == pytest.approx(1.0)
    assert r["rows"][0]["score_change_vs_first_points"] == 0.0


def test_overhead_benchmark_splits_boundaries_and_heads(rte_art, sst2_ckpt, tmp_path, data_dir):
    import onnx

    from benchmarks.overhead import main as overhead_main
    from benchmarks.overhead import strip_head
    from export.build import ExportConfig, build
    bare = onnx.load_from_string(strip_head(rte_art / "layer_01.onnx"))
    assert [o.name for o in bare.graph.output] == ["hidden_states_out"]
    assert not {"Gemm", "Gather"} & {n.op_type for n in bare.graph.node}  # the head is gone
    # mean pooling: the stripped graph no longer reads the pooling weights
    lean = build(ExportConfig(str(sst2_ckpt), str(tmp_path / "sst2")))
    merged = build(ExportConfig(str(sst2_ckpt), str(tmp_path / "sst2_x2"), exit_layers=(2,), monolithic=False))
    assert [i.name for i in onnx.load_from_string(strip_head(lean / "layer_01.onnx")).graph.input] == \
        ["hidden_states", "attention_mask"]
    assert overhead_main(["--artifact", str(lean), "--task", "sst2", "--data-dir", str(data_dir), "--max-samples", "4",
                          "--passes", "2", "--repeats", "2", "--compare", f"merged={merged}", "--profile",
                          "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "overhead.json").read_text())
    assert len(res["passes"]) == 2 and res["inputs"] == 4 and res["head_layout"] == "logits"
    s, p0 = res["summary"], res["passes"][0]
    assert s["chain_overhead"]["min"] <= s["chain_overhead"]["median"] <= s["chain_overhead"]["max"]
    ms = p0["ms_mean"]
    assert p0["chain_overhead"] == pytest.approx(ms["chain"] / ms["monolithic"])
    assert p0["chain_overhead"] - 1 == pytest.approx(p0["boundaries"] + p0["exit_heads"] + p0["python_loop"])
    assert p0["merged_over_monolithic"] == pytest.approx(ms["merged"] / ms["monolithic"])
    assert set(ms) == {"monolithic", "chain", "raw_chain", "raw_bare", "exit_1", "merged"}
    prof = res["profile"]
    assert prof["monolithic"]["kernel_us_by_op"].get("Attention", 0) > 0 and prof[prof["stage"]]["nodes"] > 5
    assert prof["comparison"]["layer_ops_ratio"] > 0