"""The HTTP server, started for real on a free loopback port: answers equal the library's, a row's
answer does not depend on the requests it shares batches with, every error status, metrics,
graceful shutdown. Request loops are bounded in count and time."""
from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from runtime import EarlyExitModel  # noqa: E402
from runtime.datasets import load_split  # noqa: E402
from serve_util import ROOT, Server  # noqa: E402


@pytest.fixture(scope="module")
def sst2_art(sst2_ckpt, tmp_path_factory):
    from export.build import ExportConfig, build
    return build(ExportConfig(str(sst2_ckpt), str(tmp_path_factory.mktemp("art") / "sst2")))


@pytest.fixture(scope="module")
def texts(data_dir):
    return load_split("sst2", "dev", data_dir).text_a


@pytest.fixture(scope="module")
def server(sst2_art):
    with Server(sst2_art, "--max-texts", "8", "--max-batch-rows", "16") as s:
        yield s


def _softmax(lg):
    p = np.exp(lg.astype(np.float64) - lg.max())
    return p / p.sum()


def test_answers_equal_the_library(server, sst2_art, texts):
    with EarlyExitModel(sst2_art) as m:
        pol = m.policy()
        for batch in (texts[:1], texts[1:6]):
            status, _, out = server.classify({"texts": batch})
            assert status == 200 and len(out["results"]) == len(batch)
            assert out["policy"] == pol.describe() and out["model"]["batching"] == "layer"
            for t, row in zip(batch, out["results"]):
                res = m.run(m.encode([t]), pol)
                assert row["exit_layer"] == int(res.exit_layer[0])
                assert row["label"] == m.task.labels[int(np.argmax(res.logits[0]))]
                assert list(row["scores"].values()) == _softmax(res.logits[0]).tolist()
                assert row["truncated"] is False


def test_pairs_and_policy_override(rte_art, data_dir):
    dev = load_split("rte", "dev", data_dir)
    pairs = [[a, b] for a, b in zip(dev.text_a[:4], dev.text_b[:4])]
    with Server(rte_art, "--thread-pool", "per-session", "--threads", "2") as s:
        status, _, out = s.classify({"pairs": pairs, "policy": {"name": "fixed", "exit_layer": 1}})
        assert status == 200 and [r["exit_layer"] for r in out["results"]] == [1] * 4
        assert out["policy"] == "fixed(exit_layer=1)"
        status, _, out = s.classify({"pairs": pairs, "policy": {"name": "fixed", "exit_layer": 2}})
        assert status == 200 and [r["exit_layer"] for r in out["results"]] == [2] * 4
        status, _, out = s.classify({"texts": ["a man."]})
        assert status == 400 and "pairs" in out["error"]["message"]


def test_a_row_answers_the_same_alone_and_mixed(server, texts):
    """Each row alone, then all of them at once from 8 client threads in requests of 1-4 rows
    under different policies: identical JSON, and batches of more than one row did happen."""
    rows = list(dict.fromkeys(texts))[:24]
    pols = [None, {"name": "fixed", "exit_layer": 2}]
    alone = {(t, i): server.classify({"texts": [t], **({"policy": p} if p else {})})[2]["results"][0]
             for t in rows for i, p in enumerate(pols)}
    before = server.metrics()
    rng = random.Random(0)
    reqs = []
    for _ in range(40):
        i = rng.randrange(2)
        reqs.append((i, rng.sample(rows, rng.randint(1, 4))))

    def send(r):
        i, ts = r
        return r, server.classify({"texts": ts, **({"policy": pols[i]} if pols[i] else {})})

    with ThreadPoolExecutor(8) as ex:
        answers = list(ex.map(send, reqs))
    for (i, ts), (status, _, out) in answers:
        assert status == 200
        for t, row in zip(ts, out["results"]):
            assert row == alone[(t, i)], t
    after = server.metrics()
    single = after['berxit_batch_rows_bucket{le="1"}'] - before['berxit_batch_rows_bucket{le="1"}']
    total = after["berxit_batch_rows_count"] - before["berxit_batch_rows_count"]
    assert total > single, "no graph call ran more than one row: nothing was mixed"


