"""Graph-level optimisation of exported graphs: onnxruntime transformer fusion and int8 dynamic
quantization (../shared/PROBE.md has the measurements behind each setting).

Fusion needs the attention written the way onnxruntime's BERT fusion matches it: scores
*divided* by sqrt(head_dim) (transformers 5 multiplies by a scale, which never fuses) and the
additive mask built inside the graph from the int64 mask. `fusable_attention` registers such an
attention function with transformers' public AttentionInterface for the duration of an export;
it computes the same values as the eager attention (checked by the export's validation).
"""
from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path
from typing import Iterator

import torch

log = logging.getLogger(__name__)

ATTN_NAME = "berxit_onnx"


def _attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    # query/key/value: [B, heads, S, d]; attention_mask: additive [B, 1, 1, S]
    d = query.size(-1)
    scores = torch.matmul(query, key.transpose(2, 3)) / math.sqrt(d)
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = torch.softmax(scores, dim=-1)
    out = torch.matmul(probs, value).transpose(1, 2).contiguous()  # [B, S, heads, d]
    return out, probs


@contextlib.contextmanager
def fusable_attention(model) -> Iterator[None]:
    """Run `model` (a MultiExitModel) with the fusion-friendly attention inside the block."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_NAME, _attention)
    cfg = model.backbone.config
    before = cfg._attn_implementation
    cfg._attn_implementation = ATTN_NAME
    try:
        yield
    finally:
        cfg._attn_implementation = before


def fuse(path: Path, num_heads: int, hidden_size: int, attention: bool = True) -> dict[str, int]:
    """Fuse `path` in place with onnxruntime's BERT optimizer; returns fused-operator counts.
    attention=False leaves the attention unfused (its Q, K, V projections stay MatMuls, which
    static int8 quantization can then quantize; the fused Attention op has no QDQ rule)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    opts = FusionOptions("bert")
    opts.enable_attention = attention
    opt = optimize_model(str(path), model_type="bert", num_heads=num_heads, hidden_size=hidden_size,
                         opt_level=0, use_gpu=False, optimization_options=opts)
    stats = {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}
    opt.save_model_to_file(str(path))
    return stats


