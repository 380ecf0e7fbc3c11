"""``matgenbench disentangle``: the Mutual Information Gap on latents whose answer is known, the perovskite
factor extractor on hand-built and real Perov-5 cells, the latent each VAE-family model is scored on, and the
command end to end on a tiny trained run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from bench.config import compose
from bench.crystal_factors import (
    ANIONS,
    NotAPerovskiteError,
    perovskite_factors,
    perovskite_sites,
    quantile_bins,
)
from bench.disentangle import latent_codes, main, score_latents
from bench.mig import (
    discrete_entropy,
    discrete_mutual_information,
    discretise,
    independence_bias,
    mutual_information_gap,
    mutual_information_matrix,
)

pytestmark = pytest.mark.usefixtures("one_thread")

BINS = 20
N = 4000
CATEGORIES = (4, 7, 10)  # values of the three synthetic factors


def _factors(seed: int = 0) -> np.ndarray:
    """``[N, 3]`` independent uniform factors with :data:`CATEGORIES` values."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, c, N) for c in CATEGORIES], axis=1)


def _mig(latents: np.ndarray, factors: np.ndarray) -> tuple[float, list]:
    mi = mutual_information_matrix(discretise(latents, BINS), factors)
    entropies = np.array([discrete_entropy(factors[:, k]) for k in range(factors.shape[1])])
    return mutual_information_gap(mi, entropies)


def _noise_bound(categories: int, entropy: float) -> float:
    """Largest normalised plug-in MI allowed for a dimension independent of a factor: ``2 N I_hat`` is
    asymptotically chi-square with ``m = (BINS - 1)(categories - 1)`` degrees of freedom, so the bound is its
    mean plus four standard deviations, ``(m + 4 sqrt(2 m)) / (2 N)``, over ``H(v)``."""
    m = (BINS - 1) * (categories - 1)
    return (m + 4.0 * math.sqrt(2.0 * m)) / (2.0 * N) / entropy


# ---------------------------------------------------------------------------------------------- the estimator
def test_discrete_mutual_information_equals_a_hand_computed_table() -> None:
    """Counts n(0,0) = 2, n(0,1) = 1, n(1,1) = 1: p(x) = (3/4, 1/4), p(y) = (1/2, 1/2), so
    I = 1/2 log(4/3) + 1/4 log(2/3) + 1/4 log 2 = (3/4) log(4/3) nats."""
    from sklearn.metrics import mutual_info_score

    x, y = np.array([0, 0, 0, 1]), np.array([0, 0, 1, 1])
    expected = 0.75 * math.log(4.0 / 3.0)
    assert discrete_mutual_information(x, y) == pytest.approx(expected, abs=1e-15)
    assert discrete_mutual_information(y, x) == pytest.approx(expected, abs=1e-15)
    assert mutual_info_score(x, y) == pytest.approx(expected, abs=1e-15)  # an independent implementation
    assert discrete_mutual_information(np.array(["Sr", "Sr", "Sr", "Ba"]), np.array([7, 7, 3, 3])) == \
        pytest.approx(expected, abs=1e-15)  # labels of any kind
    assert discrete_entropy(x) == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)), abs=1e-15)
    assert discrete_mutual_information(x, x) == pytest.approx(discrete_entropy(x), abs=1e-15)
    assert discrete_mutual_information(np.array([0, 1, 0, 1]), np.array([0, 0, 1, 1])) == 0.0


def test_discretise_cuts_each_column_into_equal_width_bins_over_its_own_range() -> None:
    values = np.array([[0.0, 5.0, 3.0], [0.5, 5.0, 1.0], [1.0, 5.0, 2.0], [10.0, 5.0, 0.0]])
    binned = discretise(values, 2)
    assert binned[:, 0].tolist() == [0, 0, 0, 1]  # edges 0, 5, 10: the maximum falls in the last bin
    assert binned[:, 1].tolist() == [0, 0, 0, 0]  # a constant column
    assert binned[:, 2].tolist() == [1, 0, 1, 0]  # edges 0, 1.5, 3
    ints = np.arange(10, dtype=float)[:, None] * 0.37 - 2.0  # 10 values of a factor, scaled and shifted
    assert len(np.unique(discretise(ints, BINS))) == 10  # each in a bin of its own
    with pytest.raises(ValueError, match="NaN"):
        discretise(np.array([[0.0], [np.nan]]), BINS)


