"""Contract tests of the model zoo: every model config trains, samples, decodes, reloads and is deterministic.

Each model is built from the real Hydra config (``conf/config.yaml`` with ``model=<name>``), shrunk to tiny
widths, and trained with a real Lightning ``Trainer`` on its track's tiny data set encoded by the real
representation: the project's tiny structures and the crystal codec, (a config with ``track: composition``)
a few dozen formulas and the composition count matrix, or (``track: tabular``) a 40-row table of element
fractions and a target in mode-specific normalisation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from bench.datasets.codec import CrystalCodec, DecodeFailure
from bench.datasets.composition_representation import CompositionCounts
from bench.datasets.tabular_representation import ModeSpecificNormalizer
from bench.datasets.tiny import tiny_structures
from bench.models import MODELS, CrystalTransformer, GenerativeModule, NonFiniteLossError
from bench.models.diffusion.processes import VPGaussian
from bench.models.diffusion.samplers import AncestralSampler, DDIMSampler, respaced_timesteps
from bench.models.diffusion.schedule import cosine_alpha_bars
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig
from pymatgen.core import Structure

from bench.train import model_callbacks

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"
MODEL_NAMES = sorted(MODELS)

TRAIN_STEPS = 40

TINY_FORMULAS = (
    "NaCl", "KCl", "LiF", "CsBr", "MgO", "CaO", "BaO", "ZnS", "GaAs", "InP", "SiC", "Al2O3", "Fe2O3", "Cr2O3",
    "TiO2", "SiO2", "SnO2", "MnO2", "Fe3O4", "Co3O4", "MgAl2O4", "SrTiO3", "BaTiO3", "CaTiO3", "LaFeO3",
    "LiFePO4", "Li2O", "Na2O", "K2S", "CuO", "Cu2O", "NiO", "ZnO", "Si", "Cu", "Al", "Fe", "FeNi", "Ni3Al",
    "TiAl", "Mg2Si", "YBa2Cu3O7",
)
"""The composition models' tiny data set: a few dozen formulas that the count matrix encodes (at most 8 atoms
of one element), with one to four elements."""


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def compose_model(name: str, overrides: list[str] | None = None) -> DictConfig:
    """The ``model`` node of the project config composed with ``model=<name>`` and the given overrides."""
    GlobalHydra.instance().clear()
    with hydra.initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = hydra.compose(config_name="config", overrides=[f"model={name}", *(overrides or [])])
    return cfg.model


def tiny_config(name: str, overrides: list[str] | None = None) -> DictConfig:
    """The model's config shrunk by its own ``test_overrides`` (tiny widths, a learning rate that shows
    progress within a few dozen steps), so a new variant needs no entry in this file."""
    own = list(compose_model(name).get("test_overrides") or [])
    return compose_model(name, [*own, *(overrides or [])])


def build(cfg: DictConfig, representation: Any) -> GenerativeModule:
    """The model of ``cfg`` built with the fitted representation's sizes, as the train stage builds it."""
    return hydra.utils.instantiate(cfg.module, **representation.sizes())


def track_of(cfg: DictConfig) -> str:
    """A model config's track: its ``track`` key, ``crystal`` when absent."""
    return str(cfg.get("track") or "crystal")


@pytest.fixture(scope="module")
def codec() -> CrystalCodec:
    return CrystalCodec(max_atoms=8).fit(tiny_structures("train"))


@pytest.fixture(scope="module")
def batch(codec: CrystalCodec) -> dict[str, torch.Tensor]:
    return codec.encode(tiny_structures("train"))


@dataclass(frozen=True)
class TrackData:
    """A track's tiny data set for the contract test."""

    representation: Any
    batch: dict[str, torch.Tensor]
    seed_key: str
    """A field that samples from two generator seeds must differ in."""
    check_format: Callable[[dict[str, torch.Tensor], int, Any], None]
    decoded_types: tuple[type, ...]


def tiny_table(n: int = 40, seed: int = 0) -> np.ndarray:
    """The tabular models' tiny data set: three element fractions (the third absent in about a third of the
    rows) and a target that depends on the first."""
    rng = np.random.default_rng(seed)
    fractions = rng.dirichlet([3.0, 1.0, 0.5], size=n)
    fractions[rng.random(n) < 0.3, 2] = 0.0
    fractions /= fractions.sum(axis=1, keepdims=True)
    return np.column_stack([fractions, 50.0 * fractions[:, 0] + rng.normal(size=n)])


