"""`crucible generate`: sample text from a checkpoint (KV cache), whatever layout it was trained with."""

from __future__ import annotations

import argparse

from pipeline.config import CrucibleConfig
from pipeline.ground import storage
from pipeline.ground.errors import UserError
from pipeline.verbs.arguments import CHECKPOINT_HELP, at_least, common, local_path, probability
from pipeline.verbs.checkpoints import checkpoint_in, run_samples, tokenizer_of

SAMPLING_FLAGS = ("prompts", "max_new_tokens", "temperature", "top_k", "top_p", "seed")  # generate's, as samples.*


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common(parser)
    parser.add_argument("--checkpoint", type=storage.as_location, required=True, help=CHECKPOINT_HELP)
    parser.add_argument(
        "--prompt", dest="prompts", action="append", help="prompt text (repeatable; replaces samples.prompts)"
    )
    parser.add_argument("--tokenizer", type=local_path, help="tokenizer.json (default: the one of the run's shards)")
    # Each flag given overrides its samples.* key; the defaults are the config's.
    parser.add_argument("--max-new-tokens", type=at_least(1), help="default: samples.max_new_tokens")
    parser.add_argument("--temperature", type=at_least(0.0, float), help="0 = greedy (default: samples.temperature)")
    parser.add_argument("--top-k", type=at_least(1), help="default: samples.top_k")
    parser.add_argument("--top-p", type=probability, help="default: samples.top_p")
    parser.add_argument("--seed", type=int, help="default: samples.seed")
    parser.add_argument(
        "--chat",
        action="store_true",
        help="each prompt is a user message (or a JSON list of "
        "messages) in the chat template; the answer stops at the end of the assistant's turn",
    )


def run(args: argparse.Namespace, config: CrucibleConfig) -> None:
    from pydantic import ValidationError

    from pipeline.summary import print_samples
    from training.generate import sample_texts

    args.checkpoint = checkpoint_in(args.checkpoint, config)

    samples = run_samples(args.checkpoint, config)
    for key in SAMPLING_FLAGS:
        if getattr(args, key) is not None:
            try:
                setattr(samples, key, getattr(args, key))  # validated on assignment, like --set
            except ValidationError as exc:
                flag = "--prompt" if key == "prompts" else "--" + key.replace("_", "-")
                raise UserError(f"{flag} {getattr(args, key)}: {exc.errors()[0]['msg']}") from None
    print_samples(
        sample_texts(args.checkpoint, tokenizer_of(args.checkpoint, args.tokenizer), samples, args.chat),
        f"samples from {args.checkpoint.name}",
    )
