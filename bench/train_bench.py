"""Trainer throughput: Crucible's Trainer beside a plain PyTorch loop of the same GPT, and MFU.

Both loops train one 384-wide, 6-layer GPT (fp32, one process, layout TP=PP=DP=1) on the same
packed shards of english.jsonl, in this process, taking turns step by step so that load from
other programs falls on both alike. Crucible's side is `crucible train` itself: every step of
`fit()` (DeepSpeed engine, megatron-core layers, the shard loader, hooks, the metrics record),
timed by a user hook. The plain loop is nn.Linear layers, SDPA with is_causal, F.cross_entropy,
gradient clipping and torch.optim.AdamW, fed from rows read up front. MFU is taken against this
machine's fp32 GEMM rate, measured between the steps, with the trainer's own FLOPs per token
(training/metrics.py). Only the ratio is compared with the team's aim; nothing is asserted.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import math
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from common import DATA_HELP, Result, corpus_file, data_dir, print_json, print_table, read_jsonl, write_jsonl
from torch import nn

from data_prep.shards import read_manifest
from launch.torchrun import free_port
from pipeline.config import load_config
from training.config import ModelConfig, TrainConfig
from training.data import PackedDataset, make_batch
from training.hooks import Hook
from training.sizing import flops_per_token

if TYPE_CHECKING:
    from training.engine import Trainer

SHAPE = {"d_model": 384, "n_layers": 6, "n_heads": 6, "n_kv_heads": 6, "ffn_hidden": 1024}
SEQ_LEN, MICRO_BATCH, GLOBAL_BATCH, VOCAB = 256, 8, 8, 8192
CORPUS = "english.jsonl"
AIM = 0.9


# ---- the baseline: the same GPT in plain PyTorch ----------------------------------------------


class PlainRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class PlainBlock(nn.Module):
    """Pre-norm block: grouped-query attention with RoPE, then a SwiGLU MLP."""

    def __init__(self, d: int, heads: int, kv_heads: int, ffn: int, eps: float) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, d // heads
        self.attn_norm, self.mlp_norm = PlainRMSNorm(d, eps), PlainRMSNorm(d, eps)
        self.q = nn.Linear(d, d, bias=False)
        self.k = nn.Linear(d, kv_heads * self.head_dim, bias=False)
        self.v = nn.Linear(d, kv_heads * self.head_dim, bias=False)
        self.o = nn.Linear(d, d, bias=False)
        self.gate = nn.Linear(d, ffn, bias=False)
        self.up = nn.Linear(d, ffn, bias=False)
        self.down = nn.Linear(ffn, d, bias=False)

    @staticmethod
    def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        h = self.attn_norm(x)
        q = self.rope(self.q(h).view(batch, seq, self.heads, self.head_dim), cos, sin).transpose(1, 2)
        k = self.rope(self.k(h).view(batch, seq, self.kv_heads, self.head_dim), cos, sin).transpose(1, 2)
        v = self.v(h).view(batch, seq, self.kv_heads, self.head_dim).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.heads != self.kv_heads)
        x = x + self.o(y.transpose(1, 2).reshape(batch, seq, -1))
        h = self.mlp_norm(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class PlainGPT(nn.Module):
    """Token embedding, blocks, final norm and an LM head tied to the embedding."""

    def __init__(
        self, vocab: int, d: int, n_layers: int, heads: int, kv_heads: int, ffn: int, eps: float, theta: float
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(PlainBlock(d, heads, kv_heads, ffn, eps) for _ in range(n_layers))
        self.final_norm = PlainRMSNorm(d, eps)
        self.inv_freq = 1.0 / theta ** (torch.arange(0, d // heads, 2).float() / (d // heads))
        with torch.no_grad():  # Crucible's scheme (training/init.py), so both start from the same loss
            for name, param in self.named_parameters():
                if param.ndim == 2:
                    scaled = name.endswith(("o.weight", "down.weight"))
                    param.normal_(0.0, 0.02 / math.sqrt(2 * n_layers) if scaled else 0.02)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        angles = positions.float()[..., None] * self.inv_freq
        cos, sin = angles.cos()[:, :, None, :], angles.sin()[:, :, None, :]
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x, cos, sin)
        return F.linear(self.final_norm(x), self.embed.weight)


def plain_from(crucible: nn.Module, cfg: ModelConfig) -> PlainGPT:
    """A PlainGPT holding a copy of the Crucible model's weights (the same function, checked below)."""
    vocab = crucible.embedding.embed.weight.shape[0]
    plain = PlainGPT(
        vocab, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.ffn_hidden, cfg.norm_eps, cfg.rope_theta
    )
    with torch.no_grad():
        plain.embed.weight.copy_(crucible.embedding.embed.weight)
        plain.final_norm.weight.copy_(crucible.final_norm.norm.weight)
        for ours, theirs in zip(plain.blocks, crucible.blocks):
            ours.attn_norm.weight.copy_(theirs.attn_norm.weight)
            ours.mlp_norm.weight.copy_(theirs.mlp_norm.weight)
            for name in ("q", "k", "v", "o"):
                getattr(ours, name).weight.copy_(getattr(theirs.attn, name).weight)
            for name in ("gate", "up", "down"):
                getattr(ours, name).weight.copy_(getattr(theirs.mlp, name).weight)
    return plain


