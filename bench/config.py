"""Composing the Hydra config tree outside ``@hydra.main`` (tests, notebooks) and small config helpers."""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

__all__ = [
    "CONFIG_MODULE", "DEFAULT_REPRESENTATION", "LOCAL_PATH", "compose", "config_hash", "training_hash",
    "training_config", "resolved", "record_config", "representation_node", "cache_dir", "as_path",
    "PUBLISHED_RESULTS_DIR", "publishes", "results_dir", "leaderboard_dir", "config_here",
]

CONFIG_MODULE = "bench.conf"

# Keys that say where files go or how progress is shown, not what is computed: left out of the config hash so
# the same experiment run from two directories (or two machines) is recognised as the same cell. `force`
# re-runs a sweep cell; the checkpoint keys say how training is checkpointed or resumed, not what it computes.
_HASH_EXCLUDE = ("paths", "logger", "threads", "record", "hydra", "force")
# metrics.parallel (workers, chunk size, start method, fingerprint code) changes how fast results come, never
# the results, so a sweep re-run with more workers still finds its finished cells
_HASH_EXCLUDE_NESTED: tuple[tuple[str, ...], ...] = (
    ("train", "ckpt_path"), ("train", "ckpt_every_n_steps"), ("train", "reuse"), ("metrics", "parallel"),
    # a model config's own tiny settings for the contract test: never part of a real run
    ("model", "test_overrides"),
)
_TRAINING_EXCLUDE = ("sample", "samples", "evaluate", "reference", "metrics")
_TRAINING_EXCLUDE_NESTED: tuple[tuple[str, ...], ...] = (("model", "module", "sampler"),)

DEFAULT_REPRESENTATION = "crystal"
"""The ``conf/representation/`` preset that ``conf/config.yaml`` selects. A run that uses it unchanged hashes
as if it had no ``representation`` node, so configs and records from before the group existed keep their
config and training hashes (and their run directories); any other representation, or this one changed (a
``condition``, other ``elements``), enters both hashes."""


