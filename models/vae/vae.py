"""Gaussian variational autoencoder over the crystal batch.

Kingma & Welling (2014), "Auto-Encoding Variational Bayes", ICLR, arXiv:1312.6114; the KL weight ``beta``
follows Higgins et al. (2017), "beta-VAE", ICLR. The encoder is the shared backbone read out through its
pooled lattice token (permutation-invariant over sites); the decoder is the backbone with learned slot
embeddings, conditioned on the latent, emitting type logits, fractional coordinates and lattice parameters for
every slot.

Test likelihood (:meth:`CrystalVAE.test_nll`): the training loss is a weighted sum of per-element means, not
an ELBO, and the decoder has no noise scale, so the bound is taken for the observation model those terms
stand for: per slot a categorical type (softmax of the logits, the empty slot included), for each filled
slot's fractional coordinates a wrapped normal on ``[0, 1)`` around the decoded ones, and a normal for each
standardised lattice parameter. Their scales are fitted on the training split
(:meth:`CrystalVAE.fit_likelihood`) as the closed-form maximum-likelihood scale of a Gaussian decoder, the
root mean squared reconstruction error (Rybkin, Daniilidis & Levine 2021, "Simple and Effective VAE Training
with Calibrated Decoders", ICML, arXiv:2006.13202), floored at :data:`SIGMA_FLOOR`. The reported value is the
importance-weighted bound of Burda, Grosse & Salakhutdinov (2016), "Importance Weighted Autoencoders", ICLR,
arXiv:1509.00519, with ``k`` draws from the encoder's posterior: ``-log (1/k) sum_i p(x, z_i) / q(z_i | x)``,
an upper bound on ``-log p(x)`` in expectation, no looser than the negative ELBO (``k = 1``) and tighter as
``k`` grows. Samples are still the decoder's means (the observation noise is not drawn), as before.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from bench.models.backbone import CrystalTransformer
from bench.models.base import GenerativeModule, Likelihood, OptimizerFactory, periodic_difference
from bench.models.vae.latents import Latent
from torch import Tensor, nn

__all__ = [
    "SIGMA_FLOOR",
    "CrystalVAE",
    "GaussianLatent",
    "importance_weighted_nll",
    "wrapped_normal_log_density",
]

SIGMA_FLOOR = 1e-3
"""Smallest fitted decoder scale (fractions; standardised lattice units): a parameter the decoder reproduces
almost exactly (a lattice angle constant in training) must not make the density unbounded."""
_WRAP_TERMS = 3  # images k = -3..3 of the wrapped normal: exact to float precision for scales up to 0.5
_LOG_2PI = math.log(2.0 * math.pi)


def wrapped_normal_log_density(delta: Tensor, sigma: Tensor | float) -> Tensor:
    """Elementwise log-density on the circle ``[0, 1)`` of a normal of scale ``sigma`` wrapped mod 1, at
    offset ``delta`` from its mean: ``log sum_k N(delta + k; 0, sigma^2)`` (``delta`` is wrapped first)."""
    d = delta - torch.round(delta)
    images = torch.arange(-_WRAP_TERMS, _WRAP_TERMS + 1, dtype=d.dtype, device=d.device)
    sigma = torch.as_tensor(sigma, dtype=d.dtype, device=d.device)
    x = (d.unsqueeze(-1) + images) / sigma
    return torch.logsumexp(-0.5 * x.pow(2), dim=-1) - torch.log(sigma) - 0.5 * _LOG_2PI


def importance_weighted_nll(log_weights: Tensor) -> Tensor:
    """Burda et al. (2016)'s bound from ``[k, B]`` log importance weights ``log p(x, z_i) - log q(z_i | x)``:
    ``-(logsumexp_i w_i - log k)`` per item ``[B]`` (``k = 1``: the one-draw negative ELBO)."""
    k = log_weights.shape[0]
    return -(torch.logsumexp(log_weights, dim=0) - math.log(k))


class GaussianLatent:
    """What the VAE family's members share about their latent: the posterior draw, the prior draw, the
    regulariser and the warm-up of its weight. A mixin for a :class:`~bench.models.base.GenerativeModule` that
    sets ``latent_dim``, ``beta``, ``kl_warmup_steps`` and ``latent``.

    ``latent`` is the pluggable part: None keeps the built-in Gaussian latent (:meth:`reparameterise`,
    :meth:`sample_prior`, the model's ``regulariser``); a :class:`~bench.models.vae.latents.Latent` object
    (beta-TCVAE, FactorVAE, JointVAE, ...) owns the posterior draw, the prior draw and the regulariser
    instead, and the model reads :attr:`posterior_width` encoder outputs and feeds :attr:`code_width` wide
    latents to its decoder.

    A latent with a learned prior (:meth:`~bench.models.vae.latents.Latent.prior_networks`, VQ-VAE's prior
    over its codes) makes the model train in two stages (:meth:`declare_latent_stages`): ``autoencoder``
    (every network but the prior) and then ``prior`` (the prior alone, on the codes of the frozen encoder)."""

    latent_dim: int
    beta: float
    kl_warmup_steps: int
    latent: Latent | None

    @property
    def code_width(self) -> int:
        """Width of ``z`` as the decoder reads it: ``latent.dim`` (``latent_dim`` without a latent object)."""
        return self.latent.dim if self.latent is not None else self.latent_dim

    @property
    def posterior_width(self) -> int:
        """Encoder outputs per crystal: ``latent.param_dim``, or ``2 latent_dim`` (mean, log-variance)."""
        return self.latent.param_dim if self.latent is not None else 2 * self.latent_dim

    def latent_regulariser(self, stats: Mapping[str, Tensor], z: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The latent object's penalty on the loss: ``beta`` (after warm-up) times its regulariser, plus its
        auxiliary objective; and its terms for logging."""
        out = self.latent.penalty(stats, z, int(self.global_step))  # type: ignore[union-attr,attr-defined]
        return self.current_beta() * out.regulariser + out.auxiliary, out.terms

    def fit_data(self, data: Mapping[str, Tensor]) -> None:
        """The model's own statistics of the training set (the next class in the MRO), then the latent
        object's (the dataset size of beta-TCVAE's estimate)."""
        super().fit_data(data)  # type: ignore[misc]
        if self.latent is not None:
            self.latent.fit_data(data)

    def declare_latent_stages(self) -> None:
        """Declare the stages ``("autoencoder", "prior")`` when the latent has a prior network to train;
        otherwise the model keeps training in one stage. Called at the end of ``__init__``."""
        if self.latent is not None and self.latent.prior_networks():
            self.training_stages = ("autoencoder", "prior")

    def stage_parameters(self, name: str) -> list[nn.Parameter]:
        """``prior``: the parameters of the latent's prior networks; ``autoencoder``: every other one."""
        if self.latent is None or not self.latent.prior_networks():
            return super().stage_parameters(name)  # type: ignore[misc]
        prior = [p for m in self.latent.prior_networks() for p in m.parameters()]
        if name == "prior":
            return prior
        held = {id(p) for p in prior}
        return [p for p in self.parameters() if id(p) not in held]  # type: ignore[attr-defined]

    def prior_stage_loss(self, params: Tensor) -> dict[str, Tensor]:
        """The latent's prior loss on the encoder outputs ``params``, as the loss of the ``prior`` stage."""
        loss, terms = self.latent.prior_loss(params)  # type: ignore[union-attr]
        return {"loss": loss, **terms}

    def trains_prior_alongside(self) -> bool:
        """Whether :meth:`loss` adds the prior's loss to the autoencoder's: a model with a prior network that
        is trained without stages (no ``model.stages``: one fit of every network; the prior's loss sees only
        the codes, so its gradient reaches the prior alone)."""
        return bool(self.training_stages) and self.stage is None  # type: ignore[attr-defined]

    def current_beta(self) -> float:
        """``beta`` after the linear warm-up at the current global step."""
        if self.kl_warmup_steps <= 0:
            return self.beta
        return self.beta * min(1.0, (self.global_step + 1) / self.kl_warmup_steps)  # type: ignore[attr-defined]

    def reparameterise(self, mu: Tensor, logvar: Tensor) -> Tensor:
        """A posterior draw ``z = mu + sigma eps`` (Kingma & Welling 2014, section 2.4)."""
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)

    def sample_prior(self, n: int, generator: torch.Generator | None) -> Tensor:
        """``n`` latents from the prior: ``N(0, I)``, or the latent object's prior."""
        if self.latent is not None:
            return self.latent.prior(n, generator, self._randn)  # type: ignore[attr-defined]
        return self._randn((n, self.latent_dim), generator)  # type: ignore[attr-defined]


