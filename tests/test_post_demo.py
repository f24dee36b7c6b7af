"""The post-training demo's task: balanced made-up facts, held-out wordings that never reach training, and a
held-out score that reads the assistant's answer as the chat template renders it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from pipeline.post_demo import COLOUR_WORDINGS, COLOURS, OBJECTS, SIZE_WORDINGS, SIZES, deal, questions, write_demo_data


def test_facts_are_balanced_so_one_answer_scores_chance() -> None:
    for answers in (COLOURS, SIZES):
        table = deal(answers)
        assert sorted(table) == sorted(OBJECTS) and table == deal(answers)  # seeded: the same table every run
        assert set(Counter(table.values()).values()) == {len(OBJECTS) // len(answers)}
    assert any(deal(COLOURS)[thing] != COLOURS[0] for thing in OBJECTS)


def test_held_out_wordings_never_reach_training(tmp_path: Path) -> None:
    chat, prefs = write_demo_data(tmp_path)
    taught = {json.loads(line)["messages"][0]["content"] for line in chat.read_text().splitlines()}
    preferred = [json.loads(line) for line in prefs.read_text().splitlines()]
    colour, size = deal(COLOURS), deal(SIZES)
    for wordings in (COLOUR_WORDINGS, SIZE_WORDINGS):
        train, held_out = questions(wordings)
        assert len(held_out) == len(OBJECTS) and {t for _, t in held_out} == set(OBJECTS)  # one per object
        used = {next(w for w in wordings if w.format(t) == q) for q, t in held_out}
        assert used == set(wordings)  # every wording is held out for some object
        seen = taught | {pair["prompt"] for pair in preferred}
        assert not {q for q, _ in held_out} & seen
    assert len(taught) == len(questions(COLOUR_WORDINGS)[0])
    for pair in preferred:  # the chosen answer is the fact, the rejected one another answer of the same kind
        thing = next(t for t in OBJECTS if f" {t}" in pair["prompt"])
        truth = size[thing] if pair["chosen"] in SIZES else colour[thing]
        assert pair["chosen"] == truth != pair["rejected"]
        assert (pair["rejected"] in SIZES) == (pair["chosen"] in SIZES)
