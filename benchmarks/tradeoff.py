"""`python -m benchmarks.tradeoff --runs CKPT [CKPT ...] --out DIR`

Quality-efficiency analysis from the raw per-layer dev outputs every checkpoint saves
(dev_layer_outputs.npz): no model is run, so curves can be recomputed at will.

  layer_wise   score of every exit when all rows exit there, per run (paper figs. 2-3)
  tradeoff     confidence (or LTE) exit: score vs average exit layer over a threshold sweep,
               and its upper envelope (best score at <= a given average exit layer) (figs. 4-5)
  area         area of one strategy's envelope above the other's (section 5.3's metric), in
               relative-score percentage points x layers, over the common range; per seed
               (Joint and Alternating runs of one seed paired) and their mean
  lte          LTE's envelope against the layer-wise baseline (line through the per-layer
               scores): area above and below it (fig. 6)
  table2       per run, the fewest-layer operating point reaching 99/97/95% relative score
  patience     PABEE exits at every patience, for LTE-vs-patience at matched scores (table 3)
Scores are relative to the Two-stage run's final layer when one is given (the paper's 100%),
else to each run's own final layer (marked in the output).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from runtime.metrics import score
from runtime.policies import LayerOutputs, make_policy, predictions_at_exit, simulate
from runtime.tasks import get_task
from train.evaluate import load_layer_outputs
from runtime.cli import HelpFormatter


def sweep(per_layer: list[LayerOutputs], gold: np.ndarray, task, policy: str, grid: int = 101) -> list[dict]:
    """(threshold, score, avg exit layer) over thresholds at signal quantiles."""
    L = len(per_layer)
    sig = np.concatenate([getattr(o, policy) for o in per_layer[:-1]]) if L > 1 else getattr(per_layer[0], policy)
    qs = np.unique(np.quantile(sig, np.linspace(0, 1, grid)))
    pts = []
    for t in qs:
        t = float(np.clip(t, 0, 1)) if policy != "entropy" else float(t)
        p = make_policy(policy, task_kind=task.kind, num_layers=L, signals=(policy,), num_classes=max(task.num_outputs, 2),
                        threshold=t)
        ex = simulate(p, per_layer, task.kind)
        pts.append({"threshold": t, "score": score(task.metric, predictions_at_exit(per_layer, ex), gold, task.kind),
                    "avg_exit_layer": float(ex.mean())})
    return pts


def patience_points(per_layer: list[LayerOutputs], gold: np.ndarray, task, tolerance: float | None = None) -> list[dict]:
    L = len(per_layer)
    tol = tolerance if tolerance is not None else (0.0 if task.kind == "classification" else 0.1)
    pts = []
    for k in range(1, L):
        p = make_policy("patience", task_kind=task.kind, num_layers=L, signals=(), patience=k,
                        threshold=tol if task.kind == "regression" else None)
        ex = simulate(p, per_layer, task.kind)
        pts.append({"patience": k, "score": score(task.metric, predictions_at_exit(per_layer, ex), gold, task.kind),
                    "avg_exit_layer": float(ex.mean())})
    return pts


def envelope(points: list[dict], num_layers: int, step: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Best score reachable at average exit layer <= x, on a grid over [1, L] (step function)."""
    xs = np.arange(1.0, num_layers + 1e-9, step)
    px = np.array([p["avg_exit_layer"] for p in points])
    py = np.array([p["score"] for p in points])
    ys = np.array([py[px <= x + 1e-12].max() if np.any(px <= x + 1e-12) else np.nan for x in xs])
    return xs, ys


def area_between(xa: np.ndarray, ya: np.ndarray, xb: np.ndarray, yb: np.ndarray) -> tuple[float, float]:
    """(area of A above B, area of B above A) over the x range both curves cover.
    Curves are sampled on the same grid (as `envelope` gives) or linearly interpolated onto A's."""
    yb_on_a = np.interp(xa, xb, yb, left=np.nan, right=np.nan)
    ok = ~(np.isnan(ya) | np.isnan(yb_on_a))
    x, d = xa[ok], (ya - yb_on_a)[ok]
    if len(x) < 2:
        return 0.0, 0.0
    pos, neg = np.clip(d, 0, None), np.clip(-d, 0, None)
    return float(np.trapezoid(pos, x)), float(np.trapezoid(neg, x))


