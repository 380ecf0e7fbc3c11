"""What a conditional model does with the representation's ``condition`` channel, whatever its family: read
a batch's standardised conditions, check a condition's shape in one line, and keep the training set's
conditions so that sampling without a condition draws from their empirical distribution.

A mixin for a :class:`~bench.models.base.GenerativeModule` whose class sets ``conditional = True``. The
module calls :meth:`ConditionChannel.init_condition_channel` in ``__init__`` with ``condition_dim = C`` (the
train stage builds a conditional model with the representation's condition width; 0 means none, and the
model must then behave as its unconditional twin and refuse a condition).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = ["ConditionChannel"]


class ConditionChannel:
    """Condition handling shared by conditional models: the batch's conditions, the checks, and the bank of
    training conditions (a buffer, so checkpoints keep it)."""

    condition_dim: int
    condition_bank: Tensor

    def init_condition_channel(self, condition_dim: int) -> None:
        """Set ``condition_dim`` and, with ``C > 0``, register the empty bank of training conditions.

        Raises:
            ValueError: ``condition_dim < 0``, or ``C > 0`` for a class without ``conditional = True``.
        """
        if condition_dim < 0:
            raise ValueError(f"condition_dim must be >= 0, got {condition_dim}")
        if condition_dim > 0 and not getattr(self, "conditional", False):
            raise ValueError(
                f"{type(self).__name__} is unconditional (conditional = False): build it with "
                "condition_dim=0, or use a conditional model class"
            )
        self.condition_dim = int(condition_dim)
        if self.condition_dim > 0:
            # Rows: the training set's standardised conditions, filled by fit_data. Its length is the training
            # set's, so loading a checkpoint resizes it (_load_from_state_dict).
            self.register_buffer("condition_bank", torch.zeros(0, self.condition_dim))  # type: ignore[attr-defined]

    def check_condition(self, condition: Tensor | None, size: int) -> None:
        """One-line errors for a condition the model cannot take: missing, unexpected or of the wrong shape.

        Raises:
            ValueError: a condition for a model built without one, none for a model built with one, or a
                condition that is not ``[size, condition_dim]``.
        """
        name = type(self).__name__
        if self.condition_dim == 0:
            if condition is not None:
                raise ValueError(
                    f"{name} was built without a condition (condition_dim=0), so it is unconditional: pass "
                    "condition=None, or train it with representation.condition"
                )
            return
        if condition is None:
            raise ValueError(f"{name} is conditional (condition_dim={self.condition_dim}): pass a condition")
        if condition.dim() != 2 or tuple(condition.shape) != (size, self.condition_dim):
            raise ValueError(
                f"condition must be [{size}, {self.condition_dim}] standardised values (one row per crystal, "
                f"one column per condition property), got shape {list(condition.shape)}"
            )

    def batch_condition(self, batch: Mapping[str, Tensor]) -> Tensor | None:
        """The batch's ``condition`` ``[B, C]`` as float32 on the module's device; None for a model built
        without a condition.

        Raises:
            ValueError: the model has a condition and the batch has no ``condition`` field, or one of another
                shape.
        """
        if self.condition_dim == 0:
            return None
        if "condition" not in batch:
            raise ValueError(
                f"{type(self).__name__} was built with condition_dim={self.condition_dim} but the batch has "
                "no 'condition' field: set representation.condition to the property columns it was built for"
            )
        condition = batch["condition"]
        self.check_condition(condition, int(batch["lattice"].shape[0]))
        return condition.to(self.device, torch.float32)  # type: ignore[attr-defined]

    def sample_condition(
        self, n: int, generator: torch.Generator | None, condition: Any = None
    ) -> Tensor | None:
        """The ``[n, C]`` conditions of a sampling call: ``condition`` checked, or, when it is None, rows of
        the training conditions drawn uniformly from ``generator``; None for a model built without one.

        Raises:
            ValueError: a condition for a model built without one, or one that is not ``[n, C]`` finite
                values.
            RuntimeError: no condition was given and :meth:`fit_data` never filled the training conditions.
        """
        if self.condition_dim == 0:
            self.check_condition(None if condition is None else torch.as_tensor(condition), n)
            return None
        if condition is None:
            bank = self.condition_bank
            if bank.shape[0] == 0:
                raise RuntimeError(
                    f"{type(self).__name__} has no training conditions to draw from: pass condition=[n, C] "
                    "(+sample.condition.<column>=[...]), call fit_data(training batch) before sampling "
                    "(bench.train does), or load a checkpoint of a trained run"
                )
            device = generator.device if generator is not None else bank.device
            index = torch.randint(bank.shape[0], (n,), generator=generator, device=device)
            return bank[index.to(bank.device)]
        condition = torch.as_tensor(condition, dtype=torch.float32, device=self.device)  # type: ignore[attr-defined]
        self.check_condition(condition, n)
        if not bool(torch.isfinite(condition).all()):
            raise ValueError("condition has NaN or infinite values")
        return condition

    def fit_data(self, data: Mapping[str, Tensor]) -> None:
        """The next class's statistics of the training set, then (with a condition) its standardised
        conditions, kept for sampling without a condition."""
        super().fit_data(data)  # type: ignore[misc]
        if self.condition_dim > 0:
            condition = self.batch_condition(data)
            assert condition is not None
            self.condition_bank = condition.detach().to(self.condition_bank.device, torch.float32).clone()

    def _load_from_state_dict(
        self, state_dict: Mapping[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        """Resize the training conditions to the checkpoint's before loading them."""
        key = prefix + "condition_bank"
        if self.condition_dim > 0 and key in state_dict:
            self.condition_bank = torch.zeros(
                state_dict[key].shape, dtype=self.condition_bank.dtype, device=self.condition_bank.device
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)  # type: ignore[misc]
