"""Structure and composition fingerprints of crystals, as CDVAE defines them, computed in a worker pool.

Definitions (Xie et al. 2022, CDVAE, txie-93/cdvae scripts/compute_metrics.py ``Crystal.get_fingerprints`` and
scripts/eval_utils.py ``CompScaler``):

- structure fingerprint: matminer ``CrystalNNFingerprint.from_preset("ops")`` of every site, averaged over the
  sites (61 values); by default its order parameters are computed by :mod:`bench.metrics.site_ops` (same
  values; that part about ten times faster, the whole fingerprint 1.5-2.5 times),
  ``parallel.fingerprint_code=matminer`` runs matminer's own code;
- composition fingerprint: matminer ``ElementProperty.from_preset("magpie")`` (132 values; missing element
  data stay NaN, as in the matminer release CDVAE used), standardised with CDVAE's fixed means and standard
  deviations (``data/cdvae_comp_scaler.json``) and NaN replaced by 0 (:func:`scale_composition`);
- a structure whose structure fingerprint raises has neither fingerprint, and CDVAE counts it as invalid.

Reference structures are put in CDVAE's form first (:func:`cdvae_reference_form`: Niggli-reduced, not made
primitive, lattice rebuilt from its parameters; cdvae/common/data_utils.py ``build_crystal``).

matminer is slow to import (seconds), so it is imported only inside the functions that need it.
"""

from __future__ import annotations

import functools
import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata, resources
from typing import Any

import numpy as np
from pymatgen.core import Composition, Lattice, Structure

from bench.metrics.parallel import map_chunks
from bench.metrics.settings import FINGERPRINT_CODES, ParallelSettings
from bench.metrics.site_ops import ops_fingerprint_from_nndata

__all__ = [
    "COMP_FP_SIZE",
    "FINGERPRINT_VERSION",
    "STRUCT_FP_SIZE",
    "Fingerprint",
    "comp_scaler",
    "compute_fingerprints",
    "composition_fingerprint",
    "cdvae_reference_form",
    "fingerprint_one",
    "fingerprint_versions",
    "reference_fingerprints",
    "scale_composition",
    "stack",
    "structure_fingerprint",
]

logger = logging.getLogger(__name__)

FINGERPRINT_VERSION = "1"
STRUCT_FP_SIZE = 61
COMP_FP_SIZE = 132


@dataclass(frozen=True)
class Fingerprint:
    """The fingerprints of one structure.

    Attributes:
        struct: Mean CrystalNN site fingerprint, or None when it could not be computed.
        comp: Raw (unscaled) Magpie composition features, or None when the structure fingerprint failed
            (CDVAE drops both together).
        reason: Empty when both exist, else why not (``not_constructed: ...``, ``crystalnn_failed: ...``).
    """

    struct: np.ndarray | None
    comp: np.ndarray | None
    reason: str = ""

    @property
    def ok(self) -> bool:
        """Both fingerprints exist."""
        return self.struct is not None and self.comp is not None


@functools.cache
def _featurizers() -> tuple[Any, Any]:
    """The two matminer featurizers (built once per process; importing matminer takes seconds)."""
    from matminer.featurizers.composition.composite import ElementProperty
    from matminer.featurizers.site.fingerprint import CrystalNNFingerprint

    site = CrystalNNFingerprint.from_preset("ops")
    # impute_nan=False: keep NaN for missing element data, as the matminer release CDVAE ran did
    comp = ElementProperty.from_preset("magpie", impute_nan=False)
    return site, comp


@functools.cache
def comp_scaler() -> tuple[np.ndarray, np.ndarray]:
    """CDVAE's fixed means and standard deviations of the 132 Magpie features (``CompScalerMeans/Stds``)."""
    text = resources.files("bench.metrics").joinpath("data", "cdvae_comp_scaler.json").read_text()
    data = json.loads(text)
    means, stds = np.asarray(data["means"], dtype=float), np.asarray(data["stds"], dtype=float)
    if means.shape != (COMP_FP_SIZE,) or stds.shape != (COMP_FP_SIZE,):
        raise ValueError("cdvae_comp_scaler.json must hold 132 means and 132 stds")
    return means, stds


