"""Generation with a KV cache, and export to a consolidated state dict and to Hugging Face Llama: all at
once or not at all, and never from a stale universal form of a checkpoint saved again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import torchrun, one_rank
from tests.conftest import crucible_in_process as crucible


@pytest.fixture(scope="module")
def pipeline_checkpoint(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint trained with two pipeline stages and an untied head, so export must merge stages."""
    run = tmp_path_factory.mktemp("pp_run")
    torchrun(
        2,
        "train",
        "--data",
        str(tiny_shards),
        "--output",
        str(run),
        "--set",
        "train.max_steps=3",
        "--set",
        "parallel.pp=2",
        "--set",
        "model.tie_embeddings=false",
        "--set",
        "train.global_batch_size=4",
        "--set",
        "train.micro_batch_size=2",
        "--set",
        "train.peak_tflops=1",
    )
    return run / "checkpoints" / "step-00000003"


@pytest.fixture(scope="module")
def model_and_meta(pipeline_checkpoint: Path):
    from training.generate import load_model

    return load_model(pipeline_checkpoint)


def test_kv_cache_gives_the_logits_of_a_full_recompute(model_and_meta) -> None:
    from training.model import KVCache

    model, _ = model_and_meta
    torch.manual_seed(0)
    tokens = torch.randint(2, 500, (1, 24))
    cache = KVCache()
    with torch.no_grad():
        prompt = 10
        cached = [
            model(tokens[:, :prompt], torch.arange(prompt)[None], torch.ones(1, prompt, dtype=torch.long), cache)[:, -1]
        ]
        for t in range(prompt, tokens.shape[1]):
            cached.append(
                model(tokens[:, t : t + 1], torch.tensor([[t]]), torch.ones(1, 1, dtype=torch.long), cache)[:, -1]
            )
        for step, t in enumerate(range(prompt, tokens.shape[1] + 1)):
            full = model(tokens[:, :t], torch.arange(t)[None], torch.ones(1, t, dtype=torch.long))[:, -1]
            assert torch.allclose(cached[step], full, atol=1e-5), f"position {t}"


def test_greedy_generation_is_deterministic_and_stops_at_end_of_document(model_and_meta) -> None:
    from training.config import SamplesConfig
    from training.generate import generate

    model, _ = model_and_meta
    greedy = SamplesConfig(max_new_tokens=12, temperature=0)
    first = generate(model, [5, 6, 7], greedy, 512, None)
    assert len(first) == 12 and first == generate(model, [5, 6, 7], greedy, 512, None)
    # Stop at the first token that greedy decoding had not produced before (the 0th if none is new).
    cut = next((i for i in range(1, len(first)) if first[i] not in first[:i]), 0)
    assert generate(model, [5, 6, 7], greedy, 512, first[cut]) == first[:cut]


