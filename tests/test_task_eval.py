"""Task evaluation: the scorer in the loop and on a checkpoint give the same accuracies, and they
agree with lm-evaluation-harness on the Hugging Face export, item by item."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pipeline.ground.errors import UserError
from tests.conftest import metrics, read_set, write_jsonl
from tests.conftest import crucible_in_process as crucible
from tests.trainer_harness import train_in_process

STEPS = 30


def build_tasks(folder: Path) -> list[Path]:
    """A multiple-choice task (the true next words of a document against those of others) and a
    cloze task (its next word), from real English text."""
    docs = [r["text"].split() for r in read_set("english", 150)[100:]]
    docs = [words for words in docs if len(words) > 20][:24]
    mc, cloze = [], []
    for i, words in enumerate(docs):
        others = [docs[(i + k) % len(docs)][12:16] for k in (1, 2, 3)]
        choices = [" ".join(words[12:16])] + [" ".join(o) for o in others]
        gold = i % 4
        choices[0], choices[gold] = choices[gold], choices[0]
        mc.append({"context": " ".join(words[:12]), "choices": choices, "gold": gold})
        cloze.append({"context": " ".join(words[:8]), "target": words[8]})
    return [write_jsonl(folder / "next_words.jsonl", mc), write_jsonl(folder / "next_word.jsonl", cloze)]


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return build_tasks(tmp_path_factory.mktemp("tasks"))


@pytest.fixture(scope="module")
def run(tiny_shards: Path, tasks: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short run that scores the tasks every 10 steps, and its final checkpoint."""
    run_dir = tmp_path_factory.mktemp("run")
    train_in_process(
        tiny_shards,
        run_dir,
        STEPS,
        "train.micro_batch_size=4",
        "train.eval_interval=10",
        f"eval.tasks=[{','.join(map(str, tasks))}]",
        "checkpoint.interval=0",
    )
    return run_dir


