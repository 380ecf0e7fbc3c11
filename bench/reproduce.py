"""``matgenbench reproduce``: re-run a result record and say whether the numbers come back.

Two questions a reader of a benchmark asks, answered from the records alone:

* *Does this row reproduce?* ``matgenbench reproduce RECORD.json`` takes the resolved config stored in the
  record, checks that the data files on this machine are the ones the record used (sha256 of each split; a
  mismatch is refused, never silently re-run on other data), re-runs the same stages with the same seed into a
  scratch folder (the original record is left alone) and prints recorded vs re-run metrics with the tolerance
  each is allowed.

  - When the re-run generated exactly the same structures (same ``samples_sha256``, as on the same hardware
    and library versions), evaluation is deterministic, so every metric must agree to :data:`EXACT_TOLERANCE`.
  - Otherwise (other hardware, other BLAS or torch build: training takes another numerical path and the model
    is in effect a new draw), each metric is allowed the stated bound of :data:`STATISTICAL_TOLERANCES`, sized
    to the seed-to-seed spread of the offline protocol. The table says which of the two modes applied.

  Costs (seconds, throughput) depend on the machine and are shown, never judged.

* *How do our rows compare with the paper's?* ``matgenbench reproduce --published cdvae`` lines up the suite's
  rows with CDVAE's published table (Xie et al. 2022, Table 3) per dataset and prints the differences, with
  the protocol differences (sample count, training split, property predictor, SMACT table) stated above each
  table instead of hidden.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from bench.io_utils import atomic_write_json, read_json
from bench.records import ResultRecord

__all__ = [
    "EXACT_TOLERANCE",
    "STATISTICAL_TOLERANCES",
    "ReproduceError",
    "DataMismatchError",
    "MetricCheck",
    "Reproduction",
    "tolerance",
    "compare_metrics",
    "reproduce_record",
    "compare_published",
    "main",
]

log = logging.getLogger(__name__)

EXACT_TOLERANCE = 1e-9
"""Absolute tolerance when the re-run scored the very same structures: evaluation is deterministic."""

_FRACTIONS = (
    "valid", "struct_valid", "comp_valid", "unique", "novel", "cov_recall", "cov_precision", "test_recall",
    "memorized",
)
STATISTICAL_TOLERANCES: dict[str, tuple[float, float]] = {
    **{name: (0.05, 0.0) for name in _FRACTIONS},
    "wdist_density": (0.05, 0.5),
    "wdist_num_elems": (0.05, 0.5),
    "wdist_prop": (0.02, 0.5),
    "amsd_recall": (0.02, 0.25),
    "amsd_precision": (0.02, 0.25),
    "amcd_recall": (0.2, 0.25),
    "amcd_precision": (0.2, 0.25),
    "comp_div": (0.2, 0.25),
    "struct_div": (0.02, 0.25),
    "jsd_spacegroup": (0.05, 0.1),
    "jsd_elements": (0.05, 0.25),
}
"""``metric -> (absolute, relative)``: a re-run on other hardware passes when
``|re-run - recorded| <= absolute + relative * |recorded|``. Fractions get 0.05 absolute (five points);
distances get a relative bound because their scale differs by dataset. Metrics not listed get
:data:`DEFAULT_TOLERANCE`."""
DEFAULT_TOLERANCE = (0.05, 0.25)
_COST_KEYS = ("train_seconds", "train_steps", "samples_per_second", "evaluate_seconds")


class ReproduceError(Exception):
    """The record cannot be re-run as it stands (what is missing and how to fix it is in the message)."""


class DataMismatchError(ReproduceError):
    """The data files here differ from those the record used."""


@dataclass
class MetricCheck:
    """One line of the side-by-side table."""

    name: str
    recorded: float | None
    rerun: float | None
    tolerance: float
    tolerance_text: str
    ok: bool

    @property
    def difference(self) -> float | None:
        if self.recorded is None or self.rerun is None:
            return None
        return self.rerun - self.recorded


@dataclass
class Reproduction:
    """The outcome of a re-run: the mode the comparison used, each metric's check, and where the re-run
    went."""

    record: str
    mode: str
    checks: list[MetricCheck]
    costs: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    rerun_record: str | None = None
    config_hash_matches: bool = True

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "record": self.record, "mode": self.mode, "ok": self.ok, "rerun_record": self.rerun_record,
            "config_hash_matches": self.config_hash_matches,
            "checks": [{**asdict(c), "difference": c.difference} for c in self.checks],
            "costs": {k: {"recorded": a, "rerun": b} for k, (a, b) in self.costs.items()},
        }


def tolerance(name: str, recorded: float | None, exact: bool) -> tuple[float, str]:
    """The absolute difference allowed for metric ``name`` and a text that states the rule."""
    if exact:
        return EXACT_TOLERANCE, "exact"
    absolute, relative = STATISTICAL_TOLERANCES.get(name, DEFAULT_TOLERANCE)
    bound = absolute + relative * abs(recorded or 0.0)
    text = f"±{absolute:g}" if not relative else f"±({absolute:g} + {relative:.0%})"
    return bound, text


def _value(entry: Any) -> float | None:
    """A metric entry's value as a finite float, else None."""
    from bench.leaderboard.aggregate import finite_values

    found = finite_values([entry.get("value") if isinstance(entry, Mapping) else entry])
    return found[0] if found else None


