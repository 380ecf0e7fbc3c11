"""The model zoo: one generative model per family, all on the shared crystal backbone.

``MODELS`` maps a model config's ``name`` to its class (an explicit registry, no discovery by reflection).
"""

from __future__ import annotations

from bench.models.backbone import CrystalTransformer
from bench.models.base import GenerativeModule, NonFiniteLossError
from bench.models.backbones import PeriodicMPNN
from bench.models.diffusion.ddpm import CrystalDDPM
from bench.models.diffusion.diffcsp import CrystalDiffCSP
from bench.models.flow_matching import CrystalFlowMatching
from bench.models.flow.realnvp import CrystalRealNVP
from bench.models.gan.wgan_gp import CrystalWGANGP
from bench.models.vae.vae import CrystalVAE

__all__ = [
    "MODELS",
    "CrystalDDPM",
    "CrystalDiffCSP",
    "CrystalFlowMatching",
    "CrystalRealNVP",
    "CrystalTransformer",
    "CrystalVAE",
    "CrystalWGANGP",
    "GenerativeModule",
    "NonFiniteLossError",
    "PeriodicMPNN",
]

MODELS: dict[str, type[GenerativeModule]] = {
    "vae": CrystalVAE,
    "wgan_gp": CrystalWGANGP,
    "ddpm": CrystalDDPM,
    "realnvp": CrystalRealNVP,
    "flowmm": CrystalFlowMatching,
    "diffcsp": CrystalDiffCSP,
}
