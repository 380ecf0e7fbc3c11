"""LSGM: a score-based diffusion prior in the latent space of the crystal VAE, trained in stages.

Vahdat, Kreis & Kautz (2021), "Score-based Generative Modeling in Latent Space", NeurIPS, arXiv:2106.05931.
The VAE is the family's :class:`~bench.models.vae.vae.CrystalVAE` (transformer set encoder to a Gaussian
``q(z|x)``, slot-embedding decoder); its ``N(0, I)`` prior is replaced by a score-based prior on ``z``, a VP
SDE whose noise prediction is the paper's mixed score (:class:`~bench.models.diffusion.latent_sde.
LatentSDEPrior`). The objective is the ELBO with the KL split as ``-H[q(z|x)] + CE(q(z|x) || p(z))``, the
entropy in closed form and the cross-entropy by denoising score matching (the paper's theorem 1).

Training runs in the paper's stages (its appendix G and the authors' recipes: the VAE first, then the prior
swapped in and everything trained end to end):

1. ``vae``: the VAE alone with the standard normal prior, the plain ``vae`` loss (the score model does not
   train; with its mixing weight at ``sigmoid(-3) = 0.047`` it starts close to that Normal prior);
2. ``end_to_end``: every network at once. The VAE's loss uses the cross-entropy with the likelihood weighting
   (importance-sampled ``t``), read through the prior's detached parameters, so it moves the encoder only;
   the score model's own objective is the same denoising error under its own weighting (``reweighted`` by
   default, the paper's ``w_re``) at separately drawn times, on detached latents, so it moves the prior only
   (the paper's algorithm 2, "disjoint" training). One optimiser serves both (no parameter is in both).

``prior`` is the paper's simpler alternative, available by config in place of ``end_to_end``: the score
model alone on ``z ~ q(z|x)`` of the frozen VAE. Without stages (one fit) the model trains as in
``end_to_end`` from the start.

Sampling draws ``z_1 ~ N(0, I)``, runs the configured sampler of :mod:`bench.models.diffusion.sde` to
``eps`` (the probability-flow ODE by default, as the paper samples; or Euler-Maruyama on the reverse SDE) and
decodes ``z_eps``. ``test_nll`` is the VAE's bound with ``-log p(z)`` from the probability-flow ODE (the
paper's evaluation): ``E_q[-log p(x|z) + log q(z|x) - log p_ODE(z)]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from bench.models.backbone import CrystalTransformer
from bench.models.base import Likelihood, OptimizerFactory
from bench.models.diffusion.latent_sde import PRIOR_WEIGHTINGS, LatentSDEPrior, gaussian_entropy
from bench.models.diffusion.sde import VPSDE, ProbabilityFlowSampler, SDESampler
from bench.models.flow.cnf import ODESolver
from bench.models.vae.vae import CrystalVAE
from torch import Tensor, nn

__all__ = ["CrystalLSGM"]

_LOG_2PI = math.log(2.0 * math.pi)


class CrystalLSGM(CrystalVAE):
    """LSGM on the crystal VAE: ``q(z|x)``, ``p(x|z)`` as :class:`~bench.models.vae.vae.CrystalVAE`, and a
    score-based prior ``p(z)`` (see the module docstring).

    The loss of stage ``end_to_end`` (and of training without stages) is the VAE's reconstruction terms plus
    ``beta`` times ``CE(q || p) - H[q]`` (logged as ``kl``, with ``cross_entropy`` and ``entropy``) plus the
    score model's objective averaged over the latent's ``D`` dimensions (``prior_loss``; its gradient reaches
    the prior alone, so its scale changes nothing under Adam). Stage ``vae`` is exactly the plain VAE's loss;
    stage ``prior`` is ``prior_loss`` alone. ``mixing`` logs the mean mixing weight ``alpha``.

    Args:
        backbone: partial of :class:`~bench.models.backbone.CrystalTransformer` (encoder and decoder).
        optimizer: partial building the optimiser (one for all networks).
        num_types: K + 1 (from the fitted codec).
        max_atoms: N (from the fitted codec).
        sampler: a built :class:`~bench.models.diffusion.sde.SDESampler` of the latent (default: the
            probability-flow ODE, dopri5).
        latent_dim: ``D``, the width of ``z``.
        beta: weight of one nat of ``CE - H`` (of the KL in stage ``vae``) on the loss.
        kl_warmup_steps: ramp ``beta`` from 0 over this many steps of stage ``vae`` (or of training without
            stages); stage ``end_to_end`` uses the full ``beta``.
        type_weight: weight of the type cross-entropy.
        frac_weight: weight of the periodic coordinate MSE.
        lattice_weight: weight of the lattice MSE.
        beta_min: ``beta(0)`` of the VP SDE.
        beta_max: ``beta(1)`` of the VP SDE.
        eps: the smallest time of training, the cross-entropy, sampling and the likelihood (LSGM's
            ``time_eps`` 1e-2).
        prior_weighting: the score model's objective, one of
            :data:`~bench.models.diffusion.latent_sde.PRIOR_WEIGHTINGS`.
        mixing_logit_init: initial logit of the mixing weight of every dimension (the authors' default -3).
        prior_hidden_dim: width of the score network.
        prior_blocks: residual blocks of the score network.
        prior_time_dim: width of its time embedding.
        prior_dropout: dropout of the score network.
        nll_trace: divergence of the likelihood ODE: ``hutchinson`` (one Rademacher probe per solve) or
            ``exact`` (``D`` backward passes per evaluation).
        nll_atol: absolute tolerance of the likelihood ODE (dopri5).
        nll_rtol: relative tolerance of the likelihood ODE.
    """

    family = "diffusion"
    paper = (
        "Vahdat, Kreis, Kautz (2021). Score-based Generative Modeling in Latent Space. NeurIPS. "
        "arXiv:2106.05931"
    )
    likelihood = Likelihood(
        "upper_bound",
        "elbo_ode_prior",
        "negative ELBO E_q[-log p(x|z) + log q(z|x) - log p_ODE(z)] averaged over posterior draws, with the "
        "vae's observation model (categorical types, wrapped-normal coordinates of filled slots, normal "
        "standardised lattice, scales fitted on the training split) and -log p(z) of the latent prior by "
        "the probability-flow ODE from t = eps to 1 (dopri5; Hutchinson trace with one Rademacher probe per "
        "solve unless exact), N(0, I) at t = 1",
    )
    training_stages = ("vae", "prior", "end_to_end")

    def __init__(
        self,
        backbone: Callable[..., CrystalTransformer],
        optimizer: OptimizerFactory,
        num_types: int,
        max_atoms: int,
        sampler: SDESampler | None = None,
        latent_dim: int = 32,
        beta: float = 0.01,
        kl_warmup_steps: int = 0,
        type_weight: float = 1.0,
        frac_weight: float = 1.0,
        lattice_weight: float = 1.0,
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        eps: float = 1e-2,
        prior_weighting: str = "reweighted",
        mixing_logit_init: float = -3.0,
        prior_hidden_dim: int = 256,
        prior_blocks: int = 2,
        prior_time_dim: int = 64,
        prior_dropout: float = 0.0,
        nll_trace: str = "hutchinson",
        nll_atol: float = 1e-3,
        nll_rtol: float = 1e-3,
    ) -> None:
        if prior_weighting not in PRIOR_WEIGHTINGS:
            raise ValueError(f"prior_weighting must be one of {PRIOR_WEIGHTINGS}, got {prior_weighting!r}")
        if nll_trace not in ("exact", "hutchinson"):
            raise ValueError(f"nll_trace must be 'exact' or 'hutchinson', got {nll_trace!r}")
        if sampler is not None and not isinstance(sampler, SDESampler):
            raise TypeError(
                "lsgm's prior is a continuous-time score model and cannot be sampled by "
                f"{type(sampler).__name__}: choose sampler@model.module.sampler=probability_flow or "
                "sampler@model.module.sampler=reverse_sde"
            )
        super().__init__(
            backbone, optimizer, num_types, max_atoms, latent_dim=latent_dim, beta=beta,
            kl_warmup_steps=kl_warmup_steps, type_weight=type_weight, frac_weight=frac_weight,
            lattice_weight=lattice_weight,
        )
        self.sampler: SDESampler = sampler if sampler is not None else ProbabilityFlowSampler()
        self.prior = LatentSDEPrior(
            self.latent_dim, VPSDE(beta_min, beta_max, eps), prior_weighting, mixing_logit_init,
            prior_hidden_dim, prior_blocks, prior_time_dim, prior_dropout,
        )
        self.nll_trace = nll_trace
        self.nll_solver = ODESolver("dopri5", atol=float(nll_atol), rtol=float(nll_rtol))
        self.last_nll_evaluations = 0

    # ------------------------------------------------------------------ stages
    def stage_parameters(self, name: str) -> list[nn.Parameter]:
        """``vae``: the encoder and the decoder; ``prior``: the score model (network and mixing weights);
        ``end_to_end``: every parameter."""
        prior = list(self.prior.parameters())
        if name == "prior":
            return prior
        if name == "end_to_end":
            return list(self.parameters())
        held = {id(p) for p in prior}
        return [p for p in self.parameters() if id(p) not in held]

    # ------------------------------------------------------------------ the objective
    def current_beta(self) -> float:
        """``beta`` after the warm-up, except in stage ``end_to_end``: the VAE's KL was warmed up in stage
        ``vae``, so the second stage (whose step count restarts at 0) uses the full ``beta``."""
        if self.stage == "end_to_end":
            return self.beta
        return super().current_beta()

    def regulariser(self, mu: Tensor, logvar: Tensor, z: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Stage ``vae``: ``beta KL(q || N(0, I))``. Otherwise ``beta (CE(q || p) - H[q])``, the
        cross-entropy through the prior's detached parameters (likelihood weighting), plus the score model's
        own objective on the detached ``z`` per latent dimension."""
        if self.stage == "vae":
            return super().regulariser(mu, logvar, z)
        cross_entropy = self.prior.cross_entropy(z, frozen=True).mean()
        entropy = gaussian_entropy(logvar).mean()
        kl = cross_entropy - entropy
        prior_loss = self.prior.loss(z).mean() / self.latent_dim
        terms = {
            "kl": kl, "cross_entropy": cross_entropy, "entropy": entropy, "prior_loss": prior_loss,
            "mixing": self.prior.mixing.mean().detach(),
        }
        return self.current_beta() * kl + prior_loss, terms

    def loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The VAE's loss with this prior (see the class docstring); in stage ``prior`` the score model's
        objective alone, on posterior draws of the frozen encoder."""
        if self.stage != "prior":
            return super().loss(batch)
        with torch.no_grad():
            mu, logvar = self.encode(batch)
            z = self.reparameterise(mu, logvar)
        prior_loss = self.prior.loss(z).mean() / self.latent_dim
        return {"loss": prior_loss, "prior_loss": prior_loss, "mixing": self.prior.mixing.mean().detach()}

    # ------------------------------------------------------------------ sampling
    @property
    def nfe(self) -> int:
        """Score-model evaluations of the latent sampler (measured on the last call for an adaptive ODE
        solver) plus the one decoder pass."""
        return self.sampler.nfe() + 1

    def sample_prior(self, n: int, generator: torch.Generator | None) -> Tensor:
        """``n`` latents from the score-based prior: ``z_1 ~ N(0, I)`` from ``generator``, then the sampler
        to ``eps`` (every random number from ``generator``)."""
        shape = (n, self.latent_dim)
        z1 = self._randn(shape, generator)
        return self.prior.sample(z1, self.sampler, lambda: self._randn(shape, generator))

    # ------------------------------------------------------------------ likelihood of held-out data
    def fit_likelihood(
        self, data: Mapping[str, Tensor], generator: torch.Generator | None = None, batch_size: int = 256
    ) -> dict[str, Any]:
        """The decoder's scales (as the VAE's), and the settings of the prior's likelihood."""
        out = super().fit_likelihood(data, generator, batch_size)
        sde = self.prior.sde
        out["latent_prior"] = {
            "sde": {"kind": "vp", "beta_min": sde.beta_min, "beta_max": sde.beta_max, "eps": sde.eps},
            "ode": {"method": self.nll_solver.method, "trace": self.nll_trace,
                    "probe": "rademacher" if self.nll_trace == "hutchinson" else None,
                    "atol": self.nll_solver.atol, "rtol": self.nll_solver.rtol},
        }
        return out

    @torch.no_grad()
    def test_nll(
        self, batch: Mapping[str, Tensor], draws: int = 1, generator: torch.Generator | None = None
    ) -> Tensor:
        """``[B]`` nats per crystal: ``-log p(x|z) + log q(z|x) - log p_ODE(z)`` averaged over ``draws``
        posterior draws (and probes) from ``generator`` (the likelihood declared on the class; call it in
        eval mode, after :meth:`fit_likelihood`)."""
        if draws < 1:
            raise ValueError(f"draws must be >= 1, got {draws}")
        mu, logvar = self.encode(batch)
        std = torch.exp(0.5 * logvar)
        total = torch.zeros(mu.shape[0], dtype=torch.float64, device=mu.device)
        for _ in range(draws):
            eps = self._randn(mu.shape, generator)
            z = mu + std * eps
            log_q = (-0.5 * eps.pow(2) - 0.5 * _LOG_2PI - 0.5 * logvar).sum(-1)
            log_px = self.observation_log_prob(self.decode(z), batch)
            prior_nll, calls = self.prior.nll(z, self.nll_solver, self.nll_trace, generator)
            self.last_nll_evaluations = calls
            total += -log_px.double() + log_q.double() + prior_nll
        return total / draws
