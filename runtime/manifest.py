"""The artifact contract: tensor and graph names, and the one parser of manifest.json.

An artifact folder holds `manifest.json`, the tokenizer and one ONNX graph per stage:

    embeddings.onnx   input_ids [, token_type_ids] [B, S] int64 -> hidden_states [B, S, H]
    layer_XX.onnx     one per exit layer XX: the layers after the previous exit up to XX, XX's exit
                      head and its signals. hidden_states [B, S, H], attention_mask [B, S] int64
                      -> hidden_states_out [B, S, H], logits [B, C], confidence [B], entropy [B]
                      (classification), lte [B] (with an LTE head)
    monolithic.onnx   input_ids [, token_type_ids], attention_mask -> the last layer's outputs

`load_manifest` parses the JSON once into frozen dataclasses and checks every field's type and
range; anything wrong is an ArtifactError that names the field and says what to do. File names
are resolved inside the folder only (runtime/fsutil.py). This module is the single place where
the names live; export writes them and every host reads them from the manifest.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .fsutil import (ArtifactError, atomic_write, install_folder, read_verified, safe_path,  # noqa: F401 (re-exported)
                     sha256_file)

SCHEMA_VERSION = 2
MANIFEST_FILE = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"

# Tensor names: defined once, used by export and every runtime backend.
INPUT_IDS = "input_ids"
TOKEN_TYPE_IDS = "token_type_ids"
ATTENTION_MASK = "attention_mask"
HIDDEN_IN = "hidden_states"
HIDDEN_OUT = "hidden_states_out"
LOGITS = "logits"
CONFIDENCE = "confidence"
ENTROPY = "entropy"
LTE = "lte"
SIGNALS = (CONFIDENCE, ENTROPY, LTE)
HEAD = "head"  # "logits" head layout: [logits | LTE logit], the host derives the signals
POOL_WEIGHTS = "pool_weights"  # mean pooling weights mask / mask.sum(), [B, 1, S], from the host
HEAD_LAYOUTS = ("logits", "signals")

EMBEDDINGS = "embeddings"
MONOLITHIC = "monolithic"
EMBEDDINGS_GRAPH = "embeddings.onnx"
MONOLITHIC_GRAPH = "monolithic.onnx"
KINDS = ("classification", "regression")
METRICS = ("accuracy", "f1", "pearson", "spearman")
POOLINGS = ("cls", "mean")
PRECISIONS = ("fp32", "int8")
MAX_SEQ_LEN = 8192


def layer_role(layer: int) -> str:
    """Role of the stage graph that ends at 1-based exit layer `layer` (the only place it is spelled)."""
    return f"layer_{layer:02d}"


def layer_graph_name(layer: int) -> str:
    """File name of that stage graph."""
    return f"{layer_role(layer)}.onnx"


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
class Backbone:
    model_type: str
    hidden_size: int
    num_attention_heads: int
    num_hidden_layers: int
    vocab_size: int
    pooling: str
    lte: bool
    extra: dict[str, Any] = field(default_factory=dict, repr=False)  # informational fields, as written


@dataclass(frozen=True)
class TensorSpec:
    dtype: str  # "float32" | "int64"
    shape: tuple[int | str, ...]  # ints are fixed sizes; strings are symbolic ("batch", "sequence")


@dataclass(frozen=True)
class GraphInfo:
    role: str
    file: str
    sha256: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    layers: tuple[int, int] | None = None  # stage graphs: first and last 1-based layer they run


@dataclass(frozen=True)
class FileRecord:
    file: str
    sha256: str


@dataclass(frozen=True)
class TokenizerInfo:
    file: str  # tokenizer.json
    sha256: str
    pad_token_id: int
    files: tuple[FileRecord, ...]  # every tokenizer file with its checksum


@dataclass(frozen=True)
class Manifest:
    """Parsed, checked manifest.json. `graphs` maps a role ("embeddings", "layer_01", ...)."""

    root: Path
    schema_version: int
    task: TaskInfo
    backbone: Backbone
    num_layers: int  # layers exported (may be fewer than the backbone's depth)
    exits: tuple[int, ...]  # 1-based exit layers, increasing, the last == num_layers
    head_layout: str  # "logits": graphs output `head`, the host derives signals; "signals": graphs output all
    max_seq_len: int
    precision: str
    tokenizer: TokenizerInfo
    signals: tuple[str, ...]  # exit signals every stage graph outputs
    graphs: dict[str, GraphInfo]
    default_policy: dict[str, Any]
    validation: dict[str, Any]
    optimization: dict[str, Any]
    producer: dict[str, Any]
    tensorrt: dict[str, Any] | None
    native: FileRecord | None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)  # the JSON as read (for rewriting it)

    @property
    def hidden_size(self) -> int:
        return self.backbone.hidden_size

    @property
    def num_exits(self) -> int:
        return len(self.exits)

    @property
    def stage_roles(self) -> tuple[str, ...]:
        return tuple(layer_role(x) for x in self.exits)

    @property
    def has_monolithic(self) -> bool:
        return MONOLITHIC in self.graphs

    @property
    def uses_pool_weights(self) -> bool:
        return POOL_WEIGHTS in self.graphs[layer_role(self.exits[0])].inputs

    @property
    def head_width(self) -> int:
        """Columns of the `head` output: C logits, plus the LTE logit when the model has LTE."""
        return self.task.num_outputs + (1 if LTE in self.signals else 0)

    @property
    def uses_token_types(self) -> bool:
        return TOKEN_TYPE_IDS in self.graphs[EMBEDDINGS].inputs

    def path(self, name: str, what: str = "file") -> Path:
        """A file of the artifact, resolved inside the folder (or ArtifactError)."""
        return safe_path(self.root, name, what)

    def read_graph(self, role: str) -> bytes:
        """The verified bytes of a graph (its sha256 checked on the bytes returned)."""
        g = self.graphs[role]
        return read_verified(self.root, g.file, g.sha256, f"graphs.{role}")

    def read_tokenizer(self) -> bytes:
        return read_verified(self.root, self.tokenizer.file, self.tokenizer.sha256, "tokenizer")


# -- checking helpers: each names the field and what to do -------------------------------------------
_HEX64 = re.compile(r"[0-9a-f]{64}")


def _fail(where: str, msg: str) -> ArtifactError:
    return ArtifactError(f"manifest.json: {where} {msg}; re-export the artifact with `python -m export.build`.")


def _get(d: dict, key: str, where: str, default: Any = ...) -> Any:
    if key not in d:
        if default is ...:
            raise _fail(f"{where}.{key}" if where else key, "is missing")
        return default
    return d[key]


def _obj(v: Any, where: str) -> dict:
    if not isinstance(v, dict):
        raise _fail(where, f"must be a JSON object, got {type(v).__name__}")
    return v


def _str(v: Any, where: str, choices: tuple[str, ...] | None = None) -> str:
    if not isinstance(v, str) or not v:
        raise _fail(where, f"must be a non-empty string, got {v!r}")
    if choices is not None and v not in choices:
        raise _fail(where, f"must be one of {', '.join(choices)}, got {v!r}")
    return v


def _int(v: Any, where: str, lo: int, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise _fail(where, f"must be an integer, got {v!r}")
    if v < lo or (hi is not None and v > hi):
        raise _fail(where, f"must lie in [{lo}, {hi if hi is not None else 'inf'}], got {v}")
    return v


def _bool(v: Any, where: str) -> bool:
    if not isinstance(v, bool):
        raise _fail(where, f"must be true or false, got {v!r}")
    return v


def _list(v: Any, where: str) -> list:
    if not isinstance(v, list):
        raise _fail(where, f"must be a JSON list, got {type(v).__name__}")
    return v


def _sha(v: Any, where: str) -> str:
    if not isinstance(v, str) or not _HEX64.fullmatch(v):
        raise _fail(where, "must be a sha256 digest (64 lowercase hex digits)")
    return v


def _number(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _fail(where, f"must be a finite number, got {v!r}")
    return float(v)


def _file_record(d: Any, where: str, root: Path) -> FileRecord:
    d = _obj(d, where)
    rec = FileRecord(_str(_get(d, "file", where), f"{where}.file"), _sha(_get(d, "sha256", where), f"{where}.sha256"))
    safe_path(root, rec.file, f"manifest.json: {where}")
    return rec


def _tensors(d: Any, where: str) -> dict[str, TensorSpec]:
    out = {}
    for name, spec in _obj(d, where).items():
        w = f"{where}.{name}"
        spec = _obj(spec, w)
        shape = tuple(_list(_get(spec, "shape", w), f"{w}.shape"))
        for s in shape:
            if not (isinstance(s, str) and s) and (isinstance(s, bool) or not isinstance(s, int) or s < 1):
                raise _fail(f"{w}.shape", f"must hold positive sizes or axis names, got {s!r}")
        out[name] = TensorSpec(_str(_get(spec, "dtype", w), f"{w}.dtype", ("float32", "int64")), shape)
    return out


def _task(d: Any) -> TaskInfo:
    d = _obj(d, "task")
    kind = _str(_get(d, "kind", "task"), "task.kind", KINDS)
    labels = tuple(_str(x, "task.labels[]") for x in _list(_get(d, "labels", "task", []), "task.labels"))
    if kind == "classification" and len(labels) < 2:
        raise _fail("task.labels", "must list at least two labels for a classification task")
    if kind == "regression" and labels:
        raise _fail("task.labels", "must be empty for a regression task")
    if len(set(labels)) != len(labels):
        raise _fail("task.labels", "must not repeat a label")
    return TaskInfo(_str(_get(d, "name", "task"), "task.name"), kind, labels,
                    _bool(_get(d, "text_pair", "task"), "task.text_pair"),
                    _str(_get(d, "metric", "task"), "task.metric", METRICS))


def _backbone(d: Any) -> Backbone:
    d = _obj(d, "backbone")
    h = _int(_get(d, "hidden_size", "backbone"), "backbone.hidden_size", 1, 1 << 16)
    heads = _int(_get(d, "num_attention_heads", "backbone"), "backbone.num_attention_heads", 1, h)
    if h % heads:
        raise _fail("backbone.num_attention_heads", f"must divide hidden_size {h}, got {heads}")
    known = ("model_type", "hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size", "pooling", "lte")
    return Backbone(_str(_get(d, "model_type", "backbone"), "backbone.model_type"), h, heads,
                    _int(_get(d, "num_hidden_layers", "backbone"), "backbone.num_hidden_layers", 1, 1024),
                    _int(_get(d, "vocab_size", "backbone"), "backbone.vocab_size", 1, 1 << 24),
                    _str(_get(d, "pooling", "backbone"), "backbone.pooling", POOLINGS),
                    _bool(_get(d, "lte", "backbone"), "backbone.lte"),
                    {k: v for k, v in d.items() if k not in known})


def _graphs(d: Any, root: Path) -> dict[str, GraphInfo]:
    out = {}
    for role, g in _obj(d, "graphs").items():
        w = f"graphs.{role}"
        g = _obj(g, w)
        rec = _file_record(g, w, root)
        layers = g.get("layers")
        if layers is not None:
            layers = _list(layers, f"{w}.layers")
            if len(layers) != 2:
                raise _fail(f"{w}.layers", "must be [first, last]")
            layers = (_int(layers[0], f"{w}.layers[0]", 1), _int(layers[1], f"{w}.layers[1]", 1))
            if layers[0] > layers[1]:
                raise _fail(f"{w}.layers", f"first must not exceed last, got {list(layers)}")
        out[role] = GraphInfo(role, rec.file, rec.sha256, _tensors(_get(g, "inputs", w), f"{w}.inputs"),
                              _tensors(_get(g, "outputs", w), f"{w}.outputs"), layers)
    return out


def _check_io(m: Manifest) -> None:
    """The graphs' declared inputs and outputs fit the model (hidden size, label count, signals)."""
    h, c = m.backbone.hidden_size, m.task.num_outputs
    emb = m.graphs[EMBEDDINGS]
    if INPUT_IDS not in emb.inputs or set(emb.inputs) - {INPUT_IDS, TOKEN_TYPE_IDS}:
        raise _fail("graphs.embeddings.inputs", f"must be {INPUT_IDS} [and {TOKEN_TYPE_IDS}], got {sorted(emb.inputs)}")
    if m.head_layout == "signals":
        want_small = {LOGITS: ("batch", c), **{s: ("batch",) for s in m.signals}}
        want_in = {HIDDEN_IN, ATTENTION_MASK}
    else:
        want_small = {HEAD: ("batch", m.head_width)}
        want_in = {HIDDEN_IN, ATTENTION_MASK} | ({POOL_WEIGHTS} if m.backbone.pooling == "mean" else set())
    for role in m.stage_roles:
        g = m.graphs[role]
        if set(g.inputs) != want_in:
            raise _fail(f"graphs.{role}.inputs", f"must be {sorted(want_in)} (head_layout {m.head_layout}, "
                        f"{m.backbone.pooling} pooling), got {sorted(g.inputs)}")
        if set(g.outputs) != {HIDDEN_OUT, *want_small}:
            raise _fail(f"graphs.{role}.outputs", f"must be {sorted({HIDDEN_OUT, *want_small})} (head_layout "
                        f"{m.head_layout}), got {sorted(g.outputs)}")
        for name in (HIDDEN_IN, HIDDEN_OUT):
            spec = g.inputs.get(name) or g.outputs[name]
            if len(spec.shape) != 3 or spec.shape[2] != h:
                raise _fail(f"graphs.{role}.{name}.shape", f"must be [batch, sequence, {h}], got {list(spec.shape)}")
        for name, shape in want_small.items():
            got = g.outputs[name]
            if len(got.shape) != len(shape) or (len(shape) == 2 and got.shape[1] != shape[1]):
                raise _fail(f"graphs.{role}.outputs.{name}", f"must have shape {list(shape)}, got {list(got.shape)}")
    if m.has_monolithic:
        got = m.graphs[MONOLITHIC].outputs.get(LOGITS)
        if set(m.graphs[MONOLITHIC].outputs) != {LOGITS} or len(got.shape) != 2 or got.shape[1] != c:
            raise _fail("graphs.monolithic.outputs", f"must be {LOGITS} [batch, {c}], got "
                        f"{ {k: list(v.shape) for k, v in m.graphs[MONOLITHIC].outputs.items()} }")


