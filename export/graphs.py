"""torch modules that become the artifact's graphs, and their ONNX export.

Each wrapper calls the MultiExitModel's own building blocks (embed / layer / head / lte), so a
graph computes exactly what training evaluated. No graph has control flow: every stage graph
always computes its exit head; the host decides.

    EmbeddingsGraph   (input_ids, token_type_ids) -> hidden_states
    StageGraph(a, b)  layers a..b (0-based, inclusive) and the exit head of layer b; with every
                      layer an exit, a == b (one layer per graph). Two head layouts:
        "logits"  (hidden_states, attention_mask[, pool_weights]) -> hidden_states_out, head
                  head = [logits | LTE logit] [B, C (+1)] from ONE Gemm over the pooled state;
                  the host derives confidence, entropy (softmax) and lte (sigmoid) from it.
                  Mean pooling reads pool_weights = mask / mask.sum() [B, 1, S], computed once
                  per batch by the host instead of in every graph. Three ops after the layer.
        "signals" (hidden_states, attention_mask) -> hidden_states_out, logits, confidence,
                  entropy, lte: every signal in the graph (about 17 small ops after the layer,
                  each paying onnxruntime's per-node dispatch; TensorRT engines use this one)
    MonolithicGraph   (input_ids, token_type_ids, attention_mask) -> the last layer's logits, as
                      a plain deployment without early exit would run it
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from runtime import manifest as M
from train.model import MultiExitModel, additive_mask, exit_signals

OPSET = 17


def signal_names(model: MultiExitModel) -> list[str]:
    names = [M.CONFIDENCE, M.ENTROPY] if model.cfg.kind == "classification" else []
    return names + ([M.LTE] if model.cfg.lte else [])


HEAD_LAYOUTS = ("logits", "signals")


def _head_outputs(model: MultiExitModel, i: int, hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The "signals" layout: logits and every exit signal, computed in the graph."""
    pooled = model.pool(hidden, mask)  # [B, H]
    logits = model.head(i, pooled)  # [B, C]
    outs = [logits]
    if model.cfg.kind == "classification":
        outs += list(exit_signals(logits))  # confidence [B], entropy [B]
    if model.cfg.lte:
        outs.append(model.lte(pooled))  # [B]
    return tuple(outs)


