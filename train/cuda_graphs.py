"""A CUDA backend over the same per-layer split as the ONNX artifact, for GPUs without TensorRT.

    embeddings -> [layer 1 + head + signals -> copy C+3 floats to pinned host] -> decide -> ...

Each piece of the split (embeddings; layer i with its exit head and exit signals) is captured
once per (batch, sequence bucket) as a CUDA graph and replayed: one launch per layer instead of
dozens of kernel launches. The exit signals (logits, confidence, entropy, LTE certainty) are
computed on the device, and each layer's graph ends with one copy of those B x (C + 3) floats
into pinned host memory; the host waits on an event for that copy only, runs the same `decide`
as every other backend (runtime/chain.py drives it: it is a runtime Backend), and replays the
next layer's graph. Rows that exit leave the batch (the survivors move to the smaller batch's
buffers on the device). The monolithic reference (all layers + the last head) is captured as one
graph of the same pieces.

With `capture=False` the same pieces run eagerly (also on the CPU): that is how the tests check
this backend's results without a GPU, and on a GPU it is the "eager per-layer" baseline.

It lives in train/ because it runs the training code's model (runtime/ never imports torch).

Measured on a GPU only by `python -m benchmarks.gpu` (results/gpu/); see the README for what has
and has not been run.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np

from runtime.backends.base import Backend, StageOutputs, Workspace
from runtime.chain import Chain

if TYPE_CHECKING:  # pragma: no cover
    import torch

SEQ_BUCKETS = (16, 32, 64, 128, 256, 512)

# Backbone shapes for timing without a checkpoint (random weights; quality is not measured).
CONFIGS = {
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "minilm-l6": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37),
}


def seq_bucket(length: int, max_len: int, buckets: tuple[int, ...] = SEQ_BUCKETS) -> int:
    """The padded length a batch whose longest row has `length` tokens runs at."""
    if length < 1:
        raise ValueError("a batch needs at least one token per row")
    if length > max_len:
        raise ValueError(f"{length} tokens exceed the model's maximum of {max_len}")
    for b in buckets:
        if b >= length:
            return min(b, max_len)
    return max_len


def random_model(config: str, *, num_labels: int = 2, lte: bool = True, max_len: int = 512, seed: int = 0):
    """A MultiExitModel of a named backbone shape with random weights (for timing only)."""
    import torch
    from transformers import BertConfig, BertModel

    from .model import ExitConfig, MultiExitModel

    if config not in CONFIGS:
        raise ValueError(f"unknown config '{config}'; choose one of {', '.join(CONFIGS)}")
    torch.manual_seed(seed)
    c = BertConfig(vocab_size=30522, max_position_embeddings=max_len, type_vocab_size=2, **CONFIGS[config])
    backbone = BertModel(c, add_pooling_layer=False)
    cfg = ExitConfig(task="sst2", kind="classification", num_outputs=num_labels,
                     num_layers=c.num_hidden_layers, lte=lte, pooling="mean")
    return MultiExitModel(backbone, cfg)


class _Piece:
    """One piece of the split: a function over static tensors, eager or replayed as a CUDA graph."""

    def __init__(self, fn: Callable[[], None]):
        self.fn, self.graph = fn, None

    def capture(self, pool) -> None:
        import torch
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the capture stream, as torch requires
            for _ in range(2):
                self.fn()
        torch.cuda.current_stream().wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=pool):
            self.fn()
        self.graph = g

    def __call__(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        else:
            self.fn()


class _Bucket:
    """Static device tensors, pinned host signals and the captured pieces for one (batch, seq)."""

    def __init__(self, ex: "CudaGraphChain", b: int, s: int):
        import torch

        from .model import additive_mask

        m, dev, L, K = ex.model, ex.device, ex.num_layers, ex.width
        h = m.backbone.config.hidden_size
        self.b, self.s = b, s
        self.ids = torch.zeros(b, s, dtype=torch.long, device=dev)
        self.tt = torch.zeros(b, s, dtype=torch.long, device=dev)
        self.mask = torch.zeros(b, s, dtype=torch.long, device=dev)
        self.ext = torch.zeros(b, 1, 1, s, dtype=ex.dtype, device=dev)
        self.hidden = torch.zeros(2, b, s, h, dtype=ex.dtype, device=dev)
        self.sig = torch.zeros(L, b, K, dtype=torch.float32, device=dev)
        pin = dev.type == "cuda"
        self.host = torch.zeros(L, b, K, dtype=torch.float32, pin_memory=pin)
        self.host_np = self.host.numpy()  # views: what the policy reads, no copy
        self.mono_sig = torch.zeros(b, K, dtype=torch.float32, device=dev)
        self.mono_host = torch.zeros(b, K, dtype=torch.float32, pin_memory=pin)
        self.events = [torch.cuda.Event() for _ in range(L + 1)] if pin else None

        def emb():
            self.ext.copy_(additive_mask(self.mask, ex.dtype))
            self.hidden[0].copy_(m.embed(self.ids, self.tt))

        def layer(i: int) -> Callable[[], None]:  # 0-based layer i reads hidden[i % 2], writes hidden[(i + 1) % 2]
            def run():
                out = m.layer(i, self.hidden[i % 2], self.ext)
                self.hidden[(i + 1) % 2].copy_(out)
                self.sig[i].copy_(ex.signals(i, out, self.mask))
                self.host[i].copy_(self.sig[i], non_blocking=True)
            return run

        def mono():
            x = m.embed(self.ids, self.tt)
            ext = additive_mask(self.mask, ex.dtype)
            for i in range(L):
                x = m.layer(i, x, ext)
            self.mono_sig.copy_(ex.signals(L - 1, x, self.mask))
            self.mono_host.copy_(self.mono_sig, non_blocking=True)

        self.emb = _Piece(emb)
        self.layers = [_Piece(layer(i)) for i in range(L)]
        self.mono = _Piece(mono)
        if ex.capture:
            with torch.inference_mode():
                for p in [self.emb, *self.layers, self.mono]:
                    p.capture(ex.pool)

    def wait(self, i: int) -> None:
        """Block until piece i's copy to the host has landed (an event, not a device-wide sync)."""
        if self.events is not None:
            self.events[i].record()
            self.events[i].synchronize()


