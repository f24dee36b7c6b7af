"""Export a checkpoint of any layout: one consolidated state dict, or a Hugging Face Llama model.

DeepSpeed's universal-checkpoint conversion merges ZeRO partitions, TP slices (told how by the
patterns `checkpoint.universal_checkpoint_info` saves) and pipeline stages into one fp32 tensor
per parameter; this module renames those to the single-process model's names. The architecture
(RMSNorm, RoPE on split halves, GQA, SwiGLU, no biases) is Llama's, so the Hugging Face export is
a renaming too, checked by comparing logits. Special tokens are the ones the shards were made
with, as the checkpoint records them, whatever their names.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from pipeline.ground.atomic import atomic_path
from pipeline.ground.errors import UserError
from pipeline.ground.folders import make_output_folder
from pipeline.ground.hashing import file_sha256
from pipeline.ground.names import CHECKPOINT_META, TOKENIZER_FILE, UNIVERSAL, UNIVERSAL_FILES
from training.chat import CHAT_TEMPLATE, has_chat_tokens
from training.config import SamplesConfig
from training.model import canonical_name, hf_name
from training.checkpoint_meta import CheckpointMeta, read_meta, tokenizer_record
from training.safe_load import check_files, load, vet


def convert_to_universal(checkpoint: Path, target: Path) -> None:
    """Run DeepSpeed's converter (needs ZeRO stage >= 1: it reads the optimizer partitions) on files
    vetted first, in a process whose every `torch.load` is weights-only (`training.universal_convert`)."""
    vet(checkpoint)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.universal_convert",
            "--input_folder",
            str(checkpoint),
            "--output_folder",
            str(target),
            "--num_extract_workers",
            "1",
            "--num_merge_workers",
            "1",
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise UserError(
            f"cannot convert checkpoint {checkpoint} (ZeRO stage 0 checkpoints cannot be merged; "
            f"train with parallel.zero_stage >= 1): {result.stderr.strip().splitlines()[-1:]}"
        )


def universal_cache(checkpoint: Path) -> Path:
    """Where the universal form of `checkpoint` is cached: `checkpoints/.universal/<tag>`."""
    return Path(checkpoint).parent / UNIVERSAL / Path(checkpoint).name


def build_universal(checkpoint: Path, parent: Path) -> Path:
    """The universal form of `checkpoint` in a new private folder under `parent` (a fresh name, owner-only, so
    nothing planted beforehand is in it), with its file list and hashes and the source's crucible.json."""
    folder = Path(tempfile.mkdtemp(prefix=f"universal-{Path(checkpoint).name}-", dir=parent))
    convert_to_universal(Path(checkpoint), folder)
    files = {str(p.relative_to(folder)): file_sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}
    (folder / UNIVERSAL_FILES).write_text(json.dumps(files, indent=1, sort_keys=True))
    shutil.copy(Path(checkpoint) / CHECKPOINT_META, folder / CHECKPOINT_META)
    return folder


def cached_universal(checkpoint: Path) -> Path | None:
    """The cached universal form of `checkpoint`, if it holds exactly the files it was built with and was made
    from this very checkpoint: the cache keeps its source's crucible.json, whose file hashes differ once the
    tag is saved again (a rerun with --resume none, a rollback), so a replaced checkpoint is never read
    through its old cache. A planted or altered cache is not used (and is rebuilt where one is cached)."""
    cached = universal_cache(checkpoint)
    if cached.is_symlink() or not (cached / UNIVERSAL_FILES).is_file():
        return None
    try:
        check_files(
            cached, json.loads((cached / UNIVERSAL_FILES).read_text()), extra=(CHECKPOINT_META, UNIVERSAL_FILES)
        )
        same = (cached / CHECKPOINT_META).read_bytes() == (Path(checkpoint) / CHECKPOINT_META).read_bytes()
    except (OSError, ValueError, AttributeError):  # a damaged or planted list, or a refused folder
        return None
    return cached if same else None


