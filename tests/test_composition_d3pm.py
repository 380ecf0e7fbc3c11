"""``comp_d3pm``, discrete diffusion over the per-element count levels, on inputs with an independently known
answer.

- the prior term ``L_T`` of the categorical chain equals the KL divergence computed from the dense cumulative
  matrix (0 for the absorbing chain's mutual-information schedule);
- with a network that predicts the same distribution ``m`` of every element whatever the noisy input, the
  absorbing chain's model is exactly the product of the ``m``'s and its bound is tight: every draw equals
  ``-sum_e log m_e(d_e)``; for the uniform chain the bound, averaged over draws, matches the expected bound
  enumerated over the noisy states and lies above the model's exact NLL, got by multiplying out the reverse
  transition matrices;
- ancestral sampling over every step draws from the model's exact distribution (a chi-square test);
- trained on a data set of one formula, the bound falls towards 0 nats and no draw of it is ever negative;
- on real mp_e_form formulas the loss falls, and the held-out bound falls from that of the untrained model
  (about 200 nats) to within 10% of the NLL of the product of the data's own per-element marginals;
- samples decode to formulas, a seed fixes them; both chains train and sample; the config switches the kind.
"""

from __future__ import annotations

import functools
import itertools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from bench.datasets.composition_representation import CompositionCounts
from bench.models.composition.d3pm import CompositionD3PM, ElementMLP, ElementTransformer
from bench.models.diffusion.diffcsp import PredictorCorrectorSampler
from bench.models.diffusion.processes import Categorical
from scipy.stats import chi2
from torch import nn

from tests.composition_helpers import pinned_split_counts, train_on_counts

pytestmark = pytest.mark.usefixtures("one_thread")

KINDS = ("absorbing", "uniform")
STEPS = 300
BATCH = 128


def _model(
    num_elements: int, num_levels: int, kind: str = "absorbing", T: int = 50, lr: float = 3e-3,
    network: str = "mlp", seed: int = 0,
) -> CompositionD3PM:
    torch.manual_seed(seed)
    denoiser = (
        functools.partial(ElementMLP, hidden=64, n_blocks=2, time_dim=32) if network == "mlp"
        else functools.partial(ElementTransformer, d_model=16, n_layers=1, n_heads=2)
    )
    return CompositionD3PM(
        functools.partial(torch.optim.Adam, lr=lr), num_elements, num_levels, Categorical(T, kind), denoiser,
        PredictorCorrectorSampler(steps=20, step_lr=0.0),
    )


def _train(model: CompositionD3PM, counts: torch.Tensor, steps: int, batch: int = BATCH) -> list[float]:
    return train_on_counts(model, counts, steps, batch, torch_seed=1)


class ConstantLogits(nn.Module):
    """A "network" that predicts ``p(x0 | x_t) = m`` for every element, whatever ``x_t`` and ``t``."""

    def __init__(self, probs: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", probs.log())

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x_t.shape[0], *self.logits.shape)


def _with_constant_network(kind: str, probs: torch.Tensor, T: int) -> CompositionD3PM:
    model = _model(probs.shape[0], probs.shape[1], kind, T)
    model.net = ConstantLogits(probs)
    return model.eval()


# ---------------------------------------------------------------------------------------------- the bound
@pytest.mark.parametrize("kind", KINDS)
def test_prior_term_is_the_kl_of_the_dense_cumulative_matrix(kind: str) -> None:
    process = Categorical(timesteps=40, kind=kind)
    K = 5
    x0 = F.one_hot(torch.tensor([[0, 3, 4], [2, 2, 1]]), K).float()
    got = process.prior_kl(process.states(x0))
    q = x0.double().reshape(-1, K) @ process.cumulative_matrix(40, K)[:K]  # rows: q(x_T | x0)
    pi = process.stationary(K)
    want = (q * torch.where(q > 0, (q / pi).log(), torch.zeros_like(q))).sum(-1).reshape(2, 3)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    if kind == "absorbing":  # the mutual-information schedule ends all [MASK]: L_T = 0 exactly
        assert torch.all(got == 0)
    else:
        assert torch.all(got > 0)
    # an absorbing chain that keeps mass off [MASK] at T (cosine schedule) can never reach the data: L_T = inf
    cosine = Categorical(40, "absorbing", schedule="cosine")
    assert torch.isinf(cosine.prior_kl(cosine.states(x0))).all()


