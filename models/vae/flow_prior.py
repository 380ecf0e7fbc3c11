"""A learned autoregressive-flow prior on a VAE's latent, and the latent that uses it.

Chen, Kingma, Salimans, Duan, Dhariwal, Schulman, Sutskever & Abbeel (2017), "Variational Lossy Autoencoder",
ICLR, arXiv:1611.02731, section 3.2: the prior ``p(z)`` is an autoregressive flow (AF): ``z`` is mapped to
``eps`` by affine autoregressive transforms, ``eps_i = (z_i - mu_i(z_<i)) / sigma_i(z_<i)``, and

    log p(z) = log N(eps; 0, I) + log |det d eps / d z| = log N(eps; 0, I) - sum_i log sigma_i(z_<i)

(change of variables; the Jacobian is triangular, so its log-determinant is the sum of the diagonal). The
density is one pass of each transform (the direction of Papamakarios et al. 2017's MAF); drawing ``z`` inverts
each transform one dimension at a time. ``mu`` and ``log sigma`` come from a MADE (Germain, Gregor, Murray &
Larochelle 2015, "MADE: Masked Autoencoder for Distribution Estimation", ICML, arXiv:1502.03509): an MLP whose
weight masks make output ``i`` read inputs ``< i`` only. The order of the dimensions is reversed between
transforms (as in IAF, Kingma et al. 2016), so every dimension is conditioned on every other somewhere in the
stack. The paper notes that an AF prior with a diagonal Gaussian posterior gives the same ELBO as an IAF
posterior with a standard normal prior, but a richer generative model; that is the pairing used here.

The flow transforms of :mod:`bench.models.flow.transforms` map dicts of crystal fields and share parameters
over atom slots; a latent vector needs neither, so the masked network is defined here.

- :class:`MADE`, :class:`AffineAutoregressive` and :class:`AutoregressiveFlowPrior`: the prior.
- :class:`FlowPriorLatent`: a :class:`~bench.models.vae.latents.Latent` (diagonal Gaussian posterior, this
  prior) whose regulariser is ``KL(q(z|x) || p(z)) = -H[q(z|x)] - E_q log p(z)``: the posterior's entropy in
  closed form, the cross-entropy estimated with the posterior draw (no closed form under a flow).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from bench.models.vae.latents import DiagonalGaussian, LatentPenalty, NoiseFn
from torch import Tensor, nn

__all__ = [
    "MADE",
    "AffineAutoregressive",
    "AutoregressiveFlowPrior",
    "FlowPriorLatent",
    "gaussian_entropy",
    "standard_normal_log_density",
]

_LOG_2PI = math.log(2.0 * math.pi)


def standard_normal_log_density(x: Tensor) -> Tensor:
    """``log N(x; 0, I)`` summed over the last axis."""
    return (-0.5 * x.pow(2) - 0.5 * _LOG_2PI).sum(-1)


def gaussian_entropy(logvar: Tensor) -> Tensor:
    """Entropy of ``N(mu, diag(exp(logvar)))`` in nats, summed over the last axis."""
    return (0.5 * (1.0 + _LOG_2PI + logvar)).sum(-1)


class _MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask ``[out, in]``."""

    def __init__(self, in_features: int, out_features: int, mask: Tensor) -> None:
        super().__init__(in_features, out_features)
        self.register_buffer("mask", mask.to(torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """Masked MLP with ``out_per_dim`` outputs per input dimension; the outputs of dimension ``i`` (natural
    order) read inputs ``0..i-1`` only (Germain et al. 2015, section 4).

    Degrees: input ``d`` has degree ``d + 1``; hidden units cycle through ``1..D-1`` (0 when ``D = 1``:
    they read nothing, so the single dimension's outputs are learned constants); a hidden unit of degree
    ``m`` reads inputs of degree ``<= m``, and output ``i`` reads hidden units of degree ``< i + 1``.

    Args:
        dim: ``D``.
        hidden_dim: width of each hidden layer.
        hidden_layers: number of hidden layers (ReLU).
        out_per_dim: outputs per dimension (2: a shift and a log-scale).
        zero_init: start the output layer at zero (the transform it drives starts as the identity).
    """

    def __init__(
        self, dim: int, hidden_dim: int, hidden_layers: int = 2, out_per_dim: int = 2, zero_init: bool = True
    ) -> None:
        super().__init__()
        if min(dim, hidden_dim, hidden_layers, out_per_dim) < 1:
            raise ValueError(
                f"dim, hidden_dim, hidden_layers and out_per_dim must be >= 1, got {dim}, {hidden_dim}, "
                f"{hidden_layers}, {out_per_dim}"
            )
        self.dim = int(dim)
        self.out_per_dim = int(out_per_dim)
        in_degree = torch.arange(1, dim + 1)
        if dim > 1:
            hidden_degree = torch.arange(hidden_dim) % (dim - 1) + 1
        else:
            hidden_degree = torch.zeros(hidden_dim, dtype=torch.long)
        layers: list[nn.Module] = []
        previous = in_degree
        for _ in range(hidden_layers):
            mask = hidden_degree.unsqueeze(1) >= previous.unsqueeze(0)
            layers += [_MaskedLinear(previous.numel(), hidden_dim, mask), nn.ReLU()]
            previous = hidden_degree
        out_degree = in_degree.repeat(out_per_dim)  # output block k holds parameter k of every dimension
        self.out = _MaskedLinear(previous.numel(), dim * out_per_dim, out_degree.unsqueeze(1) > previous)
        if zero_init:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)
        self.hidden = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """``[..., out_per_dim, D]`` parameters for ``x`` ``[..., D]``."""
        out = self.out(self.hidden(x))
        return out.unflatten(-1, (self.out_per_dim, self.dim))


class AffineAutoregressive(nn.Module):
    """One AF transform ``eps_i = (z_i - mu_i(z_<i)) exp(-s_i(z_<i))`` with ``(mu, s)`` from a :class:`MADE`;
    ``s = scale_bound tanh(raw / scale_bound)`` keeps every scale within ``exp(+-scale_bound)``.

    Args:
        dim: width of ``z``.
        hidden_dim, hidden_layers: the MADE.
        scale_bound: bound on the log-scale.
    """

    def __init__(self, dim: int, hidden_dim: int, hidden_layers: int = 2, scale_bound: float = 3.0) -> None:
        super().__init__()
        if not scale_bound > 0:
            raise ValueError(f"scale_bound must be > 0, got {scale_bound}")
        self.dim = int(dim)
        self.scale_bound = float(scale_bound)
        self.made = MADE(dim, hidden_dim, hidden_layers, out_per_dim=2)

    def shift_log_scale(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu, s)`` ``[..., D]``: entry ``i`` depends on ``z_<i`` only."""
        shift, raw = self.made(z).unbind(-2)
        return shift, self.scale_bound * torch.tanh(raw / self.scale_bound)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Latent to base: ``(eps, log|det d eps / d z|)``, the log-det ``[...]``."""
        shift, log_scale = self.shift_log_scale(z)
        return (z - shift) * torch.exp(-log_scale), -log_scale.sum(-1)

    def inverse(self, eps: Tensor) -> Tensor:
        """Base to latent, one dimension per pass: ``z_i = eps_i exp(s_i(z_<i)) + mu_i(z_<i)``; pass ``i``
        fixes ``z_i`` for good, since ``z_<i`` no longer changes."""
        z = torch.zeros_like(eps)
        for i in range(self.dim):
            shift, log_scale = self.shift_log_scale(z)
            z = z.clone()
            z[..., i] = eps[..., i] * torch.exp(log_scale[..., i]) + shift[..., i]
        return z


class AutoregressiveFlowPrior(nn.Module):
    """``p(z)``: ``layers`` AF transforms to a standard normal, the order of ``z`` reversed between them (the
    module docstring). ``layers = 0`` is ``N(0, I)`` itself.

    Args:
        dim: width of ``z``.
        layers: number of AF transforms.
        hidden_dim, hidden_layers: each transform's MADE.
        scale_bound: bound on each log-scale.
    """

    def __init__(
        self, dim: int, layers: int = 4, hidden_dim: int = 128, hidden_layers: int = 2,
        scale_bound: float = 3.0,
    ) -> None:
        super().__init__()
        if dim < 1 or layers < 0:
            raise ValueError(f"dim must be >= 1 and layers >= 0, got {dim} and {layers}")
        self.dim = int(dim)
        self.steps = nn.ModuleList(
            AffineAutoregressive(dim, hidden_dim, hidden_layers, scale_bound) for _ in range(layers)
        )

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Latent to base: ``(eps, log|det d eps / d z|)`` through every transform (with the reversals, whose
        log-det is 0)."""
        logdet = z.new_zeros(z.shape[:-1])
        for k, step in enumerate(self.steps):
            if k:
                z = z.flip(-1)
            z, ld = step(z)
            logdet = logdet + ld
        return z, logdet

    def inverse(self, eps: Tensor) -> Tensor:
        """Base to latent: the transforms inverted last first."""
        z = eps
        for k in reversed(range(len(self.steps))):
            z = self.steps[k].inverse(z)
            if k:
                z = z.flip(-1)
        return z

    def log_prob(self, z: Tensor) -> Tensor:
        """``log p(z)`` ``[...]`` by the change of variables: ``log N(eps; 0, I) + log|det d eps / d z|``."""
        eps, logdet = self(z)
        return standard_normal_log_density(eps) + logdet


class FlowPriorLatent(DiagonalGaussian):
    """Diagonal Gaussian posterior ``q(z|x) = N(mu, diag(sigma^2))`` with the :class:`AutoregressiveFlowPrior`
    (VLAE, section 3.2). The flow is trained with the rest of the VAE by the ELBO (one stage).

    Regulariser: the one-draw estimate ``KL ~ -H[q(z|x)] - log p(z)`` at the posterior draw ``z`` (the entropy
    in closed form), averaged over the batch; unbiased for ``KL(q(z|x) || p(z))``. With ``layers = 0`` its
    expectation is the closed-form KL to ``N(0, I)`` of the plain VAE.

    ``free_nats > 0`` trains on ``max(KL, free_nats)`` instead (the "free bits" of Kingma, Salimans,
    Jozefowicz, Chen, Sutskever & Welling 2016, "Improved Variational Inference with Inverse Autoregressive
    Flow", arXiv:1606.04934, there per group of latents; here on the whole latent's batch-mean KL, since a
    flow prior's KL does not split by dimension): the first ``free_nats`` nats of KL cost nothing, against the
    posterior collapse of early training. It changes the training objective only; the logged ``kl`` and the
    likelihood bound stay the true ones. 0 (the default): the ELBO.

    Args:
        dim: width of ``z``.
        layers: AF transforms of the prior.
        hidden_dim, hidden_layers: each transform's MADE.
        scale_bound: bound on each log-scale.
        free_nats: KL below which the regulariser is flat (0: none).
    """

    def __init__(
        self, dim: int, layers: int = 4, hidden_dim: int = 128, hidden_layers: int = 2,
        scale_bound: float = 3.0, free_nats: float = 0.0,
    ) -> None:
        super().__init__(dim)
        if free_nats < 0:
            raise ValueError(f"free_nats must be >= 0 (0: the plain ELBO), got {free_nats}")
        self.free_nats = float(free_nats)
        self.flow = AutoregressiveFlowPrior(dim, layers, hidden_dim, hidden_layers, scale_bound)

    def log_prior(self, z: Tensor) -> Tensor:
        """``log p(z)`` ``[...]`` under the flow."""
        return self.flow.log_prob(z)

    def log_posterior(self, z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
        """``log q(z | x)`` ``[...]`` of the diagonal Gaussian posterior."""
        return (-0.5 * (_LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar))).sum(-1)

    def kl_estimate(self, mu: Tensor, logvar: Tensor, z: Tensor) -> Tensor:
        """``[B]`` one-draw estimates of ``KL(q(z|x) || p(z))``: ``-H[q] - log p(z)``."""
        return -gaussian_entropy(logvar) - self.log_prior(z)

    def prior(self, n: int, generator: torch.Generator | None, randn: NoiseFn) -> Tensor:
        return self.flow.inverse(randn((n, self.dim), generator))

    def penalty(self, stats: Mapping[str, Tensor], z: Tensor, step: int) -> LatentPenalty:
        kl = self.kl_estimate(stats["mu"], stats["logvar"], z).mean()
        regulariser = kl.clamp_min(self.free_nats) if self.free_nats > 0 else kl
        return LatentPenalty(regulariser, kl.new_zeros(()), {"kl": kl})
