"""Per-field forward noise processes of diffusion models, chosen by config (``model.module.processes``).

A diffusion model's corruption of a crystal is a dict keyed by field, each field with its own process (as
MatterGen's corruption config does). Time is discrete, ``t = 1..T``, with ``t = 0`` the clean data. Each
process provides what training and the samplers need:

- ``prior``: a draw of ``x_T``;
- ``q_sample(x0, t, noise)``: ``x_t``;
- ``target(noise, t)``: what the network regresses at ``x_t`` (its ``prediction_type``);
- ``reverse_step(x_t, pred, t, s, noise)``: ``x_s`` for ``s < t`` (ancestral, respacing-safe);
- ``corrector_step(x_t, pred, t, noise, step_lr)``: a Langevin step at fixed ``t`` (optional);
- ``ddim_step(x_t, pred, t, s, noise, eta)``: the DDIM update (Gaussian processes only);
- ``analytic_step(x_t, pred, t, s, noise, gamma, eta)``: the same mean with Analytic-DPM's variance, and
  ``transition_costs(x0_mse, dim)``: the ELBO's per-transition terms of any path (Gaussian processes only).

The samplers of :mod:`bench.models.diffusion.samplers` choose the visited steps and draw the noise; the
processes do each field's arithmetic.

Processes:

- :class:`VPGaussian`: variance-preserving Gaussian (Ho et al. 2020, arXiv:2006.11239; cosine schedule of
  Nichol & Dhariwal 2021, arXiv:2102.09672), epsilon prediction, ancestral steps with the posterior variance.
- :class:`LearnedVarianceVPGaussian`: the same process with the reverse variances the network learns
  (Nichol & Dhariwal 2021, section 3.1, eq. 15): the network emits epsilon and an interpolation weight ``v``
  per coordinate; it also computes the terms of the variational bound (:meth:`~LearnedVarianceVPGaussian.
  vlb_term`, :meth:`~LearnedVarianceVPGaussian.prior_kl`).
- :class:`WrappedNormalVE`: variance-exploding wrapped normal on the torus for fractional coordinates (Jiao et
  al. 2023, "Crystal Structure Prediction by Joint Equivariant Diffusion", NeurIPS, arXiv:2309.04475, section
  4.1): ``x_t = (x0 + sigma_t eps) mod 1`` with a geometric ``sigma_t``; the network regresses the score of
  the wrapped normal, normalised by its root mean square; reverse steps follow the VE SDE (Song et al. 2021,
  "Score-Based Generative Modeling through Stochastic Differential Equations", ICLR, arXiv:2011.13456) and
  wrap.
- :class:`Categorical`: a discrete Markov chain over the element classes (Austin, Johnson, Ho, Tarlow &
  van den Berg 2021, "Structured Denoising Diffusion Models in Discrete State-Spaces", NeurIPS,
  arXiv:2107.03006): uniform transitions (their D3PM-uniform, the multinomial diffusion of Hoogeboom et al.
  2021) or an absorbing [MASK] state (D3PM-absorbing); the network predicts the logits of ``x0`` and the
  reverse step is the posterior averaged over that prediction (their eq. 4). Its states are one-hot rows; its
  loss is the paper's hybrid ``L_vb + lambda L_CE`` (:meth:`Categorical.loss`) instead of a regression target.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from bench.models.diffusion.schedule import alpha_bars_for
from torch import Tensor

__all__ = [
    "Categorical",
    "LearnedVarianceVPGaussian",
    "VPGaussian",
    "WrappedNormalVE",
    "categorical_betas",
    "gaussian_kl",
    "gaussian_nll",
    "wrapped_normal_score",
    "wrapped_score_norm",
]


def _draw(fn, shape: Sequence[int], generator: torch.Generator | None, device: torch.device) -> Tensor:  # noqa: ANN001
    if generator is None:
        return fn(tuple(shape), device=device)
    return fn(tuple(shape), generator=generator, device=generator.device).to(device)


def _per_sample(values: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """``values[t]`` shaped to broadcast against ``like`` (``t`` ``[B]``)."""
    return values.to(like.device)[t].view(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def gaussian_kl(ratio: Tensor, mean_square: Tensor, sigma2: Tensor, dim: int | Tensor = 1) -> Tensor:
    """``KL(N(mu_q, q_var I_d) || N(mu_p, sigma2 I_d))`` in nats:
    ``1/2 [d (r - 1 - log r) + ||mu_q - mu_p||^2 / sigma2]`` with ``r = q_var / sigma2``.

    Args:
        ratio: ``r``.
        mean_square: ``||mu_q - mu_p||^2`` (summed over the ``d`` coordinates).
        sigma2: the second Gaussian's variance.
        dim: ``d`` (1 for elementwise terms).
    """
    return 0.5 * (dim * (ratio - 1.0 - torch.log(ratio)) + mean_square / sigma2)


def gaussian_nll(var: Tensor, square_error: Tensor, dim: int | Tensor = 1) -> Tensor:
    """``-log N(x; mu, var I_d)`` in nats from ``||x - mu||^2`` (``square_error``):
    ``1/2 [d log(2 pi var) + ||x - mu||^2 / var]``."""
    return 0.5 * (dim * torch.log(2.0 * math.pi * var) + square_error / var)


class VPGaussian:
    """Variance-preserving Gaussian process with epsilon prediction.

    ``x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps`` (Ho et al. 2020, eq. 4). Its reverse steps
    estimate ``x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps_hat) / sqrt(alpha_bar_t)`` from the network and then
    take the ancestral step (:meth:`reverse_step`, Ho et al. algorithm 2) or the DDIM step (:meth:`ddim_step`,
    Song, Meng & Ermon 2021, arXiv:2010.02502, eq. 12).

    Args:
        timesteps: T.
        schedule: ``"cosine"`` or ``"linear"``.
        clip: bound on ``|x0_hat|`` in reverse steps (``None``: none). Near ``t = T`` the cosine schedule's
            ``alpha_bar`` is tiny and ``x0_hat = (x_t - sqrt(1 - a) eps_hat) / sqrt(a)`` magnifies the
            network's errors; clipping to the data's range keeps them from surviving as absurd values (Ho et
            al. 2020 clip images to ``[-1, 1]`` the same way).
    """

    prediction_type = "eps"
    #: Reverse-step variances of Ho et al. (2020), section 3.2: ``beta_tilde`` (the posterior's) or ``beta``.
    variances = ("posterior", "beta")

    def __init__(self, timesteps: int = 1000, schedule: str = "cosine", clip: float | None = None) -> None:
        if clip is not None and clip <= 0:
            raise ValueError(f"clip must be > 0 or null, got {clip}")
        self.clip = None if clip is None else float(clip)
        alpha_bars = alpha_bars_for(schedule, timesteps)
        self.timesteps = int(timesteps)
        #: ``alpha_bar_t`` for ``t = 0..T`` (``alpha_bar_0 = 1``), float64: the coefficients of the analytic
        #: variances and the ELBO terms, formed before any rounding.
        self.alpha_bars64 = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bars])
        #: ``alpha_bar_t`` for ``t = 0..T`` (``alpha_bar_0 = 1``), float32.
        self.alpha_bars = self.alpha_bars64.to(torch.float32)

    def prior(self, shape: Sequence[int], generator: torch.Generator | None, device: torch.device) -> Tensor:
        return _draw(torch.randn, shape, generator, device)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        a = _per_sample(self.alpha_bars, t, x0)
        return a.sqrt() * x0 + (1.0 - a).sqrt() * noise

    def target(self, noise: Tensor, t: Tensor) -> Tensor:
        return noise

    def epsilon(self, pred: Tensor) -> Tensor:
        """The epsilon prediction within the network's output for this field (all of it here)."""
        return pred

    def _x0(self, x_t: Tensor, pred: Tensor, a_t: Tensor, clip: bool) -> Tensor:
        """``x0_hat`` from the epsilon prediction, clipped to ``[-clip, clip]`` when asked and bounded."""
        x0 = (x_t - (1.0 - a_t).sqrt() * pred) / a_t.sqrt()
        if clip and self.clip is not None:
            x0 = x0.clamp(-self.clip, self.clip)
        return x0

    def reverse_step(
        self, x_t: Tensor, pred: Tensor, t: Tensor, s: Tensor, noise: Tensor | None,
        variance: str = "posterior", clip: bool = True,
    ) -> Tensor:
        """Ancestral step ``t -> s``: the mean of the posterior ``q(x_s | x_t, x0_hat)`` plus ``sigma noise``
        (none at ``s = 0``, nor when ``noise`` is None).

        Args:
            x_t: the current values.
            pred: the network's epsilon at ``t``.
            t: current steps ``[B]`` (1-based).
            s: target steps ``[B]``, ``0 <= s < t`` (any earlier step: respacing-safe).
            noise: standard normal of ``x_t``'s shape, or None for the mean.
            variance: ``"posterior"`` (``sigma^2 = beta_tilde``) or ``"beta"`` (``sigma^2 = beta``), with
                ``beta = 1 - alpha_bar_t / alpha_bar_s`` the step's own.
            clip: clip ``x0_hat`` to the process's bound (False: never clip).
        """
        if variance not in self.variances:
            raise ValueError(f"variance must be one of {self.variances}, got {variance!r}")
        a_t, a_s = _per_sample(self.alpha_bars, t, x_t), _per_sample(self.alpha_bars, s, x_t)
        x0 = self._x0(x_t, pred, a_t, clip)
        beta = 1.0 - a_t / a_s
        mean = a_s.sqrt() * beta / (1.0 - a_t) * x0 + (1.0 - beta).sqrt() * (1.0 - a_s) / (1.0 - a_t) * x_t
        if noise is None:
            return mean
        if variance == "posterior":
            var = beta * (1.0 - a_s) / (1.0 - a_t)  # 0 when s = 0, since alpha_bar_0 = 1
        else:
            var = beta * (s > 0).view(-1, *([1] * (x_t.dim() - 1))).to(beta.dtype)
        return mean + var.sqrt() * noise

    def ddim_step(
        self, x_t: Tensor, pred: Tensor, t: Tensor, s: Tensor, noise: Tensor | None, eta: float = 0.0,
        clip: bool = True,
    ) -> Tensor:
        """DDIM step ``t -> s`` (Song et al. 2021, eq. 12): ``sqrt(alpha_bar_s) x0_hat
        + sqrt(1 - alpha_bar_s - sigma^2) eps_hat + sigma noise`` with ``sigma = eta sqrt(beta_tilde)``.

        ``eps_hat`` is recomputed from the clipped ``x0_hat`` so the two stay consistent. At ``s = 0`` the
        step returns ``x0_hat``; ``eta = 0`` (or ``noise=None``) is deterministic, ``eta = 1`` has the
        posterior's variance.
        """
        a_t, a_s = _per_sample(self.alpha_bars, t, x_t), _per_sample(self.alpha_bars, s, x_t)
        x0 = self._x0(x_t, pred, a_t, clip)
        eps = pred if not clip or self.clip is None else (x_t - a_t.sqrt() * x0) / (1.0 - a_t).sqrt()
        sigma = eta * ((1.0 - a_s) / (1.0 - a_t) * (1.0 - a_t / a_s)).sqrt()
        x = a_s.sqrt() * x0 + (1.0 - a_s - sigma**2).clamp_min(0.0).sqrt() * eps
        if noise is None:
            return x
        return x + sigma * noise

    def denoise(self, x_t: Tensor, pred: Tensor, t: Tensor, clip: bool = True) -> Tensor:
        """``x0_hat`` at steps ``t`` ``[B]`` from the epsilon prediction ``pred`` (clipped to the process's
        bound when ``clip``), as every reverse step forms it."""
        return self._x0(x_t, pred, _per_sample(self.alpha_bars, t, x_t), clip)

    def analytic_variance(
        self, t: int | Tensor, s: int | Tensor, gamma: float | Tensor, eta: float = 1.0
    ) -> Tensor:
        """Analytic-DPM's optimal variance of the reverse step ``t -> s`` (float64).

        Bao, Li, Zhu & Zhang (2022), "Analytic-DPM: an Analytic Estimate of the Optimal Reverse Variance in
        Diffusion Probabilistic Models", ICLR, arXiv:2201.06503, theorem 1 written between any two steps
        ``s < t`` (as the paper does for shorter trajectories): with ``lambda^2 = eta^2 beta_tilde`` the
        variance of the forward family ``q_lambda(x_s | x_t, x0)`` (``eta = 1``: DDPM's posterior,
        ``eta = 0``: DDIM),

        ``sigma*^2 = lambda^2 + c^2 (1 - alpha_bar_t) / alpha_bar_t (1 - Gamma_t)``,
        ``c = sqrt(alpha_bar_s) - sqrt(1 - alpha_bar_s - lambda^2) sqrt(alpha_bar_t / (1 - alpha_bar_t))``,

        where ``Gamma_t = E ||eps_theta(x_t, t)||^2 / d`` and ``c`` is the weight of ``x0`` in the step's
        mean, so the second term is ``c^2`` times the mean posterior variance of ``x0`` per coordinate. That
        variance is clipped into the bounds of their section 4: at least 0 (``sigma*^2 >= lambda^2``), at most
        ``(1 - alpha_bar_t) / alpha_bar_t`` and, for data in ``[-clip, clip]``, at most ``clip^2`` (the
        process's ``x0_hat`` bound).

        Args:
            t: current step(s), ``1..T``.
            s: target step(s), ``0 <= s < t``.
            gamma: ``Gamma_t``, the mean square of the network's epsilon per coordinate at ``t``.
            eta: the forward family's ``lambda / sqrt(beta_tilde)``, ``>= 0``.
        """
        a_t = self.alpha_bars64[torch.as_tensor(t)]
        a_s = self.alpha_bars64[torch.as_tensor(s)]
        gamma = torch.as_tensor(gamma, dtype=torch.float64)
        lam2 = eta**2 * (1.0 - a_s) / (1.0 - a_t) * (1.0 - a_t / a_s)
        c = a_s.sqrt() - (1.0 - a_s - lam2).clamp_min(0.0).sqrt() * (a_t / (1.0 - a_t)).sqrt()
        upper = (1.0 - a_t) / a_t
        if self.clip is not None:
            upper = upper.clamp(max=self.clip**2)
        cov = torch.minimum(((1.0 - a_t) / a_t * (1.0 - gamma)).clamp_min(0.0), upper)
        return lam2 + c**2 * cov

    def analytic_step(
        self, x_t: Tensor, pred: Tensor, t: Tensor, s: Tensor, noise: Tensor | None, variance: Tensor,
        eta: float = 1.0, clip: bool = True,
    ) -> Tensor:
        """Analytic-DPM step ``t -> s``: the mean of ``q_lambda(x_s | x_t, x0_hat)`` (:meth:`ddim_step` with
        ``eta``; ``eta = 1`` is the ancestral posterior mean) plus ``sqrt(variance) noise``, with ``variance``
        the step's :meth:`analytic_variance` (scalar or ``[B]``). ``noise=None``: the mean."""
        mean = self.ddim_step(x_t, pred, t, s, None, eta=eta, clip=clip)
        if noise is None:
            return mean
        var = torch.as_tensor(variance, dtype=torch.float64).to(x_t.device).reshape(-1)
        return mean + var.to(x_t.dtype).sqrt().view(-1, *([1] * (x_t.dim() - 1))) * noise

    def transition_costs(self, x0_mse: Tensor, dim: int, variance: str = "posterior") -> Tensor:
        """The ELBO's term of every reverse transition ``t -> s`` for this field, ``L[t, s]`` (float64
        ``[T + 1, T + 1]``, in nats; ``inf`` where ``s >= t``).

        Watson, Ho, Norouzi & Chan (2021), "Learning to Efficiently Sample from Diffusion Models",
        arXiv:2106.03802: a path ``0 = t_0 < ... < t_K = T`` has the negative ELBO
        ``L_prior + sum_k L(t_k, t_{k-1})`` with ``L(t, s) = E KL(q(x_s | x_t, x0) || p(x_s | x_t))`` for
        ``s > 0`` and ``L(t, 0) = -E log p(x0 | x_t)``. Here ``p(x_s | x_t)`` is the reverse step
        ``N(mean of q(x_s | x_t, x0_hat), sigma^2)``; its mean differs from the posterior's only by
        ``c (x0 - x0_hat)`` with ``c = sqrt(alpha_bar_s) beta / (1 - alpha_bar_t)``,
        ``beta = 1 - alpha_bar_t / alpha_bar_s``, so every term of one ``t`` comes from one number,
        ``x0_mse[t] = E ||x0 - x0_hat(x_t, t)||^2``:

        ``L(t, s) = 1/2 [d (r - 1 - log r) + c^2 x0_mse[t] / sigma^2]``, ``r = beta_tilde / sigma^2``;

        with ``sigma^2 = beta_tilde`` (``variance="posterior"``) this is
        ``1/2 (SNR_s - SNR_t) x0_mse[t]``, ``SNR = alpha_bar / (1 - alpha_bar)``. The decoder ``p(x0 | x_t)``
        is ``N(x0_hat, (1 - alpha_bar_t) I)``, Ho et al.'s ``sigma^2 = beta`` (the posterior's variance
        vanishes at ``s = 0``): ``L(t, 0) = 1/2 [d log(2 pi (1 - alpha_bar_t)) + x0_mse[t] / (1 -
        alpha_bar_t)]``.

        Args:
            x0_mse: ``E ||x0 - x0_hat||^2`` (summed over the field's ``dim`` coordinates) at ``t = 0..T``
                (entry 0 unused).
            dim: ``d``, the field's coordinates per sample.
            variance: the reverse steps' ``sigma^2``: ``"posterior"`` (``beta_tilde``) or ``"beta"``.
        """
        if variance not in self.variances:
            raise ValueError(f"variance must be one of {self.variances}, got {variance!r}")
        mse = torch.as_tensor(x0_mse, dtype=torch.float64).reshape(-1, 1)
        if mse.shape[0] != self.timesteps + 1:
            raise ValueError(f"x0_mse needs T + 1 = {self.timesteps + 1} entries, got {mse.shape[0]}")
        a_t, a_s = self.alpha_bars64.reshape(-1, 1), self.alpha_bars64.reshape(1, -1)
        steps = torch.arange(self.timesteps + 1)
        valid = steps.reshape(1, -1) < steps.reshape(-1, 1)  # s < t
        a_s = torch.where(valid, a_s, torch.full_like(a_s, 0.5))  # keeps the unused entries finite
        a_t = torch.where(valid, a_t, torch.full_like(a_t, 0.25))
        beta = 1.0 - a_t / a_s
        posterior = (1.0 - a_s) / (1.0 - a_t) * beta
        sigma2 = posterior if variance == "posterior" else beta
        ratio = (1.0 - a_s) / (1.0 - a_t) if variance == "beta" else torch.ones_like(beta)
        c2 = a_s * beta**2 / (1.0 - a_t) ** 2
        kl = gaussian_kl(ratio, c2 * mse, sigma2, dim)
        decoder = gaussian_nll(1.0 - a_t[:, :1], mse, dim)
        costs = torch.where(valid, kl, torch.full_like(kl, math.inf))
        costs[1:, 0] = decoder[1:, 0]
        return costs

    def corrector_step(self, x_t: Tensor, pred: Tensor, t: Tensor, noise: Tensor, step_lr: float) -> Tensor:
        """No corrector for this field: unchanged."""
        return x_t


