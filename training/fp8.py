"""FP8 training (`train.precision: fp8`): the blocks' matmuls in float8 through torchao.

Weights, activations and gradients stay bf16; each matmul of the attention and SwiGLU layers
casts its operands to float8 with dynamic scales (one per tensor, or one per row) and runs
`torch._scaled_mm`: e4m3 forward, e5m2 gradients. The embedding, the norms and the output head
stay bf16, as they are small and sensitive. torchao's `convert_to_float8_training` swaps
`nn.Linear` modules, which megatron-core's tensor-parallel layers are not, so its float8 matmul
goes into their local matmul instead (`model._Matmul`): the TP collectives around it are
unchanged. torchao is the optional `gpu` extra and is imported only here, when asked for.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from pipeline.ground.errors import UserError
from training.config import ModelConfig, ParallelConfig
from training.model import Attention, ColumnParallel, RowParallel, SwiGLU

CAPABILITY = {"tensorwise": (8, 9), "rowwise": (9, 0)}  # float8 tensor cores; row-wise scales need Hopper


def check_fp8(model: ModelConfig, parallel: ParallelConfig, scaling: str, device: torch.device) -> None:
    """Refuse FP8 where it cannot run or pay: eager blocks, no float8 tensor cores, shapes `_scaled_mm`
    refuses, no torchao."""
    if not parallel.compile:
        raise UserError(
            "train.precision=fp8 without parallel.compile: FP8 pays off only with its scaling and casts "
            "fused by torch.compile; set parallel.compile=true"
        )
    need = CAPABILITY[scaling]
    if device.type != "cuda":
        raise UserError(
            f"train.precision=fp8 needs an NVIDIA GPU of compute capability {need[0]}.{need[1]}+ "
            "(float8 tensor cores); this machine has none: use train.precision=bf16 or auto"
        )
    have = torch.cuda.get_device_capability(device)
    if have < need:
        raise UserError(
            f"train.precision=fp8 with {scaling} scaling needs compute capability {need[0]}.{need[1]}+; "
            f"{torch.cuda.get_device_name(device)} has {have[0]}.{have[1]}: use train.precision=bf16"
            + (" or train.fp8_scaling=tensorwise" if have >= CAPABILITY["tensorwise"] else "")
        )
    tp = parallel.tp
    sizes = {
        "model.d_model": model.d_model,
        "model.n_heads x head size / tp": model.n_heads * model.head_dim // tp,
        "model.n_kv_heads x head size / tp": model.n_kv_heads * model.head_dim // tp,
        "model.ffn_hidden / tp": model.ffn_hidden // tp,
    }
    odd = [f"{name} = {size}" for name, size in sizes.items() if size % 16]
    if odd:
        raise UserError(f"train.precision=fp8: float8 matmuls need sizes that are multiples of 16; {', '.join(odd)}")
    try:
        import torchao  # noqa: F401
    except ImportError:
        raise UserError("train.precision=fp8 needs torchao: pip install -e '.[gpu]'") from None


class Float8Matmul:
    """input @ weight.T with both operands scaled to float8 (torchao's autograd function)."""

    def __init__(self, scaling: str, emulate: bool) -> None:
        from torchao.float8 import Float8LinearConfig
        from torchao.float8.float8_linear import Float8Linear, matmul_with_hp_or_float8_args

        self.config = dataclasses.replace(Float8LinearConfig.from_recipe_name(scaling), emulate=emulate)
        with torch.device("meta"):  # torchao derives the three matmuls' settings in its layer: borrow them
            self.mm_config = Float8Linear(16, 16, bias=False, config=self.config).linear_mm_config
        self.function = matmul_with_hp_or_float8_args

    def __call__(self, input: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return self.function.apply(input, weight.t(), self.mm_config, self.config)


def enable_fp8(model: nn.Module, scaling: str, emulate: bool = False) -> int:
    """Give every attention and SwiGLU matmul of `model` the float8 path; the number of layers changed.

    `emulate` computes the float8 matmuls in higher precision (any device; for tests)."""
    if not emulate:
        # torchao's own entry point applies this workaround for a Triton float8 store miscompile first.
        from torchao.float8._inductor_patch import _patch_inductor_min_max_codegen

        _patch_inductor_min_max_codegen()
    matmul = Float8Matmul(scaling, emulate)
    layers: list[Any] = [
        linear
        for module in model.modules()
        if isinstance(module, (Attention, SwiGLU))
        for linear in module.children()
        if isinstance(linear, (ColumnParallel, RowParallel))
    ]
    for linear in layers:
        linear.matmul = matmul
    return len(layers)
