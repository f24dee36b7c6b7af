"""The code passes the linter, the formatter's check and the type checker, as configured in pyproject.toml."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO

CODE = ("pipeline", "data_prep", "training", "launch", "tests", "scripts", "bench")


def run_tool(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *command], cwd=REPO, capture_output=True, text=True, timeout=900)


def test_ruff_finds_nothing() -> None:
    result = run_tool("ruff", "check", "--output-format", "concise", *CODE)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]


def test_the_code_is_formatted() -> None:
    result = run_tool("ruff", "format", "--check", *CODE)
    assert result.returncode == 0, "run `ruff format`:\n" + result.stdout[-3000:] + result.stderr[-1000:]


@pytest.mark.slow  # two minutes without mypy's cache: `make test` (CI) and `make lint` run it
def test_the_type_checker_finds_nothing_in_the_product_code() -> None:
    result = run_tool("mypy")  # the packages, settings and plugins of [tool.mypy]
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-1000:]
