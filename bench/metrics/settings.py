"""Typed metric settings, resolved from the ``metrics`` config group (``conf/metrics/default.yaml``).

The dataclass defaults mirror that file (a test keeps them identical), so the suite also runs without Hydra.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

__all__ = [
    "IMPLIED_METRICS",
    "CoverageCutoffs",
    "DistributionSettings",
    "ParallelSettings",
    "MatcherSettings",
    "MetricSettings",
    "PropertyModelSettings",
    "with_implied",
    "ValiditySettings",
    "settings_hash",
    "to_plain",
]

COMP_VALID_MODES = ("cdvae", "capped")
SMACT_TABLES = ("smact221", "smact14", "icsd24")
ELEMENT_WEIGHTS = ("presence", "atoms")
FINGERPRINT_CODES = ("numpy", "matminer")


def to_plain(obj: Any) -> Any:
    """Recursively turn mappings and sequences (including OmegaConf containers) into dicts and lists."""
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, Sequence) and not isinstance(obj, str | bytes):
        return [to_plain(v) for v in obj]
    return obj


def settings_hash(obj: Any, length: int = 12) -> str:
    """A short, stable hash of a JSON-serialisable settings object."""
    text = json.dumps(to_plain(obj), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _check_keys(section: str, given: Mapping[str, Any], cls: type) -> None:
    allowed = {f.name for f in fields(cls)}
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise ValueError(
            f"unknown key(s) {unknown} in metrics config section '{section}'; allowed: {sorted(allowed)}"
        )


@dataclass(frozen=True)
class ValiditySettings:
    """Construction, structural and compositional validity (Xie et al. 2022, CDVAE, scripts/eval_utils.py).

    Attributes:
        min_distance: Smallest allowed interatomic distance in Å (CDVAE ``structure_validity`` cutoff).
        min_volume: Cells below this volume in Å^3 count as not constructed (CDVAE ``get_structure``).
        self_image: Also test each atom against its own periodic images (CDVAE does not; it pads the
            diagonal).
        comp_valid_mode: ``cdvae`` enumerates every oxidation-state combination; ``capped`` follows DiffCSP
            (jiaor17/DiffCSP scripts/eval_utils.py) and calls compositions with more than
            ``max_combinations`` combinations invalid.
        max_combinations: The cap used by ``capped`` mode.
        smact_table: SMACT data for charge neutrality and the Pauling test (``bench.metrics.composition``):
            ``smact221`` (default) is smact 2.2.1 exactly, the version CDVAE's published numbers used
            (oxidation states, electronegativities and metals shipped in
            ``bench/metrics/data/smact_2_2_1_oxidation_states.json``, from the PyPI sdist; MIT licence);
            ``smact14`` is SMACT's 2014 oxidation-state table as shipped with the installed smact, which
            differs from 2.2.1 in Ir (-3 for -2, SMACT PR #33) and Zr's electronegativity (1.33 for 0.33,
            SMACT PR #181); ``icsd24`` is the ICSD-2024 table, the default of smact >= 3.
        pauling_test: Apply the Pauling electronegativity test.
        include_alloys: Count all-metal compositions as valid.
        require_fingerprint: ``valid`` also needs the CrystalNN structure fingerprint to be computable
            (CDVAE ``Crystal.get_fingerprints`` marks a structure invalid when it raises). Costs one
            fingerprint (~0.04 s for 5 atoms) per struct- and comp-valid item.
    """

    min_distance: float = 0.5
    min_volume: float = 0.1
    self_image: bool = False
    comp_valid_mode: Literal["cdvae", "capped"] = "cdvae"
    max_combinations: int = 10_000_000
    smact_table: Literal["smact221", "smact14", "icsd24"] = "smact221"
    pauling_test: bool = True
    include_alloys: bool = True
    require_fingerprint: bool = True

    def __post_init__(self) -> None:
        if self.comp_valid_mode not in COMP_VALID_MODES:
            raise ValueError(
                f"validity.comp_valid_mode must be one of {COMP_VALID_MODES}, got {self.comp_valid_mode!r}"
            )
        if self.smact_table not in SMACT_TABLES:
            raise ValueError(f"validity.smact_table must be one of {SMACT_TABLES}, got {self.smact_table!r}")
        if self.min_distance < 0 or self.min_volume < 0 or self.max_combinations < 1:
            raise ValueError("validity.min_distance/min_volume must be >= 0 and max_combinations >= 1")


@dataclass(frozen=True)
class MatcherSettings:
    """Which pymatgen ``StructureMatcher`` convention decides that two structures are the same.

    Attributes:
        convention: A key of ``conventions``.
        conventions: Named keyword sets for ``StructureMatcher``; ``cdvae`` is CDVAE's ``RecEval``
            (stol 0.5, ltol 0.3, angle_tol 10), ``default`` is pymatgen's own defaults.
        prefilter: Compare only pairs that can match: same reduced formula and primitive-cell size, and a
            lattice mapping within ``ltol``/``angle_tol`` (``bench.metrics.matching``); the results are those
            of trying every pair, only faster. ``false`` tries every pair (for verification and timing).
    """

    convention: str = "cdvae"
    conventions: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {"cdvae": {"stol": 0.5, "ltol": 0.3, "angle_tol": 10}, "default": {}}
    )
    prefilter: bool = True

    def __post_init__(self) -> None:
        if self.convention not in self.conventions:
            raise ValueError(
                f"matcher.convention {self.convention!r} is not one of the defined conventions "
                f"{sorted(self.conventions)}"
            )

    @property
    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``StructureMatcher`` under the chosen convention."""
        return dict(self.conventions[self.convention])


@dataclass(frozen=True)
class DistributionSettings:
    """Distribution metrics (``wdist_*``, ``jsd_*``) against the test split.

    Attributes:
        max_samples: Valid generated structures drawn without replacement (CDVAE ``GenEval`` uses 1000).
        seed: Seed of the ``numpy.random.Generator`` that draws them (CDVAE's draw is unseeded).
        symprec: spglib distance tolerance in Å for space groups.
        angle_tolerance: spglib angle tolerance in degrees.
        element_weight: ``presence`` counts each element once per structure; ``atoms`` counts sites.
    """

    max_samples: int = 1000
    seed: int = 0
    symprec: float = 0.1
    angle_tolerance: float = 5.0
    element_weight: Literal["presence", "atoms"] = "presence"

    def __post_init__(self) -> None:
        if self.max_samples < 1:
            raise ValueError("distribution.max_samples must be >= 1")
        if self.element_weight not in ELEMENT_WEIGHTS:
            raise ValueError(
                f"distribution.element_weight must be one of {ELEMENT_WEIGHTS}, got {self.element_weight!r}"
            )


@dataclass(frozen=True)
class ParallelSettings:
    """The worker pool of the slow per-structure loops (fingerprints; novelty and recall matching).

    These settings change how fast results come, never the results.

    Attributes:
        workers: Worker processes; null (or 0) = all CPUs, 1 = in this process.
        chunk_size: Structures per task sent to a worker (small, so a slow structure does not stall the pool).
        min_parallel: Fewer structures than this are handled in this process (a pool costs ~1 s to start).
        start_method: ``multiprocessing`` start method; null = ``fork`` where the platform has it.
        fingerprint_code: Which code computes the CrystalNN site fingerprint: ``numpy``
            (``bench.metrics.site_ops``, the order parameters vectorised; equal to matminer's values to
            about 1e-15, tested) or ``matminer`` (``CrystalNNFingerprint.featurize``, the code CDVAE ran).
    """

    workers: int | None = None
    chunk_size: int = 4
    min_parallel: int = 64
    start_method: str | None = None
    fingerprint_code: Literal["numpy", "matminer"] = "numpy"

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 0:
            raise ValueError("parallel.workers must be null or >= 0")
        if self.chunk_size < 1 or self.min_parallel < 0:
            raise ValueError("parallel.chunk_size must be >= 1 and min_parallel >= 0")
        if self.start_method not in (None, "fork", "spawn", "forkserver"):
            raise ValueError(
                f"parallel.start_method must be null, fork, spawn or forkserver, got {self.start_method!r}"
            )
        if self.fingerprint_code not in FINGERPRINT_CODES:
            raise ValueError(
                f"parallel.fingerprint_code must be one of {FINGERPRINT_CODES}, got {self.fingerprint_code!r}"
            )


@dataclass(frozen=True)
class CoverageCutoffs:
    """COV-R / COV-P distance cutoffs of a dataset (CDVAE scripts/compute_metrics.py ``COV_Cutoffs``).

    Attributes:
        struct: Cutoff on the Euclidean distance between CrystalNN structure fingerprints.
        comp: Cutoff on the Euclidean distance between scaled Magpie composition fingerprints.
    """

    struct: float
    comp: float

    def __post_init__(self) -> None:
        if not (self.struct > 0 and self.comp > 0):
            raise ValueError(f"cov_cutoffs must be positive, got struct={self.struct} comp={self.comp}")


PROPERTY_MODELS = ("hgb", "ridge")


@dataclass(frozen=True)
class PropertyModelSettings:
    """The property predictor behind ``wdist_prop`` (trained on the training split, cached on disk).

    Attributes:
        model: ``hgb`` (scikit-learn ``HistGradientBoostingRegressor``) or ``ridge`` (standardised ridge).
        crystalnn: Add the mean CrystalNN fingerprint to the features (Magpie + geometry otherwise); costs a
            fingerprint per training structure on a cold cache.
        max_train: Use at most this many training structures (seeded draw); null = all.
        seed: Seed of that draw and of the model.
        max_iter: Boosting iterations (``hgb``).
        learning_rate: Boosting learning rate (``hgb``).
        alpha: Ridge penalty (``ridge``).
    """

    model: Literal["hgb", "ridge"] = "hgb"
    crystalnn: bool = True
    max_train: int | None = None
    seed: int = 0
    max_iter: int = 300
    learning_rate: float = 0.1
    alpha: float = 1.0

    def __post_init__(self) -> None:
        if self.model not in PROPERTY_MODELS:
            raise ValueError(f"property_model.model must be one of {PROPERTY_MODELS}, got {self.model!r}")
        if self.max_train is not None and self.max_train < 10:
            raise ValueError("property_model.max_train must be null or >= 10")
        if self.max_iter < 1 or self.learning_rate <= 0 or self.alpha < 0:
            raise ValueError("property_model.max_iter >= 1, learning_rate > 0 and alpha >= 0 are required")


IMPLIED_METRICS: dict[str, tuple[str, ...]] = {"vun_rate": ("valid", "unique", "novel")}
"""Metrics computed whenever all the metrics they combine are asked for, without being named in ``names``:
``vun_rate`` needs nothing the three rates do not already compute. Leaving them out of ``names`` keeps the
configs (and so the config hashes) of runs scored before they existed unchanged."""


def with_implied(names: tuple[str, ...]) -> tuple[str, ...]:
    """``names`` plus every implied metric whose inputs are all in it (right after the last of its inputs)."""
    out = list(names)
    for implied, inputs in IMPLIED_METRICS.items():
        if implied not in out and all(name in out for name in inputs):
            out.insert(max(out.index(name) for name in inputs) + 1, implied)
    return tuple(out)


DEFAULT_NAMES: tuple[str, ...] = (
    "struct_valid",
    "comp_valid",
    "valid",
    "unique",
    "novel",
    "memorized",
    "wdist_density",
    "wdist_num_elems",
    "jsd_spacegroup",
    "jsd_elements",
)

# The metrics that need fingerprints of the reference split or of every generated structure (slow on a cold
# cache); ``conf/metrics/full.yaml`` adds them to the default list.
FINGERPRINT_NAMES: tuple[str, ...] = (
    "cov_recall",
    "cov_precision",
    "amsd_recall",
    "amsd_precision",
    "amcd_recall",
    "amcd_precision",
    "comp_div",
    "struct_div",
    "wdist_prop",
    "test_recall",
)


@dataclass(frozen=True)
class MetricSettings:
    """All settings of one evaluation; built from the ``metrics`` config mapping by :meth:`from_mapping`.

    ``cov_cutoffs`` and ``property`` describe the dataset, not the suite: the evaluate stage copies them from
    the dataset config (``dataset.cov_cutoffs``, ``dataset.property``) into the metrics mapping, so they are
    absent from ``conf/metrics/*.yaml``. Without them the metrics that need them return NaN with a reason.
    """

    names: tuple[str, ...] = DEFAULT_NAMES
    validity: ValiditySettings = field(default_factory=ValiditySettings)
    matcher: MatcherSettings = field(default_factory=MatcherSettings)
    distribution: DistributionSettings = field(default_factory=DistributionSettings)
    parallel: ParallelSettings = field(default_factory=ParallelSettings)
    property_model: PropertyModelSettings = field(default_factory=PropertyModelSettings)
    cov_cutoffs: CoverageCutoffs | None = None
    property: str | None = None

    def __post_init__(self) -> None:
        # implied metrics (IMPLIED_METRICS) join the names however the settings are built
        object.__setattr__(self, "names", with_implied(tuple(self.names)))

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None = None) -> MetricSettings:
        """Resolve settings from a (possibly partial) config mapping; missing keys take the defaults.

        Args:
            cfg: The ``metrics`` config group as a mapping (a plain dict or an OmegaConf ``DictConfig``).

        Returns:
            The resolved settings.

        Raises:
            ValueError: On unknown keys or invalid values, naming the offending key.
        """
        plain = to_plain(cfg) if cfg is not None else {}
        if not isinstance(plain, dict):
            raise ValueError(f"metrics config must be a mapping, got {type(cfg).__name__}")
        _check_keys("metrics", plain, cls)
        sections: dict[str, Any] = {}
        for name, sub in (
            ("validity", ValiditySettings),
            ("matcher", MatcherSettings),
            ("distribution", DistributionSettings),
            ("parallel", ParallelSettings),
            ("property_model", PropertyModelSettings),
        ):
            given = plain.get(name) or {}
            _check_keys(name, given, sub)
            if name == "matcher" and "conventions" in given:
                merged = MatcherSettings().conventions
                merged.update({k: dict(v or {}) for k, v in given["conventions"].items()})
                given = {**given, "conventions": merged}
            sections[name] = sub(**given)
        names = tuple(plain.get("names", DEFAULT_NAMES))
        cutoffs = plain.get("cov_cutoffs")
        if cutoffs:  # an empty mapping (dataset without cutoffs) counts as none
            if not isinstance(cutoffs, dict):
                raise ValueError(f"cov_cutoffs must be a mapping with keys struct and comp, got {cutoffs!r}")
            _check_keys("cov_cutoffs", cutoffs, CoverageCutoffs)
            missing = sorted({"struct", "comp"} - set(cutoffs))
            if missing:
                raise ValueError(f"cov_cutoffs lacks {missing}; give both struct and comp")
            sections["cov_cutoffs"] = CoverageCutoffs(float(cutoffs["struct"]), float(cutoffs["comp"]))
        prop = plain.get("property")
        if prop is not None and not isinstance(prop, str):
            raise ValueError(f"property must be a property column name (a string), got {prop!r}")
        return cls(names=names, property=prop or None, **sections)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict view, as recorded in a result."""
        out = asdict(self)
        out["names"] = list(self.names)
        return out
