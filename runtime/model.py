"""The library API users embed:

    with EarlyExitModel("artifacts/sst2") as m:
        for p in m.predict(texts, batch_size=64):
            print(p.label, p.exit_layer)

An EarlyExitModel is a checked manifest, the artifact's tokenizer, one backend (onnxruntime by
default) and the early-exit loop over it (runtime/chain.py). It can be shared by threads.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .backends import open_backend
from .chain import NONFINITE, Chain, ChainResult
from .fsutil import ArtifactError
from .manifest import Manifest, load_manifest
from .policies import ExitPolicy, LayerOutputs, PolicyError, make_policy
from .tokenize import Encoded, InputError, TextEncoder


@dataclass
class Prediction:
    """One row's result, in input order."""

    label: str | None  # classification: the predicted label (None when `error` is set)
    score: float | None  # regression: the predicted value (None when `error` is set)
    exit_layer: int
    logits: list[float]
    signals: dict[str, float]
    truncated: bool
    error: str | None = None  # why this row has no answer (non-finite model outputs)

    def to_json(self) -> dict:
        """A JSON-safe dict (non-finite numbers become null; `error` says why)."""
        fin = lambda x: x if x is None or np.isfinite(x) else None  # noqa: E731
        return {"label": self.label, "score": fin(self.score), "exit_layer": self.exit_layer,
                "logits": [fin(x) for x in self.logits], "signals": {k: fin(v) for k, v in self.signals.items()},
                "truncated": self.truncated, "error": self.error}


def default_policy(m: Manifest) -> ExitPolicy:
    """The manifest's default policy, checked against the model (ArtifactError if unusable)."""
    d = m.default_policy or {"name": "fixed", "exit_layer": m.num_layers}
    try:
        return make_policy(d.get("name"), task_kind=m.task.kind, num_layers=m.num_layers, signals=m.signals,
                           num_classes=max(m.task.num_outputs, 2), threshold=d.get("threshold"),
                           exit_layer=d.get("exit_layer"), patience=d.get("patience"),
                           per_layer=d.get("per_layer_thresholds"), exits=m.exits)
    except PolicyError as e:
        raise ArtifactError(f"manifest.json: default_policy is not usable ({e}); calibrate again with "
                            f"`python -m runtime.calibrate` or re-export the artifact.") from None


def _check_threads(threads: int | None) -> int | None:
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    return threads


def _chain_result(exit_layer: np.ndarray, logits: np.ndarray, signals: dict[str, np.ndarray],
                  status: np.ndarray) -> ChainResult:
    """A backend's own loop's outputs in the Chain's result type (status != 0: non-finite outputs)."""
    if not status.any():  # (the common case, cheaply: this runs right after the backend's loop)
        return ChainResult(exit_layer, logits, signals, [None] * len(status))
    err = [None if s == 0 else f"{NONFINITE} (NaN or infinity) at layer {int(x)}: the artifact is broken; re-export it"
           for s, x in zip(status.tolist(), exit_layer.tolist())]
    return ChainResult(exit_layer, logits, signals, err)


