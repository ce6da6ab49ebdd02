"""`python -m benchmarks.overhead_ab --artifact ART [--signals-artifact ART2] [--seq-lens 25 64 128] [--passes 3]`

A/B timings for each hypothesis about what the split into per-stage graphs costs. The graphs are
run raw (sessions bound to fixed buffers, back to back: no Python loop), so each variant differs
from the monolithic graph in exactly one respect. onnxruntime's threading is process-wide, so
every thread configuration runs in a process of its own; within it every variant is interleaved
input by input, in `--passes` passes (medians with ranges).

  threading      shared pool (2 threads) | per-session pools, spinning off | 1 thread
  arena          each session its own memory arena | one arena for every session
                 (onnxruntime's session.use_env_allocators)
  exit head      the stage graphs as exported | their heads cut off (strip_head)
  head layout    "logits" (one Gemm; signals derived by the host) | "signals" (every signal in
                 the graph), with --signals-artifact
  boundaries     every layer its own graph | all layers in one stage graph (--merged-artifact,
                 export --exit-layers L)
  mask index     each stage graph computes the fused attention's mask index from the int64 mask
                 (Cast + ReduceSum) | the host computes it once and feeds it (host_mask_index)
  head on host   the head in the graph | stages with the head cut off, the host (numpy) pooling
                 the hidden states and applying a head of the same shape after every stage

Per variant it records chain / monolithic, and with --profile the per-operator kernel time of the
chain's stages and of the monolithic graph in the same runs (which operator got slower).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from runtime.cli import HelpFormatter, fail, positive_int

from .timing import environment, write_result

MODES = ("shared", "per-session", "one-thread")


def _session(data: bytes, mode: str, threads: int, env_arena: bool, profile: str | None):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if mode == "shared":
        so.use_per_session_threads = False
    else:
        so.intra_op_num_threads = 1 if mode == "one-thread" else threads
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if env_arena:
        so.add_session_config_entry("session.use_env_allocators", "1")
    if profile:
        so.enable_profiling, so.profile_file_prefix = True, profile
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


class _Variant:
    """One artifact's graphs as sessions of one kind, bound to buffers for one input shape."""

    def __init__(self, art: str, seq: int, mode: str, threads: int, env_arena: bool, bare: bool,
                 prof_dir: str | None, tag: str, kind: str = "graph_head"):
        from runtime import load_manifest
        from runtime import manifest as M

        from .overhead import host_mask_index, strip_head
        m = load_manifest(art)
        self.kind = kind  # "graph_head" (as exported), "mask_index" (fed by the host), "host_head"
        bare = bare or kind == "host_head"
        self.m, self.sessions = m, {}
        rng = np.random.default_rng(0)
        ids = rng.integers(1000, min(20000, m.backbone.vocab_size), (1, seq)).astype(np.int64)
        mask = np.ones_like(ids)
        self.keep = [ids, mask, np.zeros_like(ids), (mask / mask.sum()).astype(np.float32)[:, None, :],
                     mask.sum(axis=1).astype(np.int32)]
        hid = [np.zeros((1, seq, m.hidden_size), np.float32) for _ in range(2)]
        self.keep += hid
        feeds = {M.INPUT_IDS: ids, M.TOKEN_TYPE_IDS: self.keep[2], M.ATTENTION_MASK: mask, M.POOL_WEIGHTS: self.keep[3]}

        def mk(role, data):
            p = os.path.join(prof_dir, f"{tag}_{role}") if prof_dir else None
            s = _session(data, mode, threads, env_arena, p)
            self.sessions[role] = s
            return s

        def bind(s, ins, outs):
            b = s.io_binding()
            for k, a in ins.items():
                b.bind_input(k, "cpu", 0, a.dtype, list(a.shape), a.ctypes.data)
            for k, a in outs.items():
                b.bind_output(k, "cpu", 0, a.dtype, list(a.shape), a.ctypes.data)
            return s, b
        emb = mk(M.EMBEDDINGS, m.read_graph(M.EMBEDDINGS))
        self.chain = [bind(emb, {k: feeds[k] for k in m.graphs[M.EMBEDDINGS].inputs}, {M.HIDDEN_IN: hid[0]})]
        for j, role in enumerate(m.stage_roles):
            g = m.graphs[role]
            data = strip_head(m.path(g.file)) if bare else m.read_graph(role)
            s = mk(role, host_mask_index(data) if kind == "mask_index" else data)
            names = [i.name for i in s.get_inputs()]
            ins = {M.HIDDEN_IN: hid[j % 2], M.ATTENTION_MASK: mask, M.POOL_WEIGHTS: self.keep[3], "mask_index": self.keep[4]}
            outs = {M.HIDDEN_OUT: hid[(j + 1) % 2]}
            if not bare:
                for n, spec in g.outputs.items():
                    if n != M.HIDDEN_OUT:
                        a = np.zeros([1 if d == "batch" else d for d in spec.shape], np.float32)
                        self.keep.append(a)
                        outs[n] = a
            self.chain.append(bind(s, {k: ins[k] for k in names}, outs))
        # host_head: after each stage, the pooled state and a head of the artifact's shape, in numpy
        self.hid, self.pool_w, self.cls = hid, self.keep[3][0, 0], not m.uses_pool_weights
        self.pooled = np.zeros((1, m.hidden_size), np.float32)
        self.head_w = rng.standard_normal((m.hidden_size, m.head_width)).astype(np.float32)
        self.head_b = np.zeros(m.head_width, np.float32)
        self.head_out = np.zeros((1, m.head_width), np.float32)
        self.mono = None
        if m.has_monolithic:
            mono = mk(M.MONOLITHIC, m.read_graph(M.MONOLITHIC))
            logits = np.zeros((1, m.task.num_outputs), np.float32)
            self.keep.append(logits)
            self.mono = bind(mono, {k: feeds[k] for k in m.graphs[M.MONOLITHIC].inputs}, {M.LOGITS: logits})

    def run_chain(self) -> None:
        if self.kind != "host_head":
            for s, b in self.chain:
                s.run_with_iobinding(b)
            return
        s, b = self.chain[0]
        s.run_with_iobinding(b)
        for j, (s, b) in enumerate(self.chain[1:]):
            s.run_with_iobinding(b)
            h = self.hid[(j + 1) % 2][0]
            if self.cls:
                self.pooled[0] = h[0]
            else:
                np.dot(self.pool_w, h, out=self.pooled[0])
            np.dot(self.pooled, self.head_w, out=self.head_out)
            np.add(self.head_out, self.head_b, out=self.head_out)

    def run_mono(self) -> None:
        s, b = self.mono
        s.run_with_iobinding(b)

    def kernel_us_by_op(self, runs: int) -> dict[str, dict[str, float]]:
        """Kernel time per run, by operator type, of the chain's stages and of the monolithic graph."""
        out = {"chain": collections.Counter(), "monolithic": collections.Counter()}
        for role, s in self.sessions.items():
            events = json.loads(Path(s.end_profiling()).read_text())
            for e in events:
                if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
                    out["monolithic" if role == "monolithic" else "chain"][e["args"]["op_name"]] += e["dur"] / runs
        return {k: dict(v.most_common()) for k, v in out.items()}


