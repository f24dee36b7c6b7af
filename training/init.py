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
import training.accelerator  # noqa: F401  (before megatron-core)

# isort: split
from megatron.core import parallel_state
from torch import nn

from training.model import EMBEDDING, HEAD, NORM_WEIGHT, ROW_PARALLEL, layer_name

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
        shape[getattr(param, "partition_dim")] *= tp  # set on the tensor by megatron, as is the flag
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
            _copy_own_slice(param, torch.randn(_full_shape(param, tp), generator=generator) * std, tp, rank)


def _copy_own_slice(param: torch.Tensor, full: torch.Tensor, tp: int, rank: int) -> None:
    """Set `param` to this TP rank's slice of its full tensor."""
    if getattr(param, "tensor_model_parallel", False):
        full = full.chunk(tp, dim=getattr(param, "partition_dim"))[rank]
    param.copy_(full.to(param.dtype))


def vocabulary_rows(full: torch.Tensor, rows: int, known: int) -> torch.Tensor:
    """A vocabulary matrix (embedding or head) resized to `rows`: the first `known` rows kept, every other row
    the mean of those, which gives a token added to the tokenizer the average token's logit and input."""
    out = full[:known].mean(0, keepdim=True).expand(rows, -1).clone()
    out[:known] = full[:known]
    return out


@torch.no_grad()
def load_full_weights(model: nn.Module, state: dict[str, torch.Tensor], known_rows: int | None = None) -> None:
    """Set this rank's parameters from full (single-process) weights named canonically. Vocabulary matrices of
    another row count (a tokenizer grown by new tokens), or any with `known_rows` given, keep their first
    `known_rows` rows (default: all that fit) and start the rest as their mean (`vocabulary_rows`)."""
    tp = parallel_state.get_tensor_model_parallel_world_size()
    rank = parallel_state.get_tensor_model_parallel_rank()
    for prefix, layer in canonical_layers(model):
        for name, param in layer.named_parameters():
            full, shape = state[f"{prefix}.{name}"], _full_shape(param, tp)
            if prefix in (EMBEDDING, HEAD) and (list(full.shape) != shape or known_rows is not None):
                full = vocabulary_rows(full, shape[0], min(known_rows or shape[0], shape[0], full.shape[0]))
            _copy_own_slice(param, full, tp, rank)
