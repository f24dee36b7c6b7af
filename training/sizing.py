"""`crucible plan`: memory and compute of a model and layout, before spending a GPU hour.

Per-GPU bytes follow mixed-precision training with Adam: bf16 weights (2 bytes/param), fp32
gradient accumulation (4) and fp32 optimizer state (master copy + two moments, 12); in fp32,
4 + 4 + 8. TP and PP divide the parameters; ZeRO-1 then shards the optimizer state over DP,
ZeRO-2 also the gradients, ZeRO-3 also the weights. Activations are counted per token and layer
as the tensors autograd keeps for backward in a block of training/model.py (flash attention: no
s² term), for each `parallel.activation_checkpointing` choice:
- none: the fp32 inputs of both RMSNorms and of RoPE, the norms' outputs, Q, K, V, the attention
  output and its reshaped copy, and SwiGLU's gate, up, SiLU and product;
- selective: the block input and the outputs of every matmul and of attention (Q, K, V, attention,
  output projection, gate, up, down); the elementwise rest is recomputed;
- full: the block input only; backward reruns the forward, a third more compute (forward is
  2 of the 6 FLOPs per parameter and token), which the time estimate includes.
Tensors split by TP count 1/TP; the first pipeline stage holds PP micro-batches in flight under
1F1B. The KV cache holds K and V: 2 · kv_heads · head_dim · bytes per token per layer.
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


def flops_per_token(cfg: ModelConfig, vocab: int, seq_len: int, attention: bool = True) -> float:
    """Training FLOPs per token: 6 per matmul weight, plus (with `attention`) attention's scores and
    values, 12 L d s."""
    return 6.0 * matmul_params(cfg, vocab) + (12.0 * cfg.n_layers * cfg.d_model * seq_len if attention else 0.0)


@dataclass(frozen=True)
class Estimate:
    params: int
    params_per_gpu: float
    weight_bytes: float
    grad_bytes: float
    optimizer_bytes: float
    activation_bytes: dict[str, float]  # per activation_checkpointing choice: none, selective, full
    checkpointing: str  # the configured choice
    kv_bytes_per_token_per_layer: int
    kv_bytes_per_sequence: int
    flops_per_token: float
    tokens_per_step: int
    steps: float
    days: float
    dp: int

    def total_bytes(self, checkpointing: str) -> float:
        return self.weight_bytes + self.grad_bytes + self.optimizer_bytes + self.activation_bytes[checkpointing]


RECOMPUTE_COMPUTE = {"none": 1.0, "selective": 1.0, "full": 4 / 3}  # step FLOPs relative to none


def activation_bytes_per_token(cfg: ModelConfig, tp: int, act_bytes: int) -> dict[str, float]:
    """Bytes one block keeps for backward per token, for each recomputation choice (module docstring)."""
    h, fp32 = cfg.d_model, 4
    q, kv, ffn = cfg.n_heads * cfg.head_dim / tp, cfg.n_kv_heads * cfg.head_dim / tp, cfg.ffn_hidden / tp
    none = (
        2 * fp32 * h
        + 4 * act_bytes * h  # two RMSNorms: fp32 input, output before and after the weight
        + fp32 * (q + kv)  # RoPE's fp32 Q and K
        + act_bytes * (3 * q + 2 * kv)  # attention's Q, K, V and output, the output projection's input
        + 4 * act_bytes * ffn
    )  # gate, up, SiLU, product
    selective = act_bytes * (h + 2 * q + 2 * kv + h + 2 * ffn + h)  # input, QKV, attention, o, gate, up, down
    return {"none": none, "selective": selective, "full": act_bytes * h}


def count_params(cfg: ModelConfig, vocab: int) -> int:
    per_layer = (
        cfg.d_model * cfg.n_heads * cfg.head_dim * 2
        + 2 * cfg.d_model * cfg.n_kv_heads * cfg.head_dim
        + 3 * cfg.d_model * cfg.ffn_hidden
        + 2 * cfg.d_model
    )
    embeddings = vocab * cfg.d_model * (1 if cfg.tie_embeddings else 2)
    return cfg.n_layers * per_layer + embeddings + cfg.d_model


def estimate(
    model: ModelConfig,
    parallel: ParallelConfig,
    train: TrainConfig,
    plan: PlanConfig,
    gpus: int,
    seq_len: int,
    vocab_size: int,
) -> Estimate:
    """Memory per GPU and compute of training `model` on `gpus` GPUs at `seq_len` tokens per sequence."""
    tp, pp = parallel.tp, parallel.pp
    dp = max(1, gpus // (tp * pp))
    vocab = padded_vocab(vocab_size, model.vocab_multiple, tp)
    params = count_params(model, vocab)
    local = params / (tp * pp)
    weight, grad, optim = (2, 4, 12) if plan.bf16 else (4, 4, 8)
    zero = parallel.zero_stage
    act_bytes = 2 if plan.bf16 else 4
    layers_per_stage = -(-model.n_layers // pp)
    in_flight = pp  # 1F1B: the first stage holds one micro-batch per stage
    tokens_held = seq_len * train.micro_batch_size * layers_per_stage * in_flight
    activations = {
        choice: per_token * tokens_held
        for choice, per_token in activation_bytes_per_token(model, tp, act_bytes).items()
    }
    kv_token_layer = 2 * model.n_kv_heads * model.head_dim * act_bytes
    tokens_per_step = train.global_batch_size * seq_len
    per_token = flops_per_token(model, vocab, seq_len)
    checkpointing = parallel.activation_checkpointing
    seconds = (
        plan.token_budget * per_token * RECOMPUTE_COMPUTE[checkpointing] / (gpus * plan.peak_tflops * 1e12 * plan.mfu)
    )
    return Estimate(
        params=params,
        params_per_gpu=local,
        weight_bytes=local * weight / (dp if zero >= 3 else 1),
        grad_bytes=local * grad / (dp if zero >= 2 else 1),
        optimizer_bytes=local * optim / (dp if zero >= 1 else 1),
        activation_bytes=activations,
        checkpointing=checkpointing,
        kv_bytes_per_token_per_layer=kv_token_layer,
        kv_bytes_per_sequence=kv_token_layer * model.n_layers * seq_len,
        flops_per_token=per_token,
        tokens_per_step=tokens_per_step,
        steps=plan.token_budget / tokens_per_step,
        days=seconds / 86400,
        dp=dp,
    )
