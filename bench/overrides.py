"""Checks of command-line overrides before Hydra runs: a typo gives one line naming it and the valid choices.

Hydra already refuses unknown config-group options and keys; these checks say the same in one line
(``unknown model 'vea'; choose one of: ddpm, diffcsp, flowmm, gan, realnvp, vae, wgan, wgan_gp``;
``unknown key 'trainer.max_stepz' (did you mean trainer.max_steps?)``), catch a launcher whose plugin is not
installed, and refuse values that cannot work before anything is trained (:func:`check_values`: an unknown
data split, ``sample.num_samples`` < 1, ``trainer.max_steps`` < -1; and a sampler override on a model without
a sampler, or without its package). Anything they do not understand is left to Hydra.

Before a sweep (:func:`check_sweep_data`), the data files its cells need are found, or fetched once, up front:
a missing file is one message and nothing runs, instead of every cell failing on it in turn.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence
from typing import Any

from bench.config import CONFIG_MODULE
from bench.sweep import launcher_problem

__all__ = ["check_overrides", "check_sweep_data", "check_values", "models_with_sampler", "split_cli_args"]

log = logging.getLogger(__name__)

# Hydra flags that take a value (the next argument), and flags that change which config is composed.
_FLAGS_WITH_VALUE = ("-p", "--package", "-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir",
                     "--experimental-rerun")
_MODES = {"-m": "multirun", "--multirun": "multirun", "-c": "cfg", "--cfg": "cfg", "-i": "info",
          "--info": "info", "--run": "run", "-r": "run", "-sc": "completion",
          "--shell-completion": "completion"}
_CUSTOM_CONFIG = ("-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir",
                  "--experimental-rerun")


def split_cli_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split Hydra's command line into ``(overrides, flags)``; flags keep their values."""
    overrides: list[str] = []
    flags: list[str] = []
    it = iter(argv)
    for item in it:
        if item.startswith("-"):
            flags.append(item)
            if item in _FLAGS_WITH_VALUE:
                flags.append(next(it, ""))
        elif "=" in item or item.startswith("~"):
            overrides.append(item)
        else:  # the value of a flag such as --cfg job or --info defaults
            flags.append(item)
    return overrides, flags


def check_overrides(argv: Sequence[str]) -> str | None:
    """A one-line message for the first override that cannot work, or None (also when unsure: Hydra decides).

    Args:
        argv: what follows the subcommand on the command line (overrides and Hydra flags).
    """
    overrides, flags = split_cli_args(argv)
    if any(flag.split("=")[0] in _CUSTOM_CONFIG for flag in flags):
        return None
    modes = [f for f in flags if f.split("=")[0] in _MODES]
    if len({_MODES[m.split("=")[0]] for m in modes}) > 1:
        return f"{' and '.join(modes)} cannot be combined (Hydra runs one of them at a time)"
    problem = launcher_problem(overrides)
    if problem or not overrides:
        return problem
    try:
        return _check_composition(overrides)
    except Exception as err:  # a check must never stand in the way of Hydra's own handling
        log.debug("override pre-check skipped: %s", err)
        return None


def _check_composition(overrides: list[str]) -> str | None:
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException:
        return None  # Hydra's own message points at the character
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            loader = GlobalHydra.instance().config_loader()
            first_cell: list[str] = []
            for override in parsed:
                group = override.key_or_group
                options = loader.get_group_options(group) if not group.startswith("hydra.") else []
                values = _values(override)
                if values is None:
                    return None  # glob / range / interval sweeps: left to Hydra
                if options and not (override.is_delete() or override.is_add()):
                    for value in values:
                        if value not in options and value != "null":
                            return f"unknown {group} '{value}'; choose one of: {', '.join(options)}"
                key = override.get_key_element()
                first_cell.append(f"{key}={values[0]}" if values else override.input_line)
            problem = _sampler_problem(parsed, first_cell, compose)
            if problem:
                return problem
            try:
                cfg = compose(config_name="config", overrides=first_cell)
            except MissingConfigException as err:
                options = getattr(err, "options", None)
                where = getattr(err, "missing_cfg_file", None)
                if options and where:
                    return f"unknown {where.rsplit('/', 1)[0]} '{where.rsplit('/', 1)[-1]}'; " \
                           f"choose one of: {', '.join(options)}"
                return None
            except ConfigCompositionException as err:
                return _key_message(err, parsed, first_cell, compose)
            return check_values(cfg)
    finally:
        GlobalHydra.instance().clear()


