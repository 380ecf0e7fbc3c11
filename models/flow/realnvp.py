"""RealNVP affine coupling flow over the (dequantised) fields of the crystal batch.

Dinh, Sohl-Dickstein & Bengio (2017), "Density estimation using Real NVP", ICLR, arXiv:1605.08803. The flow
maps the flattened fields ``(atom_types, frac_coords, lattice)`` to a standard normal base with exact
log-likelihood.

Representation (data -> flow variable ``x``), applied in training; sampling inverts it:

- ``atom_types``: uniform dequantisation, ``x = onehot + u - 1/2`` with ``u ~ U[0, 1)^{K+1}`` (Theis, van den
  Oord & Bethge 2016, arXiv:1511.01844; Ho et al. 2019, "Flow++", arXiv:1902.00275). The hot channel lies in
  ``[1/2, 3/2)`` and every other one in ``[-1/2, 1/2)``, so the argmax recovers the type exactly, and the
  likelihood of the dequantised variable lower-bounds the discrete one.
- ``frac_coords``: ``x = f - 1/2`` treated as a plain real variable (the decoder wraps mod 1). Empty slots
  carry no coordinates, so their value is replaced by uniform noise (a "don't care" value the flow learns to
  spread).
- ``frac_coords`` of filled slots and ``lattice``: small Gaussian noise (``continuous_noise``) is added,
  because some datasets put all mass on a few exact values (cubic angles, special Wyckoff positions) where a
  density would be unbounded.

Coupling layers alternate channel-parity masks inside every field; the conditioner of each coupling is the
shared backbone (no slot embeddings, so the flow is permutation-equivariant over slots and its density
exchangeable) with ``out_scale=2`` heads for log-scale and shift, and log-scales bounded by
``scale_bound * tanh(. / scale_bound)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from bench.models.backbone import CrystalTransformer
from bench.models.base import FIELDS, GenerativeModule, OptimizerFactory
from torch import Tensor, nn

__all__ = ["AffineCoupling", "CrystalRealNVP", "FieldAffine"]

Fields = dict[str, Tensor]


def _parity_mask(width: int, parity: int, like: Tensor) -> Tensor:
    """``[width]`` float mask: 1 on channels of the given index parity (these condition the others)."""
    return (torch.arange(width, device=like.device) % 2 == parity).to(like.dtype)


def _sum_per_sample(value: Tensor) -> Tensor:
    return value.flatten(1).sum(dim=1)


class AffineCoupling(nn.Module):
    """One affine coupling: channels of one parity condition a scale and shift of the other channels.

    Args:
        conditioner: a :class:`~bench.models.backbone.CrystalTransformer` built with ``out_scale=2``.
        parity: which channel parity (0 or 1) is kept and conditions the rest.
        scale_bound: log-scales are ``scale_bound * tanh(raw / scale_bound)``.
    """

    def __init__(self, conditioner: CrystalTransformer, parity: int, scale_bound: float) -> None:
        super().__init__()
        self.conditioner = conditioner
        self.parity = int(parity)
        self.scale_bound = float(scale_bound)

    def _masks(self, x: Mapping[str, Tensor]) -> Fields:
        return {k: _parity_mask(v.shape[-1], self.parity, v) for k, v in x.items()}

    def _scale_shift(self, kept: Mapping[str, Tensor]) -> tuple[Fields, Fields]:
        out = self.conditioner(kept)
        scale, shift = {}, {}
        for key in FIELDS:
            raw_s, t = out[key].chunk(2, dim=-1)
            scale[key] = self.scale_bound * torch.tanh(raw_s / self.scale_bound)
            shift[key] = t
        return scale, shift

    def forward(self, x: Mapping[str, Tensor]) -> tuple[Fields, Tensor]:
        """Data direction to base direction; returns ``(y, log|det J|)`` with the log-det ``[B]``."""
        masks = self._masks(x)
        scale, shift = self._scale_shift({k: x[k] * masks[k] for k in FIELDS})
        y, logdet = {}, 0.0
        for key in FIELDS:
            m = masks[key]
            s = scale[key] * (1.0 - m)
            y[key] = x[key] * m + (1.0 - m) * (x[key] * torch.exp(s) + shift[key])
            logdet = logdet + _sum_per_sample(s)
        return y, logdet

    def inverse(self, y: Mapping[str, Tensor]) -> Fields:
        """Base direction to data direction."""
        masks = self._masks(y)
        scale, shift = self._scale_shift({k: y[k] * masks[k] for k in FIELDS})
        x = {}
        for key in FIELDS:
            m = masks[key]
            s = scale[key] * (1.0 - m)
            x[key] = y[key] * m + (1.0 - m) * ((y[key] - shift[key]) * torch.exp(-s))
        return x


class FieldAffine(nn.Module):
    """Learned per-channel affine map of each field, shared over slots (keeps permutation equivariance).

    Args:
        num_types: K + 1.
    """

    def __init__(self, num_types: int) -> None:
        super().__init__()
        widths = {"atom_types": num_types, "frac_coords": 3, "lattice": 6}
        self.log_scale = nn.ParameterDict({k: nn.Parameter(torch.zeros(w)) for k, w in widths.items()})
        self.shift = nn.ParameterDict({k: nn.Parameter(torch.zeros(w)) for k, w in widths.items()})

    def forward(self, x: Mapping[str, Tensor]) -> tuple[Fields, Tensor]:
        """``y = (x - shift) * exp(-log_scale)`` and its log-det ``[B]``."""
        y, logdet = {}, 0.0
        size = x["lattice"].shape[0]
        for key in FIELDS:
            y[key] = (x[key] - self.shift[key]) * torch.exp(-self.log_scale[key])
            sites = x[key][0].numel() // x[key].shape[-1]
            logdet = logdet - sites * self.log_scale[key].sum()
        return y, torch.as_tensor(logdet).expand(size)

    def inverse(self, y: Mapping[str, Tensor]) -> Fields:
        """``x = y * exp(log_scale) + shift``."""
        return {k: y[k] * torch.exp(self.log_scale[k]) + self.shift[k] for k in FIELDS}


class CrystalRealNVP(GenerativeModule):
    """RealNVP over the dequantised crystal fields, trained by exact negative log-likelihood per dimension.

    Args:
        backbone: partial of :class:`~bench.models.backbone.CrystalTransformer` (called once per coupling).
        optimizer: partial building the optimiser.
        num_types: K + 1 (from the fitted codec).
        max_atoms: N (from the fitted codec).
        n_couplings: number of coupling layers (alternating parity; even numbers transform every channel
            equally often).
        scale_bound: bound of each coupling's log-scale.
        continuous_noise: standard deviation of the Gaussian noise added to filled-slot coordinates (in
            fractions) and to the standardised lattice during training.
    """

    family = "flow"
    paper = "Dinh, Sohl-Dickstein, Bengio (2017). Density estimation using Real NVP. ICLR. arXiv:1605.08803"

    def __init__(
        self,
        backbone: Callable[..., CrystalTransformer],
        optimizer: OptimizerFactory,
        num_types: int,
        max_atoms: int,
        n_couplings: int = 4,
        scale_bound: float = 2.0,
        continuous_noise: float = 0.01,
    ) -> None:
        super().__init__(optimizer, num_types, max_atoms)
        if n_couplings < 1:
            raise ValueError(f"n_couplings must be >= 1, got {n_couplings}")
        self._save_plain_hparams()
        self.continuous_noise = float(continuous_noise)
        self.affine = FieldAffine(num_types)
        self.couplings = nn.ModuleList(
            AffineCoupling(
                backbone(
                    num_types=num_types, max_atoms=max_atoms, out_scale=2, raw_frac=True, zero_init=True
                ),
                parity=i % 2,
                scale_bound=scale_bound,
            )
            for i in range(n_couplings)
        )
        self.dims = max_atoms * (num_types + 3) + 6

    # ------------------------------------------------------------------ representation
    def dequantise(self, batch: Mapping[str, Tensor]) -> Fields:
        """Map a data batch to the continuous flow variables (random, drawn from the global torch RNG)."""
        types = batch["atom_types"]
        filled = (1.0 - types[..., :1]).clamp(0.0, 1.0)
        x_types = types + torch.rand_like(types) - 0.5
        jitter = self.continuous_noise * torch.randn_like(batch["frac_coords"])
        frac = filled * (batch["frac_coords"] + jitter) + (1.0 - filled) * torch.rand_like(
            batch["frac_coords"]
        )
        lattice = batch["lattice"] + self.continuous_noise * torch.randn_like(batch["lattice"])
        return {"atom_types": x_types, "frac_coords": frac - 0.5, "lattice": lattice}

    @staticmethod
    def quantise(x: Mapping[str, Tensor]) -> Fields:
        """Flow variables back to batch fields (type scores for the argmax, coordinates before wrapping)."""
        return {"atom_types": x["atom_types"], "frac_coords": x["frac_coords"] + 0.5, "lattice": x["lattice"]}

    # ------------------------------------------------------------------ the flow
    def to_base(self, x: Mapping[str, Tensor]) -> tuple[Fields, Tensor]:
        """Data direction: ``z = f(x)`` and ``log|det df/dx|`` ``[B]``."""
        z, logdet = self.affine(x)
        for layer in self.couplings:
            z, ld = layer(z)
            logdet = logdet + ld
        return z, logdet

    def from_base(self, z: Mapping[str, Tensor]) -> Fields:
        """Sampling direction: ``x = f^{-1}(z)``."""
        x = dict(z)
        for layer in reversed(self.couplings):
            x = layer.inverse(x)
        return self.affine.inverse(x)

    def log_prob(self, x: Mapping[str, Tensor]) -> Tensor:
        """Exact log-density ``[B]`` of flow variables ``x`` (nats)."""
        z, logdet = self.to_base(x)
        base = sum(_sum_per_sample(-0.5 * v.pow(2)) for v in z.values()) - 0.5 * self.dims * math.log(
            2 * math.pi
        )
        return base + logdet

    def loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Negative log-likelihood per dimension (nats) of the dequantised batch."""
        nll = -self.log_prob(self.dequantise(batch)).mean() / self.dims
        return {"loss": nll, "nll_per_dim": nll, "bits_per_dim": nll / math.log(2.0)}

    def _sample(self, n: int, generator: torch.Generator | None, condition: Any) -> dict[str, Tensor]:
        z = {
            "atom_types": self._randn((n, self.max_atoms, self.num_types), generator),
            "frac_coords": self._randn((n, self.max_atoms, 3), generator),
            "lattice": self._randn((n, 6), generator),
        }
        return self.quantise(self.from_base(z))
