"""torchrun with Crucible's error contract: a user's mistake ends in one line, a crash keeps its trace.

`python -m launch.agent <torchrun arguments>` runs torchrun's own agent in this process. Ranks
learn from `ERROR_DIR_ENV` where to leave the message of a `UserError` (one file per rank)
instead of printing it; when the ranks fail, the agent prints the first such message once and
exits 2, without torchrun's `ChildFailedError` report. A failure no rank explained (a real crash)
is re-raised with torchrun's full report and the ranks' tracebacks. A signal to the agent (Ctrl-C,
`kill`) is passed to the ranks, which save and stop; the agent then exits 128 + the signal's number. So it
does when a signal sent to the ranks themselves stopped training early: rank 0 leaves that status in the same
folder and every rank exits 0, since torchrun would take a rank's non-zero exit for a failure and stop the
others mid-way (or restart them all).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

from pipeline.ground.quiet import verbose
from pipeline.ground.console import say

ERROR_DIR_ENV = "CRUCIBLE_ERROR_DIR"
STOPPED_STATUS = "stopped-status.txt"  # in that folder: the status rank 0 ended with after a signal stopped it early


def record_user_error(message: str) -> bool:
    """On a rank under this agent: leave `message` for the agent to print; False when not under it."""
    folder = os.environ.get(ERROR_DIR_ENV)
    if not folder:
        return False
    from pipeline.ground.atomic import write_text

    write_text(Path(folder) / f"rank-{int(os.environ.get('RANK', 0)):06d}.txt", message)
    return True


def record_stop(status: int) -> bool:
    """On rank 0 under this agent: leave the status for the agent to exit with; False when not under it."""
    folder = os.environ.get(ERROR_DIR_ENV)
    if not folder:
        return False
    from pipeline.ground.atomic import write_text

    write_text(Path(folder) / STOPPED_STATUS, str(status))
    return True


def first_user_error(folder: Path) -> str | None:
    """The message of the rank that failed first (ties: the lowest rank)."""
    files = sorted(folder.glob("rank-*.txt"), key=lambda p: (p.stat().st_mtime_ns, p.name))
    return files[0].read_text() if files else None


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(argv)
    if not verbose():  # rank shutdown notices, signals passed on, the OMP_NUM_THREADS note
        # torchrun's module loggers each set their own level, so a parent's is not inherited: set every one.
        for name in list(logging.root.manager.loggerDict):
            if name.startswith(("torch.distributed.elastic", "torch.distributed.run")):
                logging.getLogger(name).setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="crucible-errors-") as folder:
        os.environ[ERROR_DIR_ENV] = folder
        try:
            run(args)
        except ChildFailedError:
            message = first_user_error(Path(folder))
            if message is None:
                raise
            say(message, to_stderr=True)
            return 2
        except SignalException as exc:  # Ctrl-C or a kill: torchrun passed it to the ranks, which saved and said so
            return 128 + int(exc.sigval)
        stopped = Path(folder) / STOPPED_STATUS
        return int(stopped.read_text()) if stopped.exists() else 0


if __name__ == "__main__":
    sys.exit(main())
