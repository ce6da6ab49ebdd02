"""Every manifest field is type- and range-checked at load; graphs are checked against what the
manifest says they are. Each failure is one ArtifactError line naming the field; the CLI exits 2."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from runtime import ArtifactError, EarlyExitModel, load_manifest
from runtime.predict import main as predict_main


@pytest.fixture()
def art(rte_art, tmp_path) -> Path:
    dst = tmp_path / "art"
    shutil.copytree(rte_art, dst)
    return dst


def _set(art: Path, path: str, value, delete: bool = False) -> None:
    m = json.loads((art / "manifest.json").read_text())
    *parents, last = path.split(".")
    d = m
    for p in parents:
        d = d[int(p)] if isinstance(d, list) else d[p]
    if delete:
        del d[last]
    elif isinstance(d, list):
        d[int(last)] = value
    else:
        d[last] = value
    (art / "manifest.json").write_text(json.dumps(m))


CASES = [
    ("num_layers", "two", "num_layers must be an integer"),
    ("num_layers", 0, r"num_layers must lie in \[1, 2\]"),
    ("num_layers", True, "num_layers must be an integer"),
    ("num_layers", 3, r"num_layers must lie in \[1, 2\]"),
    ("max_seq_len", -1, r"max_seq_len must lie in \[2, 128\]"),
    ("max_seq_len", 10 ** 9, "max_seq_len must lie in"),
    ("max_seq_len", "64", "max_seq_len must be an integer"),
    ("exits", [], "exits must be increasing exit layers"),
    ("exits", [2, 1], "exits must be increasing exit layers"),
    ("exits", [1], "exits must be increasing exit layers ending at num_layers=2"),
    ("exits", "1,2", "exits must be a JSON list"),
    ("task.kind", "ranking", "task.kind must be one of classification, regression"),
    ("task.labels", [], "must list at least two labels"),
    ("task.labels", ["a", "a"], "must not repeat a label"),
    ("task.text_pair", "yes", "task.text_pair must be true or false"),
    ("task.metric", "bleu", "task.metric must be one of"),
    ("backbone.hidden_size", 0, "backbone.hidden_size must lie in"),
    ("backbone.num_attention_heads", 5, "must divide hidden_size 32"),
    ("backbone.pooling", "max", "backbone.pooling must be one of cls, mean"),
    ("signals", ["confidence", "entropy", "magic"], "signals\\[\\] must be one of"),
    ("signals", ["confidence", "entropy"], "must include lte exactly when backbone.lte"),
    ("head_layout", "fancy", "head_layout must be one of logits, signals"),
    ("graphs.layer_01.sha256", "abc", "graphs.layer_01.sha256 must be a sha256 digest"),
    ("graphs.layer_01.file", 3, "graphs.layer_01.file must be a non-empty string"),
    ("graphs.layer_01.layers", [2, 1], "first must not exceed last"),
    ("graphs.layer_02.layers", [1, 2], r"must be \[2, 2\]"),
    ("graphs.layer_01.outputs.head.shape", ["batch", 9], r"graphs.layer_01.outputs.head must have shape \['batch', 3\]"),
    ("graphs.layer_01.inputs.hidden_states.shape", ["batch", "sequence", 33], r"must be \[batch, sequence, 32\]"),
    ("graphs.monolithic.outputs.logits.shape", ["batch", 5], "graphs.monolithic.outputs must be logits"),
    ("tokenizer.checksums", [{"file": 3}], r"tokenizer.checksums\[0\].file must be a non-empty string"),
    ("tokenizer.checksums", "x", "tokenizer.checksums must be a JSON list"),
    ("tokenizer.pad_token_id", -1, "tokenizer.pad_token_id must lie in"),
    ("validation.max_abs_diff", "small", "validation.max_abs_diff must be a finite number"),
    ("native", {"file": "../w.bin", "sha256": "0" * 64}, "native: file name '../w.bin' is not a plain name"),
]


@pytest.mark.parametrize("path,value,msg", CASES, ids=[f"{c[0]}={c[1]!r}"[:40] for c in CASES])
def test_tampered_field_is_named(art, path, value, msg, capsys):
    _set(art, path, value)
    with pytest.raises(ArtifactError, match=msg):
        load_manifest(art)
    assert predict_main(["--artifact", str(art), "a cat.", "a dog."]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: manifest.json") and err.count("\n") == 1, err  # one line


@pytest.mark.parametrize("path", ["task", "graphs", "num_layers", "exits", "signals", "tokenizer", "head_layout",
                                  "graphs.embeddings"])
def test_missing_field_is_named(art, path):
    _set(art, path, None, delete=True)
    with pytest.raises(ArtifactError, match=f"{path.split('.')[-1]}"):
        load_manifest(art)


@pytest.mark.parametrize("policy,msg", [
    ({"name": "patience", "patience": "INF"}, "integer patience"),  # written as 1e999 below: JSON's infinity
    ({"name": "patience", "patience": 2.5}, "integer patience"),
    ({"name": "confidence", "per_layer_thresholds": 0.5}, "must be a list of 2 numbers"),
    ({"name": "confidence", "per_layer_thresholds": [0.5]}, "1 per-layer thresholds for a model with 2 exits"),
    ({"name": "confidence", "threshold": "high"}, "must be a number"),
    ({"name": "fixed", "exit_layer": 7}, "out of range"),
    ({"name": 3}, "policy name must be a string"),
])
def test_bad_default_policy_fails_at_load(art, policy, msg):
    _set(art, "default_policy", policy)
    p = art / "manifest.json"
    p.write_text(p.read_text().replace('"INF"', "1e999"))  # a number literal that parses to infinity
    with pytest.raises(ArtifactError, match=f"default_policy is not usable.*{msg}"):
        EarlyExitModel(art, threads=1)


def test_nan_in_the_manifest_is_not_json(art):
    text = (art / "manifest.json").read_text().replace('"threshold": 0.9', '"threshold": NaN')
    (art / "manifest.json").write_text(text)
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_manifest(art)


def _rewrite_graph(art: Path, role: str, fn) -> None:
    """Change a graph's ONNX signature and give it a matching checksum (a consistent lie)."""
    import onnx

    from runtime.fsutil import sha256_file
    p = art / f"{role}.onnx"
    m = onnx.load(str(p))
    fn(m)
    onnx.save(m, str(p))
    _set(art, f"graphs.{role}.sha256", sha256_file(p))


