"""Progressive distillation (Salimans & Ho 2022) as a ``ddpm`` sampler, checked against answers known
independently of the code under test.

The Gaussian data set: every ``x0`` drawn from ``N(mu, s^2)``, ``x_t = sqrt(a) x0 + sqrt(1 - a) eps`` with
``a = alpha_bar_t``. The exact epsilon-predictor is the regression of ``eps`` on ``x_t``,
``eps*(x_t) = sqrt(1 - a) (x_t - sqrt(a) mu) / (a s^2 + 1 - a)``, so the teacher needs no training, and its
DDIM steps come from :meth:`VPGaussian.ddim_step` (code the distillation does not use). Every DDIM map of
this teacher is affine in ``x_T``, so a student with one affine map per step can represent each round's
target exactly.
"""

from __future__ import annotations

import math
from pathlib import Path

import hydra
import pytest
import torch
from bench.datasets.codec import CrystalCodec
from bench.datasets.tiny import tiny_structures
from bench.models.diffusion.ddpm import CrystalDDPM
from bench.models.diffusion.distill import (
    CappedEpsilonStudent,
    DistillSampler,
    ddim_from_x0,
    distillation_target,
    epsilon_teacher,
    nested_grid,
    progressive_distillation,
)
from bench.models.diffusion.processes import VPGaussian, WrappedNormalVE
from torch import nn

from bench.config import compose
from tests.conftest import TINY_TRANSFORMER, tiny_run

pytestmark = pytest.mark.usefixtures("one_thread")

MU, SD = 0.3, 0.5


def exact_eps(process: VPGaussian):  # noqa: ANN201
    """The closed-form epsilon-predictor of the Gaussian data set (float64 inside), field ``"a"``."""
    a64 = process.alpha_bars64

    def predictor(x_t: dict[str, torch.Tensor], t: torch.Tensor) -> dict[str, torch.Tensor]:
        z = x_t["a"]
        a = a64[t].view(-1, *([1] * (z.dim() - 1)))
        return {"a": ((1 - a).sqrt() * (z.double() - a.sqrt() * MU) / (a * SD**2 + 1 - a)).to(z.dtype)}

    return predictor


def full(value: int, size: int) -> torch.Tensor:
    return torch.full((size,), value, dtype=torch.long)


# ------------------------------------------------------------------------------------------- the arithmetic
def test_nested_grids_halve_and_span_the_training_steps() -> None:
    for timesteps, steps in [(1000, 8), (1000, 256), (100, 3), (7, 7)]:
        coarse = nested_grid(timesteps, steps)
        fine = nested_grid(timesteps, 2 * steps) if 2 * steps <= timesteps else None
        assert coarse[0] == 0 and coarse[-1] == timesteps and len(coarse) == steps + 1
        assert all(b > a for a, b in zip(coarse, coarse[1:], strict=False))
        if fine is not None:
            assert fine[::2] == coarse
    assert nested_grid(1000, 8) == [0, 125, 250, 375, 500, 625, 750, 875, 1000]
    with pytest.raises(ValueError, match="steps must be in 1..10"):
        nested_grid(10, 11)


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_ddim_from_x0_is_the_ddim_update(schedule: str) -> None:
    """The step written with ``x0_hat``: ``alpha_s x0 + sigma_s (z - alpha_t x0) / sigma_t`` (Song et al.,
    eq. 12 with ``eta = 0``), written out here in float64, clipped or not; and :meth:`VPGaussian.ddim_step`
    fed the epsilon of that ``x0_hat`` agrees to the precision of its float32 table of ``alpha_bar`` (near
    ``t = 0``, ``1 - alpha_bar`` keeps about four digits there)."""
    process = VPGaussian(1000, schedule, clip=1.0)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, 5, generator=g, dtype=torch.float64)
    x0 = 1.5 * torch.randn(64, 5, generator=g, dtype=torch.float64)
    for t_value, s_value in [(1000, 875), (500, 250), (17, 3), (125, 0)]:
        t, s = full(t_value, 64), full(s_value, 64)
        a_t, a_s = process.alpha_bars64[t_value], process.alpha_bars64[s_value]
        for clip in (False, True):
            used = x0.clamp(-1, 1) if clip else x0
            expected = a_s.sqrt() * used + (1 - a_s).sqrt() * (z - a_t.sqrt() * used) / (1 - a_t).sqrt()
            got = ddim_from_x0(process, z, x0, t, s, clip=clip)
            torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
            a32 = process.alpha_bars[t_value].double()  # the table ddim_step reads x0_hat back with
            eps = (z - a32.sqrt() * used) / (1 - a32).sqrt()
            torch.testing.assert_close(got, process.ddim_step(z, eps, t, s, None, eta=0.0, clip=False),
                                       rtol=0, atol=5e-4)


