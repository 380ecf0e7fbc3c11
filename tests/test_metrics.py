"""Golden-value tests of the metric suite on hand-built structures (CDVAE definitions)."""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import yaml
from pymatgen.core import Lattice, Structure
from scipy.stats import wasserstein_distance

from bench.metrics import (
    REGISTRY,
    GeneratedSet,
    Metric,
    MetricSettings,
    ReferenceSet,
    build_metric,
    check_composition,
    check_construction,
    check_structure,
    run_metrics,
)
from bench.metrics.composition import composition_counts
from bench.metrics.settings import DEFAULT_NAMES, FINGERPRINT_NAMES, IMPLIED_METRICS, with_implied

REPO_ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------- structures


@functools.cache
def _rocksalt(a: float, cation: str, anion: str) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [cation, anion], [[0, 0, 0], [0.5, 0.5, 0.5]])


def rocksalt(a: float = 5.64, cation: str = "Na", anion: str = "Cl") -> Structure:
    """Conventional 8-atom rock-salt cell."""
    return _rocksalt(a, cation, anion).copy()


def perovskite(a: float = 3.905, a_site: str = "Sr", b_site: str = "Ti") -> Structure:
    coords = [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    return Structure(Lattice.cubic(a), [a_site, b_site, "O", "O", "O"], coords)


def too_close() -> Structure:
    """Two atoms 0.3 Å apart."""
    return Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [0.06, 0, 0]])


def displaced(structure: Structure, index: int, shift: float) -> Structure:
    s = structure.copy()
    s.translate_sites([index], [shift, 0, 0], frac_coords=False)
    return s


def jittered(structure: Structure, sigma: float, seed: int = 0) -> Structure:
    rng = np.random.default_rng(seed)
    cart = structure.cart_coords + rng.normal(0.0, sigma, (len(structure), 3))
    return Structure(structure.lattice, structure.species, cart, coords_are_cartesian=True)


def with_density(structure: Structure, density: float) -> Structure:
    """The same structure isotropically scaled to a target density."""
    s = structure.copy()
    s.scale_lattice(structure.volume * float(structure.density) / density)
    return s


def values(generated, reference, **cfg) -> dict[str, float]:
    return run_metrics(generated, reference, cfg=cfg or None, progress=False).values()


@pytest.fixture(scope="module")
def ref() -> ReferenceSet:
    return ReferenceSet("toy", train=[perovskite(a_site="Ba"), rocksalt()], test=[rocksalt(), perovskite()])


# ------------------------------------------------------------------------------------------------- config


def test_yaml_mirrors_code_defaults():
    cfg = yaml.safe_load((REPO_ROOT / "conf" / "metrics" / "default.yaml").read_text())
    assert MetricSettings.from_mapping(cfg) == MetricSettings()
    assert tuple(cfg["names"]) == DEFAULT_NAMES
    # the rest are in conf/metrics/full.yaml; implied metrics (vun_rate) are registered but never named
    assert set(REGISTRY) == set(DEFAULT_NAMES + FINGERPRINT_NAMES) | set(IMPLIED_METRICS)


def test_omegaconf_mapping_accepted():
    omegaconf = pytest.importorskip("omegaconf")
    cfg = omegaconf.OmegaConf.create({"matcher": {"convention": "default"}, "distribution": {"seed": 3}})
    settings = MetricSettings.from_mapping(cfg)
    assert settings.matcher.kwargs == {} and settings.distribution.seed == 3
    assert settings.validity == MetricSettings().validity


@pytest.mark.parametrize(
    "cfg, match",
    [
        ({"validity": {"min_dist": 0.5}}, "min_dist"),
        ({"matcher": {"convention": "loose"}}, "loose"),
        ({"validity": {"comp_valid_mode": "fast"}}, "comp_valid_mode"),
        ({"nmaes": ["valid"]}, "nmaes"),
    ],
)
def test_bad_config_is_named(cfg, match):
    with pytest.raises(ValueError, match=match):
        MetricSettings.from_mapping(cfg)


