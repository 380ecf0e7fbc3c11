"""Build ``nzp_reference.cif``, the NaZr2(PO4)3 (NZP) reference structure of the rule-check example.

Run from anywhere: ``python examples/nzp/build_reference.py`` rewrites the CIF beside this script (and the
two deliberately broken copies in ``broken/``) and prints its bond lengths. The sources of every number,
and what is constructed rather than published, are in ``README.md`` beside it and in the CIF's header:

* space group R-3c (167), hexagonal setting; Na on 6b (0, 0, 0), the M1 site of the NZP type;
* framework positions (M 12c z, P 18e x, O1 36f x y z, O2 36f x y) published for the isotypic
  Na3Cr2(PO4)3 by Lucazeau, Barj, Soubeyroux, Dianoux & Delmas, Solid State Ionics 18-19, 959-963 (1986),
  Crystallography Open Database entry 1008846, with Zr on the M (Cr) site;
* the lattice a = 8.83498 Å, c = 22.7821 Å of the NZP-type phase Na1.2Zr1.8Fe0.2(PO4)3 (GSAS Rietveld
  refinement, R_wp = 0.0915);
* O2 z, which was not available: chosen so the ZrO6 octahedron's two independent bonds (Zr-O1 and Zr-O2)
  have equal length, solved numerically below.

It is an idealised NZP model, not a refined NaZr2(PO4)3 structure.
"""

from __future__ import annotations

from pathlib import Path

from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter
from pymatgen.symmetry.groups import SpaceGroup
from scipy.optimize import brentq

HERE = Path(__file__).resolve().parent
OUT = HERE / "nzp_reference.cif"

A, C = 8.83498, 22.7821  # Å, Na1.2Zr1.8Fe0.2(PO4)3 (NZP type)
ZR_Z = 0.1465  # 12c (0, 0, z); Cr in Na3Cr2(PO4)3, Lucazeau et al. 1986
P_X = 0.2911  # 18e (x, 0, 1/4)
O1 = (0.1746, -0.0306, 0.1934)  # 36f
O2_XY = (0.1925, 0.1675)  # 36f; z constructed

HEADER = """\
# NaZr2(PO4)3 (NZP), idealised reference structure for `matgenbench check` (examples/nzp).
# Built by examples/nzp/build_reference.py with pymatgen Structure.from_spacegroup; see README.md there.
# Space group R-3c (167), hexagonal setting. Na 6b (0,0,0); Zr 12c; P 18e; O1, O2 36f.
# Zr, P, O1 positions and O2 x, y: those published for the isotypic Na3Cr2(PO4)3 (Cr replaced by Zr) by
#   G. Lucazeau, M. Barj, J. L. Soubeyroux, A. J. Dianoux, C. Delmas, Solid State Ionics 18-19, 959-963
#   (1986), COD 1008846.
# Lattice a = 8.83498 A, c = 22.7821 A: the NZP-type phase Na1.2Zr1.8Fe0.2(PO4)3 (GSAS Rietveld fit).
# O2 z = {z:.4f} is CONSTRUCTED (not published here): the value at which Zr-O1 = Zr-O2.
# This is not a refined NaZr2(PO4)3 structure; no complete published coordinate set of NaZr2(PO4)3 was
# available when it was built (Hagman & Kierkegaard, Acta Chem. Scand. 22, 1822 (1968) is the original).
"""


def build(o2_z: float) -> Structure:
    """The NZP model with O2 at height ``o2_z`` (fractional); sites keep their labels (Na, Zr, P, O1, O2)."""
    return Structure.from_spacegroup(
        "R-3c", Lattice.hexagonal(A, C), ["Na", "Zr", "P", "O", "O"],
        [[0.0, 0.0, 0.0], [0.0, 0.0, ZR_Z], [P_X, 0.0, 0.25], list(O1), [*O2_XY, o2_z]],
        site_properties={"label": ["Na", "Zr", "P", "O1", "O2"]},
    )