@pytest.mark.parametrize(
    "t_value, mid_value, s_value",
    [(1000, 996, 992), (1000, 750, 500), (500, 375, 250), (64, 32, 0), (8, 4, 0), (3, 2, 1)],
)
def test_one_student_step_to_the_target_lands_where_two_teacher_steps_land(
    t_value: int, mid_value: int, s_value: int
) -> None:
    """Algorithm 2's identity on 1-D Gaussian data with the exact epsilon model: two DDIM steps of the
    teacher (:meth:`VPGaussian.ddim_step`) ``t -> t' -> t''``, then one DDIM step ``t -> t''`` from the target
    ``x~`` lands on the same point, to 1e-6; at ``t'' = 0`` the target is the teacher's final sample."""
    process = VPGaussian(1000, "cosine", clip=None)
    eps = exact_eps(process)
    n = 256
    z = torch.randn(n, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t, mid, s = full(t_value, n), full(mid_value, n), full(s_value, n)
    z_mid = process.ddim_step(z, eps({"a": z}, t)["a"], t, mid, None, eta=0.0)
    z_s = process.ddim_step(z_mid, eps({"a": z_mid}, mid)["a"], mid, s, None, eta=0.0)
    target = distillation_target(process, z, z_s, t, s)
    landed = ddim_from_x0(process, z, target, t, s, clip=False)
    torch.testing.assert_close(landed, z_s, rtol=0, atol=1e-6)
    # the same step through the process's own epsilon form
    a = process.alpha_bars[t_value].double()
    via_eps = process.ddim_step(z, (z - a.sqrt() * target) / (1 - a).sqrt(), t, s, None, eta=0.0)
    torch.testing.assert_close(via_eps, z_s, rtol=0, atol=5e-4)  # its float32 table of alpha_bar
    if s_value == 0:
        torch.testing.assert_close(target, z_s, rtol=0, atol=1e-12)
    elif t_value - s_value >= 100:  # one teacher step alone lands elsewhere: x~ is not the teacher's x0_hat
        one = process.ddim_step(z, eps({"a": z}, t)["a"], t, s, None, eta=0.0)
        assert (one - z_s).abs().max() > 1e-3


class AffineStudent(nn.Module):
    """``x0_hat = w_t z + b_t``, one affine map per step: it can represent every DDIM map of the exact teacher
    of Gaussian data."""

    def __init__(self, timesteps: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(timesteps + 1))
        self.b = nn.Parameter(torch.zeros(timesteps + 1))

    def forward(self, x_t: dict[str, torch.Tensor], t: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"a": self.w[t].view(-1, 1) * x_t["a"] + self.b[t].view(-1, 1)}


def test_distilled_one_step_student_samples_the_gaussian_data() -> None:
    """Seven rounds from the exact teacher's 128-step DDIM to one step: the student's one-step samples have
    the data's mean and variance, and follow the teacher's 128-step map sample by sample, although one
    DDIM step of the teacher itself collapses every sample onto the mean."""
    timesteps, start = 200, 128
    process = VPGaussian(timesteps, "cosine", clip=None)
    processes = {"a": process}
    eps = exact_eps(process)
    x0 = {"a": MU + SD * torch.randn(4000, 1, generator=torch.Generator().manual_seed(2))}
    student, report = progressive_distillation(
        epsilon_teacher(eps, processes), AffineStudent(timesteps), processes, x0, timesteps, start, 1,
        iters_per_round=300, batch_size=256, lr=0.05, seed=0,
    )
    assert [r["steps"] for r in report["rounds"]] == [64, 32, 16, 8, 4, 2, 1]
    assert report["trained_rounds"] == 7
    n = 20000
    z = torch.randn(n, 1, generator=torch.Generator().manual_seed(3))
    t, zero = full(timesteps, n), full(0, n)
    with torch.no_grad():
        one_step = ddim_from_x0(process, z, student({"a": z}, t)["a"], t, zero, clip=False)
    # data: mean 0.3, variance 0.25 (the sample mean of 20000 draws has standard error 0.0035)
    assert abs(float(one_step.mean()) - MU) < 0.02
    assert abs(float(one_step.var()) / SD**2 - 1) < 0.1
    # the teacher's DDIM at 128 steps and at 1 step, from the same x_T
    grid = nested_grid(timesteps, start)
    teacher = z.double()
    for j in range(start, 0, -1):
        tj, sj = full(grid[j], n), full(grid[j - 1], n)
        teacher = process.ddim_step(teacher, eps({"a": teacher}, tj)["a"], tj, sj, None, eta=0.0)
    assert float((one_step.double() - teacher).pow(2).mean().sqrt()) < 0.03
    naive = process.ddim_step(z.double(), eps({"a": z.double()}, t)["a"], t, zero, None, eta=0.0)
    assert float(naive.std()) < 0.01


# ---------------------------------------------------------------------------------------- on the ddpm model
@pytest.fixture(scope="module")
def codec() -> CrystalCodec:
    return CrystalCodec(max_atoms=8).fit(tiny_structures("train"))


def tiny_ddpm(codec: CrystalCodec, *overrides: str) -> CrystalDDPM:
    """The ``ddpm`` config shrunk by its own ``test_overrides`` (T = 100), with a small distill sampler."""
    own = list(compose(["model=ddpm"]).model.test_overrides)
    cfg = compose(["model=ddpm", *own, "sampler@model.module.sampler=distill", "model.module.sampler.steps=2",
                   "model.module.sampler.start_steps=8", "model.module.sampler.iters_per_round=3",
                   "model.module.sampler.batch_size=4", *overrides])
    torch.manual_seed(0)
    return hydra.utils.instantiate(cfg.model.module, num_types=codec.num_types, max_atoms=codec.max_atoms)


def test_student_starts_as_the_teacher_and_stays_bounded_near_t(codec: CrystalCodec) -> None:
    """The capped student with the teacher's weights: ``x0_hat`` is the teacher's ``(z - sigma eps) / alpha``
    wherever ``alpha_t >= min_alpha``, and ``(z - sigma eps) / min_alpha`` beyond (near ``t = T``, where the
    teacher's divisor is about 1e-4 here)."""
    model = tiny_ddpm(codec).eval()
    x0 = model.to_diffusion_space(codec.encode(tiny_structures("train")))
    before = model.weights_fingerprint()
    student = CappedEpsilonStudent.from_teacher(model.predict, model.processes, 0.1, keep=(model.sampler,))
    assert student.network.sampler is model.sampler  # shared, not copied
    g = torch.Generator().manual_seed(0)
    z = {k: torch.randn(7, *x0[k].shape[1:], generator=g) for k in sorted(model.processes)}
    t = torch.tensor([1, 5, 30, 60, 90, 97, 100])
    with torch.no_grad():
        got = student(z, t)
        eps = model.predict(z, t)
    alpha = model.processes["lattice"].alpha_bars64[t].sqrt()
    capped = alpha < 0.1
    assert capped.tolist() == [False, False, False, False, False, True, True]
    for k, value in got.items():
        a = alpha.view(-1, *([1] * (value.dim() - 1))).float()
        teacher = model.processes[k].denoise(z[k], eps[k], t, clip=False)
        torch.testing.assert_close(value[~capped], teacher[~capped], rtol=1e-5, atol=1e-5)
        expected = (z[k] - (1 - a**2).sqrt() * eps[k]) / 0.1
        torch.testing.assert_close(value[capped], expected[capped], rtol=1e-5, atol=1e-5)
        # the teacher's 1 / alpha_T against the student's 1 / min_alpha
        assert float(teacher[-1].abs().max()) > 100 * float(value[-1].abs().max())
    # the student owns its weights: training it leaves the teacher as it was
    with torch.enable_grad():
        sum(v.sum() for v in student(z, t).values()).backward()
        torch.optim.SGD(student.parameters(), lr=0.1).step()
    assert model.weights_fingerprint() == before
    with pytest.raises(ValueError, match="min_alpha"):
        CappedEpsilonStudent.from_teacher(model.predict, model.processes, 0.0)
    with pytest.raises(TypeError, match="method of a torch module"):
        CappedEpsilonStudent.from_teacher(lambda x, t: x, model.processes, 0.1)


def test_prepared_students_are_cached_and_reused(codec: CrystalCodec, tmp_path: Path) -> None:
    batch = codec.encode(tiny_structures("train"))
    model = tiny_ddpm(codec)
    assert model.nfe == 2 and model.sampler.schedule(model.timesteps) == [100, 50]
    with pytest.raises(RuntimeError, match="prepare_sampler"):
        model.sample(2, generator=torch.Generator().manual_seed(0))
    teacher = model.weights_fingerprint()
    model.prepare_sampler(batch, cache_dir=tmp_path)
    assert model.weights_fingerprint() == teacher
    assert model.sampler.report["trained_rounds"] == 2
    cached = sorted(tmp_path.glob("DistillSampler-*.pt"))
    assert [p.name.split("-")[1] for p in cached] == ["2steps", "4steps"]
    first = model.sample(3, generator=torch.Generator().manual_seed(1))
    repeat = model.sample(3, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(first[k], repeat[k]) for k in first)
    # same settings, a fresh model with the same weights: nothing is trained, the samples are identical
    again = tiny_ddpm(codec)
    again.prepare_sampler(batch, cache_dir=tmp_path)
    assert again.sampler.report["trained_rounds"] == 0
    assert sorted(tmp_path.glob("DistillSampler-*.pt")) == cached
    replay = again.sample(3, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(first[k], replay[k]) for k in first)
    # one round more (steps 1 from the same start): the two cached rounds are reused, one is trained
    coarser = tiny_ddpm(codec, "model.module.sampler.steps=1")
    coarser.prepare_sampler(batch, cache_dir=tmp_path)
    assert coarser.sampler.report["trained_rounds"] == 1
    assert [r["trained"] for r in coarser.sampler.report["rounds"]] == [False, False, True]
    assert len(list(tmp_path.glob("DistillSampler-*.pt"))) == 3
    # other settings, or other weights: trained again
    other = tiny_ddpm(codec, "model.module.sampler.lr=1e-3")
    other.prepare_sampler(batch, cache_dir=tmp_path)
    assert other.sampler.report["trained_rounds"] == 2
    moved = tiny_ddpm(codec)
    with torch.no_grad():
        next(moved.parameters()).add_(0.01)
    moved.prepare_sampler(batch, cache_dir=tmp_path)
    assert moved.sampler.report["trained_rounds"] == 2
    assert len(list(tmp_path.glob("DistillSampler-*.pt"))) == 7


def test_sampler_refuses_non_gaussian_processes_in_one_line() -> None:
    sampler = DistillSampler(steps=2, start_steps=8)
    processes = {"atom_types": VPGaussian(10), "frac_coords": WrappedNormalVE(10)}
    x0 = {"atom_types": torch.zeros(4, 2, 3), "frac_coords": torch.rand(4, 2, 3)}
    with pytest.raises(TypeError) as caught:
        sampler.prepare(lambda x, t: x, processes, x0, 10)
    message = str(caught.value)
    assert "\n" not in message
    assert "frac_coords is WrappedNormalVE" in message and "model=ddpm" in message
    with pytest.raises(TypeError, match="frac_coords is WrappedNormalVE"):
        sampler(lambda x, t: x, processes, x0, 10, lambda: {})


def test_settings_are_checked() -> None:
    for steps, start in [(8, 8), (8, 24), (3, 4), (0, 8)]:
        with pytest.raises(ValueError, match="power of two"):
            DistillSampler(steps=steps, start_steps=start)
    assert DistillSampler(steps=4, start_steps=128).rounds == 5
    assert DistillSampler(steps=4, start_steps=128).nfe(1000) == 4
    with pytest.raises(ValueError, match="exceeds the model's 10 training steps"):
        DistillSampler(steps=2, start_steps=16).prepare(lambda x, t: x, {"a": VPGaussian(10)},
                                                        {"a": torch.zeros(3, 2)}, 10)


def test_sample_stage_distils_once_and_records_the_cost(tmp_path: Path) -> None:
    """``matgenbench sample ... sampler@model.module.sampler=distill`` on a trained run: a variant of its own,
    the students cached in the run directory, the same samples file when run again."""
    from bench.sample import sample
    from bench.train import train

    def cfg(*overrides: str):  # noqa: ANN202
        return compose(tiny_run(tmp_path, "model=ddpm", *TINY_TRANSFORMER, "model.module.timesteps=50",
                                *overrides, steps=3, sample_batch=4))

    train(cfg("model.module.sampler.steps=4"))
    asked = cfg("sampler@model.module.sampler=distill", "model.module.sampler.steps=2",
                "model.module.sampler.start_steps=8", "model.module.sampler.iters_per_round=2",
                "model.module.sampler.batch_size=4")
    summary = sample(asked)
    assert summary["variant"] == "ddpm-eps-cosine+distill-2-batch_size4-iters_per_round2-start_steps8"
    assert summary["nfe"] == 2 and summary["sampler_prepare_seconds"] > 0
    path = Path(summary["path"])
    assert len(list((path.parent / "sampler_cache").glob("DistillSampler-*.pt"))) == 2
    assert math.isfinite(summary["sampler_prepare_seconds"])
    text = path.read_text()
    assert Path(sample(asked)["path"]).read_text() == text
