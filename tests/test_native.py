"""The native C runtime (runtime/native) against onnxruntime on tiny random models: every layer's
outputs, every policy's exit layers and labels, batches with mixed exits (compaction), the
example host, bad inputs, memory safety (ASan/UBSan, valgrind) and a short fuzz pass."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

NATIVE = Path(__file__).resolve().parent.parent / "runtime" / "native"
SOURCES = sorted(str(p) for p in NATIVE.glob("[a-z]*.c"))
CC = shutil.which("cc") or shutil.which("gcc")
pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler (cc) on this machine")

TEXTS_A = ["the cat sat on the mat .", "a dog runs in the park with a red ball and it is very happy", "no",
           "great film", "the woman eats food in the house", "nobody plays the piano", "bad", "quite good music .",
           "someone is sitting on a big blue car in the street", "it", "the man and the woman are playing",
           "awful awful awful movie"]
TEXTS_B = ["someone plays music", "nobody", "the woman eats food", "it was bad", "a cat", "music", "good",
           "the dog", "a car is red", "this", "they are sad", "a film"]


def _cc(out: Path, *srcs: str, flags: tuple[str, ...] = ()) -> Path:
    cmd = [CC, "-std=c11", "-O2", "-g", f"-I{NATIVE}", *flags, "-o", str(out), *srcs, "-lm", "-lpthread"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out


@pytest.fixture(scope="session")
def native_lib(tmp_path_factory) -> Path:
    """libberxit built from the sources under test (not a stale in-tree build)."""
    from runtime.backends import native
    lib = _cc(tmp_path_factory.mktemp("native") / "libberxit.so", *SOURCES, flags=("-fPIC", "-shared"))
    os.environ[native.LIB_ENV] = str(lib)
    native._LIB = None
    return lib


@pytest.fixture(scope="session")
def sst2_native_art(sst2_ckpt, tmp_path_factory) -> Path:
    """Mean pooling, no LTE, single text; and the same model with one stage of both layers."""
    from export.build import ExportConfig, build
    return build(ExportConfig(str(sst2_ckpt), str(tmp_path_factory.mktemp("art") / "sst2_native")))


def _models(art: Path):
    from runtime.model import EarlyExitModel
    return EarlyExitModel(art), EarlyExitModel(art, backend="native")


def _enc(m, n: int = 12):
    return m.encode(TEXTS_A[:n], TEXTS_B[:n] if m.task.text_pair else None)


def _policies(m, per_layer):
    """Every policy the model takes, thresholds at the quantiles of its observed signals."""
    pols = [m.policy("fixed", exit_layer=k) for k in m.exits]
    for name in ("confidence", "entropy", "lte"):
        if name not in m.signals:
            continue
        vals = np.concatenate([getattr(o, name) for o in per_layer])
        for q in (0.2, 0.5, 0.8):
            pols.append(m.policy(name, threshold=float(np.quantile(vals, q))))
        pols.append(m.policy(name, per_layer=[float(np.quantile(vals, 0.6))] * len(m.exits)))
    if m.task.kind == "classification":
        pols.append(m.policy("patience", patience=1))
    else:
        pols += [m.policy("patience", patience=1, threshold=t) for t in (0.05, 0.5)]
    return pols


@pytest.mark.parametrize("which", ["rte", "stsb", "sst2"])
def test_parity_with_onnxruntime_every_layer_and_policy(which, native_lib, rte_art, stsb_art, sst2_native_art):
    art = {"rte": rte_art, "stsb": stsb_art, "sst2": sst2_native_art}[which]
    ort, nat = _models(art)
    assert nat.backend.blas in ("builtin", "openblas")
    enc = _enc(ort)
    lo, ln = ort.layer_outputs(enc), nat.layer_outputs(enc)
    for a, b in zip(lo, ln):  # every exit's logits and signals
        np.testing.assert_allclose(b.logits, a.logits, atol=1e-4, rtol=0)
        for s in ("confidence", "entropy", "lte"):
            if getattr(a, s) is not None:
                np.testing.assert_allclose(getattr(b, s), getattr(a, s), atol=1e-4, rtol=0)
    mixed = False
    for pol in _policies(ort, lo):
        r1, r2 = ort.run(enc, pol), nat.run(enc, pol)
        assert r2.exit_layer.tolist() == r1.exit_layer.tolist(), pol.describe()
        np.testing.assert_allclose(r2.logits, r1.logits, atol=1e-4, rtol=0)
        if ort.task.kind == "classification":
            assert (r2.logits.argmax(1) == r1.logits.argmax(1)).all(), pol.describe()
        for s in r1.signals:
            np.testing.assert_allclose(r2.signals[s], r1.signals[s], atol=1e-4, rtol=0)
        assert r2.error == [None] * len(r2.error)
        mixed |= len(set(r1.exit_layer.tolist())) > 1  # rows left at different layers: compaction ran
        # one row at a time gives the batched answer (padding and compaction change nothing)
        for i in (0, 3):
            one = nat.run(enc.row(i), pol)
            assert one.exit_layer[0] == r2.exit_layer[i]
            np.testing.assert_allclose(one.logits[0], r2.logits[i], atol=1e-5, rtol=0)
    assert mixed, "no policy gave mixed exit layers: the compaction path was not exercised"
    np.testing.assert_allclose(nat.run_monolithic(enc).logits, ort.run_monolithic(enc).logits, atol=1e-4, rtol=0)
    p1 = ort.predict(TEXTS_A, TEXTS_B if ort.task.text_pair else None, batch_size=5)
    p2 = nat.predict(TEXTS_A, TEXTS_B if ort.task.text_pair else None, batch_size=5)
    assert [(p.label, p.exit_layer) for p in p1] == [(p.label, p.exit_layer) for p in p2]
    ort.close(), nat.close()


def test_exit_subset_stage_with_two_layers(native_lib, sst2_ckpt, tmp_path):
    """--exit-layers 2: one stage runs both layers; native and onnxruntime agree."""
    from export.build import ExportConfig, build
    art = build(ExportConfig(str(sst2_ckpt), str(tmp_path / "x2"), exit_layers=(2,), monolithic=False))
    ort, nat = _models(art)
    enc = _enc(ort)
    np.testing.assert_allclose(nat.layer_outputs(enc)[0].logits, ort.layer_outputs(enc)[0].logits, atol=1e-4)
    assert nat.run(enc).exit_layer.tolist() == [2] * 12


def test_results_are_their_own_arrays_and_read_only_inputs_work(native_lib, rte_art):
    """Each run's outputs live in one fresh allocation (views), so a later run never changes an
    earlier result; the signals are the exit's own (checked against the per-layer outputs); and
    arrays whose address cannot be taken the fast way (read-only) give the same answers."""
    ort, nat = _models(rte_art)
    enc = _enc(nat)
    pol = nat.policy("confidence", threshold=0.6)
    rows = [enc.row(i) for i in range(enc.shape[0])]
    first = [nat.run(r, pol) for r in rows]
    kept = [(f.exit_layer.copy(), f.logits.copy(), {k: v.copy() for k, v in f.signals.items()}) for f in first]
    again = [nat.run(r, pol) for r in reversed(rows)]
    per_layer = ort.layer_outputs(enc)
    for i, (f, (el, lg, sig)) in enumerate(zip(first, kept)):
        assert np.array_equal(f.exit_layer, el) and np.array_equal(f.logits, lg), i
        assert all(np.array_equal(f.signals[k], sig[k]) for k in sig), i
        assert f.exit_layer.dtype == np.int64 and f.logits.shape == (1, nat.num_outputs) and f.error == [None]
        at = per_layer[nat.exits.index(int(el[0]))]
        np.testing.assert_allclose(lg[0], at.logits[i], atol=1e-4)
        for k in nat.signals:
            np.testing.assert_allclose(sig[k][0], getattr(at, k)[i], atol=1e-4)
    assert all(np.array_equal(a.logits, b.logits) for a, b in zip(first, reversed(again)))
    ro = [np.array(a) for a in (enc.input_ids, enc.token_type_ids, enc.attention_mask)]
    for a in ro:
        a.setflags(write=False)
    got = nat.backend.run_early_exit(*ro, pol)
    want = nat.run(enc, pol)
    assert np.array_equal(got[0], want.exit_layer) and np.array_equal(got[1], want.logits)


def test_one_model_shared_by_threads(native_lib, rte_art):
    _, nat = _models(rte_art)
    enc = _enc(nat)
    pol = nat.policy("confidence", threshold=0.6)
    want = nat.run(enc, pol)
    bad = []

    def work():
        for _ in range(20):
            got = nat.run(enc, pol)
            if got.exit_layer.tolist() != want.exit_layer.tolist() or not np.array_equal(got.logits, want.logits):
                bad.append(1)
            if not np.array_equal(nat.layer_outputs(enc)[0].logits, nat.layer_outputs(enc)[0].logits):
                bad.append(2)

    ts = [threading.Thread(target=work) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not bad


def test_predict_and_latency_cli_with_native(native_lib, rte_art, data_dir, tmp_path, capsys):
    from benchmarks.latency import main as latency_main
    from runtime.predict import main as predict_main
    assert predict_main(["--artifact", str(rte_art), "--backend", "native", "--json", "the cat", "a dog"]) == 0
    nat = json.loads(capsys.readouterr().out)
    assert predict_main(["--artifact", str(rte_art), "--json", "the cat", "a dog"]) == 0
    ort = json.loads(capsys.readouterr().out)
    assert (nat["label"], nat["exit_layer"]) == (ort["label"], ort["exit_layer"])
    out = tmp_path / "lat"
    assert latency_main(["--backend", "native", "--artifact", str(rte_art), "--task", "rte", "--data-dir", str(data_dir),
                         "--max-samples", "6", "--repeats", "1", "--passes", "1", "--no-eager", "--out", str(out)]) == 0
    r = json.loads((out / "latency.json").read_text())
    assert r["backend"] == "native" and r["decision_mismatches"] == 0
    par = r["vs_onnxruntime"]["parity"]
    assert par["exit_layers_differ"] == 0 and par["labels_differ"] == 0
    assert max(par["max_abs_diff_all_layers"].values()) < 1e-4
    from benchmarks.native_forced import main as forced_main
    assert forced_main(["--artifact", str(rte_art), "--task", "rte", "--data-dir", str(data_dir), "--rows", "5",
                        "--threads", "1", "2", "--passes", "2", "--out", str(tmp_path / "forced")]) == 0
    f = json.loads((tmp_path / "forced" / "native_forced.json").read_text())
    assert [r["threads"] for r in f["runs"]] == [1, 2]
    for r in f["runs"]:  # one mean per exit and pass; the fit reproduces from them
        assert len(r["per_pass"]) == 2 and all(len(p["mean_ms"]) == 2 and min(p["mean_ms"]) > 0 for p in r["per_pass"])
        p = r["per_pass"][0]
        assert p["fixed_ms"] + 2 * p["per_layer_ms"] == pytest.approx(p["mean_ms"][1], rel=1e-6)


def test_bad_inputs_and_artifacts_say_what_is_wrong(native_lib, rte_art, tmp_path):
    from runtime.backends import BackendError
    from runtime.fsutil import ArtifactError
    from runtime.model import EarlyExitModel
    _, nat = _models(rte_art)
    enc = _enc(nat, 1)
    ids = enc.input_ids.copy()
    ids[0, 1] = 10 ** 6
    with pytest.raises(ValueError, match="outside the vocabulary"):
        nat.backend.run_early_exit(ids, enc.token_type_ids, enc.attention_mask, None)
    long = np.ones((1, nat.manifest.max_seq_len + 1), np.int64)
    with pytest.raises(ValueError, match="max_seq_len"):
        nat.backend.run_early_exit(long, long * 0, long, None)
    # a weights file that does not match its sha256, and an artifact without one
    bad = tmp_path / "bad"
    shutil.copytree(rte_art, bad)
    w = bad / "native_weights.bin"
    data = bytearray(w.read_bytes())
    data[-10] ^= 1
    w.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        EarlyExitModel(bad, backend="native")
    man = json.loads((bad / "manifest.json").read_text())
    man["native"] = None
    (bad / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(BackendError, match="no native weights file"):
        EarlyExitModel(bad, backend="native")


def test_int8_export_skips_native_weights(rte_art):
    from export.build import ExportConfig, _write_native
    note = _write_native(None, Path("."), 2, [1, 2], 32, ExportConfig("c", "o", precision="int8"))
    assert note[0] is None and "fp32" in note[1]


def test_example_host_and_c_tests_under_sanitizers(rte_art, stsb_art, tmp_path):
    """The README's example host and the C test program (bad inputs, bad files, threads) under
    AddressSanitizer + UBSan; then valgrind on the example: no errors, no leaks, no allocation
    per call in the steady state."""
    san = ("-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all")
    example = _cc(tmp_path / "classify", str(NATIVE / "examples" / "classify.c"), *SOURCES, flags=san)
    tests = _cc(tmp_path / "test_native", str(NATIVE / "tests" / "test_native.c"), *SOURCES, flags=san)
    from runtime.model import EarlyExitModel
    m = EarlyExitModel(rte_art)
    enc = m.encode(["the cat sat on the mat"], ["a dog runs"])
    ids = [str(x) for x in enc.input_ids[0]]
    r = subprocess.run([str(example), str(rte_art), *ids], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    # the example runs confidence >= 0.9 with zero token types; the same through Python:
    enc0 = type(enc)(enc.input_ids, np.zeros_like(enc.token_type_ids), enc.attention_mask, enc.truncated)
    want = m.run(enc0, m.policy("confidence", threshold=0.9))
    assert r.stdout.strip() == f"label={int(want.logits[0].argmax())} exit_layer={int(want.exit_layer[0])}/2"
    r = subprocess.run([str(example), str(rte_art), "1", str(10 ** 7)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "outside the vocabulary" in r.stderr
    for art in (rte_art, stsb_art):
        r = subprocess.run([str(tests), str(art / "native_weights.bin")], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and r.stdout.strip().startswith("ok:"), r.stdout[-3000:] + r.stderr[-3000:]
    clang = shutil.which("clang") or shutil.which("clang-14")
    if clang is not None:  # ThreadSanitizer over the same program (shared handle, own workspaces, helper threads)
        tsan = tmp_path / "test_tsan"
        subprocess.run([clang, "-std=c11", "-O1", "-g", "-fsanitize=thread", f"-I{NATIVE}", "-o", str(tsan),
                        str(NATIVE / "tests" / "test_native.c"), *SOURCES, "-lm", "-lpthread"], check=True,
                       capture_output=True)
        r = subprocess.run([str(tsan), str(rte_art / "native_weights.bin")], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0 and "WARNING: ThreadSanitizer" not in r.stderr, r.stderr[-3000:]
    if shutil.which("valgrind") is None:
        pytest.skip("valgrind is not installed (the sanitizer runs passed)")
    plain = _cc(tmp_path / "classify_plain", str(NATIVE / "examples" / "classify.c"), *SOURCES)
    r = subprocess.run(["valgrind", "--error-exitcode=9", "--leak-check=full", "--errors-for-leak-kinds=all",
                        str(plain), str(rte_art), *ids], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "ERROR SUMMARY: 0 errors" in r.stderr, r.stderr[-3000:]
    tplain = _cc(tmp_path / "test_plain", str(NATIVE / "tests" / "test_native.c"), *SOURCES)
    allocs = []
    for n in (1, 6):
        r = subprocess.run(["valgrind", "--error-exitcode=9", "--leak-check=full", str(tplain),
                            str(rte_art / "native_weights.bin"), "alloc", str(n)], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        allocs.append([ln for ln in r.stderr.splitlines() if "total heap usage" in ln][0].split("usage:")[1].split(",")[0])
    assert allocs[0] == allocs[1], f"allocations grow with the number of calls: {allocs}"


def test_two_thread_hand_off_survives_a_widened_race_window(rte_art, tmp_path):
    """Back-to-back products of changing sizes on two threads, with the window between a job's
    first and last hand-off store (and the helper's read of the claim counter and of the job's
    size) widened by pause loops: a helper still claiming from the previous job must never claim
    or count units of the next one. Before the fix this hung within a few hundred runs (the job's
    unit count overshot and the caller waited forever); each run also checks its logits."""
    prog = _cc(tmp_path / "test_race", str(NATIVE / "tests" / "test_native.c"), *SOURCES,
               flags=("-DBERXIT_TEST_RACE_WINDOW=3000",))
    try:
        r = subprocess.run([str(prog), str(rte_art / "native_weights.bin"), "stress", "2000"], capture_output=True,
                           text=True, timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail("two-thread runs hung: a hand-off between the caller and the helper thread lost count")
    assert r.returncode == 0 and r.stdout.startswith("ok stress: 2000 runs, 0 logits differ"), r.stdout + r.stderr


def test_two_thread_hand_off_is_race_free_when_the_helper_sleeps_between_runs(rte_art, tmp_path):
    """Under ThreadSanitizer: back-to-back two-thread runs, then runs each preceded by a pause
    longer than the helper's spinning, so it falls asleep and every run wakes it ahead of its
    first job (bx_threads_warm). Every run's logits equal the one-thread run's; TSan reports no
    race; nothing hangs."""
    try:
        prog = _cc(tmp_path / "test_tsan", str(NATIVE / "tests" / "test_native.c"), *SOURCES,
                   flags=("-fsanitize=thread", "-O1"))
    except subprocess.CalledProcessError as e:
        pytest.skip(f"this compiler cannot build with -fsanitize=thread: {e.stderr[-300:]}")
    for mode in ("stress", "nap"):
        try:
            r = subprocess.run([str(prog), str(rte_art / "native_weights.bin"), mode, "400"], capture_output=True,
                               text=True, timeout=120, env={**os.environ, "TSAN_OPTIONS": "halt_on_error=1"})
        except subprocess.TimeoutExpired:
            pytest.fail(f"two-thread runs ({mode}) hung: a wake-up between the caller and the helper was lost")
        assert "ThreadSanitizer" not in r.stderr, r.stderr[-3000:]
        assert r.returncode == 0 and r.stdout.startswith(f"ok {mode}: 400 runs, 0 logits differ"), r.stdout + r.stderr


def test_short_fuzz_pass_over_the_weights_reader(rte_art, stsb_art, tmp_path):
    """~12 s: libFuzzer (weights reader, then the tokenizer) when clang is here, else the standalone
    mutation driver over the weights reader (both with ASan/UBSan)."""
    seeds = [str(rte_art / "native_weights.bin"), str(stsb_art / "native_weights.bin")]
    target = str(NATIVE / "fuzz" / "fuzz_weights.c")
    clang = shutil.which("clang") or shutil.which("clang-14")
    if clang is not None:
        exe = tmp_path / "fuzz"
        subprocess.run([clang, "-std=c11", "-O1", "-g", "-fsanitize=fuzzer,address,undefined", "-fno-sanitize-recover=undefined", f"-I{NATIVE}", "-o",
                        str(exe), target, *SOURCES, "-lm", "-lpthread"], check=True, capture_output=True)
        corpus = tmp_path / "corpus"
        corpus.mkdir()
        for s in seeds:
            shutil.copy(s, corpus)
        r = subprocess.run([str(exe), "-max_total_time=8", "-max_len=200000", "-seed=1", f"-artifact_prefix={tmp_path}/", str(corpus)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "Done" in r.stderr, r.stderr[-3000:]
        tok = tmp_path / "fuzz_tok"  # the tokenizer target, over the tiny artifact's vocabulary
        subprocess.run([clang, "-std=c11", "-O1", "-g", "-fsanitize=fuzzer,address,undefined", "-fno-sanitize-recover=undefined", f"-I{NATIVE}", "-o",
                        str(tok), str(NATIVE / "fuzz" / "fuzz_tokenizer.c"), *SOURCES, "-lm", "-lpthread"],
                       check=True, capture_output=True)
        tc = tmp_path / "tcorpus"
        tc.mkdir()
        (tc / "seed").write_bytes("Héllo wörld 中文 [SEP] x\x01second text".encode())
        r = subprocess.run([str(tok), "-max_total_time=4", "-seed=1", f"-artifact_prefix={tmp_path}/", str(tc)], capture_output=True, text=True,
                           timeout=120, env={**os.environ, "BERXIT_FUZZ_ARTIFACT": str(rte_art)})
        assert r.returncode == 0 and "Done" in r.stderr, r.stderr[-3000:]
    else:
        exe = _cc(tmp_path / "fuzz", target, str(NATIVE / "fuzz" / "fuzz_driver.c"), *SOURCES,
                  flags=("-fsanitize=address,undefined", "-fno-sanitize-recover=all"))
        r = subprocess.run([str(exe), "10", *seeds], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "no crash" in r.stdout, r.stderr[-3000:]


def test_c_tokenizer_matches_tokenizers(native_lib, rte_art, tmp_path):
    """The C WordPiece tokenizer gives the `tokenizers` library's ids and type ids (uncased as
    exported, cased, accents kept) on task-like text, adversarial Unicode and random strings;
    invalid UTF-8 is refused; a non-BERT tokenizer gets no native tokenizer files."""
    from tokenizers import Tokenizer

    from benchmarks.native_tokenizer import ADVERSARIAL, _random_texts, _variant
    from export.native import NativeUnsupported, write_tokenizer
    from runtime.backends.native import NativeTokenizer
    assert (rte_art / "native_vocab.txt").is_file()
    base = json.loads((rte_art / "tokenizer.json").read_text())
    pairs = list(zip(TEXTS_A, TEXTS_B)) + [(t, None) for t in ADVERSARIAL + _random_texts(150)] + \
        [(a, b) for a, b in zip(ADVERSARIAL, reversed(ADVERSARIAL))]
    for k, (lower, strip) in enumerate(((True, None), (False, None), (True, False))):
        d = tmp_path / f"v{k}"
        d.mkdir()
        tj = json.dumps(_variant(base, lower, strip))
        write_tokenizer(d, tj.encode())
        ref = Tokenizer.from_str(tj)
        ref.no_padding()
        ref.enable_truncation(max_length=32, strategy="longest_first")
        nat = NativeTokenizer(d, 32)
        for a, b in pairs:
            e = ref.encode(a, b) if b is not None else ref.encode(a)
            ids, tt, cut = nat.encode(a, b)
            assert (ids, tt) == (e.ids, e.type_ids), (lower, strip, a[:80], b)
        for bad in (b"\xff", b"ok\xc3", b"\xed\xa0\x80", b"\xc0\xaf"):
            with pytest.raises(ValueError, match="UTF-8"):
                nat.encode(bad)
        nat.close()
    other = json.loads(json.dumps(base))
    other["model"]["type"] = "BPE"
    with pytest.raises(NativeUnsupported, match="pass token ids"):
        write_tokenizer(tmp_path / "bpe", json.dumps(other).encode())


def test_native_workspaces_hand_hidden_states_over(native_lib, rte_art):
    """save / load between stages (what the server's layer batching needs): the rows continue in
    another workspace exactly as in their own; bad states are refused with a message."""
    from runtime.backends.base import HiddenState
    from runtime.model import EarlyExitModel
    m = EarlyExitModel(rte_art, backend="native")
    enc = m.encode(["the cat sat on the mat", "a b"], ["a dog runs", "c"])
    be = m.backend
    ref = be.workspace()
    ref.embed(enc.input_ids, enc.token_type_ids, enc.attention_mask)
    ref.run_stage(0)
    want = ref.run_stage(1).logits.copy()
    a, b = be.workspace(), be.workspace()
    a.embed(enc.input_ids, enc.token_type_ids, enc.attention_mask)
    a.run_stage(0)
    st = a.save()
    assert st.hidden.shape == (2, int(enc.attention_mask.sum(1).max()), m.manifest.hidden_size)
    np.testing.assert_array_equal(st.mask, enc.attention_mask[:, :st.hidden.shape[1]])
    assert not st.hidden[1, int(enc.attention_mask[1].sum()):].any()  # zeros past a row's length
    b.load(HiddenState(st.hidden, st.mask, 1))
    np.testing.assert_array_equal(b.run_stage(1).logits, want)
    for bad, msg in ((HiddenState(st.hidden, st.mask), "stage"), (HiddenState(st.hidden, st.mask, 2), "stage 2"),
                     (HiddenState(st.hidden, np.zeros_like(st.mask), 1), "no token"),
                     (HiddenState(st.hidden[:, :, :3], st.mask, 1), "hidden size")):
        with pytest.raises(ValueError, match=msg):
            b.load(bad)
    fresh = be.workspace()
    with pytest.raises(ValueError, match="no stage has run"):
        fresh.save()
    for w in (ref, a, b, fresh):
        w.close()
    m.close()


def test_layer_batching_scheduler_on_the_native_backend(native_lib, rte_art, data_dir):
    """Rows of many requests merged at layer boundaries on the native runtime answer as each row
    alone does (the server's default batching with --backend native)."""
    from runtime.datasets import load_split
    from runtime.model import EarlyExitModel
    from runtime.scheduler import Scheduler, SchedulerConfig
    from serve_util import random_requests
    m = EarlyExitModel(rte_art, backend="native")
    reqs = random_requests(m, load_split("rte", "dev", data_dir), 40, seed=1)
    pol = m.policy("fixed", exit_layer=2)
    runs: list[int] = []
    merges: list[int] = []
    chain_merge = m.chain.merge

    def merge(cohorts):
        merges.append(sum(not c.done for c in cohorts))
        return chain_merge(cohorts)

    m.chain.merge = merge
    s = Scheduler(m.chain, SchedulerConfig(batching="layer", max_batch_rows=16), on_run=runs.append)
    try:
        futs = [(r, s.submit(r, pol)) for r in reqs]
        for enc, f in futs:
            res = f.result(60)
            alone = [m.run(enc.row(i), pol) for i in range(enc.shape[0])]
            np.testing.assert_array_equal(res.exit_layer, np.concatenate([a.exit_layer for a in alone]))
            np.testing.assert_allclose(res.logits, np.concatenate([a.logits for a in alone]), rtol=0, atol=1e-5)
            assert res.error == [None] * enc.shape[0]
    finally:
        s.close()
    assert max(runs) > 1 and max(merges) >= 2  # cohorts of different requests merged between stages
    m.close()


def _has_avx2_fma() -> bool:
    try:
        flags = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")).split()
    except (OSError, StopIteration):
        return False
    return "avx2" in flags and "fma" in flags


@pytest.mark.skipif(not _has_avx2_fma(), reason="the CPU has no AVX2 + FMA (the intrinsics kernels)")
def test_avx2_kernels_match_onnxruntime_and_pass_sanitizers(native_lib, rte_art, stsb_art, tmp_path):
    """The other tests build the portable kernels; `pip install` builds with -march=native. Here:
    the AVX2 + FMA build (sgemm, attention with two queries at once, layer norm) against
    onnxruntime on every exit, and the C test program built the same way under ASan + UBSan."""
    from runtime.backends import native
    from runtime.model import EarlyExitModel
    lib = _cc(tmp_path / "libberxit_avx2.so", *SOURCES, flags=("-O3", "-march=native", "-fPIC", "-shared"))
    old = os.environ.get(native.LIB_ENV)
    os.environ[native.LIB_ENV], native._LIB = str(lib), None
    try:
        for art in (rte_art, stsb_art):
            ort, nat = EarlyExitModel(art), EarlyExitModel(art, backend="native", threads=2)
            enc = _enc(ort)
            for a, b in zip(ort.layer_outputs(enc), nat.layer_outputs(enc)):
                np.testing.assert_allclose(b.logits, a.logits, atol=1e-4, rtol=0)
            for pol in _policies(ort, ort.layer_outputs(enc)):
                assert nat.run(enc, pol).exit_layer.tolist() == ort.run(enc, pol).exit_layer.tolist(), pol.describe()
            ort.close(), nat.close()
    finally:
        os.environ[native.LIB_ENV], native._LIB = old or "", None
        if old is None:
            del os.environ[native.LIB_ENV]
    san = ("-march=native", "-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all")
    tests = _cc(tmp_path / "test_native_avx2", str(NATIVE / "tests" / "test_native.c"), *SOURCES, flags=san)
    for art in (rte_art, stsb_art):
        r = subprocess.run([str(tests), str(art / "native_weights.bin")], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and r.stdout.strip().startswith("ok:"), r.stdout[-3000:] + r.stderr[-3000:]
