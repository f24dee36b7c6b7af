"""AdamW parameter groups and the learning-rate schedule (linear warmup, cosine to a floor)."""

from __future__ import annotations

import math

import torch
from torch import nn

from training.config import TrainConfig
from training.model import Embedding, RMSNorm


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """Weight decay on matrices only: never on norms or biases, on embeddings only if asked."""
    no_decay_ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, RMSNorm) or (cfg.no_decay_embeddings and isinstance(module, Embedding)):
            no_decay_ids.update(id(p) for p in module.parameters())
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (no_decay if id(param) in no_decay_ids or param.ndim < 2 else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]  # a pipeline stage may hold no matrices at all


class LrSchedule:
    """Multiplier of cfg.lr at a step (0-based: the rate the step-th update uses): warmup from
    1/warmup up to 1 at step warmup - 1, the only step at the peak, then cosine down to exactly
    min_lr at step decay - 1, the last step of a run whose decay_steps is max_steps.

    After a rollback the rate can be damped (`damp`) for a number of steps. A callable object,
    not a closure, so that LambdaLR saves its state in checkpoints.
    """

    def __init__(self, cfg: TrainConfig) -> None:
        self.warmup, self.decay = cfg.warmup_steps, cfg.decay_steps or cfg.max_steps
        self.floor = cfg.min_lr / cfg.lr
        self.damp_factor, self.damp_until = 1.0, -1

    def __call__(self, step: int) -> float:
        peak = max(self.warmup - 1, 0)
        if step < peak:
            value = (step + 1) / self.warmup
        else:
            progress = min(1.0, (step - peak) / max(1, self.decay - 1 - peak))
            value = self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * progress))
        return value * (self.damp_factor if step < self.damp_until else 1.0)

    def damp(self, factor: float, until_step: int) -> None:
        self.damp_factor, self.damp_until = factor, until_step


def build_optimizer(
    model: nn.Module, cfg: TrainConfig
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, betas=cfg.betas, eps=1e-8)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, LrSchedule(cfg))


def damp_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR, factor: float, until_step: int) -> None:
    """Scale the learning rate by `factor` from now until `until_step` (a rollback's calmer restart)."""
    schedule = scheduler.lr_lambdas[0]
    assert isinstance(schedule, LrSchedule)
    schedule.damp(factor, until_step)
    apply_schedule_now(scheduler)


def apply_schedule_now(scheduler: torch.optim.lr_scheduler.LambdaLR) -> None:
    """Set the optimizer's rates from the schedule at its current step (after changing it)."""
    for group, base, schedule in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * schedule(scheduler.last_epoch)
