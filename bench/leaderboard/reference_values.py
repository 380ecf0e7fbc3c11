"""The Test and Random reference values of a run's protocol, read from result records on disk: what
``matgenbench run`` prints beside the run's own metrics, so a newcomer can tell a good number from a poor one.

A reference record (:mod:`bench.references`) is matched on the split protocol id, which names the pinned
experiment, the splits, any row caps and the sample count. An ad-hoc run (no pinned protocol) falls back to
the references of a pinned protocol on the same splits and sample count, and says which one.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.io_utils import read_json
from bench.leaderboard.headline import REFERENCE_MODELS
from bench.records import ResultRecord

__all__ = ["ReferenceValues", "find_reference_values"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReferenceValues:
    """Mean metric values of the reference rows of one protocol."""

    values: dict[str, dict[str, float]]
    """Reference model (``Test``, ``Random``) -> metric -> mean over its seeds."""
    protocol_id: str
    protocol: str
    """The protocol's label, as its records state it."""
    exact: bool
    """True when the protocol is the run's own; False for the fallback of an ad-hoc run."""
    folder: Path
    """The results folder the reference records were read from."""


def _protocol_id(record: ResultRecord) -> str:
    return str(record.split.get("id") or record.split_protocol)


def _references(folder: Path, dataset: str, models: Sequence[str]) -> list[ResultRecord]:
    """Complete reference records of ``models`` on ``dataset`` under ``folder`` (files named by the model)."""
    out = []
    for model in models:
        for path in sorted((folder / dataset).glob(f"{model}__*.json")):
            try:
                record = ResultRecord.from_dict(read_json(path))
            except Exception as err:  # a broken file must not break the printout of a finished run
                log.warning("skipping unreadable reference record %s: %s", path, err)
                continue
            if (record.kind, record.status, record.model, record.dataset) == ("reference", "complete", model,
                                                                               dataset):
                out.append(record)
    return out


def _means(records: Sequence[ResultRecord]) -> dict[str, dict[str, float]]:
    """Model -> metric -> mean over seeds (the newest record of each seed)."""
    newest: dict[tuple[str, int], ResultRecord] = {}
    for r in records:
        key = (r.model, r.seed)
        if key not in newest or r.created >= newest[key].created:
            newest[key] = r
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (model, _), r in sorted(newest.items()):
        for name, entry in r.metrics.items():
            value = entry.get("value")
            if isinstance(value, int | float) and math.isfinite(value):
                values[model][name].append(float(value))
    return {model: {name: sum(v) / len(v) for name, v in metrics.items()}
            for model, metrics in values.items()}


def find_reference_values(
    record: ResultRecord, folders: Sequence[str | Path], models: Sequence[str] = REFERENCE_MODELS
) -> ReferenceValues | None:
    """The reference values to print beside ``record``'s metrics, or None when there are none.

    The first folder holding references of the record's own protocol wins. Failing that, and only for a run
    without a pinned protocol, the references of a pinned protocol on the same splits and sample count (the
    one with the most reference models, then the first by id).

    Args:
        record: The run's record.
        folders: Results folders to look in, in order (e.g. the run's own, then ``leaderboard/results``).
        models: Reference models wanted.
    """
    run_id = _protocol_id(record)
    fallback: list[tuple[int, str, Path, list[ResultRecord]]] = []
    for folder in dict.fromkeys(Path(f) for f in folders):
        by_protocol: dict[str, list[ResultRecord]] = defaultdict(list)
        for r in _references(folder, record.dataset, models):
            by_protocol[_protocol_id(r)].append(r)
        if run_id in by_protocol:
            group = by_protocol[run_id]
            return ReferenceValues(_means(group), run_id, group[0].split_protocol, True, folder)
        if not record.split.get("protocol"):
            fallback += [(-len({r.model for r in g}), pid, folder, g) for pid, g in by_protocol.items()
                         if pid.endswith(f"__{run_id}")]
    if not fallback:
        return None
    _, pid, folder, group = min(fallback, key=lambda item: item[:2])
    return ReferenceValues(_means(group), pid, group[0].split_protocol, False, folder)
