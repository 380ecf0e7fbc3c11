"""Run directories: where a run's files go, and which trained run a config names.

A run trains into ``<paths.output_dir>/runs/<run_name>__<training hash[:8]>``. ``run_name`` says model,
dataset, training split and seed; the training hash (:func:`bench.config.training_hash`) covers all else
that shapes the trained model (widths, steps, learning rate...) but not how it is sampled or scored. So
``matgenbench run`` twice with another ``trainer.max_steps`` leaves two folders, a single run and a sweep cell
that train the same model share one, and ``sampler@model.module.sampler=ddim`` finds the run that trained the
model by its name. An explicit ``paths.run_dir`` names the folder exactly.

A trained run holds ``config.yaml`` (the resolved config it was trained with), ``codec.json``,
``checkpoints/last.ckpt``, ``train_summary.json`` (with the training hash) and one samples file per way of
sampling it: ``samples.csv`` with the sampler and sample settings it was trained with, else
``samples+<key>.csv`` (:func:`samples_key`, e.g. ``samples+ddim-50.csv``). ``sample`` and ``evaluate`` read a
run only after :func:`find_trained_run` has checked its training hash against the one their config asks for.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bench.conditioning import condition_tag, normalised_condition, requested_condition
from bench.config import as_path, training_config, training_hash

__all__ = [
    "RUNS_FOLDER",
    "SAMPLES_FILE",
    "RunMismatchError",
    "bind_run_dir",
    "check_run",
    "check_samples",
    "default_run_dir",
    "find_trained_run",
    "finished_training",
    "is_trained",
    "run_dir",
    "override_tag",
    "record_variant",
    "sampler_override",
    "sampler_tag",
    "samples_key",
    "samples_path",
    "sampling_hash",
    "trained_run_files",
]

log = logging.getLogger(__name__)

RUNS_FOLDER = "runs"
"""Where runs go, under ``paths.output_dir``."""
SAMPLES_FILE = "samples.csv"
"""The samples drawn with the settings the run was trained with."""
_SAMPLE_SETTINGS = (("num_samples", "n"), ("seed", "seed"), ("batch_size", "bs"))


class RunMismatchError(ValueError):
    """A run directory or samples file holds another training (or sampling) than the config asks for."""


# --- where a run goes ---------------------------------------------------------------------------------------


def trained_run_files(folder: str | Path) -> tuple[Path, Path, Path]:
    """What training leaves in a run directory and loading it needs: the resolved config, the fitted
    representation (``codec.json``, with its class) and the last checkpoint."""
    folder = Path(folder)
    return folder / "config.yaml", folder / "codec.json", folder / "checkpoints" / "last.ckpt"


def is_trained(folder: str | Path) -> bool:
    """Whether ``folder`` holds every file of :func:`trained_run_files`."""
    return all(path.is_file() for path in trained_run_files(folder))


def default_run_dir(cfg: DictConfig) -> Path:
    """``<paths.output_dir>/runs/<run_name>__<training hash[:8]>``: the run directory of ``cfg`` unless
    ``paths.run_dir`` names one."""
    runs = Path(str(cfg.paths.output_dir)).expanduser() / RUNS_FOLDER
    return runs / f"{cfg.run_name}__{training_hash(cfg)[:8]}"


def run_dir(cfg: DictConfig) -> Path:
    """The run directory of ``cfg``: ``paths.run_dir`` when given, else :func:`default_run_dir`."""
    return as_path(OmegaConf.select(cfg, "paths.run_dir", default=None)) or default_run_dir(cfg)


def bind_run_dir(cfg: DictConfig) -> Path:
    """Set ``cfg.paths.run_dir`` to :func:`run_dir` (so the saved config and the record name the folder) and
    return it."""
    folder = run_dir(cfg)
    cfg.paths.run_dir = str(folder)
    return folder


def finished_training(cfg: DictConfig) -> dict[str, Any] | None:
    """The training summary of ``cfg``'s run directory when it holds a finished training of this very config
    (same training hash, checkpoint present, ``train_summary.json`` written after the config), else None.

    A killed training has no summary (it is written last) and is not finished; resume it with
    ``train.ckpt_path=last``.
    """
    folder = run_dir(cfg)
    summary_file = folder / "train_summary.json"
    if not is_trained(folder) or not summary_file.is_file():
        return None
    if summary_file.stat().st_mtime < trained_run_files(folder)[0].stat().st_mtime:
        return None
    try:
        summary = json.loads(summary_file.read_text())
    except (OSError, ValueError):
        return None
    return summary if summary.get("training_hash") == training_hash(cfg) else None


# --- which trained run a config names -----------------------------------------------------------------------


def find_trained_run(cfg: DictConfig) -> Path:
    """The trained run that ``cfg`` samples or scores, checked; ``cfg.paths.run_dir`` is set to it.

    An explicit ``paths.run_dir`` must hold a run whose training hash is the one ``cfg`` asks for. Otherwise
    the run is :func:`default_run_dir`, or a run trained before run directories carried the training hash
    (``<run_name>`` or ``<run_name>__<config hash[:8]>`` with the same training hash; the latest if several).

    Raises:
        RunMismatchError: ``paths.run_dir`` holds another training (both hashes and what differs are named).
        FileNotFoundError: no trained run for ``cfg``.
    """
    explicit = as_path(OmegaConf.select(cfg, "paths.run_dir", default=None))
    if explicit is not None:
        if not trained_run_files(explicit)[0].is_file():
            raise FileNotFoundError(
                f"paths.run_dir={explicit} holds no trained run (no config.yaml): train into it first "
                "(matgenbench train ...), or point paths.run_dir at a trained run"
            )
        check_run(explicit, cfg)
        folder = explicit
    else:
        folder, wanted = default_run_dir(cfg), training_hash(cfg)
        if not (is_trained(folder) and _training_matches(folder, wanted)[0]):
            older = _older_trained_run(cfg, wanted)
            if older is None:
                raise FileNotFoundError(_not_trained_message(folder, wanted, cfg))
            log.info("using the trained run in %s", older)
            folder = older
    cfg.paths.run_dir = str(folder)
    return folder


def check_run(folder: str | Path, cfg: DictConfig) -> None:
    """Refuse the run in ``folder`` when its training hash is not the one ``cfg`` asks for.

    Raises:
        RunMismatchError: one line naming both hashes, the settings that differ and the fix.
    """
    folder, wanted = Path(folder), training_hash(cfg)
    same, found = _training_matches(folder, wanted)
    if not same:
        raise RunMismatchError(_mismatch_message(folder, found, wanted, cfg))


def _training_matches(folder: Path, wanted: str) -> tuple[bool, str | None]:
    """Whether the run in ``folder`` has training hash ``wanted``, and the hash it has.

    The hash ``train_summary.json`` stores answers when that file is newer than ``config.yaml`` (training
    writes the config first, the summary last); otherwise (a run trained before the hash was stored, a later
    training into the same folder that did not finish, or older hashing rules) the hash recomputed from
    ``config.yaml`` decides.
    """
    config = trained_run_files(folder)[0]
    if not config.is_file():
        return False, None
    summary = folder / "train_summary.json"
    if summary.is_file() and summary.stat().st_mtime >= config.stat().st_mtime:
        try:
            stored = json.loads(summary.read_text()).get("training_hash")
        except (OSError, ValueError) as err:
            log.debug("unreadable %s: %s", summary, err)
            stored = None
        if stored == wanted:
            return True, stored
    found = training_hash(OmegaConf.load(config))
    return found == wanted, found


def _older_trained_run(cfg: DictConfig, wanted: str) -> Path | None:
    """A run of ``cfg`` in a folder named without its training hash (``<run_name>`` from single runs,
    ``<run_name>__<config hash[:8]>`` from sweeps), found by the training hash of its saved config."""
    matches = {}  # folder -> mtime of its last checkpoint
    for folder in _same_name_runs(cfg):
        try:
            same = _training_matches(folder, wanted)[0]
        except Exception as err:  # an unreadable folder is not the one we look for
            log.debug("skipping %s: %s", folder, err)
            continue
        if same:
            matches[folder] = trained_run_files(folder)[2].stat().st_mtime
    if not matches:
        return None
    latest = max(matches, key=matches.__getitem__)
    if len(matches) > 1:
        log.info("%d trained runs match; using the latest: %s", len(matches), latest)
    return latest


def _same_name_runs(cfg: DictConfig) -> list[Path]:
    """The trained runs under ``<paths.output_dir>/runs`` named after ``cfg.run_name``."""
    runs = Path(str(cfg.paths.output_dir)).expanduser() / RUNS_FOLDER
    if not runs.is_dir():
        return []
    name = str(cfg.run_name)
    found = [runs / name, *sorted(runs.glob(f"{glob.escape(name)}__*"))]
    return [folder for folder in found if is_trained(folder)]


def _differences(folder: Path, cfg: DictConfig, limit: int = 3) -> str:
    """``key=theirs (asked: ours)`` for the first training settings where the run in ``folder`` and ``cfg``
    differ, e.g. ``trainer.max_steps=5000 (asked: 20)``."""
    try:
        theirs = _flat(training_config(OmegaConf.load(trained_run_files(folder)[0])))
    except Exception as err:
        log.debug("cannot compare with %s: %s", folder, err)
        return ""
    ours = _flat(training_config(cfg))
    unset = "<unset>"
    keys = sorted(k for k in theirs.keys() | ours.keys() if theirs.get(k, unset) != ours.get(k, unset))
    shown = [f"{k}={_short(theirs.get(k, unset))} (asked: {_short(ours.get(k, unset))})"
             for k in keys[:limit]]
    if len(keys) > limit:
        shown.append(f"{len(keys) - limit} more")
    return ", ".join(shown)


def _flat(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _short(value: Any, width: int = 40) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _mismatch_message(folder: Path, found: str | None, wanted: str, cfg: DictConfig) -> str:
    differs = _differences(folder, cfg)
    differs = f"; it differs in {differs}" if differs else ""
    return (
        f"paths.run_dir={folder} holds a run trained with another config (training hash {found}; this "
        f"config asks for {wanted}{differs}): leave out paths.run_dir to use this config's own run "
        f"({default_run_dir(cfg)}), or repeat the overrides that run was trained with"
    )


def _not_trained_message(folder: Path, wanted: str, cfg: DictConfig) -> str:
    message = (f"no trained run for this config (training hash {wanted}) in {folder}: train it first with "
               "the same overrides (matgenbench train ...)")
    others = [f"{other.name} ({_differences(other, cfg, limit=2) or 'unreadable config'})"
              for other in _same_name_runs(cfg)[:3]]
    if others:
        message += f"; runs of {cfg.run_name} trained with other settings: {'; '.join(others)}"
    return message


# --- which samples file -------------------------------------------------------------------------------------


def _sampler_presets() -> dict[str, dict[str, Any]]:
    """``_target_ -> settings`` of the sampler presets in ``conf/sampler/`` (read as YAML, no torch)."""
    from importlib import resources

    presets: dict[str, dict[str, Any]] = {}
    for entry in resources.files("bench.conf").joinpath("sampler").iterdir():
        if entry.name.endswith(".yaml"):
            node = OmegaConf.to_container(OmegaConf.create(entry.read_text(encoding="utf-8")), resolve=True)
            if isinstance(node, dict) and node.get("_target_"):
                presets[str(node["_target_"])] = node
    return presets


def sampler_tag(sampler: Mapping[str, Any]) -> str:
    """Short label of a sampler config for variant and file names, e.g. ``ddim-50`` or ``ddim-50-eta0.5``.

    The class name without ``Sampler``, the number of steps, and every other setting that differs from the
    class's preset in ``conf/sampler/``, so two sampler configs that sample differently never share a label.
    """
    target = str(sampler.get("_target_", "sampler"))
    parts = [target.rsplit(".", 1)[-1].removesuffix("Sampler").lower() or "sampler"]
    if sampler.get("steps") is not None:
        parts.append(str(sampler["steps"]))
    preset = _sampler_presets().get(target, {})
    for key in sorted(sampler):
        if key in ("_target_", "steps") or (key in preset and sampler[key] == preset[key]):
            continue
        value = sampler[key]
        if isinstance(value, Mapping):  # per-field settings, e.g. anti_annealing.frac_coords10
            parts.extend(f"{key}.{sub}{value[sub]}" for sub in sorted(value))
        else:
            parts.append(f"{key}{value}")
    return "-".join(parts)


def sampler_override(model_cfg: DictConfig, trained_model: DictConfig) -> str | None:
    """:func:`sampler_tag` of ``model_cfg``'s sampler when it differs from the one the run trained with, else
    None."""
    if "sampler" not in model_cfg.get("module", {}) or "sampler" not in trained_model.get("module", {}):
        return None
    asked = OmegaConf.to_container(model_cfg.module.sampler, resolve=True)
    trained_with = OmegaConf.to_container(trained_model.module.sampler, resolve=True)
    return None if asked == trained_with else sampler_tag(asked)


def samples_key(cfg: DictConfig, saved: DictConfig) -> str | None:
    """What tells ``cfg``'s samples apart from the run's own (``saved`` is the config it was trained with):
    the sampler tag when another sampler is asked for, then each sample setting that differs
    (``n<num_samples>``, ``seed<seed>``, ``bs<batch_size>``), joined by ``+``; None when ``cfg`` samples as
    the run was trained to; requested condition values (``sample.condition``) add their
    :func:`bench.conditioning.condition_tag`, e.g. ``heat_ref=-1,0,1``."""
    parts = [tag] if (tag := sampler_override(cfg.model, saved.model)) else []
    asked = cfg.get("sample") or {}
    own = saved.get("sample") or {}
    for key, prefix in _SAMPLE_SETTINGS:
        if key in asked and asked.get(key) != own.get(key):
            parts.append(f"{prefix}{asked.get(key)}")
    requested = requested_condition(cfg)  # +sample.condition.<column>=[...]: samples at requested values
    if requested is not None:
        parts.append(condition_tag(requested))
    return "+".join(parts) or None


def samples_path(cfg: DictConfig) -> Path:
    """Where ``cfg``'s samples of the run in ``cfg.paths.run_dir`` go: ``samples.csv``, or
    ``samples+<key>.csv`` (:func:`samples_key`) so the run's own samples are never overwritten."""
    folder = Path(str(cfg.paths.run_dir))
    saved = trained_run_files(folder)[0]
    if saved.is_file():
        key = samples_key(cfg, OmegaConf.load(saved))
        if key is not None:
            return folder / f"samples+{key}.csv"
    return folder / SAMPLES_FILE


