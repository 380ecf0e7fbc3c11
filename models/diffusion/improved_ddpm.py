"""Improved DDPM: learned reverse variances, the hybrid objective and the variational bound as the test NLL.

Nichol & Dhariwal (2021), "Improved Denoising Diffusion Probabilistic Models", ICML, arXiv:2102.09672, on
the crystal DDPM of :mod:`bench.models.diffusion.ddpm` (same fields, representation, cosine schedule, network
and samplers):

- the network emits, per field and coordinate, epsilon and a weight ``v`` of the reverse variance,
  ``Sigma = exp(v log beta_t + (1 - v) log beta_tilde_t)`` (section 3.1, eq. 15;
  :class:`~bench.models.diffusion.processes.LearnedVarianceVPGaussian`);
- the loss is ``L_hybrid = L_simple + lambda L_vlb`` (eq. 16) with ``lambda = 0.001`` and the mean held
  fixed (stop-gradient) in ``L_vlb`` (section 3.1);
- ancestral sampling takes the learned variances, also on respaced trajectories (section 4), through
  :class:`~bench.models.diffusion.samplers.AncestralSampler` with ``variance="learned"``;
- :meth:`CrystalImprovedDDPM.test_nll` is the negative variational bound on the codec's fields
  (:func:`variational_bound`, with the decoders and corrections stated there).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from bench.models.backbone import CrystalTransformer
from bench.models.base import FIELDS, Likelihood, OptimizerFactory
from bench.models.diffusion.ddpm import CrystalDDPM
from bench.models.diffusion.processes import LearnedVarianceVPGaussian
from bench.models.diffusion.samplers import AncestralSampler, DiffusionSampler, Predictor
from torch import Tensor

__all__ = ["DECODERS", "CrystalImprovedDDPM", "variational_bound"]

DECODERS: dict[str, str] = {"atom_types": "categorical", "frac_coords": "gaussian", "lattice": "gaussian"}
"""The decoder ``p(x0 | x_1)`` of each field in the bound (:meth:`LearnedVarianceVPGaussian.vlb_term`): the
types' Gaussian normalised over the one-hot vertices (a probability of the element), a Gaussian density for
the continuous coordinates and lattice."""


def _normal(shape: torch.Size | tuple[int, ...], generator: torch.Generator | None,
            device: torch.device) -> Tensor:
    if generator is None:
        return torch.randn(tuple(shape), device=device)
    return torch.randn(tuple(shape), generator=generator, device=generator.device).to(device)


def _steps(low: int, high: int, size: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """``size`` steps drawn uniformly from ``low..high``."""
    if generator is None:
        return torch.randint(low, high + 1, (size,), device=device)
    return torch.randint(low, high + 1, (size,), generator=generator, device=generator.device).to(device)


def variational_bound(
    predictor: Predictor,
    processes: Mapping[str, LearnedVarianceVPGaussian],
    x0: Mapping[str, Tensor],
    decoders: Mapping[str, str] | None = None,
    generator: torch.Generator | None = None,
    every_step: bool = False,
    clip: bool = True,
) -> Tensor:
    """One estimate of the negative variational bound ``L_vlb = L_0 + L_1 + ... + L_T`` of each sample ``[B]``
    (float64, nats), summed over the fields (Nichol & Dhariwal 2021, eqs. 4-7).

    ``L_T`` (no parameters) is in closed form. ``L_0``, the decoder's ``-log p(x0 | x_1)``, is drawn at
    ``t = 1`` with one ``x_1``. The rest, ``sum_{t=2..T} L_{t-1}``, is either the sum of one draw at every
    step (``every_step``; ``T - 1`` network evaluations) or ``(T - 1) L_{t-1}`` at one step ``t`` drawn
    uniformly from ``2..T`` (one network evaluation): both unbiased for the bound. Every random number comes
    from ``generator``.

    Args:
        predictor: ``[eps, v] = predictor(x_t, t)`` per field.
        processes: the learned-variance processes by field (one ``T``).
        x0: clean values by field, each ``[B, ...]``.
        decoders: each field's decoder, ``"gaussian"`` (default) or ``"categorical"``.
        generator: where the draws come from.
        every_step: draw every step instead of one uniform step.
        clip: clip ``x0_hat`` to each process's bound, as the samplers do.
    """
    decoders = decoders or {}
    fields = sorted(processes)
    horizons = {int(p.timesteps) for p in processes.values()}
    if len(horizons) != 1:
        raise ValueError(f"the processes must share one T, got {sorted(horizons)}")
    timesteps = horizons.pop()
    first = x0[fields[0]]
    size, device = first.shape[0], first.device

    def term(t: Tensor) -> Tensor:
        noise = {k: _normal(x0[k].shape, generator, device) for k in fields}
        x_t = {k: processes[k].q_sample(x0[k], t, noise[k]) for k in fields}
        pred = predictor(x_t, t)
        return sum(
            processes[k].vlb_term(x0[k], x_t[k], pred[k], t, clip, decoders.get(k, "gaussian"))
            for k in fields
        )

    total = sum(processes[k].prior_kl(x0[k]) for k in fields)
    total = total + term(torch.ones(size, dtype=torch.long, device=device))
    if every_step:
        for step in range(2, timesteps + 1):
            total = total + term(torch.full((size,), step, dtype=torch.long, device=device))
    else:
        total = total + (timesteps - 1) * term(_steps(2, timesteps, size, generator, device))
    return total


class CrystalImprovedDDPM(CrystalDDPM):
    """The crystal DDPM with learned reverse variances, trained on ``L_hybrid`` (Nichol & Dhariwal 2021).

    Everything :class:`~bench.models.diffusion.ddpm.CrystalDDPM` has (fields, diffusion space, cosine
    schedule, transformer denoiser, samplers), with:

    - a denoiser with twice the output channels, ``[eps, v]`` per field, and one
      :class:`~bench.models.diffusion.processes.LearnedVarianceVPGaussian` per field;
    - the loss ``L_simple + vlb_weight L_vlb`` at one uniform step ``t`` per crystal: ``L_simple`` is ddpm's
      weighted per-field noise MSE; ``L_vlb`` is ``T`` times the bound's term at ``t`` (the KL of the
      posterior and the model's step, or the decoder's NLL at ``t = 1``), in bits per coordinate of each
      field, with the same field weights, computed with the epsilon half detached, so it trains ``v`` only
      (section 3.1: "we apply a stop-gradient to the mu_theta(x_t, t) output for the L_vlb term"). As in the
      authors' code, ``L_vlb`` is the single-step estimate ``T L_t`` per coordinate in bits, so
      ``lambda = 0.001`` weighs it as there; ``t`` is drawn uniformly (the paper's importance sampling of
      ``t`` is for ``L_vlb`` alone and is not used).

    Args:
        backbone: partial of :class:`~bench.models.backbone.CrystalTransformer` (called once, with
            ``out_scale=2``).
        optimizer: partial building the optimiser.
        num_types: K + 1 (from the fitted codec).
        max_atoms: N (from the fitted codec).
        sampler: a built sampler; default ancestral with the learned variances.
        timesteps: T (at least 2).
        schedule: ``"cosine"`` (default) or ``"linear"``.
        time_dim: width of the time embedding.
        type_weight: weight of the type terms (MSE and bound).
        frac_weight: weight of the coordinate terms.
        lattice_weight: weight of the lattice terms.
        lattice_clip: bound on ``|x0_hat|`` of the standardised lattice while sampling (as ddpm).
        vlb_weight: ``lambda`` of ``L_hybrid`` (the paper's 0.001).
    """

    paper = (
        "Nichol, Dhariwal (2021). Improved Denoising Diffusion Probabilistic Models. ICML. arXiv:2102.09672"
    )
    likelihood = Likelihood(
        "upper_bound",
        "vlb",
        "negative variational bound of the T-step reverse process with learned variances on the codec's "
        "fields: closed-form L_T, Gaussian KL terms, the t = 1 decoder categorical on each slot's type (the "
        "Gaussian N(x0_hat, Sigma) normalised over the one-hot vertices) and Gaussian N(x0_hat, Sigma) on "
        "coordinates (2f - 1; minus 3 log 2 per filled slot for fractions) and the standardised lattice; "
        "empty-slot coordinates integrated out with a N(-1, 1 - alpha_bar_1) proposal; per draw the t = 1 "
        "term plus (T - 1) times the term at one t uniform in 2..T, averaged over draws",
    )
    decoders = DECODERS

    def __init__(
        self,
        backbone: Callable[..., CrystalTransformer],
        optimizer: OptimizerFactory,
        num_types: int,
        max_atoms: int,
        sampler: DiffusionSampler | None = None,
        timesteps: int = 1000,
        schedule: str = "cosine",
        time_dim: int = 64,
        type_weight: float = 1.0,
        frac_weight: float = 1.0,
        lattice_weight: float = 1.0,
        lattice_clip: float | None = 5.0,
        vlb_weight: float = 0.001,
    ) -> None:
        if vlb_weight < 0:
            raise ValueError(f"vlb_weight must be >= 0, got {vlb_weight}")
        super().__init__(
            functools.partial(backbone, out_scale=2), optimizer, num_types, max_atoms,
            sampler=sampler if sampler is not None else AncestralSampler(variance="learned"),
            timesteps=timesteps, schedule=schedule, time_dim=time_dim, type_weight=type_weight,
            frac_weight=frac_weight, lattice_weight=lattice_weight, lattice_clip=lattice_clip,
        )
        self.vlb_weight = float(vlb_weight)
        #: The corruption with learned variances: the same schedules and bounds as ddpm's processes.
        self.processes: dict[str, LearnedVarianceVPGaussian] = {  # type: ignore[assignment]
            "atom_types": LearnedVarianceVPGaussian(timesteps, schedule, clip=1.0),
            "frac_coords": LearnedVarianceVPGaussian(timesteps, schedule, clip=1.0),
            "lattice": LearnedVarianceVPGaussian(timesteps, schedule, clip=lattice_clip),
        }

    # ------------------------------------------------------------------ training
    def loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``L_hybrid`` at uniformly drawn steps ``t`` in ``1..T`` (see the class docstring).

        Returns ``loss``; ``simple`` and ``vlb`` (the single-step estimate ``T L_t``, bits per coordinate,
        weighted over fields); per field ``<field>_mse`` and ``<field>_vlb`` (``T L_t`` of the field).
        """
        x0 = self.to_diffusion_space(batch)
        size = x0["lattice"].shape[0]
        t = torch.randint(1, self.timesteps + 1, (size,), device=self.device)
        noise = {k: torch.randn_like(v) for k, v in x0.items()}
        x_t = {k: self.processes[k].q_sample(x0[k], t, noise[k]) for k in FIELDS}
        pred = self.predict(x_t, t)
        terms: dict[str, Tensor] = {}
        for k in FIELDS:
            process = self.processes[k]
            eps, v = process.split(pred[k])
            terms[f"{k}_mse"] = F.mse_loss(eps, process.target(noise[k], t))
            frozen = process.join(eps.detach(), v)  # the stop-gradient on the mean
            nats = process.vlb_term(x0[k], x_t[k], frozen, t, clip=False, decoder=self.decoders[k])
            per_coordinate = nats / (x0[k][0].numel() * math.log(2.0))
            terms[f"{k}_vlb"] = (self.timesteps * per_coordinate.mean()).to(eps.dtype)
        simple = sum(self.weights[k] * terms[f"{k}_mse"] for k in FIELDS)
        vlb = sum(self.weights[k] * terms[f"{k}_vlb"] for k in FIELDS)
        return {"loss": simple + self.vlb_weight * vlb, "simple": simple, "vlb": vlb, **terms}

    # ------------------------------------------------------------------ likelihood of held-out data
    @property
    def empty_coordinate_std(self) -> float:
        """``tau = sqrt(1 - alpha_bar_1)``: the scale of the proposal that integrates out the coordinates of
        empty slots (the forward process's noise at its first step)."""
        return float((1.0 - self.processes["frac_coords"].alpha_bars64[1]).sqrt())

    def fit_likelihood(
        self, data: Mapping[str, Tensor], generator: torch.Generator | None = None
    ) -> dict[str, Any]:
        """Nothing to fit: returns the settings that define the bound, to be recorded with it."""
        return {
            "vlb_decoders": dict(self.decoders),
            "vlb_steps": "t = 1 and one t uniform in 2..T per draw (weight T - 1); L_T in closed form",
            "vlb_timesteps": self.timesteps,
            "empty_coordinate_proposal_std": self.empty_coordinate_std,
        }

    @torch.no_grad()
    def test_nll(
        self, batch: Mapping[str, Tensor], draws: int = 1, generator: torch.Generator | None = None,
        every_step: bool = False,
    ) -> Tensor:
        """``[B]`` nats per crystal: an upper bound on ``-log P`` of the codec's fields, averaged over
        ``draws``.

        The bound is :func:`variational_bound` of the model's T-step reverse process in the diffusion space,
        with ``x0_hat`` clipped as the sampler clips it, turned into one on the codec's fields:

        - types: the decoder is categorical (:data:`DECODERS`), so their part is a probability of the
          elements (the empty slot included), as the codec's counting measure asks;
        - coordinates of filled slots: ``y = 2 f - 1``, so the density of ``f`` is ``2^3`` times that of
          ``y`` per slot; the model's density on the torus (decoding wraps) is at least that, hence
          ``- 3 log 2`` per filled slot;
        - coordinates of empty slots are not part of the codec's fields and are integrated out:
          ``-log P <= E_r[L_vlb(x0 with y_e) + log r(y_e)]`` for any density ``r``; here ``y_e = -1 + tau z``
          (``tau`` :attr:`empty_coordinate_std`, ``z`` standard normal), near the ``-1`` the model was
          trained on;
        - the lattice is the codec's standardised variable itself.

        Each draw takes ``z``, then one draw of the bound (two network evaluations, or ``T`` with
        ``every_step``), from ``generator``. Call it in eval mode.
        """
        if draws < 1:
            raise ValueError(f"draws must be >= 1, got {draws}")
        x0 = self.to_diffusion_space(batch)
        filled = (1.0 - batch["atom_types"][..., 0]).clamp(0.0, 1.0)
        empty = (1.0 - filled).unsqueeze(-1).double()
        tau = self.empty_coordinate_std
        device = x0["lattice"].device
        total = torch.zeros(x0["lattice"].shape[0], dtype=torch.float64, device=device)
        for _ in range(draws):
            z = _normal(x0["frac_coords"].shape, generator, device).double()
            y = torch.where(empty > 0, -1.0 + tau * z, x0["frac_coords"].double()).to(x0["frac_coords"].dtype)
            log_r = (empty * (-0.5 * z**2 - math.log(tau) - 0.5 * math.log(2.0 * math.pi))).flatten(1).sum(1)
            bound = variational_bound(
                self.predict, self.processes, {**x0, "frac_coords": y}, self.decoders, generator,
                every_step=every_step, clip=True,
            )
            total += bound + log_r
        return total / draws - 3.0 * math.log(2.0) * filled.double().sum(-1)
