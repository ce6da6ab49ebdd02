"""Tokenization and batching for training: per-batch padding, rows of similar length batched
together. The file readers live in runtime/datasets.py (no torch there)."""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from runtime.datasets import Split, default_data_dir, load_split  # noqa: F401  (re-exported)

@dataclass
class Tokenized:
    ids: list[list[int]]
    type_ids: list[list[int]]
    labels: np.ndarray


def tokenize(split: Split, tokenizer, max_seq_len: int) -> Tokenized:
    """Fast-tokenizer encoding, truncated longest-first to max_seq_len, no padding yet."""
    kw = dict(truncation="longest_first", max_length=max_seq_len, padding=False, return_token_type_ids=True)
    enc = tokenizer(split.text_a, split.text_b, **kw) if split.text_b is not None else tokenizer(split.text_a, **kw)
    return Tokenized(enc["input_ids"], enc["token_type_ids"], split.labels)


def collate(tok: Tokenized, rows: list[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad the chosen rows to the longest of them: input_ids/token_type_ids/attention_mask [B, S]."""
    s = max(len(tok.ids[r]) for r in rows)
    ids = torch.full((len(rows), s), pad_id, dtype=torch.long)
    tt = torch.zeros((len(rows), s), dtype=torch.long)
    mask = torch.zeros((len(rows), s), dtype=torch.long)
    for j, r in enumerate(rows):
        n = len(tok.ids[r])
        ids[j, :n] = torch.tensor(tok.ids[r])
        tt[j, :n] = torch.tensor(tok.type_ids[r])
        mask[j, :n] = 1
    y = torch.from_numpy(tok.labels[rows])
    return {"input_ids": ids, "token_type_ids": tt, "attention_mask": mask, "labels": y}


def train_batches(tok: Tokenized, batch_size: int, rng: random.Random, bucket: int = 50) -> list[list[int]]:
    """Shuffled batches of similar-length rows: shuffle, sort within chunks of `bucket` batches
    by length, cut into batches, shuffle the batches. Less padding, still random."""
    idx = list(range(len(tok.ids)))
    rng.shuffle(idx)
    chunk = batch_size * bucket
    batches = []
    for c in range(0, len(idx), chunk):
        part = sorted(idx[c:c + chunk], key=lambda r: len(tok.ids[r]))
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def eval_batches(tok: Tokenized, batch_size: int) -> list[list[int]]:
    """Batches in length order (results are put back in row order by the caller)."""
    order = sorted(range(len(tok.ids)), key=lambda r: len(tok.ids[r]))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
