"""The tasks the toolkit knows: kind, labels, whether they take a text pair, main metric."""
from __future__ import annotations

from .manifest import TaskInfo

TASKS: dict[str, TaskInfo] = {
    "sst2": TaskInfo("sst2", "classification", ("negative", "positive"), False, "accuracy"),
    "rte": TaskInfo("rte", "classification", ("entailment", "not_entailment"), True, "accuracy"),
    "mrpc": TaskInfo("mrpc", "classification", ("not_equivalent", "equivalent"), True, "f1"),
    "stsb": TaskInfo("stsb", "regression", (), True, "spearman"),
    "sick": TaskInfo("sick", "regression", (), True, "spearman"),
}

# Secondary metrics reported next to the main one.
EXTRA_METRICS: dict[str, tuple[str, ...]] = {
    "mrpc": ("accuracy",),
    "stsb": ("pearson",),
    "sick": ("pearson",),
}


def get_task(name: str) -> TaskInfo:
    if name not in TASKS:
        raise ValueError(f"unknown task '{name}'; choose one of {', '.join(TASKS)}.")
    return TASKS[name]
