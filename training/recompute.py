"""Activation recomputation of the transformer blocks (`parallel.activation_checkpointing`).

`full` checkpoints each block: only its input is kept, and backward reruns its whole forward
(about a third more compute). `selective` is the same checkpoint under a policy (PyTorch's
selective activation checkpointing) that keeps what is costly to redo, the outputs of every
matmul and of attention, and recomputes the rest in backward: RMSNorm, RoPE, SiLU times up, the
casts. Those elementwise results are most of a block's saved activations besides the matmul
outputs, so memory drops while the rerun costs almost no FLOPs. Both give the same numbers as
no recomputation: the recomputed ops rerun on the same inputs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

_aten = torch.ops.aten
KEPT_OPS = frozenset(
    {
        _aten.mm.default,
        _aten.addmm.default,
        _aten.bmm.default,
        _aten._scaled_mm.default,
        _aten._scaled_dot_product_flash_attention.default,
        _aten._scaled_dot_product_efficient_attention.default,
        _aten._scaled_dot_product_cudnn_attention.default,
        _aten._scaled_dot_product_flash_attention_for_cpu.default,
        torch.ops.higher_order.flex_attention,
    }
)


def _keep_matmuls(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in KEPT_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def recompute(fn: Callable[..., Any], *args: Any, mode: str) -> Any:
    """`fn(*args)` with its activations recomputed in backward as `mode` (selective or full) says."""
    if mode == "selective":
        return checkpoint(
            fn,
            *args,
            use_reentrant=False,
            context_fn=functools.partial(create_selective_checkpoint_contexts, _keep_matmuls),
        )
    return checkpoint(fn, *args, use_reentrant=False)
