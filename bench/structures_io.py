"""Reading and writing sets of generated structures, so evaluation can score any model's samples.

Formats read: the samples CSV this project writes (``cif`` column plus ``status``/``reason``), any CSV with a
``cif`` column (CDVAE's data files, other models' dumps), a folder of ``.cif`` files, a pymatgen JSON list,
extended XYZ (``.extxyz``/``.xyz``, through ASE, an optional dependency) and CDVAE's ``eval_gen.pt`` tensors.
Items that could not be constructed are kept as ``None`` with their reason, so the denominator of validity is
the number of samples asked for, as in CDVAE. Where the atom types of such an item are known (a decode
failure of the lattice; a CDVAE tensor whose cell pymatgen refuses) its composition is kept too
(``composition`` column, :attr:`SampleSet.compositions`), so composition validity still scores it, as CDVAE
does. A file with no samples at all is refused: zero samples are no
result.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
import sys
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymatgen.core import Structure

from bench.io_utils import atomic_write_text

__all__ = [
    "CONDITION_PREFIX", "SampleSet", "read_samples", "write_samples_csv", "samples_digest", "SampleFileError",
]

log = logging.getLogger(__name__)


CONDITION_PREFIX = "condition_"
"""A samples CSV's ``condition_<column>`` column holds the property value each item was requested at."""


class SampleFileError(ValueError):
    """A samples file or folder that cannot be read; the message names the path and what would fix it."""


@dataclass
class SampleSet:
    """Structures to score: ``None`` where an item failed to be built, with the reason in ``reasons``."""

    structures: list[Structure | None]
    ids: list[str]
    reasons: list[str | None]
    source: str
    meta: dict = field(default_factory=dict)
    compositions: list[dict[str, float] | None] = field(default_factory=list)
    """Per item, the element amounts of an item that was not built but whose atoms are known (None where
    unknown or where the structure exists); empty when the format keeps none."""
    conditions: dict[str, list[float]] = field(default_factory=dict)
    """Per property column, the value each item was requested at (NaN where none): the samples CSV's
    ``condition_<column>`` columns, written when a conditional model was sampled at requested values; empty
    when the file carries none."""

    @property
    def n_constructed(self) -> int:
        return sum(s is not None for s in self.structures)


def samples_digest(sample_set: SampleSet, decimals: int = 5) -> str:
    """SHA-256 of the scored structures (lattice, species, fractional coordinates rounded to ``decimals``).

    Independent of the file format, so two runs that generated the same crystals have the same digest; the
    ``reproduce`` command uses it to tell an exact re-run (every metric must agree) from a statistical one.
    """
    import hashlib

    import numpy as np

    digest = hashlib.sha256()
    compositions = sample_set.compositions or [None] * len(sample_set.structures)
    for structure, reason, comp in zip(sample_set.structures, sample_set.reasons, compositions, strict=False):
        if structure is None:
            # the atoms of a failure count too, where known (files without them digest as before)
            kept = "" if comp is None else "|" + ",".join(f"{el}:{n:g}" for el, n in sorted(comp.items()))
            digest.update(f"failed:{reason}{kept}\n".encode())
            continue
        lattice = np.round(structure.lattice.matrix, decimals) + 0.0  # + 0.0 turns -0.0 into 0.0
        coords = np.round(np.mod(structure.frac_coords, 1.0), decimals) % 1.0 + 0.0
        digest.update(np.array2string(lattice, precision=decimals, floatmode="fixed").encode())
        for species, xyz in zip(structure.species, coords, strict=True):
            digest.update(f"{species}:{xyz[0]:.{decimals}f},{xyz[1]:.{decimals}f},{xyz[2]:.{decimals}f};".encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _parse_cif(text: str) -> Structure:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Structure.from_str(text, fmt="cif")


def write_samples_csv(
    path: str | Path, items: Sequence[Structure | object], meta: dict | None = None,
    conditions: Mapping[str, Sequence[float]] | None = None,
) -> Path:
    """Write generated items as CSV (``index,status,reason,formula,cif,composition``); failures keep their
    reason and, when they carry ``species`` (a :class:`bench.datasets.DecodeFailure`), their composition.

    A ``<path>.meta.json`` sidecar carries ``meta`` (model, seed, timings) for the evaluate stage.

    Args:
        conditions: per property column, the value each item was requested at; written as
            ``condition_<column>`` columns after the others (none when None or empty).
    """
    import io

    from pymatgen.core import Composition

    conditions = dict(conditions or {})
    for column, values in conditions.items():
        if len(values) != len(items):
            raise ValueError(f"{len(values)} requested values of {column!r} for {len(items)} items")
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["index", "status", "reason", "formula", "cif", "composition",
                     *(f"{CONDITION_PREFIX}{column}" for column in conditions)])
    for i, item in enumerate(items):
        requested = [repr(float(values[i])) for values in conditions.values()]
        if isinstance(item, Structure):
            writer.writerow([i, "ok", "", item.composition.reduced_formula, item.to(fmt="cif"), "",
                             *requested])
        else:
            species = tuple(getattr(item, "species", ()) or ())
            comp = Composition(dict(Counter(species))) if species else None
            writer.writerow([i, "failed", getattr(item, "reason", str(item)),
                             comp.reduced_formula if comp else "", "", comp.formula if comp else "",
                             *requested])
    path = atomic_write_text(path, buf.getvalue())
    if meta is not None:
        atomic_write_text(Path(f"{path}.meta.json"), json.dumps(meta, indent=2, sort_keys=True, default=str))
    return path


