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
from training.data import PackedDataset, make_batch
from training.engine import compute_dtype
from training.metrics import measure_peak_flops
from training.plan import count_params, flops_per_token, padded_vocab

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "gpu_1b.yaml"


def device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def plain_loop(config: CrucibleConfig, shards: Path, vocab: int, pad_id: int, steps: int) -> list[float]:
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
    dtype = compute_dtype(t.precision)
    autocast = torch.autocast(device().type, dtype=dtype, enabled=dtype != torch.float32)
    seconds = []
    for _ in range(steps):
        started = time.perf_counter()
        for first in range(0, t.global_batch_size, t.micro_batch_size):
            picked = torch.arange(first, first + t.micro_batch_size) % len(indices)
            tokens, targets = rows.inputs[picked].to(device()), rows.targets[picked].to(device())
            with autocast:
                logits = model(tokens, positions)
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                   ignore_index=pad_id)
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
    from megatron.core import parallel_state

    from pipeline.cli import main as cli_main

    if parallel_state.model_parallel_is_initialized():  # a previous variant's groups, built anew
        parallel_state.destroy_model_parallel()
    sets = [arg for value in overrides for arg in ("--set", value)]
    status = cli_main(["train", "--config", str(config_path), "--data", str(shards), "--output", str(run_dir), *sets])
    if status != 0:
        raise RuntimeError(f"crucible train exited with status {status}")
    with open(run_dir / "metrics.jsonl") as handle:
        return [json.loads(line) for line in handle]


def release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")


EAGER = ["parallel.compile=false", "train.precision=bf16", "parallel.activation_checkpointing=none"]
MASKED = "model.document_masking=true"
# The speed paths of the trainer, each a variant (name, overrides) run after the eager bf16 baseline.
SUITES = {
    "speed": [
        ("causal", ["model.document_masking=false"]),
        ("masked-sdpa", [MASKED, "parallel.attention=sdpa"]),
        ("masked-flex", [MASKED, "parallel.attention=flex"]),
        ("masked-flex-selective", [MASKED, "parallel.attention=flex", "parallel.activation_checkpointing=selective"]),
        ("masked-flex-full", [MASKED, "parallel.attention=flex", "parallel.activation_checkpointing=full"]),
        ("masked-flex-fp8", [MASKED, "parallel.attention=flex", "train.precision=fp8"]),
        ("masked-flex-fp8-rowwise", [MASKED, "parallel.attention=flex", "train.precision=fp8",
                                     "train.fp8_scaling=rowwise"]),
    ],
}
# Per suite: (variant, reference variant, aim for the tokens/s ratio) and (variant, reference, loss tolerance).
SUITE_AIMS = {"speed": [("masked-flex", "masked-sdpa", None), ("masked-flex-selective", "masked-flex", 0.9),
                        ("masked-flex-full", "masked-flex", None), ("masked-flex-fp8", "masked-flex", 1.2),
                        ("masked-flex-fp8-rowwise", "masked-flex", 1.2)]}
SUITE_CHECKS = {"speed": [("masked-flex", "masked-sdpa", 0.01), ("masked-flex-selective", "masked-flex", 0.01),
                          ("masked-flex-fp8", "masked-flex", 0.02), ("masked-flex-fp8-rowwise", "masked-flex", 0.02)]}
MFU_AIM = 0.55  # of the datasheet peak, with document masking on


def moving_average(values: list[float], width: int = 10) -> np.ndarray:
    kernel = np.ones(min(width, len(values))) / min(width, len(values))
    return np.convolve(values, kernel, mode="valid")


def loss_gap(losses: list[float], reference: list[float]) -> float:
    """Largest relative gap between two loss curves of the same rows, each smoothed over 10 steps."""
    ours, theirs = moving_average(losses), moving_average(reference)
    return float(np.max(np.abs(ours - theirs) / theirs))


