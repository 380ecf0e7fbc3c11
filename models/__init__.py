"""The model zoo: the generative model classes of every family, and the variants built from them.

Two explicit registries, both lazy (``import bench.models`` imports no torch):

- :data:`MODEL_CLASSES`: every model class, by name, as ``"module:Class"`` import paths. A class is imported
  only when a variant that uses it is looked up, so an optional dependency of one class never becomes a
  dependency of all.
- The variants are the model configs, ``conf/model/<name>.yaml`` (the options of Hydra's ``model`` group);
  each names its class by ``module._target_``, which must be a registered class. A variant that only changes
  hyperparameters is therefore one YAML file (and its model card), nothing else.

:func:`get_model_class` resolves a variant name to its class; :data:`MODELS` is the same as a read-only
mapping of variant name -> class that imports on lookup. The classes below are exported lazily too
(``from bench.models import CrystalVAE`` imports only the VAE).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.models.base import GenerativeModule

__all__ = [
    "CTGAN",
    "MODELS",
    "MODEL_CLASSES",
    "CompositionD3PM",
    "CompositionGPT",
    "CompositionMADE",
    "CompositionMarginal",
    "CompositionRealNVP",
    "CompositionVAE",
    "CrystalCDVAE",
    "CrystalCNF",
    "CrystalCGAN",
    "CrystalCVAE",
    "CrystalD3PM",
    "CrystalDCGAN",
    "CrystalDDPM",
    "CrystalImprovedDDPM",
    "CrystalLSGM",
    "CrystalDiffCSP",
    "CrystalFlowMatching",
    "CrystalGAN",
    "CrystalGPT",
    "CrystalGlow",
    "CrystalNICE",
    "CrystalPeriodicWGANGP",
    "CrystalRealNVP",
    "CrystalScoreFlow",
    "CrystalTransformer",
    "CrystalVAE",
    "CrystalVAEGAN",
    "CrystalVDM",
    "CrystalVLAE",
    "CrystalVQVAE2",
    "CrystalWGANGP",
    "GenerativeModule",
    "MatGAN",
    "NonFiniteLossError",
    "PeriodicMPNN",
    "TVAE",
    "UnknownModelError",
    "get_model_class",
    "model_names",
    "model_target",
]

MODEL_CLASSES: dict[str, str] = {
    "CrystalVAE": "bench.models.vae.vae:CrystalVAE",
    "CrystalCDVAE": "bench.models.vae.cdvae:CrystalCDVAE",
    "CrystalCVAE": "bench.models.vae.cvae:CrystalCVAE",
    "CrystalVAEGAN": "bench.models.vae.vae_gan:CrystalVAEGAN",
    "CrystalVQVAE2": "bench.models.vae.vq_vae2:CrystalVQVAE2",
    "CrystalVLAE": "bench.models.vae.vlae:CrystalVLAE",
    "CrystalGAN": "bench.models.gan.base:CrystalGAN",
    "CrystalWGANGP": "bench.models.gan.wgan_gp:CrystalWGANGP",
    "CrystalPeriodicWGANGP": "bench.models.gan.periodic:CrystalPeriodicWGANGP",
    "CrystalCGAN": "bench.models.gan.cgan:CrystalCGAN",
    "CrystalDCGAN": "bench.models.gan.dcgan:CrystalDCGAN",
    "CrystalDDPM": "bench.models.diffusion.ddpm:CrystalDDPM",
    "CrystalImprovedDDPM": "bench.models.diffusion.improved_ddpm:CrystalImprovedDDPM",
    "CrystalDiffCSP": "bench.models.diffusion.diffcsp:CrystalDiffCSP",
    "CrystalD3PM": "bench.models.diffusion.d3pm:CrystalD3PM",
    "CrystalVDM": "bench.models.diffusion.vdm:CrystalVDM",
    "CrystalScoreFlow": "bench.models.diffusion.scoreflow:CrystalScoreFlow",
    "CrystalLSGM": "bench.models.diffusion.lsgm:CrystalLSGM",
    "CrystalRealNVP": "bench.models.flow.realnvp:CrystalRealNVP",
    "CrystalNICE": "bench.models.flow.nice:CrystalNICE",
    "CrystalGlow": "bench.models.flow.glow:CrystalGlow",
    "CrystalCNF": "bench.models.flow.cnf:CrystalCNF",
    "CrystalFlowMatching": "bench.models.flow_matching.model:CrystalFlowMatching",
    "CrystalGPT": "bench.models.autoregressive.gpt:CrystalGPT",
    "CompositionMarginal": "bench.models.composition.marginal:CompositionMarginal",
    "CompositionGPT": "bench.models.composition.gpt:CompositionGPT",
    "CompositionMADE": "bench.models.composition.made:CompositionMADE",
    "CompositionD3PM": "bench.models.composition.d3pm:CompositionD3PM",
    "CompositionRealNVP": "bench.models.composition.realnvp:CompositionRealNVP",
    "MatGAN": "bench.models.composition.matgan:MatGAN",
    "CompositionVAE": "bench.models.composition.vae:CompositionVAE",
    "CTGAN": "bench.models.tabular.ctgan:CTGAN",
    "TVAE": "bench.models.tabular.tvae:TVAE",
}
"""Model class name -> ``"module:Class"`` (the module that defines it)."""

_EXPORTS: dict[str, str] = {
    **MODEL_CLASSES,
    "CrystalTransformer": "bench.models.backbone:CrystalTransformer",
    "GenerativeModule": "bench.models.base:GenerativeModule",
    "NonFiniteLossError": "bench.models.base:NonFiniteLossError",
    "PeriodicMPNN": "bench.models.backbones:PeriodicMPNN",
}


class UnknownModelError(KeyError):
    """A model name with no config in ``conf/model/``; the message lists the known names."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


