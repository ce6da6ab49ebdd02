"""`python -m benchmarks.reproduce [--runs-dir runs/repro] [--out results/reproduction] [--plan]`

Runs the paper's experiments on the packaged MiniLM-L6 and the data in ../shared/data, one
fine-tuning run at a time (never two at once: 2 cores), each in its own process. It resumes:
a run whose checkpoint folder already holds eval.json is skipped, so an interrupted session
picks up where it stopped. Then it analyses every task with benchmarks.tradeoff and writes
OUT/summary.json (final-layer scores per strategy, mean and spread over seeds; area between
the Joint and Alternating trade-off curves; LTE vs layer-wise; LTE vs patience).

The plan (about 7 CPU-hours on 2 cores, measured step times in ../shared/PROBE.md):
  rte, mrpc, stsb   joint, two_stage, alternating (+LTE)        3 seeds, 3 epochs
  sick              joint, two_stage, alternating (+LTE)        1 seed, 3 epochs
  sst2              joint, two_stage, alternating (+LTE)        1 seed, 1 epoch (CPU budget)
  rte               limit at layers 1..L                          1 seed
Settings: lr 2e-5 for the backbone as in the paper, 3 epochs, max length 128 (sst2: 64),
batch 16, heads reading the mean of token states with head lr 1e-3 (all-MiniLM-L6-v2 was
pre-trained with mean pooling; see README), padding per batch.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Run:
    task: str
    strategy: str
    seed: int
    lte: bool = True
    epochs: float = 3.0
    max_seq_len: int = 128
    limit_layer: int | None = None
    extra: tuple[str, ...] = field(default=())

    @property
    def name(self) -> str:
        s = self.strategy + (f"{self.limit_layer}" if self.limit_layer else "") + ("_lte" if self.lte else "")
        return f"{self.task}/{s}_seed{self.seed}"

    def argv(self, out: Path, common: list[str]) -> list[str]:
        a = ["--task", self.task, "--strategy", self.strategy, "--seed", str(self.seed), "--epochs", str(self.epochs),
             "--max-seq-len", str(self.max_seq_len), "--out", str(out)] + common
        if self.lte:
            a.append("--lte")
        if self.limit_layer:
            a += ["--limit-layer", str(self.limit_layer)]
        return a + list(self.extra)


STRATEGIES = ("two_stage", "joint", "alternating")


def plan(tasks: list[str], seeds: list[int], num_layers: int = 6, limit: bool = True) -> list[Run]:
    # Seed-major order: one seed of every task first, so that an interrupted plan has already
    # covered every data set; the extra seeds (rte, mrpc, stsb) and the Limit runs come after.
    runs = []
    for seed in seeds:
        for t in tasks:
            if seed != seeds[0] and t not in ("rte", "mrpc", "stsb"):
                continue
            epochs, seq = (1.0, 64) if t == "sst2" else (3.0, 128)
            for s in STRATEGIES:
                runs.append(Run(t, s, seed, lte=True, epochs=epochs, max_seq_len=seq))
    if limit and "rte" in tasks:
        runs += [Run("rte", "limit", seeds[0], lte=False, limit_layer=k) for k in range(1, num_layers + 1)]
    return runs


def execute(runs: list[Run], runs_dir: Path, common: list[str], log=print) -> list[Path]:
    done = []
    for i, r in enumerate(runs, 1):
        out = runs_dir / r.name
        if (out / "eval.json").is_file():
            log(f"[{i}/{len(runs)}] {r.name}: done before, skipped")
            done.append(out)
            continue
        log(f"[{i}/{len(runs)}] {r.name}: training")
        t0 = time.time()
        res = subprocess.run([sys.executable, "-m", "train.finetune", *r.argv(out, common)], cwd=ROOT,
                             capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"run {r.name} failed:\n{res.stderr[-3000:]}")
        log(f"[{i}/{len(runs)}] {r.name}: {time.time() - t0:.0f} s")
        done.append(out)
    return done


def summarise(runs_dir: Path, out: Path) -> dict:
    from .tradeoff import analyse, plot
    out.mkdir(parents=True, exist_ok=True)
    summary = {}
    for task_dir in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        ckpts = sorted(p for p in task_dir.iterdir() if (p / "eval.json").is_file() and "limit" not in p.name)
        if not ckpts:
            continue
        res = analyse(ckpts)
        (out / f"tradeoff_{res['task']}.json").write_text(json.dumps(res, indent=2) + "\n")
        plot(res, out / f"tradeoff_{res['task']}.png")
        final = {}
        for s in STRATEGIES:
            vals = [r["layer_wise"][-1] for r in res["runs"] if r["strategy"] == s]
            if vals:
                final[s] = {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "seeds": len(vals)}
        limit = sorted((json.loads((p / "train_config.json").read_text())["limit_layer"],
                        json.loads((p / "eval.json").read_text())["layer_scores"][-1][res["metric"]])
                       for p in task_dir.iterdir() if "limit" in p.name and (p / "eval.json").is_file())
        summary[res["task"]] = {"metric": res["metric"], "final_layer": final, "limit": limit,
                                "area_joint_over_alt": res.get("area_joint_over_alt"),
                                "area_alt_over_joint": res.get("area_alt_over_joint")}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _min_layers_at(points: list[dict], rel: float) -> float | None:
    ok = [p["avg_exit_layer"] for p in points if p["relative_score"] >= rel]
    return min(ok) if ok else None


def findings(out: Path) -> str:
    """REPRODUCTION.md body: per task, the paper's findings checked against the saved analyses."""
    lines = ["# Reproduction of BERxiT's findings (all-MiniLM-L6-v2, CPU)", "",
             "Made by `python -m benchmarks.reproduce` from the runs' saved per-layer dev outputs; "
             "`tradeoff_<task>.json` holds every number, `tradeoff_<task>.png` the curves.", ""]
    for f in sorted(out.glob("tradeoff_*.json")):
        res = json.loads(f.read_text())
        runs = res["runs"]
        by = {s: [r for r in runs if r["strategy"] == s] for s in STRATEGIES}
        L = len(runs[0]["layer_wise"])
        mean_rel = lambda s, ks: float(np.mean([r["layer_wise_relative"][k] for r in by[s] for k in ks])) if by[s] else None  # noqa: E731
        lines += [f"## {res['task']} ({res['metric']}; 100% = {res['baseline']})", "",
                  "| strategy | seeds | final layer (raw) | relative, layers 1..L |", "|---|---|---|---|"]
        for s in STRATEGIES:
            if by[s]:
                fin = [r["layer_wise"][-1] for r in by[s]]
                rel = " ".join(f"{100 * mean_rel(s, [k]):.1f}" for k in range(L))
                lines.append(f"| {s} | {len(fin)} | {np.mean(fin):.4f} ± {np.std(fin):.4f} | {rel} |")
        lines.append("")
        early, late = list(range(L // 2)), list(range(L // 2, L))
        if all(by[s] for s in STRATEGIES):
            two_best = mean_rel("two_stage", [L - 1]) >= max(mean_rel("joint", [L - 1]), mean_rel("alternating", [L - 1]))
            two_worst = mean_rel("two_stage", early) <= min(mean_rel("joint", early), mean_rel("alternating", early))
            lines.append(f"- Two-stage best at the last layer: {'yes' if two_best else 'no'}; worst on layers 1..{L // 2}: "
                         f"{'yes' if two_worst else 'no'} (mean relative early: two_stage {100 * mean_rel('two_stage', early):.1f}, "
                         f"joint {100 * mean_rel('joint', early):.1f}, alternating {100 * mean_rel('alternating', early):.1f}).")
        if by["joint"] and by["alternating"]:
            lines.append(f"- Alternating vs Joint on later layers (mean relative {L // 2 + 1}..{L}): "
                         f"{100 * mean_rel('alternating', late):.1f} vs {100 * mean_rel('joint', late):.1f}; area ALT over "
                         f"JOINT {res.get('area_alt_over_joint', float('nan')):.2f}, JOINT over ALT "
                         f"{res.get('area_joint_over_alt', float('nan')):.2f} (percentage points x layers).")
            alt = by["alternating"][0]
            pol = "confidence" if "confidence" in alt["tradeoff"] else "lte"
            for rel in (0.99, 0.97):
                m = _min_layers_at(alt["tradeoff"][pol], rel)
                lines.append(f"- Alternating + {pol} at >= {rel:.0%} relative score: "
                             + (f"{m:.2f} of {L} layers ({100 * (1 - m / L):.0f}% saved)." if m else "not reached."))
            if "lte" in alt["tradeoff"]:
                for rel in (0.99, 0.98):
                    a, b = _min_layers_at(alt["tradeoff"]["lte"], rel), _min_layers_at(alt["patience"], rel)
                    lines.append(f"- LTE vs patience at >= {rel:.0%}: " + (f"{a:.2f}" if a else "n/a") + " vs "
                                 + (f"{b:.2f}" if b else "n/a") + " average exit layers.")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.reproduce")
    p.add_argument("--tasks", nargs="+", default=["rte", "mrpc", "stsb", "sick", "sst2"])
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    p.add_argument("--runs-dir", default="runs/repro")
    p.add_argument("--out", default="results/reproduction")
    p.add_argument("--model", default=None)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--max-train-samples", type=int, default=None, help="for smoke tests only")
    p.add_argument("--no-limit", action="store_true")
    p.add_argument("--plan", action="store_true", help="print the runs and their state, train nothing")
    p.add_argument("--report-only", action="store_true", help="analyse the runs that exist, train nothing")
    a = p.parse_args(argv)
    common = ["--batch-size", "16", "--lr", "2e-5", "--head-lr", "1e-3", "--pooling", "mean"]
    for flag, v in (("--model", a.model), ("--data-dir", a.data_dir), ("--max-train-samples", a.max_train_samples)):
        if v is not None:
            common += [flag, str(v)]
    runs = plan(a.tasks, a.seeds, limit=not a.no_limit)
    runs_dir = Path(a.runs_dir)
    if a.plan:
        for r in runs:
            state = "done" if (runs_dir / r.name / "eval.json").is_file() else "to do"
            print(f"{r.name:40} {state}")
        return 0
    if not a.report_only:
        try:
            execute(runs, runs_dir, common)
        except RuntimeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    summary = summarise(runs_dir, Path(a.out))
    (Path(a.out) / "REPRODUCTION.md").write_text(findings(Path(a.out)))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
