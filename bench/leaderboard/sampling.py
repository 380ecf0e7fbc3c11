"""Which sampler drew a run's samples, and which trained model they came from, read from its record.

A run's variant on the board is ``<model's variant>[+<override tag>][+<sampler tag>][+<condition tag>]``:
the override tag's parts are ``key=value`` (:func:`bench.rundirs.override_tag`, a hyperparameter that makes
another trained model), the sampler tag starts with the sampler's class name (``ddim-50``,
``predictorcorrector-100``; :func:`bench.rundirs.sampler_tag`) and is there only when the run was sampled with
another sampler than it trained with, and a condition tag names requested property values. The record's
resolved config holds the sampler that drew the samples (``model.module.sampler``: its class and settings),
so the sampler tag is found by that class name, never guessed from a name alone, and what is left is the
trained variant. Records without a sampler in their config (one-shot models, samples from outside) keep their
whole variant as the trained one.

The curves of the quality-versus-NFE figure (:mod:`bench.leaderboard.nfe`) join rows of one trained variant
and one *sampler family*: the sampler's class and every setting except the step count, so a curve varies the
number of function evaluations (NFE) and nothing else.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bench.records import ResultRecord

__all__ = ["STEP_KEYS", "Sampling", "sampler_name", "sampling_of"]

STEP_KEYS = ("steps",)
"""Sampler settings that set the number of steps: what a curve varies; every other setting names a family."""


@dataclass(frozen=True)
class Sampling:
    """How one record's samples were drawn."""

    trained_variant: str
    """The record's variant without the sampler tag: the trained model (with any override tag)."""
    sampler: str | None = None
    """The sampler family: class and settings other than :data:`STEP_KEYS`, as canonical JSON; None when the
    model has no sampler in its config."""
    label: str | None = None
    """A short name of the family: the sampler tag without its step count (``ddim``, ``ddim-eta0.5``), or the
    class name (``ancestral``) for the sampler the run trained with."""


def sampler_name(target: str) -> str:
    """The first word of a sampler tag: the class name without ``Sampler``, lower case (``DDIMSampler`` ->
    ``ddim``), as :func:`bench.rundirs.sampler_tag` writes it."""
    return target.rsplit(".", 1)[-1].removesuffix("Sampler").lower() or "sampler"


def _sampler_config(record: ResultRecord) -> Mapping[str, Any] | None:
    model = (record.config or {}).get("model")
    module = model.get("module") if isinstance(model, Mapping) else None
    sampler = module.get("sampler") if isinstance(module, Mapping) else None
    if isinstance(sampler, Mapping) and sampler.get("_target_"):
        return sampler
    return None


def sampling_of(record: ResultRecord) -> Sampling:
    """The trained variant and sampler family of ``record`` (see the module doc).

    Only this project's runs (``kind == "run"``) have a trained model behind them; any other record keeps its
    variant whole, with no sampler.
    """
    variant = record.variant
    sampler = _sampler_config(record) if record.kind == "run" else None
    if sampler is None:
        return Sampling(variant)
    target = str(sampler["_target_"])
    name = sampler_name(target)
    family = {k: v for k, v in sampler.items() if k not in STEP_KEYS}
    key = json.dumps(family, sort_keys=True, separators=(",", ":"), default=str)
    own = str(((record.config or {}).get("model") or {}).get("variant") or "")
    # the tags follow the model's own variant name (or the first "+" when the variant was named by hand)
    start = len(own) if own and variant.startswith(own) else variant.find("+")
    tag = None
    if start >= 0:  # a segment "+<name>" or "+<name>-...", without "=", up to the next "+" or the end
        tag = re.compile(rf"\+({re.escape(name)}(?:-[^+=]*)?)(?=\+|$)").search(variant, start)
    if tag is None:  # sampled as trained: no tag
        return Sampling(variant, key, name)
    parts = tag.group(1).split("-")
    steps = next((sampler.get(k) for k in STEP_KEYS if sampler.get(k) is not None), None)
    if len(parts) > 1 and steps is not None and parts[1] == str(steps):
        del parts[1]
    return Sampling(variant[: tag.start()] + variant[tag.end():], key, "-".join(parts))
