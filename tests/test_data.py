"""Task files: the formats of ../shared/data (when present) and tokenizer parity with the runtime."""
from __future__ import annotations

import numpy as np
import pytest

from runtime.tokenize import TextEncoder
from train.data import collate, default_data_dir, load_split, tokenize, train_batches

SHARED = default_data_dir()


@pytest.mark.skipif(SHARED is None, reason="../shared/data is not present")
@pytest.mark.parametrize("task,train_rows,dev_rows", [
    ("sst2", 67349, 872), ("rte", 2490, 277), ("mrpc", 3668, 408), ("stsb", 5749, 1500), ("sick", 4500, 500)])
def test_shared_data_row_counts(task, train_rows, dev_rows):
    tr, dev = load_split(task, "train"), load_split(task, "dev")
    assert (len(tr), len(dev)) == (train_rows, dev_rows)
    assert all(t for t in tr.text_a) and (tr.text_b is None) == (task == "sst2")
    if task in ("stsb", "sick"):
        lo, hi = (0, 5) if task == "stsb" else (1, 5)
        assert tr.labels.dtype == np.float32 and tr.labels.min() >= lo and tr.labels.max() <= hi
    else:
        assert set(np.unique(tr.labels)) == {0, 1}


@pytest.mark.skipif(SHARED is None, reason="../shared/data is not present")
def test_shared_data_label_balance():
    dev = load_split("mrpc", "dev")
    assert int(dev.labels.sum()) == 279  # README: dev 279 positive / 129 negative
    dev = load_split("sst2", "dev")
    assert int(dev.labels.sum()) == 444


def test_tiny_data_and_batches(data_dir, tiny_dir):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    split = load_split("rte", "train", data_dir)
    t = tokenize(split, tok, 16)
    assert max(len(x) for x in t.ids) <= 16
    import random
    batches = train_batches(t, 8, random.Random(0))
    assert sorted(r for b in batches for r in b) == list(range(len(split)))
    b = collate(t, batches[0], tok.pad_token_id)
    s = max(len(t.ids[r]) for r in batches[0])
    assert b["input_ids"].shape == (len(batches[0]), s)  # padded to the longest row, not to 16
    assert b["attention_mask"].sum().item() == sum(len(t.ids[r]) for r in batches[0])


def test_runtime_tokenizer_matches_training_tokenizer(rte_ckpt, rte_art, data_dir):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(rte_ckpt)
    dev = load_split("rte", "dev", data_dir)
    enc = TextEncoder(rte_art / "tokenizer.json", 20, text_pair=True, pad_id=tok.pad_token_id)
    got = enc.encode(dev.text_a, dev.text_b)
    want = tok(dev.text_a, dev.text_b, truncation="longest_first", max_length=20, padding=True,
               return_tensors="np")
    np.testing.assert_array_equal(got.input_ids, want["input_ids"])
    np.testing.assert_array_equal(got.token_type_ids, want["token_type_ids"])
    np.testing.assert_array_equal(got.attention_mask, want["attention_mask"])
    assert got.truncated.any()  # max length 20 cuts some of these rows
