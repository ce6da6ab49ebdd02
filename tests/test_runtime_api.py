"""The library API users embed, and numbers that cannot be trusted never becoming answers."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime import EarlyExitModel, InputError
from runtime.predict import main as predict_main

ROOT = Path(__file__).resolve().parents[1]


def _py(code: str) -> str:
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_a_plain_onnxruntime_session_still_works_beside_a_model(rte_art):
    """The default threading leaves the process as it was: other onnxruntime users (plain
    sessions, per-session pools) keep working, and each model gets the threads it asked for."""
    out = _py(f"""
import onnxruntime as ort
from runtime import EarlyExitModel
a = EarlyExitModel(r'{rte_art}', threads=1)
b = EarlyExitModel(r'{rte_art}', threads=2)
s = ort.InferenceSession(r'{rte_art / 'layer_01.onnx'}', providers=['CPUExecutionProvider'])
print(len(s.get_outputs()), a.backend.sessions['layer_01'].get_session_options().intra_op_num_threads,
      b.backend.sessions['layer_01'].get_session_options().intra_op_num_threads,
      a.predict(['a cat.'], ['a dog.'])[0].exit_layer in (1, 2))
""")
    assert out.split() == ["2", "1", "2", "True"]


def test_the_shared_pool_is_opt_in_and_refuses_a_second_thread_count(rte_art):
    out = _py(f"""
from runtime import EarlyExitModel, BackendError
a = EarlyExitModel(r'{rte_art}', threads=2, thread_pool='shared')
try:
    EarlyExitModel(r'{rte_art}', threads=1, thread_pool='shared')
except BackendError as e:
    print('refused:', 'shared onnxruntime thread pool has 2 threads' in str(e))
print(a.predict(['a cat.'], ['a dog.'])[0].exit_layer in (1, 2))
""")
    assert out.split() == ["refused:", "True", "True"]


def test_context_manager_closes(rte_art):
    with EarlyExitModel(rte_art, threads=1) as m:
        assert m.predict(["a cat."], ["a dog."])[0].label is not None
    with pytest.raises(RuntimeError, match="closed"):
        m.predict(["a cat."], ["a dog."])
    m.close()  # twice is fine


def test_large_inputs_are_split_into_batches(rte_art, monkeypatch):
    m = EarlyExitModel(rte_art, threads=1)
    texts = [("the man plays guitar " * (1 + i % 7)).strip() + "." for i in range(50)]
    pairs = ["someone plays music."] * 50
    pol = m.policy("lte", threshold=0.5)
    one_by_one = [m.predict([a], [b], policy=pol)[0] for a, b in zip(texts, pairs)]
    sizes = []
    real = m.chain.run
    monkeypatch.setattr(m.chain, "run", lambda ids, *a, **k: sizes.append(ids.shape[0]) or real(ids, *a, **k))
    got = m.predict(texts, pairs, policy=pol, batch_size=8)
    assert max(sizes) <= 8 and sum(sizes) == 50 and len(sizes) == 7
    assert [p.exit_layer for p in got] == [p.exit_layer for p in one_by_one]
    assert [p.label for p in got] == [p.label for p in one_by_one]
    with pytest.raises(InputError, match="batch_size"):
        m.predict(texts, pairs, batch_size=0)


def _poison(art: Path, role: str) -> None:
    """Set the exit head's weights of one stage graph to NaN (and give it a matching checksum)."""
    import onnx
    from onnx import numpy_helper

    from runtime.fsutil import sha256_file
    p = art / f"{role}.onnx"
    g = onnx.load(str(p))
    gemm = next(n for n in g.graph.node if n.op_type == "Gemm")
    for init in g.graph.initializer:
        if init.name in gemm.input[1:]:
            init.CopyFrom(numpy_helper.from_array(np.full(numpy_helper.to_array(init).shape, np.nan, np.float32), init.name))
    onnx.save(g, str(p))
    m = json.loads((art / "manifest.json").read_text())
    m["graphs"][role]["sha256"] = sha256_file(p)
    (art / "manifest.json").write_text(json.dumps(m))


