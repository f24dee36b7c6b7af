"""Chat and preference files for post-training tests: seeded conversations of every role, and bad records."""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = (
    "the cat sat on a mat while dogs ran past green trees near old houses by the river and "
    "children sang songs about stars moons clouds rain wind 1 2 3 ? ! , . é ü 中文"
).split()

BAD_RECORDS = [  # (line, reason) the chat reader must give each
    ("{not json", "malformed_json"),
    ("[1, 2]", "not_an_object"),
    (json.dumps({"messages": []}), "no_messages"),
    (json.dumps({"text": "no messages key"}), "no_messages"),
    (json.dumps({"messages": [{"role": "user", "content": 3}]}), "bad_message"),
    (
        json.dumps({"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]}),
        "unknown_role",
    ),
    (json.dumps({"messages": [{"role": "user", "content": "only a question"}]}), "no_assistant_turn"),
    (
        json.dumps(
            {"messages": [{"role": "user", "content": "hi <|end|> there"}, {"role": "assistant", "content": "x"}]}
        ),
        "marker_in_content",
    ),
    (
        json.dumps({"messages": [{"role": "user", "content": "long " * 200}, {"role": "assistant", "content": "x"}]}),
        "too_long",
    ),
]


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, words)))


def conversations(count: int, seed: int = 0, words: int = 6) -> list[list[dict[str, str]]]:
    """Seeded conversations: an optional system message, user/assistant turns, sometimes a tool reply."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        messages = [{"role": "system", "content": sentence(rng, words)}] if rng.random() < 0.3 else []
        for _ in range(rng.randint(1, 2)):
            messages.append({"role": "user", "content": sentence(rng, words)})
            if rng.random() < 0.2:
                messages.append({"role": "tool", "content": sentence(rng, words)})
            messages.append({"role": "assistant", "content": sentence(rng, words)})
        out.append(messages)
    return out


def write_chat(path: Path, count: int, seed: int = 0, bad: bool = True) -> Path:
    lines = [json.dumps({"messages": m}, ensure_ascii=False) for m in conversations(count, seed)]
    if bad:
        lines += [line for line, _ in BAD_RECORDS]
    path.write_text("\n".join(lines) + "\n")
    return path


BAD_PAIRS = [  # (line, reason) the preference reader must give each
    ("{not json", "malformed_json"),
    (json.dumps({"chosen": "a", "rejected": "b"}), "no_prompt"),
    (json.dumps({"prompt": "hi", "rejected": "b"}), "no_chosen"),
    (json.dumps({"prompt": "hi", "chosen": "a"}), "no_rejected"),
    (json.dumps({"prompt": "hi", "chosen": {"role": "assistant"}, "rejected": "b"}), "bad_message"),
    (json.dumps({"prompt": [{"role": "robot", "content": "hi"}], "chosen": "a", "rejected": "b"}), "unknown_role"),
    (json.dumps({"prompt": "hi", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}), "no_assistant_turn"),
    (json.dumps({"prompt": "hi", "chosen": "same", "rejected": "same"}), "identical_replies"),
    (json.dumps({"prompt": "long " * 200, "chosen": "a", "rejected": "b"}), "too_long"),
]


def preference_pairs(count: int, seed: int = 0) -> list[dict]:
    """An easy preference: the prompt ends in yes or no, and the chosen reply says the same word, the rejected one
    the other (half the pairs each way, so no reply is better on its own). Prompts and replies come in every
    layout TRL reads (text, messages, an assistant message)."""
    rng = random.Random(seed)
    pairs = []
    for index in range(count):
        said, other = ("yes", "no") if rng.random() < 0.5 else ("no", "yes")
        question = f"{sentence(rng, 4)} say {said}"
        layout = index % 3
        prompt: object = question if layout == 0 else [{"role": "user", "content": question}]
        chosen, rejected = said, other
        if layout == 1:
            chosen, rejected = {"role": "assistant", "content": chosen}, {"role": "assistant", "content": rejected}
        elif layout == 2:
            chosen, rejected = [{"role": "assistant", "content": chosen}], [{"role": "assistant", "content": rejected}]
        pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return pairs


def write_preferences(path: Path, count: int, seed: int = 0, bad: bool = True) -> Path:
    lines = [json.dumps(pair, ensure_ascii=False) for pair in preference_pairs(count, seed)]
    if bad:
        lines += [line for line, _ in BAD_PAIRS]
    path.write_text("\n".join(lines) + "\n")
    return path
