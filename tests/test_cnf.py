"""Continuous normalizing flows (``cnf``, ``ffjord``) on inputs with independently known answers:

- a linear field ``f(z, t) = A z``: after time ``T`` the state is ``expm(A T) z`` and the log-density changes
  by ``-T tr(A)`` (closed forms), forwards and backwards, with the exact trace and, in expectation over
  probes, with Hutchinson's; the RNODE integrals of a linear field against quadrature;
- the exact trace of the concat-squash MLP equals the trace of its autograd Jacobian (1 to 3 hidden layers);
- Hutchinson's estimate is unbiased with the variance theory gives (Gaussian ``2 ||S||_F^2``, Rademacher
  ``2 sum_{i != j} S_ij^2``, ``S`` the symmetric part of the Jacobian), for one evaluation and for a whole
  solve;
- a 2-D Gaussian (shifted, scaled, correlated) fitted by FFJORD reaches its closed-form entropy;
- the model's ``test_nll`` equals the change of variables written out by hand for a constant field;
- adjoint gradients equal backpropagated ones; sampling inverts the data direction.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from bench.models.base import CODEC_SPACE
from bench.models.flow.cnf import (
    ConcatSquashMLP,
    ContinuousFlow,
    CrystalCNF,
    ODESolver,
    hutchinson_probe,
)
from scipy.integrate import quad_vec
from scipy.linalg import expm
from torch import Tensor, nn

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_TYPES, MAX_ATOMS = 2, 1
DIMS = MAX_ATOMS * (NUM_TYPES + 3) + 6  # 11
F64 = torch.float64
TIGHT = ODESolver("dopri5", atol=1e-10, rtol=1e-10)


class LinearField(nn.Module):
    """``f(z, t) = A z`` with its exact trace ``tr(A)``."""

    def __init__(self, matrix: Tensor) -> None:
        super().__init__()
        self.matrix = nn.Parameter(matrix.clone())

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        return z @ self.matrix.T

    def with_trace(self, t: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        return self(t, z), torch.diagonal(self.matrix).sum().expand(z.shape[0])


def random_matrix(dim: int, seed: int, scale: float = 0.4) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(dim, dim, generator=g, dtype=F64)


def linear_flow(matrix: Tensor, end_time: float, **kwargs) -> ContinuousFlow:
    flow = ContinuousFlow(LinearField(matrix), NUM_TYPES, MAX_ATOMS, end_time=end_time, learn_end_time=False,
                          **kwargs).double()
    flow.dynamics.sqrt_end_time.fill_(math.sqrt(end_time))  # T exactly, not through a float32 sqrt
    return flow


def random_fields(size: int, seed: int) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    vec = torch.randn(size, DIMS, generator=g, dtype=F64)
    return {"atom_types": vec[:, :2].reshape(size, 1, 2), "frac_coords": vec[:, 2:5].reshape(size, 1, 3),
            "lattice": vec[:, 5:]}


def flat(fields: dict[str, Tensor]) -> Tensor:
    size = fields["lattice"].shape[0]
    return torch.cat([fields[k].reshape(size, -1) for k in ("atom_types", "frac_coords", "lattice")], dim=1)


# ---------------------------------------------------------------------- a linear field: closed forms
def test_linear_field_flows_to_expm_and_changes_log_density_by_minus_t_trace() -> None:
    matrix, end_time = random_matrix(DIMS, 0), 1.7
    flow = linear_flow(matrix, end_time, eval_solver=TIGHT).eval()
    x = random_fields(5, 1)
    z, logdet = flow(x)
    expected = flat(x) @ torch.from_numpy(expm(matrix.numpy() * end_time)).T
    torch.testing.assert_close(flat(z), expected, atol=1e-8, rtol=0)
    # log p_x(x) = log p_z(z) + logdet, so log p changes by -logdet = -T tr(A) along the flow
    torch.testing.assert_close(logdet, (end_time * torch.trace(matrix)).expand(5), atol=1e-9, rtol=0)
    assert abs(float(torch.trace(matrix))) > 0.1  # the check is not the trivial zero
    # and back: the inverse solves from T to 0
    torch.testing.assert_close(flat(flow.inverse(z)), flat(x), atol=1e-8, rtol=0)


def test_fixed_grid_solver_converges_to_the_closed_form_at_fourth_order() -> None:
    """torchdiffeq's rk4 (the 3/8 rule) on ``A z``: the error falls ~16-fold when the steps double."""
    matrix, end_time = random_matrix(DIMS, 2, scale=0.6), 1.0
    x = flat(random_fields(3, 3))
    exact = x @ torch.from_numpy(expm(matrix.numpy() * end_time)).T
    errors = []
    for steps in (4, 8, 16):
        flow = linear_flow(matrix, end_time, solver=ODESolver("rk4", steps=steps)).train()
        z, logdet = flow.integrate(x)
        errors.append(float((z - exact).abs().max().detach()))
        torch.testing.assert_close(logdet, (end_time * torch.trace(matrix)).expand(3), atol=1e-12, rtol=0)
    assert errors[0] > 1e-6
    assert 10.0 < errors[0] / errors[1] < 24.0 and 10.0 < errors[1] / errors[2] < 24.0, errors


