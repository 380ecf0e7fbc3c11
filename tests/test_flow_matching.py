"""Flow-matching pieces on inputs with known answers: paths, ODE samplers, the atom-count prior and EMA."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from bench.models.ema import EMA
from bench.models.flow_matching.paths import EuclideanPath, TorusPath, wrap
from bench.models.flow_matching.samplers import EulerSampler, HeunSampler
from torch import Tensor


def test_wrap_gives_the_shortest_difference() -> None:
    delta = torch.tensor([0.9, -0.9, 0.4, -0.4, 0.5, 2.25])
    torch.testing.assert_close(wrap(delta), torch.tensor([-0.1, 0.1, 0.4, -0.4, -0.5, 0.25]),
                               atol=1e-6, rtol=0)


def test_torus_path_takes_the_short_way_round() -> None:
    path = TorusPath()
    x0, x1 = torch.tensor([[0.95, 0.1, 0.5]]), torch.tensor([[0.05, 0.9, 0.5]])
    x_half, u = path.interpolate(x0, x1, torch.tensor([0.5]))
    torch.testing.assert_close(u, torch.tensor([[0.1, -0.2, 0.0]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(wrap(x_half - torch.tensor([[0.0, 0.0, 0.5]])), torch.zeros(1, 3),
                               atol=1e-6, rtol=0)
    end, _ = path.interpolate(x0, x1, torch.tensor([1.0]))
    torch.testing.assert_close(wrap(end - x1), torch.zeros(1, 3), atol=1e-6, rtol=0)
    assert torch.all((path.step(x0, u, 1.0) >= 0) & (path.step(x0, u, 1.0) < 1))


def test_euclidean_path_endpoints_and_velocity() -> None:
    path = EuclideanPath()
    x0, x1 = torch.randn(4, 6), torch.randn(4, 6)
    start, u = path.interpolate(x0, x1, torch.zeros(4))
    end, _ = path.interpolate(x0, x1, torch.ones(4))
    torch.testing.assert_close(start, x0)
    torch.testing.assert_close(end, x1)
    torch.testing.assert_close(u, x1 - x0)


def _point_mass_field(targets: dict[str, torch.Tensor], calls: list[int]):  # noqa: ANN202
    """The exact marginal velocity of a point mass at ``targets``: ``(x1 - x) / (1 - t)`` (wrapped on the
    torus)."""

    def field(x: dict[str, torch.Tensor], t: torch.Tensor) -> dict[str, torch.Tensor]:
        calls.append(1)
        left = (1.0 - t).clamp_min(1e-6)
        out = {}
        for key, value in x.items():
            diff = targets[key] - value
            if key == "frac_coords":
                diff = wrap(diff)
            out[key] = diff / left.view(-1, *([1] * (value.dim() - 1)))
        return out

    return field


@pytest.mark.parametrize("sampler", [EulerSampler(steps=7), HeunSampler(steps=5)])
def test_ode_samplers_land_on_a_point_mass_and_count_evaluations(sampler: EulerSampler) -> None:
    paths = {"frac_coords": TorusPath(), "lattice": EuclideanPath()}
    targets = {"frac_coords": torch.tensor([[[0.02, 0.98, 0.5]]]).expand(3, 2, 3),
               "lattice": torch.full((3, 6), -1.5)}
    g = torch.Generator().manual_seed(0)
    x0 = {"frac_coords": paths["frac_coords"].prior((3, 2, 3), g, torch.device("cpu")),
          "lattice": paths["lattice"].prior((3, 6), g, torch.device("cpu"))}
    calls: list[int] = []
    out = sampler(_point_mass_field(targets, calls), paths, x0)
    assert len(calls) == sampler.nfe
    torch.testing.assert_close(wrap(out["frac_coords"] - targets["frac_coords"]), torch.zeros(3, 2, 3),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(out["lattice"], targets["lattice"], atol=1e-5, rtol=0)
    assert torch.all((out["frac_coords"] >= 0) & (out["frac_coords"] < 1))


def test_anti_annealing_agrees_with_the_scaled_velocity_to_first_order() -> None:
    """Away from t = 1 a small step moves ``dt (1 + s t)`` along ``v`` (FlowMM's scaled field); without
    anti-annealing the step is exactly ``dt``."""
    sampler = EulerSampler(steps=10, anti_annealing={"frac_coords": 10.0})
    for t in (0.0, 0.3, 0.7):
        dt = 1e-5
        assert sampler.step_length("frac_coords", t, dt) / dt == pytest.approx(1.0 + 10.0 * t, rel=1e-3)
        assert sampler.step_length("lattice", t, 0.1) == 0.1


@pytest.mark.parametrize("sampler_class", [EulerSampler, HeunSampler])
def test_anti_annealing_does_not_amplify_the_fields_error(sampler_class: type) -> None:
    """A field aiming at a target it knows only up to a fresh error of size eps each call: the anti-annealed
    sampler ends within eps of it (each step moves at most to the predicted endpoint, the last exactly there),
    where FlowMM's scaled velocity under plain Euler steps (``s = 10``, 50 steps) amplifies the error about
    a hundredfold."""
    eps, s, steps = 1e-3, 10.0, 50
    target = torch.full((64, 6), 0.7)
    g = torch.Generator().manual_seed(0)

    def field(x: dict[str, Tensor], t: Tensor) -> dict[str, Tensor]:
        aim = target + eps * (2.0 * torch.rand(target.shape, generator=g) - 1.0)
        return {"lattice": (aim - x["lattice"]) / (1.0 - t[:, None])}

    x0 = {"lattice": torch.zeros(64, 6)}
    out = sampler_class(steps=steps, anti_annealing={"lattice": s})(field, {"lattice": EuclideanPath()}, x0)
    assert (out["lattice"] - target).abs().max() <= eps + 1e-6

    x, dt = x0["lattice"], 1.0 / steps  # the same field, scaled by 1 + s t and stepped with plain Euler
    for i in range(steps):
        t = i * dt
        x = x + dt * (1.0 + s * t) * field({"lattice": x}, torch.full((64,), t))["lattice"]
    assert (x - target).abs().max() > 30 * eps


class _Drift(pl.LightningModule):
    """One weight that the optimiser moves by exactly -1 per step (SGD, lr 1, gradient 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.w * 1.0

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=1.0)


def test_ema_follows_its_recurrence_and_is_swapped_in() -> None:
    steps, decay = 30, 0.9
    ema = EMA(decay=decay)
    trainer = pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[ema], accelerator="cpu")
    model = _Drift()
    trainer.fit(model, torch.utils.data.DataLoader([torch.zeros(1)] * steps, batch_size=None))
    shadow = 0.0
    for k in range(steps):  # after step k the weight is -(k + 1)
        d = min(decay, (1.0 + k) / (10.0 + k))
        shadow = d * shadow + (1.0 - d) * -(k + 1.0)
    assert ema.updates == steps
    assert float(model.w) == pytest.approx(shadow, rel=1e-5)  # the average replaced the trained weight
    assert float(model.w) > -steps  # and it lags behind the raw weight (-30)
