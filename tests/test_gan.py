"""The GAN family base on inputs with known answers: adversarial losses, the gradient penalty, weight
clipping."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from bench.models.gan.base import ADVERSARIAL_LOSSES, CrystalGAN, critic_gradient_penalty

from tests import test_models
from tests.test_models import build, fixed_batches, make_trainer, tiny_config

# The model tests' module-scoped fixtures, shared by name (a test's parameter of the same name receives them).
codec = test_models.codec
batch = test_models.batch


def test_adversarial_losses_on_known_scores() -> None:
    zeros = torch.zeros(4)
    critic, generator = ADVERSARIAL_LOSSES["non_saturating"](zeros, zeros)
    assert float(critic) == pytest.approx(2 * math.log(2)) and float(generator) == pytest.approx(math.log(2))
    critic, generator = ADVERSARIAL_LOSSES["hinge"](torch.full((4,), 2.0), torch.full((4,), -2.0))
    assert float(critic) == 0.0 and float(generator) == 2.0
    critic, generator = ADVERSARIAL_LOSSES["hinge"](zeros, zeros)
    assert float(critic) == 2.0
    critic, generator = ADVERSARIAL_LOSSES["wasserstein"](torch.tensor([1.0, 3.0]), torch.tensor([0.5, 0.5]))
    assert float(critic) == -1.5 and float(generator) == -0.5


def test_gradient_penalty_is_zero_for_a_unit_gradient_critic_and_positive_otherwise() -> None:
    g = torch.Generator().manual_seed(0)
    real = {"a": torch.randn(8, 3, 2, generator=g), "b": torch.randn(8, 5, generator=g)}
    fake = {"a": torch.randn(8, 3, 2, generator=g), "b": torch.randn(8, 5, generator=g)}
    w = torch.randn(11, generator=g)
    w = w / w.norm()

    def linear(batch: dict[str, torch.Tensor], scale: float = 1.0) -> torch.Tensor:
        return scale * torch.cat([batch["a"].flatten(1), batch["b"]], dim=1) @ w

    eps = torch.rand(8, generator=g)
    assert float(critic_gradient_penalty(linear, real, fake, eps)) == pytest.approx(0.0, abs=1e-10)
    steep = critic_gradient_penalty(lambda b: linear(b, 3.0), real, fake, eps)
    assert float(steep) == pytest.approx(4.0, rel=1e-5)  # (||grad|| - 1)^2 = (3 - 1)^2


def test_weight_clipping_keeps_every_critic_weight_in_range(codec, batch) -> None:  # noqa: ANN001
    pl.seed_everything(0, verbose=False)
    model = build(tiny_config("wgan", ["model.module.optimizer.lr=0.05"]), codec)
    assert isinstance(model, CrystalGAN) and model.clip_value == 0.01
    make_trainer(6).fit(model, fixed_batches(batch, 6))
    weights = torch.cat([p.detach().flatten() for p in model.critic.parameters()])
    assert float(weights.abs().max()) <= 0.01 + 1e-7
    assert float(weights.abs().max()) == pytest.approx(0.01)  # the constraint was active, not vacuous


def test_unknown_loss_is_refused(codec) -> None:  # noqa: ANN001
    with pytest.raises(Exception, match="loss must be one of"):  # hydra wraps the ValueError
        build(tiny_config("gan", ["model.module.loss=minimax"]), codec)
