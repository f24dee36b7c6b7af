"""The run report: `<run>/report.html`, one self-contained page, and `report.md`, its text twin.

It reads only what the run already wrote (prep's stats.json, the trainer's metrics.jsonl and
events.jsonl, the checkpoints, the sample generations) plus the config and wall times the `run`
verb hands it, so it can be rebuilt at any time. Plots are embedded in the page as PNG data,
so the one HTML file can be mailed or archived alone.
"""

from __future__ import annotations

import base64
import html
import io
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
import yaml

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pipeline.ground.atomic import write_text
from pipeline.ground.markers import read_jsonl  # noqa: E402
from pipeline.ground.layout import RunFolder, TrainFolder
from pipeline.prep_stats import PrepStats, read_prep_stats
from pipeline.summary import changed, overlap_line
from training.metric_names import (
    EVAL_SECONDS,
    VAL_LOSS,
    has_mixture,
    mix_target,
    mix_tokens,
    mixture_sources,
    source_val_loss,
    task_scores,
)

if TYPE_CHECKING:
    from matplotlib.typing import ColorType

BLUE, RED, GREEN, GREY, ORANGE, PURPLE = "#2e86de", "#ee5253", "#10ac84", "#8395a7", "#ff9f43", "#5f27cd"
EVENT_COLOURS = {"rollback": ORANGE, "resume": GREEN, "stop": RED, "anomaly_ignored": PURPLE}


@dataclass
class Figure:
    name: str
    title: str
    png: bytes


@dataclass
class Page:
    """The report's sections as (heading, html, markdown) blocks, rendered once into both files."""

    title: str
    blocks: list[tuple[str, str]] = field(default_factory=list)  # (html, markdown)
    figures: list[Figure] = field(default_factory=list)

    def heading(self, text: str) -> None:
        self.blocks.append((f"<h2>{html.escape(text)}</h2>", f"## {text}"))

    def paragraph(self, text: str) -> None:
        self.blocks.append((f"<p>{html.escape(text)}</p>", text))

    def table(self, headers: list[str], rows: list[list[Any]]) -> None:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
        markdown = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        markdown += [
            "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |" for row in rows
        ]
        self.blocks.append((f"<table><tr>{head}</tr>{body}</table>", "\n".join(markdown)))

    def figure(self, fig: Any, name: str, title: str) -> None:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        plt.close(fig)
        png = buffer.getvalue()
        self.figures.append(Figure(name, title, png))
        data = base64.b64encode(png).decode()
        self.blocks.append(
            (
                f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(title)}</figcaption></figure>",
                f"![{title}]({name})",
            )
        )

    def details(self, summary: str, text: str) -> None:
        self.blocks.append(
            (
                f"<details><summary>{html.escape(summary)}</summary><pre>{html.escape(text)}</pre></details>",
                f"<details><summary>{summary}</summary>\n\n```\n{text}```\n</details>",
            )
        )

    def html(self) -> str:
        style = (
            "body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;color:#222}"
            "table{border-collapse:collapse;margin:.8em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
            "text-align:left;vertical-align:top}th{background:#f1f2f6}img{max-width:100%}"
            "figure{margin:1em 0}figcaption{color:#666;font-size:90%}pre{background:#f8f8f8;padding:1em;"
            "overflow-x:auto}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}"
        )
        body = "".join(block for block, _ in self.blocks)
        return (
            f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(self.title)}</h1>{body}</body></html>\n"
        )

    def markdown(self) -> str:
        return f"# {self.title}\n\n" + "\n\n".join(md for _, md in self.blocks) + "\n"


def _seconds(value: float) -> str:
    minutes, seconds = divmod(round(value), 60)
    return f"{minutes} min {seconds:02d} s" if minutes else f"{value:.1f} s"


def hardware() -> str:
    """What trained: the GPU's name, else the CPU's model and core count."""
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        model = names[0] if names else model
    return f"CPU: {model}, {os.cpu_count()} cores"


