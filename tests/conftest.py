"""Shared fixtures: the offline data directory and the project's own tiny structures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _find_shared_datasets() -> Path | None:
    """The offline copy of the public datasets: $MATGENBENCH_DATA_DIR, else ../shared/datasets beside the
    checkout."""
    env = os.environ.get("MATGENBENCH_DATA_DIR")
    if env and Path(env).is_dir():
        return Path(env)
    candidate = REPO_ROOT.parent / "shared" / "datasets"
    return candidate if candidate.is_dir() else None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Directory laid out as ``<dataset>/<split>.csv``; skips the test when no offline copy is present."""
    path = _find_shared_datasets()
    if path is None:
        pytest.skip(
            "no offline dataset copy: set MATGENBENCH_DATA_DIR to a folder of <dataset>/<split>.csv files"
        )
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test writes caches into a session-wide temporary cache dir, never the user's."""
    cache = tmp_path_factory.getbasetemp() / "mgb-cache"
    monkeypatch.setenv("MATGENBENCH_CACHE_DIR", str(cache))


@pytest.fixture
def one_thread():  # noqa: ANN201
    """Torch on one thread for the test (model tests: deterministic and fair to a second job), restored after.
    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
