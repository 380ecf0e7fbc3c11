"""The contract between data and models: a :class:`Representation` turns crystals into a batch and back.

A representation is chosen by config (``conf/representation/``, built from its ``_target_``). It owns its
scalers: ``fit`` learns them on the training structures (and, for the ``condition`` channel, on the training
split's property columns); ``encode`` writes the batch its :meth:`~Representation.fields` describe;
``decode`` turns a batch (what a model samples) back into structures, or a :class:`DecodeFailure` with its
reason. ``state_dict`` / ``from_state`` carry everything fitted, and :func:`representation_state` saves the
class path with it, so a trained run is reloaded with the representation it trained with
(:func:`load_representation`). The crystal codec (:class:`bench.datasets.codec.CrystalCodec`) is the default;
a token sequence for an autoregressive model or a fixed grid for a convolutional GAN are other
implementations of the same protocol (see ``tests/test_representation.py`` for a token sequence trained end
to end).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
from pymatgen.core import Structure

__all__ = [
    "CLASS_KEY",
    "DEFAULT_CLASS",
    "ConditionError",
    "ConditionScaler",
    "DecodeFailure",
    "Field",
    "Representation",
    "build_representation",
    "class_path",
    "load_representation",
    "representation_state",
]

CLASS_KEY = "_target_"
"""The key of a saved state (``codec.json``) that names the representation's class."""
DEFAULT_CLASS = "bench.datasets.codec.CrystalCodec"
"""The class of a saved state without :data:`CLASS_KEY` (runs trained before representations were
configurable)."""
_MEMBERS = (
    "condition", "fields", "sizes", "fit", "can_encode", "encode", "decode", "state_dict", "from_state",
)


@dataclass(frozen=True)
class DecodeFailure:
    """A generated item that could not be turned into a crystal, with the reason (kept, never dropped).

    ``species`` holds the element of every site the item decoded to when they are known (e.g. the lattice
    was degenerate but the atom types were fine): its composition is still scored, as CDVAE reads the
    composition from the atom types whatever the lattice. Empty when unknown.
    """

    reason: str
    index: int = -1
    species: tuple[str, ...] = ()

    def __bool__(self) -> bool:  # a failure is falsy, so ``if structure:`` reads naturally
        return False


@dataclass(frozen=True)
class Field:
    """One entry of the batch a representation writes: its shape per item (batch dimension left out) and kind.

    Attributes:
        shape: e.g. ``(N, K + 1)`` for one-hot atom types.
        kind: what the values are, so a model knows how to corrupt or score them: ``categorical`` (one-hot
            over the last axis), ``periodic`` (fractional coordinates in ``[0, 1)``), ``continuous``
            (standardised reals), ``mask`` (1 for a filled slot), ``token`` (integer ids), ``condition``
            (standardised property values).
        dtype: the torch dtype's name (``float32``, ``int64``).
    """

    shape: tuple[int, ...]
    kind: str
    dtype: str = "float32"


@runtime_checkable
class Representation(Protocol):
    """What the train and sample stages need from a representation of crystals.

    Attributes:
        condition: the property columns the ``condition`` field holds (empty: no condition field).
    """

    condition: tuple[str, ...]

    def fields(self) -> dict[str, Field]:
        """The batch layout :meth:`encode` writes (after :meth:`fit`), by batch key."""
        ...

    def sizes(self) -> dict[str, int]:
        """The data-dependent sizes the model is built with (keyword arguments of ``model.module``)."""
        ...

    def fit(
        self, structures: Sequence[Structure], properties: Mapping[str, np.ndarray] | None = None
    ) -> Representation:
        """Learn vocabularies and scalers on the training structures (and property columns); returns self."""
        ...

    def can_encode(self, structure: Structure) -> bool:
        """Whether ``structure`` can be encoded (e.g. fits the slots, uses known elements)."""
        ...

    def encode(
        self, structures: Sequence[Structure], properties: Mapping[str, np.ndarray] | None = None
    ) -> dict[str, Any]:
        """A batch of tensors as :meth:`fields` describes it."""
        ...

    def decode(self, batch: Mapping[str, Any]) -> list[Structure | DecodeFailure]:
        """Structures from a batch; an item that is no crystal is a :class:`DecodeFailure` with its reason."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state: everything :meth:`fit` learnt and the constructor's settings."""
        ...

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Representation:
        """Rebuild a fitted representation from :meth:`state_dict`."""
        ...


class ConditionError(ValueError):
    """A ``condition`` column that the data do not provide, or provide with missing values."""


