"""A score-based prior on a VAE's latent vector: LSGM's mixed score, its cross-entropy and its objectives.

Vahdat, Kreis & Kautz (2021), "Score-based Generative Modeling in Latent Space", NeurIPS, arXiv:2106.05931,
on the VP SDE of :mod:`bench.models.diffusion.sde` (``beta`` linear from 0.1 to 20, ``t`` in ``[eps, 1]``):

- **Mixed score** (the paper's mixed score parameterisation): under the VP SDE a standard normal
  ``p(z_0) = N(0, I)`` stays ``N(0, I)`` at every ``t``, so its noise prediction is ``sigma_t z_t`` (score
  ``-z_t``). The prior's noise prediction is that of the Normal corrected by a network,
  ``eps_theta(z_t, t) = (1 - alpha) * sigma_t z_t + alpha * eps'_theta(z_t, t)``, with ``alpha = sigmoid(a)``
  a learned mixing weight per latent dimension (:class:`LatentSDEPrior`); ``alpha -> 0`` is exactly the
  Normal prior.
- **Cross-entropy** (theorem 1): ``CE(q(z_0|x) || p(z_0))`` by denoising score matching,

      CE = E_q[-log N(z_1; 0, I)] + int_eps^1 1/2 g^2 / sigma_t^2 E||eps - eps_theta(z_t, t)||^2 dt
           - D/2 log(sigma_1^2 / sigma_eps^2),

  the likelihood weighting ``w_ll = g^2 / sigma^2`` with ``t`` importance-sampled from the density
  proportional to it (:func:`latent_cross_entropy`). The first and last terms stand for the paper's constant
  ``D/2 log(2 pi e sigma_eps^2)``: the paper takes ``q(z_1|x) = N(0, sigma_1^2 I)``, under which the first is
  ``D/2 log(2 pi e sigma_1^2)``; here its closed form given ``z_0`` is kept (a change of order
  ``alpha_1^2 = 4e-5``). Strictly the value is the cross-entropy of ``q`` and the prior both
  smoothed by the forward kernel at ``eps``; it is exact for the exact score (tested on Gaussians) and, for
  any score model, an upper bound on ``E_q[-log p_SDE(z)]`` of the reverse SDE (Song et al. 2021,
  arXiv:2101.09258, theorem 2).
- **The score model's objective** (the paper's weightings ``w_ll``, ``w_re``, ``w_un``): the same
  denoising error under one of three weightings of ``||eps - eps_theta||^2``, each with its own time
  density (:func:`prior_times`): ``likelihood`` (``1/2 g^2 / sigma^2``, ``t`` from the density proportional
  to it), ``reweighted`` (``1/2 g^2``, ``t`` with ``sigma_t^2`` uniform: the density proportional to
  ``d sigma_t^2 / dt``) and ``unweighted`` (1, ``t`` uniform).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from bench.models.diffusion.sde import VPSDE, SDESampler, probability_flow_nll
from bench.models.embeddings import timestep_embedding
from bench.models.flow.cnf import ODESolver
from torch import Tensor, nn
from torch.func import functional_call

__all__ = [
    "PRIOR_WEIGHTINGS",
    "LatentEpsilonFn",
    "LatentScoreNet",
    "LatentSDEPrior",
    "gaussian_entropy",
    "latent_cross_entropy",
    "normal_prior_eps",
    "prior_times",
    "score_matching_loss",
]

PRIOR_WEIGHTINGS = ("likelihood", "reweighted", "unweighted")
"""Weightings of the score model's objective (LSGM's ``w_ll``, ``w_re``, ``w_un``)."""

LatentEpsilonFn = Callable[[Tensor, Tensor], Tensor]
"""``eps_hat = eps_fn(z_t, t)``: the noise prediction ``[B, D]`` for latents ``z_t`` ``[B, D]`` at times
``t`` ``[B]``."""

_LOG_2PI = math.log(2.0 * math.pi)


def _normal(like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like ``like`` from ``generator`` (else the global generator)."""
    if generator is None:
        return torch.randn_like(like)
    draw = torch.randn(like.shape, generator=generator, device=generator.device, dtype=like.dtype)
    return draw.to(like.device)