def test_unknown_metric_name_lists_known(ref):
    with pytest.raises(ValueError, match="known metrics"):
        run_metrics([rocksalt()], ref, cfg={"names": ["validty"]}, progress=False)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_registry_entries_follow_protocol(name):
    metric = build_metric(name)
    assert isinstance(metric, Metric)
    assert (
        metric.name == name and metric.direction in ("max", "min") and metric.description and metric.version
    )


# ------------------------------------------------------------------------------------- structural validity


def test_two_atoms_03_apart_invalid_with_reason():
    check = check_structure(too_close())
    assert not check.valid
    assert check.reason == "too_close: 0.30 Å"
    assert check.min_distance == pytest.approx(0.3)


def test_rocksalt_and_perovskite_valid():
    for s in (rocksalt(), perovskite()):
        check = check_structure(s)
        assert check.valid and check.reason == "ok"
    assert check_structure(rocksalt()).min_distance == pytest.approx(5.64 / 2)


def test_single_atom_cell_follows_cdvae_unless_self_image():
    # CDVAE pads the diagonal of the distance matrix: a lone atom is valid however short its lattice.
    thin = Structure(Lattice.orthorhombic(0.3, 5, 5), ["Cu"], [[0, 0, 0]])
    assert check_structure(thin).valid
    check = check_structure(thin, self_image=True)
    assert not check.valid and check.reason == "too_close: 0.30 Å"


@pytest.mark.parametrize(
    "item, reason",
    [
        (None, "none"),
        (Structure(Lattice.cubic(0.4), ["Cu"], [[0, 0, 0]]), "volume"),
        (Structure(Lattice.cubic(3.0), ["Na", "Cl"], [[0, 0, 0], [np.nan, 0.5, 0.5]]), "non_finite"),
        (Structure(Lattice(np.zeros((3, 3))), ["Cu"], [[0, 0, 0]]), "non_positive_lattice"),
    ],
)
def test_not_constructed(item, reason):
    construction = check_construction(item)
    assert not construction.constructed and construction.reason.startswith(reason)
    check = check_structure(item)
    assert not check.valid and check.reason.startswith("not_constructed: " + reason)


def test_none_items_count_as_invalid(ref):
    v = values([rocksalt(), None, None, perovskite()], ref, names=["struct_valid", "comp_valid", "valid"])
    assert v == {"struct_valid": 0.5, "comp_valid": 0.5, "valid": 0.5}


