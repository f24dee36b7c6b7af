"""`status` on a prep folder: steps and tasks from the markers, an unfinished step named; on a training
folder whose metrics log a crash tore."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.ground.markers import append_jsonl, read_jsonl
from pipeline.prep import run_prep
from pipeline.status import local_status
from tests.conftest import read_set, write_jsonl


def test_status_of_a_prep_folder_names_the_unfinished_step(tmp_path: Path) -> None:
    corpus = write_jsonl(tmp_path / "docs.jsonl", [{"text": r["text"]} for r in read_set("english", 40)])
    config = load_config(None, ["prep.stages=[normalize, exact_dedup]", "prep.shard_mb=0.05", "prep.workers=1"])
    config.prep.inputs = [corpus]
    output = tmp_path / "prep"
    run_prep(config.prep, output, show_progress=False)

    finished = local_status(output)
    assert [step for step, _, _ in finished.steps] == [
        "read",
        "unique_ids.hash",
        "unique_ids.find",
        "unique_ids",
        "normalize",
        "exact_dedup.hash",
        "exact_dedup.find",
        "exact_dedup.filter",
    ]
    assert finished.published and all(total == done > 0 for _, total, done in finished.steps)
    assert finished.train is None

    (output / "work" / "exact_dedup.filter" / "done-00001.json").unlink()
    rows = {step: (total, done) for step, total, done in local_status(output).steps}
    total = rows["exact_dedup.filter"][0]
    assert total > 1 and rows["exact_dedup.filter"] == (total, total - 1)


def _metrics_log(run: Path, tail: str) -> Path:
    """A training folder's metrics.jsonl: two steps, then `tail` as written."""
    run.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"step": step, "loss": 5.0 - step}) for step in (1, 2)]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n" + tail)
    return run / "metrics.jsonl"


def test_status_skips_a_metrics_line_torn_by_a_crash(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _metrics_log(tmp_path / "run", '{"step": 3, "lo')
    assert main(["status", "--output", str(tmp_path / "run")]) == 0
    assert "step 2, loss 3.0000" in capsys.readouterr().out


def test_status_names_a_damaged_line_in_the_middle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    metrics = _metrics_log(tmp_path / "run", '{"step": 3, "lo\n{"step": 4, "loss": 1.0}\n')
    assert main(["status", "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{metrics} line 3 is not JSON" in err


def test_a_log_appended_after_a_torn_line_stays_readable(tmp_path: Path) -> None:
    """A run resumed after a crash mid-append: the torn record is cut off, not glued to the next."""
    metrics = _metrics_log(tmp_path / "run", '{"step": 3, "lo')
    append_jsonl(metrics, {"step": 3, "loss": 2.0})
    assert [r["step"] for r in read_jsonl(metrics)] == [1, 2, 3]
    assert metrics.read_text().endswith('{"loss": 2.0, "step": 3}\n')