class EarlyExitModel:
    """A loaded artifact. `backend`: cpu (default), cuda, ort-tensorrt, tensorrt (see
    runtime.backends). `thread_pool`: 'per-session' (default: safe beside other onnxruntime users
    in the process) or 'shared' (one process-wide pool: fastest for a process that only serves
    this toolkit's models, as its CLIs and server do)."""

    def __init__(self, artifact_dir: str | os.PathLike, *, backend: str = "cpu", threads: int | None = None,
                 thread_pool: str = "per-session", load_monolithic: bool = True, device_buffers: bool | None = None):
        self.manifest: Manifest = load_manifest(artifact_dir)
        m = self.manifest
        self.task = m.task
        self.num_layers = m.num_layers
        self.exits = m.exits
        self.signals = m.signals
        self.hidden_size = m.hidden_size
        self.num_outputs = m.task.num_outputs
        self.threads = _check_threads(threads)
        self._default = self._default_policy()  # a bad default fails at load, not at the first call
        self.encoder = TextEncoder(m.read_tokenizer(), m.max_seq_len, m.task.text_pair, pad_id=m.tokenizer.pad_token_id)
        self.backend_name = backend
        self.backend = open_backend(backend, m, threads=threads, thread_pool=thread_pool,
                                    load_monolithic=load_monolithic, device_buffers=device_buffers)
        self.chain = Chain(self.backend, m.exits, m.task.kind, self.num_outputs, m.signals)
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------------------
    def close(self) -> None:
        """Release sessions, engines and device memory. Further calls raise."""
        if not self._closed:
            self._closed = True
            self.chain.close()
            self.backend.close()

    def __enter__(self) -> "EarlyExitModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _alive(self) -> None:
        if self._closed:
            raise RuntimeError("this EarlyExitModel is closed; open the artifact again.")

    @property
    def providers(self) -> list[str]:
        return list(getattr(self.backend, "providers", []))

    @property
    def buffer_device(self) -> str | None:
        return getattr(self.backend, "device", None)

    @property
    def max_batch(self) -> int | None:
        return self.backend.max_batch

    # -- policies -------------------------------------------------------------------------------
    def policy(self, name: str | None = None, threshold: float | None = None, exit_layer: int | None = None,
               patience: int | None = None, per_layer: list[float] | None = None) -> ExitPolicy:
        """A policy checked against this model; with no name, the manifest's default."""
        if name is None:
            return self._default
        return make_policy(name, task_kind=self.task.kind, num_layers=self.num_layers, signals=self.signals,
                           num_classes=max(self.num_outputs, 2), threshold=threshold, exit_layer=exit_layer,
                           patience=patience, per_layer=per_layer, exits=self.exits)

    def _default_policy(self) -> ExitPolicy:
        return default_policy(self.manifest)

    # -- running --------------------------------------------------------------------------------
    def encode(self, texts_a: Sequence[str], texts_b: Sequence[str] | None = None) -> Encoded:
        return self.encoder.encode(texts_a, texts_b)

    def _check_batch(self, enc: Encoded) -> None:
        self._alive()
        if self.max_batch is not None and enc.shape[0] > self.max_batch:
            raise InputError(f"a batch of {enc.shape[0]} rows is larger than backend '{self.backend_name}' takes "
                             f"({self.max_batch}); use predict(..., batch_size=...) or smaller batches.")

    def run(self, enc: Encoded, policy: ExitPolicy | None = None) -> ChainResult:
        """One tokenized batch with early exit (rows leave the batch when `policy` says so)."""
        self._check_batch(enc)
        fast = getattr(self.backend, "run_early_exit", None)
        if fast is not None:  # the backend runs the whole loop itself (native: one C call)
            return _chain_result(*fast(enc.input_ids, enc.token_type_ids, enc.attention_mask, policy or self._default))
        return self.chain.run(enc.input_ids, enc.token_type_ids, enc.attention_mask, policy or self._default)

    def layer_outputs(self, enc: Encoded) -> list[LayerOutputs]:
        """Every exit's outputs for every row (no exits): evaluation and calibration use this."""
        self._check_batch(enc)
        return self.chain.all_outputs(enc.input_ids, enc.token_type_ids, enc.attention_mask)

    def run_monolithic(self, enc: Encoded) -> LayerOutputs:
        """The single-graph reference model (all layers, last head)."""
        self._check_batch(enc)
        if not self.backend.has_monolithic:
            raise ArtifactError("this artifact has no monolithic graph (or it was not loaded); re-export without "
                                "--no-monolithic, or open it with load_monolithic=True.")
        fast = getattr(self.backend, "run_early_exit", None)
        if fast is not None:  # native: the C loop without exit checks (every layer, the last head)
            return LayerOutputs(fast(enc.input_ids, enc.token_type_ids, enc.attention_mask, None)[1])
        return self.chain.monolithic(enc.input_ids, enc.token_type_ids, enc.attention_mask)

    def predict(self, texts_a: Sequence[str], texts_b: Sequence[str] | None = None,
                policy: ExitPolicy | None = None, batch_size: int = 64) -> list[Prediction]:
        """Tokenize, run with early exit, and return one Prediction per input, in input order.
        Inputs are split into batches of `batch_size` rows of similar length."""
        self._alive()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        if self.max_batch is not None:
            batch_size = min(batch_size, self.max_batch)
        if isinstance(texts_a, (str, bytes)):
            texts_a = [texts_a]
        if isinstance(texts_b, (str, bytes)):
            texts_b = [texts_b]
        texts_a = list(texts_a)
        texts_b = None if texts_b is None else list(texts_b)
        if texts_b is not None and len(texts_b) != len(texts_a):
            raise InputError(f"{len(texts_a)} first texts but {len(texts_b)} second texts; pass them in pairs.")
        n = len(texts_a)
        if n == 0:
            raise InputError("no text given; pass at least one text.")
        pol = policy or self._default
        if n <= batch_size:
            return self._predict_batch(texts_a, texts_b, pol)
        size = lambda i: len(texts_a[i]) + (len(texts_b[i]) if texts_b is not None else 0)  # noqa: E731
        order = sorted(range(n), key=size)
        out: list[Prediction | None] = [None] * n
        for s in range(0, n, batch_size):
            idx = order[s:s + batch_size]
            preds = self._predict_batch([texts_a[i] for i in idx], None if texts_b is None else [texts_b[i] for i in idx], pol)
            for i, p in zip(idx, preds):
                out[i] = p
        return out  # type: ignore[return-value]

    def _predict_batch(self, a: list, b: list | None, policy: ExitPolicy) -> list[Prediction]:
        enc = self.encode(a, b)
        res = self.run(enc, policy)
        preds = []
        for r in range(enc.shape[0]):
            lg, err = res.logits[r], res.error[r]
            if err is not None:
                label, value = None, None
            elif self.task.kind == "classification":
                label, value = self.task.labels[int(np.argmax(lg))], None
            else:
                label, value = None, float(lg[0])
            preds.append(Prediction(label, value, int(res.exit_layer[r]), [float(x) for x in lg],
                                    {k: float(v[r]) for k, v in res.signals.items()}, bool(enc.truncated[r]), err))
        return preds