def test_unconstructed_item_keeps_composition_verdict(ref):
    # CDVAE reads the composition from the atom types even when the lattice failed.
    tiny = Structure(Lattice.cubic(0.4), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    report = run_metrics([tiny], ref, cfg={"names": ["struct_valid", "comp_valid"]}, progress=False)
    row = report.per_sample.iloc[0]
    assert not row.constructed and not row.struct_valid and row.comp_valid
    assert report.counts["n_constructed"] == 0


# ----------------------------------------------------------------------------------- compositional validity


@pytest.mark.parametrize(
    "amounts, valid, reason",
    [
        ({"Na": 4, "Cl": 4}, True, "charge_balanced"),  # Na+ Cl-
        ({"Sr": 1, "Ti": 1, "O": 3}, True, "charge_balanced"),  # Sr2+ Ti4+ O2-
        ({"Na": 1, "Cl": 2}, False, "not_charge_balanced"),  # Na(+-1) + 2 Cl(odd states) is never 0
        ({"Na": 1, "O": 3}, False, "not_charge_balanced"),  # Na(+-1) + 3 O(+-1, +-2) is never 0
        ({"Cu": 3, "Au": 1}, True, "all_metals"),
        ({"Fe": 7}, True, "single_element"),
        ({"Fe": 2, "O": 3}, True, "charge_balanced"),
        # only neutral assignment is Mn(-2) I(+4): the anion Mn is less electronegative than the cation I
        ({"Mn": 2, "I": 1}, False, "pauling_failed"),
        ({"Ar": 1, "F": 2}, False, "not_charge_balanced"),  # Ar has no oxidation states
        # Pm has no Pauling electronegativity: smact 2.2.1 raised TypeError and CDVAE accepted the combination
        ({"Pm": 1, "Cl": 3}, True, "charge_balanced"),
    ],
)
def test_smact_rule_cases(amounts, valid, reason):
    check = check_composition(amounts)
    assert (check.valid, check.reason) == (valid, reason)


def test_counts_reduced_by_gcd_and_sorted_by_z():
    assert composition_counts({"O": 6, "Ti": 2, "Sr": 2}) == (("O", "Ti", "Sr"), (3, 1, 1))
    assert composition_counts({"Na": 1.5, "Cl": 1}) is None


def test_capped_mode_follows_diffcsp_cap():
    sto = {"Sr": 1, "Ti": 1, "O": 3}  # 2 * 5 * 4 = 40 oxidation-state combinations in the 2014 table
    assert check_composition(sto, mode="capped", max_combinations=40).valid
    capped = check_composition(sto, mode="capped", max_combinations=39)
    assert not capped.valid and capped.reason.startswith("too_many_combinations: 40")
    assert check_composition(sto, mode="cdvae", max_combinations=39).valid  # the cap applies to capped only


def test_an_unenumerable_composition_is_refused_in_cdvae_mode_and_invalid_when_capped():
    """Sixty elements have ~1e34 oxidation-state combinations: CDVAE's enumeration cannot finish (and the
    chunked flat index would overflow int64), so cdvae mode says so in one line; capped mode calls it
    invalid."""
    from pymatgen.core import Element

    many = {Element.from_Z(z).symbol: 1 for z in range(1, 72) if z not in (2, 10, 18, 36, 54)}
    many = dict(list(many.items())[:60])
    with pytest.raises(ValueError, match="cannot be enumerated.*mode='capped'"):
        check_composition(many, mode="cdvae")
    capped = check_composition(many, mode="capped")
    assert not capped.valid and capped.reason.startswith("too_many_combinations")


def test_oxidation_state_table_is_selectable():
    # Ca has +1 in SMACT's 2014 table (smact 2.2.1's, CDVAE's) but only +2 in the ICSD-2024 one (smact >= 3).
    assert check_composition({"Ca": 1, "F": 1}).valid
    assert check_composition({"Ca": 1, "F": 1}, smact_table="smact14").valid
    assert not check_composition({"Ca": 1, "F": 1}, smact_table="icsd24").valid


def _cdvae_rule_with_smact_calls(symbols, counts):
    """CDVAE's smact_validity written against the installed smact API, one smact call per combination."""
    import smact

    from bench.metrics.composition import _pauling_ok_cdvae

    elements = [smact.Element(s) for s in symbols]
    if len(symbols) == 1 or all(s in smact.metals for s in symbols):
        return True
    ox = [e.oxidation_states_smact14 or [] for e in elements]
    enegs = [e.pauling_eneg for e in elements]
    for states in itertools.product(*ox):
        ratios = smact.neutral_ratios(states, stoichs=[(c,) for c in counts], threshold=max(counts))
        if ratios and _pauling_ok_cdvae(states, enegs):
            return True
    return False


def test_vectorised_enumeration_agrees_with_smact_calls():
    import smact

    rng = random.Random(0)
    metals = [s for s in smact.ordered_elements(1, 94) if s in smact.metals]
    others = [s for s in smact.ordered_elements(1, 94) if s not in smact.metals]
    reasons = set()
    for _ in range(400):
        k = rng.choice([2, 3, 4])
        n_other = rng.randint(1, k)
        els = rng.sample(others, n_other) + rng.sample(metals, k - n_other)
        amounts = {e: rng.randint(1, 6) for e in els}
        check = check_composition(amounts, smact_table="smact14")  # the installed smact's 2014 table
        reasons.add(check.reason)
        assert check.valid == _cdvae_rule_with_smact_calls(*composition_counts(amounts)), amounts
    assert {"charge_balanced", "not_charge_balanced", "pauling_failed"} <= reasons


# --------------------------------------------------------------------------------------- unique and novel


def test_unique_duplicated_pair(ref):
    a = perovskite()
    assert values([a, a.copy()], ref, names=["unique"])["unique"] == 0.5
    report = run_metrics([a, a.copy(), rocksalt()], ref, cfg={"names": ["unique"]}, progress=False)
    assert report.metrics["unique"]["value"] == pytest.approx(2 / 3)
    assert report.per_sample["unique"].tolist() == [True, False, True]
    assert report.per_sample["duplicate_of"].tolist()[1] == 0
    assert report.counts["n_unique"] == 2


def test_unique_ignores_invalid_items(ref):
    report = run_metrics(
        [perovskite(), too_close(), None, perovskite()], ref, cfg={"names": ["unique"]}, progress=False
    )
    assert report.metrics["unique"]["n_valid"] == 2
    assert report.metrics["unique"]["value"] == 0.5
    assert report.per_sample["unique"].isna().tolist() == [False, True, True, False]


def test_copy_of_training_structure_is_memorized(ref):
    report = run_metrics([rocksalt()], ref, cfg={"names": ["novel", "memorized"]}, progress=False)
    assert report.metrics["novel"]["value"] == 0.0
    assert report.metrics["memorized"]["value"] == 1.0
    assert report.metrics["memorized"]["direction"] == "min"
    assert report.per_sample["novel_match_id"].tolist() == [1]  # the index in reference.train
    novel = run_metrics([perovskite()], ref, cfg={"names": ["novel"]}, progress=False)
    assert novel.metrics["novel"]["value"] == 1.0 and novel.per_sample["novel_match_id"].isna().all()


def test_perturbed_copy_matches_under_cdvae_convention(ref):
    jitter = jittered(rocksalt(), sigma=0.05)  # no supercell: the conventional cell, slightly jittered
    assert values([jitter], ref, names=["novel"])["novel"] == 0.0
    # Ti moved by 1.0 Å: within CDVAE's stol 0.5 but beyond pymatgen's default stol 0.3
    moved = displaced(perovskite(a_site="Ba"), 1, 1.0)
    assert values([moved], ref, names=["novel"])["novel"] == 0.0
    assert values([moved], ref, names=["novel"], matcher={"convention": "default"})["novel"] == 1.0


def test_supercell_of_training_structure_matches(ref):
    assert values([rocksalt() * (2, 1, 1)], ref, names=["novel"])["novel"] == 0.0


def test_vun_rate_counts_each_structure_over_all_samples(ref):
    """valid AND unique (first of its duplicates) AND novel, per structure, over every requested sample."""
    sr = perovskite()  # novel (the training set has the Ba one)
    generated = [sr, sr.copy(), rocksalt(), too_close(), None, perovskite(a_site="Ca")]
    names = ["valid", "unique", "novel", "vun_rate"]
    report = run_metrics(generated, ref, cfg={"names": names}, progress=False)
    # by hand: Sr (first), Ca -> 2 of 6; its duplicate is not unique, rock salt is in train, two are invalid
    assert report.per_sample["vun_rate"].tolist() == [True, False, False, False, False, True]
    entry = report.metrics["vun_rate"]
    assert entry["value"] == pytest.approx(2 / 6) and entry["n_vun"] == 2 and entry["n_generated"] == 6
    assert entry["version"] == "2.0" and entry["direction"] == "max"
    product = math.prod(report.metrics[name]["value"] for name in names[:3])
    assert product == pytest.approx(4 / 6 * 3 / 4 * 3 / 4)  # the old board number, 0.375: not a rate
    assert math.isnan(values([], ref, names=["vun_rate"])["vun_rate"])


def test_no_valid_structures_gives_nan_with_reason(ref):
    report = run_metrics([None, too_close()], ref, progress=False)
    undefined = (
        "unique",
        "novel",
        "memorized",
        "wdist_density",
        "wdist_num_elems",
        "jsd_spacegroup",
        "jsd_elements",
    )
    for name in undefined:
        assert math.isnan(report.metrics[name]["value"]), name
        assert report.metrics[name]["reason"]
    assert report.metrics["valid"]["value"] == 0.0


# ------------------------------------------------------------------------------------- distribution metrics


def test_wdist_of_identical_sets_is_zero(ref):
    v = values([s.copy() for s in ref.test], ref, names=["wdist_density", "wdist_num_elems"])
    assert v == {"wdist_density": pytest.approx(0.0, abs=1e-12), "wdist_num_elems": 0.0}


def test_wdist_of_shifted_set_equals_shift():
    test = [with_density(rocksalt(), d) for d in (2.0, 2.5, 3.0)]
    generated = [with_density(rocksalt(), d + 0.4) for d in (2.0, 2.5, 3.0)]
    reference = ReferenceSet("toy", train=[], test=test)
    v = values(generated, reference, names=["wdist_density", "wdist_num_elems"])
    assert v["wdist_density"] == pytest.approx(0.4, rel=1e-9)
    expected = wasserstein_distance([float(s.density) for s in generated], [float(s.density) for s in test])
    assert v["wdist_density"] == pytest.approx(expected, rel=1e-12)
    assert v["wdist_num_elems"] == 0.0
    three = [perovskite(a_site=a) for a in ("Sr", "Ba", "Ca")]  # 3 elements vs 2 in the test set
    assert values(three, reference, names=["wdist_num_elems"])["wdist_num_elems"] == 1.0


def test_jsd_identical_zero_disjoint_one():
    ref_nacl = ReferenceSet("toy", train=[], test=[rocksalt(), rocksalt(5.0)])
    same = values([rocksalt(5.3)], ref_nacl, names=["jsd_spacegroup", "jsd_elements"])
    assert same == {"jsd_spacegroup": 0.0, "jsd_elements": 0.0}
    disjoint = values([perovskite()], ref_nacl, names=["jsd_spacegroup", "jsd_elements"])  # Pm-3m, Sr Ti O
    assert disjoint == {"jsd_spacegroup": pytest.approx(1.0), "jsd_elements": pytest.approx(1.0)}


def test_spacegroups_reported_per_sample(ref):
    report = run_metrics(
        [rocksalt(), perovskite(), None], ref, cfg={"names": ["jsd_spacegroup"]}, progress=False
    )
    assert report.per_sample["spacegroup"].tolist()[:2] == [225, 221]
    assert report.per_sample["spacegroup"].isna().tolist()[2]
    assert report.metrics["jsd_spacegroup"]["n_failures"] == 0


def test_distribution_draw_is_seeded_and_recorded(ref):
    generated = [with_density(rocksalt(), d) for d in np.linspace(1.5, 3.5, 12)]
    cfg = {"names": ["wdist_density"], "distribution": {"max_samples": 5, "seed": 7}}
    first = run_metrics(generated, ref, cfg=cfg, progress=False)
    again = run_metrics(generated, ref, cfg=cfg, progress=False)
    entry = first.metrics["wdist_density"]
    assert entry["n_generated_used"] == 5 and entry["seed"] == 7 and entry["subsampled"]
    assert entry["value"] == again.metrics["wdist_density"]["value"]
    assert first.per_sample["in_distribution_sample"].sum() == 5
    assert first.settings["distribution"]["seed"] == 7
    other = run_metrics(
        generated, ref, cfg={**cfg, "distribution": {"max_samples": 5, "seed": 8}}, progress=False
    )
    drawn = first.per_sample["in_distribution_sample"].tolist()
    assert other.per_sample["in_distribution_sample"].tolist() != drawn


# ----------------------------------------------------------------------------------------- whole-suite runs


def test_every_metric_responds_to_its_input(ref):
    """No constant metrics: two different generated sets give different values for every metric."""
    first = [rocksalt(), rocksalt(), too_close(), None, None]
    second = [
        perovskite(a_site="Ca"),
        Structure(Lattice.cubic(4.1), ["Ca", "Zr", "O", "O", "F"], perovskite().frac_coords),  # Zr3+
        jittered(perovskite(a_site="Ba", b_site="Sn", a=4.1), sigma=0.15, seed=3),
        Structure(Lattice.cubic(4.0), ["Mn", "Mn", "I"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0]]),
    ]
    a = values(first, ref)
    b = values(second, ref)
    # the fingerprint metrics: tests/test_metrics_fingerprint.py
    assert set(a) == set(with_implied(DEFAULT_NAMES))
    for name in with_implied(DEFAULT_NAMES):
        assert a[name] != pytest.approx(b[name]), name


