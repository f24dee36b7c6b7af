"""`crucible plan`: memory and compute of a model and layout, before spending a GPU hour.

Per-GPU bytes follow mixed-precision training with Adam: bf16 weights (2 bytes/param), fp32
gradient accumulation (4) and fp32 optimizer state (master copy + two moments, 12); in fp32,
4 + 4 + 8. TP and PP divide the parameters; ZeRO-1 then shards the optimizer state over DP,
ZeRO-2 also the gradients, ZeRO-3 also the weights. Activations per layer and micro-batch follow
Korthikanti et al. (2022) with flash attention: 34·s·b·h bytes in bf16 (divided by TP for the
parallel parts), 2·s·b·h with full recomputation; the first pipeline stage holds PP micro-batches
in flight under 1F1B. The KV cache holds K and V: 2 · kv_heads · head_dim · bytes per token per layer.
It imports nothing heavier than the config, so `plan` answers at once and the trainer shares its sums.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from training.config import ModelConfig, ParallelConfig, PlanConfig, TrainConfig


def padded_vocab(vocab_size: int, multiple: int, tp: int) -> int:
    """The embedding's row count: the vocabulary rounded up to a multiple of `multiple` and of TP."""
    step = multiple * tp // math.gcd(multiple, tp)
    return -(-vocab_size // step) * step


def matmul_params(cfg: ModelConfig, vocab: int) -> int:
    attention = cfg.d_model * cfg.d_model * 2 + 2 * cfg.d_model * cfg.n_kv_heads * cfg.head_dim
    mlp = 3 * cfg.d_model * cfg.ffn_hidden
    return cfg.n_layers * (attention + mlp) + vocab * cfg.d_model


def flops_per_token(cfg: ModelConfig, vocab: int, seq_len: int) -> float:
    """Training FLOPs per token: 6 per matmul weight, plus attention's scores and values (12 L d s)."""
    return 6.0 * matmul_params(cfg, vocab) + 12.0 * cfg.n_layers * cfg.d_model * seq_len


@dataclass(frozen=True)
class Estimate:
    params: int
    params_per_gpu: float
    weight_bytes: float
    grad_bytes: float
    optimizer_bytes: float
    activation_bytes: float
    activation_bytes_recompute: float
    kv_bytes_per_token_per_layer: int
    kv_bytes_per_sequence: int
    flops_per_token: float
    tokens_per_step: int
    steps: float
    days: float
    dp: int

    def total_bytes(self, recompute: bool) -> float:
        activations = self.activation_bytes_recompute if recompute else self.activation_bytes
        return self.weight_bytes + self.grad_bytes + self.optimizer_bytes + activations


def count_params(cfg: ModelConfig, vocab: int) -> int:
    per_layer = (cfg.d_model * cfg.n_heads * cfg.head_dim * 2 + 2 * cfg.d_model * cfg.n_kv_heads * cfg.head_dim
                 + 3 * cfg.d_model * cfg.ffn_hidden + 2 * cfg.d_model)
    embeddings = vocab * cfg.d_model * (1 if cfg.tie_embeddings else 2)
    return cfg.n_layers * per_layer + embeddings + cfg.d_model


def estimate(model: ModelConfig, parallel: ParallelConfig, train: TrainConfig, plan: PlanConfig, gpus: int,
             seq_len: int, vocab_size: int) -> Estimate:
    """Memory per GPU and compute of training `model` on `gpus` GPUs at `seq_len` tokens per sequence."""
    tp, pp = parallel.tp, parallel.pp
    dp = max(1, gpus // (tp * pp))
    vocab = padded_vocab(vocab_size, model.vocab_multiple, tp)
    params = count_params(model, vocab)
    local = params / (tp * pp)
    weight, grad, optim = (2, 4, 12) if plan.bf16 else (4, 4, 8)
    zero = parallel.zero_stage
    s, b, h = seq_len, train.micro_batch_size, model.d_model
    act_bytes = 2 if plan.bf16 else 4
    layers_per_stage = -(-model.n_layers // pp)
    in_flight = pp  # 1F1B: the first stage holds one micro-batch per stage
    per_layer = s * b * h * (10 + 24 / tp) * act_bytes / 2  # 34 s b h (bf16) with the TP-split parts divided
    activation = per_layer * layers_per_stage * in_flight
    recompute = 2 * s * b * h * (act_bytes / 2) * layers_per_stage * in_flight
    kv_token_layer = 2 * model.n_kv_heads * model.head_dim * act_bytes
    tokens_per_step = train.global_batch_size * seq_len
    per_token = flops_per_token(model, vocab, seq_len)
    seconds = plan.token_budget * per_token / (gpus * plan.peak_tflops * 1e12 * plan.mfu)
    return Estimate(
        params=params, params_per_gpu=local,
        weight_bytes=local * weight / (dp if zero >= 3 else 1),
        grad_bytes=local * grad / (dp if zero >= 2 else 1),
        optimizer_bytes=local * optim / (dp if zero >= 1 else 1),
        activation_bytes=activation, activation_bytes_recompute=recompute,
        kv_bytes_per_token_per_layer=kv_token_layer,
        kv_bytes_per_sequence=kv_token_layer * model.n_layers * seq_len,
        flops_per_token=per_token, tokens_per_step=tokens_per_step,
        steps=plan.token_budget / tokens_per_step, days=seconds / 86400, dp=dp,
    )
