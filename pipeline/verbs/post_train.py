"""`crucible sft` and `crucible dpo`: post-training of a checkpoint on the pretraining trainer (launch under
torchrun for layouts). RUN/data is built from --data and the checkpoint, then training starts from its weights."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from pipeline.config import CrucibleConfig
from pipeline.ground import storage
from pipeline.verbs.arguments import CHECKPOINT_HELP, common, local_path
from pipeline.verbs.checkpoints import checkpoint_in, tokenizer_of
from pipeline.verbs.train import train

SFT_DATA = 'chat JSONL: {"messages": [{"role", "content"}, ...]} a line'
DPO_DATA = 'preference JSONL: {"prompt": ..., "chosen": ..., "rejected": ...} a line (TRL\'s layout)'


def arguments_for(data: str) -> Callable[[argparse.ArgumentParser], None]:
    """The flags of a post-training verb whose --data is `data`."""

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        common(parser)
        parser.add_argument(
            "--checkpoint", type=storage.as_location, required=True, help=f"the model to start from: {CHECKPOINT_HELP}"
        )
        parser.add_argument("--data", type=storage.as_location, required=True, help=f"{data}; a file or an s3:// URL")
        parser.add_argument("--output", type=local_path, required=True, help="run folder: data/, metrics, checkpoints")
        parser.add_argument(
            "--resume",
            default="auto",
            metavar="auto|none|PATH",
            help="auto: continue from the run's latest good checkpoint (default); none: start fresh",
        )

    return add_arguments


def run(args: argparse.Namespace, config: CrucibleConfig) -> int:
    from training.dpo import DPOTrainer, build_dpo_data, check_dpo_layout
    from training.engine import Trainer
    from training.post import build_sft_data, prepare

    builders: dict[str, tuple[Callable[..., None], type[Trainer]]] = {
        "sft": (build_sft_data, Trainer),
        "dpo": (build_dpo_data, DPOTrainer),
    }
    build, trainer_class = builders[args.verb]
    if args.verb == "dpo":
        check_dpo_layout(config.parallel)  # before its data is built: a layout it cannot train is refused at once
    base = checkpoint_in(args.checkpoint, config)
    post_config, shards, weights = prepare(
        args.verb, config, base, tokenizer_of(base, None), args.data, args.output, build
    )
    return train(post_config, shards, args.output, args.resume, weights, trainer_class)
