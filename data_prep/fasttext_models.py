"""fastText models, loaded in one place: its load-time chatter silenced, and a file that is not a
model refused in one line (fastText itself raises a bare ValueError that would end in a traceback)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.ground.errors import UserError

LABEL_PREFIX = "__label__"  # fastText's mark of a label, in training files and predictions


def load_fasttext(path: Path, what: str, hint: str = "") -> Any:  # -> fasttext.FastText._FastText
    """The fastText model at `path`; `what` names it in errors ("language-ID model") and `hint` says
    what to do instead."""
    import fasttext  # imported here: workers that never load a model need not import it

    fasttext.FastText.eprint = lambda *args, **kwargs: None  # silence its load-time warning
    try:
        return fasttext.load_model(str(path))
    except ValueError as exc:
        fault = "cannot be opened" if "cannot be opened" in str(exc) else "is not a fastText model (.bin or .ftz)"
        raise UserError(f"{what} {path} {fault}{': ' + hint if hint else ''}") from None
