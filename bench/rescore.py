"""Re-score result records with the current metric code, from the samples shipped beside them.

``matgenbench rescore RECORD.json ...`` (or a folder of records) reads each record's scored samples, checks
that they are the structures the record scored (its ``samples_sha256``), scores them again with the record's
own resolved config and the metric code of this checkout, and prints recorded vs re-scored values side by
side. Nothing is trained or sampled, so any metric change can be re-checked on the whole board in minutes.

- Model rows: the samples are the ``<record>.generated.csv.xz`` beside the record (written by ``evaluate``
  when it writes a record: the scored samples CSV, compressed; :func:`ship_samples`), or ``--samples FILE``.
- Reference rows: Test / Copy are the data splits themselves and Random is a seeded draw, so their structures
  are drawn again (:func:`bench.references.reference_samples`) rather than shipped (the project ships no copy
  of the datasets); the digest check still applies.
- ``nll_test`` needs the trained checkpoint; it is carried over, never re-scored, and the table says so.
- ``--write`` replaces the record's metrics (and its per-structure table) with the re-scored ones and notes
  the re-scoring in its provenance; without it nothing is written.

The older ``--vun-from-tables`` mode recomputes only ``vun_rate`` from each record's per-structure table
(``*.samples.csv``); it migrated the board when ``vun_rate`` became a per-structure metric.

``--funnel-from-tables`` adds the usability funnel (:mod:`bench.metrics.funnel`) to records written before it,
from the same per-structure table: the flags ``valid``, ``unique`` and ``novel`` the record's metrics were
computed from, and the predicted property of every item that reaches ``novel`` (the table's
``predicted_<property>`` column, which holds every valid item when the distribution draw did); the plausible
screen's bounds come from the record's training split, read again and checked against its checksum. Nothing
else in the record changes, and the funnel's counts are checked against the record's (``n_decoded``,
``n_valid``, ``vun_rate``'s ``n_vun``) before anything is written. A record whose table cannot give the funnel
is left alone with the reason (``rescore --write`` scores it again, funnel included).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bench.io_utils import atomic_write_json, read_json

__all__ = [
    "SHIPPED_SUFFIX", "NOT_RESCORED", "RescoreError", "Rescore", "Rescored", "FunnelRescored", "shipped_path",
    "ship_samples", "rescore_record", "product_vun", "rescore_vun", "rescore_vun_record", "rescore_funnel",
    "rescore_funnel_record", "main",
]

log = logging.getLogger(__name__)

_COLUMNS = ("valid", "unique", "novel")


@dataclass(frozen=True)
class Rescored:
    """One record's outcome: path, the old product (None: undefined), the new value (None: left alone)."""

    path: Path
    before: float | None
    after: float | None
    note: str = ""


def product_vun(metrics: dict[str, Any]) -> float | None:
    """The board's former ``vun_rate``: valid × unique × novel of the stored rates (0 if nothing is valid)."""
    values = [(metrics.get(name) or {}).get("value") for name in _COLUMNS]
    if values[0] is not None and values[0] == 0.0:
        return 0.0
    if any(v is None or not math.isfinite(float(v)) for v in values):
        return None
    return float(values[0]) * float(values[1]) * float(values[2])


_TRUE = frozenset({"true", "1", "1.0"})
_FALSE = frozenset({"false", "0", "0.0", "", "nan", "<na>"})


def _flag(text: str) -> bool:
    """A boolean cell of a per-structure table as pandas writes it (``True``/``False``; empty: undefined)."""
    key = text.strip().lower()
    if key in _TRUE:
        return True
    if key in _FALSE:
        return False
    raise ValueError(f"not a boolean cell: {text!r}")


def _entry(flags_sum: int, n: int, table: str, convention: str | None) -> dict[str, Any]:
    from bench.metrics.novelty import VUNRate

    entry: dict[str, Any] = {
        "value": flags_sum / n if n else None,
        "direction": VUNRate.direction,
        "description": VUNRate.description,
        "version": VUNRate.version,
        "n_vun": flags_sum,
        "n_generated": n,
        "rescored_from": table,
    }
    if convention:
        entry["matcher_convention"] = convention
    if not n:
        entry["reason"] = "no generated items"
    return entry


