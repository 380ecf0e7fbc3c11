"""The test-split likelihood (``nll_test``), on inputs with an independently known answer.

- flows: the reported NLL is ``-log p`` of the dequantised batch, computed directly from the flow's
  log-density with the same noise; a NICE whose density is a known diagonal Gaussian reports the closed-form
  expectation over the dequantisation noise, whose lattice part is the entropy of the (smoothed) data
  Gaussian it matches;
- VAE: the importance-weighted bound equals ``-log p(x)`` exactly when the proposal is the true posterior of
  a linear-Gaussian model, approaches it as k grows otherwise; the wrapped normal integrates to one; on a
  trained crystal VAE the negative ELBO >= the reported k = 16 bound >= a k = 1024 estimate; the fitted
  decoder scale is the root mean squared reconstruction error;
- crystal_gpt: a decoder with uniform next-token probabilities has NLL ``(tokens scored) log V``; the value
  is the loss's per-crystal NLL in eval mode, and its space is not the codec's;
- the evaluate stage writes ``nll_test`` for a tiny flow run (equal to a direct recomputation from the
  checkpoint) and none for a diffusion run; rescoring keeps it; the board shows it, ranks it only within one
  space, and renders records without it.
"""

from __future__ import annotations

import csv
import functools
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from bench.models.autoregressive.gpt import CrystalGPT
from bench.models.autoregressive.sampling import TokenSampler
from bench.models.backbone import CrystalTransformer
from bench.models.base import CODEC_SPACE, GenerativeModule
from bench.models.flow.glow import CrystalGlow
from bench.models.flow.nice import CrystalNICE
from bench.models.flow.realnvp import CrystalRealNVP
from bench.models.vae.latents import DiagonalGaussian
from bench.models.vae.vae import CrystalVAE, importance_weighted_nll, wrapped_normal_log_density
from rich.console import Console

from bench.config import compose
from bench.io_utils import atomic_write_json, read_json
from bench.leaderboard import board_from_records, render_markdown
from bench.leaderboard.board import Board
from bench.leaderboard.html import render_html
from bench.leaderboard.terminal import board_tables, sorted_rows
from bench.records import ResultRecord
from tests.conftest import TINY_TRANSFORMER, tiny_run

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_TYPES, MAX_ATOMS = 3, 3
ADAM = functools.partial(torch.optim.Adam, lr=3e-3)
BACKBONE = functools.partial(CrystalTransformer, d_model=16, n_layers=1, n_heads=2)


def crystals(n: int, seed: int, max_atoms: int = MAX_ATOMS) -> dict[str, torch.Tensor]:
    """Codec-like batches: 1..N filled slots (filled first), types and coordinates that depend on each other,
    a lattice that depends on the atom count."""
    g = torch.Generator().manual_seed(seed)
    n_atoms = torch.randint(1, max_atoms + 1, (n,), generator=g)
    filled = (torch.arange(max_atoms) < n_atoms[:, None]).float()
    types = torch.randint(1, NUM_TYPES, (n, max_atoms), generator=g) * filled.long()
    jitter = 0.05 * torch.randn(n, max_atoms, 3, generator=g)
    frac = torch.remainder(0.25 * types.unsqueeze(-1).float() + jitter, 1.0) * filled.unsqueeze(-1)
    lattice = 0.5 * torch.randn(n, 6, generator=g) + 0.5 * n_atoms[:, None].float()
    return {
        "atom_types": torch.nn.functional.one_hot(types, NUM_TYPES).float(),
        "frac_coords": frac,
        "lattice": lattice,
        "mask": filled,
    }


def _flow(name: str) -> GenerativeModule:
    torch.manual_seed(0)
    if name == "realnvp":
        model = CrystalRealNVP(BACKBONE, ADAM, NUM_TYPES, MAX_ATOMS, n_couplings=2, continuous_noise=0.05)
    elif name == "nice":
        model = CrystalNICE(BACKBONE, ADAM, NUM_TYPES, MAX_ATOMS, n_couplings=2, continuous_noise=0.05)
    else:
        model = CrystalGlow(BACKBONE, ADAM, NUM_TYPES, MAX_ATOMS, n_steps=2, continuous_noise=0.05)
        model.train()
        model.log_prob(model.dequantise(crystals(64, 9)))  # actnorm's data-dependent initialisation
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # away from the identity the couplings start at
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


