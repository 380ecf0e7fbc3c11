"""The keyed weight cache shared by the distillation and GENIE samplers."""

from __future__ import annotations

import hashlib
import json

import torch
from bench.models.diffusion.weights_cache import CachedWeights


def test_round_trip_and_file_name(tmp_path):
    key = {"b": 2, "a": [1, 2]}
    entry = CachedWeights(tmp_path, "GenieSampler", key)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    assert entry.path == tmp_path / f"GenieSampler-{digest}.pt"  # the names the samplers always used
    assert entry.load() is None
    entry.save({"w": torch.arange(3.0, requires_grad=True)}, [1.0, 0.5], report={"seconds": 2.0})
    saved = CachedWeights(tmp_path, "GenieSampler", {"a": [1, 2], "b": 2}).load()  # key order is irrelevant
    assert torch.equal(saved["state"]["w"], torch.arange(3.0))
    assert saved["losses"].tolist() == [1.0, 0.5]
    assert json.loads(saved["report"]) == {"seconds": 2.0}


def test_a_file_with_another_key_is_a_miss(tmp_path):
    entry = CachedWeights(tmp_path, "DistillSampler-4steps", {"round": 1})
    entry.save({"w": torch.zeros(1)})
    other = CachedWeights(tmp_path, "DistillSampler-4steps", {"round": 2})
    other.path = entry.path  # as if the digests collided
    assert other.load() is None
    assert entry.load() is not None


def test_no_folder_caches_nothing(tmp_path):
    entry = CachedWeights(None, "GenieSampler", {"a": 1})
    entry.save({"w": torch.zeros(1)})
    assert entry.path is None and entry.load() is None
    assert not any(tmp_path.iterdir())
