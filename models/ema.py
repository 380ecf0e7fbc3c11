"""Exponential moving average of the weights, as a Lightning callback chosen by config (``conf/callbacks/``).

The average ``theta_ema <- d theta_ema + (1 - d) theta`` is updated after every optimiser step, with the
warm-up ``d_k = min(decay, (1 + k) / (10 + k))`` of TensorFlow's ``ExponentialMovingAverage``
(``num_updates``), so the first steps do not drag the average towards the random initialisation. When training
ends, the averaged weights replace the trained ones: the final checkpoint, sampling and evaluation all use
them (as in Ho et al. 2020, FlowMM and DiffCSP, which sample from EMA weights). The average is saved in the
callback's state, so a resumed run continues it.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch

__all__ = ["EMA"]


class EMA(pl.Callback):
    """Keep an exponential moving average of the trainable weights and swap it in at the end of training.

    Args:
        decay: the decay ``d`` once warmed up (e.g. 0.999).
    """

    def __init__(self, decay: float = 0.999) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.updates = 0
        self.shadow: dict[str, torch.Tensor] | None = None

    def _params(self, pl_module: pl.LightningModule) -> dict[str, torch.nn.Parameter]:
        return {name: p for name, p in pl_module.named_parameters() if p.requires_grad}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        params = self._params(pl_module)
        if self.shadow is None:
            self.shadow = {name: p.detach().clone() for name, p in params.items()}
        else:  # restored from a checkpoint: same parameters, on the module's device
            self.shadow = {name: self.shadow[name].to(p.device) for name, p in params.items()}

    def current_decay(self) -> float:
        """The decay applied at the next update (warm-up included)."""
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self.shadow is None:
            return
        d = self.current_decay()
        for name, p in self._params(pl_module).items():
            self.shadow[name].lerp_(p.detach(), 1.0 - d)
        self.updates += 1

    @torch.no_grad()
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.shadow is None:
            return
        for name, p in self._params(pl_module).items():
            p.copy_(self.shadow[name])

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.updates = int(state_dict["updates"])
        self.shadow = state_dict["shadow"]
