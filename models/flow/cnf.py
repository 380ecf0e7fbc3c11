"""Continuous normalizing flows over the (dequantised) crystal fields: ``cnf`` (exact trace) and ``ffjord``
(Hutchinson trace estimator).

- Chen, Rubanova, Bettencourt & Duvenaud (2018), "Neural Ordinary Differential Equations", NeurIPS,
  arXiv:1806.07366, section 4 (theorem 1, the instantaneous change of variables): for ``dz/dt = f(z, t)``,
  ``d log p(z(t)) / dt = -tr(df/dz)``, with the trace computed exactly.
- Grathwohl, Chen, Bettencourt, Sutskever & Duvenaud (2019), "FFJORD: Free-form Continuous Dynamics for
  Scalable Reversible Generative Models", ICLR, arXiv:1810.01367, section 3: the trace replaced by
  Hutchinson's unbiased estimator ``eps^T (df/dz) eps`` with one probe ``eps`` (Gaussian or Rademacher) held
  fixed over each solve and a vector-Jacobian product for ``eps^T df/dz``; the dynamics a "concat-squash" MLP
  (``y = (W x + b) sigmoid(a_g t + c_g) + a_b t`` per layer); the end time ``T`` learnt; the ODE solved by
  dopri5, optionally with the adjoint method for the gradients.

In the data direction the flow is a fixed per-channel standardisation fitted on the training data
(:class:`Standardise`, the data preprocessing of FFJORD's tabular experiments, here kept inside the flow so
its log-determinant counts) and the solution map of the ODE from ``t = 0`` (data) to ``t = T`` (base),
whose log-determinant is ``int_0^T tr(df/dz) dt``. The representation, the standard normal base and the
NLL are those of :class:`~bench.models.flow.base.CrystalFlow`, so ``nll_test`` is in the same space as
realnvp's and glow's. The trace used in training is the variant's (``exact`` or ``hutchinson``); in
evaluation mode it is always exact (``nll_test``), and evaluation mode (``nll_test`` and sampling) uses the
evaluation solver.

Exact trace of the concat-squash MLP: the Jacobian is ``diag(g_L) W_L A_{L-1} W_{L-1} ... A_1 W_1`` with
``A_l = diag(sigma'(u_l) g_l)`` (``g_l`` the time gates), so by the cyclic property its trace is
``tr(A_{L-1} W_{L-1} ... W_2 A_1 M)`` with the sample-independent ``M = W_1 diag(g_L) W_L``. With two hidden
layers this costs one ``H x D x H`` product per evaluation and ``O(H^2)`` per sample, against ``D`` backward
passes for a free-form network. Optional
RNODE regularisers (Finlay, Jacobsen, Nurbekyan & Oberman 2020, "How to train your neural ODE: the world of
Jacobian and kinetic regularization", ICML, arXiv:2002.02798): the kinetic energy ``int ||f||^2 dt`` and the
Jacobian Frobenius norm ``int ||eps^T df/dz||^2 dt``, integrated along the same solve.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from bench.models.base import FIELDS, OptimizerFactory
from bench.models.flow.base import CrystalFlow
from bench.models.flow.transforms import Fields, FieldTransform, field_widths
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = [
    "ACTIVATIONS",
    "FIXED_STAGES",
    "ConcatSquashLinear",
    "ConcatSquashMLP",
    "ContinuousFlow",
    "CrystalCNF",
    "ODESolver",
    "Standardise",
    "hutchinson_probe",
]

ACTIVATIONS = ("softplus", "tanh")
FIXED_STAGES = {"euler": 1, "midpoint": 2, "rk4": 4}
"""Function evaluations per step of torchdiffeq's fixed-grid solvers (``rk4`` is Kutta's 3/8 rule)."""
_ADAPTIVE = ("dopri5", "dopri8", "bosh3", "adaptive_heun")


def _activation(name: str, pre: Tensor) -> tuple[Tensor, Tensor]:
    """``(sigma(pre), sigma'(pre))`` for ``softplus`` or ``tanh``."""
    if name == "softplus":
        return F.softplus(pre), torch.sigmoid(pre)
    value = torch.tanh(pre)
    return value, 1.0 - value.pow(2)


def hutchinson_probe(shape: Sequence[int], kind: str, like: Tensor) -> Tensor:
    """A probe with zero mean and identity covariance: ``gaussian`` ``N(0, I)`` or ``rademacher`` ``+-1``
    (drawn from the global torch generator, as the dequantisation noise in training)."""
    if kind == "gaussian":
        return torch.randn(tuple(shape), dtype=like.dtype, device=like.device)
    if kind == "rademacher":
        return torch.randint(0, 2, tuple(shape), device=like.device).to(like.dtype) * 2.0 - 1.0
    raise ValueError(f"probe must be 'gaussian' or 'rademacher', got {kind!r}")


# ---------------------------------------------------------------------- the dynamics network
class ConcatSquashLinear(nn.Module):
    """FFJORD's concat-squash layer: ``y = (W x + b) * sigmoid(a_g t + c_g) + a_b t``.

    Args:
        d_in: input width.
        d_out: output width.
    """

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(d_in, d_out)
        self.gate = nn.Linear(1, d_out)
        self.time_bias = nn.Linear(1, d_out, bias=False)

    def time_terms(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(gate [d_out], bias [d_out])`` at time ``t`` (a scalar tensor)."""
        t = t.reshape(1, 1).to(self.linear.weight.dtype)
        return torch.sigmoid(self.gate(t))[0], self.time_bias(t)[0]

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        """The layer at time ``t`` on ``x`` ``[B, d_in]``."""
        gate, bias = self.time_terms(t)
        return self.linear(x) * gate + bias


class ConcatSquashMLP(nn.Module):
    """The dynamics ``f(z, t)``: concat-squash layers with a smooth activation between them (no activation
    after the last), with an exact, cheap trace of its Jacobian (:meth:`with_trace`).

    Args:
        dim: the width of ``z``.
        hidden_width: width of every hidden layer.
        hidden_layers: number of hidden layers (>= 1).
        activation: ``softplus`` (FFJORD's tabular models) or ``tanh`` (its toy models).
    """

    def __init__(self, dim: int, hidden_width: int, hidden_layers: int, activation: str = "softplus") -> None:
        super().__init__()
        if hidden_layers < 1 or hidden_width < 1:
            raise ValueError(
                f"hidden_layers and hidden_width must be >= 1, got {hidden_layers} and {hidden_width}"
            )
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.activation = activation
        widths = [dim, *([hidden_width] * hidden_layers), dim]
        self.layers = nn.ModuleList(
            ConcatSquashLinear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        """``f(z, t)`` ``[B, D]``."""
        h = z
        for layer in self.layers[:-1]:
            h = _activation(self.activation, layer(t, h))[0]
        return self.layers[-1](t, h)

    def with_trace(self, t: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """``(f(z, t) [B, D], tr(df/dz) [B])``, the trace exact.

        With ``J = diag(g_L) W_L A_{L-1} ... A_1 W_1``: ``tr J = tr(A_{L-1} W_{L-1} ... W_2 A_1 M)``,
        ``M = W_1 diag(g_L) W_L`` (cyclic property), built from the right one hidden layer at a time.
        """
        h, slopes = z, []
        for layer in self.layers[:-1]:
            gate, _ = layer.time_terms(t)
            h, slope = _activation(self.activation, layer(t, h))
            slopes.append(slope * gate)
        last = self.layers[-1]
        out_gate, _ = last.time_terms(t)
        f = last(t, h)
        first_w = self.layers[0].linear.weight
        mixed = first_w @ (out_gate[:, None] * last.linear.weight)  # [H_1, H_{L-1}]
        if len(slopes) == 1:
            return f, slopes[0] @ torch.diagonal(mixed)
        if len(slopes) == 2:  # tr(A_2 W_2 A_1 M) = a_2^T (W_2 * M^T) a_1: no [B, H, H] tensor
            bilinear = self.layers[1].linear.weight * mixed.T
            return f, ((slopes[1] @ bilinear) * slopes[0]).sum(dim=1)
        product = slopes[0][:, :, None] * mixed  # A_1 M, [B, H_1, H_{L-1}]
        for slope, layer in zip(slopes[1:-1], self.layers[1:-2], strict=True):
            product = slope[:, :, None] * (layer.linear.weight @ product)
        final_w = self.layers[-2].linear.weight  # W_{L-1}, [H_{L-1}, H_{L-2}]
        trace = torch.einsum("bj,jk,bkj->b", slopes[-1], final_w, product)
        return f, trace


# ---------------------------------------------------------------------- solving the ODE
@dataclass(frozen=True)
class ODESolver:
    """How an ODE is solved (torchdiffeq).

    Attributes:
        method: a fixed-grid solver (``rk4``, ``midpoint``, ``euler``) or an adaptive one (``dopri5``, ...).
        steps: steps of a fixed-grid solver over the whole interval.
        atol: absolute tolerance of an adaptive solver.
        rtol: relative tolerance of an adaptive solver.
        max_num_steps: an adaptive solver gives up after this many steps.
    """

    method: str = "dopri5"
    steps: int = 8
    atol: float = 1e-5
    rtol: float = 1e-5
    max_num_steps: int = 10_000

    def __post_init__(self) -> None:
        if self.method not in FIXED_STAGES and self.method not in _ADAPTIVE:
            raise ValueError(f"unknown ODE solver {self.method!r}; use one of {[*FIXED_STAGES, *_ADAPTIVE]}")
        if self.method in FIXED_STAGES and self.steps < 1:
            raise ValueError(f"a fixed-grid solver needs steps >= 1, got {self.steps}")

    @property
    def fixed(self) -> bool:
        """Whether the solver takes a fixed number of steps."""
        return self.method in FIXED_STAGES

    def grid(self, reverse: bool, like: Tensor) -> Tensor:
        """The times handed to torchdiffeq on the unit interval (the grid itself for a fixed-grid solver)."""
        points = self.steps + 1 if self.fixed else 2
        grid = torch.linspace(0.0, 1.0, points, dtype=like.dtype, device=like.device)
        return grid.flip(0) if reverse else grid

    def odeint_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``torchdiffeq.odeint``."""
        if self.fixed:
            return {"method": self.method}
        return {"method": self.method, "atol": self.atol, "rtol": self.rtol,
                "options": {"max_num_steps": int(self.max_num_steps)}}


class _Dynamics(nn.Module):
    """The augmented ODE on the unit interval ``s in [0, 1]``: ``dz/ds = T f(z, sT)``, ``dlogdet/ds =
    T tr(df/dz)`` and, when asked, the integrands of the RNODE regularisers. The end time is
    ``T = sqrt_end_time^2`` (learnt when ``learn_end_time``; FFJORD's parameterisation).

    Set :attr:`mode` (``"sample"``: ``z`` only; ``"exact"`` or ``"hutchinson"``: ``(z, logdet, *regs)``),
    :attr:`probe` and :attr:`regularise` before a solve.
    """

    def __init__(self, net: nn.Module, end_time: float, learn_end_time: bool) -> None:
        super().__init__()
        if end_time <= 0:
            raise ValueError(f"end_time must be > 0, got {end_time}")
        self.net = net
        root = torch.tensor(math.sqrt(end_time))
        if learn_end_time:
            self.sqrt_end_time = nn.Parameter(root)
        else:
            self.register_buffer("sqrt_end_time", root)
        self.mode = "exact"
        self.probe: Tensor | None = None
        self.regularise = False
        self.evaluations = 0

    def end_time(self) -> Tensor:
        """``T`` (a scalar tensor)."""
        return self.sqrt_end_time.pow(2)

    def forward(self, s: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """The derivatives of ``state`` with respect to ``s``."""
        self.evaluations += 1
        z = state[0]
        scale = self.end_time()
        t = s.to(z.dtype) * scale
        if self.mode == "sample":
            return (scale * self.net(t, z),)
        vjp = None
        if self.mode == "hutchinson" or self.regularise:
            if self.probe is None:
                raise RuntimeError("a probe must be set before a solve that uses one")
            keep_graph = torch.is_grad_enabled()
            with torch.enable_grad():
                leaf = z if z.requires_grad else z.detach().requires_grad_(True)
                if self.mode == "exact":
                    f, trace = self.net.with_trace(t, leaf)
                else:
                    f, trace = self.net(t, leaf), None
                (vjp,) = torch.autograd.grad(f, leaf, self.probe, create_graph=keep_graph)
            if trace is None:
                trace = (vjp * self.probe).sum(dim=1)
        else:
            f, trace = self.net.with_trace(t, z)
        derivatives = [scale * f, scale * trace]
        if self.regularise:
            derivatives += [scale * f.pow(2).sum(dim=1), scale * vjp.pow(2).sum(dim=1)]
        return tuple(derivatives)


def _odeint(func: nn.Module, state: tuple[Tensor, ...], grid: Tensor, solver: ODESolver,
            adjoint: bool) -> tuple[Tensor, ...]:
    """Solve and return the state at the last time of ``grid``."""
    import torchdiffeq

    if adjoint:
        path = torchdiffeq.odeint_adjoint(func, state, grid, adjoint_params=tuple(func.parameters()),
                                          **solver.odeint_kwargs())
    else:
        path = torchdiffeq.odeint(func, state, grid, **solver.odeint_kwargs())
    return tuple(p[-1] for p in path)


def _flatten(fields: Mapping[str, Tensor]) -> Tensor:
    size = fields["lattice"].shape[0]
    return torch.cat([fields[k].reshape(size, -1) for k in FIELDS], dim=1)


def _unflatten(vec: Tensor, num_types: int, max_atoms: int) -> Fields:
    size, types = vec.shape[0], max_atoms * num_types
    return {
        "atom_types": vec[:, :types].reshape(size, max_atoms, num_types),
        "frac_coords": vec[:, types:types + 3 * max_atoms].reshape(size, max_atoms, 3),
        "lattice": vec[:, types + 3 * max_atoms:],
    }


class ContinuousFlow(FieldTransform):
    """The solution map of ``dz/dt = f(z, t)`` from ``t = 0`` (data) to ``t = T`` (base), on the flattened
    fields (types, then coordinates, then lattice), as a :class:`FieldTransform` with log-det
    ``int_0^T tr(df/dz) dt``.

    In training mode the trace is ``trace`` (``exact`` or ``hutchinson``, one probe per solve) and the ODE is
    solved by ``solver``; in evaluation mode the trace is exact and the solver ``eval_solver``. After a
    training-mode forward with ``regularise`` set, :attr:`regularisers` holds the per-sample integrals
    ``kinetic`` (``int ||f||^2 dt``) and ``jacobian`` (``int ||eps^T df/dz||^2 dt``).

    Args:
        net: the dynamics, a module ``net(t, z) -> f`` with ``net.with_trace(t, z) -> (f, tr df/dz)``.
        num_types: K + 1.
        max_atoms: N.
        trace: ``exact`` or ``hutchinson`` (training only).
        probe: ``rademacher`` or ``gaussian`` (Hutchinson's probe, also the Frobenius regulariser's).
        solver: the training solver.
        eval_solver: the solver of evaluation mode (NLL and sampling).
        end_time: ``T`` at initialisation.
        learn_end_time: whether ``T`` is a parameter.
        adjoint: gradients by the adjoint method (training), instead of backpropagating through the solver.
    """

    def __init__(self, net: nn.Module, num_types: int, max_atoms: int, trace: str = "exact",
                 probe: str = "rademacher", solver: ODESolver | None = None,
                 eval_solver: ODESolver | None = None, end_time: float = 1.0, learn_end_time: bool = True,
                 adjoint: bool = False) -> None:
        super().__init__()
        if trace not in ("exact", "hutchinson"):
            raise ValueError(f"trace must be 'exact' or 'hutchinson', got {trace!r}")
        if probe not in ("rademacher", "gaussian"):
            raise ValueError(f"probe must be 'rademacher' or 'gaussian', got {probe!r}")
        self.dynamics = _Dynamics(net, end_time, learn_end_time)
        self.num_types, self.max_atoms = int(num_types), int(max_atoms)
        self.trace, self.probe = trace, probe
        self.solver = solver or ODESolver()
        self.eval_solver = eval_solver or ODESolver()
        self.adjoint = bool(adjoint)
        self.regularise = False
        self.regularisers: dict[str, Tensor] = {}
        self.last_evaluations = 0

    def _settings(self) -> tuple[ODESolver, str, bool]:
        if self.training:
            return self.solver, self.trace, self.adjoint
        return self.eval_solver, "exact", False

    def integrate(self, z0: Tensor) -> tuple[Tensor, Tensor]:
        """Data direction on flat vectors ``[B, D]``: ``(z(T), int_0^T tr(df/dz) dt [B])``."""
        solver, trace, adjoint = self._settings()
        regularise = self.training and self.regularise
        func = self.dynamics
        func.mode, func.regularise = trace, regularise
        needs_probe = trace == "hutchinson" or regularise
        func.probe = hutchinson_probe(z0.shape, self.probe, z0) if needs_probe else None
        zeros = z0.new_zeros(z0.shape[0])
        state = (z0, zeros, zeros, zeros) if regularise else (z0, zeros)
        start = func.evaluations
        # the probe stays set after the solve: the adjoint method solves backwards with it in backward()
        end = _odeint(func, state, solver.grid(False, z0), solver, adjoint)
        self.last_evaluations = func.evaluations - start
        self.regularisers = {"kinetic": end[2], "jacobian": end[3]} if regularise else {}
        return end[0], end[1]

    def integrate_back(self, z1: Tensor) -> Tensor:
        """Base direction on flat vectors: ``z(0)`` from ``z(T)`` (solved backwards, no trace)."""
        solver = self._settings()[0]
        func = self.dynamics
        func.mode = "sample"
        start = func.evaluations
        (z0,) = _odeint(func, (z1,), solver.grid(True, z1), solver, False)
        self.last_evaluations = func.evaluations - start
        return z0

    def forward(self, x: Mapping[str, Tensor]) -> tuple[Fields, Tensor]:
        """Data direction to base direction; returns ``(z, log|det dz/dx|)`` with the log-det ``[B]``."""
        z, logdet = self.integrate(_flatten(x))
        return _unflatten(z, self.num_types, self.max_atoms), logdet

    def inverse(self, y: Mapping[str, Tensor]) -> Fields:
        """Base direction to data direction."""
        return _unflatten(self.integrate_back(_flatten(y)), self.num_types, self.max_atoms)


# ---------------------------------------------------------------------- data standardisation
class Standardise(FieldTransform):
    """A fixed per-channel standardisation of each field, shared over slots: ``y = (x - mean) / std``,
    log-det ``-positions * sum log std``. The statistics are buffers (saved in checkpoints), set once by
    :meth:`fit`; before that the layer is the identity.

    Args:
        num_types: K + 1.
        min_std: a floor on the fitted standard deviations.
    """

    def __init__(self, num_types: int, min_std: float = 1e-3) -> None:
        super().__init__()
        self.min_std = float(min_std)
        for key, width in field_widths(num_types).items():
            self.register_buffer(f"mean_{key}", torch.zeros(width))
            self.register_buffer(f"log_std_{key}", torch.zeros(width))

    def stats(self, key: str) -> tuple[Tensor, Tensor]:
        """``(mean, log std)`` of field ``key``."""
        return getattr(self, f"mean_{key}"), getattr(self, f"log_std_{key}")

    @torch.no_grad()
    def fit(self, x: Mapping[str, Tensor]) -> None:
        """Set the statistics from ``x`` (over the batch and the slots; biased variance)."""
        for key in FIELDS:
            values = x[key].detach().reshape(-1, x[key].shape[-1]).to(getattr(self, f"mean_{key}").dtype)
            mean, std = values.mean(dim=0), values.var(dim=0, correction=0).sqrt().clamp_min(self.min_std)
            getattr(self, f"mean_{key}").copy_(mean)
            getattr(self, f"log_std_{key}").copy_(torch.log(std))

    def forward(self, x: Mapping[str, Tensor]) -> tuple[Fields, Tensor]:
        """``y = (x - mean) exp(-log std)`` and its log-det ``[B]``."""
        y, logdet = {}, 0.0
        for key in FIELDS:
            mean, log_std = self.stats(key)
            y[key] = (x[key] - mean) * torch.exp(-log_std)
            positions = x[key][0].numel() // x[key].shape[-1]
            logdet = logdet - positions * log_std.sum()
        return y, torch.as_tensor(logdet).expand(x["lattice"].shape[0])

    def inverse(self, y: Mapping[str, Tensor]) -> Fields:
        """``x = y exp(log std) + mean``."""
        out = {}
        for key in FIELDS:
            mean, log_std = self.stats(key)
            out[key] = y[key] * torch.exp(log_std) + mean
        return out


# ---------------------------------------------------------------------- the model
class CrystalCNF(CrystalFlow):
    """A continuous normalizing flow over the dequantised crystal fields, trained by maximum likelihood per
    dimension; ``trace="exact"`` is the CNF of Neural ODEs, ``trace="hutchinson"`` is FFJORD.

    Args:
        optimizer: partial building the optimiser.
        num_types: K + 1 (from the fitted codec).
        max_atoms: N (from the fitted codec).
        hidden_width: width of the dynamics' hidden layers.
        hidden_layers: number of hidden concat-squash layers.
        activation: ``softplus`` or ``tanh``.
        trace: ``exact`` or ``hutchinson`` (training; evaluation is always exact).
        probe: Hutchinson's probe, ``rademacher`` or ``gaussian``.
        end_time: integration time ``T`` at initialisation.
        learn_end_time: whether ``T`` is learnt.
        solver: training solver (``rk4``, ``dopri5``, ...).
        steps: steps of a fixed-grid training solver.
        atol: absolute tolerance of an adaptive training solver.
        rtol: relative tolerance of an adaptive training solver.
        eval_solver: solver for the NLL and sampling.
        eval_steps: steps of a fixed-grid evaluation solver.
        eval_atol: absolute tolerance of an adaptive evaluation solver.
        eval_rtol: relative tolerance of an adaptive evaluation solver.
        max_num_steps: an adaptive solver gives up after this many steps.
        adjoint: gradients by the adjoint method.
        kinetic_weight: weight of RNODE's kinetic energy (per dimension; 0 = off).
        jacobian_weight: weight of RNODE's Jacobian Frobenius norm (per dimension; 0 = off).
        continuous_noise: standard deviation of the Gaussian noise added to filled-slot coordinates (in
            fractions) and to the standardised lattice during training.
    """

    family = "flow"
    paper = (
        "Chen, Rubanova, Bettencourt, Duvenaud (2018). Neural Ordinary Differential Equations. NeurIPS. "
        "arXiv:1806.07366; Grathwohl, Chen, Bettencourt, Sutskever, Duvenaud (2019). FFJORD: Free-form "
        "Continuous Dynamics for Scalable Reversible Generative Models. ICLR. arXiv:1810.01367"
    )

    def __init__(
        self,
        optimizer: OptimizerFactory,
        num_types: int,
        max_atoms: int,
        hidden_width: int = 256,
        hidden_layers: int = 2,
        activation: str = "softplus",
        trace: str = "exact",
        probe: str = "rademacher",
        end_time: float = 1.0,
        learn_end_time: bool = True,
        solver: str = "rk4",
        steps: int = 4,
        atol: float = 1e-5,
        rtol: float = 1e-5,
        eval_solver: str = "dopri5",
        eval_steps: int = 32,
        eval_atol: float = 1e-6,
        eval_rtol: float = 1e-6,
        max_num_steps: int = 10_000,
        adjoint: bool = False,
        kinetic_weight: float = 0.0,
        jacobian_weight: float = 0.0,
        continuous_noise: float = 0.01,
    ) -> None:
        super().__init__(optimizer, num_types, max_atoms, continuous_noise)
        if kinetic_weight < 0 or jacobian_weight < 0:
            raise ValueError(
                f"kinetic_weight and jacobian_weight must be >= 0, got {kinetic_weight} and {jacobian_weight}"
            )
        self._save_plain_hparams()
        self.standardise = Standardise(num_types)
        self.ode = ContinuousFlow(
            ConcatSquashMLP(self.dims, hidden_width, hidden_layers, activation),
            num_types, max_atoms, trace=trace, probe=probe,
            solver=ODESolver(solver, steps, atol, rtol, max_num_steps),
            eval_solver=ODESolver(eval_solver, eval_steps, eval_atol, eval_rtol, max_num_steps),
            end_time=end_time, learn_end_time=learn_end_time, adjoint=adjoint,
        )
        self.kinetic_weight = float(kinetic_weight)
        self.jacobian_weight = float(jacobian_weight)
        self.ode.regularise = self.kinetic_weight > 0 or self.jacobian_weight > 0
        self._sample_evaluations: int | None = None

    def transforms(self) -> Sequence[FieldTransform]:
        """The fixed standardisation, then the ODE (data direction)."""
        return [self.standardise, self.ode]

    def fit_data(self, data: Mapping[str, Tensor]) -> None:
        """Fit the standardisation on one dequantisation of the whole training set (seeded, so a rerun
        fits the same statistics)."""
        generator = torch.Generator().manual_seed(0)
        dtype = self.standardise.mean_lattice.dtype
        x = self.dequantise({k: data[k].detach().to(self.device, dtype) for k in FIELDS}, generator)
        self.standardise.fit(x)

    def loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """NLL per dimension (nats) of the dequantised batch, plus the weighted RNODE terms when enabled."""
        nll = -self.log_prob(self.dequantise(batch)).mean() / self.dims
        terms = {"nll_per_dim": nll, "bits_per_dim": nll / math.log(2.0),
                 "nfe": torch.tensor(float(self.ode.last_evaluations)),
                 "end_time": self.ode.dynamics.end_time().detach()}
        loss = nll
        if self.ode.regularisers:
            kinetic = self.ode.regularisers["kinetic"].mean() / self.dims
            jacobian = self.ode.regularisers["jacobian"].mean() / self.dims
            loss = loss + self.kinetic_weight * kinetic + self.jacobian_weight * jacobian
            terms.update(kinetic=kinetic, jacobian_frobenius=jacobian)
        return {"loss": loss, **terms}

    @property
    def nfe(self) -> int:
        """Dynamics evaluations of the last sampling solve (the fixed-grid count before any sampling)."""
        if self._sample_evaluations is not None:
            return self._sample_evaluations
        solver = self.ode.eval_solver
        return FIXED_STAGES[solver.method] * solver.steps if solver.fixed else 0

    def _sample(self, n: int, generator: torch.Generator | None, condition: Any) -> dict[str, Tensor]:
        out = super()._sample(n, generator, condition)
        self._sample_evaluations = self.ode.last_evaluations
        return out
