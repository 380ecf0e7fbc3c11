"""D3PM's categorical chains and the ``d3pm`` variant, on inputs with an independently known answer.

The process computes everything in closed form; these tests check it against the dense transition matrices
multiplied out, Bayes' rule applied by brute force, and sampling frequencies.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator

import pytest
import torch
from bench.datasets.codec import CrystalCodec
from bench.datasets.tiny import tiny_structures
from bench.models.backbones.periodic import PeriodicMPNN
from bench.models.diffusion.d3pm import CrystalD3PM
from bench.models.diffusion.diffcsp import PredictorCorrectorSampler
from bench.models.diffusion.processes import Categorical, VPGaussian, WrappedNormalVE, categorical_betas
from scipy.stats import chi2

KINDS = ("absorbing", "uniform")
K = 4  # element classes in the process tests


pytestmark = pytest.mark.usefixtures("one_thread")


def onehot(index: torch.Tensor | list[int], process: Categorical, classes: int = K) -> torch.Tensor:
    """States of the given class indices (index ``classes`` is [MASK] for the absorbing chain)."""
    index = torch.as_tensor(index)
    return torch.nn.functional.one_hot(index, process.num_states(classes)).to(torch.float32)


def steps_between(process: Categorical, s: int, t: int, classes: int = K) -> torch.Tensor:
    """``Q_{s+1} ... Q_t`` multiplied out (the identity when ``s = t``)."""
    out = torch.eye(process.num_states(classes), dtype=torch.float64)
    for step in range(s + 1, t + 1):
        out = out @ process.transition_matrix(step, classes)
    return out


# ---------------------------------------------------------------------------------------------- matrices
@pytest.mark.parametrize("kind", KINDS)
def test_every_transition_and_cumulative_matrix_is_stochastic(kind: str) -> None:
    process = Categorical(timesteps=30, kind=kind)
    for t in range(1, 31):
        for q in (process.transition_matrix(t, K), process.cumulative_matrix(t, K)):
            assert torch.all(q >= 0)
            torch.testing.assert_close(q.sum(dim=1), torch.ones(q.shape[0], dtype=torch.float64),
                                       atol=1e-12, rtol=0)
    torch.testing.assert_close(process.cumulative_matrix(0, K), torch.eye(process.num_states(K),
                                                                          dtype=torch.float64))


@pytest.mark.parametrize("kind", KINDS)
def test_cumulative_matrix_is_the_product_of_the_steps(kind: str) -> None:
    process = Categorical(timesteps=25, kind=kind)
    product = torch.eye(process.num_states(K), dtype=torch.float64)
    for t in range(1, 26):
        product = product @ process.transition_matrix(t, K)
        torch.testing.assert_close(process.cumulative_matrix(t, K), product, atol=1e-12, rtol=0)


def test_uniform_transition_matrix_is_the_papers() -> None:
    """``[Q_t]_ij = (1 - beta_t) [i = j] + beta_t / K`` (Austin et al., section 3.1)."""
    process = Categorical(timesteps=10, kind="uniform")
    beta = float(process.betas[4])
    eye = torch.eye(K, dtype=torch.float64)
    expected = torch.full((K, K), beta / K, dtype=torch.float64) + (1 - beta) * eye
    torch.testing.assert_close(process.transition_matrix(4, K), expected)


def test_absorbing_transition_matrix_is_the_papers() -> None:
    """Stay with ``1 - beta_t``, else jump to [MASK]; [MASK] stays (Austin et al., appendix A.2.2)."""
    process = Categorical(timesteps=10, kind="absorbing")
    beta = float(process.betas[4])
    q = process.transition_matrix(4, K)
    for i in range(K):
        expected = torch.zeros(K + 1, dtype=torch.float64)
        expected[i], expected[K] = 1 - beta, beta
        torch.testing.assert_close(q[i], expected)
    torch.testing.assert_close(q[K], torch.nn.functional.one_hot(torch.tensor(K), K + 1).double())


def test_stationary_distribution_is_reached_at_T() -> None:
    """With the paper's schedules and T = 1000: all [MASK] exactly (absorbing); uniform to within 2e-6 (the
    clipped cosine schedule leaves ``alpha_bar_T = 1.56e-6`` of the data)."""
    absorbing = Categorical(timesteps=1000, kind="absorbing")
    mask_column = torch.zeros(K + 1, K + 1, dtype=torch.float64)
    mask_column[:, K] = 1.0
    assert torch.equal(absorbing.cumulative_matrix(1000, K), mask_column)
    uniform = Categorical(timesteps=1000, kind="uniform")
    q_bar = uniform.cumulative_matrix(1000, K)
    assert float((q_bar - 1.0 / K).abs().max()) < 2e-6
    assert float((uniform.cumulative_matrix(999, K) - 1.0 / K).abs().max()) > 1e-4  # not reached earlier


def test_schedules_are_the_papers() -> None:
    T = 200
    # Absorbing, mutual information: beta_t = 1/(T - t + 1), hence alpha_bar_t = 1 - t/T.
    absorbing = Categorical(timesteps=T, kind="absorbing")
    t = torch.arange(T + 1, dtype=torch.float64)
    torch.testing.assert_close(absorbing.alpha_bars, 1.0 - t / T, atol=1e-12, rtol=0)
    # ... which makes I(x_t; x0) fall linearly: I = (1 - t/T) H(x0) for any x0 distribution.
    p0 = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    entropy = -(p0 * p0.log()).sum()
    for step in (20, 100, 170):
        joint = p0.unsqueeze(1) * absorbing.cumulative_matrix(step, K)[:K]
        marginal = joint.sum(0, keepdim=True)
        ratio = torch.where(joint > 0, joint / (p0.unsqueeze(1) * marginal), torch.ones_like(joint))
        info = (joint * ratio.log()).sum()
        assert float(info) == pytest.approx((1 - step / T) * float(entropy), rel=1e-9)
    # Uniform, cosine: alpha_bar_t = cos((t/T + s)/(1 + s) pi/2) / cos(s/(1 + s) pi/2) before the final clip.
    uniform = Categorical(timesteps=T, kind="uniform")
    s = 0.008
    expected = torch.cos((t / T + s) / (1 + s) * math.pi / 2) / math.cos(s / (1 + s) * math.pi / 2)
    torch.testing.assert_close(uniform.alpha_bars[:T], expected[:T], atol=1e-12, rtol=0)
    assert float(uniform.betas[T]) == pytest.approx(0.999)
    with pytest.raises(ValueError, match="closed form only for the absorbing"):
        categorical_betas("uniform", "mutual_information", T)


# ---------------------------------------------------------------------------------------------- sampling
def _chi_square_ok(counts: torch.Tensor, probs: torch.Tensor, p_value: float = 1e-4) -> bool:
    """Pearson's test over the cells of positive probability; zero-probability cells must stay empty."""
    if torch.any(counts[probs == 0] > 0):
        return False
    keep = probs > 0
    n = counts.sum()
    expected = n * probs[keep]
    statistic = float(((counts[keep] - expected) ** 2 / expected).sum())
    return statistic < chi2.ppf(1 - p_value, int(keep.sum()) - 1)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("step", [3, 12, 25])