def quantize_int8(path: Path) -> None:
    """Dynamic int8 quantization in place: per-channel 7-bit weights (reduce_range), with a default
    tensor type so fused graphs quantize at all.

    CPUs without VNNI (AVX2 only) multiply u8 activations by s8 weights with an instruction that
    adds pairs of products in 16 bits and saturates; full 8-bit weights overflow there (a tiny
    model's exits moved by 1.5) and 7-bit weights cannot. An artifact runs on whatever CPU its
    host has, so the weights are always 7-bit."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = path.with_suffix(".int8.onnx")
    quantize_dynamic(str(path), str(tmp), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                     op_types_to_quantize=["MatMul", "Attention"],
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    tmp.replace(path)


def op_counts(path: Path) -> dict[str, int]:
    import onnx
    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def fuse_embeddings(path: Path) -> dict[str, int]:
    """Replace a BERT-style embeddings graph (word + token-type + absolute position embeddings,
    then LayerNorm) with onnxruntime's fused EmbedLayerNormalization, in place.

    onnxruntime's optimizer only fuses embeddings that feed an Attention node, so a graph that
    holds the embeddings alone stays as 4 Gathers, 2 Adds, a LayerNorm and the position-id
    arithmetic; on its own that costs about twice the fused kernel, and it is paid before every
    early exit (it lowers realization most when samples exit at layer 1). Graphs of another
    shape (RoBERTa's padding-offset positions, ALBERT's projection) are left as they are, and so
    is any graph whose fused form does not give the same output (checked here on random ids;
    the export then validates it against PyTorch too). Returns {"EmbedLayerNormalization": 1}
    when it fused, else {}."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    inits = {i.name: i for i in g.initializer}
    consts = {n.output[0]: n for n in g.node if n.op_type == "Constant"}

    def value(name):
        if name in inits:
            return numpy_helper.to_array(inits[name])
        if name in consts:
            return numpy_helper.to_array(consts[name].attribute[0].t)
        return None

    def gather_of(name, inputs):
        n = producer.get(name)
        if n is not None and n.op_type == "Gather" and n.input[0] in inits and n.input[1] in inputs:
            return n
        return None

    graph_inputs = {i.name for i in g.input}
    if len(g.output) != 1:
        return {}
    ln = producer.get(g.output[0].name)
    if ln is None or ln.op_type != "LayerNormalization" or len(ln.input) < 3:
        return {}
    top = producer.get(ln.input[0])
    if top is None or top.op_type != "Add":
        return {}
    # One side of the top Add is the position Gather: positions = Slice(arange constant, 0, S).
    pos_gather, rest = None, None
    for a, b in ((top.input[0], top.input[1]), (top.input[1], top.input[0])):
        n = producer.get(a)
        if n is not None and n.op_type == "Gather" and n.input[0] in inits:
            sl = producer.get(n.input[1])
            if sl is not None and sl.op_type == "Slice":
                ids = value(sl.input[0])
                start = value(sl.input[1]) if len(sl.input) > 1 else None
                if ids is not None and start is not None and np.array_equal(ids.reshape(-1), np.arange(ids.size)) \
                        and int(np.asarray(start).reshape(-1)[0]) == 0:
                    pos_gather, rest = n, b
    if pos_gather is None:
        return {}
    word = tt = None
    rn = producer.get(rest)
    if rn is not None and rn.op_type == "Add":
        for a, b in ((rn.input[0], rn.input[1]), (rn.input[1], rn.input[0])):
            w, t = gather_of(a, {"input_ids"}), gather_of(b, {"token_type_ids"})
            if w is not None and t is not None:
                word, tt = w, t
    elif rn is not None:
        word = gather_of(rest, {"input_ids"})
    if word is None or not {"input_ids"} <= graph_inputs:
        return {}
    eps = next((helper.get_attribute_value(a) for a in ln.attribute if a.name == "epsilon"), 1e-5)

    nodes = [helper.make_node("Cast", ["input_ids"], ["input_ids_int32"], to=onnx.TensorProto.INT32)]
    seg_in, seg_emb = "", ""
    if tt is not None:
        nodes.append(helper.make_node("Cast", ["token_type_ids"], ["token_type_ids_int32"], to=onnx.TensorProto.INT32))
        seg_in, seg_emb = "token_type_ids_int32", tt.input[0]
    nodes.append(helper.make_node(
        "EmbedLayerNormalization",
        ["input_ids_int32", seg_in, word.input[0], pos_gather.input[0], seg_emb, ln.input[1], ln.input[2]],
        [g.output[0].name, "embed_mask_index"], domain="com.microsoft", epsilon=float(eps)))
    keep = {word.input[0], pos_gather.input[0], ln.input[1], ln.input[2]} | ({tt.input[0]} if tt is not None else set())
    fused = onnx.ModelProto()
    fused.CopyFrom(model)
    del fused.graph.node[:]
    fused.graph.node.extend(nodes)
    kept = [i for i in g.initializer if i.name in keep]
    del fused.graph.initializer[:]
    fused.graph.initializer.extend(kept)
    if not any(o.domain == "com.microsoft" for o in fused.opset_import):
        fused.opset_import.append(helper.make_opsetid("com.microsoft", 1))

    if not _same_outputs(model, fused, "token_type_ids" in graph_inputs, tt is not None):
        log.warning("embeddings fusion changed the output; %s left unfused", path.name)
        return {}
    onnx.save(fused, str(path))
    return {"EmbedLayerNormalization": 1}


def _same_outputs(a, b, has_tt_input: bool, uses_tt: bool, atol: float = 1e-5) -> bool:
    import numpy as np
    from runtime.backends.ort import make_session

    try:
        sa, sb = make_session(a.SerializeToString()), make_session(b.SerializeToString())
    except Exception as e:  # noqa: BLE001 - a graph onnxruntime cannot load is simply not fused
        log.warning("fused embeddings graph does not load (%s)", e)
        return False
    rng = np.random.default_rng(0)
    vocab = next((int(i.dims[0]) for i in a.graph.initializer if "word_embeddings" in i.name), 100)
    for bsz, s in ((1, 1), (1, 7), (3, 16)):
        feeds = {"input_ids": rng.integers(0, vocab, (bsz, s)).astype(np.int64)}
        if has_tt_input:
            feeds["token_type_ids"] = rng.integers(0, 2 if uses_tt else 1, (bsz, s)).astype(np.int64)
        if not np.allclose(sa.run(None, feeds)[0], sb.run(None, feeds)[0], atol=atol, rtol=0):
            return False
    return True


