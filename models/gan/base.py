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
- ``n_critic``: critic updates per generator update.

The generator is the shared backbone with learned slot embeddings driven by a noise vector; the critic is the
backbone read out through its pooled lattice token, a scalar invariant to the order of the sites.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from bench.models.backbone import CrystalTransformer
from bench.models.base import FIELDS, GenerativeModule, OptimizerFactory
from torch import Tensor
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


class CrystalGAN(GenerativeModule):
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
    ) -> None:
        super().__init__(optimizer, num_types, max_atoms)
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
        self.generator, self.critic = self.build_networks(backbone)
        # Counts critic updates, so the generator cadence survives a checkpoint resume.
        self.register_buffer("critic_updates", torch.zeros((), dtype=torch.long))

    # ------------------------------------------------------------------ networks
    def build_networks(
        self, backbone: Callable[..., torch.nn.Module]
    ) -> tuple[torch.nn.Module, torch.nn.Module]:
        """The generator and the critic from the backbone partial (called in ``__init__`` once the settings
        are set); a variant on another backbone overrides it together with :meth:`generate`, :meth:`score`
        and :meth:`_noise`."""
        generator = backbone(
            num_types=self.num_types,
            max_atoms=self.max_atoms,
            cond_dim=self.noise_dim,
            slot_embeddings=True,
            field_inputs=self.site_noise,
        )
        critic = backbone(num_types=self.num_types, max_atoms=self.max_atoms, pooled_dim=1, field_heads=False)
        return generator, critic

    def real_fields(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """What the critic reads of a training batch."""
        return {k: batch[k] for k in FIELDS}

    def fake_like(self, real: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """As many generated crystals as ``real`` holds, to set against it in a critic step."""
        return self.generate(self._noise(real["lattice"].shape[0]))

    def generate(self, noise: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Crystals from noise: types (one-hot or probabilities), coordinates in ``[0, 1)``, lattice.

        Args:
            noise: ``global`` ``[B, noise_dim]`` (added to every token) and, with ``site_noise``, per-slot
                noise fed as the generator's input fields (``atom_types``, ``frac_coords``, ``lattice``).
        """
        fields = {k: noise[k] for k in FIELDS} if self.site_noise else None
        out = self.generator(fields, cond=noise["global"])
        types = torch.softmax(out["atom_types"], dim=-1)
        if self.hard_types:
            # Straight-through (Bengio, Leonard & Courville 2013, arXiv:1308.3432): exact one-hots forward,
            # softmax gradients backward, so the critic cannot tell generated types by their softness.
            hard = torch.nn.functional.one_hot(types.argmax(dim=-1), types.shape[-1]).to(types.dtype)
            types = hard + types - types.detach()
        frac = torch.sigmoid(out["frac_coords"]) * (1.0 - types[..., :1])
        return {"atom_types": types, "frac_coords": frac, "lattice": out["lattice"]}

    def score(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Critic value ``[B]`` (higher means more data-like)."""
        return self.critic({k: batch[k] for k in FIELDS})["pooled"].squeeze(-1)

    def gradient_penalty(self, real: Mapping[str, Tensor], fake: Mapping[str, Tensor]) -> Tensor:
        """``E[(||grad critic(x_hat)|| - 1)^2]`` on random interpolates of real and generated crystals."""
        eps = torch.rand(real["lattice"].shape[0], device=real["lattice"].device)
        return critic_gradient_penalty(self.score, {k: real[k] for k in FIELDS}, fake, eps)

    def _noise(self, size: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        noise = {"global": self._randn((size, self.noise_dim), generator)}
        if self.site_noise:
            noise["atom_types"] = self._randn((size, self.max_atoms, self.num_types), generator)
            noise["frac_coords"] = self._rand((size, self.max_atoms, 3), generator)
            noise["lattice"] = self._randn((size, 6), generator)
        return noise

    # ------------------------------------------------------------------ losses
    def critic_terms(self, batch: Mapping[str, Tensor], penalty: bool = True) -> dict[str, Tensor]:
        """The critic's loss (plus ``gp_weight`` times the gradient penalty) and its gap
        ``E[D(real)] - E[D(fake)]``.

        ``wasserstein`` is that gap whatever the loss: the Wasserstein estimate for a Wasserstein critic, a
        separation score for the others.
        """
        real = self.real_fields(batch)
        with torch.no_grad():
            fake = self.fake_like(real)
        real_scores, fake_scores = self.score(real), self.score(fake)
        critic, _ = ADVERSARIAL_LOSSES[self.loss_name](real_scores, fake_scores)
        gap = real_scores.mean() - fake_scores.mean()
        if penalty and self.gp_weight > 0:
            gp = self.gradient_penalty(real, fake)
        else:
            gp = torch.zeros((), device=self.device)
        return {"critic": critic + self.gp_weight * gp, "wasserstein": gap, "gp": gp}

    def generator_loss(self, size: int) -> Tensor:
        """The generator's side of the adversarial loss on ``size`` fresh samples."""
        scores = self.score(self.generate(self._noise(size)))
        return ADVERSARIAL_LOSSES[self.loss_name](scores.detach(), scores)[1]

    @torch.no_grad()
    def constrain_critic(self) -> None:
        """Clamp every critic weight to ``[-clip_value, clip_value]`` (a no-op without ``clip_value``)."""
        if self.clip_value is not None:
            for p in self.critic.parameters():
                p.clamp_(-self.clip_value, self.clip_value)

    def loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Critic and generator losses for logging; ``loss`` is the critic objective.

        The gradient penalty needs autograd, so under inference mode (Lightning's validation loop) it is left
        out and ``loss`` is the critic's loss alone.
        """
        penalty = torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
        terms = self.critic_terms(batch, penalty=penalty)
        gen = self.generator_loss(batch["lattice"].shape[0])
        return {"loss": terms["critic"], **terms, "generator": gen}

    def training_objectives(self, batch: Mapping[str, Tensor]) -> list[Tensor]:
        """The critic objective (critic weights) and the generator loss (generator weights)."""
        return [self.critic_terms(batch)["critic"], self.generator_loss(batch["lattice"].shape[0])]

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
            gen = self.generator_loss(batch["lattice"].shape[0])
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
            self.build_optimizer(self.generator.parameters()),
            self.build_optimizer(self.critic.parameters()),
        ]

    def _sample(self, n: int, generator: torch.Generator | None, condition: Any) -> dict[str, Tensor]:
        return self.generate(self._noise(n, generator))
