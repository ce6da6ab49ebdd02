"""onnxruntime's per-operator profile of one stage graph against the monolithic graph.

For one input, both graphs run `runs` times with profiling on; the kernel time of every node
(median over runs) is summed by operator type. The monolithic graph's layer operators
(Attention, MatMul, SkipLayerNormalization, BiasGelu) are divided by the number of layers it
runs, so each row reads: what one layer's operators cost inside the stage graph vs inside the
monolithic graph; the rest of the stage graph's rows are its exit head and mask preparation.
"""
from __future__ import annotations

import collections
import json
import os
import tempfile
from pathlib import Path

import numpy as np

LAYER_OPS = ("Attention", "MatMul", "SkipLayerNormalization", "BiasGelu", "FusedMatMul", "Gelu", "LayerNormalization")


def _node_times(sess, feeds: dict, runs: int) -> tuple[dict[str, float], dict[str, str], float]:
    import time
    walls = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        walls.append((time.perf_counter() - t0) * 1e6)
    prof = Path(sess.end_profiling())
    events = json.loads(prof.read_text())
    prof.unlink(missing_ok=True)
    per_node: dict[str, list[float]] = collections.defaultdict(list)
    op_of: dict[str, str] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            node = e["name"][: -len("_kernel_time")]
            per_node[node].append(float(e["dur"]))
            op_of[node] = e.get("args", {}).get("op_name", "?")
    med = {k: float(np.median(v[len(v) // 5:] or v)) for k, v in per_node.items()}  # first runs warm up
    return med, op_of, float(np.median(walls[len(walls) // 5:]))


def _by_op(med: dict[str, float], op_of: dict[str, str]) -> dict[str, float]:
    out: collections.Counter = collections.Counter()
    for node, us in med.items():
        out[op_of[node]] += us
    return dict(out.most_common())


def profile(artifact: Path, enc, threads: int, runs: int = 200) -> dict:
    from runtime import load_manifest
    from runtime import manifest as M
    from runtime.backends.ort import make_session
    m = load_manifest(artifact)
    role = m.stage_roles[len(m.stage_roles) // 2]
    g = m.graphs[role]
    n_layers = g.layers[1] - g.layers[0] + 1 if g.layers else 1
    rng = np.random.default_rng(0)
    b, s = enc.shape
    mask = enc.attention_mask
    mf = mask.astype(np.float32)
    feeds_stage = {M.HIDDEN_IN: rng.standard_normal((b, s, m.hidden_size)).astype(np.float32), M.ATTENTION_MASK: mask,
                   M.POOL_WEIGHTS: (mf / mf.sum(axis=1, keepdims=True))[:, None, :]}
    feeds_stage = {k: feeds_stage[k] for k in g.inputs}
    feeds_mono = {M.INPUT_IDS: enc.input_ids, M.TOKEN_TYPE_IDS: enc.token_type_ids, M.ATTENTION_MASK: mask}
    feeds_mono = {k: feeds_mono[k] for k in m.graphs[M.MONOLITHIC].inputs}
    out = {"input_tokens": s, "runs": runs, "stage": role, "stage_layers": n_layers}
    with tempfile.TemporaryDirectory() as d:
        for name, gr, feeds, layers in ((role, g, feeds_stage, n_layers),
                                        (M.MONOLITHIC, m.graphs[M.MONOLITHIC], feeds_mono, m.num_layers)):
            sess = make_session(m.path(gr.file), threads, thread_pool="shared", profile_prefix=os.path.join(d, name))
            med, op_of, wall = _node_times(sess, feeds, runs)
            by_op = _by_op(med, op_of)
            out[name] = {"kernel_us_by_op": by_op, "kernel_us_total": float(sum(by_op.values())),
                         "run_wall_us": wall, "nodes": len(med),
                         "per_layer_kernel_us": {k: v / layers for k, v in by_op.items() if k in LAYER_OPS}}
    st, mo = out[role], out[M.MONOLITHIC]
    layer_stage = sum(st["per_layer_kernel_us"].values()) / 1.0
    layer_mono = sum(mo["per_layer_kernel_us"].values())
    out["comparison"] = {
        "layer_ops_us_in_stage_per_layer": layer_stage, "layer_ops_us_in_monolithic_per_layer": layer_mono,
        "layer_ops_ratio": layer_stage / layer_mono if layer_mono else None,
        "stage_other_ops_us": st["kernel_us_total"] - layer_stage * n_layers,
        "stage_other_ops": {k: v for k, v in st["kernel_us_by_op"].items() if k not in LAYER_OPS},
        "stage_run_wall_minus_kernels_us": st["run_wall_us"] - st["kernel_us_total"],
        "monolithic_run_wall_minus_kernels_us": mo["run_wall_us"] - mo["kernel_us_total"]}
    return out
