"""The small interface every execution backend implements; the one early-exit loop
(runtime/chain.py) drives it.

    backend = SomeBackend(manifest, ...)        # loads graphs / engines / weights once
    ws = backend.workspace()                    # scratch state for one batch at a time
    ws.embed(ids, type_ids, mask)               # [b, s] int64 -> live rows 0..b-1 at stage 0
    out = ws.run_stage(k)                       # stage k (0-based): layers stages[k], on the live rows
    ws.keep(rows, seq)                          # compaction: only `rows` (indices into the live rows,
                                                # increasing) go on, cut to `seq` tokens
    ws.save() / ws.load(state)                  # host copy of the live rows' hidden states + mask,
                                                # and back (a server merges batches at layer boundaries)

A *stage* is one graph of the artifact: the layers from the previous exit (exclusive) to its own
exit layer (inclusive), its exit head and its exit signals. With every layer an exit (the default
export) stage k is layer k + 1.

What a backend does NOT do: decide exits, check finiteness, assemble results, lock. The loop
does all of that once, for every backend. A workspace is used by one thread at a time (the loop
hands each run its own); a backend that can only hold one (one CUDA stream and its buffers) says
so with `max_workspaces = 1` and the loop serialises runs on it.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


class BackendError(RuntimeError):
    """The requested backend cannot run here; the message says what to install."""


@dataclass(frozen=True)
class StageOutputs:
    """One stage's small outputs for the b live rows. Arrays may be views into the workspace's
    buffers: valid until the workspace's next call; the loop copies what it keeps."""

    logits: np.ndarray  # [b, C] float32 (C = 1 for regression)
    signals: dict[str, np.ndarray]  # signal name ("confidence", "entropy", "lte") -> [b] float32
    lte_logit: np.ndarray | None = None  # [b] before the sigmoid, when the backend gives that instead of
    #                                      "lte" (signals a backend does not give, the loop derives)


@dataclass(frozen=True)
class HiddenState:
    """Host copy of a workspace's live rows after some stage: what `save` returns and `load` takes."""

    hidden: np.ndarray  # [b, s, H] float32
    mask: np.ndarray  # [b, s] int64
    stage: int | None = None  # stages already run on these rows (backends that check the order need it)


class Workspace(ABC):
    """Buffers for one batch at a time. Calls come in the order embed, run_stage(0), [keep],
    run_stage(1), ... ; `embed` starts a new batch at any time."""

    @abstractmethod
    def embed(self, input_ids: np.ndarray, token_type_ids: np.ndarray, attention_mask: np.ndarray) -> None:
        """Start a batch: [b, s] int64 arrays (right padded; s = the longest row)."""

    @abstractmethod
    def run_stage(self, k: int) -> StageOutputs:
        """Run 0-based stage k on the live rows (their hidden states after stage k - 1)."""

    @abstractmethod
    def keep(self, rows: np.ndarray, seq: int) -> None:
        """Only live rows `rows` (int64, increasing) go on, cut to their first `seq` tokens."""

    def save(self) -> HiddenState:
        """The live rows' hidden states and mask, copied to the host."""
        raise BackendError(f"{type(self).__name__} cannot hand its hidden states to the host")

    def load(self, state: HiddenState) -> None:
        """Make `state`'s rows the live rows (as if the last stage had produced them)."""
        raise BackendError(f"{type(self).__name__} cannot take hidden states from the host")

    def monolithic(self, input_ids: np.ndarray, token_type_ids: np.ndarray,
                   attention_mask: np.ndarray) -> StageOutputs:
        """All layers in one graph, the last head (the reference a plain deployment runs)."""
        raise BackendError(f"{type(self).__name__} has no monolithic graph")

    def close(self) -> None:
        """Release this workspace's buffers (device memory included)."""


class Backend(ABC):
    """An artifact loaded for one kind of execution. Read-only after construction."""

    name: str = "?"
    max_workspaces: int | None = None  # None: as many as threads need
    max_batch: int | None = None  # largest batch a workspace takes (an engine profile); None: any

    @abstractmethod
    def workspace(self) -> Workspace:
        """A new workspace (the loop keeps a pool of them)."""

    @property
    def has_monolithic(self) -> bool:
        return False

    def close(self) -> None:
        """Release sessions, engines, device memory."""