def _joint_states(E: int, S: int) -> torch.Tensor:
    """Every joint state of ``E`` elements with ``S`` states each, one-hot ``[S^E, E, S]``."""
    index = torch.tensor(list(itertools.product(range(S), repeat=E)))
    return F.one_hot(index, S).float()


@torch.no_grad()
def _exact_x0_distribution(model: CompositionD3PM) -> torch.Tensor:
    """The model's exact distribution of ``x_0`` over every joint state ``[S^E]``: the prior times the joint
    reverse transition matrix of every step, multiplied out (each row a product over the elements of
    ``p(x_{t-1, e} | x_t)``, the network evaluated at every joint ``x_t``)."""
    process, E = model.process, model.num_elements
    S = model.num_states
    states = _joint_states(E, S)
    index = states.argmax(-1)
    pi = process.stationary(model.num_levels)
    dist = pi[index].prod(-1)
    for step in range(process.timesteps, 0, -1):
        t = torch.full((len(states),), step)
        probs = process.reverse_probs(model.predict(states, t), states, t, t - 1).double()  # [N, E, S]
        matrix = torch.ones(len(states), len(states), dtype=torch.float64)
        for e in range(E):
            matrix = matrix * probs[:, e, :][:, index[:, e]]
        # rows of states x_t the chain cannot be in (an unmasked level at T) are undefined; they carry no mass
        dist = dist @ torch.nan_to_num(matrix, nan=0.0)
    return dist


@torch.no_grad()
def _enumerated_bound(model: CompositionD3PM, levels: torch.Tensor) -> float:
    """The expected bound of one composition, every joint noisy state enumerated:
    ``L_T + sum_t sum_j q(x_t = j | x0) sum_e vb_t,e(x_t = j)``."""
    process, E, S = model.process, model.num_elements, model.num_states
    states = _joint_states(E, S)
    index = states.argmax(-1)
    x0 = process.states(F.one_hot(levels, model.num_levels).float())
    total = float(process.prior_kl(x0).sum())
    for step in range(1, process.timesteps + 1):
        q = x0.double() @ process.cumulative_matrix(step, model.num_levels)  # [E, S]
        joint = torch.stack([q[e, index[:, e]] for e in range(E)]).prod(0)
        t = torch.full((len(states),), step)
        x0s = x0.expand(len(states), -1, -1)
        vb = process.loss(model.predict(states, t), x0s, states, t)["vb"].double().sum(-1)
        total += float(torch.where(joint > 0, joint * vb, 0.0).sum())  # unreachable states: no term
    return total