_COMPRESSED_CSV = (".csv.xz", ".csv.gz")
"""Compressed samples CSVs read as they are (the board ships each record's scored samples as ``.csv.xz``)."""


def _open_csv(path: Path) -> Any:
    """A text handle on a samples CSV, decompressing ``.csv.xz`` / ``.csv.gz``."""
    name = path.name.lower()
    if name.endswith(".xz"):
        import lzma

        return lzma.open(path, "rt", newline="", encoding="utf-8")
    if name.endswith(".gz"):
        import gzip

        return gzip.open(path, "rt", newline="", encoding="utf-8")
    return open(path, newline="", encoding="utf-8")


def _read_csv(path: Path) -> SampleSet:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    structures: list[Structure | None] = []
    ids: list[str] = []
    reasons: list[str | None] = []
    compositions: list[dict[str, float] | None] = []
    with _open_csv(path) as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None:
            raise SampleFileError(f"{path}: the file is empty; a samples CSV needs a 'cif' column")
        if "cif" not in reader.fieldnames:
            raise SampleFileError(
                f"{path}: no 'cif' column (columns: {reader.fieldnames}); a samples CSV needs one CIF per row"
            )
        id_col = next((c for c in ("index", "material_id", "id") if c in reader.fieldnames), None)
        condition_cols = [c for c in reader.fieldnames if c.startswith(CONDITION_PREFIX)]
        conditions: dict[str, list[float]] = {c.removeprefix(CONDITION_PREFIX): [] for c in condition_cols}
        for row_no, row in enumerate(reader):
            ids.append(str(row[id_col]) if id_col else str(row_no))
            for col in condition_cols:
                value = _requested(row.get(col), path, row_no, col)
                conditions[col.removeprefix(CONDITION_PREFIX)].append(value)
            if row.get("status", "ok") != "ok" or not (row.get("cif") or "").strip():
                structures.append(None)
                reasons.append(row.get("reason") or "no structure in this row")
                compositions.append(_composition(row.get("composition"), path, row_no))
                continue
            compositions.append(None)
            try:
                structures.append(_parse_cif(row["cif"]))
                reasons.append(None)
            except Exception as err:
                structures.append(None)
                reasons.append(f"unreadable CIF: {err}")
                # its atoms are still known (CDVAE scores a crystal's composition whatever its geometry)
                compositions[-1] = (_cif_composition(row["cif"])
                                    or _composition(row.get("formula"), path, row_no))
    meta_path = Path(f"{path}.meta.json")
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    return SampleSet(structures, ids, reasons, str(path), meta, compositions, conditions)


def _requested(text: str | None, path: Path, row_no: int, column: str) -> float:
    """A requested value of a ``condition_<column>`` cell; NaN when empty.

    Raises:
        SampleFileError: the cell is not a number.
    """
    if not (text or "").strip():
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise SampleFileError(
            f"{path} row {row_no}: {column}={text!r} is not a number (a requested property value)"
        ) from None


