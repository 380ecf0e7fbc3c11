"""Weights a sampler trains for itself (a distilled student, a GENIE head), cached by what they depend on.

One ``.pt`` file per entry, named ``<prefix>-<digest>.pt``, where ``digest`` is the first 16 hex digits of
the sha256 of the key's canonical JSON (sorted keys). The key itself is stored in the file and compared on
load, so a stale file or a digest collision is a miss, never someone else's weights. Written atomically.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["CachedWeights"]


class CachedWeights:
    """One cache entry: ``<cache_dir>/<prefix>-<digest>.pt`` (no file at all when ``cache_dir`` is None).

    Args:
        cache_dir: the folder, or None to cache nothing (``load`` misses, ``save`` does nothing).
        prefix: the file name's start, e.g. ``"GenieSampler"``.
        key: JSON-serialisable; everything the weights depend on.
    """

    def __init__(self, cache_dir: str | Path | None, prefix: str, key: Mapping[str, Any]) -> None:
        self.key = dict(key)
        self._key_json = json.dumps(self.key, sort_keys=True)
        digest = hashlib.sha256(self._key_json.encode()).hexdigest()[:16]
        self.path = None if cache_dir is None else Path(cache_dir) / f"{prefix}-{digest}.pt"

    def load(self) -> dict[str, Any] | None:
        """The saved entry (``state``, ``losses`` and any JSON extras as strings), or None on a miss."""
        if self.path is None or not self.path.is_file():
            return None
        saved = torch.load(self.path, map_location="cpu", weights_only=True)
        if json.loads(saved.get("key", "null")) != self.key:
            return None
        return saved

    def save(self, state: Mapping[str, Tensor], losses: Sequence[float] = (), **extras: Any) -> None:
        """Write ``state`` (moved to CPU), the training ``losses`` and each extra as sorted-key JSON."""
        if self.path is None:
            return
        from bench.io_utils import atomic_write_bytes

        entry: dict[str, Any] = {"key": self._key_json,
                                 "state": {name: v.detach().cpu() for name, v in state.items()}}
        entry.update({name: json.dumps(value, sort_keys=True) for name, value in extras.items()})
        entry["losses"] = torch.tensor(list(losses), dtype=torch.float64)
        buffer = io.BytesIO()
        torch.save(entry, buffer)
        atomic_write_bytes(self.path, buffer.getvalue())
