"""Bad input gets a clear error and a non-zero exit; nothing already written is lost."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from export.build import ExportConfig, ExportError, ValidationError, build
from export.build import main as export_main
from runtime import ArtifactError, EarlyExitModel, InputError, PolicyError, load_manifest
from runtime.predict import main as predict_main
from runtime.tokenize import TextEncoder
from train.finetune import main as finetune_main


@pytest.fixture()
def art_copy(rte_art, tmp_path) -> Path:
    dst = tmp_path / "art"
    shutil.copytree(rte_art, dst)
    return dst


def _predict(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = predict_main(list(argv))
    except SystemExit as e:  # argparse refuses bad flag values before anything loads
        code = e.code
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_predict_cli_ok(rte_art, capsys):
    code, out, _ = _predict(capsys, "--artifact", str(rte_art), "--policy", "fixed", "--exit-layer", "1", "--json",
                            "the man plays guitar.", "someone plays music.")
    assert code == 0
    r = json.loads(out)
    assert r["exit_layer"] == 1 and r["label"] in ("entailment", "not_entailment") and r["latency_ms"] > 0


@pytest.mark.parametrize("argv,msg", [
    (["--policy", "confidence", "--threshold", "nan"], "finite"),
    (["--policy", "confidence", "--threshold", "inf"], "finite"),
    (["--policy", "fixed", "--exit-layer", "x"], "integer"),
    (["--policy", "fixed", "--exit-layer", "1", "--threads", "0"], "must be >= 1"),
    (["--policy", "fixed", "--exit-layer", "1", "--threads", "-3"], "must be >= 1"),
    (["--policy", "confidence", "--threshold", "1.5"], "[0, 1]"),
    (["--policy", "lte", "--threshold", "-2"], "[0, 1]"),
    (["--policy", "fixed", "--exit-layer", "3"], "out of range"),
    (["--policy", "fixed", "--exit-layer", "0"], "must be >= 1"),
    (["--policy", "confidence"], "needs --threshold"),
    (["--threshold", "0.5"], "need --policy"),
])
def test_predict_bad_policy_values(rte_art, capsys, argv, msg):
    code, _, err = _predict(capsys, "--artifact", str(rte_art), *argv, "a cat.", "a dog.")
    assert code == 2 and msg in err


def test_unknown_policy_is_refused(rte_art, capsys):
    with pytest.raises(SystemExit) as e:
        predict_main(["--artifact", str(rte_art), "--policy", "magic", "a", "b"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("texts,msg", [
    (["", "a dog."], "empty"),
    (["   ", "a dog."], "empty"),
    (["a cat."], "pair of texts"),
    (["a cat.", "\udcff\udcfe"], "UTF-8"),
])
def test_predict_bad_text(rte_art, capsys, texts, msg):
    code, _, err = _predict(capsys, "--artifact", str(rte_art), "--policy", "fixed", "--exit-layer", "1", *texts)
    assert code == 2 and msg in err


def test_single_text_task_refuses_pair_and_bad_bytes(rte_art):
    enc = TextEncoder(rte_art / "tokenizer.json", 32, text_pair=False)
    with pytest.raises(InputError, match="single text"):
        enc.encode(["a cat."], ["a dog."])
    with pytest.raises(InputError, match="UTF-8"):
        enc.encode([b"\xff\xfe bad bytes"])
    assert enc.encode([b"a cat."]).shape[0] == 1  # valid UTF-8 bytes are fine


def test_over_long_text_is_truncated_with_a_warning(rte_art, caplog):
    rt = EarlyExitModel(rte_art, threads=1)
    long = "the man plays guitar in the park " * 200
    p = rt.predict([long], ["a dog."], policy=rt.policy("fixed", exit_layer=2))[0]
    assert p.truncated and "truncated" in caplog.text
    assert rt.encode([long], ["a dog."]).shape[1] == rt.manifest.max_seq_len


def test_missing_artifact_and_manifest(tmp_path, capsys):
    code, _, err = _predict(capsys, "--artifact", str(tmp_path / "nope"), "a", "b")
    assert code == 2 and "does not exist" in err
    (tmp_path / "empty").mkdir()
    code, _, err = _predict(capsys, "--artifact", str(tmp_path / "empty"), "a", "b")
    assert code == 2 and "no manifest.json" in err


def test_corrupt_manifest_json(art_copy):
    (art_copy / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_manifest(art_copy)


def test_wrong_schema_version(art_copy):
    m = json.loads((art_copy / "manifest.json").read_text())
    m["schema_version"] = 99
    (art_copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="schema_version 99"):
        load_manifest(art_copy)


def test_manifest_missing_layer_entry(art_copy):
    m = json.loads((art_copy / "manifest.json").read_text())
    del m["graphs"]["layer_02"]
    (art_copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="layer_02"):
        load_manifest(art_copy)


def test_missing_graph_file(art_copy):
    (art_copy / "layer_02.onnx").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        EarlyExitModel(art_copy)


def test_truncated_graph_fails_checksum(art_copy):
    p = art_copy / "layer_01.onnx"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(ArtifactError, match="sha256"):
        EarlyExitModel(art_copy)


def test_replaced_tokenizer_fails_checksum(art_copy):
    (art_copy / "tokenizer.json").write_text("{}")
    with pytest.raises(ArtifactError, match="tokenizer.json"):
        EarlyExitModel(art_copy)


def test_corrupt_graph_with_matching_checksum_fails_cleanly(art_copy):
    """A garbage graph whose checksum was also rewritten: onnxruntime's failure becomes an ArtifactError."""
    from runtime.manifest import sha256_file
    p = art_copy / "layer_01.onnx"
    p.write_bytes(b"\x08\x07garbage" * 100)
    m = json.loads((art_copy / "manifest.json").read_text())
    m["graphs"]["layer_01"]["sha256"] = sha256_file(p)
    (art_copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="not a valid ONNX file|cannot load"):
        EarlyExitModel(art_copy)