def test_hutchinson_log_det_of_a_linear_field_averages_to_t_trace() -> None:
    """With a fixed probe ``eps`` the log-det of ``A z`` is ``T eps^T A eps`` exactly; over many probes its
    mean is ``T tr(A)`` within 4 standard errors of the Rademacher variance ``2 T^2 sum_{i != j} S_ij^2``."""
    matrix, end_time, n = random_matrix(DIMS, 4), 0.8, 20_000
    flow = linear_flow(matrix, end_time, trace="hutchinson", probe="rademacher",
                       solver=ODESolver("rk4", steps=4)).train()
    torch.manual_seed(0)
    x = flat(random_fields(1, 5)).expand(n, DIMS).contiguous()
    _, logdet = flow.integrate(x)
    sym = 0.5 * (matrix + matrix.T)
    std = end_time * math.sqrt(2.0 * float(sym.pow(2).sum() - torch.diagonal(sym).pow(2).sum()))
    target = end_time * float(torch.trace(matrix))
    logdet = logdet.detach()
    assert abs(float(logdet.mean()) - target) < 4.0 * std / math.sqrt(n)
    assert float(logdet.std()) == pytest.approx(std, rel=0.05)


def test_rnode_integrals_of_a_linear_field_match_quadrature() -> None:
    """Kinetic energy ``int_0^T ||A expm(A t) x||^2 dt`` (quadrature) and, for the probe of the solve, the
    Jacobian term ``T ||eps^T A||^2`` (constant in time for a linear field)."""
    matrix, end_time = random_matrix(DIMS, 6), 1.3
    flow = linear_flow(matrix, end_time, trace="exact", solver=ODESolver("rk4", steps=200)).train()
    flow.regularise = True
    x = flat(random_fields(2, 7))
    torch.manual_seed(8)
    probe = hutchinson_probe(x.shape, "rademacher", x)  # the probe the solve will draw
    torch.manual_seed(8)
    flow.integrate(x)
    a, xs = matrix.numpy(), x.numpy()
    kinetic = quad_vec(lambda t: (np.square(xs @ (a @ expm(a * t)).T)).sum(axis=1), 0.0, end_time,
                       epsabs=1e-12, epsrel=1e-10)[0]
    torch.testing.assert_close(flow.regularisers["kinetic"], torch.from_numpy(kinetic), rtol=1e-8, atol=0)
    jacobian = end_time * (probe @ matrix).pow(2).sum(dim=1)
    torch.testing.assert_close(flow.regularisers["jacobian"], jacobian, rtol=1e-10, atol=0)


# ---------------------------------------------------------------------- the concat-squash dynamics
@pytest.mark.parametrize("activation", ["softplus", "tanh"])
@pytest.mark.parametrize("hidden_layers", [1, 2, 3])
def test_exact_trace_of_the_mlp_is_the_trace_of_its_autograd_jacobian(
    hidden_layers: int, activation: str
) -> None:
    torch.manual_seed(hidden_layers)
    net = ConcatSquashMLP(7, 12, hidden_layers, activation).double()
    z = torch.randn(4, 7, dtype=F64)
    for t in (0.0, 0.37, 1.9):
        time = torch.tensor(t, dtype=F64)
        f, trace = net.with_trace(time, z)
        torch.testing.assert_close(f, net(time, z), atol=1e-14, rtol=0)
        for b in range(4):
            jac = torch.autograd.functional.jacobian(lambda v, tt=time: net(tt, v[None])[0], z[b])
            torch.testing.assert_close(trace[b], torch.trace(jac), atol=1e-12, rtol=0)
        # the gates make the field depend on time
        assert not torch.allclose(net(torch.tensor(0.0, dtype=F64), z), net(torch.tensor(1.9, dtype=F64), z))


