"""Load a dataset split as pymatgen structures, ids and property arrays, with an on-disk parse cache.

CSV rows are parsed once (``cif`` column, pymatgen) and the result is pickled into the cache dir, keyed by the
file's sha256 and the parse options, so later loads skip CIF parsing. Rows that fail to parse are skipped,
counted and logged with their ids; nothing is dropped silently.
"""

from __future__ import annotations

import logging
import os
import pickle
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pymatgen.core
from pymatgen.core import Structure
from tqdm.auto import tqdm

from bench.io_utils import atomic_write_pickle

from .download import default_cache_dir, file_checksums, resolve_file
from .registry import DatasetSpec, get_spec
from .tiny import tiny_checksums, tiny_ids, tiny_structures

__all__ = [
    "PARSE_CACHE_VERSION",
    "LoadedSplit",
    "SplitProtocol",
    "is_official_protocol",
    "load_csv",
    "load_split",
    "parse_cif",
    "split_protocol",
    "split_protocol_id",
]

logger = logging.getLogger(__name__)

PARSE_CACHE_VERSION = 1
_ID_COLUMN = "material_id"
_CIF_COLUMN = "cif"
_N_IDS_LOGGED = 5


@dataclass
class LoadedSplit:
    """One parsed dataset split.

    Attributes:
        name: dataset name.
        split: split name.
        structures: parsed structures, in file order, without the skipped rows.
        ids: ``material_id`` of each structure (as strings), aligned with ``structures``.
        properties: every numeric property column of the file, aligned with ``structures``.
        path: the CSV file read, or None for a dataset built in code.
        checksums: ``{"git_blob": ..., "sha256": ...}`` of the file (of the canonical serialisation for
            built-in data).
        n_rows: number of data rows in the file.
        n_skipped: number of rows in the file that failed to parse.
        skipped: ``(material_id, reason)`` of every skipped row.
        limit: the row cap applied to ``structures`` (None: no cap).
        niggli: whether structures were Niggli-reduced.
    """

    name: str
    split: str
    structures: list[Structure]
    ids: list[str]
    properties: dict[str, np.ndarray]
    path: Path | None
    checksums: dict[str, str]
    n_rows: int
    n_skipped: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    limit: int | None = None
    niggli: bool = False

    def __len__(self) -> int:
        return len(self.structures)


def parse_cif(cif: str, niggli: bool = False) -> Structure:
    """Parse one CIF string into a structure, with pymatgen's CIF warnings silenced.

    Args:
        cif: CIF text.
        niggli: apply Niggli reduction (``Structure.get_reduced_structure()``) after parsing.

    Returns:
        The structure.

    Raises:
        ValueError: if the text is empty or yields a structure without sites; pymatgen's own errors otherwise.
    """
    if not isinstance(cif, str) or not cif.strip():
        raise ValueError("empty CIF")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structure = Structure.from_str(cif, fmt="cif")
    if len(structure) == 0:
        raise ValueError("CIF has no sites")
    return structure.get_reduced_structure() if niggli else structure


