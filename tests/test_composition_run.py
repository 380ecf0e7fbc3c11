"""The composition track through ``matgenbench run``: a composition model trains, samples and is scored into a
complete record on the pinned protocol, its reference rows and the board's composition table come from
records, a model of the other track is refused in one line, the count matrix decodes known batches, and the
baseline's likelihood is the hand-computed one."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from bench.datasets.composition_representation import CompositionCounts
from bench.datasets.compositions import COMPOSITION_REGISTRY
from bench.datasets.representation import DecodeFailure
from bench.models.composition.marginal import CompositionMarginal

from bench.config import compose, config_hash
from bench.metrics.composition_track import COMPOSITION_METRICS
from bench.tracks import TrackMismatchError

pytestmark = pytest.mark.usefixtures("one_thread")

LIMIT_TRAIN, LIMIT_EVAL, SAMPLES = 1500, 200, 40


def _overrides(tmp: Path, data_dir: Path, *extra: str) -> list[str]:
    return [
        "model=comp_marginal", "experiment=mp_e_form_composition", f"paths.data_dir={data_dir}",
        "logger=none",
        f"dataset.limit_train={LIMIT_TRAIN}", f"dataset.limit_eval={LIMIT_EVAL}", "trainer.max_steps=60",
        "train.batch_size=64", f"sample.num_samples={SAMPLES}", "trainer.enable_progress_bar=false",
        f"paths.output_dir={tmp / 'outputs'}", f"paths.results_dir={tmp / 'results'}",
        f"paths.leaderboard_dir={tmp / 'board'}", "record.regenerate_board=false", *extra,
    ]


@pytest.fixture
def mp_e_form(data_dir: Path) -> Path:
    if not (data_dir / "matbench_compositions" / "mp_e_form.csv").is_file():
        pytest.skip("mp_e_form.csv not present in the offline data directory")
    return data_dir


def test_run_writes_a_complete_composition_record_and_the_board_shows_it(
    mp_e_form: Path, tmp_path: Path
) -> None:
    from bench.leaderboard import build, collect
    from bench.leaderboard.schema import validate_record
    from bench.references import score_reference
    from bench.run import run

    cfg = compose(_overrides(tmp_path, mp_e_form, "seed=0"))
    record, path = run(cfg)
    assert record.status == "complete" and path is not None and path.is_file()
    assert validate_record(json.loads(path.read_text())) == []
    assert (record.model, record.family, record.kind) == ("comp_marginal", "baseline", "run")
    assert record.dataset == "mp_e_form"
    assert record.config_hash == config_hash(cfg)

    # every composition metric, with its direction, and the exact likelihood on the encodable test formulas
    assert set(COMPOSITION_METRICS) | {"nll_test"} == set(record.metrics)
    for name in COMPOSITION_METRICS:
        assert record.metrics[name]["direction"] in ("max", "min")
    assert 0.0 <= record.metrics["comp_smact_valid"]["value"] <= 1.0
    nll = record.metrics["nll_test"]
    assert (nll["nll_kind"], nll["nll_unit"], nll["nll_space"]) == ("exact", "nats per composition",
                                                                    "composition_counts")
    assert nll["n_test"] == LIMIT_EVAL and nll["n_scored"] + nll["n_not_encoded"] == LIMIT_EVAL
    assert nll["n_not_encoded"] > 0 and math.isfinite(nll["value"]) and nll["value"] > 0

    # the protocol: the pinned split by its id, the caps, the data file by its checksum
    spec = COMPOSITION_REGISTRY["mp_e_form"]
    assert record.split["track"] == "composition" and record.split["official"] is False
    assert record.split["split_id"] == f"mp_e_form:s0:80-10-10:{spec.split_checksum}"
    assert record.split["id"].startswith("mp_e_form_composition__split-s0-80-10-10_")
    assert record.split["id"].endswith(f"_ltrain-{LIMIT_TRAIN}_leval-{LIMIT_EVAL}_n{SAMPLES}")
    assert record.data_checksums["file"]["sha256"] == spec.sha256
    assert record.data_checksums["split"]["checksum"] == spec.split_checksum

    # one row per requested formula; training formulas the matrix cannot hold are counted with their reason
    counts = record.counts
    assert counts["n_requested"] == counts["n_generated"] == SAMPLES
    assert (counts["n_train"], counts["n_test"]) == (LIMIT_TRAIN, LIMIT_EVAL)
    assert counts["n_train_encoded"] + counts["n_train_skipped"] == LIMIT_TRAIN
    assert counts["n_train_skipped"] > 0
    assert counts["train_skipped_reasons"] == {"more than 8 atoms of one element": counts["n_train_skipped"]}
    samples = Path(cfg.paths.run_dir) / "samples.csv"
    assert len(samples.read_text().strip().splitlines()) == SAMPLES + 1
    assert record.cost["train_steps"] == 60 and record.cost["parameters"] > 0

    # the same samples scored from outside: the dataset's track decides, no model is involved
    external, _ = _evaluate_external(tmp_path, mp_e_form, samples)
    assert external.kind == "external" and "nll_test" not in external.metrics
    for name in COMPOSITION_METRICS:
        assert external.metrics[name]["value"] == record.metrics[name]["value"], name

    # a second seed, and the reference rows, all from records
    run(compose(_overrides(tmp_path, mp_e_form, "seed=1")))
    for kind in ("test", "val", "random"):
        ref, _ = score_reference(compose(_overrides(tmp_path, mp_e_form, f"reference={kind}")))
        assert ref.kind == "reference" and ref.counts["n_requested"] == SAMPLES
    board = collect(tmp_path / "results")
    rows = {(r.model, r.kind): r for r in board.own_rows("mp_e_form")}
    assert set(rows) == {("comp_marginal", "run"), ("comp_marginal", "external"), ("Test", "reference"),
                         ("Val", "reference"), ("Random", "reference")}
    marginal = rows["comp_marginal", "run"]
    assert marginal.track == "composition" and marginal.seeds == (0, 1)
    summary = marginal.metrics["comp_magpie_fd"]
    assert summary.n == 2 and summary.ci is not None and summary.ci[0] <= summary.mean <= summary.ci[1]
    assert rows["Test", "reference"].metrics["comp_novel"].mean == 1.0  # test formulas are never trained on

    out = build(tmp_path / "results", tmp_path / "board")
    markdown = out["markdown"].read_text()
    assert "## mp_e_form (composition track)" in markdown
    table = markdown.split("## mp_e_form (composition track)")[1]
    for text in ("comp_vun_rate ↑", "comp_magpie_fd ↓", "nll_test ↓", "*Test (a draw of the test split",
                 "*Val (a draw of the validation split", "*Random (random compositions",
                 "| comp_marginal (comp-marginal) | baseline |"):
        assert text in table, text
    html = out["html"].read_text()
    assert "mp_e_form (composition track)" in html and "comp_vun_rate" in html

    from rich.console import Console

    from bench.leaderboard import show

    console = Console(record=True, width=240)
    show(tmp_path / "results", dataset="mp_e_form", console=console)
    text = console.export_text()
    assert "mp_e_form (composition track)" in text
    for name in ("comp_smact_valid", "comp_vun_rate", "comp_magpie_fd", "Test (ref)", "Val (ref)",
                 "Random (ref)"):
        assert name in text, name


def _evaluate_external(tmp: Path, data_dir: Path, samples: Path):  # noqa: ANN202
    from bench.evaluate import evaluate

    cfg = compose([*_overrides(tmp, data_dir), f"samples={samples}", "model=vae"])  # any model: not used
    return evaluate(cfg)


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        (["model=comp_marginal", "dataset=perov_5"],
         ("model comp_marginal is a composition model", "dataset perov_5 is a crystal dataset",
          "choose a composition dataset (e.g. dataset=mp_e_form)", "a crystal model")),
        (["model=vae", "experiment=mp_e_form_composition"],
         ("model vae is a crystal model", "dataset mp_e_form is a composition dataset",
          "choose a crystal dataset (e.g. dataset=perov_5)", "track: composition, e.g. model=comp_marginal")),
    ],
)
def test_a_model_of_the_other_track_is_refused_in_one_line(
    overrides: list[str], names: tuple[str, ...], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.cli import main
    from bench.evaluate import evaluate
    from bench.run import run
    from bench.sample import sample
    from bench.train import train

    where = [f"paths.output_dir={tmp_path / 'out'}", f"paths.results_dir={tmp_path / 'results'}",
             "logger=none"]
    cfg = compose([*overrides, *where])
    for stage in (train, sample, evaluate, run):
        with pytest.raises(TrackMismatchError) as err:
            stage(cfg)
        message = str(err.value)
        assert "\n" not in message
        for text in names:
            assert text in message, (stage.__name__, text)
    assert not (tmp_path / "results").exists()  # refused before anything ran: no failed record either

    assert main(["train", *overrides, *where]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("matgenbench train: TrackMismatchError: model ")


def test_an_unknown_track_is_refused() -> None:
    from bench.tracks import check_track

    with pytest.raises(TrackMismatchError, match=r"model.track=crystals: no such track; the tracks are"):
        check_track(compose(["model=vae", "+model.track=crystals"]))


def test_the_count_matrix_decodes_a_known_batch_to_known_formulas() -> None:
    counts = CompositionCounts(elements=["O", "Na", "Cl", "Fe"])  # by atomic number: O, Na, Cl, Fe
    assert counts.sizes() == {"num_elements": 4, "num_levels": 9}
    levels = torch.tensor([
        [0, 1, 1, 0],  # NaCl
        [3, 0, 0, 2],  # Fe2O3
        [0, 2, 2, 0],  # Na2Cl2, reduced to NaCl
        [0, 0, 0, 0],  # nothing present
        [0, 0, 0, 8],  # Fe8, reduced to Fe
    ])
    batch = {"counts": torch.nn.functional.one_hot(levels, 9).float()}
    decoded = counts.decode(batch)
    assert decoded[:3] == ["NaCl", "Fe2O3", "NaCl"] and decoded[4] == "Fe"
    assert isinstance(decoded[3], DecodeFailure) and "no element present" in decoded[3].reason
    # scores decode by their argmax over the levels, whatever their scale
    logits = torch.full((1, 4, 9), -3.0)
    logits[0, :, 0] = 1.0
    logits[0, 0, 1], logits[0, 3, 1] = 2.0, 5.0  # O and Fe at level 1
    assert counts.decode({"counts": logits}) == ["FeO"]
    # encoding is the inverse on what the matrix holds, and says why it holds no more
    expected = torch.nn.functional.one_hot(torch.tensor([[0, 1, 1, 0], [3, 0, 0, 2], [0, 0, 0, 1]]), 9)
    expected = expected.float()
    torch.testing.assert_close(counts.encode(["NaCl", "Fe2O3", "Fe"])["counts"], expected)
    assert counts.skip_reason("Fe9O") == "more than 8 atoms of one element"
    assert counts.skip_reason("KCl") == "an element outside the training vocabulary"
    assert counts.skip_reason("Fe0.5O0.7") == "a fractional amount"


# NaCl, Na2O, Cl2O over the vocabulary (O, Na, Cl): levels O (0, 1, 1), Na (1, 2, 0), Cl (1, 0, 2)
THREE = ["NaCl", "Na2O", "Cl2O"]


def _marginal(pseudo_count: float) -> tuple[CompositionMarginal, dict[str, torch.Tensor]]:
    representation = CompositionCounts().fit(THREE)
    assert representation.vocabulary.symbols == ("O", "Na", "Cl")
    model = CompositionMarginal(lambda params: torch.optim.Adam(params, lr=0.05), **representation.sizes(),
                                pseudo_count=pseudo_count)
    batch = representation.encode(THREE)
    model.fit_data(batch)
    return model, batch


def test_marginal_nll_is_the_hand_computed_value_on_three_formulas() -> None:
    model, batch = _marginal(pseudo_count=0.0)
    # maximum likelihood: O absent 1/3, O x1 2/3; Na and Cl each 1/3 at levels 0, 1, 2
    expected = torch.zeros(3, 9, dtype=torch.float64)
    expected[0, 0], expected[0, 1] = 1 / 3, 2 / 3
    expected[1:, :3] = 1 / 3
    estimate = CompositionMarginal.estimate(batch["counts"], 0.0)
    torch.testing.assert_close(estimate, expected)
    with torch.no_grad():
        model.logits.copy_(torch.log(estimate.clamp_min(1e-30)).float())
    nll = model.test_nll(batch)
    ln3, ln15 = math.log(3.0), math.log(1.5)
    expected_each = torch.tensor([3 * ln3, ln15 + 2 * ln3, ln15 + 2 * ln3], dtype=torch.float64)
    torch.testing.assert_close(nll, expected_each)
    assert float(model.loss(batch)["nll"]) == pytest.approx((7 * ln3 + 2 * ln15) / 3, rel=1e-6)


def test_marginal_training_reaches_the_smoothed_estimate() -> None:
    """The loss's minimiser is (n + a) / (N + L a): with a = 0.5, N = 3, L = 9 every count of one is 1.5 / 7.5
    = 0.2 and O's level 1 (seen twice) is 2.5 / 7.5 = 1/3, so the mean NLL is (7 ln 5 + 2 ln 3) / 3."""
    torch.manual_seed(0)
    model, batch = _marginal(pseudo_count=0.5)
    optimizer = model.configure_optimizers()
    for _ in range(1500):
        optimizer.zero_grad()
        model.loss(batch)["loss"].backward()
        optimizer.step()
    target = CompositionMarginal.estimate(batch["counts"], 0.5)
    assert float(target[0, 1]) == pytest.approx(1 / 3) and float(target[1, 0]) == pytest.approx(0.2)
    torch.testing.assert_close(model.log_probs().exp().double(), target, atol=2e-3, rtol=0)
    expected = (7 * math.log(5.0) + 2 * math.log(3.0)) / 3
    assert float(model.test_nll(batch).mean()) == pytest.approx(expected, abs=1e-3)


