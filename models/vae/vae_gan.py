"""VAE-GAN over the crystal batch: a VAE whose reconstruction error is measured in the feature space of a GAN
discriminator, and whose decoder is also that GAN's generator.

Larsen, Sønderby, Larochelle & Winther (2016), "Autoencoding beyond pixels using a learned similarity metric",
ICML, arXiv:1512.09300, section 2 and algorithm 1. The encoder and the one-shot slot decoder are
:class:`~bench.models.vae.vae.CrystalVAE`'s; the discriminator is the GAN family's transformer critic (the
shared backbone without slot embeddings, read out through its pooled lattice token into one logit, as
:class:`~bench.models.gan.base.CrystalGAN` builds it). Each training batch computes, from one forward pass,

- ``L_prior = KL(q(z|x) || N(0, I))`` (times ``beta``, as in the family's base);
- ``L_llike``: the mean squared difference of the discriminator's layer-``l`` token features of ``x`` and of
  its reconstruction ``x~ = Dec(z)``, ``z ~ q(z|x)`` (a Gaussian observation model in feature space), plus
  the per-element terms kept for crystals (by default the type cross-entropy, see the card);
- ``L_GAN``: the discriminator's cross-entropy on real ``x`` (label 1), reconstructions ``x~`` and prior
  samples ``x_p = Dec(z_p)``, ``z_p ~ N(0, I)`` (label 0);

and routes them as algorithm 1 does: the encoder descends ``L_prior + L_llike``, the decoder ``gamma L_llike
- L_GAN`` and the discriminator ``L_GAN``, all three from the same forward pass, updated together.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import ClassVar

import torch
import torch.nn.functional as F
from bench.models.backbone import CrystalTransformer
from bench.models.base import FIELDS, OptimizerFactory
from bench.models.gan.base import ADVERSARIAL_LOSSES
from bench.models.vae.vae import CrystalVAE
from torch import Tensor, nn

__all__ = ["GENERATOR_LOSSES", "CrystalVAEGAN"]

GENERATOR_LOSSES = ("minimax", "non_saturating")
"""The decoder's adversarial term: ``minimax`` is the paper's ``-L_GAN`` (algorithm 1); ``non_saturating``
replaces it by ``-log D(x~) - log D(x_p)`` (Goodfellow et al. 2014, section 3)."""


class CrystalVAEGAN(CrystalVAE):
    """VAE-GAN: encoder, decoder (= generator) and discriminator, trained by manual optimisation with the
    paper's gradient routing.

    One optimiser over the three networks takes one step per batch. Its gradients are routed exactly: three
    backward passes of the one forward graph, each accumulating into one network only (``inputs=``), so the
    encoder's gradient is that of ``L_prior + L_llike``, the decoder's that of ``gamma L_llike - L_GAN`` and
    the discriminator's that of ``L_GAN``. Adam(W) and RMSProp update each parameter from its own gradient
    history alone, so this takes exactly the steps of three optimisers with the same settings, while
    ``trainer.max_steps`` keeps counting batches as for :class:`~bench.models.vae.vae.CrystalVAE`.

    ``L_GAN`` here is the discriminator's cross-entropy (the negative of the paper's value function), the
    reading under which the three update lines of algorithm 1 are all descent steps.

    Args:
        backbone: partial of :class:`~bench.models.backbone.CrystalTransformer` (called three times: encoder,
            decoder, discriminator).
        optimizer: partial building the one optimiser over the three networks.
        num_types: K + 1 (from the fitted codec).
        max_atoms: N (from the fitted codec).
        latent_dim: width of the Gaussian latent.
        beta: weight of the KL term in the encoder's objective.
        kl_warmup_steps: ramp ``beta`` linearly from 0 over this many steps (0: no warm-up).
        gamma: weight of ``L_llike`` against ``L_GAN`` in the decoder's objective (the paper's ``gamma``).
        feature_layer: ``l``, the discriminator block (1-based) whose output tokens are the features of
            ``L_llike``; at most the backbone's ``n_layers``.
        type_weight: weight of the per-slot type cross-entropy in ``L_llike`` (0: features only).
        frac_weight: weight of the per-slot periodic coordinate MSE in ``L_llike`` (0: features only).
        lattice_weight: weight of the lattice MSE in ``L_llike`` (0: features only).
        generator_loss: the decoder's adversarial term, one of :data:`GENERATOR_LOSSES`.
        hard_types: feed the discriminator straight-through one-hot types (hard forward, softmax gradient)
            instead of softmax probabilities, so it cannot tell decoded crystals by how soft their types are.
        margin: the balance of the authors' released code (not in the paper): skip the discriminator's
            update while its cross-entropy on real or on generated crystals is below ``equilibrium -
            margin`` (it is winning), skip the decoder's while either is above ``equilibrium + margin`` (it
            is losing), and update both when both would be skipped. None: every network updates every step
            (algorithm 1).
        equilibrium: the cross-entropy the balance steers towards (0.68, near ``log 2``, in the authors'
            code).
    """

    paper = (
        "Larsen, Sønderby, Larochelle, Winther (2016). Autoencoding beyond pixels using a learned similarity "
        "metric. ICML. arXiv:1512.09300"
    )

    #: Which term of :meth:`objectives` each network descends (algorithm 1's three update lines).
    OBJECTIVES: ClassVar[dict[str, str]] = {"encoder": "loss", "decoder": "decoder", "discriminator": "gan"}

    def __init__(
        self,
        backbone: Callable[..., CrystalTransformer],
        optimizer: OptimizerFactory,
        num_types: int,
        max_atoms: int,
        latent_dim: int = 32,
        beta: float = 0.01,
        kl_warmup_steps: int = 0,
        gamma: float = 1.0,
        feature_layer: int = 1,
        type_weight: float = 1.0,
        frac_weight: float = 0.0,
        lattice_weight: float = 0.0,
        generator_loss: str = "minimax",
        hard_types: bool = True,
        margin: float | None = None,
        equilibrium: float = 0.68,
    ) -> None:
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        if min(type_weight, frac_weight, lattice_weight) < 0:
            raise ValueError(
                "type_weight, frac_weight and lattice_weight must be >= 0, got "
                f"{type_weight}, {frac_weight}, {lattice_weight}"
            )
        if margin is not None and margin <= 0:
            raise ValueError(f"margin must be > 0 or null, got {margin}")
        if generator_loss not in GENERATOR_LOSSES:
            raise ValueError(
                f"generator_loss must be one of {list(GENERATOR_LOSSES)}, got {generator_loss!r}"
            )
        super().__init__(
            backbone, optimizer, num_types, max_atoms, latent_dim=latent_dim, beta=beta,
            kl_warmup_steps=kl_warmup_steps, type_weight=type_weight, frac_weight=frac_weight,
            lattice_weight=lattice_weight,
        )
        self.automatic_optimization = False
        self.gamma = float(gamma)
        self.generator_loss = generator_loss
        self.hard_types = bool(hard_types)
        self.margin = None if margin is None else float(margin)
        self.equilibrium = float(equilibrium)
        # The GAN family's transformer critic: no slot embeddings (a set function of the sites), one logit.
        self.discriminator = backbone(
            num_types=num_types, max_atoms=max_atoms, pooled_dim=1, field_heads=False
        )
        depth = len(self.discriminator.encoder.layers)
        if not 1 <= feature_layer <= depth:
            raise ValueError(
                f"feature_layer must be in 1..{depth} (the backbone's n_layers), got {feature_layer}"
            )
        self.feature_layer = int(feature_layer)

    # ------------------------------------------------------------------ networks
    def network_parameters(self) -> dict[str, list[nn.Parameter]]:
        """The parameters of each network, keyed as :attr:`OBJECTIVES`."""
        return {
            "encoder": list(self.encoder.parameters()),
            "decoder": list(self.decoder.parameters()),
            "discriminator": list(self.discriminator.parameters()),
        }

    def decoded_fields(self, out: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The decoder's raw output as the discriminator reads it: types (straight-through one-hots or
        probabilities), coordinates times the probability that the slot is filled (empty slots at 0, as in
        the data), lattice."""
        types = torch.softmax(out["atom_types"], dim=-1)
        if self.hard_types:
            # Straight-through (Bengio, Leonard & Courville 2013, arXiv:1308.3432), as the GAN base does.
            hard = F.one_hot(types.argmax(dim=-1), types.shape[-1]).to(types.dtype)
            types = hard + types - types.detach()
        frac = out["frac_coords"] * (1.0 - types[..., :1])
        return {"atom_types": types, "frac_coords": frac, "lattice": out["lattice"]}

    def discriminate(self, fields: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The discriminator's logits ``[B]`` and layer-``l`` features ``[B, 1 + N, d_model]`` of a batch of
        fields: the output tokens of block ``feature_layer``, layer-normalised without affine parameters (so
        the scale of ``L_llike`` does not drift with the discriminator's residual stream)."""
        captured: list[Tensor] = []
        block = self.discriminator.encoder.layers[self.feature_layer - 1]
        handle = block.register_forward_hook(lambda _module, _inputs, output: captured.append(output))
        try:
            logits = self.discriminator({k: fields[k] for k in FIELDS})["pooled"].squeeze(-1)
        finally:
            handle.remove()
        hidden = captured[0]
        return logits, F.layer_norm(hidden, hidden.shape[-1:])

    def feature_distance(self, real: Mapping[str, Tensor], fake: Mapping[str, Tensor]) -> Tensor:
        """``L_llike``'s feature term: the mean squared difference of the layer-``l`` features of ``fake``
        and ``real`` (0 when they are the same crystals)."""
        size = real["lattice"].shape[0]
        _, features = self.discriminate({k: torch.cat([real[k], fake[k]]) for k in FIELDS})
        return (features[size:] - features[:size]).pow(2).mean()

    # ------------------------------------------------------------------ objectives
    def objectives(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Every term of algorithm 1 from one forward pass.

        Returns:
            ``loss`` (the encoder's objective ``beta KL + L_llike``), ``decoder`` (``gamma L_llike -
            L_GAN``, or the non-saturating form), ``gan`` (``L_GAN``, the discriminator's objective) and its
            parts ``gan_real`` (``-log D(x)``) and ``gan_fake`` (``-log(1 - D)`` over ``x~`` and ``x_p``),
            ``llike``, ``feature``, the per-element terms (``type_ce``, ``frac_mse``, ``lattice_mse``;
            logged whatever their weight), ``kl``, and the discriminator's mean probabilities ``d_real``,
            ``d_recon`` and ``d_prior``.
        """
        size = batch["lattice"].shape[0]
        mu, logvar = self.encode(batch)
        z = self.reparameterise(mu, logvar)
        z_prior = self.sample_prior(size, None)
        # One decoder pass over [z; z_p] and one discriminator pass over [x; x~; x_p] (no batch coupling).
        out = self.decode(torch.cat([z, z_prior]))
        decoded = self.decoded_fields(out)
        real = {k: batch[k] for k in FIELDS}
        logits, features = self.discriminate({k: torch.cat([real[k], decoded[k]]) for k in FIELDS})
        real_logit, recon_logit, prior_logit = logits.split(size)
        real_features, recon_features, _ = features.split(size)

        feature = (recon_features - real_features).pow(2).mean()
        elementwise = self.reconstruction_terms({k: v[:size] for k, v in out.items()}, batch)
        llike = (
            feature
            + self.type_weight * elementwise["type_ce"]
            + self.frac_weight * elementwise["frac_mse"]
            + self.lattice_weight * elementwise["lattice_mse"]
        )
        penalty, reg_terms = self.regulariser(mu, logvar, z)
        # L_GAN = -[log D(x) + log(1 - D(x~)) + log(1 - D(x_p))], D = sigmoid(logit), each a batch mean.
        gan_real = F.softplus(-real_logit).mean()
        gan_fake = 0.5 * (F.softplus(recon_logit).mean() + F.softplus(prior_logit).mean())
        gan = gan_real + 2.0 * gan_fake
        if self.generator_loss == "minimax":
            adversarial = -gan
        else:
            non_saturating = ADVERSARIAL_LOSSES["non_saturating"]
            adversarial = (
                non_saturating(real_logit, recon_logit)[1] + non_saturating(real_logit, prior_logit)[1]
            )
        return {
            "loss": penalty + llike,
            "decoder": self.gamma * llike + adversarial,
            "gan": gan,
            "gan_real": gan_real,
            "gan_fake": gan_fake,
            "llike": llike,
            "feature": feature,
            **elementwise,
            **reg_terms,
            "d_real": torch.sigmoid(real_logit).mean(),
            "d_recon": torch.sigmoid(recon_logit).mean(),
            "d_prior": torch.sigmoid(prior_logit).mean(),
        }

    def loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The terms of :meth:`objectives`; ``loss`` is the encoder's objective ``beta KL + L_llike``."""
        return self.objectives(batch)

    def training_objectives(self, batch: Mapping[str, Tensor]) -> list[Tensor]:
        """The encoder's, the decoder's and the discriminator's objectives."""
        terms = self.objectives(batch)
        return [terms[key] for key in self.OBJECTIVES.values()]

    def networks_to_update(self, terms: Mapping[str, Tensor]) -> list[str]:
        """The networks that take this step (in :attr:`OBJECTIVES` order): all three, or, with a ``margin``,
        the encoder always and the decoder and the discriminator as the balance allows (see the class)."""
        networks = list(self.OBJECTIVES)
        if self.margin is None:
            return networks
        costs = (float(terms["gan_real"].detach()), float(terms["gan_fake"].detach()))
        discriminator = not any(c < self.equilibrium - self.margin for c in costs)
        decoder = not any(c > self.equilibrium + self.margin for c in costs)
        if not (discriminator or decoder):
            discriminator = decoder = True
        keep = {"encoder": True, "decoder": decoder, "discriminator": discriminator}
        return [name for name in networks if keep[name]]

    # ------------------------------------------------------------------ Lightning
    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        """Algorithm 1: one forward pass, each network's gradient from its own objective, one joint step."""
        optimizer = self.optimizers()
        terms = self.objectives(batch)
        for key in self.OBJECTIVES.values():
            self.check_finite(terms[key], key)
        groups = self.network_parameters()
        updated = self.networks_to_update(terms)
        optimizer.zero_grad()  # gradients to None: a network left out is not stepped at all
        for i, network in enumerate(updated):
            # Accumulate into this network's parameters only; the graph is kept for the next network.
            key = self.OBJECTIVES[network]
            self.manual_backward(terms[key], inputs=groups[network], retain_graph=i < len(updated) - 1)
        optimizer.step()
        flags = {f"update_{name}": float(name in updated) for name in self.OBJECTIVES}
        logged = {**terms, **{k: terms["loss"].new_tensor(v) for k, v in flags.items()}}
        self._log_terms("train", logged, batch["lattice"].shape[0])
        return terms["loss"].detach()
