"""Metrics of the composition track: generated chemical formulas scored against a composition dataset's split.

Protocol (see ``docs/composition_track.md``). A model emits formulas (strings; ``None`` or unreadable text
for an item it failed to produce). Each item is parsed with pymatgen and reduced (``Composition
.reduced_formula``); the reference is a :class:`CompositionReference` (training and test formulas of a pinned
split, :mod:`bench.datasets.composition_split`). Metrics (name, direction, what it is):

- ``comp_smact_valid`` (max): fraction of all generated items whose composition passes SMACT charge
  neutrality and the Pauling electronegativity test, by exactly the rule and settings of the crystal track's
  ``comp_valid`` (:func:`bench.metrics.composition.check_composition`, ``ValiditySettings`` defaults: CDVAE's
  full enumeration, smact 2.2.1 tables, alloys valid). Unreadable items are invalid. Not applicable (NaN) to
  a dataset of fractional formulas (``steels_yield``).
- ``comp_unique`` (max): distinct reduced formulas / readable items (``[NaCl, Na2Cl2, KCl]`` -> 2/3); per
  item, ``unique`` flags the first occurrence of its formula.
- ``comp_novel`` (max): fraction of readable items whose reduced formula is not a training formula.
- ``comp_vun_rate`` (max): fraction of all generated items that are SMACT-valid, the first occurrence of their
  formula, and novel (the crystal track's ``vun_rate`` convention).
- ``comp_jsd_elements`` (min): Jensen-Shannon distance, base 2 (``scipy.spatial.distance.jensenshannon``;
  the square root of the divergence in bits, i.e. of the divergence in nats divided by ln 2), between the
  element histograms of the generated draw and of the test split: 0 for identical histograms, 1 for disjoint
  ones. ``presence`` weighting (default, as the crystal track's ``jsd_elements``) counts each element once per
  formula; ``fraction`` adds its atomic fraction.
- ``comp_magpie_fd`` (min): Fréchet distance between Gaussians fitted to the 132 Magpie features
  (:mod:`bench.metrics.magpie`) of the generated draw and of the test split, each feature standardised by the
  training split's mean and standard deviation (a constant feature keeps scale 1): the composition analogue of
  FCD (Preuer et al. 2018) and FID. ``||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2)``,
  the trace of the square root taken from the eigenvalues of the symmetric matrix (exact for covariance
  matrices; no complex round-off as with ``sqrtm(S1 @ S2)``). It depends on the draw size, so it is compared
  at the same ``max_samples`` (default 1000, as the crystal track).
- ``comp_wdist_prop`` (min): Wasserstein-1 distance (``scipy.stats.wasserstein_distance``) between the
  dataset's target predicted for the generated draw and for the test split. The predictor is fixed: scikit-
  learn ``HistGradientBoostingRegressor`` (300 iterations, learning rate 0.1, ``random_state=0``, no early
  stopping, so no random validation split: deterministic), the crystal track's property model, on the 132 raw
  Magpie features, trained on the training formulas and their targets. Its test MAE and the MAE of predicting
  the training mean are reported with the value.

The distribution metrics use one seeded draw (``max_samples``, ``seed``) of the readable generated items, as
the crystal track draws 1000 valid structures. Reference-side work (test histogram, standardisation and test
moments, the fitted predictor and its test predictions) is cached on disk under
``$MATGENBENCH_CACHE_DIR/metrics/``, keyed by the split checksum and the settings.

Reference rows (:func:`reference_rows`): a draw of the test split and of the validation split (the ceiling a
perfect sampler of the data distribution reaches at that sample size) and seeded random compositions
(:func:`random_compositions`, the floor), scored the same way.
"""

from __future__ import annotations

import logging
import math
import re
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
from scipy.spatial.distance import jensenshannon
from scipy.stats import wasserstein_distance

from bench.metrics.base import MetricReport, MetricResult
from bench.metrics.cache import cache_path, cached
from bench.metrics.composition import CompositionCheck, check_composition
from bench.metrics.magpie import MAX_Z, magpie_features, magpie_versions
from bench.metrics.property import PropertyModel
from bench.metrics.settings import PropertyModelSettings, ValiditySettings, settings_hash

__all__ = [
    "COMPOSITION_METRICS",
    "CompositionMetricSettings",
    "CompositionReference",
    "GeneratedCompositions",
    "build_reference",
    "element_histogram",
    "evaluate_compositions",
    "frechet_distance",
    "gaussian_moments",
    "jsd_distance",
    "random_compositions",
    "reference_items",
    "reference_rows",
]

logger = logging.getLogger(__name__)

