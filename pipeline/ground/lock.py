"""One writer per output folder: a second run into a folder in use is refused, naming the holder.

The lock is an advisory `flock` on `.lock` in the folder, so the kernel drops it when its holder
dies (even by SIGKILL) and a stale lock never blocks a rerun. The file holds the holder's PID,
host and start time for the message.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.ground.errors import UserError

LOCK_FILE = ".lock"


@contextmanager
def folder_lock(folder: Path, what: str) -> Iterator[None]:
    """Hold `folder`'s lock for the block; UserError when another process holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            try:
                holder = json.loads(handle.read())
                who = f"PID {holder['pid']} on host {holder['host']} ({holder['what']}, since {holder['since']})"
            except (ValueError, KeyError):
                who = "another process"
            raise UserError(f"{folder} is in use by {who}; wait for it to finish or stop it") from None
        handle.seek(0)
        handle.truncate()
        handle.write(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "what": what,
                    "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                }
            )
        )
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
