"""The contract every generative model honours: a LightningModule with ``loss(batch)`` and ``sample(n)``.

A batch is the dict of tensors written by the run's representation (``bench.datasets.representation``; for the
crystal codec ``atom_types``, ``frac_coords``, ``lattice``, ``mask``). ``training_step`` calls
:meth:`GenerativeModule.loss`; ``sample`` returns a batch in the same layout, drawing every random number from
the ``torch.Generator`` it is given, so a seed fixes the samples. Modules receive built objects (the backbone
and optimiser as ``functools.partial``) and never instantiate configs themselves.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import pytorch_lightning as pl
import torch
from torch import Tensor

__all__ = [
    "CODEC_SPACE",
    "FIELDS",
    "GenerativeModule",
    "Likelihood",
    "NonFiniteLossError",
    "OptimizerFactory",
    "SchedulerFactory",
    "finalize_batch",
    "periodic_difference",
]

FIELDS = ("atom_types", "frac_coords", "lattice")

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]

CODEC_SPACE = "crystal_codec"
"""The space of a likelihood over the crystal codec's fields (:mod:`bench.datasets.codec`): per slot a type
(counting measure, the empty slot included), the fractional coordinates of filled slots in ``[0, 1)^3`` and
the six standardised lattice parameters (Lebesgue measure). Densities of different models in this space
compare when their codecs were fitted alike (same training split and settings)."""


@dataclass(frozen=True)
class Likelihood:
    """What a model's :meth:`GenerativeModule.test_nll` returns, declared on its class.

    Attributes:
        kind: ``"exact"``: the negative log-likelihood itself; ``"upper_bound"``: a bound above it (a negative
            ELBO, an importance-weighted bound, the NLL of a dequantised variable), so a lower value is a
            tighter bound or a better model, and the true NLL is no higher.
        estimator: a short name of how it is computed (``"exact"``, ``"dequantised"``, ``"iwae"``).
        description: one or two sentences: which variable, which noise, which bound.
    """

    kind: Literal["exact", "upper_bound"]
    estimator: str
    description: str


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; raised instead of training on silently.

    Args:
        step: the global step at which the loss was computed.
        loss: the offending value.
        name: which loss (``loss`` unless a model reports several).
    """

    def __init__(self, step: int, loss: float, name: str = "loss") -> None:
        self.step = int(step)
        self.loss = float(loss)
        self.name = name
        super().__init__(
            f"non-finite loss at step {self.step} ({name}={self.loss}): lower the learning rate "
            "(model.module.optimizer.lr), check the input batch for NaNs, or enable gradient clipping "
            "(trainer.gradient_clip_val)"
        )


def periodic_difference(a: Tensor, b: Tensor) -> Tensor:
    """``wrap(a - b) = (a - b) - round(a - b)``: the shortest signed difference of fractional coordinates."""
    delta = a - b
    return delta - torch.round(delta)


def finalize_batch(atom_scores: Tensor, frac_coords: Tensor, lattice: Tensor) -> dict[str, Tensor]:
    """Clean a raw model output: one-hot types, coordinates in ``[0, 1)``, empty slots zeroed.

    Args:
        atom_scores: ``[B, N, K+1]`` logits, probabilities or noisy one-hots (argmax decides the type).
        frac_coords: ``[B, N, 3]`` fractional coordinates, any real values (wrapped mod 1).
        lattice: ``[B, 6]`` standardised lattice parameters.

    Returns:
        A batch dict with ``atom_types``, ``frac_coords``, ``lattice`` and ``mask`` (float32).
    """
    types = torch.nn.functional.one_hot(atom_scores.argmax(dim=-1), atom_scores.shape[-1]).to(torch.float32)
    mask = 1.0 - types[..., 0]
    frac = torch.remainder(frac_coords.to(torch.float32), 1.0)
    frac = torch.where(frac >= 1.0, torch.zeros_like(frac), frac) * mask.unsqueeze(-1)
    return {"atom_types": types, "frac_coords": frac, "lattice": lattice.to(torch.float32), "mask": mask}


