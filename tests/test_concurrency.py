"""One loaded model shared by threads gives serial results; a bounded soak shows no drift and
no resident-memory growth."""
from __future__ import annotations

import random
import resource
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from runtime import EarlyExitModel
from runtime.datasets import load_split


def _requests(data_dir, n: int, seed: int = 0):
    dev = load_split("rte", "dev", data_dir)
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randint(1, 4)  # batches of 1..4 rows: many shapes, compaction on and off
        idx = [rng.randrange(len(dev)) for _ in range(k)]
        out.append(([dev.text_a[i] for i in idx], [dev.text_b[i] for i in idx]))
    return out


def _serve(model, pol, req):
    res = model.run(model.encode(*req), pol)
    return res.exit_layer.copy(), res.logits.copy()


def test_threads_match_serial(rte_art, data_dir):
    model = EarlyExitModel(rte_art, threads=2)
    pol = model.policy("confidence", threshold=0.7)
    reqs = _requests(data_dir, 200)
    serial = [_serve(model, pol, r) for r in reqs]
    with ThreadPoolExecutor(max_workers=4) as ex:
        parallel = list(ex.map(lambda r: _serve(model, pol, r), reqs))
    for (e1, l1), (e2, l2) in zip(serial, parallel):
        np.testing.assert_array_equal(e1, e2)
        assert np.abs(l1 - l2).max() < 1e-5


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def test_soak_no_drift_no_memory_growth(rte_art, data_dir):
    """4 threads x 5,000 requests (bounded: about 10-20 s on the tiny model)."""
    model = EarlyExitModel(rte_art, threads=2)
    pol = model.policy("lte", threshold=0.5)
    reqs = _requests(data_dir, 64, seed=1)
    expected = [_serve(model, pol, r) for r in reqs]
    for r in reqs * 3:  # warm every buffer shape before the baseline
        _serve(model, pol, r)
    base = _rss_mib()
    errors: list[str] = []

    def worker(t: int) -> None:
        rng = random.Random(t)
        for _ in range(5000):
            j = rng.randrange(len(reqs))
            e, lg = _serve(model, pol, reqs[j])
            if not np.array_equal(e, expected[j][0]) or np.abs(lg - expected[j][1]).max() > 1e-5:
                errors.append(f"thread {t} request {j} drifted")
                return

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors[:3]
    growth = (_rss_mib() - base) / base
    assert growth < 0.05, f"resident memory grew {growth:.1%}"
