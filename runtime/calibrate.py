"""`python -m runtime.calibrate --artifact ART --target-relative-score 0.99`

Chooses the default exit policy from calibration rows and writes it into the artifact's manifest
with what it guarantees (runtime/calibration.py has the methods, runtime/bounds.py the tests):

  --target-relative-score R   labelled rows (--task's dev split): the fastest threshold whose
                              score / full-depth score >= R with probability >= 1 - delta, as
                              scored on a new set of rows as large as the calibration rows
                              (--new-rows N for N rows, 'inf' for the distribution's own score;
                              paired bootstrap, fixed-sequence test; runtime/bounds.py)
  --target-agreement A        unlabelled rows too (--input texts.txt): the fastest threshold whose
                              answers equal the full-depth answers on >= A of new rows, with
                              probability >= 1 - delta (exact exchangeable test on the
                              disagreements: hypergeometric, a running maximum of the losses
                              along the threshold sequence; exact binomial with --new-rows inf);
                              regression: within --agreement-tolerance
  --target-avg-layer K        best score with average exit layer <= K (point estimate, no guarantee)
  --target-latency-ms X       best score (or agreement) whose predicted mean batch-1 latency <= X ms,
                              from per-exit costs measured here on the artifact (reported against
                              a measurement of the chosen policy)

--method point keeps the old choice (the fastest threshold meeting the target on the rows
themselves: optimistic on new rows). --evaluate runs repeated random splits instead and reports
how often each method's target held on the held-out part (runtime/calib_eval.py).
The runtime's own graphs and exit rules are used, so what is calibrated is what runs.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from .calib_eval import evaluate, format_table
from .calibration import SIGNAL_POLICIES, Judge, Target, calibrate
from .cli import finite_float, nonneg_float, parser, positive_int, unit_float
from .datasets import load_split
from .manifest import ArtifactError, write_manifest
from .model import EarlyExitModel
from .policies import LayerOutputs, PolicyError, simulate
from .tasks import get_task
from .tokenize import InputError


def new_rows_arg(v: str) -> float:
    """--new-rows: a whole number >= 1, or 'inf'."""
    if v.strip().lower() in ("inf", "infinity"):
        return float("inf")
    try:
        n = int(v)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1 or 'inf', got {v!r}")
    return float(n)


def split_layer_outputs(model: EarlyExitModel, text_a, text_b, batch_size: int = 32) -> list[LayerOutputs]:
    """All layers' outputs for a whole split, in row order (batches of similar length)."""
    n = len(text_a)
    order = np.argsort([len(t) + (len(text_b[i]) if text_b else 0) for i, t in enumerate(text_a)], kind="stable")
    parts: list[list[LayerOutputs]] = []
    for s in range(0, n, batch_size):
        idx = order[s:s + batch_size]
        enc = model.encode([text_a[i] for i in idx], None if text_b is None else [text_b[i] for i in idx])
        parts.append(model.layer_outputs(enc))
    inv = np.argsort(order)
    cat = lambda k, i: None if getattr(parts[0][i], k) is None else np.concatenate([getattr(p[i], k) for p in parts])[inv]  # noqa: E731
    return [LayerOutputs(cat("logits", i), cat("confidence", i), cat("entropy", i), cat("lte", i))
            for i in range(model.manifest.num_exits)]


def read_texts(path: str, text_pair: bool) -> tuple[list[str], list[str] | None]:
    """One text per line; a pair task takes `text_a<TAB>text_b` lines. Blank lines are skipped."""
    a, b = [], []
    with open(path, encoding="utf-8") as f:
        for no, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.split("\t")
            if text_pair:
                if len(parts) != 2:
                    raise InputError(f"{path}:{no}: this model takes text pairs: write 'first<TAB>second' on each "
                                     f"line (got {len(parts)} field(s)).")
                a.append(parts[0].strip())
                b.append(parts[1].strip())
            else:
                a.append(line.strip())
    if not a:
        raise InputError(f"{path} holds no text; write one text (or tab-separated pair) per line.")
    return a, (b if text_pair else None)


def measure_costs(model: EarlyExitModel, text_a, text_b, rows: int = 24, repeats: int = 3) -> dict:
    """Mean batch-1 ms of a row leaving at each exit (forced exits, interleaved over `rows` rows
    spread over the lengths), the embeddings alone, and the per-stage differences."""
    from .place_exits import _time
    n = len(text_a)
    pick = np.unique(np.linspace(0, n - 1, min(rows, n)).round().astype(int))
    encs = [model.encode([text_a[i]], None if text_b is None else [text_b[i]]) for i in pick]
    ch, E = model.chain, model.manifest.num_exits

    def embed(i):
        e = encs[i]
        ch.abandon(ch.start(e.input_ids, e.token_type_ids, e.attention_mask, model.policy("fixed", exit_layer=model.num_layers)))

    fns = {"embeddings": embed}
    for x in model.exits:
        fns[f"exit_{x}"] = (lambda p: lambda i: model.run(encs[i], p))(model.policy("fixed", exit_layer=x))
    t = _time(fns, len(encs), repeats)
    cum = [t[f"exit_{x}"] for x in model.exits]
    stage = [max(0.0, c - p) for c, p in zip(cum, [t["embeddings"]] + cum[:-1])]
    return {"embeddings_ms": t["embeddings"], "stage_ms": stage, "exit_ms": cum, "rows": len(encs),
            "repeats": repeats, "threads": model.threads}


