"""User output in one place: plain lines (`say`), warnings (`warn`) and rich tables (`console`).

Whatever a verb, the trainer or a launcher shows a person goes through here. A line is flushed at
once, so that lines from ranks and worker processes keep their order in a log. Results and progress
go to stdout; warnings and the front door's one-line refusals to stderr, which stays readable when
stdout is a pipe into another tool.
"""

from __future__ import annotations

import sys

from rich.console import Console


def say(text: str, to_stderr: bool = False) -> None:
    """One line (or a few) for a person, flushed."""
    print(text, file=sys.stderr if to_stderr else sys.stdout, flush=True)


def warn(text: str) -> None:
    """`warning: text` on stderr: something a person should know that did not stop the work."""
    say(f"warning: {text}", to_stderr=True)


def console() -> Console:
    """A rich console for tables: the terminal's width, or 140 columns when output goes to a file or pipe."""
    return Console(width=None if Console().is_terminal else 140)