def _exits(raw: dict, num_layers: int, graphs: dict[str, GraphInfo]) -> tuple[int, ...]:
    exits = _list(_get(raw, "exits", ""), "exits")
    xs = tuple(_int(x, "exits[]", 1, num_layers) for x in exits)
    if not xs or list(xs) != sorted(set(xs)) or xs[-1] != num_layers:
        raise _fail("exits", f"must be increasing exit layers ending at num_layers={num_layers}, got {list(exits)}")
    prev = 0
    for x in xs:
        role = layer_role(x)
        if role not in graphs:
            raise _fail("graphs", f"has no stage graph '{role}' for exit layer {x}")
        want = (prev + 1, x)
        if graphs[role].layers is not None and graphs[role].layers != want:
            raise _fail(f"graphs.{role}.layers", f"must be {list(want)} (after exit {prev}), got {list(graphs[role].layers)}")
        prev = x
    return xs


CALIBRATION_METHODS = ("ltt-bootstrap", "ltt-binomial", "point", "latency-budget")
CALIBRATION_TARGETS = ("relative_score", "agreement", "avg_exit_layer", "latency_ms")


def _default_policy(v: Any) -> dict:
    """default_policy: an object; its `calibration` record, when it names a method (written by
    runtime.calibrate), is checked. Older records (a string, or an object without `method`) load as
    they are."""
    d = _obj(v or {}, "default_policy")
    cal = d.get("calibration")
    if not isinstance(cal, dict) or "method" not in cal:
        return d
    w = "default_policy.calibration"
    _str(cal["method"], f"{w}.method", CALIBRATION_METHODS)
    target = _obj(_get(cal, "target", w), f"{w}.target")
    kinds = [k for k in target if k in CALIBRATION_TARGETS]
    if len(kinds) != 1 or set(target) - {*CALIBRATION_TARGETS, "tolerance"}:
        raise _fail(f"{w}.target", f"must hold exactly one of {', '.join(CALIBRATION_TARGETS)} (and tolerance), "
                    f"got {sorted(target)}")
    for k, x in target.items():
        if x is not None or k != "tolerance":
            _number(x, f"{w}.target.{k}")
    _int(_get(cal, "rows", w), f"{w}.rows", 1)
    for k in ("rows_search", "rows_certify"):
        if cal.get(k) is not None:
            _int(cal[k], f"{w}.{k}", 1)
    guaranteed = cal["method"].startswith("ltt")
    delta = cal.get("delta")
    if guaranteed or delta is not None:
        if _number(_get(cal, "delta", w), f"{w}.delta") <= 0 or delta >= 1:
            raise _fail(f"{w}.delta", f"must lie in (0, 1), got {delta}")
    if guaranteed or cal.get("bound") is not None:
        _number(_get(cal, "bound", w), f"{w}.bound")
    return d


