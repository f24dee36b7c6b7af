"""Build the small evaluation tasks in data/tasks from the sample corpus in data/sample.

- debian_next_words.jsonl (multiple choice): the first words of an English Debian package
  description, and which of four continuations is its own (the others are the same stretch of
  other descriptions).
- python_docs_last_word.jsonl (cloze, LAMBADA shape): a sentence of the Python documentation
  without its last word, which is the target.
- lm_eval/*.yaml: the same tasks for lm-evaluation-harness, reading the files above (paths
  relative to the repository root, where lm_eval is run from).

Seeded and deterministic: the same corpus gives the same bytes. Run from the repository root:
    .venv/bin/python scripts/build_tasks.py
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import random
import re
import sys
from pathlib import Path

import yaml
import zstandard

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from training.harness import task_yaml  # noqa: E402
from training.tasks import load_task  # noqa: E402

SEED = 15
ITEMS = 200
CONTEXT_WORDS, CHOICE_WORDS = 14, 6


def corpus(folder: Path) -> list[dict]:
    records = []
    for path in sorted(folder.glob("corpus-*.jsonl.*")):
        raw = path.read_bytes()
        text = (
            zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)).read()
            if path.suffix == ".zst"
            else gzip.decompress(raw)
        )
        records += [json.loads(line) for line in text.decode("utf-8").splitlines()]
    return sorted(records, key=lambda r: r["id"])


def next_words(records: list[dict], rng: random.Random) -> list[dict]:
    """Multiple choice: which six words continue this package description."""
    bodies = []
    for r in records:
        if r["source"] == "package-descriptions" and r["lang"] == "en":
            _, _, body = r["text"].partition("\n\n")  # the body, after "package: synopsis"
            words = body.split()
            if len(words) >= CONTEXT_WORDS + CHOICE_WORDS:
                bodies.append(words)
    rng.shuffle(bodies)
    continuations = {" ".join(w[CONTEXT_WORDS : CONTEXT_WORDS + CHOICE_WORDS]) for w in bodies}
    items = []
    for words in bodies:
        gold_text = " ".join(words[CONTEXT_WORDS : CONTEXT_WORDS + CHOICE_WORDS])
        choices = [gold_text] + rng.sample(sorted(continuations - {gold_text}), 3)
        rng.shuffle(choices)
        items.append({"context": " ".join(words[:CONTEXT_WORDS]), "choices": choices, "gold": choices.index(gold_text)})
        if len(items) == ITEMS:
            break
    return items


def last_word(records: list[dict], rng: random.Random) -> list[dict]:
    """Cloze: a prose sentence without its last word; the target is that word."""
    sentences = []
    for r in records:
        if r["source"] != "python-docs":
            continue
        for paragraph in r["text"].split("\n\n"):
            if "\n" in paragraph.strip():
                continue  # code, tables and lists span several lines; prose paragraphs do not
            for sentence in re.split(r"(?<=[.!?])\s+", paragraph.strip()):
                words = sentence.split()
                if 10 <= len(words) <= 40 and re.fullmatch(r"[A-Za-z]{3,}\.", words[-1]):
                    sentences.append(words)
    rng.shuffle(sentences)
    return [{"context": " ".join(w[:-1]), "target": w[-1][:-1]} for w in sentences[:ITEMS]]


def write(path: Path, items: list[dict]) -> None:
    path.write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items), encoding="utf-8")
    print(f"{path}: {len(items)} items")


def write_yaml(folder: Path, task_file: Path) -> None:
    """The harness config of a task file, pointing at it relative to the repository root."""
    folder.mkdir(parents=True, exist_ok=True)
    task = load_task(task_file)
    config = task_yaml(task, data_file=task_file.resolve().relative_to(REPO))
    (folder / f"{task.name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=REPO / "data" / "sample")
    parser.add_argument("--output", type=Path, default=REPO / "data" / "tasks")
    args = parser.parse_args()
    records = corpus(args.corpus)
    args.output.mkdir(parents=True, exist_ok=True)
    write(args.output / "debian_next_words.jsonl", next_words(records, random.Random(SEED)))
    write(args.output / "python_docs_last_word.jsonl", last_word(records, random.Random(SEED)))
    for name in ("debian_next_words", "python_docs_last_word"):
        write_yaml(args.output / "lm_eval", args.output / f"{name}.jsonl")


if __name__ == "__main__":
    main()