def test_hf_export_matches_logits_and_generates_offline(
    model_and_meta, pipeline_checkpoint: Path, tiny_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoTokenizer, LlamaForCausalLM

    from training.config import SamplesConfig
    from training.export import save_hf

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, _ = model_and_meta
    out = save_hf(pipeline_checkpoint, tmp_path / "hf", tiny_shards / "tokenizer.json", torch.float32, SamplesConfig())
    assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o644, "readable by others"
    hf = LlamaForCausalLM.from_pretrained(out, local_files_only=True, torch_dtype=torch.float32).eval()
    torch.manual_seed(1)
    tokens = torch.randint(2, 500, (2, 40))
    with torch.no_grad():
        ours = model(tokens, torch.arange(40)[None].repeat(2, 1), torch.ones_like(tokens))
        theirs = hf(tokens).logits
    assert (ours - theirs).abs().max().item() < 1e-4
    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    prompt = tokenizer("The history of", return_tensors="pt")
    generated = hf.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert generated.shape[1] > prompt["input_ids"].shape[1]


def test_consolidated_export_holds_full_weights(pipeline_checkpoint: Path, model_and_meta, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from training.export import save_consolidated

    model, _ = model_and_meta
    saved = load_file(save_consolidated(pipeline_checkpoint, tmp_path, torch.bfloat16))
    reference = model.state_dict()
    assert set(saved) == set(reference)
    for name, tensor in saved.items():
        assert tensor.dtype == torch.bfloat16 and tensor.shape == reference[name].shape


def test_an_export_that_fails_midway_leaves_no_files(
    pipeline_checkpoint: Path, tiny_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A loader must never find a half-written model: the files move in only once all are written."""
    import training.export
    from training.config import SamplesConfig

    def crash(*args, **kwargs):
        raise OSError("killed mid-export")

    monkeypatch.setattr(training.export, "generation_config", crash)
    with pytest.raises(OSError, match="killed mid-export"):
        training.export.save_hf(
            pipeline_checkpoint, tmp_path / "hf", tiny_shards / "tokenizer.json", torch.float32, SamplesConfig()
        )
    assert list((tmp_path / "hf").iterdir()) == []


def test_a_checkpoint_saved_again_is_not_read_through_its_old_universal_form(tiny_shards: Path, tmp_path: Path) -> None:
    """A rerun with --resume none saves the same tag with other weights: export reads those, not the
    universal form cached from the checkpoint it replaced."""
    from safetensors.torch import load_file

    from pipeline.ground.names import UNIVERSAL
    from training.export import save_consolidated

    run = tmp_path / "run"
    train = ["train", "--data", str(tiny_shards), "--output", str(run), "--set", "train.global_batch_size=4"]
    train += ["--set", "train.micro_batch_size=2", "--set", "train.peak_tflops=1"]
    one_rank(*train, "--set", "train.max_steps=2")
    # Resumed under another ZeRO stage, the run converts step 2 to its universal form and caches it.
    one_rank(*train, "--set", "train.max_steps=3", "--set", "parallel.zero_stage=2")
    step2 = run / "checkpoints" / "step-00000002"
    assert (run / "checkpoints" / UNIVERSAL / step2.name).is_dir()
    before = load_file(save_consolidated(step2, tmp_path / "before", torch.float32))

    one_rank(*train, "--set", "train.max_steps=2", "--set", "train.seed=7", "--resume", "none")
    after = load_file(save_consolidated(step2, tmp_path / "after", torch.float32))
    alone = shutil.copytree(step2, tmp_path / "copy" / step2.name)  # no cache beside it: converted afresh
    expected = load_file(save_consolidated(alone, tmp_path / "expected", torch.float32))
    assert any(not torch.equal(before[name], expected[name]) for name in expected), "the re-save changed the weights"
    assert all(torch.equal(after[name], expected[name]) for name in expected)


def test_pruning_a_checkpoint_removes_its_universal_form(tmp_path: Path) -> None:
    from pipeline.ground.names import CHECKPOINT_META, UNIVERSAL
    from training.checkpoint import Checkpointer, tag_for
    from training.config import CheckpointConfig

    root = tmp_path / "checkpoints"
    for step in (2, 4, 6):
        (root / tag_for(step)).mkdir(parents=True)
        meta = {"step": step, "healthy": True, "files": {}, "config": {}}
        (root / tag_for(step) / CHECKPOINT_META).write_text(json.dumps(meta))
    for step in (2, 4, 5):  # step 5's checkpoint is gone already
        (root / UNIVERSAL / tag_for(step) / "zero").mkdir(parents=True)
    (root / "latest").write_text(tag_for(6) + "\n")
    Checkpointer(tmp_path, CheckpointConfig(keep_last=2), rank=0).prune()
    assert sorted(p.name for p in root.glob("step-*")) == [tag_for(4), tag_for(6)]
    assert sorted(p.name for p in (root / UNIVERSAL).iterdir()) == [tag_for(4)]


def test_generate_and_export_take_the_folder_of_run_and_its_sampling_settings(
    tiny_shards: Path, tmp_path: Path
) -> None:
    """`--checkpoint RUN`, the folder of `crucible run` (training in RUN/train), finds its newest checkpoint, and
    the run's samples.* settings apply without repeating its config; --set and flags still override them."""
    run = tmp_path / "run"
    one_rank(
        "train",
        "--data",
        str(tiny_shards),
        "--output",
        str(run / "train"),
        "--set",
        "train.max_steps=2",
        "--set",
        "train.global_batch_size=4",
        "--set",
        "train.micro_batch_size=2",
        "--set",
        "train.peak_tflops=1",
        "--set",
        "samples.prompts=[Once upon]",
        "--set",
        "samples.max_new_tokens=5",
        "--set",
        "samples.temperature=0",
    )
    step = run / "train" / "checkpoints" / "step-00000002"
    greedy_five = ["--max-new-tokens", "5", "--temperature", "0"]

    from_run = crucible("generate", "--checkpoint", str(run))
    assert from_run.returncode == 0, from_run.stderr[-2000:]
    assert "Once upon" in from_run.stdout and "Debian is" not in from_run.stdout, "the run's prompts, not the defaults"
    spelled_out = crucible("generate", "--checkpoint", str(step), "--prompt", "Once upon", *greedy_five)
    assert from_run.stdout == spelled_out.stdout, "the run's max_new_tokens and temperature"

    overridden = crucible("generate", "--checkpoint", str(run), "--set", "samples.prompts=[In the]")
    assert "In the" in overridden.stdout and "Once upon" not in overridden.stdout
    assert (
        overridden.stdout == crucible("generate", "--checkpoint", str(step), "--prompt", "In the", *greedy_five).stdout
    ), "--set replaces one key, the run's others stay"

    exported = crucible("export", "--checkpoint", str(run), "--output", str(tmp_path / "hf"))
    assert exported.returncode == 0 and f"exported {step}" in exported.stdout, exported.stderr[-2000:]
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert generation["max_new_tokens"] == 5 and generation["do_sample"] is False