class CrystalVAE(GaussianLatent, GenerativeModule):
    """Gaussian VAE with a transformer set encoder and a slot-embedding transformer decoder: the VAE family's
    base.

    Variants change the regulariser (:meth:`regulariser`), the prior (:meth:`sample_prior`) or the posterior
    draw (:meth:`reparameterise`), by config or a small subclass; the networks and the reconstruction terms
    are shared.

    The loss is ``CE(types) + MSE_periodic(frac | filled slots) + MSE(lattice) + beta * KL``: reconstruction
    terms are means per element (as in CDVAE, Xie et al. 2022), so ``beta`` is relative to that scale, not the
    ELBO's. With a ``latent`` object, ``beta * KL`` becomes ``beta`` times the object's regulariser plus its
    auxiliary objective (:mod:`bench.models.vae.latents`).

    Args:
        backbone: partial of :class:`~bench.models.backbone.CrystalTransformer` (called twice: encoder,
            decoder).
        optimizer: partial building the optimiser.
        num_types: K + 1 (from the fitted codec).
        max_atoms: N (from the fitted codec).
        latent_dim: width of the Gaussian latent.
        beta: weight of the KL term.
        kl_warmup_steps: ramp ``beta`` linearly from 0 over this many steps (0: no warm-up).
        type_weight: weight of the type cross-entropy.
        frac_weight: weight of the periodic coordinate MSE.
        lattice_weight: weight of the lattice MSE.
        latent: a :class:`~bench.models.vae.latents.Latent` owning the posterior, prior and regulariser; None
            (the default) is the built-in Gaussian latent of width ``latent_dim``.
    """

    family = "vae"
    paper = "Kingma & Welling (2014). Auto-Encoding Variational Bayes. ICLR. arXiv:1312.6114"
    likelihood = Likelihood(
        "upper_bound",
        "iwae",
        "importance-weighted bound (Burda et al. 2016) with k posterior draws on -log p(x) of the codec's "
        "fields, for a decoder of categorical types, wrapped-normal coordinates of filled slots and normal "
        "standardised lattice parameters, their scales fitted on the training split",
    )

    def __init__(
        self,
        backbone: Callable[..., CrystalTransformer],
        optimizer: OptimizerFactory,
        num_types: int,
        max_atoms: int,
        latent_dim: int = 32,
        beta: float = 0.01,
        kl_warmup_steps: int = 0,
        type_weight: float = 1.0,
        frac_weight: float = 1.0,
        lattice_weight: float = 1.0,
        latent: Latent | None = None,
    ) -> None:
        super().__init__(optimizer, num_types, max_atoms)
        self._save_plain_hparams(ignore=["latent"])
        self.latent_dim = int(latent_dim)
        self.beta = float(beta)
        self.kl_warmup_steps = int(kl_warmup_steps)
        self.type_weight = float(type_weight)
        self.frac_weight = float(frac_weight)
        self.lattice_weight = float(lattice_weight)
        self.latent = latent
        self.encoder = backbone(
            num_types=num_types, max_atoms=max_atoms, pooled_dim=self.posterior_width, field_heads=False
        )
        self.decoder = backbone(
            num_types=num_types,
            max_atoms=max_atoms,
            cond_dim=self.code_width,
            slot_embeddings=True,
            field_inputs=False,
        )
        self.declare_latent_stages()
        self.decoder_sigma: dict[str, Tensor] | None = None  # set by fit_likelihood, not saved

    def posterior_params(self, batch: Mapping[str, Tensor]) -> Tensor:
        """The encoder's ``[B, posterior_width]`` output; empty slots are masked out of attention."""
        empty = batch["atom_types"][..., 0] > 0.5
        return self.encoder(batch, padding_mask=empty)["pooled"]

    def encode(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Posterior mean and log-variance ``[B, latent_dim]`` of the built-in Gaussian latent."""
        mu, logvar = self.posterior_params(batch).chunk(2, dim=-1)
        return mu, logvar.clamp(-10.0, 10.0)

    def decode(self, z: Tensor) -> dict[str, Tensor]:
        """Type logits, raw fractional coordinates (read mod 1) and lattice parameters from latents ``z``."""
        return self.decoder(None, cond=z)

    # ------------------------------------------------------------------ hooks of the family
    def reconstruction_terms(
        self, recon: Mapping[str, Tensor], batch: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        """Per-field reconstruction terms: type cross-entropy, periodic coordinate MSE (filled slots), lattice
        MSE."""
        target_types = batch["atom_types"].argmax(dim=-1)
        type_ce = F.cross_entropy(recon["atom_types"].flatten(0, 1), target_types.flatten())
        filled = 1.0 - batch["atom_types"][..., 0]
        frac_err = periodic_difference(recon["frac_coords"], batch["frac_coords"]).pow(2).sum(-1)
        frac_mse = (frac_err * filled).sum() / (3.0 * filled.sum()).clamp_min(1.0)
        lattice_mse = F.mse_loss(recon["lattice"], batch["lattice"])
        return {"type_ce": type_ce, "frac_mse": frac_mse, "lattice_mse": lattice_mse}

    def regulariser(self, mu: Tensor, logvar: Tensor, z: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The latent regulariser added to the reconstruction loss, and its terms for logging.

        Default: ``beta`` (after warm-up) times the analytic ``KL(q(z|x) || N(0, I))``. Variants that
        regularise otherwise (a total-correlation penalty, a discriminator on permuted latents, a discrete
        code) override it.
        """
        kl = (-0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp()).sum(-1)).mean()
        return self.current_beta() * kl, {"kl": kl}

    # ------------------------------------------------------------------ the contract
    def loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Reconstruction terms, the regulariser's terms and the weighted total ``loss`` (in the ``prior``
        stage of a latent with a learned prior, that prior's loss alone)."""
        if self.stage == "prior":
            with torch.no_grad():  # the encoder is frozen: only the prior learns
                params = self.posterior_params(batch)
            return self.prior_stage_loss(params)
        if self.latent is None:
            mu, logvar = self.encode(batch)
            z = self.reparameterise(mu, logvar)
        else:
            params = self.posterior_params(batch)
            z, stats = self.latent.posterior(params)
        recon = self.reconstruction_terms(self.decode(z), batch)
        if self.latent is None:
            penalty, reg_terms = self.regulariser(mu, logvar, z)
        else:
            penalty, reg_terms = self.latent_regulariser(stats, z)
        total = (
            self.type_weight * recon["type_ce"]
            + self.frac_weight * recon["frac_mse"]
            + self.lattice_weight * recon["lattice_mse"]
            + penalty
        )
        if self.latent is not None and self.trains_prior_alongside():
            prior_terms = self.prior_stage_loss(params)
            total = total + prior_terms.pop("loss")
            reg_terms = {**reg_terms, **prior_terms}
        return {"loss": total, **recon, **reg_terms}

    def _sample(self, n: int, generator: torch.Generator | None, condition: Any) -> dict[str, Tensor]:
        return self.decode(self.sample_prior(n, generator))

    # ------------------------------------------------------------------ likelihood of held-out data
    def likelihood_spec(self) -> Likelihood | None:
        """The bound of the module docstring for the built-in Gaussian latent; none with a latent object (its
        posterior and prior are not this Gaussian pair) or for a conditional variant (its bound is on
        ``p(x | y)``, not comparable with unconditional models)."""
        if self.latent is not None or self.conditional:
            return None
        return type(self).likelihood

    @torch.no_grad()
    def fit_likelihood(
        self, data: Mapping[str, Tensor], generator: torch.Generator | None = None, batch_size: int = 256
    ) -> dict[str, Any]:
        """Fit the decoder's scales on encoded training crystals: the root mean squared error of the
        reconstruction from one posterior draw per crystal (periodic error over filled slots' coordinates; per
        lattice parameter), floored at :data:`SIGMA_FLOOR`. Returns them for the record."""
        if self.likelihood_spec() is None:
            return {}
        n = int(data["lattice"].shape[0])
        if n < 1:
            raise ValueError("fit_likelihood needs at least one training crystal")
        frac_sq = torch.zeros((), dtype=torch.float64, device=self.device)
        frac_count = torch.zeros((), dtype=torch.float64, device=self.device)
        lattice_sq = torch.zeros(6, dtype=torch.float64, device=self.device)
        for start in range(0, n, batch_size):
            batch = {k: v[start:start + batch_size].to(self.device) for k, v in data.items()}
            mu, logvar = self.encode(batch)
            z = mu + self._randn(mu.shape, generator) * torch.exp(0.5 * logvar)
            recon = self.decode(z)
            filled = 1.0 - batch["atom_types"][..., 0]
            err = periodic_difference(recon["frac_coords"], batch["frac_coords"]).pow(2).sum(-1)
            frac_sq += (err * filled).sum().double()
            frac_count += 3.0 * filled.sum().double()
            lattice_sq += (recon["lattice"] - batch["lattice"]).pow(2).sum(0).double()
        frac = torch.sqrt(frac_sq / frac_count.clamp_min(1.0)).clamp_min(SIGMA_FLOOR)
        lattice = torch.sqrt(lattice_sq / n).clamp_min(SIGMA_FLOOR)
        self.decoder_sigma = {"frac_coords": frac.float(), "lattice": lattice.float()}
        return {
            "decoder_sigma_frac_coords": float(frac),
            "decoder_sigma_lattice": [float(v) for v in lattice],
            "decoder_sigma_floor": SIGMA_FLOOR,
            "n_fit": n,
        }

    def observation_log_prob(self, recon: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> Tensor:
        """``log p(x | z)`` ``[B]`` of the batch under the decoder's output ``recon`` (the observation model
        of the module docstring, with the scales of :meth:`fit_likelihood`)."""
        if self.decoder_sigma is None:
            raise RuntimeError(
                "the decoder's scales are not fitted: call fit_likelihood(training data) first"
            )
        types = batch["atom_types"]
        log_types = F.log_softmax(recon["atom_types"], dim=-1).gather(-1, types.argmax(-1, keepdim=True))
        filled = 1.0 - types[..., 0]
        delta = batch["frac_coords"] - recon["frac_coords"]
        log_frac = wrapped_normal_log_density(delta, self.decoder_sigma["frac_coords"].to(delta.device))
        sigma = self.decoder_sigma["lattice"].to(delta.device)
        scaled = (batch["lattice"] - recon["lattice"]) / sigma
        log_lattice = -0.5 * scaled.pow(2) - torch.log(sigma) - 0.5 * _LOG_2PI
        return log_types.squeeze(-1).sum(-1) + (log_frac.sum(-1) * filled).sum(-1) + log_lattice.sum(-1)

    @torch.no_grad()
    def log_importance_weights(
        self, batch: Mapping[str, Tensor], draws: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """``[draws, B]`` values of ``log p(x | z_i) + log N(z_i; 0, I) - log q(z_i | x)`` for ``z_i`` drawn
        from the encoder's posterior."""
        if draws < 1:
            raise ValueError(f"draws must be >= 1, got {draws}")
        mu, logvar = self.encode(batch)
        std = torch.exp(0.5 * logvar)
        out = []
        for _ in range(draws):
            eps = self._randn(mu.shape, generator)
            z = mu + std * eps
            log_prior = (-0.5 * z.pow(2) - 0.5 * _LOG_2PI).sum(-1)
            log_posterior = (-0.5 * eps.pow(2) - 0.5 * _LOG_2PI - 0.5 * logvar).sum(-1)
            log_px = self.observation_log_prob(self.decode(z), batch)
            out.append(log_px.double() + (log_prior - log_posterior).double())
        return torch.stack(out)

    @torch.no_grad()
    def negative_elbo(
        self, batch: Mapping[str, Tensor], draws: int = 1, generator: torch.Generator | None = None
    ) -> Tensor:
        """``[B]`` negative ELBO in nats: minus the reconstruction log-likelihood averaged over ``draws``
        posterior draws, plus the closed-form ``KL(q(z | x) || N(0, I))``."""
        mu, logvar = self.encode(batch)
        std = torch.exp(0.5 * logvar)
        recon = torch.zeros(mu.shape[0], dtype=torch.float64, device=mu.device)
        for _ in range(draws):
            z = mu + std * self._randn(mu.shape, generator)
            recon += self.observation_log_prob(self.decode(z), batch).double()
        kl = (0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)).double()
        return -recon / draws + kl

    def test_nll(
        self, batch: Mapping[str, Tensor], draws: int = 1, generator: torch.Generator | None = None
    ) -> Tensor:
        """``[B]`` nats per crystal: the importance-weighted bound with ``k = draws`` (see the module
        docstring)."""
        return importance_weighted_nll(self.log_importance_weights(batch, draws, generator))