def _randomised(model: CompositionD3PM, seed: int, scale: float = 0.7) -> CompositionD3PM:
    """The model with every weight redrawn from N(0, scale^2): a network far from any constant."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def _check_draws_match(model: CompositionD3PM, levels: torch.Tensor, enumerated: float) -> None:
    """``test_nll`` (every step; stratified with 3 and 12 strata) averages to the enumerated bound."""
    batch = {"counts": F.one_hot(levels, model.num_levels).float().unsqueeze(0).expand(3000, -1, -1)}
    for draws, every in ((1, True), (3, False), (12, False)):
        g = torch.Generator().manual_seed(7)
        values = model.test_nll(batch, draws=draws, every_step=every, generator=g)
        assert torch.all(values >= 0)
        stderr = float(values.std()) / math.sqrt(len(values))
        assert abs(float(values.mean()) - enumerated) < 4 * stderr + 1e-6, (draws, float(values.mean()))


@pytest.mark.parametrize("kind", KINDS)
def test_constant_predictor_gives_the_product_model_and_a_tight_bound(kind: str) -> None:
    """With ``p(x0 | x_t) = m`` the reverse chain is the time reversal of the forward chain started from m:
    its x_0 is distributed as m (the uniform chain up to its tiny L_T), and the bound equals the NLL."""
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    model = _with_constant_network(kind, probs, T=12)
    product = (probs[0][:, None] * probs[1][None, :]).double()
    exact = _exact_x0_distribution(model).reshape(model.num_states, model.num_states)[:3, :3]
    torch.testing.assert_close(exact, product, rtol=1e-5, atol=1e-7)
    for levels in (torch.tensor([0, 2]), torch.tensor([2, 1])):
        enumerated = _enumerated_bound(model, levels)
        nll = -math.log(float(product[levels[0], levels[1]]))
        assert enumerated == pytest.approx(nll, abs=1e-5)
        assert enumerated >= -math.log(float(exact[levels[0], levels[1]])) - 1e-6  # float32 network
    _check_draws_match(model, torch.tensor([0, 2]), _enumerated_bound(model, torch.tensor([0, 2])))


@pytest.mark.parametrize("kind", KINDS)
def test_bound_of_a_random_network_lies_above_its_exact_nll(kind: str) -> None:
    model = _randomised(_model(2, 3, kind, T=10), seed=3)
    dist = _exact_x0_distribution(model).reshape(model.num_states, model.num_states)
    levels_mass = dist[:3, :3]
    assert float(levels_mass.sum()) == pytest.approx(1.0, abs=1e-6)  # no [MASK] survives; a proper model
    gaps = []
    for a, b in itertools.product(range(3), repeat=2):
        levels = torch.tensor([a, b])
        enumerated = _enumerated_bound(model, levels)
        gaps.append(enumerated + math.log(float(levels_mass[a, b])))
    assert min(gaps) >= -1e-6, gaps  # an upper bound on every composition's exact NLL (float32 network)
    assert max(gaps) > 1e-3, gaps  # and not trivially tight: the network depends on x_t
    _check_draws_match(model, torch.tensor([1, 2]), _enumerated_bound(model, torch.tensor([1, 2])))


class CrossTable(nn.Module):
    """A "network" over two elements whose prediction for each element is a fixed random table of the other
    element's noisy state: strongly dependent levels, unlike a small random MLP's."""

    def __init__(self, num_states: int, num_classes: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("tables", 1.5 * torch.randn(2, num_states, num_classes, generator=g))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.stack([x_t[:, 1] @ self.tables[0], x_t[:, 0] @ self.tables[1]], dim=1)


@pytest.mark.parametrize("kind", KINDS)
def test_ancestral_samples_follow_the_exact_distribution_of_the_model(kind: str) -> None:
    model = _model(2, 3, kind, T=10)
    model.net = CrossTable(model.num_states, 3, seed=2)
    model.eval()
    model.sampler = PredictorCorrectorSampler(steps=None, step_lr=0.0)  # every step: the model of the bound
    probs = _exact_x0_distribution(model).reshape(model.num_states, model.num_states)[:3, :3].flatten()
    n = 20_000
    levels = model.sample(n, generator=torch.Generator().manual_seed(0))["counts"].argmax(-1)
    observed = torch.bincount(levels[:, 0] * 3 + levels[:, 1], minlength=9).double()
    statistic = float(((observed - n * probs) ** 2 / (n * probs)).sum())
    assert chi2.sf(statistic, df=8) > 1e-4, (observed / n, probs)
    # the joint is not the product of its marginals: the elements' levels depend on each other
    joint = probs.reshape(3, 3)
    assert float((joint - joint.sum(1, keepdim=True) * joint.sum(0, keepdim=True)).abs().max()) > 0.02


def test_one_formula_bound_falls_towards_zero_and_is_never_negative() -> None:
    rep = CompositionCounts(levels=9).fit(["Fe2O3", "NaCl", "LiCoO2", "BaTiO3"])
    data = rep.encode(["Fe2O3"])["counts"]
    model = _model(**rep.sizes(), T=50, lr=1e-2)
    g = torch.Generator().manual_seed(0)
    batch = {"counts": data.expand(64, -1, -1)}
    before = model.eval().test_nll(batch, draws=4, generator=g)
    _train(model.train(), data, steps=150, batch=32)
    after = model.eval().test_nll(batch, draws=4, generator=g)
    every = model.test_nll({"counts": data.expand(8, -1, -1)}, every_step=True, generator=g)
    assert float(before.mean()) > 5.0
    assert float(after.mean()) < min(0.05 * float(before.mean()), 0.5), float(after.mean())
    for values in (before, after, every):
        assert torch.all(values >= 0)
    assert float(every.mean()) < 0.5


# ---------------------------------------------------------------------------------------------- real formulas
@pytest.fixture(scope="module")
def mp_e_form(data_dir: Path) -> tuple[CompositionCounts, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """3,000 seeded encodable mp_e_form training formulas (pinned split), and 500 test formulas."""
    return pinned_split_counts(data_dir)


@pytest.fixture(scope="module")
def trained(mp_e_form: tuple) -> tuple[CompositionD3PM, list[float], torch.Tensor]:
    """A small comp_d3pm (absorbing) trained for :data:`STEPS` steps, its loss history and its held-out bound
    before training."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rep, data, test = mp_e_form
        model = _model(**rep.sizes(), T=100)
        before = model.eval().test_nll(test, draws=4, generator=torch.Generator().manual_seed(0))
        history = _train(model.train(), data["counts"], STEPS)
    finally:
        torch.set_num_threads(previous)
    return model.eval(), history, before


