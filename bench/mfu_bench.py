"""MFU of a large model on the accelerator at hand: Crucible's trainer beside a plain PyTorch loop,
an eager bf16 trainer run and the device's own matmul rate, in one process.

Meant for a GPU (the default config is `configs/gpu_1b.yaml`: the 1.04B-parameter `1b` preset,
bf16, 2048-token rows). In this process:
- the device's dense matmul rate (8192^3 products in the training dtype): the practical peak;
- a plain PyTorch loop of the same GPT (fp32 weights, bf16 autocast, fused AdamW, the same
  micro-batches and accumulation, causal attention), the baseline for the trainer's overhead;
- `crucible train` eager in bf16 with no recomputation (`eager-bf16`), the baseline of the speed paths;
- `crucible train` itself for each `--variant` (a name and `--set` overrides, e.g.
  `zero0:parallel.zero_stage=0`), or for the variants of `--suite speed` (document masking through
  SDPA and FlexAttention, selective and full recomputation, FP8 with both scalings).
Tokens/s are medians over the steps after the warm-up; MFU uses the trainer's FLOPs per token
(training/metrics.py), with and without the attention term, against the config's
`train.peak_tflops` (the datasheet) and against the measured matmul rate. `--check` compares two
runs' loss curves (FlexAttention against SDPA, FP8 against bf16); each is printed with its
tolerance as meets / MISSES. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import Result, print_json, print_table
from torch import nn
from train_bench import PlainGPT

from data_prep.shards import read_manifest
from launch.torchrun import free_port
from pipeline.config import CrucibleConfig, load_config
from pipeline.ground.atomic import write_json
from pipeline.ground.layout import TrainFolder
from pipeline.ground.quiet import quiet_third_party
from training.data import PackedDataset, make_batch
from training.metrics import measure_peak_flops
from training.sizing import count_params, flops_per_token, padded_vocab

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "gpu_1b.yaml"


def device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def plain_loop(
    config: CrucibleConfig, shards: Path, vocab: int, pad_id: int, steps: int, dtype: torch.dtype
) -> list[float]:
    """Seconds per optimizer step of the plain loop (same model, rows, micro-batch and accumulation)."""
    m, t = config.model, config.train
    with torch.device(device()):
        model = PlainGPT(vocab, m.d_model, m.n_layers, m.n_heads, m.n_kv_heads, m.ffn_hidden, m.norm_eps, m.rope_theta)
    fused = {"fused": True} if torch.cuda.is_available() else {}
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, betas=t.betas, weight_decay=t.weight_decay, **fused)
    dataset = PackedDataset(shards, "train")
    indices = np.arange(min(len(dataset), t.global_batch_size))
    rows = make_batch(*dataset.rows(indices), indices)
    seq = rows.inputs.shape[1]
    positions = torch.arange(seq, device=device()).expand(t.micro_batch_size, seq)
    autocast = torch.autocast(device().type, dtype=dtype, enabled=dtype != torch.float32)
    seconds = []
    for _ in range(steps):
        started = time.perf_counter()
        for first in range(0, t.global_batch_size, t.micro_batch_size):
            picked = torch.arange(first, first + t.micro_batch_size) % len(indices)
            tokens, targets = rows.inputs[picked].to(device()), rows.targets[picked].to(device())
            with autocast:
                logits = model(tokens, positions)
            loss = F.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=pad_id
            )
            (loss / (t.global_batch_size // t.micro_batch_size)).backward()
        if t.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # waits for the device
        seconds.append(time.perf_counter() - started)
    del model, optimizer
    return seconds


def trainer_run(config_path: Path, shards: Path, run_dir: Path, overrides: list[str]) -> list[dict]:
    """`crucible train` in this process (world size 1); its metrics.jsonl records."""
    from pipeline.cli import INTERRUPTED
    from pipeline.cli import main as cli_main

    sets = [arg for value in overrides for arg in ("--set", value)]
    status = cli_main(["train", "--config", str(config_path), "--data", str(shards), "--output", str(run_dir), *sets])
    if status == INTERRUPTED:  # Ctrl-C stopped this run after its step: the whole bench stops, not just this run
        raise KeyboardInterrupt
    if status != 0:
        raise RuntimeError(f"crucible train exited with status {status}")
    with open(TrainFolder(run_dir).metrics) as handle:
        return [json.loads(line) for line in handle]


def release() -> None:
    torch._dynamo.reset()  # each variant compiles afresh: no recompile limit reached across variants
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_note() -> str:
    """The accelerator's peak memory since the last release(); the CPU keeps no such count."""
    return f"; peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if torch.cuda.is_available() else ""


