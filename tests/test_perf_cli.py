"""The evaluation benchmark command compares the fast path with the straightforward path in one run."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.slow
def test_perf_evaluate_prints_both_paths_and_the_ratio(data_dir: Path, capsys: pytest.CaptureFixture) -> None:
    from bench.cli import main

    code = main(["perf", "evaluate", "--n", "20", "--sizes", "10,20", "--metrics", "default",
                 "--data-dir", str(data_dir)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "straightforward" in out and "fast" in out
    assert "x" in out or "ratio" in out
