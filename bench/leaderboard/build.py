"""``matgenbench leaderboard build``: the Markdown board and the static HTML page from the records on disk."""

from __future__ import annotations

import logging
from pathlib import Path

from bench.io_utils import atomic_write_text
from bench.leaderboard.board import collect
from bench.leaderboard.html import render_html
from bench.leaderboard.markdown import render_board_markdown

__all__ = ["ANALYSIS_FILE", "build"]

ANALYSIS_FILE = "analysis.md"
"""Hand-written analysis beside the board (``leaderboard/analysis.md``): first in the Markdown board, right
after the headline tables in the HTML one."""

log = logging.getLogger(__name__)


def build(results_dir: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """Validate and aggregate every record under ``results_dir``; write ``README.md`` and ``index.html``.

    Both files are written atomically. Invalid record files are logged and listed on the board, not used.
    A hand-written ``<out_dir>/analysis.md``, when present, is shown above the detailed tables in both (in the
    HTML page after the headline tables it explains); the findings under each table are recomputed from the
    records (:mod:`bench.leaderboard.summary`).

    Args:
        results_dir: Folder of result records (``leaderboard/results``).
        out_dir: Folder for the board (``leaderboard``).

    Returns:
        ``{"markdown": <out_dir>/README.md, "html": <out_dir>/index.html}``.
    """
    board = collect(results_dir)
    out = Path(out_dir)
    analysis_file = out / ANALYSIS_FILE
    analysis = analysis_file.read_text(encoding="utf-8") if analysis_file.is_file() else None
    paths = {
        "markdown": atomic_write_text(out / "README.md", render_board_markdown(board, analysis)),
        "html": atomic_write_text(out / "index.html", render_html(board, analysis=analysis)),
    }
    log.info(
        "leaderboard built from %d record(s) (%d left out): %s",
        board.n_records,
        len(board.excluded),
        ", ".join(str(p) for p in paths.values()),
    )
    return paths