def analyse(runs: list[Path]) -> dict:
    data = []
    for r in runs:
        cfg = json.loads((r / "train_config.json").read_text())
        per_layer, gold = load_layer_outputs(r / "dev_layer_outputs.npz")
        data.append({"run": str(r), "strategy": cfg["strategy"], "lte": cfg["lte"], "task": cfg["task"],
                     "seed": cfg["seed"], "per_layer": per_layer, "gold": gold})
    tasks = {d["task"] for d in data}
    if len(tasks) != 1:
        raise ValueError(f"runs of one task at a time, got {sorted(tasks)}")
    task = get_task(tasks.pop())
    two = [d for d in data if d["strategy"] == "two_stage"]
    base_src = "two_stage final layer" if two else "own final layer"
    out = {"task": task.name, "metric": task.metric, "baseline": base_src, "dev_rows": int(len(data[0]["gold"])),
           "runs": []}
    if task.kind == "classification":
        # What always answering the most frequent dev label scores: a floor to read the curves against.
        gold0 = data[0]["gold"].astype(int)
        major = np.bincount(gold0).argmax()
        onehot = np.zeros((len(gold0), max(task.num_outputs, 2)))
        onehot[:, major] = 1.0
        out["majority_class_score"] = score(task.metric, onehot, gold0, task.kind)
    for d in data:
        pl, gold = d["per_layer"], d["gold"]
        base = np.mean([score(task.metric, t["per_layer"][-1].logits, t["gold"], task.kind) for t in two]) if two \
            else score(task.metric, pl[-1].logits, gold, task.kind)
        layer = [score(task.metric, o.logits, gold, task.kind) for o in pl]
        row = {"run": d["run"], "strategy": d["strategy"], "lte": d["lte"], "seed": d["seed"], "baseline_score": base,
               "layer_wise": layer, "layer_wise_relative": [s / base for s in layer]}
        pols = (["confidence"] if task.kind == "classification" else []) + (["lte"] if pl[0].lte is not None else [])
        row["tradeoff"] = {p: [{**pt, "relative_score": pt["score"] / base} for pt in sweep(pl, gold, task, p)] for p in pols}
        row["patience"] = [{**pt, "relative_score": pt["score"] / base} for pt in patience_points(pl, gold, task)]
        out["runs"].append(row)
    # Area between the Joint and Alternating envelopes, per seed (runs of the same seed paired);
    # confidence exit for classification (figs. 4-5), LTE for regression.
    pairs = []
    for seed in sorted({r["seed"] for r in out["runs"]}):
        pick = {s: next((r for r in out["runs"] if r["strategy"] == s and r["seed"] == seed and r["tradeoff"]), None)
                for s in ("joint", "alternating")}
        if all(pick.values()):
            pol = "confidence" if "confidence" in pick["joint"]["tradeoff"] else "lte"
            L = len(pick["joint"]["layer_wise"])
            ea = envelope([{**p, "score": 100 * p["relative_score"]} for p in pick["joint"]["tradeoff"][pol]], L)
            eb = envelope([{**p, "score": 100 * p["relative_score"]} for p in pick["alternating"]["tradeoff"][pol]], L)
            j_over_a, a_over_j = area_between(*ea, *eb)
            pairs.append({"seed": seed, "policy": pol, "joint_over_alt": j_over_a, "alt_over_joint": a_over_j})
    if pairs:
        out["area_by_seed"] = pairs
        out["area_joint_over_alt"] = float(np.mean([p["joint_over_alt"] for p in pairs]))
        out["area_alt_over_joint"] = float(np.mean([p["alt_over_joint"] for p in pairs]))
    for r in out["runs"]:
        if "lte" in r["tradeoff"]:
            r["lte_vs_layer_wise"] = lte_vs_layer_wise(r)
        r["table2"] = table2_rows(r)
    return out


