"""Exit rules and metrics (numpy only)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from runtime.metrics import accuracy, f1, pearson, spearman
from runtime.policies import LayerOutputs, PolicyError, make_policy, predictions_at_exit, simulate


def _cls_layers() -> list[LayerOutputs]:
    # 3 layers x 4 rows; confidence rises with depth for rows 0-1, stays low for row 3.
    conf = np.array([[0.95, 0.6, 0.55, 0.5], [0.97, 0.92, 0.6, 0.51], [0.99, 0.95, 0.8, 0.52]], np.float32)
    ent = -(conf * np.log(conf) + (1 - conf) * np.log(1 - conf))
    lte = np.array([[0.9, 0.2, 0.1, 0.0], [0.9, 0.7, 0.3, 0.1], [0.9, 0.8, 0.6, 0.2]], np.float32)
    logits = [np.stack([np.log(c), np.log(1 - c)], axis=1) for c in conf]
    return [LayerOutputs(logits[i], conf[i], ent[i], lte[i]) for i in range(3)]


SIG = ("confidence", "entropy", "lte")


def _pol(name, **kw):
    return make_policy(name, task_kind=kw.pop("kind", "classification"), num_layers=3, signals=kw.pop("signals", SIG), **kw)


def test_confidence_exit_layers():
    ex = simulate(_pol("confidence", threshold=0.9), _cls_layers(), "classification")
    assert ex.tolist() == [1, 2, 3, 3]  # the last layer always exits


def test_entropy_matches_confidence_for_binary():
    layers = _cls_layers()
    t = float(-(0.9 * math.log(0.9) + 0.1 * math.log(0.1)))
    assert simulate(_pol("entropy", threshold=t), layers, "classification").tolist() == \
        simulate(_pol("confidence", threshold=0.9), layers, "classification").tolist()


def test_lte_fixed_and_predictions():
    layers = _cls_layers()
    ex = simulate(_pol("lte", threshold=0.65), layers, "classification")
    assert ex.tolist() == [1, 2, 3, 3]
    assert simulate(_pol("fixed", exit_layer=2), layers, "classification").tolist() == [2, 2, 2, 2]
    pred = predictions_at_exit(layers, ex)
    assert np.allclose(pred[1], layers[1].logits[1]) and np.allclose(pred[3], layers[2].logits[3])


def test_patience_classification_and_regression():
    lg = [np.array([[1, 0], [0, 1]], np.float32), np.array([[1, 0], [1, 0]], np.float32),
          np.array([[1, 0], [0, 1]], np.float32), np.array([[1, 0], [0, 1]], np.float32)]
    layers = [LayerOutputs(x) for x in lg]
    p = make_policy("patience", task_kind="classification", num_layers=4, signals=(), patience=2)
    assert simulate(p, layers, "classification").tolist() == [3, 4]
    reg = [LayerOutputs(np.array([[v]], np.float32)) for v in (1.0, 1.5, 1.55, 1.56)]
    p = make_policy("patience", task_kind="regression", num_layers=4, signals=(), patience=2, threshold=0.1)
    assert simulate(p, reg, "regression").tolist() == [4]
    p = make_policy("patience", task_kind="regression", num_layers=4, signals=(), patience=1, threshold=0.1)
    assert simulate(p, reg, "regression").tolist() == [3]


@pytest.mark.parametrize("kwargs,msg", [
    (dict(name="magic", threshold=0.5), "unknown policy"),
    (dict(name="confidence", threshold=float("nan")), "finite"),
    (dict(name="confidence", threshold=1.5), r"\[0, 1\]"),
    (dict(name="confidence", threshold=-0.1), r"\[0, 1\]"),
    (dict(name="lte", threshold=float("inf")), "finite"),
    (dict(name="entropy", threshold=2.0), "entropy threshold"),
    (dict(name="confidence"), "needs --threshold"),
    (dict(name="fixed", exit_layer=4), "out of range"),
    (dict(name="fixed", exit_layer=0), "out of range"),
    (dict(name="fixed"), "needs --exit-layer"),
    (dict(name="patience", patience=0), "patience"),
    (dict(name="confidence", threshold="abc"), "must be a number"),
])
def test_bad_policy_values(kwargs, msg):
    name = kwargs.pop("name")
    with pytest.raises(PolicyError, match=msg):
        _pol(name, **kwargs)


def test_policy_needs_signal_and_task():
    with pytest.raises(PolicyError, match="classification"):
        _pol("confidence", threshold=0.9, kind="regression", signals=("lte",))
    with pytest.raises(PolicyError, match="--lte"):
        _pol("lte", threshold=0.5, signals=("confidence", "entropy"))
    with pytest.raises(PolicyError, match="TOL"):
        make_policy("patience", task_kind="regression", num_layers=3, signals=(), patience=2)


def test_metrics_known_values():
    assert accuracy(np.array([1, 0, 1]), np.array([1, 1, 1])) == pytest.approx(2 / 3)
    # tp=2, fp=1, fn=1 -> F1 = 4 / 6
    assert f1(np.array([1, 1, 1, 0, 0]), np.array([1, 1, 0, 1, 0])) == pytest.approx(4 / 6)
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert spearman(x, x ** 3) == pytest.approx(1.0)  # monotone, not linear
    assert spearman(x, -x) == pytest.approx(-1.0)
    # ties get average ranks: ranks [1.5, 1.5, 3] vs [1, 2, 3]
    assert spearman(np.array([1.0, 1.0, 2.0]), np.array([1.0, 2.0, 3.0])) == pytest.approx(0.8660254, abs=1e-6)


def test_metrics_match_scipy_sklearn_and_batch():
    st = pytest.importorskip("scipy.stats")
    skm = pytest.importorskip("sklearn.metrics")
    from runtime.metrics import score_batch
    rng = np.random.default_rng(0)
    p, g = rng.integers(0, 2, (5, 40)), rng.integers(0, 2, (5, 40))
    x, y = rng.normal(size=(5, 40)), np.round(rng.normal(size=(5, 40)), 1)  # ties in gold
    for i in range(5):
        assert score_batch("f1", p, g)[i] == pytest.approx(skm.f1_score(g[i], p[i]))
        assert score_batch("accuracy", p, g)[i] == pytest.approx(accuracy(p[i], g[i]))
        assert score_batch("spearman", x, y)[i] == pytest.approx(st.spearmanr(x[i], y[i]).statistic)
        assert score_batch("pearson", x, y)[i] == pytest.approx(pearson(x[i], y[i]))
    assert f1(np.zeros(4), np.ones(4)) == 0.0 and spearman(np.ones(4), np.arange(4)) == 0.0


def test_metrics_name_the_extra_when_scipy_is_missing(monkeypatch):
    import builtins
    real = builtins.__import__

    def no_scipy(name, *a, **kw):
        if name.startswith(("scipy", "sklearn")):
            raise ImportError(name)
        return real(name, *a, **kw)
    import importlib
    monkeypatch.setattr(importlib, "import_module", lambda n: no_scipy(n))
    with pytest.raises(ImportError, match=r"berxit-rt\[eval\]"):
        spearman(np.arange(4.0), np.arange(4.0) ** 2)
    assert accuracy(np.ones(3), np.ones(3)) == 1.0  # numpy-only metric still works


def test_derive_signal_gives_derive_signals_values_bit_for_bit():
    """The loop's one-signal path and the all-signals path must agree exactly (decisions compare
    these values with thresholds taken from them), on ordinary and extreme values and dtypes."""
    from runtime.policies import derive_signal, derive_signals
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float16, np.float64):
        for c in (1, 2, 3, 5):
            logits = (rng.standard_normal((64, c)) * rng.choice([0.01, 1, 30, 300], (64, 1))).astype(dtype)
            logits[0, 0], logits[1, -1], logits[2, 0] = np.inf, np.nan, -np.inf
            lte = (rng.standard_normal(64) * 20).astype(dtype)
            lte[:3] = [np.inf, -np.inf, np.nan]
            for name in ("confidence", "entropy", "lte"):
                with np.errstate(all="ignore"):
                    one, ref = derive_signal(name, logits, lte), derive_signals((name,), logits, lte)[name]
                assert one.dtype == ref.dtype == np.float32
                np.testing.assert_array_equal(one, ref, err_msg=f"{name} {dtype} C={c}")
            before = logits.copy()
            with np.errstate(all="ignore"):
                derive_signal("confidence", logits, lte)
            np.testing.assert_array_equal(logits, before)  # the head's outputs are left as they were