def parse_manifest(raw: Any, root: Path) -> Manifest:
    """Check a manifest's JSON value; ArtifactError names the first field that is wrong."""
    raw = _obj(raw, "the top level")
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ArtifactError(f"manifest.json has schema_version {version!r}; this runtime reads {SCHEMA_VERSION}: "
                            f"re-export the artifact with this version of the toolkit (`python -m export.build`).")
    task = _task(_get(raw, "task", ""))
    backbone = _backbone(_get(raw, "backbone", ""))
    num_layers = _int(_get(raw, "num_layers", ""), "num_layers", 1, backbone.num_hidden_layers)
    max_pos = backbone.extra.get("max_position_embeddings")
    hi = max_pos if isinstance(max_pos, int) and not isinstance(max_pos, bool) and max_pos > 0 else MAX_SEQ_LEN
    max_seq_len = _int(_get(raw, "max_seq_len", ""), "max_seq_len", 2, min(hi, MAX_SEQ_LEN))
    signals = tuple(_str(s, "signals[]", SIGNALS) for s in _list(_get(raw, "signals", ""), "signals"))
    if len(set(signals)) != len(signals):
        raise _fail("signals", "must not repeat a signal")
    if task.kind == "classification" and not {CONFIDENCE, ENTROPY} <= set(signals):
        raise _fail("signals", "must include confidence and entropy for a classification task")
    if task.kind == "regression" and {CONFIDENCE, ENTROPY} & set(signals):
        raise _fail("signals", "cannot include confidence or entropy for a regression task")
    if (LTE in signals) != backbone.lte:
        raise _fail("signals", f"must include lte exactly when backbone.lte is true (lte={backbone.lte})")
    graphs = _graphs(_get(raw, "graphs", ""), root)
    if EMBEDDINGS not in graphs:
        raise _fail("graphs", "has no 'embeddings' graph")
    exits = _exits(raw, num_layers, graphs)
    tok = _obj(_get(raw, "tokenizer", ""), "tokenizer")
    files = tuple(_file_record(f, f"tokenizer.checksums[{i}]", root)
                  for i, f in enumerate(_list(_get(tok, "checksums", "tokenizer"), "tokenizer.checksums")))
    tok_file = _str(tok.get("file", TOKENIZER_FILE), "tokenizer.file")
    listed = {f.file: f.sha256 for f in files}
    if tok_file not in listed:
        raise _fail("tokenizer.checksums", f"does not list {tok_file}")
    tokenizer = TokenizerInfo(tok_file, listed[tok_file],
                              _int(_get(tok, "pad_token_id", "tokenizer"), "tokenizer.pad_token_id", 0,
                                   backbone.vocab_size - 1), files)
    trt = raw.get("tensorrt")
    native = raw.get("native")
    m = Manifest(root=root, schema_version=version, task=task, backbone=backbone, num_layers=num_layers, exits=exits,
                 head_layout=_str(_get(raw, "head_layout", ""), "head_layout", HEAD_LAYOUTS), max_seq_len=max_seq_len, precision=_str(raw.get("precision", "fp32"), "precision", PRECISIONS),
                 tokenizer=tokenizer, signals=signals, graphs=graphs,
                 default_policy=_default_policy(raw.get("default_policy")),
                 validation=_obj(raw.get("validation") or {}, "validation"),
                 optimization=_obj(raw.get("optimization") or {}, "optimization"),
                 producer=_obj(raw.get("producer") or {}, "producer"),
                 tensorrt=None if trt is None else _obj(trt, "tensorrt"),
                 native=None if native is None else _file_record(native, "native", root), raw=raw)
    for k in ("atol", "max_abs_diff"):
        if k in m.validation:
            _number(m.validation[k], f"validation.{k}")
    _check_io(m)
    return m


