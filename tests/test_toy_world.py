"""The toy world of "What actually happens inside an LLM": ten words, d_model 4, one layer, one
head, three sentences. Trained by the real trainer, greedy generation from "cat" and "dog"
reproduces sentences of the corpus. Its special tokens are not the defaults ("END" ends a
document, id 9; padding is id 10), so generation and export must take them from the shards."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.toy_world import SENTENCES, WORDS, final_checkpoint, toy_generations, train_toy_world
from tests.conftest import REPO


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The toy shards (ROOT/shards) and a run trained on them (ROOT/run)."""
    root = tmp_path_factory.mktemp("toy")
    train_toy_world(root)
    return root


@pytest.fixture(scope="module")
def toy_model(toy_run: Path):
    from training.generate import load_model

    return load_model(final_checkpoint(toy_run))


def test_the_toy_model_has_about_the_seed_s_size(toy_model) -> None:
    model, _ = toy_model
    assert 150 < sum(p.numel() for p in model.parameters()) < 400


@pytest.mark.parametrize("start", ["cat", "dog"])
def test_greedy_generation_reproduces_a_corpus_sentence(toy_model, start: str) -> None:
    from training.config import SamplesConfig
    from training.generate import generate

    model, _ = toy_model
    out = generate(model, [WORDS.index(start)], SamplesConfig(max_new_tokens=8, temperature=0), len(WORDS), None)
    end = out.index(WORDS.index("END")) + 1 if WORDS.index("END") in out else len(out)
    sentence = " ".join([start] + [WORDS[i] for i in out[:end]])
    assert sentence in SENTENCES, sentence


def crucible(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_sampling_stops_at_the_shards_end_of_document_token(toy_run: Path) -> None:
    for prompt, continuation in toy_generations(final_checkpoint(toy_run)):
        assert f"{prompt} {continuation} END" in SENTENCES, continuation


def test_generate_honours_samples_config(toy_run: Path) -> None:
    """`--set samples.*` reaches `generate` (greedy, cut after one token); a flag given wins."""
    from training.config import SamplesConfig
    from training.generate import sample_texts

    greedy = SamplesConfig(prompts=["cat"], max_new_tokens=8, temperature=0)
    words = sample_texts(final_checkpoint(toy_run), toy_run / "shards" / "tokenizer.json", greedy)[0][1].split()
    assert len(words) > 1
    generate = [
        "generate",
        "--checkpoint",
        str(final_checkpoint(toy_run)),
        "--prompt",
        "cat",
        "--set",
        "samples.temperature=0",
        "--set",
        "samples.max_new_tokens=1",
    ]
    out = crucible(*generate)
    assert f"│ {words[0]} " in out and " ".join(words[:2]) not in out
    assert " ".join(words[:2]) in crucible(*generate, "--max-new-tokens", "2")


def test_hf_export_carries_the_shards_special_tokens_and_sampling(toy_run: Path, tmp_path: Path) -> None:
    crucible(
        "export",
        "--checkpoint",
        str(final_checkpoint(toy_run)),
        "--output",
        str(tmp_path / "hf"),
        "--set",
        "samples.temperature=0",
        "--set",
        "samples.max_new_tokens=5",
    )
    end, pad = WORDS.index("END"), len(WORDS)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (end, end, pad)
    tokenizer = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    assert (tokenizer["bos_token"], tokenizer["eos_token"], tokenizer["pad_token"]) == ("END", "END", "<|pad|>")
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert generation == {"eos_token_id": end, "pad_token_id": pad, "max_new_tokens": 5, "do_sample": False}


def test_generate_takes_a_run_folder_or_latest_and_names_the_step(toy_run: Path) -> None:
    for where in (toy_run / "run", toy_run / "run" / "checkpoints" / "latest"):
        out = crucible("generate", "--checkpoint", str(where), "--prompt", "cat", "--set", "samples.temperature=0")
        assert f"samples from {final_checkpoint(toy_run).name}" in out


def test_decoding_never_ends_inside_a_character() -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from training.generate import decode_whole_characters

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(
        ["plain text"],
        trainers.BpeTrainer(vocab_size=260, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False),
    )
    ids = tokenizer.encode("café 日本").ids  # byte tokens: the last character is three of them
    assert tokenizer.decode(ids[:-1]).endswith("\ufffd"), "the cut falls inside a character"
    assert decode_whole_characters(tokenizer, ids[:-1]) == "café 日"
    assert decode_whole_characters(tokenizer, ids) == "café 日本"


def toy_task(path: Path) -> Path:
    """Multiple choice from the corpus: every sentence prefix that only one word follows, that word
    against every other word of the toy vocabulary."""
    follows: dict[str, set[str]] = {}
    for sentence in SENTENCES:
        words = sentence.split()
        for cut in range(1, len(words)):
            follows.setdefault(" ".join(words[:cut]), set()).add(words[cut])
    items = [
        {"context": context, "choices": [gold] + [w for w in WORDS if w != gold], "gold": 0}
        for context, (gold,) in ((c, n) for c, n in follows.items() if len(n) == 1)
    ]
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


def test_the_toy_model_scores_every_multiple_choice_item(toy_run: Path, tmp_path: Path) -> None:
    from training.evaluate import evaluate_checkpoint
    from training.tasks import load_tasks

    tasks = load_tasks([toy_task(tmp_path / "toy.jsonl")])
    assert len(tasks[0].items) >= 8
    result = evaluate_checkpoint(final_checkpoint(toy_run), tasks, toy_run / "shards" / "tokenizer.json")["toy"]
    assert (result["acc"], result["acc_norm"], result["items"]) == (1.0, 1.0, len(tasks[0].items))