class LearnedVarianceVPGaussian(VPGaussian):
    """:class:`VPGaussian` whose reverse steps can take the variances the network learns.

    Nichol & Dhariwal (2021), "Improved Denoising Diffusion Probabilistic Models", ICML, arXiv:2102.09672,
    section 3.1. The network's output for the field is ``[eps, v]`` concatenated on the last dimension
    (twice the field's width; ``prediction_type = "eps_v"``): epsilon as for :class:`VPGaussian`, and per
    coordinate an unconstrained weight ``v`` of the reverse variance (their eq. 15)

    ``Sigma(t -> s) = exp(v log beta + (1 - v) log beta_tilde)``,
    ``beta = 1 - alpha_bar_t / alpha_bar_s``, ``beta_tilde = (1 - alpha_bar_s) / (1 - alpha_bar_t) beta``,

    so ``v = 0`` is the posterior variance, ``v = 1`` is ``beta``. Between any two steps ``s < t`` these are
    the respaced betas of their section 4, so a shortened trajectory uses the same ``v`` with its own step's
    ``beta`` and ``beta_tilde``. At ``s = 0`` the posterior variance is 0; as the authors' code clips its log,
    ``log beta_tilde`` is there replaced by that of the chain's step ``2 -> 1`` (only the decoder of the bound
    uses it: samplers add no noise on the step to ``x_0``).

    ``reverse_step(..., variance="learned")`` is the ancestral step with ``Sigma``; every other method reads
    the epsilon half only, so the DDIM, Analytic-DPM and fixed-variance ancestral steps, the ELBO table of
    the DP sampler and the Monte Carlo moments apply unchanged. :meth:`vlb_term` and :meth:`prior_kl` are the
    terms of the variational bound (their eqs. 4-7).

    Args:
        timesteps: T (at least 2).
        schedule: ``"cosine"`` or ``"linear"``.
        clip: bound on ``|x0_hat|`` (as :class:`VPGaussian`).
    """

    prediction_type = "eps_v"
    #: ``"learned"`` (eq. 15) or the fixed variances of :class:`VPGaussian`.
    variances = ("learned", "posterior", "beta")

    def __init__(self, timesteps: int = 1000, schedule: str = "cosine", clip: float | None = None) -> None:
        if timesteps < 2:
            raise ValueError(f"learned variances need timesteps >= 2 (the clipped beta_tilde of step 1 is "
                             f"that of step 2), got {timesteps}")
        super().__init__(timesteps, schedule, clip)

    # ------------------------------------------------------------------ the network's output
    @staticmethod
    def split(pred: Tensor) -> tuple[Tensor, Tensor]:
        """``(eps, v)`` from the network's ``[..., 2 d]`` output."""
        if pred.shape[-1] % 2:
            raise ValueError(
                "a learned-variance field needs [eps, v] (an even last dimension), got shape "
                f"{tuple(pred.shape)}"
            )
        eps, v = pred.chunk(2, dim=-1)
        return eps, v

    @staticmethod
    def join(eps: Tensor, v: Tensor) -> Tensor:
        """The network's output ``[eps, v]`` from its halves (inverse of :meth:`split`)."""
        return torch.cat([eps, v], dim=-1)

    def epsilon(self, pred: Tensor) -> Tensor:
        return self.split(pred)[0]

    # ------------------------------------------------------------------ variances
    def log_beta_pair(self, t: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """``(log beta, log beta_tilde)`` of the steps ``t -> s`` ``[B]`` (float64, on ``t``'s device), with
        ``beta_tilde`` of ``s = 0`` replaced by that of the step ``2 -> 1``."""
        a = self.alpha_bars64
        t_cpu, s_cpu = t.detach().cpu().long(), s.detach().cpu().long()
        if bool((s_cpu >= t_cpu).any()) or bool((s_cpu < 0).any()) or bool((t_cpu > self.timesteps).any()):
            raise ValueError(f"need 0 <= s < t <= {self.timesteps}")
        a_t, a_s = a[t_cpu], a[s_cpu]
        log_beta = torch.log1p(-a_t / a_s)
        log_tilde = torch.log1p(-a_s) - torch.log1p(-a_t) + log_beta
        floor = torch.log1p(-a[1]) - torch.log1p(-a[2]) + torch.log1p(-a[2] / a[1])
        log_tilde = torch.where(s_cpu == 0, floor, log_tilde)
        return log_beta.to(t.device), log_tilde.to(t.device)

    def log_variance(self, v: Tensor, t: Tensor, s: Tensor) -> Tensor:
        """``log Sigma = v log beta + (1 - v) log beta_tilde`` of the steps ``t -> s`` ``[B]`` (eq. 15), in
        ``v``'s dtype and shape."""
        log_beta, log_tilde = self.log_beta_pair(t, s)
        shape = (-1, *([1] * (v.dim() - 1)))
        log_beta = log_beta.view(shape).to(v.dtype)
        log_tilde = log_tilde.view(shape).to(v.dtype)
        return v * log_beta + (1.0 - v) * log_tilde

    # ------------------------------------------------------------------ steps
    def reverse_step(
        self, x_t: Tensor, pred: Tensor, t: Tensor, s: Tensor, noise: Tensor | None,
        variance: str = "posterior", clip: bool = True,
    ) -> Tensor:
        """Ancestral step ``t -> s``: the posterior mean of :meth:`VPGaussian.reverse_step` plus
        ``sqrt(Sigma) noise``, with ``Sigma`` the learned variance (``variance="learned"``) or a fixed one
        (``"posterior"``, the default as for :class:`VPGaussian`, so a sampler asks for the learned one by
        name, or ``"beta"``)."""
        if variance not in self.variances:
            raise ValueError(f"variance must be one of {self.variances}, got {variance!r}")
        eps, v = self.split(pred)
        if variance != "learned":
            return super().reverse_step(x_t, eps, t, s, noise, variance=variance, clip=clip)
        mean = super().reverse_step(x_t, eps, t, s, None, clip=clip)
        if noise is None:
            return mean
        return mean + torch.exp(0.5 * self.log_variance(v, t, s)) * noise

    def ddim_step(
        self, x_t: Tensor, pred: Tensor, t: Tensor, s: Tensor, noise: Tensor | None, eta: float = 0.0,
        clip: bool = True,
    ) -> Tensor:
        """:meth:`VPGaussian.ddim_step` on the epsilon half (also Analytic-DPM's mean)."""
        return super().ddim_step(x_t, self.epsilon(pred), t, s, noise, eta=eta, clip=clip)

    def denoise(self, x_t: Tensor, pred: Tensor, t: Tensor, clip: bool = True) -> Tensor:
        """:meth:`VPGaussian.denoise` on the epsilon half."""
        return super().denoise(x_t, self.epsilon(pred), t, clip)

    def transition_costs(self, x0_mse: Tensor, dim: int, variance: str = "posterior") -> Tensor:
        """:meth:`VPGaussian.transition_costs` for a fixed variance (``"posterior"`` or ``"beta"``). The
        learned variances depend on ``x_t``, so one number per step does not give their terms: ``"learned"``
        is refused."""
        if variance == "learned":
            raise ValueError("the ELBO table needs a fixed variance ('posterior' or 'beta'), not 'learned'")
        return super().transition_costs(x0_mse, dim, variance)

    # ------------------------------------------------------------------ the variational bound
    def vlb_term(
        self, x0: Tensor, x_t: Tensor, pred: Tensor, t: Tensor, clip: bool = False, decoder: str = "gaussian"
    ) -> Tensor:
        """The bound's term ``L_{t-1}`` of each sample ``[B]`` (float64, nats, summed over the field's
        coordinates) at steps ``t`` ``[B]`` in ``1..T`` (Nichol & Dhariwal, eqs. 5-6).

        For ``t >= 2``: ``KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t))`` of two diagonal Gaussians, the
        posterior (variance ``beta_tilde``) and the model's step (the posterior mean at ``x0_hat``, variance
        ``Sigma``): :func:`gaussian_kl` per coordinate, the means differing by ``c (x0 - x0_hat)`` with
        ``c = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t)`` (as :meth:`VPGaussian.transition_costs`).
        For ``t = 1``: the decoder's ``-log p(x0 | x_1)``, its mean ``x0_hat`` and variance ``Sigma(1 -> 0)``:

        - ``"gaussian"``: the density ``N(x0; x0_hat, Sigma)`` (:func:`gaussian_nll`), for continuous values;
        - ``"categorical"``: for a one-hot scaled to ``{-1, +1}`` on the last dimension, the same Gaussian
          normalised over the one-hot vertices, ``p(k) = softmax_k(2 x0_hat_k / Sigma_k)`` (the Gaussian's
          log-density at vertex ``k`` is that plus a constant), a probability of the class.

        Args:
            x0: clean values (a categorical field: one-hots scaled to ``{-1, +1}``).
            x_t: ``q_sample(x0, t, noise)``.
            pred: the network's ``[eps, v]`` at ``x_t``; detach its epsilon half for the paper's
                stop-gradient on the mean.
            t: steps ``[B]``.
            clip: clip ``x0_hat`` to the process's bound (False: the network's own mean, as in training).
            decoder: ``"gaussian"`` or ``"categorical"``.
        """
        if decoder not in ("gaussian", "categorical"):
            raise ValueError(f"decoder must be 'gaussian' or 'categorical', got {decoder!r}")
        eps, v = self.split(pred)
        x0_hat = super().denoise(x_t, eps, t, clip).double()
        x0, v = x0.double(), v.double()
        s = t - 1
        shape = (-1, *([1] * (x0.dim() - 1)))
        a_t = self.alpha_bars64.to(x0.device)[t].view(shape)
        a_s = self.alpha_bars64.to(x0.device)[s].view(shape)
        log_sigma2 = self.log_variance(v, t, s)
        sigma2 = torch.exp(log_sigma2)
        _, log_tilde = self.log_beta_pair(t, s)
        ratio = torch.exp(log_tilde.view(shape) - log_sigma2)
        c = a_s.sqrt() * (1.0 - a_t / a_s) / (1.0 - a_t)
        square = (x0 - x0_hat) ** 2
        kl = gaussian_kl(ratio, c**2 * square, sigma2).flatten(1).sum(1)
        if decoder == "gaussian":
            nll = gaussian_nll(sigma2, square).flatten(1).sum(1)
        else:
            logp = torch.log_softmax(2.0 * x0_hat / sigma2, dim=-1)
            nll = -logp.gather(-1, x0.argmax(dim=-1, keepdim=True)).flatten(1).sum(1)
        return torch.where(t.to(kl.device) == 1, nll, kl)

    def prior_kl(self, x0: Tensor) -> Tensor:
        """``L_T = KL(q(x_T | x0) || N(0, I))`` of each sample ``[B]`` (float64, nats; no parameters)."""
        x0 = x0.double()
        a = self.alpha_bars64[self.timesteps].to(x0.device)
        ratio = (1.0 - a).expand_as(x0)
        return gaussian_kl(ratio, a * x0**2, torch.ones_like(x0)).flatten(1).sum(1)


def wrapped_normal_score(x: Tensor, sigma: Tensor, images: int = 10) -> Tensor:
    """``d/dx log sum_k N(x + k; 0, sigma^2)``: the score of the wrapped normal on the unit circle.

    Args:
        x: displacements (any reals; periodic with period 1).
        sigma: standard deviations, broadcastable to ``x``.
        images: ``k = -images..images`` periodic images are summed.
    """
    k = torch.arange(-images, images + 1, device=x.device, dtype=x.dtype)
    shifted = x.unsqueeze(-1) + k
    s2 = (sigma**2).unsqueeze(-1)
    logits = -(shifted**2) / (2.0 * s2)
    weights = torch.softmax(logits, dim=-1)
    return -(weights * shifted).sum(-1) / s2.squeeze(-1)


def wrapped_score_norm(sigmas: Tensor, points: int = 2001, images: int = 5) -> Tensor:
    """``E_x[score(x; sigma)^2]`` under the wrapped normal itself, for each ``sigma``, by quadrature
    (deterministic).

    The grid covers one period, or ``+-10 sigma`` when that is narrower (the rest of the mass is below 1e-22);
    ``images = 5`` is exact to float64 precision for ``sigma <= 1``.
    """
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1)
    out = []
    for chunk in sigmas.split(128):
        sig = chunk.unsqueeze(1)
        x = torch.linspace(-1.0, 1.0, points, dtype=torch.float64)[:-1] * torch.clamp(10.0 * sig, max=0.5)
        k = torch.arange(-images, images + 1, dtype=torch.float64)
        density = torch.exp(-((x.unsqueeze(-1) + k) ** 2) / (2 * sig.unsqueeze(-1) ** 2)).sum(-1)
        score = wrapped_normal_score(x, sig, images)
        out.append((score**2 * density).sum(-1) / density.sum(-1))
    return torch.cat(out)