class CudaGraphBackend(Backend):
    """CUDA graphs of a MultiExitModel's per-layer split, as a runtime backend (one workspace:
    the captured graphs share their static buffers)."""

    name = "cuda-graphs"
    max_workspaces = 1

    def __init__(self, model, *, device: str = "cuda", dtype: str = "fp16", capture: bool | None = None,
                 max_len: int | None = None):
        import torch

        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("CudaGraphChain(device='cuda') needs a CUDA build of PyTorch and a GPU; "
                               "this torch has none (use device='cpu', capture=False to check results on the CPU).")
        self.capture = (self.device.type == "cuda") if capture is None else capture
        if self.capture and self.device.type != "cuda":
            raise ValueError("CUDA graphs need device='cuda'")
        if dtype not in ("fp16", "bf16", "fp32"):
            raise ValueError(f"dtype must be fp16, bf16 or fp32, not '{dtype}'")
        self.dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
        model.backbone.config._attn_implementation = "sdpa" if self.device.type == "cuda" else "eager"
        self.model = model.eval().to(self.device, self.dtype)
        self.kind = model.cfg.kind
        self.num_layers = model.cfg.num_layers
        self.num_outputs = model.cfg.num_outputs
        self.width = self.num_outputs + 3  # logits, confidence, entropy, lte
        self.signal_names = (("confidence", "entropy") if self.kind == "classification" else ()) + \
            (("lte",) if model.lte_head is not None else ())
        self.max_len = max_len or int(model.backbone.config.max_position_embeddings)
        self.pool = torch.cuda.graph_pool_handle() if self.capture else None
        self._buckets: dict[tuple[int, int], _Bucket] = {}

    # -- the exit head on the device -------------------------------------------------------
    def signals(self, i: int, hidden: "torch.Tensor", mask: "torch.Tensor") -> "torch.Tensor":
        """[B, C + 3] float32: logits, confidence, entropy, LTE certainty of 0-based layer i."""
        import torch

        from .model import exit_signals

        m = self.model
        pooled = m.pool(hidden, mask)
        logits = m.head(i, pooled).float()
        b = logits.shape[0]
        zero = torch.zeros(b, device=logits.device)
        conf, ent = exit_signals(logits) if self.kind == "classification" else (zero, zero)
        lte = m.lte(pooled).float() if m.lte_head is not None else zero
        return torch.cat([logits, conf[:, None], ent[:, None], lte[:, None]], dim=1)

    def _outputs(self, row: np.ndarray) -> StageOutputs:
        c = self.num_outputs
        cols = {"confidence": c, "entropy": c + 1, "lte": c + 2}
        return StageOutputs(row[:, :c], {n: row[:, cols[n]] for n in self.signal_names})

    def workspace(self) -> "_CudaWorkspace":
        return _CudaWorkspace(self)

    def chain(self) -> Chain:
        """The early-exit loop over this backend (every layer an exit)."""
        return Chain(self, tuple(range(1, self.num_layers + 1)), self.kind, self.num_outputs, self.signal_names)

    def bucket(self, b: int, s: int) -> _Bucket:
        key = (b, s)
        if key not in self._buckets:
            self._buckets[key] = _Bucket(self, b, s)
        return self._buckets[key]

    def _load(self, input_ids: np.ndarray, token_type_ids: np.ndarray | None, attention_mask: np.ndarray) -> _Bucket:
        import torch
        b, s0 = input_ids.shape
        lengths = attention_mask.sum(axis=1)
        s = seq_bucket(int(lengths.max()), self.max_len)
        buf = self.bucket(b, s)
        for dst, src in ((buf.ids, input_ids), (buf.tt, token_type_ids), (buf.mask, attention_mask)):
            n = min(s, s0)
            dst.zero_()
            if src is not None:
                dst[:, :n].copy_(torch.from_numpy(np.ascontiguousarray(src[:, :n], dtype=np.int64)), non_blocking=True)
        return buf

    # -- running -----------------------------------------------------------------------------
    def run_layers(self, input_ids: np.ndarray, token_type_ids: np.ndarray | None, attention_mask: np.ndarray,
                   k: int | None = None, sync_each: bool = True) -> np.ndarray:
        """Embeddings + the first k layers (all by default), no decisions: [k, B, C + 3] signals.
        sync_each=True waits for each layer's signals as the early-exit chain does; False waits
        once at the end (the floor a chain of graphs could reach)."""
        import torch
        k = self.num_layers if k is None else k
        if not 1 <= k <= self.num_layers:
            raise ValueError(f"k must be in 1..{self.num_layers}")
        with torch.inference_mode():
            buf = self._load(input_ids, token_type_ids, attention_mask)
            buf.emb()
            for i in range(1, k + 1):
                buf.layers[i - 1]()
                if sync_each:
                    buf.wait(i)
            buf.wait(k)
            return buf.host_np[:k].copy()

    def run_monolithic(self, input_ids: np.ndarray, token_type_ids: np.ndarray | None,
                       attention_mask: np.ndarray) -> np.ndarray:
        """All layers in one graph, the last head: [B, C + 3] signals."""
        import torch
        with torch.inference_mode():
            buf = self._load(input_ids, token_type_ids, attention_mask)
            buf.mono()
            buf.wait(0)
            return buf.mono_host.numpy().copy()