def head_weights(model: MultiExitModel, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exit head i and the LTE head stacked into one linear map: W [C (+1), H], b [C (+1)]."""
    w, b = model.heads[i].weight, model.heads[i].bias
    if model.cfg.lte:
        w, b = torch.cat([w, model.lte_head.weight]), torch.cat([b, model.lte_head.bias])
    return w, b


def lean_head(model: MultiExitModel, i: int, hidden: torch.Tensor, pool_weights: torch.Tensor | None) -> torch.Tensor:
    """The "logits" layout: [logits | LTE logit] [B, C (+1)] of 0-based layer i."""
    if pool_weights is None:  # cls pooling
        pooled = hidden[:, 0]
    else:  # [B, 1, S] x [B, S, H] -> [B, H]: one batched GEMM
        pooled = torch.bmm(pool_weights, hidden).squeeze(1)
    w, b = head_weights(model, i)
    return nn.functional.linear(pooled, w, b)


class EmbeddingsGraph(nn.Module):
    def __init__(self, model: MultiExitModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed(input_ids, token_type_ids)


class StageGraph(nn.Module):
    """Transformer layers first..last (0-based, inclusive) + the exit head of `last`. The additive
    mask is built inside the graph from the int64 mask (what lets onnxruntime fuse attention)."""

    def __init__(self, model: MultiExitModel, first: int, last: int, head: str = "logits"):
        super().__init__()
        self.model, self.first, self.last, self.layout = model, first, last, head

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor,
                pool_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        ext = additive_mask(attention_mask, hidden_states.dtype)
        h = hidden_states
        for i in range(self.first, self.last + 1):
            h = self.model.layer(i, h, ext)
        if self.layout == "signals":
            return (h,) + _head_outputs(self.model, self.last, h, attention_mask)
        return h, lean_head(self.model, self.last, h, pool_weights)


class MonolithicGraph(nn.Module):
    """The first `num_layers` layers in one graph, with the last one's head: the reference a
    plain (no early exit) deployment would run."""

    def __init__(self, model: MultiExitModel, num_layers: int):
        super().__init__()
        self.model, self.n = model, num_layers

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = self.model.embed(input_ids, token_type_ids)
        ext = additive_mask(attention_mask, h.dtype)
        for i in range(self.n):
            h = self.model.layer(i, h, ext)
        return self.model.head(self.n - 1, self.model.pool(h, attention_mask))


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
            dynamic: dict[str, dict[int, str]]) -> None:
    # The TorchScript exporter (dynamo=False): 4x faster here and its graphs keep the mask
    # pattern onnxruntime's attention fusion matches (../shared/PROBE.md).
    # Wrappers are new modules (training mode by default); the exporter restores the wrapper's
    # mode afterwards, recursively, so an un-eval'ed wrapper would leave the model training.
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=dynamic, opset_version=OPSET, do_constant_folding=True, dynamo=False)


def uses_pool_weights(model: MultiExitModel, head: str) -> bool:
    return head == "logits" and model.cfg.pooling == "mean"


def head_width(model: MultiExitModel) -> int:
    return model.cfg.num_outputs + (1 if model.cfg.lte else 0)


def export_graphs(model: MultiExitModel, num_layers: int, out_dir: Path, monolithic: bool = True,
                  exits: list[int] | None = None, head: str = "logits") -> dict[str, dict]:
    """Write embeddings.onnx, one layer_XX.onnx per exit layer XX (default: every layer 1..num_layers)
    and monolithic.onnx into out_dir. Returns role -> {"file", "inputs", "outputs"[, "layers"]}
    (names, dtypes, symbolic shapes; `layers`: the 1-based first and last layer a stage runs)."""
    if head not in HEAD_LAYOUTS:
        raise ValueError(f"head layout must be one of {HEAD_LAYOUTS}, got {head!r}")
    exits = list(range(1, num_layers + 1)) if exits is None else list(exits)
    model.eval()
    h, c = model.backbone.config.hidden_size, model.cfg.num_outputs
    b, s = 2, 8  # example shapes; batch and sequence stay dynamic
    ids = torch.randint(5, 50, (b, s), dtype=torch.long)
    tt = torch.zeros((b, s), dtype=torch.long)
    mask = torch.ones((b, s), dtype=torch.long)
    mask[1, 5:] = 0
    hidden = torch.randn(b, s, h)
    pw = (mask / mask.sum(dim=1, keepdim=True)).unsqueeze(1).float()  # [B, 1, S]
    sig = signal_names(model)
    bs = {0: "batch", 1: "sequence"}
    vec = {0: "batch"}
    t_int = {"dtype": "int64", "shape": ["batch", "sequence"]}
    t_hid = {"dtype": "float32", "shape": ["batch", "sequence", h]}
    t_logits = {M.LOGITS: {"dtype": "float32", "shape": ["batch", c]}}
    if head == "signals":
        small_out = {**t_logits, **{n: {"dtype": "float32", "shape": ["batch"]} for n in sig}}
        dyn_small = {M.LOGITS: vec, **{n: vec for n in sig}}
    else:
        small_out = {M.HEAD: {"dtype": "float32", "shape": ["batch", head_width(model)]}}
        dyn_small = {M.HEAD: vec}
    stage_in = [M.HIDDEN_IN, M.ATTENTION_MASK] + ([M.POOL_WEIGHTS] if uses_pool_weights(model, head) else [])
    stage_in_spec = {M.HIDDEN_IN: t_hid, M.ATTENTION_MASK: t_int,
                     M.POOL_WEIGHTS: {"dtype": "float32", "shape": ["batch", 1, "sequence"]}}
    stage_args = (hidden, mask, pw) if uses_pool_weights(model, head) else (hidden, mask)
    emb_inputs = [M.INPUT_IDS] + ([M.TOKEN_TYPE_IDS] if model.uses_token_types else [])
    roles: dict[str, dict] = {}

    with torch.no_grad():
        emb = EmbeddingsGraph(model)
        emb_args = (ids, tt) if model.uses_token_types else (ids,)
        if not model.uses_token_types:  # no token-type input: the graph takes input_ids only
            emb = _NoTokenTypes(emb)
        _export(emb, emb_args, out_dir / M.EMBEDDINGS_GRAPH, emb_inputs, [M.HIDDEN_IN],
                {**{n: bs for n in emb_inputs}, M.HIDDEN_IN: bs})
        roles[M.EMBEDDINGS] = {"file": M.EMBEDDINGS_GRAPH, "inputs": {n: t_int for n in emb_inputs},
                               "outputs": {M.HIDDEN_IN: t_hid}}
        prev = 0
        for x in exits:
            f = M.layer_graph_name(x)
            dyn = {M.HIDDEN_IN: bs, M.ATTENTION_MASK: bs, M.HIDDEN_OUT: bs, M.POOL_WEIGHTS: {0: "batch", 2: "sequence"},
                   **dyn_small}
            _export(StageGraph(model, prev, x - 1, head), stage_args, out_dir / f, stage_in,
                    [M.HIDDEN_OUT, *small_out], {k: v for k, v in dyn.items() if k in stage_in or k != M.POOL_WEIGHTS})
            roles[M.layer_role(x)] = {"file": f, "inputs": {n: stage_in_spec[n] for n in stage_in},
                                      "outputs": {M.HIDDEN_OUT: t_hid, **small_out}, "layers": [prev + 1, x]}
            prev = x
        if monolithic:
            mono = MonolithicGraph(model, num_layers)
            mono_inputs = emb_inputs + [M.ATTENTION_MASK]
            args = (ids, tt, mask) if model.uses_token_types else (ids, mask)
            if not model.uses_token_types:
                mono = _NoTokenTypes(mono)
            _export(mono, args, out_dir / M.MONOLITHIC_GRAPH, mono_inputs, [M.LOGITS],
                    {**{n: bs for n in mono_inputs}, M.LOGITS: vec})
            roles[M.MONOLITHIC] = {"file": M.MONOLITHIC_GRAPH, "inputs": {n: t_int for n in mono_inputs},
                                   "outputs": t_logits}
    return roles


class _NoTokenTypes(nn.Module):
    """Drops the token_type_ids argument for backbones without token types (RoBERTa)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids: torch.Tensor, *rest: torch.Tensor):
        if isinstance(self.inner, MonolithicGraph):
            return self.inner(input_ids, torch.zeros_like(input_ids), *rest)
        return self.inner(input_ids, torch.zeros_like(input_ids))
