"""The repository is ``ruff``-clean under its own configuration (``[tool.ruff]`` in ``pyproject.toml``)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


def test_repository_is_ruff_clean() -> None:
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed (it is in the dev extra: pip install -e '.[dev]')")
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", str(REPO_ROOT)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, (
        f"`ruff check` found problems (exit code {result.returncode}); fix the code, and run "
        f"`ruff check --fix --select I` for import order:\n{result.stdout}{result.stderr}"
    )
