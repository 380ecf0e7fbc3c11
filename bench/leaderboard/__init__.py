"""Leaderboard: built only from result records on disk; never imports torch."""

from bench.leaderboard.markdown import render_markdown, write_board

__all__ = ["render_markdown", "write_board"]