def sampling_hash(cfg: DictConfig | Mapping[str, Any]) -> str:
    """sha256 (hex, 16 chars) of how a trained model is sampled: the diffusion sampler and ``sample`` (with
    any requested condition values, ``sample.condition``, as floats)."""

    def plain(node: Any) -> Any:
        return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node

    if isinstance(cfg, DictConfig):
        sampler, sample = OmegaConf.select(cfg, "model.module.sampler", default=None), cfg.get("sample")
    else:
        sampler, sample = ((cfg.get("model") or {}).get("module") or {}).get("sampler"), cfg.get("sample")
    sample = plain(sample)
    if isinstance(sample, dict) and "condition" in sample:  # [-1, 0] and [-1.0, 0.0] ask for the same samples
        sample = {**sample, "condition": normalised_condition(sample["condition"])}
    blob = json.dumps({"sampler": plain(sampler), "sample": sample}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def check_samples(meta: Mapping[str, Any], cfg: DictConfig, path: str | Path) -> None:
    """Refuse a samples file that its metadata says was drawn from another training or with other settings
    than ``cfg`` asks for (files written before the metadata carried the hashes pass).

    Raises:
        RunMismatchError: one line naming both hashes and the fix.
    """
    checks = (("training", meta.get("training_hash"), training_hash(cfg)),
              ("sampling", meta.get("sampling_hash"), sampling_hash(cfg)))
    for what, found, wanted in checks:
        if found is not None and found != wanted:
            raise RunMismatchError(
                f"{path} was drawn with another {what} config ({what} hash {found}; this config asks "
                f"for {wanted}): sample again with these overrides (matgenbench sample ...), or score the "
                f"file as it is with samples={path}"
            )


# Keys of a model config that describe it rather than shape it, and the sampler (labelled by sampler_tag).
_MODEL_BOOKKEEPING = ("name", "family", "variant", "card", "test_overrides")
# Config groups a model's sub-node can be chosen from (``scheduler@model.scheduler=cosine``): a node equal to
# one of the group's presets is labelled by its name.
_GROUP_OF_KEY = {"scheduler": "scheduler", "backbone": "backbone", "ema": "callbacks"}


def override_tag(cfg: DictConfig | Mapping[str, Any]) -> str | None:
    """How ``cfg.model`` differs from its variant's own config (``conf/model/<name>.yaml`` as composed with no
    override), as ``key=value`` parts joined by ``+`` (``beta=4``, ``scheduler=cosine``,
    ``backbone.width=256``); None when it does not. The sampler is left out (:func:`sampler_tag` labels it),
    as are the descriptive keys (name, family, variant, card, test_overrides).

    The board groups rows by the record's variant, so a hyperparameter override is a row of its own and never
    pools with the default's seeds (:func:`record_variant`). Values are compared unresolved, so an
    interpolation such as a schedule's ``T_max: ${trainer.max_steps}`` is the same under every protocol.
    """
    from bench.config import compose

    model = cfg.get("model")
    name = model.get("name") if model is not None else None
    if not name:
        return None
    try:
        default = compose([f"model={name}"]).model
    except Exception:  # a model config that is not one of conf/model: nothing to compare with
        return None
    ours, base = (_descriptive_free(m) for m in (model, default))
    parts: list[str] = []
    _diff_parts("", ours, base, parts)
    return "+".join(parts) or None


def record_variant(cfg: DictConfig, variant: str) -> str:
    """``variant`` (the model's, possibly followed by ``+<sampler tag>``) with :func:`override_tag` inserted
    after the model's own variant name: ``vae-gaussian+beta=4``, ``ddpm-eps-cosine+timesteps=500+ddim-50``."""
    tag = override_tag(cfg)
    base = str(OmegaConf.select(cfg, "model.variant") or "")
    if not tag or not base or not variant.startswith(base):
        return variant
    return f"{base}+{tag}{variant[len(base):]}"


def _descriptive_free(model: Any) -> dict[str, Any]:
    plain = OmegaConf.to_container(model, resolve=False) if not isinstance(model, dict) else dict(model)
    plain = {k: v for k, v in plain.items() if k not in _MODEL_BOOKKEEPING}
    module = plain.get("module")
    if isinstance(module, dict):
        plain["module"] = {k: v for k, v in module.items() if k != "sampler"}
    return plain


def _diff_parts(prefix: str, ours: Any, base: Any, parts: list[str]) -> None:
    if ours == base:
        return
    key = prefix.removeprefix("module.")
    if isinstance(ours, dict) and isinstance(base, dict) and ours.get("_target_") == base.get("_target_"):
        for sub in sorted(set(ours) | set(base), key=str):
            _diff_parts(f"{prefix}.{sub}" if prefix else str(sub), ours.get(sub), base.get(sub), parts)
        return
    if isinstance(ours, dict):
        preset = _group_preset(prefix.rsplit(".", 1)[-1], ours)
        target = str(ours.get("_target_", "")).rsplit(".", 1)[-1]
        parts.append(f"{key}={preset or target or _compact(ours)}")
        return
    parts.append(f"{key}={_compact(ours)}")


def _group_preset(key: str, node: dict[str, Any]) -> str | None:
    """The name of the ``conf/<group>/`` preset equal to ``node``, if any."""
    from importlib import resources

    import yaml

    from bench.config import CONFIG_MODULE

    group = _GROUP_OF_KEY.get(key)
    if group is None:
        return None
    folder = resources.files(CONFIG_MODULE).joinpath(group)
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
        if path.name.endswith(".yaml"):
            preset = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            preset = {k: v for k, v in preset.items() if k != "defaults"}
            if preset == node:
                return path.name.removesuffix(".yaml")
    return None


def _compact(value: Any) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return "null" if value is None else str(value)
