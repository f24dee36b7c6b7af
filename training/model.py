"""A decoder-only GPT built from megatron-core tensor-parallel layers.

Read top to bottom: RMSNorm, rotary embeddings, attention (grouped-query), the SwiGLU MLP, a
block, then the embedding and the head. Every layer takes and returns the same tuple
(hidden, positions, segments), so one list of layers serves both a plain module (PP = 1) and
DeepSpeed's PipelineModule (PP > 1). Tensor parallelism lives inside the linear layers: Q/K/V,
gate and up are column-parallel (each rank owns whole heads / a slice of the inner size), the
attention output and down projections are row-parallel (their outputs are summed over ranks).
Positions restart and attention stops at document boundaries when `document_masking` is on: through
SDPA with a dense mask, or FlexAttention with a block mask that skips the tiles between documents.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable
from typing import Any, ContextManager, cast

import torch
import torch.nn.functional as F
import training.accelerator  # noqa: F401  (before megatron-core)

# isort: split
from megatron.core.model_parallel_config import ModelParallelConfig
from megatron.core.tensor_parallel import (
    ColumnParallelLinear,
    RowParallelLinear,
    VocabParallelEmbedding,
    copy_to_tensor_model_parallel_region,
    vocab_parallel_cross_entropy,
)
from torch import nn
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from pipeline.ground.errors import UserError
from training.config import ModelConfig
from training.recompute import recompute

Activation = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # hidden [B,S,D], positions [B,S], segments [B,S]


class _NoExtraState(nn.Module):
    """megatron's parallel layers put an empty `_extra_state` in state dicts (for another
    engine's use) and expect it back on load; leaving it out keeps checkpoints to plain tensors
    that every tool (DeepSpeed's universal conversion, the exporter) can merge."""

    get_extra_state = nn.Module.get_extra_state
    set_extra_state = nn.Module.set_extra_state

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._load_state_dict_pre_hooks.clear()  # the hook that re-adds `_extra_state` on load


class _Matmul(nn.Module):
    """`_forward_impl` is megatron's local matmul (the TP collectives sit around it, except the
    column-parallel input-gradient all-reduce, which it asks for with `allreduce_dgrad`). A layer
    whose `matmul` is set (FP8, `training.fp8`) runs that instead."""

    matmul: Callable[..., torch.Tensor] | None = None

    def _forward_impl(self, input: torch.Tensor, weight: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.matmul is None:
            return cast(Any, super())._forward_impl(input, weight, *args, **kwargs)  # megatron's, after the mixin
        if kwargs.get("allreduce_dgrad"):
            input = copy_to_tensor_model_parallel_region(input, group=kwargs["tp_group"])
        return self.matmul(input, weight)


class ColumnParallel(_NoExtraState, _Matmul, ColumnParallelLinear):
    pass


class RowParallel(_NoExtraState, _Matmul, RowParallelLinear):
    def _forward_impl(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        # megatron passes no group here and then looks up the default one, with a deprecation
        # warning on every call that also splits a compiled block's graph; it is this layer's group.
        kwargs["tp_group"] = self.tp_group
        return super()._forward_impl(*args, **kwargs)


class VocabParallel(_NoExtraState, VocabParallelEmbedding):
    weight: nn.Parameter  # megatron's, [vocab/tp, d_model]


def _no_init(weight: torch.Tensor) -> None:
    """Weights are set by `training.init` from the seed, the same whatever the layout."""


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).type_as(x) * self.weight


def rotary(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [B, S, 1, head_dim/2] for per-token positions (which restart per document)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim)
    angles = positions.float()[..., None] * inv_freq
    return angles.cos()[:, :, None, :], angles.sin()[:, :, None, :]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


def attention_mask(segments: torch.Tensor) -> torch.Tensor:
    """[B, 1, S, S] True where query i may attend key j: j <= i, same document."""
    seq = segments.shape[1]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=segments.device).tril()
    return (causal & (segments[:, :, None] == segments[:, None, :]))[:, None]


FLEX_BLOCK = 128  # FlexAttention's tile (queries and keys)


def document_block_mask(segments: torch.Tensor, block: int = FLEX_BLOCK) -> BlockMask:
    """The block mask of `attention_mask(segments)` for FlexAttention, from the segment ids alone.

    Segment ids rise by one at each document start, so a tile holds the ids lo..hi of its first
    and last token. Key tile j < query tile i holds allowed pairs only if its last document is the
    query tile's first (hi[j] == lo[i]); all its pairs are allowed if both tiles lie inside that one
    document (and are whole). The diagonal tile is always partial. Empty tiles are skipped, full
    ones need no mask evaluation: O(B * tiles^2) work instead of the O(B * S^2) of a dense mask.
    """
    batch, seq = segments.shape
    tiles = -(-seq // block)
    starts = torch.arange(tiles, device=segments.device) * block
    lo = segments[:, starts]
    hi = segments[:, (starts + block - 1).clamp(max=seq - 1)]
    whole = starts + block <= seq
    below = torch.ones(tiles, tiles, dtype=torch.bool, device=segments.device).tril(-1)
    one_doc = (lo == hi) & whole
    full = below & (one_doc[:, :, None] & one_doc[:, None, :] & (lo[:, :, None] == lo[:, None, :]))
    touching = below & (hi[:, None, :] == lo[:, :, None])
    partial = (touching & ~full) | torch.eye(tiles, dtype=torch.bool, device=segments.device)

    def ordered(tiles_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        counts = tiles_mask.sum(-1, dtype=torch.int32)[:, None]
        indices = torch.argsort(tiles_mask.to(torch.int8), dim=-1, descending=True, stable=True)
        return counts, indices.to(torch.int32)[:, None]

    def same_document(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        return (kv <= q) & (segments[b, q] == segments[b, kv])

    return BlockMask.from_kv_blocks(
        *ordered(partial), *ordered(full), BLOCK_SIZE=block, mask_mod=same_document, seq_lengths=(seq, seq)
    )


@functools.cache
def _compiled_flex() -> Callable[..., torch.Tensor]:
    """FlexAttention's fused kernel exists only compiled (eager it materializes the scores)."""
    return torch.compile(flex_attention, dynamic=False)


def flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: BlockMask) -> torch.Tensor:
    """FlexAttention: inside a compiled block, traced into its graph; in an eager one, compiled on its
    own on GPU; on the CPU its eager reference (as tests check it)."""
    eager = cast(Callable[..., torch.Tensor], flex_attention)  # overloaded (return_lse): here it returns a Tensor
    attend = _compiled_flex() if q.is_cuda and not torch.compiler.is_compiling() else eager
    return attend(q, k, v, block_mask=block_mask, enable_gqa=q.shape[1] != k.shape[1])


def attention_kernel(choice: str, cfg: ModelConfig, device: torch.device) -> str:
    """The kernel of document-masked attention: `auto` is FlexAttention on GPU (SDPA's flash kernel
    cannot take a document mask) and SDPA on the CPU, where FlexAttention has no backward."""
    if choice == "auto":
        return "flex" if device.type == "cuda" and cfg.document_masking and not cfg.dropout else "sdpa"
    if choice == "flex" and device.type != "cuda":
        raise UserError(
            "parallel.attention=flex: FlexAttention has no backward pass on the CPU; "
            "use parallel.attention=auto or sdpa there"
        )
    if choice == "flex" and cfg.dropout:
        raise UserError(
            f"parallel.attention=flex with model.dropout {cfg.dropout}: FlexAttention has no "
            "attention dropout; use parallel.attention=sdpa or model.dropout=0"
        )
    return choice


class LayerCache:
    """Keys and values of the positions decoded so far in one layer: [B, kv_heads, T, head_dim]."""

    def __init__(self) -> None:
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.keys is None else self.keys.shape[2]

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keys is not None:
            assert self.values is not None  # set together with the keys
            k, v = torch.cat([self.keys, k], dim=2), torch.cat([self.values, v], dim=2)
        self.keys, self.values = k, v
        return k, v


class KVCache:
    """The decoding cache of the whole model, one LayerCache per block."""

    def __init__(self) -> None:
        self.layers: dict[int, LayerCache] = {}

    def layer(self, index: int) -> LayerCache:
        return self.layers.setdefault(index, LayerCache())


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, tp_config: ModelParallelConfig) -> None:
        super().__init__()
        tp = tp_config.tensor_model_parallel_size
        self.cfg, self.heads, self.kv_heads = cfg, cfg.n_heads // tp, cfg.n_kv_heads // tp
        column = dict(config=tp_config, init_method=_no_init, bias=False, gather_output=False)
        self.q = ColumnParallel(cfg.d_model, cfg.n_heads * cfg.head_dim, **column)
        self.k = ColumnParallel(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, **column)
        self.v = ColumnParallel(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, **column)
        self.o = RowParallel(
            cfg.n_heads * cfg.head_dim,
            cfg.d_model,
            config=tp_config,
            init_method=_no_init,
            bias=False,
            input_is_parallel=True,
            skip_bias_add=True,
        )
        self.sharded_rng: Callable[[], ContextManager[None]] = contextlib.nullcontext  # set per TP rank
        self.kernel = "sdpa"  # or "flex" for document-masked training (`attention_kernel`)

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor, segments: torch.Tensor, cache: LayerCache | None = None
    ) -> torch.Tensor:
        batch, seq, _ = x.shape
        q = self.q(x)[0].view(batch, seq, self.heads, self.cfg.head_dim)
        k = self.k(x)[0].view(batch, seq, self.kv_heads, self.cfg.head_dim)
        v = self.v(x)[0].view(batch, seq, self.kv_heads, self.cfg.head_dim)
        cos, sin = rotary(positions, self.cfg.head_dim, self.cfg.rope_theta)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, heads, S, head_dim]
        y = (
            flex(q, k, v, document_block_mask(segments))
            if self.kernel == "flex" and self.cfg.document_masking and cache is None
            else self._sdpa(q, k, v, segments, cache)
        )
        return self.o(y.transpose(1, 2).reshape(batch, seq, self.heads * self.cfg.head_dim))[0]

    def _sdpa(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segments: torch.Tensor, cache: LayerCache | None
    ) -> torch.Tensor:
        seq = q.shape[2]
        dropout = self.cfg.dropout if self.training else 0.0
        mask = attention_mask(segments) if self.cfg.document_masking else None
        if cache is not None:  # one document: causal over everything cached before, plus itself
            past = cache.length
            k, v = cache.extend(k, v)
            mask = torch.ones(seq, past + seq, dtype=torch.bool, device=q.device).tril(past) if past else None
        # The per-TP-rank RNG only matters with dropout; skipping it keeps compiled blocks in one graph.
        with self.sharded_rng() if dropout else contextlib.nullcontext():
            return F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                is_causal=mask is None,
                dropout_p=dropout,
                enable_gqa=self.heads != self.kv_heads,
            )


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig, tp_config: ModelParallelConfig) -> None:
        super().__init__()
        column = dict(config=tp_config, init_method=_no_init, bias=False, gather_output=False)
        self.gate = ColumnParallel(cfg.d_model, cfg.ffn_hidden, **column)
        self.up = ColumnParallel(cfg.d_model, cfg.ffn_hidden, **column)
        self.down = RowParallel(
            cfg.ffn_hidden,
            cfg.d_model,
            config=tp_config,
            init_method=_no_init,
            bias=False,
            input_is_parallel=True,
            skip_bias_add=True,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)[0]) * self.up(x)[0])[0]


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig, tp_config: ModelParallelConfig, index: int) -> None:
        super().__init__()
        self.index = index
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg, tp_config)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg, tp_config)
        self.dropout = nn.Dropout(cfg.dropout)
        # none, selective or full (`training.recompute`); inside forward, so a compiled block compiles it too
        self.checkpointing = "none"

    def forward(self, inputs: Activation, cache: KVCache | None = None) -> Activation:
        if self.checkpointing != "none" and self.training and cache is None:
            return recompute(self._forward, inputs, mode=self.checkpointing)
        return self._forward(inputs, cache)

    def _forward(self, inputs: Activation, cache: KVCache | None = None) -> Activation:
        x, positions, segments = inputs
        # The layer's index is read only when decoding: every block then compiles to the same graph.
        layer_cache = None if cache is None else cache.layer(self.index)
        x = x + self.dropout(self.attn(self.attn_norm(x), positions, segments, layer_cache))
        x = x + self.dropout(self.mlp(self.mlp_norm(x)))
        return x, positions, segments


