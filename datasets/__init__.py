"""The dataset layer: registry of pinned datasets, verified download and cache, parsing into structures, and
the representations that turn structures into tensors."""

from __future__ import annotations

from .commands import fetch, list_rows, render_table, verify
from .download import (
    ChecksumMismatchError,
    DatasetUnavailableError,
    default_cache_dir,
    default_data_dir,
    file_checksums,
    git_blob_sha1,
    resolve_file,
    sha256,
)
from .loading import (
    LoadedSplit,
    SplitProtocol,
    is_official_protocol,
    load_csv,
    load_split,
    parse_cif,
    split_protocol,
    split_protocol_id,
)
from .registry import REGISTRY, DatasetSpec, SplitFile, UnknownDatasetError, dataset_names, get_spec
from .representation import ConditionError, DecodeFailure, Field, Representation
from .tiny import tiny_structures

__all__ = [
    "UnknownDatasetError",
    "REGISTRY",
    "ChecksumMismatchError",
    "ConditionError",
    "DatasetSpec",
    "DatasetUnavailableError",
    "DecodeFailure",
    "Field",
    "LoadedSplit",
    "SplitFile",
    "SplitProtocol",
    "dataset_names",
    "default_cache_dir",
    "default_data_dir",
    "fetch",
    "file_checksums",
    "get_spec",
    "git_blob_sha1",
    "is_official_protocol",
    "list_rows",
    "load_csv",
    "load_split",
    "parse_cif",
    "render_table",
    "Representation",
    "resolve_file",
    "sha256",
    "split_protocol",
    "split_protocol_id",
    "tiny_structures",
    "verify",
]