def compare_metrics(
    recorded: Mapping[str, Any], rerun: Mapping[str, Any], *, exact: bool
) -> list[MetricCheck]:
    """Check every recorded metric against the re-run's value.

    A metric that had a value and lost it (or the other way round) fails; one that is undefined in both
    passes.
    """
    checks = []
    for name in recorded:
        old = _value(recorded[name])
        new = _value(rerun.get(name)) if name in rerun else None
        bound, text = tolerance(name, old, exact)
        if old is None or new is None:
            ok = old is None and new is None
        else:
            ok = abs(new - old) <= bound
        checks.append(MetricCheck(name, old, new, bound, text, ok))
    return checks


def _fresh_paths(record: ResultRecord, out_dir: Path, data_dir: Path | None) -> DictConfig:
    """The record's config with this machine's paths: data and cache from here, outputs in ``out_dir``."""
    from bench.config import config_here

    try:
        cfg = config_here(record.config, data_dir, ["logger=csv"], take=("paths", "logger"))
    except ValueError as err:
        raise ReproduceError(f"{err}; it cannot be re-run") from None
    cfg.paths.run_dir = str(out_dir / "run")
    cfg.paths.results_dir = str(out_dir / "results")
    cfg.paths.leaderboard_dir = str(out_dir / "board")
    cfg.record = {"write": True, "regenerate_board": False}
    cfg.train.ckpt_path = None
    cfg.force = True
    return cfg


def check_data(cfg: DictConfig, record: ResultRecord) -> dict[str, str]:
    """Load each split the record names and compare its sha256 with the recorded one.

    Raises:
        DataMismatchError: a split differs (expected and actual checksums in the message).
        ReproduceError: the record has no checksums to compare with.
    """
    from bench.runtime import load_dataset_split

    recorded = {split: info.get("sha256") for split, info in (record.data_checksums or {}).items()
                if isinstance(info, Mapping) and info.get("sha256")}
    if not recorded:
        raise ReproduceError("the record has no data checksums; without them a re-run cannot prove it used "
                             "the same data")
    from bench.datasets import ChecksumMismatchError, DatasetUnavailableError

    problems, seen = [], {}
    for split, expected in recorded.items():
        try:
            loaded = load_dataset_split(cfg, split)
        except (ChecksumMismatchError, DatasetUnavailableError, FileNotFoundError) as err:
            raise DataMismatchError(
                f"cannot load {cfg.dataset.name}/{split} as the record did: {err}"
            ) from err
        actual = loaded.checksums.get("sha256")
        seen[split] = actual
        if actual != expected:
            problems.append(f"{cfg.dataset.name}/{split}: recorded sha256 {expected}, found {actual}")
    if problems:
        raise DataMismatchError(
            "the data here differ from the data the record used: " + "; ".join(problems)
            + ". Point paths.data_dir (--data-dir) at the files the record names, or fetch them with "
            f"`matgenbench datasets fetch {cfg.dataset.name}`."
        )
    return seen