def test_graph_whose_hidden_size_differs_from_the_manifest_fails_at_load(art):
    def f(m):
        m.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 64
    _rewrite_graph(art, "layer_01", f)
    with pytest.raises(ArtifactError, match="hidden_states has shape .*re-export"):
        EarlyExitModel(art, threads=1)


def test_graph_whose_outputs_differ_from_the_manifest_fails_at_load(art):
    def f(m):
        m.graph.output[1].name = "logits_renamed"
        for n in m.graph.node:
            n.output[:] = ["logits_renamed" if o == "head" else o for o in n.output]
    _rewrite_graph(art, "layer_02", f)
    with pytest.raises(ArtifactError, match="has outputs .*the manifest says"):
        EarlyExitModel(art, threads=1)


def test_graph_that_computes_other_shapes_than_the_manifest_fails_at_load(art):
    """A consistent lie in the manifest (three labels everywhere) over graphs that compute two."""
    m = json.loads((art / "manifest.json").read_text())
    m["task"]["labels"] = ["a", "b", "c"]
    for role in ("layer_01", "layer_02"):
        m["graphs"][role]["outputs"]["head"]["shape"] = ["batch", 4]
    m["graphs"]["monolithic"]["outputs"]["logits"]["shape"] = ["batch", 3]
    (art / "manifest.json").write_text(json.dumps(m))
    load_manifest(art)  # the manifest alone is consistent
    with pytest.raises(ArtifactError, match="re-export"):
        EarlyExitModel(art, threads=1)


def _cal(**kw):
    rec = {"method": "ltt-bootstrap", "target": {"relative_score": 0.99}, "delta": 0.1, "bound": 0.991, "rows": 400}
    rec.update(kw)
    return {"name": "confidence", "threshold": 0.8, "calibration": rec}


@pytest.mark.parametrize("policy, msg", [
    (_cal(method="magic"), "calibration.method must be one of"),
    (_cal(delta=1.5), r"calibration.delta must lie in \(0, 1\)"),
    (_cal(delta=None), "calibration.delta must be a finite number"),
    (_cal(bound="high"), "calibration.bound must be a finite number"),
    (_cal(rows=0), r"calibration.rows must lie in \[1"),
    (_cal(target={"relative_score": 0.99, "agreement": 0.9}), "calibration.target must hold exactly one"),
    (_cal(target={"speed": 2}), "calibration.target must hold exactly one"),
])
def test_calibration_record_is_checked(art, policy, msg):
    _set(art, "default_policy", policy)
    with pytest.raises(ArtifactError, match=msg):
        load_manifest(art)


@pytest.mark.parametrize("policy", [
    {"name": "confidence", "threshold": 0.9, "calibration": "uncalibrated default"},
    {"name": "confidence", "threshold": 0.9, "calibration": {"task": "rte", "split": "dev", "rows": 32,
                                                             "target": {"relative_score": 0.99}}},  # before methods
    _cal(method="point", delta=None, bound=None),
    _cal(method="ltt-binomial", target={"agreement": 0.99, "tolerance": 0.1}),
])
def test_old_and_new_calibration_records_load(art, policy):
    _set(art, "default_policy", policy)
    assert load_manifest(art).default_policy["name"] == "confidence"