ELEMENT_WEIGHTS = ("presence", "fraction")
_SYMBOL = re.compile(r"[A-Z][a-z]?")
_FRACTIONAL = "not applicable: the dataset's formulas are element fractions"


@dataclass(frozen=True)
class CompositionMetricSettings:
    """Settings of the composition metrics.

    Attributes:
        validity: the SMACT rule's settings; the crystal track's ``ValiditySettings`` (only its composition
            fields are used), with the same defaults.
        max_samples: size of the seeded draw of readable generated items the distribution metrics use.
        seed: seed of that draw.
        element_weight: ``presence`` or ``fraction`` (``comp_jsd_elements``).
        property_model: the predictor behind ``comp_wdist_prop`` (``crystalnn`` is ignored: compositions have
            no structure).
    """

    validity: ValiditySettings = field(default_factory=ValiditySettings)
    max_samples: int = 1000
    seed: int = 0
    element_weight: Literal["presence", "fraction"] = "presence"
    property_model: PropertyModelSettings = field(
        default_factory=lambda: PropertyModelSettings(model="hgb", crystalnn=False)
    )

    def __post_init__(self) -> None:
        if self.max_samples < 2:
            raise ValueError("max_samples must be >= 2 (a covariance needs two items)")
        if self.element_weight not in ELEMENT_WEIGHTS:
            raise ValueError(f"element_weight must be one of {ELEMENT_WEIGHTS}, got {self.element_weight!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict view, as recorded in a report."""
        return asdict(self)


@dataclass
class CompositionReference:
    """The split a set of generated formulas is scored against.

    Attributes:
        dataset: dataset name.
        train: training formulas (reduced).
        test: test formulas (reduced).
        train_targets: target of each training formula.
        test_targets: target of each test formula.
        val: validation formulas (only the reference rows use them).
        checksum: the split's checksum; keys the on-disk cache (empty: no caching).
        split: the split's summary for records (:meth:`CompositionSplit.summary`).
        target: what the target is, with its unit.
        integer_formulas: False for a dataset of fractional formulas (SMACT validity does not apply).
    """

    dataset: str
    train: list[str]
    test: list[str]
    train_targets: np.ndarray | None = None
    test_targets: np.ndarray | None = None
    val: list[str] = field(default_factory=list)
    checksum: str = ""
    split: dict[str, Any] = field(default_factory=dict)
    target: str = ""
    integer_formulas: bool = True


def build_reference(
    dataset: str,
    seed: int | None = None,
    fractions: tuple[float, float, float] | None = None,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    download: bool = True,
) -> CompositionReference:
    """The reference of a registered composition dataset under its pinned split (or another seed/fractions).

    Args:
        dataset: registered name, e.g. ``mp_e_form``.
        seed: split seed (default: the pinned 0).
        fractions: split fractions (default: the pinned 0.8 / 0.1 / 0.1).
        data_dir: local data dir; defaults to ``$MATGENBENCH_DATA_DIR``.
        cache_dir: cache root; defaults to ``$MATGENBENCH_CACHE_DIR``.
        download: allow downloading the pinned file.
    """
    from bench.datasets.composition_split import DEFAULT_FRACTIONS, DEFAULT_SEED, load_composition_split
    from bench.datasets.compositions import get_composition_spec

    spec = get_composition_spec(dataset)
    split = load_composition_split(
        dataset,
        seed=DEFAULT_SEED if seed is None else seed,
        fractions=DEFAULT_FRACTIONS if fractions is None else fractions,
        data_dir=data_dir,
        cache_dir=cache_dir,
        download=download,
    )
    return CompositionReference(
        dataset=dataset,
        train=split.train,
        test=split.test,
        train_targets=split.targets["train"],
        test_targets=split.targets["test"],
        val=split.val,
        checksum=split.checksum,
        split=split.summary(),
        target=spec.target,
        integer_formulas=spec.integer_formulas,
    )


# --------------------------------------------------------------------------------------- generated items


def _reduce(item: Any) -> tuple[str | None, str]:
    from bench.datasets.compositions import normalise_formula

    if item is None or (isinstance(item, float) and math.isnan(item)):
        return None, "missing"
    if not isinstance(item, str):
        return None, f"not a formula string: {type(item).__name__}"
    try:
        return normalise_formula(item), ""
    except ValueError as err:
        return None, str(err)


class GeneratedCompositions:
    """Generated items parsed once and shared by all metrics (reduced formulas, SMACT verdicts, features).

    Args:
        items: formula strings; ``None`` (or unreadable text) for an item a model failed to produce.
    """

    def __init__(self, items: Sequence[str | None]) -> None:
        self.items = list(items)
        parsed = [_reduce(item) for item in self.items]
        self.reduced: list[str | None] = [r for r, _ in parsed]
        self.reasons: list[str] = [why for _, why in parsed]
        self._memo: dict[Any, Any] = {}

    @classmethod
    def wrap(cls, items: GeneratedCompositions | Sequence[str | None]) -> GeneratedCompositions:
        """``items`` itself if already parsed, else a new parsed set."""
        return items if isinstance(items, GeneratedCompositions) else cls(items)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def readable(self) -> np.ndarray:
        """Positions of the items that parse to a composition."""
        return np.array([i for i, r in enumerate(self.reduced) if r is not None], dtype=np.int64)

    def memo(self, key: Any, compute: Any) -> Any:
        """A value computed once per set (``compute()`` on the first call with ``key``)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def smact(self, validity: ValiditySettings) -> list[CompositionCheck]:
        """The SMACT verdict of every item (unreadable items: invalid, reason ``unreadable``)."""

        def compute() -> list[CompositionCheck]:
            from pymatgen.core import Composition

            out = []
            for r in self.reduced:
                if r is None:
                    out.append(CompositionCheck(False, "unreadable"))
                    continue
                amounts = {el.symbol: float(a) for el, a in Composition(r).items()}
                out.append(
                    check_composition(
                        amounts,
                        mode=validity.comp_valid_mode,
                        max_combinations=validity.max_combinations,
                        smact_table=validity.smact_table,
                        pauling_test=validity.pauling_test,
                        include_alloys=validity.include_alloys,
                    )
                )
            return out

        key = ("smact", validity.comp_valid_mode, validity.max_combinations, validity.smact_table,
               validity.pauling_test, validity.include_alloys)
        return self.memo(key, compute)

    def first_occurrence(self) -> np.ndarray:
        """Per item: True for the first readable item of each reduced formula."""

        def compute() -> np.ndarray:
            seen: set[str] = set()
            flags = np.zeros(len(self), dtype=bool)
            for i, r in enumerate(self.reduced):
                if r is not None and r not in seen:
                    seen.add(r)
                    flags[i] = True
            return flags

        return self.memo("first_occurrence", compute)

    def draw(self, max_samples: int, seed: int) -> np.ndarray:
        """Positions of the readable items the distribution metrics use: all, or a seeded draw of
        ``max_samples`` without replacement; sorted."""

        def compute() -> np.ndarray:
            readable = self.readable
            if len(readable) <= max_samples:
                return readable
            rng = np.random.default_rng(seed)
            return np.sort(rng.choice(readable, size=max_samples, replace=False))

        return self.memo(("draw", max_samples, seed), compute)

    def features(self, idx: np.ndarray) -> np.ndarray:
        """Magpie features of the items at ``idx``."""
        key = ("magpie", tuple(int(i) for i in idx))
        return self.memo(key, lambda: magpie_features([self.reduced[int(i)] for i in idx])[0])


# ------------------------------------------------------------------------------------ pure functions


def element_histogram(formulas: Sequence[str | None], weight: str = "presence") -> np.ndarray:
    """Element histogram over atomic numbers 0..118 (index = Z).

    Args:
        formulas: formulas; None and unreadable items are skipped.
        weight: ``presence`` (1 per element per formula) or ``fraction`` (the element's atomic fraction).
    """
    from pymatgen.core import Composition

    counts = np.zeros(MAX_Z + 1)
    for formula in formulas:
        if formula is None:
            continue
        try:
            comp = Composition(formula).element_composition
        except Exception:  # noqa: BLE001 - unreadable items carry no elements
            continue
        total = comp.num_atoms
        for el, amount in comp.items():
            counts[el.Z] += 1.0 if weight == "presence" else float(amount) / total
    return counts


def jsd_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance, base 2, of two histograms (normalised here); NaN if either is empty."""
    p, q = np.asarray(p, dtype=float), np.asarray(q, dtype=float)
    if p.sum() <= 0 or q.sum() <= 0:
        return math.nan
    return float(jensenshannon(p, q, base=2))


def gaussian_moments(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (``np.cov``, ``ddof=1``) of the rows of ``features``."""
    x = np.asarray(features, dtype=float)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need at least two feature rows, got shape {x.shape}")
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh((matrix + matrix.T) / 2.0)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Fréchet (2-Wasserstein squared) distance between two Gaussians.

    ``||mu1 - mu2||^2 + tr(cov1) + tr(cov2) - 2 tr((cov1^1/2 cov2 cov1^1/2)^1/2)``, the traces of the square
    roots from eigenvalues of symmetric positive semi-definite matrices (negative round-off clipped to 0).
    """
    mu1, mu2 = np.asarray(mu1, dtype=float), np.asarray(mu2, dtype=float)
    cov1, cov2 = np.atleast_2d(cov1).astype(float), np.atleast_2d(cov2).astype(float)
    root1 = _psd_sqrt(cov1)
    inner = root1 @ cov2 @ root1
    eig = np.linalg.eigvalsh((inner + inner.T) / 2.0)
    cross = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * cross)
    return max(value, 0.0)


def random_compositions(train: Sequence[str], n: int, seed: int = 0, max_count: int = 8) -> list[str]:
    """Seeded random formulas: the floor of every metric.

    Each has ``k`` elements, ``k`` drawn from the training formulas' numbers of elements; the elements are
    drawn uniformly without replacement from the training vocabulary, and each count uniformly from 1 to
    ``max_count`` (MatGAN's range); the formula is then reduced.

    Args:
        train: training formulas (they give the vocabulary and the distribution of ``k``).
        n: how many formulas.
        seed: seed of the ``numpy.random.Generator``.
        max_count: largest count of one element.
    """
    from pymatgen.core import Element

    from bench.datasets.composition_codec import formula_from_amounts

    # the training formulas are reduced formulas (element symbols and numbers only): read their elements
    # with a regular expression instead of parsing 10^5 formulas
    element_sets = [set(_SYMBOL.findall(f)) for f in train]
    n_elements = np.array([len(e) for e in element_sets])
    symbols = np.array(sorted(set().union(*element_sets), key=lambda s: Element(s).Z))
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(min(rng.choice(n_elements), len(symbols)))
        chosen = rng.choice(symbols, size=k, replace=False)
        counts = rng.integers(1, max_count + 1, size=k)
        out.append(formula_from_amounts(dict(zip(chosen.tolist(), counts.tolist(), strict=True))))
    return out


# ------------------------------------------------------------------------------------------- metrics


class _CompositionMetric:
    direction: Literal["max", "min"] = "max"
    version: str = "1.0"
    cacheable: ClassVar[bool] = False
    name: ClassVar[str]
    description: ClassVar[str]

    def __init__(self, settings: CompositionMetricSettings | None = None) -> None:
        self.settings = settings or CompositionMetricSettings()

    def settings_key(self) -> dict[str, Any]:
        """The settings the reference side depends on (part of its cache key)."""
        return {}

    def prepare(self, reference: CompositionReference) -> Any:
        """Reference-side statistics (none by default)."""
        return None

    def _draw(self, gen: GeneratedCompositions) -> tuple[np.ndarray, dict[str, Any]]:
        idx = gen.draw(self.settings.max_samples, self.settings.seed)
        return idx, {
            "n_generated_used": len(idx),
            "n_readable": len(gen.readable),
            "subsampled": len(idx) < len(gen.readable),
            "max_samples": self.settings.max_samples,
            "seed": self.settings.seed,
        }


class CompSmactValid(_CompositionMetric):
    """SMACT validity of every generated item (the crystal track's ``comp_valid`` rule)."""

    name = "comp_smact_valid"
    description = "fraction of generated formulas passing SMACT charge neutrality + Pauling test (CDVAE rule)"

    def prepare(self, reference: CompositionReference) -> dict[str, Any]:
        """Whether the rule applies to the dataset (not to fractional formulas)."""
        return {"applicable": reference.integer_formulas}

    def __call__(self, generated: Any, prepared: dict[str, Any]) -> MetricResult:
        gen = GeneratedCompositions.wrap(generated)
        v = self.settings.validity
        extra: dict[str, Any] = {"mode": v.comp_valid_mode, "smact_table": v.smact_table}
        if not prepared.get("applicable", True):
            return MetricResult(
                math.nan, extra={**extra, "reason": _FRACTIONAL}
            )
        checks = gen.smact(v)
        flags = np.array([c.valid for c in checks], dtype=float)
        extra["per_sample_columns"] = {"smact_reason": [c.reason for c in checks]}
        if not len(flags):
            return MetricResult(math.nan, extra={**extra, "reason": "no generated items"})
        return MetricResult(float(flags.mean()), per_sample=flags, extra=extra)


class CompUnique(_CompositionMetric):
    """Distinct reduced formulas per readable item."""

    name = "comp_unique"
    description = "distinct reduced formulas / readable generated formulas"

    def __call__(self, generated: Any, prepared: Any) -> MetricResult:
        gen = GeneratedCompositions.wrap(generated)
        readable = gen.readable
        first = gen.first_occurrence()
        column = np.where([r is not None for r in gen.reduced], first.astype(float), np.nan)
        if not len(readable):
            return MetricResult(math.nan, per_sample=column, extra={"reason": "no readable formulas"})
        n_distinct = int(first.sum())
        return MetricResult(
            n_distinct / len(readable),
            per_sample=column,
            extra={"n_distinct": n_distinct, "n_readable": len(readable)},
        )


class CompNovel(_CompositionMetric):
    """Readable items whose reduced formula is not a training formula."""

    name = "comp_novel"
    description = "fraction of readable generated formulas not among the training formulas"

    def prepare(self, reference: CompositionReference) -> frozenset[str]:
        """The training formulas."""
        return frozenset(reference.train)

    def __call__(self, generated: Any, prepared: frozenset[str]) -> MetricResult:
        gen = GeneratedCompositions.wrap(generated)
        column = np.array([np.nan if r is None else float(r not in prepared) for r in gen.reduced])
        readable = ~np.isnan(column)
        if not readable.any():
            return MetricResult(math.nan, per_sample=column, extra={"reason": "no readable formulas"})
        return MetricResult(
            float(np.nanmean(column)),
            per_sample=column,
            extra={"n_novel": int(np.nansum(column)), "n_readable": int(readable.sum()),
                   "n_train": len(prepared)},
        )


class CompVUNRate(_CompositionMetric):
    """Valid, first occurrence and novel, over all generated items."""

    name = "comp_vun_rate"
    description = (
        "fraction of all generated formulas that are SMACT-valid, unique (first occurrence) and novel"
    )

    def prepare(self, reference: CompositionReference) -> dict[str, Any]:
        """The training formulas and whether SMACT validity applies."""
        return {"train": frozenset(reference.train), "applicable": reference.integer_formulas}

    def __call__(self, generated: Any, prepared: dict[str, Any]) -> MetricResult:
        gen = GeneratedCompositions.wrap(generated)
        if not prepared["applicable"]:
            return MetricResult(math.nan, extra={"reason": _FRACTIONAL})
        if not len(gen):
            return MetricResult(math.nan, extra={"reason": "no generated items"})
        valid = np.array([c.valid for c in gen.smact(self.settings.validity)], dtype=bool)
        novel = np.array([r is not None and r not in prepared["train"] for r in gen.reduced], dtype=bool)
        flags = (valid & gen.first_occurrence() & novel).astype(float)
        return MetricResult(float(flags.mean()), per_sample=flags, extra={"n_vun": int(flags.sum())})


class CompJSDElements(_CompositionMetric):
    """Jensen-Shannon distance (base 2) between element histograms, generated draw vs test split."""

    name = "comp_jsd_elements"
    direction: Literal["max", "min"] = "min"
    cacheable: ClassVar[bool] = True
    description = "Jensen-Shannon distance (base 2) of element histograms, generated draw vs test"

    def settings_key(self) -> dict[str, Any]:
        return {"element_weight": self.settings.element_weight}

    def prepare(self, reference: CompositionReference) -> dict[str, Any]:
        """The test split's element histogram."""
        return {
            "counts": element_histogram(reference.test, self.settings.element_weight),
            "n_reference": len(reference.test),
        }

    def __call__(self, generated: Any, prepared: dict[str, Any]) -> MetricResult:
        gen = GeneratedCompositions.wrap(generated)
        idx, extra = self._draw(gen)
        counts = element_histogram([gen.reduced[int(i)] for i in idx], self.settings.element_weight)
        extra.update(n_reference=prepared["n_reference"], element_weight=self.settings.element_weight)
        value = jsd_distance(counts, prepared["counts"])
        if math.isnan(value):
            extra["reason"] = "no readable formulas"
        return MetricResult(value, extra=extra)


class CompMagpieFD(_CompositionMetric):
    """Fréchet distance of standardised Magpie features, generated draw vs test split."""

    name = "comp_magpie_fd"
    direction: Literal["max", "min"] = "min"
    cacheable: ClassVar[bool] = True
    description = "Fréchet distance of train-standardised Magpie features, generated draw vs test"

    def settings_key(self) -> dict[str, Any]:
        return {"features": magpie_versions()}

    def prepare(self, reference: CompositionReference) -> dict[str, Any]:
        """Training mean/std of the features and the test split's moments of the standardised features."""
        x_train, ok_train = magpie_features(reference.train)
        x_test, ok_test = magpie_features(reference.test)
        center = x_train[ok_train].mean(axis=0)
        scale = x_train[ok_train].std(axis=0)
        scale = np.where(scale > 0, scale, 1.0)
        mu, cov = gaussian_moments((x_test[ok_test] - center) / scale)
        return {
            "center": center,
            "scale": scale,
            "mu": mu,
            "cov": cov,
            "n_reference": int(ok_test.sum()),
            "n_train": int(ok_train.sum()),
        }

    def __call__(self, generated: Any, prepared: dict[str, Any]) -> MetricResult:
        gen = GeneratedCompositions.wrap(generated)
        idx, extra = self._draw(gen)
        extra["n_reference"] = prepared["n_reference"]
        if len(idx) < 2:
            return MetricResult(math.nan, extra={**extra, "reason": "fewer than two readable formulas"})
        x = (gen.features(idx) - prepared["center"]) / prepared["scale"]
        mu, cov = gaussian_moments(x)
        return MetricResult(frechet_distance(mu, cov, prepared["mu"], prepared["cov"]), extra=extra)


class CompWDistProp(_CompositionMetric):
    """W1 distance between predicted targets of the generated draw and of the test split."""

    name = "comp_wdist_prop"
    direction: Literal["max", "min"] = "min"
    cacheable: ClassVar[bool] = True
    description = (
        "Wasserstein-1 distance of the target predicted from Magpie features, generated draw vs test"
    )

    def settings_key(self) -> dict[str, Any]:
        try:
            sklearn = metadata.version("scikit-learn")
        except metadata.PackageNotFoundError:  # pragma: no cover
            sklearn = None
        s = asdict(self.settings.property_model)
        s.pop("crystalnn", None)
        return {"model": s, "features": magpie_versions(), "scikit-learn": sklearn}

    def model_description(self) -> str:
        """The predictor, in words."""
        s = self.settings.property_model
        if s.model == "hgb":
            return (f"HistGradientBoostingRegressor(max_iter={s.max_iter}, learning_rate={s.learning_rate}, "
                    f"random_state={s.seed}, early_stopping=False) on 132 Magpie features")
        return f"Ridge(alpha={s.alpha}) on 132 standardised Magpie features"

    def unavailable(self, reference: CompositionReference) -> str | None:
        """Why the metric is undefined for ``reference`` (None when defined)."""
        if reference.train_targets is None or len(reference.train_targets) != len(reference.train):
            return "no training targets aligned with the training formulas"
        if np.isfinite(np.asarray(reference.train_targets, dtype=float)).sum() < 10:
            return "fewer than 10 finite training targets"
        if not reference.test:
            return "no test formulas"
        return None

    def prepare(self, reference: CompositionReference) -> dict[str, Any]:
        """Fit the predictor on the training formulas; predict the test split."""
        reason = self.unavailable(reference)
        if reason is not None:
            return {"reason": reason}
        s = self.settings.property_model
        t0 = time.perf_counter()
        x_train, ok = magpie_features(reference.train)
        y = np.asarray(reference.train_targets, dtype=float)
        keep = np.flatnonzero(ok & np.isfinite(y))
        if s.max_train is not None and len(keep) > s.max_train:
            rng = np.random.default_rng(s.seed)
            keep = np.sort(rng.choice(keep, size=s.max_train, replace=False))
        model = PropertyModel(s).fit(x_train[keep], y[keep])
        x_test, ok_test = magpie_features(reference.test)
        test_pred = model.predict(x_test[ok_test])
        out: dict[str, Any] = {
            "model": model,
            "test_pred": test_pred,
            "n_train": len(keep),
            "n_test": int(ok_test.sum()),
            "mae_test": math.nan,
            "mae_test_mean_baseline": math.nan,
            "test_true": None,
            "fit_seconds": round(time.perf_counter() - t0, 2),
        }
        if reference.test_targets is not None and len(reference.test_targets) == len(reference.test):
            true = np.asarray(reference.test_targets, dtype=float)[ok_test]
            finite = np.isfinite(true)
            if finite.any():
                out["test_true"] = true[finite]
                out["mae_test"] = float(np.mean(np.abs(test_pred[finite] - true[finite])))
                out["mae_test_mean_baseline"] = float(np.mean(np.abs(true[finite] - y[keep].mean())))
        return out

    def __call__(self, generated: Any, prepared: dict[str, Any]) -> MetricResult:
        if "reason" in prepared:
            return MetricResult(math.nan, extra={"reason": prepared["reason"]})
        gen = GeneratedCompositions.wrap(generated)
        idx, extra = self._draw(gen)
        extra.update(
            model=self.model_description(),
            mae_test=prepared["mae_test"],
            mae_test_mean_baseline=prepared["mae_test_mean_baseline"],
            n_train=prepared["n_train"],
            n_test=prepared["n_test"],
        )
        if not len(idx):
            return MetricResult(math.nan, extra={**extra, "reason": "no readable formulas"})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pred = prepared["model"].predict(gen.features(idx))
        value = float(wasserstein_distance(pred, prepared["test_pred"]))
        if prepared.get("test_true") is not None:
            extra["wdist_prop_vs_true_test"] = float(wasserstein_distance(pred, prepared["test_true"]))
        column = np.full(len(gen), np.nan)
        column[idx] = pred
        extra["per_sample_columns"] = {"predicted_target": column}
        return MetricResult(value, extra=extra)


COMPOSITION_METRICS: dict[str, type[_CompositionMetric]] = {
    "comp_smact_valid": CompSmactValid,
    "comp_unique": CompUnique,
    "comp_novel": CompNovel,
    "comp_vun_rate": CompVUNRate,
    "comp_jsd_elements": CompJSDElements,
    "comp_magpie_fd": CompMagpieFD,
    "comp_wdist_prop": CompWDistProp,
}


# ------------------------------------------------------------------------------------------- runner


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def evaluate_compositions(
    items: Sequence[str | None],
    reference: CompositionReference,
    settings: CompositionMetricSettings | None = None,
    names: Sequence[str] | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
) -> MetricReport:
    """Score generated formulas against a reference (the composition track's metrics).

    Args:
        items: generated formulas; ``None`` for an item a model failed to produce.
        reference: the split to score against (:func:`build_reference`).
        settings: metric settings (defaults: :class:`CompositionMetricSettings`).
        names: metrics to compute (default: all of :data:`COMPOSITION_METRICS`, in that order).
        cache_dir: cache root for reference-side statistics; defaults to ``$MATGENBENCH_CACHE_DIR``.
        use_cache: False disables the on-disk cache.

    Returns:
        A :class:`~bench.metrics.base.MetricReport`: metric entries (value, direction, description, version
        and details), a per-sample table, counts and settings.
    """
    from bench.datasets.download import default_cache_dir
    from bench.metrics.runner import package_versions

    settings = settings or CompositionMetricSettings()
    names = list(names) if names is not None else list(COMPOSITION_METRICS)
    unknown = [n for n in names if n not in COMPOSITION_METRICS]
    if unknown:
        raise ValueError(f"unknown composition metric(s) {unknown}; known: {list(COMPOSITION_METRICS)}")
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    gen = GeneratedCompositions.wrap(items)
    entries: dict[str, dict[str, Any]] = {}
    results: dict[str, MetricResult] = {}
    prepared_of: dict[str, Any] = {}  # the funnel's plausible screen reuses comp_wdist_prop's predictor
    for name in names:
        metric = COMPOSITION_METRICS[name](settings)
        shash = settings_hash({"version": metric.version, **metric.settings_key()})
        path = None
        missing = metric.unavailable(reference) if hasattr(metric, "unavailable") else None
        if use_cache and metric.cacheable and reference.checksum and missing is None:
            path = cache_path(root, f"compositions-{reference.checksum}", name, shash)
        t0 = time.perf_counter()
        prepared, hit = cached(path, lambda m=metric: m.prepare(reference))
        prepare_seconds = time.perf_counter() - t0
        prepared_of[name] = prepared
        t0 = time.perf_counter()
        result = metric(gen, prepared)
        seconds = time.perf_counter() - t0
        results[name] = result
        extra = {k: v for k, v in result.extra.items() if k != "per_sample_columns"}
        entries[name] = _jsonable(
            {
                "value": float(result.value),
                "direction": metric.direction,
                "description": metric.description,
                "version": metric.version,
                **extra,
                "seconds": round(seconds, 4),
                "prepare_seconds": round(prepare_seconds, 4),
                "prepare_cache": "off" if path is None else ("hit" if hit else "miss"),
            }
        )
        logger.info("%s = %.4g (%s, %.2f s)", name, result.value, metric.direction, seconds)

    draw = gen.draw(settings.max_samples, settings.seed)
    frame = pd.DataFrame(
        {
            "formula": [item if isinstance(item, str) else None for item in gen.items],
            "reduced_formula": gen.reduced,
            "read_error": gen.reasons,
            "in_distribution_draw": np.isin(np.arange(len(gen)), draw),
        }
    )
    column_names = {"comp_smact_valid": "smact_valid", "comp_unique": "unique", "comp_novel": "novel",
                    "comp_vun_rate": "vun"}
    for name, result in results.items():
        if result.per_sample is not None:
            frame[column_names.get(name, name)] = result.per_sample
        for col, values in result.extra.get("per_sample_columns", {}).items():
            frame[col] = values
    funnel, frame["funnel_stage"] = _funnel(gen, frame, reference, settings, prepared_of, entries)
    counts = {
        "n_generated": len(gen),
        "n_readable": len(gen.readable),
        "n_distinct": int(gen.first_occurrence().sum()),
        "n_distribution_draw": len(draw),
        "n_train": len(reference.train),
        "n_test": len(reference.test),
    }
    report_settings = {
        **settings.to_dict(),
        "reference": {"dataset": reference.dataset, "split": reference.split, "checksum": reference.checksum,
                      "target": reference.target},
        "versions": {**package_versions(), **magpie_versions()},
    }
    return MetricReport(metrics=entries, per_sample=frame, counts=counts, settings=_jsonable(report_settings),
                        funnel=_jsonable(funnel))


def _funnel(
    gen: GeneratedCompositions, frame: pd.DataFrame, reference: CompositionReference,
    settings: CompositionMetricSettings, prepared: Mapping[str, Any],
    entries: Mapping[str, Mapping[str, Any]],
) -> tuple[dict[str, Any], list[str]]:
    """The usability funnel of the composition track (:mod:`bench.metrics.funnel`) from the per-sample table,
    and the last stage each item reaches. The plausible screen is ``comp_wdist_prop``'s predictor and the
    central 99% of the training targets; formulas that reach ``novel`` outside the distribution draw are
    predicted by the same model."""
    from bench.metrics.funnel import SCREENED_COLUMN, PlausibleScreen, funnel_from_table

    reasons: dict[str, str] = {}
    valid_entry = entries.get("comp_smact_valid") or {}
    if valid_entry.get("reason") and "smact_valid" not in frame.columns:
        reasons["valid"] = str(valid_entry["reason"])
    model_side = prepared.get("comp_wdist_prop")
    screen, why = None, None
    if model_side is None:
        why = "comp_wdist_prop, whose predictor the screen uses, was not computed"
    elif "reason" in model_side:
        why = f"no predictor: {model_side['reason']}"
    else:
        try:
            screen = PlausibleScreen.from_training(
                reference.target or "target", np.asarray(reference.train_targets, dtype=float),
                CompWDistProp(settings).model_description())
        except (TypeError, ValueError) as err:
            why = str(err)
    if screen is None:
        return funnel_from_table(frame, "composition", screen=None, screen_reason=why, reasons=reasons)
    predicted = (frame["predicted_target"].to_numpy(dtype=float) if "predicted_target" in frame.columns
                 else np.full(len(frame), np.nan))
    _, last = funnel_from_table(frame, "composition", screen=None, reasons=reasons)
    todo = np.array([i for i, stage in enumerate(last) if stage == "novel" and not np.isfinite(predicted[i])],
                    dtype=np.int64)
    if len(todo):
        predicted = predicted.copy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            predicted[todo] = model_side["model"].predict(gen.features(todo))
    reached = np.array([stage in ("novel", "plausible") for stage in last], dtype=bool)
    frame[SCREENED_COLUMN] = np.where(reached, predicted, np.nan)
    return funnel_from_table(frame, "composition", screen=screen, predicted=predicted, reasons=reasons)


def reference_rows(
    reference: CompositionReference,
    n: int = 1000,
    seed: int = 0,
    settings: CompositionMetricSettings | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
) -> dict[str, MetricReport]:
    """The reference rows: ``n`` formulas drawn from the test split and from the validation split (seeded,
    without replacement), and ``n`` seeded random compositions, each scored like a model's samples.

    Args:
        reference: the split (its ``val`` formulas give the validation row; skipped when empty).
        n: items per row.
        seed: seed of the draws and of the random compositions.
        settings: metric settings.
        cache_dir: cache root; defaults to ``$MATGENBENCH_CACHE_DIR``.
        use_cache: False disables the on-disk cache.

    Returns:
        Row name (``test``, ``val``, ``random``) -> report.
    """
    return {
        name: evaluate_compositions(items, reference, settings, cache_dir=cache_dir, use_cache=use_cache)
        for name, items in reference_items(reference, n, seed).items()
    }


def reference_items(reference: CompositionReference, n: int = 1000, seed: int = 0) -> dict[str, list[str]]:
    """The formulas of the reference rows (:func:`reference_rows`): a seeded draw of ``n`` test formulas,
    then of ``n`` validation formulas (one generator, in that order; skipped when the split is empty), and
    ``n`` random compositions (:func:`random_compositions`).

    Returns:
        Row name (``test``, ``val``, ``random``) -> formulas.
    """
    rng = np.random.default_rng(seed)
    rows: dict[str, list[str]] = {}
    for name, pool in (("test", reference.test), ("val", reference.val)):
        if pool:
            take = rng.choice(len(pool), size=min(n, len(pool)), replace=False)
            rows[name] = [pool[int(i)] for i in np.sort(take)]
    rows["random"] = random_compositions(reference.train, n, seed=seed)
    return rows