def _sigmas(timesteps: int, sigma_min: float, sigma_max: float) -> Tensor:
    """Geometric ``sigma_1..sigma_T`` (float64)."""
    return torch.exp(torch.linspace(math.log(sigma_min), math.log(sigma_max), timesteps, dtype=torch.float64))


@functools.lru_cache(maxsize=8)
def _score_norms(timesteps: int, sigma_min: float, sigma_max: float) -> Tensor:
    """``E[score^2]`` for ``t = 0..T`` (1 at ``t = 0``), computed once per schedule."""
    norms = wrapped_score_norm(_sigmas(timesteps, sigma_min, sigma_max))
    return torch.cat([torch.ones(1, dtype=torch.float64), norms]).to(torch.float32)


class WrappedNormalVE:
    """Variance-exploding wrapped normal on the torus, with DiffCSP's normalised score as the regression
    target.

    ``sigma_t`` is geometric from ``sigma_min`` (``t = 1``) to ``sigma_max`` (``t = T``), ``sigma_0 = 0``. The
    network predicts ``-score(x_t - x0; sigma_t) / sqrt(E[score^2])``, a unit-scale target at every ``t`` (the
    score of a narrow wrapped normal is ``-(x_t - x0) / sigma^2``, so the target is ``eps`` when ``sigma`` is
    small).

    Args:
        timesteps: T.
        sigma_min: ``sigma_1`` (DiffCSP: 0.005).
        sigma_max: ``sigma_T`` (DiffCSP: 0.5).
    """

    prediction_type = "score"

    def __init__(self, timesteps: int = 1000, sigma_min: float = 0.005, sigma_max: float = 0.5) -> None:
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.timesteps = int(timesteps)
        #: ``sigma_t`` for ``t = 0..T`` (``sigma_0 = 0``).
        self.sigmas = torch.cat(
            [torch.zeros(1, dtype=torch.float64), _sigmas(timesteps, sigma_min, sigma_max)]
        ).to(torch.float32)
        #: ``E[score^2]`` at each ``t`` (1 at ``t = 0``, unused).
        self.score_norms = _score_norms(self.timesteps, float(sigma_min), float(sigma_max)).clone()

    def prior(self, shape: Sequence[int], generator: torch.Generator | None, device: torch.device) -> Tensor:
        """Uniform on the torus (the wrapped normal with ``sigma_max = 0.5`` is within 1e-4 of it)."""
        return _draw(torch.rand, shape, generator, device)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        return torch.remainder(x0 + _per_sample(self.sigmas, t, x0) * noise, 1.0)

    def target(self, noise: Tensor, t: Tensor) -> Tensor:
        sigma = _per_sample(self.sigmas, t, noise)
        return -wrapped_normal_score(sigma * noise, sigma) / _per_sample(self.score_norms, t, noise).sqrt()

    def _score(self, pred: Tensor, t: Tensor) -> Tensor:
        return -pred * _per_sample(self.score_norms, t, pred).sqrt()

    def reverse_step(self, x_t: Tensor, pred: Tensor, t: Tensor, s: Tensor, noise: Tensor | None) -> Tensor:
        """Reverse VE step ``sigma_t -> sigma_s``: ``x + (sigma_t^2 - sigma_s^2) score + std z``, wrapped."""
        s_t, s_s = _per_sample(self.sigmas, t, x_t), _per_sample(self.sigmas, s, x_t)
        step = s_t**2 - s_s**2
        x = x_t + step * self._score(pred, t)
        if noise is not None:
            x = x + (s_s**2 * step / s_t**2).sqrt() * noise
        return torch.remainder(x, 1.0)

    def corrector_step(self, x_t: Tensor, pred: Tensor, t: Tensor, noise: Tensor, step_lr: float) -> Tensor:
        """Langevin step at ``sigma_t`` with step ``step_lr (sigma_t / sigma_1)^2`` (DiffCSP's corrector),
        wrapped."""
        ratio = _per_sample(self.sigmas, t, x_t) / self.sigmas[1]
        step = step_lr * ratio**2
        return torch.remainder(x_t + step * self._score(pred, t) + (2.0 * step).sqrt() * noise, 1.0)


