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


def fuse(path: Path, num_heads: int, hidden_size: int) -> dict[str, int]:
    """Fuse `path` in place with onnxruntime's BERT optimizer; returns fused-operator counts."""
    from onnxruntime.transformers.optimizer import optimize_model

    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    opt = optimize_model(str(path), model_type="bert", num_heads=num_heads, hidden_size=hidden_size,
                         opt_level=0, use_gpu=False)
    stats = {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}
    opt.save_model_to_file(str(path))
    return stats


def quantize_int8(path: Path) -> None:
    """Dynamic int8 quantization in place: per-channel weights (per-tensor was inaccurate on
    AVX2 CPUs), with a default tensor type so fused graphs quantize at all."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = path.with_suffix(".int8.onnx")
    quantize_dynamic(str(path), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul", "Attention"],
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    tmp.replace(path)


def op_counts(path: Path) -> dict[str, int]:
    import onnx
    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
