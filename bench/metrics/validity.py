"""Validity rates: ``struct_valid``, ``comp_valid`` and ``valid``, each a fraction over all generated items.

Definitions: Xie et al. 2022, CDVAE, scripts/compute_metrics.py (``GenEval.get_validity``) with the per-item
rules of scripts/eval_utils.py; unconstructed items (including ``None``) count as struct-invalid, and as
comp-invalid unless their atoms are known (a decode failure's species, see
:class:`bench.metrics.generated.GeneratedSet`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from pymatgen.core import Structure

from bench.metrics.base import GeneratedOnlyMetric, MetricResult
from bench.metrics.generated import GeneratedSet

__all__ = ["CompValid", "StructValid", "Valid"]


class _ValidityRate(GeneratedOnlyMetric):
    """Fraction of all generated items whose record flag ``flag`` is true."""

    name: ClassVar[str]
    flag: ClassVar[str]
    description: ClassVar[str]
    direction: Literal["max", "min"] = "max"

    def _extra(self, gset: GeneratedSet) -> dict[str, Any]:
        return {}

    def __call__(self, generated: Sequence[Structure | None], prepared: Any = None) -> MetricResult:
        gset = GeneratedSet.wrap(generated, self.settings.validity, parallel=self.settings.parallel)
        flags = gset.flags(self.flag)
        n = len(flags)
        value = float(flags.mean()) if n else math.nan
        extra: dict[str, Any] = {f"n_{self.flag}": int(flags.sum()), "n_generated": n, **self._extra(gset)}
        if not n:
            extra["reason"] = "no generated items"
        return MetricResult(value=value, per_sample=flags.astype(float), extra=extra)


class StructValid(_ValidityRate):
    """Fraction of generated items with all distances >= ``min_distance`` and volume >= ``min_volume``."""

    name = "struct_valid"
    flag = "struct_valid"
    description = "fraction of generated items with no two atoms closer than 0.5 Å (CDVAE)"


class CompValid(_ValidityRate):
    """Fraction of generated items whose composition passes CDVAE's SMACT rule."""

    name = "comp_valid"
    # 1.1: Pauling test follows smact 2.2.1 on missing electronegativities; 1.2: items whose lattice failed to
    # decode are scored on their atom types (CDVAE's rule) instead of counting as comp-invalid
    version = "1.2"
    flag = "comp_valid"
    description = (
        "fraction of generated items with a charge-neutral, electronegativity-consistent composition "
        "(CDVAE SMACT rule)"
    )


class Valid(_ValidityRate):
    """Fraction of generated items that are structurally and compositionally valid (and, with
    ``validity.require_fingerprint``, have a computable CrystalNN fingerprint, as in CDVAE)."""

    name = "valid"
    # 1.1: as comp_valid; 1.2: with comp_valid 1.2 (the value cannot change: a decode failure is never
    # struct_valid), bumped so a record says which comp_valid rule it was computed with
    version = "1.2"
    flag = "valid"
    description = (
        "fraction of generated items that are both struct_valid and comp_valid and have a CrystalNN "
        "fingerprint (CDVAE)"
    )

    def _extra(self, gset: GeneratedSet) -> dict[str, Any]:
        return {
            "require_fingerprint": self.settings.validity.require_fingerprint,
            "n_fingerprint_failed": sum(r.fingerprint_ok is False for r in gset.records),
        }