def measure_policy_ms(model: EarlyExitModel, policy, text_a, text_b, rows: int = 24, repeats: int = 3) -> float:
    from .place_exits import _time
    n = len(text_a)
    pick = np.unique(np.linspace(0, n - 1, min(rows, n)).round().astype(int))
    encs = [model.encode([text_a[i]], None if text_b is None else [text_b[i]]) for i in pick]
    return _time({"p": lambda i: model.run(encs[i], policy)}, len(encs), repeats)["p"], pick


def parse_args(argv=None) -> argparse.Namespace:
    p = parser("python -m runtime.calibrate", "Calibrate the default exit policy.")
    p.add_argument("--artifact", required=True, help="artifact folder whose manifest gets the calibrated default policy")
    p.add_argument("--task", default=None, help="task whose labelled split calibrates (default: the artifact's task)")
    p.add_argument("--data-dir", default=None, help="folder with glue/ and sick/ (default: ../shared/data)")
    p.add_argument("--split", default="dev", choices=["dev", "train"], help="split to calibrate on")
    p.add_argument("--input", default=None, help="unlabelled rows instead of a split: one text per line (pair tasks: "
                   "first<TAB>second); use with --target-agreement, --target-avg-layer or --target-latency-ms")
    p.add_argument("--policy", default=None, choices=list(SIGNAL_POLICIES),
                   help="default: confidence for classification, lte for regression")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--target-relative-score", type=finite_float, default=None,
                   help="fastest policy whose score >= this share of the full-depth score (labelled rows)")
    g.add_argument("--target-agreement", type=finite_float, default=None,
                   help="fastest policy whose answers equal the full-depth answers on >= this share of rows")
    g.add_argument("--target-avg-layer", type=finite_float, default=None,
                   help="best score whose average exit layer <= this (point estimate)")
    g.add_argument("--target-latency-ms", type=finite_float, default=None,
                   help="best score whose predicted mean batch-1 latency <= this many ms (measured costs)")
    p.add_argument("--agreement-tolerance", type=nonneg_float, default=None,
                   help="regression: largest |early - full-depth| value that counts as the same answer")
    p.add_argument("--delta", type=unit_float, default=0.1, help="the guarantee holds with probability >= 1 - delta")
    p.add_argument("--new-rows", type=new_rows_arg, default=None,
                   help="the guarantee is for the score measured on this many new rows (default: as many as "
                        "calibrate; with --evaluate: the held-out part's size); 'inf': the distribution's own score")
    p.add_argument("--method", default="ltt", choices=["ltt", "point"],
                   help="ltt: Learn-then-Test guarantee; point: fastest meeting the target on the rows themselves")
    p.add_argument("--per-layer", action="store_true", help="also try per-layer thresholds (searched on half of the "
                   "rows, certified on the other half; each family gets delta/2)")
    p.add_argument("--no-per-layer", action="store_true", help="only a single threshold (the default since per-layer "
                   "thresholds need --per-layer; kept for old scripts)")
    p.add_argument("--allow-majority", action="store_true", help="F1 tasks: accept a policy whose answers collapse "
                   "towards the positive class (refused by default)")
    p.add_argument("--majority-margin", type=unit_float, default=0.1,
                   help="F1 tasks: flag a positive rate above max(gold, full depth) + this")
    p.add_argument("--resamples", type=positive_int, default=1000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and the row splits")
    p.add_argument("--evaluate", action="store_true", help="repeated random splits: calibrate on one part, score "
                   "on the rest, point vs ltt side by side (the manifest is left as it is)")
    p.add_argument("--splits", type=positive_int, default=50, help="--evaluate: number of random splits")
    p.add_argument("--evaluate-fraction", type=unit_float, default=0.5, help="--evaluate: share of rows calibrating")
    p.add_argument("--json-out", default=None, help="also write the result as JSON here")
    p.add_argument("--max-samples", type=positive_int, default=None, help="first N rows only")
    p.add_argument("--threads", type=positive_int, default=None, help="intra-op threads (default: all cores)")
    p.add_argument("--dry-run", action="store_true", help="print the result, leave the manifest as it is")
    return p.parse_args(argv)


def _rows(args, model):
    if args.input is not None:
        a, b = read_texts(args.input, model.task.text_pair)
        if args.max_samples:
            a, b = a[:args.max_samples], None if b is None else b[:args.max_samples]
        return a, b, None, {"input": args.input}
    task = get_task(args.task or model.task.name)
    if task.name != model.task.name:
        raise PolicyError(f"the artifact was trained for task '{model.task.name}', not '{task.name}'.")
    split = load_split(task.name, args.split, args.data_dir).head(args.max_samples)
    return split.text_a, split.text_b, split.labels, {"task": task.name, "split": args.split}


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        target = Target(args.target_relative_score, args.target_agreement, args.agreement_tolerance,
                        args.target_avg_layer, args.target_latency_ms)
        if args.evaluate and target.kind not in ("relative_score", "agreement"):
            raise PolicyError("--evaluate checks --target-relative-score or --target-agreement.")
        model = EarlyExitModel(args.artifact, threads=args.threads, load_monolithic=False, thread_pool="shared")
        m = model.manifest
        policy = args.policy or ("confidence" if m.task.kind == "classification" else "lte")
        text_a, text_b, gold, source = _rows(args, model)
        per_layer = split_layer_outputs(model, text_a, text_b)
        costs = measure_costs(model, text_a, text_b) if target.latency_ms is not None else None
        cum = None if costs is None else np.asarray([0.0] + costs["exit_ms"])
        judge = Judge(per_layer, gold, kind=m.task.kind, metric=m.task.metric, num_layers=m.num_layers,
                      signals=m.signals, exits=m.exits, num_classes=max(m.task.num_outputs, 2),
                      tolerance=args.agreement_tolerance, majority_margin=args.majority_margin, costs_ms=cum)
        if args.evaluate:
            ev = evaluate(judge, policy, target, splits=args.splits, fraction=args.evaluate_fraction, delta=args.delta,
                          per_layer=args.per_layer, allow_majority=args.allow_majority, resamples=args.resamples,
                          seed=args.seed, new_rows=args.new_rows)
            ev.update(source=source, policy=policy, artifact=str(m.root))
            print(format_table(ev))
            if args.json_out:
                with open(args.json_out, "w") as f:
                    json.dump(ev, f, indent=2)
            return 0
        res = calibrate(judge, policy, target, method=args.method, delta=args.delta, per_layer=args.per_layer,
                        allow_majority=args.allow_majority, resamples=args.resamples, seed=args.seed,
                        new_rows=args.new_rows)
    except (ArtifactError, PolicyError, InputError, FileNotFoundError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    best, single = res["best"], res["single"]
    rec = {"method": res["method"], "target": target.to_json(), "delta": res["delta"], "new_rows": res["new_rows"],
           "bound": best.bound, "rows": res["rows"], **source,
           "rows_search": res["rows_search"], "rows_certify": res["rows_certify"],
           "full_depth_score": judge.full_score, "result": best.to_json(),
           "single_threshold_result": None if single is None else single.to_json(),
           "per_layer_result": None if res["per_layer"] is None else res["per_layer"].to_json(),
           "per_layer_used": best.policy.per_layer is not None,
           "guarantee": (f"{target.kind} >= {getattr(target, target.kind)} with probability >= {1 - res['delta']:g} "
                         + (f"for the score of {res['new_rows']} new rows" if res["new_rows"] is not None else "for the score")
                         + " of the calibration rows' distribution" if res["delta"] is not None else None),
           "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if judge.f1_task and gold is not None:
        rec["gold_positive_rate"] = float(np.mean(gold == 1))
    if costs is not None:
        measured, pick = measure_policy_ms(model, best.policy, text_a, text_b)
        sub = simulate(best.policy, [o.take(pick) for o in per_layer], m.task.kind)
        pos = sub if best.policy.exits is None else np.searchsorted(np.asarray(best.policy.exits), sub) + 1
        rec["latency"] = {"costs": costs, "predicted_ms": best.predicted_ms,
                          "predicted_ms_measured_rows": float(np.mean(cum[pos])), "measured_ms": measured,
                          "measured_rows": int(len(pick))}
    print(json.dumps(rec, indent=2))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(rec, f, indent=2)
    if not args.dry_run:
        pol = best.policy
        record = {"name": pol.name, **({"threshold": pol.threshold} if pol.threshold is not None else {}),
                  **({"exit_layer": pol.exit_layer} if pol.exit_layer is not None else {}),
                  **({"per_layer_thresholds": list(pol.per_layer)} if pol.per_layer else {}), "calibration": rec}
        raw = dict(m.raw)
        raw["default_policy"] = record
        try:
            from .manifest import parse_manifest
            parse_manifest(raw, m.root)  # the record passes the schema before it is written
        except ArtifactError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        write_manifest(m.root, raw)
        print(f"default policy written to {m.root / 'manifest.json'}: {pol.describe()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