def _uniform(size: int, generator: torch.Generator | None, device: torch.device | str) -> Tensor:
    """``size`` uniform draws on ``[0, 1)`` (float64) from ``generator`` (else the global generator)."""
    if generator is None:
        return torch.rand(size, dtype=torch.float64, device=device)
    return torch.rand(size, dtype=torch.float64, generator=generator, device=generator.device).to(device)


def gaussian_entropy(logvar: Tensor) -> Tensor:
    """``H[N(mu, diag(exp(logvar)))]`` in nats ``[B]``: ``1/2 sum (1 + log 2 pi + logvar)``."""
    return (0.5 * (1.0 + _LOG_2PI + logvar)).sum(-1)


def normal_prior_eps(sde: VPSDE, z_t: Tensor, t: Tensor) -> Tensor:
    """The noise prediction of the prior ``N(0, I)`` under the VP SDE: ``sigma_t z_t`` (its diffused marginal
    is ``N(0, I)``, score ``-z_t = -eps / sigma_t``)."""
    return sde.sigma(t).to(z_t.dtype).unsqueeze(-1) * z_t


# ---------------------------------------------------------------------- times and weights
def prior_times(
    sde: VPSDE, size: int, weighting: str, generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> tuple[Tensor, Tensor]:
    """``size`` times ``t`` (float64) for the objective ``int_eps^1 w(t) E||eps - eps_theta||^2 dt`` under
    ``weighting``, and the per-draw weight ``w(t) / p(t)`` that makes ``weight * ||eps - eps_theta||^2`` an
    unbiased estimate of it:

    - ``likelihood``: ``w = 1/2 g^2 / sigma^2``, ``p`` proportional to it, weight ``Z / 2`` (the VP SDE's
      :meth:`~bench.models.diffusion.sde.VPSDE.sample_times`);
    - ``reweighted``: ``w = 1/2 g^2``; ``sigma_t^2`` uniform on ``[sigma_eps^2, sigma_1^2]`` (density
      ``beta alpha_t^2 / (sigma_1^2 - sigma_eps^2)``), weight
      ``(sigma_1^2 - sigma_eps^2) / (2 (1 - sigma_t^2))``;
    - ``unweighted``: ``w = 1``, ``t`` uniform, weight ``1 - eps``.
    """
    if weighting == "likelihood":
        t = sde.sample_times(size, True, generator, device)
        return t, sde.estimator_weight(t, "likelihood", True)
    if weighting == "unweighted":
        t = sde.sample_times(size, False, generator, device)
        return t, torch.full_like(t, 1.0 - sde.eps)
    if weighting == "reweighted":
        ends = sde.sigma2(torch.tensor([sde.eps, 1.0], dtype=torch.float64))
        u = _uniform(size, generator, device)
        s2 = ends[0].to(u.device) + u * (ends[1] - ends[0]).to(u.device)
        t = sde.time_of_gamma(torch.log(s2) - torch.log1p(-s2))
        return t, 0.5 * (ends[1] - ends[0]).to(u.device) / (1.0 - s2)
    raise ValueError(f"weighting must be one of {PRIOR_WEIGHTINGS}, got {weighting!r}")


def score_matching_loss(
    eps_fn: LatentEpsilonFn, sde: VPSDE, z0: Tensor, weighting: str, generator: torch.Generator | None = None,
) -> Tensor:
    """One draw of ``int_eps^1 w(t) E||eps - eps_fn(z_t, t)||^2 dt`` per latent ``[B]`` (summed over the
    latent's ``D`` dimensions), ``w`` by ``weighting`` (:func:`prior_times`), ``z_t = alpha_t z0 + sigma_t
    eps``."""
    t64, weight = prior_times(sde, z0.shape[0], weighting, generator, z0.device)
    t = t64.to(z0.dtype)
    noise = _normal(z0, generator)
    z_t = sde.marginal(z0, t, noise)
    return weight.to(z0.dtype) * (eps_fn(z_t, t) - noise).pow(2).sum(-1)


def latent_cross_entropy(
    eps_fn: LatentEpsilonFn, sde: VPSDE, z0: Tensor, generator: torch.Generator | None = None,
    importance: bool = True,
) -> Tensor:
    """One draw of the denoising-score-matching estimate of ``-log p(z0)`` per latent ``[B]`` (nats), the
    prior's noise prediction ``eps_fn``: its mean over ``z0 ~ q(z_0|x)`` is ``CE(q || p)`` (see the module
    docstring; likelihood weighting, one ``t`` per latent from the importance density, or uniform).

    ``E[-log N(z_1; 0, I) | z0] = 1/2 (alpha_1^2 ||z0||^2 + D sigma_1^2 + D log 2 pi)`` is taken in closed
    form."""
    size, dim = z0.shape
    t64 = sde.sample_times(size, importance, generator, z0.device)
    t = t64.to(z0.dtype)
    noise = _normal(z0, generator)
    z_t = sde.marginal(z0, t, noise)
    weight = sde.estimator_weight(t64, "likelihood", importance).to(z0.dtype)
    diffusion = weight * (eps_fn(z_t, t) - noise).pow(2).sum(-1)
    ends = torch.tensor([sde.eps, 1.0], dtype=torch.float64)
    s2_eps, s2_1 = (float(v) for v in sde.sigma2(ends))
    a2_1 = float(sde.alpha(ends[1:]) ** 2)
    terminal = 0.5 * (a2_1 * z0.pow(2).sum(-1) + dim * (s2_1 + _LOG_2PI))
    return terminal + diffusion - 0.5 * dim * math.log(s2_1 / s2_eps)


# ---------------------------------------------------------------------- the networks
class _Block(nn.Module):
    """A pre-norm residual MLP block with the time embedding added inside."""

    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.time = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: Tensor, temb: Tensor) -> Tensor:
        y = self.fc1(F.silu(self.norm(h))) + self.time(temb)
        return h + self.fc2(self.drop(F.silu(y)))