@pytest.mark.parametrize("probe", ["gaussian", "rademacher"])
def test_hutchinson_estimate_is_unbiased_with_the_variance_theory_gives(probe: str) -> None:
    """One evaluation of the dynamics at one point with 40,000 probes: the mean estimate is within 4 standard
    errors of the exact trace, and the spread is the theoretical one within 5%."""
    torch.manual_seed(0)
    net = ConcatSquashMLP(6, 16, 2, "tanh").double()
    flow = ContinuousFlow(net, NUM_TYPES, MAX_ATOMS, trace="hutchinson", probe=probe).double().train()
    n, time = 40_000, torch.tensor(0.5, dtype=F64)
    z = torch.randn(1, 6, dtype=F64).expand(n, 6).contiguous()
    dynamics = flow.dynamics
    dynamics.mode, dynamics.regularise = "hutchinson", False
    dynamics.probe = hutchinson_probe(z.shape, probe, z)
    with torch.no_grad():
        scale = float(dynamics.end_time())
        estimates = dynamics(time, (z, z.new_zeros(n)))[1] / scale
    jac = torch.autograd.functional.jacobian(lambda v: net(time * scale, v[None])[0], z[0])
    sym = 0.5 * (jac + jac.T)
    var = 2.0 * float(sym.pow(2).sum())
    if probe == "rademacher":
        var -= 2.0 * float(torch.diagonal(sym).pow(2).sum())
    assert abs(float(estimates.mean()) - float(torch.trace(jac))) < 4.0 * math.sqrt(var / n)
    assert float(estimates.var()) == pytest.approx(var, rel=0.05)


def test_hutchinson_log_det_of_a_whole_solve_is_unbiased() -> None:
    """Along a solve the path ``z(t)`` does not depend on the probe, so the Hutchinson log-det is an unbiased
    estimate of the exact one on the same grid (here within 4 standard errors over 20,000 probes)."""
    torch.manual_seed(1)
    net = ConcatSquashMLP(DIMS, 16, 2, "softplus").double()
    grid = ODESolver("rk4", steps=6)
    exact_flow = ContinuousFlow(net, NUM_TYPES, MAX_ATOMS, trace="exact", solver=grid).double().train()
    hutch_flow = ContinuousFlow(net, NUM_TYPES, MAX_ATOMS, trace="hutchinson", solver=grid).double().train()
    n = 20_000
    x = flat(random_fields(1, 8)).expand(n, DIMS).contiguous()
    with torch.no_grad():
        z_exact, exact = exact_flow.integrate(x[:1])
    z_hutch, estimates = hutch_flow.integrate(x)
    torch.testing.assert_close(z_hutch[:3].detach(), z_exact.expand(3, DIMS), atol=1e-12, rtol=0)
    sem = float(estimates.detach().std()) / math.sqrt(n)
    assert abs(float(estimates.detach().mean()) - float(exact)) < 4.0 * sem
    assert float(estimates.detach().std()) > 1e-3  # a real estimator, not the exact value in disguise


