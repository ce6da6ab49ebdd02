"""Tokenization for the runtime: the artifact's tokenizer.json through `tokenizers` (no torch,
no transformers), producing the int64 arrays the graphs take, padded to the longest row."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tokenizers import Tokenizer

log = logging.getLogger(__name__)


MAX_TEXT_CHARS = 1_000_000  # far beyond any max_seq_len; longer text is refused before tokenizing


class InputError(ValueError):
    """Text the model cannot take: empty, not valid UTF-8, or the wrong number of texts for the task."""


@dataclass(frozen=True)
class Encoded:
    """A tokenized batch, right-padded to its longest row. All arrays are [B, S] int64."""

    input_ids: np.ndarray
    token_type_ids: np.ndarray
    attention_mask: np.ndarray
    truncated: np.ndarray  # [B] bool: the row was cut to max_seq_len

    @property
    def shape(self) -> tuple[int, int]:
        return self.input_ids.shape

    def row(self, i: int) -> "Encoded":
        n = int(self.attention_mask[i].sum())
        return Encoded(self.input_ids[i:i + 1, :n], self.token_type_ids[i:i + 1, :n],
                       self.attention_mask[i:i + 1, :n], self.truncated[i:i + 1])


def _check_text(t: object, what: str) -> str:
    if isinstance(t, bytes):
        try:
            t = t.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"{what} is not valid UTF-8 ({e}); pass UTF-8 text.") from None
    if not isinstance(t, str):
        raise InputError(f"{what} must be a string, got {type(t).__name__}.")
    try:
        t.encode("utf-8")
    except UnicodeEncodeError:
        # argv with undecodable bytes arrives as lone surrogates (surrogateescape).
        raise InputError(f"{what} is not valid UTF-8 text; pass UTF-8 text.") from None
    if not t.strip():
        raise InputError(f"{what} is empty; pass non-empty text.")
    if len(t) > MAX_TEXT_CHARS:
        raise InputError(f"{what} has {len(t):,} characters, more than the {MAX_TEXT_CHARS:,} this runtime takes "
                         f"(the model reads at most max_seq_len tokens anyway); shorten it.")
    return t


class TextEncoder:
    """Wraps tokenizer.json with the artifact's max length and the task's single/pair form.
    `tokenizer`: the file's path, or its (verified) bytes."""

    def __init__(self, tokenizer: Path | bytes, max_seq_len: int, text_pair: bool, pad_id: int | None = None):
        if isinstance(tokenizer, bytes):
            try:
                self.tok = Tokenizer.from_str(tokenizer.decode("utf-8"))
            except Exception as e:  # tokenizers raises its own exception type on a bad file
                from .fsutil import ArtifactError
                raise ArtifactError(f"tokenizer.json cannot be read ({str(e)[:200]}); re-export the artifact.") from None
        else:
            if not Path(tokenizer).is_file():
                raise InputError(f"tokenizer file '{tokenizer}' is missing; re-export the artifact.")
            self.tok = Tokenizer.from_file(str(tokenizer))
        self.tok.no_padding()
        self.tok.enable_truncation(max_length=max_seq_len, strategy="longest_first")
        self.max_seq_len = max_seq_len
        self.text_pair = text_pair
        self.pad_id = pad_id if pad_id is not None else (self.tok.token_to_id("[PAD]") or 0)

    def encode(self, texts_a: Sequence[str], texts_b: Sequence[str] | None = None) -> Encoded:
        """Tokenize a batch. Over-long rows are truncated (longest first) with a warning."""
        if isinstance(texts_a, (str, bytes)):
            texts_a = [texts_a]
        if isinstance(texts_b, (str, bytes)):
            texts_b = [texts_b]
        if not hasattr(texts_a, "__len__") or (texts_b is not None and not hasattr(texts_b, "__len__")):
            raise InputError("texts must be a string or a list of strings.")
        if len(texts_a) == 0:
            raise InputError("no text given; pass at least one text.")
        if self.text_pair and texts_b is None:
            raise InputError("this task takes a pair of texts (TEXT_A TEXT_B); only one was given.")
        if not self.text_pair and texts_b is not None:
            raise InputError("this task takes a single text; a second text was given.")
        a = [_check_text(t, f"text #{i + 1}") for i, t in enumerate(texts_a)]
        if texts_b is not None:
            if len(texts_b) != len(a):
                raise InputError(f"{len(a)} first texts but {len(texts_b)} second texts; pass them in pairs.")
            b = [_check_text(t, f"second text #{i + 1}") for i, t in enumerate(texts_b)]
            encs = self.tok.encode_batch(list(zip(a, b)))
        else:
            encs = self.tok.encode_batch(a)
        n, s = len(encs), max(len(e.ids) for e in encs)
        ids = np.full((n, s), self.pad_id, dtype=np.int64)
        tt = np.zeros((n, s), dtype=np.int64)
        mask = np.zeros((n, s), dtype=np.int64)
        trunc = np.zeros(n, dtype=bool)
        for i, e in enumerate(encs):
            k = len(e.ids)
            ids[i, :k], tt[i, :k], mask[i, :k] = e.ids, e.type_ids, 1
            trunc[i] = len(e.overflowing) > 0
        if trunc.any():
            log.warning("%d of %d inputs were longer than max_seq_len=%d tokens and were truncated.",
                        int(trunc.sum()), n, self.max_seq_len)
        return Encoded(ids, tt, mask, trunc)
