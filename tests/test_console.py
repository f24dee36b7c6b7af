"""User output goes through one module: lines and warnings from `pipeline.ground.console`, no bare print."""

from __future__ import annotations

import ast

import pytest

from pipeline.ground.console import say, warn
from tests.conftest import REPO

PACKAGES = ("pipeline", "data_prep", "training", "launch")
OWNER = "pipeline/ground/console.py"


def bare_prints(tree: ast.AST) -> list[int]:
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"
    ]


def test_no_product_module_prints_but_the_console() -> None:
    offences = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            name = str(path.relative_to(REPO))
            if name != OWNER:
                offences += [f"{name}:{line}" for line in bare_prints(ast.parse(path.read_text()))]
    assert not offences, "print through pipeline.ground.console (say, warn, console):\n" + "\n".join(offences)


def test_the_scan_finds_a_print() -> None:
    assert bare_prints(ast.parse('print("x", flush=True)\nconsole().print("table")\n')) == [1]


def test_lines_go_to_stdout_and_warnings_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    say("step 1 done")
    say("crucible train: refused", to_stderr=True)
    warn("the disk is nearly full")
    out, err = capsys.readouterr()
    assert out == "step 1 done\n"
    assert err == "crucible train: refused\nwarning: the disk is nearly full\n"
