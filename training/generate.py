"""Sampling with a KV cache from a checkpoint of any layout.

The checkpoint is consolidated to one set of weights (see `training.export`) and loaded into a
single-process model. Generation prefills the prompt once, then decodes one token at a time,
each step attending over the cached keys and values instead of recomputing the prefix. Each
prompt samples with a seed of its own, fixed by `samples.seed` and its index in the list: two
similar prompts do not share their random draws, and a rerun writes the same text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import training.accelerator  # noqa: F401  (before megatron-core)

# isort: split
from megatron.core import parallel_state

from pipeline.ground.errors import UserError
from pipeline.ground.hashing import hash64
from training.chat import ChatCodec, Rejection, as_messages, has_chat_tokens
from training.config import ModelConfig, SamplesConfig
from training.checkpoint_meta import CheckpointMeta, tokenizer_record
from training.export import consolidate
from training.model import GPT, KVCache
from pipeline.ground.console import warn


def single_process_groups() -> None:
    """A world of one (gloo), which megatron-core's layers need even without parallelism."""
    if not dist.is_initialized():  # an in-memory store: one process needs no port
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(1, 1)


def load_model(checkpoint: Path) -> tuple[GPT, CheckpointMeta]:
    from training.parallel import tp_config_single

    single_process_groups()
    state, meta = consolidate(checkpoint)
    cfg = ModelConfig.model_validate(meta.config.model)
    _, vocab_padded = meta.trained_shape(checkpoint)
    model = GPT(cfg, tp_config_single(), vocab_padded)
    model.load_state_dict(state)
    return model.eval(), meta


def sample_next(logits: torch.Tensor, sampling: SamplesConfig, vocab: int, generator: torch.Generator) -> torch.Tensor:
    """Next token ids [B] from last-position logits [B, V_padded]; padded vocabulary rows never win."""
    logits = logits[:, :vocab].float()
    if sampling.temperature == 0:
        return logits.argmax(-1)
    logits = logits / sampling.temperature
    if sampling.top_k:
        kth = torch.topk(logits, min(sampling.top_k, vocab)).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p is not None and sampling.top_p < 1:
        sorted_logits, order = logits.sort(descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) > sampling.top_p  # keep the smallest set reaching top_p
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)


def prompt_seed(seed: int, index: int) -> int:
    """The sampling seed of the prompt at `index`: distinct per index, the same on every run."""
    return hash64(f"{seed}:{index}", salt=b"prompt")


def chat_prompt(codec: ChatCodec, prompt: str) -> list[int]:
    """A prompt as a conversation for the assistant to answer: a JSON list of messages, or one user message."""
    try:
        messages = as_messages(json.loads(prompt) if prompt.lstrip().startswith("[") else prompt, "user")
        return codec.prompt(messages)
    except (ValueError, Rejection) as exc:
        raise UserError(f"--chat prompt {prompt[:60]!r}: {getattr(exc, 'detail', exc)}") from None


def sample_texts(
    checkpoint: Path, tokenizer_file: Path, cfg: SamplesConfig, chat: bool = False
) -> list[tuple[str, str]]:
    """(prompt, continuation) for each configured prompt, from `checkpoint`; with `chat`, each prompt is a
    conversation in the chat template and the answer stops at the end of the assistant's turn."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    if chat and not has_chat_tokens(tokenizer):
        raise UserError(f"--chat: the tokenizer of {checkpoint} has no chat markers; use a checkpoint of crucible sft")
    codec = ChatCodec(tokenizer) if chat else None
    model, meta = load_model(checkpoint)
    eod = tokenizer_record(meta).eod_id  # the end of document the shards were made with
    stop = codec.end_id if codec else eod
    context, _ = meta.trained_shape(checkpoint)
    samples = []
    for index, prompt in enumerate(cfg.prompts):
        ids = chat_prompt(codec, prompt) if codec else tokenizer.encode(prompt, add_special_tokens=False).ids or [eod]
        if len(ids) > context:
            warn(
                f"a prompt of {len(ids):,} tokens is longer than the {context:,} the model was trained "
                f"on; keeping its last {context:,}"
            )
            ids = ids[-context:]
        new = generate(model, ids, cfg, tokenizer.get_vocab_size(), stop, prompt_seed(cfg.seed, index))
        samples.append((prompt, decode_whole_characters(tokenizer, new)))
    return samples


def decode_whole_characters(tokenizer: Any, ids: list[int]) -> str:
    """Text of `ids` without a character cut in half at the end: byte-level tokens can stop inside a
    multi-byte UTF-8 character (the budget of new tokens ran out), which would decode as U+FFFD."""
    text = tokenizer.decode(ids)
    for cut in range(1, min(4, len(ids)) + 1):
        if not text.endswith("\ufffd"):
            break
        text = tokenizer.decode(ids[:-cut])
    return text


@torch.no_grad()
def generate(
    model: GPT, prompt: list[int], sampling: SamplesConfig, vocab: int, stop_id: int | None, seed: int | None = None
) -> list[int]:
    """Prefill `prompt` once, then decode with the KV cache until `stop_id` or max_new_tokens; draws
    are seeded with `seed` (default `sampling.seed`)."""
    generator = torch.Generator().manual_seed(sampling.seed if seed is None else seed)
    cache = KVCache()
    tokens = torch.tensor([prompt])
    positions = torch.arange(len(prompt))[None]
    logits = model(tokens, positions, torch.ones_like(tokens), cache)
    out: list[int] = []
    for _ in range(sampling.max_new_tokens):
        next_id = sample_next(logits[:, -1], sampling, vocab, generator)
        if stop_id is not None and int(next_id) == stop_id:
            break
        out.append(int(next_id))
        position = torch.tensor([[len(prompt) + len(out) - 1]])
        logits = model(next_id[:, None], position, torch.ones_like(position), cache)
    return out
