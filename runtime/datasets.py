"""Task data files: GLUE TSV folders (SST-2, RTE, MRPC, STS-B) and SemEval SICK files.

Plain Python + numpy, so the runtime (calibration) reads dev splits without torch;
train/data.py adds tokenization and batching on top."""
from __future__ import annotations

import csv
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .tasks import TaskInfo, get_task

csv.field_size_limit(sys.maxsize)

# task -> (folder under the data root, train file, dev file, text_a col, text_b col, label col)
_LAYOUT = {
    "sst2": ("glue/SST-2", "train.tsv", "dev.tsv", "sentence", None, "label"),
    "rte": ("glue/RTE", "train.tsv", "dev.tsv", "sentence1", "sentence2", "label"),
    "mrpc": ("glue/MRPC", "train.tsv", "dev.tsv", "#1 String", "#2 String", "Quality"),
    "stsb": ("glue/STS-B", "train.tsv", "dev.tsv", "sentence1", "sentence2", "score"),
    "sick": ("sick", "SICK_train.txt", "SICK_trial.txt", "sentence_A", "sentence_B", "relatedness_score"),
}


def default_data_dir() -> Path | None:
    """../shared/data beside the repository (or the working folder), if it exists."""
    here = Path(__file__).resolve().parents[1]
    for cand in (here.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"):
        if cand.is_dir():
            return cand
    return None


@dataclass
class Split:
    task: TaskInfo
    text_a: list[str]
    text_b: list[str] | None
    labels: np.ndarray  # int64 class ids, or float32 scores

    def __len__(self) -> int:
        return len(self.text_a)

    def head(self, n: int | None) -> "Split":
        if n is None or n >= len(self):
            return self
        return Split(self.task, self.text_a[:n], None if self.text_b is None else self.text_b[:n], self.labels[:n])


def _task_dir(task: str, data_dir: str | os.PathLike | None) -> Path:
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    if root is None:
        raise FileNotFoundError("no data folder: pass --data-dir (a folder holding glue/ and sick/, or the task's "
                                "own folder such as .../glue/RTE).")
    sub, train_f, _, *_ = _LAYOUT[task]
    for cand in (root / sub, root / Path(sub).name, root):
        if (cand / train_f).is_file():
            return cand
    raise FileNotFoundError(f"cannot find {task} data under '{root}': expected {root / sub / train_f}. "
                            f"Pass --data-dir pointing at the folder holding glue/ and sick/.")


def load_split(task: str, split: str, data_dir: str | os.PathLike | None = None) -> Split:
    """Read split 'train' or 'dev' of a task (SICK's trial file is its dev split)."""
    info = get_task(task)
    if split not in ("train", "dev"):
        raise ValueError(f"split must be 'train' or 'dev', got {split!r}")
    _, train_f, dev_f, col_a, col_b, col_y = _LAYOUT[task]
    path = _task_dir(task, data_dir) / (train_f if split == "train" else dev_f)
    text_a, text_b, labels = [], [], []
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        try:
            ia, iy = header.index(col_a), header.index(col_y)
            ib = header.index(col_b) if col_b else None
        except ValueError:
            raise ValueError(f"{path}: header {header} lacks the columns {col_a}/{col_b}/{col_y}") from None
        for row in reader:
            if not row or all(not c.strip() for c in row):
                continue
            # STS-B and SICK: the label is the last column even if a text holds a stray tab.
            y = row[-1] if task == "stsb" else row[iy]
            text_a.append(row[ia].strip())
            if ib is not None:
                text_b.append(row[ib].strip())
            if info.kind == "classification":
                labels.append(int(y) if y.strip().isdigit() else info.labels.index(y.strip()))
            else:
                labels.append(float(y))
    dtype = np.int64 if info.kind == "classification" else np.float32
    return Split(info, text_a, text_b if col_b else None, np.asarray(labels, dtype=dtype))
