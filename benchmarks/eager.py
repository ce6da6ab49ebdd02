"""`python -m benchmarks.eager --latency DIR/latency.json [--checkpoint CKPT]`

PyTorch eager early exit (what research code runs) at the exit decisions of the latency
benchmark's sweep rows, timed in a process where no onnxruntime session exists, and compared
with the onnxruntime chain latencies that latency.json recorded for the same rows.

Why a process of its own: with onnxruntime's thread pool alive in the same process, eager torch
ran 2.7x slower on this 2-core machine (18.4 vs 50.0 ms for the same RTE rows, measured), even
with pauses between calls, so in-process interleaving would flatter onnxruntime. The price is a
cross-process ratio: separate processes drift by up to ~15% here (../shared/PROBE.md).
The decisions are recomputed from the checkpoint's PyTorch outputs with the runtime's own
policy code (the same thresholds; their agreement with the runtime is tested).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from runtime.cli import HelpFormatter, positive_int


def run(latency_json: Path, checkpoint: str | None, data_dir: str | None, repeats: int) -> list[dict]:
    import torch

    from runtime.datasets import load_split
    from runtime.policies import LayerOutputs, make_policy, simulate
    from runtime.tokenize import TextEncoder
    from train.model import additive_mask, exit_signals, load_checkpoint

    from .timing import interleaved, percentiles

    res = json.loads(latency_json.read_text())
    art = Path(res["artifact"])
    manifest = json.loads((art / "manifest.json").read_text())
    ckpt = checkpoint or manifest.get("source", {}).get("checkpoint")
    if not ckpt or not Path(ckpt).is_dir():
        raise FileNotFoundError(f"checkpoint '{ckpt}' not found; pass --checkpoint.")
    threads = res["env"]["threads"]
    torch.set_num_threads(threads)
    model, _ = load_checkpoint(ckpt)
    task = manifest["task"]
    enc = TextEncoder(art / "tokenizer.json", manifest["max_seq_len"], task["text_pair"],
                      manifest["tokenizer"].get("pad_token_id"))
    dev = load_split(task["name"], "dev", data_dir).head(res["samples"])
    n, L = len(dev), res["num_layers"]
    exits = list(res.get("exits") or range(1, L + 1))
    rows = [enc.encode([dev.text_a[i]], None if dev.text_b is None else [dev.text_b[i]]) for i in range(n)]
    tens = [tuple(torch.from_numpy(a) for a in (e.input_ids, e.token_type_ids, e.attention_mask)) for e in rows]

    def forward(i: int, exit_layer: int, collect: list | None = None):
        ids, tt, mask = tens[i]
        with torch.inference_mode():
            h = model.embed(ids, tt)
            ext = additive_mask(mask, h.dtype)
            for k in range(exit_layer):
                h = model.layer(k, h, ext)
                if k + 1 not in exits:  # no exit head at this layer
                    continue
                pooled = model.pool(h, mask)
                logits = model.head(k, pooled)
                conf, ent = exit_signals(logits) if model.cfg.kind == "classification" else (None, None)
                lte = model.lte(pooled) if model.cfg.lte else None
                if collect is not None:
                    collect.append((logits, conf, ent, lte))
        return logits

    # Per-layer outputs of every row (batch 1), then the sweep rows' decisions.
    outs = []
    for i in range(n):
        c: list = []
        forward(i, L, c)
        outs.append(c)
    np_ = lambda t: None if t is None else t.numpy()  # noqa: E731
    per_layer = [LayerOutputs(np.concatenate([np_(o[k][0]) for o in outs]),
                              *(None if outs[0][k][j] is None else np.concatenate([np_(o[k][j]) for o in outs])
                                for j in (1, 2, 3))) for k in range(len(exits))]
    signals = [s for s, j in (("confidence", 1), ("entropy", 2), ("lte", 3)) if outs[0][0][j] is not None]
    picks = [("full depth", np.full(n, L), res["full_chain"]["latency_ms_mean"])]
    sweep = res["sweep"]
    chosen = sorted({0, len(sweep) // 2, len(sweep) - 1} | {j for j, s in enumerate(sweep) if s.get("calibrated_default")})
    for j in chosen:
        s = sweep[j]
        pol = make_policy(s["policy"], task_kind=task["kind"], num_layers=L, signals=signals,
                          num_classes=max(len(task["labels"]), 2), threshold=s["threshold"],
                          per_layer=s.get("per_layer_thresholds"), exits=exits)
        picks.append((pol.describe(), simulate(pol, per_layer, task["kind"]), s["latency_ms_mean"]))
    variants = {str(k): (lambda ex: lambda i: forward(i, int(ex[i])))(ex) for k, (_, ex, _) in enumerate(picks)}
    med = interleaved(variants, n, repeats)
    out = []
    for k, (name, ex, onnx_ms) in enumerate(picks):
        e = med[str(k)]
        out.append({"decisions": name, "avg_exit_layer": float(ex.mean()), "eager": percentiles(e),
                    "onnx_chain_latency_ms_mean": onnx_ms, "speedup_onnx_vs_eager": float(e.mean() / onnx_ms),
                    "timing": "eager in its own process (no onnxruntime session); onnx from latency.json's main "
                              "block; cross-process ratio"})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(formatter_class=HelpFormatter, prog="python -m benchmarks.eager")
    p.add_argument("--latency", required=True, help="latency.json written by benchmarks.latency")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--repeats", type=positive_int, default=2)
    a = p.parse_args(argv)
    path = Path(a.latency)
    try:
        rows = run(path, a.checkpoint, a.data_dir, a.repeats)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    res = json.loads(path.read_text())
    res["eager"] = rows
    res["eager_command"] = "python -m benchmarks.eager " + " ".join(sys.argv[1:] if argv is None else argv)
    path.write_text(json.dumps(res, indent=2) + "\n")
    for r in rows:
        print(f"eager at {r['decisions']}: {r['eager']['latency_ms_mean']:.2f} ms vs onnx chain "
              f"{r['onnx_chain_latency_ms_mean']:.2f} ms ({r['speedup_onnx_vs_eager']:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
