"""`python -m benchmarks.calibration_results --art-root /work/models/art --out results`

Does each calibration method's target hold on unseen rows? For every artifact found (sst2_quick,
stsb, mrpc, sick, rte), one all-layer pass over its dev split, then runtime.calibrate's
--evaluate splits (calibrate on half, score on the other half) for targets 0.99 and 0.97 with
the old point estimate, Learn-then-Test (single threshold) and Learn-then-Test with per-layer
thresholds tried. Writes calibration.json and CALIBRATION.md. No timing is involved.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from runtime.calib_eval import evaluate
from runtime.calibrate import split_layer_outputs
from runtime.calibration import Judge, Target
from runtime.datasets import load_split
from runtime.model import EarlyExitModel

ARTIFACTS = ("sst2_quick", "stsb", "mrpc", "sick", "rte")
METHODS = ("point", "ltt", "ltt-per-layer")


def _machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "?")
    except OSError:
        return platform.processor() or "?"


def _short(ev: dict, delta: float) -> list[str]:
    """The guaranteed methods whose met rate fell below 1 - delta on these splits."""
    return [m for m, r in ev["methods"].items() if m != "point" and r["met"] < (1 - delta) * ev["splits"] - 1e-9]


def _recheck(judge_for, rec: dict, policy: str, delta: float, resamples: int, splits: int) -> bool:
    """Agreement targets whose guaranteed method fell short are evaluated again on `splits` fresh
    splits (cheap: no bootstrap), so that the met rate is known to about +-2 points rather than
    +-8. Returns whether anything was added."""
    added = False
    for ev in rec["evaluations"]:
        if "agreement" not in ev["target"] or "recheck" in ev or not splits:
            continue
        short = _short(ev, delta)
        if not short:
            continue
        tg = Target(agreement=ev["target"]["agreement"], tolerance=ev["target"].get("tolerance"))
        again = evaluate(judge_for(), policy, tg, splits=splits, delta=delta, resamples=resamples,
                         methods=tuple(short), seed=1000)
        ev["recheck"] = {m: {"splits": splits, "seed": 1000, "met": r["met"], "met_rate": r["met_rate"]}
                         for m, r in again["methods"].items()}
        print(f"  recheck {ev['target']}: " + ", ".join(f"{m} {r['met']}/{splits}" for m, r in again["methods"].items()),
              flush=True)
        added = True
    return added


def run(art_root: Path, data_dir: str | None, targets, splits: int, resamples: int, delta: float,
        agreement: bool, previous: dict | None = None, save=None, recheck_splits: int = 1000) -> dict:
    """`save(result)` is called after each artifact, so an interrupted run keeps what it finished."""
    out = {"splits": splits, "resamples": resamples, "delta": delta, "certified_for": "held-out rows", "machine": _machine(),
           "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "artifacts": {}, "missing": []}
    same = previous is not None and all(previous.get(k) == out[k] for k in ("splits", "resamples", "delta", "certified_for"))
    for name in ARTIFACTS:
        art = art_root / name
        old = (previous.get("artifacts") or {}).get(name) if same else None
        if old is not None and not (art / "manifest.json").is_file():
            out["artifacts"][name] = old  # --reuse: kept, the artifact is not here to check it against
            continue
        if old is not None:
            # --reuse: evaluated before with these settings, if the artifact still gives the same full-depth score
            judge = _judge(art, data_dir)[0]
            if judge.full_score == old["full_depth_score"]:
                out["artifacts"][name] = old
                if _recheck(lambda: judge, old, old["policy"], delta, resamples, recheck_splits) and save is not None:
                    save(out)
                continue
            print(f"{name}: full-depth score {judge.full_score} differs from the saved {old['full_depth_score']}: "
                  f"evaluated again", flush=True)
        if not (art / "manifest.json").is_file():
            out["missing"].append(name)
            continue
        judge, m, dev = _judge(art, data_dir)
        policy = "confidence" if m.task.kind == "classification" else "lte"
        rec = {"task": m.task.name, "metric": m.task.metric, "policy": policy, "rows": len(dev),
               "num_layers": m.num_layers, "full_depth_score": judge.full_score, "evaluations": []}
        tlist = [Target(relative_score=t) for t in targets]
        if agreement and m.task.kind == "classification":
            tlist += [Target(agreement=t) for t in targets]
        for tg in tlist:
            t0 = time.time()
            ev = evaluate(judge, policy, tg, splits=splits, delta=delta, resamples=resamples, methods=METHODS)
            ev["seconds"] = round(time.time() - t0, 1)
            rec["evaluations"].append(ev)
            print(f"{name} {tg.to_json()}: " + ", ".join(f"{k} {v['met']}/{ev['splits']}" for k, v in ev["methods"].items()),
                  flush=True)
        _recheck(lambda: judge, rec, policy, delta, resamples, recheck_splits)
        out["artifacts"][name] = rec
        if save is not None:
            save(out)
    return out


def _judge(art: Path, data_dir: str | None):
    """Every exit's outputs on the artifact's dev split, as a Judge (the model is closed after)."""
    model = EarlyExitModel(art, load_monolithic=False, thread_pool="shared")
    try:
        m = model.manifest
        dev = load_split(m.task.name, "dev", data_dir)
        per_layer = split_layer_outputs(model, dev.text_a, dev.text_b)
    finally:
        model.close()
    judge = Judge(per_layer, dev.labels, kind=m.task.kind, metric=m.task.metric, num_layers=m.num_layers,
                  signals=m.signals, exits=m.exits, num_classes=max(m.task.num_outputs, 2))
    return judge, m, dev


def _f(d: dict | None, q: str = "p50", nd: int = 4) -> str:
    return "-" if not d else f"{d[q]:.{nd}f}"


def markdown(res: dict, command: str) -> str:
    L = []
    L.append("# Calibration on unseen rows\n")
    L.append(f"Command: `{command}`  \nMachine: {res['machine']} (no timing involved). {res['time_utc']}.\n")
    L.append(f"Each row: {res['splits']} random splits of the dev set, calibrate on one half, score the chosen "
             f"policy on the other half. **met** = splits whose held-out value reached the target; a split where "
             f"nothing could be certified runs at full depth (it meets the target and saves no layer; counted in "
             f"the *full depth* column). Methods: `point` = the old point estimate (fastest threshold "
             f"meeting the target on the calibration half, per-layer thresholds when they win there); `ltt` = "
             f"Learn-then-Test, single threshold, delta = {res['delta']}, certifying the score of as many new rows "
             f"as the held-out half has (`--new-rows`, the default; relative score: paired bootstrap with "
             f"{res['resamples']} resamples, delta/2 for the distribution's score and delta/2 for the new rows' own "
             f"noise; agreement: the exact exchangeable test, a hypergeometric tail over nested losses, "
             f"runtime/bounds.py); "
             f"`ltt-per-layer` = Learn-then-Test with per-layer thresholds searched on a quarter and certified on "
             f"another quarter (delta/2 per family). Held-out value p05 / p50 / p95; layers saved = 1 - mean avg "
             f"exit layer / layers. The promise: met on >= {1 - res['delta']:.0%} of the splits. The met rate of "
             f"{res['splits']} splits has a standard error of about 4 points at 90%, so an exact test falls below "
             f"90% on about half of such runs by chance: where a guaranteed method's agreement target fell short, "
             f"it was evaluated again on {res.get('recheck_splits', 1000)} fresh splits (shown after the semicolon).\n")
    if res["missing"]:
        L.append(f"Artifacts not available when this ran: {', '.join(res['missing'])}.\n")
    L.append("| data set | metric | target | method | met | held-out value p05 / p50 / p95 | avg exit layer p50 | layers saved | full depth (nothing certified) | per-layer chosen |")
    L.append("|---|---|---|---|---|---|---|---|---|---|")
    for name, rec in res["artifacts"].items():
        for ev in rec["evaluations"]:
            (k, v), = [(a, b) for a, b in ev["target"].items() if a != "tolerance"]
            for m, r in ev["methods"].items():
                val = r.get(k)
                saved = "-" if r["layers_saved"] is None else f"{r['layers_saved']:.1%}"
                rate = f"{r['met']}/{ev['splits']} ({r['met_rate']:.0%})"
                again = (ev.get("recheck") or {}).get(m)
                if again:
                    rate += f"; {again['met']}/{again['splits']} ({again['met_rate']:.1%}) on fresh splits"
                fb = r.get("full_depth_fallback", 0)
                L.append(f"| {name} | {rec['metric'] if k == 'relative_score' else 'agreement'} | {v} | {m} | {rate} | "
                         f"{_f(val, 'p05')} / {_f(val)} / {_f(val, 'p95')} | {_f(r['avg_exit_layer'], 'p50', 2)} | "
                         f"{saved} | {fb} | "
                         f"{r['per_layer_used']}/{ev['splits']} |")
    for name, rec in res["artifacts"].items():
        if rec["metric"] != "f1":
            continue
        L.append(f"\n## {name}: accuracy relative and predicted-positive rate on the held-out halves\n")
        ev0 = rec["evaluations"][0]
        L.append(f"Gold positive rate {ev0.get('gold_positive_rate', float('nan')):.3f}, full depth "
                 f"{ev0.get('full_depth_positive_rate', float('nan')):.3f}.\n")
        L.append("| target | method | F1 relative p50 | accuracy relative p05 / p50 | positive rate p50 / p95 |")
        L.append("|---|---|---|---|---|")
        for ev in rec["evaluations"]:
            (k, v), = [(a, b) for a, b in ev["target"].items() if a != "tolerance"]
            for m, r in ev["methods"].items():
                L.append(f"| {k} {v} | {m} | {_f(r.get(k))} | {_f(r.get('accuracy_relative'), 'p05')} / "
                         f"{_f(r.get('accuracy_relative'))} | {_f(r.get('positive_rate'))} / "
                         f"{_f(r.get('positive_rate'), 'p95')} |")
    return "\n".join(L) + "\n"


def summary_table(res: dict) -> str:
    """The compact table README.md shows: relative-score targets, point vs ltt."""
    L = ["| data set | target | point: met / held-out p05 / layers saved | ltt: met / held-out p05 / layers saved |",
         "|---|---|---|---|"]
    for name, rec in res["artifacts"].items():
        for ev in rec["evaluations"]:
            if "relative_score" not in ev["target"]:
                continue
            cells = []
            for m in ("point", "ltt"):
                r = ev["methods"][m]
                met = f"{r['met_rate']:.0%}"
                saved = "-" if r["layers_saved"] is None else f"{r['layers_saved']:.0%}"
                cells.append(f"{met} / {_f(r['relative_score'], 'p05', 3)} / {saved}")
            L.append(f"| {name} ({rec['metric']}) | {ev['target']['relative_score']} | {cells[0]} | {cells[1]} |")
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.calibration_results")
    p.add_argument("--art-root", default="/work/models/art")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="results")
    p.add_argument("--targets", default="0.99,0.97")
    p.add_argument("--splits", type=int, default=50)
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--delta", type=float, default=0.1)
    p.add_argument("--agreement", action="store_true", help="also label-free agreement targets (classification)")
    p.add_argument("--reuse", action="store_true", help="keep artifacts already in OUT/calibration.json (same settings)")
    p.add_argument("--recheck-splits", type=int, default=1000,
                   help="agreement targets a guaranteed method missed on more than delta of the splits are "
                        "evaluated again on this many fresh splits (0: off)")
    a = p.parse_args(argv)
    out = Path(a.out)
    prev = json.loads((out / "calibration.json").read_text()) if a.reuse and (out / "calibration.json").is_file() else None
    out.mkdir(parents=True, exist_ok=True)
    save = lambda r: (out / "calibration.json").write_text(json.dumps(r, indent=2) + "\n")  # noqa: E731
    res = run(Path(a.art_root), a.data_dir, [float(x) for x in a.targets.split(",")], a.splits, a.resamples,
              a.delta, a.agreement, prev, save, a.recheck_splits)
    res["recheck_splits"] = a.recheck_splits
    save(res)
    cmd = "python -m benchmarks.calibration_results " + " ".join(argv if argv is not None else sys.argv[1:])
    (out / "CALIBRATION.md").write_text(markdown(res, cmd.strip()) + "\n## Summary (relative-score targets)\n\n"
                                        + summary_table(res))
    print(f"wrote {out / 'calibration.json'} and {out / 'CALIBRATION.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
