"""The tabular models and their representation: mode-specific normalisation on columns whose modes are known,
CTGAN's training-by-sampling draws, TVAE's loss, and a model fitted per fold by the tabular stage with
samples of the table's columns whose fractions, once projected, sum to 1. (Training, sampling determinism
and checkpoints are the contract test's: tests/test_models.py -k "ctgan or tvae".)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from bench.datasets.tabular import project_fractions
from bench.datasets.tabular_representation import ModeSpecificNormalizer
from bench.models.tabular.ctgan import CTGAN
from bench.models.tabular.tvae import TVAE

from bench.config import compose

pytestmark = pytest.mark.usefixtures("one_thread")


def _adam(params):  # noqa: ANN001, ANN202
    return torch.optim.Adam(params, lr=1e-3)


def _bimodal(n: int = 400, seed: int = 0) -> np.ndarray:
    """Column 0: two well separated Gaussians (at -10 and +10, sd 1, equal weight); column 1: a constant."""
    rng = np.random.default_rng(seed)
    centre = np.where(rng.random(n) < 0.5, -10.0, 10.0)
    return np.column_stack([centre + rng.normal(size=n), np.full(n, 3.0)])


def test_mode_specific_normalisation_finds_known_modes_and_inverts() -> None:
    rows = _bimodal()
    rep = ModeSpecificNormalizer(max_modes=5, seed=0).fit(rows)
    assert rep.modes == [2, 1]  # two modes kept above the weight threshold; one for the constant column
    col = rep.columns[0]
    found = np.sort(col.means * col.scale + col.mean)
    np.testing.assert_allclose(found, [-10.0, 10.0], atol=0.3)
    # each mode's spread is its Gaussian's (1), not the column's (10); the variational posterior's covariance
    # prior (scikit-learn's default, the column's variance) widens it somewhat, as in CTGAN
    assert np.all((col.stds * col.scale > 0.9) & (col.stds * col.scale < 1.7))
    encoded = rep.encode(rows)["rows"]
    assert encoded.shape == (400, (1 + 2) + (1 + 1))
    # each value draws the mode of its own Gaussian (the other's density is e^-200 smaller)
    mode = encoded[:, 1:3].argmax(dim=1).numpy()
    near = np.argmin(np.abs(found[None, :] - rows[:, :1]), axis=1)
    order = np.argsort(col.means * col.scale + col.mean)
    assert np.array_equal(order[near], mode)
    assert torch.all(encoded[:, 0].abs() <= 0.99)
    np.testing.assert_allclose(rep.decode({"rows": encoded}), rows, atol=1e-4)
    again = ModeSpecificNormalizer.from_state(json.loads(json.dumps(rep.state_dict())))
    np.testing.assert_allclose(again.decode({"rows": encoded}), rows, atol=1e-4)


def _table_batch(n: int = 60, seed: int = 0) -> tuple[ModeSpecificNormalizer, dict[str, torch.Tensor]]:
    rng = np.random.default_rng(seed)
    fractions = rng.dirichlet([3.0, 1.0, 0.5], size=n)
    fractions[rng.random(n) < 0.3, 2] = 0.0
    fractions /= fractions.sum(axis=1, keepdims=True)
    rows = np.column_stack([fractions, 50.0 * fractions[:, 0] + rng.normal(size=n)])
    rep = ModeSpecificNormalizer(max_modes=4, seed=0).fit(rows)
    return rep, rep.encode(rows)


def test_ctgan_training_by_sampling_draws_rows_of_the_drawn_mode_with_log_frequencies() -> None:
    torch.manual_seed(0)
    rep, batch = _table_batch()
    model = CTGAN(_adam, rep.modes, noise_dim=8, generator_dims=[16], critic_dims=[16], pac=2,
                  conditional_columns="modes")
    model.fit_data(batch)
    assert model.cond_dim == sum(rep.modes)
    cond, columns, chosen = model._draw_condition(20000, True, torch.Generator().manual_seed(0))
    assert torch.all(cond.sum(dim=1) == 1)
    # columns uniformly; within a column, modes in proportion to log(1 + count)
    share = torch.bincount(columns, minlength=len(rep.modes)).float() / 20000
    torch.testing.assert_close(share, torch.full((len(rep.modes),), 1 / len(rep.modes)), atol=0.02, rtol=0)
    offset = 0
    for c, k in enumerate(rep.modes):
        counts = model.mode_counts[offset: offset + k]
        expected = torch.log1p(counts) / torch.log1p(counts).sum()
        picked = torch.bincount(chosen[columns == c], minlength=k).float()
        torch.testing.assert_close(picked / picked.sum(), expected, atol=0.03, rtol=0)
        offset += k
    real = model._rows_with(columns[:500], chosen[:500])
    for row, c, m in zip(real, columns[:500], chosen[:500], strict=True):
        start, end = model.mode_spans[int(c)]
        assert int(row[start:end].argmax()) == int(m)  # the drawn row has the drawn mode in that column


def test_ctgan_refuses_a_batch_that_does_not_pack() -> None:
    rep, batch = _table_batch()
    model = CTGAN(_adam, rep.modes, noise_dim=8, generator_dims=[16], critic_dims=[16], pac=7)
    with pytest.raises(ValueError, match="multiple of model.module.pac"):
        model.critic_terms(batch)


def test_tvae_loss_is_the_negative_elbo_by_hand_and_falls() -> None:
    torch.manual_seed(0)
    rep, batch = _table_batch()
    model = TVAE(_adam, rep.modes, latent_dim=4, hidden_dims=[16, 16])
    rows = batch["rows"]
    with torch.no_grad():  # a posterior at 0 of width e^-30: z = 0 up to 1e-13, and the KL known by hand
        model.to_mu.weight.zero_()
        model.to_mu.bias.zero_()
        model.to_logvar.weight.zero_()
        model.to_logvar.bias.fill_(-60.0)
        terms = model.loss(batch)
        raw = model.decode_raw(torch.zeros(len(rows), 4))
    assert float(terms["kl"]) == pytest.approx(0.5 * 4 * (np.exp(-60.0) + 60.0 - 1.0), rel=1e-6)
    sigma = 0.1  # sigma_init
    by_hand = 0.0
    for (start, end), index in zip(model.mode_spans, model.alpha_index, strict=True):
        alpha_bar = torch.tanh(raw[:, index])
        by_hand += (0.5 * ((rows[:, index] - alpha_bar) / sigma) ** 2 + np.log(sigma)
                    + 0.5 * np.log(2 * np.pi)).mean()
        log_p = torch.log_softmax(raw[:, start:end], dim=1)
        by_hand += -(log_p * rows[:, start:end]).sum(dim=1).mean()
    assert float(terms["reconstruction"]) == pytest.approx(float(by_hand), rel=1e-5)

    model = TVAE(_adam, rep.modes, latent_dim=4, hidden_dims=[16, 16])
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        loss = model.loss(batch)["loss"]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 5.0


def test_a_tabular_model_runs_per_fold_and_its_rows_are_compositions(data_dir: Path, tmp_path: Path) -> None:
    """One fold of steels_yield, a few steps: the record is complete, and the model's rows have the table's
    columns; the protocol's projection makes every row's fractions sum to 1."""
    from bench.run import run
    from bench.tabular_stages import ModelGenerator

    if not (data_dir / "matbench_compositions" / "steels_yield.csv").is_file():
        pytest.skip("steels_yield.csv not present in the offline data directory")
    overrides = [
        "experiment=steels_yield_augment", "model=tvae", f"paths.data_dir={data_dir}", "logger=none",
        "dataset.limit_folds=1", "trainer.max_steps=20", "train.batch_size=50", "seed=0",
        "model.module.latent_dim=8", "model.module.hidden_dims=[32,32]", "tabular.ratios=[1]",
        f"paths.output_dir={tmp_path / 'out'}", f"paths.results_dir={tmp_path / 'results'}",
        "record.regenerate_board=false",
    ]
    cfg = compose(overrides)
    record, path = run(cfg)
    assert record.status == "complete" and path is not None and record.family == "vae"
    assert record.cost["folds"][0]["steps"] == 20 and record.metrics["tab_tstr_mae"]["value"] > 0
    assert record.counts["n_synthetic_requested"] == 249

    rows = np.random.default_rng(0).dirichlet(np.ones(4), size=30)
    rows = np.column_stack([rows, rows[:, 0] * 100])
    generator = ModelGenerator(compose(overrides))
    generator.fit(rows, seed=1)
    out = generator.sample(25)
    assert out.shape == (25, 5) and np.isfinite(out).all()
    projected, keep, _ = project_fractions(out, 4)
    np.testing.assert_allclose(projected[:, :4].sum(axis=1), 1.0)
    assert (projected[:, :4] >= 0).all() and keep.all()
    np.testing.assert_array_equal(generator.sample(25), generator.sample(25))  # the fold's sampling seed
