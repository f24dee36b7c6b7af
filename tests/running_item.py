"""The test being set up or run, kept in one module: pytest loads conftest.py as its own copy beside the
`tests.conftest` that test modules import, so a global of conftest's own would not be seen by both."""

from __future__ import annotations

import pytest

RUNNING: list[pytest.Item] = []
