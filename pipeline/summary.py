"""End-of-verb summary tables, printed for people (stats.json is the machine-readable twin)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from pipeline.ground.console import console as _console
from pipeline.prep_stats import PrepStats, StageRow
from training.metric_names import EVAL_SECONDS, VAL_LOSS, task_scores
from pipeline.ground.console import say

if TYPE_CHECKING:
    from pipeline.executors.slurm import Job
    from pipeline.status import LocalStatus, StepStatus


def _reasons(counts: dict[str, int], limit: int = 3) -> str:
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    more = len(counts) - len(top)
    return ", ".join(f"{reason} {n:,}" for reason, n in top) + (f", +{more} more" if more > 0 else "")


def changed(row: StageRow) -> str:
    """The kept documents a stage altered (its tally's `documents_changed`) and, for PII, what it
    replaced in them: a stage that edits text shows its work though it drops nothing."""
    tally = row.tally or {}
    documents = sum(counts.get("documents_changed", 0) for counts in tally.values())
    text = f"{documents:,} docs" if documents else ""
    if tally.get("redacted"):
        text += ("; " if text else "") + "redacted " + _reasons(tally["redacted"])
    return text or "-"


def prep_table(stats: PrepStats) -> Table:
    table = Table(title=f"data prep ({stats.shards} shard{'s' * (stats.shards != 1)})")
    for header in (
        "stage",
        "docs in",
        "docs out",
        "dropped",
        "quarantined",
        "top reasons",
        "changed",
        "seconds",
        "docs/s",
    ):
        numeric = header not in ("stage", "top reasons", "changed")
        table.add_column(header, justify="right" if numeric else "left")
    for row in stats.stages:
        dropped, quarantined = sum(row.dropped.values()), sum(row.quarantined.values())
        rate = row.docs_in / row.seconds if row.seconds else 0.0
        table.add_row(
            row.name,
            f"{row.docs_in:,}",
            f"{row.docs_out:,}",
            f"{dropped:,}",
            f"{quarantined:,}",
            _reasons(row.dropped | row.quarantined),
            changed(row),
            f"{row.seconds:.1f}",
            f"{rate:,.0f}",
        )
    return table


def print_prep_summary(stats: PrepStats, console: Console | None = None) -> None:
    console = console or _console()
    console.print(prep_table(stats))
    skipped = stats.skipped_inputs or []
    if skipped:
        entries = "entry" if len(skipped) == 1 else "entries"
        console.print(
            f"[yellow]skipped {len(skipped)} {entries} of input folders that are not regular files (links "
            f"are not followed; FIFOs, sockets and devices not read):[/] " + ", ".join(skipped)
        )
    for row in stats.stages:
        langs = row.tallied("languages")
        if langs:
            console.print("languages kept: " + ", ".join(f"{k} {v:,}" for k, v in list(langs.items())[:12]))
        contamination = row.tallied("contamination")
        if contamination:
            console.print(
                "contaminated documents per eval set: " + ", ".join(f"{k} {v:,}" for k, v in contamination.items())
            )
    if stats.tokens:
        console.print(tokens_table(stats.tokens))
    if stats.split_overlap:
        console.print(overlap_line(stats.split_overlap))
    if stats.sources:
        console.print(sources_table(stats.sources))


def sources_table(sources: dict[str, dict[str, int]]) -> Table:
    """Per named source: documents read, kept and removed over all stages, and what was packed."""
    table = Table(title="per source")
    headers = {
        "source": None,
        "docs in": "docs_in",
        "docs out": "docs_out",
        "dropped": "dropped",
        "quarantined": "quarantined",
        "train tokens": "train_tokens",
        "train sequences": "train_sequences",
        "val tokens": "val_tokens",
    }
    for header in headers:
        table.add_column(header, justify="left" if header == "source" else "right")
    keys = [key for key in headers.values() if key is not None]  # all but the source's name
    for name, counts in sources.items():
        table.add_row(name, *(f"{counts.get(key, 0):,}" for key in keys))
    return table


def overlap_line(overlap: dict[str, Any]) -> str:
    """How many sampled validation documents share a token window with training, and the worst share."""
    worst = overlap["worst"][0]["id"] if overlap["worst"] else None
    return (
        f"train/val overlap: {overlap['sharing']:,} of {overlap['measured']:,} validation documents measured "
        f"(a sample of {overlap['sampled']:,} of {overlap['val_documents']:,}) share a "
        f"{overlap['window_tokens']}-token window with training; worst {overlap['worst_share']:.0%} of a "
        f"document's windows" + (f" ({worst})" if worst else "")
    )


def tokens_table(tokens: dict[str, Any]) -> Table:
    table = Table(title=f"tokens (vocabulary {tokens.get('vocab_size', 0):,})")
    for header in ("split", "documents", "tokens", "sequences", "padding", "remainder"):
        table.add_column(header, justify="left" if header == "split" else "right")
    for split in ("train", "val"):
        if f"{split}_tokens" in tokens:
            table.add_row(
                split,
                *(f"{tokens[f'{split}_{k}']:,}" for k in ("documents", "tokens", "sequences", "padding", "remainder")),
            )
    return table


def _tasks(tasks: list[int]) -> str:
    shown = ",".join(map(str, tasks[:8]))
    return shown + (f",+{len(tasks) - 8}" if len(tasks) > 8 else "")


def print_jobs(jobs: list[Job], slurm_dir: Path, dry_run: bool) -> None:
    """The submitted chain: one row per job, with what it waits for."""
    table = Table(title="jobs that would be submitted (dry run)" if dry_run else "submitted jobs")
    for header in ("job", "name", "runs", "array", "after"):
        table.add_column(header)
    for job in jobs:
        runs = f"{len(job.tasks)} task(s)" if job.tasks else job.part
        table.add_row(job.job_id or "-", job.script.name, runs, job.array or "", ", ".join(job.after) or "-")
    console = _console()
    console.print(table)
    if not jobs:
        console.print("nothing to submit: every step is done and training is not asked for")
    console.print(f"scripts, config snapshot and logs: {slurm_dir} (submit.sh submits the same chain by hand)")


def print_status(steps: list[StepStatus], train: dict[str, Any] | None) -> None:
    """A Slurm run (steps and training) or a Ray-run prep (steps only, `train` None): tasks by state."""
    table = Table(title="run status")
    for header in ("step", "tasks", "done", "running", "pending", "failed / cancelled", "jobs"):
        table.add_column(header, justify="right" if header in ("tasks", "done") else "left")
    for row in steps:
        failed = [
            t
            for state in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")
            for t in row.states.get(state, [])
        ]
        table.add_row(
            row.part,
            f"{row.total:,}",
            f"{row.done:,}",
            _tasks(row.states.get("RUNNING", [])),
            _tasks(row.states.get("PENDING", [])),
            _tasks(sorted(failed)),
            ", ".join(row.job_ids),
        )
    console = _console()
    console.print(table)
    if train is None:
        return
    states = ", ".join(train["states"]) or "not known to Slurm"
    last = train["last"]
    progress = f"step {last['step']}, loss {last['loss']:.4f}" if last else "no step logged yet"
    job = f"job {', '.join(train['job_ids'])} ({states})" if train["job_ids"] else "not submitted"
    console.print(f"training: {job}; {progress}")


def print_local_status(status: LocalStatus) -> None:
    """A local run: prep steps from their markers, training from its metrics, events and checkpoints."""
    console = _console()
    if status.prep is not None:
        table = Table(title=f"prep in {status.prep}")
        for header in ("step", "tasks", "done"):
            table.add_column(header, justify="left" if header == "step" else "right")
        for step, total, done in status.steps:
            table.add_row(step, f"{total:,}", f"{done:,}" + ("" if done == total else "  (incomplete)"))
        console.print(table)
        incomplete = [step for step, total, done in status.steps if done < total]
        if status.published and not incomplete:
            console.print(f"prep: finished; outputs in {status.prep} (clean/, shards/, stats.json)", soft_wrap=True)
        else:
            console.print(
                f"prep: not finished ({', '.join(incomplete) or 'publishing'} left); rerun the same "
                f"`crucible prep` (or `run`) command to resume from the markers",
                soft_wrap=True,
            )
    if status.train is not None:
        last = status.last_metrics
        progress = (
            (
                f"step {last['step']}, loss {last['loss']:.4f}"
                + (f", validation loss {last[VAL_LOSS]:.4f}" if VAL_LOSS in last else "")
            )
            if last
            else "no step logged yet"
        )
        console.print(
            f"training in {status.train}: {progress}; latest checkpoint: {status.latest_checkpoint or 'none'}",
            soft_wrap=True,
        )
        notable = [e for e in status.events if e["event"] != "save"][-5:]
        for event in notable:
            detail = ", ".join(f"{k}={v}" for k, v in event.items() if k not in ("event", "step"))
            console.print(f"  step {event.get('step', '?')}: {event['event']} ({detail})", soft_wrap=True)


def print_task_results(results: dict[str, dict[str, Any]], title: str) -> None:
    """One row per task: its items and scores, accuracy beside the accuracy of guessing (`eval`, and
    `run` after training); perplexities say what they are per."""
    from training.tasks import METRIC_LABELS, SHOWN_METRICS

    metrics = ("items", *SHOWN_METRICS, "max_abs_ll_difference")
    shown = [m for m in metrics if any(m in r for r in results.values())]
    table = Table(title=title)
    for header in ("task", *shown):
        table.add_column(METRIC_LABELS.get(header, header), justify="left" if header == "task" else "right")
    for name, r in results.items():
        table.add_row(name, *(f"{r[m]:.4g}" if m in r else "-" for m in shown))
    _console().print(table)


def print_heldout(results: dict[str, dict[str, Any]], title: str) -> None:
    """One row per group of the validation split (all, each source, each source/language): `eval --heldout`;
    its perplexity is exp of the loss per token."""
    table = Table(title=title)
    for header in ("rows of", "rows", "tokens", "loss", "perplexity per token"):
        table.add_column(header, justify="left" if header == "rows of" else "right")
    for name, r in results.items():
        table.add_row(name, f"{r['rows']:,}", f"{r['tokens']:,}", f"{r['loss']:.4f}", f"{r['perplexity']:.4g}")
    _console().print(table)


def task_results(metrics: list[dict[str, Any]]) -> tuple[dict[str, dict[str, float]], float]:
    """The last `eval/<task>/<metric>` values of a run's metrics, and the seconds all task
    evaluations took (`eval_seconds`, kept out of the step times)."""
    results: dict[str, dict[str, float]] = {}
    for record in metrics:
        for (task, metric), value in task_scores(record).items():
            results.setdefault(task, {})[metric] = value
    return results, sum(record.get(EVAL_SECONDS, 0.0) for record in metrics)


def print_samples(samples: list[tuple[str, str]], title: str) -> None:
    """Samples as a table; blank lines inside a continuation are left out, so that a sample that
    stops on an empty line does not print as a column of empty rows (the report keeps the text as is)."""
    table = Table(title=title, show_lines=True)
    table.add_column("prompt")
    table.add_column("continuation")
    for prompt, continuation in samples:
        table.add_row(prompt, "\n".join(line.rstrip() for line in continuation.splitlines() if line.strip()))
    _console().print(table)


def print_post_demo(results: dict[str, Any]) -> None:
    """The post-training demo's held-out accuracies before and after SFT and DPO, and DPO's reward accuracy."""
    from pipeline.post_demo import reward_line, score_columns, score_rows

    table = Table(
        title=f"post-training demo: made-up facts of {results['objects']} objects, asked in wordings held "
        f"out of training"
    )
    for column in score_columns(results):
        table.add_column(column)
    for row in score_rows(results):
        table.add_row(*row)
    _console().print(table)
    say(reward_line(results))


def print_classifier(result: dict[str, Any], title: str) -> None:
    """A quality classifier's scores on labelled documents (`classifier train` on its held-out share, `classifier
    eval`), then how many documents of each class fell in each score bin: where a threshold would cut."""
    console = _console()
    table = Table(title=title)
    for header in ("documents", "positive", "threshold", "accuracy", "precision", "recall", "AUC"):
        table.add_column(header, justify="right")
    table.add_row(
        f"{result['documents']:,}",
        f"{result['positives']:,}",
        f"{result['threshold']:g}",
        *(f"{result[key]:.4f}" for key in ("accuracy", "precision", "recall", "auc")),
    )
    console.print(table)
    histogram = result["histogram"]
    bins = Table(title="documents per score bin")
    for header in ("score", "positive", "negative"):
        bins.add_column(header, justify="right")
    edges = histogram["edges"]
    for low, high, positive, negative in zip(edges, edges[1:], histogram["positive"], histogram["negative"]):
        bins.add_row(f"{low:.2f}-{high:.2f}", f"{positive:,}", f"{negative:,}")
    console.print(bins)