def compose(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """Compose the project's config with Hydra overrides, as the CLI would (without changing directory).

    Args:
        overrides: e.g. ``["model=vae", "dataset=carbon_24", "trainer.max_steps=10"]``.
        config_name: the primary config in ``conf/``.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides), return_hydra_config=False)


def config_here(
    config: Mapping[str, Any] | None, data_dir: str | Path | None = None, overrides: Sequence[str] = (),
    take: Sequence[str] = ("paths",),
) -> DictConfig:
    """A record's resolved ``config`` with this machine's nodes ``take`` (composed here with ``overrides``;
    ``paths`` by default) and ``paths.data_dir`` replaced by ``data_dir`` when given, so the record can be
    scored or re-run elsewhere.

    Raises:
        ValueError: the record has no resolved config.
    """
    if not config:
        raise ValueError("the record has no resolved config (`config` is empty)")
    cfg = OmegaConf.create(dict(config))
    here = compose(list(overrides))
    for node in take:
        cfg[node] = here[node]
    if data_dir is not None:
        cfg.paths.data_dir = str(data_dir)
    return cfg


def resolved(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The config as a plain, fully interpolated dict (without the ``hydra`` node)."""
    if isinstance(cfg, DictConfig):
        container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    else:
        container = dict(cfg)
    container.pop("hydra", None)
    return container


LOCAL_PATH = "<local>"
"""What a record keeps of an absolute data or cache directory: where one machine keeps its data is not
provenance (the data checksums are), and a published record must not carry it."""
_LOCAL_KEYS = ("data_dir", "cache_dir")


def record_config(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The resolved config as a result record stores it: an absolute ``paths.data_dir`` / ``paths.cache_dir``
    becomes :data:`LOCAL_PATH`.

    Output paths are kept (they say where the run's checkpoint and samples are). None of ``paths`` enters the
    config hash, and ``matgenbench reproduce`` replaces the node with the paths of the machine it runs on.
    """
    data = resolved(cfg)
    paths = data.get("paths")
    if isinstance(paths, dict):
        for key in _LOCAL_KEYS:
            value = paths.get(key)
            if isinstance(value, str) and Path(value).expanduser().is_absolute():
                paths[key] = LOCAL_PATH
    return data


def config_hash(cfg: DictConfig | Mapping[str, Any]) -> str:
    """sha256 (hex, 16 chars) of the resolved config, leaving out where-things-go and how-fast keys (paths,
    logger, threads, record, force, train.ckpt_path, train.ckpt_every_n_steps, metrics.parallel) and the
    ``representation`` node while it is the default preset (:data:`DEFAULT_REPRESENTATION`)."""
    return _hash(resolved(cfg), _HASH_EXCLUDE, _HASH_EXCLUDE_NESTED)


def training_hash(cfg: DictConfig | Mapping[str, Any]) -> str:
    """:func:`config_hash` of what shapes the trained model only: it also leaves out how the model is sampled
    and scored (``sample``, ``samples``, ``evaluate``, ``reference``, ``metrics`` and the diffusion sampler
    ``model.module.sampler``), so a run sampled with another sampler finds the run that trained it."""
    return _digest(training_config(cfg))


def training_config(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The part of the resolved config that :func:`training_hash` hashes (to say what two trainings differ
    in)."""
    exclude = _HASH_EXCLUDE + _TRAINING_EXCLUDE
    return _hashed_part(resolved(cfg), exclude, _HASH_EXCLUDE_NESTED + _TRAINING_EXCLUDE_NESTED)


def _hash(data: dict[str, Any], exclude: Sequence[str], nested: Sequence[tuple[str, ...]]) -> str:
    return _digest(_hashed_part(data, exclude, nested))


def _hashed_part(
    data: dict[str, Any], exclude: Sequence[str], nested: Sequence[tuple[str, ...]]
) -> dict[str, Any]:
    if "representation" in data and _is_default_representation(data):
        exclude = (*exclude, "representation")
    data = copy.deepcopy({k: v for k, v in data.items() if k not in exclude})
    for *parents, key in nested:
        node: Any = data
        for parent in parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(key, None)
    return data


def _is_default_representation(data: Mapping[str, Any]) -> bool:
    """Whether ``data``'s representation node is the default preset. Keys the preset gained later (the decode
    thresholds) count as their default where a saved node lacks them, so configs saved before keep their
    hashes."""
    default = _default_representation(data)
    node = data["representation"]
    return default is not None and isinstance(node, Mapping) and {**default, **node} == default


def _digest(data: dict[str, Any]) -> str:
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def representation_node(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The resolved ``representation`` node of ``cfg``; for a config saved before the group existed, the
    default preset (:data:`DEFAULT_REPRESENTATION`) resolved against it.

    Raises:
        ValueError: the config has no ``representation`` node and the default preset cannot be resolved
            against it (e.g. no ``dataset.max_atoms``).
    """
    data = resolved(cfg)
    node = data.get("representation")
    if node is not None:
        return node
    default = _default_representation(data)
    if default is None:
        raise ValueError(
            "the config has no `representation` node and the default preset "
            f"conf/representation/{DEFAULT_REPRESENTATION}.yaml cannot be resolved against it"
        )
    return default


@functools.lru_cache(maxsize=1)
def _default_representation_preset() -> tuple[str, tuple[str, ...]]:
    """The default preset's YAML text and the top-level config keys its interpolations read."""
    import re
    from importlib import resources

    preset = resources.files(CONFIG_MODULE).joinpath("representation", f"{DEFAULT_REPRESENTATION}.yaml")
    text = preset.read_text(encoding="utf-8")
    return text, tuple(sorted(set(re.findall(r"\$\{([A-Za-z_]\w*)", text))))


def _default_representation(data: Mapping[str, Any]) -> dict[str, Any] | None:
    """The default representation preset resolved against the resolved config ``data`` (its interpolations,
    e.g. ``${dataset.max_atoms}``, take ``data``'s values); None when they cannot be resolved."""
    text, reads = _default_representation_preset()
    try:
        root = OmegaConf.create({k: data[k] for k in reads if k in data and k != "representation"})
        root.representation = OmegaConf.create(text)
        return OmegaConf.to_container(root.representation, resolve=True)
    except Exception:  # a key the preset reads is missing (or unreadable): ``data`` is not using the default
        return None


def cache_dir(cfg: DictConfig | None = None) -> Path:
    """The cache directory: ``paths.cache_dir``, else ``$MATGENBENCH_CACHE_DIR``, else the user cache dir."""
    configured = None
    if cfg is not None:
        configured = OmegaConf.select(cfg, "paths.cache_dir", default=None)
    if configured:
        return Path(configured).expanduser()
    env = os.environ.get("MATGENBENCH_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("matgenbench"))


PUBLISHED_RESULTS_DIR = Path("leaderboard/results")
"""The tracked records the published board (``leaderboard/README.md``, ``index.html``) is built from."""


def publishes(cfg: DictConfig) -> bool:
    """Whether a run's record belongs on the published board: ``record.publish`` when set, else whether the
    run follows a pinned experiment (``protocol`` set by ``conf/experiment/``). Ad-hoc runs stay local."""
    flag = OmegaConf.select(cfg, "record.publish", default=None)
    return bool(OmegaConf.select(cfg, "protocol", default=None)) if flag is None else bool(flag)


def results_dir(cfg: DictConfig) -> Path:
    """Where ``cfg``'s record goes: ``paths.results_dir`` (or ``$MATGENBENCH_RESULTS_DIR``) when set, else
    ``leaderboard/results`` for a run that :func:`publishes`, else ``<paths.output_dir>/results`` (ignored by
    git), so a quick run never lands on the published board."""
    explicit = as_path(OmegaConf.select(cfg, "paths.results_dir", default=None))
    if explicit is not None:
        return explicit
    if publishes(cfg):
        return PUBLISHED_RESULTS_DIR
    return Path(str(OmegaConf.select(cfg, "paths.output_dir", default="outputs"))) / "results"


def leaderboard_dir(cfg: DictConfig) -> Path:
    """Where the board is rebuilt after a run: ``paths.leaderboard_dir`` when set; ``leaderboard`` only when
    the records go to ``leaderboard/results``; else a ``leaderboard`` folder beside the results folder (for
    ad-hoc runs: ``outputs/leaderboard``), so the tracked board is rewritten only from the tracked records."""
    explicit = as_path(OmegaConf.select(cfg, "paths.leaderboard_dir", default=None))
    if explicit is not None:
        return explicit
    results = results_dir(cfg)
    if results == PUBLISHED_RESULTS_DIR:
        return PUBLISHED_RESULTS_DIR.parent
    return results.parent / "leaderboard"


def as_path(value: Any) -> Path | None:
    """``None`` for empty config values, else an expanded ``Path``."""
    if value in (None, "", "null"):
        return None
    return Path(str(value)).expanduser()
