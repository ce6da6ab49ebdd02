"""`python -m benchmarks.scaling --artifact ART [--seq-lens 16 32 64 128 256 512] [--out DIR]`

Latency (batch 1) against sequence length for the monolithic graph, the full chain and early
exit at every layer k, interleaved per length; plus the peak resident memory of a process that
loads the artifact and serves one request (measured in a fresh subprocess).
Inputs are synthetic token ids of exactly the given length (graphs take any length up to the
backbone's position table; the runtime's tokenizer cuts text at the artifact's max_seq_len).
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np

from runtime.backends.ort import default_threads
from runtime.model import EarlyExitModel
from runtime.tokenize import Encoded
from runtime.cli import HelpFormatter, positive_int

from .timing import environment, interleaved, percentiles, save_figure, write_result

log = logging.getLogger("benchmarks.scaling")


def synthetic(seq: int, vocab_size: int, seed: int = 0) -> Encoded:
    """One row of `seq` random token ids (any ids time the same; this is not meant to be text)."""
    rng = np.random.default_rng(seed + seq)
    ids = rng.integers(min(5, vocab_size - 1), vocab_size, size=(1, seq), dtype=np.int64)
    return Encoded(ids, np.zeros_like(ids), np.ones_like(ids), np.zeros(1, bool))


# VmHWM (this process's peak RSS), not ru_maxrss: Linux carries ru_maxrss over exec from the
# parent, so a child of a large benchmark process would report the parent's peak.
_RSS_CODE = """
import sys, json
def hwm():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'):
            return int(line.split()[1]) / 1024
from runtime import EarlyExitModel
before = hwm()
m = EarlyExitModel(sys.argv[1], threads=int(sys.argv[2]), load_monolithic=sys.argv[3] == '1', thread_pool='shared')
m.predict(['a short input to serve once'] , ['a second text'] if m.task.text_pair else None)
print(json.dumps({"peak_rss_mib_after_imports": before, "peak_rss_mib_loaded_and_served": hwm()}))
"""


def peak_rss(artifact: str, threads: int, with_monolithic: bool) -> dict:
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", _RSS_CODE, artifact, str(threads), "1" if with_monolithic else "0"],
                         cwd=root, capture_output=True, text=True, timeout=300, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run(artifact: str, seq_lens: list[int], repeats: int, threads: int | None) -> dict:
    threads = threads or default_threads()
    model = EarlyExitModel(artifact, threads=threads, thread_pool="shared")
    L = model.num_layers
    max_pos = int(model.manifest.backbone.extra.get("max_position_embeddings") or 512)
    vocab = model.manifest.backbone.vocab_size
    rows = []
    for s in seq_lens:
        if s > max_pos:
            log.warning("skipping seq %d: beyond the backbone's %d positions", s, max_pos)
            continue
        encs = [synthetic(s, vocab, seed=j) for j in range(4)]
        pols = {k: model.policy("fixed", exit_layer=k) for k in range(1, L + 1)}
        variants = {"monolithic": lambda i: model.run_monolithic(encs[i])}
        for k, pol in pols.items():
            variants[f"exit_{k}"] = (lambda pol: lambda i: model.run(encs[i], pol))(pol)
        med = interleaved(variants, len(encs), repeats)
        mono = med["monolithic"].mean()
        rows.append({"seq_len": s, "monolithic": percentiles(med["monolithic"]),
                     "full_chain": percentiles(med[f"exit_{L}"]),
                     "chain_overhead": float(med[f"exit_{L}"].mean() / mono),
                     "exit_at_layer_ms_mean": [float(med[f"exit_{k}"].mean()) for k in range(1, L + 1)]})
        log.info("seq %d: mono %.2f ms, chain overhead %.3f", s, mono, rows[-1]["chain_overhead"])
    mem = {"with_monolithic": peak_rss(artifact, threads, True), "chain_only": peak_rss(artifact, threads, False)}
    return {"num_layers": L, "repeats": repeats, "rows": rows, "memory": mem,
            "precision": model.manifest.raw.get("precision", "fp32"), "env": environment(threads)}


def plot(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    s = [r["seq_len"] for r in res["rows"]]
    ax.plot(s, [r["monolithic"]["latency_ms_mean"] for r in res["rows"]], "ks--", label="monolithic")
    L = res["num_layers"]
    for k in sorted({1, (L + 1) // 2, L}):
        ax.plot(s, [r["exit_at_layer_ms_mean"][k - 1] for r in res["rows"]], "o-", label=f"chain, exit at layer {k}")
    ax.set(xscale="log", yscale="log", xlabel="sequence length", ylabel="latency (ms, batch 1)",
           title=f"latency vs sequence length ({res['precision']})")
    ax.set_xticks(s, [str(x) for x in s])
    save_figure(fig, ax, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(formatter_class=HelpFormatter, prog="python -m benchmarks.scaling")
    p.add_argument("--artifact", required=True)
    p.add_argument("--seq-lens", type=positive_int, nargs="+", default=[16, 32, 64, 128, 256, 512])
    p.add_argument("--repeats", type=positive_int, default=5)
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--out", default="results/scaling")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    res = run(args.artifact, args.seq_lens, args.repeats, args.threads)
    path = write_result(args.out, "scaling.json", res, "benchmarks.scaling", argv)
    plot(res, path.with_suffix(".png"))
    for r in res["rows"]:
        print(f"seq {r['seq_len']:>4}: monolithic {r['monolithic']['latency_ms_mean']:.2f} ms, full chain "
              f"{r['full_chain']['latency_ms_mean']:.2f} ms (overhead {r['chain_overhead']:.3f})")
    print(json.dumps(res["memory"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
