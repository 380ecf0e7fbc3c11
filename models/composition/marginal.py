"""comp_marginal: every element's count level an independent categorical, fitted by maximum likelihood.

The baseline of the composition track. A formula is the vector of count levels ``c_1 .. c_E`` of the training
vocabulary's elements (level 0 absent, ``k``: ``k`` atoms; the ``composition_counts`` representation,
MatGAN's count matrix of Dan et al. 2020, npj Comput Mater 6, 84, with a level for "absent"). The model is the
product of the elements' marginals,

    ``p(c_1 .. c_E) = prod_e pi_e(c_e)``,  ``pi_e = softmax(theta_e)`` over the ``L`` levels,

which knows how often each element occurs with each count and nothing of which elements go together: the
product-of-marginals (independence) baseline of discrete density estimation. Every composition model that
learns dependencies between elements has to beat it, on ``nll_test`` and on the distribution metrics.

Fit. The loss is the exact negative log-likelihood of the batch, ``-(1/B) sum_b sum_e log pi_e(c_be)``, whose
minimiser over the whole training set is the maximum-likelihood estimate, the empirical level frequencies
``pi_e(l) = n_el / N``. With ``pseudo_count = a > 0`` the loss adds ``-(a / N) sum_{e,l} log pi_e(l)`` (``N``
training formulas, recorded by :meth:`CompositionMarginal.fit_data`), the negative log-density of a symmetric
Dirichlet(``a + 1``) prior: its minimiser is the smoothed estimate ``(n_el + a) / (N + L a)``
(:meth:`CompositionMarginal.estimate`), which gives a level never seen in training a small probability instead
of none, so no test formula has an infinite NLL. ``pseudo_count = 0`` is the plain maximum-likelihood fit.

Sampling draws each element's level independently from ``pi_e`` (Gumbel-max with uniforms from the seeded
generator); a draw with every element absent is decoded as a failure, as for any model. ``test_nll`` is exact.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from bench.models.base import Likelihood, OptimizerFactory
from bench.models.composition.counts import CountsModule
from torch import Tensor, nn

__all__ = ["CompositionMarginal"]


class CompositionMarginal(CountsModule):
    """Independent per-element categoricals over the count levels (see the module docstring).

    Args:
        optimizer: a partial building the optimiser.
        num_elements: ``E``, the training vocabulary's elements (the representation's ``sizes()``).
        num_levels: ``L``, count levels per element, level 0 meaning absent.
        pseudo_count: ``a``, the additive smoothing of every level's count (0: the maximum-likelihood fit).
    """

    family = "baseline"
    paper = (
        "Independent per-element categoricals (product of marginals) over MatGAN's count matrix (Dan et al. "
        "2020, npj Comput Mater 6, 84), fitted by maximum likelihood with additive smoothing"
    )
    likelihood = Likelihood(
        "exact",
        "exact",
        "exact NLL of the composition's E per-element count levels (level 0 absent, k: k atoms) under "
        "independent categoricals, -sum_e log pi_e(c_e), in nats per composition",
    )

    def __init__(
        self, optimizer: OptimizerFactory, num_elements: int, num_levels: int, pseudo_count: float = 0.5
    ) -> None:
        super().__init__(optimizer, num_elements=num_elements, num_levels=num_levels)
        if pseudo_count < 0:
            raise ValueError(f"pseudo_count must be >= 0, got {pseudo_count}")
        self._save_plain_hparams()
        self.pseudo_count = float(pseudo_count)
        self.logits = nn.Parameter(torch.zeros(num_elements, num_levels))
        # training formulas, which weigh the prior against the data; 1 until fit_data has seen them
        self.register_buffer("n_train", torch.ones((), dtype=torch.float64))

    def fit_data(self, data: Mapping[str, Tensor]) -> None:
        """Record the number of training formulas ``N`` (the prior's weight is ``pseudo_count / N``)."""
        self.n_train.fill_(float(len(data["counts"])))

    def log_probs(self) -> Tensor:
        """``log pi_e(l)``, ``[E, L]``."""
        return torch.log_softmax(self.logits, dim=-1)

    def _nll(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Exact NLL of each composition of ``batch``, ``[B]``."""
        return -(self.counts_of(batch) * self.log_probs()).sum(dim=(1, 2))

    def loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``nll``: the batch's mean exact NLL; ``loss``: it plus the prior term (module docstring)."""
        nll = self._nll(batch).mean()
        loss = nll
        if self.pseudo_count > 0:
            weight = self.pseudo_count / float(self.n_train)
            loss = nll - weight * self.log_probs().sum()
        return {"loss": loss, "nll": nll.detach()}

    @staticmethod
    def estimate(counts: Tensor, pseudo_count: float) -> Tensor:
        """The minimiser of the loss over a whole data set: ``(n_el + a) / (N + L a)``, ``[E, L]``.

        Args:
            counts: the data set's one-hot count matrices ``[N, E, L]``.
            pseudo_count: ``a``.
        """
        totals = counts.double().sum(dim=0) + pseudo_count
        return totals / totals.sum(dim=-1, keepdim=True)

    def test_nll(
        self, batch: Mapping[str, Tensor], draws: int = 1, generator: torch.Generator | None = None
    ) -> Tensor:
        """Exact NLL of each composition of ``batch`` in nats, ``[B]`` (``draws``, ``generator`` unused)."""
        return self._nll(batch).double()

    def _sample(self, n: int, generator: torch.Generator | None, condition: Any) -> dict[str, Tensor]:
        """Each element's level drawn independently: the argmax of ``log pi_e(l) + Gumbel noise``."""
        uniform = self._rand((n, self.num_elements, self.num_levels), generator).clamp(1e-12, 1.0 - 1e-7)
        gumbel = -torch.log(-torch.log(uniform))
        return {"counts": self.log_probs().unsqueeze(0) + gumbel}