# ---------------------------------------------------------------------- flows
@pytest.mark.parametrize("name", ["realnvp", "nice", "glow"])
def test_flow_nll_is_minus_its_log_density_of_the_same_dequantised_batch(name: str) -> None:
    model = _flow(name)
    batch = crystals(16, 2)
    spec = model.likelihood_spec()
    assert spec is not None and spec.kind == "upper_bound" and spec.estimator == "dequantised"
    assert model.nll_space() == CODEC_SPACE
    with torch.no_grad():
        reported = model.test_nll(batch, draws=3, generator=torch.Generator().manual_seed(5))
        g = torch.Generator().manual_seed(5)
        direct = [-model.log_prob(model.dequantise(batch, g)) for _ in range(3)]
    assert reported.shape == (16,)
    torch.testing.assert_close(reported, torch.stack(direct).mean(0).double(), rtol=1e-6, atol=1e-5)
    # the training objective is the same quantity per dimension
    torch.manual_seed(7)
    with torch.no_grad():
        loss = model.loss(batch)["loss"]
    torch.manual_seed(7)
    with torch.no_grad():
        direct_loss = float(-model.log_prob(model.dequantise(batch)).mean())
    assert float(loss) * model.dims == pytest.approx(direct_loss, rel=1e-6)


def test_flow_with_a_known_gaussian_density_reports_the_closed_form_value_and_the_data_entropy() -> None:
    """NICE with identity couplings (zero-initialised coupling functions) and scaling ``exp(s)``: its density
    is ``N(0, exp(-2 s))`` per channel, so the expected ``-log p`` over data and dequantisation noise is
    ``sum_i [log(2 pi v_i) / 2 + E x_i^2 / (2 v_i)]`` with ``E x^2``: ``onehot^2 + 1/12`` for a type channel,
    ``(f - 1/2)^2 + noise^2`` for a filled slot's coordinate, ``1/12`` for an empty slot's, and
    ``tau^2 + noise^2`` for a lattice parameter drawn from ``N(0, tau^2)``. The lattice scaling is set to that
    variance, so there the flow's density is exactly the smoothed data Gaussian and its part of the NLL is the
    Gaussian's entropy ``log(2 pi e (tau^2 + noise^2)) / 2`` per parameter."""
    noise, tau, n = 0.1, 0.7, 20_000
    torch.manual_seed(0)
    model = CrystalNICE(BACKBONE, ADAM, NUM_TYPES, 2, n_couplings=2, continuous_noise=noise).eval()
    g = torch.Generator().manual_seed(3)
    scales = {k: 0.5 * torch.randn(p.shape, generator=g) for k, p in model.scaling.log_scale.items()}
    scales["lattice"] = torch.full((6,), -0.5 * math.log(tau**2 + noise**2))
    with torch.no_grad():
        for key, value in scales.items():
            model.scaling.log_scale[key].copy_(value)
    # every crystal: slot 0 holds element 2 at fixed coordinates, slot 1 is empty; the lattice is Gaussian
    f = torch.tensor([0.1, 0.5, 0.8])
    types = torch.zeros(n, 2, NUM_TYPES)
    types[:, 0, 2] = 1.0
    types[:, 1, 0] = 1.0
    frac = torch.zeros(n, 2, 3)
    frac[:, 0] = f
    lattice = tau * torch.randn(n, 6, generator=torch.Generator().manual_seed(4))
    batch = {"atom_types": types, "frac_coords": frac, "lattice": lattice, "mask": types[..., 1:].sum(-1)}
    with torch.no_grad():
        reported = model.test_nll(batch, draws=2, generator=torch.Generator().manual_seed(5))

    def part(second_moment: torch.Tensor, log_scale: torch.Tensor) -> float:
        variance = torch.exp(-2.0 * log_scale)
        return float((0.5 * torch.log(2 * math.pi * variance) + second_moment / (2 * variance)).sum())

    s = scales
    expected = part(types[0] ** 2 + 1.0 / 12.0, s["atom_types"].expand(2, NUM_TYPES))
    expected += part((f - 0.5) ** 2 + noise**2, s["frac_coords"])  # the filled slot
    expected += part(torch.full((3,), 1.0 / 12.0), s["frac_coords"])  # the empty slot
    entropy = 3.0 * math.log(2 * math.pi * math.e * (tau**2 + noise**2))  # six parameters, half each
    assert part(torch.full((6,), tau**2 + noise**2), s["lattice"]) == pytest.approx(entropy, rel=1e-6)
    expected += entropy
    error = float(reported.std()) / math.sqrt(n)
    assert abs(float(reported.mean()) - expected) < 4.0 * error, (float(reported.mean()), expected, error)
    assert error < 0.02  # the check is sharp: a missing 1/12 or noise^2 term moves the mean by more


