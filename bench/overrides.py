"""Checks of command-line overrides before Hydra runs: a typo gives one line naming it and the valid choices.

Hydra already refuses unknown config-group options and keys; these checks say the same in one line
(``unknown model 'vea'; choose one of: ddpm, diffcsp, flowmm, realnvp, vae, wgan_gp``; ``unknown key 'trainer.max_stepz'
(did you mean trainer.max_steps?)``) and catch a launcher whose plugin is not installed. Anything they do not
understand is left to Hydra.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence
from typing import Any

from bench.config import CONFIG_MODULE
from bench.sweep import launcher_problem

__all__ = ["check_overrides", "split_cli_args"]

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
            try:
                compose(config_name="config", overrides=first_cell)
            except MissingConfigException as err:
                options = getattr(err, "options", None)
                where = getattr(err, "missing_cfg_file", None)
                if options and where:
                    return f"unknown {where.rsplit('/', 1)[0]} '{where.rsplit('/', 1)[-1]}'; " \
                           f"choose one of: {', '.join(options)}"
                return None
            except ConfigCompositionException as err:
                return _key_message(err, parsed, first_cell, compose)
    finally:
        GlobalHydra.instance().clear()
    return None


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
