"""The verb table is the one list of verbs: the parser, the help and the dispatch all come from it."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

import pipeline.cli as cli
from pipeline import verbs
from pipeline.config import CrucibleConfig
from pipeline.verbs import Verb
from tests.conftest import REPO

HELPERS = {"__init__", "arguments", "checkpoints"}  # shared by several verbs; not verbs themselves


def test_every_verb_module_is_in_the_table_and_in_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    modules = {p.stem for p in (REPO / "pipeline" / "verbs").glob("*.py")} - HELPERS
    in_table = {verb.run.__module__.rsplit(".", 1)[1] for verb in verbs.VERBS}
    assert in_table == modules
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    shown = capsys.readouterr().out
    assert all(f"    {verb.name} " in shown for verb in verbs.VERBS)


def test_a_verb_added_to_the_table_is_parsed_dispatched_and_its_user_error_is_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[tuple[str, int]] = []

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        verbs.arguments.common(parser)
        parser.add_argument("--output", type=verbs.arguments.local_path, required=True)
        parser.add_argument("--times", type=verbs.arguments.at_least(1), default=1)

    def run(args: argparse.Namespace, config: CrucibleConfig) -> int:
        if args.times > 2:
            raise cli.UserError("--times above 2 is too many")
        seen.append((str(args.output), config.prep.workers))
        return 0

    echo = Verb("echo", "repeat the output folder back", add_arguments, run, output="folder")
    monkeypatch.setattr(cli, "VERBS", [*verbs.VERBS, echo])
    monkeypatch.setattr(cli, "BY_NAME", {**verbs.BY_NAME, "echo": echo})

    assert cli.main(["echo", "--output", str(tmp_path / "made"), "--set", "prep.workers=3"]) == 0
    assert seen == [(str(tmp_path / "made"), 3)] and (tmp_path / "made").is_dir()  # its --output made first

    assert cli.main(["echo", "--output", str(tmp_path / "made"), "--times", "3"]) == 2
    assert capsys.readouterr().err.strip() == "crucible echo: --times above 2 is too many"
    assert cli.main(["echo", "--output", str(tmp_path), "--times", "0"]) == 2
    assert "--times: must be at least 1" in capsys.readouterr().err
