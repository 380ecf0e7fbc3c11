"""MatGAN: a Wasserstein GAN with gradient penalty over the element-by-count matrix of a formula, with a
convolutional generator and critic.

Dan, Zhao, Li, Li, Hu & Hu (2020), "Generative adversarial networks (GAN) based efficient sampling of chemical
composition space for inverse design of inorganic materials", npj Computational Materials 6, 84,
doi:10.1038/s41524-020-00352-0 (arXiv:1911.05020). The objective is that of Gulrajani et al. (2017),
"Improved Training of Wasserstein GANs", NeurIPS, arXiv:1704.00028 (on Arjovsky, Chintala & Bottou 2017,
arXiv:1701.07875).

The paper represents a formula as an ``8 x 85`` matrix (count levels by elements), each present element a
one-hot over 1 to 8 atoms, and trains a GAN of convolutional networks on it with the Wasserstein loss. The
layer shapes and settings follow its released model definition for the Materials Project and ICSD data
(``gan_model/WGANGP_MP.py``) and configuration (``function/Config.py``):

- generator: ``z ~ N(0, I_128)``, a linear map to a ``8w``-channel seed of ``ceil(E/16) x ceil(L/2)`` with
  batch norm and ReLU, then four transposed convolutions (5x5 stride 2x2 to ``4w`` channels; 3x3 stride 2x1
  to ``2w``, ``w`` and 1 channel), batch norm and ReLU after all but the last, which ends in a sigmoid per
  entry; the element axis doubles in every layer and the level axis in the first (``w = 16``);
- critic: five convolutions (3x3 stride 1 to ``w``; 3x3 stride 2x1 to ``w``; 3x3 stride 1 to ``2w`` and
  ``4w``; 5x5 stride 2x2 to ``8w``), LeakyReLU 0.2 after each and batch norm after all but the first, then
  the flattened map to one linear output;
- weights from ``N(0, 1)`` (the released code's initialiser), biases 0;
- WGAN-GP: ``E[D(fake)] - E[D(real)] + 10 E[(||grad D(x_hat)|| - 1)^2]``, one critic step per generator step,
  Adam with ``beta = (0.5, 0.9)``, learning rates ``1e-3`` (generator) and ``1e-2`` (critic).

Fitted to this representation (``[B, E, L]``, level 0 = absent, ``L = 9`` for counts 0 to 8): the matrix is
the paper's transposed (elements along the first image axis, as the released code's ``85 x 8`` input),
with one more level column; an absent element is level 0 instead of an all-zero column, which holds the same
formulas. With that level every column is a categorical, so the generator ends, per element, in a softmax
over its levels (``activation="softmax"``, the default) instead of the per-entry sigmoid (``"sigmoid"``):
against exact one-hot columns the critic separates free sigmoid outputs without end and the generator does not
learn (``models/cards/matgan.md``). The networks size themselves to any ``E x L`` (:func:`upsampling_plan`).
A sample is the argmax level of each element of the generator's output (the representation's decoding), where
the paper read an entry from 0.2 on as present.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from bench.models.base import OptimizerFactory
from bench.models.composition.counts import CountsModule
from bench.models.gan.base import ADVERSARIAL_LOSSES, critic_gradient_penalty
from torch import Tensor, nn

__all__ = ["ACTIVATIONS", "CountMatrixCritic", "CountMatrixGenerator", "MatGAN", "upsampling_plan"]

ACTIVATIONS = ("sigmoid", "softmax")
"""The generator's output: ``sigmoid`` per entry (the paper's) or ``softmax`` over each element's levels."""
LEAK = 0.2
"""The critic's LeakyReLU slope (the released code's)."""
UPSAMPLINGS = 4
"""Transposed convolutions of the generator (and strided steps of the element axis)."""


