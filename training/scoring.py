"""Log-likelihood scoring of (context, continuation) token requests, in any parallel layout.

Requests are packed into rows of the training shape (seq_len tokens, micro-batch rows), each
request its own segment with positions from 0, exactly like documents in training rows; with
document masking off, one request a row. Rows are dealt to data-parallel ranks round by round as
the training loader deals them, every rank running the same number of micro-batches. The model
call returns vocab-parallel logits on the last pipeline stage (None elsewhere); target
log-probabilities and greedy flags are computed on the TP shards of the vocabulary without
gathering it. Results are summed over all ranks, so every rank ends with every request's score.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import training.accelerator  # noqa: F401  (before megatron-core)

# isort: split
from megatron.core import parallel_state

from training.tasks import Task, check_fits, encode_pair, requests

# (inputs, positions, segments, targets) -> vocab-parallel logits [B, S, V/tp], or None off the last stage
Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor | None]
Pair = tuple[list[int], list[int]]  # context ids, continuation ids


def encode_tasks(tasks: list[Task], tokenizer_file: Path, eod_id: int, seq_len: int) -> list[list[Pair]]:
    """Token ids of every request of every task; a choice or target longer than `seq_len` is refused."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False).ids

    encoded = [
        [encode_pair(encode, context, continuation, eod_id) for context, continuation in requests(task)]
        for task in tasks
    ]
    for task, pairs in zip(tasks, encoded):
        check_fits(task, pairs, seq_len)
    return encoded


@dataclass
class Rows:
    inputs: np.ndarray  # [rows, seq_len]
    targets: np.ndarray
    positions: np.ndarray
    segments: np.ndarray
    spans: list[tuple[int, int, int]]  # per request: row, first and end target position of its continuation


def pack_requests(pairs: list[Pair], seq_len: int, pad_id: int, one_per_row: bool) -> Rows:
    """Rows of requests, left-truncated to seq_len + 1 tokens as lm-evaluation-harness truncates."""
    placed: list[list[tuple[list[int], int]]] = [[]]  # per row: (tokens, continuation length)
    fill = 0
    for context, continuation in pairs:
        tokens = (context + continuation)[-(seq_len + 1) :]
        width = len(tokens) - 1
        if placed[-1] and (one_per_row or fill + width > seq_len):
            placed.append([])
            fill = 0
        placed[-1].append((tokens, min(len(continuation), width)))
        fill += width
    shape = (len(placed), seq_len)
    rows = Rows(
        np.full(shape, pad_id, np.int64),
        np.full(shape, pad_id, np.int64),
        np.zeros(shape, np.int64),
        np.zeros(shape, np.int64),
        [],
    )
    for row, requests_in_row in enumerate(placed):
        at = 0
        for segment, (tokens, cont) in enumerate(requests_in_row, 1):
            width = len(tokens) - 1
            rows.inputs[row, at : at + width] = tokens[:-1]
            rows.targets[row, at : at + width] = tokens[1:]
            rows.positions[row, at : at + width] = np.arange(width)
            rows.segments[row, at : at + width] = segment
            rows.spans.append((row, at + width - cont, at + width))
            at += width
        rows.segments[row, at:] = len(requests_in_row) + 1  # the padding tail is a segment of its own
    return rows


def target_scores(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each target and whether it is the argmax, from vocab-parallel logits."""
    logits = logits.float()
    group = parallel_state.get_tensor_model_parallel_group()
    tp = parallel_state.get_tensor_model_parallel_world_size()
    local = logits.shape[-1]
    start = parallel_state.get_tensor_model_parallel_rank() * local
    top = logits.max(-1).values
    if tp > 1:
        dist.all_reduce(top, op=dist.ReduceOp.MAX, group=group)
    shifted = targets - start
    mine = (shifted >= 0) & (shifted < local)
    target_logit = logits.gather(-1, shifted.clamp(0, local - 1)[..., None]).squeeze(-1) * mine
    total = (logits - top[..., None]).exp().sum(-1)
    if tp > 1:
        dist.all_reduce(target_logit, group=group)
        dist.all_reduce(total, group=group)
    return target_logit - top - total.log(), target_logit >= top


@torch.no_grad()
def score(
    forward: Forward,
    pairs: list[Pair],
    seq_len: int,
    micro_batch: int,
    pad_id: int,
    device: torch.device,
    dp_rank: int = 0,
    dp: int = 1,
    one_per_row: bool = False,
) -> list[tuple[float, bool]]:
    """(sum of continuation log-probabilities, all continuation tokens greedy) per request."""
    rows = pack_requests(pairs, seq_len, pad_id, one_per_row)
    per_round = micro_batch * dp
    n_rows = -(-len(rows.inputs) // per_round) * per_round  # every rank runs the same number of micro-batches
    tensors = [
        torch.from_numpy(np.pad(a, ((0, n_rows - len(a)), (0, 0)), constant_values=fill))
        for a, fill in ((rows.inputs, pad_id), (rows.targets, pad_id), (rows.positions, 0), (rows.segments, 1))
    ]
    token_ll = torch.zeros(n_rows, seq_len, dtype=torch.float64, device=device)
    token_greedy = torch.zeros(n_rows, seq_len, dtype=torch.float64, device=device)
    for first in range(dp_rank * micro_batch, n_rows, per_round):
        inputs, targets, positions, segments = (t[first : first + micro_batch].to(device) for t in tensors)
        logits = forward(inputs, positions, segments, targets)
        if logits is None:
            continue
        ll, greedy = target_scores(logits, targets)
        if parallel_state.get_tensor_model_parallel_rank() == 0:  # one copy of each result in the sum
            token_ll[first : first + micro_batch] = ll.double()
            token_greedy[first : first + micro_batch] = greedy.double()
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(token_ll)
        dist.all_reduce(token_greedy)
    token_ll, token_greedy = token_ll.cpu(), token_greedy.cpu()
    return [(float(token_ll[row, a:b].sum()), bool(token_greedy[row, a:b].all())) for row, a, b in rows.spans]