def run_mode(args) -> dict:
    """Every variant of one thread configuration, interleaved (this process's threading is fixed)."""
    threads = args.threads
    if args.mode == "shared":
        from onnxruntime.capi import _pybind_state as C
        C.set_global_thread_pool_sizes(threads, 1)
    import onnxruntime as ort
    ort.create_and_register_allocator(
        ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT), None)
    rows = []
    for seq in args.seq_lens:
        v = {"own_arena": _Variant(args.artifact, seq, args.mode, threads, False, False, None, "own"),
             "env_arena": _Variant(args.artifact, seq, args.mode, threads, True, False, None, "env"),
             "heads_cut": _Variant(args.artifact, seq, args.mode, threads, False, True, None, "bare"),
             "head_on_host": _Variant(args.artifact, seq, args.mode, threads, False, False, None, "host", "host_head")}
        try:
            v["host_mask_index"] = _Variant(args.artifact, seq, args.mode, threads, False, False, None, "mi", "mask_index")
        except ValueError:  # unfused graphs: no mask index to move
            pass
        if args.signals_artifact:
            v["signals_head"] = _Variant(args.signals_artifact, seq, args.mode, threads, False, False, None, "sig")
        if args.merged_artifact:
            v["one_stage"] = _Variant(args.merged_artifact, seq, args.mode, threads, False, False, None, "one")
        fns = {"monolithic": v["own_arena"].run_mono, "monolithic_env_arena": v["env_arena"].run_mono,
               **{f"chain_{k}": x.run_chain for k, x in v.items()}}
        for f in fns.values():
            for _ in range(5):
                f()
        passes = []
        for p in range(args.passes):
            t = {k: [] for k in fns}
            order = list(fns)
            rng = np.random.default_rng(p)
            for _ in range(args.repeats):
                rng.shuffle(order)
                for k in order:
                    t0 = time.perf_counter()
                    fns[k]()
                    t[k].append((time.perf_counter() - t0) * 1e3)
            med = {k: float(np.median(x)) for k, x in t.items()}
            passes.append({"ms_median": med, **{f"{k}_over_monolithic": med[k] / med["monolithic"] for k in fns
                                                if k != "monolithic"}})
        keys = [k for k in passes[0] if k.endswith("_over_monolithic")]
        row = {"seq_len": seq, "passes": passes,
               "summary": {k: {"median": float(np.median([q[k] for q in passes])), "min": min(q[k] for q in passes),
                               "max": max(q[k] for q in passes)} for k in keys}}
        if args.profile:  # profiled sessions of their own, after the timing (profiling slows every node)
            prof, n_runs = tempfile.mkdtemp(), 50
            row["kernel_us_by_op"] = {}
            for k, env_arena in (("own_arena", False), ("env_arena", True)):
                pv = _Variant(args.artifact, seq, args.mode, threads, env_arena, False, prof, k)
                for _ in range(n_runs):
                    pv.run_chain()
                    pv.run_mono()
                row["kernel_us_by_op"][k] = pv.kernel_us_by_op(n_runs)
        rows.append(row)
    return {"mode": args.mode, "threads": 1 if args.mode == "one-thread" else threads, "rows": rows}