def test_report_shape_and_json(ref):
    report = run_metrics([rocksalt(), None, perovskite(), too_close()], ref, progress=False)
    assert len(report.per_sample) == 4
    for col in (
        "index", "constructed", "struct_valid", "struct_reason", "comp_valid", "valid", "unique", "novel",
        "novel_match_id", "formula", "density", "num_elems",
    ):  # fmt: skip
        assert col in report.per_sample.columns, col
    assert report.per_sample["struct_reason"].tolist()[1] == "not_constructed: none"
    assert report.per_sample["struct_reason"].tolist()[3] == "too_close: 0.30 Å"
    assert (
        report.counts["n_generated"] == 4 and report.counts["n_none"] == 1 and report.counts["n_valid"] == 2
    )
    for entry in report.metrics.values():
        assert {"value", "direction", "description", "version"} <= set(entry)
    assert report.settings["versions"]["smact"] and report.settings["matcher_params"]["stol"] == 0.5
    json.dumps(report.to_dict(include_per_sample=True))


def test_validity_computed_once_per_run(ref, monkeypatch):
    import bench.metrics.generated as generated

    calls = []
    original = generated._record
    monkeypatch.setattr(generated, "_record", lambda *a: calls.append(1) or original(*a))
    run_metrics([rocksalt(), perovskite(), None], ref, progress=False)
    assert len(calls) == 3


