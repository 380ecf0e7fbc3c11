"""``comp_made`` (MADE over the per-element count levels), on inputs with an independently known answer.

- the masks make output ``e`` depend on the levels of elements ``< e`` only (perturbation), the first
  element's conditional is a constant, and the sampler's one-block output equals the full pass;
- on a tiny vocabulary the probabilities of all ``L^E`` compositions, enumerated, sum to 1, and ancestral
  samples follow them;
- on real mp_e_form formulas the NLL goes below the entropy of the product of their per-element marginals
  within a few hundred steps; on 16 equally likely formulas with paired elements it approaches ``log 16``;
- a seed fixes the samples, which decode to formulas.
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
from bench.models.autoregressive.sampling import TokenSampler
from bench.models.composition.made import CompositionMADE, made_degrees

from tests.composition_helpers import real_training_formulas, train_on_counts

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(
    num_elements: int, num_levels: int, seed: int = 0, lr: float = 3e-3, **settings: int
) -> CompositionMADE:
    torch.manual_seed(seed)
    kwargs = {"hidden_width": 64, "hidden_layers": 2, **settings}
    return CompositionMADE(functools.partial(torch.optim.Adam, lr=lr), TokenSampler(),
                           num_elements=num_elements, num_levels=num_levels, **kwargs)


def _randomised(model: CompositionMADE, seed: int, scale: float = 0.5) -> CompositionMADE:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def _train(model: CompositionMADE, counts: torch.Tensor, steps: int, batch: int) -> list[float]:
    return train_on_counts(model, counts, steps, batch, eval_after=True)


def test_degrees_follow_the_paper_rule() -> None:
    degrees = made_degrees(10, [50, 40], torch.Generator().manual_seed(0))
    assert degrees[0].min() >= 1 and degrees[0].max() <= 9
    assert degrees[1].min() >= degrees[0].min() and degrees[1].max() <= 9


@pytest.mark.parametrize("direct", [True, False])
def test_each_conditional_reads_only_earlier_elements(direct: bool) -> None:
    E, L = 9, 4
    model = _randomised(_model(E, L, direct=direct), seed=1)
    g = torch.Generator().manual_seed(0)
    levels = torch.randint(0, L, (6, E), generator=g)
    base = model.level_logits(levels)
    for e in range(E):
        changed = levels.clone()
        changed[:, e:] = torch.randint(0, L, (6, E - e), generator=g)  # element e and every later one
        logits = model.level_logits(changed)
        torch.testing.assert_close(logits[:, : e + 1], base[:, : e + 1], rtol=0, atol=1e-6)
    # the first element's conditional is its marginal: the same for every input
    torch.testing.assert_close(base[:, 0], base[:1, 0].expand(6, L), rtol=0, atol=1e-6)
    assert not torch.allclose(base[:, -1], base[:1, -1].expand(6, L))


def test_probabilities_of_every_composition_sum_to_one_and_samples_follow_them() -> None:
    """E = 3 elements, L = 3 levels: the 27 probabilities exp(-test_nll) sum to 1, and the frequencies of
    20,000 samples match them (chi-square, 26 degrees of freedom)."""
    E, L = 3, 3
    model = _randomised(_model(E, L, hidden_width=16), seed=4, scale=1.0)
    every = torch.tensor(list(itertools.product(range(L), repeat=E)))
    probs = torch.exp(-model.test_nll({"counts": F.one_hot(every, L).float()}))
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-5)
    assert float(probs.max() / probs.min()) > 5
    n = 20_000
    drawn = model.sample(n, generator=torch.Generator().manual_seed(5))["counts"].argmax(dim=-1)
    observed = torch.bincount((drawn * torch.tensor([L * L, L, 1])).sum(dim=1), minlength=L**E).double()
    expected = n * probs
    assert float(((observed - expected) ** 2 / expected).sum()) < 54.1  # chi-square(26), 0.999 quantile


def test_sampling_draws_from_the_full_pass_conditionals() -> None:
    """An independent ancestral sampler over full passes of ``level_logits``, fed the same uniforms, draws the
    same compositions as ``generate``."""
    E, L, n = 7, 5, 50
    model = _randomised(_model(E, L), seed=6)
    got = model.generate(n, torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    levels = torch.zeros((n, E), dtype=torch.int64)
    for e in range(E):
        logits = model.level_logits(levels)[:, e]
        uniform = torch.rand((n, L), generator=g)
        levels[:, e] = (logits - torch.log(-torch.log(uniform.clamp(1e-12, 1 - 1e-7)))).argmax(dim=-1)
    assert torch.equal(got, levels)


def test_nll_falls_below_the_independent_marginals_on_real_formulas(data_dir: Path) -> None:
    formulas = real_training_formulas(data_dir, 2000)
    rep = CompositionCounts(levels=9)
    data = rep.fit(formulas).encode(formulas)
    counts = data["counts"]
    freq = counts.double().mean(dim=0)
    marginal_entropy = float(-(freq * torch.log(freq.clamp_min(1e-300))).sum())
    model = _model(**rep.sizes(), hidden_width=128)
    history = _train(model, counts, steps=400, batch=64)
    assert sum(history[-20:]) / 20 < 0.5 * sum(history[:20]) / 20
    nll = float(model.test_nll(data).mean())
    assert nll < marginal_entropy, (nll, marginal_entropy)
    decoded = rep.decode(model.sample(100, generator=torch.Generator().manual_seed(0)))
    assert sum(isinstance(f, str) for f in decoded) >= 95


def test_nll_approaches_the_entropy_of_a_toy_distribution_with_dependent_elements() -> None:
    pairs = [("Na", "Cl"), ("K", "Br"), ("Mg", "O"), ("Ca", "S")]
    formulas = [f"{a}{x}{b}{y}" for a, b in pairs for x, y in [(1, 1), (1, 2), (2, 1), (1, 3)]]
    rep = CompositionCounts(levels=9).fit(formulas)
    data = rep.encode(formulas)
    model = _model(**rep.sizes(), lr=1e-2)
    _train(model, data["counts"], steps=400, batch=64)
    nll = float(model.test_nll(data).mean())
    assert math.log(16) <= nll < math.log(16) + 0.1, nll


def test_seeded_sampling_is_reproducible_and_the_config_builds() -> None:
    from hydra.utils import instantiate

    from bench.config import compose

    cfg = compose(["model=comp_made", "experiment=mp_e_form_composition", "seed=0"])
    assert cfg.model.track == "composition" and cfg.model.family == "autoregressive"
    model = instantiate(cfg.model.module, num_elements=6, num_levels=9)
    assert isinstance(model, CompositionMADE) and model.nfe == 6 and model.nll_space() == "composition_counts"
    first = model.sample(16, generator=torch.Generator().manual_seed(1))["counts"]
    again = model.sample(16, generator=torch.Generator().manual_seed(1))["counts"]
    other = model.sample(16, generator=torch.Generator().manual_seed(2))["counts"]
    assert torch.equal(first, again) and not torch.equal(first, other)
    rebuilt = instantiate(cfg.model.module, num_elements=6, num_levels=9)
    rebuilt.load_state_dict(model.state_dict())  # the masks travel with the weights
    assert torch.equal(rebuilt.sample(16, generator=torch.Generator().manual_seed(1))["counts"], first)