def unigram_entropy(shards: Path) -> float:
    """Entropy (nats) of the token frequencies of the training split: the loss of a model that
    ignores context. A trained model must get well below it."""
    import numpy as np

    from data_prep.shards import read_manifest
    from training.data import PackedDataset

    dataset = PackedDataset(shards, "train", verify=False)
    counts = np.zeros(read_manifest(shards).tokenizer.vocab_size, dtype=np.int64)
    for index in range(len(dataset.paths)):
        for tokens in dataset.shard(index).tokens:
            counts += np.bincount(tokens.to_numpy(), minlength=len(counts))[: len(counts)]
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def learning_line(metrics: list[dict[str, Any]], entropy: float | None) -> str:
    """The last validation loss beside the unigram baseline, said with the samples: how far below
    word salad (the token frequencies alone) the model that wrote them is."""
    val = [m for m in metrics if VAL_LOSS in m and "anomaly" not in m]
    if not val or entropy is None:
        return ""
    last = val[-1]
    return (
        f"validation loss {last[VAL_LOSS]:.2f} nats per token at step {last['step']}; unigram baseline "
        f"{entropy:.2f} (the token frequencies alone, no context)"
    )


# ---- sections ---------------------------------------------------------------------------------


def _context(
    page: Page,
    run_dir: Path,
    config: Any,
    stats: PrepStats,
    metrics: list[dict[str, Any]],
    timings: dict[str, float],
) -> None:
    from training.sizing import count_params, padded_vocab

    page.heading("Run")
    rows = [
        ["run folder", str(run_dir)],
        ["report written", time.strftime("%Y-%m-%d %H:%M:%S %Z")],
        ["hardware", hardware()],
    ]
    if config is not None:
        vocab = (stats.tokens or {}).get("vocab_size") or config.model.vocab_size or config.prep.tokenizer.vocab_size
        params = count_params(config.model, padded_vocab(vocab, config.model.vocab_multiple, config.parallel.tp))
        p, nproc = config.parallel, config.launch.nproc_per_node * config.launch.nnodes
        rows += [
            [
                "model",
                f"{params / 1e6:,.1f}M parameters: d_model {config.model.d_model}, {config.model.n_layers} "
                f"layers, {config.model.n_heads} heads ({config.model.n_kv_heads} KV), vocabulary {vocab:,}",
            ],
            [
                "layout",
                f"{nproc} process(es): TP {p.tp} x PP {p.pp} x DP {max(1, nproc // (p.tp * p.pp))}, "
                f"ZeRO-{p.zero_stage}",
            ],
            [
                "batch",
                f"{config.train.global_batch_size} sequences of {config.prep.pack.seq_len} tokens "
                f"(micro-batch {config.train.micro_batch_size}), {config.train.max_steps} steps",
            ],
        ]
    rows += [[f"wall time: {name}", _seconds(seconds)] for name, seconds in timings.items()]
    if metrics and mfu_withheld(metrics) is None:
        rows.append(["MFU measured against", f"{metrics[-1]['peak_tflops']:g} TFLOP/s peak"])
    page.table(["", ""], rows)
    if config is not None:
        page.details("config (as run)", yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))