def rescore_vun_record(path: str | Path, *, write: bool = True) -> Rescored:
    """Recompute ``vun_rate`` of the record at ``path`` from ``<record>.samples.csv``.

    Args:
        path: A result record (JSON).
        write: Rewrite the record (atomically); False only computes.

    Returns:
        The outcome; ``after`` is None when the record was left alone (not complete, no table, no columns).
    """
    from bench.metrics.novelty import vun_flags

    path = Path(path)
    data = read_json(path)
    metrics = data.get("metrics") or {}
    before = product_vun(metrics)
    if data.get("status") != "complete":
        return Rescored(path, before, None, f"status {data.get('status')}")
    table = path.with_suffix(".samples.csv")
    if not table.is_file():
        return Rescored(path, before, None, "no per-structure table")
    frame = pd.read_csv(table, usecols=lambda c: c in _COLUMNS, dtype=str, keep_default_na=False)
    missing = [c for c in _COLUMNS if c not in frame.columns]
    if missing:
        return Rescored(path, before, None, f"table lacks column(s) {', '.join(missing)}")
    n = int((data.get("counts") or {}).get("n_requested", len(frame)))
    if n != len(frame):
        return Rescored(path, before, None, f"table has {len(frame)} rows, record requested {n}")
    flags = vun_flags(*(frame[c].map(_flag).tolist() for c in _COLUMNS))
    convention = (metrics.get("unique") or {}).get("matcher_convention")
    metrics["vun_rate"] = _entry(int(flags.sum()), n, table.name, convention)
    data["metrics"] = metrics
    if write:
        atomic_write_json(path, data)
    return Rescored(path, before, metrics["vun_rate"]["value"])


def rescore_vun(results_dir: str | Path, *, write: bool = True) -> list[Rescored]:
    """:func:`rescore_vun_record` for every record (``*.json``) below ``results_dir``, in path order."""
    return [rescore_vun_record(p, write=write) for p in sorted(Path(results_dir).rglob("*.json"))]


@dataclass(frozen=True)
class FunnelRescored:
    """One record's funnel from its table: the stage counts before (None: it had no funnel) and after (None:
    left alone, ``note`` says why)."""

    path: Path
    before: tuple[int | None, ...] | None
    after: tuple[int | None, ...] | None
    note: str = ""


def _counts(funnel: dict[str, Any] | None) -> tuple[int | None, ...] | None:
    return None if not funnel else tuple(stage.get("n") for stage in funnel.get("stages") or [])


class _TrainingValues:
    """The training split's property values of records, read once per dataset split (and checked against the
    checksum each record names)."""

    def __init__(self, data_dir: Path | None) -> None:
        self.data_dir = data_dir
        self._cache: dict[tuple[Any, ...], tuple[Any, str | None]] = {}

    def crystal(self, record: dict[str, Any], prop: str) -> Any:
        """The record's training split's values of ``prop`` (NaN where missing).

        Raises:
            RescoreError: the split read here is not the one the record names (another checksum), or lacks
                the property.
        """
        from bench.runtime import load_dataset_split

        cfg = _config_here(_as_record(record), self.data_dir)
        ds = cfg.dataset
        key = ("crystal", str(ds.name), str(ds.train_split), ds.get("limit_train"))
        if key not in self._cache:
            split = load_dataset_split(cfg, ds.train_split, limit=ds.get("limit_train"))
            self._cache[key] = (split, (split.checksums or {}).get("sha256"))
        split, sha = self._cache[key]
        named = ((record.get("data_checksums") or {}).get(str(ds.train_split)) or {}).get("sha256")
        if named and sha and named != sha:
            raise RescoreError(f"the {ds.name}/{ds.train_split} file here (sha256 {sha[:12]}...) is not the "
                               f"one the record was scored on ({named[:12]}...)")
        values = (split.properties or {}).get(prop)
        if values is None:
            raise RescoreError(f"{ds.name}/{ds.train_split} has no {prop!r} column")
        return values

    def composition(self, record: dict[str, Any]) -> tuple[Any, str]:
        """The record's training targets and what the target is."""
        from bench.composition_stages import composition_reference

        cfg = _config_here(_as_record(record), self.data_dir)
        reference, _ = composition_reference(cfg)
        return reference.train_targets, reference.target or "target"


def _as_record(data: dict[str, Any]) -> Any:
    from bench.records import ResultRecord

    return ResultRecord.from_dict(data)


