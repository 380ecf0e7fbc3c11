"""The test split's negative log-likelihood under a trained run, for models that declare one.

A model with a tractable likelihood or bound declares it on its class
(:attr:`bench.models.base.GenerativeModule.likelihood`: exact or an upper bound, and of what) and computes it
per crystal (:meth:`~bench.models.base.GenerativeModule.test_nll`). The evaluate stage of this project's own
runs calls :func:`likelihood_entry`: it loads the run's checkpoint and fitted representation, encodes the test
split with that representation (structures it cannot encode, e.g. an element unseen in training or more sites
than slots, are left out and counted), lets the model fit what its bound needs on the training split
(:meth:`~bench.models.base.GenerativeModule.fit_likelihood`, e.g. a VAE decoder's noise scale) and averages
the per-crystal NLL over the scored crystals. The result is the record's ``nll_test`` metric, in nats per
crystal, lower is better, with its kind (``exact`` / ``upper_bound``), estimator, space and counts beside it.
Values in different spaces (:data:`NLL_SPACE_KEY`: e.g. the crystal codec's fields against a token grammar)
measure different variables and are never compared. Among diffusion models ``improved_ddpm`` (its variational
bound, with learned variances) and ``vdm`` (its bound with the learned schedule) report one; the continuous
flows ``cnf`` / ``ffjord`` report an exact ODE likelihood like the coupling flows; models without a
likelihood here (GANs, the other diffusion and flow-matching models, CDVAE) get no entry, and the board shows
a dash.

Settings (optional, absent from the default config so that config hashes stay as they were; set with
``+evaluate.nll.<key>=...``, which then enters the hash): ``enabled`` (true), ``draws`` (16 Monte Carlo draws
per crystal: dequantisation noise for the flows, importance samples for the VAE; unused by an exact
likelihood), ``seed`` (0, of the one generator every draw comes from), ``batch_size`` (256) and ``fit_limit``
(2,000: how many training crystals, a seeded random subset, fit the model's likelihood settings).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

__all__ = [
    "NLL_DEFAULTS",
    "NLL_METRIC",
    "NLL_SPACE_KEY",
    "NLL_UNIT",
    "NLL_VERSION",
    "nll_settings",
    "nll_unit",
    "representation_digest",
    "likelihood_entry",
]

log = logging.getLogger(__name__)

NLL_METRIC = "nll_test"
"""The record's metric key."""
NLL_VERSION = "1.0"
"""Version of the entry's definition (bumped when what is computed changes, as every metric's ``version``)."""
NLL_UNIT = "nats per crystal"
"""The unit of a crystal model's value; a composition model's is ``nats per composition``
(:func:`nll_unit`)."""
NLL_SPACE_KEY = "nll_space"
"""The entry's key naming the variable the likelihood is of; the board compares values only within one space
(and one fitted representation, ``representation_sha256``)."""
NLL_DEFAULTS: dict[str, Any] = {"enabled": True, "draws": 16, "seed": 0, "batch_size": 256, "fit_limit": 2000}
_DESCRIPTION = (
    "negative log-likelihood of the test split in nats per crystal (mean over the crystals the run's "
    "representation encodes); exact or an upper bound as nll_kind says; compared only within one nll_space"
)


def nll_unit(item: str = "crystal") -> str:
    """The unit of ``nll_test`` for samples that are ``item`` (``crystal``, ``composition``)."""
    return f"nats per {item}"


def _description(item: str) -> str:
    return _DESCRIPTION.replace("crystal", item)


def nll_settings(cfg: DictConfig) -> dict[str, Any]:
    """``evaluate.nll`` merged over :data:`NLL_DEFAULTS`.

    Raises:
        ValueError: an unknown key, or a count below 1 (the message names the key).
    """
    given = OmegaConf.select(cfg, "evaluate.nll", default=None)
    given = {} if given is None else OmegaConf.to_container(given, resolve=True)
    unknown = sorted(set(given) - set(NLL_DEFAULTS))
    if unknown:
        raise ValueError(
            f"evaluate.nll.{unknown[0]}: unknown setting; the settings are {sorted(NLL_DEFAULTS)}"
        )
    settings = {**NLL_DEFAULTS, **given}
    for key in ("draws", "batch_size", "fit_limit"):
        if int(settings[key]) < 1:
            raise ValueError(f"evaluate.nll.{key}={settings[key]}: must be >= 1")
        settings[key] = int(settings[key])
    settings["seed"] = int(settings["seed"])
    settings["enabled"] = bool(settings["enabled"])
    return settings


def representation_digest(representation: Any) -> str:
    """sha256 (16 hex characters) of a fitted representation's state: equal for runs whose NLLs are of the
    same variable (same vocabulary, slots and lattice standardisation)."""
    state = json.dumps(representation.state_dict(), sort_keys=True, default=str)
    return hashlib.sha256(state.encode()).hexdigest()[:16]


