"""`status` on a prep folder: steps and tasks from the markers, an unfinished step named."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import load_config
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
    assert [step for step, _, _ in finished.steps] == ["read", "normalize", "exact_dedup.hash", "exact_dedup.find",
                                                      "exact_dedup.filter"]
    assert finished.published and all(total == done > 0 for _, total, done in finished.steps)
    assert finished.train is None

    (output / "work" / "exact_dedup.filter" / "done-00001.json").unlink()
    rows = {step: (total, done) for step, total, done in local_status(output).steps}
    total = rows["exact_dedup.filter"][0]
    assert total > 1 and rows["exact_dedup.filter"] == (total, total - 1)