def test_metrics_work_on_plain_lists(ref):
    metric = build_metric("unique")
    assert metric([rocksalt(), rocksalt()], metric.prepare(ref)).value == 0.5
    gset = GeneratedSet([rocksalt(), None])
    assert gset.flags("valid").tolist() == [True, False]


def test_prepare_cache_on_disk(tmp_path, ref, caplog):
    reference = ReferenceSet("toy", ref.train, ref.test, train_checksum="trainsum", test_checksum="testsum")
    cfg = {"names": ["jsd_spacegroup", "wdist_density"]}
    first = run_metrics([rocksalt()], reference, cfg=cfg, cache_dir=tmp_path, progress=False)
    files = sorted(p.name for p in (tmp_path / "metrics").iterdir())
    test_key = hashlib.sha256(b"testsum").hexdigest()[:16]  # test-only metrics: keyed by the test split
    assert len(files) == 2 and all(f.startswith(f"{test_key}-") and f.endswith(".pkl") for f in files)
    assert {e["prepare_cache"] for e in first.metrics.values()} == {"miss"}
    second = run_metrics([rocksalt()], reference, cfg=cfg, cache_dir=tmp_path, progress=False)
    assert {e["prepare_cache"] for e in second.metrics.values()} == {"hit"}
    assert second.values() == first.values()
    # a corrupt cache file is recomputed, and without checksums nothing is cached
    (tmp_path / "metrics" / files[0]).write_bytes(b"not a pickle")
    third = run_metrics([rocksalt()], reference, cfg=cfg, cache_dir=tmp_path, progress=False)
    assert third.values() == first.values()
    no_sums = run_metrics([rocksalt()], ref, cfg=cfg, cache_dir=tmp_path, progress=False)
    assert {e["prepare_cache"] for e in no_sums.metrics.values()} == {"off"}


def test_vun_rate_is_implied_by_its_inputs_and_leaves_configs_unchanged() -> None:
    """vun_rate is scored whenever valid, unique and novel are, without a config key of its own, so configs of
    runs scored before it existed keep their hash."""
    from bench.config import compose
    from bench.metrics.settings import MetricSettings

    cfg = compose(["experiment=perov_5_offline"])
    assert "vun_rate" not in cfg.metrics.names
    names = MetricSettings.from_mapping(cfg.metrics).names
    assert names.index("vun_rate") == names.index("novel") + 1
    assert "vun_rate" not in MetricSettings.from_mapping({"names": ["valid", "unique"]}).names
