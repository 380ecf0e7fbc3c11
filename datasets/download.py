"""Find, download and verify the pinned dataset files.

A split file is looked for in a local data dir (``<data_dir>/<name>/<split>.csv``), then in the cache
(``<cache>/datasets/<name>/<split>.csv``), and finally downloaded from its pinned upstream URL into the cache.
Every file is checked against the registry's checksums before it is used; a file that does not match is
refused.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import platformdirs
from tqdm.auto import tqdm

from .registry import DatasetSpec, SplitFile, get_spec

__all__ = [
    "CACHE_ENV",
    "DATA_ENV",
    "ChecksumMismatchError",
    "DatasetUnavailableError",
    "cache_path",
    "data_dir_path",
    "default_cache_dir",
    "default_data_dir",
    "file_checksums",
    "find_local",
    "git_blob_sha1",
    "resolve_file",
    "sha256",
    "verify_file",
]

logger = logging.getLogger(__name__)

CACHE_ENV = "MATGENBENCH_CACHE_DIR"
DATA_ENV = "MATGENBENCH_DATA_DIR"
_CHUNK = 1 << 20
_TIMEOUT_S = 60.0

# Indirection so tests can replace the opener; never called with anything but the registry URL.
urlopen = urllib.request.urlopen


class DatasetUnavailableError(RuntimeError):
    """A dataset file is neither present locally nor downloadable (offline, or download disabled)."""


class ChecksumMismatchError(RuntimeError):
    """A dataset file does not match the checksum pinned in the registry."""


def default_cache_dir() -> Path:
    """The cache root: ``$MATGENBENCH_CACHE_DIR`` if set, else the platform's user cache dir."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("matgenbench"))


def default_data_dir() -> Path | None:
    """The local data dir from ``$MATGENBENCH_DATA_DIR``, or None when the variable is unset or empty."""
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env else None


def git_blob_sha1(path: str | os.PathLike[str]) -> str:
    """Git blob id of a file (what ``git hash-object FILE`` prints), read in chunks.

    Args:
        path: file to hash.

    Returns:
        The 40-character hex digest of ``sha1(b"blob <size>\\0" + bytes)``.
    """
    return file_checksums(path, algorithms=("git_blob",))["git_blob"]


def sha256(path: str | os.PathLike[str]) -> str:
    """sha256 hex digest of a file, read in chunks.

    Args:
        path: file to hash.

    Returns:
        The 64-character hex digest.
    """
    return file_checksums(path, algorithms=("sha256",))["sha256"]


def file_checksums(
    path: str | os.PathLike[str], algorithms: tuple[str, ...] = ("git_blob", "sha256")
) -> dict[str, str]:
    """Git blob id and sha256 of a file, computed in one streamed pass.

    Args:
        path: file to hash.
        algorithms: which of ``git_blob`` and ``sha256`` to compute.

    Returns:
        A dict from algorithm name to hex digest.
    """
    path = Path(path)
    hashers: dict[str, Any] = {}
    if "git_blob" in algorithms:
        blob = hashlib.sha1(usedforsecurity=False)
        blob.update(f"blob {path.stat().st_size}\0".encode())
        hashers["git_blob"] = blob
    if "sha256" in algorithms:
        hashers["sha256"] = hashlib.sha256()
    unknown = set(algorithms) - set(hashers)
    if unknown:
        raise ValueError(f"unknown checksum algorithm(s) {sorted(unknown)}; valid: git_blob, sha256")
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            for h in hashers.values():
                h.update(chunk)
    return {name: h.hexdigest() for name, h in hashers.items()}


def verify_file(path: str | os.PathLike[str], expected: SplitFile) -> dict[str, str]:
    """Check a file against every checksum the registry knows for it.

    Args:
        path: file to check.
        expected: the registry entry of the file.

    Returns:
        The file's checksums (``git_blob`` and ``sha256``).

    Raises:
        ChecksumMismatchError: naming the file, the expected and the actual checksum.
    """
    actual = file_checksums(path)
    wanted = {"git_blob": expected.git_blob, "sha256": expected.sha256}
    wrong = [
        f"expected {algo} {want}, got {actual[algo]}"
        for algo, want in wanted.items()
        if want is not None and actual[algo] != want
    ]
    if wrong:
        raise ChecksumMismatchError(
            f"checksum mismatch for {path}: {'; '.join(wrong)}. The file is not the pinned upstream "
            f"{expected.split}.csv; replace it with the pinned file (or remove it so it is downloaded again)."
        )
    return actual


def data_dir_path(spec: DatasetSpec, split: str, data_dir: str | os.PathLike[str]) -> Path:
    """Where a split file lives in a local data dir: ``<data_dir>/<name>/<split>.csv``."""
    return Path(data_dir).expanduser() / spec.name / f"{split}.csv"


