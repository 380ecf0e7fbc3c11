"""``matgan``, the composition WGAN-GP, on inputs with an independently known answer.

- the networks have the released code's layer sizes (MatGAN's ``85 x 8`` matrix: seed ``6 x 4``, then
  ``11 x 8``, ``22 x 8``, ``43 x 8``, ``85 x 8``; the critic's last map ``22 x 4``) and size themselves to
  this representation's ``E x 9``;
- on real mp_e_form formulas, a critic trained against a fixed untrained generator ranks held-out data above
  that generator's samples;
- trained as a GAN, the generator's samples move toward the data's element frequencies and number of elements
  per formula, from far away (an untrained generator puts most elements in every formula);
- samples decode to formulas; a seed fixes them; a checkpoint reloads them.
"""

from __future__ import annotations

import functools
from collections import Counter
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from bench.datasets.composition_codec import element_amounts
from bench.datasets.composition_representation import CompositionCounts
from bench.datasets.representation import DecodeFailure
from bench.models.composition.matgan import CountMatrixCritic, CountMatrixGenerator, MatGAN, upsampling_plan

pytestmark = pytest.mark.usefixtures("one_thread")

ELEMENTS = 12
"""The data: mp_e_form formulas made only of the commonest elements, so the networks stay small."""


def _model(sizes: dict[str, int], seed: int = 0, **settings: object) -> MatGAN:
    torch.manual_seed(seed)
    kwargs = {"width": 4, "noise_dim": 32, **settings}
    optimizer = functools.partial(torch.optim.Adam, lr=1e-3, betas=(0.5, 0.9))
    return MatGAN(optimizer, **sizes, **kwargs)


def _presence(counts: torch.Tensor) -> torch.Tensor:
    """How often each element is present, ``[E]``."""
    return (counts.argmax(-1) > 0).double().mean(0)


