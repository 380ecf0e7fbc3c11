"""The seed DDPM as a configuration of the per-field noise processes, checked against the closed forms.

``ddpm``'s corruption is a dict of :class:`~bench.models.diffusion.processes.VPGaussian` processes, stepped by
the config-chosen samplers. The references below write out, independently of those objects, what the model
computed when its schedule was its own: the cosine ``alpha_bar`` (Nichol & Dhariwal 2021, eq. 17), the
forward draw ``x_t = sqrt(a) x0 + sqrt(1 - a) eps`` at 0-based step indices, the posterior mean and variance
of Ho et al. (2020, eqs. 6-7, algorithm 2), and DDIM's update (Song et al. 2021, eq. 12), each with the same
draws from the same generator. Losses and samples must be bitwise equal to them: the processes do the same
float32 operations in the same order, so no tolerance is needed.
"""

from __future__ import annotations

import math

import hydra
import pytest
import torch
from bench.datasets.codec import CrystalCodec
from bench.datasets.tiny import tiny_structures
from bench.models.diffusion.ddpm import CrystalDDPM
from bench.models.diffusion.processes import VPGaussian, WrappedNormalVE
from bench.models.diffusion.samplers import AncestralSampler, DDIMSampler
from bench.models.embeddings import timestep_embedding

from bench.config import compose

FIELDS = ("atom_types", "frac_coords", "lattice")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def codec() -> CrystalCodec:
    return CrystalCodec(max_atoms=8).fit(tiny_structures("train"))


def tiny_ddpm(codec: CrystalCodec, *overrides: str) -> CrystalDDPM:
    """The ``ddpm`` config shrunk by its own ``test_overrides`` (T = 100), seeded."""
    own = list(compose(["model=ddpm"]).model.test_overrides)
    cfg = compose(["model=ddpm", *own, *overrides])
    torch.manual_seed(0)
    return hydra.utils.instantiate(cfg.model.module, num_types=codec.num_types, max_atoms=codec.max_atoms)


# ---------------------------------------------------------------------------------------- the references
def cosine_alpha_bars(timesteps: int) -> torch.Tensor:
    """``alpha_bar`` at 0-based indices ``i = 0..T-1`` (step ``i + 1``): eq. 17 with ``s = 0.008`` and betas
    clipped at 0.999, in float64, stored as float32."""
    steps = torch.arange(timesteps + 1, dtype=torch.float64)
    f = torch.cos((steps / timesteps + 0.008) / 1.008 * math.pi / 2.0) ** 2
    a = f / f[0]
    betas = (1.0 - a[1:] / a[:-1]).clamp(max=0.999)
    return torch.cumprod(1.0 - betas, dim=0).to(torch.float32)


