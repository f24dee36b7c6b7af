"""Careless command lines end in one line that says what to change, never a traceback: config
values of the wrong kind, malformed --set YAML, sbatch options with line breaks, a second prep
into a folder in use, a full disk."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from launch.config import SlurmConfig
from pipeline.cli import main
from pipeline.config import ConfigError, load_config
from pipeline.ground.atomic import DiskFull, write_text
from pipeline.ground.lock import folder_lock
from tests.conftest import REPO
from tests.conftest import crucible_in_process as crucible

SAMPLE_FILE = REPO / "data" / "sample" / "corpus-02.jsonl.zst"


@pytest.mark.parametrize(
    "override", ["train.max_steps=true", "prep.workers=false", "train.lr=true", "prep.pii.max_hits=true"]
)
def test_true_and_false_are_not_numbers(override: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--set", override]) == 2
    err = capsys.readouterr().err
    assert override.split("=")[0] in err and "expected a number" in err


def test_booleans_still_set_boolean_fields() -> None:
    assert load_config(None, ["checkpoint.enabled=false"]).checkpoint.enabled is False


@pytest.mark.parametrize("override", ["prep.workers=[1,", "prep.stages={normalize", "run_name=a: b: c"])
def test_malformed_set_yaml_is_one_line(override: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--set", override]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a valid YAML value" in err and override.split("=")[0] in err


@pytest.mark.parametrize(
    "arg",
    [
        "--max-new-tokens=-5",
        "--max-new-tokens=0",
        "--top-k=-1",
        "--top-p=0",
        "--top-p=1.5",
        "--temperature=-1",
        "--max-new-tokens=ten",
    ],
)
def test_generate_values_are_checked_before_loading_anything(
    arg: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["generate", "--checkpoint", str(tmp_path), arg]) == 2
    err = capsys.readouterr().err
    assert arg.split("=")[0] in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "entry",
    ["--comment=a\nb", "--requeue\n", "--qos=high\r", "--x\r\n", "--a\u2028--b", "--a\x85", "--a\x0b", "--a\x00"],
)
def test_sbatch_args_refuse_line_breaks_in_any_form(entry: str) -> None:
    with pytest.raises(ValueError, match="line break"):
        SlurmConfig(sbatch_args=["--qos=high", entry])
    with pytest.raises(ConfigError, match="sbatch_args"):
        load_config(None, [f"launch.slurm.sbatch_args=[{entry!r}]".replace("'", '"')])


def test_sbatch_args_without_line_breaks_still_pass() -> None:
    assert SlurmConfig(sbatch_args=["--qos=high", "--requeue"]).sbatch_args == ["--qos=high", "--requeue"]


@pytest.fixture
def lock_holder(tmp_path: Path):
    """Another process holding the lock of tmp_path/out."""
    folder = tmp_path / "out"
    code = (
        "import sys, time; from pathlib import Path; from pipeline.ground.lock import folder_lock\n"
        "with folder_lock(Path(sys.argv[1]), 'crucible prep'):\n    print('held', flush=True); time.sleep(120)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(folder)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    yield folder, holder
    holder.kill()
    holder.wait()


def test_second_prep_into_a_folder_in_use_is_refused_naming_the_holder(lock_holder) -> None:
    folder, holder = lock_holder
    result = crucible(
        "prep", "--input", str(SAMPLE_FILE), "--output", str(folder), "--stages", "normalize", "--no-progress"
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"PID {holder.pid} on host {socket.gethostname()}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (folder / "work").exists(), "the refused run wrote nothing"


def test_a_killed_holder_never_blocks_the_next_run(lock_holder) -> None:
    folder, holder = lock_holder
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with folder_lock(folder, "test"):
        pass


def test_disk_full_names_the_path_and_the_free_space(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_space(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", no_space)
    target = tmp_path / "marker.json"
    with pytest.raises(DiskFull, match=f"writing {target} \\([0-9,.]+ MiB free there\\)"):
        write_text(target, "{}")
    assert not list(tmp_path.iterdir()), "no temp file is left behind"


@pytest.fixture
def small_disk(tmp_path: Path):
    mount = tmp_path / "small"
    mount.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("needs root and tmpfs to fill a real filesystem")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_prep_on_a_full_disk_is_one_line_naming_path_and_space(small_disk: Path) -> None:
    result = crucible(
        "prep",
        "--input",
        str(SAMPLE_FILE),
        "--output",
        str(small_disk / "out"),
        "--stages",
        "normalize",
        "--no-progress",
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert f"no space left on device writing {small_disk}/out/" in message and "MiB free there" in message


def test_sample_table_leaves_out_blank_lines_but_keeps_the_text(capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.summary import print_samples

    print_samples([("NAME", " ls - list\n\n\n   directory contents\n\n")], "samples")
    rows = [line for line in capsys.readouterr().out.splitlines() if "│" in line]
    assert [line.split("│")[2].strip() for line in rows] == ["ls - list", "directory contents"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["plan", "--config", "configs"], "--config configs is a folder: give a YAML file"),
        (["prep", "--config", "configs/sample.yaml", "--stages", "pack", "--output", "OUT"], "pack needs tokenize"),
        (["prep", "--stages", "", "--output", "OUT"], "no stage given; choose from extract, normalize"),
        (
            ["prep", "--stages", "normalise", "--output", "OUT"],
            "unknown stage(s) normalise; choose from extract, normalize",
        ),
        (["prep", "--output", "README.md"], "--output README.md is a file: give a folder"),
        (
            ["plan", "--set", "prep.stages=[normalize, decontaminate]"],
            "decontaminate is in the stages but has no eval_sets",
        ),
        (["plan", "--set", "prep.stages=[normalize, blocklist]"], "blocklist is in the stages but has no url_lists"),
        (
            ["plan", "--set", "prep.stages=[normalize, quality_model]"],
            "quality_model is in the stages but has no classif",
        ),
        (["train", "--data", "DATA", "--output", "README.md"], "--output README.md is a file: give a folder"),
        (["submit", "--output", "README.md", "--dry-run"], "--output README.md is a file: give a folder"),
        (
            ["eval", "--checkpoint", "CK", "--tasks", "data/tasks/debian_next_words.jsonl", "--output", "OUT"],
            "is a folder: give a file name",
        ),
        (
            ["eval", "--checkpoint", "CK", "--tasks", "data/tasks"],
            "--tasks data/tasks is a folder: give its task files",
        ),
        (
            ["eval", "--checkpoint", "CK", "--tasks", "T", "--heldout-rows", "5"],
            "--heldout-rows applies with --heldout",
        ),
        (["eval", "--checkpoint", "CK", "--tasks", "T", "--hf", "OUT"], "--hf applies with --harness"),
        (["eval", "--checkpoint", "CK", "--tasks", "T", "--harness", "--hf", "OUT"], "is not a Hugging Face export"),
        (["export", "--checkpoint", "CK/nowhere", "--output", "OUT/x"], "nowhere not found"),
        (["prep", "--output"], "crucible prep: argument --output: expected one argument (see crucible prep --help)"),
    ],
)
def test_careless_command_lines_are_one_line(
    args: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every mistake is caught before any work, as one line naming the flag (a config's: a line per key
    under a heading); none reaches a traceback."""
    paths = {"OUT": str(tmp_path), "CK": str(tmp_path), "DATA": str(tmp_path), "T": str(SAMPLE_FILE)}
    monkeypatch.chdir(REPO)
    assert main([paths.get(arg, arg.replace("CK/", f"{tmp_path}/")) for arg in args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[1:] == [] or lines[0] == "crucible: invalid config:", lines
    assert expected in lines[-1], lines


@pytest.mark.slow  # starts torchrun's agent and two ranks
def test_a_bad_training_flag_under_torchrun_is_one_line(tmp_path: Path) -> None:
    """The ranks hand an argparse refusal to the agent like any user mistake: no ChildFailedError report."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.agent",
            "--nproc_per_node",
            "2",
            "-m",
            "pipeline",
            "train",
            "--data",
            str(tmp_path),
            "--output",
            str(tmp_path),
            "--set",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip() == "crucible train: argument --set: expected one argument (see crucible train --help)"


def test_version_is_the_project_version() -> None:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    result = crucible("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"crucible {project['version']}", result.stderr
