"""`python -m export.build --checkpoint CKPT --out ART [--layers N]`

Splits a fine-tuned multi-exit checkpoint into an artifact folder: embeddings graph, one graph
per layer (layer + exit head + exit signals), a monolithic reference graph, the tokenizer, and
manifest.json (written last, with every file's sha256). Every graph, and the chained graphs as a
whole, are checked against PyTorch; the largest difference met is recorded in the manifest.
The artifact is built in a temporary sibling folder and moved into place only when complete,
so an interrupted or failed export leaves any previous artifact at `--out` untouched.
"""
from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from runtime import manifest as M
from runtime.cli import fail, parser, positive_float, positive_int
from runtime.manifest import install_folder, sha256_file, write_manifest
from runtime.tasks import get_task
from train.model import MultiExitModel, exit_signals, load_checkpoint

from .graphs import HEAD_LAYOUTS, OPSET, export_graphs, signal_names
from .optimize import fusable_attention, fuse, fuse_embeddings, quantize_int8, quantize_int8_static


# int8: static quantization (activation scales calibrated on training rows: answers do not depend
# on the batch); int8-dynamic: the older dynamic quantization (scales per batch).
PRECISIONS = ("fp32", "int8", "int8-dynamic")
# int8 changes every matmul's rounding: values move by up to a few tenths while predictions
# mostly stay; its real check is the dev-score change the benchmark reports.
# Both int8 kinds get 1.0: static because constant scales clip outliers, dynamic because CPUs
# without VNNI compute it with 7-bit weights (a real MiniLM layer moved by 0.66 on an AVX2 CPU).
DEFAULT_ATOL = {"fp32": 1e-4, "int8": 1.0, "int8-dynamic": 1.0}


class ExportError(Exception):
    """The export cannot be done as asked (bad layer count, missing checkpoint)."""


class ValidationError(ExportError):
    """An exported graph does not match PyTorch within the tolerance."""


