"""Per-field diffusion processes and DiffCSP's predictor-corrector sampler, on inputs with known answers."""

from __future__ import annotations

import math

import pytest
import torch
from bench.models.diffusion.diffcsp import PredictorCorrectorSampler
from bench.models.diffusion.processes import (
    VPGaussian,
    WrappedNormalVE,
    wrapped_normal_score,
    wrapped_score_norm,
)
from bench.models.diffusion.samplers import AncestralSampler
from bench.models.flow_matching.paths import wrap


def _log_wrapped_normal(x: torch.Tensor, sigma: float) -> torch.Tensor:
    k = torch.arange(-20, 21, dtype=torch.float64)
    return torch.logsumexp(-((x.unsqueeze(-1) + k) ** 2) / (2 * sigma**2), dim=-1)


@pytest.mark.parametrize("sigma", [0.01, 0.1, 0.3, 0.7])
def test_wrapped_normal_score_is_the_derivative_of_its_log_density(sigma: float) -> None:
    x = torch.linspace(-0.49, 0.49, 41, dtype=torch.float64)
    h = 1e-6
    numeric = (_log_wrapped_normal(x + h, sigma) - _log_wrapped_normal(x - h, sigma)) / (2 * h)
    torch.testing.assert_close(wrapped_normal_score(x, torch.tensor(sigma, dtype=torch.float64)), numeric,
                               atol=1e-4 / sigma, rtol=1e-5)
    # periodic in x
    torch.testing.assert_close(wrapped_normal_score(x + 1.0, torch.tensor(sigma, dtype=torch.float64)),
                               wrapped_normal_score(x, torch.tensor(sigma, dtype=torch.float64)))


def test_score_norm_matches_the_gaussian_limit_and_monte_carlo() -> None:
    # A narrow wrapped normal is a normal: E[score^2] = 1 / sigma^2 (the Fisher information).
    torch.testing.assert_close(wrapped_score_norm(torch.tensor([0.005, 0.02])),
                               torch.tensor([1 / 0.005**2, 1 / 0.02**2], dtype=torch.float64),
                               rtol=1e-6, atol=0)
    # A wide one: Monte Carlo over samples of the wrapped normal itself.
    sigma = 0.4
    g = torch.Generator().manual_seed(0)
    x = torch.remainder(sigma * torch.randn(400_000, generator=g, dtype=torch.float64), 1.0)
    mc = wrapped_normal_score(x, torch.tensor(sigma, dtype=torch.float64)).pow(2).mean()
    assert float(wrapped_score_norm(torch.tensor([sigma]))) == pytest.approx(float(mc), rel=0.01)


def test_wrapped_target_is_unit_scale_and_periodic() -> None:
    process = WrappedNormalVE(timesteps=100)
    noise = torch.randn(20000, 3, generator=torch.Generator().manual_seed(1))
    for step in (1, 50, 100):
        t = torch.full((20000,), step)
        target = process.target(noise, t)
        assert float(target.pow(2).mean()) == pytest.approx(1.0, rel=0.05)
    x0 = torch.rand(5, 3)
    x_t = process.q_sample(x0, torch.full((5,), 10), noise[:5])
    assert torch.all((x_t >= 0) & (x_t < 1))


def _exact_predictor(processes: dict, target: dict[str, torch.Tensor]):  # noqa: ANN202
    """The exact network of a point mass at ``target``: epsilon for VP fields, the normalised score for VE."""

    def predictor(x: dict[str, torch.Tensor], t: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for key, value in x.items():
            process = processes[key]
            if isinstance(process, VPGaussian):
                a = process.alpha_bars[t].view(-1, *([1] * (value.dim() - 1)))
                out[key] = (value - a.sqrt() * target[key]) / (1 - a).sqrt()
            else:
                sigma = process.sigmas[t].view(-1, *([1] * (value.dim() - 1)))
                norm = process.score_norms[t].view(-1, *([1] * (value.dim() - 1)))
                out[key] = -wrapped_normal_score(wrap(value - target[key]), sigma) / norm.sqrt()
        return out

    return predictor


@pytest.mark.parametrize("sampler", [PredictorCorrectorSampler(steps=40, step_lr=1e-5),
                                     PredictorCorrectorSampler(steps=None, step_lr=0.0),
                                     AncestralSampler(steps=40)])
def test_pc_and_ancestral_samplers_land_on_a_point_mass(sampler: AncestralSampler) -> None:
    """DiffCSP's sampler, and the ancestral sampler of the same protocol, on a wrapped VE and a VP field."""
    T = 100
    processes = {"frac_coords": WrappedNormalVE(timesteps=T), "lattice": VPGaussian(timesteps=T)}
    target = {
        "frac_coords": torch.tensor([[[0.02, 0.97, 0.5]]]).expand(4, 2, 3), "lattice": torch.full((4, 6), 1.3)
    }
    g = torch.Generator().manual_seed(0)
    x = {"frac_coords": processes["frac_coords"].prior((4, 2, 3), g, torch.device("cpu")),
         "lattice": processes["lattice"].prior((4, 6), g, torch.device("cpu"))}
    calls = []

    def counted(x_t: dict[str, torch.Tensor], t: torch.Tensor) -> dict[str, torch.Tensor]:
        calls.append(1)
        return _exact_predictor(processes, target)(x_t, t)

    def noise() -> dict[str, torch.Tensor]:
        return {"frac_coords": torch.randn(4, 2, 3, generator=g), "lattice": torch.randn(4, 6, generator=g)}

    out = sampler(counted, processes, x, T, noise)
    assert len(calls) == sampler.nfe(T)
    torch.testing.assert_close(wrap(out["frac_coords"] - target["frac_coords"]), torch.zeros(4, 2, 3),
                               atol=1e-4, rtol=0)
    torch.testing.assert_close(out["lattice"], target["lattice"], atol=1e-4, rtol=0)


def test_vp_gaussian_marginal_variance_is_preserved() -> None:
    process = VPGaussian(timesteps=1000)
    assert float(process.alpha_bars[0]) == 1.0
    x0 = torch.randn(50000, 1, generator=torch.Generator().manual_seed(2))
    noise = torch.randn(50000, 1, generator=torch.Generator().manual_seed(3))
    x_t = process.q_sample(x0, torch.full((50000,), 600), noise)
    assert float(x_t.var()) == pytest.approx(1.0, abs=0.03)
    assert math.isclose(float(process.alpha_bars[-1]), 0.0, abs_tol=1e-4)
