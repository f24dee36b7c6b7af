"""Wall time of each phase of `crucible run`, kept in the run folder across its invocations.

A rerun that finds a phase done reports the time the phase took, not the seconds it took to find it
done; a phase resumed after Ctrl-C reports the time of both invocations together.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.ground.atomic import write_json
from pipeline.ground.markers import read_marker

RUN_TIMES = "run_times.json"


class PhaseTimes:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.seconds: dict[str, float] = read_marker(path) or {}

    @contextmanager
    def phase(self, name: str) -> Iterator[Callable[[bool], None]]:
        """Time the block; it calls the function it gets with whether it did work (not only found it done)."""
        worked = [True]
        started = time.perf_counter()
        yield lambda did: worked.__setitem__(0, did)
        elapsed = time.perf_counter() - started
        if worked[0]:
            self.seconds[name] = self.seconds.get(name, 0.0) + elapsed
        else:
            self.seconds.setdefault(name, elapsed)
        write_json(self.path, self.seconds)