def test_q_sample_frequencies_match_x0_times_q_bar(kind: str, step: int) -> None:
    process = Categorical(timesteps=30, kind=kind)
    draws, atoms = 4000, 25
    x0_class = 2
    x0 = onehot(torch.full((draws, atoms), x0_class), process)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(step))
    x_t = process.q_sample(x0, torch.full((draws,), step), noise)
    assert torch.all(x_t.sum(-1) == 1)
    counts = x_t.sum(dim=(0, 1)).double()
    probs = process.cumulative_matrix(step, K)[x0_class]
    assert _chi_square_ok(counts, probs), (counts / counts.sum(), probs)
    # A wrong distribution is rejected by the same test (the test can fail).
    assert not _chi_square_ok(counts, process.cumulative_matrix(step + 3, K)[x0_class])


def test_uniform_prior_is_uniform_and_absorbing_prior_is_all_mask() -> None:
    uniform = Categorical(timesteps=10, kind="uniform")
    draws = uniform.prior((20000, K), torch.Generator().manual_seed(0), torch.device("cpu"))
    assert _chi_square_ok(draws.sum(0).double(), torch.full((K,), 1.0 / K, dtype=torch.float64))
    absorbing = Categorical(timesteps=10, kind="absorbing")
    prior = absorbing.prior((3, 5, K + 1), torch.Generator().manual_seed(0), torch.device("cpu"))
    assert torch.equal(prior, onehot(torch.full((3, 5), K), absorbing))


