"""``comp_vae``, the composition VAE, on inputs with an independently known answer.

- on real mp_e_form formulas the negative ELBO falls from about ``E log L`` to near the entropy of the data's
  own per-element marginals (the best a model without dependencies between elements can do);
- trained on one formula repeated, the negative ELBO goes to 0 nats (the exact NLL of a point mass);
- trained on two formulas in equal shares, the bounds never fall below ``log 2`` (the data's entropy, which
  no normalised model's expected NLL can beat) and come near it, far below the ``4 log 2`` of independent
  elements; with a one-dimensional latent the model's exact ``-log p(x)``, integrated over ``z`` on a grid,
  lies between the importance-weighted bound with many draws and the negative ELBO;
- sampled levels follow the decoder's categoricals; samples decode to formulas; a seed fixes them.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from bench.datasets.composition_representation import CompositionCounts
from bench.datasets.representation import DecodeFailure
from bench.models.composition.vae import CompositionVAE

from tests.composition_helpers import pinned_split_counts

pytestmark = pytest.mark.usefixtures("one_thread")

LOG2 = math.log(2.0)


def _model(sizes: dict[str, int], seed: int = 0, lr: float = 3e-3, **settings: object) -> CompositionVAE:
    torch.manual_seed(seed)
    kwargs = {"latent_dim": 8, "hidden_dim": 64, "n_layers": 1, "kl_warmup_steps": 0, **settings}
    return CompositionVAE(functools.partial(torch.optim.Adam, lr=lr), **sizes, **kwargs)


class _History(pl.Callback):
    """The logged negative ELBO after every training step."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        self.values.append(float(trainer.callback_metrics["train/elbo"]))


def _fit(model: CompositionVAE, counts: torch.Tensor, steps: int, batch: int = 128) -> list[float]:
    """Train with Lightning (so the KL warm-up sees the global step) on seeded random minibatches of
    ``counts``; the negative ELBO of every step."""
    g = torch.Generator().manual_seed(0)
    batches = [{"counts": counts[torch.randint(0, len(counts), (batch,), generator=g)]} for _ in range(steps)]
    history = _History()
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, callbacks=[history],
    )
    trainer.fit(model, torch.utils.data.DataLoader(batches, batch_size=None))
    return history.values


@pytest.fixture(scope="module")
def mp_e_form(data_dir: Path) -> tuple[CompositionCounts, dict[str, torch.Tensor]]:
    """3,000 seeded encodable mp_e_form training formulas (pinned split) and their count matrices."""
    rep, train, _ = pinned_split_counts(data_dir)
    return rep, train


@pytest.fixture(scope="module")
def trained(
    mp_e_form: tuple[CompositionCounts, dict[str, torch.Tensor]],
) -> tuple[CompositionVAE, list[float]]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rep, data = mp_e_form
        model = _model(rep.sizes(), kl_warmup_steps=100)
        return model, _fit(model, data["counts"], steps=300)
    finally:
        torch.set_num_threads(previous)


def _marginal_entropy(counts: torch.Tensor) -> float:
    """Sum over elements of the entropy (nats) of the data's own level frequencies: the NLL per composition
    of the best model of independent elements, on the data it was fitted to."""
    p = counts.double().mean(0)
    return float(-(p * torch.log(p.clamp_min(1e-300))).sum())


def test_negative_elbo_falls_to_near_the_marginal_entropy(
    mp_e_form: tuple[CompositionCounts, dict[str, torch.Tensor]], trained: tuple[CompositionVAE, list[float]]
) -> None:
    rep, data = mp_e_form
    model, history = trained
    sizes = rep.sizes()
    start, end = sum(history[:10]) / 10, sum(history[-30:]) / 30
    # An untrained decoder is near uniform over the levels: about E log L nats per composition.
    assert start > 0.5 * sizes["num_elements"] * math.log(sizes["num_levels"])
    entropy = _marginal_entropy(data["counts"])
    assert end < entropy + 2.5, f"negative ELBO {end:.2f}, marginal entropy {entropy:.2f}, start {start:.1f}"
    model.eval()
    bound = model.test_nll(data, draws=1, generator=torch.Generator().manual_seed(0))
    assert bound.shape == (len(data["counts"]),) and bound.dtype == torch.float64
    assert torch.all(bound > 0)


def test_one_formula_repeated_negative_elbo_goes_to_zero(
    mp_e_form: tuple[CompositionCounts, dict[str, torch.Tensor]]
) -> None:
    rep, _ = mp_e_form
    data = rep.encode(["LiFePO4"] * 64)
    model = _model(rep.sizes(), lr=1e-2)
    history = _fit(model, data["counts"], steps=150, batch=64)
    model.eval()
    g = torch.Generator().manual_seed(0)
    elbo = model.negative_elbo(data, draws=4, generator=g)
    assert history[0] > 50.0
    assert torch.all(elbo >= 0) and float(elbo.mean()) < 0.05, f"negative ELBO {float(elbo.mean()):.4f}"