EAGER = ["parallel.compile=false", "train.precision=bf16", "parallel.activation_checkpointing=none"]
MASKED, FLEX, FP8 = "model.document_masking=true", "parallel.attention=flex", "train.precision=fp8"
# The FP8 loss check: 200 steps of 16 rows each, an eighth of the full batch's device time.
CHECK = ["train.max_steps=200", "train.global_batch_size=16", "train.micro_batch_size=16"]
# The speed paths of the trainer, each a variant (name, overrides), in the order they run after the eager
# bf16 baseline: the runs the aims need come first, so that a time budget (`--budget`) drops the extras.
SUITES = {
    "speed": [
        ("masked-flex", [MASKED, FLEX]),
        ("masked-flex-fp8", [MASKED, FLEX, FP8]),
        ("masked-flex-selective", [MASKED, FLEX, "parallel.activation_checkpointing=selective"]),
        ("check-bf16", [MASKED, FLEX, *CHECK]),
        ("check-fp8", [MASKED, FLEX, FP8, *CHECK]),
        ("masked-sdpa", [MASKED, "parallel.attention=sdpa"]),
        ("causal", ["model.document_masking=false"]),
        ("masked-flex-full", [MASKED, FLEX, "parallel.activation_checkpointing=full"]),
        ("masked-flex-fp8-rowwise", [MASKED, FLEX, FP8, "train.fp8_scaling=rowwise"]),
    ],
}
# Per suite: (variant, reference variant, aim for the tokens/s ratio) and (variant, reference, loss tolerance).
SUITE_AIMS = {
    "speed": [
        ("masked-flex", "masked-sdpa", None),
        ("masked-flex-selective", "masked-flex", 0.9),
        ("masked-flex-full", "masked-flex", None),
        ("masked-flex-fp8", "masked-flex", 1.2),
        ("masked-flex-fp8-rowwise", "masked-flex", 1.2),
    ]
}
SUITE_CHECKS = {
    "speed": [
        ("masked-flex", "masked-sdpa", 0.01),
        ("masked-flex-selective", "masked-flex", 0.01),
        ("check-fp8", "check-bf16", 0.02),
        ("masked-flex-fp8-rowwise", "masked-flex", 0.02),
    ]
}
MFU_AIM = 0.55  # of the datasheet peak, with document masking on


def moving_average(values: list[float], width: int = 10) -> np.ndarray:
    kernel = np.ones(min(width, len(values))) / min(width, len(values))
    return np.convolve(values, kernel, mode="valid")


def loss_gap(losses: list[float], reference: list[float]) -> float:
    """Largest relative gap between two loss curves of the same rows, each smoothed over 10 steps."""
    ours, theirs = moving_average(losses), moving_average(reference)
    return float(np.max(np.abs(ours - theirs) / theirs))


