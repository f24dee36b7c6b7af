"""`crucible export`: a checkpoint consolidated to one safetensors file, or as a Hugging Face Llama model."""

from __future__ import annotations

import argparse

from pipeline.config import CrucibleConfig
from pipeline.ground import storage
from pipeline.verbs.arguments import CHECKPOINT_HELP, common, local_path
from pipeline.verbs.checkpoints import checkpoint_in, run_samples, tokenizer_of
from pipeline.ground.console import say


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common(parser)
    parser.add_argument("--checkpoint", type=storage.as_location, required=True, help=CHECKPOINT_HELP)
    parser.add_argument("--output", type=local_path, required=True)
    parser.add_argument("--format", choices=["hf", "consolidated"], default="hf")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--tokenizer", type=local_path, help="tokenizer.json (default: the one of the run's shards)")
    parser.add_argument("--force", action="store_true", help="write into a non-empty --output folder")


def run(args: argparse.Namespace, config: CrucibleConfig) -> None:
    import torch

    from training.export import prepare_output, save_consolidated, save_hf

    dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
    args.checkpoint = checkpoint_in(args.checkpoint, config)
    prepare_output(args.output, args.force)
    if args.format == "hf":
        path = save_hf(
            args.checkpoint,
            args.output,
            tokenizer_of(args.checkpoint, args.tokenizer),
            dtype,
            run_samples(args.checkpoint, config),
        )
    else:
        path = save_consolidated(args.checkpoint, args.output, dtype)
    say(f"exported {args.checkpoint} -> {path} ({args.format}, {args.dtype})")
    if args.format == "hf":
        say(
            f"next: transformers.AutoModelForCausalLM.from_pretrained({str(path)!r}) with "
            f"AutoTokenizer.from_pretrained of the same folder; crucible eval --checkpoint {args.checkpoint} "
            f"--tasks FILE --harness scores it with lm-evaluation-harness"
        )
    else:
        say(
            f"next: safetensors.torch.load_file({str(path)!r}) gives the state dict; the model config and step "
            f"are in its metadata"
        )
