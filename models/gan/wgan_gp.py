"""Wasserstein GAN with gradient penalty over the crystal batch.

Gulrajani, Ahmed, Arjovsky, Dumoulin & Courville (2017), "Improved Training of Wasserstein GANs", NeurIPS,
arXiv:1704.00028 (building on Arjovsky, Chintala & Bottou 2017, "Wasserstein GAN", arXiv:1701.07875). The
generator is the shared backbone with learned slot embeddings driven by a noise vector; the critic is the
backbone read out through its pooled lattice token, a scalar that is invariant to the order of the sites.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from bench.models.backbone import CrystalTransformer
from bench.models.base import FIELDS, GenerativeModule, OptimizerFactory
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = ["CrystalWGANGP"]


class CrystalWGANGP(GenerativeModule):
    """WGAN-GP with manual optimisation: one critic update per batch, one generator update every ``n_critic``.

    Each training batch feeds one critic step (fresh real data per critic iteration, as in the paper's
    algorithm 1); every ``n_critic``-th batch also takes a generator step. Lightning counts every optimiser
    step in ``trainer.global_step``, so ``max_steps`` covers ``n_critic / (n_critic + 1)`` of that many
    batches.

    Generated crystals: ``atom_types`` are straight-through one-hots (or softmax probabilities with
    ``hard_types=False``), ``frac_coords`` a sigmoid times the probability that the slot is filled (so empty
    slots sit at 0, as in the data), ``lattice`` unbounded.

    Args:
        backbone: partial of :class:`~bench.models.backbone.CrystalTransformer` (called twice: generator,
            critic).
        optimizer: partial building each of the two optimisers (the paper uses Adam, lr 1e-4, betas (0, 0.9)).
        num_types: K + 1 (from the fitted codec).
        max_atoms: N (from the fitted codec).
        noise_dim: width of the generator's input noise.
        n_critic: critic updates per generator update.
        gp_weight: weight ``lambda`` of the gradient penalty.
        site_noise: also feed independent noise per slot (random type scores and coordinates) as the
            generator's input fields, besides the global noise vector; without it the sites of one sample
            differ only through the slot embeddings, and the generator collapses more easily.
        hard_types: emit straight-through one-hot types (hard forward, softmax gradient) instead of softmax
            probabilities, so the critic cannot separate real from generated crystals by type softness.
    """

    family = "gan"
    paper = (
        "Gulrajani, Ahmed, Arjovsky, Dumoulin, Courville (2017). Improved Training of Wasserstein GANs. "
        "NeurIPS. arXiv:1704.00028"
    )

    def __init__(
        self,
        backbone: Callable[..., CrystalTransformer],
        optimizer: OptimizerFactory,
        num_types: int,
        max_atoms: int,
        noise_dim: int = 32,
        n_critic: int = 5,
        gp_weight: float = 10.0,
        site_noise: bool = True,
        hard_types: bool = True,
    ) -> None:
        super().__init__(optimizer, num_types, max_atoms)
        if n_critic < 1:
            raise ValueError(f"n_critic must be >= 1, got {n_critic}")
        self._save_plain_hparams()
        self.automatic_optimization = False
        self.noise_dim = int(noise_dim)
        self.n_critic = int(n_critic)
        self.gp_weight = float(gp_weight)
        self.site_noise = bool(site_noise)
        self.hard_types = bool(hard_types)
        self.generator = backbone(
            num_types=num_types,
            max_atoms=max_atoms,
            cond_dim=self.noise_dim,
            slot_embeddings=True,
            field_inputs=self.site_noise,
        )
        self.critic = backbone(num_types=num_types, max_atoms=max_atoms, pooled_dim=1, field_heads=False)
        # Counts critic updates, so the generator cadence survives a checkpoint resume.
        self.register_buffer("critic_updates", torch.zeros((), dtype=torch.long))

    # ------------------------------------------------------------------ networks
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
        size = real["lattice"].shape[0]
        eps = torch.rand(size, device=real["lattice"].device)
        mixed = {}
        for key in FIELDS:
            shape = (size,) + (1,) * (real[key].dim() - 1)
            w = eps.view(shape)
            mixed[key] = (w * real[key] + (1.0 - w) * fake[key].detach()).requires_grad_(True)
        # The fused attention kernels have no double backward; the reference one does.
        with sdpa_kernel([SDPBackend.MATH]):
            scores = self.score(mixed)
            grads = torch.autograd.grad(scores.sum(), [mixed[k] for k in FIELDS], create_graph=True)
        norm = torch.cat([g.flatten(1) for g in grads], dim=1).norm(dim=1)
        return (norm - 1.0).pow(2).mean()

    def _noise(self, size: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        noise = {"global": self._randn((size, self.noise_dim), generator)}
        if self.site_noise:
            noise["atom_types"] = self._randn((size, self.max_atoms, self.num_types), generator)
            noise["frac_coords"] = self._rand((size, self.max_atoms, 3), generator)
            noise["lattice"] = self._randn((size, 6), generator)
        return noise

    # ------------------------------------------------------------------ losses
    def critic_terms(self, batch: Mapping[str, Tensor], penalty: bool = True) -> dict[str, Tensor]:
        """Critic objective ``E[D(fake)] - E[D(real)] + lambda * GP`` and the Wasserstein estimate."""
        real = {k: batch[k] for k in FIELDS}
        with torch.no_grad():
            fake = self.generate(self._noise(real["lattice"].shape[0]))
        wasserstein = self.score(real).mean() - self.score(fake).mean()
        gp = self.gradient_penalty(real, fake) if penalty else torch.zeros((), device=self.device)
        return {"critic": -wasserstein + self.gp_weight * gp, "wasserstein": wasserstein, "gp": gp}

    def generator_loss(self, size: int) -> Tensor:
        """``-E[D(G(z))]``."""
        return -self.score(self.generate(self._noise(size))).mean()

    def loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Critic and generator losses for logging; ``loss`` is the critic objective.

        The gradient penalty needs autograd, so under inference mode (Lightning's validation loop) it is left
        out and ``loss`` is the negative Wasserstein estimate alone.
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
