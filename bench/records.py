"""Result records: one JSON file per run, the only source of truth for the leaderboard.

A record says what was run (model, family, variant, dataset, split protocol, seed), on which data (checksums
of the files actually read), what came out (counts, metrics with their direction and version, the usability
funnel from requested to plausible items), at what cost
(seconds, throughput, memory, parameters), whether it finished (``complete`` / ``failed`` / ``not_applicable``
with a reason) and how to reproduce it (resolved config, its hash, git commit, package versions, hardware).
The shape follows matbench-discovery's per-model files, with the provenance MatterGen's benchmark JSONs lack.
"""

from __future__ import annotations

import datetime as _dt
import functools
import importlib.metadata
import logging
import os
import platform
import resource
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from bench.io_utils import atomic_write_json, read_json

__all__ = [
    "SCHEMA_VERSION",
    "ResultRecord",
    "record_path",
    "scrub_machine_paths",
    "write_record",
    "load_records",
    "provenance",
    "peak_memory_mb",
    "code_version",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
Status = Literal["complete", "failed", "not_applicable", "running"]
_PACKAGES = (
    "matgenbench", "torch", "pytorch-lightning", "hydra-core", "numpy", "scipy", "pandas",
    "pymatgen", "pymatgen-core", "smact", "spglib", "matminer",
)


@dataclass
class ResultRecord:
    """Everything one run of train → sample → evaluate (or evaluate alone) produced."""

    model: str
    family: str
    variant: str
    dataset: str
    split_protocol: str
    seed: int
    status: Status = "complete"
    reason: str | None = None
    split: dict[str, Any] = field(default_factory=dict)
    data_checksums: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    metric_settings: dict[str, Any] = field(default_factory=dict)
    funnel: dict[str, Any] | None = None
    """The usability funnel, requested → decoded → valid → unique → novel → plausible, with the plausible
    screen's rule and bounds (:mod:`bench.metrics.funnel`); None in records written before it."""
    cost: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    config_hash: str = ""
    kind: Literal["run", "reference", "external"] = "run"
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResultRecord:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def record_path(results_dir: str | Path, record: ResultRecord) -> Path:
    """``<results_dir>/<dataset>/<model>__<protocol>__s<seed>__<hash>.json``: one file per config, so a re-run
    of the same config replaces its record and a sweep can tell which cells are done."""
    protocol = record.split.get("id") or record.split_protocol
    safe = "".join(
        c if c.isalnum() or c in "-_." else "-" for c in f"{record.model}__{protocol}__s{record.seed}"
    )
    suffix = f"__{record.config_hash[:8]}" if record.config_hash else ""
    return Path(results_dir) / record.dataset / f"{safe}{suffix}.json"


def write_record(record: ResultRecord, results_dir: str | Path) -> Path:
    """Write the record atomically (temp file + rename) and return its path.

    What is written names no machine: an absolute output directory becomes ``<output_dir>`` wherever it
    appears (run directory, samples file, command line), other absolute paths ``<local>/<file name>``
    (:func:`scrub_machine_paths`).
    """
    path = record_path(results_dir, record)
    data = record.to_dict()
    output_dir = ((data.get("config") or {}).get("paths") or {}).get("output_dir")
    atomic_write_json(path, scrub_machine_paths(data, output_dir))
    log.info("result record written: %s", path)
    return path


def scrub_machine_paths(data: Any, output_dir: str | None = None) -> Any:
    """``data`` with machine-specific absolute paths replaced: ``output_dir`` (when absolute) by
    ``<output_dir>`` inside any string, any other absolute path by ``<local>/<its file name>``; relative paths
    and other strings are kept."""
    prefix = str(output_dir).rstrip("/") if output_dir and Path(str(output_dir)).is_absolute() else None
    if isinstance(data, dict):
        return {k: scrub_machine_paths(v, output_dir) for k, v in data.items()}
    if isinstance(data, list):
        return [scrub_machine_paths(v, output_dir) for v in data]
    if not isinstance(data, str):
        return data
    if prefix and prefix in data:
        return data.replace(prefix, "<output_dir>")
    key, sep, value = data.partition("=")
    candidate = value if sep else data
    if candidate.startswith("/") and " " not in candidate and Path(candidate).is_absolute():
        scrubbed = f"<local>/{Path(candidate).name}"
        return f"{key}={scrubbed}" if sep else scrubbed
    return data


def load_records(results_dir: str | Path) -> list[tuple[Path, ResultRecord]]:
    """Every record below ``results_dir``; unreadable files are reported and skipped (not silently)."""
    out: list[tuple[Path, ResultRecord]] = []
    root = Path(results_dir)
    if not root.exists():
        return out
    for path in sorted(root.rglob("*.json")):
        try:
            out.append((path, ResultRecord.from_dict(read_json(path))))
        except Exception as err:  # a broken file must not hide the others
            log.warning("skipping unreadable result record %s: %s", path, err)
    return out


def peak_memory_mb() -> float:
    """Peak resident memory of this process in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here, capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        return f"{out}{'+dirty' if dirty else ''}" if out else None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _hardware() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
    }
    torch = sys.modules.get("torch")  # only describe torch if this run already imported it
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_count"] = torch.cuda.device_count()
    return info


@functools.cache
def code_version() -> str | None:
    """Git commit of the running code (``+dirty`` with local changes), read once per process: a long sweep
    keeps running the code it imported at its start, so that start is what its records must name (the CLI
    reads it before any work)."""
    return _git_commit()


def provenance() -> dict[str, Any]:
    """Git commit (``+dirty`` when the tree has local changes), package versions and hardware of this
    process."""
    return {
        "git_commit": code_version(), "versions": _versions(), "hardware": _hardware(), "argv": sys.argv[1:],
    }