class Embedding(nn.Module):
    """Token embedding (vocab-parallel); with tied weights it is also the LM head (`logits`)."""

    def __init__(self, cfg: ModelConfig, tp_config: ModelParallelConfig, vocab: int) -> None:
        super().__init__()
        self.embed = VocabParallel(vocab, cfg.d_model, init_method=_no_init, config=tp_config)
        self.dropout = nn.Dropout(cfg.dropout)

    @property
    def weight(self) -> torch.Tensor:
        return self.embed.weight

    def forward(self, inputs: Activation) -> Activation:
        tokens, positions, segments = inputs
        return self.dropout(self.embed(tokens)), positions, segments

    def logits(self, inputs: Activation) -> torch.Tensor:
        """Vocab-parallel logits [B, S, vocab/tp]; the copy makes backward sum dL/dx over TP ranks."""
        hidden = copy_to_tensor_model_parallel_region(inputs[0])
        return F.linear(hidden, self.embed.weight)


class FinalNorm(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)

    def forward(self, inputs: Activation) -> Activation:
        x, positions, segments = inputs
        return self.norm(x), positions, segments


class Head(nn.Module):
    """An untied LM head (column-parallel over the vocabulary)."""

    def __init__(self, cfg: ModelConfig, tp_config: ModelParallelConfig, vocab: int) -> None:
        super().__init__()
        self.proj = ColumnParallel(
            cfg.d_model, vocab, config=tp_config, init_method=_no_init, bias=False, gather_output=False
        )

    def forward(self, inputs: Activation) -> torch.Tensor:
        return self.proj(inputs[0])[0]