def checkpoint(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / f"step-{STEPS:08d}"


def long_choice_task(folder: Path) -> Path:
    """Item 1: a context of ~300 words (kept, cut from the left); item 2: a choice of ~300 words, past the
    tiny shards' seq_len of 64."""
    words = " ".join(w for r in read_set("english", 40) for w in r["text"].split())[:2000]
    return write_jsonl(
        folder / "long.jsonl",
        [
            {"context": words, "choices": ["the", "a"], "gold": 0},
            {"context": "It was", "choices": ["the end", words], "gold": 0},
        ],
    )


def test_bad_task_files_are_one_line_errors(tmp_path: Path) -> None:
    from training.tasks import load_tasks

    cases = {
        "a.jsonl": '{"context": "x", "choices": ["a", "b"], "gold": 2}\n',
        "b.jsonl": '{"context": "x"}\n',
        "c.jsonl": "not json\n",
        "d.txt": "",
        "e.jsonl": '{"context": "x", "target": "y"}\n{"context": "x", "choices": ["a", "b"], "gold": 0}\n',
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(UserError) as error:
            load_tasks([tmp_path / name])
        assert name in str(error.value) and "\n" not in str(error.value)


def test_chance_and_perplexity_per_word_and_per_token(tmp_path: Path) -> None:
    """Chance is the mean of 1 / choices over the items; cloze perplexity is per target (a word) as the
    harness gives it, and per token over the targets' tokens."""
    from training.tasks import load_task, metrics

    mc = load_task(
        write_jsonl(
            tmp_path / "mc.jsonl",
            [
                {"context": "a", "choices": ["x", "y"], "gold": 0},
                {"context": "b", "choices": ["x", "y", "z", "w"], "gold": 1},
            ],
        )
    )
    assert metrics(
        mc, [(-1.0, False), (-2.0, False), (-3.0, False), (-1.0, False), (-4.0, False), (-5.0, False)], [([1], [2])] * 6
    ) == {"acc": 1.0, "acc_norm": 1.0, "chance": 0.375, "items": 2}
    cloze = load_task(
        write_jsonl(tmp_path / "cloze.jsonl", [{"context": "a", "target": "bb"}, {"context": "c", "target": "dd"}])
    )
    scored = metrics(cloze, [(-2.0, True), (-4.0, False)], [([1], [5, 6]), ([1], [7, 8, 9, 10])])
    assert scored["perplexity"] == pytest.approx(math.exp(3.0))  # (2 + 4) / 2 words
    assert scored["perplexity_per_token"] == pytest.approx(math.exp(1.0))  # (2 + 4) / 6 tokens


def test_a_choice_longer_than_seq_len_is_refused_and_a_long_context_kept(tiny_shards: Path, tmp_path: Path) -> None:
    from training.scoring import encode_tasks
    from training.tasks import load_tasks

    task = long_choice_task(tmp_path)
    with pytest.raises(UserError) as error:
        encode_tasks(load_tasks([task]), tiny_shards / "tokenizer.json", 0, 64)
    message = str(error.value)
    assert message.startswith(f"{task}: item 2: choices[1] is ") and "longer than the 64 (seq_len)" in message
    assert "prep.pack.seq_len" in message and "\n" not in message
    kept = encode_tasks(load_tasks([task], max_items=1), tiny_shards / "tokenizer.json", 0, 64)
    assert len(kept[0][0][0]) > 64  # a context past seq_len is scored on its last tokens


def test_requests_split_like_the_harness() -> None:
    from training.tasks import encode_pair

    def encode(text: str) -> list[str]:
        return text.replace(" ", " _").split()

    assert encode_pair(encode, "the cat ", " sat", 0) == (["the", "_cat"], ["_", "_sat"])
    assert encode_pair(encode, "", "sat", 7) == ([7], ["sat"])


def test_packed_requests_score_as_if_alone(tiny_shards: Path) -> None:
    """Several requests a row (segments, positions from 0) score as one request a row."""
    import torch

    from training.config import ModelConfig
    from training.generate import single_process_groups
    from training.init import init_weights
    from training.model import GPT
    from training.parallel import tp_config_single
    from training.scoring import score

    single_process_groups()
    model = GPT(ModelConfig(), tp_config_single(), 512).eval()
    init_weights(model, 0, 4)
    pairs = [([5, 6, 7], [8, 9]), ([10] * 30, [11]), ([12, 13], [14, 15, 16]), ([1] * 70, [2, 3])]
    forward = lambda inputs, positions, segments, _: model(inputs, positions, segments)  # noqa: E731
    packed = score(forward, pairs, 64, 2, 0, torch.device("cpu"))
    alone = score(forward, pairs, 64, 2, 0, torch.device("cpu"), one_per_row=True)
    assert [g for _, g in packed] == [g for _, g in alone]
    assert [ll for ll, _ in packed] == pytest.approx([ll for ll, _ in alone], abs=1e-5)


def test_the_loop_logs_task_scores_and_eval_time(run: Path, tasks: list[Path]) -> None:
    scored = [m for m in metrics(run) if "eval/next_words/acc" in m]
    assert [m["step"] for m in scored] == [10, 20, 30]
    for m in scored:
        assert {"eval/next_words/acc_norm", "eval/next_word/acc", "eval/next_word/perplexity"} <= m.keys()
        assert m["eval_seconds"] > 0


def test_eval_verb_gives_the_loop_s_scores(run: Path, tasks: list[Path], tmp_path: Path) -> None:
    result = crucible(
        "eval",
        "--checkpoint",
        str(checkpoint(run)),
        "--tasks",
        *map(str, tasks),
        "--output",
        str(tmp_path / "results.json"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "next_words" in result.stdout and "acc_norm" in result.stdout
    report = json.loads((tmp_path / "results.json").read_text())["tasks"]
    assert report["next_words"]["items"] == 24 and report["next_word"]["items"] == 24
    last = metrics(run)[-1]
    for task, metric in (("next_words", "acc"), ("next_words", "acc_norm"), ("next_word", "acc")):
        assert report[task][metric] == last[f"eval/{task}/{metric}"]
    assert report["next_word"]["perplexity"] == pytest.approx(last["eval/next_word/perplexity"], rel=1e-4)
    assert report["next_words"]["chance"] == last["eval/next_words/chance"] == 0.25
    said = " ".join(result.stdout.split())
    for header in ("chance acc", "perplexity per word", "perplexity per token"):
        assert header in said


@pytest.mark.slow
@pytest.mark.parametrize("harness", [False, True])
def test_eval_refuses_a_choice_longer_than_seq_len_in_one_line(run: Path, tmp_path: Path, harness: bool) -> None:
    """Before anything is scored: plain `eval` would score only the choice's last tokens, lm-eval would
    stop on an assertion."""
    task = long_choice_task(tmp_path)
    result = crucible("eval", "--checkpoint", str(checkpoint(run)), "--tasks", str(task), *(["--harness"] * harness))
    assert result.returncode == 2, result.stderr[-3000:]
    line = result.stderr.strip()
    assert "\n" not in line and f"{task}: item 2: choices[1] is " in line and "(seq_len)" in line


def test_training_refuses_a_task_with_a_choice_longer_than_seq_len(tiny_shards: Path, tmp_path: Path) -> None:
    task = long_choice_task(tmp_path)
    result = crucible(
        "train", "--data", str(tiny_shards), "--output", str(tmp_path / "run"), "--set", f"eval.tasks=[{task}]"
    )
    assert result.returncode == 2 and f"{task}: item 2: choices[1] is " in result.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.slow  # the harness's own model load and run: the reference check, in `make test`
def test_scores_agree_with_lm_evaluation_harness(run: Path, tasks: list[Path], tmp_path: Path) -> None:
    pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed (pip install -e '.[eval]')")
    import torch

    from training.config import SamplesConfig
    from training.evaluate import evaluate_checkpoint
    from training.checkpoint_meta import read_meta, tokenizer_record
    from training.export import save_hf
    from training.harness import run_harness
    from training.tasks import load_tasks

    loaded = load_tasks(tasks)
    meta = read_meta(checkpoint(run))
    tokenizer = Path(meta.data_dir) / tokenizer_record(meta).file
    ours = evaluate_checkpoint(checkpoint(run), loaded, tokenizer)
    hf = save_hf(checkpoint(run), tmp_path / "hf", tokenizer, torch.float32, SamplesConfig())
    theirs = run_harness(hf, loaded)
    for task in loaded:
        mine, harness = ours[task.name], theirs[task.name]
        assert len(mine["requests"]) == len(harness["requests"]) > 0
        for (ll, greedy), (their_ll, their_greedy) in zip(mine["requests"], harness["requests"]):
            assert ll == pytest.approx(their_ll, abs=1e-4)
            assert greedy == their_greedy
        metrics_of_kind = ("acc", "acc_norm") if "acc_norm" in mine else ("acc",)
        for metric in metrics_of_kind:
            assert mine[metric] == harness[metric], (task.name, metric)
        if "perplexity" in mine:
            assert mine["perplexity"] == pytest.approx(harness["perplexity"], rel=1e-4)


def test_eval_warns_when_hf_is_not_an_export_of_the_checkpoint(run: Path, tasks: list[Path], tmp_path: Path) -> None:
    """An export whose weights differ from the checkpoint's (another step, another run) scores differently:
    the harness comparison says so instead of printing the gap as if it were rounding."""
    pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed (pip install -e '.[eval]')")
    from safetensors.torch import load_file, save_file

    hf = tmp_path / "hf"
    assert crucible("export", "--checkpoint", str(checkpoint(run)), "--output", str(hf)).returncode == 0
    weights = load_file(hf / "model.safetensors")
    save_file(
        {name: tensor * 1.5 for name, tensor in weights.items()}, hf / "model.safetensors", metadata={"format": "pt"}
    )
    result = crucible(
        "eval", "--checkpoint", str(checkpoint(run)), "--tasks", str(tasks[0]), "--harness", "--hf", str(hf)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "warning: the harness and Crucible differ by up to" in result.stderr
    assert f"is --hf an fp32 export of {checkpoint(run)}?" in " ".join(result.stderr.split())
