"""What the autoregressive composition models share: the chain rule over the elements, its exact likelihood,
and element-by-element sampling through a :class:`~bench.models.autoregressive.sampling.TokenSampler`.

A composition is the vector of count levels ``c_1 .. c_E`` of the training vocabulary's elements in their
fixed order (atomic number; the ``composition_counts`` representation, level 0 absent). An autoregressive
model gives ``p(c_1 .. c_E) = prod_e p(c_e | c_<e)``; a subclass supplies the conditionals' logits for a whole
batch at once (:meth:`AutoregressiveCounts.level_logits`, teacher forcing) and a way to draw element by
element (:meth:`AutoregressiveCounts._generate`, with :meth:`AutoregressiveCounts.draw` for each element). The
loss is the cross-entropy of every element's level, and ``test_nll`` its sum over the elements: the exact
negative log-likelihood of the ``E`` count levels in nats per composition. The distribution is over all
``L^E`` level vectors, the empty one (every element absent, which no formula has) included; its mass is not
renormalised away.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from bench.models.autoregressive.sampling import TokenSampler
from bench.models.base import Likelihood, OptimizerFactory
from bench.models.composition.counts import CountsModule
from torch import Tensor

__all__ = ["AutoregressiveCounts"]


class AutoregressiveCounts(CountsModule):
    """Base of the autoregressive models of count levels (see the module docstring).

    Args:
        optimizer: partial building the optimiser.
        sampler: the :class:`~bench.models.autoregressive.sampling.TokenSampler` (temperature, top-k; there is
            no grammar, so ``constrained`` is refused).
        num_elements: ``E``, the training vocabulary's elements (the representation's ``sizes()``).
        num_levels: ``L``, count levels per element, level 0 meaning absent.
    """

    family = "autoregressive"
    likelihood = Likelihood(
        "exact",
        "exact",
        "exact NLL of the composition's E per-element count levels (level 0 absent, k: k atoms; elements in "
        "atomic-number order), -sum_e log p(c_e | c_<e), in nats per composition",
    )

    def __init__(
        self, optimizer: OptimizerFactory, sampler: TokenSampler, num_elements: int, num_levels: int
    ) -> None:
        super().__init__(optimizer, num_elements=num_elements, num_levels=num_levels)
        name = type(self).__name__
        if not callable(getattr(sampler, "choose", None)):
            raise TypeError(
                f"{name} samples element by element and needs a TokenSampler "
                f"(sampler@model.module.sampler=token), got {type(sampler).__name__}"
            )
        if getattr(sampler, "constrained", False):
            raise ValueError(
                f"{name} has no grammar to constrain: every level vector is a composition (the empty one "
                "decodes as a failure and is counted); set model.module.sampler.constrained=false"
            )
        self.sampler = sampler

    @property
    def nfe(self) -> int:
        """Network evaluations per sample: one per element."""
        return self.num_elements

    # ------------------------------------------------------------------ likelihood
    def level_logits(self, levels: Tensor) -> Tensor:
        """Logits ``[B, E, L]`` of ``p(c_e | c_<e)`` for every element ``e`` of ``levels`` ``[B, E]``, logit
        ``e`` reading only ``levels[:, :e]``."""
        raise NotImplementedError

    def element_nll(self, batch: Mapping[str, Tensor]) -> Tensor:
        """``-log p(c_e | c_<e)`` of every element ``[B, E]``, in nats."""
        levels = self.levels_of(batch)
        logits = self.level_logits(levels)
        return F.cross_entropy(logits.transpose(1, 2), levels, reduction="none")

    def loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Cross-entropy in nats per element (``loss``) and the negative log-likelihood per composition
        (``nll_composition``, nats)."""
        per_element = self.element_nll(batch)
        return {"loss": per_element.mean(), "nll_composition": per_element.sum(dim=1).mean()}

    @torch.no_grad()
    def test_nll(
        self, batch: Mapping[str, Tensor], draws: int = 1, generator: torch.Generator | None = None
    ) -> Tensor:
        """``[B]`` exact negative log-likelihood of each composition's count levels in nats, in eval mode
        (``draws`` and ``generator`` are unused: nothing is sampled)."""
        was_training = self.training
        self.eval()
        try:
            return self.element_nll(batch).sum(dim=1).double()
        finally:
            self.train(was_training)

    # ------------------------------------------------------------------ sampling
    def draw(self, logits: Tensor, generator: torch.Generator | None) -> Tensor:
        """One element's levels ``[n]`` (int64) from its logits ``[n, L]``: the sampler's choice with
        ``n x L`` uniforms from ``generator``."""
        uniform = self._rand((logits.shape[0], self.num_levels), generator)
        return self.sampler.choose(logits, uniform)

    @torch.no_grad()
    def generate(self, n: int, generator: torch.Generator | None = None, **options: Any) -> Tensor:
        """``n`` level vectors ``[n, E]`` (int64), drawn element by element in eval mode; every random number
        comes from ``generator``. ``options`` go to the subclass's :meth:`_generate`."""
        was_training = self.training
        self.eval()
        try:
            return self._generate(n, generator, **options)
        finally:
            self.train(was_training)

    def _generate(self, n: int, generator: torch.Generator | None, **options: Any) -> Tensor:
        raise NotImplementedError

    def _sample(self, n: int, generator: torch.Generator | None, condition: Any) -> dict[str, Tensor]:
        """``n`` compositions drawn element by element, as one-hot scores ``{"counts": [n, E, L]}``."""
        return {"counts": F.one_hot(self.generate(n, generator), self.num_levels).to(torch.float32)}
