"""The tabular track through the stages: a reference row is scored per fold into one record that the schema
accepts, the protocol is named by its folds, and a model of another track is refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from bench.config import compose, config_hash
from bench.tracks import TABULAR, TrackMismatchError, check_track

pytestmark = pytest.mark.usefixtures("one_thread")


def _overrides(tmp: Path, data_dir: Path, *extra: str) -> list[str]:
    return [
        "experiment=steels_yield_augment", f"paths.data_dir={data_dir}", "logger=none",
        f"paths.output_dir={tmp / 'outputs'}", f"paths.results_dir={tmp / 'results'}",
        f"paths.leaderboard_dir={tmp / 'board'}", "record.regenerate_board=false", *extra,
    ]


@pytest.fixture
def steels(data_dir: Path) -> Path:
    if not (data_dir / "matbench_compositions" / "steels_yield.csv").is_file():
        pytest.skip("steels_yield.csv not present in the offline data directory")
    return data_dir


def test_the_experiment_pins_the_protocol() -> None:
    from bench.tabular_stages import regressor_factory, split_protocol

    cfg = compose(["experiment=steels_yield_augment"])
    assert cfg.dataset.track == TABULAR and cfg.dataset.name == "steels_yield"
    info = split_protocol(cfg.dataset)
    assert info["official"] and info["id"] == "kfold5x3-s0_element_fractions"
    assert (info["fold_n_splits"], info["fold_n_repeats"], info["fold_seed"]) == (5, 3, 0)
    capped = split_protocol(compose(["experiment=steels_yield_augment", "dataset.limit_folds=2"]).dataset)
    assert not capped["official"] and capped["id"].endswith("_lf2")
    first, second = regressor_factory(cfg)(), regressor_factory(cfg)()
    assert first is not second and type(first).__name__ == "RandomForestRegressor"
    assert first.get_params()["n_estimators"] == 100 and first.get_params()["random_state"] == 0
    assert list(cfg.tabular.ratios) == [0.5, 1, 2, 4, 8]


def test_a_reference_row_is_scored_per_fold_into_one_record(steels: Path, tmp_path: Path) -> None:
    from bench.leaderboard.schema import validate_record
    from bench.references import score_reference

    cfg = compose(_overrides(tmp_path, steels, "reference=smoter", "seed=0", "dataset.limit_folds=2"))
    record, path = score_reference(cfg)
    assert path is not None and validate_record(json.loads(path.read_text())) == []
    assert (record.model, record.family, record.kind, record.dataset) == ("smoter", "reference", "reference",
                                                                         "steels_yield")
    assert record.config_hash == config_hash(cfg)
    assert record.split["id"] == "steels_yield_augment__kfold5x3-s0_element_fractions_lf2"
    assert record.data_checksums["folds"]["checksum"] == "92909ca89d079658"
    assert record.counts["n_folds"] == 2 and record.counts["n_synthetic_requested"] == 8 * (249 + 249)
    tstr = record.metrics["tab_tstr_mae"]
    assert len(tstr["per_fold"]) == 2 and tstr["value"] == pytest.approx(sum(tstr["per_fold"]) / 2)
    assert tstr["sd"] is not None and tstr["direction"] == "min"
    trtr = record.metrics["tab_trtr_mae"]["value"]
    gain = record.metrics["tab_aug_gain_r1"]
    assert gain["value"] == pytest.approx(trtr - record.metrics["tab_aug_mae_r1"]["value"])
    assert record.metrics["tab_dcr_median"]["reference_value"] > 0
    assert record.metrics["tab_dcr_copies"]["value"] == 0.0  # interpolated rows copy no real row
    assert set(record.metrics["tab_w1"]["columns"]) >= {"Fe", "target"}
    folds = pd.read_csv(path.with_suffix(".folds.csv"))
    assert folds["fold"].tolist() == ["r0f0", "r0f1"]
    assert folds["tab_tstr_mae"].tolist() == pytest.approx(tstr["per_fold"])


def test_the_real_only_row_has_no_synthetic_metrics_and_no_gain(steels: Path, tmp_path: Path) -> None:
    from bench.references import score_reference

    cfg = compose(_overrides(tmp_path, steels, "reference=real_only", "seed=0", "dataset.limit_folds=1"))
    record, _ = score_reference(cfg)
    assert record.metrics["tab_tstr_mae"]["value"] is None
    assert record.metrics["tab_tstr_mae"]["status"] == "not_applicable"
    assert record.metrics["tab_aug_gain_r8"]["value"] == 0.0
    assert record.metrics["tab_aug_mae_r8"]["value"] == record.metrics["tab_trtr_mae"]["value"]


def test_an_unknown_reference_row_and_a_model_of_another_track_are_refused() -> None:
    from bench.tabular_stages import score_reference

    with pytest.raises(ValueError, match="real_only, copy, smoter, gaussian_copula"):
        score_reference(compose(["experiment=steels_yield_augment", "reference=test"]))
    with pytest.raises(TrackMismatchError, match="model comp_vae is a composition model"):
        check_track(compose(["experiment=steels_yield_augment", "model=comp_vae"]))


def test_train_alone_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.cli import main

    where = [f"paths.output_dir={tmp_path / 'out'}", f"paths.results_dir={tmp_path / 'results'}",
             "logger=none", "record.regenerate_board=false"]
    assert main(["train", "experiment=steels_yield_augment", "model=ctgan", *where]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert "TrackMismatchError: the tabular track fits its generator once per fold" in lines[0]
    assert not (tmp_path / "results").exists()


def test_a_tabular_sweep_checks_its_one_composition_file_first(tmp_path: Path) -> None:
    from bench.overrides import check_sweep_data

    missing = check_sweep_data([
        "-m", "experiment=steels_yield_augment", "reference=smoter,copy", f"paths.data_dir={tmp_path}",
        "paths.download=false", f"paths.cache_dir={tmp_path / 'cache'}",
    ])
    assert missing is not None and "needs matbench_compositions/steels_yield.csv (every cell)" in missing
