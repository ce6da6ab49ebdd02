"""The batching scheduler as a library (no HTTP): every batching mode answers each row exactly as
the model alone does; layer batching merges rows of different requests; limits, deadlines and
cancellation; Chain.drop and Chain.run_monolithic."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from runtime import EarlyExitModel
from runtime.datasets import load_split
from runtime.scheduler import (DeadlineExceeded, QueueFull, Scheduler, SchedulerConfig,
                               ShuttingDown)
from serve_util import random_requests


@pytest.fixture(scope="module")
def model(rte_art):
    with EarlyExitModel(rte_art, threads=1) as m:
        yield m


@pytest.fixture(scope="module")
def requests_(model, data_dir):
    return random_requests(model, load_split("rte", "dev", data_dir), 60, seed=0)


def _alone(model, enc, pol):
    """Each row on its own through the plain loop: the reference every batch must reproduce."""
    rs = [model.run(enc.row(i), pol) for i in range(enc.shape[0])]
    return np.concatenate([r.exit_layer for r in rs]), np.concatenate([r.logits for r in rs])


@pytest.mark.parametrize("batching", ["layer", "request", "none"])
def test_every_batching_answers_exactly_as_alone(model, requests_, batching):
    pols = [model.policy("lte", threshold=0.5), model.policy("confidence", threshold=0.6)]
    runs: list[int] = []
    s = Scheduler(model.chain, SchedulerConfig(batching=batching, max_batch_rows=16), on_run=runs.append)
    try:
        futs = [(r, pols[i % 2], s.submit(r, pols[i % 2])) for i, r in enumerate(requests_)]
        for enc, pol, f in futs:
            res = f.result(60)
            ex, lg = _alone(model, enc, pol)
            np.testing.assert_array_equal(res.exit_layer, ex)
            np.testing.assert_array_equal(res.logits, lg)  # bit for bit
            assert res.error == [None] * enc.shape[0]
    finally:
        s.close()
    assert s.open_rows == 0
    if batching != "none":
        assert max(runs) > 1  # rows of different requests did share graph calls


class _Slow:
    """A chain whose stages take `delay` seconds (merges, deadlines, queue limits and shutdown)."""

    def __init__(self, chain, delay):
        self.c, self.delay = chain, delay
        self.log: list[tuple[int, list[int]]] = []  # (stage, rows) of every stage run
        self.lengths: list[int] = []  # the token length of every stage run's rows
        self.merges: list[int] = []

    def __getattr__(self, k):
        return getattr(self.c, k)

    def advance(self, cohort):
        self.log.append((cohort.stage, cohort.rows.tolist()))
        self.lengths.append(int(cohort.lengths[0]))
        time.sleep(self.delay)
        return self.c.advance(cohort)

    def merge(self, cohorts):
        self.merges.append(len(cohorts))
        return self.c.merge(cohorts)


def test_layer_batching_merges_rows_at_layer_boundaries(model, requests_):
    """A runs layer 1 alone; B and C arrive meanwhile, run their layer 1 together, then all three
    run layer 2 in one call (rows of three requests merged at the boundary)."""
    pol = model.policy("fixed", exit_layer=2)
    one = requests_[0].row(0)
    slow = _Slow(model.chain, 0.1)
    s = Scheduler(slow, SchedulerConfig(batching="layer", max_passes=2))
    try:
        a = s.submit(one, pol)
        time.sleep(0.03)
        b, c = s.submit(one, pol), s.submit(one, pol)
        outs = [f.result(30) for f in (a, b, c)]
    finally:
        s.close()
    assert slow.log == [(0, [0]), (0, [1, 2]), (1, [0, 1, 2])] and slow.merges == [2]
    assert len({o.logits.tobytes() for o in outs}) == 1


@pytest.mark.parametrize("max_passes", [0, 1, 3])
def test_no_group_is_passed_over_more_than_max_passes(model, requests_, max_passes):
    """Request A's rows, past layer 1, wait for a steady stream of newer rows at most max_passes
    stage runs (0: oldest first).

    The newer rows all have one token length (not A's): however many of them queue up between two
    stage runs (a loaded machine makes the sleeps late), admitting them is one stage run, so every
    stage run in the log is one scheduling decision, and A's runs are the ones of A's length."""
    pol = model.policy("fixed", exit_layer=2)
    a_enc = requests_[0].row(0)
    n = int(a_enc.attention_mask.sum())
    other = next(r.row(0) for r in requests_ if int(r.row(0).attention_mask.sum()) != n)
    slow = _Slow(model.chain, 0.02)
    s = Scheduler(slow, SchedulerConfig(batching="layer", max_passes=max_passes))
    try:
        futs = [s.submit(a_enc, pol)]
        for _ in range(12):  # a new request about every stage run
            time.sleep(0.02)
            futs.append(s.submit(other, pol))
        for f in futs:
            f.result(30)
    finally:
        s.close()
    runs = list(zip(slow.log, slow.lengths))
    first = next(i for i, ((st, _), ln) in enumerate(runs) if ln == n and st == 0)
    second = next(i for i, ((st, _), ln) in enumerate(runs) if ln == n and st == 1)
    assert first == 0 and second - first - 1 <= max_passes
    assert sum(1 for _, ln in runs if ln == n) == 2  # A ran alone: its two stages, once each


def test_queue_limit_deadline_cancel_and_shutdown(model, requests_):
    pol = model.policy("fixed", exit_layer=2)
    one = requests_[0].row(0)
    s = Scheduler(_Slow(model.chain, 0.2), SchedulerConfig(batching="layer", max_queue_rows=2))
    try:
        a = s.submit(one, pol)
        b = s.submit(one, pol, deadline=time.monotonic() + 0.05)
        with pytest.raises(QueueFull) as e:
            s.submit(one, pol)
        assert e.value.retry_after_s >= 1
        with pytest.raises(DeadlineExceeded):
            b.result(10)
        assert a.result(10).exit_layer.tolist() == [2]
        c = s.submit(one, pol)
        s.cancel(c)
        assert c.cancelled()
        d = s.submit(one, pol)
        time.sleep(0.05)
    finally:
        s.close(timeout=10)
    assert d.result(0).exit_layer.tolist() == [2]  # answered during shutdown
    with pytest.raises(ShuttingDown):
        s.submit(one, pol)
    assert s.open_rows == 0


def test_a_failing_batch_fails_its_requests_only(model, requests_):
    pol = model.policy("fixed", exit_layer=2)
    boom = threading.Event()

    class Flaky(_Slow):
        def advance(self, cohort):
            if boom.is_set():
                boom.clear()
                raise RuntimeError("backend fault")
            return self.c.advance(cohort)

    s = Scheduler(Flaky(model.chain, 0), SchedulerConfig(batching="request"))
    try:
        boom.set()
        with pytest.raises(Exception, match="backend fault"):
            s.submit(requests_[0], pol).result(10)
        assert s.submit(requests_[1], pol).result(10).exit_layer.tolist() == [2] * requests_[1].shape[0]
    finally:
        s.close()


def test_isolated_rows_never_share_a_call(model, requests_):
    """isolate_rows (int8 artifacts by default): every graph call runs one row, answers unchanged."""
    from runtime.serve import isolate_rows
    assert isolate_rows("int8", None) and not isolate_rows("fp32", None) and not isolate_rows("int8", False)
    assert isolate_rows("int8", None, {"method": "onnxruntime quantize_dynamic"})
    assert not isolate_rows("int8", None, {"method": "onnxruntime quantize_static"})  # constant scales
    assert isolate_rows("int8", True, {"method": "onnxruntime quantize_static"})
    pol = model.policy("lte", threshold=0.5)
    for batching in ("layer", "request"):
        runs: list[int] = []
        s = Scheduler(model.chain, SchedulerConfig(batching=batching, isolate_rows=True, mix_lengths=True),
                      on_run=runs.append)
        try:
            futs = [(r, s.submit(r, pol)) for r in requests_[:20]]
            for enc, f in futs:
                np.testing.assert_array_equal(f.result(30).logits, _alone(model, enc, pol)[1])
        finally:
            s.close()
        assert set(runs) == {1}


def test_config_checks():
    for bad in (dict(batching="x"), dict(mode="x"), dict(mode="monolithic", batching="layer"),
                dict(max_batch_rows=0), dict(max_queue_rows=True), dict(max_passes=-1), dict(batch_wait_ms=-1)):
        with pytest.raises(ValueError):
            SchedulerConfig(**bad)


def test_chain_drop_and_monolithic(model, requests_):
    enc = model.encode(["the man plays.", "a dog runs in the park.", "a cat."], ["a man.", "a dog.", "a cat."])
    pol = model.policy("fixed", exit_layer=2)
    ch = model.chain
    c = ch.start(enc.input_ids, enc.token_type_ids, enc.attention_mask, pol, rows=np.array([10, 11, 12]))
    ch.drop(c, np.array([11]))
    assert c.rows.tolist() == [10, 12]
    got = {}
    while not c.done:
        f = ch.advance(c)
        if f is not None:
            got.update({int(r): lg for r, lg in zip(f.rows, f.logits)})
    full = ch.run(enc.input_ids, enc.token_type_ids, enc.attention_mask, pol)
    assert sorted(got) == [10, 12]
    np.testing.assert_allclose(got[10], full.logits[0], atol=1e-5)
    np.testing.assert_allclose(got[12], full.logits[2], atol=1e-5)
    c = ch.start(enc.input_ids, enc.token_type_ids, enc.attention_mask, pol)
    ch.drop(c, np.arange(3))
    assert c.done
    mono = ch.run_monolithic(enc.input_ids, enc.token_type_ids, enc.attention_mask)
    ref = model.run_monolithic(enc)
    np.testing.assert_array_equal(mono.logits, ref.logits)
    assert mono.exit_layer.tolist() == [model.num_layers] * 3 and mono.error == [None] * 3