def _declares_likelihood(cfg: DictConfig) -> bool:
    """Whether the run's model class declares a likelihood (an instance may still have none, e.g. a VAE with
    another latent); checked before any checkpoint is loaded."""
    from hydra.utils import get_class

    target = OmegaConf.select(cfg, "model.module._target_", default=None)
    if not target:
        return False
    return getattr(get_class(str(target)), "likelihood", None) is not None


def likelihood_entry(
    cfg: DictConfig, run_dir: str | Path, test: Sequence[Any], train: Sequence[Any], item: str = "crystal"
) -> dict[str, Any] | None:
    """The ``nll_test`` entry of the run in ``run_dir`` on the ``test`` structures, or None when the model
    declares no likelihood or ``evaluate.nll.enabled`` is false.

    Args:
        cfg: The evaluate config (``evaluate.nll`` settings; ``trainer.accelerator`` picks the device).
        run_dir: The trained run (checkpoint, fitted representation, saved config).
        test: The evaluation split's structures (or, on the composition track, formulas: whatever the run's
            representation encodes).
        train: The training split's structures (a seeded subset of ``fit_limit`` fits the model's likelihood
            settings; never the test structures).
        item: What one item is, for the unit (``nats per <item>``) and the description.
    """
    settings = nll_settings(cfg)
    if not settings["enabled"] or not _declares_likelihood(cfg):
        return None
    import numpy as np
    import torch

    from bench.runtime import set_threads
    from bench.train import load_trained

    set_threads(cfg.get("threads"))
    start = time.perf_counter()
    module, codec, _ = load_trained(run_dir, cfg.model)
    spec = module.likelihood_spec()
    if spec is None:
        return None
    use_gpu = torch.cuda.is_available() and OmegaConf.select(cfg, "trainer.accelerator") == "gpu"
    device = torch.device("cuda" if use_gpu else "cpu")
    module.to(device).eval()
    generator = torch.Generator(device=device).manual_seed(settings["seed"])
    size = settings["batch_size"]

    fit_pool = [s for s in train if codec.can_encode(s)]
    if len(fit_pool) > settings["fit_limit"]:
        rng = np.random.default_rng(settings["seed"])
        chosen = rng.choice(len(fit_pool), settings["fit_limit"], replace=False)
        fit_pool = [fit_pool[i] for i in sorted(chosen.tolist())]
    fitted = module.fit_likelihood(codec.encode(fit_pool), generator) if fit_pool else {}

    scored = [s for s in test if codec.can_encode(s)]
    values = []
    with torch.no_grad():
        for begin in range(0, len(scored), size):
            batch = {k: v.to(device) for k, v in codec.encode(scored[begin:begin + size]).items()}
            values.append(module.test_nll(batch, settings["draws"], generator).detach().double().cpu())
    per_crystal = torch.cat(values) if values else torch.zeros(0, dtype=torch.float64)
    finite = torch.isfinite(per_crystal)
    entry: dict[str, Any] = {
        "value": math.nan,
        "direction": "min",
        "description": _description(item),
        "version": NLL_VERSION,
        "nll_kind": spec.kind,
        "nll_estimator": spec.estimator,
        "nll_unit": nll_unit(item),
        NLL_SPACE_KEY: module.nll_space(),
        "nll_definition": spec.description,
        "representation_sha256": representation_digest(codec),
        "n_test": len(test),
        "n_scored": len(scored),
        "n_not_encoded": len(test) - len(scored),
        "n_nonfinite": int((~finite).sum()),
        "draws": None if spec.kind == "exact" else settings["draws"],
        "seed": settings["seed"],
        **fitted,
    }
    if not scored:
        noun = "structures" if item == "crystal" else f"{item}s"
        entry["reason"] = f"the run's representation encodes none of the test {noun}"
    elif not bool(finite.all()):
        entry["reason"] = f"{entry['n_nonfinite']} test {item}s have a non-finite NLL"
    else:
        entry["value"] = float(per_crystal.mean())
        entry["std"] = float(per_crystal.std()) if len(per_crystal) > 1 else None
        entry["sem"] = entry["std"] / math.sqrt(len(per_crystal)) if entry["std"] is not None else None
    entry["seconds"] = round(time.perf_counter() - start, 4)
    if entry["n_not_encoded"]:
        log.warning("%s: %d of %d test %ss cannot be encoded by the run's representation and are left "
                    "out of the NLL", NLL_METRIC, entry["n_not_encoded"], len(test), item)
    log.info("%s = %.6g %s (%s, %s) over %d %ss", NLL_METRIC, entry["value"], entry["nll_unit"], spec.kind,
             spec.estimator, len(scored), item)
    return entry