def test_non_finite_outputs_are_errors_not_answers(rte_art, tmp_path, capsys):
    art = tmp_path / "art"
    shutil.copytree(rte_art, art)
    _poison(art, "layer_01")
    m = EarlyExitModel(art, threads=1)
    p = m.predict(["a cat.", "the dog runs."], ["a dog.", "nobody runs."], policy=m.policy("fixed", exit_layer=2))
    assert all(x.error and "non-finite" in x.error and x.label is None and x.exit_layer == 1 for x in p)
    code = predict_main(["--artifact", str(art), "--json", "--policy", "fixed", "--exit-layer", "2", "a cat.", "a dog."])
    out, err = capsys.readouterr()
    strict = json.loads(out, parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))
    assert code == 2 and strict["label"] is None and "non-finite" in strict["error"] and "non-finite" in err
    f = tmp_path / "in.tsv"
    f.write_text("a cat.\ta dog.\nthe dog runs.\tnobody runs.\n")
    assert predict_main(["--artifact", str(art), "--input", str(f)]) == 2
    rows = [json.loads(x, parse_constant=lambda c: pytest.fail(c)) for x in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2 and all(r["error"] for r in rows)


def test_nan_learning_rate_and_diverging_training(tmp_path, tiny_dir, data_dir, capsys):
    from train.finetune import TrainConfig, TrainingDiverged, finetune
    from train.finetune import main as finetune_main
    for bad in ("nan", "inf", "-1", "0"):
        with pytest.raises(SystemExit):
            finetune_main(["--task", "rte", "--lr", bad, "--out", str(tmp_path / "o")])
        assert "--lr" in capsys.readouterr().err
    with pytest.raises(ValueError, match="finite"):
        TrainConfig(task="rte", out=str(tmp_path / "o"), lr=float("nan"))
    with pytest.raises(TrainingDiverged, match="lower --lr"):
        finetune(TrainConfig(task="rte", out=str(tmp_path / "o"), model=str(tiny_dir), data_dir=str(data_dir),
                             epochs=1, batch_size=8, lr=1e30, max_seq_len=16), progress=False)
    assert not (tmp_path / "o").exists()


def test_export_refuses_a_model_with_nan_weights(rte_ckpt, tmp_path):
    from safetensors.torch import load_file, save_file

    from export.build import ExportConfig, ValidationError, build
    ck = tmp_path / "ck"
    shutil.copytree(rte_ckpt, ck)
    w = load_file(str(ck / "model.safetensors"))
    key = next(k for k in w if k.startswith("heads.0"))
    w[key][:] = float("nan")
    save_file(w, str(ck / "model.safetensors"))
    with pytest.raises(ValidationError, match="not finite"):
        build(ExportConfig(str(ck), str(tmp_path / "a")))
    assert not (tmp_path / "a").exists()


CLIS = ["runtime.predict", "runtime.calibrate", "runtime.place_exits", "export.build", "train.finetune",
        "benchmarks.latency", "benchmarks.overhead", "benchmarks.throughput", "benchmarks.scaling",
        "benchmarks.precision", "benchmarks.concurrency", "benchmarks.eager", "benchmarks.tradeoff",
        "benchmarks.reproduce", "benchmarks.gpu"]


@pytest.mark.parametrize("module", CLIS)
def test_every_flag_is_explained(module, monkeypatch):
    """--help explains every flag and shows its default (argparse's defaults formatter)."""
    import argparse
    import importlib
    seen = []

    def capture(self, *a, **k):
        seen.append(self)
        raise SystemExit(0)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    mod = importlib.import_module(module)
    entry = getattr(mod, "parse_args", None) or mod.main
    with pytest.raises(SystemExit):
        entry([])
    p = seen[0]
    assert issubclass(p.formatter_class, argparse.ArgumentDefaultsHelpFormatter), module
    undocumented = [a.option_strings or a.dest for a in p._actions
                    if not isinstance(a, argparse._HelpAction) and a.help != argparse.SUPPRESS and not (a.help or "").strip()]
    assert not undocumented, f"{module}: flags without help: {undocumented}"


@pytest.mark.parametrize("art_name", ["rte_art", "stsb_art"])
def test_batch1_fast_path_matches_the_general_loop(art_name, request):
    """Batch 1 under threshold and fixed policies takes a path of its own; it gives exactly the
    general loop's exit layers, logits and signals, at thresholds placed on observed signal
    values (where float32 rounding of the threshold decides), per-layer thresholds included."""
    art = request.getfixturevalue(art_name)
    with EarlyExitModel(art) as m:
        texts = [f"row {i} " + "good " * (i % 7) for i in range(12)]
        pairs = [f"other {i}" for i in range(12)] if m.manifest.task.text_pair else None
        enc = m.encode(texts, pairs)
        outs = m.layer_outputs(enc)
        policies = [m.policy("fixed", exit_layer=k) for k in range(1, m.num_layers + 1)]
        for name in [n for n in ("confidence", "entropy", "lte") if n in m.signals and
                     (n == "lte" or m.task.kind == "classification")]:
            vals = np.concatenate([getattr(o, name) for o in outs])
            for t in np.quantile(vals, [0.0, 0.3, 0.6, 0.9, 1.0]).tolist() + [float(vals[3])]:
                policies.append(m.policy(name, threshold=t))
            policies.append(m.policy(name, per_layer=[float(getattr(o, name)[i]) for i, o in enumerate(outs)]))
        checked = 0
        for pol in policies:
            for i in range(len(texts)):
                one = [a[i:i + 1] for a in (enc.input_ids, enc.token_type_ids, enc.attention_mask)]
                fast = m.chain.run(*one, pol)
                slow = m.chain._run_batch(*one, pol)
                assert fast.exit_layer.tolist() == slow.exit_layer.tolist(), (pol, i)
                np.testing.assert_array_equal(fast.logits, slow.logits)
                assert fast.signals.keys() == slow.signals.keys()
                for k in fast.signals:
                    np.testing.assert_array_equal(fast.signals[k], slow.signals[k])
                assert fast.error == slow.error == [None]
                checked += 1
        assert checked == len(policies) * len(texts)
        exits = {int(m.chain.run(*[a[i:i + 1] for a in (enc.input_ids, enc.token_type_ids, enc.attention_mask)],
                                 m.policy("fixed", exit_layer=1)).exit_layer[0]) for i in range(3)}
        assert exits == {1}


def test_batch1_signals_read_after_later_runs_are_still_their_own(rte_art):
    """The batch-1 path derives a result's signals when they are first read: from copies of the
    head's outputs, so later runs (which reuse the workspace's buffers) cannot change them."""
    with EarlyExitModel(rte_art) as m:
        enc = m.encode([f"row {i} " + "good " * i for i in range(4)], [f"other {i}" for i in range(4)])
        outs = m.layer_outputs(enc)
        one = lambda i: [a[i:i + 1] for a in (enc.input_ids, enc.token_type_ids, enc.attention_mask)]  # noqa: E731
        pol = m.policy("fixed", exit_layer=1)
        first = m.chain.run(*one(0), pol)
        for i in (1, 2, 3):  # other rows through the same (pooled) workspace before anything is read
            m.chain.run(*one(i), m.policy("fixed", exit_layer=m.num_layers))
        np.testing.assert_array_equal(first.logits, outs[0].logits[:1])
        assert set(first.signals) == set(m.signals)
        for name in first.signals:
            np.testing.assert_allclose(first.signals[name], getattr(outs[0], name)[:1], rtol=1e-6)
        assert len(first.signals) == len(m.signals) and "confidence" in repr(first.signals)


def test_huge_but_finite_outputs_are_answers_not_errors(rte_art, monkeypatch):
    """The finiteness check flags NaN and infinity only: logits near float32's largest value
    (whose float32 sum overflows) are answers, on the batch-1 path and the general loop alike."""
    from runtime.backends import ort as O
    from runtime.backends.base import StageOutputs
    real = O.OrtWorkspace.run_stage

    def huge(self, k):
        o = real(self, k)
        big = np.full_like(o.logits, 3.0e38)
        big[:, 0] = 3.2e38  # label 0 wins
        return StageOutputs(big, o.signals, o.lte_logit)
    monkeypatch.setattr(O.OrtWorkspace, "run_stage", huge)
    with EarlyExitModel(rte_art) as m:
        enc = m.encode(["a b c", "d e f g"], ["x", "y z"])
        pol = m.policy("fixed", exit_layer=m.num_layers)
        one = [a[:1] for a in (enc.input_ids, enc.token_type_ids, enc.attention_mask)]
        for res in (m.chain.run(*one, pol), m.chain._run_batch(*one, pol),
                    m.chain.run(enc.input_ids, enc.token_type_ids, enc.attention_mask, pol)):
            assert all(e is None for e in res.error), res.error
            assert (res.logits.argmax(axis=1) == 0).all() and np.isfinite(res.logits).all()
