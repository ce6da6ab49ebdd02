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


def test_runtime_sources_do_not_import_train_export_or_benchmarks():
    for f in (ROOT / "runtime").glob("*.py"):
        text = f.read_text()
        for pkg in ("train", "export", "benchmarks", "torch"):
            assert f"from {pkg}" not in text and f"import {pkg}" not in text, (f.name, pkg)
