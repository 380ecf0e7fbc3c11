"""Pluggable latents of the VAE family: each object owns a VAE's posterior draw, prior draw and regulariser.

A VAE built with ``latent=<object>`` reads ``latent.param_dim`` numbers per crystal from its encoder, hands
them to :meth:`Latent.posterior` for ``z`` (``latent.dim`` wide, the width the heads and the decoder read),
draws ``z`` from :meth:`Latent.prior` at sampling, and adds ``beta * regulariser + auxiliary`` of
:meth:`Latent.penalty` to its reconstruction terms. ``beta`` is the module's own KL weight: the weight of one
nat of regulariser on that model's loss scale (CDVAE's 0.01), so the latents' weights below stay in the units
of their papers, where the ELBO is the objective with every weight 1.

- :class:`DiagonalGaussian`: the plain VAE latent, ``KL(q(z|x) || N(0, I))``.
- :class:`BetaTCLatent`: beta-TCVAE, Chen, Li, Grosse & Duvenaud (2018), "Isolating Sources of Disentanglement
  in VAEs", NeurIPS, arXiv:1802.04942: the KL split into index-code mutual information, total correlation and
  dimension-wise KL, estimated on the minibatch.
- :class:`FactorLatent`: FactorVAE, Kim & Mnih (2018), "Disentangling by Factorising", ICML, arXiv:1802.05983:
  ``KL + gamma TC`` with the total correlation read from a discriminator of ``z`` against dimension-wise
  permuted ``z``.
- :class:`JointLatent`: JointVAE, Dupont (2018), "Learning Disentangled Joint Continuous and Discrete
  Representations", NeurIPS, arXiv:1804.00104: a Gaussian part and categorical codes (Gumbel-softmax), each KL
  held near a capacity that rises over training.
- :class:`~bench.models.vae.vq.VQLatent` (in :mod:`bench.models.vae.vq`): VQ-VAE, van den Oord, Vinyals &
  Kavukcuoglu (2017), "Neural Discrete Representation Learning", NeurIPS, arXiv:1711.00937: codes from a
  learned codebook, and a prior over them that the VAE trains in a stage of its own
  (:meth:`Latent.prior_networks`).

They are ``torch.nn.Module`` s, so what they hold (a discriminator, the dataset size) is trained by the VAE's
optimiser and saved in its checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

__all__ = [
    "BetaTCLatent",
    "DiagonalGaussian",
    "FactorLatent",
    "JointLatent",
    "Latent",
    "LatentPenalty",
    "NoiseFn",
    "capacity",
    "categorical_kl_uniform",
    "gaussian_log_density",
    "gumbel_softmax",
    "kl_decomposition",
    "permute_dims",
]

NoiseFn = Callable[[Sequence[int], "torch.Generator | None"], Tensor]
"""Standard normal noise of a shape from a generator, on the module's device (the module's ``_randn``)."""

_LOG_2PI = math.log(2.0 * math.pi)
_LOGVAR_CLAMP = 10.0  # as the built-in Gaussian posterior of the VAE family


class LatentPenalty(NamedTuple):
    """What a latent adds to a VAE's loss.

    Attributes:
        regulariser: in nats (the papers' units); the module multiplies it by its KL weight ``beta``.
        auxiliary: added as it is, not weighted by ``beta``: the objective of the latent's own networks (a
            discriminator, whose gradient reaches only it), or losses in the units of the reconstruction
            terms (VQ-VAE's codebook and commitment losses); zero when there are none.
        terms: unweighted terms to log (``kl``, ``tc``, ``mi``, ...).
    """

    regulariser: Tensor
    auxiliary: Tensor
    terms: dict[str, Tensor]


def gaussian_log_density(x: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """Elementwise ``log N(x; mu, exp(logvar))``."""
    return -0.5 * (_LOG_2PI + logvar + (x - mu).pow(2) * torch.exp(-logvar))


def _gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """``KL(N(mu, exp(logvar)) || N(0, I))`` summed over the latent, averaged over the batch."""
    return (0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)).mean()


def kl_decomposition(
    z: Tensor, mu: Tensor, logvar: Tensor, dataset_size: float, estimator: str = "mws"
) -> dict[str, Tensor]:
    """Chen et al. (2018)'s split of ``E_n KL(q(z|n) || p(z))`` into index-code MI, total correlation and
    dimension-wise KL, estimated on a minibatch of posterior draws (their section 3 and 4.1).

    With ``z_i ~ q(z | n_i)`` for the ``M`` items of the batch and ``N = dataset_size``:

    - ``mws`` (minibatch weighted sampling, their section 4.1): ``log q(z_i)`` is estimated by
      ``log sum_j q(z_i | n_j) - log(N M)``, and ``log q(z_id)`` likewise per dimension; the paper derives it
      from a lower bound on ``q(z)``. With any ``N`` it is the estimate that takes the batch itself as the
      data set, minus ``log N``, so its TC is that one's plus ``(D - 1) log N`` exactly, its MI plus ``log N``
      and its dimension-wise KL minus ``D log N``: constants, so the gradients are the same.
    - ``stratified``: the item's own posterior weighs ``1 / N`` and each other item's
      ``(N - 1) / (N (M - 1))`` (they stand for the ``N - 1`` crystals the batch did not draw): an unbiased
      estimate of ``q(z_i)`` in the spirit of their minibatch stratified sampling (appendix C.2), whose
      values are comparable across ``N`` (the TC is near 0 for a factorial aggregate posterior).

    Whatever the estimator, ``mi + tc + dim_kl`` is ``mean_i [log q(z_i | n_i) - log p(z_i)]``, the one-draw
    Monte Carlo estimate of the KL that the three terms split.

    Args:
        z: ``[M, D]`` posterior draws, one per item.
        mu: ``[M, D]`` posterior means.
        logvar: ``[M, D]`` posterior log-variances.
        dataset_size: ``N``, the number of crystals in the training set.
        estimator: ``"mws"`` or ``"stratified"``.

    Returns:
        ``mi``, ``tc``, ``dim_kl`` and ``kl_mc`` (their sum), each a scalar averaged over the batch.
    """
    m = z.shape[0]
    n = float(dataset_size)
    if n < 1:
        raise ValueError(f"dataset_size must be >= 1, got {dataset_size}")
    # log q(z_i,d | n_j): [M (sample i), M (posterior j), D]
    log_q = gaussian_log_density(z.unsqueeze(1), mu.unsqueeze(0), logvar.unsqueeze(0))
    if estimator == "mws":
        weights = torch.full((m, m), -math.log(n * m), dtype=z.dtype, device=z.device)
    elif estimator == "stratified":
        other = math.log((n - 1.0) / (n * (m - 1))) if m > 1 and n > 1 else -math.inf
        weights = torch.full((m, m), other, dtype=z.dtype, device=z.device)
        weights.fill_diagonal_(-math.log(n))
    else:
        raise ValueError(f"estimator must be 'mws' or 'stratified', got {estimator!r}")
    log_qz = torch.logsumexp(weights + log_q.sum(-1), dim=1)
    log_prod_qzd = torch.logsumexp(weights.unsqueeze(-1) + log_q, dim=1).sum(-1)
    log_q_own = log_q.diagonal(dim1=0, dim2=1).sum(0)  # log q(z_i | n_i)
    log_p = gaussian_log_density(z, torch.zeros_like(z), torch.zeros_like(z)).sum(-1)
    terms = {
        "mi": (log_q_own - log_qz).mean(),
        "tc": (log_qz - log_prod_qzd).mean(),
        "dim_kl": (log_prod_qzd - log_p).mean(),
    }
    terms["kl_mc"] = (log_q_own - log_p).mean()
    return terms


def permute_dims(z: Tensor) -> Tensor:
    """Kim & Mnih (2018)'s algorithm 1: each dimension of ``z`` ``[B, D]`` shuffled across the batch by its
    own random permutation (from the global generator: a training-time draw), so the result follows the
    product of the marginals of the batch."""
    order = torch.argsort(torch.rand(z.shape, device=z.device), dim=0)
    return torch.gather(z, 0, order)


def gumbel_softmax(logits: Tensor, temperature: float, generator: torch.Generator | None = None) -> Tensor:
    """A relaxed one-hot draw from ``Categorical(softmax(logits))`` (Jang et al. 2017; Maddison et al. 2017):
    ``softmax((logits + g) / temperature)`` with ``g`` standard Gumbel noise, drawn from ``generator`` if
    given."""
    device = logits.device if generator is None else generator.device
    uniform = torch.rand(logits.shape, generator=generator, device=device).to(logits.device)
    tiny = torch.finfo(logits.dtype).tiny
    exponential = (-torch.log(uniform.clamp_min(tiny))).clamp_min(tiny)  # Exp(1), kept off 0
    gumbel = -torch.log(exponential)
    return F.softmax((logits + gumbel) / temperature, dim=-1)


def categorical_kl_uniform(logits: Tensor) -> Tensor:
    """``KL(Categorical(softmax(logits)) || Uniform(K)) = sum_k q_k log q_k + log K`` per row."""
    log_q = F.log_softmax(logits, dim=-1)
    return (log_q.exp() * log_q).sum(-1) + math.log(logits.shape[-1])


def capacity(maximum: float, step: int, steps: int) -> float:
    """Dupont (2018)'s capacity: 0 at step 0, rising linearly to ``maximum`` at ``steps``, then held (at once
    ``maximum`` when ``steps`` is 0)."""
    if steps <= 0:
        return float(maximum)
    return float(maximum) * min(1.0, max(0, step) / steps)


class Latent(nn.Module):
    """What a VAE's latent does; subclasses set :attr:`param_dim` and :attr:`dim` and implement the three
    methods.

    Attributes:
        param_dim: how many encoder outputs per crystal :meth:`posterior` reads.
        dim: the width of ``z`` (what the heads and the decoder read).
    """

    param_dim: int
    dim: int

    def posterior(self, params: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """A draw ``z`` ``[B, dim]`` from ``q(z | x)`` given the encoder's ``params`` ``[B, param_dim]``, and
        the posterior's statistics that :meth:`penalty` reads."""
        raise NotImplementedError

    def prior(self, n: int, generator: torch.Generator | None, randn: NoiseFn) -> Tensor:
        """``n`` draws ``[n, dim]`` from the prior, every random number from ``randn(shape, generator)``."""
        raise NotImplementedError

    def penalty(self, stats: Mapping[str, Tensor], z: Tensor, step: int) -> LatentPenalty:
        """The regulariser of the posterior ``stats`` and draws ``z`` at training step ``step``."""
        raise NotImplementedError

    def fit_data(self, data: Mapping[str, Tensor]) -> None:
        """Take what the latent needs from the whole encoded training set (default: nothing)."""

    def prior_networks(self) -> list[nn.Module]:
        """The networks of a learned prior, trained after the autoencoder in a stage of their own (VQ-VAE's
        prior over its codes); empty (the default) when the prior is fixed and the VAE trains in one stage."""
        return []

    def prior_loss(self, params: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss of the learned prior on the training crystals whose encoder outputs are ``params``
        ``[B, param_dim]``, and its terms for logging; its gradient reaches only :meth:`prior_networks`."""
        raise NotImplementedError(f"{type(self).__name__} has no learned prior")


class DiagonalGaussian(Latent):
    """The VAE's latent (Kingma & Welling 2014): ``q(z|x) = N(mu, diag(sigma^2))`` drawn by
    reparameterisation, prior ``N(0, I)``, regulariser ``KL(q(z|x) || N(0, I))`` (closed form, summed over
    ``z``, averaged over the batch). The encoder gives ``(mu, log sigma^2)``, the log-variance clamped to
    ``[-10, 10]``.

    Args:
        dim: width of ``z``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = int(dim)
        self.param_dim = 2 * self.dim

    def split(self, params: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu, logvar)`` from the encoder's ``[B, 2 dim]`` output."""
        mu, logvar = params.chunk(2, dim=-1)
        return mu, logvar.clamp(-_LOGVAR_CLAMP, _LOGVAR_CLAMP)

    def posterior(self, params: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        mu, logvar = self.split(params)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return z, {"mu": mu, "logvar": logvar}

    def prior(self, n: int, generator: torch.Generator | None, randn: NoiseFn) -> Tensor:
        return randn((n, self.dim), generator)

    def penalty(self, stats: Mapping[str, Tensor], z: Tensor, step: int) -> LatentPenalty:
        kl = _gaussian_kl(stats["mu"], stats["logvar"])
        return LatentPenalty(kl, kl.new_zeros(()), {"kl": kl})


class BetaTCLatent(DiagonalGaussian):
    """beta-TCVAE's regulariser (Chen et al. 2018, equation 2 and section 4):
    ``alpha MI(z; n) + beta TC(z) + gamma sum_d KL(q(z_d) || p(z_d))``, the three terms estimated on the
    minibatch by :func:`kl_decomposition` with the training set's size ``N``. With every weight 1 it is an
    estimate of the KL of the plain VAE; the paper keeps ``alpha = gamma = 1`` and raises ``beta``.

    ``N`` is a buffer set by :meth:`fit_data` (the train stage calls it with the training set), so a
    checkpoint keeps it.

    Args:
        dim: width of ``z``.
        alpha: weight of the index-code mutual information.
        beta: weight of the total correlation.
        gamma: weight of the dimension-wise KL.
        estimator: ``"mws"`` (the paper's minibatch weighted sampling) or ``"stratified"``; see
            :func:`kl_decomposition`.
    """

    def __init__(
        self, dim: int, alpha: float = 1.0, beta: float = 6.0, gamma: float = 1.0, estimator: str = "mws"
    ) -> None:
        super().__init__(dim)
        if min(alpha, beta, gamma) < 0:
            raise ValueError(f"alpha, beta and gamma must be >= 0, got {alpha}, {beta}, {gamma}")
        if estimator not in ("mws", "stratified"):
            raise ValueError(f"estimator must be 'mws' or 'stratified', got {estimator!r}")
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)
        self.estimator = estimator
        self.register_buffer("dataset_size", torch.zeros((), dtype=torch.long))

    def fit_data(self, data: Mapping[str, Tensor]) -> None:
        """Keep ``N``, the number of crystals in the training set (the leading size of its fields)."""
        self.dataset_size.fill_(int(next(iter(data.values())).shape[0]))

    def penalty(self, stats: Mapping[str, Tensor], z: Tensor, step: int) -> LatentPenalty:
        n = float(self.dataset_size)
        if n < 1:
            raise RuntimeError(
                "beta-TCVAE needs the training set's size for its minibatch estimate of q(z): call "
                "fit_data(training batch) before training (bench.train does), or load a checkpoint of a "
                "trained run"
            )
        terms = kl_decomposition(z, stats["mu"], stats["logvar"], n, self.estimator)
        regulariser = self.alpha * terms["mi"] + self.beta * terms["tc"] + self.gamma * terms["dim_kl"]
        terms["kl"] = _gaussian_kl(stats["mu"], stats["logvar"])
        return LatentPenalty(regulariser, z.new_zeros(()), terms)


class FactorLatent(DiagonalGaussian):
    """FactorVAE's regulariser (Kim & Mnih 2018, equation 2 and algorithm 1): ``KL(q(z|x) || N(0, I)) +
    gamma TC(z)``, with ``TC(z) = KL(q(z) || prod_d q(z_d)) ~ E_q(z)[log D(z) / (1 - D(z))]`` read from a
    discriminator ``D`` of draws of ``q(z)`` against draws of ``prod_d q(z_d)`` (the density-ratio trick).

    The discriminator is an MLP (LeakyReLU 0.2, as the paper) with one logit out, ``log D / (1 - D)``. Its own
    objective, the cross-entropy of telling the batch's ``z`` (label 1) from the same ``z`` permuted dimension
    by dimension (label 0, :func:`permute_dims`), averaged over the two halves, sees only detached latents,
    so it trains ``D`` alone; the VAE's TC term reads ``D`` through its detached parameters
    (``torch.func.functional_call``), so it trains the encoder alone. Both can thus share one optimiser.

    Args:
        dim: width of ``z``.
        gamma: weight of the total correlation.
        hidden_dim: width of the discriminator's hidden layers.
        num_layers: number of linear layers of the discriminator (the paper: 6).
    """

    def __init__(self, dim: int, gamma: float = 10.0, hidden_dim: int = 512, num_layers: int = 6) -> None:
        super().__init__(dim)
        if gamma < 0 or hidden_dim < 1 or num_layers < 1:
            raise ValueError(
                f"gamma must be >= 0 and hidden_dim, num_layers >= 1, got {gamma}, {hidden_dim}, {num_layers}"
            )
        self.gamma = float(gamma)
        widths = [self.dim] + [int(hidden_dim)] * (num_layers - 1) + [1]
        layers: list[nn.Module] = []
        for i, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            if i:
                layers.append(nn.LeakyReLU(0.2))
            layers.append(nn.Linear(w_in, w_out))
        self.discriminator = nn.Sequential(*layers)

    def density_ratio(self, z: Tensor, train_discriminator: bool = False) -> Tensor:
        """``log D(z) / (1 - D(z))`` per row ``[B]``; through detached discriminator parameters unless
        ``train_discriminator``."""
        if train_discriminator:
            return self.discriminator(z).squeeze(-1)
        frozen = {name: p.detach() for name, p in self.discriminator.named_parameters()}
        return functional_call(self.discriminator, frozen, (z,)).squeeze(-1)

    def discriminator_loss(self, z: Tensor, z_perm: Tensor) -> Tensor:
        """``D``'s cross-entropy: ``(BCE(D(z), 1) + BCE(D(z_perm), 0)) / 2`` (``log 2`` at chance)."""
        real = self.density_ratio(z, train_discriminator=True)
        permuted = self.density_ratio(z_perm, train_discriminator=True)
        return 0.5 * (
            F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
            + F.binary_cross_entropy_with_logits(permuted, torch.zeros_like(permuted))
        )

    def penalty(self, stats: Mapping[str, Tensor], z: Tensor, step: int) -> LatentPenalty:
        kl = _gaussian_kl(stats["mu"], stats["logvar"])
        tc = self.density_ratio(z).mean()
        detached = z.detach()
        disc_loss = self.discriminator_loss(detached, permute_dims(detached))
        terms = {"kl": kl, "tc": tc, "disc_loss": disc_loss}
        return LatentPenalty(kl + self.gamma * tc, disc_loss, terms)


class JointLatent(Latent):
    """JointVAE's latent (Dupont 2018, sections 3 and 4): a Gaussian part and one or more categorical codes.

    - Posterior: ``z = [z_cont, c_1, ..., c_k]`` with ``z_cont = mu + sigma eps`` and each code ``c_i`` a
      Gumbel-softmax relaxed one-hot at ``temperature`` in training, the one-hot of the most likely category
      in evaluation (as the paper's inference).
    - Prior: ``N(0, I)`` times uniform categoricals; codes are drawn exactly one-hot, each category with
      probability ``1 / K_i`` (the argmax of ``K_i`` i.i.d. standard normals is uniform by symmetry, so every
      draw comes from the Gaussian noise source).
    - Regulariser: ``gamma |KL_cont - C_cont| + gamma |KL_disc - C_disc|`` (the paper's equation 7), the
      capacities rising linearly from 0 over ``capacity_steps`` training steps to ``cont_capacity`` and to
      ``min(disc_capacity, sum_i log K_i)`` (the most a set of uniform codes can carry).

    Args:
        cont_dim: width of the Gaussian part.
        codes: the number of categories of each discrete code.
        temperature: Gumbel-softmax temperature (the paper: 0.67).
        gamma: weight of both capacity terms.
        cont_capacity: final capacity of the Gaussian part, in nats.
        disc_capacity: final capacity of the codes, in nats (capped at ``sum_i log K_i``).
        capacity_steps: training steps over which the capacities rise (0: at their maximum from the start).
    """

    def __init__(
        self,
        cont_dim: int,
        codes: Sequence[int] = (7,),
        temperature: float = 0.67,
        gamma: float = 30.0,
        cont_capacity: float = 10.0,
        disc_capacity: float = 5.0,
        capacity_steps: int = 0,
    ) -> None:
        super().__init__()
        codes = [int(k) for k in codes]
        if cont_dim < 1 or not codes or min(codes) < 2:
            raise ValueError(f"cont_dim must be >= 1 and every code needs >= 2 categories, got {cont_dim}, "
                             f"{codes}")
        if temperature <= 0 or gamma < 0 or cont_capacity < 0 or disc_capacity < 0:
            raise ValueError(
                f"temperature must be > 0 and gamma, cont_capacity, disc_capacity >= 0, got {temperature}, "
                f"{gamma}, {cont_capacity}, {disc_capacity}"
            )
        if capacity_steps < 0:
            raise ValueError(
                f"capacity_steps must be >= 0 (the steps over which the capacities rise), got "
                f"{capacity_steps}: set model.module.latent.capacity_steps (it defaults to trainer.max_steps)"
            )
        self.cont_dim = int(cont_dim)
        self.codes = codes
        self.temperature = float(temperature)
        self.gamma = float(gamma)
        self.cont_capacity = float(cont_capacity)
        self.disc_capacity = min(float(disc_capacity), sum(math.log(k) for k in codes))
        self.capacity_steps = int(capacity_steps)
        self.param_dim = 2 * self.cont_dim + sum(codes)
        self.dim = self.cont_dim + sum(codes)

    def capacities(self, step: int) -> tuple[float, float]:
        """``(C_cont, C_disc)`` at training step ``step``."""
        return (capacity(self.cont_capacity, step, self.capacity_steps),
                capacity(self.disc_capacity, step, self.capacity_steps))

    def split(self, params: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """``(mu, logvar, [logits of each code])`` from the encoder's ``[B, param_dim]`` output."""
        mu, logvar, logits = params.split([self.cont_dim, self.cont_dim, sum(self.codes)], dim=-1)
        return mu, logvar.clamp(-_LOGVAR_CLAMP, _LOGVAR_CLAMP), list(logits.split(self.codes, dim=-1))

    def posterior(self, params: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        mu, logvar, logits = self.split(params)
        z_cont = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        if self.training:
            codes = [gumbel_softmax(x, self.temperature) for x in logits]
        else:
            codes = [F.one_hot(x.argmax(-1), x.shape[-1]).to(x.dtype) for x in logits]
        stats = {"mu": mu, "logvar": logvar, "logits": torch.cat(logits, -1)}
        return torch.cat([z_cont, *codes], dim=-1), stats

    def prior(self, n: int, generator: torch.Generator | None, randn: NoiseFn) -> Tensor:
        z_cont = randn((n, self.cont_dim), generator)
        codes = [F.one_hot(randn((n, k), generator).argmax(-1), k).to(z_cont.dtype) for k in self.codes]
        return torch.cat([z_cont, *codes], dim=-1)

    def penalty(self, stats: Mapping[str, Tensor], z: Tensor, step: int) -> LatentPenalty:
        kl_cont = _gaussian_kl(stats["mu"], stats["logvar"])
        kl_disc = sum(categorical_kl_uniform(x).mean() for x in stats["logits"].split(self.codes, dim=-1))
        c_cont, c_disc = self.capacities(step)
        regulariser = self.gamma * (kl_cont - c_cont).abs() + self.gamma * (kl_disc - c_disc).abs()
        terms = {
            "kl": kl_cont + kl_disc, "kl_cont": kl_cont, "kl_disc": kl_disc,
            "capacity_cont": kl_cont.new_tensor(c_cont), "capacity_disc": kl_cont.new_tensor(c_disc),
        }
        return LatentPenalty(regulariser, kl_cont.new_zeros(()), terms)