def load_manifest(artifact_dir: str | os.PathLike) -> Manifest:
    """Read and check `artifact_dir/manifest.json` (graph files are verified when they are read)."""
    root = Path(artifact_dir)
    if not root.is_dir():
        raise ArtifactError(f"artifact folder '{root}' does not exist; build one with "
                            f"`python -m export.build --checkpoint CKPT --out {root}`.")
    path = root / MANIFEST_FILE
    if not os.path.lexists(path):
        raise ArtifactError(f"'{root}' has no {MANIFEST_FILE}: it is not a complete artifact "
                            f"(an export may have been interrupted); re-run `python -m export.build`.")
    safe_path(root, MANIFEST_FILE, MANIFEST_FILE)
    if not path.is_file():
        raise ArtifactError(f"{path} is not a regular file; re-export the artifact.")
    try:
        raw = json.loads(path.read_bytes().decode("utf-8"), parse_constant=_no_constant)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ArtifactError(f"{path} is not valid JSON ({str(e)[:120]}); re-export the artifact.") from None
    return parse_manifest(raw, root)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def verify_files(m: Manifest) -> None:
    """Every graph, tokenizer and weight file listed exists and matches its sha256."""
    for role in m.graphs:
        m.read_graph(role)
    for f in m.tokenizer.files:
        read_verified(m.root, f.file, f.sha256, "tokenizer")
    if m.native is not None:
        read_verified(m.root, m.native.file, m.native.sha256, "native")


def write_manifest(root: Path, data: dict[str, Any]) -> Path:
    """Write manifest.json atomically and durably (strict JSON: NaN/Infinity are refused)."""
    path = Path(root) / MANIFEST_FILE
    atomic_write(path, (json.dumps(data, indent=2, allow_nan=False) + "\n").encode("utf-8"))
    return path