@dataclass
class Rows:
    """Every train row of the shards as tensors, read once up front (no per-step host work)."""

    tokens: torch.Tensor
    targets: torch.Tensor
    segments: torch.Tensor

    @classmethod
    def read(cls, shards: Path) -> Rows:
        dataset = PackedDataset(shards, "train")
        indices = np.arange(len(dataset))
        batch = make_batch(*dataset.rows(indices), indices)
        return cls(batch.inputs, batch.targets, batch.segments)


class PlainLoop:
    """The minimal training loop: random rows, forward, cross entropy, backward, clip, AdamW."""

    def __init__(self, model: PlainGPT, rows: Rows, pad_id: int, train_cfg: TrainConfig) -> None:
        self.model, self.rows, self.pad_id = model, rows, pad_id
        self.grad_clip = train_cfg.grad_clip
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=train_cfg.lr, betas=train_cfg.betas, weight_decay=train_cfg.weight_decay
        )
        warmup = max(1, train_cfg.warmup_steps)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: min(1.0, (step + 1) / warmup))
        self.generator = torch.Generator().manual_seed(0)
        self.positions = torch.arange(SEQ_LEN).expand(MICRO_BATCH, SEQ_LEN)

    def step(self) -> float:
        picked = torch.randint(len(self.rows.tokens), (MICRO_BATCH,), generator=self.generator)
        tokens, targets = self.rows.tokens[picked], self.rows.targets[picked]
        logits = self.model(tokens, self.positions)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=self.pad_id)
        loss.backward()
        if self.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()


# ---- Crucible's side: the real CLI, timed from inside by a hook --------------------------------


