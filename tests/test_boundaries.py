"""Dependency direction: the runtime core never imports torch (or transformers)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _loaded_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sorted(sys.modules)))"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, check=True).stdout
    return set(out.split())


def test_importing_runtime_loads_no_torch():
    mods = _loaded_after("import runtime, runtime.session, runtime.predict, runtime.metrics, runtime.tasks")
    assert "onnxruntime" in mods  # the check itself works: the runtime's own dependency is there
    assert "torch" not in mods and "transformers" not in mods


def test_running_the_runtime_loads_no_torch(rte_art):
    code = (f"from runtime import EarlyExitModel\nm = EarlyExitModel(r'{rte_art}', threads=1)\n"
            "print(m.predict(['a cat.'], ['a dog.'])[0].exit_layer)")
    mods = _loaded_after(code)
    assert "torch" not in mods and "transformers" not in mods


GPU_BACKENDS = {"cuda_graphs.py"}  # may import torch and the training model, lazily (inside functions)


def test_runtime_sources_do_not_import_train_export_or_benchmarks():
    import ast
    for f in (ROOT / "runtime").glob("*.py"):
        text = f.read_text()
        if f.name in GPU_BACKENDS:  # module level: no torch, no training code
            top = [n for n in ast.parse(text).body if isinstance(n, (ast.Import, ast.ImportFrom))]
            names = {(n.module or "") if isinstance(n, ast.ImportFrom) else a.name for n in top
                     for a in (n.names if isinstance(n, ast.Import) else [None])}
            assert not {m.split(".")[0] for m in names} & {"train", "export", "benchmarks", "torch"}, (f.name, names)
            continue
        for pkg in ("train", "export", "benchmarks", "torch"):
            assert f"from {pkg}" not in text and f"import {pkg}" not in text, (f.name, pkg)


def test_importing_the_gpu_backends_loads_no_torch():
    mods = _loaded_after("import runtime.cuda_graphs, runtime.trt_engine")
    assert "torch" not in mods and "train" not in mods and "tensorrt" not in mods
