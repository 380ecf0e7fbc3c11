"""Gaussian variational autoencoder over the crystal batch.

Kingma & Welling (2014), "Auto-Encoding Variational Bayes", ICLR, arXiv:1312.6114; the KL weight ``beta``
follows Higgins et al. (2017), "beta-VAE", ICLR. The encoder is the shared backbone read out through its
pooled lattice token (permutation-invariant over sites); the decoder is the backbone with learned slot
embeddings, conditioned on the latent, emitting type logits, fractional coordinates and lattice parameters for
every slot.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from bench.models.backbone import CrystalTransformer
from bench.models.base import GenerativeModule, OptimizerFactory, periodic_difference
from bench.models.vae.latents import Latent
from torch import Tensor, nn

__all__ = ["CrystalVAE", "GaussianLatent"]


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