class _Feeds:
    """onnxruntime's CalibrationDataReader over a list of feed dicts (one per calibration batch)."""

    def __init__(self, feeds: list[dict]):
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # some onnxruntime versions call it between passes
        pass


STATIC_INT8_OPS = ("MatMul",)


def quantize_int8_static(path: Path, feeds: list[dict], attention: str = "qattention") -> dict:
    """Static int8 quantization in place (QDQ format): activation scales calibrated once from
    `feeds` (the graph's real inputs for real rows: MinMax over every batch), per-channel int8
    weights. The scales are constants of the graph, so a row's answer no longer depends on the
    other rows of its batch (dynamic quantization's scales span the batch).

    Quantized after fusion. onnxruntime's QDQ quantizer has no rule for the fused Attention,
    SkipLayerNormalization and BiasGelu ops; the MatMuls around them (attention output, both FFN
    projections) become int8 with fp32 outputs (an int8 output would be dequantized again at
    once: measured slower and less accurate), and a tensor that feeds both a quantized MatMul and
    a residual connection keeps its fp32 value on the residual path (the quantizer would hand the
    residual the dequantized copy, adding rounding error to every layer's skip connection).
    attention="qattention" (default) also quantizes the fused Attention's Q/K/V projection: a
    QAttention op fed by a QuantizeLinear with the input scale calibrated here (7-bit per-column
    weights), so the attention runs int8 too and stays batch-independent; "fused" leaves it fp32.
    Only MatMuls with a constant weight are quantized; the exit head (Gemm) stays fp32."""
    if attention not in ("qattention", "fused"):
        raise ValueError(f"attention must be qattention or fused, got {attention!r}")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs a warning per tensor on the root logger
    try:
        ranges = _attention_input_ranges(path, feeds) if attention == "qattention" else {}
        with _calibrator_sessions():
            rec = _quantize_static(path, feeds)
        rec["residual_inputs"] = "fp32 (bypass of the quantized copy): %d tensors" % keep_fp32_bypass(path)
        if ranges:
            rec["attention"] = _static_qattention(path, ranges)
        return rec
    finally:
        root.setLevel(level)


@contextlib.contextmanager
def _calibrator_sessions() -> Iterator[None]:
    """The calibrator's inference session, made so that it also loads in a process that already
    runs onnxruntime on the runtime's shared thread pool (onnxruntime then refuses sessions with
    their own pools, which is what the calibrator asks for)."""
    import onnxruntime as ort
    from onnxruntime.quantization import calibrate as C
    from runtime.backends import ort as rb

    def create(self):
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        if rb._POOL_THREADS is not None:
            so.use_per_session_threads = False
        self.infer_session = ort.InferenceSession(self.augmented_model_path, sess_options=so,
                                                  providers=self.execution_providers)

    orig = C.CalibraterBase.create_inference_session
    C.CalibraterBase.create_inference_session = create
    try:
        yield
    finally:
        C.CalibraterBase.create_inference_session = orig


def _quantize_static(path: Path, feeds: list[dict]) -> dict:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # Shapes and types of the fused (com.microsoft) ops come from onnxruntime's symbolic shape
    # inference; without them the quantizer cannot type those tensors and leaves them fp32.
    pre = path.with_suffix(".pre.onnx")
    quant_pre_process(str(path), str(pre), skip_optimization=True, auto_merge=True)
    tmp = path.with_suffix(".int8.onnx")
    quantize_static(str(pre), str(tmp), _Feeds(feeds), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=list(STATIC_INT8_OPS), per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "MatMulConstBOnly": True,
                                   "OpTypesToExcludeOutputQuantization": ["MatMul"]})
    tmp.replace(path)
    pre.unlink(missing_ok=True)
    for p in path.parent.glob("*augmented*.onnx"):  # the calibrator's scratch model, if left behind
        p.unlink()
    return {"method": "onnxruntime quantize_static", "format": "QDQ", "weights": "QInt8 per-channel",
            "activations": "QUInt8 per-tensor, MinMax", "ops": list(STATIC_INT8_OPS), "outputs": "fp32"}


