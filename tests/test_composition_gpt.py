"""``comp_gpt``, the autoregressive composition model, on inputs with an independently known answer.

- on real mp_e_form formulas the cross-entropy falls within a few hundred steps to within 5% of the entropy of
  the product of the data's own per-element marginals; on a toy set of 16 formulas, equally likely, whose
  elements go in pairs, the NLL approaches ``log 16`` (the product of the marginals: 6.10 nats);
- the network is causal: changing element ``e``'s level leaves the logits of elements ``<= e`` unchanged;
- ``test_nll`` equals the sum of per-element cross-entropies computed one prefix at a time, and on a tiny
  vocabulary the probabilities of all ``L^E`` compositions, enumerated, sum to 1; the samples' frequencies
  match those probabilities (temperature 1 is ancestral sampling);
- samples decode to formulas; a seed fixes them; sampling with the key/value cache equals sampling without.
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
from bench.datasets.representation import DecodeFailure
from bench.models.autoregressive.sampling import TokenSampler
from bench.models.composition.gpt import CompositionGPT

from tests.composition_helpers import real_training_formulas, train_on_counts

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 300
BATCH = 32


def _model(
    num_elements: int, num_levels: int, seed: int = 0, lr: float = 3e-3, **widths: int
) -> CompositionGPT:
    torch.manual_seed(seed)
    settings = {"d_model": 32, "n_layers": 1, "n_heads": 2, "dropout": 0.0, **widths}
    return CompositionGPT(functools.partial(torch.optim.Adam, lr=lr), TokenSampler(),
                          num_elements=num_elements, num_levels=num_levels, **settings)


def _one_hot(levels: torch.Tensor, num_levels: int) -> dict[str, torch.Tensor]:
    return {"counts": F.one_hot(levels, num_levels).to(torch.float32)}


def _randomised(model: CompositionGPT, seed: int, scale: float = 0.5) -> CompositionGPT:
    """The model with every weight redrawn from N(0, scale^2), so its conditionals are far from uniform."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


@pytest.fixture(scope="module")
def mp_e_form(data_dir: Path) -> tuple[CompositionCounts, dict[str, torch.Tensor]]:
    """2,000 encodable formulas of mp_e_form's pinned training split and their count matrices."""
    formulas = real_training_formulas(data_dir, 2000)
    rep = CompositionCounts(levels=9).fit(formulas)
    return rep, rep.encode(formulas)


@pytest.fixture(scope="module")
def trained(
    mp_e_form: tuple[CompositionCounts, dict[str, torch.Tensor]],
) -> tuple[CompositionGPT, list[float]]:
    """A small comp_gpt trained for :data:`STEPS` steps on the 2,000 formulas, with its loss history."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rep, data = mp_e_form
        model = _model(**rep.sizes())
        return model, _train(model, data["counts"], STEPS, BATCH)
    finally:
        torch.set_num_threads(previous)


def _train(model: CompositionGPT, counts: torch.Tensor, steps: int, batch: int) -> list[float]:
    """Adam on random batches of ``counts``; the loss of every step. Leaves the model in eval mode."""
    return train_on_counts(model, counts, steps, batch, eval_after=True)


def test_loss_falls_on_real_formulas_to_the_entropy_of_their_marginals(
    mp_e_form: tuple[CompositionCounts, dict[str, torch.Tensor]], trained: tuple[CompositionGPT, list[float]]
) -> None:
    """Within a few hundred steps the cross-entropy per element falls by more than half, and the NLL of the
    formulas comes within 5% of the entropy of the product of their per-element marginals (what a model that
    has learnt every element's count distribution, and nothing more, reaches; uniform levels: E log 9)."""
    _, data = mp_e_form
    model, history = trained
    counts = data["counts"]
    freq = counts.double().mean(dim=0)  # [E, L] empirical level frequencies
    marginal_entropy = float(-(freq * torch.log(freq.clamp_min(1e-300))).sum())
    nll = float(model.test_nll(data).mean())
    assert sum(history[-20:]) / 20 < 0.5 * sum(history[:20]) / 20
    assert history[0] * counts.shape[1] > 1.5 * marginal_entropy
    assert nll < 1.05 * marginal_entropy, (nll, marginal_entropy)


def test_nll_approaches_the_entropy_of_a_toy_distribution_with_dependent_elements() -> None:
    """16 formulas, equally likely: one of 4 element pairs, with one of 4 count pairs. The NLL of the set is
    the cross-entropy of the data under the model, at least ``log 16`` with equality only for the data's own
    distribution; the product of the per-element marginals (no dependencies) sits at 6.10 nats."""
    pairs = [("Na", "Cl"), ("K", "Br"), ("Mg", "O"), ("Ca", "S")]
    formulas = [f"{a}{x}{b}{y}" for a, b in pairs for x, y in [(1, 1), (1, 2), (2, 1), (1, 3)]]
    rep = CompositionCounts(levels=9).fit(formulas)
    data = rep.encode(formulas)
    model = _model(**rep.sizes())
    _train(model, data["counts"], steps=400, batch=64)
    nll = float(model.test_nll(data).mean())
    assert math.log(16) <= nll < math.log(16) + 0.1, nll


def test_the_model_is_causal() -> None:
    """Changing element e's level changes no logit of elements <= e (and does change later ones)."""
    model = _randomised(_model(num_elements=12, num_levels=5, n_layers=2), seed=1)
    g = torch.Generator().manual_seed(0)
    levels = torch.randint(0, 5, (4, 12), generator=g)
    base = model.level_logits(levels)
    for e in range(12):
        changed = levels.clone()
        changed[:, e] = (changed[:, e] + 1 + torch.randint(0, 4, (4,), generator=g)) % 5
        logits = model.level_logits(changed)
        torch.testing.assert_close(logits[:, : e + 1], base[:, : e + 1], rtol=0, atol=1e-6)
        if e + 1 < 12:
            assert not torch.allclose(logits[:, e + 1], base[:, e + 1])


def test_nll_is_the_sum_of_per_element_cross_entropies_computed_one_prefix_at_a_time() -> None:
    """``test_nll`` (one teacher-forced pass) against ``-sum_e log softmax(logits)[c_e]`` with the network
    fed only the start token and ``c_<e`` for each ``e`` separately."""
    E, L = 10, 4
    model = _randomised(_model(num_elements=E, num_levels=L, n_layers=2), seed=2)
    levels = torch.randint(0, L, (6, E), generator=torch.Generator().manual_seed(3))
    expected = torch.zeros(6, dtype=torch.float64)
    with torch.no_grad():
        for e in range(E):
            prefix = torch.cat([torch.full((6, 1), L), levels[:, :e]], dim=1)
            logits, _ = model.net(prefix)
            log_p = torch.log_softmax(logits[:, -1, :L].double(), dim=-1)
            expected -= log_p.gather(1, levels[:, e : e + 1]).squeeze(1)
    got = model.test_nll(_one_hot(levels, L))
    assert got.dtype == torch.float64 and got.shape == (6,)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)