def test_mig_is_one_when_each_factor_is_copied_into_its_own_dimension() -> None:
    v = _factors()
    rng = np.random.default_rng(1)
    z = rng.standard_normal((N, 8))
    z[:, 0], z[:, 3], z[:, 5] = v[:, 0], 0.37 * v[:, 1] + 2.0, -v[:, 2]  # affine copies: bins ignore scale
    mig, rows = _mig(z, v)
    assert [r.best_dim for r in rows] == [0, 3, 5]
    for r in rows:
        assert r.best_mi == pytest.approx(r.entropy, abs=1e-12)  # the copy carries the whole factor
    tolerance = max(_noise_bound(c, r.entropy) for c, r in zip(CATEGORIES, rows, strict=True))
    assert 1.0 - tolerance <= mig <= 1.0
    assert mig < 1.0  # the second best is a finite-sample estimate of zero, biased upwards


def test_mig_is_near_zero_when_no_dimension_depends_on_the_factors() -> None:
    v = _factors()
    z = np.random.default_rng(2).standard_normal((N, 8))
    mig, rows = _mig(z, v)
    for c, r in zip(CATEGORIES, rows, strict=True):
        assert 0.0 <= r.gap <= r.best_mi / r.entropy <= _noise_bound(c, r.entropy)
    assert mig <= np.mean([_noise_bound(c, r.entropy) for c, r in zip(CATEGORIES, rows, strict=True)])
    expected = independence_bias(BINS, CATEGORIES[2], N)  # E[I_hat] for the 10-value factor
    mean_mi = np.mean([discrete_mutual_information(discretise(z, BINS)[:, j], v[:, 2]) for j in range(8)])
    assert 0.5 * expected < mean_mi < 1.5 * expected  # the plug-in bias is the stated one


def test_mig_is_exactly_zero_when_two_dimensions_carry_the_same_copy() -> None:
    v = _factors()
    z = np.random.default_rng(3).standard_normal((N, 7))
    for k in range(3):
        z[:, 2 * k] = z[:, 2 * k + 1] = v[:, k]
    mig, rows = _mig(z, v)
    assert mig == 0.0
    assert all(r.gap == 0.0 and r.best_mi == r.second_mi == pytest.approx(r.entropy) for r in rows)
    assert [(r.best_dim, r.second_dim) for r in rows] == [(0, 1), (2, 3), (4, 5)]


def test_mutual_information_gap_leaves_out_a_constant_factor_and_needs_two_dimensions() -> None:
    mig, rows = mutual_information_gap(np.array([[0.6, 0.0], [0.2, 0.0]]), np.array([0.8, 0.0]), ["a", "b"])
    assert mig == pytest.approx(0.5) and rows[0].gap == pytest.approx(0.5) and math.isnan(rows[1].gap)
    with pytest.raises(ValueError, match="D >= 2"):
        mutual_information_gap(np.array([[0.6]]), np.array([0.8]))


# --------------------------------------------------------------------------------------- the factor extractor
_CORNER_A = ((0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0), (0.5, 0, 0.5), (0, 0.5, 0.5))  # A, B, X, X, X
_CORNER_B = ((0.5, 0.5, 0.5), (0, 0, 0), (0.5, 0, 0), (0, 0.5, 0), (0, 0, 0.5))


def _cell(species: list[str], coords: tuple, a: float = 3.905) -> Structure:
    return Structure(Lattice.cubic(a), species, coords)