def test_marginal_samples_each_element_independently() -> None:
    model, batch = _marginal(pseudo_count=0.0)
    with torch.no_grad():
        estimate = CompositionMarginal.estimate(batch["counts"], 0.0)
        model.logits.copy_(torch.log(estimate.clamp_min(1e-30)).float())
    draws = model.sample(20_000, generator=torch.Generator().manual_seed(0))["counts"].argmax(-1)
    o_present, na_present = (draws[:, 0] > 0).double(), (draws[:, 1] > 0).double()
    assert float(o_present.mean()) == pytest.approx(2 / 3, abs=0.015)
    assert float(na_present.mean()) == pytest.approx(2 / 3, abs=0.015)
    assert float((draws[:, 1] == 2).double().mean()) == pytest.approx(1 / 3, abs=0.015)
    assert float((o_present * na_present).mean()) == pytest.approx(4 / 9, abs=0.015)  # independent
    assert not (draws > 2).any()  # levels never seen have probability 0 under the maximum-likelihood fit
    again = model.sample(50, generator=torch.Generator().manual_seed(0))["counts"]
    torch.testing.assert_close(again, model.sample(50, generator=torch.Generator().manual_seed(0))["counts"])


def test_formula_samples_round_trip_with_their_failures(tmp_path: Path) -> None:
    from bench.composition_stages import read_formula_samples, write_formula_samples

    items = ["NaCl", DecodeFailure("no element present in the count matrix", index=1), "Fe2O3"]
    path = write_formula_samples(tmp_path / "samples.csv", items, meta={"model": "m", "nfe": 1})
    read = read_formula_samples(path)
    assert read.formulas == ["NaCl", None, "Fe2O3"] and read.ids == ["0", "1", "2"]
    assert read.reasons == [None, "no element present in the count matrix", None]
    assert read.meta == {"model": "m", "nfe": 1} and read.n_decoded == 2
    other = tmp_path / "theirs.csv"
    other.write_text("formula\nKCl\n\nMgO\n")
    assert read_formula_samples(other).formulas == ["KCl", None, "MgO"]