def test_probabilities_of_every_composition_sum_to_one_and_samples_follow_them() -> None:
    """Tiny vocabulary (E = 3 elements, L = 3 levels): the 27 probabilities exp(-test_nll) sum to 1, and the
    frequencies of 20,000 ancestral samples (temperature 1) match them (chi-square, 26 degrees of freedom)."""
    E, L = 3, 3
    model = _randomised(_model(num_elements=E, num_levels=L), seed=4, scale=1.0)
    every = torch.tensor(list(itertools.product(range(L), repeat=E)))
    probs = torch.exp(-model.test_nll(_one_hot(every, L)))
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-5)
    assert float(probs.max() / probs.min()) > 5  # far from uniform, so the check below has power
    n = 20_000
    drawn = model.sample(n, generator=torch.Generator().manual_seed(5))["counts"].argmax(dim=-1)
    index = (drawn * torch.tensor([L * L, L, 1])).sum(dim=1)  # same order as itertools.product
    observed = torch.bincount(index, minlength=L**E).double()
    expected = n * probs
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < 54.1  # the 0.999 quantile of chi-square with 26 degrees of freedom


def test_samples_decode_to_formulas(
    mp_e_form: tuple[CompositionCounts, dict[str, torch.Tensor]], trained: tuple[CompositionGPT, list[float]]
) -> None:
    rep, _ = mp_e_form
    model, _ = trained
    out = model.sample(200, generator=torch.Generator().manual_seed(0))
    counts = out["counts"]
    assert counts.shape == (200, *model.shape) and counts.dtype == torch.float32
    assert torch.all(counts.sum(dim=-1) == 1)
    decoded = rep.decode(out)
    formulas = [f for f in decoded if isinstance(f, str)]
    assert all(isinstance(f, str | DecodeFailure) for f in decoded)
    assert len(formulas) >= 190  # the empty composition (every element absent) has little mass after training
    assert len(set(formulas)) > 100


def test_seeded_sampling_is_reproducible_and_the_cache_changes_nothing(
    trained: tuple[CompositionGPT, list[float]]
) -> None:
    model, _ = trained
    first = model.sample(32, generator=torch.Generator().manual_seed(11))["counts"]
    again = model.sample(32, generator=torch.Generator().manual_seed(11))["counts"]
    other = model.sample(32, generator=torch.Generator().manual_seed(12))["counts"]
    assert torch.equal(first, again) and not torch.equal(first, other)
    cached = model.generate(32, torch.Generator().manual_seed(11), use_cache=True)
    uncached = model.generate(32, torch.Generator().manual_seed(11), use_cache=False)
    assert torch.equal(cached, first.argmax(dim=-1))
    assert torch.equal(cached, uncached)


def test_the_config_builds_the_model_with_the_token_sampler() -> None:
    from hydra.utils import instantiate

    from bench.config import compose

    cfg = compose(["model=comp_gpt", "experiment=mp_e_form_composition", "seed=0"])
    assert cfg.model.track == "composition" and cfg.model.family == "autoregressive"
    model = instantiate(cfg.model.module, num_elements=7, num_levels=9)
    assert isinstance(model, CompositionGPT)
    assert model.sampler.temperature == 1.0 and model.sampler.top_k is None
    assert model.nfe == 7 and model.nll_space() == "composition_counts"
    assert model.likelihood_spec().kind == "exact"
    with pytest.raises(ValueError, match="no grammar"):
        CompositionGPT(model.optimizer_factory, TokenSampler(constrained=True), num_elements=7, num_levels=9)
