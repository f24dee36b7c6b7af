"""The trainer: built from one config, a train_step that reads top to bottom, and fit().

Parts are made by `training.builder` (shards, datasets, engine, logs) and their own modules; this file
only wires them. Hooks, the built-in ones included, say what they want after a step (go on, roll back,
stop); the loop's decisions (when to evaluate, save or stop, and what an anomaly leads to) are the
policies' of `training.policies`. With PP = 1 a step is DeepSpeed's
forward/backward/step over the micro-batches of one global batch; with PP > 1 it is the pipeline
engine's 1F1B `train_batch` over the same micro-batches. Every rank draws the same global rows per step whatever the
layout, which is what makes loss curves of different layouts comparable.

Recovery: the run resumes from the latest good checkpoint by default; a non-finite or spiking
loss or gradient norm rolls the run back to the last healthy checkpoint, skips the data that
led there, damps the learning rate for a while and goes on; SIGTERM, SIGUSR1 and Ctrl-C save and stop.
A run folder is one job's: rank 0 locks it, and another job training into it is refused on every rank.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from data_prep.shards import manifest_path
from pipeline.ground import storage
from pipeline.ground.atomic import write_json
from pipeline.ground.errors import UserError
from pipeline.ground.lock import folder_lock
from training import parallel
from training.builder import build_engine, locate_shards, open_datasets, open_run_logs
from training.checkpoint import CheckpointInfo
from training.checkpoint_meta import CheckpointMeta, SavedConfig, SavedLayout
from training.config import STOPPED_FILE, TrainingConfig, check_layout
from training.data import (
    Batch,
    DistributedLoader,
    MixingLoader,
    PackedDataset,
    SourceRows,
    manifest_hash,
    source_views,
)
from training.fp8 import check_fp8
from training.hooks import Anomaly, Hook, Rollback, SignalCheckpoint, Stop, build_hooks
from training.metrics import mfu, mfu_withheld, peak_flops
from training.model import lm_loss
from training.optim import damp_schedule
from training.policies import CheckpointPolicy, EvaluationPolicy, RollbackPolicy, StopPolicy
from training.sizing import flops_per_token, padded_vocab
from training.preflight import model_changes
from training.scoring import encode_tasks, score
from training.tasks import METRIC_LABELS, load_tasks, metrics
from training.trackers import check_installed
from training.metric_names import EVAL_SECONDS, VAL_LOSS, source_val_loss, task_score, task_scores
from pipeline.ground.console import say


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def compute_dtype(precision: str) -> torch.dtype:
    """The training dtype: `auto` is bf16 on GPU and fp32 on CPU (where bf16 matmul is far slower);
    fp8 trains in bf16 with FP8 matmuls inside."""
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return torch.float32 if precision == "fp32" else torch.bfloat16


@dataclass
class StepResult:
    step: int
    loss: float
    grad_norm: float | None  # None where DeepSpeed does not report one (ZeRO stage 0)
    lr: float
    seconds: float
    tokens: int  # valid (non-padding) targets of the global batch


def hold_run_folder(run_dir: Path, rank: int, world: int) -> ExitStack:
    """Lock the run folder for this job (held by rank 0, released by closing the stack): a second job
    training into it would interleave metrics and saves. Every rank learns rank 0's answer, so that a
    refusal ends all of them rather than leaving the others waiting in a collective."""
    held, refusal = ExitStack(), None
    if rank == 0:
        try:
            held.enter_context(folder_lock(run_dir, "crucible train"))
        except UserError as exc:
            refusal = str(exc)
        except OSError as exc:
            refusal = f"cannot use run folder {run_dir}: {exc.strerror or exc}"
    if world > 1:
        answer = [refusal]
        dist.broadcast_object_list(answer, src=0)
        refusal = answer[0]
    if refusal is not None:
        raise UserError(refusal)
    return held


class Trainer:
    def __init__(
        self,
        config: TrainingConfig,
        data_dir: storage.Location,
        run_dir: Path,
        world_size: int,
        resume: str = "auto",
        initial_weights: Callable[[torch.nn.Module], None] | None = None,
    ) -> None:
        """`data_dir`: a shards folder, or its `s3://` URL (then read through the local shard cache).
        `initial_weights` sets a fresh run's weights (post-training: the base model's); default the seeded init.
        Everything that can be refused is checked before the process group starts."""
        self.config, self.run_dir, self.initial_weights = config, Path(run_dir), initial_weights
        self.shards = locate_shards(config, data_dir)
        self.data_dir, self.shard_cache, self.manifest = self.shards.folder, self.shards.cache, self.shards.manifest
        self.seq_len, self.pad_id = self.manifest.seq_len, self.manifest.tokenizer.pad_id
        tokenizer = self.manifest.tokenizer
        self.tasks = load_tasks(config.eval.tasks, config.eval.max_items)
        self.task_requests = encode_tasks(self.tasks, self.data_dir / tokenizer.file, tokenizer.eod_id, self.seq_len)
        self.dp = check_layout(config.model, config.parallel, config.train, world_size)  # before any process group
        check_installed(config.train.loggers)
        if config.train.precision == "fp8":
            check_fp8(
                config.model,
                config.parallel,
                config.train.fp8_scaling,
                torch.device("cuda" if torch.cuda.is_available() else "cpu"),
            )
        self.layout = parallel.init_distributed(config.parallel)
        self.folder_lock = hold_run_folder(self.run_dir, self.layout.rank, self.layout.world)
        self.signals = SignalCheckpoint()  # a signal from here on asks for a save after the step
        try:
            self._set_up(config.model.vocab_size or tokenizer.vocab_size, resume)
        except BaseException:
            self._let_go()
            raise

    def _set_up(self, vocab: int, resume: str) -> None:
        """Data, logs and policies once the run folder is this job's; then the engine, from the checkpoint to
        resume or seeded."""
        config, train_cfg = self.config, self.config.train
        self.dtype = compute_dtype(train_cfg.precision)
        self.vocab = padded_vocab(vocab, config.model.vocab_multiple, config.parallel.tp)
        self.manifest_sha256 = manifest_hash(self.data_dir)
        datasets = open_datasets(self.shards, config, self.layout.dp_rank, self.dp)
        self.train_data, self.val_data, self.loader = datasets.train, datasets.val, datasets.loader
        self.val_sources: dict[str, SourceRows] = {}
        if train_cfg.eval_batches:
            self._val_loader()  # refuse a validation split too small for one global batch now, not at the first eval
            self.val_sources = source_views(self.val_data, train_cfg.global_batch_size)  # per source/language
        self.flops_per_token = flops_per_token(config.model, self.vocab, self.seq_len)
        self.peak_flops = peak_flops(train_cfg.peak_tflops, self.layout.device, self.dtype)
        self.mfu_trusted = self.peak_flops is not None  # False once MFU came out above 100%
        logs = open_run_logs(self.run_dir, config, self.shards, self.layout.rank)
        self.metrics, self.events, self.checkpointer = logs.metrics, logs.events, logs.checkpointer
        self.hooks: list[Hook] = build_hooks(config, self.signals)
        self.evaluation = EvaluationPolicy(train_cfg, config.eval, has_tasks=bool(self.tasks))
        self.checkpointing = CheckpointPolicy(config.checkpoint)
        self.stopping = StopPolicy(train_cfg.max_steps)
        self.rollbacks = RollbackPolicy(config.rollback)
        self.stopped_by: str | None = None  # the signal that stopped training early
        self.step, self.tokens = 0, 0

        start = self.checkpointer.resolve(resume, self.events)
        self.checkpointer.upload_missing()
        if start is not None:
            self._check_compatible(start)
        universal = start is not None and self._layout_changed(start)
        self._build(seeded_init=start is None, load_universal=universal)
        if start is not None:
            self._resume(start, self.checkpointer.universal(start) if universal else None)

    def _build(self, seeded_init: bool, load_universal: bool = False) -> None:
        self.engine: Any = None  # released before its replacement is built
        parts = build_engine(
            self.config,
            self.layout,
            self.vocab,
            self.pad_id,
            self.dtype,
            self.initial_weights,
            seeded_init,
            load_universal,
        )
        self.engine, self.scheduler, self.grad_accum = parts.engine, parts.scheduler, parts.grad_accum

    def _layout_changed(self, info: CheckpointInfo) -> bool:
        saved = info.meta.layout  # None: saved before layouts were recorded, loaded through the universal form
        return saved is None or (saved.tp, saved.pp, saved.dp, saved.zero_stage) != (
            self.layout.tp,
            self.layout.pp,
            self.dp,
            self.config.parallel.zero_stage,
        )

    def _check_compatible(self, info: CheckpointInfo) -> None:
        changed = model_changes(info.meta, self.config.model.model_dump(mode="json"))
        if changed:
            raise UserError(
                f"checkpoint {info.path} holds another model than this run's ({changed}): resume "
                f"it with the model settings it was trained with, or start over (--resume none)"
            )
        saved = info.meta.layout
        if saved is not None and (saved.tp, saved.pp) != (self.layout.tp, self.layout.pp):
            raise UserError(
                f"checkpoint {info.path} was saved with tp={saved.tp}, pp={saved.pp}; this run has "
                f"tp={self.layout.tp}, pp={self.layout.pp}. Resume with the same tp and pp (dp and the ZeRO "
                f"stage may change), or start a fresh run (--resume none)"
            )
        if info.meta.manifest_sha256 != self.manifest_sha256:
            raise UserError(
                f"checkpoint {info.path} was trained on other shards (manifest hash differs "
                f"from {manifest_path(self.data_dir)})"
            )

    def _resume(self, info: CheckpointInfo, universal: Path | None) -> None:
        self.checkpointer.load(self.engine, info, universal)
        self.step, self.tokens = info.step, info.meta.tokens
        self.rollbacks.load_state_dict({"count": info.meta.rollbacks})
        self.loader.load_state_dict(info.meta.loader)
        self.events.log(
            {"event": "resume", "step": info.step, "checkpoint": info.path.name, "universal": universal is not None}
        )
        if self.layout.rank == 0:
            say(f"resumed from {info.path} at step {info.step}")

    # -- one step --------------------------------------------------------------------------

    def _next_training_batch(self) -> Batch:
        """The loader's next micro-batch, passed through every hook's `on_batch` (training batches
        only: validation must measure the rows as they are)."""
        batch = self.loader.next_batch()
        for hook in self.hooks:
            batch = hook.on_batch(self, batch)
        return batch

    def _count_source_tokens(self, batches: list[Batch]) -> None:
        """With a mixture: the step's real (non-padding) targets per source, summed over DP ranks, for
        `mix/<source>/tokens`."""
        if isinstance(self.loader, MixingLoader):
            counts = torch.from_numpy(self.loader.source_tokens(batches, self.pad_id)).to(self.layout.device)
            self.loader.add_tokens(self._dp_sum(counts).cpu().numpy())

    def _to_device(self, batch: Batch) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        device = self.layout.device
        inputs = (batch.inputs.to(device), batch.positions.to(device), batch.segments.to(device))
        return inputs, batch.targets.to(device)

    def _dp_sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.dp > 1:
            dist.all_reduce(value, group=parallel.parallel_state.get_data_parallel_group())
        return value

    def _dp_mean(self, value: torch.Tensor) -> float:
        return float(self._dp_sum(value) / self.dp)

    def _token_weighted(
        self, batches: list[tuple[tuple[torch.Tensor, ...], torch.Tensor]]
    ) -> tuple[list[tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, torch.Tensor]]], int]:
        """Each micro-batch with its loss denominator, and the valid targets of the global batch.

        The engine averages micro-batch losses over the micro-batches of a rank and over DP
        ranks; dividing each summed loss by (valid targets of the global batch) / (micro-batches
        x DP) makes that average the mean over every valid target, so a row of 165 real targets
        weighs less than one of 256, whichever micro-batch or rank holds it.
        """
        valid = sum(((targets != self.pad_id).sum() for _, targets in batches), torch.zeros((), dtype=torch.long))
        total = int(self._dp_sum(valid))
        denominator = torch.tensor(max(total, 1) / (len(batches) * self.dp), device=self.layout.device)
        return [(inputs, (targets, denominator)) for inputs, targets in batches], total

    def micro_loss(self, inputs: tuple[torch.Tensor, ...], labels: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The loss of one micro-batch (PP = 1): cross entropy over its valid targets, over their denominator."""
        targets, denominator = labels
        return lm_loss(self.engine(*inputs), targets, self.pad_id, denominator)

    def train_step(self) -> StepResult:
        """One optimizer step over one global batch."""
        started = time.perf_counter()
        lr = self.engine.get_lr()[0]  # the rate this step uses; the scheduler advances in step()
        batches = [self._next_training_batch() for _ in range(self.grad_accum)]
        self._count_source_tokens(batches)
        micro_batches, tokens = self._token_weighted([self._to_device(batch) for batch in batches])
        if self.config.parallel.pp > 1:
            loss = float(self.engine.train_batch(iter(micro_batches)))
        else:
            total = torch.zeros((), device=self.layout.device)
            for inputs, labels in micro_batches:
                loss_t = self.micro_loss(inputs, labels)
                self.engine.backward(loss_t)
                self.engine.step()
                total += loss_t.detach().float()
            loss = self._dp_mean(total / self.grad_accum)
        grad_norm = self.engine.get_global_grad_norm()
        self.step += 1
        self.tokens += tokens
        return StepResult(
            self.step, loss, None if grad_norm is None else float(grad_norm), lr, time.perf_counter() - started, tokens
        )

    def _val_loader(self, data: PackedDataset | SourceRows | None = None) -> DistributedLoader:
        return DistributedLoader(
            data or self.val_data,
            self.config.train.micro_batch_size,
            self.layout.dp_rank,
            self.dp,
            seed=0,
            rows_per_step=self.config.train.global_batch_size,
            document_positions=self.config.model.document_masking,
        )

    @torch.no_grad()
    def evaluate(self, data: SourceRows | None = None) -> float:
        """Mean loss per valid target over the same `eval_batches` global batches of validation rows
        (of one source, given `data`), whatever the layout."""
        loader = self._val_loader(data)
        steps = self.config.train.eval_batches * self.grad_accum
        batches, _ = self._token_weighted([self._to_device(loader.next_batch()) for _ in range(steps)])
        if self.config.parallel.pp > 1:
            return float(self.engine.eval_batch(iter(batches), num_micro_batches=len(batches)))
        self.engine.eval()
        total = torch.zeros((), device=self.layout.device)
        for inputs, labels in batches:
            total += self.micro_loss(inputs, labels).float()
        self.engine.train()
        return self._dp_mean(total / len(batches))

    def validate(self) -> dict[str, float]:
        """The validation metrics of an eval interval: `val_loss`, overall and per source."""
        return {VAL_LOSS: self.evaluate()} | {
            source_val_loss(name): self.evaluate(rows) for name, rows in self.val_sources.items()
        }

    def _logits(
        self, inputs: torch.Tensor, positions: torch.Tensor, segments: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor | None:
        """Vocab-parallel logits of one micro-batch; None on pipeline stages other than the last."""
        if self.config.parallel.pp > 1:  # the loss is computed and dropped: the engine adds it to its running total
            labels = (targets, torch.ones((), device=targets.device))
            _, logits = self.engine.eval_batch(
                iter([((inputs, positions, segments), labels)]),
                return_logits=True,
                bcast_loss=False,
                num_micro_batches=1,
            )
            return logits if self.engine.is_last_stage() else None
        return self.engine(inputs, positions, segments)

    def evaluate_tasks(self) -> dict[str, float]:
        """`eval/<task>/<metric>` of every task, items dealt over DP ranks, and the seconds it took
        (`eval_seconds`, outside the step time that throughput is measured on)."""
        started = time.perf_counter()
        self.engine.eval()
        flat = [pair for pairs in self.task_requests for pair in pairs]
        scores = score(
            self._logits,
            flat,
            self.seq_len,
            self.config.train.micro_batch_size,
            self.pad_id,
            self.layout.device,
            self.layout.dp_rank,
            self.dp,
            not self.config.model.document_masking,
        )
        self.engine.train()
        record: dict[str, float] = {}
        for task, pairs in zip(self.tasks, self.task_requests):
            results = metrics(task, scores[: len(pairs)], pairs)
            scores = scores[len(pairs) :]
            record |= {task_score(task.name, key): value for key, value in results.items() if key != "items"}
        return record | {EVAL_SECONDS: time.perf_counter() - started}

    # -- bookkeeping -----------------------------------------------------------------------

    def make_record(self, result: StepResult) -> dict[str, Any]:
        """`tokens`, `tokens_per_s` and MFU count valid targets only: padding is neither learned nor credited."""
        tokens_per_s = result.tokens / result.seconds
        return {
            "step": result.step,
            "loss": result.loss,
            "lr": result.lr,
            "grad_norm": result.grad_norm,
            "tokens_per_s": tokens_per_s,
            "mfu": self._mfu(tokens_per_s),
            "peak_tflops": None if self.peak_flops is None else self.peak_flops / 1e12,
            "step_seconds": result.seconds,
            "tokens": self.tokens,
        } | self.loader.metrics()

    def _mfu(self, tokens_per_s: float) -> float | None:
        """MFU, or None without a peak and from the first step above 100% on (the peak read low, so
        no figure against it can be trusted); that step says why once."""
        value = mfu(
            tokens_per_s, self.flops_per_token, self.peak_flops if self.mfu_trusted else None, self.layout.world
        )
        if value is not None and value > 1 and self.peak_flops is not None:
            self.mfu_trusted, value = False, None
            if self.layout.rank == 0:
                say(f"note: {mfu_withheld(self.peak_flops / 1e12)}")
        return value

    def log_record(self, record: dict[str, Any]) -> None:
        """metrics.jsonl gets every step (also the ones a rollback undid, marked `anomaly`)."""
        self.metrics.log(record)
        notable = any(key in record for key in (VAL_LOSS, "anomaly", "anomaly_ignored"))
        if self.layout.rank == 0 and (record["step"] % self.config.train.log_interval == 0 or notable):
            extra = f" | {VAL_LOSS} {record[VAL_LOSS]:.4f}" if VAL_LOSS in record else ""
            extra += f" | anomaly {record['anomaly']}" if "anomaly" in record else ""
            extra += "".join(  # `eval/next_word/perplexity` shows as `next_word perplexity per word`
                f" | {task} {METRIC_LABELS.get(metric, metric)} {value:.3f}"
                for (task, metric), value in task_scores(record).items()
            )
            say(
                f"step {record['step']:>5}/{self.config.train.max_steps} | loss {record['loss']:.4f}{extra} | "
                f"lr {record['lr']:.2e} | gnorm {_fmt(record['grad_norm'])} | {record['tokens_per_s']:,.0f} tok/s"
                + ("" if record["mfu"] is None else f" | MFU {100 * record['mfu']:.1f}%")
            )

    def save(self, reason: str) -> Path:
        config = self.config
        meta = CheckpointMeta(
            step=self.step,
            loader=self.loader.state_dict(),
            tokens=self.tokens,
            # An anomalous step is rolled back before any save; one with nothing to roll back to is kept.
            healthy=True,
            rollbacks=self.rollbacks.count,
            reason=reason,
            layout=SavedLayout(tp=self.layout.tp, pp=self.layout.pp, dp=self.dp, zero_stage=config.parallel.zero_stage),
            manifest_sha256=self.manifest_sha256,
            data_dir=self.shards.source,
            seq_len=self.seq_len,
            tokenizer=self.manifest.tokenizer,  # its file, hash and special-token ids, for generate and export
            config=SavedConfig(
                model=config.model.model_dump(mode="json"),
                parallel=config.parallel.model_dump(mode="json"),
                train=config.train.model_dump(mode="json"),
                vocab_padded=self.vocab,
                samples=config.samples.model_dump(mode="json"),
            ),  # generate's and export's defaults
        )
        path = self.checkpointer.save(self.engine, meta)
        self.events.log({"event": "save", "step": self.step, "checkpoint": path.name, "reason": reason})
        for hook in self.hooks:
            hook.on_save(self, path)
        return path

    def rollback(self, anomaly: Anomaly) -> bool:
        """Back to the last healthy checkpoint; skip the data since; damp the rate for a while.
        A spike before the first checkpoint is logged and training goes on (False)."""
        for hook in self.hooks:
            hook.on_anomaly(self, anomaly)
        target = self.checkpointer.last_healthy(anomaly.step - 1, self.events)
        verdict = self.rollbacks.verdict(anomaly.reason, anomaly.step, anomaly.value, has_target=target is not None)
        if verdict == "ignore" or target is None:  # the one follows from the other
            self.events.log(
                {
                    "event": "anomaly_ignored",
                    "step": anomaly.step,
                    "reason": anomaly.reason,
                    "value": anomaly.value,
                    "why": "no checkpoint to roll back to yet",
                }
            )
            return False
        skip_from = target.meta.loader
        skip_to = self.loader.state_dict()
        self._build(seeded_init=False)
        self.checkpointer.load(self.engine, target)
        self.step, self.tokens = target.step, target.meta.tokens
        self.loader.load_state_dict(skip_to)  # the rows between the checkpoint and the anomaly are skipped
        damp_schedule(self.scheduler, self.config.rollback.lr_scale, self.rollbacks.damped_until(self.step))
        for hook in self.hooks:
            hook.on_rollback(self, target.step)
        event = {
            "event": "rollback",
            "step": anomaly.step,
            "reason": anomaly.reason,
            "value": anomaly.value,
            "threshold": anomaly.threshold,
            "restored_step": target.step,
            "checkpoint": target.path.name,
            "skipped": {"from": skip_from, "to": skip_to},
            "lr_scale": self.config.rollback.lr_scale,
            "lr_scale_until": self.rollbacks.damped_until(self.step),
            "rollbacks": self.rollbacks.count,
        }
        self.events.log(event)
        if self.layout.rank == 0:
            say(f"rollback: {anomaly.reason} at step {anomaly.step} -> step {target.step}, data window skipped")
        return True

    # -- the loop ---------------------------------------------------------------------------

    @property
    def requeued(self) -> bool:
        """Stopped by a signal inside a Slurm job (its time-limit warning, a preemption), whose job script
        requeues it: a pause, not a stop that someone asked for."""
        return self.stopped_by not in (None, "SIGINT") and bool(os.environ.get("SLURM_JOB_ID"))

    def _announce_stop(self, signal_name: str) -> None:
        """Say how the run stopped and how it goes on. Any signal but Ctrl-C leaves `stopped.json`, the cue for a
        job script to requeue; "stopping for requeue" is said only inside a Slurm job, whose script does."""
        enabled = self.config.checkpoint.enabled
        saved = "checkpoint saved" if enabled else "no checkpoint (checkpoint.enabled is false)"
        resumes = "the same command resumes from it" if enabled else "the same command starts over"
        if signal_name == "SIGINT":
            say(f"interrupted: {saved} at step {self.step}; {resumes}")
            return
        write_json(self.run_dir / STOPPED_FILE, {"step": self.step, "signal": signal_name})
        if self.requeued:
            say(f"{signal_name}: {saved} at step {self.step}; stopping for requeue")
        else:
            say(f"stopped at step {self.step} of {self.config.train.max_steps} by {signal_name}: {saved}; {resumes}")

    def fit(self) -> list[dict[str, Any]]:
        """Train to `train.max_steps`, or until a signal stops it (`stopped_by`); the metric records."""
        try:
            records = self._loop()
            self.checkpointer.finish_uploads()
            return records
        finally:
            try:
                for hook in self.hooks:
                    hook.on_fit_end(self)
            finally:
                self._let_go()

    def _let_go(self) -> None:
        """Hand back what the run holds: the signal handlers, the shard cache's threads, the run folder."""
        self.signals.release()
        if self.shard_cache is not None:
            self.shard_cache.close()
        self.folder_lock.close()

    def _loop(self) -> list[dict[str, Any]]:
        """Step, ask the hooks, roll back or evaluate, log, save, stop: each decision is a policy's."""
        records = []
        if self.layout.rank == 0:  # an earlier stop's cue to requeue is stale once training goes on
            (self.run_dir / STOPPED_FILE).unlink(missing_ok=True)
        while not self.stopping.done(self.step):
            record = self.make_record(self.train_step())
            last = self.stopping.is_last(self.step)
            actions = [hook.on_step_end(self, record) for hook in self.hooks]
            rollback = next((a for a in actions if isinstance(a, Rollback)), None)
            stop = next((a for a in actions if isinstance(a, Stop)), None)
            if rollback is not None:
                if self.rollback(rollback.anomaly):
                    self.log_record(record | {"anomaly": rollback.anomaly.reason})
                    continue  # a stop asked for now is asked again after the next step
                record["anomaly_ignored"] = rollback.anomaly.reason
            if self.evaluation.validate_now(self.step, last):
                record |= self.validate()
                for hook in self.hooks:
                    hook.on_eval(self, record[VAL_LOSS])
            if self.evaluation.score_tasks_now(self.step, last):
                record |= self.evaluate_tasks()
            self.log_record(record)
            records.append(record)
            reason = self.checkpointing.save_reason(self.step, last, stopping=stop is not None)
            if reason is not None:
                self.save(reason)
            if stop is not None and self.stopping.honours_stop_after(self.step):
                self.events.log({"event": "stop", "step": self.step, "signal": stop.reason})
                self.stopped_by = stop.reason
                if self.layout.rank == 0:
                    self._announce_stop(stop.reason)
                break
        self.metrics.close()
        return records