def _composition(text: str | None, path: Path, row_no: int) -> dict[str, float] | None:
    """Element amounts of a failed row's ``composition`` cell (``C24``, ``Sr1 Ti1 O3``); None when empty."""
    if not (text or "").strip():
        return None
    from pymatgen.core import Composition

    try:
        comp = Composition(text)
        return {el.symbol: float(n) for el, n in comp.element_composition.items()}
    except Exception as err:
        log.warning("%s row %d: unreadable composition %r (%s); scored as unknown", path, row_no, text, err)
        return None


_FORMULA_SUM = re.compile(r"^_chemical_formula_sum\s+(?:'([^']*)'|\"([^\"]*)\"|(\S+))", re.MULTILINE)


def _cif_composition(text: str) -> dict[str, float] | None:
    """Element amounts from a CIF's ``_chemical_formula_sum`` (the whole cell's atoms, as pymatgen writes it);
    None when the tag is missing or unreadable.

    Used for a CIF that cannot be built into a structure (pymatgen refuses, e.g., two sites within its
    merge tolerance): the item stays struct-invalid and its composition is still scored.
    """
    match = _FORMULA_SUM.search(text or "")
    if match is None:
        return None
    from pymatgen.core import Composition

    try:
        comp = Composition(next(g for g in match.groups() if g is not None))
        return {el.symbol: float(n) for el, n in comp.element_composition.items()} or None
    except Exception:  # not a formula pymatgen can read
        return None


def _read_cif_folder(path: Path) -> SampleSet:
    files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".cif")
    if not files:
        raise SampleFileError(f"{path}: folder holds no .cif files")
    structures: list[Structure | None] = []
    reasons: list[str | None] = []
    compositions: list[dict[str, float] | None] = []
    for file in files:
        text = file.read_text()
        try:
            structures.append(_parse_cif(text))
            reasons.append(None)
            compositions.append(None)
        except Exception as err:
            structures.append(None)
            reasons.append(f"unreadable CIF: {err}")
            compositions.append(_cif_composition(text))
    return SampleSet(structures, [f.stem for f in files], reasons, str(path), compositions=compositions)


def _read_json(path: Path) -> SampleSet:
    data = json.loads(path.read_text())
    if isinstance(data, dict) and "structures" in data:
        data = data["structures"]
    if not isinstance(data, list):
        raise SampleFileError(f"{path}: expected a JSON list of pymatgen structure dicts")
    structures: list[Structure | None] = []
    reasons: list[str | None] = []
    for item in data:
        try:
            structures.append(Structure.from_dict(item))
            reasons.append(None)
        except Exception as err:
            structures.append(None)
            reasons.append(f"unreadable structure dict: {err}")
    return SampleSet(structures, [str(i) for i in range(len(data))], reasons, str(path))


def _read_extxyz(path: Path) -> SampleSet:
    try:
        from ase.io import read as ase_read
        from pymatgen.io.ase import AseAtomsAdaptor
    except ImportError:
        raise SampleFileError(
            f"{path}: reading extended XYZ needs ASE: pip install 'matgenbench[ase]' (or convert to CIF)"
        ) from None
    try:
        frames = ase_read(str(path), index=":", format="extxyz")
    except Exception as err:
        raise SampleFileError(f"{path}: not a readable extended XYZ file ({err})") from err
    structures: list[Structure | None] = []
    reasons: list[str | None] = []
    for atoms in frames:
        try:
            if not atoms.pbc.all() or atoms.cell.volume <= 0:
                raise ValueError("frame has no periodic cell (Lattice=... missing)")
            structures.append(AseAtomsAdaptor.get_structure(atoms))
            reasons.append(None)
        except Exception as err:
            structures.append(None)
            reasons.append(f"unusable frame: {err}")
    return SampleSet(structures, [str(i) for i in range(len(frames))], reasons, str(path))


