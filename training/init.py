"""Layout-independent initialization: one seed gives the same model whatever TP and PP are.

Each parameter's full (unsharded) tensor is drawn from a generator seeded by the run seed and
the parameter's canonical name (e.g. `blocks.3.attn.q.weight`), then the slice this TP rank
owns is kept. A stage of a pipeline therefore holds exactly the weights the same layers have
in a single-process model.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator

import torch
from megatron.core import parallel_state
from torch import nn

from training.model import NORM_WEIGHT, ROW_PARALLEL, layer_name

STD = 0.02  # residual-branch outputs (ROW_PARALLEL) get STD / sqrt(2 * n_layers), GPT-2 style


def canonical_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(canonical prefix, layer) for every model layer held by this rank."""
    for module in model.modules():
        prefix = layer_name(module)
        if prefix is not None:
            yield prefix, module


def _full_shape(param: torch.Tensor, tp: int) -> list[int]:
    shape = list(param.shape)
    if getattr(param, "tensor_model_parallel", False):
        shape[param.partition_dim] *= tp
    return shape


@torch.no_grad()
def init_weights(model: nn.Module, seed: int, n_layers: int) -> None:
    tp = parallel_state.get_tensor_model_parallel_world_size()
    rank = parallel_state.get_tensor_model_parallel_rank()
    for prefix, layer in canonical_layers(model):
        for name, param in layer.named_parameters():
            key = f"{prefix}.{name}"
            if name.endswith(NORM_WEIGHT):
                param.fill_(1.0)
                continue
            std = STD / math.sqrt(2 * n_layers) if name.endswith(ROW_PARALLEL) else STD
            generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
            full = torch.randn(_full_shape(param, tp), generator=generator) * std
            if getattr(param, "tensor_model_parallel", False):
                full = full.chunk(tp, dim=param.partition_dim)[rank]
            param.copy_(full.to(param.dtype))