class _CudaWorkspace(Workspace):
    """Drives the captured pieces for the chain: stage k replays layer k's graph and waits for its
    signals' copy; compaction moves the survivors into the smaller batch's bucket."""

    def __init__(self, ex: CudaGraphBackend):
        self.ex, self.buf, self.next = ex, None, 0  # next: the stage whose input is current

    def embed(self, input_ids, token_type_ids, attention_mask) -> None:
        import torch
        with torch.inference_mode():
            self.buf = self.ex._load(input_ids, token_type_ids, attention_mask)
            self.buf.emb()
        self.next = 0

    def run_stage(self, k: int) -> StageOutputs:
        import torch
        with torch.inference_mode():
            self.buf.layers[k]()
            self.buf.wait(k + 1)
        self.next = k + 1
        return self.ex._outputs(self.buf.host_np[k][: self.buf.b])

    def keep(self, rows: np.ndarray, seq: int) -> None:
        # The sequence bucket stays (captured shapes); layer k + 1 reads hidden[(k + 1) % 2].
        import torch
        with torch.inference_mode():
            buf, nbuf = self.buf, self.ex.bucket(len(rows), self.buf.s)
            idx = torch.from_numpy(np.asarray(rows, dtype=np.int64)).to(self.ex.device)
            j = self.next % 2  # layer `next` (0-based) reads hidden[next % 2]
            nbuf.hidden[j].copy_(buf.hidden[j].index_select(0, idx))
            nbuf.mask.copy_(buf.mask.index_select(0, idx))
            nbuf.ext.copy_(buf.ext.index_select(0, idx))
            self.buf = nbuf