def _rerun(cfg: DictConfig, record: ResultRecord) -> ResultRecord:
    from bench.runtime import set_threads

    set_threads(cfg.get("threads"))
    if record.kind == "reference":
        from bench.references import score_reference

        new, _ = score_reference(cfg)
        return new
    if record.kind == "external":
        samples = (record.config or {}).get("samples") or record.counts.get("samples_file")
        if not samples or not Path(str(samples)).exists():
            raise ReproduceError(f"the record scored external samples ({samples}); that file is not here, so "
                                 "they cannot be re-scored")
        from bench.evaluate import evaluate

        cfg.samples = str(samples)
        new, _ = evaluate(cfg)
        return new
    from bench.run import run

    new, _ = run(cfg)
    if new is None:
        raise ReproduceError("the re-run produced no record (not the rank-zero process)")
    return new


def reproduce_record(
    path: str | Path, *, out_dir: str | Path | None = None, data_dir: str | Path | None = None
) -> Reproduction:
    """Re-run the record at ``path`` and compare its metrics (see the module docstring for the two modes).

    Args:
        path: A result record (JSON).
        out_dir: Scratch folder for the re-run (default: ``outputs/reproduce/<record name>``).
        data_dir: Local data copy to use instead of the configured one.

    Raises:
        ReproduceError: the record is not complete, has no config, or its data differ
            (:class:`DataMismatchError`).
    """
    from bench.config import config_hash

    path = Path(path)
    if not path.is_file():
        raise ReproduceError(f"no record at {path}: pass a result record JSON (e.g. leaderboard/results/...)")
    try:
        record = ResultRecord.from_dict(read_json(path))
    except (ValueError, TypeError) as err:
        raise ReproduceError(f"{path} is not a result record: {err}") from err
    if record.status != "complete":
        raise ReproduceError(f"{path} is a '{record.status}' record ({record.reason}); only complete records "
                             "have metrics to reproduce")
    out = Path(out_dir) if out_dir else Path("outputs") / "reproduce" / path.stem
    cfg = _fresh_paths(record, out, Path(data_dir) if data_dir else None)
    same_hash = config_hash(cfg) == record.config_hash
    if not same_hash:
        log.warning("the config hash of the re-run (%s) differs from the record's (%s)",
                    config_hash(cfg), record.config_hash)
    check_data(cfg, record)
    log.info("re-running %s (%s on %s, seed %s) into %s",
             path.name, record.model, record.dataset, record.seed, out)
    new = _rerun(cfg, record)
    old_digest = record.counts.get("samples_sha256")
    exact = bool(old_digest) and old_digest == new.counts.get("samples_sha256")
    checks = compare_metrics(record.metrics, new.metrics, exact=exact)
    costs = {key: (record.cost.get(key), new.cost.get(key)) for key in _COST_KEYS
             if record.cost.get(key) is not None or new.cost.get(key) is not None}
    from bench.records import record_path

    result = Reproduction(
        record=str(path),
        mode="exact (same structures generated)" if exact else "statistical (other structures generated)",
        checks=checks, costs=costs,
        rerun_record=str(record_path(cfg.paths.results_dir, new)), config_hash_matches=same_hash,
    )
    atomic_write_json(out / "reproduce.json", result.to_dict())
    return result