def _parse_rows(path: Path, desc: str, niggli: bool) -> dict[str, Any]:
    """Read and parse a CSV file into a picklable payload (no caching here)."""
    df = pd.read_csv(path, dtype={_ID_COLUMN: str})
    missing = [c for c in (_ID_COLUMN, _CIF_COLUMN) if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; columns are {list(df.columns)}")
    index_cols = {c for c in df.columns if c == "" or str(c).startswith("Unnamed:")}
    prop_cols = [
        c
        for c in df.columns
        if c not in index_cols
        and c not in (_ID_COLUMN, _CIF_COLUMN)
        and pd.api.types.is_numeric_dtype(df[c])
        and not pd.api.types.is_bool_dtype(df[c])
    ]
    structures: list[Structure] = []
    ids: list[str] = []
    kept_rows: list[int] = []
    skipped: list[tuple[str, str]] = []
    raw_ids = df[_ID_COLUMN].tolist()
    for row, (raw_id, cif) in enumerate(
        tqdm(zip(raw_ids, df[_CIF_COLUMN].tolist(), strict=True), total=len(df), desc=desc, unit="cif")
    ):
        row_id = str(raw_id) if isinstance(raw_id, str) and raw_id else f"<row {row}>"
        try:
            structure = parse_cif(cif, niggli=niggli)
        except Exception as err:  # noqa: BLE001 - any parser failure is a bad row, reported below
            skipped.append((row_id, f"{type(err).__name__}: {err}"[:300]))
            continue
        structures.append(structure)
        ids.append(row_id)
        kept_rows.append(row)
    properties = {c: df[c].to_numpy(dtype=np.float64)[kept_rows] for c in prop_cols}
    return {
        "version": PARSE_CACHE_VERSION,
        "structures": structures,
        "ids": ids,
        "properties": properties,
        "n_rows": len(df),
        "skipped": skipped,
    }


def _cache_file(cache_dir: Path, sha: str, niggli: bool) -> Path:
    tag = f"v{PARSE_CACHE_VERSION}-pmg{pymatgen.core.__version__}-niggli{int(niggli)}"
    return cache_dir / "parsed" / f"{sha}-{tag}.pkl"


def _read_cache(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        with path.open("rb") as fh:
            payload = pickle.load(fh)
    except Exception as err:  # noqa: BLE001 - a broken cache entry is rebuilt, never fatal
        logger.warning("ignoring unreadable parse cache %s (%s); parsing again", path, err)
        return None
    if not isinstance(payload, dict) or payload.get("version") != PARSE_CACHE_VERSION:
        return None
    return payload


def _write_cache(path: Path, payload: dict[str, Any]) -> None:
    atomic_write_pickle(path, payload)


def _check_limit(limit: int | None) -> None:
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise ValueError(f"limit must be None or an integer >= 0, got {limit!r}")


def load_csv(
    path: str | os.PathLike[str],
    name: str | None = None,
    split: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    niggli: bool = False,
    checksums: Mapping[str, str] | None = None,
) -> LoadedSplit:
    """Parse a CDVAE-style CSV (``material_id``, ``cif`` and numeric property columns) into a split.

    Args:
        path: the CSV file.
        name: dataset name recorded in the result (default: the parent folder's name).
        split: split name recorded in the result (default: the file's stem).
        cache_dir: cache root for the parse cache; defaults to :func:`default_cache_dir`.
        limit: keep only the first ``limit`` parsed structures (applied after the cache).
        niggli: Niggli-reduce every structure (CDVAE's preprocessing of reference data).
        checksums: the file's checksums if already computed (``git_blob`` and ``sha256``).

    Returns:
        The loaded split.
    """
    _check_limit(limit)
    path = Path(path)
    name = name if name is not None else path.parent.name
    split = split if split is not None else path.stem
    sums = dict(checksums) if checksums and {"git_blob", "sha256"} <= set(checksums) else file_checksums(path)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    cache = _cache_file(root, sums["sha256"], niggli)

    payload = _read_cache(cache)
    if payload is None:
        payload = _parse_rows(path, f"parsing {name}/{split}", niggli)
        try:
            _write_cache(cache, payload)
        except OSError as err:
            logger.warning("could not write parse cache %s (%s); continuing without it", cache, err)
    else:
        logger.info("loaded parsed %s/%s from cache %s", name, split, cache)

    skipped: list[tuple[str, str]] = list(payload["skipped"])
    if skipped:
        logger.warning(
            "%s/%s: skipped %d of %d rows that failed to parse (first: %s)",
            name,
            split,
            len(skipped),
            payload["n_rows"],
            "; ".join(f"{i}: {r}" for i, r in skipped[:_N_IDS_LOGGED]),
        )
    end = limit if limit is not None else len(payload["structures"])
    return LoadedSplit(
        name=name,
        split=split,
        structures=list(payload["structures"][:end]),
        ids=list(payload["ids"][:end]),
        properties={k: np.asarray(v[:end]) for k, v in payload["properties"].items()},
        path=path,
        checksums=sums,
        n_rows=int(payload["n_rows"]),
        n_skipped=len(skipped),
        skipped=skipped,
        limit=limit,
        niggli=niggli,
    )


def _load_tiny(spec: DatasetSpec, split: str, limit: int | None, niggli: bool) -> LoadedSplit:
    structures = tiny_structures(split)
    if niggli:
        structures = [s.get_reduced_structure() for s in structures]
    ids = tiny_ids(split)
    n = len(structures)
    end = limit if limit is not None else n
    density = np.array([s.density for s in structures], dtype=np.float64)
    return LoadedSplit(
        name=spec.name,
        split=split,
        structures=structures[:end],
        ids=ids[:end],
        properties={"density": density[:end]},
        path=None,
        checksums=tiny_checksums(split),
        n_rows=n,
        n_skipped=0,
        skipped=[],
        limit=limit,
        niggli=niggli,
    )


def load_split(
    name_or_spec: str | DatasetSpec,
    split: str,
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    limit: int | None = None,
    niggli: bool = False,
) -> LoadedSplit:
    """Load one split of a registered dataset: find or download the verified file, then parse it (cached).

    Args:
        name_or_spec: dataset name (e.g. ``perov_5``) or spec.
        split: split name (``train``, ``val``, ``test``).
        data_dir: local data dir laid out as ``<data_dir>/<name>/<split>.csv``; defaults to
            ``$MATGENBENCH_DATA_DIR``.
        cache_dir: cache root; defaults to :func:`default_cache_dir`.
        download: allow downloading a missing file.
        limit: keep only the first ``limit`` parsed structures.
        niggli: Niggli-reduce every structure (``get_reduced_structure()``); off by default, callers decide.

    Returns:
        The loaded split.

    Raises:
        ValueError: unknown dataset or split, or a bad ``limit``.
        ChecksumMismatchError: the file does not match the pinned checksum.
        DatasetUnavailableError: the file is missing and cannot be downloaded.
    """
    spec = get_spec(name_or_spec) if isinstance(name_or_spec, str) else name_or_spec
    spec.check_split(split)
    _check_limit(limit)
    if spec.builtin:
        return _load_tiny(spec, split, limit, niggli)
    path = resolve_file(spec, split, data_dir=data_dir, cache_dir=cache_dir, download=download)
    return load_csv(path, name=spec.name, split=split, cache_dir=cache_dir, limit=limit, niggli=niggli)


def _cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    getter = getattr(cfg, "get", None)
    return getter(key, default) if callable(getter) else getattr(cfg, key, default)


def is_official_protocol(cfg_dataset: Any) -> bool:
    """Whether a dataset config follows the official protocol: train on ``train``, evaluate on ``test``.

    Row caps (``limit_train``, ``limit_eval``) and the built-in ``tiny`` dataset are never official.

    Args:
        cfg_dataset: the ``dataset`` config node (or any mapping with the same keys).
    """
    return (
        _cfg_get(cfg_dataset, "name") != "tiny"
        and _cfg_get(cfg_dataset, "train_split", "train") == "train"
        and _cfg_get(cfg_dataset, "eval_split", "test") == "test"
        and _cfg_get(cfg_dataset, "limit_train") is None
        and _cfg_get(cfg_dataset, "limit_eval") is None
    )


def split_protocol_id(cfg_dataset: Any) -> str:
    """Short machine id of the split protocol, e.g. ``train-train_eval-test`` or ``train-val_eval-test``.

    Row caps are appended (``_ltrain-1000``, ``_leval-500``).

    Args:
        cfg_dataset: the ``dataset`` config node.
    """
    train = _cfg_get(cfg_dataset, "train_split", "train")
    evaluation = _cfg_get(cfg_dataset, "eval_split", "test")
    out = f"train-{train}_eval-{evaluation}"
    if (lt := _cfg_get(cfg_dataset, "limit_train")) is not None:
        out += f"_ltrain-{lt}"
    if (le := _cfg_get(cfg_dataset, "limit_eval")) is not None:
        out += f"_leval-{le}"
    return out


class SplitProtocol(NamedTuple):
    """The split protocol of a run: a human ``label`` and a short machine ``id`` (unpacks as a pair)."""

    label: str
    id: str


def split_protocol(cfg_dataset: Any) -> SplitProtocol:
    """Human label and machine id of the split protocol of a dataset config.

    The label is ``official`` (train on ``train``, evaluate on ``test``, no row caps), or says what differs,
    e.g. ``train=val,eval=test (offline, not the official protocol)``; the id is
    :func:`split_protocol_id`, e.g. ``train-val_eval-test``.

    Args:
        cfg_dataset: the ``dataset`` config node.

    Returns:
        ``(label, id)`` as a :class:`SplitProtocol`.
    """
    return SplitProtocol(_split_label(cfg_dataset), split_protocol_id(cfg_dataset))


def _split_label(cfg_dataset: Any) -> str:
    if is_official_protocol(cfg_dataset):
        return "official"
    train = _cfg_get(cfg_dataset, "train_split", "train")
    evaluation = _cfg_get(cfg_dataset, "eval_split", "test")
    label = f"train={train},eval={evaluation}"
    caps = [
        f"{key}={value}"
        for key in ("limit_train", "limit_eval")
        if (value := _cfg_get(cfg_dataset, key)) is not None
    ]
    if caps:
        label += "," + ",".join(caps)
    if _cfg_get(cfg_dataset, "name") == "tiny":
        return f"{label} (built-in test data, not a benchmark)"
    reason = "offline, not the official protocol" if train == "val" else "not the official protocol"
    return f"{label} ({reason})"