def test_the_extractor_reads_srtio3_in_either_setting_displaced_and_shuffled() -> None:
    for coords in (_CORNER_A, _CORNER_B):
        sites = perovskite_sites(_cell(["Sr", "Ti", "O", "O", "O"], coords))
        assert (sites.a_site, sites.b_site, sites.anions, sites.axes) == ("Sr", "Ti", "O3", (0, 1, 2))
        assert sites.lattice_constant == pytest.approx(3.905)
    # a polar displacement along x (as many Perov-5 cells have): read on the two other axes
    displaced = np.array(_CORNER_B, dtype=float)
    displaced[:, 0] += np.array([0.13, -0.07, 0.21, 0.04, -0.16])
    sites = perovskite_sites(_cell(["Sr", "Ti", "O", "O", "O"], tuple(map(tuple, displaced))))
    assert (sites.a_site, sites.b_site, sites.axes) == ("Sr", "Ti", (1, 2))
    # site order, origin and axis order do not matter; a mixed anion set is a multiset
    order = [4, 1, 3, 0, 2]
    shuffled = (np.array(_CORNER_A)[order][:, [2, 0, 1]] + np.array([0.25, 0.5, 0.1])) % 1.0
    species = np.array(["Ba", "Ta", "O", "N", "O"])[order].tolist()
    sites = perovskite_sites(_cell(species, tuple(map(tuple, shuffled)), 4.11))
    assert (sites.a_site, sites.b_site, sites.anions) == ("Ba", "Ta", "NO2")


def test_the_extractor_refuses_what_is_no_abx3_cell() -> None:
    rocksalt = Structure(Lattice.cubic(5.64), ["Na", "Cl"], [(0, 0, 0), (0.5, 0.5, 0.5)])
    with pytest.raises(NotAPerovskiteError, match="sites"):
        perovskite_sites(rocksalt)
    with pytest.raises(NotAPerovskiteError, match="cubic"):
        perovskite_sites(Structure(Lattice.tetragonal(3.9, 4.2), ["Sr", "Ti", "O", "O", "O"], _CORNER_A))
    with pytest.raises(NotAPerovskiteError, match="anion"):
        perovskite_sites(_cell(["Sr", "Ti", "Cl", "Cl", "Cl"], _CORNER_A))
    off_grid = ((0, 0, 0), (0.5, 0.5, 0.5), (0.1, 0.2, 0.3), (0.2, 0.3, 0.1), (0.3, 0.1, 0.2))
    with pytest.raises(NotAPerovskiteError, match="no axis"):
        perovskite_sites(_cell(["Sr", "Ti", "O", "O", "O"], off_grid))
    # x says the first cation is B (one anion half a cell away), y says the second: refused, not guessed
    conflicting = ((0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0, 0.1), (0, 0.5, 0.2), (0, 0.5, 0.3))
    with pytest.raises(NotAPerovskiteError, match="disagree"):
        perovskite_sites(_cell(["Sr", "Ti", "O", "O", "O"], conflicting))
    table = perovskite_factors([rocksalt, _cell(["Sr", "Ti", "O", "O", "O"], _CORNER_A),
                                _cell(["Ca", "Ti", "O", "O", "O"], _CORNER_A, 3.84)], lattice_quantiles=2)
    assert table.kept == [1, 2] and sum(table.left_out.values()) == 1
    assert table.labels[:, :3].tolist() == [["Sr", "Ti", "O3"], ["Ca", "Ti", "O3"]]
    assert table.labels[:, 3].tolist() == [1, 0]  # 3.905 above the median of the two, 3.84 below


def test_quantile_bins_hold_equal_counts() -> None:
    bins, edges = quantile_bins(np.arange(100.0)[::-1], 10)
    assert np.bincount(bins).tolist() == [10] * 10 and len(edges) == 9
    assert bins[0] == 9 and bins[-1] == 0


def test_the_extractor_reads_every_real_perov5_test_cell(data_dir: Path, tmp_path: Path) -> None:
    """Every Perov-5 test cell is read. Where all sites sit on the ideal positions, the B site found by the
    offset rule is the octahedral one (six anions within 0.6 a) and the A site has none that close, which is
    the textbook definition of the two sites, checked here independently of the rule. The assignment does not
    change under a shift of the origin and a permutation of the axes."""
    from bench.datasets import load_split

    split = load_split("perov_5", "test", data_dir=data_dir, cache_dir=tmp_path, download=False)
    structures = split.structures
    assert len(structures) > 3000
    table = perovskite_factors(structures)
    assert table.kept == list(range(len(structures))) and not table.left_out
    assert sorted(set(table.labels[:, 2])) == ["FNO", "FO2", "N2O", "N3", "NO2", "O2S", "O3"]
    assert np.ptp(np.bincount(table.labels[:, 3].astype(int))) <= 1  # deciles of equal counts
    checked = 0
    rng = np.random.default_rng(0)
    for i, structure in enumerate(structures):
        sites = perovskite_sites(structure)
        assert (sites.a_site, sites.b_site) == tuple(table.labels[i, :2])
        if i < 300:  # invariance: origin shift and axis permutation
            perm = rng.permutation(3)
            moved = Structure(Lattice.cubic(structure.lattice.a), structure.species,
                              (structure.frac_coords[:, perm] + rng.uniform(0, 1, 3)) % 1.0)
            again = perovskite_sites(moved)
            assert (again.a_site, again.b_site) == (sites.a_site, sites.b_site)
        if len(sites.axes) < 3 or sites.a_site == sites.b_site:
            continue
        a = structure.lattice.a
        for site in structure:
            if site.specie.symbol in ANIONS:
                continue
            close = sum(nb.specie.symbol in ANIONS for nb in structure.get_neighbors(site, 0.6 * a))
            assert close == (6 if site.specie.symbol == sites.b_site else 0), (i, structure.formula)
        checked += 1
    assert checked > 1000


