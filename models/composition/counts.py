"""What every model of the composition count matrix shares: its sizes, its batch field and its sampling
wrapper.

A batch is ``{"counts": [B, E, L]}``: per element of the training vocabulary (``E``, ordered by atomic
number) a one-hot over ``L`` count levels, level ``k`` standing for ``k`` atoms of the element and level 0 for
"absent" (:class:`~bench.datasets.composition_codec.CountMatrixCodec` with ``zero_level=True``, transposed to
put the levels last). A model reads it with :meth:`CountsModule.counts_of` and returns samples in the same
layout, one-hot, so the representation's argmax decoding reads exactly the sampled levels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from bench.models.base import GenerativeModule, OptimizerFactory
from torch import Tensor

__all__ = ["COUNTS_SPACE", "CountsModule"]

COUNTS_SPACE = "composition_counts"
"""The variable a composition model's likelihood is of: the ``E`` count levels of a formula (a discrete
variable, so its NLL is in nats per composition and never negative)."""


class CountsModule(GenerativeModule):
    """A generative model of count matrices ``[B, E, L]`` (see the module docstring).

    The crystal base's sizes are set to the matrix's (``num_types`` to the levels, ``max_atoms`` to the
    elements), so its checks and helpers apply unchanged; subclasses read :attr:`num_elements` and
    :attr:`num_levels`.

    Args:
        optimizer: a partial building the optimiser from the parameters.
        num_elements: E, the elements of the training vocabulary (from the representation's ``sizes()``).
        num_levels: L, count levels including level 0 (absent).
    """

    #: The space of :meth:`test_nll` (:meth:`nll_space`).
    space: ClassVar[str] = COUNTS_SPACE

    def __init__(self, optimizer: OptimizerFactory, num_elements: int, num_levels: int) -> None:
        if num_elements < 1:
            raise ValueError(f"num_elements must be >= 1, got {num_elements}")
        if num_levels < 2:
            raise ValueError(f"num_levels must be >= 2 (absent plus at least one count), got {num_levels}")
        super().__init__(optimizer, num_types=num_levels, max_atoms=num_elements)
        self.num_elements = int(num_elements)
        self.num_levels = int(num_levels)

    @property
    def shape(self) -> tuple[int, int]:
        """``(E, L)``: one item's count matrix."""
        return (self.num_elements, self.num_levels)

    def nll_space(self) -> str:
        return self.space

    def counts_of(self, batch: Mapping[str, Tensor]) -> Tensor:
        """The batch's ``counts`` as float32 on the module's device.

        Raises:
            ValueError: the batch has no ``counts`` field, or one of another shape than ``[B, E, L]``.
        """
        if "counts" not in batch:
            raise ValueError(
                f"{type(self).__name__} reads count matrices: the batch has no 'counts' field (fields: "
                f"{sorted(batch)}); train it with representation=composition_counts"
            )
        counts = batch["counts"]
        if counts.dim() != 3 or tuple(counts.shape[1:]) != self.shape:
            raise ValueError(
                f"counts must be [B, {self.num_elements}, {self.num_levels}] (elements x levels), got "
                f"{list(counts.shape)}"
            )
        return counts.to(self.device, torch.float32)

    def levels_of(self, batch: Mapping[str, Tensor]) -> Tensor:
        """The level index of every element, ``[B, E]`` int64 (the argmax of its one-hot)."""
        return self.counts_of(batch).argmax(dim=-1)

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None = None, condition: Any = None
    ) -> dict[str, Tensor]:
        """Draw ``n`` compositions: ``{"counts": [n, E, L]}`` one-hot float32 (the argmax of the model's
        output scores :meth:`_sample` returns under ``counts``), in eval mode, every random number from
        ``generator``.

        Raises:
            ValueError: ``n < 1``, or a condition (composition models are unconditional).
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if condition is not None:
            raise ValueError(f"{type(self).__name__} is unconditional: pass condition=None")
        was_training = self.training
        self.eval()
        try:
            scores = self._sample(n, generator, None)["counts"]
        finally:
            self.train(was_training)
        levels = scores.argmax(dim=-1)
        return {"counts": torch.nn.functional.one_hot(levels, self.num_levels).to(torch.float32)}