class LatentScoreNet(nn.Module):
    """``eps'_theta(z_t, t)``: a residual MLP on the latent vector, conditioned on the sinusoidal embedding of
    ``999 t`` (LSGM's ``embedding_scale`` 1000) through a two-layer MLP added inside every block.

    Args:
        dim: ``D``, the width of the latent.
        hidden_dim: width of the blocks.
        num_blocks: number of residual blocks.
        time_dim: width of the sinusoidal time embedding.
        dropout: dropout inside the blocks (training only).
    """

    def __init__(
        self, dim: int, hidden_dim: int = 256, num_blocks: int = 2, time_dim: int = 64, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if min(dim, hidden_dim, num_blocks, time_dim) < 1:
            raise ValueError(
                f"dim, hidden_dim, num_blocks and time_dim must be >= 1, got {dim}, {hidden_dim}, "
                f"{num_blocks}, {time_dim}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.time_dim = int(time_dim)
        self.time_mlp = nn.Sequential(
            nn.Linear(self.time_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, hidden_dim)
        )
        self.inp = nn.Linear(dim, hidden_dim)
        self.blocks = nn.ModuleList(_Block(hidden_dim, dropout) for _ in range(num_blocks))
        self.norm = nn.LayerNorm(hidden_dim)
        self.out = nn.Linear(hidden_dim, dim)

    def forward(self, z_t: Tensor, t: Tensor) -> Tensor:
        temb = self.time_mlp(timestep_embedding(999.0 * t.to(torch.float32), self.time_dim))
        h = self.inp(z_t)
        for block in self.blocks:
            h = block(h, temb)
        return self.out(F.silu(self.norm(h)))


class LatentSDEPrior(nn.Module):
    """LSGM's score-based prior on a ``D``-wide latent: the VP SDE and the mixed noise prediction
    ``(1 - alpha) * sigma_t z_t + alpha * eps'_theta(z_t, t)``, ``alpha = sigmoid(mixing_logit)`` per
    dimension (see the module docstring).

    Calling it gives the mixed noise prediction; :meth:`cross_entropy` is the VAE's prior term,
    :meth:`loss` the score model's objective, :meth:`sample` draws latents with an
    :class:`~bench.models.diffusion.sde.SDESampler` and :meth:`nll` is ``-log p(z)`` under the
    probability-flow ODE.

    Args:
        dim: ``D``.
        sde: the VP SDE (default: ``beta`` 0.1 -> 20, ``eps = 1e-2``, LSGM's ``time_eps``).
        weighting: the score model's objective, one of :data:`PRIOR_WEIGHTINGS`.
        mixing_logit_init: the initial ``a`` of every dimension (the authors' default -3: ``alpha = 0.047``,
            the prior starts close to the Normal one).
        hidden_dim: width of the score network.
        num_blocks: residual blocks of the score network.
        time_dim: width of its time embedding.
        dropout: dropout of the score network.
    """

    def __init__(
        self, dim: int, sde: VPSDE | None = None, weighting: str = "reweighted",
        mixing_logit_init: float = -3.0, hidden_dim: int = 256, num_blocks: int = 2, time_dim: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if weighting not in PRIOR_WEIGHTINGS:
            raise ValueError(f"weighting must be one of {PRIOR_WEIGHTINGS}, got {weighting!r}")
        self.dim = int(dim)
        self.sde = sde if sde is not None else VPSDE(0.1, 20.0, 1e-2)
        self.weighting = weighting
        self.net = LatentScoreNet(self.dim, hidden_dim, num_blocks, time_dim, dropout)
        self.mixing_logit = nn.Parameter(torch.full((self.dim,), float(mixing_logit_init)))

    @property
    def mixing(self) -> Tensor:
        """``alpha = sigmoid(a)`` ``[D]``: the network's share of each dimension's noise prediction."""
        return torch.sigmoid(self.mixing_logit)

    def forward(self, z_t: Tensor, t: Tensor) -> Tensor:
        """The mixed noise prediction ``[B, D]`` in the dtype of ``z_t`` (the network runs in float32)."""
        normal = normal_prior_eps(self.sde, z_t, t)
        correction = self.net(z_t.to(torch.float32), t).to(z_t.dtype)
        alpha = self.mixing.to(z_t.dtype)
        return (1.0 - alpha) * normal + alpha * correction

    def frozen(self, z_t: Tensor, t: Tensor) -> Tensor:
        """The mixed noise prediction through detached parameters: a loss on it trains what feeds ``z_t`` (the
        encoder), never the prior."""
        detached = {name: p.detach() for name, p in self.named_parameters()}
        return functional_call(self, detached, (z_t, t))

    def cross_entropy(
        self, z0: Tensor, generator: torch.Generator | None = None, frozen: bool = False
    ) -> Tensor:
        """One draw of the estimate of ``-log p(z0)`` ``[B]`` (:func:`latent_cross_entropy`, likelihood
        weighting, importance-sampled ``t``); with ``frozen`` its gradient reaches ``z0`` only."""
        return latent_cross_entropy(self.frozen if frozen else self, self.sde, z0, generator)

    def loss(self, z0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The score model's objective ``[B]`` on latents ``z0`` (detached: it trains the prior only) under
        its weighting (:func:`score_matching_loss`)."""
        return score_matching_loss(self, self.sde, z0.detach(), self.weighting, generator)

    def sample(self, z1: Tensor, sampler: SDESampler, noise: Callable[[], Tensor]) -> Tensor:
        """Latents ``z_eps`` ``[n, D]`` from prior draws ``z1`` ``[n, D]`` by ``sampler`` (the reverse SDE or
        the probability-flow ODE), ``noise()`` giving the reverse SDE's noise."""

        def eps_fn(x: Mapping[str, Tensor], t: Tensor) -> dict[str, Tensor]:
            return {"z": self(x["z"], t.to(x["z"].dtype))}

        def source() -> dict[str, Tensor]:
            return {"z": noise()}

        return sampler(eps_fn, self.sde, {"z": z1}, source)["z"]

    def nll(
        self, z: Tensor, solver: ODESolver, trace: str = "exact", generator: torch.Generator | None = None
    ) -> tuple[Tensor, int]:
        """``-log p(z)`` ``[B]`` (float64, nats) under the probability-flow ODE from ``eps`` to 1 with
        ``N(0, I)`` at ``t = 1`` (:func:`~bench.models.diffusion.sde.probability_flow_nll`; the divergence
        ``exact`` or by Hutchinson's estimate with one Rademacher probe from ``generator``), and the network
        evaluations it took."""

        def eps_fn(x: Mapping[str, Tensor], t: Tensor) -> dict[str, Tensor]:
            return {"z": self(x["z"], t)}

        latent = {"z": z.double()}
        return probability_flow_nll(eps_fn, self.sde, latent, solver, trace, "rademacher", generator)
