"""``comp_realnvp``, a RealNVP flow on the dequantised count levels, on inputs with an independently known
answer.

- the flow's log-determinant (logit map, per-element affine map, couplings) equals the log of the absolute
  determinant of its Jacobian computed by automatic differentiation, and the inverse undoes the forward map;
- the variational dequantiser's ``log q(u | d)`` is the log of a normalised density on ``(0, 1)`` (a grid
  sum);
- on two elements with three levels, trained on a known distribution: the flow's density integrates to 1 over
  its range (a grid sum, independent of the log-determinant code), the probability of each level vector is the
  grid integral over its cell, and the dequantisation bound lies above the NLL of those probabilities and,
  averaged over the data, above the data's entropy, which it approaches, for both dequantisations;
- on real mp_e_form formulas the loss falls, the held-out bound falls, samples decode to formulas, and a seed
  fixes them.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from bench.datasets.composition_representation import CompositionCounts
from bench.models.composition.realnvp import KEY, CompositionRealNVP, VariationalDequantiser
from bench.models.flow.transforms import forward_through, inverse_through

from tests.composition_helpers import pinned_split_counts, train_on_counts

pytestmark = pytest.mark.usefixtures("one_thread")

DEQUANTISATIONS = ("uniform", "variational")


def _model(
    num_elements: int, num_levels: int, dequantisation: str = "uniform", seed: int = 0, lr: float = 3e-3,
    **widths: int,
) -> CompositionRealNVP:
    torch.manual_seed(seed)
    settings = {"n_couplings": 4, "hidden": 64, "layers": 2, **widths}
    return CompositionRealNVP(
        functools.partial(torch.optim.Adam, lr=lr), num_elements, num_levels, dequantisation=dequantisation,
        **settings,
    )


def _train(model: CompositionRealNVP, counts: torch.Tensor, steps: int, batch: int = 128) -> list[float]:
    model.fit_data({"counts": counts})
    return train_on_counts(model, counts, steps, batch, torch_seed=1)


# ---------------------------------------------------------------------------------------------- the flow
def test_log_determinant_is_that_of_the_jacobian_and_the_inverse_undoes_the_flow() -> None:
    model = _model(5, 4, n_couplings=4, hidden=16).double()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # every weight random, so no coupling is the identity it starts as
        for p in model.parameters():
            p.copy_(0.4 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    x = torch.randint(0, 4, (6, 5), generator=g).double() + torch.rand(6, 5, generator=g, dtype=torch.float64)
    steps = model.transforms()

    def flow(v: torch.Tensor) -> torch.Tensor:
        return forward_through(steps, {KEY: v.unsqueeze(0)})[0][KEY][0]

    z, logdet = forward_through(steps, {KEY: x})
    for i in range(len(x)):
        sign, logabs = torch.linalg.slogdet(torch.autograd.functional.jacobian(flow, x[i]))
        assert float(sign) != 0.0
        assert float(logdet[i].detach()) == pytest.approx(float(logabs), abs=1e-9)
    torch.testing.assert_close(inverse_through(steps, z)[KEY], x, rtol=0, atol=1e-9)
    base = -0.5 * (z[KEY] ** 2).sum(-1) - 2.5 * math.log(2.0 * math.pi)
    torch.testing.assert_close(model.log_prob(x), base + logdet)


def test_variational_dequantiser_is_a_normalised_density_on_the_unit_interval() -> None:
    torch.manual_seed(0)
    deq = VariationalDequantiser(num_elements=1, num_levels=3, hidden=8, layers=1).double()
    with torch.no_grad():
        for p in deq.parameters():
            p.copy_(0.3 * torch.randn(p.shape, dtype=torch.float64))
    n = 200_000
    eps = torch.linspace(-9.0, 9.0, n, dtype=torch.float64).unsqueeze(-1)  # u = sigmoid(mu + sigma eps)
    for level in range(3):
        onehot = F.one_hot(torch.full((n, 1), level), 3).double()
        u, log_q = deq(onehot, eps)
        assert torch.all((u > 0) & (u < 1))
        # int q(u) du over (0, 1) by the trapezoid rule on the monotone grid of u
        mass = torch.trapezoid(log_q.exp(), u[:, 0])
        assert float(mass.detach()) == pytest.approx(1.0, abs=1e-4)


@pytest.fixture(scope="module", params=DEQUANTISATIONS)
def known(request: pytest.FixtureRequest) -> tuple[CompositionRealNVP, torch.Tensor, list[float]]:
    """A flow over two elements with three levels trained on a known distribution ``pi`` (3 x 3)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pi = torch.tensor([[0.30, 0.05, 0.05], [0.10, 0.20, 0.05], [0.05, 0.10, 0.10]])
        g = torch.Generator().manual_seed(0)
        cells = torch.multinomial(pi.flatten(), 4000, replacement=True, generator=g)
        counts = F.one_hot(torch.stack([cells // 3, cells % 3], dim=-1), 3).float()
        model = _model(2, 3, request.param, n_couplings=6, hidden=64, lr=5e-3)
        history = _train(model, counts, steps=400)
    finally:
        torch.set_num_threads(previous)
    return model.eval(), pi, history


def _grid_probabilities(model: CompositionRealNVP, per_cell: int = 60) -> tuple[torch.Tensor, float]:
    """``P(d)`` for the 3 x 3 level vectors, the flow's density summed by the midpoint rule over each cell
    ``d + [0, 1)^2``, and the total mass over the logit map's whole range (a little wider than
    ``[0, 3)^2``)."""
    alpha, levels = model.logit.alpha, 3
    low, high = -alpha * levels / (1 - 2 * alpha), levels * (1 - alpha) / (1 - 2 * alpha)

    def integral(a0: float, a1: float, b0: float, b1: float, n: int) -> torch.Tensor:
        ha, hb = (a1 - a0) / n, (b1 - b0) / n
        xa = a0 + ha * (torch.arange(n, dtype=torch.float64) + 0.5)
        xb = b0 + hb * (torch.arange(n, dtype=torch.float64) + 0.5)
        grid = torch.stack(torch.meshgrid(xa, xb, indexing="ij"), dim=-1).reshape(-1, 2)
        with torch.no_grad():
            return model.double().log_prob(grid).exp().sum() * ha * hb

    cells = torch.zeros(3, 3, dtype=torch.float64)
    for a in range(3):
        for b in range(3):
            cells[a, b] = integral(a, a + 1, b, b + 1, per_cell)
    total = float(integral(low, high, low, high, 4 * per_cell))
    model.float()
    return cells, total


def test_bound_lies_above_the_discrete_nll_and_approaches_the_entropy(known: tuple) -> None:
    model, pi, history = known
    assert sum(history[-50:]) / 50 < sum(history[:50]) / 50
    cells, total = _grid_probabilities(model)
    assert total == pytest.approx(1.0, abs=1e-3)  # the density normalises: the log-determinants are right
    assert float(cells.sum()) <= 1.0 + 1e-3  # disjoint cells hold at most the whole mass
    entropy = float(-(pi * pi.log()).sum())
    levels = torch.tensor([[a, b] for a in range(3) for b in range(3)])
    batch = {"counts": F.one_hot(levels, 3).float().repeat_interleave(500, dim=0)}
    draws = model.test_nll(batch, draws=4, generator=torch.Generator().manual_seed(0)).reshape(9, 500)
    bound = draws.mean(-1)
    stderr = draws.std(-1) / math.sqrt(500)
    discrete = -cells.flatten().log()
    assert torch.all(bound + 4 * stderr >= discrete), (bound, discrete)  # Jensen: above -log P(d)
    expected = float((pi.flatten().double() * bound).sum())
    assert expected >= entropy - 0.01  # no model's cross-entropy is below the entropy of the data
    assert expected < entropy + 0.25, (expected, entropy)  # and the flow learnt pi
    assert float((pi.flatten().double() * discrete).sum()) >= entropy - 1e-3


# ---------------------------------------------------------------------------------------------- real formulas
@pytest.fixture(scope="module")
def mp_e_form(data_dir: Path) -> tuple[CompositionCounts, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """3,000 seeded encodable mp_e_form training formulas (pinned split), and 500 test formulas."""
    return pinned_split_counts(data_dir)


@pytest.mark.parametrize("dequantisation", DEQUANTISATIONS)
def test_real_formulas_loss_falls_and_samples_decode_reproducibly(
    mp_e_form: tuple, dequantisation: str
) -> None:
    rep, data, test = mp_e_form
    model = _model(**rep.sizes(), dequantisation=dequantisation, lr=2e-3)
    g = torch.Generator().manual_seed(0)
    model.fit_data(data)
    before = model.eval().test_nll(test, draws=2, generator=g)
    history = _train(model.train(), data["counts"], steps=300)
    after = model.eval().test_nll(test, draws=2, generator=g)
    assert all(math.isfinite(v) for v in history)
    assert sum(history[-50:]) / 50 < sum(history[:50]) / 50 - 0.02, (history[:3], history[-3:])
    assert float(after.mean()) < float(before.mean()) - 1.0
    first = model.sample(40, generator=torch.Generator().manual_seed(3))
    again = model.sample(40, generator=torch.Generator().manual_seed(3))
    other = model.sample(40, generator=torch.Generator().manual_seed(4))
    assert torch.equal(first["counts"], again["counts"])
    assert not torch.equal(first["counts"], other["counts"])
    assert first["counts"].shape == (40, *model.shape) and torch.all(first["counts"].sum(-1) == 1)
    formulas = rep.decode(first)
    assert sum(isinstance(f, str) for f in formulas) >= 36, formulas


def test_config_switches_the_dequantisation() -> None:
    import hydra

    from tests.test_models import tiny_config

    for dequantisation in DEQUANTISATIONS:
        cfg = tiny_config("comp_realnvp", [f"model.module.dequantisation={dequantisation}"])
        model = hydra.utils.instantiate(cfg.module, num_elements=5, num_levels=9)
        assert isinstance(model, CompositionRealNVP) and model.dequantisation == dequantisation
        assert (model.dequantiser is not None) == (dequantisation == "variational")
    assert tiny_config("comp_realnvp").module.dequantisation == "variational"
