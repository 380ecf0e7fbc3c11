"""How an autoregressive model picks its next token: temperature, top-k, optional grammar constraint.

Chosen by config (``conf/sampler/token.yaml``, ``model.module.sampler``), so one trained model is sampled
several ways without retraining (the sampler is left out of the training hash). The draw is the Gumbel-max
trick: the argmax of ``logits / temperature + g`` with ``g = -log(-log u)`` and ``u`` uniform is distributed
as ``softmax(logits / temperature)``; the uniforms come from the model's seeded generator, so a seed fixes the
samples. ``temperature = 0`` is greedy decoding (the argmax), the limit of the draw as the temperature goes to
0; ``top_k`` keeps the ``k`` most likely tokens (Fan, Lewis & Dauphin 2018, "Hierarchical Neural Story
Generation", section 5.4; the sampling of Radford et al. 2019's samples), so ``top_k = 1`` is greedy too.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["TokenSampler"]

_TINY = 1e-12


class TokenSampler:
    """Next-token choice from logits (see the module docstring).

    Args:
        temperature: divides the logits; 0 means greedy (argmax).
        top_k: keep only the ``k`` largest logits (ties at the k-th value are kept); None or 0: all.
        constrained: mask the tokens the representation's grammar forbids at each position, so every
            sequence parses (off by default: unconstrained decoding shows how often a model writes sequences
            that are no crystal).
    """

    def __init__(self, temperature: float = 1.0, top_k: int | None = None, constrained: bool = False) -> None:
        temperature = float(temperature)
        if not math.isfinite(temperature) or temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0 (0: greedy), got {temperature}")
        if top_k is not None and int(top_k) < 0:
            raise ValueError(f"top_k must be >= 1 (or null / 0 for no cut), got {top_k}")
        self.temperature = temperature
        self.top_k = int(top_k) if top_k else None
        self.constrained = bool(constrained)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    def masked_logits(self, logits: Tensor, allowed: Tensor | None = None) -> Tensor:
        """``logits`` ``[B, V]`` (float32) with forbidden tokens (``allowed`` False, broadcast over the batch)
        and those outside the top ``k`` set to ``-inf``."""
        logits = logits.to(torch.float32)
        if allowed is not None:
            logits = logits.masked_fill(~allowed, -math.inf)
        if self.top_k is not None and self.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, -math.inf)
        return logits

    def probabilities(self, logits: Tensor, allowed: Tensor | None = None) -> Tensor:
        """The distribution :meth:`choose` draws from, ``softmax(masked_logits / temperature)`` (one-hot on
        the argmax when greedy)."""
        masked = self.masked_logits(logits, allowed)
        if self.temperature == 0.0:
            return torch.nn.functional.one_hot(masked.argmax(dim=-1), masked.shape[-1]).to(torch.float32)
        return torch.softmax(masked / self.temperature, dim=-1)

    def choose(self, logits: Tensor, uniform: Tensor, allowed: Tensor | None = None) -> Tensor:
        """The next token ``[B]`` (int64) for ``logits`` ``[B, V]``, drawn with the uniforms ``uniform``
        ``[B, V]`` in ``[0, 1)`` (ignored when greedy)."""
        masked = self.masked_logits(logits, allowed)
        if self.temperature == 0.0:
            return masked.argmax(dim=-1)
        gumbel = -torch.log(-torch.log(uniform.to(masked).clamp(_TINY, 1.0 - 1e-7)))
        return (masked / self.temperature + gumbel).argmax(dim=-1)

    def __repr__(self) -> str:
        return (f"TokenSampler(temperature={self.temperature}, top_k={self.top_k}, "
                f"constrained={self.constrained})")
