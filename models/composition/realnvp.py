"""comp_realnvp: a RealNVP flow on a composition's dequantised per-element count levels.

Dinh, Sohl-Dickstein & Bengio (2017), "Density estimation using Real NVP", ICLR, arXiv:1605.08803. A
composition is the vector of count levels ``d in {0..L-1}^E`` of the training vocabulary's elements (the
``composition_counts`` representation: level 0 absent, ``k`` atoms otherwise). It is discrete, so the flow
models a dequantised variable ``x = d + u`` with ``u in [0, 1)^E``, exactly as the paper treats 8-bit pixel
values (each level is an integer like a pixel intensity), and it transforms ``x`` as the paper does (section
4.1), in the data-to-base order:

1. the logit map ``y = logit(alpha + (1 - 2 alpha) x / L)`` with ``alpha = 0.05``, whose log-determinant
   enters the density (:class:`LevelLogit`);
2. a per-element affine map, initialised from the training set's statistics (:class:`ElementAffine`: the
   role of the paper's batch normalisation, fitted once instead of per batch);
3. ``n_couplings`` affine coupling layers, ``y_b = x_b exp(s(x_a)) + t(x_a)`` with log-det ``sum s``
   (section 3.3), whose masks alternate between the elements of even and odd index (section 3.4's
   alternating pattern on a vector), each with an MLP conditioner and log-scales bounded by
   ``scale_bound * tanh(. / scale_bound)`` (:class:`ElementCoupling`);

then a standard normal base on ``R^E``. Every step's log-determinant is exact.

Dequantisation (``dequantisation``). The cells ``d + [0, 1)^E`` of different level vectors are disjoint, so
the flow's discrete model ``P(d) = int_{cell(d)} p(x) dx`` has total mass at most 1, and:

- ``"variational"`` (default): ``u ~ q(u | d)``, a learned conditional logistic-normal, ``u = sigmoid(mu(d)
  + sigma(d) eps)`` with ``mu, log sigma`` from an MLP of the one-hot levels (variational dequantisation, Ho,
  Chen, Srinivas, Duan & Abbeel 2019, "Flow++", ICML, arXiv:1902.00275, section 3.1, with the simplest
  conditional flow: one affine map and a sigmoid), trained jointly with the flow;
  ``E_q[-log p(d + u) + log q(u | d)] >= -log P(d)`` (their eq. 12, Jensen's inequality).
- ``"uniform"`` (the paper's): ``u ~ U[0, 1)^E``, and ``E_u[-log p(d + u)] >= -log P(d)`` (Theis, van den
  Oord & Bethge 2016, arXiv:1511.01844). Most of a composition's ``E`` levels are 0, and a flow of affine
  couplings fits the flat density of ``u`` inside each cell poorly, which costs nats on every element; the
  variational dequantiser lets the noise take a shape the flow fits (on mp_e_form, after 1,500 steps, 23.2
  instead of 32.2 nats per composition).

Sampling draws ``z ~ N(0, I)``, inverts the flow and floors ``x`` to levels, clamped into ``0..L-1`` (the
logit map's range reaches slightly past ``[0, L)``); every cell lies inside its level's floor region, so the
probability of sampling ``d`` is at least ``P(d)`` and the bound holds for the sampling distribution too.

Test likelihood (:meth:`CompositionRealNVP.test_nll`): that dequantisation bound in nats per composition,
averaged over draws of ``u``: an upper bound on the NLL of the ``E`` count levels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from bench.models.base import Likelihood, OptimizerFactory
from bench.models.composition.counts import CountsModule
from bench.models.flow.transforms import Fields, FieldTransform, forward_through, inverse_through
from torch import Tensor, nn

__all__ = [
    "DEQUANTISATIONS",
    "CompositionRealNVP",
    "ElementAffine",
    "ElementCoupling",
    "LevelLogit",
    "VariationalDequantiser",
]

KEY = "counts"
"""The one field of the flow variable: the dequantised levels ``[B, E]``."""
DEQUANTISATIONS = ("uniform", "variational")
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _mlp(inputs: int, hidden: int, outputs: int, layers: int) -> nn.Sequential:
    """``layers`` hidden ReLU layers of width ``hidden``; the output layer starts at zero (an identity
    coupling, a fixed dequantiser)."""
    modules: list[nn.Module] = []
    width = inputs
    for _ in range(layers):
        modules += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    out = nn.Linear(width, outputs)
    nn.init.zeros_(out.weight)
    nn.init.zeros_(out.bias)
    return nn.Sequential(*modules, out)


class LevelLogit(FieldTransform):
    """RealNVP's logit map of bounded data (section 4.1): ``y = logit(alpha + (1 - 2 alpha) x / L)`` for ``x``
    in ``[0, L)``, log-det ``sum log((1 - 2 alpha) / L) - log p - log(1 - p)`` with ``p = alpha + (1 - 2
    alpha) x / L``.

    Args:
        num_levels: L.
        alpha: keeps ``p`` inside ``[alpha, 1 - alpha]`` (the paper's 0.05).
    """

    def __init__(self, num_levels: int, alpha: float = 0.05) -> None:
        super().__init__()
        if not 0.0 < alpha < 0.5:
            raise ValueError(f"alpha must be in (0, 0.5), got {alpha}")
        self.num_levels = int(num_levels)
        self.alpha = float(alpha)

    def forward(self, x: Mapping[str, Tensor]) -> tuple[Fields, Tensor]:
        """``(y, log|det dy/dx|)``, the log-det ``[B]``."""
        width = 1.0 - 2.0 * self.alpha
        p = self.alpha + width * x[KEY] / self.num_levels
        y = torch.log(p) - torch.log1p(-p)
        logdet = (math.log(width / self.num_levels) - torch.log(p) - torch.log1p(-p)).sum(dim=-1)
        return {KEY: y}, logdet

    def inverse(self, y: Mapping[str, Tensor]) -> Fields:
        """``x = L (sigmoid(y) - alpha) / (1 - 2 alpha)``."""
        return {KEY: self.num_levels * (torch.sigmoid(y[KEY]) - self.alpha) / (1.0 - 2.0 * self.alpha)}


class ElementAffine(FieldTransform):
    """A learned affine map per element, ``y = (x - shift) exp(-log_scale)``, log-det ``-sum log_scale``.

    :meth:`initialise` sets it from data (each element standardised), as the paper's batch normalisation
    standardises activations, but once, so the map stays a fixed-parameter bijection.

    Args:
        num_elements: E.
    """

    def __init__(self, num_elements: int) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(num_elements))
        self.log_scale = nn.Parameter(torch.zeros(num_elements))

    @torch.no_grad()
    def initialise(self, y: Tensor, min_std: float = 1e-2) -> None:
        """Standardise each element of ``y`` ``[B, E]`` (standard deviation floored at ``min_std``)."""
        self.shift.copy_(y.mean(dim=0))
        self.log_scale.copy_(torch.log(y.std(dim=0, correction=0).clamp_min(min_std)))

    def forward(self, x: Mapping[str, Tensor]) -> tuple[Fields, Tensor]:
        """``(y, log-det [B])``."""
        y = (x[KEY] - self.shift) * torch.exp(-self.log_scale)
        return {KEY: y}, (-self.log_scale.sum()).expand(y.shape[0])

    def inverse(self, y: Mapping[str, Tensor]) -> Fields:
        """``x = y exp(log_scale) + shift``."""
        return {KEY: y[KEY] * torch.exp(self.log_scale) + self.shift}


class ElementCoupling(FieldTransform):
    """RealNVP's affine coupling on the element vector: the elements whose index has parity ``parity`` are
    kept and condition the others, ``y_b = x_b exp(s(x_a)) + t(x_a)``, log-det ``sum_b s``.

    Args:
        num_elements: E.
        parity: the kept elements' index parity (0 or 1); alternate it between layers.
        hidden: width of the conditioner MLP.
        layers: hidden layers of the conditioner MLP.
        scale_bound: log-scales are ``scale_bound * tanh(raw / scale_bound)``.
    """

    def __init__(
        self, num_elements: int, parity: int, hidden: int = 256, layers: int = 2, scale_bound: float = 2.0
    ) -> None:
        super().__init__()
        if parity not in (0, 1):
            raise ValueError(f"parity must be 0 or 1, got {parity}")
        if scale_bound <= 0:
            raise ValueError(f"scale_bound must be > 0, got {scale_bound}")
        self.register_buffer("kept", (torch.arange(num_elements) % 2 == parity).float(), persistent=False)
        self.conditioner = _mlp(num_elements, hidden, 2 * num_elements, layers)
        self.scale_bound = float(scale_bound)

    def _scale_shift(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raw_s, shift = self.conditioner(x * self.kept).chunk(2, dim=-1)
        free = 1.0 - self.kept
        return free * self.scale_bound * torch.tanh(raw_s / self.scale_bound), free * shift

    def forward(self, x: Mapping[str, Tensor]) -> tuple[Fields, Tensor]:
        """``(y, log-det [B])``."""
        s, t = self._scale_shift(x[KEY])
        return {KEY: x[KEY] * torch.exp(s) + t}, s.sum(dim=-1)

    def inverse(self, y: Mapping[str, Tensor]) -> Fields:
        """``x_b = (y_b - t) exp(-s)`` with ``s, t`` from the kept elements (equal in ``x`` and ``y``)."""
        s, t = self._scale_shift(y[KEY])
        return {KEY: (y[KEY] - t) * torch.exp(-s)}


class VariationalDequantiser(nn.Module):
    """``q(u | d)`` on ``(0, 1)^E``: ``u = sigmoid(mu(d) + exp(log_sigma(d)) eps)``, ``eps ~ N(0, I)``, with
    ``mu, log_sigma`` from an MLP of the one-hot levels ``[B, E, L]`` (Flow++'s variational dequantisation
    with a one-step conditional flow).

    Args:
        num_elements: E.
        num_levels: L.
        hidden: width of the MLP.
        layers: its hidden layers.
    """

    def __init__(self, num_elements: int, num_levels: int, hidden: int = 256, layers: int = 2) -> None:
        super().__init__()
        self.net = _mlp(num_elements * num_levels, hidden, 2 * num_elements, layers)

    def forward(self, onehot: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """``(u, log q(u | d))`` ``([B, E], [B])`` from the one-hot levels and standard normal ``eps``."""
        mu, log_sigma = self.net(onehot.flatten(1)).chunk(2, dim=-1)
        h = mu + torch.exp(log_sigma) * eps
        log_q = -0.5 * eps**2 - _HALF_LOG_2PI - log_sigma - F.logsigmoid(h) - F.logsigmoid(-h)
        return torch.sigmoid(h), log_q.sum(dim=-1)


class CompositionRealNVP(CountsModule):
    """RealNVP over the dequantised count levels (see the module docstring).

    Args:
        optimizer: partial building the optimiser.
        num_elements: E (the representation's ``sizes()``).
        num_levels: L, count levels per element, level 0 meaning absent.
        n_couplings: coupling layers (alternating parity; an even number transforms every element equally
            often).
        hidden: width of each coupling's conditioner MLP (and of the variational dequantiser's).
        layers: hidden layers of each MLP.
        scale_bound: bound of the couplings' log-scales.
        alpha: the logit map's margin (the paper's 0.05).
        dequantisation: ``"uniform"`` or ``"variational"``.
    """

    family = "flow"
    paper = "Dinh, Sohl-Dickstein, Bengio (2017). Density estimation using Real NVP. ICLR. arXiv:1605.08803"
    likelihood = Likelihood(
        "upper_bound",
        "dequantised",
        "exact NLL of the dequantised count levels x = d + u (u uniform on [0,1)^E, or drawn from the "
        "learned q(u|d) with log q(u|d) added for variational dequantisation), averaged over draws of u: an "
        "upper bound on the NLL of the E count levels (Jensen), in nats per composition",
    )

    def __init__(
        self,
        optimizer: OptimizerFactory,
        num_elements: int,
        num_levels: int,
        n_couplings: int = 8,
        hidden: int = 256,
        layers: int = 2,
        scale_bound: float = 2.0,
        alpha: float = 0.05,
        dequantisation: str = "variational",
    ) -> None:
        super().__init__(optimizer, num_elements, num_levels)
        if n_couplings < 1:
            raise ValueError(f"n_couplings must be >= 1, got {n_couplings}")
        if dequantisation not in DEQUANTISATIONS:
            raise ValueError(f"dequantisation must be one of {DEQUANTISATIONS}, got {dequantisation!r}")
        self._save_plain_hparams()
        self.dequantisation = dequantisation
        self.logit = LevelLogit(num_levels, alpha)
        self.affine = ElementAffine(num_elements)
        self.couplings = nn.ModuleList(
            ElementCoupling(num_elements, i % 2, hidden, layers, scale_bound) for i in range(n_couplings)
        )
        self.dequantiser = (
            VariationalDequantiser(num_elements, num_levels, hidden, layers)
            if dequantisation == "variational" else None
        )

    # ------------------------------------------------------------------ the flow
    def transforms(self) -> Sequence[FieldTransform]:
        """The flow's transforms in the data-to-base order."""
        return [self.logit, self.affine, *self.couplings]

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log-density ``[B]`` (nats) of dequantised levels ``x`` ``[B, E]``."""
        z, logdet = forward_through(self.transforms(), {KEY: x})
        return (-0.5 * z[KEY] ** 2 - _HALF_LOG_2PI).sum(dim=-1) + logdet

    def dequantise(
        self, counts: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(x, log q(u | d))``: the levels of one-hot ``counts`` plus dequantisation noise, and the noise's
        log-density (0 for uniform noise). Drawn from ``generator``, else from the global torch RNG."""
        levels = counts.argmax(dim=-1).to(counts.dtype)
        shape = levels.shape
        if self.dequantiser is None:
            u = torch.rand_like(levels) if generator is None else self._rand(shape, generator)
            return levels + u, torch.zeros_like(levels[:, 0])
        eps = torch.randn_like(levels) if generator is None else self._randn(shape, generator)
        u, log_q = self.dequantiser(counts, eps)
        return levels + u, log_q

    def fit_data(self, data: Mapping[str, Tensor]) -> None:
        """Standardise each element's logit-mapped training levels (one seeded uniform draw of the noise)
        through :class:`ElementAffine`."""
        levels = self.levels_of(data).to(torch.float32)
        u = torch.rand(levels.shape, generator=torch.Generator().manual_seed(0)).to(levels.device)
        y, _ = self.logit({KEY: levels + u})
        self.affine.initialise(y[KEY])

    def bound(self, batch: Mapping[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        """One draw of ``-log p(d + u) + log q(u | d)`` per composition ``[B]`` (nats)."""
        x, log_q = self.dequantise(self.counts_of(batch), generator)
        return -self.log_prob(x) + log_q

    def loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The dequantised NLL per element (``loss``, nats) and per composition (``nll_bound``)."""
        nll = self.bound(batch).mean()
        return {"loss": nll / self.num_elements, "nll_bound": nll}

    # ------------------------------------------------------------------ likelihood of held-out data
    def fit_likelihood(
        self, data: Mapping[str, Tensor], generator: torch.Generator | None = None
    ) -> dict[str, Any]:
        """Nothing to fit: returns the dequantisation that defines the value, to be recorded with it."""
        return {"dequantisation": self.dequantisation, "logit_alpha": self.logit.alpha}

    @torch.no_grad()
    def test_nll(
        self, batch: Mapping[str, Tensor], draws: int = 1, generator: torch.Generator | None = None
    ) -> Tensor:
        """``[B]`` nats per composition: the dequantisation bound (see the module docstring), averaged over
        ``draws`` draws of ``u`` from ``generator``."""
        if draws < 1:
            raise ValueError(f"draws must be >= 1, got {draws}")
        total = torch.zeros(self.counts_of(batch).shape[0], dtype=torch.float64, device=self.device)
        for _ in range(draws):
            total += self.bound(batch, generator).double()
        return total / draws

    # ------------------------------------------------------------------ sampling
    def _sample(self, n: int, generator: torch.Generator | None, condition: Any) -> dict[str, Tensor]:
        z = self._randn((n, self.num_elements), generator)
        x = inverse_through(self.transforms(), {KEY: z})[KEY]
        levels = torch.floor(x).clamp(0, self.num_levels - 1).long()
        return {"counts": F.one_hot(levels, self.num_levels).to(torch.float32)}