def check_values(cfg: Any) -> str | None:
    """A one-line message for a composed config value that cannot work, or None.

    Checked: the dataset's split names (``dataset.train_split`` / ``eval_split`` / ``val_split``),
    ``sample.num_samples`` >= 1 (zero samples give no result), ``trainer.max_steps`` >= -1 (Lightning's rule;
    -1: no limit).
    """
    from omegaconf import OmegaConf

    name = OmegaConf.select(cfg, "dataset.name")
    if name:
        try:
            from bench.datasets import get_spec

            splits = get_spec(str(name)).splits
        except Exception:  # an unknown dataset is reported by its own check
            splits = ()
        for key in ("train_split", "eval_split", "val_split"):
            value = OmegaConf.select(cfg, f"dataset.{key}")
            if value is not None and splits and str(value) not in splits:
                close = difflib.get_close_matches(str(value), splits, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                return f"dataset.{key}={value}: dataset {name!r} has no split {str(value)!r}{hint}; " \
                       f"valid splits: {', '.join(splits)}"
    num_samples = OmegaConf.select(cfg, "sample.num_samples")
    if num_samples is not None and int(num_samples) < 1:
        return f"sample.num_samples={num_samples}: zero samples give no result; ask for at least 1"
    max_steps = OmegaConf.select(cfg, "trainer.max_steps")
    if max_steps is not None and int(max_steps) < -1:
        return f"trainer.max_steps={max_steps}: must be a number of steps >= 0, or -1 for no limit"
    return None


def _sampler_problem(parsed: list[Any], first_cell: list[str], compose: Any) -> str | None:
    """One line for ``sampler=X`` (no such top-level key), or for ``sampler@model.module.sampler=X`` on a
    model whose config has no sampler to replace (VAE, GAN, flow)."""
    from omegaconf import OmegaConf

    for override in parsed:
        if override.key_or_group != "sampler" or override.is_add() or override.is_delete():
            continue
        if not override.package:
            return (f"{override.input_line}: samplers are chosen per model; write "
                    f"sampler@model.module.sampler={override.get_value_element_as_str()} "
                    f"(models with a sampler: {', '.join(models_with_sampler())})")
        if override.package == "model.module.sampler":
            rest = [line for line, o in zip(first_cell, parsed, strict=True) if o is not override]
            cfg = compose(config_name="config", overrides=rest)
            if OmegaConf.select(cfg, "model.module.sampler") is None:
                model = OmegaConf.select(cfg, "model.name")
                return (f"{override.input_line}: model {model!r} has no sampler to replace (it generates in "
                        f"one pass); samplers apply to: {', '.join(models_with_sampler())}")
    return None


def models_with_sampler() -> list[str]:
    """Model configs (``conf/model/*.yaml``) whose defaults choose a sampler (read as YAML: no torch)."""
    from importlib import resources

    import yaml

    names = []
    for path in sorted(resources.files(CONFIG_MODULE).joinpath("model").iterdir(), key=lambda p: p.name):
        if not path.name.endswith(".yaml"):
            continue
        defaults = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("defaults") or []
        if any(isinstance(d, dict) and any("sampler@" in str(k) for k in d) for d in defaults):
            names.append(path.name.removesuffix(".yaml"))
    return names


def _values(override: Any) -> list[str] | None:
    """The values an override takes (one unless it sweeps); None for sweeps that are not plain lists."""
    if not override.is_sweep_override():
        value = override.value()
        return [override.get_value_element_as_str()] if not isinstance(value, list | dict) else []
    try:
        return [str(v) for v in override.sweep_string_iterator()]
    except Exception:
        return None


def _key_message(err: Exception, parsed: list[Any], first_cell: list[str], compose: Any) -> str | None:
    """``unknown key 'a.b' (did you mean a.c?); keys of a: ...`` for an override of a missing key."""
    from omegaconf import DictConfig, OmegaConf

    text = str(err)
    bad = next((o for o in parsed if f"'{o.key_or_group}'" in text and not o.is_add()), None)
    if bad is None or "Could not override" not in text:
        return None
    key = bad.key_or_group
    if key.startswith("hydra."):
        return None  # Hydra's node depends on the launcher and sweeper: its own message is the right one
    rest = [line for line, o in zip(first_cell, parsed, strict=True) if o is not bad]
    cfg = compose(config_name="config", overrides=rest)
    parent_path, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_path) if parent_path else cfg
    if not isinstance(parent, DictConfig):
        return (f"unknown key '{key}': '{parent_path}' does not exist with the chosen config groups; "
                f"to add it write +{bad.input_line}")
    keys = sorted(str(k) for k in parent.keys())
    close = difflib.get_close_matches(leaf, keys, n=1)
    hint = f" (did you mean {parent_path + '.' if parent_path else ''}{close[0]}?)" if close else ""
    return (f"unknown key '{key}'{hint}; keys of {parent_path or 'the config'}: {', '.join(keys)}; "
            f"to add a new key write +{bad.input_line}")


