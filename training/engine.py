"""The trainer: built from one config, a train_step that reads top to bottom, and fit().

Parts are made by their own modules (model, parallel, optim, data, metrics); this file only
wires them. With PP = 1 the step is DeepSpeed's forward/backward/step over the micro-batches of
one global batch; with PP > 1 it is the pipeline engine's 1F1B `train_batch` over the same
micro-batches. Every rank draws the same global rows per step whatever the layout, which is
what makes loss curves of different layouts comparable.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from data_prep.shards import ShardError, read_manifest
from data_prep.tokenizer import file_sha256
from pipeline.errors import UserError
from training import parallel
from training.config import ModelConfig, ParallelConfig, TrainConfig, check_layout
from training.data import Batch, DistributedLoader, PackedDataset
from training.init import init_weights
from training.metrics import MetricsLog, flops_per_token, measure_peak_flops
from training.model import lm_loss, padded_vocab
from training.optim import build_optimizer


@dataclass
class StepResult:
    step: int
    loss: float
    grad_norm: float
    lr: float
    seconds: float


class Trainer:
    def __init__(self, model_cfg: ModelConfig, parallel_cfg: ParallelConfig, train_cfg: TrainConfig,
                 data_dir: Path, run_dir: Path, world_size: int) -> None:
        self.train_cfg, self.run_dir = train_cfg, Path(run_dir)
        manifest = read_manifest(Path(data_dir))
        self.seq_len = manifest["seq_len"]
        if train_cfg.seq_len is not None and train_cfg.seq_len != self.seq_len:
            raise ShardError(f"{Path(data_dir) / 'manifest.json'}: shards hold seq_len {self.seq_len}, "
                             f"train.seq_len is {train_cfg.seq_len}; re-pack with prep.pack.seq_len or change it")
        vocab = model_cfg.vocab_size or manifest["tokenizer"]["vocab_size"]
        if vocab < manifest["tokenizer"]["vocab_size"]:
            raise UserError(f"model.vocab_size {vocab} is smaller than the tokenizer's {manifest['tokenizer']['vocab_size']}")
        self.pad_id = manifest["tokenizer"]["pad_id"]
        self.dp = check_layout(model_cfg, parallel_cfg, train_cfg, world_size)  # before any process group
        self.layout = parallel.init_distributed(parallel_cfg)
        self.dtype = self._dtype(train_cfg.precision)
        self.vocab = padded_vocab(vocab, model_cfg.vocab_multiple, parallel_cfg.tp)
        self.model_cfg, self.parallel_cfg = model_cfg, parallel_cfg

        model = parallel.build_model(model_cfg, parallel_cfg, self.layout, self.vocab, self.pad_id, self.dtype)
        init_weights(model, train_cfg.seed, model_cfg.n_layers)
        parallel.seed_everything(train_cfg.seed, self.layout, model)
        model.to(self.layout.device)
        optimizer, scheduler = build_optimizer(model, train_cfg)
        ds_config = parallel.deepspeed_config(train_cfg, parallel_cfg, self.layout, self.dtype == torch.bfloat16)
        self.grad_accum = ds_config["gradient_accumulation_steps"]
        self.engine = parallel.build_engine(model, optimizer, scheduler, ds_config, parallel_cfg)

        tokenizer_sha = file_sha256(Path(data_dir) / manifest["tokenizer"]["file"])
        self.train_data = PackedDataset(data_dir, "train", self.seq_len, tokenizer_sha)
        self.loader = DistributedLoader(self.train_data, train_cfg.micro_batch_size, self.layout.dp_rank, self.dp,
                                        seed=train_cfg.data_seed, rows_per_step=train_cfg.global_batch_size)
        self.val_data = PackedDataset(data_dir, "val", self.seq_len, tokenizer_sha, verify=True)
        self.step = 0
        self.tokens_per_step = train_cfg.global_batch_size * self.seq_len
        self.flops_per_token = flops_per_token(model_cfg, self.vocab, self.seq_len)
        self.peak_flops = (train_cfg.peak_tflops * 1e12 if train_cfg.peak_tflops
                           else measure_peak_flops(self.layout.device, self.dtype))
        self.metrics = MetricsLog(self.run_dir, enabled=self.layout.rank == 0)

    @staticmethod
    def _dtype(precision: str) -> torch.dtype:
        if precision == "auto":
            return torch.bfloat16 if torch.cuda.is_available() else torch.float32
        return torch.bfloat16 if precision == "bf16" else torch.float32

    def _to_device(self, batch: Batch) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        device = self.layout.device
        inputs = (batch.inputs.to(device), batch.positions.to(device), batch.segments.to(device))
        return inputs, batch.targets.to(device)

    def _dp_mean(self, value: torch.Tensor) -> float:
        if self.dp > 1:
            dist.all_reduce(value, group=parallel.parallel_state.get_data_parallel_group())
            value = value / self.dp
        return float(value)

    def train_step(self) -> StepResult:
        """One optimizer step over one global batch."""
        started = time.perf_counter()
        lr = self.engine.get_lr()[0]  # the rate this step uses; the scheduler advances in step()
        micro_batches = [self._to_device(self.loader.next_batch()) for _ in range(self.grad_accum)]
        if self.parallel_cfg.pp > 1:
            loss = float(self.engine.train_batch(iter(micro_batches)))
        else:
            total = torch.zeros((), device=self.layout.device)
            for inputs, targets in micro_batches:
                loss_t = lm_loss(self.engine(*inputs), targets, self.pad_id)
                self.engine.backward(loss_t)
                self.engine.step()
                total += loss_t.detach().float()
            loss = self._dp_mean(total / self.grad_accum)
        grad_norm = self.engine.get_global_grad_norm()
        self.step += 1
        return StepResult(self.step, loss, float(grad_norm) if grad_norm is not None else float("nan"), lr,
                          time.perf_counter() - started)

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over the same `eval_batches` global batches of validation rows, whatever the layout."""
        loader = DistributedLoader(self.val_data, self.train_cfg.micro_batch_size, self.layout.dp_rank, self.dp,
                                   seed=0, rows_per_step=self.train_cfg.global_batch_size)
        batches = [self._to_device(loader.next_batch()) for _ in range(self.train_cfg.eval_batches * self.grad_accum)]
        if self.parallel_cfg.pp > 1:
            return float(self.engine.eval_batch(iter(batches), num_micro_batches=len(batches)))
        self.engine.eval()
        total = torch.zeros((), device=self.layout.device)
        for inputs, targets in batches:
            total += lm_loss(self.engine(*inputs), targets, self.pad_id).float()
        self.engine.train()
        return self._dp_mean(total / len(batches))

    def record(self, result: StepResult, val_loss: float | None) -> dict[str, Any]:
        tokens_per_s = self.tokens_per_step / result.seconds
        mfu = tokens_per_s * self.flops_per_token / (self.peak_flops * self.layout.world)
        record = {"step": result.step, "loss": result.loss, "lr": result.lr, "grad_norm": result.grad_norm,
                  "tokens_per_s": tokens_per_s, "mfu": mfu, "step_seconds": result.seconds,
                  "tokens": result.step * self.tokens_per_step}
        if val_loss is not None:
            record["val_loss"] = val_loss
        self.metrics.log(record)
        if self.layout.rank == 0:
            val = f" | val {val_loss:.4f}" if val_loss is not None else ""
            print(f"step {result.step:>5}/{self.train_cfg.max_steps} | loss {result.loss:.4f}{val} | "
                  f"lr {result.lr:.2e} | gnorm {result.grad_norm:.3f} | {tokens_per_s:,.0f} tok/s | "
                  f"MFU {100 * mfu:.1f}%", flush=True)
        return record

    def fit(self) -> list[dict[str, Any]]:
        cfg, records = self.train_cfg, []
        while self.step < cfg.max_steps:
            result = self.train_step()
            last = self.step == cfg.max_steps
            val_loss = self.evaluate() if (self.step % cfg.eval_interval == 0 or last) else None
            if self.step % cfg.log_interval == 0 or last or val_loss is not None:
                records.append(self.record(result, val_loss))
        self.metrics.close()
        return records