def _data(page: Page, stats: PrepStats) -> None:
    stages = stats.stages
    page.heading("Data")
    names = [s.name for s in stages]
    removed = [s.removed() for s in stages]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6))
    left.plot(["input", *names], [stats.read, *(s.docs_out for s in stages)], "o-", color=BLUE)
    left.set_ylabel("documents left")
    left.set_title("documents after each stage")
    left.tick_params(axis="x", rotation=30)
    bars = right.barh(names[::-1], removed[::-1], color=RED)
    right.bar_label(
        bars,
        labels=[f"{n:,} ({100 * n / max(1, s.docs_in):.1f}%)" for n, s in zip(removed[::-1], stages[::-1])],
        padding=3,
        fontsize=8,
    )
    right.set_xlabel("documents removed (dropped + quarantined)")
    right.set_title("removed per stage (share of its input)")
    right.set_xlim(0, max(removed + [1]) * 1.35)
    fig.tight_layout()
    page.figure(fig, "funnel.png", "data funnel")
    page.table(
        ["stage", "docs in", "docs out", "dropped", "quarantined", "changed", "seconds"],
        [
            [
                s.name,
                f"{s.docs_in:,}",
                f"{s.docs_out:,}",
                ", ".join(f"{r} {n:,}" for r, n in s.dropped.items()) or "0",
                ", ".join(f"{r} {n:,}" for r, n in s.quarantined.items()) or "0",
                changed(s),
                s.seconds,
            ]
            for s in stages
        ],
    )
    for stage in stages:
        if stage.tallied("languages"):
            page.paragraph("Languages kept: " + ", ".join(f"{k} {v:,}" for k, v in stage.tallied("languages").items()))
        if stage.tallied("contamination"):
            page.paragraph(
                "Contaminated documents per eval set: "
                + ", ".join(f"{k} {v:,}" for k, v in stage.tallied("contamination").items())
            )
    tokens = stats.tokens or {}
    if tokens:
        page.table(
            ["split", "documents", "tokens", "sequences", "padding", "remainder"],
            [
                [split]
                + [
                    f"{tokens.get(f'{split}_{k}', 0):,}"
                    for k in ("documents", "tokens", "sequences", "padding", "remainder")
                ]
                for split in ("train", "val")
            ],
        )
    if stats.split_overlap:
        page.paragraph(overlap_line(stats.split_overlap))
    if stats.sources:
        keys = sorted({k for counts in stats.sources.values() for k in counts})
        page.table(
            ["source", *keys],
            [[name, *(f"{counts.get(k, 0):,}" for k in keys)] for name, counts in stats.sources.items()],
        )
        per_stage = [(stage.name, stage.sources) for stage in stages if stage.sources]
        if per_stage:
            page.paragraph("Documents left after each stage, per source:")
            page.table(
                ["source", "input", *(name for name, _ in per_stage)],
                [
                    [
                        source,
                        f"{per_stage[0][1][source].docs_in:,}",
                        *(f"{rows[source].docs_out if source in rows else 0:,}" for _, rows in per_stage),
                    ]
                    for source in stats.sources
                ],
            )


def mfu_withheld(metrics: list[dict[str, Any]]) -> str | None:
    """None where every step logged an MFU of at most 100%; else why the report shows none (no peak,
    as on a CPU, or one that read low: logs written before null MFUs hold figures above 100%)."""
    from training.metrics import mfu_withheld as reason

    if all(m.get("mfu") is not None and m["mfu"] <= 1 for m in metrics):
        return None
    return reason(metrics[-1].get("peak_tflops"))


