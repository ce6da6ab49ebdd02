"""Ray Serve: the same server as 2 replicas behind Ray's HTTP proxy, on a local Ray instance the
test starts (2 CPUs, no dashboard; about 20-40 s of Ray start-up on 2 cores). Answers equal the
library's; under load one replica is killed: every request gets its answer or an explicit error,
none hangs, and a new replica takes its place."""
from __future__ import annotations

import os
import socket

import pytest

# A single-machine Ray: every Ray process addresses the others over loopback (set before import).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # and sends no usage reports

pytest.importorskip("starlette")
ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray
serve = pytest.importorskip("ray.serve")

from benchmarks.serve_fault import post, run_fault  # noqa: E402
from runtime import EarlyExitModel  # noqa: E402
from runtime.datasets import load_split  # noqa: E402
from runtime.serve import ServeConfig  # noqa: E402
from runtime.serve_ray import run  # noqa: E402


@pytest.fixture(scope="module")
def sst2_art(sst2_ckpt, tmp_path_factory):
    from export.build import ExportConfig, build
    return build(ExportConfig(str(sst2_ckpt), str(tmp_path_factory.mktemp("art") / "sst2")))


@pytest.fixture(scope="module")
def proxy(sst2_art):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        run(ServeConfig(str(sst2_art), threads=1), 2, "127.0.0.1", port)
        yield port
    finally:
        serve.shutdown()
        ray.shutdown()


def test_ray_replicas_answer_like_the_library_and_survive_a_killed_replica(proxy, sst2_art, data_dir):
    texts = list(dict.fromkeys(load_split("sst2", "dev", data_dir).text_a))[:16]
    with EarlyExitModel(sst2_art, threads=1) as m:
        preds = m.predict(texts, batch_size=1)
    expected = {t: p.label for t, p in zip(texts, preds)}
    for t, p in zip(texts, preds):
        how, status, body = post(proxy, {"texts": [t]}, 30)
        assert status == 200, body
        row = body["results"][0]
        assert (row["label"], row["exit_layer"]) == (p.label, p.exit_layer)
    how, status, body = post(proxy, {"texts": [1]}, 30)
    assert status == 400 and body["error"]["kind"] == "bad_request"

    res = run_fault(proxy, texts, expected, seconds=8, clients=3, kill_after_s=2.5)
    print("fault:", res)
    assert res["requests"] > 0 and res["stuck_clients"] == 0
    assert res["outcomes"].get("hang", 0) == 0 and res["outcomes"].get("wrong", 0) == 0
    assert res["outcomes"]["ok"] > 0
    assert res["replica_came_back"], res