def upsampling_plan(size: int, steps: int) -> list[int]:
    """The sizes ``[s_0, ..., s_steps = size]`` of an axis grown by ``steps`` doublings, each the ceiling of
    half the next (the released code's 6, 11, 22, 43, 85 for 85 elements), so every transposed convolution
    reaches its size exactly (with an output padding of 0 or 1)."""
    if size < 1 or steps < 0:
        raise ValueError(f"size must be >= 1 and steps >= 0, got {size} and {steps}")
    sizes = [int(size)]
    for _ in range(steps):
        sizes.append(math.ceil(sizes[-1] / 2))
    return sizes[::-1]


def _normal_init(module: nn.Module, std: float) -> None:
    """Every convolution and linear weight from ``N(0, std^2)``, biases 0; batch norm scales 1, shifts 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class CountMatrixGenerator(nn.Module):
    """``z`` ``[B, noise_dim]`` to count-matrix scores ``[B, E, L]`` (see the module docstring).

    Args:
        noise_dim: width of ``z``.
        num_elements: E.
        num_levels: L.
        width: ``w``, the channels of the last hidden map (the seed has ``8 w``).
        activation: ``softmax`` (over each element's levels) or ``sigmoid`` (per entry, the paper's).
        init_std: standard deviation of the initial weights.
    """

    def __init__(
        self, noise_dim: int, num_elements: int, num_levels: int, width: int = 16,
        activation: str = "softmax", init_std: float = 1.0,
    ) -> None:
        super().__init__()
        if min(noise_dim, width) < 1:
            raise ValueError(f"noise_dim and width must be >= 1, got {noise_dim} and {width}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.activation = activation
        rows = upsampling_plan(num_elements, UPSAMPLINGS)
        cols = upsampling_plan(num_levels, 1)
        cols = [cols[0]] + [cols[1]] * UPSAMPLINGS  # the level axis doubles in the first layer only
        channels = [8 * width, 4 * width, 2 * width, width, 1]
        layers: list[nn.Module] = [
            nn.Linear(noise_dim, channels[0] * rows[0] * cols[0]),
            nn.BatchNorm1d(channels[0] * rows[0] * cols[0]),
            nn.ReLU(),
            nn.Unflatten(1, (channels[0], rows[0], cols[0])),
        ]
        for i in range(UPSAMPLINGS):
            kernel = 5 if i == 0 else 3
            stride = (2, 2 if cols[i + 1] > cols[i] else 1)
            # (in - 1) * stride - 2 * padding + kernel + output_padding = out, with padding (kernel - 1) / 2
            extra = tuple(
                out - ((size - 1) * s - (kernel - 1) + kernel)
                for out, size, s in ((rows[i + 1], rows[i], stride[0]), (cols[i + 1], cols[i], stride[1]))
            )
            layers.append(nn.ConvTranspose2d(
                channels[i], channels[i + 1], kernel, stride=stride, padding=(kernel - 1) // 2,
                output_padding=extra,
            ))
            if i < UPSAMPLINGS - 1:
                layers += [nn.BatchNorm2d(channels[i + 1]), nn.ReLU()]
        self.net = nn.Sequential(*layers)
        _normal_init(self, init_std)

    def logits(self, z: Tensor) -> Tensor:
        """The last layer's pre-activation ``[B, E, L]``."""
        return self.net(z)[:, 0]

    def forward(self, z: Tensor) -> Tensor:
        """Scores ``[B, E, L]`` in ``[0, 1]``: sigmoids per entry, or per element a softmax over levels."""
        logits = self.logits(z)
        return torch.sigmoid(logits) if self.activation == "sigmoid" else torch.softmax(logits, dim=-1)


