"""The weights file the native C runtime reads (runtime/native/): `native_weights.bin`.

Flat, versioned, little-endian; the C reader (runtime/native/weights.c) checks every field
against the header before it touches the data:

    offset  size  field
    0       8     magic b"BERXITW\\0"
    8       4     u32 version (1)
    12      4     u32 header bytes (128)
    16      4*14  u32 layers, hidden, heads, intermediate, vocab, max_positions, type_vocab,
                  num_outputs (labels; 1 for regression), task_kind (0 classification,
                  1 regression), pooling (0 cls, 1 mean), activation (0 exact erf GELU),
                  has_lte, max_seq_len, num_exits
    72      4     f32 layer-norm eps
    76      4     u32 tensor count
    80      8*5   u64 exits offset (u32 x num_exits, 1-based layers), table offset, data
                  offset, file size, data checksum
    120     8     u32 flags (0), u32 reserved (0)
    table         per tensor 96 bytes: name[56] (NUL padded), u32 dtype (1 = float32), u32 ndim,
                  u32 shape[4], u64 offset (from the file start, 64-byte aligned), u64 bytes
    data          raw float32, each tensor 64-byte aligned; the file ends padded to 64 bytes

The checksum is sum_i (w_i ^ K) * (2i + 1) mod 2^64 over the data section's u64 words: it
catches truncation and any single flipped bit; the manifest's sha256 is the integrity check.
Tensors (weights transposed to [in, out], so y = x W + b):
    embeddings.word [V, H], embeddings.position [P, H], embeddings.token_type [T, H],
    embeddings.ln.weight / .bias [H]
    layer.{i}.qkv.weight [H, 3H] (columns Q | K | V), .bias [3H]; layer.{i}.attn_out [H, H];
    layer.{i}.ln1; layer.{i}.ffn_in [H, I]; layer.{i}.ffn_out [I, H]; layer.{i}.ln2
    head.{layer}.weight [H, C (+1)], .bias [C (+1)]: the exit head of 1-based exit layer
    `layer`, the LTE head stacked as the last column (as the exported graphs' `head` output)
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

MAGIC = b"BERXITW\0"
VERSION = 1
HEADER_BYTES = 128
ENTRY_BYTES = 96
NAME_BYTES = 56
ALIGN = 64
DTYPE_F32 = 1
CHECK_KEY = 0x9E3779B97F4A7C15
NATIVE_FILE = "native_weights.bin"


class NativeUnsupported(Exception):
    """The model cannot run on the native runtime (the reason says which part)."""


def checksum(data: bytes | memoryview) -> int:
    """The data section's checksum (see the module docstring); len(data) % 8 == 0."""
    w = np.frombuffer(data, dtype="<u8")
    k = np.arange(len(w), dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    with np.errstate(over="ignore"):
        return int(((w ^ np.uint64(CHECK_KEY)) * k).sum(dtype=np.uint64))


def _pad(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def native_tensors(model, num_layers: int, exits: list[int]) -> tuple[dict[str, int | float], dict[str, np.ndarray]]:
    """(config, name -> float32 array) of a MultiExitModel for the C runtime, or NativeUnsupported."""
    import torch

    from .graphs import head_weights
    c = model.backbone.config
    if c.model_type != "bert":
        raise NativeUnsupported(f"backbone type '{c.model_type}' (the native runtime runs BERT encoders only)")
    if getattr(c, "hidden_act", "gelu") != "gelu":
        raise NativeUnsupported(f"activation '{c.hidden_act}' (the native runtime computes exact erf GELU only)")
    if getattr(c, "position_embedding_type", "absolute") != "absolute":
        raise NativeUnsupported(f"position embeddings '{c.position_embedding_type}' (absolute only)")
    b = model.backbone
    f = lambda t: np.ascontiguousarray(t.detach().to(torch.float32).cpu().numpy())  # noqa: E731
    e = b.embeddings
    t = {"embeddings.word": f(e.word_embeddings.weight), "embeddings.position": f(e.position_embeddings.weight),
         "embeddings.token_type": f(e.token_type_embeddings.weight),
         "embeddings.ln.weight": f(e.LayerNorm.weight), "embeddings.ln.bias": f(e.LayerNorm.bias)}
    for i in range(num_layers):
        L = b.encoder.layer[i]
        a = L.attention
        q, k, v = a.self.query, a.self.key, a.self.value
        t[f"layer.{i}.qkv.weight"] = np.concatenate([f(q.weight).T, f(k.weight).T, f(v.weight).T], axis=1)
        t[f"layer.{i}.qkv.bias"] = np.concatenate([f(q.bias), f(k.bias), f(v.bias)])
        t[f"layer.{i}.attn_out.weight"], t[f"layer.{i}.attn_out.bias"] = f(a.output.dense.weight).T, f(a.output.dense.bias)
        t[f"layer.{i}.ln1.weight"], t[f"layer.{i}.ln1.bias"] = f(a.output.LayerNorm.weight), f(a.output.LayerNorm.bias)
        t[f"layer.{i}.ffn_in.weight"], t[f"layer.{i}.ffn_in.bias"] = f(L.intermediate.dense.weight).T, f(L.intermediate.dense.bias)
        t[f"layer.{i}.ffn_out.weight"], t[f"layer.{i}.ffn_out.bias"] = f(L.output.dense.weight).T, f(L.output.dense.bias)
        t[f"layer.{i}.ln2.weight"], t[f"layer.{i}.ln2.bias"] = f(L.output.LayerNorm.weight), f(L.output.LayerNorm.bias)
    for x in exits:
        w, bias = head_weights(model, x - 1)
        t[f"head.{x}.weight"], t[f"head.{x}.bias"] = f(w).T, f(bias)
    eps = {float(m.eps) for m in b.modules() if isinstance(m, torch.nn.LayerNorm)}
    if len(eps) != 1:
        raise NativeUnsupported(f"layer norms with different eps {sorted(eps)}")
    cfg = {"layers": num_layers, "hidden": c.hidden_size, "heads": c.num_attention_heads,
           "intermediate": c.intermediate_size, "vocab": c.vocab_size, "max_positions": c.max_position_embeddings,
           "type_vocab": c.type_vocab_size, "num_outputs": model.cfg.num_outputs,
           "task_kind": 0 if model.cfg.kind == "classification" else 1,
           "pooling": 0 if model.cfg.pooling == "cls" else 1, "activation": 0, "has_lte": int(model.cfg.lte),
           "eps": eps.pop()}
    return cfg, {k: np.ascontiguousarray(v, dtype="<f4") for k, v in t.items()}


def write_weights(path: Path, cfg: dict, tensors: dict[str, np.ndarray], exits: list[int], max_seq_len: int) -> Path:
    """Write the weights file (layout: module docstring)."""
    names = list(tensors)
    for n in names:
        if len(n.encode()) >= NAME_BYTES:
            raise ValueError(f"tensor name {n!r} is too long for the weights file")
    exits_off = HEADER_BYTES
    table_off = _pad(exits_off + 4 * len(exits))
    data_off = _pad(table_off + ENTRY_BYTES * len(names))
    table, offsets, pos = [], [], data_off
    for n in names:
        a = tensors[n]
        if a.ndim > 4 or a.size == 0:
            raise ValueError(f"tensor {n} has shape {a.shape}: 1 to 4 non-empty axes only")
        offsets.append(pos)
        shape = list(a.shape) + [0] * (4 - a.ndim)
        table.append(n.encode().ljust(NAME_BYTES, b"\0") + struct.pack("<II4IQQ", DTYPE_F32, a.ndim, *shape, pos, a.nbytes))
        pos = _pad(pos + a.nbytes)
    size = pos
    data = bytearray(size - data_off)
    for n, off in zip(names, offsets):
        b = tensors[n].tobytes()
        data[off - data_off:off - data_off + len(b)] = b
    head = MAGIC + struct.pack("<II14IfI5QII", VERSION, HEADER_BYTES, cfg["layers"], cfg["hidden"], cfg["heads"],
                               cfg["intermediate"], cfg["vocab"], cfg["max_positions"], cfg["type_vocab"],
                               cfg["num_outputs"], cfg["task_kind"], cfg["pooling"], cfg["activation"],
                               cfg["has_lte"], max_seq_len, len(exits), cfg["eps"], len(names), exits_off,
                               table_off, data_off, size, checksum(data), 0, 0)
    assert len(head) == HEADER_BYTES
    out = bytearray(data_off)
    out[:HEADER_BYTES] = head
    out[exits_off:exits_off + 4 * len(exits)] = struct.pack(f"<{len(exits)}I", *exits)
    out[table_off:table_off + ENTRY_BYTES * len(names)] = b"".join(table)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(out)
        fh.write(data)
    return path


VOCAB_FILE = "native_vocab.txt"
TOKENIZER_CFG = "native_tokenizer.txt"


def _escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace(" ", "\\s")


def write_tokenizer(folder: Path, tokenizer_json: bytes) -> tuple[Path, Path]:
    """native_vocab.txt and native_tokenizer.txt for the C WordPiece tokenizer, from the artifact's
    tokenizer.json; NativeUnsupported for anything but BERT's WordPiece pipeline."""
    import json
    t = json.loads(tokenizer_json)
    norm, pre, model, post = t.get("normalizer") or {}, t.get("pre_tokenizer") or {}, t.get("model") or {}, \
        t.get("post_processor") or {}
    if model.get("type") != "WordPiece" or norm.get("type") != "BertNormalizer" or pre.get("type") != "BertPreTokenizer":
        raise NativeUnsupported(f"tokenizer {model.get('type')}/{norm.get('type')}/{pre.get('type')} (the C tokenizer "
                                f"does BERT WordPiece only; pass token ids)")
    if model.get("continuing_subword_prefix", "##") != "##":
        raise NativeUnsupported("a WordPiece prefix other than ##")
    vocab = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    if [i for _, i in vocab] != list(range(len(vocab))) or any("\n" in w or "\r" in w or not w for w, _ in vocab):
        raise NativeUnsupported("a vocabulary with gaps in its ids or tokens holding line breaks")
    ids = dict(vocab)
    if post.get("type") == "TemplateProcessing":
        single = [next(iter(x)) + ":" + (x.get("SpecialToken") or x.get("Sequence"))["id"] for x in post["single"]]
        pair = [next(iter(x)) + ":" + (x.get("SpecialToken") or x.get("Sequence"))["id"] + ":" +
                str((x.get("SpecialToken") or x.get("Sequence"))["type_id"]) for x in post["pair"]]
        cls, sep = post["single"][0].get("SpecialToken", {}).get("id"), post["single"][-1].get("SpecialToken", {}).get("id")
        want_single = [f"SpecialToken:{cls}", "Sequence:A", f"SpecialToken:{sep}"]
        want_pair = [f"SpecialToken:{cls}:0", "Sequence:A:0", f"SpecialToken:{sep}:0", "Sequence:B:1", f"SpecialToken:{sep}:1"]
        if single != want_single or pair != want_pair:
            raise NativeUnsupported(f"post-processing {single} / {pair} (the C tokenizer writes [CLS] A [SEP] B [SEP])")
    elif post.get("type") == "BertProcessing":
        cls, sep = post["cls"][0], post["sep"][0]
    else:
        raise NativeUnsupported(f"post-processor {post.get('type')}")
    specials = []
    for a in t.get("added_tokens", []):
        if a.get("normalized") or a.get("single_word") or a.get("lstrip") or a.get("rstrip") or not a.get("special"):
            raise NativeUnsupported(f"added token {a.get('content')!r} with options the C tokenizer does not handle")
        specials.append(f"special {a['id']}:{_escape(a['content'])}")
    lowercase = bool(norm.get("lowercase", True))
    strip = norm.get("strip_accents")
    lines = ["berxit-tokenizer 1", "type wordpiece", f"lowercase {int(lowercase)}",
             f"strip_accents {int(lowercase if strip is None else bool(strip))}",
             f"chinese_chars {int(bool(norm.get('handle_chinese_chars', True)))}",
             f"clean_text {int(bool(norm.get('clean_text', True)))}",
             f"max_chars_per_word {int(model.get('max_input_chars_per_word', 100))}",
             f"unk_id {ids[model.get('unk_token', '[UNK]')]}", f"cls_id {ids[cls]}", f"sep_id {ids[sep]}", *specials]
    v, c = folder / VOCAB_FILE, folder / TOKENIZER_CFG
    v.write_text("".join(w + "\n" for w, _ in vocab), encoding="utf-8")
    c.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return v, c
