"""Backbones shared by the model families, chosen by config (``conf/backbone/``).

``bench.models.backbone.CrystalTransformer`` (the set transformer every seed model uses) stays where its
configs point; :class:`PeriodicMPNN` is the periodic message-passing network.
"""

from __future__ import annotations

from bench.models.backbones.periodic import PeriodicMPNN, fourier_features

__all__ = ["PeriodicMPNN", "fourier_features"]