def parse_variants(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    variants = [
        (label, [item for item in extra.split(",") if item])
        for label, _, extra in (spec.partition(":") for spec in args.variant)
    ]
    return [*SUITES.get(args.suite, []), *variants] or [("as-configured", [])]


class Budget:
    """Starts no run that would end past `seconds` from now, judged by the run before it: its start-up
    (building, compiling; later runs find compiled kernels cached) and its step time per token. A run
    stopped from outside loses only itself: `--json-out` holds every run before it."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds, self.started = seconds, time.perf_counter()
        self.startup, self.per_token = 0.0, 0.0

    def record(self, wall: float, step_seconds: list[float], tokens_per_step: int) -> None:
        self.startup = wall - sum(step_seconds)
        self.per_token = statistics.median(step_seconds) / tokens_per_step

    def allows(self, steps: int, tokens_per_step: int) -> bool:
        if self.seconds is None:
            return True
        estimate = self.startup + steps * tokens_per_step * self.per_token
        return time.perf_counter() - self.started + estimate <= self.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--shards", type=Path, required=True, help="packed shards made with the same config's prep")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for every run, plain loop included (repeatable)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME[:KEY=VALUE,...]",
        help="a trainer run with extra overrides (repeatable; default: one run as configured)",
    )
    parser.add_argument("--suite", choices=sorted(SUITES), help="run these variants (with their aims and checks) too")
    parser.add_argument(
        "--check",
        action="append",
        default=[],
        metavar="VARIANT,REFERENCE,TOL",
        help="compare two runs' loss curves: relative gap of 10-step averages <= TOL (repeatable)",
    )
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps per run (default: 8)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default: 3)")
    parser.add_argument("--matmul-size", type=int, default=8192)
    parser.add_argument(
        "--budget",
        type=float,
        metavar="SECONDS",
        help="start no run that would end past this many seconds from the start (default: no limit)",
    )
    parser.add_argument("--json-out", type=Path, help="also write the results JSON here, rewritten after every run")
    args = parser.parse_args()
    quiet_third_party()  # as the CLI does; set before the engine (and megatron with it) is imported
    from training.engine import compute_dtype

    os.environ.setdefault("MASTER_PORT", str(free_port()))
    budget = Budget(args.budget)

    steps = args.warmup + args.steps
    # Training alone: no checkpoints, trackers, validation or task scores (each would also compile its own graph).
    base = [
        *args.overrides,
        f"train.max_steps={steps}",
        "checkpoint.enabled=false",
        "train.loggers=[]",
        "train.eval_batches=0",
        "eval.tasks=[]",
    ]
    config = load_config(args.config, base)
    manifest = read_manifest(args.shards)
    m, t = config.model, config.train
    vocab = padded_vocab(m.vocab_size or manifest.tokenizer.vocab_size, m.vocab_multiple, config.parallel.tp)
    seq = manifest.seq_len
    flops = flops_per_token(m, vocab, seq)
    dense_flops = flops_per_token(m, vocab, seq, attention=False)
    tokens_per_step = t.global_batch_size * seq
    dtype = compute_dtype(t.precision)
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    datasheet = t.peak_tflops * 1e12 if t.peak_tflops else None
    n_params = count_params(m, vocab)

    measured = measure_peak_flops(device(), dtype, n=args.matmul_size)
    print(
        f"[{name}: {args.matmul_size}^3 {str(dtype).removeprefix('torch.')} matmul {measured / 1e12:.1f} TFLOP/s]",
        file=sys.stderr,
        flush=True,
    )
    release()
    plain_seconds = plain_loop(config, args.shards, vocab, manifest.tokenizer.pad_id, steps, dtype)[args.warmup :]
    plain_rate = tokens_per_step / statistics.median(plain_seconds)
    plain_memory = peak_memory_note()
    print(f"[plain loop: {plain_rate:,.0f} tokens/s{plain_memory}]", file=sys.stderr, flush=True)
    release()

    def mfu_note(rate: float) -> str:
        """MFU against both peaks, with and without the attention term."""
        parts = []
        for label, per_token in (("with attention", flops), ("without", dense_flops)):
            achieved = rate * per_token
            sheet = f"{100 * achieved / datasheet:.1f}% of {datasheet / 1e12:.0f} (datasheet), " if datasheet else ""
            parts.append(
                f"{label}: {achieved / 1e12:.1f} TFLOP/s, MFU {sheet}{100 * achieved / measured:.1f}% of the "
                "measured matmul"
            )
        return "; ".join(parts)

    corpus = "configs/" + args.config.name
    plain = Result(
        "plain PyTorch loop",
        corpus,
        len(plain_seconds) * tokens_per_step,
        "tokens/s",
        plain_rate,
        f"{args.matmul_size}^3 matmul, as tokens/s at {flops / 1e9:.2f} GFLOP/token",
        measured / flops,
        None,
        f"{mfu_note(plain_rate)}{plain_memory}",
    )
    extra = {
        "device": name,
        "torch": torch.__version__,
        "params": n_params,
        "flops_per_token": flops,
        "flops_per_token_without_attention": dense_flops,
        "matmul_flops": measured,
        "datasheet_flops": datasheet,
    }
    runs: dict[str, tuple[float, list[dict]]] = {}  # variant -> (tokens/s, metrics records)
    results: list[Result] = []
    skipped: list[str] = []
    failed: list[str] = []

    def save() -> None:
        if args.json_out:
            write_json(
                args.json_out,
                {
                    "results": [r.__dict__ for r in [*results, plain]],
                    "skipped": skipped,
                    "failed": failed,
                    "losses": {label: [r["loss"] for r in records] for label, (_, records) in runs.items()},
                    **extra,
                },
            )

    with tempfile.TemporaryDirectory(prefix="crucible-mfu-bench-") as tmp:
        for label, overrides in [("eager-bf16", EAGER), *parse_variants(args)]:
            run_config = load_config(args.config, [*base, *overrides]).train
            run_tokens = run_config.global_batch_size * seq
            if not budget.allows(run_config.max_steps, run_tokens):
                skipped.append(label)
                print(
                    f"[variant {label}: not run, it would end past the {args.budget:.0f} s budget]",
                    file=sys.stderr,
                    flush=True,
                )
                continue
            started = time.perf_counter()
            try:
                records = trainer_run(args.config, args.shards, Path(tmp) / label, [*base, *overrides])
            except Exception:  # one variant failing (out of memory, say) must not lose the others' figures
                traceback.print_exc()
                print(f"[variant {label}: failed]", file=sys.stderr, flush=True)
                failed.append(label)
                release()
                continue
            timed = [r["step_seconds"] for r in records if r["step"] > args.warmup]
            budget.record(time.perf_counter() - started, [r["step_seconds"] for r in records], run_tokens)
            ours = run_tokens / statistics.median(timed)
            memory = peak_memory_note()
            release()
            runs[label] = ours, records
            eager = runs.get("eager-bf16", (None,))[0]
            versus = f"{ours / eager:.2f}x the eager bf16 run; " if eager and label != "eager-bf16" else ""
            results.append(
                Result(
                    f"crucible train, {label}",
                    corpus,
                    len(timed) * run_tokens,
                    "tokens/s",
                    ours,
                    "plain PyTorch loop (autocast, fused AdamW)",
                    plain_rate,
                    None,
                    f"{versus}{mfu_note(ours)}{memory}; final loss {records[-1]['loss']:.3f}; "
                    f"run {time.perf_counter() - started:.0f}s; overrides {','.join(overrides) or 'none'}",
                )
            )
            print(
                f"[variant {label}: {ours:,.0f} tokens/s, {ours * flops / 1e12:.1f} TFLOP/s]",
                file=sys.stderr,
                flush=True,
            )
            save()
        for label, reference, aim in SUITE_AIMS.get(args.suite, []):
            if label in runs and reference in runs:
                results.append(
                    Result(
                        f"{label} against {reference}",
                        corpus,
                        args.steps * tokens_per_step,
                        "tokens/s",
                        runs[label][0],
                        reference,
                        runs[reference][0],
                        aim,
                    )
                )
    print_table(
        f"MFU on {name}: GPT {n_params / 1e9:.2f}B parameters ({m.d_model}d x {m.n_layers} layers, "
        f"{m.n_heads}/{m.n_kv_heads} heads, ffn {m.ffn_hidden}, vocab {vocab}), seq {seq}, "
        f"global batch {t.global_batch_size} x micro {t.micro_batch_size}, "
        f"{str(dtype).removeprefix('torch.')}; "
        f"median of {args.steps} steps after {args.warmup}; {flops / 1e9:.2f} GFLOP/token with the attention "
        f"term, {dense_flops / 1e9:.2f} without; matmul {measured / 1e12:.0f} TFLOP/s",
        [*results, plain],
    )
    checks = [(a, b, float(tol)) for a, b, tol in (c.split(",") for c in args.check)]
    extra["loss_gaps"] = report_checks([*SUITE_CHECKS.get(args.suite, []), *checks], runs, datasheet, flops)
    if skipped:
        print(f"not run within the {args.budget:.0f} s budget: {', '.join(skipped)}")
    if failed:
        print(f"failed (their errors are above): {', '.join(failed)}")
    print_json("mfu", [*results, plain], **extra, skipped=skipped, failed=failed)
    save()


def report_checks(
    checks: list[tuple[str, str, float]],
    runs: dict[str, tuple[float, list[dict]]],
    datasheet: float | None,
    flops: float,
) -> dict[str, float]:
    """Loss-curve gaps against their tolerances, and the masked runs' MFU against the aim."""
    gaps = {}
    lines = []
    for label, reference, tolerance in checks:
        if label in runs and reference in runs:
            ours, theirs = ([r["loss"] for r in runs[name][1]] for name in (label, reference))
            gaps[f"{label} vs {reference}"] = gap = loss_gap(ours, theirs)
            verdict = "meets" if gap <= tolerance else "MISSES"
            lines.append(
                f"- loss of {label} against {reference} over {len(ours)} steps: largest relative gap of the "
                f"10-step averages {gap:.4f}, tolerance {tolerance:g}: {verdict}"
            )
    if datasheet:
        for label, (rate, _) in runs.items():
            if label.startswith("masked"):
                mfu = rate * flops / datasheet
                lines.append(
                    f"- MFU of {label}: {100 * mfu:.1f}% of the datasheet, aim >= {100 * MFU_AIM:.0f}%: "
                    f"{'meets' if mfu >= MFU_AIM else 'MISSES'}"
                )
    if lines:
        print("\n" + "\n".join(lines))
    return gaps


if __name__ == "__main__":
    main()
