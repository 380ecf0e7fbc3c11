"""``matgenbench rescore``: records re-scored from the samples shipped beside them, exactly; refusals;
``--write``."""

from __future__ import annotations

import json
import lzma
import shutil
from pathlib import Path

import pytest

from bench.config import compose
from bench.rescore import SHIPPED_SUFFIX, main, rescore_record, shipped_path
from bench.structures_io import read_samples, samples_digest
from tests.conftest import tiny_run

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "model.module.backbone.d_model=16", "model.module.backbone.n_layers=1", "model.module.backbone.n_heads=2"
]


def _tiny(tmp: Path, *extra: str) -> list[str]:
    return tiny_run(tmp, "seed=1", *extra, steps=6, samples=12, sample_batch=5)


@pytest.fixture(scope="module")
def tiny_record(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One complete record of a 6-step VAE on the built-in tiny dataset, as `matgenbench run` writes it."""
    from bench.run import run

    tmp = tmp_path_factory.mktemp("original")
    _, path = run(compose(["model=vae", *TINY, *_tiny(tmp)]))
    assert path is not None
    return path


def _run_samples(record: Path) -> Path:
    """The run directory's samples file of a tiny record (the record names it relative to the output dir)."""
    named = json.loads(record.read_text())["config"]["paths"]["run_dir"]
    return Path(named.replace("<output_dir>", str(record.parents[2] / "outputs"))) / "samples.csv"


def _copy(record: Path, tmp_path: Path) -> Path:
    """The record, its per-structure table and its shipped samples, copied into ``tmp_path``."""
    out = tmp_path / record.name
    for src in (record, record.with_suffix(".samples.csv"), shipped_path(record)):
        shutil.copy(src, tmp_path / src.name)
    return out


def test_the_record_ships_the_samples_it_scored(tiny_record: Path) -> None:
    shipped = shipped_path(tiny_record)
    assert shipped.name.endswith(SHIPPED_SUFFIX) and shipped.is_file()
    record = json.loads(tiny_record.read_text())
    run_samples = _run_samples(tiny_record)
    # byte for byte what was scored, compressed
    assert lzma.decompress(shipped.read_bytes()) == run_samples.read_bytes()
    assert samples_digest(read_samples(shipped)) == record["counts"]["samples_sha256"]


def test_a_record_rescores_exactly(tiny_record: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    copy = _copy(tiny_record, tmp_path)
    before = copy.read_bytes()
    assert main([str(copy)]) == 0
    out = capsys.readouterr().out
    assert "every metric re-scores exactly" in out and "differs" not in out
    assert copy.read_bytes() == before  # without --write nothing is written


def test_a_changed_metric_is_reported_and_written_back(tiny_record: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    copy = _copy(tiny_record, tmp_path)
    data = json.loads(copy.read_text())
    true_valid = data["metrics"]["valid"]["value"]
    data["metrics"]["valid"]["value"] = true_valid + 0.25  # as if the record had been scored by other code
    copy.write_text(json.dumps(data))
    assert main([str(copy)]) == 1
    assert "<- differs" in capsys.readouterr().out
    result = rescore_record(copy, write=True)
    assert not result.exact
    written = json.loads(copy.read_text())
    assert written["metrics"]["valid"]["value"] == true_valid
    assert written["provenance"]["rescored"][-1]["from"] == shipped_path(copy).name
    assert written["config_hash"] == data["config_hash"] and written["cost"] == data["cost"]
    # the decode thresholds belong to the sampling stage (no sidecar beside a shipped file)
    assert data["metric_settings"]["decode"] is not None
    assert written["metric_settings"]["decode"] == data["metric_settings"]["decode"]
    assert rescore_record(copy).exact  # now it re-scores exactly


def test_other_structures_are_refused(tiny_record: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    copy = _copy(tiny_record, tmp_path)
    text = lzma.decompress(shipped_path(copy).read_bytes()).decode()
    lines = text.splitlines(keepends=True)
    # drop the last sample: the digest no longer matches what the record scored
    import csv
    import io

    rows = list(csv.reader(io.StringIO(text)))
    buf = io.StringIO()
    csv.writer(buf).writerows(rows[:-1])
    shipped_path(copy).write_bytes(lzma.compress(buf.getvalue().encode()))
    assert len(lines) > 2
    assert main([str(copy)]) == 2
    err = capsys.readouterr().err
    assert "holds other structures than the record scored" in err


def test_missing_samples_name_the_fix(tiny_record: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    copy = _copy(tiny_record, tmp_path)
    shipped_path(copy).unlink()
    assert main([str(copy)]) == 2
    assert "--samples FILE" in capsys.readouterr().err
    assert main([str(copy), "--samples", str(_run_samples(tiny_record))]) == 0


def test_a_reference_record_is_drawn_again(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.references import score_reference

    _, path = score_reference(compose(["reference=random", *_tiny(tmp_path)]))
    assert path is not None and not shipped_path(path).exists()  # references are not shipped
    assert main([str(path)]) == 0
    assert "every metric re-scores exactly" in capsys.readouterr().out


def _cheapest_committed() -> Path | None:
    found = []
    for record in (REPO_ROOT / "leaderboard" / "results" / "perov_5").glob("*.json"):
        if shipped_path(record).is_file():
            data = json.loads(record.read_text())
            found.append((data["cost"].get("evaluate_seconds") or 1e9, record))
    return min(found)[1] if found else None


# Every metric but those that need structure fingerprints of the whole test split (minutes on a CI machine);
# `matgenbench rescore RECORD` without --metrics checks them all.
CHEAP = ("struct_valid", "comp_valid", "valid", "unique", "novel", "memorized", "wdist_density",
         "wdist_num_elems", "jsd_spacegroup", "jsd_elements")


def test_a_committed_record_rescores_exactly(data_dir: Path, tmp_path: Path) -> None:
    """The board's claim: a committed record's metrics come back from its shipped samples."""
    record = _cheapest_committed()
    if record is None:
        pytest.skip("no committed record with shipped samples")
    result = rescore_record(_copy(record, tmp_path), data_dir=data_dir, metrics=CHEAP)
    assert {c.name for c in result.checks} == set(CHEAP) | {"vun_rate"}
    assert result.exact, [c for c in result.checks if not c.ok]


def test_a_metric_subset_is_named_and_cannot_be_written(tiny_record: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    copy = _copy(tiny_record, tmp_path)
    assert main([str(copy), "--metrics", "valid,unique"]) == 0
    out = capsys.readouterr().out
    assert "not asked for" in out and "every metric re-scores exactly" in out
    assert main([str(copy), "--metrics", "valid", "--write"]) == 2
    assert "drop --metrics" in capsys.readouterr().err
    assert main([str(copy), "--metrics", "nonsense"]) == 2
    assert "do not include nonsense" in capsys.readouterr().err


def test_a_row_capped_split_is_cached_apart_from_the_whole_file(data_dir: Path, tmp_path: Path) -> None:
    """A quick ``dataset.limit_eval`` run must not leave reference statistics that a full evaluation reuses
    (the metric cache is keyed by the reference's checksum)."""
    from bench.evaluate import build_reference

    def reference(*extra: str):  # noqa: ANN202
        cfg = compose(["dataset=perov_5", "dataset.train_split=val", f"paths.data_dir={data_dir}",
                       f"paths.cache_dir={tmp_path}", *extra])
        return build_reference(cfg)[0]

    whole = reference()
    capped = reference("dataset.limit_eval=12", "dataset.limit_train=12")
    assert len(capped.test) == 12 < len(whole.test)
    assert capped.test_checksum != whole.test_checksum and capped.train_checksum != whole.train_checksum
    assert capped.test_checksum.startswith(whole.test_checksum)  # same file, named with its cap
    from bench.metrics import REGISTRY
    from bench.metrics.runner import _reference_checksum

    for name in ("jsd_elements", "wdist_density", "cov_recall"):  # test-only and train+test metrics
        metric = REGISTRY[name]()
        assert _reference_checksum(metric, capped) != _reference_checksum(metric, whole), name
