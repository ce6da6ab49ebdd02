"""The artifact contract: graph names, tensor names, and manifest.json read/write/verify.

An artifact folder holds `manifest.json`, the tokenizer files and one ONNX graph per stage:

    embeddings.onnx   input_ids, token_type_ids [B, S] int64 -> hidden_states [B, S, H]
    layer_01.onnx ..  hidden_states [B, S, H], attention_mask [B, S] int64
                      -> hidden_states_out [B, S, H], logits [B, C], confidence [B],
                         entropy [B] (classification), lte [B] (when the model has LTE)
    monolithic.onnx   input_ids, token_type_ids, attention_mask -> the last layer's outputs

This module is the single place where those names live; export writes them and every host
(this runtime, a C/C++ host) reads them from the manifest.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"

# Tensor names: defined once, used by export and runtime.
INPUT_IDS = "input_ids"
TOKEN_TYPE_IDS = "token_type_ids"
ATTENTION_MASK = "attention_mask"
HIDDEN_IN = "hidden_states"
HIDDEN_OUT = "hidden_states_out"
LOGITS = "logits"
CONFIDENCE = "confidence"
ENTROPY = "entropy"
LTE = "lte"

EMBEDDINGS_GRAPH = "embeddings.onnx"
MONOLITHIC_GRAPH = "monolithic.onnx"


def layer_graph_name(layer: int) -> str:
    """File name of the graph for 1-based transformer layer `layer`."""
    return f"layer_{layer:02d}.onnx"


class ArtifactError(Exception):
    """An artifact folder is missing, incomplete, corrupt or of another schema."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class TaskInfo:
    name: str
    kind: str  # "classification" | "regression"
    labels: tuple[str, ...]  # empty for regression
    text_pair: bool  # True when the task takes two texts (RTE, MRPC, STS-B, SICK)
    metric: str

    @property
    def num_outputs(self) -> int:
        return len(self.labels) if self.kind == "classification" else 1


@dataclass(frozen=True)
class GraphInfo:
    file: str
    sha256: str
    inputs: dict[str, dict[str, Any]]  # name -> {"dtype": ..., "shape": [...symbolic or int]}
    outputs: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class Manifest:
    """Parsed manifest.json. `graphs` maps a role ("embeddings", "layer_01", ...) to a GraphInfo."""

    root: Path
    schema_version: int
    task: TaskInfo
    backbone: dict[str, Any]
    num_layers: int  # exported layers (may be fewer than the backbone's depth)
    max_seq_len: int
    tokenizer_files: tuple[str, ...]
    signals: tuple[str, ...]  # exit signals every layer graph outputs
    graphs: dict[str, GraphInfo]
    default_policy: dict[str, Any]
    validation: dict[str, Any]
    producer: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def has_monolithic(self) -> bool:
        return "monolithic" in self.graphs

    def graph_path(self, role: str) -> Path:
        return self.root / self.graphs[role].file

    def layer_role(self, layer: int) -> str:
        return f"layer_{layer:02d}"


def _require(d: dict, key: str, where: str) -> Any:
    if key not in d:
        raise ArtifactError(f"manifest.json: missing key '{key}' in {where}; re-export the artifact with "
                            f"`python -m export.build`.")
    return d[key]


def load_manifest(artifact_dir: str | os.PathLike, verify: bool = True) -> Manifest:
    """Read and check `artifact_dir/manifest.json`.

    With `verify`, every file it lists must exist and match its sha256 (a truncated or
    replaced graph fails here, with its name, instead of deep inside onnxruntime).
    """
    root = Path(artifact_dir)
    if not root.is_dir():
        raise ArtifactError(f"artifact folder '{root}' does not exist; build one with "
                            f"`python -m export.build --checkpoint CKPT --out {root}`.")
    path = root / MANIFEST_FILE
    if not path.is_file():
        raise ArtifactError(f"'{root}' has no {MANIFEST_FILE}: it is not a complete artifact "
                            f"(an export may have been interrupted); re-run `python -m export.build`.")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path} is not valid JSON ({e}); re-export the artifact.") from e
    if not isinstance(raw, dict):
        raise ArtifactError(f"{path} must hold a JSON object; re-export the artifact.")
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ArtifactError(f"{path} has schema_version {version!r}, this runtime reads {SCHEMA_VERSION}; "
                            f"re-export the artifact with this version of the toolkit.")
    t = _require(raw, "task", "the top level")
    task = TaskInfo(name=_require(t, "name", "task"), kind=_require(t, "kind", "task"),
                    labels=tuple(t.get("labels", ())), text_pair=bool(_require(t, "text_pair", "task")),
                    metric=t.get("metric", ""))
    if task.kind not in ("classification", "regression"):
        raise ArtifactError(f"{path}: task.kind must be 'classification' or 'regression', got {task.kind!r}.")
    graphs = {}
    for role, g in _require(raw, "graphs", "the top level").items():
        graphs[role] = GraphInfo(file=_require(g, "file", f"graphs.{role}"), sha256=_require(g, "sha256", f"graphs.{role}"),
                                 inputs=g.get("inputs", {}), outputs=g.get("outputs", {}))
    num_layers = int(_require(raw, "num_layers", "the top level"))
    needed = ["embeddings"] + [f"layer_{i:02d}" for i in range(1, num_layers + 1)]
    missing = [r for r in needed if r not in graphs]
    if missing:
        raise ArtifactError(f"{path}: graphs {missing} are not listed; re-export the artifact.")
    m = Manifest(root=root, schema_version=version, task=task, backbone=raw.get("backbone", {}),
                 num_layers=num_layers, max_seq_len=int(_require(raw, "max_seq_len", "the top level")),
                 tokenizer_files=tuple(raw.get("tokenizer", {}).get("files", ())),
                 signals=tuple(_require(raw, "signals", "the top level")), graphs=graphs,
                 default_policy=raw.get("default_policy", {}), validation=raw.get("validation", {}),
                 producer=raw.get("producer", {}), raw=raw)
    if verify:
        verify_files(m)
    return m


def verify_files(m: Manifest) -> None:
    """Every graph and tokenizer file exists and matches the manifest's sha256."""
    checks = [(g.file, g.sha256) for g in m.graphs.values()]
    checks += [(f["file"], f["sha256"]) for f in m.raw.get("tokenizer", {}).get("checksums", [])]
    for name, digest in checks:
        p = m.root / name
        if not p.is_file():
            raise ArtifactError(f"artifact file '{p}' is missing; the artifact is incomplete, re-export it.")
        actual = sha256_file(p)
        if actual != digest:
            raise ArtifactError(f"artifact file '{p}' does not match its checksum (sha256 {actual[:12]}..., "
                                f"manifest says {digest[:12]}...): it was truncated or replaced; re-export it.")


def write_manifest(root: Path, data: dict[str, Any]) -> Path:
    """Write manifest.json atomically (temp file + rename) so a reader never sees half of it."""
    path = root / MANIFEST_FILE
    tmp = root / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def install_folder(tmp: Path, out: Path) -> None:
    """Move a finished folder into place; an existing `out` is replaced only now, so an
    interrupted or failed write never costs the previous one (export and fine-tuning use this)."""
    import shutil
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