def _funnel_screen(data: dict[str, Any], track: str, training: _TrainingValues) -> tuple[Any, str | None]:
    """The plausible screen of a record: its property model's entry (``wdist_prop`` / ``comp_wdist_prop``) and
    the bounds from its training split; or None and why."""
    from bench.metrics.funnel import PlausibleScreen

    name = "wdist_prop" if track == "crystal" else "comp_wdist_prop"
    entry = (data.get("metrics") or {}).get(name)
    if entry is None:
        return None, f"{name}, whose predictor the screen uses, was not computed"
    if entry.get("value") is None or not entry.get("model"):
        return None, f"no predictor: {entry.get('reason') or f'{name} has no value'}"
    if track == "crystal":
        prop = entry.get("property") or (data.get("metric_settings") or {}).get("property")
        if not prop:
            return None, "no property named for the dataset (dataset.property)"
        values = training.crystal(data, str(prop))
    else:
        values, prop = training.composition(data)
    return PlausibleScreen.from_training(str(prop), values, str(entry["model"])), None


def _check_against_record(data: dict[str, Any], funnel: dict[str, Any], track: str) -> str | None:
    """Why the funnel from a table disagrees with the record's own counts (None when it agrees)."""
    n = {stage["name"]: stage["n"] for stage in funnel["stages"]}
    counts = data.get("counts") or {}
    metrics = data.get("metrics") or {}
    vun = "vun_rate" if track == "crystal" else "comp_vun_rate"
    expected = {
        "decoded": counts.get("n_decoded"),
        "valid": counts.get("n_valid") if track == "crystal" else None,
        "novel": (metrics.get(vun) or {}).get("n_vun"),
    }
    for stage, value in expected.items():
        if value is not None and n[stage] is not None and int(value) != n[stage]:
            return f"the table gives {n[stage]} {stage}, the record {value}"
    return None


def rescore_funnel_record(
    path: str | Path, *, write: bool = True, data_dir: str | Path | None = None,
    training: _TrainingValues | None = None,
) -> FunnelRescored:
    """Add the usability funnel to the record at ``path`` from ``<record>.samples.csv`` (see the module
    docstring); a record that already has one gets it derived again.

    Args:
        path: A result record (JSON).
        write: Rewrite the record (atomically); False only computes.
        data_dir: Where the dataset files are (else the usual lookup).
        training: Training values already read (shared by the records of one call).

    Returns:
        The outcome; ``after`` is None when the record was left alone, with the reason in ``note``.
    """
    from bench.metrics.funnel import funnel_from_table
    from bench.records import code_version

    path = Path(path)
    data = read_json(path)
    before = _counts(data.get("funnel"))
    if data.get("status") != "complete":
        return FunnelRescored(path, before, None, f"status {data.get('status')}")
    table = path.with_suffix(".samples.csv")
    if not table.is_file():
        return FunnelRescored(path, before, None, "no per-structure table")
    frame = pd.read_csv(table, dtype=str, keep_default_na=False)
    n = int((data.get("counts") or {}).get("n_requested", len(frame)))
    if n != len(frame):
        return FunnelRescored(path, before, None, f"table has {len(frame)} rows, record requested {n}")
    track = str((data.get("split") or {}).get("track") or "crystal")
    training = training or _TrainingValues(None if data_dir is None else Path(data_dir))
    reasons = {}
    valid_entry = (data.get("metrics") or {}).get("comp_smact_valid") or {}
    if track == "composition" and valid_entry.get("value") is None and valid_entry.get("reason"):
        reasons["valid"] = str(valid_entry["reason"])
    try:
        screen, why = _funnel_screen(data, track, training)
        funnel, _ = funnel_from_table(frame, track, screen=screen, screen_reason=why, reasons=reasons,
                                      source=table.name)
    except (RescoreError, ValueError) as err:
        return FunnelRescored(path, before, None, str(err))
    disagreement = _check_against_record(data, funnel, track)
    if disagreement:
        return FunnelRescored(path, before, None, disagreement)
    funnel["code_version"] = code_version()
    data["funnel"] = funnel
    if write:
        atomic_write_json(path, data)
    return FunnelRescored(path, before, _counts(funnel))


