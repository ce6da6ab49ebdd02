"""`python -m train.finetune --task rte --strategy alternating --lte --out runs/rte`

Fine-tunes a multi-exit model and writes a checkpoint folder:
    config.json, model.safetensors, multi_exit.json   model
    tokenizer files                                   what export copies into the artifact
    train_config.json                                 the flags of this run
    eval.json                                         dev score per layer + exit sweeps
    dev_layer_outputs.npz                             raw per-layer dev outputs
The folder is written under a temporary name and renamed when complete.
"""
from __future__ import annotations

import json
import logging
import math
import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from runtime.cli import fail, nonneg_float, nonneg_int, parser, positive_float, positive_int
from runtime.manifest import install_folder
from runtime.tasks import TASKS, get_task

from .data import collate, load_split, tokenize, train_batches
from .evaluate import collect_layer_outputs, default_thresholds, exit_sweep, layer_scores, save_layer_outputs
from .model import ExitConfig, MultiExitModel, load_backbone, save_checkpoint, truncate_backbone
from .strategies import Strategy, train_step

log = logging.getLogger("train.finetune")


@dataclass(frozen=True)
class TrainConfig:
    task: str
    out: str
    model: str | None = None  # None: the packaged all-MiniLM-L6-v2
    data_dir: str | None = None
    strategy: str = "alternating"
    lte: bool = False
    pooling: str = "cls"
    epochs: float = 3.0
    batch_size: int = 32
    lr: float = 2e-5
    head_lr: float | None = None  # exit heads and LTE (default: lr)
    weight_decay: float = 0.0
    max_seq_len: int = 128
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    seed: int = 42
    threads: int | None = None
    limit_layer: int | None = None  # strategy "limit": keep the first N layers, one exit


    def __post_init__(self):
        get_task(self.task)
        Strategy(self.strategy)
        for name in ("epochs", "lr", "head_lr", "weight_decay"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number, got {v!r}")
        if self.epochs <= 0 or self.lr <= 0 or (self.head_lr is not None and self.head_lr <= 0):
            raise ValueError("--epochs, --lr and --head-lr must be positive")
        if self.weight_decay < 0:
            raise ValueError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        for name, lo in (("batch_size", 1), ("max_train_samples", 1), ("max_eval_samples", 1), ("threads", 1),
                         ("seed", 0), ("limit_layer", 1)):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < lo):
                raise ValueError(f"--{name.replace('_', '-')} must be an integer >= {lo}, got {v!r}")
        if not 8 <= self.max_seq_len <= 512:
            raise ValueError(f"max_seq_len must lie in [8, 512], got {self.max_seq_len}")
        if (self.strategy == "limit") != (self.limit_layer is not None):
            raise ValueError("--limit-layer N goes with --strategy limit (and only with it)")


class TrainingDiverged(RuntimeError):
    """The loss stopped being finite; no checkpoint is written."""


def _seed(seed: int) -> random.Random:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return random.Random(seed)


def _linear_schedule(opt: torch.optim.Optimizer, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / max(1, total)))


