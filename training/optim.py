"""AdamW parameter groups and the learning-rate schedule (linear warmup, cosine to a floor)."""

from __future__ import annotations

import math
from collections.abc import Callable

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
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (no_decay if id(param) in no_decay_ids or param.ndim < 2 else decay).append(param)
    return [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    """Multiplier of cfg.lr at a step: warmup from 1/warmup to 1, then cosine down to min_lr."""
    decay_steps = cfg.decay_steps or cfg.max_steps
    floor = cfg.min_lr / cfg.lr

    def multiplier(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, decay_steps - cfg.warmup_steps))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return multiplier


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, betas=cfg.betas, eps=1e-8)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
