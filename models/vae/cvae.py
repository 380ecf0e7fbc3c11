"""Conditional VAE: the VAE with the condition ``y`` read by its encoder and decoder, and a prior network
``p(z | y)``.

Sohn, Lee & Yan (2015), "Learning Structured Output Representation using Deep Conditional Generative
Models", NeurIPS. Section 3: a recognition network ``q(z | x, y)``, a (conditional) prior network
``p(z | y)`` and a generation network ``p(x | z, y)``, trained on the conditional evidence lower bound::

    log p(x | y) >= -KL(q(z | x, y) || p(z | y)) + E_q(z|x,y)[log p(x | z, y)]

and, optionally, the hybrid objective of section 3.2, ``alpha L_CVAE + (1 - alpha) L_GSNN``,
whose GSNN term reconstructs ``x`` from ``z ~ p(z | y)`` so that training sees the latents that sampling
will use. The paper names the input ``x`` and the structured output ``y``; here the crystal is the output
and the property the input, so the names are swapped: ``x`` is the crystal, ``y`` the representation's
standardised ``condition`` field. Sampling draws ``z ~ p(z | y)`` and decodes ``p(x | z, y)``.

The networks are :class:`~bench.models.vae.vae.CrystalVAE`'s (a set-transformer encoder, a slot-embedding
transformer decoder); see ``models/cards/cvae.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from bench.models.backbone import CrystalTransformer
from bench.models.base import OptimizerFactory
from bench.models.condition_channel import ConditionChannel
from bench.models.vae.vae import CrystalVAE
from torch import Tensor, nn

__all__ = ["CrystalCVAE", "gaussian_kl_between"]

_LOGVAR_CLAMP = 10.0  # as the posterior's log-variance (CrystalVAE.encode)


def gaussian_kl_between(mu_q: Tensor, logvar_q: Tensor, mu_p: Tensor, logvar_p: Tensor) -> Tensor:
    """``KL(N(mu_q, diag e^logvar_q) || N(mu_p, diag e^logvar_p))`` summed over the latent, one value per
    row::

        0.5 sum_d [logvar_p - logvar_q + (e^logvar_q + (mu_q - mu_p)^2) / e^logvar_p - 1]
    """
    ratio = torch.exp(logvar_q - logvar_p)
    gap = (mu_q - mu_p).pow(2) * torch.exp(-logvar_p)
    return 0.5 * (ratio + gap - 1.0 - (logvar_q - logvar_p)).sum(-1)


class CrystalCVAE(ConditionChannel, CrystalVAE):
    """The conditional VAE: :class:`~bench.models.vae.vae.CrystalVAE` whose three networks read ``y``.

    Built with ``condition_dim = C > 0`` (the train stage passes the representation's condition width):

    - recognition network ``q(z | x, y)``: the VAE's encoder with ``h_q(y)`` (a linear map of ``y`` and a
      ReLU, ``condition_embed_dim`` wide) projected and added to every token;
    - prior network ``p(z | y) = N(mu(y), diag sigma^2(y))``: an MLP with two hidden ReLU layers of
      ``prior_hidden_dim`` units (``conditional_prior=False`` puts ``N(0, I)`` in its place, the relaxation
      the paper notes in section 3, where ``z`` is independent of the input);
    - generation network ``p(x | z, y)``: the VAE's slot decoder with conditioning vector ``[z, h_p(y)]``.

    The loss is the VAE's, with the KL taken against the prior network::

        (1 - w) [recon(x | z ~ q(z | x, y), y) + beta KL(q(z | x, y) || p(z | y))]
        + w recon(x | z ~ p(z | y), y)

    where ``recon`` is the base's weighted sum of the type cross-entropy, the periodic coordinate MSE and the
    lattice MSE, ``beta`` weighs one nat on that scale (with the base's warm-up), and ``w = gsnn_weight`` is
    the paper's ``1 - alpha`` (0: the CVAE's bound alone).

    Sampling draws ``eps ~ N(0, I)`` from the generator first, then the conditions (given, or rows of the
    training set's conditions kept by :meth:`fit_data` when None), and decodes ``z = mu(y) + sigma(y) eps``.

    Built with ``condition_dim = 0`` (as the contract test builds every model) it is exactly
    :class:`~bench.models.vae.vae.CrystalVAE` with the same settings: the same parameters, random draws,
    losses and samples, and it refuses a condition.

    Args:
        backbone: partial of :class:`~bench.models.backbone.CrystalTransformer` (called twice: encoder,
            decoder); each gets ``condition_embed_dim`` more conditioning inputs when there is a condition.
        optimizer: partial building the optimiser.
        num_types: K + 1 (from the fitted codec).
        max_atoms: N (from the fitted codec).
        latent_dim: width of the Gaussian latent.
        beta: weight of the KL term.
        kl_warmup_steps: ramp ``beta`` linearly from 0 over this many steps (0: no warm-up).
        type_weight: weight of the type cross-entropy.
        frac_weight: weight of the periodic coordinate MSE.
        lattice_weight: weight of the lattice MSE.
        condition_dim: width ``C`` of the condition (the representation's ``condition`` field); 0: none.
        condition_embed_dim: width of ``h_q(y)`` and ``h_p(y)``.
        prior_hidden_dim: width of the prior network's two hidden layers.
        conditional_prior: learn ``p(z | y)``; False keeps ``N(0, I)`` (encoder and decoder still read ``y``).
        gsnn_weight: ``1 - alpha`` of the hybrid objective, in ``[0, 1)``.
    """

    conditional = True
    paper = (
        "Sohn, Lee, Yan (2015). Learning Structured Output Representation using Deep Conditional Generative "
        "Models. NeurIPS"
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
        condition_dim: int = 0,
        condition_embed_dim: int = 32,
        prior_hidden_dim: int = 64,
        conditional_prior: bool = True,
        gsnn_weight: float = 0.0,
    ) -> None:
        if condition_embed_dim < 1 or prior_hidden_dim < 1:
            raise ValueError(
                f"condition_embed_dim and prior_hidden_dim must be >= 1, got {condition_embed_dim}, "
                f"{prior_hidden_dim}"
            )
        if not 0.0 <= gsnn_weight < 1.0:
            raise ValueError(
                f"gsnn_weight must be in [0, 1) (the hybrid objective's 1 - alpha; at 1 the recognition "
                f"network would get no gradient), got {gsnn_weight}"
            )
        width = int(condition_embed_dim) if condition_dim > 0 else 0

        def conditioned(*args: Any, **kwargs: Any) -> CrystalTransformer:
            # The base builds both networks through this: each reads h(y) beside what it reads already.
            kwargs["cond_dim"] = int(kwargs.get("cond_dim", 0)) + width
            return backbone(*args, **kwargs)

        super().__init__(
            conditioned, optimizer, num_types, max_atoms, latent_dim=latent_dim, beta=beta,
            kl_warmup_steps=kl_warmup_steps, type_weight=type_weight, frac_weight=frac_weight,
            lattice_weight=lattice_weight,
        )
        self.init_condition_channel(condition_dim)
        self.condition_embed_dim = int(condition_embed_dim)
        self.prior_hidden_dim = int(prior_hidden_dim)
        self.conditional_prior = bool(conditional_prior)
        self.gsnn_weight = float(gsnn_weight)
        self.encoder_condition: nn.Module | None = None
        self.decoder_condition: nn.Module | None = None
        self.prior_net: nn.Module | None = None
        if self.condition_dim > 0:
            c, h = self.condition_dim, self.prior_hidden_dim
            self.encoder_condition = nn.Sequential(nn.Linear(c, width), nn.ReLU())
            self.decoder_condition = nn.Sequential(nn.Linear(c, width), nn.ReLU())
            if self.conditional_prior:
                self.prior_net = nn.Sequential(
                    nn.Linear(c, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 2 * self.latent_dim)
                )

    # ------------------------------------------------------------------ the three networks
    def posterior_params(self, batch: Mapping[str, Tensor]) -> Tensor:
        """``q(z | x, y)``'s ``[B, 2 latent_dim]`` (mean, log-variance) from the crystal and its condition."""
        condition = self.batch_condition(batch)
        empty = batch["atom_types"][..., 0] > 0.5
        cond = None if self.encoder_condition is None else self.encoder_condition(condition)
        return self.encoder(batch, padding_mask=empty, cond=cond)["pooled"]

    def prior_params(self, condition: Tensor | None) -> tuple[Tensor, Tensor] | None:
        """``p(z | y)``'s mean and log-variance ``[B, latent_dim]``; None when the prior is ``N(0, I)``."""
        if self.prior_net is None:
            return None
        mu, logvar = self.prior_net(condition).chunk(2, dim=-1)
        return mu, logvar.clamp(-_LOGVAR_CLAMP, _LOGVAR_CLAMP)

    def decode(self, z: Tensor, condition: Tensor | None = None) -> dict[str, Tensor]:
        """``p(x | z, y)``: type logits, raw fractional coordinates and lattice from ``z`` and ``y``."""
        self.check_condition(condition, z.shape[0])
        if self.decoder_condition is not None:
            z = torch.cat([z, self.decoder_condition(condition)], dim=-1)
        return self.decoder(None, cond=z)

    def prior_draw(self, eps: Tensor, condition: Tensor | None) -> Tensor:
        """``z = mu(y) + sigma(y) eps`` (``eps`` itself under ``N(0, I)``)."""
        params = self.prior_params(condition)
        if params is None:
            return eps
        mu, logvar = params
        return mu + eps * torch.exp(0.5 * logvar)

    # ------------------------------------------------------------------ the objective
    def weighted_reconstruction(self, recon: Mapping[str, Tensor]) -> Tensor:
        """The base's weighted reconstruction terms."""
        return (
            self.type_weight * recon["type_ce"]
            + self.frac_weight * recon["frac_mse"]
            + self.lattice_weight * recon["lattice_mse"]
        )

    def loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The conditional ELBO's terms (``kl`` against ``p(z | y)``), the hybrid's ``gsnn`` term when
        ``gsnn_weight > 0``, and the weighted total ``loss``."""
        condition = self.batch_condition(batch)
        mu, logvar = self.encode(batch)
        z = self.reparameterise(mu, logvar)
        recon = self.reconstruction_terms(self.decode(z, condition), batch)
        prior = self.prior_params(condition)
        if prior is None:
            penalty, reg_terms = self.regulariser(mu, logvar, z)  # KL(q || N(0, I)), as the base
        else:
            kl = gaussian_kl_between(mu, logvar, *prior).mean()
            penalty, reg_terms = self.current_beta() * kl, {"kl": kl}
        total = self.weighted_reconstruction(recon) + penalty
        terms = {**recon, **reg_terms}
        if self.gsnn_weight > 0:
            # Section 3.2: reconstruct from the prior's draws, as sampling will.
            z_prior = self.prior_draw(torch.randn_like(mu), condition)
            gsnn_terms = self.reconstruction_terms(self.decode(z_prior, condition), batch)
            gsnn = self.weighted_reconstruction(gsnn_terms)
            total = (1.0 - self.gsnn_weight) * total + self.gsnn_weight * gsnn
            terms["gsnn"] = gsnn
        return {"loss": total, **terms}

    def _sample(self, n: int, generator: torch.Generator | None, condition: Any) -> dict[str, Tensor]:
        # The noise first, so one seed gives the same eps at any condition (and the VAE's draws without one).
        eps = self._randn((n, self.latent_dim), generator)
        condition = self.sample_condition(n, generator, condition)
        return self.decode(self.prior_draw(eps, condition), condition)
