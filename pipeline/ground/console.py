"""The one console every verb prints through."""

from __future__ import annotations

from rich.console import Console


def console() -> Console:
    """A rich console: the terminal's width, or 140 columns when output goes to a file or pipe."""
    return Console(width=None if Console().is_terminal else 140)