def layer_wise_curve(rel: list[float], num_layers: int, step: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """The layer-wise baseline as a line through (k, relative score of layer k), in percent."""
    xs = np.arange(1.0, num_layers + 1e-9, step)
    return xs, np.interp(xs, np.arange(1, num_layers + 1), 100 * np.asarray(rel))


def lte_vs_layer_wise(row: dict) -> dict:
    """Area of the LTE trade-off envelope above / below the layer-wise baseline (fig. 6)."""
    L = len(row["layer_wise"])
    e = envelope([{**p, "score": 100 * p["relative_score"]} for p in row["tradeoff"]["lte"]], L)
    above, below = area_between(*e, *layer_wise_curve(row["layer_wise_relative"], L))
    return {"area_lte_over_layer_wise": above, "area_layer_wise_over_lte": below}


def table2_rows(row: dict, targets: tuple[float, ...] = (0.99, 0.97, 0.95)) -> list[dict]:
    """The paper's table 2 form: for each target relative score, the operating point with the
    fewest layers that reaches it (its threshold, relative score, saved layers)."""
    pol = "confidence" if "confidence" in row["tradeoff"] else ("lte" if "lte" in row["tradeoff"] else None)
    if pol is None:
        return []
    L = len(row["layer_wise"])
    rows = []
    for t in targets:
        ok = [p for p in row["tradeoff"][pol] if p["relative_score"] >= t]
        if ok:
            best = min(ok, key=lambda p: (p["avg_exit_layer"], -p["relative_score"]))
            rows.append({"target": t, "policy": pol, "threshold": best["threshold"], "score": best["score"],
                         "relative_score": best["relative_score"], "avg_exit_layer": best["avg_exit_layer"],
                         "saved_layers": 1 - best["avg_exit_layer"] / L})
        else:
            rows.append({"target": t, "policy": pol, "threshold": None})
    return rows


def plot(res: dict, path: Path) -> None:
    """Left: layer-wise relative score per strategy (mean over seeds, bars = spread; figs. 2-3), and
    section 6's Limit where res["limit"] holds it.
    Middle: trade-off envelopes of Joint and Alternating (figs. 4-5), one line per seed.
    Right: LTE's trade-off against the layer-wise baseline, and patience points (fig. 6, table 3)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 3, figsize=(16, 4.6))
    colors = {"two_stage": "tab:gray", "joint": "tab:blue", "alternating": "tab:red"}
    runs = res["runs"]
    L = len(runs[0]["layer_wise"])
    for s in ("two_stage", "joint", "alternating"):
        rr = [r for r in runs if r["strategy"] == s]
        if rr:
            a = 100 * np.array([r["layer_wise_relative"] for r in rr])
            ax[0].errorbar(range(1, L + 1), a.mean(0), yerr=a.std(0) if len(rr) > 1 else None, fmt="o-", capsize=3,
                           color=colors[s], label=f"{s} ({len(rr)} seed{'s' if len(rr) > 1 else ''})")
        for r in rr:
            if s == "two_stage":
                continue
            for p, pts in r["tradeoff"].items():
                if p == ("confidence" if "confidence" in r["tradeoff"] else "lte"):
                    xs, ys = envelope([{**q, "score": 100 * q["relative_score"]} for q in pts], L)
                    ax[1].plot(xs, ys, color=colors[s], alpha=0.8, label=f"{s} s{r['seed']} {p}")
    if res.get("limit"):
        ax[0].plot([q["layer"] for q in res["limit"]], [100 * q["relative_score"] for q in res["limit"]], "kx", ms=9,
                   label="Limit (one model per layer)")
    alt = next((r for r in runs if r["strategy"] == "alternating" and "lte" in r["tradeoff"]), None)
    if alt is not None:
        xs, ys = layer_wise_curve(alt["layer_wise_relative"], L)
        ax[2].plot(xs, ys, "k--", label="layer-wise baseline (alternating)")
        ex, ey = envelope([{**q, "score": 100 * q["relative_score"]} for q in alt["tradeoff"]["lte"]], L)
        ax[2].plot(ex, ey, color="tab:red", label="alternating + LTE")
        ax[2].plot([q["avg_exit_layer"] for q in alt["patience"]], [100 * q["relative_score"] for q in alt["patience"]],
                   "s", color="tab:green", label="patience (PABEE) p=1..L-1")
    if res.get("majority_class_score") is not None:
        maj = 100 * res["majority_class_score"] / runs[0]["baseline_score"]
        for a in ax:
            a.axhline(maj, color="k", ls=":", lw=1, label="majority class")
    ax[0].set(xlabel="exit layer (all rows)", ylabel=f"relative {res['metric']} (%)", title="layer-wise scores")
    ax[1].set(xlabel="average exit layer", ylabel=f"relative {res['metric']} (%)", title="trade-off (upper envelope)")
    ax[2].set(xlabel="average exit layer", ylabel=f"relative {res['metric']} (%)", title="LTE vs layer-wise, patience")
    for a in ax:
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.suptitle(f"{res['task']}: 100% = {res['baseline']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(formatter_class=HelpFormatter, prog="python -m benchmarks.tradeoff")
    p.add_argument("--runs", nargs="+", required=True, help="checkpoint folders of one task")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    try:
        res = analyse([Path(r) for r in a.runs])
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    res["command"] = "python -m benchmarks.tradeoff " + " ".join(sys.argv[1:] if argv is None else argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"tradeoff_{res['task']}.json").write_text(json.dumps(res, indent=2) + "\n")
    plot(res, out / f"tradeoff_{res['task']}.png")
    for r in res["runs"]:
        print(f"{r['strategy']:>12}{'+lte' if r['lte'] else '':4} seed {r['seed']}: layer-wise relative "
              + " ".join(f"{100 * v:.1f}" for v in r["layer_wise_relative"]))
    if "area_alt_over_joint" in res:
        print(f"area JOINT over ALT {res['area_joint_over_alt']:.2f}, ALT over JOINT {res['area_alt_over_joint']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
