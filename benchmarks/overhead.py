"""`python -m benchmarks.overhead --artifact ART [--task sst2 | --seq-len 128] [--passes 3] [--compare NAME=ART ...]`

What the split into per-stage graphs costs at batch 1, and where it goes. Every variant runs
interleaved, input by input, in one process (timing.interleaved), in `--passes` independent
passes; each ratio is reported as the median over passes with its range.

  monolithic   the one-graph reference, through the runtime (IOBinding)
  chain        every stage, as the runtime runs it (the loop: decisions, checks) -- exit at the last
  raw_chain    the same sessions and buffers run back to back, no Python loop between them
  raw_bare     raw_chain with every exit head cut off (stages output hidden states only)
  exit_k       the runtime exiting at exit layer k (a linear fit a + b k over k)
  calibrated   the runtime at the artifact's calibrated default policy (if it has one)
  NAME         --compare: another artifact's full chain (another head layout, exit set, ...)

so chain / monolithic = 1 + boundaries (raw_bare / monolithic - 1) + exit heads
((raw_chain - raw_bare) / monolithic) + the Python loop ((chain - raw_chain) / monolithic).
`--profile` adds onnxruntime's per-operator profile of a middle stage and of the monolithic
graph (benchmarks/op_profile.py).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from runtime.cli import HelpFormatter, fail, positive_int

from .timing import environment, interleaved, linear_fit, write_result


def strip_head(path: Path) -> bytes:
    """The stage graph with only `hidden_states_out` as output (the head's nodes removed)."""
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
    used = {i for n in m.graph.node for i in n.input}
    ins = [i for i in m.graph.input if i.name in used or i.name == "hidden_states"]
    del m.graph.input[:]
    m.graph.input.extend(ins)
    return m.SerializeToString()


def host_mask_index(data: bytes) -> bytes:
    """A fused stage graph that reads the fused attention's mask index ([B] int32 row lengths) as an
    input named `mask_index` instead of computing it from `attention_mask` (Cast + ReduceSum) in
    every graph. Raises ValueError when the graph has no such pattern (unfused graphs)."""
    import onnx
    m = onnx.load_from_string(data)
    g = m.graph
    cast = [n for n in g.node if n.op_type == "Cast" and n.input[0] == "attention_mask"]
    red = [n for n in g.node if n.op_type == "ReduceSum" and cast and n.input[0] == cast[0].output[0]]
    if len(cast) != 1 or len(red) != 1:
        raise ValueError("no fused-attention mask index (Cast + ReduceSum of attention_mask) in this graph")
    index = red[0].output[0]
    for n in (cast[0], red[0]):
        g.node.remove(n)
    for n in g.node:
        for i, x in enumerate(n.input):
            if x == index:
                n.input[i] = "mask_index"
    used = {i for n in g.node for i in n.input}
    ins = [i for i in g.input if i.name != "attention_mask" or i.name in used]
    del g.input[:]
    g.input.extend(ins)
    g.input.append(onnx.helper.make_tensor_value_info("mask_index", onnx.TensorProto.INT32, ["batch"]))
    return m.SerializeToString()


_BARE: dict[tuple[str, str], object] = {}  # (artifact, role) -> the stage's session with its head cut off


class _Raw:
    """The artifact's sessions bound to fixed buffers for one input, run back to back."""

    def __init__(self, model, enc, bare: bool):
        from runtime import manifest as M
        from runtime.backends.ort import make_session
        m, be = model.manifest, model.backend
        b, s = enc.shape
        hid = [np.zeros((b, s, m.hidden_size), np.float32) for _ in range(2)]
        mask = np.ascontiguousarray(enc.attention_mask)
        mf = mask.astype(np.float32)
        pool_w = np.ascontiguousarray((mf / mf.sum(axis=1, keepdims=True))[:, None, :])
        ins = {M.INPUT_IDS: np.ascontiguousarray(enc.input_ids), M.TOKEN_TYPE_IDS: np.ascontiguousarray(enc.token_type_ids)}
        self.runs = []
        emb = be.sessions[M.EMBEDDINGS]
        self.runs.append((emb, self._bind(emb, {k: ins[k] for k in m.graphs[M.EMBEDDINGS].inputs},
                                          {M.HIDDEN_IN: hid[0]})))
        self._keep = [hid, mask, pool_w, ins]
        for j, role in enumerate(m.stage_roles):
            g = m.graphs[role]
            if bare:
                key = (str(m.root), role)
                if key not in _BARE:
                    _BARE[key] = make_session(strip_head(m.path(g.file)), model.threads, thread_pool=be.thread_pool)
                sess = _BARE[key]
                names = [i.name for i in sess.get_inputs()]
            else:
                sess, names = be.sessions[role], list(g.inputs)
            feeds = {M.HIDDEN_IN: hid[j % 2], M.ATTENTION_MASK: mask, M.POOL_WEIGHTS: pool_w}
            outs = {M.HIDDEN_OUT: hid[(j + 1) % 2]}
            if not bare:
                for name, spec in g.outputs.items():
                    if name != M.HIDDEN_OUT:
                        shape = [b if d == "batch" else d for d in spec.shape]
                        a = np.zeros(shape, np.float32)
                        self._keep.append(a)
                        outs[name] = a
            self.runs.append((sess, self._bind(sess, {k: feeds[k] for k in names}, outs)))

    @staticmethod
    def _bind(sess, ins: dict, outs: dict):
        b = sess.io_binding()
        for k, a in ins.items():
            b.bind_input(k, "cpu", 0, a.dtype, list(a.shape), a.ctypes.data)
        for k, a in outs.items():
            b.bind_output(k, "cpu", 0, a.dtype, list(a.shape), a.ctypes.data)
        return b

    def __call__(self) -> None:
        for sess, b in self.runs:
            sess.run_with_iobinding(b)


def inputs(model, task: str | None, data_dir: str | None, max_samples: int | None, seq_len: int | None) -> tuple[list, str]:
    """Batch-1 encoded inputs: a task's dev rows, or 4 synthetic rows of `seq_len` tokens."""
    from runtime.tokenize import Encoded
    if task is not None:
        from runtime.datasets import load_split
        dev = load_split(task, "dev", data_dir).head(max_samples)
        return [model.encode([dev.text_a[i]], None if dev.text_b is None else [dev.text_b[i]]) for i in range(len(dev))], \
            f"{task} dev ({len(dev)} rows)"
    rng = np.random.default_rng(0)
    s = min(seq_len, model.manifest.max_seq_len)
    encs = []
    for _ in range(4):
        ids = rng.integers(1000, min(20000, model.manifest.backbone.vocab_size), (1, s)).astype(np.int64)
        encs.append(Encoded(ids, np.zeros_like(ids), np.ones_like(ids), np.zeros(1, bool)))
    return encs, f"synthetic, {s} tokens"


def measure(artifact: str, encs: list, passes: int, repeats: int, threads: int, thread_pool: str,
            compare: dict[str, str]) -> dict:
    from runtime import EarlyExitModel
    model = EarlyExitModel(artifact, threads=threads, thread_pool=thread_pool)
    others = {k: EarlyExitModel(v, threads=threads, thread_pool=thread_pool, load_monolithic=False)
              for k, v in compare.items()}
    L, exits = model.num_layers, model.exits
    n = len(encs)
    raw = [_Raw(model, e, bare=False) for e in encs]
    bare = [_Raw(model, e, bare=True) for e in encs]
    full = model.policy("fixed", exit_layer=L)
    v = {"monolithic": lambda i: model.run_monolithic(encs[i]), "chain": lambda i: model.run(encs[i], full),
         "raw_chain": lambda i: raw[i](), "raw_bare": lambda i: bare[i]()}
    for x in exits[:-1]:
        v[f"exit_{x}"] = (lambda p: lambda i: model.run(encs[i], p))(model.policy("fixed", exit_layer=x))
    cal = model.manifest.default_policy.get("calibration")
    if isinstance(cal, dict):
        pol = model.policy()
        v["calibrated"] = lambda i: model.run(encs[i], pol)
        avg_exit = float(np.mean([model.run(e, pol).exit_layer[0] for e in encs]))
    for name, om in others.items():
        v[name] = (lambda om: lambda i: om.run(encs[i], om.policy("fixed", exit_layer=om.num_layers)))(om)
    per_pass = []
    for p in range(passes):
        med = interleaved(v, n, repeats, seed=p)
        mean = {k: float(t.mean()) for k, t in med.items()}
        mono = mean["monolithic"]
        r = {"ms_mean": mean, "chain_overhead": mean["chain"] / mono,
             "boundaries": mean["raw_bare"] / mono - 1, "exit_heads": (mean["raw_chain"] - mean["raw_bare"]) / mono,
             "python_loop": (mean["chain"] - mean["raw_chain"]) / mono,
             **{f"{k}_over_monolithic": mean[k] / mono for k in others}}
        ks = [x for x in exits[:-1]] + [L]
        ts = [mean[f"exit_{x}"] for x in exits[:-1]] + [mean["chain"]]
        if len(ks) > 1:
            r["exit_fit"] = linear_fit(ks, ts)
            r["exit_cost_per_layer_over_monolithic_share"] = r["exit_fit"]["slope_ms_per_layer"] / (mono / L)
        if "calibrated" in mean:
            r["calibrated_speedup_vs_monolithic"] = mono / mean["calibrated"]
            r["calibrated_realization"] = (mean["chain"] / mean["calibrated"]) / (L / avg_exit)
        per_pass.append(r)
    keys = [k for k, val in per_pass[0].items() if isinstance(val, float)]
    summary = {k: {"median": float(np.median([r[k] for r in per_pass])), "min": float(min(r[k] for r in per_pass)),
                   "max": float(max(r[k] for r in per_pass))} for k in keys}
    out = {"num_layers": L, "exits": list(exits), "head_layout": model.manifest.head_layout, "inputs": n,
           "seq_len_mean": float(np.mean([e.shape[1] for e in encs])), "summary": summary, "passes": per_pass}
    if "calibrated" in v:
        out["calibrated_policy"] = model.policy().describe()
        out["calibrated_avg_exit_layer"] = avg_exit
    for om in [model, *others.values()]:
        om.close()
    return out


def parse_args(argv):
    p = argparse.ArgumentParser(formatter_class=HelpFormatter, prog="python -m benchmarks.overhead",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--artifact", required=True, help="artifact folder (with a monolithic graph)")
    p.add_argument("--task", default=None, help="time on this task's dev rows (else synthetic inputs of --seq-len)")
    p.add_argument("--data-dir", default=None, help="folder with glue/ and sick/ (default: ../shared/data)")
    p.add_argument("--max-samples", type=positive_int, default=None, help="first N dev rows only")
    p.add_argument("--seq-len", type=positive_int, default=128, help="tokens of the synthetic inputs (without --task)")
    p.add_argument("--passes", type=positive_int, default=3, help="independent timing passes (medians are reported)")
    p.add_argument("--repeats", type=positive_int, default=None,
                   help="runs of each input per pass (default: 3 with --task, 100 with synthetic inputs)")
    p.add_argument("--threads", type=positive_int, default=None, help="intra-op threads (default: all cores)")
    p.add_argument("--thread-pool", default="shared", choices=["shared", "per-session"],
                   help="onnxruntime threading (runtime.backends.ort)")
    p.add_argument("--compare", nargs="+", default=[], metavar="NAME=ART",
                   help="other artifacts of the same model whose full chain is timed in the same passes")
    p.add_argument("--profile", action="store_true", help="also record onnxruntime's per-operator profile")
    p.add_argument("--name", default="overhead", help="result file name (OUT/NAME.json)")
    p.add_argument("--out", default="results/overhead", help="output folder")
    a = p.parse_args(argv)
    for c in a.compare:
        if "=" not in c:
            p.error(f"--compare takes NAME=ART, got {c!r}")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    from runtime import ArtifactError, EarlyExitModel, InputError, PolicyError
    from runtime.backends.ort import default_threads
    threads = a.threads or default_threads()
    try:
        probe = EarlyExitModel(a.artifact, threads=threads, thread_pool=a.thread_pool, load_monolithic=False)
        if not probe.manifest.has_monolithic:
            raise ArtifactError("this artifact has no monolithic graph; re-export without --no-monolithic.")
        encs, what = inputs(probe, a.task, a.data_dir, a.max_samples, a.seq_len)
        probe.close()
        repeats = a.repeats or (3 if a.task else 100)
        res = measure(a.artifact, encs, a.passes, repeats, threads, a.thread_pool, dict(c.split("=", 1) for c in a.compare))
        if a.profile:
            from .op_profile import profile
            res["profile"] = profile(Path(a.artifact), encs[len(encs) // 2], threads)
    except (ArtifactError, PolicyError, InputError, ValueError, FileNotFoundError) as e:
        return fail(e)
    res.update({"artifact": str(Path(a.artifact).resolve()), "inputs_desc": what, "repeats": repeats,
                "thread_pool": a.thread_pool, "env": environment(threads)})
    path = write_result(a.out, f"{a.name}.json", res, "benchmarks.overhead", argv)
    s = res["summary"]
    print(f"{what}, {a.passes} passes (median [min, max]):")
    for k, val in s.items():
        print(f"  {k:44s} {val['median']:8.4f}  [{val['min']:.4f}, {val['max']:.4f}]")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