# ------------------------------------------------------------------------------------- the latent of a model
@pytest.fixture(scope="module")
def tiny_batch() -> tuple:
    from bench.datasets.codec import CrystalCodec
    from bench.datasets.tiny import tiny_structures

    codec = CrystalCodec(max_atoms=8).fit(tiny_structures("train"))
    encoded = codec.encode(tiny_structures("train"))
    return codec, {k: torch.as_tensor(v) for k, v in encoded.items() if hasattr(v, "shape")}


def _tiny_module(name: str, sizes: dict) -> torch.nn.Module:
    from bench.train import build_module

    own = list(compose([f"model={name}"]).model.get("test_overrides") or [])
    torch.manual_seed(0)
    module = build_module(compose([f"model={name}", *own]).model, sizes)
    return module.eval()


def test_each_vae_latent_is_read_where_the_model_reads_it(tiny_batch: tuple) -> None:
    codec, batch = tiny_batch
    n = batch["lattice"].shape[0]
    vae = _tiny_module("vae", codec.sizes())
    codes = latent_codes(vae, batch)
    mu, logvar = vae.encode(batch)
    assert np.allclose(codes.continuous, mu.detach().numpy(), atol=1e-6)
    assert np.allclose(codes.std, torch.exp(0.5 * logvar).detach().numpy(), atol=1e-6)
    assert codes.discrete.shape == (n, 0)
    cdvae = _tiny_module("cdvae", codec.sizes())
    assert np.allclose(latent_codes(cdvae, batch).continuous,
                       cdvae.encode(*cdvae.data_fields(batch))[0].detach().numpy(), atol=1e-6)
    tcvae = _tiny_module("beta_tcvae", codec.sizes())
    params = tcvae.posterior_params(*tcvae.data_fields(batch))
    assert np.allclose(latent_codes(tcvae, batch).continuous,
                       tcvae.latent.posterior(params)[1]["mu"].detach().numpy(), atol=1e-6)
    joint = _tiny_module("joint_vae", codec.sizes())
    codes = latent_codes(joint, batch)
    z, _ = joint.latent.posterior(joint.posterior_params(*joint.data_fields(batch)))  # eval: exact one-hot
    cont = joint.latent.cont_dim
    assert codes.continuous.shape == (n, cont) and codes.discrete.shape == (n, 1)
    assert codes.discrete[:, 0].tolist() == z[:, cont:].argmax(-1).tolist()
    assert codes.names[-1] == "c0"
    vq = _tiny_module("vq_vae", codec.sizes())
    codes = latent_codes(vq, batch)
    assert codes.continuous.shape == (n, vq.latent.groups * vq.latent.code_dim) and codes.std is None
    with pytest.raises(TypeError, match="no encoder"):
        latent_codes(_tiny_module("ddpm", codec.sizes()), batch)


