"""The GAN family's base: a generator and a critic on the shared backbone, trained by manual optimisation,
with the adversarial loss, the critic penalty and the critic's weight constraint as hooks chosen by the
variant.

Goodfellow et al. (2014), "Generative Adversarial Nets", NeurIPS, arXiv:1406.2661. A variant is this class
with other settings (a config under ``conf/model/``) or a small subclass:

- ``loss``: ``"non_saturating"`` (Goodfellow et al. 2014, section 3: the generator maximises ``log D(G(z))``),
  ``"wasserstein"`` (Arjovsky, Chintala & Bottou 2017, arXiv:1701.07875: the critic estimates
  ``E[D(real)] - E[D(fake)]``), or ``"hinge"`` (Lim & Ye 2017, arXiv:1705.02894; Miyato et al. 2018,
  arXiv:1802.05957);
- ``gp_weight``: the gradient penalty ``lambda E[(||grad D(x_hat)|| - 1)^2]`` on random interpolates
  (Gulrajani et al. 2017, arXiv:1704.00028), 0 for none;
- ``clip_value``: after every critic update clamp every critic weight to ``[-c, c]`` (Arjovsky et al. 2017,
  algorithm 1), ``None`` for none;
- ``n_critic``: critic updates per generator update;
- ``condition_dim``: the width ``C`` of a condition ``y`` (Mirza & Osindero 2014, arXiv:1411.1784), 0 for
  none. With ``C > 0`` (only for a class with ``conditional = True``) each network maps ``y`` to a hidden
  layer of its own and joins it with its input: the generator's conditioning vector is ``[z, h_G(y)]``, the
  critic adds a projection of ``h_D(y)`` to every token. Every critic and generator call takes the condition;
  critic and generator steps use the training batch's conditions, and sampling without a condition draws
  conditions from the training set's (:meth:`CrystalGAN.fit_data`).

The generator is the shared backbone with learned slot embeddings driven by a noise vector; the critic is the
backbone read out through its pooled lattice token, a scalar invariant to the order of the sites.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from itertools import chain
from typing import Any

import torch
import torch.nn.functional as F
from bench.models.backbone import CrystalTransformer
from bench.models.base import FIELDS, GenerativeModule, OptimizerFactory
from bench.models.condition_channel import ConditionChannel
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = ["ADVERSARIAL_LOSSES", "CrystalGAN", "critic_gradient_penalty"]


def _wasserstein(real: Tensor, fake: Tensor) -> tuple[Tensor, Tensor]:
    return fake.mean() - real.mean(), -fake.mean()


def _non_saturating(real: Tensor, fake: Tensor) -> tuple[Tensor, Tensor]:
    # -log sigmoid(real) - log(1 - sigmoid(fake)) for the critic, -log sigmoid(fake) for the generator
    return F.softplus(-real).mean() + F.softplus(fake).mean(), F.softplus(-fake).mean()


def _hinge(real: Tensor, fake: Tensor) -> tuple[Tensor, Tensor]:
    return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean(), -fake.mean()


ADVERSARIAL_LOSSES: dict[str, Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]] = {
    "wasserstein": _wasserstein,
    "non_saturating": _non_saturating,
    "hinge": _hinge,
}
"""``name -> f(critic scores on real, critic scores on fake) -> (critic loss, generator loss)``."""


def critic_gradient_penalty(
    score: Callable[[Mapping[str, Tensor]], Tensor], real: Mapping[str, Tensor], fake: Mapping[str, Tensor],
    eps: Tensor,
) -> Tensor:
    """``E[(||grad score(x_hat)|| - 1)^2]`` at ``x_hat = eps real + (1 - eps) fake`` (Gulrajani et al. 2017).

    Args:
        score: the critic, mapping a batch of fields to ``[B]`` scores.
        real: real fields.
        fake: generated fields (detached here).
        eps: ``[B]`` interpolation weights in ``[0, 1]``.
    """
    mixed = {}
    for key in real:
        w = eps.view((-1,) + (1,) * (real[key].dim() - 1))
        mixed[key] = (w * real[key] + (1.0 - w) * fake[key].detach()).requires_grad_(True)
    # The fused attention kernels have no double backward; the reference one does.
    with sdpa_kernel([SDPBackend.MATH]):
        scores = score(mixed)
        grads = torch.autograd.grad(scores.sum(), [mixed[k] for k in real], create_graph=True)
    norm = torch.cat([g.flatten(1) for g in grads], dim=1).norm(dim=1)
    return (norm - 1.0).pow(2).mean()


class CrystalGAN(ConditionChannel, GenerativeModule):
    """A GAN with manual optimisation: one critic update per batch, one generator update every ``n_critic``.

    Each training batch feeds one critic step (fresh real data per critic iteration); every ``n_critic``-th
    batch also takes a generator step. Lightning counts every optimiser step in ``trainer.global_step``, so
    ``max_steps`` covers ``n_critic / (n_critic + 1)`` of that many batches.

    Generated crystals: ``atom_types`` are straight-through one-hots (or softmax probabilities with
    ``hard_types=False``), ``frac_coords`` a sigmoid times the probability that the slot is filled (so empty
    slots sit at 0, as in the data), ``lattice`` unbounded.

    Args:
        backbone: partial of :class:`~bench.models.backbone.CrystalTransformer` (called twice: generator,
            critic).
        optimizer: partial building each of the two optimisers.
        num_types: K + 1 (from the fitted codec).
        max_atoms: N (from the fitted codec).
        noise_dim: width of the generator's input noise.
        n_critic: critic updates per generator update.
        loss: the adversarial loss, a key of :data:`ADVERSARIAL_LOSSES`.
        gp_weight: weight ``lambda`` of the gradient penalty (0: none).
        clip_value: clamp every critic weight to ``[-clip_value, clip_value]`` after each critic update
            (``None``: no clipping).
        site_noise: also feed independent noise per slot (random type scores and coordinates) as the
            generator's input fields, besides the global noise vector; without it the sites of one sample
            differ only through the slot embeddings, and the generator collapses more easily.
        hard_types: emit straight-through one-hot types (hard forward, softmax gradient) instead of softmax
            probabilities, so the critic cannot separate real from generated crystals by type softness.
        condition_dim: width ``C`` of the condition (the representation's ``condition`` field); 0: none.
            Only a class with ``conditional = True`` takes one.
        condition_embed_dim: width of the hidden layer (linear map and ReLU) each network maps the
            condition to before joining it with its input (unused without a condition).
    """

    family = "gan"
    paper = (
        "Goodfellow, Pouget-Abadie, Mirza, Xu, Warde-Farley, Ozair, Courville, Bengio (2014). Generative "
        "Adversarial Nets. NeurIPS. arXiv:1406.2661"
    )

    def __init__(
        self,
        backbone: Callable[..., CrystalTransformer],
        optimizer: OptimizerFactory,
        num_types: int,
        max_atoms: int,
        noise_dim: int = 32,
        n_critic: int = 1,
        loss: str = "non_saturating",
        gp_weight: float = 0.0,
        clip_value: float | None = None,
        site_noise: bool = True,
        hard_types: bool = True,
        condition_dim: int = 0,
        condition_embed_dim: int = 32,
    ) -> None:
        super().__init__(optimizer, num_types, max_atoms)
        if condition_dim < 0 or condition_embed_dim < 1:
            raise ValueError(
                f"condition_dim must be >= 0 and condition_embed_dim >= 1, got {condition_dim}, "
                f"{condition_embed_dim}"
            )
        if condition_dim > 0 and not self.conditional:
            raise ValueError(
                f"{type(self).__name__} is unconditional (conditional = False): build it with "
                "condition_dim=0, or use a conditional GAN class (model=cgan)"
            )
        if n_critic < 1:
            raise ValueError(f"n_critic must be >= 1, got {n_critic}")
        if loss not in ADVERSARIAL_LOSSES:
            raise ValueError(f"loss must be one of {sorted(ADVERSARIAL_LOSSES)}, got {loss!r}")
        if gp_weight < 0:
            raise ValueError(f"gp_weight must be >= 0, got {gp_weight}")
        if clip_value is not None and clip_value <= 0:
            raise ValueError(f"clip_value must be > 0 or null, got {clip_value}")
        self._save_plain_hparams()
        self.automatic_optimization = False
        self.noise_dim = int(noise_dim)
        self.n_critic = int(n_critic)
        self.loss_name = loss
        self.gp_weight = float(gp_weight)
        self.clip_value = None if clip_value is None else float(clip_value)
        self.site_noise = bool(site_noise)
        self.hard_types = bool(hard_types)
        self.init_condition_channel(int(condition_dim))  # condition_dim and, with C > 0, the condition_bank
        self.condition_embed_dim = int(condition_embed_dim)
        self.generator, self.critic = self.build_networks(backbone)
        self.generator_condition: nn.Module | None = None
        self.critic_condition: nn.Module | None = None
        if self.condition_dim > 0:
            # Mirza & Osindero (2014), section 4.1: each network maps y to a hidden layer of its own first.
            width = self.condition_width
            self.generator_condition = nn.Sequential(nn.Linear(self.condition_dim, width), nn.ReLU())
            self.critic_condition = nn.Sequential(nn.Linear(self.condition_dim, width), nn.ReLU())
        # Counts critic updates, so the generator cadence survives a checkpoint resume.
        self.register_buffer("critic_updates", torch.zeros((), dtype=torch.long))

    # ------------------------------------------------------------------ networks
    def build_networks(
        self, backbone: Callable[..., torch.nn.Module]
    ) -> tuple[torch.nn.Module, torch.nn.Module]:
        """The generator and the critic from the backbone partial (called in ``__init__`` once the settings
        are set); a variant on another backbone overrides it together with :meth:`generate`, :meth:`score`
        and :meth:`_noise`. With a condition, the generator's conditioning vector is ``noise_dim +
        condition_width`` wide (:meth:`generator_cond`) and the critic takes a ``condition_width`` one
        (:meth:`critic_cond`)."""
        generator = backbone(
            num_types=self.num_types,
            max_atoms=self.max_atoms,
            cond_dim=self.noise_dim + self.condition_width,
            slot_embeddings=True,
            field_inputs=self.site_noise,
        )
        critic = backbone(
            num_types=self.num_types, max_atoms=self.max_atoms, pooled_dim=1, field_heads=False,
            cond_dim=self.condition_width,
        )
        return generator, critic

    def real_fields(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """What the critic reads of a training batch."""
        return {k: batch[k] for k in FIELDS}

    def fake_like(self, real: Mapping[str, Tensor], condition: Tensor | None = None) -> dict[str, Tensor]:
        """As many generated crystals as ``real`` holds (at its conditions), to set against it in a critic
        step."""
        return self.generate(self._noise(real["lattice"].shape[0]), condition)

    def generate(self, noise: Mapping[str, Tensor], condition: Tensor | None = None) -> dict[str, Tensor]:
        """Crystals from noise: types (one-hot or probabilities), coordinates in ``[0, 1)``, lattice.

        Args:
            noise: ``global`` ``[B, noise_dim]`` (added to every token) and, with ``site_noise``, per-slot
                noise fed as the generator's input fields (``atom_types``, ``frac_coords``, ``lattice``).
            condition: ``[B, C]`` standardised conditions (only with ``condition_dim > 0``).
        """
        fields = {k: noise[k] for k in FIELDS} if self.site_noise else None
        out = self.generator(fields, cond=self.generator_cond(noise["global"], condition))
        types = torch.softmax(out["atom_types"], dim=-1)
        if self.hard_types:
            # Straight-through (Bengio, Leonard & Courville 2013, arXiv:1308.3432): exact one-hots forward,
            # softmax gradients backward, so the critic cannot tell generated types by their softness.
            hard = torch.nn.functional.one_hot(types.argmax(dim=-1), types.shape[-1]).to(types.dtype)
            types = hard + types - types.detach()
        frac = torch.sigmoid(out["frac_coords"]) * (1.0 - types[..., :1])
        return {"atom_types": types, "frac_coords": frac, "lattice": out["lattice"]}

    def score(self, batch: Mapping[str, Tensor], condition: Tensor | None = None) -> Tensor:
        """Critic value ``[B]`` (higher means more data-like; with a condition: more like data at
        ``condition``)."""
        cond = self.critic_cond(condition, batch["lattice"].shape[0])
        return self.critic({k: batch[k] for k in FIELDS}, cond=cond)["pooled"].squeeze(-1)

    def gradient_penalty(
        self, real: Mapping[str, Tensor], fake: Mapping[str, Tensor], condition: Tensor | None = None
    ) -> Tensor:
        """``E[(||grad critic(x_hat)|| - 1)^2]`` on random interpolates of real and generated crystals (at the
        pair's shared condition, which is not interpolated)."""
        eps = torch.rand(real["lattice"].shape[0], device=real["lattice"].device)

        def score(fields: Mapping[str, Tensor]) -> Tensor:
            return self.score(fields, condition)

        return critic_gradient_penalty(score, {k: real[k] for k in FIELDS}, fake, eps)

    def _noise(self, size: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        noise = {"global": self._randn((size, self.noise_dim), generator)}
        if self.site_noise:
            noise["atom_types"] = self._randn((size, self.max_atoms, self.num_types), generator)
            noise["frac_coords"] = self._rand((size, self.max_atoms, 3), generator)
            noise["lattice"] = self._randn((size, 6), generator)
        return noise

    # ------------------------------------------------------------------ the condition
    @property
    def condition_width(self) -> int:
        """Width of the condition's hidden layer that joins each network's input (0 without a condition)."""
        return self.condition_embed_dim if self.condition_dim > 0 else 0

    def generator_cond(self, noise: Tensor, condition: Tensor | None) -> Tensor:
        """The generator's conditioning vector: the noise ``[B, noise_dim]``, joined with the condition's
        hidden layer, ``[z, h_G(y)]``, when the model is conditional."""
        self.check_condition(condition, noise.shape[0])
        if self.generator_condition is None:
            return noise
        return torch.cat([noise, self.generator_condition(condition)], dim=-1)

    def critic_cond(self, condition: Tensor | None, size: int) -> Tensor | None:
        """The critic's conditioning vector ``h_D(y)`` for ``size`` crystals (None for an unconditional
        model)."""
        self.check_condition(condition, size)
        return None if self.critic_condition is None else self.critic_condition(condition)

    def generator_parameters(self) -> Iterator[nn.Parameter]:
        """The generator's weights (with the condition's hidden layer), trained by the generator optimiser."""
        extra = [] if self.generator_condition is None else [self.generator_condition]
        return chain.from_iterable(m.parameters() for m in [self.generator, *extra])

    def critic_parameters(self) -> Iterator[nn.Parameter]:
        """The critic's weights (with the condition's hidden layer), trained by the critic optimiser."""
        extra = [] if self.critic_condition is None else [self.critic_condition]
        return chain.from_iterable(m.parameters() for m in [self.critic, *extra])

    # ------------------------------------------------------------------ losses
    def critic_terms(self, batch: Mapping[str, Tensor], penalty: bool = True) -> dict[str, Tensor]:
        """The critic's loss (plus ``gp_weight`` times the gradient penalty) and its gap
        ``E[D(real)] - E[D(fake)]``.

        ``wasserstein`` is that gap whatever the loss: the Wasserstein estimate for a Wasserstein critic, a
        separation score for the others.
        """
        real = self.real_fields(batch)
        condition = self.batch_condition(batch)
        with torch.no_grad():
            fake = self.fake_like(real, condition)
        real_scores, fake_scores = self.score(real, condition), self.score(fake, condition)
        critic, _ = ADVERSARIAL_LOSSES[self.loss_name](real_scores, fake_scores)
        gap = real_scores.mean() - fake_scores.mean()
        if penalty and self.gp_weight > 0:
            gp = self.gradient_penalty(real, fake, condition)
        else:
            gp = torch.zeros((), device=self.device)
        return {"critic": critic + self.gp_weight * gp, "wasserstein": gap, "gp": gp}

    def generator_loss(self, size: int, condition: Tensor | None = None) -> Tensor:
        """The generator's side of the adversarial loss on ``size`` fresh samples (at ``condition``
        ``[size, C]``, the training batch's, for a conditional model)."""
        scores = self.score(self.generate(self._noise(size), condition), condition)
        return ADVERSARIAL_LOSSES[self.loss_name](scores.detach(), scores)[1]

    @torch.no_grad()
    def constrain_critic(self) -> None:
        """Clamp every critic weight to ``[-clip_value, clip_value]`` (a no-op without ``clip_value``)."""
        if self.clip_value is not None:
            for p in self.critic_parameters():
                p.clamp_(-self.clip_value, self.clip_value)

    def loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Critic and generator losses for logging; ``loss`` is the critic objective.

        The gradient penalty needs autograd, so under inference mode (Lightning's validation loop) it is left
        out and ``loss`` is the critic's loss alone.
        """
        penalty = torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
        terms = self.critic_terms(batch, penalty=penalty)
        gen = self.generator_loss(batch["lattice"].shape[0], self.batch_condition(batch))
        return {"loss": terms["critic"], **terms, "generator": gen}

    def training_objectives(self, batch: Mapping[str, Tensor]) -> list[Tensor]:
        """The critic objective (critic weights) and the generator loss (generator weights)."""
        return [
            self.critic_terms(batch)["critic"],
            self.generator_loss(batch["lattice"].shape[0], self.batch_condition(batch)),
        ]

    # ------------------------------------------------------------------ Lightning
    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        """One critic step; every ``n_critic`` critic steps, one generator step."""
        opt_g, opt_c = self.optimizers()
        terms = self.critic_terms(batch)
        self.check_finite(terms["critic"], "critic")
        opt_c.zero_grad()
        self.manual_backward(terms["critic"])
        opt_c.step()
        self.constrain_critic()
        self.critic_updates += 1
        logged = {"loss": terms["critic"], **terms}
        if int(self.critic_updates) % self.n_critic == 0:
            gen = self.generator_loss(batch["lattice"].shape[0], self.batch_condition(batch))
            self.check_finite(gen, "generator")
            opt_g.zero_grad()
            self.manual_backward(gen)
            opt_g.step()
            logged["generator"] = gen
        self._log_terms("train", logged, batch["lattice"].shape[0])
        return terms["critic"].detach()

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """Generator optimiser first, critic optimiser second, both from the same partial."""
        return [
            self.build_optimizer(list(self.generator_parameters())),
            self.build_optimizer(list(self.critic_parameters())),
        ]

    def _sample(self, n: int, generator: torch.Generator | None, condition: Any) -> dict[str, Tensor]:
        # The noise first, so the same generator seed gives the same noise at any condition.
        noise = self._noise(n, generator)
        return self.generate(noise, self.sample_condition(n, generator, condition))