# Overrides that decide which data files a cell reads (the others are held at their first value).
_DATA_KEYS = ("dataset", "experiment", "paths")
# The track of a dataset config with ``track: composition`` (bench.tracks): one file holds all its splits.
_COMPOSITION = "composition"


def check_sweep_data(argv: Sequence[str]) -> str | None:
    """For a sweep (``-m``): one message when a data file some cell needs is missing and cannot be fetched,
    else None. Each distinct file is resolved once, here, before any cell runs (downloaded into the cache when
    ``paths.download`` allows), so parallel cells never race to download it either.

    Args:
        argv: what follows the subcommand on the command line.
    """
    from omegaconf import OmegaConf

    overrides, flags = split_cli_args(argv)
    if not any(_MODES.get(f.split("=")[0]) == "multirun" for f in flags):
        return None
    if any(flag.split("=")[0] in _CUSTOM_CONFIG for flag in flags):
        return None
    try:
        cells = _data_cells(overrides)
    except Exception as err:  # a check must never stand in the way of Hydra's own handling
        log.debug("sweep data pre-check skipped: %s", err)
        return None
    if cells is None:
        return None
    from bench.config import as_path, cache_dir, compose

    needed: dict[tuple[Any, ...], list[str]] = {}
    for cell, label in cells:
        try:
            cfg = compose(cell)
        except Exception as err:  # composition problems are reported by Hydra itself
            log.debug("sweep data pre-check skipped a cell: %s", err)
            continue
        ds = cfg.dataset
        splits = {OmegaConf.select(ds, key) for key in ("train_split", "eval_split")}
        if OmegaConf.select(ds, "track", default=None) in (_COMPOSITION, "tabular"):  # one file: every split
            splits = {_COMPOSITION}
        where = (as_path(OmegaConf.select(cfg, "paths.data_dir", default=None)), cache_dir(cfg),
                 bool(OmegaConf.select(cfg, "paths.download", default=True)))
        for split in sorted(str(s) for s in splits if s is not None):
            needed.setdefault((str(ds.name), split, *where), []).append(label)
    return _resolve_all(needed)


def _data_cells(overrides: list[str]) -> list[tuple[list[str], str]] | None:
    """The distinct data-relevant cells of a sweep, each with its label: the product of the values of the
    swept dataset/experiment/paths overrides (the label names them), every other override at its first value.
    None when the sweep syntax is not a plain list."""
    import itertools

    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    axes: list[list[tuple[str, bool]]] = []  # per override: (cell entry, whether it names the cell)
    for override in parsed:
        values = _values(override)
        if values is None:
            return None
        key = override.get_key_element()
        if not override.is_sweep_override():
            axes.append([(override.input_line, False)])
        elif key.split("@")[0].lstrip("+~").split(".")[0].split("/")[0] in _DATA_KEYS:
            axes.append([(f"{key}={v}", True) for v in values])
        else:
            axes.append([(f"{key}={values[0]}", False)])
    return [([entry for entry, _ in cell], " ".join(entry for entry, named in cell if named))
            for cell in itertools.product(*axes)]


def _resolve_all(needed: dict[tuple[Any, ...], list[str]]) -> str | None:
    """Find or fetch each needed file once; the message for the first that cannot be had."""
    from bench.datasets import ChecksumMismatchError, DatasetUnavailableError, get_spec, resolve_file
    from bench.datasets.compositions import COMPOSITIONS_FOLDER, resolve_composition_file

    for (name, split, data_dir, cache, download), cells in needed.items():
        try:
            if split == _COMPOSITION:  # a composition dataset: its one pinned file
                what = f"{COMPOSITIONS_FOLDER}/{name}.csv"
                resolve_composition_file(name, data_dir=data_dir, cache_dir=cache, download=download)
                continue
            spec = get_spec(name)
            if spec.builtin:
                continue
            what = f"{name}/{split}.csv"
            resolve_file(spec, split, data_dir=data_dir, cache_dir=cache, download=download)
        except (DatasetUnavailableError, ChecksumMismatchError) as err:
            which = sorted({c for c in cells if c}) or ["every cell"]
            return (f"this sweep needs {what} ({', '.join(which)}), and it cannot be used, so no "
                    f"cell was run: {err}")
    return None