def parse_args(argv):
    p = argparse.ArgumentParser(formatter_class=HelpFormatter, prog="python -m benchmarks.overhead_ab",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--artifact", required=True, help="artifact with an exit at every layer and a monolithic graph")
    p.add_argument("--signals-artifact", default=None, help="the same model exported with --head signals")
    p.add_argument("--merged-artifact", default=None, help="the same model exported with --exit-layers L (one stage)")
    p.add_argument("--seq-lens", type=positive_int, nargs="+", default=[25, 64, 128], help="tokens per input")
    p.add_argument("--passes", type=positive_int, default=3, help="independent timing passes")
    p.add_argument("--repeats", type=positive_int, default=100, help="runs of each variant per pass")
    p.add_argument("--threads", type=positive_int, default=2, help="intra-op threads of the multi-threaded modes")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES), help="thread configurations")
    p.add_argument("--profile", action="store_true", help="also record per-operator kernel times")
    p.add_argument("--out", default="results/overhead", help="output folder (ab.json)")
    p.add_argument("--mode", default=None, choices=list(MODES), help=argparse.SUPPRESS)  # one subprocess's mode
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.mode is not None:  # a child process: print the result as JSON
        print(json.dumps(run_mode(a)))
        return 0
    root = Path(__file__).resolve().parents[1]
    results = []
    for mode in a.modes:
        cmd = [sys.executable, "-m", "benchmarks.overhead_ab", *(argv if argv is not None else sys.argv[1:]), "--mode", mode]
        r = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
        if r.returncode != 0:
            return fail(f"the {mode} run failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
        results.append(json.loads(r.stdout.strip().splitlines()[-1]))
    res = {"artifact": str(Path(a.artifact).resolve()), "signals_artifact": a.signals_artifact,
           "merged_artifact": a.merged_artifact, "modes": results, "env": environment(a.threads)}
    path = write_result(a.out, "ab.json", res, "benchmarks.overhead_ab", argv)
    for m in results:
        for row in m["rows"]:
            print(f"{m['mode']:>12} seq {row['seq_len']:4d}: " + "  ".join(
                f"{k.replace('_over_monolithic', '')} {v['median']:.3f}" for k, v in row["summary"].items()))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
