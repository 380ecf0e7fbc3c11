"""Shared fixtures: the offline data directory and the project's own tiny structures; the overrides of a quick
end-to-end run on the built-in tiny dataset (:func:`tiny_run`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

TINY_TRANSFORMER = (
    "model.module.backbone.d_model=16", "model.module.backbone.n_layers=1", "model.module.backbone.n_heads=2",
)
"""Overrides shrinking the set-transformer backbone of the seed models to a width that trains in seconds."""


def tiny_run(
    tmp: Path, *extra: str, steps: int = 4, samples: int = 6, sample_batch: int | None = None,
    batch: int = 8,
) -> list[str]:
    """Overrides of a quick run on the built-in tiny dataset that writes only under ``tmp`` (run folders,
    records and board) and never rebuilds a board; ``extra`` follow (a model, its shrinking, a seed...).

    Args:
        steps: ``trainer.max_steps``.
        samples: ``sample.num_samples``.
        sample_batch: ``sample.batch_size`` (None: the config's).
        batch: ``train.batch_size``.
    """
    return [
        "dataset=tiny", "logger=none", f"trainer.max_steps={steps}", "trainer.enable_progress_bar=false",
        f"train.batch_size={batch}", f"sample.num_samples={samples}",
        *([] if sample_batch is None else [f"sample.batch_size={sample_batch}"]),
        f"paths.output_dir={tmp / 'outputs'}", f"paths.results_dir={tmp / 'results'}",
        f"paths.leaderboard_dir={tmp / 'board'}", "record.regenerate_board=false", *extra,
    ]


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


@pytest.fixture(autouse=True)
def _restore_logging():
    """Take away the log handlers a test added, and give loggers their level and flags back.

    A Hydra app run inside a test (the CLI's ``train`` or ``run``) configures logging with handlers bound to
    the test's captured streams, and Lightning, first imported inside a test, adds a handler bound to the
    stream of that moment. Both streams close after the test, so every later log line through such a handler
    would print a "--- Logging error ---" traceback into another test's stderr. pytest's own handlers are left
    to pytest.
    """
    import logging

    def loggers() -> list[logging.Logger]:
        found = logging.Logger.manager.loggerDict.values()
        return [logging.getLogger(), *(lg for lg in found if isinstance(lg, logging.Logger))]

    saved = {lg: (list(lg.handlers), lg.level, lg.propagate, lg.disabled) for lg in loggers()}
    yield
    for lg in loggers():
        before, level, propagate, disabled = saved.get(lg, ([], lg.level, lg.propagate, lg.disabled))
        for handler in list(lg.handlers):
            if handler not in before and not type(handler).__module__.startswith("_pytest"):
                lg.removeHandler(handler)
        lg.setLevel(level)
        lg.propagate, lg.disabled = propagate, disabled
