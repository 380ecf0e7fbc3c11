"""The model registry is explicit and lazy: names are listed without importing any model, and looking one up
imports that model's module only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from bench.models import MODEL_CLASSES, MODELS, UnknownModelError, get_model_class, model_names

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def test_registry_names_every_model_config_and_resolves_lazily() -> None:
    assert set(MODELS) == set(model_names()) == {p.stem for p in (CONF_DIR / "model").glob("*.yaml")}
    assert "vae" in MODELS and "vea" not in MODELS and len(MODELS) == len(model_names())
    # every registered class is used by some variant, and every variant's class is registered
    assert {get_model_class(name).__name__ for name in MODELS} == set(MODEL_CLASSES)
    assert MODELS["vae"] is get_model_class("vae") and MODELS["vae"].__name__ == "CrystalVAE"
    with pytest.raises(UnknownModelError, match=r"unknown model 'vea'; choose one of: .*ddpm, .*wgan_gp"):
        get_model_class("vea")


def test_every_listed_model_names_its_family_as_its_class_does() -> None:
    from bench.catalog import models

    for entry in models(papers=False):  # read from each YAML file itself: a variant must say its family
        assert entry["family"] == get_model_class(entry["name"]).family, entry["name"]


def test_listing_models_imports_no_model_and_a_lookup_imports_only_its_own() -> None:
    code = (
        "import sys\n"
        "import bench.models as m\n"
        "names = sorted(m.MODELS)\n"
        "assert 'torch' not in sys.modules, 'listing the models imported torch'\n"
        "cls = m.get_model_class('vae')\n"
        "loaded = sorted(k for k in sys.modules if k.startswith('bench.models.'))\n"
        "assert 'bench.models.vae.vae' in loaded, loaded\n"
        "others = [k for k in loaded if k.split('.')[2] in ('gan', 'diffusion', 'flow', 'flow_matching')]\n"
        "assert not others, others\n"
        "print(' '.join(names))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == model_names()


def test_listing_datasets_names_every_dataset_config_with_its_track() -> None:
    import yaml

    from bench.catalog import datasets

    listed = {entry["name"]: entry["track"] for entry in datasets()}
    configs = {p.stem: (yaml.safe_load(p.read_text()) or {}).get("track", "crystal")
               for p in (CONF_DIR / "dataset").glob("*.yaml")}
    assert listed == configs
    assert listed["mp_e_form"] == "composition" and listed["perov_5"] == "crystal"
