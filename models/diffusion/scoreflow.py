"""ScoreFlow: a continuous-time VP-SDE score model trained with the likelihood weighting, with the
probability-flow ODE likelihood as the test NLL.

Song, Durkan, Murray & Ermon (2021), "Maximum Likelihood Training of Score-Based Diffusion Models", NeurIPS,
arXiv:2101.09258, on the VP SDE of Song et al. (2021), "Score-Based Generative Modeling through Stochastic
Differential Equations", ICLR, arXiv:2011.13456 (:mod:`bench.models.diffusion.sde`), and on the fields, the
diffusion space and the transformer of the crystal DDPM (:mod:`bench.models.diffusion.ddpm`: types as one-hots
in ``{-1, +1}``, coordinates as ``2 f - 1``, the codec's standardised lattice):

- ``x_t = alpha_t x + sigma_t eps`` on ``t`` in ``[eps, 1]`` with ``beta`` linear from 0.1 to 20; the network
  predicts ``eps`` (score ``-eps_hat / sigma_t``), conditioned on ``999 t``;
- the loss is denoising score matching with the likelihood weighting ``lambda(t) = g(t)^2`` (theorem 1, the
  bound on the KL divergence), ``1/2 int_eps^1 g^2 / sigma^2 E||eps_hat - eps||^2 dt`` per crystal divided by
  its number of coordinates, with ``t`` drawn from the density proportional to ``g^2 / sigma^2`` (section 5,
  the paper's variance reduction) so every draw has the weight ``Z / 2``; ``weighting: score_matching`` is the
  original ``lambda = sigma^2`` (a noise MSE, ``t`` uniform);
- discrete atom types are not dequantised: they diffuse as ddpm's continuous one-hots, and the likelihood
  closes the chain at ``eps`` with a decoder ``p(x | x_eps)`` proportional to ``q(x_eps | x)``, categorical
  over the one-hot vertices for the types and Gaussian for the continuous fields (:data:`DECODERS`, those of
  :mod:`bench.models.diffusion.vdm`);
- ``test_nll`` is the probability-flow ODE likelihood of ``x_eps`` (Hutchinson's trace by default), made an
  upper bound on ``-log P`` of the codec's fields by those decoders (:func:`ode_bound`); the continuous-time
  bound itself (theorem 2 with the decoders, :func:`likelihood_bound`) is the alternative estimator;
- sampling is Euler-Maruyama on the reverse SDE (default) or the probability-flow ODE
  (:mod:`bench.models.diffusion.sde`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from bench.models.backbone import CrystalTransformer
from bench.models.base import FIELDS, GenerativeModule, Likelihood, OptimizerFactory
from bench.models.diffusion.ddpm import CrystalDDPM
from bench.models.diffusion.sde import (
    VPSDE,
    WEIGHTINGS,
    EpsilonFn,
    EulerMaruyamaSampler,
    SDESampler,
    probability_flow_nll,
)
from bench.models.diffusion.vdm import DECODERS, continuous_diffusion_loss, prior_kl, reconstruction_nll
from bench.models.embeddings import timestep_embedding
from bench.models.flow.cnf import ODESolver
from torch import Tensor, nn

__all__ = ["ESTIMATORS", "CrystalScoreFlow", "likelihood_bound", "ode_bound"]

ESTIMATORS = ("ode", "elbo")
"""What ``test_nll`` computes: the probability-flow ODE likelihood with the decoders (:func:`ode_bound`) or
the continuous-time bound of the SDE (:func:`likelihood_bound`)."""


def _normal(like: Tensor, generator: torch.Generator | None) -> Tensor:
    if generator is None:
        return torch.randn_like(like)
    draw = torch.randn(like.shape, generator=generator, device=generator.device, dtype=like.dtype)
    return draw.to(like.device)


def _in_float64(eps_fn: EpsilonFn) -> EpsilonFn:
    """``eps_fn`` with its output in float64 (the network computes in its own dtype)."""

    def wrapped(z: Mapping[str, Tensor], t: Tensor) -> dict[str, Tensor]:
        return {k: v.double() for k, v in eps_fn(z, t).items()}

    return wrapped


def _decoder_terms(sde: VPSDE, x0: Mapping[str, Tensor], noise: Mapping[str, Tensor],
                   decoders: Mapping[str, str]) -> Tensor:
    """``log q(x_eps | x) - log p(x | x_eps)`` per sample ``[B]`` (float64) at ``x_eps = alpha_eps x +
    sigma_eps noise``: ``-log alpha_eps`` per coordinate for a Gaussian decoder, and for a categorical one
    ``log q(x_eps | x)`` minus the log-probability of the class."""
    eps = torch.tensor(sde.eps, dtype=torch.float64)
    gamma_eps, log_sigma2 = sde.gamma(eps), torch.log(sde.sigma2(eps))
    total = 0.0
    for k, x in x0.items():
        x, e = x.double(), noise[k].double()
        log_q = (-0.5 * (math.log(2.0 * math.pi) + log_sigma2 + e**2)).flatten(1).sum(1)
        total = total + log_q + reconstruction_nll(gamma_eps, x, e, decoders.get(k, "gaussian"))
    return total


def likelihood_bound(
    eps_fn: EpsilonFn, sde: VPSDE, x0: Mapping[str, Tensor], decoders: Mapping[str, str] | None = None,
    generator: torch.Generator | None = None, importance: bool = True,
) -> Tensor:
    """One estimate of the continuous-time bound on ``-log P(x)`` of each sample ``[B]`` (float64, nats).

    Song et al. (2021b), theorem 2, bounds ``-log p(x_eps)`` under the reverse SDE by ``-E log pi(x_1) +
    1/2 int_eps^1 E[g^2 ||s - grad log p_0t||^2] dt - 1/2 int_eps^1 E[g^2 ||grad log p_0t||^2 + 2 div f] dt``
    (averaged over ``x_eps ~ q(x_eps | x)``). Closing the chain with a decoder ``p(x | x_eps)`` adds
    ``E[log q(x_eps | x) - log p(x | x_eps)]``; for the VP SDE the closed-form terms then sum to
    ``KL(q(x_1 | x) || N(0, I))``, and the bound is

    ``KL(q(x_1 | x) || N(0, I)) + 1/2 int_eps^1 gamma'(t) E||eps_hat - eps||^2 dt + E[-log p(x | x_eps)]``,

    the continuous-time VLB of Kingma et al. (2021) on this fixed schedule, computed with vdm's
    :func:`~bench.models.diffusion.vdm.prior_kl`,
    :func:`~bench.models.diffusion.vdm.continuous_diffusion_loss` and
    :func:`~bench.models.diffusion.vdm.reconstruction_nll` (one ``t`` per sample, from the importance
    density or uniform; one ``x_eps``). Every random number comes from ``generator``.

    Args:
        eps_fn: the noise prediction.
        sde: the SDE.
        x0: clean values by field, each ``[B, ...]``.
        decoders: each field's decoder, ``"gaussian"`` (default) or ``"categorical"`` (a one-hot in
            ``{-1, 1}``).
        generator: where the draws come from.
        importance: draw ``t`` from the importance density (else uniform on ``[eps, 1]``).
    """
    decoders = decoders or {}
    x0 = {k: v.double() for k, v in x0.items()}
    first = next(iter(x0.values()))
    t = sde.sample_times(first.shape[0], importance, generator, first.device)
    noise = {k: _normal(v, generator) for k, v in x0.items()}
    noise_0 = {k: _normal(v, generator) for k, v in x0.items()}
    gamma_t = sde.gamma(t)
    weight = 2.0 * sde.estimator_weight(t, "likelihood", importance)  # 1/2 weight ||.||^2 is the term
    eps64 = _in_float64(eps_fn)
    diffusion = continuous_diffusion_loss(lambda z, _g: eps64(z, t), x0, gamma_t, weight, noise)
    ends = torch.tensor([sde.eps, 1.0], dtype=torch.float64)
    gamma_eps, gamma_1 = sde.gamma(ends)
    total = sum(diffusion.values())
    for k, x in x0.items():
        recon = reconstruction_nll(gamma_eps, x, noise_0[k], decoders.get(k, "gaussian"))
        total = total + prior_kl(gamma_1, x) + recon
    return total


def ode_bound(
    eps_fn: EpsilonFn, sde: VPSDE, x0: Mapping[str, Tensor], decoders: Mapping[str, str] | None = None,
    solver: ODESolver | None = None, trace: str = "hutchinson", probe: str = "rademacher",
    generator: torch.Generator | None = None,
) -> tuple[Tensor, int]:
    """One estimate of ``-log P(x) <= E_q[-log p_ode(x_eps) + log q(x_eps | x) - log p(x | x_eps)]`` of each
    sample ``[B]`` (float64, nats), and the network evaluations of the solve.

    ``x_eps = alpha_eps x + sigma_eps noise`` (one draw); ``-log p_ode(x_eps)`` is the probability-flow ODE
    likelihood (:func:`~bench.models.diffusion.sde.probability_flow_nll`) with the prior ``N(0, I)`` at
    ``t = 1``; the decoders close the chain as in :func:`likelihood_bound`. For Gaussian decoders the
    correction is ``-log alpha_eps`` per coordinate: the value is then the ODE likelihood of the smoothed
    variable ``x_eps / alpha_eps = x + (sigma_eps / alpha_eps) noise``. Every random number (the noise, the
    probe) comes from ``generator``.

    Args:
        eps_fn: the noise prediction.
        sde: the SDE.
        x0: clean values by field.
        decoders: each field's decoder (default ``"gaussian"``).
        solver: how the ODE is solved.
        trace: ``exact`` or ``hutchinson``.
        probe: Hutchinson's probe.
        generator: where the draws come from.
    """
    decoders = decoders or {}
    noise = {k: _normal(v, generator) for k, v in x0.items()}
    eps_t = torch.tensor(sde.eps, dtype=torch.float64)
    alpha, sigma = float(sde.alpha(eps_t)), float(sde.sigma(eps_t))
    x_eps = {k: alpha * v + sigma * noise[k] for k, v in x0.items()}
    nll, calls = probability_flow_nll(eps_fn, sde, x_eps, solver, trace, probe, generator)
    return nll + _decoder_terms(sde, x0, noise, decoders), calls


class CrystalScoreFlow(GenerativeModule):
    """A continuous-time VP-SDE score model on ``(atom_types, frac_coords, lattice)`` (Song et al. 2021b).

    **Training** draws one ``t`` per crystal (from the importance density, or uniformly), ``x_t = alpha_t x +
    sigma_t eps`` in ddpm's diffusion space, and minimises ``w(t) / p(t) ||eps_hat(x_t, t) - eps||^2``
    divided by the number of coordinates ``D`` of a crystal (:meth:`VPSDE.estimator_weight`): with the
    likelihood weighting that is the diffusion term of the negative ELBO in nats per coordinate, and with
    importance sampling its weight is the constant ``Z / 2``, ``Z = gamma(1) - gamma(eps)``. The fields are
    not weighted against each other (the bound must stay a bound). Besides ``loss`` it logs the whole bound in
    nats per crystal (``elbo``: the closed-form prior KL and one draw of the decoder terms added, no extra
    network evaluation) and its diffusion term per field.

    **The network** is ddpm's transformer, conditioned through ddpm's sinusoidal embedding and MLP on
    ``999 t`` (the convention of Song et al.'s VP models), predicting ``eps`` per field.

    **Sampling** draws ``x_1 ~ N(0, I)`` and runs the configured sampler to ``eps``
    (:class:`~bench.models.diffusion.sde.EulerMaruyamaSampler` by default, or
    :class:`~bench.models.diffusion.sde.ProbabilityFlowSampler`), then returns ``x_eps / alpha_eps`` (the
    mean of the Gaussian decoder; the argmax of the types is the mode of their categorical decoder), the
    lattice clamped to ``lattice_clip``.

    Args:
        backbone: partial of :class:`~bench.models.backbone.CrystalTransformer` (called once).
        optimizer: partial building the optimiser.
        num_types: K + 1 (from the fitted codec).
        max_atoms: N (from the fitted codec).
        sampler: a built :class:`~bench.models.diffusion.sde.SDESampler` (default Euler-Maruyama, 100 steps).
        beta_min: ``beta(0)``.
        beta_max: ``beta(1)``.
        eps: the smallest time.
        weighting: ``likelihood`` (``lambda = g^2``) or ``score_matching`` (``lambda = sigma^2``).
        importance_sampling: draw ``t`` from the density proportional to the weighting of the noise error
            (``g^2 / sigma^2`` for the likelihood weighting; the uniform density for ``score_matching``).
        time_dim: width of the time embedding.
        nll_estimator: ``ode`` (the probability-flow ODE with decoders) or ``elbo`` (the SDE's bound).
        nll_trace: ``hutchinson`` or ``exact`` (``D`` backward passes per evaluation) for the ODE.
        nll_probe: Hutchinson's probe, ``rademacher`` or ``gaussian``.
        nll_solver: torchdiffeq solver of the likelihood ODE (``dopri5``; ``rk4``, ``euler`` fixed-grid).
        nll_steps: steps of a fixed-grid likelihood solver.
        nll_atol: absolute tolerance of an adaptive likelihood solver (the paper's is 1e-5; see the card).
        nll_rtol: relative tolerance of an adaptive likelihood solver.
        lattice_clip: bound on ``|lattice|`` of the returned sample, in the codec's standardised units (None:
            none). Only the output is clamped, not the sampler's path: without it a few cells of an
            undertrained model come out hundreds of angstroms long (see the card).
    """

    family = "diffusion"
    paper = (
        "Song, Durkan, Murray, Ermon (2021). Maximum Likelihood Training of Score-Based Diffusion Models. "
        "NeurIPS. arXiv:2101.09258; VP SDE: Song, Sohl-Dickstein, Kingma, Kumar, Ermon, Poole (2021). "
        "Score-Based Generative Modeling through Stochastic Differential Equations. ICLR. arXiv:2011.13456"
    )
    likelihood = Likelihood(
        "upper_bound",
        "probability_flow_ode",
        "probability-flow ODE likelihood (instantaneous change of variables from t = eps to 1, prior "
        "N(0, I), Hutchinson trace with one Rademacher probe per solve unless exact, dopri5) of x_eps = "
        "alpha_eps x + sigma_eps noise in ddpm's diffusion space (one-hots in {-1, 1}, 2f - 1, standardised "
        "lattice), made a bound on the codec's fields by decoders p(x | x_eps) proportional to q(x_eps | x): "
        "categorical over each slot's one-hot vertices for the types, Gaussian N(x_eps / alpha_eps, "
        "sigma_eps^2 / alpha_eps^2) for coordinates (minus 3 log 2 per filled slot for fractions) and "
        "lattice, i.e. the ODE likelihood of the continuous fields smoothed by that Gaussian; -log P <= "
        "E[-log p_ode(x_eps) + log q - log p(x | x_eps)]; empty-slot coordinates integrated out with a "
        "N(-1, sigma_eps^2 / alpha_eps^2) proposal; averaged over draws (noise, probe)",
    )
    elbo_likelihood = Likelihood(
        "upper_bound",
        "elbo",
        "continuous-time bound of the VP SDE (Song et al. 2021b, theorem 2, closed by the decoders of the "
        "ODE estimator): KL(q(x_1 | x) || N(0, I)) + 1/2 int_eps^1 g^2 / sigma^2 ||eps_hat - eps||^2 dt at "
        "one importance-sampled t + -log p(x | x_eps), on the codec's fields as the ODE estimator; averaged "
        "over draws",
    )
    decoders = DECODERS

    def __init__(
        self,
        backbone: Callable[..., CrystalTransformer],
        optimizer: OptimizerFactory,
        num_types: int,
        max_atoms: int,
        sampler: SDESampler | None = None,
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        eps: float = 1e-5,
        weighting: str = "likelihood",
        importance_sampling: bool = True,
        time_dim: int = 64,
        nll_estimator: str = "ode",
        nll_trace: str = "hutchinson",
        nll_probe: str = "rademacher",
        nll_solver: str = "dopri5",
        nll_steps: int = 100,
        nll_atol: float = 1e-3,
        nll_rtol: float = 1e-3,
        lattice_clip: float | None = 5.0,
    ) -> None:
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        if nll_estimator not in ESTIMATORS:
            raise ValueError(f"nll_estimator must be one of {ESTIMATORS}, got {nll_estimator!r}")
        if nll_trace not in ("exact", "hutchinson"):
            raise ValueError(f"nll_trace must be 'exact' or 'hutchinson', got {nll_trace!r}")
        if nll_probe not in ("rademacher", "gaussian"):
            raise ValueError(f"nll_probe must be 'rademacher' or 'gaussian', got {nll_probe!r}")
        if lattice_clip is not None and lattice_clip <= 0:
            raise ValueError(f"lattice_clip must be > 0 or null, got {lattice_clip}")
        if sampler is not None and not isinstance(sampler, SDESampler):
            raise TypeError(
                "scoreflow is a continuous-time score model and cannot be sampled by "
                f"{type(sampler).__name__}: choose sampler@model.module.sampler=reverse_sde or "
                "sampler@model.module.sampler=probability_flow"
            )
        super().__init__(optimizer, num_types, max_atoms)
        self._save_plain_hparams()
        self.sampler: SDESampler = sampler if sampler is not None else EulerMaruyamaSampler()
        #: The forward process (no parameters; rebuilt from the config).
        self.sde = VPSDE(beta_min, beta_max, eps)
        self.weighting = weighting
        self.importance_sampling = bool(importance_sampling)
        self.time_dim = int(time_dim)
        self.nll_estimator = nll_estimator
        self.nll_trace, self.nll_probe = nll_trace, nll_probe
        self.nll_solver = ODESolver(nll_solver, int(nll_steps), float(nll_atol), float(nll_rtol))
        self.lattice_clip = None if lattice_clip is None else float(lattice_clip)
        self.time_mlp = nn.Sequential(
            nn.Linear(self.time_dim, self.time_dim), nn.SiLU(), nn.Linear(self.time_dim, self.time_dim)
        )
        self.denoiser = backbone(
            num_types=num_types, max_atoms=max_atoms, cond_dim=self.time_dim, raw_frac=True
        )
        self.dims = {"atom_types": max_atoms * num_types, "frac_coords": 3 * max_atoms, "lattice": 6}
        #: ``D``: coordinates of one crystal in the diffusion space.
        self.total_dim = sum(self.dims.values())
        self.last_nll_evaluations = 0

    # ------------------------------------------------------------------ the network
    to_diffusion_space = staticmethod(CrystalDDPM.to_diffusion_space)
    from_diffusion_space = staticmethod(CrystalDDPM.from_diffusion_space)

    def predict(self, x_t: Mapping[str, Tensor], t: Tensor) -> dict[str, Tensor]:
        """``eps_hat(x_t, t)`` per field (float32) at times ``t`` ``[B]`` in ``[eps, 1]``.

        The backbone reads the coordinates as fractions (periodic features) plus their raw values, as ddpm's.
        """
        x_t = {k: v.to(torch.float32) for k, v in x_t.items()}
        cond = self.time_mlp(timestep_embedding(999.0 * t.to(torch.float32), self.time_dim))
        inputs = {**x_t, "frac_coords": (x_t["frac_coords"] + 1.0) / 2.0}
        out = self.denoiser(inputs, cond=cond)
        return {k: out[k] for k in FIELDS}

    # ------------------------------------------------------------------ training
    def loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The weighted noise error per coordinate (``loss``), and in nats per crystal the bound ``elbo`` and
        its terms (``prior``, ``recon``, ``diffusion``, per field ``<field>_diffusion``), all from the same
        draws (see the class docstring)."""
        x0 = self.to_diffusion_space(batch)
        size = x0["lattice"].shape[0]
        t64 = self.sde.sample_times(size, self.importance_sampling, device=self.device)
        t = t64.to(torch.float32)
        noise = {k: torch.randn_like(x0[k]) for k in FIELDS}
        x_t = {k: self.sde.marginal(x0[k], t, noise[k]) for k in FIELDS}
        pred = self.predict(x_t, t)
        errors = {k: ((pred[k] - noise[k]) ** 2).flatten(1).sum(1) for k in FIELDS}
        weight = self.sde.estimator_weight(t64, self.weighting, self.importance_sampling).to(torch.float32)
        loss = (weight * sum(errors.values())).mean() / self.total_dim
        with torch.no_grad():
            elbo_weight = self.sde.estimator_weight(t64, "likelihood", self.importance_sampling).float()
            ends = torch.tensor([self.sde.eps, 1.0], dtype=torch.float64)
            gamma_eps, gamma_1 = self.sde.gamma(ends)
            diffusion = {k: elbo_weight * errors[k].detach() for k in FIELDS}
            prior = sum(prior_kl(gamma_1, x0[k].double()) for k in FIELDS)
            recon = sum(
                reconstruction_nll(gamma_eps, x0[k].double(), torch.randn_like(x0[k]).double(),
                                   self.decoders[k])
                for k in FIELDS
            )
            total_diffusion = sum(diffusion.values())
        terms = {
            "elbo": (prior + recon).float().mean() + total_diffusion.mean(),
            "prior": prior.float().mean(), "recon": recon.float().mean(), "diffusion": total_diffusion.mean(),
            **{f"{k}_diffusion": v.mean() for k, v in diffusion.items()},
        }
        return {"loss": loss, **terms}

    # ------------------------------------------------------------------ sampling
    @property
    def nfe(self) -> int:
        """Network evaluations per sample of the configured sampler (measured on the last call for an
        adaptive ODE solver)."""
        return self.sampler.nfe()

    def _sample(self, n: int, generator: torch.Generator | None, condition: Any) -> dict[str, Tensor]:
        shapes = {
            "atom_types": (n, self.max_atoms, self.num_types),
            "frac_coords": (n, self.max_atoms, 3),
            "lattice": (n, 6),
        }
        x = {k: self._randn(shapes[k], generator) for k in sorted(shapes)}

        def noise() -> dict[str, Tensor]:
            return {k: self._randn(shapes[k], generator) for k in sorted(shapes)}

        x_eps = self.sampler(self.predict, self.sde, x, noise)
        alpha = float(self.sde.alpha(torch.tensor(self.sde.eps, dtype=torch.float64)))
        out = {k: v / alpha for k, v in x_eps.items()}
        if self.lattice_clip is not None:
            out["lattice"] = out["lattice"].clamp(-self.lattice_clip, self.lattice_clip)
        return self.from_diffusion_space(out)

    # ------------------------------------------------------------------ likelihood of held-out data
    def likelihood_spec(self) -> Likelihood:
        """The ODE estimator's declaration, or the ELBO's with ``nll_estimator: elbo``."""
        return self.likelihood if self.nll_estimator == "ode" else self.elbo_likelihood

    @property
    def empty_coordinate_std(self) -> float:
        """``tau = sigma_eps / alpha_eps``: the scale of the proposal that integrates out the coordinates of
        empty slots (the Gaussian decoder's own)."""
        eps = torch.tensor(self.sde.eps, dtype=torch.float64)
        return float(self.sde.sigma(eps) / self.sde.alpha(eps))

    def fit_likelihood(
        self, data: Mapping[str, Tensor], generator: torch.Generator | None = None
    ) -> dict[str, Any]:
        """Nothing to fit: returns the settings that define the value, to be recorded with it."""
        eps = torch.tensor(self.sde.eps, dtype=torch.float64)
        settings: dict[str, Any] = {
            "nll_decoders": dict(self.decoders),
            "sde": {"kind": "vp", "beta_min": self.sde.beta_min, "beta_max": self.sde.beta_max,
                    "eps": self.sde.eps},
            "gamma_eps": float(self.sde.gamma(eps)),
            "empty_coordinate_proposal_std": self.empty_coordinate_std,
            "dequantisation": "none: types diffuse as one-hots in {-1, 1} and are closed by a categorical "
                              "decoder at eps; continuous fields by a Gaussian decoder of scale "
                              "sigma_eps / alpha_eps",
        }
        if self.nll_estimator == "ode":
            solver = self.nll_solver
            settings["ode"] = {
                "trace": self.nll_trace, "probe": self.nll_probe if self.nll_trace == "hutchinson" else None,
                "method": solver.method, "steps": solver.steps if solver.fixed else None,
                "atol": None if solver.fixed else solver.atol, "rtol": None if solver.fixed else solver.rtol,
            }
        else:
            settings["elbo_times"] = "one t per draw from the density proportional to g^2 / sigma^2"
        return settings

    def diffusion_space_bound(
        self, x0: Mapping[str, Tensor], generator: torch.Generator | None = None,
        estimator: str | None = None,
    ) -> Tensor:
        """One draw of the bound on ``-log P`` of each sample ``[B]`` (float64) in the diffusion space: the
        ODE estimator (:func:`ode_bound`) or the ELBO (:func:`likelihood_bound`)."""
        estimator = estimator or self.nll_estimator
        if estimator == "ode":
            value, calls = ode_bound(self.predict, self.sde, x0, self.decoders, self.nll_solver,
                                     self.nll_trace, self.nll_probe, generator)
            self.last_nll_evaluations = calls
            return value
        if estimator == "elbo":
            return likelihood_bound(self.predict, self.sde, x0, self.decoders, generator, importance=True)
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")

    @torch.no_grad()
    def test_nll(
        self, batch: Mapping[str, Tensor], draws: int = 1, generator: torch.Generator | None = None,
        estimator: str | None = None,
    ) -> Tensor:
        """``[B]`` nats per crystal: an upper bound on ``-log P`` of the codec's fields (as
        :meth:`likelihood_spec` says), averaged over ``draws``, turned into one on the codec's fields as
        vdm's and improved_ddpm's:

        - types: the categorical decoder gives a probability of the elements (empty slot included);
        - coordinates of filled slots: ``y = 2 f - 1``, so ``- 3 log 2`` per filled slot (decoding wraps, so
          the density on the torus is at least this);
        - coordinates of empty slots are integrated out: ``-log P <= E_r[L(x with y_e) + log r(y_e)]`` with
          ``y_e = -1 + tau z``, ``tau`` :attr:`empty_coordinate_std`;
        - the lattice is the codec's standardised variable itself.

        Call it in eval mode; every random number comes from ``generator``.
        """
        if draws < 1:
            raise ValueError(f"draws must be >= 1, got {draws}")
        x0 = {k: v.double() for k, v in self.to_diffusion_space(batch).items()}
        filled = (1.0 - batch["atom_types"][..., 0].double()).clamp(0.0, 1.0)
        empty = (1.0 - filled).unsqueeze(-1)
        tau = self.empty_coordinate_std
        frac = x0["frac_coords"]
        total = torch.zeros(frac.shape[0], dtype=torch.float64, device=frac.device)
        for _ in range(draws):
            z = _normal(frac, generator)
            y = torch.where(empty > 0, -1.0 + tau * z, frac)
            log_r = (empty * (-0.5 * z**2 - math.log(tau) - 0.5 * math.log(2.0 * math.pi))).flatten(1).sum(1)
            bound = self.diffusion_space_bound({**x0, "frac_coords": y}, generator, estimator)
            total += bound + log_r
        return total / draws - 3.0 * math.log(2.0) * filled.sum(-1)
