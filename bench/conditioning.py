"""Property-conditional generation in config: the property columns a model is trained on, the values
samples are asked for (``sample.condition``) and the targets a samples file is scored against
(``evaluate.condition``).

- Training: a conditional model's config names its property with ``model.condition`` (e.g.
  ``condition: ['${dataset.property}']``, so one config serves every dataset); ``representation.condition``,
  when set, says the same explicitly. The train stage fits the representation's ``condition`` channel on
  :func:`condition_columns`.
- Sampling: ``+sample.condition.<column>=[v1,v2,...]`` (values in the data's units) splits
  ``sample.num_samples`` evenly over the values (:func:`split_counts`). The key is absent by default, so
  unconditional sampling keeps its sampling hash; asking for values changes it and the samples file's name
  (:func:`condition_tag`).
- Scoring: ``+evaluate.condition.<column>=[...]`` scores any samples file against windows around those values
  (the baseline of ``cond_hit_rate``); ``+evaluate.condition_window=W`` (data units) or
  ``+evaluate.condition_window_std=F`` (a fraction of the training property's standard deviation, default
  :data:`bench.metrics.conditional.DEFAULT_WINDOW_STD`) sets the window's half-width.

Torch-free: the run-directory helpers and the evaluate stage read it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

__all__ = [
    "ConditionRequestError",
    "EvaluationCondition",
    "condition_columns",
    "condition_tag",
    "evaluation_condition",
    "normalised_condition",
    "parse_condition",
    "requested_condition",
    "split_counts",
    "windows_tag",
]

_MAX_TAG = 80  # longer tags (many values) become a digest, so file names stay short


class ConditionRequestError(ValueError):
    """A condition that cannot be used as asked (unknown column, bad values, a model that cannot take it)."""


def _plain(cfg: DictConfig | Mapping[str, Any], key: str) -> Any:
    """The resolved value at ``key`` (None when absent); a value that cannot be resolved raises
    :class:`ConditionRequestError` naming the key."""
    root = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
    try:
        node = OmegaConf.select(root, key, default=None, throw_on_missing=False)
        if isinstance(node, DictConfig | ListConfig):
            return OmegaConf.to_container(node, resolve=True)
        return node
    except Exception as err:  # an interpolation to a key the config lacks, e.g. ${dataset.property}
        raise ConditionRequestError(
            f"{key} cannot be resolved ({type(err).__name__}: {' '.join(str(err).split())}): set the key it "
            "reads (e.g. dataset.property=<column>), or representation.condition=[<column>]"
        ) from None


def _columns(value: Any, key: str, cfg: DictConfig | Mapping[str, Any]) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise ConditionRequestError(f"{key}={value!r}: give a list of property columns, e.g. [heat_ref]")
    dataset = _plain(cfg, "dataset.name")
    for item in value:
        if item is None:
            raise ConditionRequestError(
                f"{key} names no column (null): dataset {dataset} sets no property (dataset.property): set "
                "dataset.property=<column>, or representation.condition=[<column>]"
            )
        if not isinstance(item, str) or not item:
            raise ConditionRequestError(f"{key}={value!r}: every entry must be a property column name")
    return tuple(value)


def condition_columns(cfg: DictConfig | Mapping[str, Any]) -> tuple[str, ...]:
    """The property columns the model of ``cfg`` is trained on: ``representation.condition`` when set, else
    ``model.condition`` (a conditional model's own config, e.g. ``['${dataset.property}']``); empty: none.

    Raises:
        ConditionRequestError: a column that cannot be resolved or is null (the dataset names no property),
            or the two keys naming different columns.
    """
    explicit = _columns(_plain(cfg, "representation.condition"), "representation.condition", cfg)
    own = _columns(_plain(cfg, "model.condition"), "model.condition", cfg)
    if explicit and own and explicit != own:
        raise ConditionRequestError(
            f"representation.condition={list(explicit)} and model.condition={list(own)} disagree: leave "
            "representation.condition empty (the model's config names its property), or make them equal"
        )
    return explicit or own


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConditionRequestError(f"{key}: {value!r} is not a number; give values in the data's units")
    number = float(value)
    if not math.isfinite(number):
        raise ConditionRequestError(f"{key}: {value!r} is not a finite number")
    return number


def parse_condition(value: Any, key: str) -> dict[str, list[float]]:
    """``{column: [values]}`` from a config node such as ``sample.condition`` (a single value counts as a list
    of one); every column must have as many values (the i-th values of all columns form the i-th target).

    Raises:
        ConditionRequestError: not a mapping of columns to numbers, an empty list, or lists of different
            lengths (one line naming ``key``).
    """
    example = f"+{key}.<column>=[v1,v2,...]"
    if not isinstance(value, Mapping) or not value:
        raise ConditionRequestError(f"{key}={value!r}: map property columns to values, e.g. {example}")
    out: dict[str, list[float]] = {}
    for column, values in value.items():
        values = list(values) if isinstance(values, list | tuple) else [values]
        if not values:
            raise ConditionRequestError(f"{key}.{column} is empty: give at least one value, e.g. {example}")
        out[str(column)] = [_number(v, f"{key}.{column}") for v in values]
    lengths = {column: len(values) for column, values in out.items()}
    if len(set(lengths.values())) > 1:
        raise ConditionRequestError(
            f"{key} gives {lengths} values per column: give each column the same number of values (the i-th "
            "values of all columns form the i-th target)"
        )
    return out


def requested_condition(cfg: DictConfig | Mapping[str, Any]) -> dict[str, list[float]] | None:
    """The values ``sample.condition`` asks samples at, by column (None when absent: sample unconditionally).

    Raises:
        ConditionRequestError: as :func:`parse_condition`.
    """
    value = _plain(cfg, "sample.condition")
    return None if value is None else parse_condition(value, "sample.condition")


def normalised_condition(value: Any) -> Any:
    """``value`` (a ``sample.condition`` node) with every number a float and every single value a list, so
    ``[-1,0,1]`` and ``[-1.0,0.0,1.0]`` hash alike; returned unchanged when it is not a valid request (the
    sample stage refuses it)."""
    try:
        return parse_condition(value, "sample.condition")
    except ConditionRequestError:
        return value


def split_counts(n: int, k: int) -> list[int]:
    """``n`` samples split evenly over ``k`` targets, the first ``n % k`` targets one more:
    ``split_counts(10, 3) == [4, 3, 3]``."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def _format(value: float) -> str:
    text = repr(float(value))
    return text.removesuffix(".0") if "e" not in text else text


def condition_tag(requested: Mapping[str, Sequence[float]]) -> str:
    """A short label of requested values for file and variant names: ``heat_ref=-1,0,1.5`` (columns joined by
    ``+``); a digest (``condition-<8 hex>``) when that would exceed 80 characters."""
    tag = "+".join(f"{column}={','.join(_format(v) for v in values)}" for column, values in requested.items())
    if len(tag) <= _MAX_TAG:
        return tag
    return "condition-" + hashlib.sha256(tag.encode()).hexdigest()[:8]


@dataclass(frozen=True)
class EvaluationCondition:
    """What ``evaluate`` is asked about conditions.

    Attributes:
        targets: ``evaluate.condition``: values to score any samples file against (the baseline), by column;
            None when not given.
        window: ``evaluate.condition_window``: the window's half-width in the property's units, or None.
        window_std: ``evaluate.condition_window_std``: the half-width as a fraction of the training property's
            standard deviation, or None (then the metric's default unless ``window`` is given).
    """

    targets: dict[str, list[float]] | None = None
    window: float | None = None
    window_std: float | None = None


def _positive(cfg: DictConfig | Mapping[str, Any], key: str) -> float | None:
    value = _plain(cfg, key)
    if value is None:
        return None
    number = _number(value, key)
    if number <= 0:
        raise ConditionRequestError(f"{key}={value}: the window's half-width must be positive")
    return number


def evaluation_condition(cfg: DictConfig | Mapping[str, Any]) -> EvaluationCondition:
    """``evaluate.condition``, ``evaluate.condition_window`` and ``evaluate.condition_window_std`` of ``cfg``.

    Raises:
        ConditionRequestError: bad values, or both window keys given.
    """
    value = _plain(cfg, "evaluate.condition")
    targets = None if value is None else parse_condition(value, "evaluate.condition")
    window = _positive(cfg, "evaluate.condition_window")
    window_std = _positive(cfg, "evaluate.condition_window_std")
    if window is not None and window_std is not None:
        raise ConditionRequestError(
            "evaluate.condition_window and evaluate.condition_window_std both set: give one (an absolute "
            "half-width in the property's units, or a fraction of its training standard deviation)"
        )
    return EvaluationCondition(targets, window, window_std)


def windows_tag(asked: EvaluationCondition, baseline: bool) -> str | None:
    """What a record's variant gains from ``evaluate``'s condition settings: ``windows:<tag>`` for targets
    scored at evaluation (the baseline), then ``window=W`` or ``window_std=F`` when set; None when nothing."""
    parts = []
    if baseline and asked.targets:
        parts.append(f"windows:{condition_tag(asked.targets)}")
    if asked.window is not None:
        parts.append(f"window={_format(asked.window)}")
    if asked.window_std is not None:
        parts.append(f"window_std={_format(asked.window_std)}")
    return "+".join(parts) or None
