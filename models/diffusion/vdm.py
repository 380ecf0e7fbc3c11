"""Variational Diffusion Models: continuous time, a learned monotone noise schedule, the VLB as the loss.

Kingma, Salimans, Poole & Ho (2021), "Variational Diffusion Models", NeurIPS, arXiv:2107.00630, on the fields
and the transformer denoiser of the crystal DDPM (:mod:`bench.models.diffusion.ddpm`: types as one-hots in
``{-1, +1}``, coordinates as ``2 f - 1``, the codec's standardised lattice):

- ``z_t = alpha_t x + sigma_t eps`` with ``alpha_t^2 = sigmoid(-gamma(t))``, ``sigma_t^2 = sigmoid(gamma(t))``
  for ``t`` in ``[0, 1]`` (eq. 1-3); ``gamma`` is :class:`MonotoneGamma`, the paper's monotone network with
  positive weights, rescaled between its learned endpoints ``gamma_0`` and ``gamma_1`` (section 5.1,
  appendix H);
- the loss is the VLB (eq. 11-17): :func:`prior_kl` at ``t = 1``, :func:`reconstruction_nll` at ``t = 0``
  (``p(x | z_0)`` proportional to ``q(z_0 | x)``, normalised over the one-hot vertices for the types, over
  the reals for the continuous fields) and the continuous-time diffusion loss
  ``1/2 E[gamma'(t) ||eps - eps_hat||^2]`` (:func:`continuous_diffusion_loss`) at times drawn by the
  low-discrepancy sampler (:func:`antithetic_times`), one per crystal;
- the schedule's endpoints follow the VLB's gradient, its shape the gradient of the loss estimate's second
  moment (section 5.2; see :class:`CrystalVDM`);
- the network is conditioned on ``gamma(t)`` (not on ``t``), which is what makes the diffusion loss invariant
  to the shape of the schedule between its endpoints (eq. 17), and reads Fourier features of the
  continuous fields (section 3.3, :func:`fourier_features`);
- sampling is ancestral on a grid of ``T`` steps, ``p(z_s | z_t) = q(z_s | z_t, x = x_hat(z_t))``
  (eq. 31-33), through the project's samplers: each field's :class:`GammaGridGaussian` does the arithmetic of
  a step from ``gamma`` on the grid;
- ``test_nll`` is the discrete-time VLB of that ``T``-step model (eq. 13), in nats per crystal on the codec's
  fields.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from bench.models.backbone import CrystalTransformer
from bench.models.base import FIELDS, GenerativeModule, Likelihood, OptimizerFactory
from bench.models.diffusion.ddpm import CrystalDDPM
from bench.models.diffusion.samplers import AncestralSampler, DiffusionSampler
from bench.models.embeddings import timestep_embedding
from torch import Tensor, nn

__all__ = [
    "DECODERS",
    "CrystalVDM",
    "FeatureCrystalTransformer",
    "GammaGridGaussian",
    "GammaPredictor",
    "MonotoneGamma",
    "antithetic_times",
    "continuous_diffusion_loss",
    "discrete_diffusion_loss",
    "fourier_features",
    "prior_kl",
    "reconstruction_nll",
]

DECODERS: dict[str, str] = {"atom_types": "categorical", "frac_coords": "gaussian", "lattice": "gaussian"}
"""Each field's ``p(x | z_0)``: the types' normalised over the one-hot vertices (a probability of the
element), a Gaussian density for the continuous coordinates and lattice (:func:`reconstruction_nll`)."""

GammaPredictor = Callable[[Mapping[str, Tensor], Tensor], dict[str, Tensor]]
"""``eps_hat = predictor(z_t, gamma_t)``: epsilon per field at the log inverse signal-to-noise ratios
``gamma_t`` ``[B]``."""


def _draw(fn: Callable[..., Tensor], shape: Sequence[int], generator: torch.Generator | None,
          device: torch.device | str, dtype: torch.dtype = torch.float32) -> Tensor:
    if generator is None:
        return fn(tuple(shape), device=device, dtype=dtype)
    return fn(tuple(shape), generator=generator, device=generator.device, dtype=dtype).to(device)


def _view(values: Tensor, like: Tensor) -> Tensor:
    """Per-sample ``values`` ``[B]`` shaped to broadcast against ``like``."""
    return values.reshape(-1, *([1] * (like.dim() - 1)))


# ------------------------------------------------------------------------------------------------------------
# The noise schedule


class MonotoneGamma(nn.Module):
    """``gamma(t) = -log SNR(t)``, increasing in ``t`` in ``[0, 1]``, with learned endpoints and shape.

    Kingma et al. (2021), section 5.1 and appendix H: an unnormalised monotone network
    ``h(t) = l1(t) + l3(phi(l2(t)))`` whose linear layers have positive weights (here their absolute values)
    and ``phi`` the sigmoid, rescaled to the endpoints,
    ``gamma(t) = gamma_0 + (gamma_1 - gamma_0) (h(t) - h(0)) / (h(1) - h(0))``, so ``gamma(0) = gamma_0`` and
    ``gamma(1) = gamma_1`` whatever the shape's weights. Here ``l1(t) = |w1| t``,
    ``l2`` maps ``2 t - 1`` to ``features`` units (weights ``|w2|``, bias ``b2``) and ``l3`` averages them
    with weights ``|w3|``; the derivative ``gamma'(t)`` is computed in closed form.

    ``features = 0`` keeps only the linear term: a linear schedule between learned endpoints. At
    initialisation the schedule is close to linear (``w1 = 1``; ``w2``, ``w3`` standard normal, ``b2 = 0``).

    Args:
        gamma_0: initial ``gamma(0)`` (the paper's -13.3: ``sigma_0^2 = 1.7e-6``).
        gamma_1: initial ``gamma(1)`` (the paper's 5.0: ``alpha_1^2 = 6.7e-3``).
        features: width of the hidden layer (the paper's 1024).
    """

    def __init__(self, gamma_0: float = -13.3, gamma_1: float = 5.0, features: int = 1024) -> None:
        super().__init__()
        if not gamma_0 < gamma_1:
            raise ValueError(f"need gamma_0 < gamma_1 (the SNR falls with t), got {gamma_0} and {gamma_1}")
        if features < 0:
            raise ValueError(f"features must be >= 0, got {features}")
        self.features = int(features)
        #: ``gamma(0)``, learned (the VLB's gradient).
        self.gamma_0 = nn.Parameter(torch.tensor(float(gamma_0)))
        #: ``gamma(1)``, learned (the VLB's gradient).
        self.gamma_1 = nn.Parameter(torch.tensor(float(gamma_1)))
        self.w1 = nn.Parameter(torch.ones(()))
        if self.features:
            self.w2 = nn.Parameter(torch.randn(self.features))
            self.b2 = nn.Parameter(torch.zeros(self.features))
            self.w3 = nn.Parameter(torch.randn(self.features))

    def shape_parameters(self) -> list[nn.Parameter]:
        """The parameters of the shape (everything but the endpoints)."""
        return [p for name, p in self.named_parameters() if name not in ("gamma_0", "gamma_1")]

    def _unnormalised(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(h(t), h'(t))`` in ``t``'s dtype."""
        w1 = self.w1.to(t.dtype).abs()
        h = w1 * t
        slope = w1.expand_as(t)
        if self.features:
            w2, b2, w3 = (p.to(t.dtype) for p in (self.w2, self.b2, self.w3))
            s = torch.sigmoid(w2.abs() * (2.0 * t.unsqueeze(-1) - 1.0) + b2)
            h = h + (w3.abs() * s).mean(-1)
            slope = slope + (w3.abs() * s * (1.0 - s) * 2.0 * w2.abs()).mean(-1)
        return h, slope

    def shape(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(g(t), g'(t))`` of the normalised shape ``g = (h - h(0)) / (h(1) - h(0))``, which runs from 0
        to 1 and depends on the shape's parameters only."""
        ends, _ = self._unnormalised(torch.tensor([0.0, 1.0], dtype=t.dtype, device=t.device))
        span = (ends[1] - ends[0]).clamp_min(torch.finfo(t.dtype).tiny)
        h, slope = self._unnormalised(t)
        return (h - ends[0]) / span, slope / span

    def endpoints(self, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """``(gamma_0, gamma_1)`` as ``dtype``."""
        return self.gamma_0.to(dtype), self.gamma_1.to(dtype)

    def forward(self, t: Tensor) -> Tensor:
        """``gamma(t)`` (in ``t``'s dtype)."""
        g0, g1 = self.endpoints(t.dtype)
        return g0 + (g1 - g0) * self.shape(t)[0]

    def derivative(self, t: Tensor) -> Tensor:
        """``gamma'(t) = (gamma_1 - gamma_0) g'(t)`` (in ``t``'s dtype)."""
        g0, g1 = self.endpoints(t.dtype)
        return (g1 - g0) * self.shape(t)[1]


def antithetic_times(size: int, generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu") -> Tensor:
    """``t_i = (u + i / size) mod 1``, ``i = 0..size-1``, one uniform ``u``: the paper's low-discrepancy
    sampler (one ``t`` per sample, spread evenly over ``[0, 1)``, each marginally uniform)."""
    u = _draw(torch.rand, (1,), generator, device)
    return torch.remainder(u + torch.arange(size, device=device, dtype=torch.float32) / size, 1.0)


# ------------------------------------------------------------------------------------------------------------
# The terms of the VLB


def prior_kl(gamma_1: Tensor, x0: Tensor) -> Tensor:
    """``KL(q(z_1 | x) || N(0, I))`` of each sample ``[B]`` (nats, summed over its coordinates):
    ``1/2 sum [alpha_1^2 (x^2 - 1) + softplus(-gamma_1)]``, the usual ``1/2 (mu^2 + s^2 - 1 - log s^2)``
    with ``s^2 = sigma_1^2`` written so nothing cancels."""
    a2 = torch.sigmoid(-gamma_1)
    per = 0.5 * (a2 * (x0**2 - 1.0) + F.softplus(-gamma_1))
    return per.flatten(1).sum(1)


def reconstruction_nll(gamma_0: Tensor, x0: Tensor, noise: Tensor, decoder: str = "gaussian") -> Tensor:
    """``-log p(x | z_0)`` of each sample ``[B]`` (nats) at ``z_0 = alpha_0 x + sigma_0 noise``, with the
    paper's ``p(x | z_0)`` proportional to ``q(z_0 | x)`` as a function of ``x`` (appendix C, there over the
    pixel values), factorised over slots:

    - ``"gaussian"`` (continuous values): normalised over the reals,
      ``p(x | z_0) = N(x; z_0 / alpha_0, sigma_0^2 / alpha_0^2 = exp(gamma_0))``; as
      ``x - z_0 / alpha_0 = -exp(gamma_0 / 2) noise``, the value is ``1/2 (log 2 pi + gamma_0 + noise^2)`` per
      coordinate;
    - ``"categorical"`` (a one-hot scaled to ``{-1, +1}`` on the last dimension): normalised over the one-hot
      vertices ``v_k``, ``p(k | z_0) = softmax_k(2 alpha_0 z_0k / sigma_0^2)`` (``log q(z_0 | v_k)`` up to a
      constant), a probability of the class.
    """
    if decoder == "gaussian":
        per = 0.5 * (math.log(2.0 * math.pi) + gamma_0 + noise**2)
        return per.flatten(1).sum(1)
    if decoder == "categorical":
        alpha2, sigma2 = torch.sigmoid(-gamma_0), torch.sigmoid(gamma_0)
        z0 = alpha2.sqrt() * x0 + sigma2.sqrt() * noise
        logp = torch.log_softmax(2.0 * alpha2.sqrt() * z0 / sigma2, dim=-1)
        return -logp.gather(-1, x0.argmax(dim=-1, keepdim=True)).flatten(1).sum(1)
    raise ValueError(f"decoder must be 'gaussian' or 'categorical', got {decoder!r}")


def _noise_errors(
    predictor: GammaPredictor, x0: Mapping[str, Tensor], gamma_t: Tensor, noise: Mapping[str, Tensor],
    clip: Mapping[str, float | None] | None,
) -> dict[str, Tensor]:
    """``||eps - eps_hat||^2`` per sample and field at ``z_t = alpha_t x + sigma_t eps``; with a bound in
    ``clip`` for a field, ``eps_hat`` is the one consistent with ``x_hat`` clipped to it (the model the
    sampler draws from), so the error is ``SNR_t ||x - x_hat||^2``."""
    z = {}
    for k in x0:
        alpha = _view(torch.sigmoid(-gamma_t).sqrt(), x0[k]).to(x0[k].dtype)
        sigma = _view(torch.sigmoid(gamma_t).sqrt(), x0[k]).to(x0[k].dtype)
        z[k] = alpha * x0[k] + sigma * noise[k]
    eps_hat = predictor(z, gamma_t)
    out = {}
    for k in x0:
        pred = eps_hat[k].to(x0[k].dtype)
        bound = None if clip is None else clip.get(k)
        if bound is not None:
            alpha = _view(torch.sigmoid(-gamma_t).sqrt(), x0[k]).to(x0[k].dtype)
            sigma = _view(torch.sigmoid(gamma_t).sqrt(), x0[k]).to(x0[k].dtype)
            x_hat = ((z[k] - sigma * pred) / alpha).clamp(-bound, bound)
            pred = (z[k] - alpha * x_hat) / sigma
        out[k] = ((noise[k] - pred) ** 2).flatten(1).sum(1)
    return out


def continuous_diffusion_loss(
    predictor: GammaPredictor, x0: Mapping[str, Tensor], gamma_t: Tensor, dgamma_t: Tensor,
    noise: Mapping[str, Tensor], clip: Mapping[str, float | None] | None = None,
) -> dict[str, Tensor]:
    """The continuous-time diffusion loss at times ``t`` (one per sample): ``1/2 gamma'(t) ||eps -
    eps_hat(z_t; gamma(t))||^2`` per sample and field (eq. 17 in the epsilon form of appendix E; an unbiased
    estimate of ``L_inf`` for ``t`` uniform on ``[0, 1]``).

    Args:
        predictor: ``eps_hat`` per field from ``z_t`` and ``gamma(t)``.
        x0: clean values by field, each ``[B, ...]``.
        gamma_t: ``gamma(t)`` ``[B]``.
        dgamma_t: ``gamma'(t)`` ``[B]``.
        noise: ``eps`` by field.
        clip: per field, a bound on ``|x_hat|`` (see :func:`_noise_errors`), or None.
    """
    errors = _noise_errors(predictor, x0, gamma_t, noise, clip)
    return {k: 0.5 * dgamma_t.to(v.dtype) * v for k, v in errors.items()}


def discrete_diffusion_loss(
    predictor: GammaPredictor, x0: Mapping[str, Tensor], gamma_t: Tensor, gamma_s: Tensor,
    noise: Mapping[str, Tensor], timesteps: int, clip: Mapping[str, float | None] | None = None,
) -> dict[str, Tensor]:
    """The discrete-time diffusion loss of a ``T``-step model at one step ``s -> t`` per sample:
    ``T/2 (SNR_s - SNR_t) ||x - x_hat||^2 = T/2 expm1(gamma_t - gamma_s) ||eps - eps_hat||^2`` (eq. 13 and
    appendix E), ``T`` times the KL divergence of the step, so that with the step drawn uniformly it is an
    unbiased estimate of ``L_T``.

    Args:
        predictor: ``eps_hat`` per field from ``z_t`` and ``gamma(t)``.
        x0: clean values by field.
        gamma_t: ``gamma`` at the step's later time ``[B]``.
        gamma_s: ``gamma`` at its earlier time ``[B]``.
        noise: ``eps`` by field.
        timesteps: ``T`` (the weight of one step).
        clip: per field, a bound on ``|x_hat|`` (as the sampler clips), or None.
    """
    errors = _noise_errors(predictor, x0, gamma_t, noise, clip)
    weight = 0.5 * timesteps * torch.expm1(gamma_t - gamma_s)
    return {k: weight.to(v.dtype) * v for k, v in errors.items()}


def fourier_features(z: Tensor, exponents: Sequence[int]) -> Tensor:
    """``sin(2^n pi z)`` and ``cos(2^n pi z)`` of every channel for each ``n`` (section 3.3):
    ``[..., d] -> [..., 2 d len(exponents)]``."""
    scales = torch.tensor([2.0**n * math.pi for n in exponents], dtype=z.dtype, device=z.device)
    angles = z.unsqueeze(-1) * scales  # [..., d, E]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1).flatten(-2)


# ------------------------------------------------------------------------------------------------------------
# The reverse process on a grid: a process per field for the project's samplers


class GammaGridGaussian:
    """The variance-preserving process of one field on a grid of ``T`` steps of ``gamma``: step ``i`` is the
    time ``i / T`` (``0..T``), ``z_i = alpha_i x + sigma_i eps``.

    Unlike :class:`~bench.models.diffusion.processes.VPGaussian`, step 0 is ``z_0`` (``gamma_0``, a little
    noise), not the data. Every coefficient is formed in float64 from ``gamma`` itself, with ``expm1`` where a
    difference of nearly equal numbers would lose digits (eq. 33): at ``gamma_0 = -13.3`` the steps near 0
    differ from 1 by less than float32 resolves.

    - :meth:`reverse_step`: ancestral, ``p(z_s | z_t) = q(z_s | z_t, x = x_hat)`` (eq. 31-33), for any
      ``s < t`` (respacing-safe): mean ``alpha_s ((1 - c) z_t / alpha_t + c x_hat)``, variance
      ``c sigma_s^2``, ``c = -expm1(gamma_s - gamma_t) = 1 - SNR_t / SNR_s``;
    - :meth:`ddim_step`: the DDIM update (Song, Meng & Ermon 2021, arXiv:2010.02502, eq. 12) in these terms,
      ``alpha_s x_hat + sqrt(sigma_s^2 - lambda^2) eps_hat + lambda noise``, ``lambda^2 = eta^2 c sigma_s^2``.

    Args:
        gammas: ``gamma`` at the ``T + 1`` grid times, increasing.
        clip: bound on ``|x_hat|`` in reverse steps (``None``: none), as ddpm's processes.
    """

    prediction_type = "eps"

    def __init__(self, gammas: Tensor, clip: float | None = None) -> None:
        gammas = torch.as_tensor(gammas).detach().to("cpu", torch.float64).reshape(-1)
        if gammas.numel() < 2:
            raise ValueError(f"need gamma at T + 1 >= 2 grid times, got {gammas.numel()}")
        if not bool((gammas[1:] > gammas[:-1]).all()):
            raise ValueError("gamma must increase along the grid (the signal-to-noise ratio falls with t)")
        if clip is not None and clip <= 0:
            raise ValueError(f"clip must be > 0 or null, got {clip}")
        #: ``gamma`` at the grid times ``i / T``, ``i = 0..T`` (float64, CPU).
        self.gammas64 = gammas
        self.timesteps = gammas.numel() - 1
        self.clip = None if clip is None else float(clip)

    def _gamma(self, t: Tensor) -> Tensor:
        """``gamma`` (float64, CPU) at steps ``t`` ``[B]``."""
        return self.gammas64[t.detach().cpu().long()]

    def _coef(self, values: Tensor, like: Tensor) -> Tensor:
        return _view(values, like).to(like.device, like.dtype)

    def prior(self, shape: Sequence[int], generator: torch.Generator | None, device: torch.device) -> Tensor:
        """``z_1 ~ N(0, I)``, the model's ``p(z_1)``."""
        return _draw(torch.randn, shape, generator, device)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        g = self._gamma(t)
        return self._coef(torch.sigmoid(-g).sqrt(), x0) * x0 + self._coef(torch.sigmoid(g).sqrt(), x0) * noise

    def target(self, noise: Tensor, t: Tensor) -> Tensor:
        return noise

    def epsilon(self, pred: Tensor) -> Tensor:
        return pred

    def denoise(self, x_t: Tensor, pred: Tensor, t: Tensor, clip: bool = True) -> Tensor:
        """``x_hat = (z_t - sigma_t eps_hat) / alpha_t``, clipped to the bound when ``clip``."""
        g = self._gamma(t)
        alpha, sigma = self._coef(torch.sigmoid(-g).sqrt(), x_t), self._coef(torch.sigmoid(g).sqrt(), x_t)
        x0 = (x_t - sigma * pred) / alpha
        if clip and self.clip is not None:
            x0 = x0.clamp(-self.clip, self.clip)
        return x0

    def reverse_step(
        self, x_t: Tensor, pred: Tensor, t: Tensor, s: Tensor, noise: Tensor | None, clip: bool = True
    ) -> Tensor:
        """Ancestral step ``t -> s`` (eq. 31-33); ``noise=None``: the mean."""
        g_t, g_s = self._gamma(t), self._gamma(s)
        if bool((g_s >= g_t).any()):
            raise ValueError("a reverse step needs s < t")
        c = -torch.expm1(g_s - g_t)
        keep = torch.exp(g_s - g_t)  # 1 - c = SNR_t / SNR_s
        a_t, a_s = torch.sigmoid(-g_t).sqrt(), torch.sigmoid(-g_s).sqrt()
        x0 = self.denoise(x_t, pred, t, clip)
        mean = self._coef(a_s * keep / a_t, x_t) * x_t + self._coef(a_s * c, x_t) * x0
        if noise is None:
            return mean
        return mean + self._coef((c * torch.sigmoid(g_s)).sqrt(), x_t) * noise

    def ddim_step(
        self, x_t: Tensor, pred: Tensor, t: Tensor, s: Tensor, noise: Tensor | None, eta: float = 0.0,
        clip: bool = True,
    ) -> Tensor:
        """DDIM step ``t -> s``; ``eta = 0`` (or ``noise=None``) is deterministic, ``eta = 1`` has the
        ancestral variance. ``eps_hat`` is recomputed from the clipped ``x_hat``."""
        g_t, g_s = self._gamma(t), self._gamma(s)
        c = -torch.expm1(g_s - g_t)
        var_s = torch.sigmoid(g_s)
        x0 = self.denoise(x_t, pred, t, clip)
        alpha_t = self._coef(torch.sigmoid(-g_t).sqrt(), x_t)
        eps = (x_t - alpha_t * x0) / self._coef(torch.sigmoid(g_t).sqrt(), x_t)
        lam2 = eta**2 * c * var_s
        keep = self._coef((var_s - lam2).clamp_min(0).sqrt(), x_t)
        x = self._coef(torch.sigmoid(-g_s).sqrt(), x_t) * x0 + keep * eps
        if noise is None:
            return x
        return x + self._coef(lam2.sqrt(), x_t) * noise

    def corrector_step(self, x_t: Tensor, pred: Tensor, t: Tensor, noise: Tensor, step_lr: float) -> Tensor:
        """No corrector for this field: unchanged."""
        return x_t


# ------------------------------------------------------------------------------------------------------------
# The network


class FeatureCrystalTransformer(CrystalTransformer):
    """:class:`~bench.models.backbone.CrystalTransformer` with extra input channels: per-site features
    ``site_features`` ``[B, N, F_s]`` and lattice features ``lattice_features`` ``[B, F_l]`` in the batch,
    each through a bias-free linear map added to its token, which is the same as concatenating them to the
    inputs the backbone projects (its site and lattice tokens are linear maps of their inputs).

    Args:
        site_feature_dim: ``F_s`` (0: none).
        lattice_feature_dim: ``F_l`` (0: none).
        *args, **kwargs: those of :class:`~bench.models.backbone.CrystalTransformer`.
    """

    def __init__(
        self, *args: Any, site_feature_dim: int = 0, lattice_feature_dim: int = 0, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.site_feature_dim = int(site_feature_dim)
        self.lattice_feature_dim = int(lattice_feature_dim)
        width = self.d_model
        self.site_features_in = (
            nn.Linear(site_feature_dim, width, bias=False) if site_feature_dim > 0 else None
        )
        self.lattice_features_in = (
            nn.Linear(lattice_feature_dim, width, bias=False) if lattice_feature_dim > 0 else None
        )

    def _embed(self, batch: Mapping[str, Tensor] | None, cond: Tensor | None) -> Tensor:
        tokens = super()._embed(batch, cond)
        if batch is None or (self.site_features_in is None and self.lattice_features_in is None):
            return tokens
        missing = [k for k, layer in (("site_features", self.site_features_in),
                                      ("lattice_features", self.lattice_features_in))
                   if layer is not None and k not in batch]
        if missing:
            raise ValueError(f"the batch lacks the extra input channels {', '.join(missing)}")
        extra = torch.zeros_like(tokens)
        if self.lattice_features_in is not None:
            extra[:, 0] = self.lattice_features_in(batch["lattice_features"])
        if self.site_features_in is not None:
            extra[:, 1:] = self.site_features_in(batch["site_features"])
        return tokens + extra


# ------------------------------------------------------------------------------------------------------------
# The model


class CrystalVDM(GenerativeModule):
    """A variational diffusion model on ``(atom_types, frac_coords, lattice)`` (Kingma et al. 2021).

    **Training** minimises the VLB of each crystal divided by its number of coordinates ``D`` (nats per
    coordinate; the paper's bits per dimension up to ``log 2``): ``prior_kl`` at ``gamma_1`` +
    ``reconstruction_nll`` at ``gamma_0`` (categorical types, Gaussian coordinates and lattice) +
    ``continuous_diffusion_loss`` at one time per crystal from :func:`antithetic_times`.

    **The schedule** (section 5.2). The diffusion loss's expectation depends on the schedule only through its
    endpoints (eq. 17), so the endpoints ``gamma_0``, ``gamma_1`` take the VLB's gradient, and the shape
    (``w1``, ``w2``, ``b2``, ``w3`` of :class:`MonotoneGamma`) is trained to minimise the variance of the
    estimate instead: with ``L_i`` the diffusion-loss estimate of crystal ``i`` (per coordinate), the shape's
    gradient is that of ``mean_i L_i^2``, which equals the gradient of its variance since ``E[L_i]`` does not
    depend on the shape. It is obtained in the same backward pass: the normalised shape ``g(t_i)`` and its
    slope ``g'(t_i)``, through which alone the shape enters, carry a gradient hook that multiplies what
    reaches them by ``2 L_i`` (detached), so ``d mean(L)/d g`` becomes ``d mean(L^2)/d g``; the network and
    the endpoints, which do not lie behind ``g``, receive the plain VLB gradient. (The prior and
    reconstruction terms read ``gamma_0`` and ``gamma_1`` directly, so they never reach the shape.)
    ``schedule_objective="vlb"`` trains the shape on the VLB's gradient instead (zero in expectation).

    **The network** is ddpm's transformer (:class:`FeatureCrystalTransformer`: the same, plus Fourier
    features), conditioned through ddpm's sinusoidal embedding and MLP on ``1000 (gamma_t - gamma_min) /
    (gamma_max - gamma_min)``: a function of ``gamma``, not of ``t``.

    **Sampling** draws ``z_1 ~ N(0, I)`` and steps the ancestral reverse process on the grid of ``T``
    steps through the configured sampler (:class:`GammaGridGaussian`; the default ancestral sampler, with
    ``steps >= T``, visits every step), adding no noise on the last step to ``z_0``, then returns
    ``z_0 / alpha_0``: the mean of ``p(x | z_0)`` for the continuous fields and, for the types, a vector whose
    argmax is the mode of the categorical ``p(k | z_0)``.

    Args:
        backbone: partial of :class:`FeatureCrystalTransformer` (called once, for the denoiser).
        optimizer: partial building the optimiser.
        num_types: K + 1 (from the fitted codec).
        max_atoms: N (from the fitted codec).
        sampler: a built sampler (default ancestral).
        timesteps: ``T``, the grid of the reverse process (sampling and ``test_nll``).
        gamma_min: initial ``gamma_0``, and the lower end of the conditioning's normalisation.
        gamma_max: initial ``gamma_1``, and its upper end.
        schedule_features: hidden width of :class:`MonotoneGamma` (0: linear between learned endpoints).
        schedule_objective: ``"variance"`` (section 5.2) or ``"vlb"``.
        fourier_exponents: the ``n`` of the Fourier features ``sin(2^n pi z)``, ``cos(2^n pi z)`` of the
            coordinates and lattice (section 3.3; empty: none).
        time_dim: width of the conditioning embedding.
        lattice_clip: bound on ``|x_hat|`` of the standardised lattice while sampling (as ddpm; types and
            coordinates are clipped to ``[-1, 1]``).
    """

    family = "diffusion"
    paper = "Kingma, Salimans, Poole, Ho (2021). Variational Diffusion Models. NeurIPS. arXiv:2107.00630"
    likelihood = Likelihood(
        "upper_bound",
        "vlb",
        "negative VLB of the T-step ancestral model (what the default sampler draws from; eq. 13), with the "
        "learned schedule on the grid i/T and x_hat clipped as the sampler clips it, on the codec's fields: "
        "closed-form KL(q(z_1|x) || N(0, I)); p(x|z_0) proportional to q(z_0|x), categorical over each "
        "slot's one-hot vertices for the types and Gaussian N(z_0/alpha_0, exp(gamma_0)) for coordinates "
        "(2f - 1; minus 3 log 2 per filled slot for fractions) and the standardised lattice; per draw one "
        "uniform step, weighted by T; empty-slot coordinates integrated out with a N(-1, exp(gamma_0)) "
        "proposal",
    )
    decoders = DECODERS

    def __init__(
        self,
        backbone: Callable[..., FeatureCrystalTransformer],
        optimizer: OptimizerFactory,
        num_types: int,
        max_atoms: int,
        sampler: DiffusionSampler | None = None,
        timesteps: int = 100,
        gamma_min: float = -13.3,
        gamma_max: float = 5.0,
        schedule_features: int = 1024,
        schedule_objective: str = "variance",
        fourier_exponents: Sequence[int] = (7, 8),
        time_dim: int = 64,
        lattice_clip: float | None = 5.0,
    ) -> None:
        if timesteps < 1:
            raise ValueError(f"timesteps must be >= 1, got {timesteps}")
        if schedule_objective not in ("variance", "vlb"):
            raise ValueError(f"schedule_objective must be 'variance' or 'vlb', got {schedule_objective!r}")
        fourier_exponents = tuple(int(n) for n in fourier_exponents)
        if any(n < 1 for n in fourier_exponents):
            raise ValueError(f"fourier_exponents must be >= 1, got {list(fourier_exponents)}")
        super().__init__(optimizer, num_types, max_atoms)
        self._save_plain_hparams()
        self.sampler: DiffusionSampler = sampler if sampler is not None else AncestralSampler()
        self.timesteps = int(timesteps)
        self.gamma_min, self.gamma_max = float(gamma_min), float(gamma_max)
        self.schedule_objective = schedule_objective
        self.fourier_exponents = fourier_exponents
        self.time_dim = int(time_dim)
        #: Bounds on ``|x_hat|`` per field while sampling (and in the bound of the sampled model).
        self.clip_bounds: dict[str, float | None] = {
            "atom_types": 1.0, "frac_coords": 1.0,
            "lattice": None if lattice_clip is None else float(lattice_clip),
        }
        self.gamma = MonotoneGamma(gamma_min, gamma_max, schedule_features)
        self.time_mlp = nn.Sequential(
            nn.Linear(self.time_dim, self.time_dim), nn.SiLU(), nn.Linear(self.time_dim, self.time_dim)
        )
        width = 2 * len(fourier_exponents)
        self.denoiser = backbone(
            num_types=num_types, max_atoms=max_atoms, cond_dim=self.time_dim, raw_frac=True,
            site_feature_dim=3 * width, lattice_feature_dim=6 * width,
        )
        self.dims = {"atom_types": max_atoms * num_types, "frac_coords": 3 * max_atoms, "lattice": 6}
        #: ``D``: coordinates of one crystal in the diffusion space.
        self.total_dim = sum(self.dims.values())

    # ------------------------------------------------------------------ the network
    to_diffusion_space = staticmethod(CrystalDDPM.to_diffusion_space)
    from_diffusion_space = staticmethod(CrystalDDPM.from_diffusion_space)

    def predict(self, z: Mapping[str, Tensor], gamma: Tensor) -> dict[str, Tensor]:
        """``eps_hat(z_t; gamma_t)`` per field (float32), ``gamma`` ``[B]``.

        The backbone reads the coordinates as fractions (periodic features) plus their raw values, as ddpm's;
        the Fourier features are those of ``z`` itself, for the coordinates and the lattice.
        """
        z = {k: v.to(torch.float32) for k, v in z.items()}
        level = (gamma.to(torch.float32) - self.gamma_min) / (self.gamma_max - self.gamma_min)
        cond = self.time_mlp(timestep_embedding(1000.0 * level, self.time_dim))
        inputs = {**z, "frac_coords": (z["frac_coords"] + 1.0) / 2.0}
        if self.fourier_exponents:
            inputs["site_features"] = fourier_features(z["frac_coords"], self.fourier_exponents)
            inputs["lattice_features"] = fourier_features(z["lattice"], self.fourier_exponents)
        out = self.denoiser(inputs, cond=cond)
        return {k: out[k] for k in FIELDS}

    # ------------------------------------------------------------------ the bound
    def _terms(
        self, x0: Mapping[str, Tensor], t: Tensor, noise: Mapping[str, Tensor], noise_0: Mapping[str, Tensor],
    ) -> dict[str, Tensor]:
        """The VLB's terms of each crystal ``[B]`` at times ``t``, with the schedule's shape gradient as
        :attr:`schedule_objective` says (see the class docstring)."""
        g_shape, g_slope = self.gamma.shape(t)
        scale: dict[str, Tensor] = {}
        hooked = self.schedule_objective == "variance" and torch.is_grad_enabled() and g_shape.requires_grad
        if hooked:
            g_shape.register_hook(lambda grad: grad * scale["factor"])
            g_slope.register_hook(lambda grad: grad * scale["factor"])
        g0, g1 = self.gamma.endpoints()
        gamma_t = g0 + (g1 - g0) * g_shape
        dgamma_t = (g1 - g0) * g_slope
        diffusion = continuous_diffusion_loss(self.predict, x0, gamma_t, dgamma_t, noise)
        total_diffusion = sum(diffusion.values())
        if hooked:
            scale["factor"] = 2.0 * total_diffusion.detach() / self.total_dim
        prior = sum(prior_kl(g1, x0[k]) for k in FIELDS)
        recon = sum(reconstruction_nll(g0, x0[k], noise_0[k], self.decoders[k]) for k in FIELDS)
        return {"prior": prior, "recon": recon, "diffusion": total_diffusion,
                **{f"{k}_diffusion": v for k, v in diffusion.items()},
                "vlb": prior + recon + total_diffusion}

    def loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The VLB per coordinate, averaged over the batch (``loss``); the terms in nats per crystal
        (``vlb``, ``prior``, ``recon``, ``diffusion`` and per field ``<field>_diffusion``), and the
        endpoints ``gamma_0``, ``gamma_1``."""
        x0 = self.to_diffusion_space(batch)
        size = x0["lattice"].shape[0]
        t = antithetic_times(size, device=self.device)
        noise = {k: torch.randn_like(x0[k]) for k in FIELDS}
        noise_0 = {k: torch.randn_like(x0[k]) for k in FIELDS}
        terms = self._terms(x0, t, noise, noise_0)
        out = {"loss": (terms["vlb"] / self.total_dim).mean()}
        out.update({k: v.mean() for k, v in terms.items()})
        out["gamma_0"], out["gamma_1"] = (v.detach() for v in self.gamma.endpoints())
        return out

    # ------------------------------------------------------------------ sampling
    @property
    def nfe(self) -> int:
        """Network evaluations per sample: the reverse steps the configured sampler visits."""
        return self.sampler.nfe(self.timesteps)

    @torch.no_grad()
    def gamma_grid(self) -> Tensor:
        """``gamma(i / T)``, ``i = 0..T`` (float64, on the module's device)."""
        t = torch.linspace(0.0, 1.0, self.timesteps + 1, dtype=torch.float64, device=self.device)
        return self.gamma(t)

    def processes(self) -> dict[str, GammaGridGaussian]:
        """The reverse process of every field on the grid of the current schedule."""
        grid = self.gamma_grid()
        return {k: GammaGridGaussian(grid, self.clip_bounds[k]) for k in FIELDS}

    def _sample(self, n: int, generator: torch.Generator | None, condition: Any) -> dict[str, Tensor]:
        shapes = {
            "atom_types": (n, self.max_atoms, self.num_types),
            "frac_coords": (n, self.max_atoms, 3),
            "lattice": (n, 6),
        }
        processes = self.processes()
        grid = next(iter(processes.values())).gammas64.to(self.device, torch.float32)
        x = {k: processes[k].prior(shapes[k], generator, self.device) for k in sorted(shapes)}

        def noise() -> dict[str, Tensor]:
            return {k: self._randn(shapes[k], generator) for k in sorted(shapes)}

        def predictor(z: Mapping[str, Tensor], t: Tensor) -> dict[str, Tensor]:
            return self.predict(z, grid[t])

        z0 = self.sampler(predictor, processes, x, self.timesteps, noise)
        alpha_0 = float(torch.sigmoid(-self.gamma.gamma_0.double()).sqrt())
        return self.from_diffusion_space({k: v / alpha_0 for k, v in z0.items()})

    # ------------------------------------------------------------------ likelihood of held-out data
    def _clip_for_bound(self) -> dict[str, float | None] | None:
        """The bounds the sampler clips ``x_hat`` to (None when it does not clip)."""
        return self.clip_bounds if getattr(self.sampler, "clip_denoised", True) else None

    def fit_likelihood(
        self, data: Mapping[str, Tensor], generator: torch.Generator | None = None
    ) -> dict[str, Any]:
        """Nothing to fit: returns the settings that define the bound, to be recorded with it."""
        g0, g1 = (float(v.detach()) for v in self.gamma.endpoints(torch.float64))
        return {
            "vlb_decoders": dict(self.decoders),
            "vlb_steps": "per draw one step uniform in 1..T (weight T), the prior KL in closed form and "
                         "the reconstruction term at one z_0",
            "vlb_timesteps": self.timesteps,
            "vlb_clip": self._clip_for_bound(),
            "gamma_0": g0,
            "gamma_1": g1,
            "empty_coordinate_proposal_std": math.exp(0.5 * g0),
        }

    def _predict64(self, z: Mapping[str, Tensor], gamma: Tensor) -> dict[str, Tensor]:
        return {k: v.double() for k, v in self.predict(z, gamma).items()}

    def variational_bound(
        self, x0: Mapping[str, Tensor], generator: torch.Generator | None = None, continuous: bool = False,
        every_step: bool = False,
    ) -> Tensor:
        """One estimate of the negative VLB of each sample ``[B]`` (float64, nats), in the diffusion space.

        ``continuous=False``: the ``T``-step model on the grid (eq. 13), ``x_hat`` clipped as the sampler
        clips it; the diffusion term is ``T`` times one step drawn uniformly from ``1..T`` (one network
        evaluation) or, with ``every_step``, the sum of every step (``T``). ``continuous=True``: the
        continuous-time bound (eq. 17) at one ``t`` uniform in ``[0, 1]``, unclipped. Every random number
        comes from ``generator``.
        """
        x0 = {k: v.double() for k, v in x0.items()}
        first = x0["lattice"]
        size, device = first.shape[0], first.device
        g0, g1 = self.gamma.endpoints(torch.float64)

        def normal() -> dict[str, Tensor]:
            return {k: _draw(torch.randn, x0[k].shape, generator, device, torch.float64) for k in FIELDS}

        noise_0 = normal()
        total = sum(prior_kl(g1, x0[k]) + reconstruction_nll(g0, x0[k], noise_0[k], self.decoders[k])
                    for k in FIELDS)
        if continuous:
            t = _draw(torch.rand, (size,), generator, device, torch.float64)
            terms = continuous_diffusion_loss(self._predict64, x0, self.gamma(t), self.gamma.derivative(t),
                                              normal())
            return total + sum(terms.values())
        grid = self.gamma_grid().to(device)
        clip = self._clip_for_bound()

        def step_term(step: Tensor) -> Tensor:
            """``T`` times the KL divergence of the steps ``step - 1 -> step``."""
            terms = discrete_diffusion_loss(self._predict64, x0, grid[step], grid[step - 1], normal(),
                                            self.timesteps, clip)
            return sum(terms.values())

        if every_step:
            for i in range(1, self.timesteps + 1):
                step = torch.full((size,), i, dtype=torch.long, device=device)
                total = total + step_term(step) / self.timesteps
            return total
        if generator is None:
            step = torch.randint(1, self.timesteps + 1, (size,), device=device)
        else:
            step = torch.randint(1, self.timesteps + 1, (size,), generator=generator, device=generator.device)
        return total + step_term(step.to(device))
        return total

    @torch.no_grad()
    def test_nll(
        self, batch: Mapping[str, Tensor], draws: int = 1, generator: torch.Generator | None = None,
        continuous: bool = False, every_step: bool = False,
    ) -> Tensor:
        """``[B]`` nats per crystal: an upper bound on ``-log P`` of the codec's fields, averaged over
        ``draws`` (:meth:`variational_bound`, turned into a bound on the codec's fields as improved_ddpm's):

        - types: categorical decoder, so their part is a probability of the elements (empty slot included);
        - coordinates of filled slots: ``y = 2 f - 1``, so ``- 3 log 2`` per filled slot (decoding wraps, so
          the density on the torus is at least this);
        - coordinates of empty slots are integrated out: ``-log P <= E_r[L(x with y_e) + log r(y_e)]`` with
          ``y_e = -1 + tau z``, ``tau = exp(gamma_0 / 2)`` (the decoder's scale);
        - the lattice is the codec's standardised variable itself.

        Call it in eval mode; every random number comes from ``generator``.
        """
        if draws < 1:
            raise ValueError(f"draws must be >= 1, got {draws}")
        x0 = {k: v.double() for k, v in self.to_diffusion_space(batch).items()}
        filled = (1.0 - batch["atom_types"][..., 0].double()).clamp(0.0, 1.0)
        empty = (1.0 - filled).unsqueeze(-1)
        tau = math.exp(0.5 * float(self.gamma.gamma_0))
        device = x0["lattice"].device
        total = torch.zeros(x0["lattice"].shape[0], dtype=torch.float64, device=device)
        for _ in range(draws):
            z = _draw(torch.randn, x0["frac_coords"].shape, generator, device, torch.float64)
            y = torch.where(empty > 0, -1.0 + tau * z, x0["frac_coords"])
            log_r = (empty * (-0.5 * z**2 - math.log(tau) - 0.5 * math.log(2.0 * math.pi))).flatten(1).sum(1)
            bound = self.variational_bound({**x0, "frac_coords": y}, generator, continuous, every_step)
            total += bound + log_r
        return total / draws - 3.0 * math.log(2.0) * filled.sum(-1)
