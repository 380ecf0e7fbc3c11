"""A tiny dataset built in code from textbook crystal prototypes, for unit tests only (never a benchmark).

Forty small structures (at most 8 sites): rock salts, cubic perovskites, fcc/bcc/hcp metals, CsCl types and
diamond/zincblende types at their experimental lattice constants, plus a few deterministically strained
copies.
Splits are fixed by position: every fifth structure goes to ``val`` and the one after it to ``test``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from pymatgen.core import Lattice, Structure

__all__ = ["TINY_SPLITS", "tiny_canonical_bytes", "tiny_checksums", "tiny_ids", "tiny_structures"]

TINY_SPLITS = ("train", "val", "test")
_STRAIN = 1.02  # lattice scale of the strained copies
_STRAIN_EVERY = 4  # every 4th prototype entry also gets a strained copy

_FCC = ((0.0, 0.0, 0.0), (0.0, 0.5, 0.5), (0.5, 0.0, 0.5), (0.5, 0.5, 0.0))
_FCC_SHIFTED = ((0.5, 0.0, 0.0), (0.0, 0.5, 0.0), (0.0, 0.0, 0.5), (0.5, 0.5, 0.5))
_FCC_QUARTER = tuple((x + 0.25, y + 0.25, z + 0.25) for x, y, z in _FCC)

# (prototype, species in site order, lattice constant(s) in angstrom)
_ENTRIES: tuple[tuple[str, tuple[str, ...], tuple[float, ...]], ...] = (
    ("rocksalt", ("Na", "Cl"), (5.640,)),
    ("rocksalt", ("K", "Cl"), (6.293,)),
    ("rocksalt", ("Mg", "O"), (4.212,)),
    ("rocksalt", ("Li", "F"), (4.027,)),
    ("rocksalt", ("Ca", "O"), (4.811,)),
    ("rocksalt", ("Na", "F"), (4.633,)),
    ("perovskite", ("Sr", "Ti", "O"), (3.905,)),
    ("perovskite", ("Ba", "Ti", "O"), (4.000,)),
    ("perovskite", ("Ca", "Ti", "O"), (3.840,)),
    ("perovskite", ("K", "Nb", "O"), (4.016,)),
    ("perovskite", ("K", "Ta", "O"), (3.988,)),
    ("perovskite", ("Sr", "Zr", "O"), (4.154,)),
    ("fcc", ("Cu",), (3.615,)),
    ("fcc", ("Al",), (4.050,)),
    ("fcc", ("Ni",), (3.524,)),
    ("fcc", ("Au",), (4.078,)),
    ("bcc", ("Fe",), (2.866,)),
    ("bcc", ("W",), (3.165,)),
    ("bcc", ("Mo",), (3.147,)),
    ("bcc", ("Na",), (4.291,)),
    ("hcp", ("Mg",), (3.209, 5.211)),
    ("hcp", ("Ti",), (2.951, 4.686)),
    ("cscl", ("Cs", "Cl"), (4.123,)),
    ("cscl", ("Cs", "Br"), (4.286,)),
    ("cscl", ("Ni", "Al"), (2.887,)),
    ("cscl", ("Cu", "Zn"), (2.951,)),
    ("diamond", ("Si",), (5.431,)),
    ("diamond", ("Ge",), (5.658,)),
    ("diamond", ("C",), (3.567,)),
    ("zincblende", ("Ga", "As"), (5.653,)),
    ("zincblende", ("Zn", "S"), (5.409,)),
    ("zincblende", ("In", "P"), (5.869,)),
)


@dataclass(frozen=True)
class _TinyEntry:
    id: str
    structure: Structure


def _build(proto: str, species: Sequence[str], consts: Sequence[float], scale: float) -> Structure:
    """One structure of a prototype; ``scale`` multiplies every lattice constant."""
    a = consts[0] * scale
    if proto == "rocksalt":
        return Structure(Lattice.cubic(a), [species[0]] * 4 + [species[1]] * 4, _FCC + _FCC_SHIFTED)
    if proto == "perovskite":
        coords = ((0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0), (0.5, 0, 0.5), (0, 0.5, 0.5))
        return Structure(Lattice.cubic(a), [species[0], species[1]] + [species[2]] * 3, coords)
    if proto == "fcc":
        return Structure(Lattice.cubic(a), [species[0]] * 4, _FCC)
    if proto == "bcc":
        return Structure(Lattice.cubic(a), [species[0]] * 2, ((0, 0, 0), (0.5, 0.5, 0.5)))
    if proto == "hcp":
        lattice = Lattice.hexagonal(a, consts[1] * scale)
        return Structure(lattice, [species[0]] * 2, ((1 / 3, 2 / 3, 0.25), (2 / 3, 1 / 3, 0.75)))
    if proto == "cscl":
        return Structure(Lattice.cubic(a), list(species), ((0, 0, 0), (0.5, 0.5, 0.5)))
    if proto in ("diamond", "zincblende"):
        second = species[0] if proto == "diamond" else species[1]
        return Structure(Lattice.cubic(a), [species[0]] * 4 + [second] * 4, _FCC + _FCC_QUARTER)
    raise ValueError(f"unknown prototype {proto!r}")


@lru_cache(maxsize=1)
def _all_entries() -> tuple[_TinyEntry, ...]:
    """All tiny structures in their fixed order (built once per process)."""
    entries: list[_TinyEntry] = []
    for i, (proto, species, consts) in enumerate(_ENTRIES):
        scales = (1.0, _STRAIN) if i % _STRAIN_EVERY == 0 else (1.0,)
        for scale in scales:
            structure = _build(proto, species, consts, scale)
            tag = "" if scale == 1.0 else f"-s{scale:.2f}"
            entry_id = f"tiny-{len(entries):03d}-{structure.composition.reduced_formula}-{proto}{tag}"
            entries.append(_TinyEntry(entry_id, structure))
    return tuple(entries)


def _split_of(index: int) -> str:
    return {3: "val", 4: "test"}.get(index % 5, "train")


def _check_split(split: str) -> None:
    if split not in TINY_SPLITS:
        raise ValueError(f"dataset 'tiny' has no split {split!r}; valid splits: {', '.join(TINY_SPLITS)}")


def _entries(split: str) -> list[_TinyEntry]:
    _check_split(split)
    return [e for i, e in enumerate(_all_entries()) if _split_of(i) == split]


def tiny_structures(split: str) -> list[Structure]:
    """The tiny dataset's structures of one split (fresh copies, safe to mutate).

    Args:
        split: ``train``, ``val`` or ``test``.

    Returns:
        The split's structures in their fixed order.
    """
    return [e.structure.copy() for e in _entries(split)]


def tiny_ids(split: str) -> list[str]:
    """Ids of the tiny dataset's structures of one split, aligned with :func:`tiny_structures`."""
    return [e.id for e in _entries(split)]


def tiny_canonical_bytes(split: str) -> bytes:
    """A stable text serialisation of one split (ids, lattices, species, fractional coordinates, 8 decimals).

    It does not depend on the pymatgen version's CIF or JSON writers, so its checksum identifies the data.
    """
    lines = []
    for e in _entries(split):
        s = e.structure
        lattice = " ".join(f"{x:.8f}" for x in s.lattice.matrix.ravel())
        sites = " ".join(
            f"{site.specie.symbol}:" + ",".join(f"{x:.8f}" for x in site.frac_coords) for site in s
        )
        lines.append(f"{e.id};{lattice};{sites}\n")
    return "".join(lines).encode()


def tiny_checksums(split: str) -> dict[str, str]:
    """Git blob id and sha256 of :func:`tiny_canonical_bytes` for one split."""
    data = tiny_canonical_bytes(split)
    blob = hashlib.sha1(f"blob {len(data)}\0".encode() + data, usedforsecurity=False).hexdigest()
    return {"git_blob": blob, "sha256": hashlib.sha256(data).hexdigest()}
