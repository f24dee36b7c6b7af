"""The code passes the linter (pyflakes and pycodestyle's error rules, as configured in pyproject.toml):
no unused imports or variables, no undefined names, no ambiguous names."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_ruff_finds_nothing() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ruff",
            "check",
            "--output-format",
            "concise",
            "pipeline",
            "data_prep",
            "training",
            "launch",
            "tests",
            "scripts",
            "bench",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]
