"""The numbers training reports mean what they say: the learning-rate schedule reaches its peak
once and ends at min_lr; the loss is the mean over every valid target of the global batch,
however padding falls across micro-batches and data-parallel ranks; tokens count no padding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import english_shards, metrics, read_set, torchrun
from training.config import TrainConfig
from training.optim import LrSchedule


@pytest.mark.parametrize(("warmup", "steps"), [(3, 10), (10, 100), (1, 5), (0, 7)])
def test_lr_schedule_peaks_once_and_ends_at_min_lr(warmup: int, steps: int) -> None:
    cfg = TrainConfig(lr=3e-3, min_lr=3e-4, warmup_steps=warmup, max_steps=steps)
    rates = [cfg.lr * LrSchedule(cfg)(step) for step in range(steps)]
    assert rates[0] == pytest.approx(cfg.lr / max(warmup, 1), rel=1e-12)
    assert rates[max(warmup - 1, 0)] == pytest.approx(cfg.lr, rel=1e-12)  # the end of warmup
    assert rates.count(max(rates)) == 1
    assert rates[-1] == pytest.approx(cfg.min_lr, rel=1e-12)  # the last step
    assert all(a > b for a, b in zip(rates[warmup:], rates[warmup + 1 :]))


def test_optimizer_follows_the_schedule_step_by_step() -> None:
    from training.optim import build_optimizer

    cfg = TrainConfig(lr=1e-2, min_lr=1e-3, warmup_steps=3, max_steps=10)
    optimizer, scheduler = build_optimizer(torch.nn.Linear(2, 2), cfg)
    used = []
    for _ in range(cfg.max_steps):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert used[:3] == pytest.approx([cfg.lr / 3, 2 * cfg.lr / 3, cfg.lr])
    assert used[3] < cfg.lr and used[-1] == pytest.approx(cfg.min_lr)


@pytest.fixture(scope="module")
def padded_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Best-fit packed shards: rows padded by different amounts."""
    records = [
        {"id": r["id"], "text": r["text"][: 30 + (i * 37) % 150]} for i, r in enumerate(read_set("english", 200))
    ]
    return english_shards(
        tmp_path_factory, "padded_shards", records, "prep.pack.method=best_fit", "prep.pack.val_fraction=0.25"
    )


def reference_step(shards: Path, split: str, rows: int) -> tuple[float, float, np.ndarray]:
    """Plain PyTorch over one global batch of the seeded model: the mean cross entropy over all
    valid targets, the gradient norm, and the valid targets per row."""
    from training.config import ModelConfig
    from training.data import DistributedLoader, PackedDataset
    from training.generate import single_process_groups
    from training.init import init_weights
    from training.model import GPT
    from training.parallel import tp_config_single
    from training.sizing import padded_vocab

    single_process_groups()
    data = PackedDataset(shards, split)
    batch = DistributedLoader(data, rows, seed=0, rows_per_step=rows).next_batch()
    cfg = ModelConfig()
    model = GPT(cfg, tp_config_single(), padded_vocab(data.manifest.tokenizer.vocab_size, cfg.vocab_multiple, 1))
    init_weights(model, TrainConfig().seed, cfg.n_layers)
    logits = model(batch.inputs, batch.positions, batch.segments)
    loss = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1).float(), batch.targets.flatten(), ignore_index=data.pad_id
    )
    loss.backward()
    norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters() if p.grad is not None))
    return float(loss.detach()), float(norm), (batch.targets != data.pad_id).sum(1).numpy()


@pytest.mark.slow
def test_loss_weighs_every_valid_token_alike_over_micro_batches_and_ranks(padded_shards: Path, tmp_path: Path) -> None:
    """DP 2 x 2 micro-batches of 2 rows, unevenly padded: the step-1 loss and gradient norm are
    those of one plain cross entropy over all 8 rows; the validation loss likewise (a vanishing
    learning rate leaves the weights of step 0 for it)."""
    torchrun(
        2,
        "train",
        "--data",
        str(padded_shards),
        "--output",
        str(tmp_path),
        "--set",
        "train.max_steps=1",
        "--set",
        "train.lr=1e-20",
        "--set",
        "train.min_lr=1e-20",
        "--set",
        "train.global_batch_size=8",
        "--set",
        "train.micro_batch_size=2",
        "--set",
        "train.peak_tflops=1",
        "--set",
        "train.eval_batches=1",
        "--set",
        "checkpoint.enabled=false",
        "--set",
        "rollback.enabled=false",
    )
    record = metrics(tmp_path)[0]
    loss, norm, valid = reference_step(padded_shards, "train", 8)
    per_micro_batch = valid.reshape(4, 2).sum(1)
    assert len(set(per_micro_batch.tolist())) > 1, "the test needs uneven padding"
    assert record["loss"] == pytest.approx(loss, abs=1e-6)
    assert record["grad_norm"] == pytest.approx(norm, rel=1e-5)
    assert record["tokens"] == valid.sum() < 8 * 64  # valid targets, not padded rows
    val_loss, _, _ = reference_step(padded_shards, "val", 8)
    assert record["val_loss"] == pytest.approx(val_loss, abs=1e-6)