def rescore_funnel(
    results_dir: str | Path, *, write: bool = True, data_dir: str | Path | None = None
) -> list[FunnelRescored]:
    """:func:`rescore_funnel_record` for every record (``*.json``) below ``results_dir`` (or the one record it
    names), in path order; the training splits are read once."""
    root = Path(results_dir)
    training = _TrainingValues(None if data_dir is None else Path(data_dir))
    paths = sorted(root.rglob("*.json")) if root.is_dir() else [root]
    return [rescore_funnel_record(p, write=write, training=training) for p in paths]


SHIPPED_SUFFIX = ".generated.csv.xz"
"""The file beside a record (``<record>.generated.csv.xz``) that holds the samples it scored."""

NOT_RESCORED = ("nll_test",)
"""Metrics that need more than the samples (the trained checkpoint): carried over by a re-score."""


class RescoreError(Exception):
    """A record that cannot be re-scored; the message names the record and what would fix it."""


@dataclass
class Rescore:
    """One record's re-score: the record, where its samples came from, and each metric's check."""

    record: Path
    samples: str
    checks: list[Any]
    carried: list[str]

    @property
    def exact(self) -> bool:
        return all(c.ok for c in self.checks)


def shipped_path(record_path: str | Path) -> Path:
    """``<record>.generated.csv.xz``: where the samples a record scored are shipped."""
    return Path(record_path).with_suffix(SHIPPED_SUFFIX)


def ship_samples(record_path: str | Path, sample_set: Any) -> Path:
    """Write the samples ``sample_set`` holds beside the record at ``record_path``, xz-compressed.

    A samples CSV (this project's, or any CSV with a ``cif`` column) is compressed byte for byte, so what is
    shipped is exactly what was scored; other formats are written as this project's samples CSV first.
    """
    import lzma
    import tempfile

    from bench.io_utils import atomic_write_bytes
    from bench.structures_io import write_samples_csv

    source = Path(str(sample_set.source))
    target = shipped_path(record_path)
    if source.is_file() and source.suffix.lower() == ".csv":
        raw = source.read_bytes()
    else:
        from bench.datasets import DecodeFailure

        items: list[Any] = []
        for i, (structure, reason) in enumerate(zip(sample_set.structures, sample_set.reasons, strict=True)):
            if structure is not None:
                items.append(structure)
                continue
            comp = (sample_set.compositions[i] if sample_set.compositions else None) or {}
            species = tuple(el for el, n in sorted(comp.items()) for _ in range(int(round(n))))
            items.append(DecodeFailure(reason or "no structure", i, species))
        with tempfile.TemporaryDirectory() as tmp:
            written = write_samples_csv(Path(tmp) / "samples.csv", items, conditions=sample_set.conditions)
            raw = written.read_bytes()
    atomic_write_bytes(target, lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME))
    return target


def _config_here(record: Any, data_dir: Path | None) -> Any:
    """The record's resolved config with this machine's data and cache paths; writes nothing."""
    from bench.config import config_here

    try:
        cfg = config_here(record.config, data_dir)
    except ValueError as err:
        raise RescoreError(f"{err}; it cannot be re-scored") from None
    cfg.record = {"write": False, "regenerate_board": False}
    return cfg


def _samples_of(record: Any, path: Path, cfg: Any, samples: Path | None) -> Any:
    """The structures the record scored: drawn again for a reference row, else read from the shipped file."""
    from bench.structures_io import read_samples

    if record.kind == "reference" and samples is None:
        from bench.references import REFERENCE_KINDS, reference_samples
        from bench.runtime import seed_everything

        kind = cfg.get("reference")
        if kind not in REFERENCE_KINDS:
            raise RescoreError(
                f"{path}: a reference record without a known `reference` ({kind}) in its config"
            )
        seed_everything(int(cfg.seed))
        return reference_samples(cfg, kind)
    source = samples if samples is not None else shipped_path(path)
    if not source.exists():
        raise RescoreError(
            f"{path}: no samples to re-score ({source.name} is not beside the record); pass --samples FILE "
            "with the samples it scored"
        )
    return read_samples(source)


def _digest_before_cif_compositions(sample_set: Any) -> str:
    """The digest ``samples_digest`` gave ``sample_set`` when a CIF that pymatgen cannot read was scored
    without its composition (records scored before the reader kept it); accepted as the same samples."""
    import dataclasses

    from bench.structures_io import samples_digest

    kept = [None if (reason or "").startswith("unreadable CIF") else comp
            for reason, comp in zip(sample_set.reasons, sample_set.compositions or [], strict=False)]
    return samples_digest(dataclasses.replace(sample_set, compositions=kept))