def _training(page: Page, metrics: list[dict[str, Any]], events: list[dict[str, Any]], entropy: float | None) -> None:
    kept = [m for m in metrics if "loss" in m and "anomaly" not in m]
    if not kept:
        return
    page.heading("Training")
    steps = [m["step"] for m in kept]
    fig, axes = plt.subplots(2, 2, figsize=(11, 6.4))
    loss_ax, lr_ax, gn_ax, tps_ax = axes.flat
    if entropy is not None:
        loss_ax.axhline(entropy, color=GREY, linestyle=":", label="unigram entropy of the tokens")
    loss_ax.plot(steps, [m["loss"] for m in kept], label="train loss", color=BLUE)
    val = [m for m in metrics if VAL_LOSS in m]
    loss_ax.plot([m["step"] for m in val], [m[VAL_LOSS] for m in val], "o-", label="validation loss", color=RED)
    for event in events:
        if event["event"] in EVENT_COLOURS:
            loss_ax.axvline(event["step"], color=EVENT_COLOURS[event["event"]], linestyle="--", linewidth=1)
    loss_ax.set(xlabel="step", ylabel="loss (nats/token)", title="loss (dashed: resumes, rollbacks, stops)")
    loss_ax.legend(fontsize=8)
    lr_ax.plot(steps, [m["lr"] for m in kept], color=GREEN)
    lr_ax.set(xlabel="step", ylabel="learning rate", title="learning rate")
    norms = [(m["step"], m["grad_norm"]) for m in kept if m.get("grad_norm") is not None]
    if norms:
        gn_ax.plot(*zip(*norms), color=PURPLE)
    gn_ax.set(xlabel="step", ylabel="gradient norm", title="gradient norm (before clipping)")
    withheld = mfu_withheld(kept)
    tps_ax.plot(steps, [m["tokens_per_s"] for m in kept], color=BLUE)
    tps_ax.set(
        xlabel="step",
        ylabel="tokens/s",
        title="throughput" + (" and MFU" if withheld is None else "") + " (valid tokens)",
    )
    if withheld is None:
        mfu_ax = tps_ax.twinx()
        mfu_ax.plot(steps, [100 * m["mfu"] for m in kept], color=ORANGE)
        mfu_ax.set_ylabel("MFU (%)", color=ORANGE)
    fig.tight_layout()
    page.figure(fig, "curves.png", "loss, learning rate, gradient norm, throughput")
    timed = kept[1:] or kept
    tps = [m["tokens_per_s"] for m in timed]
    last = kept[-1]
    page.table(
        ["final step", "final loss", "final validation loss", "unigram entropy", "tokens"],
        [
            [
                last["step"],
                f"{last['loss']:.4f}",
                f"{val[-1][VAL_LOSS]:.4f}" if val else "-",
                f"{entropy:.4f}" if entropy is not None else "-",
                f"{last['tokens']:,}",
            ]
        ],
    )
    rows = [
        [
            "valid tokens/s (after the first step)",
            f"{statistics.median(tps):,.0f}",
            f"{min(tps):,.0f}",
            f"{max(tps):,.0f}",
        ]
    ]
    if withheld is None:
        mfu = [100 * m["mfu"] for m in timed]
        rows.append(["MFU (%)", f"{statistics.median(mfu):.1f}", f"{min(mfu):.1f}", f"{max(mfu):.1f}"])
    page.table(["", "median", "min", "max"], rows)
    if withheld is not None:
        page.paragraph(withheld + ".")


