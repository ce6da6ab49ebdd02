"""`python -m benchmarks.throughput --artifact ART --task T [--batch-sizes 1 8 32 64] [--out DIR]`

Batched early exit: the dev split in its own order is cut into batches (padded per batch to the
longest row); rows whose policy says exit leave the batch between layers. For every batch size
the early-exit chain, the full chain and the monolithic graph run interleaved batch by batch;
throughput = rows / total time. Tokenization is outside the timed region for all variants.
Writes DIR/throughput.json and DIR/throughput.png.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from runtime.datasets import load_split
from runtime.metrics import score
from runtime.backends.ort import default_threads
from runtime.model import EarlyExitModel
from runtime.tasks import get_task
from runtime.cli import HelpFormatter, finite_float, positive_int

from .timing import environment, interleaved, save_figure, write_result

log = logging.getLogger("benchmarks.throughput")


def run(artifact: str, task_name: str, data_dir: str | None, batch_sizes: list[int], policy_args: dict,
        max_samples: int | None, repeats: int, threads: int | None) -> dict:
    threads = threads or default_threads()
    model = EarlyExitModel(artifact, threads=threads, thread_pool="shared")
    task = get_task(task_name)
    if model.task.name != task.name:
        raise ValueError(f"the artifact was trained for task '{model.task.name}', not '{task.name}'.")
    dev = load_split(task.name, "dev", data_dir).head(max_samples)
    pol = model.policy(**policy_args) if policy_args.get("name") else model.policy()
    full_pol = model.policy("fixed", exit_layer=model.num_layers)
    n, rows = len(dev), []
    # Reference: batch-1 decisions and the full-depth score.
    ref_exit = np.zeros(n, np.int64)
    ref_logits = np.zeros((n, model.num_outputs), np.float32)
    full_logits = np.zeros_like(ref_logits)
    for i in range(n):
        enc = model.encode([dev.text_a[i]], None if dev.text_b is None else [dev.text_b[i]])
        r = model.run(enc, pol)
        ref_exit[i], ref_logits[i] = r.exit_layer[0], r.logits[0]
        full_logits[i] = model.run(enc, full_pol).logits[0]
    full_score = score(task.metric, full_logits, dev.labels, task.kind)
    ee_score = score(task.metric, ref_logits, dev.labels, task.kind)
    for bs in batch_sizes:
        starts = list(range(0, n, bs))
        encs = [model.encode(dev.text_a[s:s + bs], None if dev.text_b is None else dev.text_b[s:s + bs]) for s in starts]
        got = np.concatenate([model.run(e, pol).exit_layer for e in encs])
        variants = {"early_exit": lambda j: model.run(encs[j], pol),
                    "full_chain": lambda j: model.run(encs[j], full_pol),
                    "monolithic": lambda j: model.run_monolithic(encs[j])}
        med = interleaved(variants, len(encs), repeats)
        tput = {k: n / (v.sum() / 1e3) for k, v in med.items()}
        rows.append({"batch_size": bs, "batches": len(encs),
                     "padded_seq_len_mean": float(np.mean([e.shape[1] for e in encs])),
                     "throughput_rows_per_s": tput,
                     "early_exit_vs_monolithic": tput["early_exit"] / tput["monolithic"],
                     "full_chain_vs_monolithic": tput["full_chain"] / tput["monolithic"],
                     "exit_layers_equal_batch1": bool(np.array_equal(got, ref_exit))})
        log.info("batch %d: %s", bs, {k: round(v, 1) for k, v in tput.items()})
    return {"task": task.name, "samples": n, "repeats": repeats, "policy": pol.describe(),
            "avg_exit_layer": float(ref_exit.mean()), "num_layers": model.num_layers,
            "score_early_exit": ee_score, "score_full_depth": full_score,
            "relative_score": ee_score / full_score if full_score else None,
            "precision": model.manifest.raw.get("precision", "fp32"), "rows": rows, "env": environment(threads)}


def plot(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    bss = [r["batch_size"] for r in res["rows"]]
    for k in ("early_exit", "full_chain", "monolithic"):
        ax.plot(bss, [r["throughput_rows_per_s"][k] for r in res["rows"]], "o-", label=k)
    ax.set(xscale="log", xlabel="batch size", ylabel="rows / s",
           title=f"{res['task']} {res['precision']}: {res['policy']}, rel. score {res['relative_score']:.3f}")
    ax.set_xticks(bss, [str(b) for b in bss])
    save_figure(fig, ax, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(formatter_class=HelpFormatter, prog="python -m benchmarks.throughput")
    p.add_argument("--artifact", required=True)
    p.add_argument("--task", required=True)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--batch-sizes", type=positive_int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--policy", default=None, help="default: the manifest's (calibrated) default policy")
    p.add_argument("--threshold", type=finite_float, default=None)
    p.add_argument("--max-samples", type=positive_int, default=None)
    p.add_argument("--repeats", type=positive_int, default=3)
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--out", default="results/throughput")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if any(b < 1 for b in args.batch_sizes):
        p.error("batch sizes must be >= 1")
    try:
        res = run(args.artifact, args.task, args.data_dir, args.batch_sizes,
                  {"name": args.policy, "threshold": args.threshold}, args.max_samples, args.repeats, args.threads)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    path = write_result(args.out, "throughput.json", res, "benchmarks.throughput", argv)
    plot(res, path.with_suffix(".png"))
    for r in res["rows"]:
        t = r["throughput_rows_per_s"]
        print(f"batch {r['batch_size']:>3}: early exit {t['early_exit']:.1f} rows/s, full chain {t['full_chain']:.1f}, "
              f"monolithic {t['monolithic']:.1f} -> {r['early_exit_vs_monolithic']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
