"""``matgenbench list``: what can be run and scored, read from the registries and the config files.

Models come from the model registry (:data:`bench.models.MODELS`) and ``conf/model/*.yaml`` (name,
family, variant); their paper is a class attribute, read by importing the class (torch), lazily and only
when asked (``--no-papers`` skips it). Datasets, experiments and samplers are read from their registry and
YAML files (no torch); metrics come from the metric registry (:data:`bench.metrics.registry.REGISTRY`) with
direction and one-line meaning.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from importlib import resources
from typing import Any

import yaml

from bench.config import CONFIG_MODULE

__all__ = ["catalog", "render", "main"]

log = logging.getLogger(__name__)


def _conf_files(group: str) -> list[tuple[str, Any]]:
    folder = resources.files(CONFIG_MODULE).joinpath(group)
    return sorted(((p.name.removesuffix(".yaml"), p) for p in folder.iterdir() if p.name.endswith(".yaml")),
                  key=lambda item: item[0])


def _first_comment(text: str) -> str:
    """The first comment line of a YAML file (its one-line description), without ``@package`` directives."""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") and "@package" not in stripped:
            return stripped.lstrip("#").strip()
    return ""


def _paper(name: str) -> str:
    """The ``paper`` attribute of model ``name``'s class (imports the model's module, hence torch)."""
    try:
        from bench.models import get_model_class

        return str(getattr(get_model_class(name), "paper", "") or "")
    except Exception as err:  # an optional dependency of one model must not hide the list
        log.debug("paper of %s unavailable: %s", name, err)
        return "?"


def models(papers: bool = True) -> list[dict[str, str]]:
    """One entry per model config: name, family, variant, paper (``""`` unless ``papers``), registered."""
    from bench.models import MODELS

    out = []
    for name, path in _conf_files("model"):
        cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        # a config's own ``paper`` (a variant of a shared class) wins over the class's
        paper = (cfg.get("paper") or (_paper(name) if name in MODELS else "")) if papers else ""
        out.append({"name": name, "family": str(cfg.get("family", "")),
                    "variant": str(cfg.get("variant", "")),
                    "paper": str(paper),
                    "registered": "yes" if name in MODELS else "no"})
    return sorted(out, key=lambda m: (m["family"], m["name"]))


def datasets() -> list[dict[str, str]]:
    """One entry per registered dataset: name, track and splits (a composition dataset's are the pinned
    seeded split's: ``bench.datasets.composition_split``)."""
    from bench.datasets import REGISTRY, get_spec
    from bench.datasets.compositions import composition_dataset_names

    crystal = [{"name": name, "track": "crystal", "splits": ", ".join(get_spec(name).splits)}
               for name in REGISTRY]
    return crystal + [{"name": name, "track": "composition", "splits": "train, val, test (seeded)"}
                      for name in composition_dataset_names()]


def _described(group: str) -> list[dict[str, str]]:
    return [{"name": name, "about": _first_comment(path.read_text(encoding="utf-8"))}
            for name, path in _conf_files(group)]


def metrics() -> list[dict[str, str]]:
    """One entry per registered metric: name, direction (↑ max / ↓ min), one-line meaning, version."""
    from bench.metrics.registry import REGISTRY

    return [{"name": name, "direction": "↑ max" if cls.direction == "max" else "↓ min",
             "about": str(cls.description), "version": str(getattr(cls, "version", ""))}
            for name, cls in REGISTRY.items()]


def catalog(papers: bool = True) -> dict[str, list[dict[str, str]]]:
    """Every section: models (by family), datasets, experiments, samplers, metrics."""
    return {"models": models(papers), "datasets": datasets(), "experiments": _described("experiment"),
            "samplers": _described("sampler"), "metrics": metrics()}


def render(sections: dict[str, list[dict[str, str]]]) -> Iterable[str]:
    """Plain-text tables, one per section, columns padded (the last column is not)."""
    for title, rows in sections.items():
        yield f"{title} ({len(rows)})"
        if not rows:
            continue
        keys = [k for k in rows[0] if k != "registered"]
        widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in keys[:-1]}
        yield "  " + "  ".join(k.ljust(widths.get(k, 0)) for k in keys).rstrip()
        for row in rows:
            cells = [row[k].ljust(widths[k]) for k in keys[:-1]] + [row[keys[-1]]]
            yield ("  " + "  ".join(cells)).rstrip()
        yield ""


def main(argv: list[str] | None = None) -> int:
    """``matgenbench list [models|datasets|experiments|samplers|metrics] [--no-papers]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="matgenbench list", description="What can be run and scored.")
    parser.add_argument("section", nargs="?",
                        choices=["models", "datasets", "experiments", "samplers", "metrics"])
    parser.add_argument("--no-papers", action="store_true", help="skip the models' papers (no torch import)")
    args = parser.parse_args(argv)
    if args.section is None:
        sections = catalog(papers=not args.no_papers)
    elif args.section == "models":
        sections = {"models": models(papers=not args.no_papers)}
    else:
        sections = {args.section: {"datasets": datasets, "metrics": metrics}.get(
            args.section, lambda: _described(args.section.removesuffix("s")))()}
    for line in render(sections):
        print(line)
    return 0