# ---------------------------------------------------------------------- a 2-D Gaussian fitted by FFJORD
def test_ffjord_fits_a_shifted_scaled_gaussian_to_its_entropy() -> None:
    """``N(mu, Sigma)`` in 2-D (mean (2, -1), standard deviations 0.5 and 2, correlation 0.6): 300 Adam
    steps of Hutchinson training (rk4, 8 steps), then the held-out NLL with the exact trace and dopri5 must
    lie within 0.05 nats above the closed-form entropy ``log det(2 pi e Sigma) / 2`` (and no further below it
    than the Monte-Carlo error of 8,192 test points, about 0.016 nats). It reaches 0.008 nats above (0.009 and
    0.022 with model seeds 1 and 2); untrained it is 3.4 to 4.8 nats above."""
    mean = torch.tensor([2.0, -1.0])
    std = torch.tensor([0.5, 2.0])
    cov = torch.outer(std, std) * torch.tensor([[1.0, 0.6], [0.6, 1.0]])
    chol = torch.linalg.cholesky(cov)
    entropy = 0.5 * float(torch.logdet(2 * math.pi * math.e * cov))

    def draw(n: int, g: torch.Generator) -> Tensor:
        return mean + torch.randn(n, 2, generator=g) @ chol.T

    torch.manual_seed(0)
    flow = ContinuousFlow(ConcatSquashMLP(2, 32, 2, "tanh"), NUM_TYPES, MAX_ATOMS, trace="hutchinson",
                          probe="rademacher", solver=ODESolver("rk4", steps=8),
                          eval_solver=ODESolver("dopri5", atol=1e-6, rtol=1e-6))
    normal = torch.distributions.Normal(0.0, 1.0)

    def nll(x: Tensor) -> Tensor:
        z, logdet = flow.integrate(x)
        return -(normal.log_prob(z).sum(dim=1) + logdet)

    test = draw(8192, torch.Generator().manual_seed(1))

    def held_out() -> float:
        flow.eval()
        with torch.no_grad():
            value = float(nll(test).mean())
        flow.train()
        return value

    untrained = held_out()
    opt = torch.optim.Adam(flow.parameters(), lr=1e-2)
    g, losses = torch.Generator().manual_seed(2), []
    for _ in range(300):
        loss = nll(draw(256, g)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    trained = held_out()
    assert untrained - entropy > 1.0
    assert np.mean(losses[-30:]) < np.mean(losses[:30]) - 1.0
    assert entropy - 0.05 < trained < entropy + 0.05, f"NLL {trained:.4f}, entropy {entropy:.4f}"


# ---------------------------------------------------------------------- the crystal model
def crystal_model(**kwargs) -> CrystalCNF:
    torch.manual_seed(0)
    options = {"hidden_width": 16, "hidden_layers": 2, "solver": "rk4", "steps": 4, "eval_solver": "dopri5",
               "eval_atol": 1e-9, "eval_rtol": 1e-9, "continuous_noise": 0.05, **kwargs}
    return CrystalCNF(functools.partial(torch.optim.Adam, lr=1e-3), 3, 2, **options).double()


def crystals(n: int, seed: int) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    types = torch.randint(1, 3, (n, 2), generator=g)
    types[: n // 2, 1] = 0  # half the crystals have an empty second slot
    onehot = torch.nn.functional.one_hot(types, 3).to(F64)
    filled = 1.0 - onehot[..., 0]
    frac = torch.rand(n, 2, 3, generator=g, dtype=F64) * filled[..., None]
    lattice = torch.randn(n, 6, generator=g, dtype=F64) * 0.7 + 0.3
    return {"atom_types": onehot, "frac_coords": frac, "lattice": lattice, "mask": filled}


def test_nll_of_a_constant_field_is_the_change_of_variables_written_out_by_hand() -> None:
    """The last layer set to ``f = c / 2`` (zero weights, gate ``sigmoid(0)``, no time bias): the flow is the
    standardisation then the shift ``z = y + T c / 2``, with log-det ``-sum log std`` per crystal. The
    dequantisation is redrawn here from the same generator, in the order the base class draws it."""
    model = crystal_model(end_time=1.6)
    model.fit_data(crystals(64, 1))
    last = model.ode.dynamics.net.layers[-1]
    c = torch.linspace(-1.0, 1.0, model.dims, dtype=F64)
    with torch.no_grad():
        last.linear.weight.zero_()
        last.linear.bias.copy_(c)
        last.gate.weight.zero_()
        last.gate.bias.zero_()
        last.time_bias.weight.zero_()
    model.eval()
    batch = crystals(6, 2)
    with torch.no_grad():
        reported = model.test_nll(batch, draws=2, generator=torch.Generator().manual_seed(3))

    end_time = float(model.ode.dynamics.end_time().detach())  # 1.6 up to the float32 rounding of sqrt(1.6)
    g, values = torch.Generator().manual_seed(3), []
    for _ in range(2):
        # float32 draws, as the base class makes them
        u_types = torch.rand(batch["atom_types"].shape, generator=g).double()
        jitter = torch.randn(batch["frac_coords"].shape, generator=g).double()
        u_frac = torch.rand(batch["frac_coords"].shape, generator=g).double()
        eps = torch.randn(batch["lattice"].shape, generator=g).double()
        filled = batch["mask"][..., None]
        x = {"atom_types": batch["atom_types"] + u_types - 0.5,
             "frac_coords": filled * (batch["frac_coords"] + 0.05 * jitter) + (1 - filled) * u_frac - 0.5,
             "lattice": batch["lattice"] + 0.05 * eps}
        ys, logdet = [], 0.0
        for key in ("atom_types", "frac_coords", "lattice"):
            mean, log_std = model.standardise.stats(key)
            ys.append(((x[key] - mean) / log_std.exp()).reshape(6, -1))
            logdet = logdet - (x[key][0].numel() // x[key].shape[-1]) * log_std.sum()
        z = torch.cat(ys, dim=1) + end_time * c / 2
        log_pz = -0.5 * z.pow(2).sum(dim=1) - 0.5 * model.dims * math.log(2 * math.pi)
        values.append(-(log_pz + logdet))
    torch.testing.assert_close(reported, torch.stack(values).mean(0), atol=1e-6, rtol=0)
    assert end_time == pytest.approx(1.6, rel=1e-6)
    spec = model.likelihood_spec()
    assert spec is not None and spec.kind == "upper_bound" and model.nll_space() == CODEC_SPACE


def test_standardisation_is_fitted_on_the_dequantised_training_data_and_checkpointed() -> None:
    model = crystal_model()
    data = crystals(400, 4)
    model.fit_data(data)
    x = model.dequantise(data, torch.Generator().manual_seed(0))
    for key in ("atom_types", "frac_coords", "lattice"):
        y = model.standardise({k: v for k, v in x.items()})[0][key].reshape(-1, x[key].shape[-1])
        torch.testing.assert_close(y.mean(0), torch.zeros(y.shape[1], dtype=F64), atol=1e-10, rtol=0)
        torch.testing.assert_close(y.std(0, correction=0), torch.ones(y.shape[1], dtype=F64), atol=1e-10,
                                   rtol=0)
    fresh = crystal_model()
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh.standardise.stats("lattice")[1], model.standardise.stats("lattice")[1])


def test_sampling_inverts_the_data_direction() -> None:
    model = crystal_model()
    model.fit_data(crystals(64, 5))
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=F64))
    model.eval()
    x = model.dequantise(crystals(4, 7), torch.Generator().manual_seed(8))
    with torch.no_grad():
        z, _ = model.to_base(x)
        back = model.from_base(z)
    for key in x:
        torch.testing.assert_close(back[key], x[key], atol=1e-7, rtol=0)
    assert model.nfe == 0  # no sampling solve yet (an adaptive solver's count is recorded by sampling)
    model.float().sample(3, generator=torch.Generator().manual_seed(9))  # base noise is float32
    assert model.nfe > 6 and model.nfe == model.ode.last_evaluations


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_adjoint_gradients_equal_backpropagated_ones(trace: str) -> None:
    """Same loss, same probe (seeded), same fixed grid: gradients by the adjoint method match backpropagation
    through the solver to the accuracy of the backward solve."""
    batch = crystals(8, 10)
    grads = {}
    for adjoint in (False, True):
        model = crystal_model(trace=trace, adjoint=adjoint, solver="dopri5", atol=1e-10, rtol=1e-10,
                              kinetic_weight=0.1, jacobian_weight=0.1)
        model.fit_data(crystals(64, 11))
        model.train()
        torch.manual_seed(12)
        model.loss(batch)["loss"].backward()
        grads[adjoint] = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert set(grads[True]) == set(grads[False])
    for name, value in grads[False].items():
        assert value.abs().max() > 0, name
        torch.testing.assert_close(grads[True][name], value, atol=1e-6, rtol=1e-5)


def test_solver_and_trace_options_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown ODE solver 'rk5'"):
        ODESolver("rk5")
    with pytest.raises(ValueError, match="trace must be"):
        crystal_model(trace="approximate")
    with pytest.raises(ValueError, match="probe must be"):
        crystal_model(probe="uniform")
    with pytest.raises(ValueError, match="activation must be"):
        crystal_model(activation="relu")
    with pytest.raises(ValueError, match="end_time must be > 0"):
        crystal_model(end_time=0.0)