def cache_path(spec: DatasetSpec, split: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where a split file lives in the cache: ``<cache>/datasets/<name>/<split>.csv``."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / "datasets" / spec.name / f"{split}.csv"


def find_local(
    spec: DatasetSpec | str,
    split: str,
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[str, Path | None]:
    """Where a split file is present locally, without verifying it.

    Args:
        spec: dataset spec or name.
        split: split name.
        data_dir: local data dir; defaults to ``$MATGENBENCH_DATA_DIR`` when None.
        cache_dir: cache root; defaults to :func:`default_cache_dir` when None.

    Returns:
        ``("data_dir", path)``, ``("cache", path)`` or ``("missing", None)``.
    """
    spec = get_spec(spec) if isinstance(spec, str) else spec
    spec.split_file(split)
    data_dir = data_dir if data_dir is not None else default_data_dir()
    if data_dir is not None and (p := data_dir_path(spec, split, data_dir)).is_file():
        return "data_dir", p
    if (p := cache_path(spec, split, cache_dir)).is_file():
        return "cache", p
    return "missing", None


def _unavailable_message(
    spec: DatasetSpec, split: str, data_dir: Path | None, cache_file: Path, reason: str
) -> str:
    entry = spec.split_file(split)
    searched = [str(data_dir_path(spec, split, data_dir))] if data_dir is not None else []
    searched.append(str(cache_file))
    sha = f", sha256 {entry.sha256}" if entry.sha256 else ""
    alt = "val" if split != "val" else "test"
    return (
        f"dataset file {spec.name}/{split}.csv is not available: {reason}.\n"
        f"  Looked in: {', '.join(searched)}\n"
        f"  Fetch it from: {spec.url(split)}\n"
        f"  Put it at <data_dir>/{spec.name}/{split}.csv, with <data_dir> given by the environment variable "
        f"{DATA_ENV} or the config key paths.data_dir (or place it in the cache at {cache_file}).\n"
        f"  Check it with `git hash-object {split}.csv`, which must print {entry.git_blob}{sha}.\n"
        f"  Or use a split you have, e.g. dataset.train_split={alt} to train on {alt}.csv; such a run is "
        "recorded as not the official split protocol."
    )


def _download(url: str, dest: Path, expected: SplitFile, timeout: float) -> Path:
    """Download ``url`` into a temp file beside ``dest``, verify it, then atomically rename it to ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urlopen(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length") if getattr(response, "headers", None) else None
            total = int(length) if length and str(length).isdigit() else expected.size_bytes
            with tqdm(
                total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"download {dest.name}"
            ) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
        verify_file(tmp, expected)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def resolve_file(
    spec: DatasetSpec | str,
    split: str,
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    timeout: float = _TIMEOUT_S,
) -> Path:
    """Path of a verified copy of a dataset split file, downloading it into the cache if needed.

    Order: ``<data_dir>/<name>/<split>.csv`` (must match the pinned checksum, else refused), then
    ``<cache>/datasets/<name>/<split>.csv`` (a cached copy that does not match is removed), then a download
    from the pinned URL into the cache (temp file, verified, atomically renamed).

    Args:
        spec: dataset spec or registered name.
        split: split name (``train``, ``val``, ``test``).
        data_dir: local data dir; defaults to ``$MATGENBENCH_DATA_DIR`` when None (and none if unset).
        cache_dir: cache root; defaults to :func:`default_cache_dir`.
        download: allow downloading when no local copy exists.
        timeout: network timeout in seconds.

    Returns:
        Path of the verified file.

    Raises:
        ValueError: unknown dataset or split, or a built-in dataset (no files).
        ChecksumMismatchError: a data dir file or a download does not match the pinned checksum.
        DatasetUnavailableError: no local copy, and downloading is disabled or failed.
    """
    spec = get_spec(spec) if isinstance(spec, str) else spec
    entry = spec.split_file(split)
    data_dir = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()

    if data_dir is not None:
        local = data_dir_path(spec, split, data_dir)
        if local.is_file():
            verify_file(local, entry)
            logger.info("using %s/%s from data dir: %s", spec.name, split, local)
            return local

    cached = cache_path(spec, split, cache_dir)
    if cached.is_file():
        try:
            verify_file(cached, entry)
        except ChecksumMismatchError as err:
            logger.warning("removing cached file that fails verification: %s", err)
            cached.unlink(missing_ok=True)
        else:
            logger.info("using cached %s/%s: %s", spec.name, split, cached)
            return cached

    if not download:
        raise DatasetUnavailableError(
            _unavailable_message(spec, split, data_dir, cached, "no local copy and downloading is disabled")
        )
    url = spec.url(split)
    logger.info("downloading %s/%s from %s", spec.name, split, url)
    try:
        return _download(url, cached, entry, timeout)
    except ChecksumMismatchError as err:
        raise ChecksumMismatchError(f"download from {url} was discarded: {err}") from err
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise DatasetUnavailableError(
            _unavailable_message(
                spec, split, data_dir, cached, f"no local copy and the download failed ({err})"
            )
        ) from err