def rescore_record(
    path: str | Path, *, samples: str | Path | None = None, data_dir: str | Path | None = None,
    write: bool = False, metrics: Sequence[str] | None = None,
) -> Rescore:
    """Score the samples the record at ``path`` scored again, with its config and this checkout's metrics.

    Args:
        metrics: Re-score only these of the record's metrics (the others are listed as carried over), e.g.
            the cheap ones for a quick check; None: all. Not with ``write``.

    Raises:
        RescoreError: the record is not complete, has no samples here, or the samples are not the ones it
            scored (their digest differs from ``counts.samples_sha256``).
    """
    from bench.evaluate import score
    from bench.io_utils import atomic_write_text
    from bench.records import ResultRecord, scrub_machine_paths
    from bench.reproduce import compare_metrics
    from bench.structures_io import samples_digest

    path = Path(path)
    if write and metrics:
        raise RescoreError(f"{path}: --write replaces every metric; drop --metrics to write them all")
    data = read_json(path)
    try:
        record = ResultRecord.from_dict(data)
    except (TypeError, KeyError, AttributeError) as err:
        raise RescoreError(f"{path}: not a result record of this project ({err}); pass a record's .json"
                           ) from None
    if record.status != "complete":
        raise RescoreError(f"{path}: status {record.status!r}; only complete records have metrics to rescore")
    cfg = _config_here(record, None if data_dir is None else Path(data_dir))
    if metrics:
        unknown = sorted(set(metrics) - set(cfg.metrics.names))
        if unknown:
            raise RescoreError(f"{path}: the record's metrics do not include {', '.join(unknown)} (it has: "
                               f"{', '.join(cfg.metrics.names)})")
        cfg.metrics.names = [name for name in cfg.metrics.names if name in set(metrics)]
    sample_set = _samples_of(record, path, cfg, None if samples is None else Path(samples))
    decode = (data.get("metric_settings") or {}).get("decode")
    if decode is not None and sample_set.meta.get("decode") is None:
        # the sampling stage's decode thresholds, recorded with the metrics; a shipped file has no sidecar
        sample_set.meta["decode"] = decode
    recorded_digest = (record.counts or {}).get("samples_sha256")
    digest = samples_digest(sample_set)
    if digest != recorded_digest and recorded_digest == _digest_before_cif_compositions(sample_set):
        # the same structures, digested before an unreadable CIF kept its composition: --write updates it
        digest = recorded_digest
    if recorded_digest and digest != recorded_digest:
        raise RescoreError(
            f"{path}: {sample_set.source} holds other structures than the record scored (samples_sha256 "
            f"{digest[:12]}..., recorded {recorded_digest[:12]}...); pass the samples it scored"
        )
    tables: list[Any] = []
    new, _ = score(cfg, sample_set, model=record.model, family=record.family, variant=record.variant,
                   kind=record.kind, tables=tables)
    carried = [name for name in record.metrics
               if name in NOT_RESCORED or (metrics and name not in new.metrics)]
    recorded = {k: v for k, v in record.metrics.items() if k not in carried}
    checks = compare_metrics(recorded, new.metrics, exact=True)
    result = Rescore(path, str(sample_set.source), checks, carried)
    if write:
        data["metrics"] = {**new.metrics, **{k: record.metrics[k] for k in carried}}
        data["metric_settings"] = new.metric_settings
        data["counts"] = {**new.counts, "samples_file": record.counts.get("samples_file")}
        data["funnel"] = new.funnel
        history = list((data.get("provenance") or {}).get("rescored") or [])
        history.append({"created": new.created, "from": Path(result.samples).name, "exact": result.exact,
                        **{k: v for k, v in new.provenance.items() if k in ("git_commit", "versions")}})
        data.setdefault("provenance", {})["rescored"] = history
        atomic_write_json(path, scrub_machine_paths(data))
        atomic_write_text(path.with_suffix(".samples.csv"), tables[0].to_csv(index=False))
    return result


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _stages(counts: tuple[int | None, ...] | None) -> str:
    """Stage counts as ``1000 > 998 > 579 > 577 > 563 > 540`` (``n/a`` for a stage without a count)."""
    if counts is None:
        return "none"
    return " > ".join("n/a" if c is None else str(c) for c in counts)


def _num(x: float | None) -> str:
    return "—" if x is None else f"{x:.6g}"


