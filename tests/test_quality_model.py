"""The fastText quality classifier and the quality_model stage, on the repository's own corpus.

Positives are Python documentation and man pages, negatives Debian changelogs and copyright
listings (data/sample). The stage's decisions on one fixed file must not depend on the run or
on the number of workers, and a global keep-top fraction keeps that fraction to one document.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from data_prep.classifier import auc, evaluate
from data_prep.quality_model import ClassifierRule, top_cutoff
from pipeline.cli import main
from pipeline.config import load_config
from pipeline.prep import run_prep
from tests.conftest import REPO, write_jsonl
from tests.sample_corpus import sample_records


def train_with_cli(positive: Path, negative: Path, output: Path) -> dict:
    """Each training in its own process, as the verb runs it (fastText keeps state between trainings)."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "classifier",
            "train",
            "--positive",
            str(positive),
            "--negative",
            str(negative),
            "--output",
            str(output),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((output / "report.json").read_text())
    held = report["heldout"]
    assert "AUC" in result.stdout and f"{held['auc']:.4f}" in result.stdout and "per score bin" in result.stdout
    assert f"next: crucible classifier eval --model {output / 'model.bin'}" in result.stdout
    return report


POSITIVE, NEGATIVE = ("python-docs", "manpages"), ("debian-changelog", "debian-copyright")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("classifier")
    positive = write_jsonl(folder / "positive.jsonl", sample_records(POSITIVE)[::3])
    negative = write_jsonl(folder / "negative.jsonl", sample_records(NEGATIVE))
    report = train_with_cli(positive, negative, folder / "model")
    # The fixed file the stage runs on: every English source, package descriptions included.
    mixed = sample_records(POSITIVE + NEGATIVE + ("package-descriptions", "python-docs-rst"))[::5]
    corpus = write_jsonl(folder / "mixed.jsonl", [{"id": r["id"], "text": r["text"]} for r in mixed])
    return {
        "folder": folder,
        "positive": positive,
        "negative": negative,
        "report": report,
        "model": folder / "model" / "model.bin",
        "corpus": corpus,
        "n_docs": len(mixed),
    }


def test_held_out_accuracy_and_auc_are_reported(trained: dict) -> None:
    held = trained["report"]["heldout"]
    assert held["documents"] > 20 and 0 < held["positives"] < held["documents"]
    assert held["accuracy"] >= 0.9 and held["auc"] >= 0.95
    assert sum(held["histogram"]["positive"]) + sum(held["histogram"]["negative"]) == held["documents"]
    on_disk = json.loads((trained["folder"] / "model" / "report.json").read_text())
    assert on_disk["heldout"] == held and on_disk["settings"]["seed"] == 0


def test_training_is_deterministic(trained: dict, tmp_path: Path) -> None:
    train_with_cli(trained["positive"], trained["negative"], tmp_path)
    assert (tmp_path / "model.bin").read_bytes() == trained["model"].read_bytes()


def test_the_eval_verb_scores_a_labelled_file(trained: dict, capsys: pytest.CaptureFixture[str]) -> None:
    heldout = trained["folder"] / "model" / "heldout.jsonl"
    assert main(["classifier", "eval", "--model", str(trained["model"]), "--data", str(heldout)]) == 0
    printed = capsys.readouterr().out
    expected = evaluate(trained["model"], heldout, "hq")
    lines = printed.splitlines()
    header = next(i for i, line in enumerate(lines) if "AUC" in line)
    row = next(line for line in lines[header:] if line.startswith("│"))  # the table's one row
    assert [cell.strip() for cell in row.strip("│ ").split("│")] == [
        f"{expected['documents']:,}",
        f"{expected['positives']:,}",
        f"{expected['threshold']:g}",
        *(f"{expected[key]:.4f}" for key in ("accuracy", "precision", "recall", "auc")),
    ]
    bins = zip(expected["histogram"]["edges"], expected["histogram"]["positive"], expected["histogram"]["negative"])
    assert all(f"{low:.2f}-" in printed for low, _, _ in bins)
    assert printed.splitlines()[-1].startswith("next: filter prep with it: add quality_model to prep.stages")
    assert main(["classifier", "eval", "--model", str(trained["model"].parent), "--data", str(heldout)]) == 0
    assert capsys.readouterr().out == printed, "the folder `classifier train` wrote"
    assert main(["classifier", "eval", "--model", str(trained["model"])]) == 2
    assert "needs --data" in capsys.readouterr().err


