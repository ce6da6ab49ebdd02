"""Evaluation on per-layer outputs: layer-wise scores and exit sweeps, with the runtime's own
exit rules (runtime.policies), so training-time numbers and deployment decisions agree."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from runtime.metrics import score
from runtime.policies import LayerOutputs, make_policy, predictions_at_exit, simulate
from runtime.tasks import EXTRA_METRICS, TaskInfo

from .data import Tokenized, collate, eval_batches
from .model import MultiExitModel, exit_signals


@torch.no_grad()
def collect_layer_outputs(model: MultiExitModel, tok: Tokenized, pad_id: int, batch_size: int = 64,
                          progress: bool = True) -> list[LayerOutputs]:
    """Every layer's logits and exit signals for every row (row order), model in eval mode."""
    model.eval()
    n, L = len(tok.ids), model.cfg.num_layers
    logits = np.zeros((L, n, model.cfg.num_outputs), np.float32)
    conf = np.zeros((L, n), np.float32)
    ent = np.zeros((L, n), np.float32)
    lte = np.zeros((L, n), np.float32) if model.cfg.lte else None
    for rows in tqdm(eval_batches(tok, batch_size), desc="eval", disable=not progress, leave=False):
        b = collate(tok, rows, pad_id)
        out = model(b["input_ids"], b["attention_mask"], b["token_type_ids"])
        for i in range(L):
            logits[i, rows] = out.logits[i].numpy()
            c, e = exit_signals(out.logits[i])
            conf[i, rows], ent[i, rows] = c.numpy(), e.numpy()
            if lte is not None:
                lte[i, rows] = out.lte[i].numpy()
    cls = model.cfg.kind == "classification"
    return [LayerOutputs(logits[i], conf[i] if cls else None, ent[i] if cls else None,
                         None if lte is None else lte[i]) for i in range(L)]


def layer_scores(per_layer: list[LayerOutputs], gold: np.ndarray, task: TaskInfo) -> list[dict[str, float]]:
    """The score of every exit when all rows exit there (the paper's layer-wise score)."""
    rows = []
    for i, out in enumerate(per_layer, start=1):
        r = {"layer": i, task.metric: score(task.metric, out.logits, gold, task.kind)}
        for m in EXTRA_METRICS.get(task.name, ()):
            r[m] = score(m, out.logits, gold, task.kind)
        rows.append(r)
    return rows


@dataclass
class SweepPoint:
    policy: str
    threshold: float
    score: float
    avg_exit_layer: float


def default_thresholds(policy: str, num_classes: int = 2) -> list[float]:
    if policy == "confidence":
        return [0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999]
    if policy == "entropy":
        return [0.0001, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    if policy == "lte":
        return [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
    raise ValueError(policy)


def exit_sweep(per_layer: list[LayerOutputs], gold: np.ndarray, task: TaskInfo, policy: str,
               thresholds: list[float]) -> list[SweepPoint]:
    """Score and average exit layer of `policy` at each threshold (all rows, simulated)."""
    signals = [s for s in ("confidence", "entropy", "lte") if getattr(per_layer[0], s) is not None]
    pts = []
    for t in thresholds:
        p = make_policy(policy, task_kind=task.kind, num_layers=len(per_layer), signals=signals,
                        num_classes=max(task.num_outputs, 2), threshold=t)
        ex = simulate(p, per_layer, task.kind)
        pts.append(SweepPoint(policy, t, score(task.metric, predictions_at_exit(per_layer, ex), gold, task.kind),
                              float(ex.mean())))
    return pts


def save_layer_outputs(path, per_layer: list[LayerOutputs], gold: np.ndarray) -> None:
    """Raw per-layer predictions (npz), so curves can be recomputed without the model."""
    arrays = {"logits": np.stack([o.logits for o in per_layer]), "gold": gold}
    for name in ("confidence", "entropy", "lte"):
        if getattr(per_layer[0], name) is not None:
            arrays[name] = np.stack([getattr(o, name) for o in per_layer])
    np.savez_compressed(path, **arrays)


def load_layer_outputs(path) -> tuple[list[LayerOutputs], np.ndarray]:
    z = np.load(path)
    L = z["logits"].shape[0]
    g = lambda k, i: z[k][i] if k in z else None  # noqa: E731
    return [LayerOutputs(z["logits"][i], g("confidence", i), g("entropy", i), g("lte", i)) for i in range(L)], z["gold"]