def _import(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def model_names() -> list[str]:
    """The model variants: the option names of the ``model`` config group (``conf/model/*.yaml``), sorted."""
    folder = resources.files("bench.conf").joinpath("model")
    return sorted(entry.name[: -len(".yaml")] for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def model_target(name: str) -> str:
    """The ``module._target_`` of variant ``name``'s config (read as YAML; imports nothing).

    Raises:
        UnknownModelError: there is no ``conf/model/<name>.yaml`` (the known names are listed).
    """
    import yaml

    entry = resources.files("bench.conf").joinpath("model", f"{name}.yaml")
    if not entry.is_file():
        raise UnknownModelError(f"unknown model {name!r}; choose one of: {', '.join(model_names())}")
    node = yaml.safe_load(entry.read_text(encoding="utf-8")) or {}
    return str((node.get("module") or {}).get("_target_", ""))


def get_model_class(name: str) -> type[GenerativeModule]:
    """The class of model variant ``name``, importing its module (and only its module) now.

    Raises:
        UnknownModelError: ``name`` is not a model config (the known names are listed).
        LookupError: its config names a class that is not in :data:`MODEL_CLASSES`.
    """
    target = model_target(name)
    module, _, cls = target.rpartition(".")
    path = f"{module}:{cls}"
    if MODEL_CLASSES.get(cls) != path:
        raise LookupError(
            f"conf/model/{name}.yaml names {target!r}, which is not a registered model class: add "
            f"{cls!r}: {path!r} to bench.models.MODEL_CLASSES"
        )
    return _import(path)


class _LazyModels(Mapping[str, "type[GenerativeModule]"]):
    """Variant name -> class; a class is imported when it is looked up."""

    def __getitem__(self, name: str) -> type[GenerativeModule]:
        return get_model_class(name)

    def __iter__(self) -> Iterator[str]:
        return iter(model_names())

    def __len__(self) -> int:
        return len(model_names())

    def __contains__(self, name: object) -> bool:
        return name in model_names()

    def __repr__(self) -> str:
        return f"MODELS({', '.join(model_names())})"


MODELS: Mapping[str, type[GenerativeModule]] = _LazyModels()
"""Model name -> class, imported on lookup (names, ``in`` and ``len`` import nothing)."""


def __getattr__(name: str) -> Any:
    """The lazily exported classes (PEP 562): imported on first access."""
    if name in _EXPORTS:
        value = _import(_EXPORTS[name])
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