def test_absorbing_forward_chain_never_leaves_mask_and_matches_its_marginals() -> None:
    T, atoms = 20, 20000
    process = Categorical(timesteps=T, kind="absorbing")
    g = torch.Generator().manual_seed(0)
    x0 = onehot(torch.randint(0, K, (atoms,), generator=g), process)
    x, was_masked = x0, torch.zeros(atoms, dtype=torch.bool)
    for t in range(1, T + 1):
        x = process.q_step(x, torch.full((atoms,), t), torch.randn(x.shape, generator=g))
        masked = x[:, K] == 1
        assert torch.all(masked[was_masked]), "an atom left [MASK]"
        assert torch.equal(x[~masked], x0[~masked]), "an unmasked atom changed its element"
        # Markov chain of Q_t and the cumulative Q_bar_t agree: P(masked by t) = 1 - alpha_bar_t = t/T.
        p = t / T
        assert abs(float(masked.double().mean()) - p) < 4.5 * math.sqrt(p * (1 - p) / atoms) + 1e-12
        was_masked = masked
    assert torch.all(was_masked)  # beta_T = 1


def test_uniform_forward_chain_matches_q_bar() -> None:
    T, atoms = 12, 30000
    process = Categorical(timesteps=T, kind="uniform")
    g = torch.Generator().manual_seed(1)
    x = onehot(torch.zeros(atoms, dtype=torch.long), process)
    for t in range(1, 7):
        x = process.q_step(x, torch.full((atoms,), t), torch.randn(x.shape, generator=g))
    assert _chi_square_ok(x.sum(0).double(), process.cumulative_matrix(6, K)[0])


@pytest.mark.parametrize("kind", KINDS)
def test_sampling_is_reproducible_under_a_generator(kind: str) -> None:
    process = Categorical(timesteps=20, kind=kind)
    x0 = onehot(torch.randint(0, K, (6, 5), generator=torch.Generator().manual_seed(0)), process)
    t = torch.full((6,), 15)
    logits = torch.randn(6, 5, K, generator=torch.Generator().manual_seed(1))

    def run(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        x_t = process.q_sample(x0, t, torch.randn(x0.shape, generator=g))
        return x_t, process.reverse_step(x_t, logits, t, t - 5, torch.randn(x0.shape, generator=g))

    first, again, other = run(3), run(3), run(4)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(first, other, strict=True))