def test_a_collapsed_dimension_scores_on_its_mean_but_not_on_a_posterior_draw() -> None:
    """z0's mean is a copy of factor 0 scaled by 1e-3 under posterior noise of scale 1 (a dimension collapsed
    to the prior): its binned mean carries the whole factor, a posterior draw next to nothing. z1 copies
    factor 1 with negligible noise, and the discrete c0 copies factor 2: both readings see them whole."""
    from bench.disentangle import LatentCodes

    v = _factors()
    rng = np.random.default_rng(4)
    mean = np.stack([1e-3 * v[:, 0], v[:, 1] + 0.0, rng.standard_normal(N)], axis=1)
    std = np.stack([np.ones(N), np.full(N, 1e-6), np.full(N, 0.5)], axis=1)
    codes = LatentCodes(mean, v[:, 2:3].astype(np.int64), "test", std)
    result = score_latents(codes, v.astype(object), ["f0", "f1", "f2"], BINS)
    assert [r["best_dim"] for r in result["factors"]] == ["z0", "z1", "c0"]
    assert all(r["best_mi"] == pytest.approx(r["entropy"]) for r in result["factors"])
    assert result["latent"]["active_dims"] == 2  # z0's mean varies by 1e-6 over the crystals: inactive
    draw = result["posterior_draw"]["factors"]
    assert draw[0]["best_mi"] / draw[0]["entropy"] <= _noise_bound(CATEGORIES[0], draw[0]["entropy"])
    assert draw[1]["best_dim"] == "z1" and draw[1]["best_mi"] == pytest.approx(draw[1]["entropy"])
    assert draw[2]["best_dim"] == "c0" and draw[2]["best_mi"] == pytest.approx(draw[2]["entropy"])
    assert result["mig"] > 0.98 and result["posterior_draw"]["mig"] < 0.7
    assert result["mutual_information"]["dims"] == ["z0", "z1", "z2", "c0"]


# ------------------------------------------------------------------------------------------------ the command
def test_the_command_scores_a_tiny_vae_run_and_refuses_what_it_cannot_score(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    from bench.rundirs import default_run_dir
    from bench.train import train

    def cfg(*overrides: str):  # noqa: ANN202
        return compose(["dataset=tiny", "logger=none", "trainer.max_steps=4",
                        "trainer.enable_progress_bar=false", "train.batch_size=8",
                        f"paths.output_dir={tmp_path / 'outputs'}", *overrides])

    vae = cfg("model=vae", "model.module.backbone.d_model=16", "model.module.backbone.n_layers=1",
              "model.module.backbone.n_heads=2", "model.module.latent_dim=6")
    train(vae)
    run_dir = default_run_dir(vae)
    # the tiny dataset has no factors of its own: one line
    assert main([str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no ground-truth factors are defined for dataset tiny" in err[0]
    # asked by name, the perovskite factors score the tiny training split's perovskites
    assert main([str(run_dir), "--split", "train", "--factors", "perovskite", "--bins", "4"]) == 0
    out = capsys.readouterr().out
    assert "MIG =" in out and "A-site element" in out and "lattice constant" in out
    assert "posterior draw" in out
    record = json.loads((run_dir / "disentanglement.json").read_text())
    from bench.datasets.tiny import tiny_structures

    perovskites = sum(len(s) == 5 for s in tiny_structures("train"))
    assert record["n_scored"] == perovskites and record["n_structures"] == len(tiny_structures("train"))
    assert sum(record["left_out"].values()) == record["n_structures"] - perovskites
    assert record["model"] == "vae" and record["estimator"]["bins"] == 4 and record["split"] == "train"
    assert record["latent"]["continuous_dims"] == 6 and len(record["mutual_information"]["nats"]) == 6
    assert [r["factor"] for r in record["factors"]] == ["A-site element", "B-site element", "anions",
                                                         "lattice constant"]
    gaps = [r["gap"] for r in record["factors"] if r["gap"] is not None]
    assert 0.0 <= record["mig"] <= 1.0 and record["mig"] == pytest.approx(float(np.mean(gaps)))
    assert 0.0 <= record["posterior_draw"]["mig"] <= 1.0 and len(record["latent"]["mean_variance"]) == 6
    assert not list(run_dir.glob(".disentanglement.json.*"))  # written atomically, nothing left behind
    # a model with no encoder: one line
    ddpm = cfg("model=ddpm", "model.module.backbone.d_model=16", "model.module.backbone.n_layers=1",
               "model.module.backbone.n_heads=2", "model.module.timesteps=100", "model.module.time_dim=16")
    train(ddpm)
    assert main([str(default_run_dir(ddpm)), "--factors", "perovskite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no encoder" in err[0]
    assert not (default_run_dir(ddpm) / "disentanglement.json").exists()
    assert main([str(tmp_path / "nowhere")]) == 2