def parse_variants(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    variants = [(label, [item for item in extra.split(",") if item])
                for label, _, extra in (spec.partition(":") for spec in args.variant)]
    return [*SUITES.get(args.suite, []), *variants] or [("as-configured", [])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--shards", type=Path, required=True, help="packed shards made with the same config's prep")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every run, plain loop included (repeatable)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME[:KEY=VALUE,...]",
                        help="a trainer run with extra overrides (repeatable; default: one run as configured)")
    parser.add_argument("--suite", choices=sorted(SUITES), help="run these variants (with their aims and checks) too")
    parser.add_argument("--check", action="append", default=[], metavar="VARIANT,REFERENCE,TOL",
                        help="compare two runs' loss curves: relative gap of 10-step averages <= TOL (repeatable)")
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps per run (default: 8)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default: 3)")
    parser.add_argument("--matmul-size", type=int, default=8192)
    parser.add_argument("--json-out", type=Path, help="also write the results JSON line here")
    args = parser.parse_args()
    os.environ.setdefault("MASTER_PORT", str(free_port()))

    steps = args.warmup + args.steps
    base = [*args.overrides, f"train.max_steps={steps}", f"train.eval_interval={steps}", "checkpoint.enabled=false"]
    config = load_config(args.config, base)
    manifest = read_manifest(args.shards)
    m, t = config.model, config.train
    vocab = padded_vocab(m.vocab_size or manifest["tokenizer"]["vocab_size"], m.vocab_multiple, config.parallel.tp)
    seq = manifest["seq_len"]
    flops = flops_per_token(m, vocab, seq)
    dense_flops = flops_per_token(m, vocab, seq, attention=False)
    tokens_per_step = t.global_batch_size * seq
    dtype = compute_dtype(t.precision)
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    datasheet = t.peak_tflops * 1e12 if t.peak_tflops else None

    measured = measure_peak_flops(device(), dtype, n=args.matmul_size)
    print(f"[{name}: {args.matmul_size}^3 {str(dtype).removeprefix('torch.')} matmul {measured / 1e12:.1f} TFLOP/s]",
          file=sys.stderr, flush=True)
    release()
    plain_seconds = plain_loop(config, args.shards, vocab, manifest["tokenizer"]["pad_id"], steps)[args.warmup:]
    plain_rate = tokens_per_step / statistics.median(plain_seconds)
    plain_memory = peak_memory_gib()
    print(f"[plain loop: {plain_rate:,.0f} tokens/s, peak memory {plain_memory:.1f} GiB]", file=sys.stderr, flush=True)
    release()

    def mfu_note(rate: float) -> str:
        """MFU against both peaks, with and without the attention term."""
        parts = []
        for label, per_token in (("with attention", flops), ("without", dense_flops)):
            achieved = rate * per_token
            sheet = f"{100 * achieved / datasheet:.1f}% of {datasheet / 1e12:.0f} (datasheet), " if datasheet else ""
            parts.append(f"{label}: {achieved / 1e12:.1f} TFLOP/s, MFU {sheet}{100 * achieved / measured:.1f}% of the "
                         "measured matmul")
        return "; ".join(parts)

    runs: dict[str, tuple[float, list[dict]]] = {}  # variant -> (tokens/s, metrics records)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="crucible-mfu-bench-") as tmp:
        for label, extra in [("eager-bf16", EAGER), *parse_variants(args)]:
            started = time.perf_counter()
            try:
                records = trainer_run(args.config, args.shards, Path(tmp) / label, [*base, *extra])
            except Exception:  # one variant failing (out of memory, say) must not lose the others' figures
                traceback.print_exc()
                print(f"[variant {label}: failed]", file=sys.stderr, flush=True)
                release()
                continue
            timed = [r["step_seconds"] for r in records if r["step"] > args.warmup]
            ours = tokens_per_step / statistics.median(timed)
            memory = peak_memory_gib()
            release()
            runs[label] = ours, records
            eager = runs.get("eager-bf16", (None,))[0]
            versus = f"{ours / eager:.2f}x the eager bf16 run; " if eager and label != "eager-bf16" else ""
            results.append(Result(
                f"crucible train, {label}", "configs/" + args.config.name, len(timed) * tokens_per_step, "tokens/s", ours,
                "plain PyTorch loop (autocast, fused AdamW)", plain_rate, None,
                f"{versus}{mfu_note(ours)}; peak memory {memory:.1f} GiB; final loss {records[-1]['loss']:.3f}; "
                f"run {time.perf_counter() - started:.0f}s; overrides {','.join(extra) or 'none'}"))
            print(f"[variant {label}: {ours:,.0f} tokens/s, {ours * flops / 1e12:.1f} TFLOP/s]", file=sys.stderr,
                  flush=True)
        for label, reference, aim in SUITE_AIMS.get(args.suite, []):
            if label in runs and reference in runs:
                results.append(Result(f"{label} against {reference}", "configs/" + args.config.name,
                                      args.steps * tokens_per_step, "tokens/s", runs[label][0], reference,
                                      runs[reference][0], aim))
    results.append(Result(
        "plain PyTorch loop", "configs/" + args.config.name, len(plain_seconds) * tokens_per_step, "tokens/s",
        plain_rate, f"{args.matmul_size}^3 matmul, as tokens/s at {flops / 1e9:.2f} GFLOP/token",
        measured / flops, None, f"{mfu_note(plain_rate)}; peak memory {plain_memory:.1f} GiB"))
    n_params = count_params(m, vocab)
    print_table(f"MFU on {name}: GPT {n_params / 1e9:.2f}B parameters ({m.d_model}d x {m.n_layers} layers, "
                f"{m.n_heads}/{m.n_kv_heads} heads, ffn {m.ffn_hidden}, vocab {vocab}), seq {seq}, "
                f"global batch {t.global_batch_size} x micro {t.micro_batch_size}, {str(dtype).removeprefix('torch.')}; "
                f"median of {args.steps} steps after {args.warmup}; {flops / 1e9:.2f} GFLOP/token with the attention "
                f"term, {dense_flops / 1e9:.2f} without; matmul {measured / 1e12:.0f} TFLOP/s", results)
    checks = [(a, b, float(tol)) for a, b, tol in (c.split(",") for c in args.check)]
    gaps = report_checks([*SUITE_CHECKS.get(args.suite, []), *checks], runs, datasheet, flops)
    extra = {"device": name, "torch": torch.__version__, "params": n_params, "flops_per_token": flops,
             "flops_per_token_without_attention": dense_flops, "matmul_flops": measured, "datasheet_flops": datasheet,
             "loss_gaps": gaps}
    print_json("mfu", results, **extra)
    if args.json_out:
        args.json_out.write_text(json.dumps({"results": [r.__dict__ for r in results], **extra}) + "\n")