_CATEGORICAL_KINDS = ("uniform", "absorbing")


def categorical_betas(kind: str, schedule: str, timesteps: int) -> Tensor:
    """``beta_t`` for ``t = 1..T`` (float64) of a categorical chain: the probability that a step re-draws the
    state from the stationary distribution.

    Austin et al. (2021), section 3.4:

    - ``"cosine"``: the cumulative probability of keeping the state is a cosine,
      ``alpha_bar_t ~ cos((t/T + s) / (1 + s) * pi/2)`` with ``s = 0.008``, ``beta_t = 1 - alpha_bar_t /
      alpha_bar_{t-1}`` clipped at 0.999: Hoogeboom et al.'s schedule for multinomial diffusion, used by the
      D3PM authors for their uniform chain (their released code takes the cosine itself, not its square as
      Nichol & Dhariwal do for Gaussians);
    - ``"mutual_information"``: the mutual information between ``x_t`` and ``x0`` falls linearly to zero; for
      the absorbing chain this is exactly ``beta_t = 1 / (T - t + 1)`` (Sohl-Dickstein et al. 2015), so
      ``alpha_bar_t = 1 - t/T``. For the uniform chain it has no closed form and is not offered.

    Raises:
        ValueError: an unknown kind or schedule, or ``mutual_information`` for the uniform chain.
    """
    if kind not in _CATEGORICAL_KINDS:
        raise ValueError(f"kind must be one of {_CATEGORICAL_KINDS}, got {kind!r}")
    if timesteps < 1:
        raise ValueError(f"timesteps must be >= 1, got {timesteps}")
    steps = torch.arange(timesteps + 1, dtype=torch.float64)
    if schedule == "cosine":
        f = torch.cos((steps / timesteps + 0.008) / 1.008 * math.pi / 2.0)
        return (1.0 - f[1:] / f[:-1]).clamp(max=0.999)
    if schedule == "mutual_information":
        if kind != "absorbing":
            raise ValueError(
                "the mutual-information schedule has a closed form only for the absorbing chain "
                "(beta_t = 1/(T - t + 1)); use schedule: cosine for kind: uniform"
            )
        return 1.0 / (timesteps - steps[1:] + 1.0)
    raise ValueError(f"schedule must be 'cosine' or 'mutual_information', got {schedule!r}")


