"""Fine-tuning strategies (BERxiT section 3) as small registered units.

Each strategy is a list of *stages*; a stage says, for its k-th step (1-based), which exit
losses make the objective and whether the backbone gets gradients. Parameters outside the
objective get no gradient (None), and AdamW leaves a parameter whose grad is None untouched,
so "which parameters a step updates" follows exactly from the objective:

    joint        one stage, every step: sum_i L_i                      (eq. 3)
    two_stage    stage 1: L_n over backbone + head_n                    (eq. 4)
                 stage 2: sum_{i<n} L_i over heads 1..n-1 (backbone frozen) (eq. 5)
    alternating  one stage: odd steps L_n (eq. 6), even steps sum_i L_i (eq. 7)
    limit        the backbone cut to its first i layers, one exit at layer i, trained alone
                 (section 6's Limit: an upper bound for exiting at layer i); cut with --limit-layer

With LTE, every L_i becomes L_i + J_i (section 4.2), J_i = (u_i - u~_i)^2 with u~_i from
eq. 10 (classification: 1[argmax = y]) or eq. 11 (regression: 1 - tanh|pred - y|).
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Callable

import torch
import torch.nn.functional as F

from .model import MultiExitModel, MultiExitOutput


@dataclass(frozen=True)
class StepPlan:
    layers: tuple[int, ...]  # 0-based layers whose L_i (+ J_i) enter the loss
    grad_backbone: bool


@dataclass(frozen=True)
class Stage:
    name: str
    plan: Callable[[int, int], StepPlan]  # (step 1-based, num_layers) -> plan


def _all(n: int) -> tuple[int, ...]:
    return tuple(range(n))


JOINT = (Stage("joint", lambda k, n: StepPlan(_all(n), True)),)
TWO_STAGE = (
    Stage("two_stage/1-final", lambda k, n: StepPlan((n - 1,), True)),
    Stage("two_stage/2-heads", lambda k, n: StepPlan(tuple(range(n - 1)), False)),
)
ALTERNATING = (
    Stage("alternating", lambda k, n: StepPlan((n - 1,), True) if k % 2 == 1 else StepPlan(_all(n), True)),
)

LIMIT = (Stage("limit", lambda k, n: StepPlan((n - 1,), True)),)


class Strategy(Enum):
    JOINT = "joint"
    TWO_STAGE = "two_stage"
    ALTERNATING = "alternating"
    LIMIT = "limit"

    @property
    def stages(self) -> tuple[Stage, ...]:
        return {"joint": JOINT, "two_stage": TWO_STAGE, "alternating": ALTERNATING, "limit": LIMIT}[self.value]


def lte_targets(logits: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """Ground-truth certainty u~_i [B] (no gradient): eq. 10 or eq. 11."""
    with torch.no_grad():
        if kind == "classification":
            return (logits.argmax(dim=-1) == labels).float()
        return 1.0 - torch.tanh((logits[:, 0] - labels.float()).abs())


def task_loss(logits: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """H(y, g_i(h_i)) of eq. 2: cross-entropy or MSE (batch mean)."""
    if kind == "classification":
        return F.cross_entropy(logits, labels)
    return F.mse_loss(logits[:, 0], labels.float())


def objective(out: MultiExitOutput, labels: torch.Tensor, layers: tuple[int, ...], kind: str
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """sum over `layers` of L_i (+ J_i when the model has LTE). Returns (loss, parts for logging)."""
    total = out.logits[0].new_zeros(())
    ce = lte = 0.0
    for i in layers:
        li = task_loss(out.logits[i], labels, kind)
        total = total + li
        ce += float(li.detach())
        if out.lte is not None:
            ji = F.mse_loss(out.lte[i], lte_targets(out.logits[i], labels, kind))
            total = total + ji
            lte += float(ji.detach())
    return total, {"task_loss": ce, "lte_loss": lte}


def train_step(model: MultiExitModel, batch: dict[str, torch.Tensor], plan: StepPlan,
               optimizer: torch.optim.Optimizer, max_grad_norm: float | None = 1.0) -> dict[str, float]:
    """One optimisation step of the planned objective. Grads are reset to None first, so only
    parameters inside the objective move."""
    optimizer.zero_grad(set_to_none=True)
    out = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"),
                grad_backbone=plan.grad_backbone)
    loss, parts = objective(out, batch["labels"], plan.layers, model.cfg.kind)
    loss.backward()
    if max_grad_norm:
        params = [p for p in model.parameters() if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    parts["loss"] = float(loss.detach())
    return parts
