"""DDSS (Watson, Chan, Ho & Norouzi 2022) as a ``ddpm`` sampler, checked against answers known independently
of the code under test.

- The KID estimator is unbiased: with the linear kernel ``a . b / D + 1`` its expectation is
  ``|mu_x - mu_y|^2 / D``; for two draws of one distribution it averages to 0.
- The crystal features of an ideal cubic perovskite are known by counting pairs: along each axis two of the
  five sites sit at 0 and three at 1/2, so of the 20 ordered pairs 8 have ``cos(2 pi df) = 1`` and 12 have
  ``-1`` (mean ``-0.2``), and every second harmonic is 1.
- GGDM contains DDIM: at its initial values it reproduces the ``ddim`` sampler's samples bit for bit.
- On Gaussian data the exact epsilon-predictor is a closed form (see ``tests/test_genie.py``), so the chain's
  gradient can be checked against finite differences and DDSS against the data it should approach.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import hydra
import pytest
import torch
from bench.datasets.codec import CrystalCodec
from bench.datasets.tiny import tiny_structures
from bench.models.diffusion.ddpm import CrystalDDPM
from bench.models.diffusion.ddss import (
    GGDM,
    DDSSSampler,
    FeatureScaler,
    crystal_features,
    fit_ggdm,
    kid_mmd2,
)
from bench.models.diffusion.processes import VPGaussian, WrappedNormalVE
from bench.models.diffusion.samplers import DDIMSampler, _fingerprint

from bench.config import compose
from tests.conftest import TINY_TRANSFORMER, tiny_run

pytestmark = pytest.mark.usefixtures("one_thread")

T = 1000
MU, SD, GMAX = torch.tensor([0.5, -1.0]), torch.tensor([0.3, 0.8]), 40.0


# ------------------------------------------------------------------------------------------- the loss
def test_kid_with_a_linear_kernel_is_the_squared_mean_shift_over_d() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 4, generator=g, dtype=torch.float64)
    y = torch.randn(4000, 4, generator=g, dtype=torch.float64) + torch.tensor([1.0, 0.0, 0.0, 0.0],
                                                                                dtype=torch.float64)
    assert float(kid_mmd2(x, y, degree=1)) == pytest.approx(0.25, abs=0.02)
    assert abs(float(kid_mmd2(x, y[:, :] - y.mean(0) + x.mean(0), degree=1))) < 1e-3  # equal sample means


def test_kid_averages_to_zero_for_one_distribution_and_grows_with_a_shift() -> None:
    g = torch.Generator().manual_seed(1)
    same, shifted = [], []
    for _ in range(40):
        x, y = torch.randn(100, 3, generator=g), torch.randn(100, 3, generator=g)
        same.append(float(kid_mmd2(x, y)))
        shifted.append(float(kid_mmd2(x, y + 0.5)))
    mean = sum(same) / len(same)
    spread = math.sqrt(sum((v - mean) ** 2 for v in same) / (len(same) - 1) / len(same))
    assert abs(mean) < 3 * spread  # unbiased: no systematic offset
    assert min(shifted) > 10 * spread
    assert sum(shifted) / len(shifted) > 20 * abs(mean)


def _perovskite(num_types: int = 4, extra_slots: int = 0) -> dict[str, torch.Tensor]:
    """SrTiO3-like ideal cubic perovskite in the ``ddpm`` diffusion space: classes 1, 2, 3 (0 is empty)."""
    frac = torch.tensor([[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    classes = [1, 2, 3, 3, 3]
    frac = torch.cat([frac, torch.zeros(extra_slots, 3)])
    classes = classes + [0] * extra_slots
    onehot = torch.nn.functional.one_hot(torch.tensor(classes), num_types).float()
    return {"atom_types": (2 * onehot - 1).unsqueeze(0), "frac_coords": (2 * frac - 1).unsqueeze(0),
            "lattice": torch.arange(6.0).unsqueeze(0)}


def test_crystal_features_of_an_ideal_perovskite() -> None:
    x = _perovskite()
    features = crystal_features(x, harmonics=2, sharpness=5.0)[0]
    assert features.shape == (4 + 6 + 6,)
    hot = math.exp(5) / (math.exp(5) + 3 * math.exp(-5))
    cold = math.exp(-5) / (math.exp(5) + 3 * math.exp(-5))
    expected_composition = torch.tensor([cold, hot / 5 + 4 * cold / 5, hot / 5 + 4 * cold / 5,
                                         3 * hot / 5 + 2 * cold / 5])
    torch.testing.assert_close(features[:4], expected_composition, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(features[4:10], torch.arange(6.0))
    torch.testing.assert_close(features[10:13], torch.full((3,), -0.2), rtol=0, atol=1e-5)
    torch.testing.assert_close(features[13:16], torch.ones(3), rtol=0, atol=1e-5)


def test_crystal_features_ignore_translation_slot_order_and_empty_slots() -> None:
    x = _perovskite()
    reference = crystal_features(x)
    moved = dict(x)
    f = (x["frac_coords"] + 1) / 2
    moved["frac_coords"] = 2 * torch.remainder(f + torch.tensor([0.13, 0.71, 0.4]), 1.0) - 1
    torch.testing.assert_close(crystal_features(moved), reference, rtol=0, atol=1e-5)
    order = torch.tensor([3, 0, 4, 2, 1])
    permuted = {k: v[:, order] if v.dim() == 3 else v for k, v in x.items()}
    torch.testing.assert_close(crystal_features(permuted), reference, rtol=0, atol=1e-6)
    padded = crystal_features(_perovskite(extra_slots=2))  # two empty slots more: same pairs, 7 slots
    torch.testing.assert_close(padded[0, 10:], reference[0, 10:], rtol=0, atol=1e-3)
    assert float(padded[0, 0]) > 2 / 7 - 1e-3  # the empty class's share counts the empty slots


def test_feature_scaler_gives_every_group_the_same_total_variance() -> None:
    g = torch.Generator().manual_seed(2)
    wide, narrow = 10 * torch.randn(500, 8, generator=g), torch.randn(500, 2, generator=g) + 3
    reference = torch.cat([wide, narrow], dim=1)
    scaled = FeatureScaler(reference, [8, 2])(reference)
    torch.testing.assert_close(scaled.mean(0), torch.zeros(10), rtol=0, atol=1e-4)
    variances = scaled.var(0)
    assert float(variances[:8].sum()) == pytest.approx(5.0, rel=1e-4)  # D / G = 10 / 2
    assert float(variances[8:].sum()) == pytest.approx(5.0, rel=1e-4)
    flat = FeatureScaler(torch.zeros(10, 3), floor=0.5)  # a constant reference: scaled by the floor
    assert torch.all(flat.scale > 0)


# ------------------------------------------------------------------------------------------- the family
@pytest.fixture(scope="module")
def codec() -> CrystalCodec:
    return CrystalCodec(max_atoms=8).fit(tiny_structures("train"))


def tiny_ddpm(codec: CrystalCodec, *overrides: str) -> CrystalDDPM:
    """The ``ddpm`` config shrunk by its own ``test_overrides`` (T = 100), with a small ddss sampler."""
    own = list(compose(["model=ddpm"]).model.test_overrides)
    cfg = compose(["model=ddpm", *own, "sampler@model.module.sampler=ddss", "model.module.sampler.steps=4",
                   "model.module.sampler.iters=3", "model.module.sampler.batch_size=4",
                   "model.module.sampler.real_batch_size=8", "model.module.sampler.eval_size=8", *overrides])
    torch.manual_seed(0)
    return hydra.utils.instantiate(cfg.model.module, num_types=codec.num_types, max_atoms=codec.max_atoms)


@pytest.mark.parametrize("steps", [1, 4, 7, 100])
def test_ggdm_at_its_initial_values_samples_exactly_as_ddim(codec: CrystalCodec, steps: int) -> None:
    model = tiny_ddpm(codec)
    sampler = model.sampler
    sampler.ggdm, sampler._prepared_for = GGDM(sorted(model.processes), 100, steps), 100
    ggdm = model.sample(5, generator=torch.Generator().manual_seed(3))
    model.sampler = DDIMSampler(steps=steps)
    assert sampler.schedule(100) == model.sampler.schedule(100)
    ddim = model.sample(5, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(ggdm[k], ddim[k]) for k in ddim)


def test_projection_keeps_the_steps_ordered_and_leaves_valid_ones_alone() -> None:
    ggdm = GGDM(["a"], 100, 5)
    assert ggdm.schedule() == [100, 75, 51, 26, 1]  # the ddim grid
    with torch.no_grad():
        ggdm.shift.copy_(torch.tensor([0.2, 0.0, -0.3, -0.5]))  # 95, 51, -4, -49: the last two below 1
    ggdm.project_()
    assert ggdm.times().tolist() == pytest.approx([100, 95, 51, 2, 1, 0])
    with torch.no_grad():
        ggdm.shift.copy_(torch.tensor([0.5, 0.5, 0.5, 0.5]))  # 125, 101, 76, 51: the first two above T
    ggdm.project_()
    assert ggdm.times().tolist() == pytest.approx([100, 99, 98, 76, 51, 0])
    with torch.no_grad():
        ggdm.shift.copy_(torch.tensor([0.013, -0.07, 0.02, 0.005]))
    before = ggdm.shift.detach().clone()
    ggdm.project_()
    torch.testing.assert_close(ggdm.shift.detach(), before)


def test_gradient_reaches_every_sampler_parameter_and_never_the_network(codec: CrystalCodec) -> None:
    model = tiny_ddpm(codec)
    model.eval()
    fields = sorted(model.processes)
    ggdm = GGDM(fields, 100, 4)
    with torch.no_grad():  # away from DDIM, so the history weights and sigma see non-zero inputs
        for p in ggdm.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    shapes = {"atom_types": (8, codec.num_types), "frac_coords": (8, 3), "lattice": (6,)}
    g = torch.Generator().manual_seed(0)
    draws = [{k: torch.randn((6, *s), generator=g) for k, s in shapes.items()} for _ in range(4)]

    def loss(remat: bool) -> torch.Tensor:
        noise = iter(draws[1:])
        out = ggdm.run(model.predict, model.processes, draws[0], lambda: next(noise), remat=remat)
        return crystal_features(out).pow(2).sum()

    params = list(ggdm.parameters())
    grads = torch.autograd.grad(loss(True), params)
    plain = torch.autograd.grad(loss(False), params)
    named = [name for name, _ in ggdm.named_parameters()]
    for name, grad, again in zip(named, grads, plain, strict=True):
        assert torch.isfinite(grad).all(), name
        assert float(grad.abs().sum()) > 0, name  # c, d, u, v, sigma of every field, and the times
        torch.testing.assert_close(grad, again, rtol=1e-4, atol=1e-6)  # rematerialised = stored
    assert all(p.grad is None for p in model.parameters())

    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    start = {name: p.detach().clone() for name, p in ggdm.named_parameters()}
    reference = crystal_features(model.to_diffusion_space(codec.encode(tiny_structures("train"))))
    fit_ggdm(ggdm, model.predict, model.processes, shapes, crystal_features, reference,
             FeatureScaler(reference), iters=2, batch_size=4, real_batch_size=8, lr=1e-2,
             generator=torch.Generator().manual_seed(0), eval_size=4)
    assert all(torch.equal(before[name], p) for name, p in model.named_parameters())
    assert all(p.grad is None for p in model.parameters())
    assert all(not torch.equal(start[name], p) for name, p in ggdm.named_parameters())


# ------------------------------------------------------------------------------------------- Gaussian data
class SmoothVP(VPGaussian):
    """A variance-preserving process with ``gamma(t) = g_max (t / T)^2``, tables in float64."""

    def __init__(self) -> None:
        super().__init__(T, "cosine", clip=None)
        gamma = GMAX * (torch.arange(T + 1, dtype=torch.float64) / T) ** 2
        self.alpha_bars64 = 1.0 / (1.0 + gamma**2)
        self.alpha_bars = self.alpha_bars64


def exact_eps(x: dict[str, torch.Tensor], t: torch.Tensor) -> dict[str, torch.Tensor]:
    """The exact epsilon-predictor of ``N(MU, SD^2)`` data at a real-valued ``t``:
    ``gamma (x_bar - mu) / (s^2 + gamma^2)`` with ``x_bar = x sqrt(1 + gamma^2)``."""
    z = x["a"]
    g = (GMAX * (t.to(z.dtype) / T) ** 2).view(-1, 1)
    x_bar = z * (1.0 + g**2).sqrt()
    mu, sd = MU.to(z.dtype), SD.to(z.dtype)
    return {"a": g * (x_bar - mu) / (sd**2 + g**2)}


def test_chain_gradient_matches_finite_differences_on_gaussian_data() -> None:
    processes = {"a": SmoothVP()}
    ggdm = GGDM(["a"], T, 4).double()
    with torch.no_grad():
        for p in ggdm.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()),
                                      dtype=torch.float64))
    g = torch.Generator().manual_seed(5)
    draws = [{"a": torch.randn(16, 2, generator=g, dtype=torch.float64)} for _ in range(4)]

    def loss() -> torch.Tensor:
        noise = iter(draws[1:])
        out = ggdm.run(exact_eps, processes, draws[0], lambda: next(noise), remat=True)
        return (out["a"] ** 3).mean() + out["a"].pow(2).mean()

    names = [n for n, _ in ggdm.named_parameters()]
    grads = dict(zip(names, torch.autograd.grad(loss(), list(ggdm.parameters())), strict=True))
    checked = 0
    for name, p in ggdm.named_parameters():
        for index in ([0], [2]) if p.dim() == 1 else ([2, 0], [3, 1]):  # u, v: step n reads m < n
            h = 1e-6
            with torch.no_grad():
                p[tuple(index)] += h
                up = float(loss())
                p[tuple(index)] -= 2 * h
                down = float(loss())
                p[tuple(index)] += h
            numeric = (up - down) / (2 * h)
            analytic = float(grads[name][tuple(index)])
            assert analytic == pytest.approx(numeric, rel=1e-4, abs=1e-8), (name, index)
            checked += 1
    assert checked == 12


def test_ddss_on_gaussian_data_lowers_the_kid_and_moves_toward_the_data() -> None:
    """Three DDIM steps on this schedule miss the data's spread; DDSS, fitted on draws of the data, gets
    closer on held-out chains."""
    processes = {"a": SmoothVP()}
    g = torch.Generator().manual_seed(0)
    data = MU + SD * torch.randn(4000, 2, generator=g)

    def identity(x: dict[str, torch.Tensor]) -> torch.Tensor:
        return x["a"]

    ggdm = GGDM(["a"], T, 3)
    summary = fit_ggdm(ggdm, exact_eps, processes, {"a": (2,)}, identity, data, FeatureScaler(data),
                       iters=150, batch_size=128, real_batch_size=256, lr=2e-2,
                       generator=torch.Generator().manual_seed(1), eval_size=1024)
    assert summary["kid_after"] < 0.3 * summary["kid_before"]
    assert summary["loss_last"] < summary["loss_first"]

    def spread(model: GGDM) -> torch.Tensor:
        h = torch.Generator().manual_seed(9)
        noise = [{"a": torch.randn(4000, 2, generator=h)} for _ in range(3)]
        with torch.no_grad():
            out = model.run(exact_eps, processes, noise[0], iter(noise[1:]).__next__)["a"]
        return torch.cat([out.mean(0) - MU, out.std(0) - SD]).abs()

    ddim, fitted = spread(GGDM(["a"], T, 3)), spread(ggdm)
    assert float(fitted.max()) < 0.5 * float(ddim.max())


# ------------------------------------------------------------------------------------------- the sampler
def test_prepared_sampler_is_cached_and_reused(codec: CrystalCodec, tmp_path: Path) -> None:
    batch = codec.encode(tiny_structures("train"))
    model = tiny_ddpm(codec)
    assert model.nfe == 4 and model.sampler.needs_data
    with pytest.raises(RuntimeError, match="prepare_sampler"):
        model.sample(2, generator=torch.Generator().manual_seed(0))
    weights = model.weights_fingerprint()
    model.prepare_sampler(batch, cache_dir=tmp_path)
    assert model.weights_fingerprint() == weights
    report = model.sampler.report
    assert report["fitted"] is True and report["rows"] == len(tiny_structures("train"))
    assert report["data_sha256"] == _fingerprint(
        {k: v.float() for k, v in model.to_diffusion_space(batch).items()})[:16]
    cached = sorted(tmp_path.glob("DDSSSampler-*.pt"))
    assert len(cached) == 1
    first = model.sample(3, generator=torch.Generator().manual_seed(1))
    again = tiny_ddpm(codec)
    again.prepare_sampler(batch, cache_dir=tmp_path)
    assert again.sampler.report["fitted"] is False
    assert again.sampler.report["kid_after"] == report["kid_after"]
    replay = again.sample(3, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(first[k], replay[k]) for k in first)
    other = tiny_ddpm(codec, "model.module.sampler.steps=3")  # the steps are part of the key
    other.prepare_sampler(batch, cache_dir=tmp_path)
    assert other.sampler.report["fitted"] is True and other.nfe == 3
    moved = tiny_ddpm(codec)
    with torch.no_grad():
        next(moved.parameters()).add_(0.01)
    moved.prepare_sampler(batch, cache_dir=tmp_path)
    assert moved.sampler.report["fitted"] is True
    assert len(list(tmp_path.glob("DDSSSampler-*.pt"))) == 3
    fresh = tiny_ddpm(codec)  # seeded: without a cache, the same fit again
    fresh.prepare_sampler(batch)
    state, saved = fresh.sampler.ggdm.state_dict(), model.sampler.ggdm.state_dict()
    assert all(torch.equal(state[name], saved[name]) for name in saved)


def test_sampler_refuses_other_processes_and_fields_in_one_line() -> None:
    sampler = DDSSSampler(steps=2)
    procs = {"atom_types": VPGaussian(10), "frac_coords": WrappedNormalVE(10), "lattice": VPGaussian(10)}
    x0 = {"atom_types": torch.zeros(4, 2, 3), "frac_coords": torch.rand(4, 2, 3),
          "lattice": torch.zeros(4, 6)}
    with pytest.raises(TypeError) as caught:
        sampler.prepare(lambda x, t: x, procs, x0, 10)
    assert "\n" not in str(caught.value) and "frac_coords is WrappedNormalVE" in str(caught.value)
    with pytest.raises(TypeError, match="model=ddpm"):
        sampler.prepare(lambda x, t: x, {"a": VPGaussian(10)}, {"a": torch.zeros(4, 2)}, 10)


def test_settings_are_checked() -> None:
    assert DDSSSampler(steps=25).nfe(1000) == 25
    assert DDSSSampler(steps=10).schedule(1000) == DDIMSampler(steps=10).schedule(1000)
    for bad in ({"steps": 0}, {"iters": -1}, {"batch_size": 1}, {"lr": 0.0}, {"harmonics": 0}):
        with pytest.raises(ValueError):
            DDSSSampler(**bad)


def test_sample_stage_fits_on_the_training_split_and_records_it(tmp_path: Path) -> None:
    """``matgenbench sample/evaluate ... sampler@model.module.sampler=ddss``: fitted once on the run's
    training split (not the split the record scores on), cached in the run directory, recorded in the record's
    cost."""
    from bench.evaluate import evaluate
    from bench.sample import sample
    from bench.tracks import check_track
    from bench.train import load_trained, train

    def cfg(*overrides: str):  # noqa: ANN202
        return compose(tiny_run(tmp_path, "model=ddpm", *TINY_TRANSFORMER, "model.module.timesteps=50",
                                *overrides, steps=3, sample_batch=4))

    train(cfg("model.module.sampler.steps=4"))
    asked = cfg("sampler@model.module.sampler=ddss", "model.module.sampler.steps=3",
                "model.module.sampler.iters=2", "model.module.sampler.batch_size=4",
                "model.module.sampler.eval_size=4")
    summary = sample(asked)
    assert summary["variant"] == "ddpm-eps-cosine+ddss-3-batch_size4-eval_size4-iters2"
    assert summary["nfe"] == 3 and summary["sampler_prepare_seconds"] > 0
    fit = summary["sampler_report"]
    assert fit["fitted"] is True and fit["iters"] == 2
    path = Path(summary["path"])
    assert len(list((path.parent / "sampler_cache").glob("DDSSSampler-*.pt"))) == 1
    # fitted on the training split: its fingerprint, not the evaluation split's
    module, codec, _ = load_trained(path.parent, asked.model)
    track = check_track(asked)
    train_rows = track.training_data(asked, codec, fit=False, with_val=False).train
    assert fit["rows"] == int(train_rows["lattice"].shape[0])
    assert fit["data_sha256"] == _fingerprint(
        {k: v.float() for k, v in CrystalDDPM.to_diffusion_space(train_rows).items()})[:16]
    held = codec.encode([s for s in tiny_structures(str(asked.dataset.eval_split)) if codec.can_encode(s)])
    assert fit["data_sha256"] != _fingerprint(
        {k: v.float() for k, v in CrystalDDPM.to_diffusion_space(held).items()})[:16]
    text = path.read_text()
    again = sample(asked)  # read from the cache: the same samples
    assert Path(again["path"]).read_text() == text and again["sampler_report"]["fitted"] is False
    record, _ = evaluate(asked)
    meta = json.loads(Path(f"{path}.meta.json").read_text())
    assert record.cost["sampler_fit"] == meta["sampler_report"]
    assert record.cost["sampler_fit"]["data"] == "the run's training split"