class CountMatrixCritic(nn.Module):
    """Count matrices ``[B, E, L]`` to one unbounded score each (see the module docstring).

    Args:
        num_elements: E.
        num_levels: L.
        width: ``w``, the channels of the first map (the last has ``8 w``).
        init_std: standard deviation of the initial weights.
    """

    def __init__(self, num_elements: int, num_levels: int, width: int = 16, init_std: float = 1.0) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        # (out channels, kernel, stride) of the five convolutions; "same" padding: out = ceil(in / stride)
        plan = [(width, 3, (1, 1)), (width, 3, (2, 1)), (2 * width, 3, (1, 1)), (4 * width, 3, (1, 1)),
                (8 * width, 5, (2, 2))]
        layers: list[nn.Module] = [nn.Unflatten(1, (1, num_elements))]
        size, channels = [num_elements, num_levels], 1
        for j, (out, kernel, stride) in enumerate(plan):
            layers.append(nn.Conv2d(channels, out, kernel, stride=stride, padding=(kernel - 1) // 2))
            if j > 0:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.LeakyReLU(LEAK))
            size = [math.ceil(s / st) for s, st in zip(size, stride, strict=True)]
            channels = out
        layers += [nn.Flatten(), nn.Linear(channels * size[0] * size[1], 1)]
        self.net = nn.Sequential(*layers)
        _normal_init(self, init_std)

    def forward(self, counts: Tensor) -> Tensor:
        """Scores ``[B]`` (higher: more like the data)."""
        return self.net(counts).squeeze(-1)


class MatGAN(CountsModule):
    """MatGAN (see the module docstring): manual optimisation, one critic step per batch and one generator
    step every ``n_critic`` critic steps, with the Wasserstein loss and gradient penalty of the GAN family
    (:data:`~bench.models.gan.base.ADVERSARIAL_LOSSES`,
    :func:`~bench.models.gan.base.critic_gradient_penalty`).

    Lightning counts every optimiser step in ``trainer.global_step``, so ``max_steps`` covers
    ``n_critic / (n_critic + 1)`` of that many batches.

    Args:
        optimizer: partial building the generator's optimiser, and the critic's (the paper's: Adam, betas
            (0.5, 0.9)).
        num_elements: E (from the representation).
        num_levels: L (from the representation).
        noise_dim: width of ``z ~ N(0, I)`` (the paper's 128).
        width: ``w`` of both networks (the paper's 16 for MP and ICSD).
        n_critic: critic updates per generator update (the paper's 1).
        gp_weight: weight ``lambda`` of the gradient penalty (the paper's 10).
        critic_lr: the critic's learning rate (the paper's 1e-2, ten times the generator's); None: the
            optimiser partial's.
        activation: the generator's output, ``softmax`` over each element's levels (the default; see the
            module docstring) or ``sigmoid`` per entry (the paper's).
        init_std: standard deviation of the initial weights (the released code's 1.0).
    """

    family = "gan"
    paper = (
        "Dan, Zhao, Li, Li, Hu, Hu (2020). Generative adversarial networks (GAN) based efficient sampling of "
        "chemical composition space for inverse design of inorganic materials. npj Computational Materials "
        "6, 84. doi:10.1038/s41524-020-00352-0"
    )

    def __init__(
        self,
        optimizer: OptimizerFactory,
        num_elements: int,
        num_levels: int,
        noise_dim: int = 128,
        width: int = 16,
        n_critic: int = 1,
        gp_weight: float = 10.0,
        critic_lr: float | None = 1.0e-2,
        activation: str = "softmax",
        init_std: float = 1.0,
    ) -> None:
        super().__init__(optimizer, num_elements, num_levels)
        if n_critic < 1:
            raise ValueError(f"n_critic must be >= 1, got {n_critic}")
        if gp_weight < 0:
            raise ValueError(f"gp_weight must be >= 0, got {gp_weight}")
        if critic_lr is not None and critic_lr <= 0:
            raise ValueError(f"critic_lr must be > 0 or null, got {critic_lr}")
        if init_std <= 0:
            raise ValueError(f"init_std must be > 0, got {init_std}")
        self._save_plain_hparams()
        self.automatic_optimization = False
        self.noise_dim = int(noise_dim)
        self.n_critic = int(n_critic)
        self.gp_weight = float(gp_weight)
        self.critic_lr = None if critic_lr is None else float(critic_lr)
        self.generator = CountMatrixGenerator(
            self.noise_dim, num_elements, num_levels, int(width), activation, float(init_std)
        )
        self.critic = CountMatrixCritic(num_elements, num_levels, int(width), float(init_std))
        # Counts critic updates, so the generator cadence survives a checkpoint resume.
        self.register_buffer("critic_updates", torch.zeros((), dtype=torch.long))

    # ------------------------------------------------------------------ networks
    def noise(self, size: int, generator: torch.Generator | None = None) -> Tensor:
        """``z ~ N(0, I)`` ``[size, noise_dim]``, drawn from ``generator`` when given."""
        return self._randn((size, self.noise_dim), generator)

    def generate(self, z: Tensor) -> Tensor:
        """Generated count matrices ``[B, E, L]`` (the generator's scores, differentiable)."""
        return self.generator(z)

    def score(self, counts: Tensor) -> Tensor:
        """Critic scores ``[B]``."""
        return self.critic(counts)

    # ------------------------------------------------------------------ losses
    def critic_terms(self, batch: Mapping[str, Tensor], penalty: bool = True) -> dict[str, Tensor]:
        """The critic's loss ``E[D(fake)] - E[D(real)] (+ lambda GP)``, the Wasserstein estimate
        ``E[D(real)] - E[D(fake)]`` and the penalty, on the batch against as many generated matrices."""
        real = self.counts_of(batch)
        with torch.no_grad():
            fake = self.generate(self.noise(real.shape[0]))
        real_scores, fake_scores = self.score(real), self.score(fake)
        critic, _ = ADVERSARIAL_LOSSES["wasserstein"](real_scores, fake_scores)
        if penalty and self.gp_weight > 0:
            eps = torch.rand(real.shape[0], device=real.device)
            gp = critic_gradient_penalty(
                lambda fields: self.score(fields["counts"]), {"counts": real}, {"counts": fake}, eps
            )
        else:
            gp = torch.zeros((), device=real.device)
        gap = real_scores.mean() - fake_scores.mean()
        return {"critic": critic + self.gp_weight * gp, "wasserstein": gap, "gp": gp}

    def generator_loss(self, size: int) -> Tensor:
        """``-E[D(G(z))]`` on ``size`` fresh samples."""
        scores = self.score(self.generate(self.noise(size)))
        return ADVERSARIAL_LOSSES["wasserstein"](scores.detach(), scores)[1]

    def loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Critic and generator losses for logging; ``loss`` is the critic objective (without the penalty
        under inference mode, where autograd is off: Lightning's validation loop)."""
        penalty = torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
        terms = self.critic_terms(batch, penalty=penalty)
        gen = self.generator_loss(int(batch["counts"].shape[0]))
        return {"loss": terms["critic"], **terms, "generator": gen}

    def training_objectives(self, batch: Mapping[str, Tensor]) -> list[Tensor]:
        """The critic objective (critic weights) and the generator loss (generator weights)."""
        return [self.critic_terms(batch)["critic"], self.generator_loss(batch["counts"].shape[0])]

    # ------------------------------------------------------------------ Lightning
    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        """One critic step; every ``n_critic`` critic steps, one generator step."""
        opt_g, opt_c = self.optimizers()
        size = int(batch["counts"].shape[0])
        terms = self.critic_terms(batch)
        self.check_finite(terms["critic"], "critic")
        opt_c.zero_grad()
        self.manual_backward(terms["critic"])
        opt_c.step()
        self.critic_updates += 1
        logged = {"loss": terms["critic"], **terms}
        if int(self.critic_updates) % self.n_critic == 0:
            gen = self.generator_loss(size)
            self.check_finite(gen, "generator")
            opt_g.zero_grad()
            self.manual_backward(gen)
            opt_g.step()
            logged["generator"] = gen
        self._log_terms("train", logged, size)
        return terms["critic"].detach()

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """Generator optimiser first, critic optimiser second (at ``critic_lr`` when set)."""
        opt_g = self.build_optimizer(list(self.generator.parameters()))
        opt_c = self.build_optimizer(list(self.critic.parameters()))
        if self.critic_lr is not None:
            for group in opt_c.param_groups:
                group["lr"] = self.critic_lr
        return [opt_g, opt_c]

    def _sample(self, n: int, generator: torch.Generator | None, condition: Any) -> dict[str, Tensor]:
        return {"counts": self.generate(self.noise(n, generator))}
