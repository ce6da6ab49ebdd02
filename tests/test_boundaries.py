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
    mods = _loaded_after("import runtime, runtime.model, runtime.chain, runtime.predict, runtime.calibrate, runtime.tasks, "
                         "runtime.scheduler, runtime.serve, runtime.serve_ray")
    assert "numpy" in mods and "runtime.chain" in mods  # the check itself works
    assert "torch" not in mods and "transformers" not in mods
    assert not {"starlette", "uvicorn", "ray"} & mods  # the server's extras load only when serving


def test_running_the_runtime_loads_no_torch(rte_art):
    code = (f"from runtime import EarlyExitModel\nm = EarlyExitModel(r'{rte_art}', threads=1)\n"
            "print(m.predict(['a cat.'], ['a dog.'])[0].exit_layer)")
    mods = _loaded_after(code)
    assert "torch" not in mods and "transformers" not in mods


def test_runtime_sources_do_not_import_train_export_benchmarks_or_torch():
    """runtime/ is the base of the dependency direction: nothing in it (backends included, at any
    depth, lazily or not) imports the training code, export, benchmarks or torch."""
    import ast
    for f in (ROOT / "runtime").rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            top = {n.split(".")[0] for n in names}
            assert not top & {"train", "export", "benchmarks", "torch", "transformers"}, (f, names)


def test_importing_the_gpu_backends_loads_no_torch():
    mods = _loaded_after("import runtime.backends.tensorrt, runtime.backends.ort")
    assert "torch" not in mods and "train" not in mods and "tensorrt" not in mods