class ConditionScaler:
    """The ``condition`` channel: dataset property columns standardised with statistics fitted on training.

    Args:
        columns: property column names (e.g. ``["heat_ref"]``); the order is the order of the condition's
            columns.
    """

    def __init__(self, columns: Sequence[str] = ()) -> None:
        if isinstance(columns, str):
            columns = [columns]
        self.columns = tuple(str(c) for c in columns)
        if len(set(self.columns)) != len(self.columns):
            raise ConditionError(f"condition columns repeat: {list(self.columns)}")
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.columns)

    @property
    def fitted(self) -> bool:
        return not self.columns or self.mean is not None

    def fit(self, properties: Mapping[str, Any] | None, n: int) -> ConditionScaler:
        """Fit mean and standard deviation of each column on the training split's ``n`` rows."""
        if not self.columns:
            return self
        values = self._values(properties, n)
        self.mean = values.mean(axis=0)
        std = values.std(axis=0)
        self.std = np.where(std < 1e-12, 1.0, std)  # a constant column gets unit scale
        return self

    def transform(self, properties: Mapping[str, Any] | None, n: int) -> np.ndarray:
        """The standardised ``[n, C]`` float32 condition of ``n`` rows."""
        self._require_fitted()
        return ((self._values(properties, n) - self.mean) / self.std).astype(np.float32)

    def inverse(self, condition: Any) -> dict[str, np.ndarray]:
        """Property values (in the data's units) of a standardised ``[B, C]`` condition, by column."""
        self._require_fitted()
        values = np.asarray(condition.detach().cpu() if hasattr(condition, "detach") else condition)
        values = values.astype(np.float64) * self.std + self.mean
        return {name: values[:, j] for j, name in enumerate(self.columns)}

    def state_dict(self) -> dict[str, Any]:
        self._require_fitted()
        return {"columns": list(self.columns), "mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_state(cls, state: Mapping[str, Any] | None) -> ConditionScaler:
        if not state:
            return cls()
        scaler = cls(state["columns"])
        scaler.mean = np.asarray(state["mean"], dtype=np.float64)
        scaler.std = np.asarray(state["std"], dtype=np.float64)
        return scaler

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError(
                "the condition scaler is not fitted: fit the representation on the training split"
            )

    def _values(self, properties: Mapping[str, Any] | None, n: int) -> np.ndarray:
        available = sorted(properties or {})
        shown = ", ".join(available) if available else "none"
        out = np.empty((n, len(self.columns)), dtype=np.float64)
        for j, name in enumerate(self.columns):
            if properties is None or name not in properties:
                raise ConditionError(
                    f"condition column {name!r} is not a property column of the data (available: {shown}): "
                    "set representation.condition to some of those"
                )
            column = np.asarray(properties[name], dtype=np.float64)
            if column.shape != (n,):
                raise ConditionError(
                    f"condition column {name!r} has {column.shape[0] if column.ndim else 0} values for {n} "
                    "structures: pass the property columns aligned with the structures"
                )
            missing = int(np.count_nonzero(~np.isfinite(column)))
            if missing:
                raise ConditionError(
                    f"condition column {name!r} has {missing} missing (NaN or infinite) values of {n}: "
                    "choose a column present for every structure"
                )
            out[:, j] = column
        return out


def class_path(obj: Any) -> str:
    """``module.QualifiedName`` of an object's class (or of a class), as :func:`load_representation` imports
    it."""
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def representation_state(representation: Representation) -> dict[str, Any]:
    """The saved form of a fitted representation (``codec.json``): its state with its class path."""
    return {CLASS_KEY: class_path(representation), **representation.state_dict()}


def load_representation(state: Mapping[str, Any]) -> Representation:
    """Rebuild a representation from :func:`representation_state` (a state without a class path, from runs
    trained before representations were configurable, is a :class:`~bench.datasets.codec.CrystalCodec`).

    Raises:
        ValueError: the class named in the state cannot be imported or is not a representation.
    """
    from hydra.utils import get_class

    state = dict(state)
    target = str(state.pop(CLASS_KEY, None) or DEFAULT_CLASS)
    try:
        cls = get_class(target)
    except Exception as err:
        raise ValueError(
            f"the saved representation names class {target!r}, which cannot be imported ({err}): install or "
            "put on the path the package that defines it"
        ) from err
    if not callable(getattr(cls, "from_state", None)):
        raise ValueError(f"the saved representation's class {target} has no from_state(state)")
    return cls.from_state(state)


def build_representation(cfg: Any) -> Representation:
    """Build the (unfitted) representation of a run config from its ``representation`` node.

    A config without the node (saved before the ``representation`` group existed) gets the default preset,
    resolved against the config (:func:`bench.config.representation_node`).

    Raises:
        TypeError: the built object lacks part of the :class:`Representation` protocol (naming what).
    """
    from hydra.utils import instantiate

    from bench.config import representation_node

    node = representation_node(cfg)
    built = instantiate(node, _convert_="all")
    missing = [name for name in _MEMBERS if not (hasattr(type(built), name) or hasattr(built, name))]
    if missing:
        raise TypeError(
            f"representation._target_={node.get('_target_')} built a {type(built).__name__}, which lacks "
            f"{', '.join(missing)} of the Representation protocol (bench.datasets.representation)"
        )
    return built
