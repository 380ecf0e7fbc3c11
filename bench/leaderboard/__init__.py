"""Leaderboard: built only from result records on disk; never imports torch.

``build(results_dir, out_dir)`` writes ``README.md`` and ``index.html``; ``show(results_dir, ...)`` prints
the board in a terminal; ``write_board(results_dir, out_path)`` writes the Markdown board alone.
"""

from bench.leaderboard.aggregate import (
    MetricSummary,
    Row,
    aggregate,
    best_per_column,
    bootstrap_ci,
    pareto_front,
    quality,
)
from bench.leaderboard.board import Board, board_from_records, collect
from bench.leaderboard.build import build
from bench.leaderboard.html import render_html
from bench.leaderboard.markdown import render_board_markdown, render_markdown, write_board
from bench.leaderboard.published import published_rows
from bench.leaderboard.schema import ExcludedRecord, load_valid_records, record_schema, validate_record
from bench.leaderboard.terminal import show

__all__ = [
    "Board",
    "ExcludedRecord",
    "MetricSummary",
    "Row",
    "aggregate",
    "best_per_column",
    "board_from_records",
    "bootstrap_ci",
    "build",
    "collect",
    "load_valid_records",
    "pareto_front",
    "published_rows",
    "quality",
    "record_schema",
    "render_board_markdown",
    "render_html",
    "render_markdown",
    "show",
    "validate_record",
    "write_board",
]