def network(model: CrystalDDPM, x: dict[str, torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
    """The denoiser called as it is trained: time embedding of the 0-based index, coordinates read as
    fractions."""
    cond = model.time_mlp(timestep_embedding(index, model.time_dim))
    out = model.denoiser({**x, "frac_coords": (x["frac_coords"] + 1.0) / 2.0}, cond=cond)
    return {k: out[k] for k in FIELDS}


def visited(timesteps: int, steps: int | None) -> list[int]:
    """0-based indices visited by a sampler with ``steps`` evenly spaced steps (ascending)."""
    if steps is None or steps >= timesteps:
        return list(range(timesteps))
    return torch.linspace(0, timesteps - 1, steps, dtype=torch.float64).round().long().unique().tolist()


def randn(shapes: dict[str, tuple[int, ...]], g: torch.Generator) -> dict[str, torch.Tensor]:
    return {k: torch.randn(shapes[k], generator=g) for k in sorted(shapes)}


def reference_loss(model: CrystalDDPM, batch: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """The simple loss at uniformly drawn 0-based indices, written out."""
    torch.manual_seed(seed)
    x0 = {"atom_types": 2.0 * batch["atom_types"] - 1.0, "frac_coords": 2.0 * batch["frac_coords"] - 1.0,
          "lattice": batch["lattice"]}
    index = torch.randint(0, model.timesteps, (batch["lattice"].shape[0],))
    noise = {k: torch.randn_like(v) for k, v in x0.items()}
    alpha = cosine_alpha_bars(model.timesteps)[index]
    x_t = {}
    for k, v in x0.items():
        a = alpha.view(-1, *([1] * (v.dim() - 1)))
        x_t[k] = a.sqrt() * v + (1.0 - a).sqrt() * noise[k]
    eps = network(model, x_t, index)
    terms = {f"{k}_mse": torch.nn.functional.mse_loss(eps[k], noise[k]) for k in FIELDS}
    return {"loss": sum(terms[f"{k}_mse"] for k in FIELDS), **terms}


def reference_sample(
    model: CrystalDDPM, n: int, g: torch.Generator, kind: str, steps: int | None, eta: float = 0.0,
    variance: str = "posterior", clip: bool = True,
) -> tuple[dict[str, torch.Tensor], dict[str, int], int]:
    """Ancestral (``kind="ancestral"``) or DDIM sampling written out with scalar coefficients, drawing from
    ``g`` only what the updates use (no noise for the final step).

    Returns:
        The samples (types and coordinates mapped back to ``[0, 1]``), the number of clipped ``x0_hat``
        entries per field, and the number of network calls.
    """
    shapes = {"atom_types": (n, model.max_atoms, model.num_types), "frac_coords": (n, model.max_atoms, 3),
              "lattice": (n, 6)}
    bounds = {"atom_types": 1.0, "frac_coords": 1.0, "lattice": 5.0} if clip else {}
    alpha_bars = cosine_alpha_bars(model.timesteps)
    ts = visited(model.timesteps, steps)
    x = randn(shapes, g)
    clipped = dict.fromkeys(FIELDS, 0)
    calls = 0
    for i in reversed(range(len(ts))):
        a_t = alpha_bars[ts[i]]
        a_prev = alpha_bars[ts[i - 1]] if i > 0 else torch.ones_like(a_t)
        eps = network(model, x, torch.full((n,), ts[i], dtype=torch.long))
        calls += 1
        x0 = {}
        for k in x:
            x0[k] = (x[k] - (1.0 - a_t).sqrt() * eps[k]) / a_t.sqrt()
            if k in bounds:
                clipped[k] += int((x0[k].abs() > bounds[k]).sum())
                x0[k] = x0[k].clamp(-bounds[k], bounds[k])
                eps[k] = (x[k] - a_t.sqrt() * x0[k]) / (1.0 - a_t).sqrt()
        if kind == "ancestral":
            beta = 1.0 - a_t / a_prev
            coef0 = a_prev.sqrt() * beta / (1.0 - a_t)
            coeft = (1.0 - beta).sqrt() * (1.0 - a_prev) / (1.0 - a_t)
            mean = {k: coef0 * x0[k] + coeft * x[k] for k in x}
            if i == 0:
                x = mean
                break
            var = beta * (1.0 - a_prev) / (1.0 - a_t) if variance == "posterior" else beta
            z = randn(shapes, g)
            x = {k: mean[k] + var.sqrt() * z[k] for k in x}
        else:
            if i == 0:
                x = x0
                break
            sigma = eta * ((1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)).sqrt()
            direction = (1.0 - a_prev - sigma**2).clamp_min(0.0).sqrt()
            x = {k: a_prev.sqrt() * x0[k] + direction * eps[k] for k in x}
            if eta > 0:
                z = randn(shapes, g)
                x = {k: x[k] + sigma * z[k] for k in x}
    out = {"atom_types": (x["atom_types"] + 1.0) / 2.0, "frac_coords": (x["frac_coords"] + 1.0) / 2.0,
           "lattice": x["lattice"]}
    return out, clipped, calls


# ---------------------------------------------------------------------------------------- the model
def test_corruption_is_a_dict_of_vp_processes_built_from_the_config(codec: CrystalCodec) -> None:
    model = tiny_ddpm(codec)
    assert set(model.processes) == set(FIELDS)
    assert all(isinstance(p, VPGaussian) and p.timesteps == 100 for p in model.processes.values())
    assert {k: p.clip for k, p in model.processes.items()} == {"atom_types": 1.0, "frac_coords": 1.0,
                                                               "lattice": 5.0}
    for process in model.processes.values():
        assert float(process.alpha_bars[0]) == 1.0
        assert torch.equal(process.alpha_bars[1:], cosine_alpha_bars(100))
    # Nothing of the schedule is saved: a checkpoint holds learned weights only.
    assert not any("alpha" in key for key in model.state_dict())
    assert tiny_ddpm(codec, "model.module.lattice_clip=null").processes["lattice"].clip is None


def test_loss_equals_the_closed_form_q_sample_and_noise_mse(codec: CrystalCodec) -> None:
    model = tiny_ddpm(codec)
    batch = codec.encode(tiny_structures("train"))
    expected = reference_loss(model, batch, seed=7)
    torch.manual_seed(7)
    got = model.loss(batch)
    assert set(got) == set(expected)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


SAMPLERS = {
    "ddpm-all-steps": (AncestralSampler(steps=None), dict(kind="ancestral", steps=None)),
    "ddpm-respaced": (AncestralSampler(steps=13), dict(kind="ancestral", steps=13)),
    "ddpm-beta-variance": (AncestralSampler(steps=17, variance="beta"),
                           dict(kind="ancestral", steps=17, variance="beta")),
    "ddpm-unclipped": (AncestralSampler(steps=11, clip_denoised=False),
                       dict(kind="ancestral", steps=11, clip=False)),
    "ddim-50": (DDIMSampler(steps=50), dict(kind="ddim", steps=50)),
    "ddim-eta": (DDIMSampler(steps=20, eta=0.5), dict(kind="ddim", steps=20, eta=0.5)),
    "ddim-eta1-unclipped": (DDIMSampler(steps=9, eta=1.0, clip_denoised=False),
                            dict(kind="ddim", steps=9, eta=1.0, clip=False)),
}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_samples_equal_the_closed_form_reverse_process(codec: CrystalCodec, name: str) -> None:
    """After two training steps, samples under a fixed generator are bitwise those of the written-out
    ancestral / DDIM updates, in consecutive batches from one generator as the sample stage draws them (so
    the generator is left where the written-out process leaves it); clipping is exercised in every field, and
    NFE counts the network calls."""
    model = tiny_ddpm(codec)
    batch = codec.encode(tiny_structures("train"))
    optimizer = model.configure_optimizers()
    for _ in range(2):
        optimizer.zero_grad()
        model.loss(batch)["loss"].backward()
        optimizer.step()
    sampler, options = SAMPLERS[name]
    model.sampler = sampler
    model.eval()
    g_model, g_reference = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _ in range(2):
            got = model._sample(4, g_model, None)
            expected, clipped, calls = reference_sample(model, 4, g_reference, **options)
            for key in FIELDS:
                assert torch.equal(got[key], expected[key]), key
    assert model.nfe == calls
    if options.get("clip", True):
        assert all(count > 0 for count in clipped.values()), clipped


def test_published_full_chain_at_t1000_is_unchanged(codec: CrystalCodec) -> None:
    """The published setting: T = 1000, ancestral sampling over all 1000 steps."""
    model = tiny_ddpm(codec, "model.module.timesteps=1000")
    model.sampler = AncestralSampler(steps=None)
    model.eval()
    with torch.no_grad():
        got = model._sample(2, torch.Generator().manual_seed(11), None)
        expected, _, calls = reference_sample(model, 2, torch.Generator().manual_seed(11), kind="ancestral",
                                              steps=None)
    assert calls == model.nfe == 1000
    for key in FIELDS:
        assert torch.equal(got[key], expected[key]), key


# ---------------------------------------------------------------------------------------- the steps
def _step_inputs(timesteps: int = 50) -> tuple[VPGaussian, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    x_t, pred, z = (torch.randn(4, 3, 2, generator=g) for _ in range(3))
    return VPGaussian(timesteps, clip=2.0), x_t, pred, z


T_STEPS, S_STEPS = torch.tensor([50, 30, 7, 1]), torch.tensor([40, 29, 3, 0])


def test_ddim_with_eta_one_is_the_ancestral_posterior_step() -> None:
    """Song et al. (2021): ``eta = 1`` gives the DDPM posterior, mean and variance; the two updates are
    written differently, so they agree to float32 rounding."""
    process, x_t, pred, z = _step_inputs()
    for clip in (True, False):
        ddim = process.ddim_step(x_t, pred, T_STEPS, S_STEPS, z, eta=1.0, clip=clip)
        ancestral = process.reverse_step(x_t, pred, T_STEPS, S_STEPS, z, clip=clip)
        torch.testing.assert_close(ddim, ancestral, atol=2e-5, rtol=2e-5)


def test_reverse_step_variances() -> None:
    process, x_t, pred, z = _step_inputs()
    a_t = process.alpha_bars[T_STEPS].view(-1, 1, 1)
    a_s = process.alpha_bars[S_STEPS].view(-1, 1, 1)
    beta = 1.0 - a_t / a_s
    mean = process.reverse_step(x_t, pred, T_STEPS, S_STEPS, None)
    beta_step = process.reverse_step(x_t, pred, T_STEPS, S_STEPS, z, variance="beta") - mean
    posterior_step = process.reverse_step(x_t, pred, T_STEPS, S_STEPS, z) - mean
    # sigma^2 = beta, except at s = 0 where Ho et al.'s algorithm 2 adds no noise.
    torch.testing.assert_close(beta_step[:3], (beta.sqrt() * z)[:3], atol=1e-6, rtol=1e-5)
    assert torch.all(beta_step[3] == 0) and torch.all(posterior_step[3] == 0)
    # sigma^2 = beta_tilde = beta (1 - a_s) / (1 - a_t)
    beta_tilde = beta * (1 - a_s) / (1 - a_t)
    torch.testing.assert_close(posterior_step, beta_tilde.sqrt() * z, atol=1e-6, rtol=1e-5)
    assert torch.all(posterior_step[:3].abs() < beta_step[:3].abs() + 1e-7)
    with pytest.raises(ValueError, match="variance"):
        process.reverse_step(x_t, pred, T_STEPS, S_STEPS, z, variance="learned")


@pytest.mark.parametrize("step", ["reverse_step", "ddim_step"])
def test_last_step_returns_x0_hat_clipped_to_the_bound_unless_switched_off(step: str) -> None:
    """At ``s = 0`` both updates return ``x0_hat = (x_t - sqrt(1 - a) eps) / sqrt(a)``; an epsilon far off
    puts it outside the bound of 2."""
    process, x_t, pred, _ = _step_inputs()
    big, t, s = 40.0 * pred, T_STEPS, torch.zeros_like(T_STEPS)
    a = process.alpha_bars[t].view(-1, 1, 1)
    x0_hat = (x_t - (1 - a).sqrt() * big) / a.sqrt()
    assert float(x0_hat.abs().max()) > 10.0
    clipped = getattr(process, step)(x_t, big, t, s, None)
    free = getattr(process, step)(x_t, big, t, s, None, clip=False)
    torch.testing.assert_close(clipped, x0_hat.clamp(-2.0, 2.0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(free, x0_hat, atol=1e-4, rtol=1e-5)


def test_gaussian_only_samplers_name_the_field_they_cannot_step() -> None:
    processes = {"frac_coords": WrappedNormalVE(timesteps=10), "lattice": VPGaussian(timesteps=10)}
    x = {"frac_coords": torch.rand(2, 3, 3), "lattice": torch.randn(2, 6)}

    def predictor(x_t: dict[str, torch.Tensor], t: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: torch.zeros_like(v) for k, v in x_t.items()}

    def noise() -> dict[str, torch.Tensor]:
        return {k: torch.randn_like(v) for k, v in x.items()}

    with pytest.raises(TypeError, match="frac_coords is WrappedNormalVE"):
        DDIMSampler(steps=5)(predictor, processes, x, 10, noise)
    with pytest.raises(TypeError, match="frac_coords is WrappedNormalVE"):
        AncestralSampler(variance="beta")(predictor, processes, x, 10, noise)
    # The default ancestral sampler steps any process.
    out = AncestralSampler(steps=5)(predictor, processes, x, 10, noise)
    assert torch.all((out["frac_coords"] >= 0) & (out["frac_coords"] < 1))
