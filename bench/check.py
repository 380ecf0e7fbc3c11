"""``matgenbench check CIF... --rules RULES.yaml [--json OUT]``: check structures against domain rules.

Prints one table per structure (rule, pass/FAIL, measured, expected) and a summary over all structures; with
``--json`` also writes the full report (rules with every default filled in, per-structure results, summary,
package versions). Exit status: 0 when every structure passes every rule, 1 when any rule fails, 2 when a
structure file or the rules file cannot be used (one line naming the file and the fix). The rules and their
YAML schema: :mod:`bench.rules` and ``docs/rule_checks.md``.

Example::

    matgenbench check examples/nzp/nzp_reference.cif --rules examples/nzp/rules.yaml
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "render", "report_dict"]

_PROG = "matgenbench check"


def _expand(paths: Sequence[Path]) -> list[Path]:
    """Files as given; a folder stands for its ``*.cif`` files (sorted)."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(path.glob("*.cif"))
            if not found:
                from bench.rules import StructureReadError

                raise StructureReadError(
                    f"{path}: folder holds no .cif files; give CIF files or a folder of them"
                )
            out += found
        else:
            out.append(path)
    return out


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def render(reports: Sequence[Any], rules: Any, width: int = 120) -> str:
    """The terminal text: a table per structure, then the summary over all."""
    from bench.rules import summarize

    lines: list[str] = []
    if rules.name:
        lines.append(f"rules: {rules.name} ({rules.source})")
    else:
        lines.append(f"rules: {rules.source}")
    name_w = max(len("rule"), *(len(n) for n in rules.rule_names))
    for report in reports:
        n_ok = sum(r.passed for r in report.results)
        verdict = "PASS" if report.passed else "FAIL"
        lines.append("")
        lines.append(f"{report.source}  {report.formula}  {report.n_sites} sites  "
                     f"{verdict} ({n_ok} of {len(report.results)} rules pass)")
        col = max(24, (width - name_w - 12) // 2)
        lines.append(f"  {'rule':<{name_w}}  {'result':<6}  {'measured':<{col}}  expected")
        for r in report.results:
            lines.append(f"  {r.rule:<{name_w}}  {'pass' if r.passed else 'FAIL':<6}  "
                         f"{_clip(r.measured_text, col):<{col}}  {r.expected_text}")
            if r.detail and not r.passed:
                lines.append(f"  {'':<{name_w}}  {'':<6}  {_clip(r.detail, width - name_w - 12)}")
    summary = summarize(reports, rules)
    n, ok = summary["n_structures"], summary["n_passed_all"]
    lines.append("")
    lines.append(f"summary: {ok}/{n} structures pass every rule")
    per_rule = summary["per_rule_passed"]
    counts = "; ".join(f"{name} {per_rule[name]}/{n}" for name in rules.rule_names)
    lines += textwrap.wrap(f"passed per rule: {counts}", width, initial_indent="  ", subsequent_indent="    ")
    tolerances = []
    if rules.spacegroup is not None or rules.wyckoff is not None:
        symprec, angle = rules.symmetry_tolerance
        tolerances.append(f"symprec {symprec:g} Å, angle_tolerance {angle:g}°")
    if rules.coordination is not None or rules.polyhedra_sharing is not None:
        tolerances.append(f"neighbours {rules.neighbours.method}")
    if rules.match is not None:
        m = rules.match
        tolerances.append(f"match ltol {m.ltol:g}, stol {m.stol:g}, angle_tol {m.angle_tol:g}°, "
                          f"attempt_supercell {str(m.attempt_supercell).lower()}")
    if tolerances:
        lines += textwrap.wrap("tolerances: " + "; ".join(tolerances), width, initial_indent="  ",
                               subsequent_indent="    ")
    return "\n".join(lines)


def report_dict(reports: Sequence[Any], rules: Any) -> dict[str, Any]:
    """The JSON report: rules as checked, per-structure results, summary, package versions."""
    from importlib.metadata import PackageNotFoundError, version

    from bench.rules import summarize

    versions = {}
    for package in ("pymatgen", "spglib", "smact"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return {
        "rules_file": rules.source,
        "rules": rules.to_dict(),
        "structures": [r.to_dict() for r in reports],
        "summary": summarize(reports, rules),
        "versions": versions,
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``matgenbench check``: exit status 0 all pass, 1 a rule failed, 2 unusable input."""
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description="Check structures (CIF, POSCAR, pymatgen JSON; a folder stands for its *.cif files) "
        "against the rules of a YAML file: space group, Wyckoff sites, coordination, polyhedra sharing, "
        "charge balance, minimum distance, composition, match to a target. Schema: docs/rule_checks.md.",
    )
    parser.add_argument("structures", nargs="+", type=Path, help="structure files or folders of .cif files")
    parser.add_argument("--rules", type=Path, required=True, help="the rules YAML file")
    parser.add_argument("--json", type=Path, default=None, help="also write the full report as JSON here")
    args = parser.parse_args(argv)
    from bench.rules import RulesFileError, StructureReadError, check_structure, load_rules, read_structure

    try:
        rules = load_rules(args.rules)
        paths = _expand(args.structures)
        structures = [(str(p), read_structure(p)) for p in paths]
    except (RulesFileError, StructureReadError) as err:
        print(f"{_PROG}: {err}", file=sys.stderr)
        return 2
    reports = []
    try:
        from tqdm import tqdm

        items = tqdm(structures, desc="checking", unit="structure", disable=len(structures) < 5,
                     file=sys.stderr)
    except ImportError:  # tqdm is a dependency; a progress bar is only a convenience
        items = structures
    for name, structure in items:
        reports.append(check_structure(structure, rules, source=name))
    print(render(reports, rules))
    if args.json is not None:
        from bench.io_utils import atomic_write_json

        atomic_write_json(args.json, report_dict(reports, rules))
        print(args.json)
    return 0 if all(r.passed for r in reports) else 1
