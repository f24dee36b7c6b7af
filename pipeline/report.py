"""The run report: `<run>/report.md` and `report.html`, with PNG plots where a picture helps.

It reads only what the run already wrote (prep's stats.json, the trainer's metrics.jsonl and
events.jsonl, the checkpoints, the sample generations), so it can be rebuilt at any time.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pipeline.ground.atomic import write_text  # noqa: E402


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _plot_funnel(stats: dict[str, Any], target: Path) -> None:
    stages = stats["stages"]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    names = [s["name"] for s in stages]
    ax.bar(names, [s["docs_in"] for s in stages], color="#c8d6e5", label="in")
    ax.bar(names, [s["docs_out"] for s in stages], color="#2e86de", label="kept")
    ax.set_ylabel("documents")
    ax.set_title("data funnel")
    ax.legend()
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    plt.close(fig)


def unigram_entropy(shards: Path) -> float:
    """Entropy (nats) of the token frequencies of the training split: the loss of a model that
    ignores context. A trained model must get well below it."""
    import numpy as np

    from training.data import PackedDataset

    dataset = PackedDataset(shards, "train", verify=False)
    counts = np.zeros(dataset.manifest["tokenizer"]["vocab_size"], dtype=np.int64)
    for tokens in dataset.tokens:
        counts += np.bincount(tokens.values.to_numpy(), minlength=len(counts))[: len(counts)]
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def _plot_curves(metrics: list[dict[str, Any]], events: list[dict[str, Any]], entropy: float, target: Path) -> None:
    kept = [m for m in metrics if "anomaly" not in m]
    fig, (loss_ax, lr_ax) = plt.subplots(1, 2, figsize=(11, 3.8))
    loss_ax.axhline(entropy, color="#8395a7", linestyle=":", label="unigram entropy of the tokens")
    loss_ax.plot([m["step"] for m in kept], [m["loss"] for m in kept], label="train loss", color="#2e86de")
    val = [m for m in kept if "val_loss" in m]
    loss_ax.plot([m["step"] for m in val], [m["val_loss"] for m in val], "o-", label="validation loss", color="#ee5253")
    for event in events:
        if event["event"] == "rollback":
            loss_ax.axvline(event["step"], color="#ff9f43", linestyle="--", linewidth=1)
    loss_ax.set_xlabel("step")
    loss_ax.set_ylabel("loss (nats/token)")
    loss_ax.legend()
    lr_ax.plot([m["step"] for m in kept], [m["lr"] for m in kept], color="#10ac84")
    lr_ax.set_xlabel("step")
    lr_ax.set_ylabel("learning rate")
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    plt.close(fig)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def build_report(run_dir: Path, samples: list[tuple[str, str]] | None = None) -> Path:
    """Write report.md and report.html into `run_dir`; returns the HTML path."""
    stats = json.loads((run_dir / "data" / "stats.json").read_text())
    train_dir = run_dir / "train"
    metrics, events = _jsonl(train_dir / "metrics.jsonl"), _jsonl(train_dir / "events.jsonl")
    sections = [f"# Run report: {run_dir.name}", "", "## Data", ""]
    _plot_funnel(stats, run_dir / "funnel.png")
    sections.append("![data funnel](funnel.png)")
    sections.append(_table(["stage", "docs in", "docs out", "dropped", "quarantined", "seconds"], [
        [s["name"], f"{s['docs_in']:,}", f"{s['docs_out']:,}",
         ", ".join(f"{r} {n:,}" for r, n in s["dropped"].items()) or "0",
         ", ".join(f"{r} {n:,}" for r, n in s["quarantined"].items()) or "0", s["seconds"]] for s in stats["stages"]]))
    for stage in stats["stages"]:
        if "languages" in stage.get("tally", {}):
            sections += ["", "Languages kept: " + ", ".join(f"{k} {v:,}" for k, v in stage["tally"]["languages"].items())]
        if "contamination" in stage.get("tally", {}):
            sections += ["", "Contaminated documents per eval set: "
                         + ", ".join(f"{k} {v:,}" for k, v in stage["tally"]["contamination"].items())]
    tokens = stats.get("tokens", {})
    if tokens:
        sections += ["", _table(["split", "documents", "tokens", "sequences", "padding", "remainder"], [
            [split] + [f"{tokens.get(f'{split}_{k}', 0):,}" for k in ("documents", "tokens", "sequences", "padding", "remainder")]
            for split in ("train", "val")])]
    if metrics:
        entropy = unigram_entropy(run_dir / "data" / "shards")
        _plot_curves(metrics, events, entropy, run_dir / "curves.png")
        kept = [m for m in metrics if "anomaly" not in m]
        last = kept[-1]
        timed = kept[1:] or kept
        mean_tps = sum(m["tokens_per_s"] for m in timed) / len(timed)
        mean_mfu = sum(m["mfu"] for m in timed) / len(timed)
        sections += ["", "## Training", "", "![loss and learning rate](curves.png)", "",
                     _table(["final step", "final loss", "final validation loss", "unigram entropy", "tokens",
                             "mean tokens/s", "mean MFU"],
                            [[last["step"], f"{last['loss']:.4f}",
                              f"{[m for m in kept if 'val_loss' in m][-1]['val_loss']:.4f}" if any('val_loss' in m for m in kept) else "-",
                              f"{entropy:.4f}", f"{last['tokens']:,}", f"{mean_tps:,.0f}", f"{100 * mean_mfu:.1f}%"]])]
    checkpoints = sorted(p.name for p in (train_dir / "checkpoints").glob("step-*")) if train_dir.exists() else []
    notable = [e for e in events if e["event"] != "save"]
    sections += ["", "## Checkpoints and events", "", "Checkpoints kept: " + (", ".join(checkpoints) or "none")]
    if notable:
        sections += ["", _table(["event", "step", "detail"], [
            [e["event"], e.get("step", ""), ", ".join(f"{k}={v}" for k, v in e.items() if k not in ("event", "step", "skipped"))]
            for e in notable])]
    if samples:
        sections += ["", "## Samples", "", _table(["prompt", "continuation"], [
            [p.replace("|", "\\|"), c.replace("\n", " ").replace("|", "\\|")] for p, c in samples])]
    markdown = "\n".join(sections) + "\n"
    write_text(run_dir / "report.md", markdown)
    write_text(run_dir / "report.html", _html(markdown, run_dir.name))
    return run_dir / "report.html"


def _html(markdown: str, title: str) -> str:
    """A small Markdown-to-HTML rendering of the report's own constructs (headings, tables, images)."""
    body, table = [], []
    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not all(set(c) <= set("-") for c in cells):
                tag = "th" if not table else "td"
                table.append("<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>")
            continue
        if table:
            body.append("<table>" + "".join(table) + "</table>")
            table = []
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('# '))}</h{level}>")
        elif line.startswith("!["):
            alt, src = line[2:].split("](")
            body.append(f'<img alt="{html.escape(alt)}" src="{html.escape(src.rstrip(")"))}">')
        elif line:
            body.append(f"<p>{html.escape(line)}</p>")
    if table:
        body.append("<table>" + "".join(table) + "</table>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}img{max-width:100%}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>" \
           f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n"
