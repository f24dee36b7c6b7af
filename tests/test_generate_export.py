"""Generation with a KV cache, and export to a consolidated state dict and to Hugging Face Llama."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import torchrun


@pytest.fixture(scope="module")
def pipeline_checkpoint(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint trained with two pipeline stages and an untied head, so export must merge stages."""
    run = tmp_path_factory.mktemp("pp_run")
    torchrun(2, "train", "--data", str(tiny_shards), "--output", str(run), "--set", "train.max_steps=3",
             "--set", "parallel.pp=2", "--set", "model.tie_embeddings=false", "--set", "train.global_batch_size=4",
             "--set", "train.micro_batch_size=2", "--set", "train.peak_tflops=1")
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
        cached = [model(tokens[:, :prompt], torch.arange(prompt)[None], torch.ones(1, prompt, dtype=torch.long), cache)[:, -1]]
        for t in range(prompt, tokens.shape[1]):
            cached.append(model(tokens[:, t:t + 1], torch.tensor([[t]]), torch.ones(1, 1, dtype=torch.long), cache)[:, -1])
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


def test_hf_export_matches_logits_and_generates_offline(model_and_meta, pipeline_checkpoint: Path, tiny_shards: Path,
                                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoTokenizer, LlamaForCausalLM

    from training.config import SamplesConfig
    from training.export import save_hf

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, _ = model_and_meta
    out = save_hf(pipeline_checkpoint, tmp_path / "hf", tiny_shards / "tokenizer.json", torch.float32,
                  SamplesConfig())
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
