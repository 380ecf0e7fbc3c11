"""The variance-preserving SDE in continuous time, its likelihood weighting, and its two samplers.

Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole (2021), "Score-Based Generative Modeling through Stochastic
Differential Equations", ICLR, arXiv:2011.13456 (the VP SDE, eq. 11 and appendix B; the reverse-time SDE,
eq. 6; the probability-flow ODE, eq. 13, and its likelihood, appendix D.2), and Song, Durkan, Murray & Ermon
(2021), "Maximum Likelihood Training of Score-Based Diffusion Models", NeurIPS, arXiv:2101.09258 (the
likelihood weighting ``lambda(t) = g(t)^2``, theorems 1-4, and the importance sampling of ``t``, section 5):

- :class:`VPSDE`: ``dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw`` with ``beta`` linear from ``beta_min`` to
  ``beta_max`` on ``t`` in ``[0, 1]``, truncated at ``eps``; the marginal ``x_t = alpha_t x_0 + sigma_t eps``,
  ``alpha_t = exp(-1/2 int_0^t beta)``, ``sigma_t^2 = 1 - alpha_t^2``, everything in closed form, including
  ``gamma(t) = -log SNR(t)`` (the quantity of :mod:`bench.models.diffusion.vdm`), its inverse, and the density
  of ``t`` that makes the likelihood weighting constant (:meth:`VPSDE.sample_times`);
- :func:`probability_flow_nll`: ``-log p(x_eps)`` under the probability-flow ODE started from ``N(0, I)`` at
  ``t = 1``, with the divergence exact (one backward pass per coordinate, for small dimensions) or
  Hutchinson's estimate (one probe per solve), solved by torchdiffeq;
- :class:`EulerMaruyamaSampler` (the reverse SDE, default) and :class:`ProbabilityFlowSampler` (the ODE),
  chosen by config (``conf/sampler/reverse_sde.yaml``, ``conf/sampler/probability_flow.yaml``).

Models here predict ``eps_hat(x_t, t)``, so the score is ``-eps_hat / sigma_t``: an :data:`EpsilonFn` takes a
dict of fields and times ``t`` ``[B]`` and returns a dict of the same fields.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from bench.models.diffusion.samplers import NoiseSource
from bench.models.flow.cnf import FIXED_STAGES, ODESolver, hutchinson_probe
from torch import Tensor

__all__ = [
    "WEIGHTINGS",
    "EpsilonFn",
    "EulerMaruyamaSampler",
    "ProbabilityFlowSampler",
    "SDESampler",
    "VPSDE",
    "probability_flow_drift",
    "probability_flow_nll",
]

EpsilonFn = Callable[[Mapping[str, Tensor], Tensor], dict[str, Tensor]]
"""``eps_hat = eps_fn(x_t, t)``: the noise prediction per field at times ``t`` ``[B]`` in ``[eps, 1]``."""

WEIGHTINGS = ("likelihood", "score_matching")
"""``lambda(t)`` of the score-matching loss: ``g(t)^2`` (the likelihood weighting, Song et al. 2021b) or
``sigma_t^2`` (the original weighting of Song et al. 2021a, a plain noise MSE)."""


def _uniform(size: int, generator: torch.Generator | None, device: torch.device | str) -> Tensor:
    """``size`` uniform draws in ``[0, 1)`` (float64) from ``generator`` (else the global generator)."""
    if generator is None:
        return torch.rand(size, dtype=torch.float64, device=device)
    return torch.rand(size, dtype=torch.float64, generator=generator, device=generator.device).to(device)


def _view(values: Tensor, like: Tensor) -> Tensor:
    """Per-sample ``values`` ``[B]`` shaped to broadcast against ``like``, in its dtype."""
    return values.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


class VPSDE:
    """The VP SDE ``dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw``, ``beta(t) = beta_min + t (beta_max -
    beta_min)``.

    Every coefficient is formed in float64 and returned in the dtype of ``t``. With
    ``B(t) = int_0^t beta = beta_min t + (beta_max - beta_min) t^2 / 2``: ``alpha_t^2 = exp(-B)``,
    ``sigma_t^2 = -expm1(-B)``, ``gamma(t) = -log SNR(t) = B + log(-expm1(-B))`` and
    ``gamma'(t) = beta(t) / sigma_t^2 = g(t)^2 / sigma_t^2``.

    Args:
        beta_min: ``beta(0)`` (the paper's 0.1).
        beta_max: ``beta(1)`` (the paper's 20).
        eps: the smallest time (the paper's 1e-5 for the VP SDE): training, the likelihood and sampling live
            on ``[eps, 1]``.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, eps: float = 1e-5) -> None:
        if not 0.0 < beta_min < beta_max:
            raise ValueError(f"need 0 < beta_min < beta_max, got {beta_min} and {beta_max}")
        if not 0.0 < eps < 1.0:
            raise ValueError(f"eps must be in (0, 1), got {eps}")
        self.beta_min, self.beta_max, self.eps = float(beta_min), float(beta_max), float(eps)

    # ------------------------------------------------------------------ coefficients
    @staticmethod
    def _t64(t: Tensor | float) -> Tensor:
        return torch.as_tensor(t, dtype=torch.float64)

    def beta(self, t: Tensor) -> Tensor:
        """``beta(t) = g(t)^2``."""
        t64 = self._t64(t)
        return (self.beta_min + t64 * (self.beta_max - self.beta_min)).to(torch.as_tensor(t).dtype)

    def _integral(self, t: Tensor | float) -> Tensor:
        """``B(t) = int_0^t beta`` (float64)."""
        t64 = self._t64(t)
        return self.beta_min * t64 + 0.5 * (self.beta_max - self.beta_min) * t64**2

    def integral(self, t: Tensor) -> Tensor:
        """``B(t) = int_0^t beta(s) ds``."""
        return self._integral(t).to(torch.as_tensor(t).dtype)

    def alpha(self, t: Tensor) -> Tensor:
        """``alpha_t = exp(-B(t) / 2)``, the mean coefficient of ``x_t | x_0``."""
        return torch.exp(-0.5 * self._integral(t)).to(torch.as_tensor(t).dtype)

    def sigma2(self, t: Tensor) -> Tensor:
        """``sigma_t^2 = 1 - alpha_t^2 = -expm1(-B(t))``, the variance of ``x_t | x_0``."""
        return (-torch.expm1(-self._integral(t))).to(torch.as_tensor(t).dtype)

    def sigma(self, t: Tensor) -> Tensor:
        """``sigma_t``."""
        return (-torch.expm1(-self._integral(t))).sqrt().to(torch.as_tensor(t).dtype)

    def gamma(self, t: Tensor) -> Tensor:
        """``gamma(t) = log(sigma_t^2 / alpha_t^2) = -log SNR(t)`` (increasing)."""
        b = self._integral(t)
        return (b + torch.log(-torch.expm1(-b))).to(torch.as_tensor(t).dtype)

    def dgamma(self, t: Tensor) -> Tensor:
        """``gamma'(t) = beta(t) / sigma_t^2 = g(t)^2 / sigma_t^2``: the likelihood weighting in terms of the
        noise error, ``g^2 ||s - grad log p_0t||^2 = g^2 / sigma^2 ||eps_hat - eps||^2``."""
        t64 = self._t64(t)
        beta = self.beta_min + t64 * (self.beta_max - self.beta_min)
        return (beta / -torch.expm1(-self._integral(t64))).to(torch.as_tensor(t).dtype)

    def time_of_gamma(self, gamma: Tensor) -> Tensor:
        """The inverse of :meth:`gamma`: ``B = softplus(gamma)``, then the positive root of
        ``beta_min t + (beta_max - beta_min) t^2 / 2 = B``, written ``2 B / (beta_min + sqrt(beta_min^2 +
        2 (beta_max - beta_min) B))`` so that nothing cancels."""
        g64 = torch.as_tensor(gamma, dtype=torch.float64)
        b = torch.nn.functional.softplus(g64)
        root = torch.sqrt(self.beta_min**2 + 2.0 * (self.beta_max - self.beta_min) * b)
        t = 2.0 * b / (self.beta_min + root)
        return t.to(torch.as_tensor(gamma).dtype)

    # ------------------------------------------------------------------ the process
    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """``f(x, t) = -1/2 beta(t) x`` (``t`` ``[B]``)."""
        return -0.5 * _view(self.beta(t), x) * x

    def marginal(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """``x_t = alpha_t x_0 + sigma_t noise`` (``t`` ``[B]``)."""
        return _view(self.alpha(t), x0) * x0 + _view(self.sigma(t), x0) * noise

    @staticmethod
    def prior_nll(z: Tensor) -> Tensor:
        """``-log N(z; 0, I)`` of each sample ``[B]`` (nats), the prior ``pi`` at ``t = 1``."""
        return 0.5 * (z.pow(2) + math.log(2.0 * math.pi)).flatten(1).sum(1)

    # ------------------------------------------------------------------ the weighting and the times
    def importance_normaliser(self) -> float:
        """``Z = int_eps^1 g^2 / sigma^2 dt = gamma(1) - gamma(eps)``."""
        ends = self.gamma(torch.tensor([self.eps, 1.0], dtype=torch.float64))
        return float(ends[1] - ends[0])

    def importance_density(self, t: Tensor) -> Tensor:
        """``p(t) = gamma'(t) / Z`` on ``[eps, 1]``: proportional to ``g(t)^2 / sigma_t^2``, the likelihood
        weighting of the noise error, so that under it the weighting is the constant ``Z``."""
        return self.dgamma(t) / self.importance_normaliser()

    def sample_times(
        self, size: int, importance: bool, generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> Tensor:
        """``size`` times (float64): uniform on ``[eps, 1]``, or with ``importance`` from
        :meth:`importance_density`, by inverting its distribution function: ``gamma`` uniform between
        ``gamma(eps)`` and ``gamma(1)``, mapped back by :meth:`time_of_gamma`."""
        u = _uniform(size, generator, device)
        if not importance:
            return self.eps + (1.0 - self.eps) * u
        g_eps = self.gamma(torch.tensor(self.eps, dtype=torch.float64))
        return self.time_of_gamma(g_eps + u * self.importance_normaliser()).to(device)

    def time_density(self, t: Tensor, importance: bool) -> Tensor:
        """The density :meth:`sample_times` draws ``t`` from."""
        if importance:
            return self.importance_density(t)
        return torch.full_like(torch.as_tensor(t, dtype=torch.float64), 1.0 / (1.0 - self.eps))

    def noise_weight(self, t: Tensor, weighting: str) -> Tensor:
        """The weight ``w(t)`` of the noise error ``||eps_hat - eps||^2`` in the objective
        ``int_eps^1 w(t) E||eps_hat - eps||^2 dt``:

        - ``likelihood``: ``1/2 g^2 / sigma^2 = 1/2 gamma'(t)``, so that the objective is the diffusion term
          of the bound on the negative log-likelihood (theorems 1-4 of Song et al. 2021b in the noise
          parameterisation; eq. 17 of Kingma et al. 2021);
        - ``score_matching``: ``1 / (1 - eps)`` (``lambda = sigma^2``): the noise MSE averaged uniformly over
          ``t``, the original objective of Song et al. (2021a).
        """
        if weighting == "likelihood":
            return 0.5 * self.dgamma(t)
        if weighting == "score_matching":
            return torch.full_like(torch.as_tensor(t, dtype=torch.float64), 1.0 / (1.0 - self.eps))
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")

    def estimator_weight(self, t: Tensor, weighting: str, importance: bool) -> Tensor:
        """``w(t) / p(t)`` at times drawn by :meth:`sample_times`: the per-draw weight that makes
        ``w(t) / p(t) ||eps_hat - eps||^2`` unbiased for the objective. With ``importance`` and the likelihood
        weighting it is the constant ``Z / 2``; for ``score_matching`` the importance density is the uniform
        one (proportional to its own weight), so ``importance`` changes nothing there."""
        if importance and weighting == "score_matching":
            importance = False
        return self.noise_weight(t, weighting) / self.time_density(t, importance)


# ---------------------------------------------------------------------- flattening the fields
def _flatten(x: Mapping[str, Tensor]) -> tuple[Tensor, list[tuple[str, torch.Size]]]:
    """Fields (in the dict's order) as one ``[B, D]`` vector, and the layout to undo it."""
    layout = [(k, v.shape[1:]) for k, v in x.items()]
    size = next(iter(x.values())).shape[0]
    return torch.cat([v.reshape(size, -1) for v in x.values()], dim=1), layout


def _log_time_grid(sde: VPSDE, solver: ODESolver, forward: bool, like: Tensor) -> Tensor:
    """The solver's grid in ``u = log t`` between ``log eps`` and 0 (``forward``: increasing), evenly spaced
    for a fixed-grid solver, the two ends for an adaptive one. The ODEs are solved in ``log t``: near ``eps``
    the dynamics change on the scale ``sigma_t^2 / beta ~ t``, which ``log t`` makes uniform."""
    points = solver.steps + 1 if solver.fixed else 2
    grid = torch.linspace(math.log(sde.eps), 0.0, points, dtype=like.dtype, device=like.device)
    return grid if forward else grid.flip(0)


def _odeint(func: Callable[..., Any], state: Any, grid: Tensor, solver: ODESolver) -> Any:
    """``torchdiffeq.odeint`` on a grid of :func:`_log_time_grid`, the final state only.

    An adaptive torchdiffeq solver would otherwise take its last step past the end and interpolate back, and
    its first-step heuristic probes beyond the start; outside ``[eps, 1]`` the SDE is undefined (``t < 0``) or
    meaningless, so the last step is made to land on the end (``step_t``) and ``func`` must read the time
    clamped into ``[log eps, 0]`` (:func:`_time_of`), which accepted steps never leave."""
    import torchdiffeq

    kwargs = solver.odeint_kwargs()
    if not solver.fixed:
        kwargs["options"] = {**kwargs["options"], "step_t": grid[-1:]}
    path = torchdiffeq.odeint(func, state, grid, **kwargs)
    if isinstance(path, tuple):
        return tuple(p[-1] for p in path)
    return path[-1]


def _time_of(u: Tensor, sde: VPSDE, size: int, dtype: torch.dtype) -> Tensor:
    """``t = exp(u)`` ``[size]`` with ``u`` clamped into ``[log eps, 0]``."""
    return torch.exp(u.to(dtype).clamp(math.log(sde.eps), 0.0)).expand(size)


def _unflatten(flat: Tensor, layout: Sequence[tuple[str, torch.Size]]) -> dict[str, Tensor]:
    out, start = {}, 0
    for key, shape in layout:
        width = math.prod(shape)
        out[key] = flat[:, start:start + width].reshape(flat.shape[0], *shape)
        start += width
    return out


# ---------------------------------------------------------------------- the probability-flow ODE
def probability_flow_drift(
    eps_fn: EpsilonFn, sde: VPSDE, x: Mapping[str, Tensor], t: Tensor
) -> dict[str, Tensor]:
    """``dx/dt = f - 1/2 g^2 score = 1/2 beta(t) (eps_hat / sigma_t - x)`` per field (``t`` ``[B]``)."""
    eps = eps_fn(x, t)
    out = {}
    for k, v in x.items():
        out[k] = 0.5 * _view(sde.beta(t), v) * (eps[k].to(v.dtype) / _view(sde.sigma(t), v) - v)
    return out


def _divergence(field: Tensor, x: Tensor, trace: str, probe: Tensor | None) -> Tensor:
    """``div field(x)`` per sample ``[B]``: exact (one backward pass per coordinate) or Hutchinson's
    ``probe^T (d field / dx) probe``."""
    if trace == "hutchinson":
        (vjp,) = torch.autograd.grad(field, x, probe)
        return (vjp * probe).sum(1)
    total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for i in range(x.shape[1]):
        (row,) = torch.autograd.grad(field[:, i].sum(), x, retain_graph=i + 1 < x.shape[1])
        total = total + row[:, i]
    return total


def probability_flow_nll(
    eps_fn: EpsilonFn, sde: VPSDE, x: Mapping[str, Tensor], solver: ODESolver | None = None,
    trace: str = "exact", probe: str = "rademacher", generator: torch.Generator | None = None,
) -> tuple[Tensor, int]:
    """``-log p(x)`` of each sample ``[B]`` (float64, nats) at time ``eps`` under the probability-flow ODE
    with the prior ``N(0, I)`` at ``t = 1`` (Song et al. 2021a, appendix D.2), and the network evaluations
    it took.

    The instantaneous change of variables: solving ``dx/dt = F(x, t)`` (:func:`probability_flow_drift`)
    from ``eps`` to 1 (in ``log t``, :func:`_log_time_grid`) together with ``int div F dt`` gives
    ``log p_eps(x) = log N(x_1; 0, I) + int_eps^1 div F dt``, with ``div F = 1/2 beta (div eps_hat / sigma -
    D)``. ``trace="exact"`` takes ``D`` backward passes per evaluation; ``"hutchinson"`` one, with one probe
    per solve (``rademacher`` or ``gaussian``, drawn from ``generator``), an unbiased estimate of the
    log-density.

    Args:
        eps_fn: the noise prediction.
        sde: the SDE.
        x: the points, by field, each ``[B, ...]`` (one dtype).
        solver: how the ODE is solved (default dopri5, ``atol = rtol = 1e-5``, the paper's).
        trace: ``exact`` or ``hutchinson``.
        probe: Hutchinson's probe.
        generator: where the probe comes from.
    """
    if trace not in ("exact", "hutchinson"):
        raise ValueError(f"trace must be 'exact' or 'hutchinson', got {trace!r}")
    solver = solver or ODESolver("dopri5", atol=1e-5, rtol=1e-5)
    flat, layout = _flatten(x)
    size, dim = flat.shape
    v = None
    if trace == "hutchinson":
        if generator is None:
            v = hutchinson_probe(flat.shape, probe, flat)
        elif probe == "rademacher":
            v = torch.randint(0, 2, flat.shape, generator=generator, device=generator.device)
            v = v.to(flat.device, flat.dtype) * 2.0 - 1.0
        elif probe == "gaussian":
            v = torch.randn(flat.shape, generator=generator, device=generator.device)
            v = v.to(flat.device, flat.dtype)
        else:
            raise ValueError(f"probe must be 'gaussian' or 'rademacher', got {probe!r}")
    calls = [0]

    def dynamics(u: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """``d/du`` of ``(x, int div F dt)`` in ``u = log t``: ``t F`` and ``t div F``."""
        calls[0] += 1
        t = _time_of(u, sde, size, flat.dtype)
        with torch.enable_grad():
            z = state[0].detach().requires_grad_(True)
            eps, _ = _flatten(eps_fn(_unflatten(z, layout), t))
            eps = eps.to(z.dtype)
            div_eps = _divergence(eps, z, trace, v)
        beta, sigma = sde.beta(t), sde.sigma(t)
        velocity = 0.5 * (t * beta)[:, None] * (eps.detach() / sigma[:, None] - z.detach())
        return velocity, 0.5 * t * beta * (div_eps.detach() / sigma - dim)

    grid = _log_time_grid(sde, solver, True, flat)
    z1, integral = _odeint(dynamics, (flat.detach(), flat.new_zeros(size)), grid, solver)
    return VPSDE.prior_nll(z1.double()) - integral.double(), calls[0]


# ---------------------------------------------------------------------- samplers
class SDESampler:
    """What a continuous-time score model needs from its sampler: ``nfe()`` and
    ``__call__(eps_fn, sde, x_1, noise) -> x_eps`` (``x_1`` drawn from the prior, one entry per field)."""

    steps: int | None

    def nfe(self) -> int:
        """Network evaluations per sample (of the last call for an adaptive solver; 0 before any)."""
        raise NotImplementedError

    def __call__(
        self, eps_fn: EpsilonFn, sde: VPSDE, x: Mapping[str, Tensor], noise: NoiseSource
    ) -> dict[str, Tensor]:
        raise NotImplementedError


class EulerMaruyamaSampler(SDESampler):
    """Euler-Maruyama on the reverse-time SDE ``dx = [f - g^2 score] dt + g dw_bar`` (Song et al. 2021a,
    eq. 6; their "Euler-Maruyama" predictor without a corrector), ``steps`` uniform steps from ``t = 1`` to
    ``eps``: ``x <- x + (1/2 beta x - beta eps_hat / sigma) dt + sqrt(beta dt) z``. The last step, which lands
    on ``eps``, adds no noise (their ``noise_removal``). NFE = ``steps``.

    Args:
        steps: number of steps (the paper's 1,000; 100 here by default for the CPU budget).
    """

    def __init__(self, steps: int = 100) -> None:
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.steps = int(steps)

    def nfe(self) -> int:
        return self.steps

    def __call__(
        self, eps_fn: EpsilonFn, sde: VPSDE, x: Mapping[str, Tensor], noise: NoiseSource
    ) -> dict[str, Tensor]:
        x = dict(x)
        first = next(iter(x.values()))
        grid = torch.linspace(1.0, sde.eps, self.steps + 1, dtype=torch.float64)
        for i in range(self.steps):
            t = torch.full((first.shape[0],), float(grid[i]), dtype=first.dtype, device=first.device)
            dt = float(grid[i] - grid[i + 1])
            eps = eps_fn(x, t)
            beta, sigma = float(sde.beta(grid[i])), float(sde.sigma(grid[i]))
            x = {k: v + (0.5 * beta * v - beta * eps[k].to(v.dtype) / sigma) * dt for k, v in x.items()}
            if i + 1 < self.steps:
                z = noise()
                x = {k: v + math.sqrt(beta * dt) * z[k].to(v.dtype) for k, v in x.items()}
        return x


class ProbabilityFlowSampler(SDESampler):
    """The probability-flow ODE ``dx/dt = f - 1/2 g^2 score`` (Song et al. 2021a, eq. 13) solved from
    ``t = 1`` to ``eps`` by torchdiffeq, in ``log t`` (a fixed grid is even in ``log t``): deterministic
    given ``x_1``.

    Args:
        method: ``dopri5`` (default, adaptive, as the paper's RK45) or another torchdiffeq solver; fixed-grid
            ``euler``, ``midpoint``, ``rk4`` take ``steps`` steps.
        steps: steps of a fixed-grid solver (required there; None for an adaptive one).
        atol: absolute tolerance of an adaptive solver.
        rtol: relative tolerance of an adaptive solver.
    """

    def __init__(
        self, method: str = "dopri5", steps: int | None = None, atol: float = 1e-5, rtol: float = 1e-5
    ) -> None:
        if method in FIXED_STAGES and steps is None:
            raise ValueError(
                f"the fixed-grid solver {method!r} needs steps (e.g. model.module.sampler.steps=50)"
            )
        self.solver = ODESolver(method, 1 if steps is None else int(steps), float(atol), float(rtol))
        self.steps = self.solver.steps if self.solver.fixed else None
        self.last_evaluations: int | None = None

    def nfe(self) -> int:
        if self.solver.fixed:
            return FIXED_STAGES[self.solver.method] * self.solver.steps
        return self.last_evaluations or 0

    def __call__(
        self, eps_fn: EpsilonFn, sde: VPSDE, x: Mapping[str, Tensor], noise: NoiseSource
    ) -> dict[str, Tensor]:
        flat, layout = _flatten(x)
        size = flat.shape[0]
        calls = [0]

        def dynamics(u: Tensor, z: Tensor) -> Tensor:
            """``dx/du = t F(x, t)`` in ``u = log t``."""
            calls[0] += 1
            t = _time_of(u, sde, size, z.dtype)
            drift = probability_flow_drift(eps_fn, sde, _unflatten(z, layout), t)
            return t[:, None] * _flatten(drift)[0]

        grid = _log_time_grid(sde, self.solver, False, flat)
        end = _odeint(dynamics, flat, grid, self.solver)
        self.last_evaluations = calls[0]
        return _unflatten(end, layout)