@pytest.mark.parametrize("layers", [0, 3, -1])
def test_export_bad_layer_count(rte_ckpt, tmp_path, layers, capsys):
    with pytest.raises(ExportError, match="out of range"):
        build(ExportConfig(str(rte_ckpt), str(tmp_path / "a"), layers=layers))
    argv = ["--checkpoint", str(rte_ckpt), "--out", str(tmp_path / "a"), "--layers", str(layers)]
    if layers < 1:  # refused by the flag's type before anything loads
        with pytest.raises(SystemExit) as e:
            export_main(argv)
        assert e.value.code == 2 and "must be >= 1" in capsys.readouterr().err
    else:
        assert export_main(argv) == 2
        assert "out of range" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_export_missing_checkpoint(tmp_path, capsys):
    assert export_main(["--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path / "a")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "half").mkdir()
    assert export_main(["--checkpoint", str(tmp_path / "half"), "--out", str(tmp_path / "a")]) == 2
    assert "has no" in capsys.readouterr().err


def test_interrupted_export_keeps_previous_artifact(rte_ckpt, art_copy, monkeypatch):
    before = {p.name: p.read_bytes() for p in art_copy.iterdir()}

    def boom(*a, **k):
        raise KeyboardInterrupt  # as if the user hit Ctrl-C half way

    monkeypatch.setattr("export.build.validate", boom)
    with pytest.raises(KeyboardInterrupt):
        build(ExportConfig(str(rte_ckpt), str(art_copy)))
    after = {p.name: p.read_bytes() for p in art_copy.iterdir()}
    assert after == before
    assert not [p for p in art_copy.parent.iterdir() if ".tmp-" in p.name], "temporary folder left behind"
    load_manifest(art_copy)


def test_failed_validation_writes_nothing(rte_ckpt, tmp_path):
    with pytest.raises(ValidationError, match="differ from PyTorch"):
        build(ExportConfig(str(rte_ckpt), str(tmp_path / "a"), atol=1e-30))
    assert list(tmp_path.iterdir()) == []


def test_finetune_errors(tmp_path, tiny_dir, capsys):
    assert finetune_main(["--task", "rte", "--data-dir", str(tmp_path), "--model", str(tiny_dir),
                          "--out", str(tmp_path / "o")]) == 2
    assert "cannot find rte data" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        finetune_main(["--task", "qqp", "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit):
        finetune_main(["--task", "rte", "--max-seq-len", "4", "--out", str(tmp_path / "o")])


def test_finetune_unreachable_hub_model(tmp_path, data_dir, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert finetune_main(["--task", "rte", "--data-dir", str(data_dir), "--model", "no-such-org/no-such-model",
                          "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "cannot load backbone" in err and "local folder" in err
    assert not (tmp_path / "o").exists()


def test_policy_errors_from_the_model_api(rte_art):
    rt = EarlyExitModel(rte_art, threads=1)
    with pytest.raises(PolicyError):
        rt.policy("patience", patience=0)
    with pytest.raises(InputError, match="no text"):
        rt.predict([], [])


def test_predict_batch_file(rte_art, tmp_path, capsys):
    f = tmp_path / "in.tsv"
    f.write_text("the man plays guitar.\tsomeone plays music.\na cat.\ta dog.\n\nthe dog runs.\tnobody runs.\n")
    code, out, _ = _predict(capsys, "--artifact", str(rte_art), "--policy", "fixed", "--exit-layer", "2",
                            "--input", str(f), "--batch-size", "2")
    rows = [json.loads(x) for x in out.splitlines()]
    assert code == 0 and [r["row"] for r in rows] == [0, 1, 2] and all(r["exit_layer"] == 2 for r in rows)


@pytest.mark.parametrize("content,msg", [
    (b"\xff\xfe not utf8\tx\n", "not valid UTF-8"),
    (b"one text only\n", "two tab-separated texts"),
    (b"\n\n", "holds no text"),
])
def test_predict_batch_file_errors(rte_art, tmp_path, capsys, content, msg):
    f = tmp_path / "in.tsv"
    f.write_bytes(content)
    code, _, err = _predict(capsys, "--artifact", str(rte_art), "--input", str(f))
    assert code == 2 and msg in err
    code, _, err = _predict(capsys, "--artifact", str(rte_art), "--input", str(tmp_path / "missing.tsv"))
    assert code == 2 and "cannot read" in err


def test_predict_needs_text_or_input(rte_art, capsys):
    with pytest.raises(SystemExit):
        predict_main(["--artifact", str(rte_art)])
