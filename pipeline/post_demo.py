"""The post-training demo: the run's pretrained model learns made-up facts by SFT, then more by DPO from
preference pairs alone, scored on questions in wordings it was never trained on.

Each of 24 objects has a colour (one of 4, six objects to a colour) and a size (big or small, twelve to each),
drawn with a fixed seed: no corpus holds them, so a model that always gives one answer scores exactly chance.
SFT teaches the colours. DPO then teaches the sizes, which SFT never showed (the right size chosen, the other
rejected), beside pairs of the colours (the right one chosen, a wrong one rejected) that keep what SFT taught.
Each question comes in 6 wordings; each object's question in one wording (a different one from object to
object) is held out of both trainings. The colour score is the share of held-out questions whose likeliest
answer, as the assistant's reply, is right: base, after SFT, after DPO. DPO's score is its reward accuracy on
its own held-out pairs (the chosen answer's reward the higher), every 5 steps: at step 0 the policy is the
reference and every reward is 0; it rises as the policy learns the preferences.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.ground.atomic import write_json, write_text
from pipeline.ground.errors import UserError
from pipeline.child_run import run_crucible
from pipeline.ground.markers import read_jsonl, read_marker
from pipeline.ground.layout import TrainFolder
from pipeline.ground.names import CHECKPOINT_META, TOKENIZER_FILE

OBJECTS = [
    "lamp",
    "boat",
    "chair",
    "door",
    "cup",
    "hat",
    "kite",
    "bell",
    "book",
    "coat",
    "drum",
    "fork",
    "key",
    "ring",
    "sock",
    "spoon",
    "tent",
    "vase",
    "wheel",
    "box",
    "bag",
    "brush",
    "clock",
    "shell",
]
COLOURS = ["red", "blue", "green", "yellow"]
SIZES = ["big", "small"]
COLOUR_WORDINGS = [
    "What color is the {}?",
    "Which color does the {} have?",
    "Tell me the color of the {}.",
    "The {} is which color?",
    "Name the color of the {}.",
    "What is the {}'s color?",
]
SIZE_WORDINGS = [
    "Is the {} big or small?",
    "Tell me if the {} is big or small.",
    "How big is the {}?",
    "Is the {} small or big?",
    "What size is the {}?",
    "Say whether the {} is big or small.",
]
SEED = 11
SFT_STEPS, DPO_STEPS = 120, 120
SFT = [
    f"train.max_steps={SFT_STEPS}",
    "train.lr=1e-3",
    "train.min_lr=1e-4",
    "train.warmup_steps=5",
    "train.weight_decay=0",
    "train.global_batch_size=8",
    "train.micro_batch_size=4",
    "train.eval_batches=0",
    "train.log_interval=20",
    "post.sft.val_fraction=0",
    "checkpoint.interval=0",
    "rollback.enabled=false",
]
DPO = [
    f"train.max_steps={DPO_STEPS}",
    "train.lr=5e-4",
    "train.min_lr=5e-5",
    "train.warmup_steps=5",
    "train.weight_decay=0",
    "train.global_batch_size=8",
    "train.micro_batch_size=4",
    "train.eval_batches=6",
    "train.eval_interval=5",
    "train.log_interval=20",
    "post.dpo.beta=0.5",
    "post.dpo.val_fraction=0.25",
    "checkpoint.interval=0",
    "rollback.enabled=false",
]
RESULTS = "results.json"


def deal(answers: list[str]) -> dict[str, str]:
    """Each object's answer: a seeded deal of the same number of objects to each answer."""
    dealt = np.random.default_rng([SEED, len(answers)]).permutation(
        np.repeat(np.arange(len(answers)), len(OBJECTS) // len(answers))
    )
    return {thing: answers[a] for thing, a in zip(OBJECTS, dealt.tolist())}


def questions(wordings: list[str]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(question, object) pairs for training, and the held-out ones: object i's wording i mod 6."""
    train: list[tuple[str, str]] = []
    held_out: list[tuple[str, str]] = []
    for i, thing in enumerate(OBJECTS):
        for w, wording in enumerate(wordings):
            (held_out if w == i % len(wordings) else train).append((wording.format(thing), thing))
    return train, held_out


def _jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    write_text(path, "".join(json.dumps(r) + "\n" for r in records))
    return path


def write_demo_data(folder: Path) -> tuple[Path, Path]:
    """chat.jsonl (SFT: the colours) and prefs.jsonl (DPO: the sizes), of the training wordings."""
    colour, size = deal(COLOURS), deal(SIZES)
    chat = _jsonl(
        folder / "chat.jsonl",
        [
            {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": colour[t]}]}
            for q, t in questions(COLOUR_WORDINGS)[0]
        ],
    )
    wrong = np.random.default_rng(SEED).integers(1, len(COLOURS), len(OBJECTS) * len(COLOUR_WORDINGS)).tolist()
    prefs = _jsonl(
        folder / "prefs.jsonl",
        [
            {"prompt": q, "chosen": size[t], "rejected": other}
            for q, t in questions(SIZE_WORDINGS)[0]
            for other in SIZES
            if other != size[t]
        ]
        + [
            {"prompt": q, "chosen": colour[t], "rejected": COLOURS[(COLOURS.index(colour[t]) + shift) % len(COLOURS)]}
            for (q, t), shift in zip(questions(COLOUR_WORDINGS)[0], wrong)
        ],
    )
    return chat, prefs


def heldout_accuracy(checkpoint: Path, tokenizer_file: Path, wordings: list[str], answers: list[str]) -> float:
    """The share of held-out questions whose likeliest answer (the assistant's reply after the chat template) is
    the right one. A tokenizer without the chat markers (the base model's) reads them as plain text."""
    from tokenizers import Tokenizer

    from training.chat import END, marker
    from training.evaluate import score_requests

    tokenizer, truth = Tokenizer.from_file(str(tokenizer_file)), deal(answers)

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False).ids

    held_out = questions(wordings)[1]
    pairs = []
    for question, _ in held_out:
        context = f"{marker('user')}{question}{END}{marker('assistant')}"
        head = encode(context)
        pairs += [(head, encode(context + answer + END)[len(head) :]) for answer in answers]
    scores = score_requests(checkpoint, [pairs])[0]
    right = 0
    for i, (_, thing) in enumerate(held_out):
        likelihoods = [ll for ll, _ in scores[i * len(answers) : (i + 1) * len(answers)]]
        right += answers[likelihoods.index(max(likelihoods))] == truth[thing]
    return right / len(held_out)


def _post_train(verb: str, start: Path, data: Path, run: Path, settings: list[str], steps: int) -> Path:
    """Run `crucible VERB` in one process (once: a rerun finds its final checkpoint); its final checkpoint."""
    from training.checkpoint import tag_for

    final = TrainFolder(run).checkpoint(tag_for(steps))
    if not (final / CHECKPOINT_META).exists():
        run_crucible(
            [verb, "--checkpoint", str(start), "--data", str(data), "--output", str(run)],
            ["train.loggers=[]", *settings],
            f"the post-training demo's {verb} failed",
        )
    return final


def run_post_demo(folder: Path, base: Path, base_tokenizer: Path) -> dict[str, Any]:
    """SFT then DPO from the `base` checkpoint in FOLDER, and their scores (kept in FOLDER/results.json)."""
    from training.post import DATA, SHARDS

    if (folder / RESULTS).exists():
        stored = read_marker(folder / RESULTS)
        if stored is None:
            raise UserError(f"{folder / RESULTS}: cannot be read; remove it to run the demo again")
        return stored
    chat, prefs = write_demo_data(folder / "data")
    sft = _post_train("sft", base, chat, folder / "sft", SFT, SFT_STEPS)
    dpo = _post_train("dpo", sft, prefs, folder / "dpo", DPO, DPO_STEPS)
    models = {
        "base": (base, base_tokenizer),
        "sft": (sft, folder / "sft" / DATA / SHARDS / TOKENIZER_FILE),
        "dpo": (dpo, folder / "dpo" / DATA / SHARDS / TOKENIZER_FILE),
    }
    evals = [r for r in read_jsonl(TrainFolder(folder / "dpo").metrics) if "val_rewards/accuracy" in r]
    results = {
        "objects": len(OBJECTS),
        "heldout_questions": len(questions(COLOUR_WORDINGS)[1]),
        "sft_steps": SFT_STEPS,
        "dpo_steps": DPO_STEPS,
        "colours": {"chance": 1 / len(COLOURS)}
        | {
            name: heldout_accuracy(checkpoint, tokenizer, COLOUR_WORDINGS, COLOURS)
            for name, (checkpoint, tokenizer) in models.items()
        },
        "dpo_reward_accuracy": [[r["step"], r["val_rewards/accuracy"]] for r in evals],
    }
    write_json(folder / RESULTS, results)
    return results


def score_rows(results: dict[str, Any]) -> list[list[str]]:
    """The demo's held-out accuracies as table rows (facts, chance, base, after SFT, after DPO), for the summary
    and the report."""
    colours = results["colours"]
    return [
        [
            "colours (taught by SFT)",
            f"{colours['chance']:.2f}",
            *(f"{colours[model]:.2f}" for model in ("base", "sft", "dpo")),
        ]
    ]


def score_columns(results: dict[str, Any]) -> list[str]:
    return [
        "held-out questions on",
        "chance",
        "base model",
        f"after SFT ({results['sft_steps']} steps)",
        f"after DPO ({results['dpo_steps']} steps)",
    ]


def reward_line(results: dict[str, Any]) -> str:
    """DPO's reward accuracy on its held-out pairs, first and last evaluation."""
    (first_step, first), (last_step, last) = results["dpo_reward_accuracy"][0], results["dpo_reward_accuracy"][-1]
    return (
        f"DPO's reward accuracy on its held-out pairs (the chosen answer's reward the higher): {first:.2f} at "
        f"step {first_step}, {last:.2f} at step {last_step}"
    )