def keep_fp32_bypass(path: Path) -> int:
    """In a QDQ graph, consumers of a dequantized activation that are not quantized ops (the
    residual Add / SkipLayerNormalization, a graph output) read the original fp32 tensor again.
    Returns how many tensors were rewired."""
    import onnx
    m = onnx.load(str(path))
    g = m.graph
    consts = {i.name for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    dq_source: dict[str, str] = {}  # dequantized tensor -> the fp32 tensor it was quantized from
    for n in g.node:
        if n.op_type != "DequantizeLinear":
            continue
        q = producer.get(n.input[0])
        if q is not None and q.op_type == "QuantizeLinear" and q.input[0] not in consts:
            dq_source[n.output[0]] = q.input[0]
    rewired = set()
    for n in g.node:
        if n.op_type in STATIC_INT8_OPS or n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for i, name in enumerate(n.input):
            if name in dq_source:
                n.input[i] = dq_source[name]
                rewired.add(name)
    if rewired:
        onnx.save(m, str(path))
    return len(rewired)


def _attention_input_ranges(path: Path, feeds: list[dict]) -> dict[str, tuple[float, float]]:
    """(min, max) over the calibration feeds of every fused Attention node's input tensor."""
    import numpy as np
    import onnx
    from runtime.backends.ort import make_session

    m = onnx.load(str(path))
    names = sorted({n.input[0] for n in m.graph.node if n.op_type == "Attention" and n.domain == "com.microsoft"})
    if not names:
        return {}
    have = {o.name for o in m.graph.output}
    for name in names:
        if name not in have:
            m.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    sess = make_session(m.SerializeToString())
    lo = {k: np.inf for k in names}
    hi = {k: -np.inf for k in names}
    outs = [o.name for o in sess.get_outputs()]
    for f in feeds:
        vals = dict(zip(outs, sess.run(None, f)))
        for k in names:
            mask = f.get("attention_mask")
            v = vals[k]
            if mask is not None and v.ndim == 3 and mask.shape == v.shape[:2]:
                v = v[mask.astype(bool)]  # padding positions do not set the scale
            lo[k], hi[k] = min(lo[k], float(v.min())), max(hi[k], float(v.max()))
    return {k: (lo[k], hi[k]) for k in names}


def _static_qattention(path: Path, ranges: dict[str, tuple[float, float]]) -> dict:
    """Fused Attention -> QAttention with a static input scale: onnxruntime's dynamic quantizer
    writes QAttention fed by DynamicQuantizeLinear; each DynamicQuantizeLinear is then replaced by
    a QuantizeLinear whose scale and zero point are constants from `ranges` (uint8, asymmetric,
    the range widened to include 0), so nothing depends on the batch."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = path.with_suffix(".qatt.onnx")
    quantize_dynamic(str(path), str(tmp), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                     op_types_to_quantize=["Attention"],
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    m = onnx.load(str(tmp))
    g = m.graph
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    nodes, replaced = [], 0
    for n in g.node:
        if n.op_type == "DynamicQuantizeLinear" and n.input[0] in ranges and \
                all(c.op_type == "QAttention" for o in n.output for c in consumers.get(o, [])):
            lo, hi = ranges[n.input[0]]
            lo, hi = min(lo, 0.0), max(hi, 0.0)
            scale = max(hi - lo, 1e-8) / 255.0
            zp = int(np.clip(round(-lo / scale), 0, 255))
            y, y_scale, y_zp = n.output
            g.initializer.extend([numpy_helper.from_array(np.array(scale, np.float32), y_scale),
                                  numpy_helper.from_array(np.array(zp, np.uint8), y_zp)])
            nodes.append(helper.make_node("QuantizeLinear", [n.input[0], y_scale, y_zp], [y],
                                          name=(n.name or y) + "_static"))
            replaced += 1
        else:
            nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    left = sum(1 for n in g.node if n.op_type == "DynamicQuantizeLinear")
    if left:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"{left} DynamicQuantizeLinear nodes left after static QAttention rewrite of {path.name}")
    onnx.save(m, str(path))
    tmp.unlink(missing_ok=True)
    return {"op": "QAttention", "input": "QUInt8 per-tensor, MinMax (non-padding positions)",
            "weights": "QInt8 per-column, 7-bit (reduce_range)", "nodes": replaced}