def consolidate(checkpoint: Path) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
    """The full fp32 weights of `checkpoint`, named as in a single-process `GPT`, and its metadata; the folder
    must hold exactly the files its crucible.json lists, with their hashes."""
    meta = read_meta(checkpoint)
    check_files(Path(checkpoint), meta.files)
    n_layers = meta.config.model["n_layers"]
    cached = cached_universal(checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        universal = cached or Path(tmp) / "universal"
        if cached is None:
            convert_to_universal(Path(checkpoint), universal)
        state = {}
        for folder in sorted((universal / "zero").iterdir()):
            if folder.is_dir() and (folder / "fp32.pt").exists():
                tensor = load(folder / "fp32.pt")["param"]
                state[canonical_name(folder.name, n_layers)] = tensor.float().contiguous()
    return state, meta


def prepare_output(output: Path, force: bool) -> None:
    """An export goes into a new or empty folder; writing over another needs `force`."""
    if output.is_dir() and any(output.iterdir()) and not force:
        raise UserError(f"--output {output} is not empty: give a new folder, or --force to write over its files")
    make_output_folder(output)


def save_consolidated(checkpoint: Path, output: Path, dtype: torch.dtype) -> Path:
    """One safetensors file of the single-process model's weights; the model config and step ride
    in its metadata (as JSON), so reading it back never unpickles."""
    from safetensors.torch import save_file

    state, meta = consolidate(checkpoint)
    target = output / "model.safetensors"
    with atomic_path(target) as tmp:
        save_file(
            {k: v.to(dtype).contiguous() for k, v in state.items()},
            str(tmp),
            metadata={
                "config": json.dumps(meta.config.model_dump(mode="json"), sort_keys=True),
                "step": str(meta.step),
            },
        )
        tmp.chmod(0o644)  # safetensors writes owner-only; an export is for others to read
    return target


def llama_config(meta: CheckpointMeta, eod_id: int, pad_id: int) -> dict[str, Any]:
    model, vocab = meta.config.model, meta.config.vocab_padded
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": model["d_model"],
        "intermediate_size": model["ffn_hidden"],
        "num_hidden_layers": model["n_layers"],
        "num_attention_heads": model["n_heads"],
        "num_key_value_heads": model["n_kv_heads"],
        "head_dim": model["d_model"] // model["n_heads"],
        "vocab_size": vocab,
        "rms_norm_eps": model["norm_eps"],
        "rope_theta": model["rope_theta"],
        "max_position_embeddings": meta.seq_len or 2048,
        "tie_word_embeddings": model["tie_embeddings"],
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": eod_id,
        "eos_token_id": eod_id,
        "pad_token_id": pad_id,
        "torch_dtype": "float32",
    }


def generation_config(samples: SamplesConfig, eod_id: int, pad_id: int) -> dict[str, Any]:
    """Hugging Face generation defaults: the configured sampling, stopping at the end of a document."""
    config: dict[str, Any] = {
        "eos_token_id": eod_id,
        "pad_token_id": pad_id,
        "max_new_tokens": samples.max_new_tokens,
        "do_sample": samples.temperature > 0,
    }
    if samples.temperature > 0:  # top_k 0 and top_p 1 switch those filters off, as None does here
        config |= {"temperature": samples.temperature, "top_k": samples.top_k or 0, "top_p": samples.top_p or 1.0}
    return config


def tokenizer_config(tokenizer: Any, eod: str, pad: str, max_length: int) -> dict[str, Any]:
    """transformers' tokenizer settings; a tokenizer grown by post-training's chat markers also gets the chat
    template, with which `apply_chat_template` gives the ids Crucible trained on."""
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": eod,
        "bos_token": eod,
        "pad_token": pad,
        "model_max_length": max_length,
    }
    return config | ({"chat_template": CHAT_TEMPLATE} if has_chat_tokens(tokenizer) else {})


def save_hf(checkpoint: Path, output: Path, tokenizer_file: Path, dtype: torch.dtype, samples: SamplesConfig) -> Path:
    """safetensors + config.json + tokenizer files, loadable with transformers offline."""
    from safetensors.torch import save_file
    from tokenizers import Tokenizer

    state, meta = consolidate(checkpoint)
    record = tokenizer_record(meta)
    eod_id, pad_id = record.eod_id, record.pad_id
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    eod, pad = tokenizer.id_to_token(eod_id), tokenizer.id_to_token(pad_id)
    if eod is None or pad is None:
        raise UserError(
            f"tokenizer {tokenizer_file} has no token ids {eod_id} and {pad_id} (end of document, "
            f"padding) that {checkpoint} was trained with: pass the run's tokenizer"
        )
    tensors = {hf_name(k): v.to(dtype).contiguous() for k, v in state.items()}
    config = llama_config(meta, eod_id, pad_id) | {"torch_dtype": "float32" if dtype == torch.float32 else "bfloat16"}
    names = ("config.json", "model.safetensors", TOKENIZER_FILE, "tokenizer_config.json", "generation_config.json")
    with (
        ExitStack() as stack
    ):  # each file is written beside its place; all move in once all are written, config.json (what a loader looks for) last
        tmp = {name: stack.enter_context(atomic_path(output / name)) for name in names}
        save_file(tensors, str(tmp["model.safetensors"]), metadata={"format": "pt"})
        tmp["model.safetensors"].chmod(0o644)  # safetensors writes owner-only; an export is for others to read
        tmp["config.json"].write_text(json.dumps(config, indent=2))
        shutil.copyfile(tokenizer_file, tmp[TOKENIZER_FILE])
        tmp["tokenizer_config.json"].write_text(
            json.dumps(tokenizer_config(tokenizer, eod, pad, config["max_position_embeddings"]), indent=2)
        )
        tmp["generation_config.json"].write_text(json.dumps(generation_config(samples, eod_id, pad_id), indent=2))
    return output