def _evals(page: Page, metrics: list[dict[str, Any]]) -> None:
    """Task results logged as `eval/<task>/<metric>` keys, plotted over steps."""
    series: dict[str, list[tuple[int, float]]] = {}
    for m in metrics:
        for (task, metric), value in task_scores(m).items():
            if isinstance(value, (int, float)):
                series.setdefault(f"{task}/{metric}", []).append((m["step"], value))
    if not series:
        return
    page.heading("Evaluation")
    fig, ax = plt.subplots(figsize=(8, 3.6))
    colours: dict[str, ColorType] = {}  # per task, its first line's colour, for its chance line
    for name, points in sorted(series.items()):
        if "perplexity" not in name and not name.endswith("/chance"):  # perplexity is unbounded: listed below
            (line,) = ax.plot(*zip(*points), "o-", label=name)
            colours.setdefault(name.rsplit("/", 1)[0], line.get_color())
    for name, points in sorted(series.items()):
        if name.endswith("/chance"):
            task = name.rsplit("/", 1)[0]
            ax.axhline(points[-1][1], color=colours.get(task, GREY), linestyle="--", label=f"{task}: chance")
    ax.set(xlabel="step", ylabel="score", title="task scores over training (dashed: chance)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    page.figure(fig, "evals.png", "task scores over training; dashed: the accuracy of guessing")
    _task_table(page, series)
    timed = [m[EVAL_SECONDS] for m in metrics if EVAL_SECONDS in m]
    if timed:
        page.paragraph(
            f"Task evaluation ran {len(timed)} times and took {_seconds(sum(timed))} in all, outside "
            f"the step times that tokens/s and MFU are measured on."
        )


def _task_table(page: Page, series: dict[str, list[tuple[int, float]]]) -> None:
    """One row per task at its last evaluation: accuracy beside chance, perplexities by what they are per."""
    from training.tasks import METRIC_LABELS, SHOWN_METRICS

    last = {name: points[-1] for name, points in series.items()}
    tasks = sorted({name.rsplit("/", 1)[0] for name in last})
    shown = [m for m in SHOWN_METRICS if any(f"{task}/{m}" in last for task in tasks)]

    def cell(key: str) -> str:
        if key not in last:
            return "-"
        return f"{last[key][1]:,.1f}" if "perplexity" in key else f"{last[key][1]:.4f}"

    page.table(
        ["task", "last step", *(METRIC_LABELS.get(m, m) for m in shown)],
        [
            [
                task,
                max(step for name, (step, _) in last.items() if name.startswith(f"{task}/")),
                *(cell(f"{task}/{m}") for m in shown),
            ]
            for task in tasks
        ],
    )


def _mixture(page: Page, metrics: list[dict[str, Any]]) -> None:
    """Realized token fractions per source (between log records) against the mixture's targets,
    and validation loss per source, from the `mix/<source>/...` and `val_loss/<source>` keys."""
    kept = [m for m in metrics if "anomaly" not in m and has_mixture(m)]
    if not kept:
        return
    sources = mixture_sources(kept)
    page.heading("Data mixture")
    fig, (mix_ax, val_ax) = plt.subplots(1, 2, figsize=(11, 3.6))
    colours = [BLUE, RED, GREEN, ORANGE, PURPLE, GREY]
    previous = {name: 0 for name in sources}
    meant = {name: 0.0 for name in sources}  # tokens the targets asked for, record by record
    realized: dict[str, list[float]] = {name: [] for name in sources}
    steps, window = [], max(1, len(kept) // 30)  # ~30 points a line
    start = previous
    for i, m in enumerate(kept):
        now = {name: m.get(mix_tokens(name), 0) for name in sources}
        for name in sources:
            meant[name] += m.get(mix_target(name), 0) * sum(now[n] - previous[n] for n in sources)
        previous = now
        drawn = {name: now[name] - start[name] for name in sources}
        if (i + 1) % window == 0 or i == len(kept) - 1:
            total = sum(drawn.values())
            steps.append(m["step"])
            for name in sources:
                realized[name].append(drawn[name] / max(1, total))
            start = now
    for i, name in enumerate(sources):
        colour = colours[i % len(colours)]
        mix_ax.plot(steps, realized[name], color=colour, label=f"{name} realized", drawstyle="steps-pre")
        mix_ax.plot(
            [m["step"] for m in kept],
            [m.get(mix_target(name), 0) for m in kept],
            "--",
            color=colour,
            label=f"{name} target",
            drawstyle="steps-pre",
        )
        val = [(m["step"], m[source_val_loss(name)]) for m in metrics if source_val_loss(name) in m]
        if val:
            val_ax.plot(*zip(*val), "o-", color=colour, label=name)
    mix_ax.set(
        xlabel="step",
        ylabel="share of tokens",
        title=f"share of tokens per source (windows of {window} log record(s)) vs target",
    )
    mix_ax.legend(fontsize=6, ncol=2)
    val_ax.set(xlabel="step", ylabel="loss (nats/token)", title="validation loss per source")
    if val_ax.lines:
        val_ax.legend(fontsize=8)
    fig.tight_layout()
    page.figure(fig, "mixture.png", "data mixture: realized token shares, targets and validation loss per source")
    last = kept[-1]
    total = sum(last.get(mix_tokens(name), 0) for name in sources)
    page.table(
        [
            "source",
            "tokens drawn",
            "share of all tokens",
            "target share over the run",
            "target now",
            "last validation loss",
        ],
        [
            [
                name,
                f"{last.get(mix_tokens(name), 0):,}",
                f"{last.get(mix_tokens(name), 0) / max(1, total):.2%}",
                f"{meant[name] / max(1, sum(meant.values())):.2%}",
                f"{last.get(mix_target(name), 0):.1%}",
                next((f"{m[source_val_loss(name)]:.4f}" for m in reversed(metrics) if source_val_loss(name) in m), "-"),
            ]
            for name in sources
        ],
    )


def _events(page: Page, train: TrainFolder, events: list[dict[str, Any]]) -> None:
    page.heading("Checkpoints and events")
    checkpoints = train.checkpoint_tags()
    page.paragraph("Checkpoints kept: " + (", ".join(checkpoints) or "none"))
    if events:
        page.table(
            ["step", "event", "time", "detail"],
            [
                [
                    e.get("step", ""),
                    e["event"],
                    e.get("time", ""),
                    ", ".join(f"{k}={v}" for k, v in e.items() if k not in ("event", "step", "time")),
                ]
                for e in events
            ],
        )


def _toy_world(page: Page, generations: list[tuple[str, str]]) -> None:
    from pipeline.toy_world import SENTENCES

    page.heading("Toy world")
    page.paragraph(
        f'Ten words, d_model 4, one layer, trained on "{" ".join(SENTENCES)}" by the same trainer. '
        f"Greedy generation from each word should write a sentence of that corpus."
    )
    page.table(
        ["prompt", "greedy generation", "a corpus sentence?"],
        [
            [prompt, continuation, "yes" if f"{prompt} {continuation} END" in SENTENCES else "no"]
            for prompt, continuation in generations
        ],
    )


def _post_demo(page: Page, results: dict[str, Any]) -> None:
    from pipeline.post_demo import reward_line, score_columns, score_rows

    page.heading("Post-training demo")
    page.paragraph(
        f"The trained model taken on to chat (pipeline/post_demo.py): SFT teaches the colours of "
        f"{results['objects']} made-up objects, then DPO teaches their sizes, and keeps the colours, from "
        f"preference pairs alone. Accuracy is on {results['heldout_questions']} colour questions in "
        f"wordings held out of both trainings: the share whose likeliest answer, as the assistant's reply, "
        f"is right."
    )
    page.table(score_columns(results), score_rows(results))
    page.paragraph(reward_line(results) + ".")


def build_report(
    run_dir: Path,
    samples: list[tuple[str, str]] | None = None,
    config: Any = None,
    timings: dict[str, float] | None = None,
    toy: list[tuple[str, str]] | None = None,
    entropy: float | None = None,
    post: dict[str, Any] | None = None,
) -> Path:
    """Write report.html (self-contained) and report.md (with its plots as PNG files) into `run_dir`;
    `entropy` (the unigram baseline) is computed from the shards unless the caller has it."""
    folder = RunFolder(run_dir)
    stats = read_prep_stats(folder.data.root)
    metrics, events = read_jsonl(folder.train.metrics), read_jsonl(folder.train.events)
    page = Page(f"Run report: {run_dir.resolve().name}")
    _context(page, run_dir, config, stats, metrics, timings or {})
    _data(page, stats)
    shards = folder.data.local_shards
    if entropy is None and metrics and shards.exists():
        entropy = unigram_entropy(shards)
    _training(page, metrics, events, entropy)
    _mixture(page, metrics)
    _evals(page, metrics)
    _events(page, folder.train, events)
    if samples:
        page.heading("Samples")
        page.paragraph(f"From the final checkpoint: {learning_line(metrics, entropy) or 'no validation loss'}.")
        page.table(["prompt", "continuation"], [[p, c] for p, c in samples])
    if toy:
        _toy_world(page, toy)
    if post:
        _post_demo(page, post)
    for figure in page.figures:
        (run_dir / figure.name).write_bytes(figure.png)
    write_text(folder.report_md, page.markdown())
    write_text(folder.report_html, page.html())
    return folder.report_html
