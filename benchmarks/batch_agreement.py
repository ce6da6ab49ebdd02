"""`python -m benchmarks.batch_agreement --artifacts A [B ...] --task T [--threshold-quantile Q]`

Does a row's answer depend on the rows it is batched with? Each dev row runs alone (batch 1)
and inside random batches (early exit with compaction: rows leave the batch as they exit), with
a confidence / LTE policy whose threshold is the Q-quantile of exit 1's signal (rows exit at
every depth). Counts rows whose label (or value within 1e-3) and exit layer differ. No timing.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from runtime.datasets import load_split
from runtime.model import EarlyExitModel


def run(art: str, task: str, data_dir, batch: int, q: float, seed: int = 0) -> dict:
    m = EarlyExitModel(art, load_monolithic=False, thread_pool="shared")
    dev = load_split(task, "dev", data_dir)
    b = lambda idx: None if dev.text_b is None else [dev.text_b[i] for i in idx]  # noqa: E731
    name = "confidence" if m.task.kind == "classification" else "lte"
    first = m.layer_outputs(m.encode(dev.text_a[:256], b(range(min(256, len(dev))))))[0]
    pol = m.policy(name, threshold=float(np.quantile(getattr(first, name), q)))
    alone = [m.run(m.encode([dev.text_a[i]], b([i])), pol) for i in range(len(dev))]
    perm = np.random.default_rng(seed).permutation(len(dev))
    diff_label = diff_exit = 0
    max_abs = 0.0
    for s in range(0, len(perm), batch):
        idx = perm[s:s + batch]
        r = m.run(m.encode([dev.text_a[i] for i in idx], b(idx)), pol)
        for k, i in enumerate(idx):
            a = alone[i]
            same = (r.logits[k].argmax() == a.logits[0].argmax()) if m.task.kind == "classification" \
                else abs(r.logits[k][0] - a.logits[0][0]) <= 1e-3
            diff_label += int(not same)
            diff_exit += int(r.exit_layer[k] != a.exit_layer[0])
            max_abs = max(max_abs, float(np.abs(r.logits[k] - a.logits[0]).max()))
    int8 = m.manifest.optimization.get("int8") or {}
    m.close()
    return {"artifact": art, "precision": m.manifest.precision, "int8_method": int8.get("method"), "rows": len(dev),
            "batch": batch, "policy": pol.describe(), "answers_differ": diff_label, "exit_layers_differ": diff_exit,
            "max_abs_logit_diff": max_abs}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.batch_agreement")
    p.add_argument("--artifacts", nargs="+", required=True)
    p.add_argument("--task", required=True)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threshold-quantile", type=float, default=0.5)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    rows = [run(x, a.task, a.data_dir, a.batch, a.threshold_quantile) for x in a.artifacts]
    for r in rows:
        print(json.dumps(r))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