@pytest.fixture(scope="module")
def tracks(codec: CrystalCodec, batch: dict[str, torch.Tensor]) -> dict[str, TrackData]:
    counts = CompositionCounts().fit(TINY_FORMULAS)
    table = ModeSpecificNormalizer(max_modes=3, seed=0).fit(tiny_table())
    return {
        "crystal": TrackData(codec, batch, "lattice", assert_batch_format, (Structure, DecodeFailure)),
        "composition": TrackData(counts, counts.encode(TINY_FORMULAS), "counts", assert_counts_format,
                                 (str, DecodeFailure)),
        "tabular": TrackData(table, table.encode(tiny_table()), "rows", assert_rows_format, (np.ndarray,)),
    }


class _LossHistory(pl.Callback):
    """Records the logged ``train/loss`` after every training batch."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self.values.append(float(trainer.callback_metrics["train/loss"]))


def make_trainer(max_steps: int, callbacks: list[pl.Callback] | None = None) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks or [],
    )


def fixed_batches(batch: dict[str, torch.Tensor], n: int) -> torch.utils.data.DataLoader:
    """A loader yielding the same full batch ``n`` times."""
    return torch.utils.data.DataLoader([batch] * n, batch_size=None)


def assert_batch_format(out: dict[str, torch.Tensor], n: int, codec: CrystalCodec) -> None:
    types = out["atom_types"]
    assert types.shape == (n, codec.max_atoms, codec.num_types)
    assert out["frac_coords"].shape == (n, codec.max_atoms, 3)
    assert out["lattice"].shape == (n, 6)
    assert out["mask"].shape == (n, codec.max_atoms)
    assert all(v.dtype == torch.float32 for v in out.values())
    assert torch.all(types.sum(-1) == 1) and torch.all((types == 0) | (types == 1))
    assert torch.equal(out["mask"], 1.0 - types[..., 0])
    assert torch.all(out["frac_coords"] >= 0) and torch.all(out["frac_coords"] < 1)
    assert torch.all(out["frac_coords"][out["mask"] == 0] == 0)


def assert_counts_format(out: dict[str, torch.Tensor], n: int, representation: CompositionCounts) -> None:
    """A composition sample: ``counts`` ``[n, E, L]`` float32, one-hot or probabilities over the levels."""
    sizes = representation.sizes()
    counts = out["counts"]
    assert counts.shape == (n, sizes["num_elements"], sizes["num_levels"])
    assert counts.dtype == torch.float32 and torch.all(torch.isfinite(counts)) and torch.all(counts >= 0)
    torch.testing.assert_close(counts.sum(-1), torch.ones(n, sizes["num_elements"]))


def assert_rows_format(out: dict[str, torch.Tensor], n: int, representation: ModeSpecificNormalizer) -> None:
    """A table sample: ``rows`` ``[n, D]`` float32, each column's scalar in ``[-1, 1]``, its mode span
    one-hot."""
    rows = out["rows"]
    assert rows.shape == (n, representation.encoded_width) and rows.dtype == torch.float32
    offset = 0
    for k in representation.modes:
        assert torch.all(rows[:, offset].abs() <= 1.0)
        span = rows[:, offset + 1: offset + 1 + k]
        assert torch.all((span == 0) | (span == 1)) and torch.all(span.sum(dim=1) == 1)
        offset += 1 + k


def test_registry_matches_configs() -> None:
    names = {p.stem for p in (CONF_DIR / "model").glob("*.yaml")}
    assert names == set(MODELS)
    for name in names:
        cfg = compose_model(name)
        assert cfg.name == name
        cls = hydra.utils.get_class(cfg.module._target_)
        assert cls is MODELS[name]
        assert cls.family == cfg.family and cls.paper
        assert (REPO_ROOT / "models" / "cards" / cfg.card).is_file()
        assert cfg.get("test_overrides"), f"conf/model/{name}.yaml needs test_overrides (tiny widths)"


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_contract(name: str, tracks: dict[str, TrackData], tmp_path: Path) -> None:
    """Train on one fixed batch, sample, decode, checkpoint, reload, and sample identically.

    Progress: for likelihood-style models (VAE, DDPM, RealNVP) the logged ``train/loss`` falls. For the
    WGAN-GP ``train/loss`` is the critic objective ``E[D(fake)] - E[D(real)] + lambda * GP``; a GAN has no
    loss that must fall overall, but in the first steps the critic learns to separate data from the untrained
    generator, so its objective falls (the Wasserstein estimate grows) just as a likelihood loss would.
    """
    pl.seed_everything(0, verbose=False)
    cfg = tiny_config(name)
    data = tracks[track_of(cfg)]
    representation, batch = data.representation, data.batch
    model = build(cfg, representation)
    assert type(model) is MODELS[name] and model.num_parameters() > 0
    model.fit_data(batch)

    history = _LossHistory()
    trainer = make_trainer(TRAIN_STEPS, [history, *model_callbacks(cfg)])
    trainer.fit(model, fixed_batches(batch, TRAIN_STEPS))
    losses = history.values
    assert losses and all(math.isfinite(v) for v in losses)
    head, tail = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert tail < head, f"{name}: train/loss did not fall ({head:.4f} -> {tail:.4f})"

    (validated,) = trainer.validate(model, fixed_batches(batch, 1), verbose=False)
    assert math.isfinite(validated["val/loss"])

    n = 6
    first = model.sample(n, generator=torch.Generator().manual_seed(123))
    again = model.sample(n, generator=torch.Generator().manual_seed(123))
    other = model.sample(n, generator=torch.Generator().manual_seed(7))
    data.check_format(first, n, representation)
    for key in first:
        assert torch.equal(first[key], again[key]), f"{name}: sampling is not deterministic in {key}"
    key = data.seed_key
    assert not torch.equal(first[key], other[key]), f"{name}: the generator seed is ignored"

    decoded = representation.decode(first)
    assert len(decoded) == n
    assert all(isinstance(s, data.decoded_types) for s in decoded)

    path = tmp_path / f"{name}.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=True)["state_dict"]
    fresh = build(cfg, representation)  # no fit_data: what it learnt from the data is in its checkpoint
    fresh.load_state_dict(state)
    reloaded = fresh.sample(n, generator=torch.Generator().manual_seed(123))
    for key in first:
        assert torch.equal(first[key], reloaded[key]), f"{name}: reloaded weights sample differently ({key})"


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_unconditional_models_reject_conditions(name: str, tracks: dict[str, TrackData]) -> None:
    cfg = tiny_config(name)
    model = build(cfg, tracks[track_of(cfg)].representation)
    with pytest.raises(ValueError, match="unconditional"):
        model.sample(2, condition=torch.zeros(2, 1))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_parameter_gets_a_gradient(name: str, tracks: dict[str, TrackData]) -> None:
    """No dead parameters: DDP (``trainer=ddp``) refuses parameters that never receive a gradient."""
    torch.manual_seed(0)
    cfg = tiny_config(name)
    data = tracks[track_of(cfg)]
    batch = data.batch
    model = build(cfg, data.representation)
    model.fit_data(batch)
    sum(model.training_objectives(batch)).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None]
    assert not dead, f"{name}: parameters without gradient: {dead}"


def _random_batch(num_types: int, max_atoms: int, size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    classes = torch.randint(0, num_types, (size, max_atoms), generator=g)
    return {
        "atom_types": torch.nn.functional.one_hot(classes, num_types).float(),
        "frac_coords": torch.rand(size, max_atoms, 3, generator=g),
        "lattice": torch.randn(size, 6, generator=g),
    }


def test_backbone_is_permutation_equivariant() -> None:
    torch.manual_seed(0)
    net = CrystalTransformer(
        num_types=5, max_atoms=7, d_model=16, n_layers=2, n_heads=2, cond_dim=3, pooled_dim=4
    )
    net.eval()
    data = _random_batch(5, 7, size=3)
    cond = torch.randn(3, 3)
    perm = torch.randperm(7)
    permuted = {k: (v[:, perm] if v.dim() == 3 else v) for k, v in data.items()}
    out, out_p = net(data, cond=cond), net(permuted, cond=cond)
    for key in ("atom_types", "frac_coords"):
        torch.testing.assert_close(out_p[key], out[key][:, perm], atol=1e-5, rtol=1e-5)
    for key in ("lattice", "pooled"):
        torch.testing.assert_close(out_p[key], out[key], atol=1e-5, rtol=1e-5)
    # Periodic input: shifting a coordinate by a whole cell changes nothing.
    shifted = {**data, "frac_coords": data["frac_coords"] + 1.0}
    torch.testing.assert_close(net(shifted, cond=cond)["pooled"], out["pooled"], atol=1e-4, rtol=1e-4)


def test_backbone_slot_embeddings_break_symmetry_and_padding_hides_slots() -> None:
    torch.manual_seed(0)
    data = _random_batch(4, 6, size=2)
    perm = torch.tensor([1, 0, 2, 3, 4, 5])
    permuted = {k: (v[:, perm] if v.dim() == 3 else v) for k, v in data.items()}
    slotted = CrystalTransformer(4, 6, d_model=16, n_layers=1, n_heads=2, slot_embeddings=True).eval()
    assert not torch.allclose(slotted(permuted)["lattice"], slotted(data)["lattice"])
    generator_net = CrystalTransformer(
        4, 6, d_model=16, n_layers=1, n_heads=2, cond_dim=3, slot_embeddings=True
    )
    assert generator_net(None, cond=torch.randn(2, 3))["atom_types"].shape == (2, 6, 4)

    encoder = CrystalTransformer(
        4, 6, d_model=16, n_layers=1, n_heads=2, pooled_dim=3, field_heads=False
    ).eval()
    padding = torch.zeros(2, 6, dtype=torch.bool)
    padding[:, 4:] = True
    changed = {k: v.clone() for k, v in data.items()}
    changed["frac_coords"][:, 4:] = 0.123
    torch.testing.assert_close(
        encoder(changed, padding_mask=padding)["pooled"], encoder(data, padding_mask=padding)["pooled"]
    )


def test_nan_loss_raises_non_finite_loss_error(
    codec: CrystalCodec, batch: dict[str, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = build(tiny_config("vae"), codec)

    def nan_loss(_batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"loss": torch.tensor(float("nan"), requires_grad=True)}

    monkeypatch.setattr(model, "loss", nan_loss)
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 0"):
        make_trainer(3).fit(model, fixed_batches(batch, 3))


def test_nan_critic_loss_raises_in_manual_optimisation(
    codec: CrystalCodec, batch: dict[str, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = build(tiny_config("wgan_gp"), codec)
    nan = torch.tensor(float("nan"), requires_grad=True)
    monkeypatch.setattr(model, "critic_terms", lambda *a, **k: {"critic": nan, "wasserstein": nan, "gp": nan})
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 0"):
        make_trainer(3).fit(model, fixed_batches(batch, 3))


def test_cosine_schedule_and_respacing() -> None:
    alpha_bars = cosine_alpha_bars(1000)
    assert alpha_bars.shape == (1000,)
    assert torch.all(alpha_bars[1:] < alpha_bars[:-1])
    assert 0.99 < alpha_bars[0] < 1.0 and alpha_bars[-1] < 1e-4
    assert respaced_timesteps(1000, None) == list(range(1000))
    steps = respaced_timesteps(1000, 50)
    assert len(steps) == 50 and steps[0] == 0 and steps[-1] == 999


@pytest.mark.parametrize("sampler", [AncestralSampler(steps=20), DDIMSampler(steps=10, eta=0.5)])
def test_samplers_are_deterministic_and_recover_a_point_mass(sampler: Any) -> None:
    """With the exact noise predictor of a point mass at ``x0``, every sampler must land on ``x0``."""
    T = 100
    processes = {"a": VPGaussian(T, clip=1.0), "b": VPGaussian(T)}
    target = {"a": torch.full((4, 3, 2), 0.5), "b": torch.full((4, 6), -2.0)}
    shapes = {k: tuple(v.shape) for k, v in target.items()}

    def exact(x_t: dict[str, torch.Tensor], t: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for key, value in x_t.items():
            a = processes[key].alpha_bars[t].view(-1, *([1] * (value.dim() - 1)))
            out[key] = (value - a.sqrt() * target[key]) / (1 - a).sqrt()
        return out

    def run() -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(0)
        x = {k: processes[k].prior(shapes[k], g, torch.device("cpu")) for k in sorted(shapes)}

        def noise() -> dict[str, torch.Tensor]:
            return {k: torch.randn(shapes[k], generator=g) for k in sorted(shapes)}

        return sampler(exact, processes, x, T, noise)

    first, second = run(), run()
    for key in target:
        assert torch.equal(first[key], second[key])
        torch.testing.assert_close(first[key], target[key], atol=1e-3, rtol=1e-3)


def test_sampler_is_swappable_by_config(codec: CrystalCodec) -> None:
    cfg = tiny_config("ddpm", ["sampler@model.module.sampler=ddim", "model.module.sampler.steps=5"])
    model = build(cfg, codec)
    assert isinstance(model.sampler, DDIMSampler) and model.sampler.steps == 5
    out = model.sample(3, generator=torch.Generator().manual_seed(0))
    assert_batch_format(out, 3, codec)


def test_learning_rate_schedule_from_config_is_stepped(
    codec: CrystalCodec, batch: dict[str, torch.Tensor]
) -> None:
    """``scheduler@model.scheduler=cosine`` reaches the optimiser: after S of T steps the learning rate is
    ``lr (1 + cos(pi S / T)) / 2``; a manually optimised GAN refuses a schedule."""
    from bench.train import build_module

    steps, total = 10, 20
    cfg = tiny_config("flowmm", ["scheduler@model.scheduler=cosine", f"trainer.max_steps={total}"])
    model = build_module(cfg, {"num_types": codec.num_types, "max_atoms": codec.max_atoms})
    model.fit_data(batch)
    trainer = make_trainer(steps)
    trainer.fit(model, fixed_batches(batch, steps))
    lr0 = float(cfg.module.optimizer.lr)
    expected = lr0 * (1 + math.cos(math.pi * steps / total)) / 2
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="optimises manually"):
        build_module(tiny_config("wgan_gp", ["scheduler@model.scheduler=cosine"]),
                     {"num_types": codec.num_types, "max_atoms": codec.max_atoms})