@dataclass(frozen=True)
class ExportConfig:
    checkpoint: str
    out: str
    layers: int | None = None  # None: all layers
    monolithic: bool = True
    fuse: bool = True  # onnxruntime transformer fusion (Attention, SkipLayerNorm, BiasGelu, ...)
    precision: str = "fp32"  # "int8" (static: calibrated scales, QDQ) or "int8-dynamic"
    atol: float | None = None  # max abs difference to PyTorch; default 1e-4 (fp32) / 1.0 (int8)
    tensorrt: bool = False  # also build one TensorRT engine per graph (needs TensorRT and a GPU)
    trt_max_batch: int = 32
    trt_opt_batch: int = 1
    trt_opt_seq: int = 128
    exit_layers: tuple[int, ...] | None = None  # None: every layer has an exit; else the layers that do
    head: str = "logits"  # stage graphs' head layout (export/graphs.py): "logits" (lean) or "signals"
    max_seq_len: int | None = None  # tokens per row the artifact accepts; None: the training length
    calibration_rows: int = 256  # static int8: training rows whose activations set the scales
    data_dir: str | None = None  # static int8: task data (default: the checkpoint's, else ../shared/data)
    int8_attention: str = "qattention"  # static int8: "qattention" (fused attention, int8 Q/K/V, static input scale), "fused" (fp32 Attention op) or "int8" (unfused, Q/K/V MatMuls quantized)
    native: bool = True  # also write native_weights.bin for the C runtime (fp32 BERT models)

    def __post_init__(self):
        if self.head not in HEAD_LAYOUTS:
            raise ExportError(f"--head must be one of {', '.join(HEAD_LAYOUTS)}, got {self.head!r}")
        if self.layers is not None and (isinstance(self.layers, bool) or not isinstance(self.layers, int)):
            raise ExportError(f"--layers must be an integer, got {self.layers!r}")
        if self.exit_layers is not None:
            xs = tuple(self.exit_layers)
            if not xs or any(isinstance(x, bool) or not isinstance(x, int) for x in xs) or list(xs) != sorted(set(xs)) \
                    or xs[0] < 1:
                raise ExportError(f"--exit-layers must be increasing layer numbers >= 1, got {list(xs)}")
        if self.precision == "fp16" and not self.tensorrt:
            raise ExportError("--precision fp16 applies to TensorRT engines: add --tensorrt (the ONNX graphs stay fp32)")
        if self.precision not in PRECISIONS and self.precision != "fp16":
            raise ExportError(f"--precision must be one of {', '.join(PRECISIONS)} (fp16 with --tensorrt), "
                              f"got {self.precision!r}")
        if not 1 <= self.trt_opt_batch <= self.trt_max_batch or self.trt_opt_seq < 1:
            raise ExportError(f"TensorRT profile: need 1 <= --trt-opt-batch <= --trt-max-batch and --trt-opt-seq >= 1 "
                              f"(got {self.trt_opt_batch}, {self.trt_max_batch}, {self.trt_opt_seq})")
        if self.int8_attention not in ("qattention", "fused", "int8"):
            raise ExportError(f"--int8-attention must be qattention, fused or int8, got {self.int8_attention!r}")
        if isinstance(self.calibration_rows, bool) or not isinstance(self.calibration_rows, int) \
                or self.calibration_rows < 1:
            raise ExportError(f"--calibration-rows must be a positive integer, got {self.calibration_rows!r}")
        if self.tensorrt and self.precision.startswith("int8"):
            raise ExportError("--tensorrt builds fp32 or fp16 engines; int8 engines need a calibration set (not supported)")
        if self.atol is not None and not (self.atol > 0 and self.atol < float("inf")):
            raise ExportError(f"--atol must be a positive finite number, got {self.atol}")
        for name in ("trt_max_batch", "trt_opt_batch", "trt_opt_seq"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ExportError(f"--{name.replace('_', '-')} must be a positive integer, got {v!r}")

    @property
    def onnx_precision(self) -> str:
        """The manifest's precision: fp32 or int8 (optimization.int8.method says which int8)."""
        return "fp32" if self.precision == "fp16" else self.precision.split("-")[0]

    @property
    def int8_method(self) -> str | None:
        return {"int8": "static", "int8-dynamic": "dynamic"}.get(self.precision)

    @property
    def tolerance(self) -> float:
        return self.atol if self.atol is not None else DEFAULT_ATOL.get(self.precision, DEFAULT_ATOL["fp32"])


_SAMPLE_TEXTS = [("The cat sat on the mat.", "A cat is sitting."),
                 ("Early exiting saves time on easy inputs, and costs little on hard ones.", "It is fast."),
                 ("Nothing here.", "Something completely different, and much longer than the first text of the pair.")]


def _validation_batch(tokenizer, text_pair: bool, max_len: int) -> dict[str, np.ndarray]:
    a = [t[0] for t in _SAMPLE_TEXTS]
    b = [t[1] for t in _SAMPLE_TEXTS] if text_pair else None
    enc = tokenizer(a, b, padding=True, truncation="longest_first", max_length=max_len,
                    return_token_type_ids=True, return_tensors="np")
    return {k: enc[k].astype(np.int64) for k in (M.INPUT_IDS, M.TOKEN_TYPE_IDS, M.ATTENTION_MASK)}


def _session(path: Path):
    from runtime.backends.ort import make_session
    return make_session(path)


def _worst(diffs: list[float]) -> float:
    """The largest difference, or NaN if any is NaN (max() would skip a NaN that is not first)."""
    return float("nan") if any(not np.isfinite(d) for d in diffs) else max(diffs)


def _maxdiff(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    if mask is not None:  # hidden states at padded positions are never read: compare real tokens only
        a, b = a[mask.astype(bool)], b[mask.astype(bool)]
    if not a.size:
        return 0.0
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return float("nan") if not np.isfinite(d).all() else float(d.max())


@torch.no_grad()
def validate(model: MultiExitModel, tmp: Path, roles: dict, exits: list[int], batch: dict[str, np.ndarray],
             atol: float) -> dict:
    """Each graph alone, and the chain end to end, against PyTorch on the same inputs."""
    model.eval()
    ids, tt, mask = (torch.from_numpy(batch[k]) for k in (M.INPUT_IDS, M.TOKEN_TYPE_IDS, M.ATTENTION_MASK))
    out = model(ids, mask, tt)
    sig = signal_names(model)
    feeds = lambda role, avail: {n: avail[n] for n in roles[role]["inputs"]}  # noqa: E731
    per_graph: dict[str, float] = {}

    layout = "signals" if M.LOGITS in roles[M.layer_role(exits[0])]["outputs"] else "logits"
    m_f = batch[M.ATTENTION_MASK].astype(np.float32)
    pool_w = (m_f / m_f.sum(axis=1, keepdims=True))[:, None, :]  # [B, 1, S]

    def head_ref(i: int, h: torch.Tensor) -> list[np.ndarray]:  # the exit outputs of 0-based layer i
        if layout == "signals":
            ref = [out.logits[i].numpy()]
            if model.cfg.kind == "classification":
                ref += [t.numpy() for t in exit_signals(out.logits[i])]
            if model.cfg.lte:
                ref.append(out.lte[i].numpy())
            return ref
        pooled = model.pool(h, mask)
        cols = [model.head(i, pooled)] + ([model.lte_head(pooled)] if model.cfg.lte else [])
        return [torch.cat(cols, dim=1).numpy()]

    def stage_feeds(role: str, h: np.ndarray) -> dict[str, np.ndarray]:
        f = {M.HIDDEN_IN: h, M.ATTENTION_MASK: batch[M.ATTENTION_MASK]}
        if M.POOL_WEIGHTS in roles[role]["inputs"]:
            f[M.POOL_WEIGHTS] = pool_w
        return f

    # Torch reference hidden states, stage by stage.
    h_ref = model.embed(ids, tt)
    emb = _session(tmp / roles[M.EMBEDDINGS]["file"]).run(None, feeds(M.EMBEDDINGS, batch))[0]
    per_graph[M.EMBEDDINGS] = _maxdiff(emb, h_ref.numpy(), batch[M.ATTENTION_MASK])
    from train.model import additive_mask
    ext = additive_mask(mask, h_ref.dtype)
    h_chain = emb
    chain_diff = 0.0
    prev = 0
    for x in exits:
        role = M.layer_role(x)
        sess = _session(tmp / roles[role]["file"])
        # (a) the graph alone on the torch reference input
        res = sess.run(None, stage_feeds(role, h_ref.numpy()))
        h_next = h_ref
        for i in range(prev, x):
            h_next = model.layer(i, h_next, ext)
        ref = [h_next.numpy()] + head_ref(x - 1, h_next)
        diffs = [_maxdiff(res[0], ref[0], batch[M.ATTENTION_MASK])] + [_maxdiff(r, e) for r, e in zip(res[1:], ref[1:])]
        per_graph[role] = _worst(diffs)
        # (b) the chain: ONNX hidden states fed forward
        chained = sess.run(None, stage_feeds(role, h_chain))
        h_chain = chained[0]
        chain_diff = _worst([chain_diff, *(_maxdiff(r, e) for r, e in zip(chained[1:], ref[1:]))])
        h_ref, prev = h_next, x
    if M.MONOLITHIC in roles:
        res = _session(tmp / roles[M.MONOLITHIC]["file"]).run(None, feeds(M.MONOLITHIC, batch))
        per_graph[M.MONOLITHIC] = _maxdiff(res[0], out.logits[exits[-1] - 1].numpy())
    worst = _worst([*per_graph.values(), chain_diff])
    if not worst <= atol:  # NaN compares False: a model with NaN weights fails here
        bad = {k: v for k, v in per_graph.items() if not v <= atol}
        raise ValidationError(f"exported graphs differ from PyTorch by up to {worst:.2e} (> atol {atol:.0e}): "
                              f"{bad or {'chain': chain_diff}}"
                              + (" -- the model computes NaN or infinity (its weights are not finite: retrain)"
                                 if not np.isfinite(worst) else "") + ". The export is not written.")
    return {"atol": atol, "max_abs_diff": worst, "chain_max_abs_diff": chain_diff,
            "per_graph_max_abs_diff": per_graph,
            "outputs_checked": ["hidden_states"] + (["logits"] + sig if layout == "signals" else [M.HEAD]),
            "inputs": f"{len(_SAMPLE_TEXTS)} tokenized text rows with padding"}


def _check_tokenizer(tokenizer, tmp: Path, text_pair: bool, max_len: int) -> None:
    """The runtime's tokenizer (tokenizer.json via `tokenizers`) must give the training tokenizer's ids."""
    from runtime.tokenize import TextEncoder
    enc = TextEncoder(tmp / "tokenizer.json", max_len, text_pair, pad_id=tokenizer.pad_token_id)
    a = [t[0] for t in _SAMPLE_TEXTS]
    b = [t[1] for t in _SAMPLE_TEXTS] if text_pair else None
    got = enc.encode(a, b)
    want = _validation_batch(tokenizer, text_pair, max_len)
    if not np.array_equal(got.input_ids, want[M.INPUT_IDS]) or not np.array_equal(got.attention_mask, want[M.ATTENTION_MASK]):
        raise ValidationError("tokenizer.json gives other token ids than the training tokenizer; "
                              "the checkpoint's tokenizer needs a fast (tokenizer.json) version.")


def build(cfg: ExportConfig) -> Path:
    """Export, validate and atomically install the artifact at cfg.out. Returns its path."""
    ckpt = Path(cfg.checkpoint)
    if cfg.tensorrt:  # before any work: say what is missing
        from .tensorrt import TensorRTUnavailable, require_tensorrt
        try:
            require_tensorrt()
        except TensorRTUnavailable as e:
            raise ExportError(str(e)) from None
    if not ckpt.is_dir():
        raise ExportError(f"checkpoint folder '{ckpt}' does not exist; train one with `python -m train.finetune`.")
    try:
        model, tokenizer = load_checkpoint(ckpt)
    except (FileNotFoundError, ValueError, OSError) as e:
        raise ExportError(str(e)) from e
    depth = model.cfg.num_layers
    n = depth if cfg.layers is None else cfg.layers
    if not 1 <= n <= depth:
        raise ExportError(f"--layers {n} is out of range: the checkpoint has {depth} layers (use 1..{depth}).")
    exits = list(range(1, n + 1)) if cfg.exit_layers is None else list(cfg.exit_layers)
    if exits[-1] != n:
        raise ExportError(f"--exit-layers must end at the last exported layer ({n}): every row leaves there; "
                          f"got {exits}.")
    task = get_task(model.cfg.task)
    train_cfg = _read_json(ckpt / "train_config.json")
    max_pos = int(getattr(model.backbone.config, "max_position_embeddings", 512))
    if cfg.max_seq_len is not None:
        if not 8 <= cfg.max_seq_len <= max_pos:
            raise ExportError(f"--max-seq-len {cfg.max_seq_len} is out of range: this backbone takes 8..{max_pos} "
                              f"tokens per row.")
        max_len = cfg.max_seq_len
    else:
        max_len = min(int(train_cfg.get("max_seq_len", 128)), max_pos)

    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        t0 = time.time()
        fused: dict[str, dict[str, int]] = {}
        if cfg.fuse:
            with fusable_attention(model):
                roles = export_graphs(model, n, tmp, monolithic=cfg.monolithic, exits=exits, head=cfg.head)
            c = model.backbone.config
            for role, r in roles.items():
                fused[role] = fuse(tmp / r["file"], c.num_attention_heads, c.hidden_size,
                                   attention=not (cfg.int8_method == "static" and cfg.int8_attention == "int8"))
                if role == "embeddings":
                    fused[role].update(fuse_embeddings(tmp / r["file"]))
        else:
            roles = export_graphs(model, n, tmp, monolithic=cfg.monolithic, exits=exits, head=cfg.head)
        int8_record = None
        if cfg.int8_method == "dynamic":
            for r in roles.values():
                quantize_int8(tmp / r["file"])
            int8_record = {"method": "onnxruntime quantize_dynamic", "weights": "QInt8 per-channel, 7-bit (reduce_range)",
                           "ops": ["MatMul", "Attention"], "batch_independent": False}
        elif cfg.int8_method == "static":
            feeds = _calibration_feeds(cfg, train_cfg, tokenizer, task, max_len, tmp, roles, exits)
            for role, r in roles.items():
                if role != M.EMBEDDINGS:  # no MatMul to quantize there
                    int8_record = quantize_int8_static(tmp / r["file"], feeds[role],
                                                       attention="qattention" if cfg.int8_attention == "qattention" else "fused")
            int8_record.update(rows=feeds["rows"], batch_independent=True,
                               graphs=[role for role in roles if role != M.EMBEDDINGS])
        tokenizer.save_pretrained(tmp)
        _check_tokenizer(tokenizer, tmp, task.text_pair, max_len)
        report = validate(model, tmp, roles, exits, _validation_batch(tokenizer, task.text_pair, max_len),
                          cfg.tolerance)
        for r in roles.values():
            r["sha256"] = sha256_file(tmp / r["file"])
        native_record, native_note = _write_native(model, tmp, n, exits, max_len, cfg)
        tok_files = sorted(p.name for p in tmp.iterdir() if p.is_file() and p.suffix != ".onnx"
                           and not p.name.startswith("native_"))  # the native runtime's files have their own record
        trt_record = None
        if cfg.tensorrt:
            from .tensorrt import ENGINE_DIR, build_engines, profile_for
            trt_dir = tmp / ENGINE_DIR
            trt_dir.mkdir()
            # Standard ONNX ops only; the engines compute every signal on the device ("signals" layout).
            plain = export_graphs(model, n, trt_dir, monolithic=False, exits=exits, head="signals")
            trt_record = build_engines(trt_dir, plain, trt_dir,
                                       model.backbone.config.hidden_size,
                                       profile_for(max_len, cfg.trt_max_batch, cfg.trt_opt_batch, cfg.trt_opt_seq),
                                       cfg.precision)
        sig = signal_names(model)
        default = ({"name": "confidence", "threshold": 0.9, "calibration": "uncalibrated default"}
                   if task.kind == "classification" else
                   ({"name": "lte", "threshold": 0.5, "calibration": "uncalibrated default"} if model.cfg.lte
                    else {"name": "fixed", "exit_layer": n, "calibration": "no exit signal: full depth"}))
        c = model.backbone.config
        manifest = {
            "schema_version": M.SCHEMA_VERSION,
            "task": {"name": task.name, "kind": task.kind, "labels": list(task.labels), "text_pair": task.text_pair,
                     "metric": task.metric},
            "backbone": {"model_type": c.model_type, "hidden_size": c.hidden_size,
                         "num_attention_heads": c.num_attention_heads, "num_hidden_layers": c.num_hidden_layers,
                         "intermediate_size": getattr(c, "intermediate_size", None), "vocab_size": c.vocab_size,
                         "max_position_embeddings": getattr(c, "max_position_embeddings", None), "lte": model.cfg.lte,
                         "pooling": model.cfg.pooling,
                         "strategy": train_cfg.get("strategy"), "source_model": train_cfg.get("model") or "all-MiniLM-L6-v2 (packaged)"},
            "num_layers": n,
            "exits": exits,
            "head_layout": cfg.head,
            "max_seq_len": max_len,
            "precision": cfg.onnx_precision,
            "optimization": {"fused": cfg.fuse, "fused_operators": fused,
                             "int8": int8_record},
            "tensorrt": trt_record,
            "tokenizer": {"file": M.TOKENIZER_FILE, "files": tok_files, "pad_token_id": tokenizer.pad_token_id,
                          "truncation": "longest_first", "padding": "right, to the longest row of a batch",
                          "checksums": [{"file": f, "sha256": sha256_file(tmp / f)} for f in tok_files]},
            "signals": sig,
            "signal_rules": {"confidence": "max softmax of the logits; exit when >= threshold",
                             "entropy": "softmax entropy of the logits (nats, via log-softmax); exit when <= threshold",
                             "lte": "sigmoid(c^T h + b) on the pooled state; exit when >= threshold",
                             "head": "head_layout 'logits': output `head` [B, C (+1)] = logits, then the LTE logit "
                                     "(sigmoid it for lte); input pool_weights [B, 1, S] = mask / sum(mask) (mean "
                                     "pooling). head_layout 'signals': outputs logits, confidence, entropy, lte"},
            "graphs": roles,
            "native": native_record,
            **({"native_note": native_note} if native_note else {}),
            "default_policy": default,
            "validation": report,
            "source": {"checkpoint": str(ckpt.resolve())},
            "producer": {"toolkit": "berxit-rt 0.1.0", "torch": torch.__version__, "onnx_opset": OPSET,
                         "transformers": _version("transformers"), "onnxruntime": _version("onnxruntime"),
                         "python": platform.python_version(), "export_seconds": round(time.time() - t0, 1)},
        }
        write_manifest(tmp, manifest)  # last: its presence marks the folder complete
        install_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _calibration_feeds(cfg: ExportConfig, train_cfg: dict, tokenizer, task, max_len: int, tmp: Path, roles: dict,
                       exits: list[int], batch: int = 16) -> dict:
    """Every graph's real inputs for `cfg.calibration_rows` training rows (a fixed random sample,
    batches of `batch` padded rows): stage k's inputs are the fp32 stage k-1's outputs."""
    from runtime.datasets import load_split
    data_dir = cfg.data_dir or train_cfg.get("data_dir")
    try:
        split = load_split(task.name, "train", data_dir)
    except (FileNotFoundError, ValueError) as e:
        raise ExportError(f"static int8 calibrates on the task's training rows, which were not found ({e}); pass "
                          f"--data-dir, or export with --precision int8-dynamic.") from None
    rng = np.random.default_rng(0)
    pick = rng.choice(len(split), size=min(cfg.calibration_rows, len(split)), replace=False)
    sess = {role: _session(tmp / r["file"]) for role, r in roles.items()}
    out: dict = {role: [] for role in roles}
    out["rows"] = int(len(pick))
    for s in range(0, len(pick), batch):
        idx = pick[s:s + batch]
        enc = tokenizer([split.text_a[i] for i in idx], None if split.text_b is None else [split.text_b[i] for i in idx],
                        padding=True, truncation="longest_first", max_length=max_len, return_token_type_ids=True,
                        return_tensors="np")
        ids = {k: enc[k].astype(np.int64) for k in (M.INPUT_IDS, M.TOKEN_TYPE_IDS, M.ATTENTION_MASK)}
        mask = ids[M.ATTENTION_MASK]
        pool = (mask / np.maximum(mask.sum(axis=1, keepdims=True), 1)).astype(np.float32)[:, None, :]  # [B, 1, S]
        feed = lambda role, avail: {k: avail[k] for k in roles[role]["inputs"]}  # noqa: E731
        out[M.EMBEDDINGS].append(feed(M.EMBEDDINGS, ids))
        h = sess[M.EMBEDDINGS].run(None, feed(M.EMBEDDINGS, ids))[0]
        for x in exits:
            role = M.layer_role(x)
            f = feed(role, {M.HIDDEN_IN: h, M.ATTENTION_MASK: mask, M.POOL_WEIGHTS: pool})
            out[role].append(f)
            h = sess[role].run([M.HIDDEN_OUT], f)[0]
        if M.MONOLITHIC in roles:
            out[M.MONOLITHIC].append(feed(M.MONOLITHIC, ids))
    return out


def _write_native(model: MultiExitModel, tmp: Path, n: int, exits: list[int], max_len: int,
                  cfg: ExportConfig) -> tuple[dict | None, str | None]:
    """The native C runtime's weights file (export/native.py), from the same PyTorch weights as the
    graphs: (manifest record, None), or (None, why it was not written)."""
    from .native import NATIVE_FILE, NativeUnsupported, native_tensors, write_weights
    if not cfg.native:
        return None, "not written (--no-native)"
    if cfg.onnx_precision != "fp32":
        return None, f"not written: the native runtime runs fp32 weights only (this export is {cfg.onnx_precision})"
    try:
        ncfg, tensors = native_tensors(model, n, exits)
    except NativeUnsupported as e:
        return None, f"not written: {e}"
    write_weights(tmp / NATIVE_FILE, ncfg, tensors, exits, max_len)
    rec = {"file": NATIVE_FILE, "sha256": sha256_file(tmp / NATIVE_FILE), "format": "berxit weights v1, fp32"}
    from .native import write_tokenizer
    try:  # the C WordPiece tokenizer's files (BERT tokenizers only; other hosts pass token ids)
        files = write_tokenizer(tmp, (tmp / M.TOKENIZER_FILE).read_bytes())
        rec["tokenizer"] = [{"file": str(f.relative_to(tmp)), "sha256": sha256_file(f)} for f in files]
    except NativeUnsupported as e:
        rec["tokenizer"] = None
        rec["tokenizer_note"] = f"no C tokenizer: {e}"
    return rec, None


def _read_json(p: Path) -> dict:
    import json
    return json.loads(p.read_text()) if p.is_file() else {}


def _version(pkg: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(pkg)
    except PackageNotFoundError:
        return None


def _layer_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer numbers such as 2,4,6, got {text!r}") from None


def parse_args(argv: list[str] | None = None) -> ExportConfig:
    p = parser("python -m export.build", "Export a multi-exit checkpoint to an artifact: one ONNX graph per exit, "
               "embeddings, a monolithic reference graph, the tokenizer and manifest.json.")
    p.add_argument("--checkpoint", required=True, help="folder written by `python -m train.finetune`")
    p.add_argument("--out", required=True, help="artifact folder to write (replaced only when the new one is complete)")
    p.add_argument("--layers", type=positive_int, default=None, help="export the first N layers (default: all)")
    p.add_argument("--exit-layers", type=_layer_list, default=None, metavar="K,K,...",
                   help="layers that get an exit, e.g. 2,4,6 (the last exported layer must be one); layers "
                        "without an exit run inside the next exit's graph (default: every layer)")
    p.add_argument("--max-seq-len", type=positive_int, default=None,
                   help="tokens per row the artifact accepts (default: the length the model was trained with)")
    p.add_argument("--no-monolithic", action="store_true", help="skip the monolithic reference graph")
    p.add_argument("--head", default="logits", choices=list(HEAD_LAYOUTS),
                   help="stage graphs' exit head: 'logits' (one Gemm giving logits and the LTE logit; the runtime "
                        "derives the signals: fewest graph ops) or 'signals' (every exit signal computed in the graph)")
    p.add_argument("--no-fuse", action="store_true", help="skip onnxruntime's transformer fusion")
    p.add_argument("--no-native", action="store_true",
                   help="skip native_weights.bin, the weights file of the C runtime (written for fp32 BERT models)")
    p.add_argument("--precision", default="fp32", choices=list(PRECISIONS) + ["fp16"],
                   help="int8: static quantization (activation scales calibrated on training rows, QDQ, weights "
                        "per-channel: answers do not depend on the batch); int8-dynamic: dynamic quantization "
                        "(scales per batch); fp16: TensorRT engines in fp16 (with --tensorrt)")
    p.add_argument("--int8-attention", default="qattention", choices=["qattention", "fused", "int8"],
                   help="static int8: qattention = the fused attention in int8 (QAttention, input scale calibrated "
                        "here); fused = onnxruntime's fused Attention left fp32; int8 = attention unfused, its Q/K/V "
                        "MatMuls quantized")
    p.add_argument("--calibration-rows", type=positive_int, default=256,
                   help="static int8: training rows that calibrate the activation scales")
    p.add_argument("--data-dir", default=None,
                   help="static int8: folder with glue/ and sick/ (default: the checkpoint's, else ../shared/data)")
    p.add_argument("--atol", type=positive_float, default=None,
                   help="max abs difference to PyTorch allowed (default 1e-4 for fp32, 1.0 for int8)")
    p.add_argument("--tensorrt", action="store_true",
                   help="also build a TensorRT engine per graph (needs TensorRT 10 and an NVIDIA GPU)")
    p.add_argument("--trt-max-batch", type=positive_int, default=32, help="TensorRT profile: largest batch")
    p.add_argument("--trt-opt-batch", type=positive_int, default=1, help="TensorRT profile: batch to tune for")
    p.add_argument("--trt-opt-seq", type=positive_int, default=128, help="TensorRT profile: sequence length to tune for")
    a = p.parse_args(argv)
    try:
        return ExportConfig(a.checkpoint, a.out, a.layers, not a.no_monolithic, not a.no_fuse, a.precision, a.atol,
                            a.tensorrt, a.trt_max_batch, a.trt_opt_batch, a.trt_opt_seq, a.exit_layers, a.head,
                            max_seq_len=a.max_seq_len, calibration_rows=a.calibration_rows, data_dir=a.data_dir,
                            int8_attention=a.int8_attention, native=not a.no_native)
    except ExportError as e:
        p.error(str(e))


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    try:
        out = build(cfg)
    except ExportError as e:
        return fail(e)
    m = M.load_manifest(out)
    v = m.validation
    print(f"artifact written to {out}: {m.num_exits} stage graphs (exits at layers {', '.join(map(str, m.exits))}) "
          f"+ embeddings"
          + (" + monolithic" if m.has_monolithic else "") + f"; max |ONNX - PyTorch| = {v['max_abs_diff']:.2e} "
          f"(atol {v['atol']:.0e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
