"""Chat and preference files for post-training tests: seeded conversations of every role, and bad records."""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = ("the cat sat on a mat while dogs ran past green trees near old houses by the river and "
         "children sang songs about stars moons clouds rain wind 1 2 3 ? ! , . é ü 中文").split()

BAD_RECORDS = [  # (line, reason) the chat reader must give each
    ("{not json", "malformed_json"),
    ("[1, 2]", "not_an_object"),
    (json.dumps({"messages": []}), "no_messages"),
    (json.dumps({"text": "no messages key"}), "no_messages"),
    (json.dumps({"messages": [{"role": "user", "content": 3}]}), "bad_message"),
    (json.dumps({"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]}),
     "unknown_role"),
    (json.dumps({"messages": [{"role": "user", "content": "only a question"}]}), "no_assistant_turn"),
    (json.dumps({"messages": [{"role": "user", "content": "hi <|end|> there"},
                              {"role": "assistant", "content": "x"}]}), "marker_in_content"),
    (json.dumps({"messages": [{"role": "user", "content": "long " * 200}, {"role": "assistant", "content": "x"}]}),
     "too_long"),
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
