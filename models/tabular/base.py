"""What every model of mode-specific normalised rows shares: the row layout, its batch field and the sampling
wrapper.

A batch is ``{"rows": [B, D]}``: per continuous column ``i`` of the table, in order, the scalar ``alpha_i`` in
``[-1, 1]`` followed by the one-hot ``beta_i`` of its mode (``K_i`` entries), so ``D = sum_i (1 + K_i)``
(:class:`~bench.datasets.tabular_representation.ModeSpecificNormalizer`). A model is built with ``modes``, the
list of ``K_i``, and returns samples in the same layout: the scalars clamped to ``[-1, 1]``, each mode span
one-hot, so decoding reads exactly the sampled modes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from bench.models.base import GenerativeModule, OptimizerFactory
from torch import Tensor

__all__ = ["ROWS_SPACE", "TableModule"]

ROWS_SPACE = "mode_specific_rows"
"""The variable a tabular model sees: the encoded rows (not the table's own values)."""


class TableModule(GenerativeModule):
    """A generative model of mode-specific normalised rows ``[B, D]`` (see the module docstring).

    The crystal base's sizes are set to the table's (``max_atoms`` to the number of columns, ``num_types`` to
    2, unused), so its checks and helpers apply unchanged.

    Args:
        optimizer: a partial building the optimiser from the parameters.
        modes: ``K_i``, the kept modes of each column (from the representation's ``sizes()``).
    """

    def __init__(self, optimizer: OptimizerFactory, modes: Sequence[int]) -> None:
        modes = [int(k) for k in modes]
        if not modes or min(modes) < 1:
            raise ValueError(f"modes must list at least one column with at least one mode each, got {modes}")
        super().__init__(optimizer, num_types=2, max_atoms=len(modes))
        self.modes = tuple(modes)
        starts, offset = [], 0
        for k in self.modes:
            starts.append(offset)
            offset += 1 + k
        self.width = offset
        #: position of each column's scalar in a row
        self.alpha_index = tuple(starts)
        #: ``(start, end)`` of each column's mode span
        self.mode_spans = tuple((s + 1, s + 1 + k) for s, k in zip(starts, self.modes, strict=True))

    def nll_space(self) -> str:
        return ROWS_SPACE

    def rows_of(self, batch: Mapping[str, Tensor]) -> Tensor:
        """The batch's ``rows`` as float32 on the module's device.

        Raises:
            ValueError: no ``rows`` field, or rows of another width than ``D``.
        """
        if "rows" not in batch:
            raise ValueError(
                f"{type(self).__name__} reads encoded table rows: the batch has no 'rows' field (fields: "
                f"{sorted(batch)}); train it with representation=mode_specific"
            )
        rows = batch["rows"]
        if rows.dim() != 2 or rows.shape[1] != self.width:
            raise ValueError(f"rows must be [B, {self.width}], got {list(rows.shape)}")
        return rows.to(self.device, torch.float32)

    def alphas(self, rows: Tensor) -> Tensor:
        """The scalars of every column, ``[B, C]``."""
        return rows[:, list(self.alpha_index)]

    def finalise(self, raw: Tensor) -> Tensor:
        """A raw output ``[B, D]`` as a row of the representation: scalars clamped to ``[-1, 1]``, each mode
        span the one-hot of its largest entry."""
        out = torch.zeros_like(raw)
        index = list(self.alpha_index)
        out[:, index] = raw[:, index].clamp(-1.0, 1.0)
        for start, end in self.mode_spans:
            top = raw[:, start:end].argmax(dim=1)
            out[:, start:end] = torch.nn.functional.one_hot(top, end - start).to(raw.dtype)
        return out

    def gumbel(self, shape: Sequence[int], generator: torch.Generator | None) -> Tensor:
        """Standard Gumbel noise drawn from ``generator``: ``argmax(logits + gumbel)`` is a draw from
        ``softmax(logits)``."""
        u = self._rand(shape, generator).clamp(1e-12, 1.0 - 1e-7)
        return -torch.log(-torch.log(u))

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None = None, condition: Any = None
    ) -> dict[str, Tensor]:
        """Draw ``n`` rows: ``{"rows": [n, D]}`` float32 (:meth:`finalise` of what :meth:`_sample` returns
        under ``rows``), in eval mode, every random number from ``generator``.

        Raises:
            ValueError: ``n < 1``, or a condition (the tabular models take none from outside).
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if condition is not None:
            raise ValueError(f"{type(self).__name__} is unconditional: pass condition=None")
        was_training = self.training
        self.eval()
        try:
            raw = self._sample(n, generator, None)["rows"]
        finally:
            self.train(was_training)
        return {"rows": self.finalise(raw.to(torch.float32))}
