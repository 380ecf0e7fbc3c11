"""A known diffusion-space bound and the codec-field NLL it implies, shared by the diffusion models' tests.

Replacing a model's bound by ``-log N(y; 0, I)`` of every slot's coordinates ``y = 2 f - 1`` (types and
lattice free) makes the codec's density of a crystal ``prod_filled 2^3 N(2 f - 1)`` (the empty slots'
coordinates integrate to 1); the model's estimate then adds ``KL(N(-1, tau^2) || N(0, 1))`` per empty
coordinate, the price of the proposal of width ``tau`` that integrates them out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch


def coordinate_gaussian_nll(x0: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``-log N(y; 0, I)`` per crystal of the diffusion-space coordinates ``y = x0["frac_coords"]``."""
    y = x0["frac_coords"].double()
    return (0.5 * y**2 + 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)


def expected_codec_nll(batch: Mapping[str, torch.Tensor], tau2: float) -> torch.Tensor:
    """The codec-field NLL per crystal that :func:`coordinate_gaussian_nll` implies, with the empty slots'
    proposal of variance ``tau2``."""
    filled = batch["mask"].double()
    assert bool((1 - filled).sum() > 0) and bool(filled.sum() > 0), "the batch needs filled and empty slots"
    y = 2 * batch["frac_coords"].double() - 1
    codec_nll = ((0.5 * y**2 + 0.5 * math.log(2 * math.pi)).sum(-1) - 3 * math.log(2)) * filled
    proposal = 3 * (1 - filled) * 0.5 * (tau2 - math.log(tau2))
    return (codec_nll + proposal).sum(1)