def _read_cdvae_pt(path: Path) -> SampleSet:
    """CDVAE's ``eval_gen.pt``: ``frac_coords [B, total_atoms, 3]``, ``atom_types [B, total_atoms]`` (atomic
    numbers), ``lengths``/``angles [B, n, 3]``, ``num_atoms [B, n]``; the leading batch of repeated
    evaluations is flattened (Xie et al. 2022, txie-93/cdvae scripts/evaluate.py and
    eval_utils.get_crystals_list)."""
    import torch
    from pymatgen.core import Lattice

    data = torch.load(path, map_location="cpu", weights_only=True)
    needed = ("frac_coords", "atom_types", "lengths", "angles", "num_atoms")
    missing = [k for k in needed if k not in data]
    if missing:
        raise SampleFileError(f"{path}: not a CDVAE eval_gen.pt (missing {', '.join(missing)})")
    frac, types = data["frac_coords"], data["atom_types"]
    lengths, angles, num_atoms = data["lengths"], data["angles"], data["num_atoms"]
    if num_atoms.dim() == 1:  # a single evaluation without the leading batch dimension
        frac, types, lengths, angles, num_atoms = (
            t.unsqueeze(0) for t in (frac, types, lengths, angles, num_atoms)
        )
    structures: list[Structure | None] = []
    reasons: list[str | None] = []
    ids: list[str] = []
    compositions: list[dict[str, float] | None] = []
    for b in range(num_atoms.shape[0]):
        start = 0
        for i, n in enumerate(num_atoms[b].tolist()):
            ids.append(f"{b}-{i}")
            coords = frac[b, start:start + n].numpy()
            numbers = types[b, start:start + n].tolist()
            start += n
            try:
                lattice = Lattice.from_parameters(*lengths[b, i].tolist(), *angles[b, i].tolist())
                structures.append(Structure(lattice, numbers, coords))
                reasons.append(None)
                compositions.append(None)
            except Exception as err:
                structures.append(None)
                reasons.append(f"not constructed: {err}")
                compositions.append(_atomic_numbers_composition(numbers))
    return SampleSet(structures, ids, reasons, str(path), compositions=compositions)


def _atomic_numbers_composition(numbers: Sequence[int]) -> dict[str, float] | None:
    """Element amounts from atomic numbers (CDVAE's ``Crystal.get_composition``); None when unusable."""
    from pymatgen.core import Element

    try:
        counts = Counter(Element.from_Z(int(z)).symbol for z in numbers)
    except (ValueError, KeyError):
        return None
    return {el: float(n) for el, n in counts.items()} or None


def read_samples(path: str | Path) -> SampleSet:
    """Read generated structures from a CSV (``cif`` column), a folder of CIFs or a pymatgen JSON list.

    Raises:
        SampleFileError: the path does not exist or has an unsupported format (the message lists the formats).
    """
    path = Path(path)
    if not path.exists():
        raise SampleFileError(f"samples not found: {path} (pass samples=PATH: a CSV, CIF folder or JSON)")
    if path.is_dir():
        sample_set = _read_cif_folder(path)
    elif path.suffix.lower() == ".csv" or path.name.lower().endswith(_COMPRESSED_CSV):
        sample_set = _read_csv(path)
    elif path.suffix.lower() == ".json":
        sample_set = _read_json(path)
    elif path.suffix.lower() in (".extxyz", ".xyz"):
        sample_set = _read_extxyz(path)
    elif path.suffix.lower() == ".pt":
        sample_set = _read_cdvae_pt(path)
    elif path.suffix.lower() == ".cif":
        sample_set = SampleSet([_parse_cif(path.read_text())], [path.stem], [None], str(path))
    else:
        raise SampleFileError(
            f"{path}: unsupported samples format '{path.suffix}'; use a .csv (or .csv.xz / .csv.gz) with a "
            "'cif' column, a folder "
            "of .cif files, a .json list of pymatgen structures, an .extxyz file or CDVAE's eval_gen.pt"
        )
    if not sample_set.structures:  # an empty file or a header alone: zero samples are not a result
        raise SampleFileError(f"{path}: holds no samples (empty, or a header without rows); nothing to score")
    failed = len(sample_set.structures) - sample_set.n_constructed
    if failed:
        log.info("%s: %d of %d items could not be built into structures", path, failed,
                 len(sample_set.structures))
    return sample_set