@pytest.fixture(scope="module")
def mp_e_form(data_dir: Path) -> tuple[CompositionCounts, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The encodable mp_e_form training formulas (pinned split) of the :data:`ELEMENTS` commonest elements:
    a training part and 256 held-out formulas."""
    from bench.datasets.composition_split import load_composition_split

    train = load_composition_split("mp_e_form", data_dir=data_dir, download=False).train
    rep = CompositionCounts(levels=9)
    kept = [f for f in train if rep.can_encode(f)]
    common = Counter(e for f in kept for e in element_amounts(f)).most_common(ELEMENTS)
    allowed = {e for e, _ in common}
    chosen = [f for f in kept if set(element_amounts(f)) <= allowed]
    order = torch.randperm(len(chosen), generator=torch.Generator().manual_seed(0)).tolist()
    held, fit = [chosen[i] for i in order[:256]], [chosen[i] for i in order[256:]]
    rep.fit(fit)
    return rep, rep.encode(fit), rep.encode(held)


def test_layer_sizes_follow_the_released_code() -> None:
    assert upsampling_plan(85, 4) == [6, 11, 22, 43, 85] and upsampling_plan(8, 1) == [4, 8]
    assert upsampling_plan(84, 4) == [6, 11, 21, 42, 84] and upsampling_plan(9, 1) == [5, 9]
    shapes: list[tuple[int, ...]] = []
    generator = CountMatrixGenerator(128, 85, 8, width=16).eval()
    for layer in generator.net:
        if isinstance(layer, torch.nn.ConvTranspose2d | torch.nn.Unflatten):
            layer.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape[1:])))
    assert generator(torch.randn(3, 128)).shape == (3, 85, 8)
    assert shapes == [(128, 6, 4), (64, 11, 8), (32, 22, 8), (16, 43, 8), (1, 85, 8)]
    critic = CountMatrixCritic(85, 8, width=16).eval()
    assert critic.net[-1].in_features == 128 * 22 * 4 and critic(torch.rand(3, 85, 8)).shape == (3,)
    # This representation's matrix: 84 elements (mp_e_form) by 9 levels.
    out = CountMatrixGenerator(128, 84, 9, width=16).eval()(torch.randn(2, 128))
    assert out.shape == (2, 84, 9)
    torch.testing.assert_close(out.sum(-1), torch.ones(2, 84))  # a softmax over each element's levels
    for elements, levels in [(1, 2), (5, 3), (16, 9), (85, 8)]:
        generated = CountMatrixGenerator(8, elements, levels, width=2).eval()(torch.randn(2, 8))
        assert generated.shape == (2, elements, levels)
        assert CountMatrixCritic(elements, levels, width=2).eval()(generated).shape == (2,)


def test_critic_separates_data_from_a_fixed_untrained_generator(
    mp_e_form: tuple[CompositionCounts, dict[str, torch.Tensor], dict[str, torch.Tensor]],
) -> None:
    rep, data, held = mp_e_form
    model = _model(rep.sizes())
    _, opt_c = model.configure_optimizers()
    g = torch.Generator().manual_seed(0)
    before = {k: v.clone() for k, v in model.generator.state_dict().items()}
    # The released code's N(0, 1) initial weights give gradient norms near 50: the first ~120 steps bring the
    # penalty down, the next ones separate the two.
    for _ in range(200):
        idx = torch.randint(0, len(data["counts"]), (64,), generator=g)
        critic = model.critic_terms({"counts": data["counts"][idx]})["critic"]
        opt_c.zero_grad()
        critic.backward()
        opt_c.step()
    # Scored as in training: real and generated matrices in batches of their own, each normalised by its own
    # batch statistics (the critic's batch norm, as the paper's).
    with torch.no_grad():
        real = model.score(held["counts"])
        fake = model.score(model.generate(model.noise(256, torch.Generator().manual_seed(1))))
    ranked = float((real.unsqueeze(1) > fake.unsqueeze(0)).double().mean())  # area under the ROC curve
    assert ranked > 0.95, f"held-out data ranked above generated matrices in {ranked:.3f} of pairs"
    after = model.generator.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if "running" not in k and "batches" not in k)


def test_training_moves_samples_toward_the_data(
    mp_e_form: tuple[CompositionCounts, dict[str, torch.Tensor], dict[str, torch.Tensor]], tmp_path: Path,
) -> None:
    rep, data, _ = mp_e_form
    model = _model(rep.sizes())
    target = _presence(data["counts"])
    target_size = float((data["counts"].argmax(-1) > 0).double().sum(-1).mean())

    def distance() -> tuple[float, float]:
        """Mean absolute difference of the element presence frequencies; difference of the mean number of
        elements per formula."""
        counts = model.sample(1000, generator=torch.Generator().manual_seed(0))["counts"]
        size = float((counts.argmax(-1) > 0).double().sum(-1).mean())
        return float((_presence(counts) - target).abs().mean()), abs(size - target_size)

    freq0, size0 = distance()
    steps = 1200  # 600 critic and 600 generator steps, batches of 32 (the paper's for MP)
    g = torch.Generator().manual_seed(0)
    batches = [{"counts": data["counts"][torch.randint(0, len(data["counts"]), (32,), generator=g)]}
               for _ in range(steps)]
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )
    trainer.fit(model, torch.utils.data.DataLoader(batches, batch_size=None))
    assert int(model.critic_updates) == steps // 2  # one critic and one generator step per batch
    freq1, size1 = distance()
    # Untrained: most elements in every formula (about 11 of 12, against the data's 3).
    assert freq0 > 0.4 and size0 > 5.0
    assert freq1 < 0.3 * freq0, f"element presence off by {freq0:.3f} -> {freq1:.3f}"
    assert size1 < 0.3 * size0, f"elements per formula off by {size0:.2f} -> {size1:.2f}"

    # Samples decode to formulas; a seed fixes them; the checkpoint holds everything sampling needs.
    first = model.sample(64, generator=torch.Generator().manual_seed(5))
    again = model.sample(64, generator=torch.Generator().manual_seed(5))
    other = model.sample(64, generator=torch.Generator().manual_seed(6))
    assert torch.equal(first["counts"], again["counts"]) and not torch.equal(first["counts"], other["counts"])
    decoded = rep.decode(first)
    assert all(isinstance(d, str | DecodeFailure) for d in decoded)
    assert sum(isinstance(d, str) for d in decoded) >= 48
    path = tmp_path / "matgan.ckpt"
    trainer.save_checkpoint(path)
    fresh = _model(rep.sizes(), seed=1)
    fresh.load_state_dict(torch.load(path, weights_only=True)["state_dict"])
    reloaded = fresh.sample(64, generator=torch.Generator().manual_seed(5))
    assert torch.equal(reloaded["counts"], first["counts"])