def test_loss_falls_and_the_bound_reaches_the_marginals(mp_e_form: tuple, trained: tuple) -> None:
    rep, data, test = mp_e_form
    model, history, before = trained
    assert all(math.isfinite(v) for v in history)
    assert sum(history[-50:]) / 50 < 0.5 * sum(history[:50]) / 50, (history[:5], history[-5:])
    after = model.test_nll(test, draws=8, generator=torch.Generator().manual_seed(1))
    counts = data["counts"].sum(0) + 0.5  # the per-element marginals of the training formulas, smoothed
    marginal = -(test["counts"] * (counts / counts.sum(-1, keepdim=True)).log()).sum((1, 2))
    assert torch.all(after >= 0)
    assert float(after.mean()) < 0.5 * float(before.mean())
    assert float(after.mean()) < 1.1 * float(marginal.mean()), (float(after.mean()), float(marginal.mean()))


def test_samples_decode_to_formulas_and_a_seed_fixes_them(mp_e_form: tuple, trained: tuple) -> None:
    rep = mp_e_form[0]
    model = trained[0]
    first = model.sample(40, generator=torch.Generator().manual_seed(3))
    again = model.sample(40, generator=torch.Generator().manual_seed(3))
    other = model.sample(40, generator=torch.Generator().manual_seed(4))
    assert torch.equal(first["counts"], again["counts"])
    assert not torch.equal(first["counts"], other["counts"])
    assert first["counts"].shape == (40, *model.shape)
    assert torch.all(first["counts"].sum(-1) == 1)
    formulas = rep.decode(first)
    decoded = [f for f in formulas if isinstance(f, str)]
    assert len(decoded) >= 36, formulas  # an all-absent draw is a decode failure; few should be
    assert model.nfe == 20


@pytest.mark.parametrize("network", ["mlp", "transformer"])
@pytest.mark.parametrize("kind", KINDS)
def test_both_chains_and_networks_train_and_sample(mp_e_form: tuple, kind: str, network: str) -> None:
    rep, data, _ = mp_e_form
    model = _model(**rep.sizes(), kind=kind, network=network, T=50)
    history = _train(model, data["counts"], steps=60, batch=64)
    assert sum(history[-15:]) / 15 < sum(history[:15]) / 15
    sample = model.sample(6, generator=torch.Generator().manual_seed(0))
    assert torch.all(sample["counts"].sum(-1) == 1)
    assert len(rep.decode(sample)) == 6


def test_config_defaults_to_absorbing_and_switches_kind() -> None:
    import hydra

    from tests.test_models import tiny_config

    for kind in KINDS:
        overrides = [] if kind == "absorbing" else ["model.module.process.kind=uniform"]
        cfg = tiny_config("comp_d3pm", overrides)
        assert cfg.module.process.kind == kind
        model = hydra.utils.instantiate(cfg.module, num_elements=5, num_levels=9)
        assert isinstance(model, CompositionD3PM) and model.process.kind == kind
        assert model.process.num_states(9) == model.num_states