class GenerativeModule(pl.LightningModule):
    """Base class of every benchmark model.

    Subclasses implement :meth:`loss` and :meth:`_sample`, and set the class attributes ``family`` (``"vae"``,
    ``"gan"``, ``"diffusion"`` or ``"flow"``) and ``paper`` (the reference the variant follows). A model with
    a tractable likelihood or bound declares it in :attr:`likelihood` and implements :meth:`test_nll`; the
    evaluate stage then records the test split's NLL.

    Args:
        optimizer: a partial building the optimiser from the parameters (e.g. ``torch.optim.AdamW``).
        num_types: K + 1, the width of ``atom_types`` (from the fitted codec).
        max_atoms: N, the number of site slots (from the fitted codec).
    """

    family: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    #: Whether the model takes a condition (the representation's ``condition`` channel); the train stage
    #: refuses a condition for a model that would ignore it.
    conditional: ClassVar[bool] = False
    #: What :meth:`test_nll` reports (None: the model has no tractable likelihood or bound here). GANs have
    #: none; ``improved_ddpm`` and ``vdm`` report their variational bounds; the other diffusion and
    #: flow-matching models (ddpm, d3pm, diffcsp, flowmm) and CDVAE, whose decoder is a denoiser, have
    #: variational or ODE bounds that are not implemented here, so they report none.
    likelihood: ClassVar[Likelihood | None] = None
    #: The training stages the model knows, in the order they run (empty: it trains in one stage). A model
    #: config's ``stages`` list says which run and what share of the step budget each gets; the train stage
    #: calls :meth:`set_stage` before each (e.g. a VQ-VAE's autoencoder, then the prior over its codes).
    training_stages: ClassVar[tuple[str, ...]] = ()

    def __init__(self, optimizer: OptimizerFactory, num_types: int, max_atoms: int) -> None:
        super().__init__()
        if num_types < 2:
            raise ValueError(
                f"num_types must be >= 2 (the empty slot plus at least one element), got {num_types}"
            )
        if max_atoms < 1:
            raise ValueError(f"max_atoms must be >= 1, got {max_atoms}")
        self.optimizer_factory = optimizer
        self.scheduler_factory: SchedulerFactory | None = None
        self.num_types = int(num_types)
        self.max_atoms = int(max_atoms)
        self.stage: str | None = None

    # ------------------------------------------------------------------ hyperparameters
    def _save_plain_hparams(self, ignore: Sequence[str] = ()) -> None:
        """Record the constructor's plain arguments (numbers, strings) in checkpoints.

        Built objects (backbone and optimiser partials, samplers) are left out, so a checkpoint stays loadable
        with ``torch.load(path, weights_only=True)``; the resolved config is the record of how they were
        built.
        """
        self.save_hyperparameters(ignore=["backbone", "optimizer", "sampler", *ignore], logger=False)

    # ------------------------------------------------------------------ the contract
    def fit_data(self, data: Mapping[str, Tensor]) -> None:
        """Take statistics of the whole encoded training set before training (default: none).

        Called once by the train stage. A model that samples the number of atoms from the training
        distribution keeps it in a buffer here, so it is saved in the checkpoint with the weights.
        """

    # ------------------------------------------------------------------ training stages
    def stage_parameters(self, name: str) -> list[torch.nn.Parameter]:
        """The parameters trained in stage ``name``; every other parameter is frozen during it. Models with
        :attr:`training_stages` override it."""
        raise NotImplementedError(f"{type(self).__name__} declares no training stages")

    def set_stage(self, name: str) -> None:
        """Switch to training stage ``name``: only the parameters of :meth:`stage_parameters` stay trainable
        (the optimiser of the stage is built over them), and :meth:`loss` may read ``self.stage``.

        Raises:
            ValueError: ``name`` is not one of :attr:`training_stages`.
        """
        if name not in self.training_stages:
            known = ", ".join(self.training_stages) or "none: it trains in one stage"
            raise ValueError(f"{type(self).__name__} has no training stage {name!r} (its stages: {known})")
        trained = {id(p) for p in self.stage_parameters(name)}
        for p in self.parameters():
            p.requires_grad_(id(p) in trained)
        self.stage = name

    @property
    def nfe(self) -> int:
        """Network evaluations per sample: 1 for one-shot generators; iterative samplers override it."""
        return 1

    # ------------------------------------------------------------------ likelihood of held-out data
    def likelihood_spec(self) -> Likelihood | None:
        """What :meth:`test_nll` reports for this model as configured: the class's :attr:`likelihood`, unless
        a variant's settings take it away (None: no value)."""
        return type(self).likelihood

    def nll_space(self) -> str:
        """The variable the likelihood is of; values in different spaces are never compared. Default
        :data:`CODEC_SPACE`."""
        return CODEC_SPACE

    def fit_likelihood(
        self, data: Mapping[str, Tensor], generator: torch.Generator | None = None
    ) -> dict[str, Any]:
        """Fit what :meth:`test_nll` needs from the encoded training split (e.g. a decoder's noise scale),
        once, before it is called; returns the fitted values and the settings that define the value (e.g. a
        dequantisation noise), recorded beside the NLL (default: none). Never fitted on the data scored."""
        return {}

    def test_nll(
        self, batch: Mapping[str, Tensor], draws: int = 1, generator: torch.Generator | None = None
    ) -> Tensor:
        """Negative log-likelihood of each crystal of ``batch`` in nats, ``[B]``, as :meth:`likelihood_spec`
        declares it (exact, or an upper bound).

        Args:
            batch: encoded by the run's representation.
            draws: Monte Carlo draws per crystal (dequantisation noise, importance samples); ignored by an
                exact likelihood.
            generator: every random number is drawn from it, so a seed fixes the value.

        Raises:
            NotImplementedError: the model declares no likelihood.
        """
        raise NotImplementedError(f"{type(self).__name__} declares no likelihood (likelihood_spec() is None)")

    def loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Loss terms on a batch; must contain ``"loss"``, the scalar that training minimises."""
        raise NotImplementedError

    def training_objectives(self, batch: Mapping[str, Tensor]) -> list[Tensor]:
        """Every scalar some optimiser minimises on ``batch``; together they reach every trainable parameter.

        One loss for most models; a GAN returns its critic and generator objectives. Used to check that no
        parameter is dead (DDP refuses parameters that never get a gradient).
        """
        return [self.loss(batch)["loss"]]

    def _sample(self, n: int, generator: torch.Generator | None, condition: Any) -> dict[str, Tensor]:
        """Draw ``n`` raw samples (called by :meth:`sample` under ``no_grad`` in eval mode)."""
        raise NotImplementedError

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None = None, condition: Any = None
    ) -> dict[str, Tensor]:
        """Draw ``n`` crystals as a batch (one-hot types, coordinates in ``[0, 1)``, lattice, mask).

        Args:
            n: number of samples.
            generator: every random number is drawn from it, so the same seed gives the same samples.
            condition: the standardised ``[n, C]`` values to sample at (the representation's ``condition``
                channel, moved to the module's device as float32), for a model whose class sets
                ``conditional = True``; None lets the model choose (e.g. conditions drawn from the training
                distribution). Unconditional models reject anything but None.

        Returns:
            A batch dict of float32 tensors on the module's device.
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if condition is not None:
            if not self.conditional:
                raise ValueError(f"{type(self).__name__} is unconditional: pass condition=None")
            condition = torch.as_tensor(condition, dtype=torch.float32, device=self.device)
            if condition.dim() != 2 or condition.shape[0] != n:
                raise ValueError(
                    f"condition must be [n, C] = [{n}, C] (one row per sample), got {tuple(condition.shape)}"
                )
        was_training = self.training
        self.eval()
        try:
            raw = self._sample(n, generator, condition)
        finally:
            self.train(was_training)
        return finalize_batch(raw["atom_types"], raw["frac_coords"], raw["lattice"])

    def num_parameters(self, trainable_only: bool = True) -> int:
        """Number of (trainable) parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    # ------------------------------------------------------------------ random numbers
    def _randn(self, shape: Sequence[int], generator: torch.Generator | None) -> Tensor:
        """Standard normal noise drawn from ``generator`` (on its device), moved to the module's device."""
        return _draw(torch.randn, shape, generator, self.device)

    def _rand(self, shape: Sequence[int], generator: torch.Generator | None) -> Tensor:
        """Uniform ``[0, 1)`` noise drawn from ``generator``, moved to the module's device."""
        return _draw(torch.rand, shape, generator, self.device)

    # ------------------------------------------------------------------ Lightning hooks
    def check_finite(self, value: Tensor, name: str = "loss") -> None:
        """Raise :class:`NonFiniteLossError` when ``value`` is NaN or infinite."""
        number = float(value.detach())
        if not math.isfinite(number):
            raise NonFiniteLossError(self.global_step, number, name)

    def _log_terms(self, prefix: str, terms: Mapping[str, Tensor], batch_size: int) -> None:
        on_step = prefix == "train"
        for name, value in terms.items():
            self.log(
                f"{prefix}/{name}",
                value.detach(),
                on_step=on_step,
                on_epoch=not on_step,
                prog_bar=name == "loss",
                batch_size=batch_size,
                sync_dist=not on_step,  # epoch means are reduced across DDP ranks
            )

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        """Compute :meth:`loss`, stop on a non-finite value, log ``train/<term>``."""
        terms = self.loss(batch)
        self.check_finite(terms["loss"])
        self._log_terms("train", terms, _batch_size(batch))
        return terms["loss"]

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        """Log ``val/<term>`` (``val/loss`` first of all)."""
        terms = self.loss(batch)
        self._log_terms("val", terms, _batch_size(batch))

    def set_scheduler(self, factory: SchedulerFactory) -> None:
        """Use a learning-rate schedule (a partial taking the optimiser), stepped after every optimiser step.

        Raises:
            ValueError: the model optimises manually (GANs), where a schedule would never be stepped.
        """
        if not self.automatic_optimization:
            raise ValueError(
                f"{type(self).__name__} optimises manually (several optimisers); model.scheduler is not "
                "supported for it: leave model.scheduler unset"
            )
        self.scheduler_factory = factory

    def configure_optimizers(self) -> Any:
        """Build the optimiser from the partial given at construction, and the schedule if one was set."""
        optimizer = self.build_optimizer([p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def build_optimizer(self, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        """Call the optimiser partial on ``params``.

        Config lists (e.g. Adam's ``betas`` from YAML) are turned into tuples, so the optimiser state in a
        checkpoint holds only plain values and loads with ``torch.load(..., weights_only=True)``.
        """
        optimizer = self.optimizer_factory(params)
        for group in optimizer.param_groups:
            for key, value in group.items():
                if key != "params" and isinstance(value, Sequence) and not isinstance(value, str | tuple):
                    group[key] = tuple(value)
        return optimizer


def _batch_size(batch: Mapping[str, Tensor]) -> int:
    """Number of items in a batch: the leading dimension of its first field."""
    return int(next(iter(batch.values())).shape[0])


def _draw(
    fn: Callable[..., Tensor], shape: Sequence[int], generator: torch.Generator | None, device: torch.device
) -> Tensor:
    if generator is None:
        return fn(tuple(shape), device=device)
    return fn(tuple(shape), generator=generator, device=generator.device).to(device)
