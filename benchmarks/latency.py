"""`python -m benchmarks.latency --artifact ART --task T [--data-dir D] [--max-samples N] [--out DIR]`

Batch size 1 over a dev split. All timed variants run interleaved, sample by sample, in one
process (see timing.interleaved), so the ratios below are measured under the same conditions:

  chain_overhead   full per-layer chain / monolithic graph (same inputs, same precision)
  forced_exit      latency exiting at every layer k, and a linear fit time = a + b k
  sweep            per policy and threshold: score, avg exit layer, latency, speed-ups vs full
                   chain and vs monolithic, layer_estimate = L / avg exit layer, and
                   realization = measured speed-up vs full chain / layer_estimate, and
                   realization_vs_forced_exits = (mean over rows of the row's own forced-exit
                   time at its exit layer) / measured: 1.0 when deciding costs nothing; where
                   it is ~1 but realization is lower, the layer estimate is what misses (rows
                   that go deep are longer, the first layer carries the embeddings)
  eager            PyTorch eager early exit at the same exit decisions (benchmarks.eager, run in a
                   process of its own: onnxruntime's pool in the same process slowed torch 2.7x)
  env              versions, threads, CPU, git commit

Speed-ups are ratios of *mean* latency (total time over the split), the quantity the average
exit layer estimates. Writes DIR/latency.json and DIR/latency.png.
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np

from runtime.metrics import score
from runtime.policies import LayerOutputs, predictions_at_exit, simulate
from runtime.backends.ort import default_threads
from runtime.model import EarlyExitModel
from runtime.tasks import get_task
from runtime.cli import HelpFormatter, finite_float, positive_int

from .timing import environment, interleaved, linear_fit, percentiles

log = logging.getLogger("benchmarks.latency")

SWEEP_POLICIES = ("confidence", "entropy", "lte")


def spread_thresholds(model: EarlyExitModel, per_layer: list[LayerOutputs], policy: str, points: int) -> list[float]:
    """Thresholds whose average exit layers spread over (1, L): from a fine grid of signal
    quantiles, the one closest to each target average exit layer (fixed threshold lists land
    on 1.0 or L for most models). Each threshold lies midway between two neighbouring observed
    signal values, so float noise between backends (~1e-7) cannot flip a decision."""
    L = model.num_layers
    vals = np.unique(np.concatenate([getattr(o, policy) for o in per_layer[:-1]]))
    mids = (vals[:-1] + vals[1:]) / 2 if len(vals) > 1 else vals
    grid = np.unique(np.quantile(mids, np.linspace(0, 1, 201), method="nearest"))
    avg = []
    for t in grid:
        t = float(np.clip(t, 0.0, 1.0)) if policy != "entropy" else float(t)
        avg.append((float(simulate(model.policy(policy, threshold=t), per_layer, model.task.kind).mean()), t))
    picks = []
    for target in np.linspace(1 + 0.5 * (L - 1) / points, L - 0.25 * (L - 1) / points, points):
        a, t = min(avg, key=lambda x: abs(x[0] - target))
        if t not in picks:
            picks.append(t)
    return picks


def _spread(vals: list[float]) -> dict[str, float]:
    return {"median": float(np.median(vals)), "min": float(min(vals)), "max": float(max(vals))}


def run_benchmark(artifact: str, task_name: str, data_dir: str | None = None, max_samples: int | None = None,
                  repeats: int = 3, threads: int | None = None, policies: list[str] | None = None, points: int = 6,
                  thresholds: dict[str, list[float]] | None = None, passes: int = 3, backend: str = "cpu",
                  ort_pool: str = "shared") -> dict:
    """Setup once, then `passes` independent interleaved timing passes; every ratio is reported as
    the median over passes (with its range under `spread`). backend "native": the C runtime, with
    onnxruntime's chain and monolithic graph timed beside it (same process, interleaved) and its
    per-layer outputs and exit decisions compared with onnxruntime's. ort_pool: onnxruntime's
    threads (benchmarks.native has the same option): "shared" spins between runs and, interleaved,
    takes a core from the native runs; "per-session" does not spin."""
    from runtime.datasets import load_split

    threads = threads or default_threads()
    model = EarlyExitModel(artifact, threads=threads, thread_pool=ort_pool, backend=backend)
    ort_model = EarlyExitModel(artifact, threads=threads, thread_pool=ort_pool) if backend == "native" else None
    task = get_task(task_name)
    if model.task.name != task.name:
        raise ValueError(f"the artifact was trained for task '{model.task.name}', not '{task.name}'.")
    if not model.manifest.has_monolithic:
        raise ValueError("the artifact has no monolithic graph; re-export without --no-monolithic.")
    dev = load_split(task.name, "dev", data_dir).head(max_samples)
    L, n, exits = model.num_layers, len(dev), model.exits
    encs = [model.encode([dev.text_a[i]], None if dev.text_b is None else [dev.text_b[i]]) for i in range(n)]

    # Every exit's outputs for every sample (batch 1, as timed): scores and exit decisions.
    rows = [model.layer_outputs(e) for e in encs]
    per_layer = [LayerOutputs(np.concatenate([r[i].logits for r in rows]),
                              *(None if getattr(rows[0][i], s) is None else np.concatenate([getattr(r[i], s) for r in rows])
                                for s in ("confidence", "entropy", "lte"))) for i in range(len(exits))]
    sc = lambda ex: score(task.metric, predictions_at_exit(per_layer, ex, model.exits), dev.labels, task.kind)  # noqa: E731
    full_score = score(task.metric, per_layer[-1].logits, dev.labels, task.kind)

    sweep_cfg = []
    for p in policies or SWEEP_POLICIES:
        if p not in model.signals:
            continue  # this model does not output that signal (e.g. confidence on regression)
        for t in (thresholds or {}).get(p) or spread_thresholds(model, per_layer, p, points):
            pol = model.policy(p, threshold=t)
            sweep_cfg.append((pol, simulate(pol, per_layer, task.kind)))
    calibrated_index = None
    if isinstance(model.manifest.default_policy.get("calibration"), dict):  # written by runtime.calibrate
        pol = model.policy()
        sweep_cfg.append((pol, simulate(pol, per_layer, task.kind)))
        calibrated_index = len(sweep_cfg) - 1

    variants = {"monolithic": lambda i: model.run_monolithic(encs[i])}
    for k in exits:
        variants[f"forced_{k}"] = (lambda pol: lambda i: model.run(encs[i], pol))(model.policy("fixed", exit_layer=k))
    for j, (pol, _) in enumerate(sweep_cfg):
        variants[f"sweep_{j}"] = (lambda pol: lambda i: model.run(encs[i], pol))(pol)

    parity = None
    if ort_model is not None:  # native vs onnxruntime: every layer's outputs, every sweep decision
        variants["ort_monolithic"] = lambda i: ort_model.run_monolithic(encs[i])
        variants["ort_full_chain"] = (lambda pol: lambda i: ort_model.run(encs[i], pol))(ort_model.policy("fixed", exit_layer=L))
        ref = [ort_model.layer_outputs(e) for e in encs]
        diff = {s: 0.0 for s in ("logits", "confidence", "entropy", "lte")}
        for r_n, r_o in zip(rows, ref):
            for a, b in zip(r_n, r_o):
                for s in diff:
                    if getattr(a, s) is not None:
                        diff[s] = max(diff[s], float(np.abs(getattr(a, s) - getattr(b, s)).max()))
        ref_layers = [LayerOutputs(np.concatenate([r[i].logits for r in ref]),
                                   *(None if getattr(ref[0][i], s) is None else np.concatenate([getattr(r[i], s) for r in ref])
                                     for s in ("confidence", "entropy", "lte"))) for i in range(len(exits))]
        labels_differ = 0
        exits_differ = 0
        for pol, ex in sweep_cfg:
            ex_o = simulate(pol, ref_layers, task.kind)
            exits_differ += int(np.sum(ex_o != ex))
            if task.kind == "classification":
                labels_differ += int(np.sum(predictions_at_exit(ref_layers, ex_o, model.exits).argmax(1)
                                            != predictions_at_exit(per_layer, ex, model.exits).argmax(1)))
        parity = {"max_abs_diff_all_layers": diff, "exit_layers_differ": exits_differ, "labels_differ": labels_differ,
                  "rows_x_policies": n * len(sweep_cfg)}

    # The runtime must take the decisions the offline simulation took.
    mismatches = 0
    for pol, ex in sweep_cfg:
        got = np.array([model.run(encs[i], pol).exit_layer[0] for i in range(n)])
        mismatches += int(np.sum(got != ex))

    meds = []
    for p in range(passes):
        total, step = repeats * n, max(1, repeats * n // 10)
        meds.append(interleaved(variants, n, repeats, seed=p,
                                progress=lambda d, t, p=p: (d % step == 0) and log.info("pass %d: timed %d/%d", p + 1, d, t)))
    mean = lambda name: [float(m[name].mean()) for m in meds]  # noqa: E731 - per pass
    mono, full = mean("monolithic"), mean(f"forced_{L}")
    pooled = {k: np.median(np.stack([m[k] for m in meds]), axis=0) for k in variants}  # per-sample median over passes
    overhead = [f / m for f, m in zip(full, mono)]
    result = {
        "task": task.name, "metric": task.metric, "samples": n, "repeats": repeats, "passes": passes, "batch_size": 1,
        "num_layers": L, "exits": list(exits), "head_layout": model.manifest.head_layout,
        "artifact": str(Path(artifact).resolve()), "seq_len_mean": float(np.mean([e.shape[1] for e in encs])),
        "full_depth_score": full_score,
        "monolithic": percentiles(pooled["monolithic"]), "full_chain": percentiles(pooled[f"forced_{L}"]),
        "chain_overhead": float(np.median(overhead)), "spread": {"chain_overhead": _spread(overhead)},
        "chain_overhead_per_pass": overhead, "decision_mismatches": mismatches,
    }
    fk = [{"exit_layer": k, **percentiles(pooled[f"forced_{k}"]), "latency_ms_mean_per_pass": mean(f"forced_{k}"),
           "score": score(task.metric, per_layer[j].logits, dev.labels, task.kind)} for j, k in enumerate(exits)]
    fits = [linear_fit(np.asarray(exits), [r["latency_ms_mean_per_pass"][p] for r in fk]) for p in range(passes)] \
        if len(exits) > 1 else []
    result["forced_exit"] = {"per_layer": fk,
                             "fit_mean_ms": sorted(fits, key=lambda f: f["slope_ms_per_layer"])[len(fits) // 2] if fits else None,
                             "fit_slope_ms_per_layer": _spread([f["slope_ms_per_layer"] for f in fits]) if fits else None,
                             "time1_over_timeL": fk[0]["latency_ms_mean"] / fk[-1]["latency_ms_mean"]}
    sweep = []
    for j, (pol, ex) in enumerate(sweep_cfg):
        t = mean(f"sweep_{j}")
        avg = float(ex.mean())
        s_ = sc(ex)
        sp_full = [f / x for f, x in zip(full, t)]
        sp_mono = [m / x for m, x in zip(mono, t)]
        est = L / avg
        real = [x / est for x in sp_full]
        # What the rows' own forced-exit times predict (each row at its exit layer, measured in the
        # same pass): the layer estimate corrected for row lengths and per-layer costs, so that
        # measured / predicted is the cost of taking the decisions alone.
        pos = np.searchsorted(exits, ex)
        pred = [float(np.mean(np.stack([m[f"forced_{k}"] for k in exits])[pos, np.arange(n)])) for m in meds]
        real_f = [pr / x for pr, x in zip(pred, t)]
        sweep.append({"policy": pol.name, "threshold": pol.threshold, "calibrated_default": j == calibrated_index,
                      **({"per_layer_thresholds": list(pol.per_layer)} if pol.per_layer else {}), "score": s_,
                      "relative_score": s_ / full_score if full_score else None, "avg_exit_layer": avg,
                      **percentiles(pooled[f"sweep_{j}"]), "speedup_vs_full_chain": float(np.median(sp_full)),
                      "speedup_vs_monolithic": float(np.median(sp_mono)), "layer_estimate": est,
                      "realization": float(np.median(real)),
                      "predicted_from_forced_exits_ms": float(np.median(pred)),
                      "realization_vs_forced_exits": float(np.median(real_f)),
                      "spread": {"speedup_vs_full_chain": _spread(sp_full), "speedup_vs_monolithic": _spread(sp_mono),
                                 "realization": _spread(real), "realization_vs_forced_exits": _spread(real_f)}})
    result["sweep"] = sweep
    if sweep:
        result["spread"]["realization_min_over_sweep"] = _spread([min(r["spread"]["realization"]["median"] for r in sweep)])
    if parity is not None:
        om, of = mean("ort_monolithic"), mean("ort_full_chain")
        ratio = lambda a, b: {"median": float(np.median([x / y for x, y in zip(a, b)])),  # noqa: E731
                              **{k: v for k, v in _spread([x / y for x, y in zip(a, b)]).items() if k != "median"}}
        result["backend"] = "native"
        result["native_blas"] = model.backend.blas
        result["vs_onnxruntime"] = {
            "parity": parity, "ort_monolithic": percentiles(pooled["ort_monolithic"]),
            "ort_full_chain": percentiles(pooled["ort_full_chain"]),
            "native_full_chain_over_ort_full_chain": ratio(full, of),
            "native_full_chain_over_ort_monolithic": ratio(full, om),
            "native_no_exit_checks_over_ort_monolithic": ratio(mono, om),
            "sweep_speedup_vs_ort_monolithic": [ratio(om, mean(f"sweep_{j}")) for j in range(len(sweep_cfg))]}
    result["eager"] = []  # filled by benchmarks.eager in a process of its own (see there)
    result["env"] = environment(threads)
    result["ort_pool"] = ort_pool
    return result


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(16, 4.8))
    L = result["num_layers"]
    for pol in sorted({r["policy"] for r in result["sweep"]}):
        rows = [r for r in result["sweep"] if r["policy"] == pol]
        ax[0].plot([r["avg_exit_layer"] for r in rows], [r["score"] for r in rows], "o-", label=pol)
        ax[1].plot([r["layer_estimate"] for r in rows], [r["speedup_vs_full_chain"] for r in rows], "o", label=pol)
    fk = result["forced_exit"]["per_layer"]
    ax[0].plot([r["exit_layer"] for r in fk], [r["score"] for r in fk], "k--", alpha=0.6, label="layer-wise (forced)")
    ax[0].set(xlabel="average exit layer", ylabel=result["metric"], title="dev score vs average exit layer")
    lim = max([1.0] + [r["layer_estimate"] for r in result["sweep"]]) * 1.05
    ax[1].plot([1, lim], [1, lim], "k:", label="ideal (realization 1.0)")
    ax[1].set(xlabel="layer estimate L / avg exit layer", ylabel="measured speed-up vs full chain",
              title="measured vs estimated speed-up")
    f = result["forced_exit"]["fit_mean_ms"]
    ks = np.asarray([r["exit_layer"] for r in fk])
    ax[2].plot(ks, [r["latency_ms_mean"] for r in fk], "o", label="forced exit (mean)")
    if f is not None:
        ax[2].plot(ks, f["intercept_ms"] + f["slope_ms_per_layer"] * ks, "-",
                   label=f"fit {f['intercept_ms']:.2f} + {f['slope_ms_per_layer']:.2f} k ms (r2 {f['r2']:.4f})")
    ax[2].axhline(result["monolithic"]["latency_ms_mean"], color="gray", ls="--", label="monolithic (mean)")
    ax[2].set(xlabel="exit layer k", ylabel="latency (ms)", title=f"batch 1, chain overhead {result['chain_overhead']:.3f}")
    for a in ax:
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.suptitle(f"{result['task']}: {result['samples']} dev samples, {result['env']['cpu']}, {result['env']['threads']} threads",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(formatter_class=HelpFormatter, prog="python -m benchmarks.latency", description="Measure early-exit latency (batch 1).")
    p.add_argument("--artifact", required=True, help="artifact folder written by `python -m export.build`")
    p.add_argument("--task", required=True, help="task whose dev split is timed (sst2, rte, mrpc, stsb, sick)")
    p.add_argument("--data-dir", default=None, help="folder with glue/ and sick/ (default: ../shared/data)")
    p.add_argument("--max-samples", type=positive_int, default=None, help="first N dev rows only (default: all)")
    p.add_argument("--repeats", type=positive_int, default=3, help="runs of each sample per pass (per-sample median)")
    p.add_argument("--passes", type=positive_int, default=3,
                   help="independent timing passes; ratios are reported as their median (and range)")
    p.add_argument("--threads", type=positive_int, default=None, help="intra-op threads (default: all cores)")
    p.add_argument("--checkpoint", default=None, help="for the eager comparison (default: the manifest's source)")
    p.add_argument("--no-eager", action="store_true", help="skip the PyTorch eager comparison")
    p.add_argument("--policies", nargs="+", default=None, choices=list(SWEEP_POLICIES), help="exit policies to sweep (default: every one the model supports)")
    p.add_argument("--points", type=positive_int, default=6, help="thresholds per policy, spread over average exit layers")
    p.add_argument("--thresholds", type=finite_float, nargs="+", default=None,
                   help="explicit thresholds (instead of spread ones) for the policies given")
    p.add_argument("--backend", default="cpu",
                   help="cpu: onnxruntime; native: the C runtime (runtime/native), with onnxruntime's chain and "
                        "monolithic graph timed beside it and its outputs compared; cuda/tensorrt: benchmarks.gpu")
    p.add_argument("--ort-pool", default="shared", choices=["shared", "per-session"],
                   help="onnxruntime's threads: shared = one process-wide pool (its fastest; its workers spin "
                        "between runs), per-session = a pool per session with spinning off (use it with "
                        "--backend native, whose runs are interleaved with onnxruntime's)")
    p.add_argument("--out", default="results/latency", help="output folder for the JSON and PNG results")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    backend = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--backend"),
                   next((a.split("=", 1)[1] for a in argv if a.startswith("--backend=")), "cpu"))
    if backend not in ("cpu", "native"):
        # GPU: the CUDA-graph executor has its own benchmark (CUDA events, random-weight configs).
        from . import gpu
        return gpu.main(argv)
    argv = [a for i, a in enumerate(argv) if not (a == "--backend" or a.startswith("--backend=")
                                                   or (i > 0 and argv[i - 1] == "--backend"))]
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        res = run_benchmark(args.artifact, args.task, args.data_dir, args.max_samples, args.repeats, args.threads,
                            args.policies, args.points,
                            {p: args.thresholds for p in (args.policies or SWEEP_POLICIES)} if args.thresholds else None,
                            passes=args.passes, backend=backend, ort_pool=args.ort_pool)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # artifact / policy errors carry their own message
        from runtime import ArtifactError, PolicyError
        if isinstance(e, (ArtifactError, PolicyError)):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise
    res["command"] = "python -m benchmarks.latency " + " ".join(sys.argv[1:] if argv is None else argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latency.json").write_text(json.dumps(res, indent=2) + "\n")
    plot(res, out / "latency.png")
    if not args.no_eager:  # PyTorch eager at the same decisions, in a process without onnxruntime sessions
        cmd = [sys.executable, "-m", "benchmarks.eager", "--latency", str(out / "latency.json"),
               "--repeats", str(args.repeats)] + (["--checkpoint", args.checkpoint] if args.checkpoint else []) \
            + (["--data-dir", args.data_dir] if args.data_dir else [])
        r = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)
        if r.returncode != 0:
            log.warning("eager comparison skipped: %s", r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode)
        res = json.loads((out / "latency.json").read_text())
    print(f"chain_overhead {res['chain_overhead']:.3f}  (full chain {res['full_chain']['latency_ms_mean']:.2f} ms, "
          f"monolithic {res['monolithic']['latency_ms_mean']:.2f} ms)")
    for r in res["sweep"]:
        print(f"{r['policy']:>10} t={r['threshold']:<6} score={r['score']:.4f} avg_exit={r['avg_exit_layer']:.2f} "
              f"speedup={r['speedup_vs_full_chain']:.2f}x (est {r['layer_estimate']:.2f}x) realization={r['realization']:.3f} "
              f"(vs forced exits {r['realization_vs_forced_exits']:.3f})")
    for r in res["eager"]:
        print(f"eager at {r['decisions']}: {r['eager']['latency_ms_mean']:.2f} ms vs onnx chain "
              f"{r['onnx_chain_latency_ms_mean']:.2f} ms ({r['speedup_onnx_vs_eager']:.2f}x)")
    print(f"wrote {out / 'latency.json'} and {out / 'latency.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