@pytest.mark.parametrize("body,kind", [
    (b'{"texts": ', "bad_json"),
    (b"\xff\xfe", "bad_json"),
    (b"[1, 2]", "bad_request"),
    (b'{"texts": "one string"}', "bad_request"),
    (b'{"texts": [1]}', "bad_request"),
    (b'{"texts": []}', "bad_request"),
    (b'{"text": ["a"]}', "bad_request"),
    (b'{"pairs": [["a", "b"]]}', "bad_request"),
    (b'{"texts": ["  "]}', "bad_input"),
    (b'{"texts": ["a"], "policy": {"name": "nope", "threshold": 0.5}}', "bad_policy"),
    (b'{"texts": ["a"], "policy": {"name": "confidence", "threshold": 1.5}}', "bad_policy"),
    (b'{"texts": ["a"], "policy": {"name": "fixed", "exit_layer": 9}}', "bad_policy"),
    (b'{"texts": ["a"], "policy": {"name": "confidence", "threshold": "high"}}', "bad_request"),
    (b'{"texts": ["a"], "policy": {"name": "confidence", "thresh": 0.5}}', "bad_request"),
    (b'{"texts": ["a"], "timeout_ms": -1}', "bad_request"),
    (b'{"texts": ["a", "b", "c", "d", "e", "f", "g", "h", "i"]}', "too_many_texts"),
])
def test_bad_requests_get_a_json_error_and_the_worker_survives(server, body, kind):
    status, _, out = server.classify(body)
    assert status == (413 if kind == "too_many_texts" else 400)
    assert out["error"]["kind"] == kind and out["error"]["message"]
    assert server.classify({"texts": ["a good movie."]})[0] == 200