# ---------------------------------------------------------------------------------------------- posterior
def _cases(process: Categorical, T: int) -> Iterator[tuple[int, int, int, int]]:
    """``(t, s, x0, x_t)`` with ``q(x_t | x0) > 0``, for one-step and respaced (``s < t - 1``) reverses."""
    for t in range(1, T + 1):
        for s in sorted({t - 1, t // 2, 0}):
            q_bar = process.cumulative_matrix(t, K)
            for i in range(K):
                for k in range(process.num_states(K)):
                    if q_bar[i, k] > 0:
                        yield t, s, i, k


@pytest.mark.parametrize("kind", KINDS)
def test_posterior_is_bayes_rule_on_the_dense_matrices(kind: str) -> None:
    """``q(x_s = j | x_t = k, x0 = i) = Q_bar_s[i, j] (Q_{s+1}..Q_t)[j, k] / Q_bar_t[i, k]``."""
    T = 10
    process = Categorical(timesteps=T, kind=kind)
    cases = list(_cases(process, T))
    t = torch.tensor([c[0] for c in cases])
    s = torch.tensor([c[1] for c in cases])
    x0 = onehot([c[2] for c in cases], process)
    x_t = onehot([c[3] for c in cases], process)
    got = process.posterior_probs(x0, x_t, t, s)
    for row, (tt, ss, i, k) in enumerate(cases):
        joint = process.cumulative_matrix(ss, K)[i] * steps_between(process, ss, tt)[:, k]
        expected = joint / process.cumulative_matrix(tt, K)[i, k]
        torch.testing.assert_close(got[row].double(), expected, atol=2e-6, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_reverse_is_the_x0_parameterisation_of_the_paper(kind: str) -> None:
    """``p(x_s | x_t) ~ sum_x0 q(x_s, x_t | x0) p0(x0)`` (eq. 4), which is the posterior averaged over ``p0``
    reweighted by ``q(x_t | x0)``: ``sum_x0 q(x_s | x_t, x0) w(x0)``, ``w ~ p0(x0) q(x_t | x0)``."""
    T = 10
    process = Categorical(timesteps=T, kind=kind)
    cases = [(t, s, k) for t in range(1, T + 1) for s in sorted({t - 1, t // 3, 0})
             for k in range(process.num_states(K))
             if process.cumulative_matrix(t, K)[:K, k].sum() > 0]  # x_t reachable from some x0
    logits = torch.randn(len(cases), K, generator=torch.Generator().manual_seed(0)) * 2
    got = process.reverse_probs(logits, onehot([c[2] for c in cases], process),
                                torch.tensor([c[0] for c in cases]), torch.tensor([c[1] for c in cases]))
    p0 = torch.softmax(logits.double(), dim=-1)
    for row, (t, s, k) in enumerate(cases):
        between = steps_between(process, s, t)[:, k]
        unnormalised = (p0[row].unsqueeze(1) * process.cumulative_matrix(s, K)[:K]).sum(0) * between
        torch.testing.assert_close(got[row].double(), unnormalised / unnormalised.sum(), atol=2e-6, rtol=0)
        q_bar_t = process.cumulative_matrix(t, K)
        w = p0[row] * q_bar_t[:K, k]
        mixture = sum(
            w[i] * process.cumulative_matrix(s, K)[i] * between / q_bar_t[i, k] for i in range(K) if w[i] > 0
        ) / w.sum()
        torch.testing.assert_close(got[row].double(), mixture, atol=2e-6, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_point_mass_prediction_gives_the_posterior_and_zero_vb(kind: str) -> None:
    T = 10
    process = Categorical(timesteps=T, kind=kind)
    cases = [(t, i, k) for t, s, i, k in _cases(process, T) if s == t - 1]
    t = torch.tensor([c[0] for c in cases])
    x0 = onehot([c[1] for c in cases], process)
    x_t = onehot([c[2] for c in cases], process)
    point_mass = torch.log(x0[:, :K])  # log p(x0 | x_t): 0 on the true class, -inf elsewhere
    torch.testing.assert_close(process.reverse_probs(point_mass, x_t, t, t - 1),
                               process.posterior_probs(x0, x_t, t, t - 1), atol=0, rtol=0)
    exact = process.loss(point_mass, x0, x_t, t)
    assert torch.all(exact["vb"].abs() < 1e-6) and torch.all(exact["ce"] == 0)
    # A confident finite prediction is nearly exact; a wrong one costs.
    near = process.loss(x0[:, :K] * 30.0, x0, x_t, t)
    assert torch.all(near["vb"] < 1e-5)
    wrong = process.loss(torch.roll(x0[:, :K], 1, dims=-1) * 30.0, x0, x_t, t)
    assert float(wrong["vb"].mean()) > 0.1 and torch.all(wrong["ce"] > 25)


@pytest.mark.parametrize("kind", KINDS)
def test_vb_at_t1_is_the_reconstruction_nll(kind: str) -> None:
    """At ``t = 1`` the posterior is the point mass on ``x0``, so ``L_vb = -log p(x0 | x_1)`` (eq. 4 at
    ``s = 0``, by brute force), and the hybrid loss adds ``ce_weight`` times the cross-entropy."""
    process = Categorical(timesteps=10, kind=kind, ce_weight=0.01)
    x0 = onehot([1, 3], process)
    x_t = onehot([1, K if kind == "absorbing" else 0], process)  # unchanged; masked (or re-drawn)
    logits = torch.tensor([[0.3, -1.0, 2.0, 0.1], [1.0, 0.0, -0.5, 0.2]])
    terms = process.loss(logits, x0, x_t, torch.tensor([1, 1]))
    p0 = torch.softmax(logits.double(), dim=-1)
    q1 = process.cumulative_matrix(1, K)
    for row, (i, k) in enumerate([(1, 1), (3, K if kind == "absorbing" else 0)]):
        posterior = p0[row] * q1[:K, k]
        assert float(terms["vb"][row]) == pytest.approx(-math.log(posterior[i] / posterior.sum()), rel=1e-4)
        assert float(terms["ce"][row]) == pytest.approx(-math.log(p0[row, i]), rel=1e-5)
    torch.testing.assert_close(terms["loss"], terms["vb"] + 0.01 * terms["ce"])


def test_absorbing_reverse_keeps_unmasked_atoms_and_leaves_no_mask_at_the_end() -> None:
    process = Categorical(timesteps=50, kind="absorbing")
    g = torch.Generator().manual_seed(0)
    classes = torch.randint(0, K + 1, (500, 6), generator=g)
    x_t = onehot(classes, process)
    logits = torch.randn(500, 6, K, generator=g) * 3
    for t, s in ((40, 39), (40, 10), (5, 0), (49, 0)):  # (an unmasked atom cannot be seen at t = T)
        out = process.reverse_step(x_t, logits, torch.full((500,), t), torch.full((500,), s),
                                   torch.randn(x_t.shape, generator=g))
        unmasked = classes < K
        assert torch.equal(out[unmasked], x_t[unmasked])
        if s == 0:
            assert torch.all(out[..., K] == 0)
        else:
            assert torch.any(out[~unmasked][:, K] == 1) and torch.any(out[~unmasked][:, K] == 0)


@pytest.mark.parametrize("kind", KINDS)
def test_empty_rows_are_carried_through_and_cost_nothing(kind: str) -> None:
    process = Categorical(timesteps=20, kind=kind)
    g = torch.Generator().manual_seed(0)
    x0 = onehot(torch.randint(0, K, (8, 5), generator=g), process)
    x0[:, 3:] = 0.0
    t = torch.arange(1, 21, 20 // 8)[:8]
    x_t = process.q_sample(x0, t, torch.randn(x0.shape, generator=g))
    assert torch.all(x_t[:, 3:] == 0) and torch.all(x_t[:, :3].sum(-1) == 1)
    logits = torch.randn(8, 5, K, generator=g, requires_grad=True)
    terms = process.loss(logits, x0, x_t, t)
    assert torch.all(terms["loss"][:, 3:] == 0)
    terms["loss"].sum().backward()
    assert torch.all(torch.isfinite(logits.grad)) and torch.all(logits.grad[:, 3:] == 0)
    out = process.reverse_step(x_t, logits.detach(), t, t - 1, torch.randn(x0.shape, generator=g))
    assert torch.all(out[:, 3:] == 0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("steps", [None, 7])
def test_pc_sampler_with_an_exact_predictor_lands_on_the_target_types(kind: str, steps: int | None) -> None:
    T = 40
    processes = {"atom_types": Categorical(timesteps=T, kind=kind)}
    target = torch.tensor([[0, 3, 1], [2, 2, 0]])
    g = torch.Generator().manual_seed(0)
    shape = (2, 3, processes["atom_types"].num_states(K))
    x = {"atom_types": processes["atom_types"].prior(shape, g, torch.device("cpu"))}
    exact = torch.nn.functional.one_hot(target, K).float() * 50.0

    def noise() -> dict[str, torch.Tensor]:
        return {"atom_types": torch.randn(shape, generator=g)}

    sampler = PredictorCorrectorSampler(steps=steps, step_lr=1e-5)
    out = sampler(lambda x_t, t: {"atom_types": exact}, processes, x, T, noise)
    assert torch.equal(out["atom_types"].argmax(-1), target)
    assert torch.all(out["atom_types"].sum(-1) == 1)


# ---------------------------------------------------------------------------------------------- the model
@pytest.fixture(scope="module")
def data() -> tuple[CrystalCodec, dict[str, torch.Tensor]]:
    structures = tiny_structures("train")
    codec = CrystalCodec(max_atoms=8).fit(structures)
    return codec, codec.encode(structures)


def make_model(codec: CrystalCodec, kind: str = "absorbing", T: int = 50) -> CrystalD3PM:
    torch.manual_seed(0)
    return CrystalD3PM(
        backbone=functools.partial(PeriodicMPNN, width=32, n_layers=2, num_frequencies=2),
        optimizer=functools.partial(torch.optim.AdamW, lr=3e-3),
        num_types=codec.num_types,
        max_atoms=codec.max_atoms,
        processes={"frac_coords": WrappedNormalVE(timesteps=T), "lattice": VPGaussian(timesteps=T, clip=5.0)},
        type_process=Categorical(timesteps=T, kind=kind),
        sampler=PredictorCorrectorSampler(steps=10),
        time_dim=16,
    )


@pytest.mark.parametrize("kind", KINDS)
def test_tiny_model_loss_falls_over_100_steps(kind: str, data: tuple[CrystalCodec, dict]) -> None:
    codec, batch = data
    model = make_model(codec, kind)
    model.fit_data(batch)
    optimizer = model.configure_optimizers()
    totals, types = [], []
    torch.manual_seed(1)
    for _ in range(100):
        terms = model.loss(batch)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        totals.append(float(terms["loss"].detach()))
        types.append(float(terms["atom_types_vb"].detach() + 0.01 * terms["atom_types_ce"].detach()))
    assert all(math.isfinite(v) for v in totals)
    assert sum(totals[-20:]) / 20 < 0.7 * sum(totals[:20]) / 20, (totals[:20], totals[-20:])
    # the type term alone improves: the cross-entropy of x0 falls well below its start
    assert sum(types[-20:]) / 20 < sum(types[:20]) / 20


def test_pad_slots_stay_out_of_the_loss(data: tuple[CrystalCodec, dict]) -> None:
    codec, batch = data
    model = make_model(codec)
    junk = {k: v.clone() for k, v in batch.items()}
    pads = junk["mask"] == 0
    assert pads.any()
    junk["atom_types"][pads] = torch.nn.functional.one_hot(torch.tensor(3), codec.num_types).float()
    junk["frac_coords"][pads] = 0.37
    torch.manual_seed(5)
    clean = model.loss(batch)
    torch.manual_seed(5)
    dirty = model.loss(junk)
    for key in clean:
        assert torch.equal(clean[key], dirty[key]), key


@pytest.mark.parametrize("kind", KINDS)
def test_model_samples_are_reproducible_and_unmasked(kind: str, data: tuple[CrystalCodec, dict]) -> None:
    codec, batch = data
    model = make_model(codec, kind)
    model.fit_data(batch)
    first = model.sample(5, generator=torch.Generator().manual_seed(11))
    again = model.sample(5, generator=torch.Generator().manual_seed(11))
    other = model.sample(5, generator=torch.Generator().manual_seed(12))
    for key in first:
        assert torch.equal(first[key], again[key]), key
    assert any(not torch.equal(first[k], other[k]) for k in first)
    # every atom decodes to an element (no [MASK] survives), every empty slot to the pad class
    types = first["atom_types"]
    assert torch.all(types.sum(-1) == 1)
    assert torch.equal(first["mask"], 1.0 - types[..., 0])
    assert torch.all(first["mask"].sum(-1) >= 1)


def test_config_defaults_to_absorbing_and_switches_kind(data: tuple[CrystalCodec, dict]) -> None:
    from hydra.utils import instantiate

    from bench.config import compose

    codec, _ = data
    cfg = compose(["model=d3pm"])
    assert cfg.model.module.processes.atom_types is None
    assert cfg.model.module.type_process.kind == "absorbing"
    diffcsp = compose(["model=diffcsp"]).model.module
    assert cfg.model.module.processes.frac_coords == diffcsp.processes.frac_coords
    assert cfg.model.module.processes.lattice == diffcsp.processes.lattice
    uniform = compose(["model=d3pm", "model.module.type_process.kind=uniform",
                       "model.module.backbone.width=8", "model.module.backbone.n_layers=1"])
    model = instantiate(uniform.model.module, num_types=codec.num_types, max_atoms=codec.max_atoms)
    assert model.type_process.kind == "uniform" and model.type_process.schedule == "cosine"
    assert model.field_shapes(2)["atom_types"] == (2, codec.max_atoms, codec.num_types - 1)


def test_a_continuous_type_process_is_refused(data: tuple[CrystalCodec, dict]) -> None:
    codec, _ = data
    kwargs = {
        "backbone": functools.partial(PeriodicMPNN, width=8, n_layers=1, num_frequencies=2),
        "optimizer": functools.partial(torch.optim.AdamW, lr=1e-3),
        "num_types": codec.num_types, "max_atoms": codec.max_atoms,
        "processes": {"frac_coords": WrappedNormalVE(timesteps=10), "lattice": VPGaussian(timesteps=10)},
    }
    with pytest.raises(TypeError, match="Categorical"):
        CrystalD3PM(**kwargs, type_process=VPGaussian(timesteps=10))
    with pytest.raises(ValueError, match="processes.atom_types"):
        processes = {**kwargs["processes"], "atom_types": VPGaussian(timesteps=10)}
        CrystalD3PM(**{**kwargs, "processes": processes}, type_process=Categorical(timesteps=10))
