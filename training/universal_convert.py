"""DeepSpeed's universal-checkpoint converter, run so that no file it opens can run code.

The converter calls `torch.load(..., weights_only=False)` on every `mp_rank_*` and `zero_pp_rank_*`
file it finds; here each of those loads is weights-only, with Crucible's allow-list of types.
Run as `python -m training.universal_convert` with the converter's own arguments.
"""

from __future__ import annotations

import training.accelerator  # noqa: F401  (before deepspeed and megatron-core)

# isort: split
from deepspeed.checkpoint import ds_to_universal

from training.safe_load import weights_only_loads


def main() -> None:
    args = ds_to_universal.parse_arguments()
    with weights_only_loads():
        ds_to_universal.main(args)


if __name__ == "__main__":
    main()