def report_checks(checks: list[tuple[str, str, float]], runs: dict[str, tuple[float, list[dict]]],
                  datasheet: float | None, flops: float) -> dict[str, float]:
    """Loss-curve gaps against their tolerances, and the masked runs' MFU against the aim."""
    gaps = {}
    lines = []
    for label, reference, tolerance in checks:
        if label in runs and reference in runs:
            ours, theirs = ([r["loss"] for r in runs[name][1]] for name in (label, reference))
            gaps[f"{label} vs {reference}"] = gap = loss_gap(ours, theirs)
            lines.append(f"- loss of {label} against {reference} over {len(ours)} steps: largest relative gap of the "
                         f"10-step averages {gap:.4f}, tolerance {tolerance:g}: {'meets' if gap <= tolerance else 'MISSES'}")
    if datasheet:
        for label, (rate, _) in runs.items():
            if label.startswith("masked"):
                mfu = rate * flops / datasheet
                lines.append(f"- MFU of {label}: {100 * mfu:.1f}% of the datasheet, aim >= {100 * MFU_AIM:.0f}%: "
                             f"{'meets' if mfu >= MFU_AIM else 'MISSES'}")
    if lines:
        print("\n" + "\n".join(lines))
    return gaps


if __name__ == "__main__":
    main()
