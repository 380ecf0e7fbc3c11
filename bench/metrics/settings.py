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
    "DistributionSettings",
    "MatcherSettings",
    "MetricSettings",
    "ValiditySettings",
    "settings_hash",
    "to_plain",
]

COMP_VALID_MODES = ("cdvae", "capped")
SMACT_TABLES = ("smact14", "icsd24")
ELEMENT_WEIGHTS = ("presence", "atoms")


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
        smact_table: Oxidation-state table: ``smact14`` (SMACT's 2014 list, the default of smact 2.x that
            CDVAE ran) or ``icsd24`` (the default of smact >= 3).
        pauling_test: Apply the Pauling electronegativity test.
        include_alloys: Count all-metal compositions as valid.
    """

    min_distance: float = 0.5
    min_volume: float = 0.1
    self_image: bool = False
    comp_valid_mode: Literal["cdvae", "capped"] = "cdvae"
    max_combinations: int = 10_000_000
    smact_table: Literal["smact14", "icsd24"] = "smact14"
    pauling_test: bool = True
    include_alloys: bool = True

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
    """

    convention: str = "cdvae"
    conventions: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {"cdvae": {"stol": 0.5, "ltol": 0.3, "angle_tol": 10}, "default": {}}
    )

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


@dataclass(frozen=True)
class MetricSettings:
    """All settings of one evaluation; built from the ``metrics`` config mapping by :meth:`from_mapping`."""

    names: tuple[str, ...] = DEFAULT_NAMES
    validity: ValiditySettings = field(default_factory=ValiditySettings)
    matcher: MatcherSettings = field(default_factory=MatcherSettings)
    distribution: DistributionSettings = field(default_factory=DistributionSettings)

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
        ):
            given = plain.get(name) or {}
            _check_keys(name, given, sub)
            if name == "matcher" and "conventions" in given:
                merged = MatcherSettings().conventions
                merged.update({k: dict(v or {}) for k, v in given["conventions"].items()})
                given = {**given, "conventions": merged}
            sections[name] = sub(**given)
        names = tuple(plain.get("names", DEFAULT_NAMES))
        return cls(names=names, **sections)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict view, as recorded in a result."""
        out = asdict(self)
        out["names"] = list(self.names)
        return out
