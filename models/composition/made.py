"""comp_made: MADE over a composition's per-element count levels, every conditional from one masked MLP pass.

Germain, Gregor, Murray & Larochelle (2015), "MADE: Masked Autoencoder for Distribution Estimation", ICML,
section 4: an MLP whose weights are masked so that output ``d`` depends only on inputs ``< d`` in a fixed
order, so its outputs are the conditionals of ``p(x) = prod_d p(x_d | x_<d)``. Each unit gets a degree: input
units the index of their variable; hidden units of layer ``l`` a degree drawn uniformly from ``min(degrees of
layer l - 1) .. D - 1``; a hidden unit sees the units of the layer below of degree at most its own, and output
``d`` the last hidden units of degree strictly below ``d`` (eq. 13 for the deep MADE). Here the variables are
the ``E`` elements in atomic-number order (the ``composition_counts`` representation), each a categorical over
``L`` count levels: its ``L`` one-hot input units share the element's degree, and its ``L`` output units are
the logits of ``p(c_e | c_<e)``. An optional direct input-to-output path, masked strictly like the output
layer, adds a multinomial-logistic term (this benchmark's addition; the factorisation is unchanged). One order
and one mask, as the paper's base model; no order- or connectivity-agnostic training.

The chain rule, loss, exact ``test_nll`` and sampling wrapper come from
:class:`~bench.models.composition.autoregressive.AutoregressiveCounts`, shared with ``comp_gpt``. Training
computes every conditional in one pass; sampling takes ``E`` passes (the paper's), each computing the hidden
layers and only the output block of the element being drawn.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from bench.models.autoregressive.sampling import TokenSampler
from bench.models.base import OptimizerFactory
from bench.models.composition.autoregressive import AutoregressiveCounts
from torch import Tensor, nn

__all__ = ["CompositionMADE", "MaskedLinear", "made_degrees"]


class MaskedLinear(nn.Linear):
    """``y = x (W * M)^T + b`` with a fixed 0/1 mask ``M`` ``[out, in]`` (a buffer, saved with the
    weights)."""

    def __init__(self, mask: Tensor) -> None:
        super().__init__(mask.shape[1], mask.shape[0])
        self.register_buffer("mask", mask.to(torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)

    def rows(self, x: Tensor, start: int, stop: int) -> Tensor:
        """Outputs ``start:stop`` only."""
        return F.linear(x, (self.weight * self.mask)[start:stop], self.bias[start:stop])


def made_degrees(
    num_variables: int, hidden: Sequence[int], generator: torch.Generator
) -> list[Tensor]:
    """The hidden layers' degrees (MADE section 4): layer ``l``'s drawn uniformly from
    ``min(degrees of layer l - 1) .. D - 1`` (the inputs' degrees are ``1 .. D``), from ``generator``. With
    one variable there is nothing to condition on; its hidden units get degree 1 (they feed no output)."""
    top = max(num_variables - 1, 1)
    low, out = 1, []
    for width in hidden:
        degrees = torch.randint(low, top + 1, (int(width),), generator=generator)
        out.append(degrees)
        low = int(degrees.min())
    return out


class CompositionMADE(AutoregressiveCounts):
    """MADE over the per-element count levels (see the module docstring).

    Args:
        optimizer: partial building the optimiser.
        sampler: the :class:`~bench.models.autoregressive.sampling.TokenSampler` (temperature, top-k).
        num_elements: ``E``, the training vocabulary's elements (the representation's ``sizes()``).
        num_levels: ``L``, count levels per element, level 0 meaning absent.
        hidden_width: units per hidden layer (ReLU).
        hidden_layers: number of hidden layers.
        direct: add the masked direct input-to-output path.
        mask_seed: seed of the hidden units' degrees (the masks are saved with the weights).
    """

    paper = (
        "Germain, Gregor, Murray & Larochelle 2015, MADE: Masked Autoencoder for Distribution Estimation "
        "(ICML)"
    )

    def __init__(
        self,
        optimizer: OptimizerFactory,
        sampler: TokenSampler,
        num_elements: int,
        num_levels: int,
        hidden_width: int = 512,
        hidden_layers: int = 2,
        direct: bool = True,
        mask_seed: int = 0,
    ) -> None:
        super().__init__(optimizer, sampler, num_elements=num_elements, num_levels=num_levels)
        if hidden_width < 1 or hidden_layers < 1:
            raise ValueError(
                f"hidden_width and hidden_layers must be >= 1, got {hidden_width}, {hidden_layers}"
            )
        self._save_plain_hparams()
        E, L = self.num_elements, self.num_levels
        element = torch.arange(1, E + 1).repeat_interleave(L)  # the degree of every input and output unit
        below = element
        layers = []
        hidden = [int(hidden_width)] * int(hidden_layers)
        for degrees in made_degrees(E, hidden, torch.Generator().manual_seed(int(mask_seed))):
            layers.append(MaskedLinear(degrees[:, None] >= below[None, :]))
            below = degrees
        self.hidden_layers = nn.ModuleList(layers)
        self.output = MaskedLinear(element[:, None] > below[None, :])
        self.direct = MaskedLinear(element[:, None] > element[None, :]) if direct else None

    def _features(self, levels: Tensor) -> tuple[Tensor, Tensor]:
        """The one-hot inputs ``[B, E L]`` and the last hidden layer's activations."""
        x = F.one_hot(levels, self.num_levels).to(torch.float32).flatten(1)
        h = x
        for layer in self.hidden_layers:
            h = torch.relu(layer(h))
        return x, h

    def level_logits(self, levels: Tensor) -> Tensor:
        """Logits ``[B, E, L]`` of every ``p(c_e | c_<e)`` in one pass."""
        x, h = self._features(levels)
        logits = self.output(h)
        if self.direct is not None:
            logits = logits + self.direct(x)
        return logits.view(-1, self.num_elements, self.num_levels)

    def _generate(self, n: int, generator: torch.Generator | None) -> Tensor:
        """``E`` passes; pass ``e`` reads the levels drawn so far (later ones are still 0 and masked out)."""
        levels = torch.zeros((n, self.num_elements), dtype=torch.int64, device=self.device)
        L = self.num_levels
        for e in range(self.num_elements):
            x, h = self._features(levels)
            logits = self.output.rows(h, e * L, (e + 1) * L)
            if self.direct is not None:
                logits = logits + self.direct.rows(x, e * L, (e + 1) * L)
            levels[:, e] = self.draw(logits, generator)
        return levels
