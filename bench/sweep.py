"""Sweeps: which cells are already done and what the whole sweep came to (a cell writes where a single run
of its config would: :mod:`bench.rundirs`).

A cell of a sweep (one Hydra job of ``matgenbench run -m ...``) is skipped when a ``complete`` result record
with the same config hash already exists, so re-running a killed sweep finishes only the missing cells
(``force=true`` re-runs them all). Every cell leaves a small status file (``cell.json``) in its Hydra job
directory, whichever launcher ran it (in-process, joblib workers, Ray workers or SLURM jobs), and
:class:`SweepReport` reads them back in the launching process at the end of the sweep to count failures.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from bench.config import config_hash, results_dir
from bench.io_utils import atomic_write_json, read_json

__all__ = [
    "CELL_FILE",
    "LAUNCHER_PLUGINS",
    "SweepSummary",
    "SweepReport",
    "find_record",
    "launcher_problem",
    "last_summary",
    "summarize",
    "write_cell_status",
]

log = logging.getLogger(__name__)

CELL_FILE = "cell.json"

# hydra/launcher option -> (module of the Hydra plugin, the matgenbench extra that installs it)
LAUNCHER_PLUGINS: dict[str, tuple[str, str]] = {
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "joblib"),
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "ray": ("hydra_plugins.hydra_ray_launcher", "ray"),
    "ray_aws": ("hydra_plugins.hydra_ray_launcher", "ray"),
}

_LAST: SweepSummary | None = None


def launcher_problem(overrides: list[str]) -> str | None:
    """A one-line message when ``hydra/launcher=NAME`` names a launcher whose plugin is missing, else None."""
    import importlib.util

    for item in overrides:
        key, sep, value = item.lstrip("+~").partition("=")
        if not sep or key.split("@")[0] != "hydra/launcher":
            continue
        plugin = LAUNCHER_PLUGINS.get(value)
        if plugin is None:
            continue
        module, extra = plugin
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return (
                f"hydra/launcher={value} needs the Hydra plugin '{module.split('.')[-1].replace('_', '-')}', "
                f"which is not installed: pip install 'matgenbench[{extra}]' "
                f"(from a clone: pip install -e '.[{extra}]')"
            )
    return None


def find_record(cfg: DictConfig, statuses: tuple[str, ...] = ("complete",)) -> Path | None:
    """The result record of ``cfg`` (same dataset, same config hash) with a status in ``statuses``.

    Records are named ``<results_dir>/<dataset>/<model>__<protocol>__s<seed>__<hash8>.json``
    (:func:`bench.records.record_path`). The hash is recomputed from the config each record stores, so a
    record written before a change of what the hash leaves out (e.g. ``metrics.parallel``) is still found.
    """
    digest = config_hash(cfg)
    folder = results_dir(cfg) / str(cfg.dataset.name)
    if not folder.is_dir():
        return None
    named = sorted(folder.glob(f"*__{digest[:8]}.json"))
    same_seed = sorted(folder.glob(f"*__s{cfg.seed}__*.json"))  # references are named after their row
    for path in dict.fromkeys([*named, *same_seed]):
        try:
            data = read_json(path)
        except (OSError, ValueError) as err:
            log.warning("unreadable result record %s (%s): the cell will run again", path, err)
            continue
        if not isinstance(data, dict) or data.get("status") not in statuses:
            continue
        stored = data.get("config")
        if data.get("config_hash") == digest or (isinstance(stored, dict) and config_hash(stored) == digest):
            return path
    return None


def write_cell_status(status: str, *, reason: str | None = None, record: Path | str | None = None,
                      started: float | None = None) -> Path | None:
    """Write ``cell.json`` (status, reason, record, overrides, host, pid) into this Hydra job's directory.

    Args:
        status: ``complete``, ``skipped`` or ``failed``.
        reason: why it failed (or was skipped).
        record: the result record this cell wrote or found.
        started: ``time.time()`` when the cell started.

    Returns:
        The file written, or None outside a Hydra job.
    """
    from hydra.core.hydra_config import HydraConfig

    try:
        hydra_cfg = HydraConfig.get()
    except ValueError:
        return None
    now = _dt.datetime.now(_dt.UTC)
    data = {
        "status": status,
        "reason": reason,
        "record": str(record) if record else None,
        "job": int(hydra_cfg.job.num) if hydra_cfg.job.get("num") is not None else None,
        "overrides": list(hydra_cfg.overrides.task),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": _dt.datetime.fromtimestamp(started, _dt.UTC).isoformat() if started else None,
        "finished": now.isoformat(),
    }
    return atomic_write_json(Path(hydra_cfg.runtime.output_dir) / CELL_FILE, data)


@dataclass
class SweepSummary:
    """What the cells of one sweep came to, read from their ``cell.json`` files."""

    sweep_dir: str
    cells: list[dict[str, Any]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.cells) + len(self.missing)

    def count(self, status: str) -> int:
        return sum(1 for cell in self.cells if cell.get("status") == status)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [cell for cell in self.cells if cell.get("status") == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed and not self.missing

    def lines(self) -> list[str]:
        """A human summary: one line of counts, then one line per failed or unreported cell."""
        head = (f"sweep: {self.total} cells: {self.count('complete')} complete, "
                f"{self.count('skipped')} skipped (already complete), {len(self.failed)} failed")
        if self.missing:
            head += f", {len(self.missing)} without a report"
        out = [head]
        if self.failed or self.missing:
            bad = len(self.failed) + len(self.missing)
            out.append(f"{bad} of {self.total} cells failed:")
            shared = set.intersection(*(set(c.get("overrides") or []) for c in self.cells)) \
                if len(self.cells) > 1 else set()
            for cell in self.failed:
                own = [o for o in cell.get("overrides") or [] if o not in shared]  # what this cell sweeps
                out.append(f"  #{cell.get('job')} {' '.join(own)}: {cell.get('reason')}")
            for name in self.missing:
                out.append(f"  {name}: no {CELL_FILE} (the job was killed or its launcher lost it)")
        out.append(f"sweep outputs: {self.sweep_dir}")
        return out


def summarize(sweep_dir: str | Path) -> SweepSummary:
    """Read every job directory of a sweep (those with a ``.hydra`` folder or a ``cell.json``)."""
    root = Path(sweep_dir)
    summary = SweepSummary(str(root))
    if not root.is_dir():
        return summary
    jobs = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: (len(p.name), p.name))
    for job in jobs:
        status = job / CELL_FILE
        if status.exists():
            try:
                summary.cells.append(read_json(status))
                continue
            except (OSError, ValueError) as err:
                log.warning("unreadable %s: %s", status, err)
        if (job / ".hydra").is_dir():
            summary.missing.append(job.name)
    return summary


def last_summary(clear: bool = True) -> SweepSummary | None:
    """The summary of the last sweep this process launched (set by :class:`SweepReport`)."""
    global _LAST
    out = _LAST
    if clear:
        _LAST = None
    return out


class SweepReport(Callback):
    """Hydra callback (``hydra.callbacks.sweep_report``): at the end of a multirun, summarise its cells.

    Runs in the launching process; the summary is logged and kept for the CLI, which prints it and sets the
    exit status (non-zero when a cell failed).
    """

    def __init__(self) -> None:
        self.sweep_dir: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.sweep_dir = str(config.hydra.sweep.dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        global _LAST
        summary = summarize(self.sweep_dir or str(config.hydra.sweep.dir))
        _LAST = summary
        (log.info if summary.ok else log.warning)(summary.lines()[0])