def run_stage(trained: dict, output: Path, workers: int, rule: str) -> dict:
    config = load_config(
        None,
        [
            "prep.stages=[normalize, quality_model]",
            f"prep.workers={workers}",
            "prep.shard_mb=0.1",
            "prep.batch_size=64",
            f"prep.quality_model.classifiers=[{{name: edu, model_path: {trained['model']}, {rule}}}]",
        ],
    )
    config.prep.inputs = [trained["corpus"]]
    return run_prep(config.prep, output, show_progress=False)


def dropped(output: Path) -> list[tuple[str, str, str]]:
    table = pq.read_table(output / "dropped").sort_by("id")
    return list(zip(*(table[c].to_pylist() for c in ("id", "reason", "detail"))))


def test_threshold_decisions_are_the_same_across_runs_and_worker_counts(trained: dict, tmp_path: Path) -> None:
    outputs = [tmp_path / "a", tmp_path / "b", tmp_path / "c"]
    stats = [run_stage(trained, out, workers, "threshold: 0.5") for out, workers in zip(outputs, (1, 2, 2))]
    assert stats[0].shards > 2
    first = dropped(outputs[0])
    assert first and all(dropped(out) == first for out in outputs[1:])
    row = {r.name: r for r in stats[0].stages}["quality_model"]
    assert set(row.dropped) == {"low_score_edu"}
    detail = json.loads(first[0][2])
    assert detail["classifier"] == "edu" and detail["score"] < 0.5 and detail["threshold"] == 0.5
    clean = pq.read_table(outputs[0] / "clean")
    assert clean["score_edu"].null_count == 0 and min(clean["score_edu"].to_pylist()) >= 0.5
    ids = set(clean["id"].to_pylist())
    assert any(i.startswith("python-docs/") for i in ids) and not any(i.startswith("changelog/") for i in ids)


@pytest.mark.parametrize("fraction", [0.3, 0.77])
def test_a_global_keep_top_fraction_keeps_that_fraction(trained: dict, tmp_path: Path, fraction: float) -> None:
    stats = run_stage(trained, tmp_path / "out", 2, f"keep_top_fraction: {fraction}")
    row = {r.name: r for r in stats.stages}["quality_model"]
    assert abs(row.docs_out - fraction * trained["n_docs"]) <= 1
    kept = pq.read_table(tmp_path / "out" / "clean")["score_edu"].to_pylist()
    lost = [json.loads(detail)["score"] for _, _, detail in dropped(tmp_path / "out")]
    assert min(kept) >= max(lost) - 1e-4


def test_ties_at_the_cutoff_are_broken_by_corpus_order() -> None:
    import numpy as np

    scores = np.array([0.9, 0.5, 0.5, 0.5, 0.1], dtype=np.float32)
    assert top_cutoff(scores, 0.6) == (0.5, 2)
    assert top_cutoff(scores, 0.05) is None


def test_auc_counts_ties_as_half() -> None:
    import numpy as np

    assert auc(np.array([0.2, 0.8, 0.5, 0.5]), np.array([False, True, True, False])) == 0.875


def test_a_rule_needs_exactly_one_bar(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one of threshold and keep_top_fraction"):
        ClassifierRule(name="edu", model_path=tmp_path / "m.bin", threshold=0.5, keep_top_fraction=0.1)
