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
from torch import Tensor

__all__ = ["CrystalVAE", "GaussianLatent"]


class GaussianLatent:
    """What the VAE family's members share about their Gaussian latent: the posterior draw, the prior draw and
    the warm-up of the KL weight. A mixin for a :class:`~bench.models.base.GenerativeModule` that sets
    ``latent_dim``, ``beta`` and ``kl_warmup_steps``; variants override these hooks (a learned prior, another
    posterior draw)."""

    latent_dim: int
    beta: float
    kl_warmup_steps: int

    def current_beta(self) -> float:
        """``beta`` after the linear warm-up at the current global step."""
        if self.kl_warmup_steps <= 0:
            return self.beta
        return self.beta * min(1.0, (self.global_step + 1) / self.kl_warmup_steps)  # type: ignore[attr-defined]

    def reparameterise(self, mu: Tensor, logvar: Tensor) -> Tensor:
        """A posterior draw ``z = mu + sigma eps`` (Kingma & Welling 2014, section 2.4)."""
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)

    def sample_prior(self, n: int, generator: torch.Generator | None) -> Tensor:
        """``n`` latents from the prior (default ``N(0, I)``); variants with a learned prior override it."""
        return self._randn((n, self.latent_dim), generator)  # type: ignore[attr-defined]


class CrystalVAE(GaussianLatent, GenerativeModule):
    """Gaussian VAE with a transformer set encoder and a slot-embedding transformer decoder: the VAE family's
    base.

    Variants change the regulariser (:meth:`regulariser`), the prior (:meth:`sample_prior`) or the posterior
    draw (:meth:`reparameterise`), by config or a small subclass; the networks and the reconstruction terms
    are shared.

    The loss is ``CE(types) + MSE_periodic(frac | filled slots) + MSE(lattice) + beta * KL``: reconstruction
    terms are means per element (as in CDVAE, Xie et al. 2022), so ``beta`` is relative to that scale, not the
    ELBO's.

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
    ) -> None:
        super().__init__(optimizer, num_types, max_atoms)
        self._save_plain_hparams()
        self.latent_dim = int(latent_dim)
        self.beta = float(beta)
        self.kl_warmup_steps = int(kl_warmup_steps)
        self.type_weight = float(type_weight)
        self.frac_weight = float(frac_weight)
        self.lattice_weight = float(lattice_weight)
        self.encoder = backbone(
            num_types=num_types, max_atoms=max_atoms, pooled_dim=2 * self.latent_dim, field_heads=False
        )
        self.decoder = backbone(
            num_types=num_types,
            max_atoms=max_atoms,
            cond_dim=self.latent_dim,
            slot_embeddings=True,
            field_inputs=False,
        )

    def encode(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Posterior mean and log-variance ``[B, latent_dim]``; empty slots are masked out of attention."""
        empty = batch["atom_types"][..., 0] > 0.5
        pooled = self.encoder(batch, padding_mask=empty)["pooled"]
        mu, logvar = pooled.chunk(2, dim=-1)
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
        """Reconstruction terms, the regulariser's terms and the weighted total ``loss``."""
        mu, logvar = self.encode(batch)
        z = self.reparameterise(mu, logvar)
        recon = self.reconstruction_terms(self.decode(z), batch)
        penalty, reg_terms = self.regulariser(mu, logvar, z)
        total = (
            self.type_weight * recon["type_ce"]
            + self.frac_weight * recon["frac_mse"]
            + self.lattice_weight * recon["lattice_mse"]
            + penalty
        )
        return {"loss": total, **recon, **reg_terms}

    def _sample(self, n: int, generator: torch.Generator | None, condition: Any) -> dict[str, Tensor]:
        return self.decode(self.sample_prior(n, generator))