def lm_loss(
    logits: torch.Tensor, targets: torch.Tensor, pad_id: int, denominator: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross entropy summed over non-padding targets, computed on vocab-parallel logits, over
    `denominator`: by default their count (the mean); the trainer passes its share of the valid
    targets of the whole global batch, so that every token weighs the same (see `Trainer.train_step`)."""
    # megatron's cross entropy overwrites its input with the softmax. Training never reads the logits
    # again; an evaluation (no grad) may, when the pipeline engine hands them back to `evaluate_tasks`,
    # so only then is the input a copy.
    logits = logits.float() if torch.is_grad_enabled() else logits.to(torch.float32, copy=True)
    per_token = vocab_parallel_cross_entropy(logits, targets)
    mask = (targets != pad_id).float()
    return (per_token * mask).sum() / (mask.sum().clamp(min=1.0) if denominator is None else denominator)


class GPT(nn.Module):
    """The whole model in one process group stage: embedding, blocks, final norm, head.

    Its attribute names are the canonical layer names (`EMBEDDING`, `BLOCKS`, ... below).
    """

    def __init__(self, cfg: ModelConfig, tp_config: ModelParallelConfig, vocab: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.embedding = Embedding(cfg, tp_config, vocab)
        self.blocks = nn.ModuleList(Block(cfg, tp_config, i) for i in range(cfg.n_layers))
        self.final_norm = FinalNorm(cfg)
        self.head = None if cfg.tie_embeddings else Head(cfg, tp_config, vocab)

    def forward(
        self, tokens: torch.Tensor, positions: torch.Tensor, segments: torch.Tensor, cache: KVCache | None = None
    ) -> torch.Tensor:
        """Vocab-parallel logits for `tokens` [B, S]; with a cache, only the new positions are computed."""
        x: Activation = self.embedding((tokens, positions, segments))
        for block in self.blocks:
            x = block(x, cache)
        x = self.final_norm(x)
        return self.embedding.logits(x) if self.head is None else self.head(x)


# -- parameter names ---------------------------------------------------------------------------
# The single-process model's state-dict names are the canonical ones. Seeded initialization, the
# merge patterns a checkpoint carries and both exports match on the facts below, spelled only here.

EMBEDDING, BLOCKS, FINAL_NORM, HEAD = "embedding", "blocks", "final_norm", "head"  # GPT's attributes
NORM_WEIGHT = "norm.weight"  # how every RMSNorm weight's name ends; replicated over TP ranks
ROW_PARALLEL = ("attn.o.weight", "mlp.down.weight")  # residual-branch outputs, split by rows over TP
EMBED_WEIGHT = "embed.weight"  # the token embedding; a tied head shares it between pipeline stages
TIED_PREFIX = f"tied_modules.{EMBEDDING}."  # how DeepSpeed's PipelineModule names the tied embedding


def block_name(index: int) -> str:
    return f"{BLOCKS}.{index}"


def layer_name(layer: nn.Module) -> str | None:
    """The canonical prefix of a model layer (`blocks.3`), whichever pipeline stage holds it; None
    for modules that are not layers."""
    if isinstance(layer, Block):
        return block_name(layer.index)
    return {Embedding: EMBEDDING, FinalNorm: FINAL_NORM, Head: HEAD}.get(type(layer))


def canonical_name(name: str, n_layers: int) -> str:
    """A pipeline module's parameter name ("3.attn.q.weight") as the single-process model's
    ("blocks.2.attn.q.weight"): pipeline layer i is the i-th of embedding, blocks, final norm, head."""
    if name.startswith(TIED_PREFIX):
        return f"{EMBEDDING}.{name.removeprefix(TIED_PREFIX)}"
    index, dot, rest = name.partition(".")
    if not (dot and index.isdigit()):
        return name
    layers = [EMBEDDING, *map(block_name, range(n_layers)), FINAL_NORM, HEAD]
    return f"{layers[int(index)]}.{rest}"


# Canonical names -> Hugging Face Llama names: the architecture is Llama's, so export is a renaming.
HF_LLAMA_NAMES = [
    (r"^embedding\.embed\.weight$", "model.embed_tokens.weight"),
    (r"^blocks\.(\d+)\.attn_norm\.weight$", r"model.layers.\1.input_layernorm.weight"),
    (r"^blocks\.(\d+)\.mlp_norm\.weight$", r"model.layers.\1.post_attention_layernorm.weight"),
    (r"^blocks\.(\d+)\.attn\.(q|k|v|o)\.weight$", r"model.layers.\1.self_attn.\2_proj.weight"),
    (r"^blocks\.(\d+)\.mlp\.(gate|up|down)\.weight$", r"model.layers.\1.mlp.\2_proj.weight"),
    (r"^final_norm\.norm\.weight$", "model.norm.weight"),
    (r"^head\.proj\.weight$", "lm_head.weight"),
]


def hf_name(name: str) -> str:
    for pattern, replacement in HF_LLAMA_NAMES:
        if re.match(pattern, name):
            return re.sub(pattern, replacement, name)
    raise KeyError(f"no Hugging Face name for {name}")
