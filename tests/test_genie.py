"""GENIE (Dockhorn, Vahdat & Kreis 2022) as a ``ddpm`` sampler, checked against answers known independently of
the code under test.

The Gaussian data set: every coordinate of field ``k`` drawn from ``N(mu_k, s_k^2)``. Written with
``gamma = sigma / alpha`` and ``x_bar = x / alpha = x sqrt(1 + gamma^2)``, the exact epsilon-predictor (the
regression of ``eps`` on ``x_t``) is

    ``eps*(x_t) = gamma (x_bar - mu) / (s^2 + gamma^2)``,

the DDIM ODE ``d x_bar / d gamma = eps*`` has the solution ``x_bar - mu = C sqrt(s^2 + gamma^2)``, so the
exact map from ``gamma_T`` to the data (``gamma = 0``) is ``x_0 = mu + (x_bar_T - mu) s / sqrt(s^2 +
gamma_T^2)``, and along the ODE

    ``d eps / d gamma = (x_bar - mu) s^2 / (s^2 + gamma^2)^2``.

The test processes have the smooth schedule ``gamma(t) = g_max (t / T)^2`` of a real-valued ``t`` (tables in
float64), and the predictor depends on ``t`` only through ``gamma(t)``, so the derivative's time term is
essential: the ``x`` term alone is not the answer.
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
from bench.models.diffusion.genie import (
    GenieHead,
    GenieSampler,
    gamma_table,
    ode_derivative,
    relative_error,
    train_head,
)
from bench.models.diffusion.processes import VPGaussian, WrappedNormalVE
from bench.models.diffusion.samplers import DDIMSampler

from bench.config import compose
from tests.conftest import TINY_TRANSFORMER, tiny_run

pytestmark = pytest.mark.usefixtures("one_thread")

MU = {"a": 0.3, "b": -0.2, "c": 1.0}
SD = {"a": 0.5, "b": 1.5, "c": 0.2}
GMAX = {"a": 40.0, "b": 40.0, "c": 10.0}  # "c" runs on another schedule than "a" and "b"
T = 1000


def gamma_of(t: torch.Tensor, g_max: float) -> torch.Tensor:
    return g_max * (t / T) ** 2


class SmoothVP(VPGaussian):
    """A variance-preserving process with ``gamma(t) = g_max (t / T)^2``, tables in float64."""

    def __init__(self, g_max: float) -> None:
        super().__init__(T, "cosine", clip=None)
        gamma = gamma_of(torch.arange(T + 1, dtype=torch.float64), g_max)
        self.alpha_bars64 = 1.0 / (1.0 + gamma**2)
        self.alpha_bars = self.alpha_bars64


def exact_eps(x: dict[str, torch.Tensor], t: torch.Tensor) -> dict[str, torch.Tensor]:
    """The closed-form epsilon-predictor of the Gaussian data at a real-valued ``t`` (float64 inside)."""
    out = {}
    for k, z in x.items():
        g = gamma_of(t.to(torch.float64), GMAX[k]).view(-1, *([1] * (z.dim() - 1)))
        x_bar = z.to(torch.float64) * (1.0 + g**2).sqrt()
        out[k] = (g * (x_bar - MU[k]) / (SD[k] ** 2 + g**2)).to(z.dtype)
    return out


def exact_flow(x_t: torch.Tensor, k: str, g: float) -> torch.Tensor:
    """The exact DDIM-ODE map from ``x_t`` at ``gamma = g`` to the data."""
    x_bar = x_t.double() * math.sqrt(1 + g**2)
    return MU[k] + (x_bar - MU[k]) * SD[k] / math.sqrt(SD[k] ** 2 + g**2)


def processes(fields: str) -> dict[str, SmoothVP]:
    return {k: SmoothVP(GMAX[k]) for k in fields}


def draws(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g, dtype=torch.float64) for k, shape in sorted(shapes.items())}


# ------------------------------------------------------------------------------------------- the derivative
def test_gamma_table_is_gamma_and_its_central_difference() -> None:
    process = VPGaussian(1000, "cosine")
    gamma, slope = gamma_table(process)
    a = process.alpha_bars64
    torch.testing.assert_close(gamma, ((1 - a) / a).sqrt(), rtol=0, atol=0)
    assert gamma[0] == 0 and torch.all(gamma[1:] > gamma[:-1])
    # on the smooth test schedule the central difference of a quadratic is its derivative, 2 g_max t / T^2
    _, slope = gamma_table(SmoothVP(GMAX["a"]))
    t = torch.arange(1, T, dtype=torch.float64)
    torch.testing.assert_close(slope[1:T], 2 * GMAX["a"] * t / T**2, rtol=1e-10, atol=1e-12)
    assert slope[T] == pytest.approx(GMAX["a"] * (2 * T - 1) / T**2, rel=1e-12)  # one-sided at the ends
    assert slope[0] == pytest.approx(GMAX["a"] / T**2, rel=1e-6)  # gamma_1^2 ~ 1e-9: read back from 1 - a


@pytest.mark.parametrize("t_value", [1, 2, 17, 500, 999])
def test_jvp_target_is_the_analytic_derivative_along_the_ode(t_value: int) -> None:
    """``ode_derivative`` of the exact predictor equals ``(x_bar - mu) s^2 / (s^2 + gamma^2)^2`` for every
    field, on two schedules at once; without its time term (the JVP in ``x`` alone) it would not. (At
    ``t = T`` the slope of ``gamma`` is one-sided, so the time term is off by ``1 / 2T`` there.)"""
    procs = processes("abc")
    x = draws({"a": (64, 2), "b": (64, 3, 2), "c": (64, 4)}, seed=t_value)
    t = torch.full((64,), t_value, dtype=torch.long)
    got = ode_derivative(exact_eps, procs, x, t)
    for k in x:
        g = gamma_of(torch.tensor(float(t_value), dtype=torch.float64), GMAX[k])
        x_bar = x[k] * (1 + g**2).sqrt()
        expected = (x_bar - MU[k]) * SD[k] ** 2 / (SD[k] ** 2 + g**2) ** 2
        torch.testing.assert_close(got[k], expected, rtol=1e-7, atol=1e-12)
    # the x term alone misses d eps / d gamma at fixed x_bar, which is of the same size here
    a = got["a"]
    no_time = ode_derivative(lambda xs, ts: exact_eps(xs, ts.detach()), procs, x, t)["a"]
    assert float((no_time - a).abs().max()) > 0.1 * float(a.abs().max())


def test_jvp_of_the_ddpm_network_matches_finite_differences_along_the_ode(codec: CrystalCodec) -> None:
    """On the real transformer eps-model (forward-mode AD through its attention): the JVP equals the central
    difference of the network along the ODE's tangent, built here from ``x = x_bar / sqrt(1 + gamma^2)``
    moved by ``delta`` in ``gamma`` with ``x_bar`` moved by ``delta eps`` and ``t`` by ``delta / slope``."""
    model = tiny_ddpm(codec).eval()
    procs = model.processes
    g = torch.Generator().manual_seed(0)
    x = {k: torch.randn(6, *shape, generator=g) for k, shape in
         {"atom_types": (codec.max_atoms, codec.num_types), "frac_coords": (codec.max_atoms, 3),
          "lattice": (6,)}.items()}
    t = torch.tensor([3, 10, 30, 50, 70, 90])
    with torch.no_grad():
        got = ode_derivative(model.predict, procs, x, t)
        eps = model.predict(x, t)
        gamma, slope = gamma_table(procs["lattice"])
        g_t = gamma[t].float().view(-1, 1)
        delta = 1e-2 * g_t.view(-1)

        def moved(sign: float) -> dict[str, torch.Tensor]:
            new_g = g_t.view(-1) + sign * delta
            z = {}
            for k, v in x.items():
                shape = (-1, *([1] * (v.dim() - 1)))
                x_bar = v * (1 + g_t.view(shape) ** 2).sqrt() + sign * delta.view(shape) * eps[k]
                z[k] = x_bar / (1 + new_g.view(shape) ** 2).sqrt()
            return model.predict(z, t.float() + sign * delta / slope[t].float())

        plus, minus = moved(1.0), moved(-1.0)
    for k in got:
        shape = (-1, *([1] * (got[k].dim() - 1)))
        finite = (plus[k] - minus[k]) / (2 * delta.view(shape))
        scale = float(finite.abs().max())
        assert scale > 0
        assert float((got[k] - finite).abs().max()) < 0.02 * scale, k


# ------------------------------------------------------------------------------------------- the solver
def _errors(make, fields: str, steps: list[int]) -> list[float]:  # noqa: ANN001
    procs = processes(fields)
    shapes = {"a": (1000, 2), "b": (1000, 3, 2)}
    x_t = draws({k: shapes[k] for k in fields}, seed=7)
    out = []
    for k_steps in steps:
        got = make(k_steps)(exact_eps, procs, x_t, T, lambda: {})
        out.append(max(float((got[k] - exact_flow(x_t[k], k, GMAX[k])).abs().max()) for k in fields))
    return out


def test_ttm2_with_the_exact_derivative_is_second_order_and_ddim_first_order() -> None:
    """Halving the steps divides TTM2's global error (against the exact ODE solution) by about 4 and DDIM's by
    about 2: the empirical orders ``log2(e_K / e_2K)``, for K = 20, 40, 80, 160."""
    steps = [20, 40, 80, 160]
    ddim = _errors(lambda k: DDIMSampler(k, clip_denoised=False), "a", steps)
    ttm2 = _errors(lambda k: GenieSampler(k, exact_jvp=True, first_step="ttm2", clip_denoised=False), "a",
                   steps)
    euler_first = _errors(lambda k: GenieSampler(k, exact_jvp=True, clip_denoised=False), "a", steps)
    quadratic = _errors(lambda k: GenieSampler(k, spacing="quadratic", exact_jvp=True, clip_denoised=False),
                        "a", steps)
    order = {name: [math.log2(e[i] / e[i + 1]) for i in range(len(e) - 1)]
             for name, e in {"ddim": ddim, "ttm2": ttm2, "euler_first": euler_first,
                             "quadratic": quadratic}.items()}
    assert all(0.85 < p < 1.15 for p in order["ddim"]), order
    for name in ("ttm2", "euler_first", "quadratic"):  # one Euler step does not change the global order
        assert all(1.8 < p < 2.2 for p in order[name]), (name, order)
    gains = [a / b for a, b in zip(ddim, ttm2, strict=True)]  # TTM2's advantage grows as 2^k
    assert gains[1] > 5
    assert all(later > 1.8 * earlier for earlier, later in zip(gains, gains[1:], strict=False))
    # at two fields (sites and a vector) the same: the solver is field by field
    both = _errors(lambda k: GenieSampler(k, exact_jvp=True, clip_denoised=False), "ab", [40, 80])
    assert 1.8 < math.log2(both[0] / both[1]) < 2.2


def test_a_trained_head_approximates_the_exact_jvp_on_gaussian_data() -> None:
    """300 Adam steps on the Gaussian data (a per-item field and a per-site field): the head's error relative
    to the exact derivative, weighted by ``gamma^2`` as the loss, is below 0.2 on held-out draws (it starts at
    1).
    Sampled with it, the largest error against the exact ODE solution is less than half DDIM's at 10 and 20
    steps, and less than twice exact TTM2's."""
    procs = processes("ab")
    g = torch.Generator().manual_seed(1)
    x0 = {"a": MU["a"] + SD["a"] * torch.randn(4000, 2, generator=g),
          "b": MU["b"] + SD["b"] * torch.randn(4000, 3, 2, generator=g)}
    torch.manual_seed(0)
    head = GenieHead({k: v.shape[1:] for k, v in x0.items()}, width=32, layers=2, heads=4)
    with torch.enable_grad():
        report = train_head(head, exact_eps, procs, x0, T, iters=300, batch_size=128, lr=3e-3,
                            generator=torch.Generator().manual_seed(0))
    assert report["relative_error_before"] == {"a": 1.0, "b": 1.0}
    assert all(e < 0.2 for e in report["relative_error"].values()), report["relative_error"]
    assert report["loss_last"] < report["loss_first"] / 10
    # on fresh draws of x_t from the data, through relative_error itself
    g = torch.Generator().manual_seed(2)
    t = torch.randint(1, T + 1, (256,), generator=g)
    x = {k: procs[k].q_sample(MU[k] + SD[k] * torch.randn(256, *x0[k].shape[1:], generator=g), t,
                              torch.randn(256, *x0[k].shape[1:], generator=g)) for k in procs}
    gammas = {k: gamma_table(procs[k])[0][t] for k in procs}
    with torch.no_grad():
        eps = exact_eps(x, t)
        errors = relative_error(head(x, eps, t, gammas), ode_derivative(exact_eps, procs, x, t, eps), gammas)
    assert all(e < 0.2 for e in errors.values()), errors
    def with_head(k_steps: int) -> GenieSampler:
        sampler = GenieSampler(k_steps, clip_denoised=False)
        sampler.head, sampler._prepared_for = head, T
        return sampler

    for k_steps in (10, 20):
        errs = {name: _errors(make, "ab", [k_steps])[0] for name, make in {
            "ddim": lambda k: DDIMSampler(k, clip_denoised=False), "head": with_head,
            "exact": lambda k: GenieSampler(k, exact_jvp=True, clip_denoised=False)}.items()}
        assert errs["head"] < 2 * errs["exact"] and errs["head"] < 0.5 * errs["ddim"], errs