def render_rescore(result: Rescore) -> str:
    """Recorded vs re-scored metrics of one record, one line each; differences are marked."""
    lines = [f"{result.record}: re-scored from {Path(result.samples).name}"]
    width = max([len(c.name) for c in result.checks] + [6])
    lines.append(f"  {'metric':<{width}}  {'recorded':>12}  {'re-scored':>12}  {'difference':>11}")
    for c in result.checks:
        diff = "" if c.difference is None else f"{c.difference:+.3g}"
        mark = "" if c.ok else "  <- differs"
        lines.append(f"  {c.name:<{width}}  {_num(c.recorded):>12}  {_num(c.rerun):>12}  {diff:>11}{mark}")
    for name in result.carried:
        why = "needs the trained checkpoint" if name in NOT_RESCORED else "not asked for"
        lines.append(f"  {name:<{width}}  carried over, not re-scored ({why})")
    changed = sum(not c.ok for c in result.checks)
    lines.append("  every metric re-scores exactly" if not changed else f"  {changed} metric(s) differ")
    return "\n".join(lines)


def _records(paths: list[Path]) -> list[Path]:
    found: list[Path] = []
    for p in paths:
        found.extend(sorted(p.rglob("*.json")) if p.is_dir() else [p])
    return found


def main(argv: list[str] | None = None) -> int:
    """``matgenbench rescore RECORD.json|FOLDER ... [--samples FILE] [--data-dir DIR] [--write]``.

    Exit status 0 when every record re-scored exactly, 1 when a metric differs, 2 when a record could not be
    re-scored (the message names it and the fix). With ``--funnel-from-tables``: 0 when every record got its
    funnel, 1 when one was left alone (the line says why).
    """
    parser = argparse.ArgumentParser(
        prog="matgenbench rescore", description=__doc__.splitlines()[0],
        epilog="e.g. matgenbench rescore leaderboard/results/perov_5/nice__perov_5_offline__*.json",
    )
    parser.add_argument("paths", nargs="*", type=Path, default=[Path("leaderboard/results")],
                        help="result records, or folders of them (default: leaderboard/results)")
    parser.add_argument("--samples", type=Path, help="the samples the record scored, if not beside it")
    parser.add_argument("--data-dir", type=Path, help="where the dataset files are (else the usual lookup)")
    parser.add_argument("--metrics", help="re-score only these metrics (comma-separated)")
    parser.add_argument("--write", action="store_true", help="replace the records' metrics by the new ones")
    parser.add_argument("--vun-from-tables", action="store_true",
                        help="older mode: recompute only vun_rate from each record's per-structure table")
    parser.add_argument("--funnel-from-tables", action="store_true",
                        help="add the usability funnel to each record from its per-structure table")
    parser.add_argument("--dry-run", action="store_true",
                        help="with --vun-from-tables or --funnel-from-tables: write nothing")
    args = parser.parse_args(argv)
    missing = [p for p in args.paths if not p.exists()]
    if missing:
        print(f"rescore: no such record or folder: {missing[0]}", file=sys.stderr)
        return 2
    if args.vun_from_tables:
        for folder in args.paths:
            for item in rescore_vun(folder, write=not args.dry_run):
                line = f"{item.path}: vun_rate {_fmt(item.before)} -> {_fmt(item.after)}"
                print(line + (f" (left alone: {item.note})" if item.note else ""))
        return 0
    if args.funnel_from_tables:
        status = 0
        for folder in args.paths:
            for item in rescore_funnel(folder, write=not args.dry_run, data_dir=args.data_dir):
                line = f"{item.path}: funnel {_stages(item.before)} -> {_stages(item.after)}"
                print(line + (f" (left alone: {item.note})" if item.note else ""))
                status = status if item.after is not None else 1
        return status
    records = _records(args.paths)
    if args.samples is not None and len(records) != 1:
        print(f"rescore: --samples names one record's samples; {len(records)} records given", file=sys.stderr)
        return 2
    status = 0
    for path in records:
        try:
            chosen = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
            result = rescore_record(path, samples=args.samples, data_dir=args.data_dir, write=args.write,
                                    metrics=chosen)
        except (RescoreError, ValueError, OSError) as err:
            print(f"rescore: {err}", file=sys.stderr)
            status = 2
            continue
        print(render_rescore(result))
        if not result.exact:
            status = max(status, 1)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
