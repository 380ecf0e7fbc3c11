"""comp_gpt: an autoregressive model of a composition's per-element count levels with a causal transformer.

A composition is the vector of count levels ``c_1 .. c_E`` of the training vocabulary's elements in their
fixed order (atomic number; ``c_e = 0`` absent, ``k`` atoms otherwise: the ``composition_counts``
representation). The model factorises its distribution exactly,
``p(c_1 .. c_E) = prod_e p(c_e | c_<e)``, with the GPT of Radford, Narasimhan, Salimans & Sutskever (2018),
"Improving Language Understanding by Generative Pre-Training", section 3.1, in the pre-norm block layout of
Radford et al. (2019), "Language Models are Unsupervised Multitask Learners" (GPT-2), section 2.3. The network
is the crystal GPT's :class:`~bench.models.autoregressive.gpt.GPTDecoder` unchanged:

- its *position* ``e`` is element ``e``, so the learned position embedding is an element embedding;
- its *token* at position ``e`` is the level of the previous element ``c_{e-1}`` (a start token, index ``L``,
  at the first element), so the input is "element embedding + level embedding of the previous element";
- its output, tied to the token embedding (GPT section 3.1), is read on the ``L`` level tokens only (the start
  token is never a target), giving ``p(c_e | c_<e)`` at position ``e``.

Training is teacher forcing with the cross-entropy of every element's level (GPT's ``L(U)``). Sampling draws
element by element with a key/value cache (``E`` network calls of one position each), through the
:class:`~bench.models.autoregressive.sampling.TokenSampler` (Gumbel-max with uniforms from the seeded
generator; temperature 1 and no top-k by default: ancestral sampling from the model's distribution).

Loss, exact ``test_nll`` (``-sum_e log p(c_e | c_<e)`` in nats per composition) and the sampling wrapper come
from :class:`~bench.models.composition.autoregressive.AutoregressiveCounts`, shared with ``comp_made``.
"""

from __future__ import annotations

import torch
from bench.models.autoregressive.gpt import GPTDecoder
from bench.models.autoregressive.sampling import TokenSampler
from bench.models.base import OptimizerFactory
from bench.models.composition.autoregressive import AutoregressiveCounts
from torch import Tensor

__all__ = ["CompositionGPT"]


class CompositionGPT(AutoregressiveCounts):
    """A GPT over the per-element count levels of a composition (see the module docstring).

    Args:
        optimizer: partial building the optimiser.
        sampler: the :class:`~bench.models.autoregressive.sampling.TokenSampler` (temperature, top-k; there is
            no grammar, so ``constrained`` is refused).
        num_elements: ``E``, the training vocabulary's elements (the representation's ``sizes()``).
        num_levels: ``L``, count levels per element, level 0 meaning absent.
        d_model, n_layers, n_heads, dropout: the :class:`~bench.models.autoregressive.gpt.GPTDecoder`.
    """

    paper = (
        "Radford et al. 2018, Improving Language Understanding by Generative Pre-Training (GPT); Radford et "
        "al. 2019, Language Models are Unsupervised Multitask Learners (GPT-2)"
    )

    def __init__(
        self,
        optimizer: OptimizerFactory,
        sampler: TokenSampler,
        num_elements: int,
        num_levels: int,
        d_model: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(optimizer, sampler, num_elements=num_elements, num_levels=num_levels)
        self._save_plain_hparams()
        self.start_token = self.num_levels
        self.net = GPTDecoder(self.num_levels + 1, self.num_elements, d_model, n_layers, n_heads, dropout)

    def level_logits(self, levels: Tensor) -> Tensor:
        """Logits ``[B, E, L]`` of ``p(c_e | c_<e)`` for every element ``e``, read from ``levels`` ``[B, E]``
        shifted one element right behind the start token (teacher forcing)."""
        start = torch.full_like(levels[:, :1], self.start_token)
        logits, _ = self.net(torch.cat([start, levels[:, :-1]], dim=1))
        return logits[..., : self.num_levels]

    def _generate(self, n: int, generator: torch.Generator | None, use_cache: bool = True) -> Tensor:
        """Element by element; with ``use_cache`` each step feeds one position and reads the key/value cache
        (``E`` one-position calls), without it each step recomputes the whole prefix (the same draws, about
        ``E / 2`` times the work; for checks)."""
        size = (n, self.num_elements + 1)
        tokens = torch.full(size, self.start_token, dtype=torch.int64, device=self.device)
        logits, cache = self.net(tokens[:, :1])
        for e in range(self.num_elements):
            tokens[:, e + 1] = self.draw(logits[:, -1, : self.num_levels], generator)
            if e + 1 == self.num_elements:
                break
            if use_cache:
                logits, cache = self.net(tokens[:, e + 1 : e + 2], cache)
            else:
                logits, _ = self.net(tokens[:, : e + 2])
        return tokens[:, 1:]