def _fmt(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:.4g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def render_reproduction(result: Reproduction) -> str:
    """The side-by-side table as text."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"reproduce {Path(result.record).name}")
    for col, justify in (("metric", "left"), ("recorded", "right"), ("re-run", "right"),
                         ("difference", "right"), ("allowed", "right"), ("", "center")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for c in result.checks:
        allowed = "exact" if c.tolerance_text == "exact" else f"{c.tolerance_text} = {c.tolerance:.3g}"
        table.add_row(c.name, _fmt(c.recorded), _fmt(c.rerun), _fmt(c.difference), allowed,
                      "ok" if c.ok else "OUTSIDE")
    for key, (old, new) in result.costs.items():
        table.add_row(f"[dim]{key}[/dim]", _fmt(old), _fmt(new), "", "not judged", "")
    console = Console(width=110, record=True, force_terminal=False)
    with console.capture() as capture:
        console.print(table)
    lines = [capture.get().rstrip(), f"comparison: {result.mode}"]
    if not result.config_hash_matches:
        lines.append("warning: the re-run's config hash differs from the record's (the record came from "
                     "another version of the config schema)")
    bad = [c.name for c in result.checks if not c.ok]
    lines.append(f"{len(result.checks) - len(bad)} of {len(result.checks)} metrics within tolerance"
                 + (f"; outside: {', '.join(bad)}" if bad else ""))
    if result.rerun_record:
        lines.append(f"re-run record: {result.rerun_record}")
    return "\n".join(lines)


# --- published tables ---------------------------------------------------------------------------------------

_PUBLISHED_ALIASES = {"cdvae": "cdvae_2022", "cdvae_2022": "cdvae_2022"}
_PUBLISHED_SAMPLES = {"cdvae_2022": 10_000}


@dataclass
class PublishedComparison:
    """Our rows next to one published table, for one dataset."""

    dataset: str
    source: str
    against: str
    protocol_notes: list[str]
    metrics: list[str]
    published: list[Any]
    ours: list[Any]


def _protocol_notes(ours: Sequence[Any], records: Sequence[ResultRecord], source: str) -> list[str]:
    """Every way our rows' protocol differs from the paper's, in words."""
    notes = []
    published_n = _PUBLISHED_SAMPLES.get(source)
    counts = sorted({r.split.get("num_samples") for r in records if r.split.get("num_samples")})
    if published_n and counts and counts != [published_n]:
        notes.append(f"sample count: ours {', '.join(f'{n:,}' for n in counts)} per seed, "
                     f"published {published_n:,} (COV-R and uniqueness grow with the sample count)")
    trains = sorted({str(r.split.get("train")) for r in records if r.split.get("train")})
    if trains and trains != ["train"]:
        notes.append(f"training split: ours trained on '{', '.join(trains)}', published on the official "
                     "'train' split (smaller training set, and novelty is measured against it)")
    if any(not r.split.get("official", False) for r in records):
        notes.append("ours are not on the official split protocol: not directly comparable")
    if any("wdist_prop" in row.metrics for row in ours):
        notes.append("wdist_prop: ours uses this suite's descriptor property model, the paper its own graph "
                     "network; the two predictors differ, so the values are not comparable")
    tables = sorted({str(r.metric_settings.get("validity", {}).get("smact_table")) for r in records
                     if isinstance(r.metric_settings.get("validity"), Mapping)} - {"None"})
    if tables:
        notes.append(f"comp_valid: SMACT oxidation-state table '{', '.join(tables)}' (paper: smact 2.2.1)")
    seeds = sorted({len(row.seeds) for row in ours if row.seeds})
    if seeds:
        notes.append(f"ours: mean over {', '.join(map(str, seeds))} seed(s); published: one run each")
    return notes


def compare_published(
    results_dir: str | Path, source: str = "cdvae", *, dataset: str | None = None, against: str = "CDVAE"
) -> list[PublishedComparison]:
    """Line up our aggregated rows with a published table, per dataset both have.

    Args:
        results_dir: Folder of result records.
        source: Published table (``cdvae``).
        dataset: One dataset only.
        against: The published model the differences are taken against.

    Raises:
        ReproduceError: unknown source, or no dataset with both our rows and published rows.
    """
    from bench.leaderboard.aggregate import aggregate, split_superseded
    from bench.leaderboard.published import published_rows
    from bench.leaderboard.schema import load_valid_records

    key = _PUBLISHED_ALIASES.get(source.lower())
    if key is None:
        raise ReproduceError(
            f"unknown published table {source!r}; known: {', '.join(sorted(_PUBLISHED_ALIASES))}"
        )
    kept, _ = load_valid_records(results_dir)
    records, _ = split_superseded([r for _, r in kept if r.status == "complete"])
    published = published_rows(sources=(key,))
    datasets = sorted({r.dataset for r in records} & {r.dataset for r in published})
    if dataset is not None:
        datasets = [d for d in datasets if d == dataset]
    if not datasets:
        have = sorted({r.dataset for r in records})
        raise ReproduceError(
            f"no dataset has both our records (in {results_dir}: {', '.join(have) or 'none'}) and rows of "
            f"the published table {key} ({', '.join(sorted({r.dataset for r in published}))})"
            + (f" for dataset {dataset!r}" if dataset else "")
        )
    out = []
    for name in datasets:
        ours_records = [r for r in records if r.dataset == name]
        ours = [row for row in aggregate(ours_records) if row.status == "complete"]
        theirs = [row for row in published if row.dataset == name]
        metrics = [m for m in dict.fromkeys(m for row in theirs for m in row.metrics)
                   if any(m in row.metrics for row in ours)]
        out.append(PublishedComparison(
            dataset=name, source=key, against=against,
            protocol_notes=_protocol_notes(ours, [r for r in ours_records if r.kind != "reference"], key),
            metrics=metrics, published=theirs, ours=ours,
        ))
    return out


def render_published(comparisons: Sequence[PublishedComparison]) -> str:
    """Tables of published values and ours, with each of our values' difference from the ``against`` row."""
    from rich.console import Console
    from rich.table import Table

    from bench.leaderboard.published import published_meta

    console = Console(width=240, record=True, force_terminal=False)
    with console.capture() as capture:
        for comp in comparisons:
            meta = published_meta(comp.source)
            console.print(
                f"\n[bold]{comp.dataset}[/bold]: ours vs {meta['short_citation']} ({meta['protocol']})"
            )
            for note in comp.protocol_notes:
                console.print(f"  ! {note}")
            anchor = next((r for r in comp.published if r.model.lower() == comp.against.lower()), None)
            table = Table(show_lines=False)
            table.add_column("row")
            table.add_column("kind")
            for metric in comp.metrics:
                table.add_column(metric, justify="right")
            for row in comp.published:
                table.add_row(row.name, "published",
                              *[_fmt(row.mean(m)) if m in row.metrics else "—" for m in comp.metrics])
            for row in comp.ours:
                cells = []
                for m in comp.metrics:
                    value = row.mean(m)
                    ref = anchor.mean(m) if anchor is not None else None
                    text = _fmt(value)
                    if value is not None and ref is not None:
                        text += f" ({value - ref:+.3g})"
                    cells.append(text)
                table.add_row(row.model, "ours" if row.kind != "reference" else "ours, reference", *cells)
            console.print(table)
            if anchor is not None:
                console.print(f"  (in brackets: our value minus {anchor.name}'s published value)")
    return capture.get()


def main(argv: Sequence[str] | None = None) -> int:
    """``matgenbench reproduce``: 0 when everything is within tolerance, 1 when not, 2 when refused."""
    import os

    parser = argparse.ArgumentParser(
        prog="matgenbench reproduce",
        description=(
            "Re-run a result record and compare its metrics, or compare our rows with a published table."
        ),
    )
    parser.add_argument("record", nargs="?", type=Path, help="result record JSON to re-run")
    parser.add_argument("--published", default=None, metavar="TABLE",
                        help="compare our rows with a published table instead (cdvae)")
    parser.add_argument("--results", type=Path,
                        default=Path(os.environ.get("MATGENBENCH_RESULTS_DIR", "leaderboard/results")),
                        help="--published: folder of result records")
    parser.add_argument("--dataset", default=None, help="--published: one dataset only")
    parser.add_argument("--against", default="CDVAE",
                        help="--published: published row the differences refer to")
    parser.add_argument("--out", type=Path, default=None, help="scratch folder for the re-run")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="local data copy (<dir>/<dataset>/<split>.csv)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if (args.record is None) == (args.published is None):
        parser.error("give either a RECORD.json or --published TABLE")
    try:
        if args.published is not None:
            print(render_published(compare_published(args.results, args.published, dataset=args.dataset,
                                                     against=args.against)))
            return 0
        result = reproduce_record(args.record, out_dir=args.out, data_dir=args.data_dir)
    except ReproduceError as err:
        print(f"matgenbench reproduce: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # the re-run itself crashed: its failed record is in the scratch folder
        print(f"matgenbench reproduce: the re-run failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    print(render_reproduction(result))
    return 0 if result.ok else 1

