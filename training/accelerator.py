"""Imported before DeepSpeed and megatron-core: tells DeepSpeed where it runs and imports both lean.

DeepSpeed picks its accelerator when it is first imported and, left to guess, warns that it fell
back to the CPU, a line on the console of every run on a machine without a GPU.

DeepSpeed's autotuner imports mlflow and megatron's inference code imports wandb at import time
whenever they are installed (the `trackers` extra), about 3 s of every rank's start. Neither is used
through them here, and both treat a missing package as absent, so they are hidden while the two
libraries load; `training.trackers` imports them normally afterwards when a run asks for them.
"""

import contextlib
import os
import sys
from collections.abc import Iterator

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

UNUSED_AT_IMPORT = ("mlflow", "wandb")


@contextlib.contextmanager
def packages_hidden(names: tuple[str, ...]) -> Iterator[None]:
    """Make `import name` raise ImportError inside the block for each name not already imported."""
    hidden = [name for name in names if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in hidden:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]


with packages_hidden(UNUSED_AT_IMPORT):
    import deepspeed  # noqa: F401,E402
    import megatron.core  # noqa: F401,E402
