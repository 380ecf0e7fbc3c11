"""The leaderboard committed in ``leaderboard/`` is what its records render to, and every record is valid."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench.leaderboard import build
from bench.leaderboard.schema import load_valid_records

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "leaderboard" / "results"


def _records() -> list[Path]:
    return sorted(RESULTS.rglob("*.json")) if RESULTS.exists() else []


pytestmark = pytest.mark.skipif(not _records(), reason="no committed result records")


def test_every_committed_record_is_valid_and_complete_or_explained() -> None:
    kept, excluded = load_valid_records(RESULTS)
    assert not excluded, [(e.path, e.problems) for e in excluded]
    for path, record in kept:
        assert record.status in ("complete", "failed"), path
        if record.status == "failed":
            assert record.reason, f"{path}: a failed record must say why"
        else:
            assert record.config and record.config_hash and record.data_checksums, path
            assert record.counts.get("samples_sha256"), f"{path}: reproduce needs the samples digest"


def test_committed_board_matches_its_records(tmp_path: Path) -> None:
    board = ROOT / "leaderboard"
    if (board / "analysis.md").exists():
        shutil.copy(board / "analysis.md", tmp_path / "analysis.md")
    paths = build(RESULTS, tmp_path)
    committed = (board / "README.md").read_text(encoding="utf-8")
    assert paths["markdown"].read_text(encoding="utf-8") == committed, (
        "leaderboard/README.md is stale: run `matgenbench leaderboard build` and commit the result"
    )
    assert paths["html"].read_text(encoding="utf-8") == (board / "index.html").read_text(encoding="utf-8")