def _gumbel_argmax(logp: Tensor, noise: Tensor | None) -> Tensor:
    """Indices drawn from ``Cat(softmax(logp))`` by the Gumbel-max trick, with the uniforms taken from
    standard normal ``noise`` through the normal CDF (``Phi(z)`` is uniform when ``z`` is standard normal), so
    a categorical field draws from the same normal noise as every other field; ``noise=None``: the mode.

    ``-log(-log Phi(z))`` is computed as ``-log(-log_ndtr(z))``, finite for any ``z`` a float32 normal draw
    reaches; entries with ``logp = -inf`` are never drawn.
    """
    if noise is None:
        return logp.argmax(dim=-1)
    neg_log_u = (-torch.special.log_ndtr(noise.to(logp.dtype))).clamp_min(torch.finfo(logp.dtype).tiny)
    return (logp - torch.log(neg_log_u)).argmax(dim=-1)


class Categorical:
    """A discrete diffusion of one-hot states: D3PM (Austin et al. 2021, arXiv:2107.03006) with the uniform or
    the absorbing transition matrices.

    Both chains step as ``Q_t = (1 - beta_t) I + beta_t 1 pi^T`` (their section 3.1 and appendix A.2), with
    ``pi`` the stationary distribution: uniform over the K classes (``kind="uniform"``), or all mass on an
    extra [MASK] state, index K (``kind="absorbing"``, ``K + 1`` states). Products of such matrices keep the
    form, ``Q(a) Q(b) = Q(ab)`` with ``Q(a) = a I + (1 - a) 1 pi^T``, so ``Q_bar_t = Q(alpha_bar_t)`` and the
    steps between any ``s < t`` are ``Q(alpha_bar_t / alpha_bar_s)``: every quantity below is computed in
    closed form (the dense matrices are :meth:`transition_matrix`, :meth:`cumulative_matrix`), and respaced
    reverse steps are exact.

    A state is a one-hot row over the ``S`` states (``S = K``, or ``K + 1`` with [MASK]); a row of zeros is an
    empty slot: every method carries it through unchanged, and it adds nothing to the loss. The network reads
    :meth:`network_input` (the K element channels; [MASK] is the zero vector there) and emits K logits of
    ``p(x0 | x_t)`` (``prediction_type = "x0_logits"``).

    Args:
        timesteps: T.
        kind: ``"absorbing"`` or ``"uniform"``.
        schedule: ``"mutual_information"`` (``beta_t = 1/(T - t + 1)``, absorbing only) or ``"cosine"``;
            ``None``: the paper's choice for the kind (absorbing: mutual information; uniform: cosine).
        ce_weight: lambda of the hybrid loss ``L_vb + lambda L_CE`` (section 3.4; the paper uses 0.01 on
            text, 0.001 on images).
    """

    prediction_type = "x0_logits"

    def __init__(
        self, timesteps: int = 1000, kind: str = "absorbing", schedule: str | None = None,
        ce_weight: float = 0.01,
    ) -> None:
        if kind not in _CATEGORICAL_KINDS:
            raise ValueError(f"kind must be one of {_CATEGORICAL_KINDS}, got {kind!r}")
        if ce_weight < 0:
            raise ValueError(f"ce_weight must be >= 0, got {ce_weight}")
        self.kind = kind
        self.schedule = schedule or ("mutual_information" if kind == "absorbing" else "cosine")
        self.timesteps = int(timesteps)
        self.ce_weight = float(ce_weight)
        betas = categorical_betas(kind, self.schedule, self.timesteps)
        zero = torch.zeros(1, dtype=torch.float64)
        #: ``beta_t`` for ``t = 0..T`` (``beta_0 = 0``), float64.
        self.betas = torch.cat([zero, betas])
        #: ``alpha_bar_t = prod_{s <= t} (1 - beta_s)`` for ``t = 0..T`` (``alpha_bar_0 = 1``), float64: the
        #: probability that a state has not been re-drawn by step ``t``.
        self.alpha_bars = torch.cumprod(1.0 - self.betas, dim=0)

    # ------------------------------------------------------------------ states
    @property
    def absorbing(self) -> bool:
        return self.kind == "absorbing"

    def num_states(self, num_classes: int) -> int:
        """``S``: the K classes, plus [MASK] for the absorbing chain."""
        return num_classes + int(self.absorbing)

    def num_classes(self, num_states: int) -> int:
        """``K`` from the width ``S`` of a state."""
        return num_states - int(self.absorbing)

    def states(self, onehot: Tensor) -> Tensor:
        """One-hot rows over the K classes (zero rows: empty slots) as states (with a zero [MASK]
        channel)."""
        if not self.absorbing:
            return onehot
        return torch.cat([onehot, torch.zeros_like(onehot[..., :1])], dim=-1)

    def network_input(self, x: Tensor) -> Tensor:
        """The K element channels of states ``x``: an element is its one-hot, [MASK] the zero vector (the
        network tells it from an empty slot by the atom mask it is given)."""
        return x[..., : self.num_classes(x.shape[-1])]

    def decode(self, x: Tensor) -> Tensor:
        """Scores over the K classes of final states (one-hot; a [MASK] row, which no reverse step to
        ``s = 0`` leaves, would score zero everywhere)."""
        return x[..., : self.num_classes(x.shape[-1])]

    def stationary(self, num_classes: int) -> Tensor:
        """``pi`` over the ``S`` states (float64)."""
        if self.absorbing:
            pi = torch.zeros(num_classes + 1, dtype=torch.float64)
            pi[-1] = 1.0
            return pi
        return torch.full((num_classes,), 1.0 / num_classes, dtype=torch.float64)

    def matrix(self, alpha: float, num_classes: int) -> Tensor:
        """``Q(alpha) = alpha I + (1 - alpha) 1 pi^T`` (``S x S``, float64; rows: from, columns: to)."""
        pi = self.stationary(num_classes)
        eye = torch.eye(pi.numel(), dtype=torch.float64)
        return alpha * eye + (1.0 - alpha) * pi.unsqueeze(0).expand_as(eye)

    def transition_matrix(self, t: int, num_classes: int) -> Tensor:
        """``Q_t``, ``[Q_t]_ij = q(x_t = j | x_{t-1} = i)``, for ``t = 1..T``."""
        if not 1 <= t <= self.timesteps:
            raise ValueError(f"t must be in 1..{self.timesteps}, got {t}")
        return self.matrix(1.0 - float(self.betas[t]), num_classes)

    def cumulative_matrix(self, t: int, num_classes: int) -> Tensor:
        """``Q_bar_t = Q_1 ... Q_t``, ``[Q_bar_t]_ij = q(x_t = j | x0 = i)``, for ``t = 0..T`` (the
        identity at 0)."""
        if not 0 <= t <= self.timesteps:
            raise ValueError(f"t must be in 0..{self.timesteps}, got {t}")
        return self.matrix(float(self.alpha_bars[t]), num_classes)

    # ------------------------------------------------------------------ closed forms
    @staticmethod
    def _present(x: Tensor, fill: int = 0) -> tuple[Tensor, Tensor]:
        """``(present, x_safe)``: which rows hold a state, and ``x`` with empty rows set to state ``fill``, so
        that every log-probability stays finite (and so every gradient; their results are zeroed afterwards).
        A clean ``x0`` is filled with class 0, a noisy ``x_t`` with the last state, which every step can reach
        ([MASK] for the absorbing chain)."""
        present = x.sum(dim=-1, keepdim=True) > 0
        filled = torch.zeros_like(x)
        filled[..., fill] = 1.0
        return present, torch.where(present, x, filled)

    @staticmethod
    def _coef(values: Tensor, like: Tensor) -> Tensor:
        """Per-sample float64 ``values`` ``[B]`` (on the CPU) as ``like``'s dtype and device, shaped to
        broadcast against it. Coefficients are formed in float64 first (``1 - alpha`` is small near
        ``t = 0``)."""
        return values.to(like.dtype).to(like.device).view(-1, *([1] * (like.dim() - 1)))

    def _alpha_bars(self, t: Tensor) -> Tensor:
        """``alpha_bar_t`` (float64, CPU) at steps ``t`` ``[B]``."""
        return self.alpha_bars[t.detach().cpu().long()]

    def _x0_marginal_logp(self, log_p0: Tensor, alpha: Tensor) -> Tensor:
        """``log (p0 Q(alpha))`` over the ``S`` states for distributions ``p0`` over the K classes (given as
        log-probabilities ``[..., K]``, no mass on [MASK]); ``alpha`` ``[B]`` float64.

        In closed form, ``alpha p0 + (1 - alpha) pi``, so no log of a sum that can vanish is differentiated.
        """
        log_a = self._coef(torch.log(alpha), log_p0)
        if self.absorbing:
            mask = self._coef(torch.log1p(-alpha), log_p0).expand(*log_p0.shape[:-1], 1)
            return torch.cat([log_a + log_p0, mask], dim=-1)
        k = log_p0.shape[-1]
        return torch.logaddexp(log_a + log_p0, self._coef(torch.log1p(-alpha) - math.log(k), log_p0))

    def _likelihood_logp(self, x_t: Tensor, alpha: Tensor) -> Tensor:
        """``log q(x_t | x_s = j)`` for every state ``j``, the column of ``Q(alpha)`` at ``x_t`` (one-hot
        ``[..., S]``): ``alpha [x_t = j] + (1 - alpha) pi(x_t)``; ``alpha`` ``[B]`` float64."""
        a, rest = self._coef(alpha, x_t), self._coef(1.0 - alpha, x_t)
        k = self.num_classes(x_t.shape[-1])
        pi_xt = x_t[..., -1:] if self.absorbing else torch.full_like(x_t[..., :1], 1.0 / k)
        return torch.log(a * x_t + rest * pi_xt)

    def _reverse_logits(self, log_p0: Tensor, x_t: Tensor, t: Tensor, s: Tensor) -> Tensor:
        """Unnormalised ``log p(x_s | x_t)`` for ``s < t`` with ``x0 ~ p0``:
        ``log q(x_t | x_s) + log sum_x0 p0(x0) q(x_s | x0)`` (Austin et al., eq. 4:
        ``p(x_s | x_t) ~ sum_x0 q(x_s, x_t | x0) p0(x0)``). With ``p0`` a point mass on ``x0`` it is the
        posterior ``q(x_s | x_t, x0)`` (their eq. 3)."""
        a_t, a_s = self._alpha_bars(t), self._alpha_bars(s)
        return self._likelihood_logp(x_t, a_t / a_s) + self._x0_marginal_logp(log_p0, a_s)

    def _log_onehot(self, x0: Tensor) -> Tensor:
        """log-probabilities over the K classes of one-hot states ``x0`` (0 and -inf)."""
        return torch.log(x0[..., : self.num_classes(x0.shape[-1])])

    # ------------------------------------------------------------------ the process interface
    def prior(self, shape: Sequence[int], generator: torch.Generator | None, device: torch.device) -> Tensor:
        """``x_T``: states drawn uniformly (uniform chain), or all [MASK] (absorbing chain; draws nothing)."""
        if self.absorbing:
            out = torch.zeros(tuple(shape), device=device)
            out[..., -1] = 1.0
            return out
        index = _draw(torch.rand, shape, generator, device).argmax(dim=-1)
        return torch.nn.functional.one_hot(index, shape[-1]).to(torch.float32)

    def q_probs(self, x0: Tensor, t: Tensor) -> Tensor:
        """``q(x_t | x0) = x0 Q_bar_t`` for one-hot ``x0`` ``[B, ..., S]`` at steps ``t`` ``[B]``."""
        present, x0 = self._present(x0)
        logp = self._x0_marginal_logp(self._log_onehot(x0), self._alpha_bars(t))
        return logp.exp() * present

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """``x_t ~ Cat(x0 Q_bar_t)``, drawn by Gumbel-max from standard normal ``noise`` of ``x0``'s shape."""
        present, x0 = self._present(x0)
        logp = self._x0_marginal_logp(self._log_onehot(x0), self._alpha_bars(t))
        index = _gumbel_argmax(logp, noise)
        return torch.nn.functional.one_hot(index, x0.shape[-1]).to(x0.dtype) * present

    def q_step(self, x_prev: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """One forward step, ``x_t ~ Cat(x_{t-1} Q_t)`` (the Markov chain itself; :meth:`q_sample` jumps from
        ``x0``)."""
        present, x_prev = self._present(x_prev)
        beta = self.betas[t.detach().cpu().long()]
        pi = self.stationary(self.num_classes(x_prev.shape[-1])).to(x_prev.dtype).to(x_prev.device)
        probs = self._coef(1.0 - beta, x_prev) * x_prev + self._coef(beta, x_prev) * pi
        index = _gumbel_argmax(torch.log(probs), noise)
        return torch.nn.functional.one_hot(index, x_prev.shape[-1]).to(x_prev.dtype) * present

    def posterior_probs(self, x0: Tensor, x_t: Tensor, t: Tensor, s: Tensor) -> Tensor:
        """``q(x_s | x_t, x0)`` for ``s < t`` (Austin et al., eq. 3, between any two steps)."""
        present, x0 = self._present(x0)
        _, x_t = self._present(x_t, fill=-1)
        return torch.softmax(self._reverse_logits(self._log_onehot(x0), x_t, t, s), dim=-1) * present

    def reverse_probs(self, logits: Tensor, x_t: Tensor, t: Tensor, s: Tensor) -> Tensor:
        """``p(x_s | x_t)`` for ``s < t`` from the network's logits of ``p(x0 | x_t)`` ``[..., K]``
        (eq. 4)."""
        present, x_t = self._present(x_t, fill=-1)
        log_p0 = torch.log_softmax(logits, dim=-1)
        return torch.softmax(self._reverse_logits(log_p0, x_t, t, s), dim=-1) * present

    def reverse_step(self, x_t: Tensor, pred: Tensor, t: Tensor, s: Tensor, noise: Tensor | None) -> Tensor:
        """``x_s ~ p(x_s | x_t)`` (eq. 4, respacing-safe) from the network's x0 logits ``pred``; Gumbel-max
        on standard normal ``noise`` (``None``: the most probable state). At ``s = 0`` no state but the K
        classes has mass, so no [MASK] survives the last step; an absorbing chain keeps every unmasked
        atom."""
        present, x_t = self._present(x_t, fill=-1)
        log_p0 = torch.log_softmax(pred, dim=-1)
        index = _gumbel_argmax(self._reverse_logits(log_p0, x_t, t, s), noise)
        return torch.nn.functional.one_hot(index, x_t.shape[-1]).to(x_t.dtype) * present

    def corrector_step(self, x_t: Tensor, pred: Tensor, t: Tensor, noise: Tensor, step_lr: float) -> Tensor:
        """No corrector for this field: unchanged."""
        return x_t

    def prior_kl(self, x0: Tensor) -> Tensor:
        """``KL(q(x_T | x0) || p(x_T))`` per state in nats (float64; 0 at empty rows): the bound's prior term
        ``L_T``, with ``p(x_T)`` the stationary distribution :meth:`prior` draws from.

        It is 0 when ``alpha_bar_T = 0`` (the absorbing chain's mutual-information schedule ends all [MASK]);
        an absorbing chain whose ``alpha_bar_T > 0`` (e.g. the cosine schedule) leaves mass on the classes,
        which its all-[MASK] prior never starts from, so the term is ``inf``.
        """
        present, x0 = self._present(x0.double())
        steps = torch.full((x0.shape[0],), self.timesteps, dtype=torch.long)
        log_q = self._x0_marginal_logp(self._log_onehot(x0), self._alpha_bars(steps))
        log_pi = torch.log(self.stationary(self.num_classes(x0.shape[-1]))).to(x0.device)
        q = log_q.exp()
        kl = (q * torch.where(q > 0, log_q - log_pi, torch.zeros_like(log_q))).sum(dim=-1)
        return torch.where(present.squeeze(-1), kl, torch.zeros_like(kl))

    def loss(self, logits: Tensor, x0: Tensor, x_t: Tensor, t: Tensor) -> dict[str, Tensor]:
        """The hybrid loss per state, at steps ``t`` ``[B]`` in ``1..T`` (Austin et al., section 3.4).

        - ``vb``: ``KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t))``; at ``t = 1`` the posterior is the point
          mass on ``x0`` and this is ``-log p(x0 | x_1)``, the bound's reconstruction term. (The prior term
          ``L_T`` has no parameters and is left out.) In nats.
        - ``ce``: ``-log p(x0 | x_t)``, the auxiliary cross-entropy of the x0 prediction.
        - ``loss``: ``vb + ce_weight * ce``.

        Args:
            logits: the network's ``[..., K]`` logits of ``p(x0 | x_t)``.
            x0: the clean one-hot states ``[..., S]``.
            x_t: the noisy states drawn by :meth:`q_sample`.
            t: steps ``[B]``.

        Returns:
            ``vb``, ``ce``, ``loss``, each ``[...]`` (0 at empty rows).
        """
        present, x0 = self._present(x0)
        _, x_t = self._present(x_t, fill=-1)
        present = present.squeeze(-1)
        log_p0 = torch.log_softmax(logits, dim=-1)
        s = t - 1
        log_q = torch.log_softmax(self._reverse_logits(self._log_onehot(x0), x_t, t, s), dim=-1)
        log_p = torch.log_softmax(self._reverse_logits(log_p0, x_t, t, s), dim=-1)
        q = log_q.exp()
        # 0 log 0 = 0: where q vanishes so may p (e.g. [MASK] at s = 0); keep those terms out of the graph.
        vb = (q * torch.where(q > 0, log_q - log_p, torch.zeros_like(log_q))).sum(dim=-1)
        k = log_p0.shape[-1]
        ce = -log_p0.gather(-1, x0[..., :k].argmax(dim=-1, keepdim=True)).squeeze(-1)
        zero = torch.zeros_like(vb)
        vb, ce = torch.where(present, vb, zero), torch.where(present, ce, zero)
        return {"vb": vb, "ce": ce, "loss": vb + self.ce_weight * ce}
