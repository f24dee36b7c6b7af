"""Imported before DeepSpeed and megatron-core: tells DeepSpeed where it runs and imports both lean.

DeepSpeed picks its accelerator when it is first imported and, left to guess, warns that it fell
back to the CPU, a line on the console of every run on a machine without a GPU.

DeepSpeed's autotuner imports mlflow and megatron's inference code imports wandb at import time
whenever they are installed (the `trackers` extra), about 3 s of every rank's start. Neither is used
through them here, and both treat a missing package as absent, so they are hidden while the two
libraries load; `training.trackers` imports them normally afterwards when a run asks for them.

megatron-core also wraps its fused activations in `torch.compile` as it is imported, which pulls in
dynamo and inductor: about 4 s more of every process's start. So does DeepSpeed's Muon optimizer,
which DeepSpeed imports while it builds an engine (to list the optimizers ZeRO supports): about 1.5 s
of every training process. The model calls none of those functions, so `torch.compile` is the
identity while they load (they stay eager), and is itself again afterwards for the model's own
compiled blocks.
"""

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

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


@contextlib.contextmanager
def compile_as_identity() -> Iterator[None]:
    """Make `torch.compile` return the function it is given, as a decorator with or without options."""

    def identity(function: Any = None, **_options: Any) -> Any:
        return function if function is not None else (lambda later: later)

    compile_ = torch.compile
    torch.compile = identity  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.compile = compile_


with packages_hidden(UNUSED_AT_IMPORT), compile_as_identity():
    import deepspeed  # noqa: F401,E402
    import megatron.core  # noqa: F401,E402

    with contextlib.suppress(ImportError):  # as DeepSpeed treats it: a build without Muon lists it not
        import deepspeed.runtime.zero.muon.muon_optimizer  # noqa: F401,E402