# ---------------------------------------------------------------------------------------- on the ddpm model
@pytest.fixture(scope="module")
def codec() -> CrystalCodec:
    return CrystalCodec(max_atoms=8).fit(tiny_structures("train"))


def tiny_ddpm(codec: CrystalCodec, *overrides: str) -> CrystalDDPM:
    """The ``ddpm`` config shrunk by its own ``test_overrides`` (T = 100), with a small genie sampler."""
    own = list(compose(["model=ddpm"]).model.test_overrides)
    cfg = compose(["model=ddpm", *own, "sampler@model.module.sampler=genie", "model.module.sampler.steps=4",
                   "model.module.sampler.iters=3", "model.module.sampler.batch_size=4",
                   "model.module.sampler.width=8", "model.module.sampler.layers=1",
                   "model.module.sampler.heads=2", *overrides])
    torch.manual_seed(0)
    return hydra.utils.instantiate(cfg.model.module, num_types=codec.num_types, max_atoms=codec.max_atoms)


def test_an_untrained_head_samples_exactly_as_ddim(codec: CrystalCodec) -> None:
    """The head's output layers start at zero, so TTM2 with it is the Euler step: bit for bit DDIM's samples
    (the same grid, the same clipping), at both spacings' grids."""
    model = tiny_ddpm(codec)
    sampler = model.sampler
    x0 = model.to_diffusion_space(codec.encode(tiny_structures("train")))
    sampler.head = GenieHead({k: tuple(v.shape[1:]) for k, v in x0.items()}, 8, 1, 2)
    sampler._prepared_for = model.timesteps
    genie = model.sample(5, generator=torch.Generator().manual_seed(3))
    model.sampler = DDIMSampler(steps=4)
    assert model.sampler.schedule(100) == sampler.schedule(100) == [100, 67, 34, 1]
    ddim = model.sample(5, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(genie[k], ddim[k]) for k in ddim)