# ---------------------------------------------------------------------- VAE
def test_importance_weighted_bound_on_a_linear_gaussian_model() -> None:
    """z ~ N(0, 1), x | z ~ N(a z, s^2): p(x) = N(0, a^2 + s^2) and the posterior is Gaussian in closed form.
    With the true posterior as proposal every weight is p(x), so any k gives -log p(x) exactly; with a wrong
    proposal, k = 1 (the ELBO) lies clearly above it and k = 20,000 within Monte Carlo error of it."""
    a, s, x = 1.5, 0.5, torch.tensor([-1.0, 0.3, 2.0], dtype=torch.float64)
    exact = -torch.distributions.Normal(0.0, math.sqrt(a**2 + s**2)).log_prob(x)

    def log_weights(mean: torch.Tensor, std: torch.Tensor, k: int, seed: int) -> torch.Tensor:
        z = mean + std * torch.randn(k, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        log_joint = (torch.distributions.Normal(a * z, s).log_prob(x) + torch.distributions.Normal(0.0, 1.0)
                     .log_prob(z))
        return log_joint - torch.distributions.Normal(mean, std).log_prob(z)

    post_var = 1.0 / (1.0 + a**2 / s**2)
    post_mean = post_var * a * x / s**2
    post_std = torch.full((3,), math.sqrt(post_var))
    for k in (1, 7):
        torch.testing.assert_close(importance_weighted_nll(log_weights(post_mean, post_std, k, 0)), exact)
    wrong_mean, wrong_std = post_mean + 0.3, 1.5 * post_std
    elbo = -log_weights(wrong_mean, wrong_std, 4000, 1).mean(0)  # k = 1, averaged over 4,000 draws
    tight = importance_weighted_nll(log_weights(wrong_mean, wrong_std, 200_000, 2))
    assert bool((elbo > exact + 0.5).all())  # about 0.66 nats above
    torch.testing.assert_close(tight, exact, atol=0.01, rtol=0)  # Monte Carlo error about 0.003


@pytest.mark.parametrize("sigma", [0.02, 0.1, 0.3, 0.45])
def test_wrapped_normal_integrates_to_one_and_is_periodic(sigma: float) -> None:
    grid = (torch.arange(200_000, dtype=torch.float64) + 0.5) / 200_000 - 0.5
    density = wrapped_normal_log_density(grid, sigma).exp()
    assert float(density.mean()) == pytest.approx(1.0, abs=1e-9)
    torch.testing.assert_close(wrapped_normal_log_density(grid + 3.0, sigma),
                               wrapped_normal_log_density(grid, sigma))
    if sigma <= 0.1:  # far from the wrap, the normal itself
        near = grid[grid.abs() < 0.1]
        torch.testing.assert_close(wrapped_normal_log_density(near, sigma),
                                   torch.distributions.Normal(0.0, sigma).log_prob(near))


@pytest.fixture(scope="module")
def trained_vae() -> CrystalVAE:
    """A small crystal VAE after 150 Adam steps (KL weight 0.01, so its latent carries information)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = CrystalVAE(BACKBONE, ADAM, NUM_TYPES, MAX_ATOMS, latent_dim=4, beta=0.01)
    optimizer = model.build_optimizer(model.parameters())
    train = crystals(512, 1)
    g = torch.Generator().manual_seed(2)
    for _ in range(150):
        idx = torch.randint(0, 512, (64,), generator=g)
        loss = model.loss({k: v[idx] for k, v in train.items()})["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    model.fit_likelihood(train, torch.Generator().manual_seed(0))
    torch.set_num_threads(previous)
    return model


def test_vae_reported_bound_lies_above_a_tighter_importance_weighted_one(trained_vae: CrystalVAE) -> None:
    """Burda et al.'s bounds tighten with k in expectation: negative ELBO >= k = 16 (reported) >= k = 1024
    (here 7.5, 6.1 and 5.3 nats; the Monte Carlo error of each mean is below 0.05)."""
    test = crystals(128, 3)
    spec = trained_vae.likelihood_spec()
    assert spec is not None and spec.kind == "upper_bound" and spec.estimator == "iwae"
    reported = trained_vae.test_nll(test, 16, torch.Generator().manual_seed(4))
    tighter = trained_vae.test_nll(test, 1024, torch.Generator().manual_seed(5))
    elbo = trained_vae.negative_elbo(test, 16, torch.Generator().manual_seed(6))
    assert float(elbo.mean()) > float(reported.mean()) + 0.5
    assert float(reported.mean()) > float(tighter.mean()) + 0.3
    # one draw: the importance weight's estimate is the one-sample negative ELBO of the same draw
    one = trained_vae.test_nll(test, 1, torch.Generator().manual_seed(7))
    same = trained_vae.log_importance_weights(test, 1, torch.Generator().manual_seed(7))[0]
    torch.testing.assert_close(one, -same)


def test_vae_decoder_scale_is_the_rms_reconstruction_error(trained_vae: CrystalVAE) -> None:
    train = crystals(200, 8)
    fitted = trained_vae.fit_likelihood(train, torch.Generator().manual_seed(1))
    with torch.no_grad():
        mu, logvar = trained_vae.encode(train)
        z = mu + torch.randn(mu.shape, generator=torch.Generator().manual_seed(1)) * torch.exp(0.5 * logvar)
        recon = trained_vae.decode(z)
    filled = train["mask"].bool()
    d = recon["frac_coords"] - train["frac_coords"]
    d = (d - torch.round(d))[filled]
    assert fitted["decoder_sigma_frac_coords"] == pytest.approx(float(d.pow(2).mean().sqrt()), rel=1e-5)
    rms = (recon["lattice"] - train["lattice"]).pow(2).mean(0).sqrt()
    assert fitted["decoder_sigma_lattice"] == pytest.approx(rms.tolist(), rel=1e-5)
    # and the lattice term of log p(x | z) is the normal's with that scale
    sigma = torch.tensor(fitted["decoder_sigma_lattice"])
    whole = trained_vae.observation_log_prob(recon, train)
    normal = torch.distributions.Normal(recon["lattice"], sigma).log_prob(train["lattice"]).sum(-1)
    target = train["atom_types"].argmax(-1, keepdim=True)
    types = torch.log_softmax(recon["atom_types"], -1).gather(-1, target)
    coords = (wrapped_normal_log_density(recon["frac_coords"] - train["frac_coords"],
                                         fitted["decoder_sigma_frac_coords"]).sum(-1) * train["mask"]).sum(-1)
    torch.testing.assert_close(whole, normal + types.squeeze(-1).sum(-1) + coords, rtol=1e-5, atol=1e-4)


def test_vae_variants_without_this_bound_declare_none() -> None:
    torch.manual_seed(0)
    other = CrystalVAE(BACKBONE, ADAM, NUM_TYPES, MAX_ATOMS, latent_dim=4, latent=DiagonalGaussian(4))
    assert other.likelihood_spec() is None
    with pytest.raises(RuntimeError, match="fit_likelihood"):
        CrystalVAE(BACKBONE, ADAM, NUM_TYPES, MAX_ATOMS, latent_dim=4).test_nll(crystals(2, 0))


# ---------------------------------------------------------------------- crystal_gpt
def _gpt() -> CrystalGPT:
    torch.manual_seed(0)
    return CrystalGPT(ADAM, TokenSampler(), NUM_TYPES, MAX_ATOMS, d_model=16, n_layers=1, n_heads=2,
                      dropout=0.1).eval()


def test_crystal_gpt_nll_of_a_uniform_decoder_is_tokens_times_log_vocabulary() -> None:
    model = _gpt()
    batch = crystals(8, 4)
    with torch.no_grad():
        model.net.token_embedding.weight.zero_()  # the tied output layer: every logit 0
    tokens = model.tokens_of(batch)
    scored = (tokens[:, 1:] != 0).sum(1).double()
    torch.testing.assert_close(model.test_nll(batch), scored * math.log(model.tokenizer.vocab_size))
    spec = model.likelihood_spec()
    assert spec is not None and spec.kind == "exact"


def test_crystal_gpt_nll_is_its_loss_per_crystal_and_lives_in_its_own_space() -> None:
    model = _gpt()
    batch = crystals(8, 5)
    nll = model.test_nll(batch)
    with torch.no_grad():
        assert float(nll.mean()) == pytest.approx(float(model.loss(batch)["nll_crystal"]), rel=1e-6)
    assert model.nll_space() != CODEC_SPACE and "coord_bins=100" in model.nll_space()


# ---------------------------------------------------------------------- the evaluate stage
TINY = list(TINY_TRANSFORMER)


def _cfg(tmp_path: Path, *overrides: str):
    return compose(tiny_run(tmp_path, *TINY, *overrides, steps=6, samples=12, sample_batch=5))


def test_evaluate_records_the_test_nll_of_a_flow_run_and_rescoring_keeps_it(tmp_path: Path) -> None:
    from bench.likelihood import NLL_DEFAULTS
    from bench.rescore import rescore_vun_record
    from bench.run import run
    from bench.rundirs import find_trained_run
    from bench.runtime import load_dataset_split
    from bench.train import load_trained

    cfg = _cfg(tmp_path, "model=realnvp")
    record, path = run(cfg)
    entry = record.metrics["nll_test"]
    kind = (entry["direction"], entry["nll_kind"], entry["nll_estimator"])
    assert kind == ("min", "upper_bound", "dequantised")
    unit = (entry["nll_unit"], entry["nll_space"], entry["version"])
    assert unit == ("nats per crystal", CODEC_SPACE, "1.0")
    assert (entry["draws"], entry["seed"]) == (NLL_DEFAULTS["draws"], NLL_DEFAULTS["seed"])
    assert entry["dequantisation_noise"] == cfg.model.module.continuous_noise
    # recomputed here: the run's checkpoint and codec, the test split, the encodable crystals, the same seed
    module, codec, _ = load_trained(find_trained_run(cfg))
    test = load_dataset_split(cfg, cfg.dataset.eval_split).structures
    kept = [s for s in test if codec.can_encode(s)]
    assert (entry["n_test"], entry["n_scored"], entry["n_not_encoded"]) == (len(test), len(kept),
                                                                             len(test) - len(kept))
    assert kept, "the tiny test split has an encodable crystal"
    with torch.no_grad():
        direct = module.test_nll(codec.encode(kept), NLL_DEFAULTS["draws"], torch.Generator().manual_seed(0))
    assert entry["value"] == pytest.approx(float(direct.mean()), rel=1e-9)
    assert read_json(path)["metrics"]["nll_test"]["value"] == pytest.approx(entry["value"], rel=1e-12)

    # rescoring vun_rate leaves the NLL entry as it was
    table = path.with_suffix(".samples.csv")
    with open(table, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 12
    before = read_json(path)["metrics"]["nll_test"]
    assert rescore_vun_record(path).after is not None
    assert read_json(path)["metrics"]["nll_test"] == before


def test_evaluate_leaves_the_nll_out_for_a_model_without_a_likelihood(tmp_path: Path) -> None:
    from bench.run import run

    record, path = run(_cfg(tmp_path, "model=ddpm", "model.module.sampler.steps=5"))
    assert "nll_test" not in record.metrics and "nll_test" not in read_json(path)["metrics"]
    assert record.metrics["valid"]["direction"] == "max"


def test_nll_settings_are_checked_and_can_switch_it_off(tmp_path: Path) -> None:
    from bench.likelihood import likelihood_entry, nll_settings

    assert nll_settings(_cfg(tmp_path, "model=realnvp", "+evaluate.nll.draws=4"))["draws"] == 4
    with pytest.raises(ValueError, match=r"evaluate.nll.draws=0: must be >= 1"):
        nll_settings(_cfg(tmp_path, "model=realnvp", "+evaluate.nll.draws=0"))
    with pytest.raises(ValueError, match=r"evaluate.nll.drawz: unknown setting"):
        nll_settings(_cfg(tmp_path, "model=realnvp", "+evaluate.nll.drawz=4"))
    off = _cfg(tmp_path, "model=realnvp", "+evaluate.nll.enabled=false")
    assert likelihood_entry(off, tmp_path / "no_run_here", [], []) is None  # nothing is loaded


def test_rescore_runs_on_records_without_the_key(tmp_path: Path) -> None:
    from bench.rescore import rescore_vun_record

    path = tmp_path / "r.json"
    atomic_write_json(path, {"status": "complete", "counts": {"n_requested": 2}, "metrics": {}})
    with open(path.with_suffix(".samples.csv"), "w", newline="") as handle:
        handle.write("valid,unique,novel\nTrue,True,True\nTrue,False,True\n")
    assert rescore_vun_record(path).after == pytest.approx(0.5)
    assert set(read_json(path)["metrics"]) == {"vun_rate"}


# ---------------------------------------------------------------------- the board
def _entry(value: float, space: str = CODEC_SPACE, digest: str = "abc") -> dict[str, Any]:
    return {"value": value, "direction": "min", "version": "1.0", "description": "test NLL",
            "nll_kind": "upper_bound", "nll_unit": "nats per crystal", "nll_space": space,
            "representation_sha256": digest}


def _record(model: str, seed: int, nll: dict[str, Any] | None) -> ResultRecord:
    metrics = {"valid": {"value": 0.9, "direction": "max", "version": "1.0", "description": "v"}}
    if nll is not None:
        metrics["nll_test"] = nll
    return ResultRecord(
        model=model, family="flow", variant=model, dataset="perov_5", split_protocol="official",
        split={"train": "train", "eval": "test", "official": True, "label": "official", "id": "official"},
        seed=seed, metrics=metrics, cost={"train_seconds": 10.0, "samples_per_second": 5.0, "parameters": 10},
        config_hash=f"{model}{seed}".ljust(8, "0"),
    )


TOKENS = "crystal_tokens(lattice_bins=201,lattice_range=5,coord_bins=100)"


def _board_records() -> list[ResultRecord]:
    """realnvp clearly best among codec-space NLLs; crystal_gpt lower still, but in token space; ddpm none."""
    return [
        *[_record("realnvp", s, _entry(v)) for s, v in enumerate((10.0, 10.2, 10.1))],
        *[_record("vae", s, _entry(v)) for s, v in enumerate((20.0, 20.3, 20.1))],
        *[_record("crystal_gpt", s, _entry(v, TOKENS, "tok")) for s, v in enumerate((3.0, 3.1, 3.2))],
        *[_record("ddpm", s, None) for s in range(3)],
    ]


def test_board_shows_the_nll_ranks_it_within_one_space_and_renders_rows_without_it() -> None:
    board = board_from_records(_board_records(), published=False, n_resamples=200)
    rows = {r.model: r for r in board.rows}
    assert rows["crystal_gpt"].metrics["nll_test"].space_label == TOKENS
    assert "nll_test" not in rows["ddpm"].metrics

    markdown = render_markdown(_board_records(), published=False)
    header = next(line for line in markdown.splitlines() if line.startswith("| model"))
    assert "nll_test ↓" in header
    line = {m: next(li for li in markdown.splitlines() if li.startswith(f"| {m} |")) for m in rows}
    column = header.split(" | ").index("nll_test ↓")
    cell = {m: text.split(" | ")[column] for m, text in line.items()}
    assert cell["realnvp"].startswith("**10.1")  # the lead over vae holds
    assert not cell["crystal_gpt"].startswith("**") and "another space, not ranked" in cell["crystal_gpt"]
    assert cell["ddpm"] == "–"

    table = next(t for t in board_tables(board, "perov_5", metrics=["nll_test"]))
    console = Console(record=True, width=200)
    console.print(table)
    text = console.export_text()
    assert "(crystal_tokens)" in text and "–" in text
    ordered = sorted_rows(board.own_rows("perov_5"), "nll_test", "min")
    assert [r.model for r in ordered] == ["realnvp", "vae", "crystal_gpt", "ddpm"]

    html = render_html(Board(rows=board.rows, n_records=len(_board_records())))
    assert "another space, not ranked" in html
    assert 'data-col="nll_test" data-v=""' in html  # the token-space cell has no sort value among the others


def test_board_without_any_nll_has_no_column() -> None:
    records = [_record("ddpm", s, None) for s in range(2)]
    markdown = render_markdown(records, published=False)
    assert "| model" in markdown and "nll_test ↓" not in markdown