def test_routes_body_limit_openapi_and_loopback(sst2_art):
    psutil = pytest.importorskip("psutil")
    with Server(sst2_art, "--max-body-bytes", "200") as s:
        status, _, out = s.classify({"texts": ["x" * 300]})
        assert status == 413 and out["error"]["kind"] == "body_too_large"
        assert json.loads(s.request("GET", "/nope")[2])["error"]["kind"] == "not_found"
        assert s.request("GET", "/v1/classify")[0] == 405
        assert s.get("/healthz")[0] == 200 and s.get("/readyz")[0] == 200
        doc = json.loads(s.get("/openapi.json")[1])
        req = doc["paths"]["/v1/classify"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert set(req["properties"]) == {"texts", "policy", "timeout_ms"} and req["required"] == ["texts"]
        assert doc["paths"]["/v1/classify"]["post"]["responses"]["429"]
        addrs = {c.laddr.ip for c in psutil.Process(s.proc.pid).net_connections("inet") if c.status == "LISTEN"}
        assert addrs == {"127.0.0.1"}


def test_metrics_content(server):
    before = server.metrics()
    for _ in range(3):
        assert server.classify({"texts": ["a good movie.", "an awful film."]})[0] == 200
    server.classify(b"{")
    m = server.metrics()
    d = lambda k: m.get(k, 0) - before.get(k, 0)  # noqa: E731
    assert d('berxit_requests_total{code="200"}') == 3 and d('berxit_requests_total{code="400"}') == 1
    assert d('berxit_errors_total{kind="bad_json"}') == 1
    assert d("berxit_rows_total") == 6 and d("berxit_exit_layer_count") == 6
    assert d('berxit_exit_layer_bucket{le="+Inf"}') == 6 and "berxit_exit_layer_bucket{le=\"2\"}" in m
    assert d("berxit_request_duration_seconds_count") == 4 and d("berxit_batch_rows_count") >= 1
    assert m["berxit_queue_rows"] == 0 and m["berxit_open_rows"] == 0 and m["berxit_model_ready"] == 1


def test_queue_full_deadline_and_internal_error(sst2_art):
    """A slowed model (300 ms per stage, injected): a second request while 2 rows are open gets
    429 with Retry-After; a short deadline gets 504; a failing graph call 500; the worker serves on."""
    fail_text = "the man plays guitar and the woman plays piano in the park with a dog"
    with EarlyExitModel(sst2_art) as m:
        n = int(m.encode([fail_text]).attention_mask.sum())
        assert all(int(m.encode([t]).attention_mask.sum()) != n for t in ("a good movie.", "a bad film.", "a movie."))
    env = {"BERXIT_TEST_STAGE_DELAY_MS": "300", "BERXIT_TEST_FAIL_LEN": str(n)}
    with Server(sst2_art, "--max-queue-rows", "2", "--max-texts", "2", env=env) as s:
        first = ThreadPoolExecutor(1).submit(s.classify, {"texts": ["a good movie.", "a bad film."]})
        t_end = time.monotonic() + 10
        while s.metrics()["berxit_open_rows"] < 2 and time.monotonic() < t_end:
            time.sleep(0.01)
        status, headers, out = s.classify({"texts": ["a movie."]})
        assert status == 429 and out["error"]["kind"] == "queue_full" and int(headers["retry-after"]) >= 1
        assert first.result(30)[0] == 200
        status, _, out = s.classify({"texts": ["a good movie."], "timeout_ms": 100})
        assert status == 504 and out["error"]["kind"] == "deadline_exceeded"
        status, _, out = s.classify({"texts": [fail_text]})
        assert status == 500 and out["error"]["kind"] == "internal"
        assert s.classify({"texts": ["a good movie."]})[0] == 200
        m = s.metrics()
        assert m['berxit_errors_total{kind="queue_full"}'] == 1 and m['berxit_errors_total{kind="deadline_exceeded"}'] == 1


def test_not_ready_while_the_model_loads(sst2_art):
    with Server(sst2_art, env={"BERXIT_TEST_LOAD_DELAY_MS": "3000"}, wait_ready=False) as s:
        t_end = time.monotonic() + 10
        while time.monotonic() < t_end:  # the socket listens at once; the model loads meanwhile
            try:
                status = s.get("/healthz")[0]
                break
            except OSError:
                time.sleep(0.05)
        assert status == 200
        status, body = s.get("/readyz")
        assert status == 503 and json.loads(body)["error"]["kind"] == "not_ready"
        status, _, out = s.classify({"texts": ["a good movie."]})
        assert status == 503 and out["error"]["kind"] == "not_ready"
        t_end = time.monotonic() + 60
        while s.get("/readyz")[0] != 200 and time.monotonic() < t_end:
            time.sleep(0.1)
        assert s.classify({"texts": ["a good movie."]})[0] == 200


def test_graceful_shutdown_answers_what_is_in_flight(sst2_art):
    env = {"BERXIT_TEST_STAGE_DELAY_MS": "150"}
    s = Server(sst2_art, "--batching", "request", env=env)
    try:
        with ThreadPoolExecutor(4) as ex:
            futs = [ex.submit(s.classify, {"texts": [f"a good movie {'very ' * i}."]}) for i in range(4)]
            t_end = time.monotonic() + 10
            while s.metrics()["berxit_open_rows"] < 4 and time.monotonic() < t_end:
                time.sleep(0.02)
            assert s.terminate(60) == 0
            assert [f.result(30)[0] for f in futs] == [200] * 4
        with pytest.raises(OSError):
            s.get("/healthz")
    finally:
        s.stop()


def test_monolithic_mode_and_two_workers(sst2_art, texts):
    with EarlyExitModel(sst2_art) as m:
        ref = m.run_monolithic(m.encode(texts[:3]))
        labels = [m.task.labels[i] for i in ref.logits.argmax(1)]
    with Server(sst2_art, "--mode", "monolithic", "--workers", "2") as s:
        ready, t_end = set(), time.monotonic() + 90  # each worker loads its own model
        while len(ready) < 2 and time.monotonic() < t_end:
            status, body = s.get("/readyz")
            if status == 200:
                ready.add(json.loads(body)["pid"])
        assert len(ready) == 2 and s.proc.pid not in ready
        for _ in range(4):
            status, _, out = s.classify({"texts": texts[:3]})
            assert status == 200 and out["model"]["mode"] == "monolithic"
            assert [r["label"] for r in out["results"]] == labels
            assert {r["exit_layer"] for r in out["results"]} == {m.num_layers}
        status, _, out = s.classify({"texts": texts[:1], "policy": {"name": "fixed", "exit_layer": 1}})
        assert status == 400 and out["error"]["kind"] == "bad_policy"
        assert s.terminate(60) == 0


def test_cli_errors(sst2_art, tmp_path):
    run = lambda *a, **env: subprocess.run([sys.executable, str(ROOT / "tests" / "serve_boot.py"), *a],  # noqa: E731
                                           capture_output=True, text=True, timeout=60, cwd=ROOT,
                                           env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", **env})
    r = run("--artifact", str(sst2_art), BERXIT_TEST_NO_STARLETTE="1")
    assert r.returncode == 2 and "pip install 'berxit-rt[serve]'" in r.stderr
    r = run("--artifact", str(tmp_path / "missing"))
    assert r.returncode == 2 and r.stderr.startswith("error:")
    r = run("--artifact", str(sst2_art), "--max-texts", "64", "--max-batch-rows", "32")
    assert r.returncode == 2 and "max_texts" in r.stderr
    for bad in (["--port", "-1"], ["--workers", "0"], ["--timeout-ms", "nan"], ["--batching", "layer", "--mode", "monolithic"]):
        r = run("--artifact", str(sst2_art), *bad)
        assert r.returncode == 2, bad
    r = run("--help")
    assert r.returncode == 0 and "threads per worker" in " ".join(r.stdout.split())


def test_the_open_loop_benchmark_runs_end_to_end(sst2_art, texts):
    from benchmarks.serve import bench, max_rps_at_p99
    res = bench(["ee-layer", "mono-request"], str(sst2_art), texts, [20.0], seconds=1.0, rounds=2, pin=False,
                stop_p99_ms=10_000)
    for r in res:
        (row,) = r["loads"]
        assert row["statuses"] == {"200": row["sent"]} and row["sent"] > 0
        assert sum(row["exit_layers"].values()) == row["sent"] and row["throughput_rps"] > 0
        assert row["latency_ms_p50"] <= row["latency_ms_p99"]
        assert row["host_steal_pct"] is None or 0 <= row["host_steal_pct"] <= 100  # what the hypervisor took
        assert max_rps_at_p99(r["loads"], 1e9) == row["throughput_rps"] and max_rps_at_p99(r["loads"], 0) == 0
    assert set(res[1]["loads"][0]["exit_layers"]) == {"2"}  # monolithic: every row at the last layer


def test_summary_pairs_each_early_exit_server_with_the_monolithic_one_of_its_threading():
    from benchmarks.serve import summarize

    def server(name, rps_per_pass):
        return {"server": name, "loads": [{"pass": p + 1, "throughput_rps": x, "latency_ms_p99": 10.0, "sent": 100,
                                           "statuses": {"200": 100}} for p, x in enumerate(rps_per_pass)]}
    rps = {"ee-layer": [40, 60], "mono-request": [20, 20], "ee-layer-1t": [30, 30], "mono-request-1t": [10, 15],
           "ee-layer-native": [90, 80], "mono-request-native": [45, 80],
           "ee-layer-native-1t": [50, 44], "mono-request-native-1t": [25, 22]}
    out = summarize([server(k, v) for k, v in rps.items()], 50.0)
    ratios = {k: v["per_pass"] for k, v in out["ee_over_monolithic_at_p99"].items()}
    assert ratios == {"ee-layer": [2.0, 3.0], "ee-layer-1t": [3.0, 2.0], "ee-layer-native": [2.0, 1.0],
                      "ee-layer-native-1t": [2.0, 2.0]}


def test_summary_reports_the_hosts_steal_per_pass():
    from benchmarks.serve import summarize
    loads = [{"pass": p, "throughput_rps": 10.0, "latency_ms_p99": 10.0, "sent": 10, "statuses": {"200": 10},
              "host_steal_pct": st} for p, st in ((1, 1.0), (1, 3.0), (2, 0.5))]
    out = summarize([{"server": "ee-layer", "loads": loads}], 50.0)
    assert out["host_steal_pct_per_pass"] == {"1": {"mean": 2.0, "max": 3.0}, "2": {"mean": 0.5, "max": 0.5}}
    for r in loads:
        r["host_steal_pct"] = None  # a host that does not report steal: no entry
    assert "host_steal_pct_per_pass" not in summarize([{"server": "ee-layer", "loads": loads}], 50.0)
