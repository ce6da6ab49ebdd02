"""Each strategy updates exactly the parameters the paper says, step by step (eq. 3-7), and LTE
targets follow eq. 10-11."""
from __future__ import annotations

import math

import pytest
import torch

from train.model import ExitConfig, MultiExitModel, load_backbone
from train.strategies import Strategy, lte_targets, objective, train_step


def _model(tiny_dir, kind="classification", lte=True) -> MultiExitModel:
    if isinstance(tiny_dir, tuple):  # (family, folder) from the family_dir fixture
        tiny_dir = tiny_dir[1]
    torch.manual_seed(0)
    backbone, _ = load_backbone(str(tiny_dir))
    c = 2 if kind == "classification" else 1
    return MultiExitModel(backbone, ExitConfig("t", kind, c, backbone.config.num_hidden_layers, lte))


def _batch(kind="classification"):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 60, (4, 9), generator=g)
    mask = torch.ones(4, 9, dtype=torch.long)
    mask[2, 6:] = 0
    labels = torch.tensor([0, 1, 1, 0]) if kind == "classification" else torch.tensor([0.5, 2.0, 4.5, 3.0])
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids), "labels": labels}


def _snapshot(m: MultiExitModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.named_parameters()}


def _changed(m: MultiExitModel, before: dict[str, torch.Tensor]) -> dict[str, bool]:
    """Group name -> whether any parameter in the group changed."""
    groups: dict[str, bool] = {}
    n = m.cfg.num_layers
    for k, v in m.named_parameters():
        if k.startswith("backbone."):
            g = "backbone"
        elif k.startswith("heads."):
            i = int(k.split(".")[1])
            g = "final_head" if i == n - 1 else f"head_{i}"
        elif k.startswith("lte_head."):
            g = "lte"
        else:
            g = k
        groups[g] = groups.get(g, False) or not torch.equal(v, before[k])
    return groups


def _step(m, plan, opt):
    before = _snapshot(m)
    train_step(m, _batch(m.cfg.kind), plan, opt)
    return _changed(m, before)


@pytest.mark.parametrize("kind", ["classification", "regression"])
def test_joint_updates_everything(family_dir, kind):
    m = _model(family_dir, kind)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    stage = Strategy.JOINT.stages[0]
    for k in (1, 2):
        ch = _step(m, stage.plan(k, m.cfg.num_layers), opt)
        assert all(ch.values()), ch


def test_two_stage_second_stage_freezes_backbone_and_final_head(family_dir):
    m = _model(family_dir)
    s1, s2 = Strategy.TWO_STAGE.stages
    n = m.cfg.num_layers
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    ch = _step(m, s1.plan(1, n), opt)
    assert ch["backbone"] and ch["final_head"] and ch["lte"]
    assert not ch["head_0"], "stage 1 (eq. 4) must not touch the non-final heads"
    opt2 = torch.optim.AdamW(m.parameters(), lr=1e-3)
    for k in (1, 2, 3):
        ch = _step(m, s2.plan(k, n), opt2)
        assert not ch["backbone"], "stage 2 (eq. 5) must leave the backbone unchanged"
        assert not ch["final_head"], "stage 2 must leave the final head unchanged"
        assert ch["head_0"] and ch["lte"]


def test_alternating_odd_steps_leave_other_heads_unchanged(family_dir):
    m = _model(family_dir)
    stage = Strategy.ALTERNATING.stages[0]
    n = m.cfg.num_layers
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    for k in (1, 2, 3, 4):  # step 3 comes after a joint step: AdamW has momentum for head_0, still no move
        ch = _step(m, stage.plan(k, n), opt)
        assert ch["backbone"] and ch["final_head"] and ch["lte"]
        if k % 2 == 1:
            assert not ch["head_0"], f"odd step {k} (eq. 6) must update only the backbone and the final head"
        else:
            assert ch["head_0"], f"even step {k} (eq. 7) updates every head"


def test_lte_targets_eq10_eq11():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, -1.0]])
    assert lte_targets(logits, torch.tensor([0, 0, 1]), "classification").tolist() == [1.0, 0.0, 0.0]
    pred = torch.tensor([[0.5], [2.0], [-1.0]])
    y = torch.tensor([2.0, 2.0, 1.0])
    want = [1 - math.tanh(1.5), 1.0, 1 - math.tanh(2.0)]
    assert lte_targets(pred, y, "regression").tolist() == pytest.approx(want, abs=1e-6)


def test_objective_adds_lte_mse(tiny_dir):
    m = _model(tiny_dir, "regression")
    b = _batch("regression")
    out = m(b["input_ids"], b["attention_mask"], b["token_type_ids"])
    loss, parts = objective(out, b["labels"], (0, 1), "regression")
    manual = 0.0
    for i in (0, 1):
        manual += torch.mean((out.logits[i][:, 0] - b["labels"]) ** 2).item()
        target = 1 - torch.tanh((out.logits[i][:, 0] - b["labels"]).abs())
        manual += torch.mean((out.lte[i] - target) ** 2).item()
    assert loss.item() == pytest.approx(manual, rel=1e-5)
    assert parts["lte_loss"] > 0


def test_lte_target_has_no_gradient_path(tiny_dir):
    """u~_i is a label: the gradient of J_i reaches the heads only through u_i, not through u~_i."""
    m = _model(tiny_dir, "regression")
    b = _batch("regression")
    out = m(b["input_ids"], b["attention_mask"], b["token_type_ids"])
    assert not lte_targets(out.logits[0], b["labels"], "regression").requires_grad
