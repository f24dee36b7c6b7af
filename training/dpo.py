"""Direct preference optimization on the pretraining trainer: preference pairs, reference log-probabilities, the loss.

A pair (TRL's layout: `prompt`, `chosen`, `rejected`) is one row of RUN/data's shards: the prompt and the chosen
reply, then the prompt and the rejected reply as a second document, with a per-token `dpo_side` column (1 on the
chosen reply's learned tokens, 2 on the rejected one's). The reference model is the starting point itself: before
the first step the trainer scores every row with its own engine and stores the two sums of log-probabilities per row
in RUN/data/reference, which every later step (and every resume) reads, so the reference never changes under a run.
The loss is DPO's sigmoid loss, -log sigmoid(beta * ((chosen - ref chosen) - (rejected - ref rejected))), averaged
over the pairs of the global batch whatever the layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import training.accelerator  # noqa: F401  (before megatron-core)

# isort: split
from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

from pipeline.ground.atomic import write_npy
from pipeline.ground.errors import UserError
from training.chat import ChatCodec, Ledger, Messages, Rejection, as_messages, json_records
from training.data import Batch
from training.engine import StepResult, Trainer
from training.post import Rows, build_data, held_out
from training.post_config import DPOConfig
from pipeline.ground.console import say

SIDE = "dpo_side"  # a per-token column: 1 a chosen reply's learned token, 2 a rejected one's, 0 anything else
REFERENCE = "reference"  # RUN/data/reference/<split>.npy: [rows, 2] reference log-probabilities (chosen, rejected)
TERMS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracy")


# -- the data ------------------------------------------------------------------------------------


def reply(value: Any, field: str) -> Messages:
    """A chosen or rejected reply: an assistant message, a list of messages, or text (the assistant's)."""
    if value is None:
        raise Rejection(f"no_{field}", f"the record has no `{field}`")
    messages = as_messages([value] if isinstance(value, dict) else value, "assistant")
    if not any(m["role"] == "assistant" for m in messages):
        raise Rejection("no_assistant_turn", f"`{field}` has no assistant message: nothing to compare")
    return messages


def encode_pair(codec: ChatCodec, record: dict[str, Any]) -> tuple[list[int], list[int], int]:
    """(ids, side, start of the second document) of a pair: prompt + chosen, then prompt + rejected."""
    if record.get("prompt") is None:
        raise Rejection("no_prompt", "the record has no `prompt`")
    prompt = codec.encode(as_messages(record["prompt"], "user"), ())[0]
    chosen, rejected = reply(record.get("chosen"), "chosen"), reply(record.get("rejected"), "rejected")
    if chosen == rejected:
        raise Rejection("identical_replies", "`chosen` and `rejected` are the same: nothing to prefer")
    ids: list[int] = []
    side: list[int] = []
    for messages, mark in ((chosen, 1), (rejected, 2)):
        reply_ids, learn = codec.encode(messages)
        ids += prompt + reply_ids
        side += [0] * len(prompt) + [mark if learnt else 0 for learnt in learn]
    return ids, side, len(prompt) + len(codec.encode(chosen)[0])


def read_preferences(
    path: Path, codec: ChatCodec, settings: DPOConfig, seq_len: int
) -> tuple[Ledger, dict[str, list[tuple[list[int], list[int], int]]]]:
    """The usable pairs of a preference file per split, and the ledger of every record."""
    ledger = Ledger()
    splits: dict[str, list[tuple[list[int], list[int], int]]] = {"train": [], "val": []}
    for line, raw, record in json_records(path, ledger):
        try:
            pair = encode_pair(codec, record)
            if len(pair[0]) > seq_len + 1:
                raise Rejection(
                    "too_long", f"prompt twice and both replies make {len(pair[0])} tokens; a row holds {seq_len + 1}"
                )
        except Rejection as why:
            ledger.reject(line, raw, why)
            continue
        ledger.kept += 1
        splits["val" if held_out(raw, settings.val_fraction) else "train"].append(pair)
    return ledger, splits


def pair_rows(pairs: list[tuple[list[int], list[int], int]], seq_len: int, pad_id: int, seed: int) -> Rows:
    """One pair a row, in a seeded order; the rest of a row is padding."""
    order = np.random.default_rng(seed).permutation(len(pairs)).tolist()
    tokens = np.full((len(pairs), seq_len + 1), pad_id, dtype=np.uint32)
    side = np.zeros((len(pairs), seq_len + 1), dtype=np.uint8)
    for row, index in enumerate(order):
        ids, marks, _ = pairs[index]
        tokens[row, : len(ids)], side[row, : len(marks)] = ids, marks
    starts = [np.array([0, pairs[index][2]], dtype=np.int32) for index in order]
    return tokens, starts, side, len(pairs), int(sum(len(p[0]) for p in pairs))


def build_dpo_data(
    folder: Path, prefs: Path, base: Path, tokenizer_file: Path, settings: DPOConfig, seq_len: int
) -> None:
    """RUN/data of a DPO run: each pair a row (chosen, then rejected), with which side each token is on."""
    build_data(folder, prefs, base, tokenizer_file, settings, seq_len, read_preferences, pair_rows, SIDE)


# -- the loss ------------------------------------------------------------------------------------


def sequence_logps(logits: torch.Tensor, targets: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
    """[rows, 2]: the summed log-probabilities of each row's chosen and rejected reply, from vocab-parallel logits."""
    logits = logits.float() if torch.is_grad_enabled() else logits.to(torch.float32, copy=True)  # see lm_loss
    per_token = -vocab_parallel_cross_entropy(logits, targets)
    return torch.stack([(per_token * (side == mark)).sum(1) for mark in (1, 2)], dim=1)


def dpo_terms(policy: torch.Tensor, reference: torch.Tensor, beta: float) -> dict[str, torch.Tensor]:
    """Per pair: the sigmoid DPO loss, the implicit rewards beta * log(policy / reference) of both replies,
    their margin, and whether the chosen reply's reward is the higher (preference accuracy)."""
    chosen, rejected = beta * (policy[:, 0] - reference[:, 0]), beta * (policy[:, 1] - reference[:, 1])
    return {
        "loss": -F.logsigmoid(chosen - rejected),
        "rewards/chosen": chosen,
        "rewards/rejected": rejected,
        "rewards/margins": chosen - rejected,
        "rewards/accuracy": (chosen > rejected).float(),
    }


def check_dpo_layout(parallel: Any) -> None:
    """Refuse pipeline parallelism: the pair loss and the reference scoring call the whole model's forward."""
    if parallel.pp > 1:
        raise UserError(
            "dpo with parallel.pp > 1 is not supported yet: use tensor and data parallelism "
            "(parallel.tp, more processes) and ZeRO"
        )


class DPOTrainer(Trainer):
    """The Trainer with DPO's loss over pairs, the reference log-probabilities read from RUN/data/reference
    (computed there before the first step), and the reward terms in every step's and validation's record."""

    def __init__(
        self, config: Any, data_dir: Path, run_dir: Path, world_size: int, resume: str, initial_weights: Any
    ) -> None:
        check_dpo_layout(config.parallel)
        self.beta = config.post.dpo.beta
        self.sums = torch.zeros(len(TERMS), dtype=torch.float64)  # the terms summed over this rank's pairs
        super().__init__(config, data_dir, run_dir, world_size, resume, initial_weights)

    def _set_up(self, vocab: int, resume: str) -> None:
        super()._set_up(vocab, resume)
        self.reference = {
            split: self._reference(split, data)
            for split, data in (("train", self.train_data), ("val", self.val_data))
            if len(data)
        }
        self.current = self.reference["train"]  # the split the batches being drawn come from

    def _reference(self, split: str, data: Any) -> torch.Tensor:
        """The stored reference log-probabilities of a split, or (before the first step) scored now and stored."""
        path = self.data_dir.parent / REFERENCE / f"{split}.npy"
        if not path.exists():
            if self.step:
                raise UserError(
                    f"{path} is missing: the reference log-probabilities of this run are lost; start a "
                    f"new run (--output) from the same checkpoint"
                )
            self._score(data, path)
        return torch.from_numpy(np.load(path))

    @torch.no_grad()
    def _score(self, data: Any, path: Path) -> None:
        """Every row's (chosen, rejected) log-probabilities under the starting weights, rows dealt over DP ranks."""
        micro, device = self.config.train.micro_batch_size, self.layout.device
        scores = torch.zeros((len(data), 2), dtype=torch.float64, device=device)
        assert self.engine is not None  # built by _set_up, which calls this
        self.engine.eval()
        for start in range(self.layout.dp_rank * micro, len(data), micro * self.dp):
            batch = data.batch(np.arange(start, min(start + micro, len(data))), self.config.model.document_masking)
            logits = self.engine(batch.inputs.to(device), batch.positions.to(device), batch.segments.to(device))
            scores[start : start + len(batch.rows)] = sequence_logps(
                logits, batch.targets.to(device), batch.per_token[SIDE].to(device)
            ).double()
        self.engine.train()
        summed = self._dp_sum(scores).cpu().numpy()
        if self.layout.rank == 0:
            path.parent.mkdir(exist_ok=True)
            write_npy(path, summed)
            say(f"reference log-probabilities of {len(summed)} {path.stem} pairs stored in {path}")
        dist.barrier()  # every rank reads the file next

    def _to_device(self, batch: Batch) -> tuple[tuple[torch.Tensor, ...], Any]:
        inputs, targets = super()._to_device(batch)
        device = self.layout.device
        return inputs, (
            targets,
            batch.per_token[SIDE].to(device),
            self.current[torch.from_numpy(batch.rows)].to(device),
        )

    def _token_weighted(self, batches: list[tuple[tuple[torch.Tensor, ...], Any]]) -> tuple[list[Any], int]:
        """Each micro-batch's loss is its pairs' sum over the micro-batch size: the engine's mean over micro-batches
        and DP ranks is then the mean over the pairs of the global batch. Tokens: the replies' learned targets."""
        learned = sum((labels[1] > 0).sum() for _, labels in batches)
        denominator = torch.tensor(float(self.config.train.micro_batch_size), device=self.layout.device)
        return [(inputs, (*labels, denominator)) for inputs, labels in batches], int(self._dp_sum(learned))

    def micro_loss(self, inputs: tuple[torch.Tensor, ...], labels: tuple[torch.Tensor, ...]) -> torch.Tensor:
        targets, side, reference, denominator = labels
        assert self.engine is not None  # set up before any step
        terms = dpo_terms(sequence_logps(self.engine(*inputs), targets, side), reference.to(torch.float32), self.beta)
        self.sums += torch.stack([terms[name].detach().double().sum().cpu() for name in TERMS])
        return terms["loss"].sum() / denominator

    def _mean_terms(self, prefix: str) -> dict[str, float]:
        """The terms summed since the last call, as means over the pairs of every DP rank."""
        sums, self.sums = self._dp_sum(self.sums.to(self.layout.device)).cpu(), torch.zeros_like(self.sums)
        pairs = self.config.train.global_batch_size * (self.config.train.eval_batches if prefix else 1)
        return {f"{prefix}{name}": float(total / pairs) for name, total in zip(TERMS, sums) if name != "loss"}

    def train_step(self) -> StepResult:
        result = super().train_step()
        self.step_terms = self._mean_terms("")
        return result

    def make_record(self, result: StepResult) -> dict[str, Any]:
        return super().make_record(result) | self.step_terms

    def validate(self) -> dict[str, float]:
        """DPO's loss and reward terms on the held-out pairs: `val_loss`, `val_rewards/accuracy`, ..."""
        self.current = self.reference["val"]
        try:
            loss = self.evaluate()
        finally:
            self.current = self.reference["train"]
        return {"val_loss": loss} | self._mean_terms("val_")
