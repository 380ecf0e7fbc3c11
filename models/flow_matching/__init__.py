"""Flow matching on the crystal fields: per-field probability paths, ODE samplers and the model."""

from __future__ import annotations

from bench.models.flow_matching.model import CrystalFlowMatching
from bench.models.flow_matching.paths import EuclideanPath, FieldPath, TorusPath
from bench.models.flow_matching.samplers import EulerSampler, HeunSampler, ODESampler

__all__ = [
    "CrystalFlowMatching",
    "EuclideanPath",
    "EulerSampler",
    "FieldPath",
    "HeunSampler",
    "ODESampler",
    "TorusPath",
]
