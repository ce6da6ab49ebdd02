"""`python -m benchmarks.overhead --artifact ART [--seq-lens 32 128] [--repeats 300] [--out results/overhead]`

Where the chain's overhead over the monolithic graph goes, at batch 1, all variants interleaved in
one process on the runtime's sessions (shared thread pool and arena, IOBinding):

  monolithic   the one-graph reference (embeddings, all layers, the last head)
  chain        embeddings + every layer graph as the runtime runs them (each with its exit head)
  chain_bare   the same layer graphs with the exit head cut off (only `hidden_states_out` kept):
               what chaining costs without computing exit signals
  embeddings   the embeddings graph alone
  layer        one middle layer graph, with and without its head

so chain_overhead = chain / monolithic splits into the cost of graph boundaries (chain_bare /
monolithic) and the cost of the exit heads ((chain - chain_bare) / monolithic). With --profile it
also writes onnxruntime's per-node profile of one layer graph and of the monolithic graph
(kernel time by operator type), the evidence for where the time is spent.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from runtime.cli import HelpFormatter, positive_int

from .timing import environment, interleaved, write_result


def strip_head(path: Path) -> bytes:
    """The layer graph with only `hidden_states_out` as output (the head's nodes removed)."""
    import onnx
    m = onnx.load(str(path))
    need, keep = {"hidden_states_out"}, []
    for n in reversed(list(m.graph.node)):
        if any(o in need for o in n.output):
            keep.append(n)
            need.update(i for i in n.input if i)
    del m.graph.node[:]
    m.graph.node.extend(reversed(keep))
    outs = [o for o in m.graph.output if o.name == "hidden_states_out"]
    del m.graph.output[:]
    m.graph.output.extend(outs)
    return m.SerializeToString()


def _bind(sess, ins: dict, outs: dict):
    b = sess.io_binding()
    for k, a in ins.items():
        b.bind_input(k, "cpu", 0, a.dtype, list(a.shape), a.ctypes.data)
    for k, a in outs.items():
        b.bind_output(k, "cpu", 0, a.dtype, list(a.shape), a.ctypes.data)
    return b


def measure(artifact: Path, seq: int, repeats: int, threads: int) -> dict:
    from runtime import load_manifest
    from runtime.manifest import layer_role
    from runtime.backends.ort import make_session

    m = load_manifest(artifact)
    L, H, C = m.num_layers, m.hidden_size, m.task.num_outputs
    emb_inputs = m.graphs["embeddings"].inputs
    rng = np.random.default_rng(0)
    ids = rng.integers(5, min(5000, m.backbone.vocab_size), (1, seq)).astype(np.int64)
    tt, mask = np.zeros_like(ids), np.ones_like(ids)
    hid = np.zeros((2, 1, seq, H), np.float32)
    small = {"logits": np.zeros((1, C), np.float32), **{s: np.zeros(1, np.float32) for s in m.signals}}
    emb_in = {"input_ids": ids, **({"token_type_ids": tt} if "token_type_ids" in emb_inputs else {})}
    emb = make_session(m.path(m.graphs["embeddings"].file), threads)
    layers = [make_session(m.path(m.graphs[layer_role(i)].file), threads) for i in range(1, L + 1)]
    bare = [make_session(strip_head(m.path(m.graphs[layer_role(i)].file)), threads) for i in range(1, L + 1)]
    mono = make_session(m.path(m.graphs["monolithic"].file), threads)
    be = _bind(emb, emb_in, {"hidden_states": hid[0]})
    bl = [_bind(s, {"hidden_states": hid[i % 2], "attention_mask": mask}, {"hidden_states_out": hid[(i + 1) % 2], **small})
          for i, s in enumerate(layers)]
    bb = [_bind(s, {"hidden_states": hid[i % 2], "attention_mask": mask}, {"hidden_states_out": hid[(i + 1) % 2]})
          for i, s in enumerate(bare)]
    bm = _bind(mono, {**emb_in, "attention_mask": mask}, small)
    mid = L // 2

    def chain(_):
        emb.run_with_iobinding(be)
        for s, b in zip(layers, bl):
            s.run_with_iobinding(b)

    def chain_bare(_):
        emb.run_with_iobinding(be)
        for s, b in zip(bare, bb):
            s.run_with_iobinding(b)

    variants = {"monolithic": lambda _: mono.run_with_iobinding(bm), "chain": chain, "chain_bare": chain_bare,
                "embeddings": lambda _: emb.run_with_iobinding(be),
                "layer": lambda _: layers[mid].run_with_iobinding(bl[mid]),
                "layer_bare": lambda _: bare[mid].run_with_iobinding(bb[mid])}
    t = interleaved(variants, n_items=repeats, repeats=1, warmup=3)
    med = {k: float(np.median(v)) for k, v in t.items()}
    mono_ms = med["monolithic"]
    return {"seq_len": seq, "median_ms": med,
            "chain_overhead": med["chain"] / mono_ms,
            "boundaries_overhead": med["chain_bare"] / mono_ms,
            "heads_share": (med["chain"] - med["chain_bare"]) / mono_ms,
            "head_us_per_layer": 1e3 * (med["chain"] - med["chain_bare"]) / L,
            "head_us_one_layer_alone": 1e3 * (med["layer"] - med["layer_bare"]),
            "embeddings_share": med["embeddings"] / mono_ms}


def profile(artifact: Path, seq: int, runs: int = 200) -> dict:
    """onnxruntime's per-node profile: kernel microseconds by operator type (median per run)."""
    import collections

    from runtime import load_manifest
    from runtime.backends.ort import default_threads, make_session
    from runtime.manifest import layer_role
    m = load_manifest(artifact)
    threads = default_threads()
    rng = np.random.default_rng(0)
    ids = rng.integers(5, min(5000, m.backbone.vocab_size), (1, seq)).astype(np.int64)
    feeds_mono = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    if "token_type_ids" in m.graphs["embeddings"].inputs:
        feeds_mono["token_type_ids"] = np.zeros_like(ids)
    feeds_layer = {"hidden_states": rng.standard_normal((1, seq, m.hidden_size)).astype(np.float32),
                   "attention_mask": np.ones_like(ids)}
    out = {}
    for role, feeds in ((layer_role(m.num_layers // 2), feeds_layer), ("monolithic", feeds_mono)):
        s = make_session(m.path(m.graphs[role].file), threads, profile_prefix=f"/tmp/berxit_profile_{role}")
        for _ in range(runs):
            s.run(None, feeds)
        prof = Path(s.end_profiling())
        per_node = collections.defaultdict(list)
        op_of = {}
        for e in json.loads(prof.read_text()):
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                per_node[e["name"]].append(e["dur"])
                op_of[e["name"]] = e["args"]["op_name"]
        prof.unlink(missing_ok=True)
        by_op = collections.Counter()
        for node, d in per_node.items():
            by_op[op_of[node]] += float(np.median(d))
        out[role] = {"kernel_us_by_op": dict(by_op.most_common()), "kernel_us_total": float(sum(by_op.values())),
                     "nodes": len(per_node)}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(formatter_class=HelpFormatter, prog="python -m benchmarks.overhead", description=__doc__.split("\n\n")[0])
    p.add_argument("--artifact", required=True)
    p.add_argument("--seq-lens", type=positive_int, nargs="+", default=[32, 128])
    p.add_argument("--repeats", type=positive_int, default=300)
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--profile", action="store_true", help="also write onnxruntime's per-operator profile")
    p.add_argument("--out", default="results/overhead")
    a = p.parse_args(argv)
    from runtime.backends.ort import default_threads
    threads = a.threads or default_threads()
    try:
        rows = [measure(Path(a.artifact), s, a.repeats, threads) for s in a.seq_lens]
        prof = {str(s): profile(Path(a.artifact), s) for s in a.seq_lens} if a.profile else None
    except Exception as e:  # noqa: BLE001 - artifact errors carry their own message
        print(f"error: {e}", file=sys.stderr)
        return 2
    res = {"artifact": str(a.artifact), "rows": rows, "profile": prof, "env": environment(threads)}
    write_result(a.out, "overhead.json", res, "benchmarks.overhead", argv)
    print(f"{'seq':>4} {'chain/mono':>10} {'bare/mono':>10} {'heads':>7} {'head us/layer':>14} {'emb share':>9}")
    for r in rows:
        print(f"{r['seq_len']:4d} {r['chain_overhead']:10.3f} {r['boundaries_overhead']:10.3f} {r['heads_share']:7.3f} "
              f"{r['head_us_per_layer']:14.1f} {r['embeddings_share']:9.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