def bonds(structure: Structure, label: str, cutoff: float = 2.8) -> dict[str, list[float]]:
    """Distances (Å) from the first ``label`` atom to its O1 and O2 neighbours within ``cutoff``."""
    index = next(i for i, site in enumerate(structure) if site.properties["label"] == label)
    out: dict[str, list[float]] = {"O1": [], "O2": []}
    for n in structure.get_neighbors(structure[index], cutoff):
        if n.properties["label"] in out:
            out[n.properties["label"]].append(round(n.nn_distance, 4))
    return {k: sorted(v) for k, v in out.items()}


def zr_bond_mismatch(o2_z: float) -> float:
    """Zr-O2 minus Zr-O1 (Å): zero when the octahedron's two independent bonds are equal."""
    found = bonds(build(o2_z), "Zr", 3.0)
    return found["O2"][0] - found["O1"][0]


def cif_text(o2_z: float) -> str:
    """The CIF: header, cell, the 36 operations of R-3c (hexagonal axes) and the five sites as published."""
    sites = [("Na1", "Na", "6b", (0.0, 0.0, 0.0)), ("Zr1", "Zr", "12c", (0.0, 0.0, ZR_Z)),
             ("P1", "P", "18e", (P_X, 0.0, 0.25)), ("O1", "O", "36f", O1), ("O2", "O", "36f", (*O2_XY, o2_z))]
    ops = SpaceGroup("R-3c").symmetry_ops
    lines = [HEADER.format(z=o2_z).rstrip("\n"), "data_NaZr2(PO4)3_reference",
             "_chemical_formula_sum 'Na6 Zr12 P18 O72'", "_space_group_name_H-M_alt 'R -3 c :H'",
             "_space_group_IT_number 167",
             f"_cell_length_a {A}", f"_cell_length_b {A}", f"_cell_length_c {C}",
             "_cell_angle_alpha 90", "_cell_angle_beta 90", "_cell_angle_gamma 120",
             "loop_", "_space_group_symop_operation_xyz"]
    lines += [f"'{op.as_xyz_str()}'" for op in ops]
    lines += ["loop_", "_atom_site_label", "_atom_site_type_symbol", "_atom_site_Wyckoff_symbol",
              "_atom_site_fract_x", "_atom_site_fract_y", "_atom_site_fract_z", "_atom_site_occupancy"]
    lines += [f"{label} {el} {w} {x:.4f} {y:.4f} {z:.4f} 1" for label, el, w, (x, y, z) in sites]
    return "\n".join(lines) + "\n"


def write_broken(reference: Structure) -> list[Path]:
    """Two deliberately broken copies (P1 CIFs in ``broken/``) to try the command on: one Zr moved 0.2 Å
    along a (off 12c), and one O removed."""
    folder = HERE / "broken"
    folder.mkdir(exist_ok=True)
    zr_moved = reference.copy()
    first_zr = next(i for i, site in enumerate(zr_moved) if site.specie.symbol == "Zr")
    zr_moved.translate_sites([first_zr], [0.2, 0.0, 0.0], frac_coords=False)
    o_removed = reference.copy()
    o_removed.remove_sites([next(i for i, site in enumerate(o_removed) if site.specie.symbol == "O")])
    paths = []
    for name, structure in (("zr_off_12c.cif", zr_moved), ("o_removed.cif", o_removed)):
        path = folder / name
        path.write_text(str(CifWriter(structure.relabel_sites())), encoding="utf-8")
        paths.append(path)
    return paths


def main() -> None:
    o2_z = round(brentq(zr_bond_mismatch, 0.08, 0.0975, xtol=1e-7), 4)
    structure = build(o2_z)
    OUT.write_text(cif_text(o2_z), encoding="utf-8")
    back = Structure.from_file(str(OUT))
    assert len(back) == len(structure) and back.matches(structure), "the CIF does not read back as built"
    broken = write_broken(back)
    print(f"O2 z = {o2_z:.4f}; {len(structure)} atoms, {structure.composition.reduced_formula}")
    for label in ("Zr", "P", "Na"):
        print(f"{label}-O: {bonds(structure, label)}")
    print(OUT, *broken, sep="\n")


if __name__ == "__main__":
    main()
