"""Quiet by default: third-party chatter that says nothing to a user is filtered, `--verbose` shows all.

On a CPU run megatron, DeepSpeed and c10d warn per rank about CUDA settings, deprecations and
kernels the run does not use, and print layer tables; with four ranks that is dozens of lines
around each metric line. Known messages are filtered on every rank, other warnings are shown by
rank 0 only, and third-party prints around set-up can be muted. `CRUCIBLE_VERBOSE=1` (what
`--verbose` sets, inherited by torchrun's ranks) turns all of it off.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Iterator

VERBOSE_ENV = "CRUCIBLE_VERBOSE"
KNOWN_NOISE = (
    ".*Transformer Engine and Apex.*",
    ".*CUDA_DEVICE_MAX_CONNECTIONS.*",
    ".*an autograd kernel was not registered to the Autograd key.*",
    ".*torch.distributed.all_gather_into_tensor. is deprecated.*",
    ".*torch.distributed.reduce_scatter_tensor. is deprecated.*",
    ".*torch.jit.script_method. is deprecated.*",
    ".*TypedStorage is deprecated.*",
)


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def quiet_third_party() -> None:
    """Filter known third-party noise in this process (and all warnings on ranks other than 0)."""
    if verbose():
        return
    for pattern in KNOWN_NOISE:
        warnings.filterwarnings("ignore", message=pattern)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    if int(os.environ.get("RANK", "0")) != 0:
        warnings.simplefilter("ignore")
    # torch.utils.cpp_extension: "No CUDA runtime is found" from a CUDA build of torch on a machine without a GPU
    for name in ("DeepSpeed", "deepspeed", "torch.distributed", "megatron", "torch.utils.cpp_extension"):
        logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def muted_output() -> Iterator[None]:
    """Swallow what third-party set-up code prints (layer tables, build notes) unless verbose."""
    if verbose():
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield
