"""`python -m runtime.predict --artifact ART [--policy P] [--threshold T | --exit-layer K] TEXT [TEXT_B]`"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from .backends import BACKENDS, BackendError
from .manifest import ArtifactError
from .policies import POLICIES, PolicyError
from .tokenize import InputError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m runtime.predict",
                                description="Predict with early exit from an exported artifact.")
    p.add_argument("--artifact", required=True, help="artifact folder written by `python -m export.build`")
    p.add_argument("--policy", choices=list(POLICIES), default=None,
                   help="exit policy (default: the manifest's calibrated default)")
    p.add_argument("--threshold", type=float, default=None,
                   help="confidence/lte: exit when the signal >= T; entropy: when <= T; patience (regression): tolerance")
    p.add_argument("--exit-layer", type=int, default=None, help="fixed policy: exit at this 1-based layer")
    p.add_argument("--patience", type=int, default=None, help="patience policy: consecutive agreeing layers")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all cores)")
    p.add_argument("--backend", default="cpu", choices=list(BACKENDS),
                   help="cpu (measured); cuda / ort-tensorrt need onnxruntime-gpu; tensorrt runs the artifact's "
                        "TensorRT engines (export --tensorrt). GPU backends are not measured in this project")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--input", default=None,
                   help="UTF-8 file, one input per line ('text' or 'text_a<TAB>text_b'); prints JSON lines")
    p.add_argument("--batch-size", type=int, default=32, help="rows per batch with --input (early exit per row)")
    p.add_argument("text", nargs="?", default=None, help="the text (first text of a pair task)")
    p.add_argument("text_b", nargs="?", default=None, help="second text, for pair tasks (RTE, MRPC, STS-B, SICK)")
    a = p.parse_args(argv)
    if (a.input is None) == (a.text is None):
        p.error("give either TEXT [TEXT_B] or --input FILE")
    if a.batch_size < 1:
        p.error("--batch-size must be >= 1")
    return a


def _read_inputs(path: str, text_pair: bool) -> tuple[list[str], list[str] | None]:
    try:
        raw = open(path, "rb").read()
    except OSError as e:
        raise InputError(f"cannot read --input '{path}': {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"--input '{path}' is not valid UTF-8 (byte {e.start}); save it as UTF-8.") from None
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise InputError(f"--input '{path}' holds no text.")
    a, b = [], []
    for i, ln in enumerate(lines, 1):
        parts = ln.split("\t")
        if text_pair and len(parts) != 2:
            raise InputError(f"--input line {i}: this task takes two tab-separated texts, found {len(parts)}.")
        if not text_pair and len(parts) != 1:
            raise InputError(f"--input line {i}: this task takes one text per line, found a tab.")
        a.append(parts[0])
        if text_pair:
            b.append(parts[1])
    return a, (b if text_pair else None)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    from .session import EarlyExitModel  # after argument checks: --help stays instant

    try:
        model = EarlyExitModel(args.artifact, threads=args.threads, backend=args.backend)
        if args.policy is None and any(v is not None for v in (args.threshold, args.exit_layer, args.patience)):
            raise PolicyError("--threshold/--exit-layer/--patience need --policy.")
        policy = model.policy(args.policy, threshold=args.threshold, exit_layer=args.exit_layer,
                              patience=args.patience) if args.policy else model.policy()
        if args.input is not None:
            a, b = _read_inputs(args.input, model.task.text_pair)
            for s in range(0, len(a), args.batch_size):
                t0 = time.perf_counter()
                preds = model.predict(a[s:s + args.batch_size], None if b is None else b[s:s + args.batch_size],
                                      policy=policy)
                ms = (time.perf_counter() - t0) * 1e3
                for j, pr in enumerate(preds):
                    print(json.dumps({"row": s + j, "label": pr.label, "score": pr.score, "exit_layer": pr.exit_layer,
                                      "signals": pr.signals, "truncated": pr.truncated,
                                      "batch_latency_ms": round(ms, 3)}))
            return 0
        t0 = time.perf_counter()
        pred = model.predict([args.text], None if args.text_b is None else [args.text_b], policy=policy)[0]
        ms = (time.perf_counter() - t0) * 1e3
    except (ArtifactError, PolicyError, InputError, BackendError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = {"task": model.task.name, "policy": policy.describe(), "label": pred.label, "score": pred.score,
           "exit_layer": pred.exit_layer, "num_layers": model.num_layers, "logits": pred.logits,
           "signals": pred.signals, "truncated": pred.truncated, "latency_ms": round(ms, 3)}
    if args.json:
        print(json.dumps(out))
    else:
        what = f"label={pred.label}" if pred.label is not None else f"score={pred.score:.4f}"
        print(f"{what}  exit_layer={pred.exit_layer}/{model.num_layers}  policy={policy.describe()}  "
              f"time={ms:.2f} ms" + ("  (input truncated)" if pred.truncated else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
