"""Property-based fuzzing (hypothesis) of what the runtime parses from outside: manifest.json and
predict's inputs. Whatever comes in, the answer is a result or the module's own one-line error,
never another exception. CI runs a short pass; `BERXIT_FUZZ_SECONDS=600 pytest tests/test_fuzz.py`
keeps generating new examples for that long (scripts/fuzz_runtime.sh)."""
from __future__ import annotations

import json
import math
import os
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime import ArtifactError, InputError
from runtime.manifest import parse_manifest
from runtime.model import default_policy

SECONDS = float(os.environ.get("BERXIT_FUZZ_SECONDS", "0"))
EXAMPLES = 120

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(["", "../x", "/etc/hostname", "layer_01.onnx", "logits", "batch", "0" * 64, "a" * 64, "mean",
                       "confidence", "fixed", "patience", "lte", "classification", "regression"]) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


def _mutate(raw, path, value, delete):
    if not path:
        return value
    d = raw
    for p in path[:-1]:
        d = d[p]
    if delete and isinstance(d, dict):
        del d[path[-1]]
    elif delete and isinstance(d, list):
        d.pop(path[-1])
    else:
        d[path[-1]] = value
    return raw


COUNT: dict[str, int] = {}


def _count(name: str) -> None:
    COUNT[name] = COUNT.get(name, 0) + 1


def _repeat(fn, name: str):
    """Run a @given test once (CI), or again and again with fresh examples for SECONDS; with
    BERXIT_FUZZ_REPORT set, append the number of examples and the time taken to that file."""
    t0 = time.time()
    fn()
    while time.time() < t0 + SECONDS:
        fn()
    report = os.environ.get("BERXIT_FUZZ_REPORT")
    if report:
        with open(report, "a") as f:
            f.write(f"{name}: {COUNT.get(name, 0)} examples in {time.time() - t0:.0f} s, no unexpected exception\n")


def test_fuzz_manifest(rte_art):
    base = json.loads((rte_art / "manifest.json").read_text())
    paths = list(_paths(base))

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=not SECONDS)
    @given(st.lists(st.tuples(st.sampled_from(paths), json_values, st.booleans()), min_size=1, max_size=3))
    def check(edits):
        _count("manifest")
        raw = json.loads(json.dumps(base))
        for path, value, delete in edits:
            try:
                raw = _mutate(raw, path, value, delete)
            except (KeyError, IndexError, TypeError):
                continue  # an earlier edit removed the path
        try:
            m = parse_manifest(raw, rte_art)
            default_policy(m)
        except ArtifactError as e:
            assert str(e) and "\n" not in str(e)
    _repeat(check, "manifest")


def test_fuzz_text_inputs(rte_art):
    from runtime.tokenize import TextEncoder
    pair = TextEncoder(rte_art / "tokenizer.json", 32, text_pair=True)
    single = TextEncoder(rte_art / "tokenizer.json", 32, text_pair=False)
    texts = st.lists(st.text(max_size=80) | st.binary(max_size=80) | st.integers() | st.none(), max_size=5)

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=not SECONDS)
    @given(texts, texts | st.none(), st.booleans())
    def check(a, b, use_pair):
        _count("text_inputs")
        enc = pair if use_pair else single
        try:
            e = enc.encode(a, b)
        except InputError as err:
            assert str(err) and "\n" not in str(err)
            return
        n, s = e.shape
        assert n == len(a) and 1 <= s <= 32 and (e.attention_mask.sum(axis=1) >= 1).all()
        assert e.input_ids.dtype == np.int64 and e.truncated.shape == (n,)
    _repeat(check, "text_inputs")


def test_fuzz_input_files(rte_art, tmp_path):
    from runtime.predict import read_inputs

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=not SECONDS)
    @given(st.binary(max_size=200) | st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
           st.booleans())
    def check(content, pair):
        _count("input_files")
        f = tmp_path / "in.txt"
        f.write_bytes(content)
        try:
            a, b = read_inputs(str(f), pair)
        except InputError as err:
            assert str(err) and "\n" not in str(err)
            return
        assert a and (b is None) == (not pair) and (b is None or len(b) == len(a))
    _repeat(check, "input_files")


def test_fuzz_policy_values():
    from runtime.policies import PolicyError, make_policy
    nums = st.none() | st.booleans() | st.integers(-10, 10) | st.floats() | st.text(max_size=3) | \
        st.lists(st.floats(), max_size=4)

    @settings(max_examples=EXAMPLES * 3, deadline=None, derandomize=not SECONDS)
    @given(st.sampled_from(["confidence", "entropy", "lte", "patience", "fixed", "x"]), nums, nums, nums, nums)
    def check(name, threshold, exit_layer, patience, per_layer):
        _count("policy_values")
        try:
            p = make_policy(name, task_kind="classification", num_layers=3, signals=("confidence", "entropy", "lte"),
                            threshold=threshold, exit_layer=exit_layer, patience=patience, per_layer=per_layer)
        except PolicyError:
            return
        for t in (p.per_layer or ()) + ((p.threshold,) if p.threshold is not None else ()):
            assert math.isfinite(t)
    _repeat(check, "policy_values")