class StepClock(Hook):
    """A user hook that times `fit()`'s steps from inside and runs the baselines between them.

    At the end of every step it stamps the time, runs each of `alongside` once (a plain-loop
    step, a GEMM window, ...), and stamps again: Crucible's step is the span from that second stamp to the next
    step's first one, which covers everything `fit()` does per step (the built-in hooks, the
    record and log, the loader, the engine). Baseline and Crucible steps alternate, so load from
    other programs falls on both alike. With `profile_after` set, the two steps after that one
    run under cProfile and torch.profiler.
    """

    alongside: dict[str, Callable[[], object]] = {}  # set by the bench before the run
    last: StepClock | None = None

    def __init__(self, profile_after: int = 0) -> None:
        self.crucible: list[float] = []
        self.baselines: dict[str, list[float]] = {name: [] for name in self.alongside}
        self.trainer: Trainer | None = None
        self.profile_after = profile_after
        self.profiler = None
        self.resumed: float | None = None
        StepClock.last = self

    def on_step_end(self, trainer: Trainer, record: dict) -> None:
        ended = time.perf_counter()
        if self.resumed is not None:
            self.crucible.append(ended - self.resumed)
        self.trainer = trainer
        offset = record["step"] - self.profile_after if self.profile_after else -1
        self._stop_profiler(offset, record["step"])
        for name, step in self.alongside.items():
            started = time.perf_counter()
            step()
            self.baselines[name].append(time.perf_counter() - started)
        self._start_profiler(offset)
        self.resumed = time.perf_counter()

    def _start_profiler(self, offset: int) -> None:
        if offset == 0:
            self.profiler = cProfile.Profile()
            self.profiler.enable()
        elif offset == 1:
            self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self.profiler.__enter__()

    def _stop_profiler(self, offset: int, step: int) -> None:
        if offset == 1:
            self.profiler.disable()
            out = io.StringIO()
            pstats.Stats(self.profiler, stream=out).sort_stats("tottime").print_stats(25)
            print(f"\n--- cProfile: Crucible step {step} ---\n{out.getvalue()}")
        elif offset == 2:
            self.profiler.__exit__(None, None, None)
            print(f"\n--- torch.profiler: Crucible step {step} ---")
            print(self.profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def make_shards(data: Path, work: Path) -> Path:
    """Packed shards (vocab 8192, seq_len 256) of the English corpus, made by `run_prep`."""
    from pipeline.prep import run_prep

    records = [{"id": r["id"], "text": r["text"]} for r in read_jsonl(corpus_file(data, CORPUS))]
    corpus = write_jsonl(work / "corpus" / CORPUS, records)
    config = load_config(
        None,
        [
            "prep.stages=[normalize, tokenize, pack]",
            f"prep.tokenizer.vocab_size={VOCAB}",
            f"prep.pack.seq_len={SEQ_LEN}",
            "prep.pack.val_fraction=0.02",
        ],
    )
    config.prep.inputs = [corpus]
    run_prep(config.prep, work / "prep", show_progress=False)
    return work / "prep" / "shards"


def train_overrides(document_masking: bool, max_steps: int, extra: list[str]) -> list[str]:
    """The benchmark's model and batch, no evaluation or checkpoint until the final step, then
    the user's own `--set`s."""
    sizes = [f"model.{key}={value}" for key, value in SHAPE.items()]
    return [
        *sizes,
        f"model.document_masking={str(document_masking).lower()}",
        f"train.seq_len={SEQ_LEN}",
        f"train.micro_batch_size={MICRO_BATCH}",
        f"train.global_batch_size={GLOBAL_BATCH}",
        "train.precision=fp32",
        f"train.max_steps={max_steps}",
        f"train.eval_interval={max_steps}",
        "checkpoint.interval=0",
        *extra,
    ]


def run_crucible(
    shards: Path, run_dir: Path, overrides: list[str], profile_after: int, alongside: dict[str, Callable[[], object]]
) -> StepClock:
    """`crucible train` in this process (world size 1) with a StepClock hook; returns the clock."""
    from pipeline.cli import main as cli_main

    StepClock.alongside, StepClock.last = alongside, None
    hook = f'hooks=[{{target: "{StepClock.__module__}:StepClock", args: {{profile_after: {profile_after}}}}}]'
    sets = [arg for value in [*overrides, hook] for arg in ("--set", value)]
    status = cli_main(["train", "--data", str(shards), "--output", str(run_dir), *sets])
    if status != 0 or StepClock.last is None:
        raise SystemExit(f"crucible train failed with status {status}")
    return StepClock.last


@torch.no_grad()
def max_logit_gap(crucible: nn.Module, plain: PlainGPT, rows: Rows) -> float:
    """Largest |logit difference| of the two models on one batch: the baseline is the same function."""
    tokens = rows.tokens[:MICRO_BATCH]
    positions = torch.arange(SEQ_LEN).expand(MICRO_BATCH, SEQ_LEN)
    ours = crucible(tokens, positions, torch.zeros_like(tokens))  # one document: the mask is plain causal
    return float((ours - plain(tokens, positions)).abs().max())


class Gemm:
    """fp32 GEMM rate: an n x n matmul repeated for `seconds`; one call is one window (FLOP/s)."""

    def __init__(self, n: int = 2048, seconds: float = 0.3) -> None:
        self.a, self.b, self.n, self.seconds = torch.randn(n, n), torch.randn(n, n), n, seconds
        self.rates: list[float] = []
        torch.matmul(self.a, self.b)

    def window(self) -> None:
        runs, started = 0, time.perf_counter()
        while time.perf_counter() - started < self.seconds:
            torch.matmul(self.a, self.b)
            runs += 1
        self.rates.append(2.0 * self.n**3 * runs / (time.perf_counter() - started))


class AttentionKernel:
    """SDPA forward + backward at the model's shape, with Crucible's document mask and with
    is_causal, one after the other per call: does the mask push SDPA onto a slower path?"""

    def __init__(self, rows: Rows, heads: int, head_dim: int) -> None:
        from training.model import attention_mask

        shape = (MICRO_BATCH, heads, SEQ_LEN, head_dim)
        self.q, self.k, self.v = (torch.randn(shape, requires_grad=True) for _ in range(3))
        self.mask = attention_mask(rows.segments[:MICRO_BATCH])
        self.documents = float(rows.segments[:MICRO_BATCH, -1].float().mean())
        self.seconds: dict[str, list[float]] = {"mask": [], "causal": []}

    def _run(self, name: str, **kwargs: object) -> None:
        started = time.perf_counter()
        F.scaled_dot_product_attention(self.q, self.k, self.v, **kwargs).sum().backward()
        self.seconds[name].append(time.perf_counter() - started)

    def pair(self) -> None:
        """Both variants, in turn first, so neither always runs on a cache the other warmed."""
        first_mask = len(self.seconds["mask"]) % 2 == 0
        for name in ("mask", "causal") if first_mask else ("causal", "mask"):
            self._run(name, **({"attn_mask": self.mask} if name == "mask" else {"is_causal": True}))


# ---- the benchmark ---------------------------------------------------------------------------


@dataclass
class Setting:
    """One document-masking setting: per-step seconds of both loops, and what the run left."""

    masking: bool
    crucible: list[float]
    plain: list[float]
    gemm: list[float]
    trainer: Trainer
    logit_gap: float


def measure(
    shards: Path,
    work: Path,
    plain: PlainLoop,
    alongside: dict[str, Callable[[], object]],
    masking: bool,
    args: argparse.Namespace,
) -> Setting:
    """One `crucible train` run with the plain loop (and the extras) alongside, step by step."""
    from training.generate import single_process_groups
    from training.parallel import shutdown_distributed

    gemm = Gemm()
    alongside = {"plain": plain.step, "gemm": gemm.window, **alongside}
    profile_after = args.warmup + args.steps if args.profile else 0
    max_steps = args.warmup + args.steps + (2 if args.profile else 0)
    clock = run_crucible(
        shards,
        work / f"run-masking-{masking}",
        train_overrides(masking, max_steps, args.overrides),
        profile_after,
        alongside,
    )
    # clock.crucible[i] is step i + 2 (step 1 has no start); the alongside runs follow steps 1, 2, ...
    crucible = clock.crucible[args.warmup - 1 : args.warmup - 1 + args.steps]
    timed = slice(args.warmup, args.warmup + args.steps)
    module = clock.trainer.engine.module
    single_process_groups()  # the trainer tore its groups down at its end; its layers look them up when called
    try:
        gap = max_logit_gap(module, plain_from(module, clock.trainer.config.model), plain.rows)
    finally:
        shutdown_distributed()  # as the trainer left them, for the next run
    return Setting(masking, crucible, clock.baselines["plain"][timed], gemm.rates[timed], clock.trainer, gap)


def report(settings: list[Setting], kernel: AttentionKernel, flops: float, args: argparse.Namespace) -> list[Result]:
    """Rates from each loop's fastest step, MFU against the fastest GEMM window: on a shared
    machine other programs only ever add time, so the least disturbed figure is the closest to
    the machine's own (as everywhere in bench/). Medians and the median of step-by-step ratios
    (steps run back to back see the same load) are noted beside."""
    tokens_per_step, units = GLOBAL_BATCH * SEQ_LEN, args.steps * GLOBAL_BATCH * SEQ_LEN
    gemm = [g for s in settings for g in s.gemm]
    peak = max(gemm)
    results, mfus = [], []
    for s in settings:
        label = "on" if s.masking else "off"
        ours, base = tokens_per_step / min(s.crucible), tokens_per_step / min(s.plain)
        medians = statistics.median(s.crucible), statistics.median(s.plain)
        paired = statistics.median(p / c for p, c in zip(s.plain, s.crucible))
        results.append(
            Result(
                f"Crucible fit() step, document masking {label}",
                CORPUS,
                units,
                "tokens/s",
                ours,
                "plain PyTorch loop (is_causal)",
                base,
                AIM,
                f"median steps {tokens_per_step / medians[0]:,.0f} vs {tokens_per_step / medians[1]:,.0f} tokens/s; "
                f"median of step-by-step ratios {paired:.2f}x; same function: max |logit gap| {s.logit_gap:.1e}",
            )
        )
        mfus.append(
            Result(
                f"MFU, document masking {label}",
                CORPUS,
                units,
                "%",
                100 * ours * flops / peak,
                "plain PyTorch loop (is_causal)",
                100 * base * flops / peak,
                None,
                f"{flops / 1e6:.1f} MFLOP/token (training.sizing.flops_per_token) against the GEMM peak below",
            )
        )
    mask, causal = (min(kernel.seconds[k]) for k in ("mask", "causal"))
    results.append(
        Result(
            "SDPA fwd+bwd with Crucible's document mask",
            CORPUS,
            len(kernel.seconds["mask"]),
            "calls/s",
            1 / mask,
            "SDPA fwd+bwd, is_causal",
            1 / causal,
            None,
            f"q, k, v {list(kernel.q.shape)}, {kernel.documents:.1f} documents per row; fastest call "
            f"{1e3 * mask:.1f} vs {1e3 * causal:.1f} ms",
        )
    )
    results.append(
        Result(
            f"fp32 GEMM 2048x2048, {args.threads} threads",
            "-",
            len(gemm),
            "GFLOP/s",
            peak / 1e9,
            "the trainer's measure_peak_flops (its MFU log)",
            settings[0].trainer.peak_flops / 1e9,
            None,
            f"fastest of {len(gemm)} windows of 0.3 s between the steps (median "
            f"{statistics.median(gemm) / 1e9:.0f}); the trainer measures once at start-up",
        )
    )
    return results + mfus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help=f"{DATA_HELP}; it must hold {CORPUS}")
    parser.add_argument("--steps", type=int, default=10, help="timed steps of each loop and setting (default: 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first, at least 1 (default: 2)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for every measurement (default: 2)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a trainer config override, as `crucible train --set` takes it, e.g. parallel.zero_stage=2 (repeatable)",
    )
    parser.add_argument(
        "--shards",
        type=Path,
        help="reuse packed shards (vocab 8192, seq_len 256) instead of making them from the corpus",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile two more Crucible steps after the timed ones (cProfile, torch.profiler)",
    )
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    from training.sizing import padded_vocab

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="crucible-train-bench-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        shards = args.shards or make_shards(data_dir(args.data), work)
        print(f"[shards: {time.perf_counter() - started:.0f}s]", file=sys.stderr, flush=True)
        manifest = read_manifest(shards)
        config = load_config(None, train_overrides(True, 1, args.overrides))
        m = config.model
        vocab = padded_vocab(m.vocab_size or manifest.tokenizer.vocab_size, m.vocab_multiple, 1)
        flops = flops_per_token(m, vocab, SEQ_LEN)
        rows = Rows.read(shards)
        model = PlainGPT(vocab, m.d_model, m.n_layers, m.n_heads, m.n_kv_heads, m.ffn_hidden, m.norm_eps, m.rope_theta)
        plain = PlainLoop(model, rows, manifest.tokenizer.pad_id, config.train)
        kernel = AttentionKernel(rows, m.n_heads, m.head_dim)
        settings = []
        for masking in (True, False):
            started = time.perf_counter()
            settings.append(measure(shards, work, plain, {"sdpa": kernel.pair} if masking else {}, masking, args))
            print(f"[document masking {masking}: {time.perf_counter() - started:.0f}s]", file=sys.stderr, flush=True)
    n_params = sum(p.numel() for p in model.parameters())
    sets = "".join(f", {value}" for value in args.overrides)
    results = report(settings, kernel, flops, args)
    print_table(
        f"Trainer throughput: GPT {n_params / 1e6:.1f}M parameters ({m.d_model}d x {m.n_layers} layers, "
        f"tied head), seq {SEQ_LEN}, batch {GLOBAL_BATCH}, fp32, layout (1,1,1), "
        f"ZeRO-{config.parallel.zero_stage}{sets}; "
        f"fastest of {args.steps} steps after {args.warmup} warm-up, the two loops taking turns; "
        f"{args.threads} threads; {flops / 1e6:.1f} MFLOP/token; load average {load_before:.1f} -> "
        f"{os.getloadavg()[0]:.1f}",
        results,
    )
    print_json(
        "train",
        results,
        steps=args.steps,
        warmup=args.warmup,
        threads=args.threads,
        overrides=args.overrides,
        flops_per_token=flops,
        params=n_params,
        load_average=[load_before, os.getloadavg()[0]],
    )


if __name__ == "__main__":
    main()