def _exact_nll_1d(model: CompositionVAE, batch: dict[str, torch.Tensor], points: int = 8001) -> torch.Tensor:
    """``-log p(x) = -log int p(x | z) N(z; 0, 1) dz`` ``[B]`` for a one-dimensional latent, by the trapezoid
    rule on ``[-10, 10]`` (the prior's mass outside is below 1e-22)."""
    z = torch.linspace(-10.0, 10.0, points, dtype=torch.float64)
    with torch.no_grad():
        logits = model.decode(z.float().unsqueeze(-1))  # [points, E, L]
        levels = model.levels_of(batch)  # [B, E]
        log_px = torch.stack([model.observation_log_prob(logits, row.expand(points, -1)) for row in levels])
    log_joint = log_px.double() - 0.5 * z.pow(2) - 0.5 * math.log(2 * math.pi)  # [B, points]
    weights = torch.full((points,), math.log(float(z[1] - z[0])), dtype=torch.float64)
    weights[[0, -1]] -= LOG2
    return -torch.logsumexp(log_joint + weights, dim=1)


def test_two_formulas_bounds_bracket_the_exact_nll_and_approach_log2() -> None:
    """Data: NaCl and KBr, one half each, over the eight elements of a few formulas. Entropy ``log 2``: no
    model's mean NLL on it is lower. Independent elements reach at best ``4 log 2`` (each of four elements
    present half the time)."""
    rep = CompositionCounts().fit(["NaCl", "KBr", "LiFePO4", "Fe2O3", "SiO2"])
    data = rep.encode(["NaCl", "KBr"] * 64)
    model = _model(rep.sizes(), latent_dim=1, hidden_dim=32, lr=1e-2, kl_warmup_steps=200)
    _fit(model, data["counts"], steps=600, batch=128)
    model.eval()
    pair = {"counts": data["counts"][:2]}
    exact = _exact_nll_1d(model, pair)
    g = torch.Generator().manual_seed(0)
    iwae = model.test_nll(pair, draws=16384, generator=g)
    elbo = model.negative_elbo(pair, draws=4096, generator=g)
    # The model's probabilities of the two formulas sum to at most 1, so their mean NLL is at least log 2.
    assert float(torch.logsumexp(-exact, 0)) <= 1e-9
    assert float(exact.mean()) >= LOG2 - 1e-9
    # It learnt the pair through its latent: far below independent elements, near the data's entropy.
    assert float(exact.mean()) < LOG2 + 0.3, f"exact mean NLL {float(exact.mean()):.3f}"
    # IWAE with many draws converges to the exact NLL (its estimate still scatters by a few 0.01 nats: the
    # Gaussian posterior is narrower than the true one, a half-line); the ELBO is looser than both.
    torch.testing.assert_close(iwae, exact, atol=0.05, rtol=0.0)
    assert torch.all(elbo >= exact - 1e-3) and torch.all(elbo >= iwae - 1e-3)
    assert float(elbo.mean()) < 4 * LOG2


def test_sampled_levels_follow_the_decoder(
    mp_e_form: tuple[CompositionCounts, dict[str, torch.Tensor]], trained: tuple[CompositionVAE, list[float]]
) -> None:
    """The frequency of each element's levels over many samples equals the decoder's categorical averaged over
    the prior (estimated from other prior draws)."""
    model, _ = trained
    n = 4000
    freq = model.sample(n, generator=torch.Generator().manual_seed(1))["counts"].mean(0)
    with torch.no_grad():
        z = torch.randn(n, model.latent_dim, generator=torch.Generator().manual_seed(2))
        expected = F.softmax(model.eval().decode(z), dim=-1).mean(0)
    assert float((freq - expected).abs().max()) < 0.04
    # The mode instead of a draw: the decoder's argmax, whose levels are sampled with no noise beyond z.
    model.sample_observation = False
    try:
        modes = model.sample(8, generator=torch.Generator().manual_seed(3))["counts"]
        z = torch.randn(8, model.latent_dim, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            assert torch.equal(modes.argmax(-1), model.decode(z).argmax(-1))
    finally:
        model.sample_observation = True


def test_samples_decode_and_a_seed_fixes_them(
    mp_e_form: tuple[CompositionCounts, dict[str, torch.Tensor]], trained: tuple[CompositionVAE, list[float]]
) -> None:
    rep, _ = mp_e_form
    model, _ = trained
    first = model.sample(64, generator=torch.Generator().manual_seed(5))
    again = model.sample(64, generator=torch.Generator().manual_seed(5))
    other = model.sample(64, generator=torch.Generator().manual_seed(6))
    assert torch.equal(first["counts"], again["counts"]) and not torch.equal(first["counts"], other["counts"])
    assert first["counts"].shape == (64, *model.shape) and torch.all(first["counts"].sum(-1) == 1)
    decoded = rep.decode(first)
    formulas = [d for d in decoded if isinstance(d, str)]
    assert all(isinstance(d, str | DecodeFailure) for d in decoded) and len(formulas) >= 48
    # Like the data, most samples have two to five elements.
    present = (first["counts"].argmax(-1) > 0).sum(-1).float()
    assert 2.0 <= float(present.mean()) <= 6.0
