"""`python -m runtime.predict --artifact ART [--policy P] [--threshold T | --exit-layer K] TEXT [TEXT_B]`

Prints the label (or value), the exit layer and the time taken; `--json` prints one strict JSON
object, `--input FILE` one JSON line per input. A row whose model outputs are not finite gets
`"error"` (and null label/score) instead of an answer, and the exit code is 2.
"""
from __future__ import annotations

import json
import logging
import sys
import time

from .backends import BACKENDS, BackendError
from .cli import fail, finite_float, parser, positive_int
from .fsutil import ArtifactError
from .policies import POLICIES, PolicyError
from .tokenize import InputError


def parse_args(argv: list[str] | None = None):
    p = parser("python -m runtime.predict", "Predict with early exit from an exported artifact.")
    p.add_argument("--artifact", required=True, help="artifact folder written by `python -m export.build`")
    p.add_argument("--policy", choices=list(POLICIES), default=None,
                   help="exit policy (default: the manifest's calibrated default)")
    p.add_argument("--threshold", type=finite_float, default=None,
                   help="confidence/lte: exit when the signal >= T; entropy: when <= T; patience (regression): "
                        "the largest change between exits that counts as agreement")
    p.add_argument("--exit-layer", type=positive_int, default=None, help="fixed policy: exit at this 1-based layer")
    p.add_argument("--patience", type=positive_int, default=None, help="patience policy: consecutive agreeing exits")
    p.add_argument("--threads", type=positive_int, default=None, help="intra-op threads (default: all cores)")
    p.add_argument("--backend", default="cpu", choices=list(BACKENDS),
                   help="cpu: onnxruntime on the CPU (the measured path); cuda / ort-tensorrt: onnxruntime-gpu's "
                        "providers; tensorrt: the artifact's TensorRT engines (export --tensorrt). GPU backends "
                        "have not been measured")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--input", default=None,
                   help="UTF-8 file, one input per line ('text' or 'text_a<TAB>text_b'); prints JSON lines")
    p.add_argument("--batch-size", type=positive_int, default=32, help="rows per batch with --input (early exit per row)")
    p.add_argument("text", nargs="?", default=None, help="the text (first text of a pair task)")
    p.add_argument("text_b", nargs="?", default=None, help="second text, for pair tasks (RTE, MRPC, STS-B, SICK)")
    a = p.parse_args(argv)
    if (a.input is None) == (a.text is None):
        p.error("give either TEXT [TEXT_B] or --input FILE")
    if a.policy is None and any(v is not None for v in (a.threshold, a.exit_layer, a.patience)):
        p.error("--threshold/--exit-layer/--patience need --policy")
    return a


def read_inputs(path: str, text_pair: bool) -> tuple[list[str], list[str] | None]:
    """Lines of a UTF-8 file: one text, or two tab-separated texts for pair tasks."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
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
    from .model import EarlyExitModel  # after argument checks: --help stays instant

    try:
        # This process serves only this model: the shared thread pool is safe and fastest here.
        model = EarlyExitModel(args.artifact, threads=args.threads, backend=args.backend, thread_pool="shared",
                               load_monolithic=False)
        policy = model.policy(args.policy, threshold=args.threshold, exit_layer=args.exit_layer,
                              patience=args.patience) if args.policy else model.policy()
        if args.input is not None:
            a, b = read_inputs(args.input, model.task.text_pair)
            errors = 0
            for s in range(0, len(a), args.batch_size):
                t0 = time.perf_counter()
                preds = model.predict(a[s:s + args.batch_size], None if b is None else b[s:s + args.batch_size],
                                      policy=policy, batch_size=args.batch_size)
                ms = (time.perf_counter() - t0) * 1e3
                for j, pr in enumerate(preds):
                    errors += pr.error is not None
                    print(json.dumps({"row": s + j, **pr.to_json(), "batch_latency_ms": round(ms, 3)}, allow_nan=False))
            return 2 if errors else 0
        t0 = time.perf_counter()
        pred = model.predict([args.text], None if args.text_b is None else [args.text_b], policy=policy)[0]
        ms = (time.perf_counter() - t0) * 1e3
    except (ArtifactError, PolicyError, InputError, BackendError) as e:
        return fail(e)
    out = {"task": model.task.name, "policy": policy.describe(), **pred.to_json(), "num_layers": model.num_layers,
           "latency_ms": round(ms, 3)}
    if args.json:
        print(json.dumps(out, allow_nan=False))
    elif pred.error is None:
        what = f"label={pred.label}" if pred.label is not None else f"score={pred.score:.4f}"
        print(f"{what}  exit_layer={pred.exit_layer}/{model.num_layers}  policy={policy.describe()}  "
              f"time={ms:.2f} ms" + ("  (input truncated)" if pred.truncated else ""))
    if pred.error is not None:
        return fail(pred.error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
