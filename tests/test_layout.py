"""The folders Crucible writes are spelled out once, in `pipeline.ground.layout`; every other module asks its
path objects. The scan reads every product module, bench and script with `ast`."""

from __future__ import annotations

import ast
from pathlib import Path

from pipeline.ground import names
from pipeline.ground.layout import PrepFolder, RunFolder, TrainFolder
from tests.conftest import REPO

SCANNED = ("pipeline", "data_prep", "training", "launch", "bench", "scripts")
OWNERS = {"pipeline/ground/layout.py", "pipeline/ground/names.py"}
# Folder and file names of the run, prep and train layouts; joined by hand (`x / "train"`) they would drift. ("data",
# "checkpoints" and "ray" name other folders too: the repository's data/, the download cache's, a bench's.)
FOLDER_NAMES = {"train", "work", "slurm", "clean", "dropped", "quarantine", "toy_world", "report.html", "report.md"}
FOLDER_NAMES |= {"tensorboard", "mlruns"}
# The names module's entries that only the layout may join: a file of a run or prep folder.
LAYOUT_CONSTANTS = {"METRICS_LOG", "EVENTS_LOG", "CHECKPOINTS", "LATEST", "PREP_STATS"}


def joins_by_hand(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, name) of every `path / "name"` of a layout name and every use of a layout file's constant."""
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.BinOp)
            and isinstance(node.op, ast.Div)
            and isinstance(node.right, ast.Constant)
            and node.right.value in FOLDER_NAMES
        ):
            found.append((node.lineno, node.right.value))
        elif isinstance(node, ast.Name) and node.id in LAYOUT_CONSTANTS:
            found.append((node.lineno, node.id))
        elif isinstance(node, ast.alias) and node.name in LAYOUT_CONSTANTS:
            found.append((node.lineno or 0, node.name))
    return found


def test_no_module_joins_a_run_prep_or_train_folder_by_hand() -> None:
    offences = []
    for package in SCANNED:
        for path in sorted((REPO / package).rglob("*.py")):
            name = str(path.relative_to(REPO))
            if name not in OWNERS:
                offences += [f"{name}:{line}: {what}" for line, what in joins_by_hand(ast.parse(path.read_text()))]
    assert not offences, "ask RunFolder / PrepFolder / TrainFolder instead:\n" + "\n".join(offences)


def test_the_scan_finds_a_folder_joined_by_hand() -> None:
    tree = ast.parse(
        "from pipeline.ground.names import METRICS_LOG\nlog = run / 'train' / METRICS_LOG\nok = run / 'notes'\n"
    )
    assert joins_by_hand(tree) == [(1, "METRICS_LOG"), (2, "train"), (2, "METRICS_LOG")]


def test_a_run_folder_holds_its_prep_and_train_folders(tmp_path: Path) -> None:
    run = RunFolder(tmp_path)
    assert run.data.local_shards == tmp_path / "data" / PrepFolder.SHARDS
    assert run.train.latest == tmp_path / "train" / names.CHECKPOINTS / names.LATEST
    assert run.data.local_stats.name == names.PREP_STATS


def test_a_prep_folder_in_object_storage_names_its_objects() -> None:
    prep = PrepFolder("s3://bucket/runs/a/")
    assert prep.stats == "s3://bucket/runs/a/" + names.PREP_STATS
    assert prep.at(PrepFolder.MANIFEST_FILE) == "s3://bucket/runs/a/shards/" + names.MANIFEST
    assert PrepFolder.holding("s3://bucket/runs/a/shards/") == PrepFolder("s3://bucket/runs/a")
    assert PrepFolder.holding(Path("/x/prep/shards")) == PrepFolder(Path("/x/prep"))


def test_what_a_user_points_at_leads_to_the_train_folder(tmp_path: Path) -> None:
    run = RunFolder(tmp_path / "run")
    run.train.checkpoints.mkdir(parents=True)
    for given in (run.root, run.train.root, run.train.checkpoints, run.train.latest):
        assert TrainFolder.pointed_at(given) == run.train, given
    lone = TrainFolder(tmp_path / "lone")
    assert TrainFolder.pointed_at(lone.root) == lone  # nothing there yet: the folder itself, for the error
    run.train.checkpoint("step-00000002").mkdir()
    assert run.train.checkpoint_tags() == ["step-00000002"]
