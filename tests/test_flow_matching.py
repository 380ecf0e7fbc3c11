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


def _tiny_flow(remove_drift: bool):  # noqa: ANN202
    from functools import partial

    from bench.models.backbones.periodic import PeriodicMPNN
    from bench.models.flow_matching.model import CrystalFlowMatching

    torch.manual_seed(0)
    return CrystalFlowMatching(
        backbone=partial(PeriodicMPNN, width=16, n_layers=1, num_frequencies=2),
        optimizer=partial(torch.optim.AdamW, lr=1e-3), num_types=4, max_atoms=5,
        paths={"atom_types": EuclideanPath(), "frac_coords": TorusPath(), "lattice": EuclideanPath()},
        time_dim=8, remove_drift=remove_drift,
    )


def _flow_batch() -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(1)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.float32)
    types = torch.nn.functional.one_hot(torch.randint(1, 4, (2, 5), generator=g), 4).float()
    frac = torch.rand(2, 5, 3, generator=g) * mask[..., None]
    return {"atom_types": types * mask.unsqueeze(-1), "frac_coords": frac,
            "lattice": torch.randn(2, 6, generator=g), "mask": mask}


def test_drift_free_velocities_have_zero_mean_and_drop_a_pure_translation() -> None:
    from bench.models.flow_matching.model import CrystalFlowMatching

    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    v = torch.tensor([[[0.1, 0.2, 0.3], [0.3, 0.0, -0.1], [9.0, 9.0, 9.0]],
                      [[0.2, 0.2, 0.2], [0.2, 0.2, 0.2], [0.2, 0.2, 0.2]]])
    out = CrystalFlowMatching.drift_free(v, mask)
    expected_first = torch.tensor([[-0.1, 0.1, 0.2], [0.1, -0.1, -0.2], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(out[0], expected_first, atol=1e-6, rtol=0)  # empty slot zeroed, mean removed
    torch.testing.assert_close(out[1], torch.zeros(3, 3), atol=1e-6, rtol=0)  # a translation is no motion


def test_remove_drift_takes_the_translation_out_of_target_and_prediction() -> None:
    """With a zero network the coordinate loss is the mean square of the target: without drift removal
    ``sum_i |u_i|^2``, with it ``sum_i |u_i - mean u|^2 = sum_i |u_i|^2 - N |mean u|^2`` per crystal."""
    batch = _flow_batch()
    losses = {}
    for remove in (False, True):
        model = _tiny_flow(remove)
        model.network = lambda x, t, m: {k: torch.zeros_like(v) for k, v in x.items()}  # noqa: ARG005
        torch.manual_seed(5)
        losses[remove] = model.loss(batch)["frac_coords_mse"]
    # the same draws, replayed: x0 of every field in sorted order, then t
    model = _tiny_flow(False)
    torch.manual_seed(5)
    x1, mask = model.data_fields(batch)
    x0 = model.draw_prior(model.paths, {k: tuple(v.shape) for k, v in x1.items()}, mask, None)
    _ = torch.rand(2)
    u = wrap(x1["frac_coords"] - x0["frac_coords"]) * mask[..., None]
    n = mask.sum(dim=1)
    mean = u.sum(dim=1) / n[:, None]
    total = 3 * mask.sum()
    torch.testing.assert_close(losses[False], u.pow(2).sum() / total, atol=1e-6, rtol=0)
    torch.testing.assert_close(losses[True], (u.pow(2).sum() - (n[:, None] * mean.pow(2)).sum()) / total,
                               atol=1e-6, rtol=0)
    model = _tiny_flow(True)
    v = model.velocity(x1, torch.full((2,), 0.3), mask)["frac_coords"]
    torch.testing.assert_close((v * mask[..., None]).sum(dim=1), torch.zeros(2, 3), atol=1e-5, rtol=0)
