"""Invertible transforms of the crystal fields, each returning its log-determinant, and their composition.

Every transform maps a dict of fields (``atom_types`` ``[B, N, K+1]``, ``frac_coords`` ``[B, N, 3]``,
``lattice`` ``[B, 6]``, the flow variables of :class:`~bench.models.flow.base.CrystalFlow`) in the data
direction, ``forward(x) -> (y, log|det dy/dx|)`` with the log-det ``[B]``, and back, ``inverse(y) -> x``.
The channels of a field are its last axis; a site field has one position per atom slot, the lattice one.
Parameters are shared over the slots of a field, so every transform here is equivariant to permutations of
the slots and a flow built from them has an exchangeable density.

- :class:`AffineCoupling`: RealNVP (Dinh, Sohl-Dickstein & Bengio 2017, arXiv:1605.08803).
- :class:`FieldAffine`: a learned per-channel affine map (the input layer of ``realnvp``).
- :class:`AdditiveCoupling` and :class:`DiagonalScale`: NICE (Dinh, Krueger & Bengio 2015, arXiv:1410.8516,
  sections 3.2 and 3.3).
- :class:`ActNorm`, :class:`LULinear` / :class:`SlotChannelMixing` and :class:`GlowAffineCoupling`: Glow
  (Kingma & Dhariwal 2018, arXiv:1807.03039, section 3 and table 1).
- :class:`FlowSequence`: a composition of transforms.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from bench.models.backbone import CrystalTransformer
from bench.models.base import FIELDS
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = [
    "ActNorm",
    "AdditiveCoupling",
    "AffineCoupling",
    "DiagonalScale",
    "FieldAffine",
    "FieldTransform",
    "Fields",
    "FlowSequence",
    "GlowAffineCoupling",
    "LULinear",
    "SlotChannelMixing",
    "field_widths",
    "forward_through",
    "inverse_through",
]

Fields = dict[str, Tensor]


def field_widths(num_types: int) -> dict[str, int]:
    """Channels per position of each field: ``K+1`` type channels, 3 coordinates, 6 lattice parameters."""
    return {"atom_types": num_types, "frac_coords": 3, "lattice": 6}


def _parity_mask(width: int, parity: int, like: Tensor) -> Tensor:
    """``[width]`` float mask: 1 on channels of the given index parity (these condition the others)."""
    return (torch.arange(width, device=like.device) % 2 == parity).to(like.dtype)


def _sum_per_sample(value: Tensor) -> Tensor:
    return value.flatten(1).sum(dim=1)


def _positions(value: Tensor) -> int:
    """Positions per sample of a field (``N`` for a site field, 1 for the lattice)."""
    return value[0].numel() // value.shape[-1]


class FieldTransform(nn.Module):
    """An invertible map of the crystal fields; subclasses implement :meth:`forward` and :meth:`inverse`."""

    def forward(self, x: Mapping[str, Tensor]) -> tuple[Fields, Tensor]:
        """Data direction to base direction: ``(y, log|det dy/dx|)``, the log-det ``[B]``."""
        raise NotImplementedError

    def inverse(self, y: Mapping[str, Tensor]) -> Fields:
        """Base direction to data direction."""
        raise NotImplementedError


def forward_through(steps: Sequence[FieldTransform], x: Mapping[str, Tensor]) -> tuple[Fields, Tensor]:
    """Apply ``steps`` in order (data direction) and sum their log-dets."""
    if not steps:
        raise ValueError("a flow needs at least one transform")
    z, logdet = steps[0](x)
    for step in steps[1:]:
        z, ld = step(z)
        logdet = logdet + ld
    return z, logdet


def inverse_through(steps: Sequence[FieldTransform], z: Mapping[str, Tensor]) -> Fields:
    """Invert ``steps`` in reverse order (base direction to data direction)."""
    x = dict(z)
    for step in reversed(steps):
        x = step.inverse(x)
    return x


class FlowSequence(FieldTransform):
    """The composition ``steps[-1] o ... o steps[0]`` (data direction); its log-det is the sum of theirs.

    Args:
        steps: the transforms, in the data-to-base order.
    """

    def __init__(self, steps: Sequence[FieldTransform]) -> None:
        super().__init__()
        if not steps:
            raise ValueError("FlowSequence needs at least one transform")
        self.steps = nn.ModuleList(steps)

    def forward(self, x: Mapping[str, Tensor]) -> tuple[Fields, Tensor]:
        """Apply every step; the log-dets add up."""
        return forward_through(list(self.steps), x)

    def inverse(self, y: Mapping[str, Tensor]) -> Fields:
        """Invert every step, last first."""
        return inverse_through(list(self.steps), y)


# ---------------------------------------------------------------------- couplings
class _Coupling(FieldTransform):
    """Channels of one index parity inside every field are kept and, zeroed elsewhere, fed to the conditioner,
    which outputs the parameters of an elementwise map of the other channels.

    Args:
        conditioner: a :class:`~bench.models.backbone.CrystalTransformer` (no slot embeddings, so the
            coupling is equivariant over slots).
        parity: which channel parity (0 or 1) is kept and conditions the rest.
    """

    def __init__(self, conditioner: CrystalTransformer, parity: int) -> None:
        super().__init__()
        if parity not in (0, 1):
            raise ValueError(f"parity must be 0 or 1, got {parity}")
        self.conditioner = conditioner
        self.parity = int(parity)

    def _masks(self, x: Mapping[str, Tensor]) -> Fields:
        return {k: _parity_mask(v.shape[-1], self.parity, v) for k, v in x.items()}

    def _condition(self, x: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return self.conditioner({k: x[k] * masks[k] for k in FIELDS})


class AffineCoupling(_Coupling):
    """RealNVP's affine coupling: ``y_b = x_b exp(s(x_a)) + t(x_a)``, log-det ``sum s``.

    Args:
        conditioner: a :class:`~bench.models.backbone.CrystalTransformer` built with ``out_scale=2``.
        parity: which channel parity (0 or 1) is kept and conditions the rest.
        scale_bound: log-scales are ``scale_bound * tanh(raw / scale_bound)``.
    """

    def __init__(self, conditioner: CrystalTransformer, parity: int, scale_bound: float) -> None:
        super().__init__(conditioner, parity)
        self.scale_bound = float(scale_bound)

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


class AdditiveCoupling(_Coupling):
    """NICE's additive coupling (section 3.2): ``y_b = x_b + m(x_a)``; volume preserving, log-det exactly 0.

    Args:
        conditioner: a :class:`~bench.models.backbone.CrystalTransformer` built with ``out_scale=1``.
        parity: which channel parity (0 or 1) is kept and conditions the rest.
    """

    def forward(self, x: Mapping[str, Tensor]) -> tuple[Fields, Tensor]:
        """``y = x + (1 - mask) m(mask x)``; the log-det is a zero ``[B]`` tensor."""
        masks = self._masks(x)
        shift = self._condition(x, masks)
        y = {k: x[k] + (1.0 - masks[k]) * shift[k] for k in FIELDS}
        return y, x["lattice"].new_zeros(x["lattice"].shape[0])

    def inverse(self, y: Mapping[str, Tensor]) -> Fields:
        """``x = y - (1 - mask) m(mask y)`` (the kept channels are the same in ``x`` and ``y``)."""
        masks = self._masks(y)
        shift = self._condition(y, masks)
        return {k: y[k] - (1.0 - masks[k]) * shift[k] for k in FIELDS}


class GlowAffineCoupling(_Coupling):
    """Glow's affine coupling (table 1): ``log s, t = NN(x_a)``, ``s = sigmoid(log s + 2)``,
    ``y_b = (x_b + t) s``, log-det ``sum log s``.

    The ``+ 2`` and the sigmoid follow the authors' release (openai/glow): with a zero-initialised conditioner
    every coupling starts as a mild contraction (``s = sigmoid(2) ~ 0.88``), and a scale below 1 keeps the
    inverse (which divides by ``s``) from blowing up early in training.

    Args:
        conditioner: a :class:`~bench.models.backbone.CrystalTransformer` built with ``out_scale=2``.
        parity: which channel parity (0 or 1) is kept and conditions the rest.
    """

    def _scale_shift(self, x: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> tuple[Fields, Fields]:
        out = self._condition(x, masks)
        pre, shift = {}, {}
        for key in FIELDS:
            raw_s, t = out[key].chunk(2, dim=-1)
            pre[key] = raw_s + 2.0
            shift[key] = t
        return pre, shift

    def forward(self, x: Mapping[str, Tensor]) -> tuple[Fields, Tensor]:
        """Data direction to base direction; returns ``(y, log|det J|)`` with the log-det ``[B]``."""
        masks = self._masks(x)
        pre, shift = self._scale_shift(x, masks)
        y, logdet = {}, 0.0
        for key in FIELDS:
            m = masks[key]
            free = 1.0 - m
            y[key] = x[key] * m + free * ((x[key] + shift[key]) * torch.sigmoid(pre[key]))
            logdet = logdet + _sum_per_sample(free * F.logsigmoid(pre[key]))
        return y, logdet

    def inverse(self, y: Mapping[str, Tensor]) -> Fields:
        """``x_b = y_b / s - t`` with ``s, t`` from the kept channels (unchanged by the coupling)."""
        masks = self._masks(y)
        pre, shift = self._scale_shift(y, masks)
        x = {}
        for key in FIELDS:
            m = masks[key]
            x[key] = y[key] * m + (1.0 - m) * (y[key] / torch.sigmoid(pre[key]) - shift[key])
        return x


# ---------------------------------------------------------------------- per-channel maps
class FieldAffine(FieldTransform):
    """Learned per-channel affine map of each field, shared over slots (keeps permutation equivariance).

    Args:
        num_types: K + 1.
    """

    def __init__(self, num_types: int) -> None:
        super().__init__()
        widths = field_widths(num_types)
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


class DiagonalScale(FieldTransform):
    """NICE's top scaling layer (section 3.3): ``y_i = S_ii x_i`` with ``S_ii = exp(s_i)``, log-det ``sum s``.

    After volume-preserving couplings it is the only layer that changes volume, so it carries the flow's
    whole log-determinant. One ``s`` per channel of each field, shared over slots.

    Args:
        num_types: K + 1.
    """

    def __init__(self, num_types: int) -> None:
        super().__init__()
        widths = field_widths(num_types)
        self.log_scale = nn.ParameterDict({k: nn.Parameter(torch.zeros(w)) for k, w in widths.items()})

    def forward(self, x: Mapping[str, Tensor]) -> tuple[Fields, Tensor]:
        """``y = x * exp(s)`` and its log-det ``[B]`` (positions times ``sum s`` per field)."""
        y, logdet = {}, 0.0
        for key in FIELDS:
            y[key] = x[key] * torch.exp(self.log_scale[key])
            logdet = logdet + _positions(x[key]) * self.log_scale[key].sum()
        return y, torch.as_tensor(logdet).expand(x["lattice"].shape[0])

    def inverse(self, y: Mapping[str, Tensor]) -> Fields:
        """``x = y * exp(-s)``."""
        return {k: y[k] * torch.exp(-self.log_scale[k]) for k in FIELDS}


class ActNorm(FieldTransform):
    """Glow's activation normalisation (section 3.1): ``y = (x + b) exp(log_s)`` per channel, shared over
    positions (slots), log-det ``positions * sum log_s``.

    Data-dependent initialisation: the first batch seen in training mode sets ``b = -mean`` and
    ``log_s = -log(std + eps)`` per channel (statistics over the batch and the slots, biased variance), so
    that batch leaves the layer with zero mean and unit variance per channel. The ``initialized`` buffer is
    saved in checkpoints, so reloaded weights are never re-initialised. Before initialisation (e.g. sampling
    from an untrained model, or an evaluation-mode call) the layer is the identity.

    Args:
        num_types: K + 1.
        eps: added to the standard deviation at initialisation (1e-6 as in the authors' release).
    """

    def __init__(self, num_types: int, eps: float = 1e-6) -> None:
        super().__init__()
        widths = field_widths(num_types)
        self.eps = float(eps)
        self.bias = nn.ParameterDict({k: nn.Parameter(torch.zeros(w)) for k, w in widths.items()})
        self.log_scale = nn.ParameterDict({k: nn.Parameter(torch.zeros(w)) for k, w in widths.items()})
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def initialize(self, x: Mapping[str, Tensor]) -> None:
        """Set ``b`` and ``log_s`` from the per-channel statistics of ``x``.

        Raises:
            ValueError: a field has fewer than two values per channel (no variance to normalise by).
        """
        for key in FIELDS:
            values = x[key].detach().reshape(-1, x[key].shape[-1])
            if values.shape[0] < 2:
                raise ValueError(
                    f"ActNorm's data-dependent initialisation needs at least 2 values per channel of "
                    f"{key!r}, got {values.shape[0]}: train with a batch size of 2 or more"
                )
            mean = values.mean(dim=0)
            std = values.var(dim=0, correction=0).sqrt()
            self.bias[key].copy_(-mean)
            self.log_scale[key].copy_(-torch.log(std + self.eps))
        self.initialized.fill_(True)

    def forward(self, x: Mapping[str, Tensor]) -> tuple[Fields, Tensor]:
        """Normalise (initialising on the first training batch) and return ``(y, log-det [B])``."""
        if self.training and not bool(self.initialized):
            self.initialize(x)
        y, logdet = {}, 0.0
        for key in FIELDS:
            y[key] = (x[key] + self.bias[key]) * torch.exp(self.log_scale[key])
            logdet = logdet + _positions(x[key]) * self.log_scale[key].sum()
        return y, torch.as_tensor(logdet).expand(x["lattice"].shape[0])

    def inverse(self, y: Mapping[str, Tensor]) -> Fields:
        """``x = y exp(-log_s) - b``."""
        return {k: y[k] * torch.exp(-self.log_scale[k]) - self.bias[k] for k in FIELDS}


# ---------------------------------------------------------------------- invertible 1x1 mixing
class LULinear(nn.Module):
    """Glow's invertible 1x1 convolution in LU form (section 3.2): ``W = P L (U + diag(sign * exp(log_s)))``.

    ``P`` (a permutation) and ``sign`` are fixed buffers; ``L`` is unit lower-triangular and ``U`` strictly
    upper-triangular (only their strict triangles are used), ``log_s`` is free. As in the paper, ``W`` starts
    as a random rotation (the Q of a QR decomposition of a Gaussian matrix, drawn from the global torch
    generator) and is then LU-decomposed. ``log|det W| = sum log_s``.

    Args:
        channels: the size of the mixed vector.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        self.channels = int(channels)
        rotation = torch.linalg.qr(torch.randn(channels, channels))[0]
        permutation, lower, upper = torch.linalg.lu(rotation)
        diagonal = torch.diagonal(upper)
        self.register_buffer("permutation", permutation)
        self.register_buffer("sign", torch.sign(diagonal))
        self.lower = nn.Parameter(torch.tril(lower, -1))
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_scale = nn.Parameter(torch.log(diagonal.abs()))

    def factors(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(P, L, U)``: ``L`` with a unit diagonal, ``U`` with ``sign * exp(log_s)`` on its diagonal."""
        eye = torch.eye(self.channels, dtype=self.lower.dtype, device=self.lower.device)
        lower = torch.tril(self.lower, -1) + eye
        upper = torch.triu(self.upper, 1) + torch.diag(self.sign * torch.exp(self.log_scale))
        return self.permutation, lower, upper

    def weight(self) -> Tensor:
        """The assembled ``[C, C]`` matrix ``W = P L U``."""
        permutation, lower, upper = self.factors()
        return permutation @ lower @ upper

    def inverse_weight(self) -> Tensor:
        """``W^{-1} = U^{-1} L^{-1} P^T`` by two triangular solves."""
        permutation, lower, upper = self.factors()
        solved = torch.linalg.solve_triangular(lower, permutation.T, upper=False, unitriangular=True)
        return torch.linalg.solve_triangular(upper, solved, upper=True)

    def log_abs_det(self) -> Tensor:
        """``log|det W| = sum log_s`` (a scalar)."""
        return self.log_scale.sum()

    def forward(self, x: Tensor) -> Tensor:
        """``y = W x`` on the last axis of ``x``."""
        return x @ self.weight().T

    def inverse(self, y: Tensor) -> Tensor:
        """``x = W^{-1} y`` on the last axis of ``y``."""
        return y @ self.inverse_weight().T


class SlotChannelMixing(FieldTransform):
    """Glow's invertible 1x1 convolution on the crystal fields: one :class:`LULinear` mixes the ``K+1+3``
    channels of each atom slot (type channels and coordinates together), shared over the slots as a 1x1
    convolution is shared over pixels, and a second one mixes the 6 lattice channels.

    Sharing over slots keeps the map equivariant to permutations of the slots. Log-det
    ``N log|det W_site| + log|det W_lattice|`` per sample.

    Args:
        num_types: K + 1.
    """

    def __init__(self, num_types: int) -> None:
        super().__init__()
        self.num_types = int(num_types)
        self.site = LULinear(self.num_types + 3)
        self.lattice = LULinear(6)

    def forward(self, x: Mapping[str, Tensor]) -> tuple[Fields, Tensor]:
        """Mix the channels of every slot and of the lattice; returns ``(y, log-det [B])``."""
        site = self.site(torch.cat([x["atom_types"], x["frac_coords"]], dim=-1))
        types, frac = site.split([self.num_types, 3], dim=-1)
        y = {"atom_types": types, "frac_coords": frac, "lattice": self.lattice(x["lattice"])}
        logdet = _positions(x["atom_types"]) * self.site.log_abs_det() + self.lattice.log_abs_det()
        return y, logdet.expand(x["lattice"].shape[0])

    def inverse(self, y: Mapping[str, Tensor]) -> Fields:
        """Undo the mixing with the inverse matrices."""
        site = self.site.inverse(torch.cat([y["atom_types"], y["frac_coords"]], dim=-1))
        types, frac = site.split([self.num_types, 3], dim=-1)
        return {"atom_types": types, "frac_coords": frac, "lattice": self.lattice.inverse(y["lattice"])}