def scale_composition(raw: np.ndarray) -> np.ndarray:
    """Standardise raw Magpie features with CDVAE's fixed scaler; NaN becomes 0 (``replace_nan_token=0``).

    Args:
        raw: Array of shape ``(n, 132)`` (or ``(132,)``).

    Returns:
        The scaled array, same shape.
    """
    means, stds = comp_scaler()
    scaled = (np.asarray(raw, dtype=float) - means) / stds
    return np.where(np.isnan(scaled), 0.0, scaled)


def fingerprint_versions() -> dict[str, str | None]:
    """Versions of the packages the fingerprints depend on (part of every fingerprint cache key)."""
    out: dict[str, str | None] = {"fingerprint": FINGERPRINT_VERSION}
    for dist in ("matminer", "pymatgen", "pymatgen-core"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def cdvae_reference_form(structure: Structure) -> Structure:
    """A reference structure as CDVAE evaluates it: Niggli-reduced (not primitive), lattice from parameters.

    Follows cdvae/common/data_utils.py ``build_crystal(niggli=True, primitive=False)``.
    """
    reduced = structure.get_reduced_structure()
    return Structure(
        Lattice.from_parameters(*reduced.lattice.parameters),
        reduced.species,
        reduced.frac_coords,
        coords_are_cartesian=False,
    )


def _check_code(code: str) -> None:
    if code not in FINGERPRINT_CODES:
        raise ValueError(f"fingerprint code must be one of {FINGERPRINT_CODES}, got {code!r}")


def structure_fingerprint(structure: Structure, code: str = "numpy") -> np.ndarray:
    """Mean over sites of the CrystalNN ``ops`` site fingerprint (raises when CrystalNN fails).

    Args:
        structure: The structure.
        code: ``numpy``: CrystalNN's neighbours (pymatgen), then the order parameters vectorised
            (:func:`bench.metrics.site_ops.ops_fingerprint_from_nndata`); ``matminer``: matminer's
            ``CrystalNNFingerprint.featurize``, the code CDVAE ran. Both give the same values to about 1e-15.
    """
    _check_code(code)
    site, _ = _featurizers()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if code == "matminer":
            rows = [site.featurize(structure, i) for i in range(len(structure))]
        else:
            rows = [
                ops_fingerprint_from_nndata(structure, i, site.cnn.get_nn_data(structure, i))
                for i in range(len(structure))
            ]
    return np.asarray(rows, dtype=float).mean(axis=0)


def composition_fingerprint(composition: Composition) -> np.ndarray:
    """Raw Magpie features of a composition (element amounts; oxidation states are ignored).

    Memoised per exact element amounts (the features depend on atomic fractions only, but their rounding
    depends on the amounts, and CDVAE featurises the cell's own composition).
    """
    elements = composition.element_composition
    key = " ".join(f"{el.symbol}{amount!r}" for el, amount in sorted(elements.items()))
    return _magpie(key, elements).copy()


_MAGPIE_MEMO: dict[str, np.ndarray] = {}


def _magpie(key: str, elements: Composition) -> np.ndarray:
    if key not in _MAGPIE_MEMO:
        _, comp = _featurizers()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _MAGPIE_MEMO[key] = np.asarray(comp.featurize(elements), dtype=float)
        if len(_MAGPIE_MEMO) > 100_000:
            _MAGPIE_MEMO.clear()
    return _MAGPIE_MEMO[key]


def fingerprint_one(
    structure: Structure | None, reference_form: bool = False, code: str = "numpy"
) -> Fingerprint:
    """Both fingerprints of one structure; failures are reported in ``reason``, never raised.

    Args:
        structure: The structure (None: not constructed).
        reference_form: Put the structure in CDVAE's reference form first (:func:`cdvae_reference_form`).
        code: Which code computes the site fingerprint (:func:`structure_fingerprint`).
    """
    _check_code(code)  # here too: an error inside the try below means "fingerprint failed"
    if structure is None or len(structure) == 0:
        return Fingerprint(None, None, "not_constructed")
    try:
        if reference_form:
            structure = cdvae_reference_form(structure)
        comp = composition_fingerprint(structure.composition)
        struct = structure_fingerprint(structure, code)
    except Exception as err:  # CDVAE: a structure whose fingerprint raises is dropped (and invalid)
        return Fingerprint(None, None, f"crystalnn_failed: {type(err).__name__}: {err}"[:200])
    if struct.shape != (STRUCT_FP_SIZE,):
        return Fingerprint(None, None, f"crystalnn_failed: unexpected shape {struct.shape}")
    return Fingerprint(struct, comp, "")


def _fingerprint_chunk(chunk: list[Structure | None], reference_form: bool, code: str) -> list[Fingerprint]:
    return [fingerprint_one(s, reference_form, code) for s in chunk]


def compute_fingerprints(
    structures: Sequence[Structure | None],
    settings: ParallelSettings | None = None,
    progress: bool = False,
    desc: str = "fingerprints",
    reference_form: bool = False,
) -> list[Fingerprint]:
    """Fingerprints of many structures, in order; large inputs go to a worker pool (``metrics.parallel``).

    Args:
        structures: The structures (None entries give a ``not_constructed`` failure).
        settings: Worker count, chunk size and start method.
        progress: Show a progress bar.
        desc: Progress-bar label.
        reference_form: Put each structure in CDVAE's reference form first.

    Returns:
        One :class:`Fingerprint` per input.
    """
    if structures:
        _featurizers()  # import matminer once here; forked workers inherit it
    code = (settings or ParallelSettings()).fingerprint_code
    fn = functools.partial(_fingerprint_chunk, reference_form=reference_form, code=code)
    return map_chunks(fn, list(structures), settings, progress=progress, desc=desc)[0]


def stack(fps: Sequence[Fingerprint]) -> tuple[np.ndarray, np.ndarray]:
    """The structure and raw composition fingerprints of successful entries as two 2-D arrays."""
    ok = [fp for fp in fps if fp.ok]
    struct = np.array([fp.struct for fp in ok], dtype=float).reshape(len(ok), STRUCT_FP_SIZE)
    comp = np.array([fp.comp for fp in ok], dtype=float).reshape(len(ok), COMP_FP_SIZE)
    return struct, comp


# Reference fingerprints computed in this process, so the metrics of one run that need the same split (the
# coverage metrics and wdist_prop) compute them once even when their disk caches are cold. Keyed by the
# identity of the split's list; the list is held so the identity stays valid.
_REFERENCE_MEMO: dict[tuple[int, int], tuple[Sequence[Structure | None], dict[str, Any]]] = {}
_REFERENCE_MEMO_SIZE = 4


def reference_fingerprints(
    structures: Sequence[Structure | None],
    settings: ParallelSettings | None = None,
    progress: bool = False,
    desc: str = "fingerprints (reference)",
) -> dict[str, Any]:
    """Fingerprints of a reference split, each structure in CDVAE's reference form (picklable summary).

    Args:
        structures: The split's structures.
        settings: How to compute (workers, chunk size).
        progress: Show a progress bar.
        desc: Progress-bar label.

    Returns:
        ``struct`` (n_ok, 61), ``comp_raw`` and ``comp_scaled`` (n_ok, 132), ``index`` (positions of the
        fingerprinted structures in the split), ``n_reference``, ``n_failed`` and ``failures`` (the first
        twenty ``(position, reason)``).
    """
    key = (id(structures), len(structures))
    held = _REFERENCE_MEMO.get(key)
    if held is not None and held[0] is structures:
        return held[1]
    fps = compute_fingerprints(structures, settings, progress=progress, desc=desc, reference_form=True)
    struct, comp = stack(fps)
    failures = [(i, fp.reason) for i, fp in enumerate(fps) if not fp.ok]
    if failures:
        logger.warning(
            "%d of %d reference structures have no fingerprint and are left out (first: %s)",
            len(failures),
            len(fps),
            failures[0],
        )
    out = {
        "struct": struct,
        "comp_raw": comp,
        "comp_scaled": scale_composition(comp),
        "index": np.array([i for i, fp in enumerate(fps) if fp.ok], dtype=int),
        "n_reference": len(fps),
        "n_failed": len(failures),
        "failures": failures[:20],
    }
    if len(_REFERENCE_MEMO) >= _REFERENCE_MEMO_SIZE:
        _REFERENCE_MEMO.pop(next(iter(_REFERENCE_MEMO)))
    _REFERENCE_MEMO[key] = (structures, out)
    return out
