"""End-of-verb summary tables, printed for people (stats.json is the machine-readable twin)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _reasons(counts: dict[str, int], limit: int = 3) -> str:
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    more = len(counts) - len(top)
    return ", ".join(f"{reason} {n:,}" for reason, n in top) + (f", +{more} more" if more > 0 else "")


def prep_table(stats: dict[str, Any]) -> Table:
    table = Table(title=f"data prep ({stats['shards']} shard{'s' * (stats['shards'] != 1)})")
    for header in ("stage", "docs in", "docs out", "dropped", "quarantined", "top reasons", "seconds", "docs/s"):
        numeric = header not in ("stage", "top reasons")
        table.add_column(header, justify="right" if numeric else "left")
    for row in stats["stages"]:
        dropped, quarantined = sum(row["dropped"].values()), sum(row["quarantined"].values())
        rate = row["docs_in"] / row["seconds"] if row["seconds"] else 0.0
        table.add_row(row["name"], f"{row['docs_in']:,}", f"{row['docs_out']:,}", f"{dropped:,}",
                      f"{quarantined:,}", _reasons(row["dropped"] | row["quarantined"]),
                      f"{row['seconds']:.1f}", f"{rate:,.0f}")
    return table


def print_prep_summary(stats: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console(width=None if Console().is_terminal else 140)
    console.print(prep_table(stats))
    for row in stats["stages"]:
        langs = row.get("tally", {}).get("languages")
        if langs:
            console.print("languages kept: " + ", ".join(f"{k} {v:,}" for k, v in list(langs.items())[:12]))
    tokens = stats.get("tokens")
    if tokens:
        console.print(tokens_table(tokens))


def tokens_table(tokens: dict[str, Any]) -> Table:
    table = Table(title=f"tokens (vocabulary {tokens.get('vocab_size', 0):,})")
    for header in ("split", "documents", "tokens", "sequences", "padding", "remainder"):
        table.add_column(header, justify="left" if header == "split" else "right")
    for split in ("train", "val"):
        if f"{split}_tokens" in tokens:
            table.add_row(split, *(f"{tokens[f'{split}_{k}']:,}" for k in ("documents", "tokens", "sequences",
                                                                           "padding", "remainder")))
    return table