def test_exact_jvp_needs_no_preparation_and_is_deterministic(codec: CrystalCodec) -> None:
    model = tiny_ddpm(codec, "model.module.sampler.exact_jvp=true")
    assert not model.sampler.needs_data
    assert model.nfe == 1 + 3 * 3  # the Euler first step, then an evaluation and a JVP per step
    model.prepare_sampler({})  # a no-op
    first = model.sample(4, generator=torch.Generator().manual_seed(1))
    again = model.sample(4, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert all(torch.isfinite(v).all() for v in first.values())
    model.sampler = DDIMSampler(steps=4)
    ddim = model.sample(4, generator=torch.Generator().manual_seed(1))
    assert not all(torch.allclose(first[k], ddim[k]) for k in first)


def test_prepared_head_is_cached_and_reused(codec: CrystalCodec, tmp_path: Path) -> None:
    batch = codec.encode(tiny_structures("train"))
    model = tiny_ddpm(codec)
    assert model.nfe == 4 and model.sampler.needs_data
    with pytest.raises(RuntimeError, match="prepare_sampler"):
        model.sample(2, generator=torch.Generator().manual_seed(0))
    teacher = model.weights_fingerprint()
    model.prepare_sampler(batch, cache_dir=tmp_path)
    assert model.weights_fingerprint() == teacher
    assert model.sampler.report["trained"] is True
    cached = sorted(tmp_path.glob("GenieSampler-*.pt"))
    assert len(cached) == 1
    first = model.sample(3, generator=torch.Generator().manual_seed(1))
    repeat = model.sample(3, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(first[k], repeat[k]) for k in first)
    # a fresh model with the same weights and settings: no training, the same head, the same samples
    again = tiny_ddpm(codec)
    again.prepare_sampler(batch, cache_dir=tmp_path)
    assert again.sampler.report["trained"] is False
    assert again.sampler.report["relative_error"] == model.sampler.report["relative_error"]
    assert sorted(tmp_path.glob("GenieSampler-*.pt")) == cached
    replay = again.sample(3, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(first[k], replay[k]) for k in first)
    # the grid is not part of the head: other steps and spacing reuse it
    other_grid = tiny_ddpm(codec, "model.module.sampler.steps=7", "model.module.sampler.spacing=quadratic")
    other_grid.prepare_sampler(batch, cache_dir=tmp_path)
    assert other_grid.sampler.report["trained"] is False
    # other settings, or other weights: trained again
    other = tiny_ddpm(codec, "model.module.sampler.lr=1e-2")
    other.prepare_sampler(batch, cache_dir=tmp_path)
    assert other.sampler.report["trained"] is True
    moved = tiny_ddpm(codec)
    with torch.no_grad():
        next(moved.parameters()).add_(0.01)
    moved.prepare_sampler(batch, cache_dir=tmp_path)
    assert moved.sampler.report["trained"] is True
    assert len(list(tmp_path.glob("GenieSampler-*.pt"))) == 3
    # the training is seeded: without a cache, the same head again
    fresh = tiny_ddpm(codec)
    fresh.prepare_sampler(batch)
    state, saved = fresh.sampler.head.state_dict(), model.sampler.head.state_dict()
    assert all(torch.equal(state[name], saved[name]) for name in saved)


def test_sampler_refuses_non_gaussian_processes_in_one_line() -> None:
    sampler = GenieSampler(steps=2)
    procs = {"atom_types": VPGaussian(10), "frac_coords": WrappedNormalVE(10)}
    x0 = {"atom_types": torch.zeros(4, 2, 3), "frac_coords": torch.rand(4, 2, 3)}
    with pytest.raises(TypeError) as caught:
        sampler.prepare(lambda x, t: x, procs, x0, 10)
    message = str(caught.value)
    assert "\n" not in message
    assert "frac_coords is WrappedNormalVE" in message and "model=ddpm" in message
    with pytest.raises(TypeError, match="frac_coords is WrappedNormalVE"):
        GenieSampler(steps=2, exact_jvp=True)(lambda x, t: x, procs, x0, 10, lambda: {})


def test_settings_and_grids() -> None:
    assert GenieSampler(steps=10).schedule(1000) == DDIMSampler(steps=10).schedule(1000)
    assert GenieSampler(steps=4, spacing="quadratic").schedule(1000) == [1000, 563, 250, 63]
    assert GenieSampler(steps=25).nfe(1000) == 25
    assert GenieSampler(steps=25, exact_jvp=True).nfe(1000) == 25 + 2 * 24
    assert GenieSampler(steps=25, exact_jvp=True, first_step="ttm2").nfe(1000) == 75
    for bad in ({"spacing": "log"}, {"first_step": "heun"}, {"iters": 0}, {"lr": 0.0}, {"width": 6},
                {"steps": 0}):
        with pytest.raises(ValueError):
            GenieSampler(**bad)


def test_sample_stage_trains_the_head_once_and_records_the_cost(tmp_path: Path) -> None:
    """``matgenbench sample ... sampler@model.module.sampler=genie`` on a trained run: a variant of its own,
    the head cached in the run directory, the same samples file when run again."""
    from bench.sample import sample
    from bench.train import train

    def cfg(*overrides: str):  # noqa: ANN202
        return compose(tiny_run(tmp_path, "model=ddpm", *TINY_TRANSFORMER, "model.module.timesteps=50",
                                *overrides, steps=3, sample_batch=4))

    train(cfg("model.module.sampler.steps=4"))
    asked = cfg("sampler@model.module.sampler=genie", "model.module.sampler.steps=5",
                "model.module.sampler.iters=2", "model.module.sampler.batch_size=4")
    summary = sample(asked)
    assert summary["variant"] == "ddpm-eps-cosine+genie-5-batch_size4-iters2"
    assert summary["nfe"] == 5 and summary["sampler_prepare_seconds"] > 0
    path = Path(summary["path"])
    assert len(list((path.parent / "sampler_cache").glob("GenieSampler-*.pt"))) == 1
    text = path.read_text()
    assert Path(sample(asked)["path"]).read_text() == text
    exact = sample(cfg("sampler@model.module.sampler=genie", "model.module.sampler.steps=5",
                       "model.module.sampler.exact_jvp=true"))
    assert exact["variant"] == "ddpm-eps-cosine+genie-5-exact_jvpTrue" and exact["nfe"] == 13
    assert "sampler_prepare_seconds" not in exact