def finetune(cfg: TrainConfig, progress: bool = True) -> dict:
    """Train, evaluate on dev, save the checkpoint to cfg.out. Returns the eval summary."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rng = _seed(cfg.seed)
    task = get_task(cfg.task)
    train = load_split(cfg.task, "train", cfg.data_dir).head(cfg.max_train_samples)
    dev = load_split(cfg.task, "dev", cfg.data_dir).head(cfg.max_eval_samples)
    backbone, tokenizer = load_backbone(cfg.model)
    if cfg.limit_layer is not None:
        backbone = truncate_backbone(backbone, cfg.limit_layer)
    n_layers = backbone.config.num_hidden_layers
    model = MultiExitModel(backbone, ExitConfig(task.name, task.kind, task.num_outputs, n_layers, cfg.lte,
                                                 pooling=cfg.pooling))
    pad_id = tokenizer.pad_token_id or 0
    tr_tok = tokenize(train, tokenizer, cfg.max_seq_len)
    dev_tok = tokenize(dev, tokenizer, cfg.max_seq_len)
    log.info("task %s: %d train / %d dev rows; backbone %s (%d layers); strategy %s%s",
             task.name, len(train), len(dev), cfg.model or "all-MiniLM-L6-v2 (packaged)", n_layers, cfg.strategy,
             " + LTE" if cfg.lte else "")

    strategy = Strategy(cfg.strategy)
    steps_per_epoch = -(-len(train) // cfg.batch_size)
    history = []
    t0 = time.time()
    for stage in strategy.stages:
        total = max(1, int(round(cfg.epochs * steps_per_epoch)))
        head_params = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
        opt = torch.optim.AdamW([{"params": list(model.backbone.parameters()), "lr": cfg.lr},
                                 {"params": head_params, "lr": cfg.head_lr or cfg.lr}],
                                weight_decay=cfg.weight_decay)
        sched = _linear_schedule(opt, total)
        model.train()
        step = 0
        bar = tqdm(total=total, desc=f"train {stage.name}", disable=not progress)
        while step < total:
            for rows in train_batches(tr_tok, cfg.batch_size, rng):
                if step >= total:
                    break
                step += 1
                batch = collate(tr_tok, rows, pad_id)
                parts = train_step(model, batch, stage.plan(step, n_layers), opt)
                if not math.isfinite(parts["loss"]):
                    raise TrainingDiverged(f"the training loss became {parts['loss']} at step {step} of stage "
                                           f"'{stage.name}': lower --lr / --head-lr (now {cfg.lr} / "
                                           f"{cfg.head_lr or cfg.lr}); nothing was written to {cfg.out}.")
                sched.step()
                bar.update(1)
                bar.set_postfix(loss=f"{parts['loss']:.3f}")
                if step % 50 == 0 or step == total:
                    history.append({"stage": stage.name, "step": step, **parts})
        bar.close()
    train_s = time.time() - t0

    per_layer = collect_layer_outputs(model, dev_tok, pad_id, progress=progress)
    scores = layer_scores(per_layer, dev.labels, task)
    sweeps = {}
    for pol in (["confidence", "entropy"] if task.kind == "classification" else []) + (["lte"] if cfg.lte else []):
        sweeps[pol] = [asdict(p) for p in exit_sweep(per_layer, dev.labels, task, pol, default_thresholds(pol))]
    summary = {"task": task.name, "metric": task.metric, "dev_rows": len(dev), "train_rows": len(train),
               "train_seconds": round(train_s, 1), "layer_scores": scores, "sweeps": sweeps, "history": history}

    # Write everything into a temporary sibling folder, then move it into place.
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        save_checkpoint(model, tokenizer, tmp)
        (tmp / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
        (tmp / "eval.json").write_text(json.dumps(summary, indent=2) + "\n")
        save_layer_outputs(tmp / "dev_layer_outputs.npz", per_layer, dev.labels)
        install_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    p = parser("python -m train.finetune", "Fine-tune a multi-exit encoder (one exit head per layer).")
    p.add_argument("--task", required=True, choices=list(TASKS), help="task (its data folder is read from --data-dir)")
    p.add_argument("--data-dir", default=None, help="folder with glue/ and sick/ (default: ../shared/data)")
    p.add_argument("--model", default=None,
                   help="Hugging Face model name or local folder (default: the packaged all-MiniLM-L6-v2)")
    p.add_argument("--strategy", default="alternating", choices=[s.value for s in Strategy],
                   help="joint: sum of all exit losses; two_stage: final layer, then the other heads on a frozen "
                        "backbone; alternating: final-layer and joint loss on alternate steps; limit: the Limit "
                        "baseline (first --limit-layer layers, one exit)")
    p.add_argument("--lte", action="store_true", help="train the learning-to-exit head (L_i + J_i)")
    p.add_argument("--pooling", default="cls", choices=["cls", "mean"],
                   help="exit heads read the [CLS] state (the paper) or the mean of the token states")
    p.add_argument("--epochs", type=positive_float, default=3.0, help="passes over the training rows (fractions allowed)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="training rows per step")
    p.add_argument("--lr", type=positive_float, default=2e-5, help="AdamW learning rate of the backbone")
    p.add_argument("--head-lr", type=positive_float, default=None,
                   help="learning rate of the exit heads and LTE (default: --lr)")
    p.add_argument("--weight-decay", type=nonneg_float, default=0.0, help="AdamW weight decay")
    p.add_argument("--max-seq-len", type=positive_int, default=128, help="tokens per row (8..512), longest-first truncation")
    p.add_argument("--max-train-samples", type=positive_int, default=None, help="use only the first N training rows")
    p.add_argument("--max-eval-samples", type=positive_int, default=None, help="evaluate on the first N dev rows")
    p.add_argument("--seed", type=nonneg_int, default=42, help="seed of data order, dropout and head init")
    p.add_argument("--threads", type=positive_int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--limit-layer", type=positive_int, default=None,
                   help="with --strategy limit: keep the first N layers and train one exit there")
    p.add_argument("--out", required=True, help="checkpoint folder to write (replaced only when the new one is complete)")
    a = p.parse_args(argv)
    try:
        return TrainConfig(task=a.task, out=a.out, model=a.model, data_dir=a.data_dir, strategy=a.strategy,
                           lte=a.lte, pooling=a.pooling, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, head_lr=a.head_lr, weight_decay=a.weight_decay,
                           max_seq_len=a.max_seq_len, max_train_samples=a.max_train_samples,
                           max_eval_samples=a.max_eval_samples, seed=a.seed, threads=a.threads,
                           limit_layer=a.limit_layer)
    except ValueError as e:
        p.error(str(e))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = parse_args(argv)
    try:
        summary = finetune(cfg)
    except (FileNotFoundError, RuntimeError, ValueError) as e:
        return fail(e)
    metric = summary["metric"]
    print(f"dev {metric} per layer: " + "  ".join(f"L{r['layer']}={r[metric]:.4f}" for r in summary["layer_scores"]))
    print(f"checkpoint written to {cfg.out} (training took {summary['train_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
