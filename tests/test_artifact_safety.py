"""Adversarial artifacts: nothing outside the folder is read or written, the bytes verified are the
bytes loaded, graphs cannot pull in external data, modes follow the umask, and `out` always
holds a complete artifact."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from runtime import ArtifactError, EarlyExitModel, load_manifest
from runtime.fsutil import install_folder, sha256_file
from runtime.manifest import write_manifest


@pytest.fixture()
def art(rte_art, tmp_path) -> Path:
    dst = tmp_path / "art"
    shutil.copytree(rte_art, dst)
    return dst


def _edit(art: Path, fn) -> None:
    m = json.loads((art / "manifest.json").read_text())
    fn(m)
    (art / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("name", ["../outside/evil.onnx", "/etc/hostname", "sub/../../x.onnx", "", "a\\b.onnx",
                                  "./layer_01.onnx"])
def test_graph_names_must_stay_inside_the_folder(art, tmp_path, name):
    (tmp_path / "outside").mkdir(exist_ok=True)
    shutil.copy(art / "layer_01.onnx", tmp_path / "outside" / "evil.onnx")

    def f(m):
        m["graphs"]["layer_01"]["file"] = name
        m["graphs"]["layer_01"]["sha256"] = sha256_file(tmp_path / "outside" / "evil.onnx")
    _edit(art, f)
    with pytest.raises(ArtifactError, match="graphs.layer_01") as e:
        load_manifest(art)
    digest = hashlib.sha256(Path("/etc/hostname").read_bytes()).hexdigest() if Path("/etc/hostname").exists() else "-"
    assert digest[:12] not in str(e.value)  # nothing about what lies outside is printed


def test_symlink_leaving_the_folder_is_refused(art, tmp_path):
    outside = tmp_path / "evil.onnx"
    shutil.copy(art / "layer_01.onnx", outside)
    (art / "layer_01.onnx").unlink()
    (art / "layer_01.onnx").symlink_to(outside)
    with pytest.raises(ArtifactError, match="symlink that leads outside the artifact folder"):
        load_manifest(art)


def test_symlink_inside_the_folder_is_fine(art):
    (art / "copy.onnx").write_bytes((art / "layer_01.onnx").read_bytes())
    (art / "layer_01.onnx").unlink()
    (art / "layer_01.onnx").symlink_to("copy.onnx")
    m = EarlyExitModel(art, threads=1)
    assert m.predict(["a cat."], ["a dog."])[0].exit_layer in (1, 2)


def test_manifest_itself_may_not_point_outside(art, tmp_path):
    real = tmp_path / "m.json"
    shutil.move(art / "manifest.json", real)
    (art / "manifest.json").symlink_to(real)
    with pytest.raises(ArtifactError, match="outside the artifact folder"):
        load_manifest(art)


def test_write_manifest_never_follows_a_planted_symlink(art, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for planted in ("manifest.json.tmp", ".manifest.json.tmp"):
        (art / planted).symlink_to(victim)
    raw = json.loads((art / "manifest.json").read_text())
    write_manifest(art, raw)
    assert victim.read_text() == "precious"
    # manifest.json itself a symlink to a file elsewhere: the link is replaced, its target untouched
    os.replace(art / "manifest.json", tmp_path / "elsewhere.json")
    (art / "manifest.json").symlink_to(tmp_path / "elsewhere.json")
    before = (tmp_path / "elsewhere.json").read_bytes()
    write_manifest(art, raw)
    assert (tmp_path / "elsewhere.json").read_bytes() == before and not (art / "manifest.json").is_symlink()
    assert not [p for p in art.iterdir() if p.name.endswith(".tmp") and not p.is_symlink()]  # no temp left


def _external_data_graph(path: Path, location: str) -> None:
    import onnx
    from onnx import TensorProto, helper
    t = onnx.TensorProto()
    t.name, t.data_type = "w", TensorProto.FLOAT
    t.dims.extend([4])
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", "16")):
        e = t.external_data.add()
        e.key, e.value = k, v
    g = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [t])
    path.write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString())


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/hostname", "weights.bin"])
def test_graphs_with_external_data_are_refused(art, tmp_path, location):
    from runtime.onnx_check import uses_external_data
    (tmp_path / "secret.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    (art / "weights.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    p = art / "layer_01.onnx"
    _external_data_graph(p, location)
    assert uses_external_data(p.read_bytes())
    assert not uses_external_data((art / "layer_02.onnx").read_bytes())
    _edit(art, lambda m: m["graphs"]["layer_01"].update(sha256=sha256_file(p)))
    with pytest.raises(ArtifactError, match="external data"):
        EarlyExitModel(art, threads=1)


def test_sessions_are_made_from_the_verified_bytes(art, monkeypatch):
    import runtime.backends.ort as ob
    seen = []
    real = ob.ort.InferenceSession

    def spy(src, *a, **k):
        seen.append(src)
        return real(src, *a, **k)
    monkeypatch.setattr(ob.ort, "InferenceSession", spy)
    m = EarlyExitModel(art, threads=1)
    assert seen and all(isinstance(s, bytes) for s in seen)  # never a path: nothing to swap after the check
    for role, g in m.manifest.graphs.items():
        assert hashlib.sha256(m.manifest.read_graph(role)).hexdigest() == g.sha256
    assert {hashlib.sha256(s).hexdigest() for s in seen} == {g.sha256 for g in m.manifest.graphs.values()}


def test_a_file_swapped_after_its_check_is_not_used(art, monkeypatch):
    """read_verified hashes the bytes it returns; a swap between hashing and loading cannot happen
    because the session is made from those bytes. A swap before the read fails the checksum."""
    import runtime.fsutil as fs
    real = fs.read_verified
    swapped = []

    def swap_then_read(root, name, sha, what="file"):
        if name == "layer_02.onnx" and not swapped:
            (root / name).write_bytes((root / "layer_01.onnx").read_bytes())  # another valid graph
            swapped.append(name)
        return real(root, name, sha, what)
    monkeypatch.setattr("runtime.manifest.read_verified", swap_then_read)
    with pytest.raises(ArtifactError, match="does not match its sha256"):
        EarlyExitModel(art, threads=1)


def test_tokenizer_must_be_listed_and_readable(art):
    _edit(art, lambda m: m["tokenizer"].update(checksums=[c for c in m["tokenizer"]["checksums"]
                                                          if c["file"] != "tokenizer.json"]))
    with pytest.raises(ArtifactError, match="does not list tokenizer.json"):
        load_manifest(art)


def test_corrupt_tokenizer_with_matching_checksum(art):
    (art / "tokenizer.json").write_text("{not a tokenizer")

    def f(m):
        for c in m["tokenizer"]["checksums"]:
            if c["file"] == "tokenizer.json":
                c["sha256"] = sha256_file(art / "tokenizer.json")
    _edit(art, f)
    with pytest.raises(ArtifactError, match="tokenizer.json cannot be read"):
        EarlyExitModel(art, threads=1)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_artifact_modes_follow_the_umask(rte_ckpt, tmp_path, umask):
    from export.build import ExportConfig, build
    old = os.umask(umask)
    try:
        out = build(ExportConfig(str(rte_ckpt), str(tmp_path / "a"), monolithic=False))
    finally:
        os.umask(old)
    assert (out.stat().st_mode & 0o777) == 0o777 & ~umask
    for p in out.iterdir():
        assert (p.stat().st_mode & 0o777) == 0o666 & ~umask, p.name


def test_install_folder_swaps_atomically(tmp_path, monkeypatch):
    import runtime.fsutil as fs
    out = tmp_path / "out"
    out.mkdir()
    (out / "f").write_text("old")
    new = tmp_path / ".out.tmp"
    new.mkdir()
    (new / "f").write_text("new")
    calls = []
    real = fs._exchange
    monkeypatch.setattr(fs, "_exchange", lambda a, b: calls.append((a, b)) or real(a, b))
    install_folder(new, out)
    assert calls == [(new, out)] and (out / "f").read_text() == "new" and not new.exists()
    # a crash right after the exchange (before the old copy is deleted) leaves the new artifact in place
    new.mkdir()
    (new / "f").write_text("newer")

    def boom(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(fs.shutil, "rmtree", boom)
    with pytest.raises(KeyboardInterrupt):
        install_folder(new, out)
    assert (out / "f").read_text() == "newer" and (new / "f").read_text() == "new"


def test_out_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "out").write_text("x")
    (tmp_path / "t").mkdir()
    with pytest.raises(ArtifactError, match="not a folder"):
        install_folder(tmp_path / "t", tmp_path / "out")
    assert (tmp_path / "out").read_text() == "x"
