"""A variational autoencoder of compositions: MLP encoder and decoder over the element-by-count matrix, a
Gaussian latent, and per element a categorical likelihood over its count levels.

Kingma & Welling (2014), "Auto-Encoding Variational Bayes", ICLR, arXiv:1312.6114. The decoder's observation
model is ``p(x | z) = prod_e Categorical(level_e; softmax(logits_e(z)))`` over the ``E`` elements of the
vocabulary (level 0: absent, level ``k``: ``k`` atoms), so the reconstruction term is the exact log-likelihood
of the discrete composition and the training loss, with ``beta = 1`` once the warm-up is over, is the negative
ELBO in nats per composition. The KL weight is warmed up linearly from 0, as the crystal VAE's
(:class:`~bench.models.vae.vae.GaussianLatent`); Bowman et al. (2016), "Generating Sentences from a
Continuous Space", CoNLL, arXiv:1511.06349, introduced the warm-up against a posterior that collapses onto
the prior while the decoder is still weak.

Test likelihood (:meth:`CompositionVAE.test_nll`): the importance-weighted bound of Burda, Grosse &
Salakhutdinov (2016), "Importance Weighted Autoencoders", ICLR, arXiv:1509.00519, with ``k`` posterior draws,
``-log (1/k) sum_i p(x | z_i) p(z_i) / q(z_i | x)``: an upper bound on ``-log p(x)`` in expectation, the
negative ELBO at ``k = 1``, tighter as ``k`` grows. The variable is the composition's ``E`` count levels
(:data:`~bench.models.composition.counts.COUNTS_SPACE`), so the value is in nats per composition and never
below 0.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from bench.models.base import Likelihood, OptimizerFactory
from bench.models.composition.counts import CountsModule
from bench.models.vae.latents import gaussian_log_density
from bench.models.vae.vae import GaussianLatent, importance_weighted_nll
from torch import Tensor, nn

__all__ = ["CHUNK_ENTRIES", "CompositionVAE", "mlp"]

CHUNK_ENTRIES = 1 << 24
"""At most this many decoder outputs (draws x items x elements x levels) are computed at once by the
bounds."""


def mlp(inputs: int, hidden: int, layers: int, outputs: int) -> nn.Sequential:
    """``layers`` hidden layers of width ``hidden`` (linear map and ReLU), then a linear map to
    ``outputs``."""
    if min(inputs, hidden, outputs) < 1 or layers < 0:
        raise ValueError(
            f"inputs, hidden and outputs must be >= 1 and layers >= 0, got {inputs}, {hidden}, {layers}, "
            f"{outputs}"
        )
    modules: list[nn.Module] = []
    width = inputs
    for _ in range(layers):
        modules += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    modules.append(nn.Linear(width, outputs))
    return nn.Sequential(*modules)


class CompositionVAE(GaussianLatent, CountsModule):
    """VAE of count matrices (see the module docstring).

    The loss is ``NLL(x | z) + beta_t KL(q(z | x) || N(0, I))`` per composition (mean over the batch), with
    ``beta_t`` warmed up from 0 to ``beta`` over ``kl_warmup_steps``; ``elbo`` logs the unweighted negative
    ELBO. Sampling draws ``z ~ N(0, I)`` and then, with ``sample_observation``, every element's level from
    ``p(x | z)`` (the model whose likelihood :meth:`test_nll` bounds), otherwise its most probable level.

    Args:
        optimizer: partial building the optimiser.
        num_elements: E (from the representation).
        num_levels: L (from the representation).
        latent_dim: width of the Gaussian latent.
        hidden_dim: width of the hidden layers of the encoder and the decoder.
        n_layers: hidden layers of each.
        beta: the KL weight after the warm-up (1: the ELBO).
        kl_warmup_steps: ramp the KL weight linearly from 0 over this many steps (0: no warm-up).
        sample_observation: draw each element's level from the decoder's categorical (True) or take its mode.
    """

    family = "vae"
    paper = "Kingma & Welling (2014). Auto-Encoding Variational Bayes. ICLR. arXiv:1312.6114"
    likelihood = Likelihood(
        "upper_bound",
        "iwae",
        "importance-weighted bound (Burda et al. 2016) with k posterior draws on -log p(x) of the "
        "composition's count levels (per element a categorical decoder over levels 0..L-1), nats per "
        "composition; k = 1 is the negative ELBO",
    )

    def __init__(
        self,
        optimizer: OptimizerFactory,
        num_elements: int,
        num_levels: int,
        latent_dim: int = 32,
        hidden_dim: int = 256,
        n_layers: int = 2,
        beta: float = 1.0,
        kl_warmup_steps: int = 0,
        sample_observation: bool = True,
    ) -> None:
        super().__init__(optimizer, num_elements, num_levels)
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
        if beta < 0 or kl_warmup_steps < 0:
            raise ValueError(f"beta and kl_warmup_steps must be >= 0, got {beta} and {kl_warmup_steps}")
        self._save_plain_hparams()
        self.latent_dim = int(latent_dim)
        self.beta = float(beta)
        self.kl_warmup_steps = int(kl_warmup_steps)
        self.latent = None  # the built-in Gaussian latent of the family's mixin
        self.sample_observation = bool(sample_observation)
        width = self.num_elements * self.num_levels
        self.encoder = mlp(width, int(hidden_dim), int(n_layers), 2 * self.latent_dim)
        self.decoder = mlp(self.latent_dim, int(hidden_dim), int(n_layers), width)

    # ------------------------------------------------------------------ networks
    def encode(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Posterior mean and log-variance ``[B, latent_dim]`` (log-variance clamped to ``[-10, 10]``)."""
        mu, logvar = self.encoder(self.counts_of(batch).flatten(1)).chunk(2, dim=-1)
        return mu, logvar.clamp(-10.0, 10.0)

    def decode(self, z: Tensor) -> Tensor:
        """Level logits ``[B, E, L]`` of every element given latents ``z``."""
        return self.decoder(z).view(-1, self.num_elements, self.num_levels)

    @staticmethod
    def observation_log_prob(logits: Tensor, levels: Tensor) -> Tensor:
        """``log p(x | z)`` ``[B]``: the sum over elements of the log-probability of each element's level
        ``levels`` ``[B, E]`` under the categorical of ``logits`` ``[B, E, L]``."""
        log_probs = F.log_softmax(logits, dim=-1)
        return log_probs.gather(-1, levels.unsqueeze(-1)).squeeze(-1).sum(-1)

    @staticmethod
    def kl_per_item(mu: Tensor, logvar: Tensor) -> Tensor:
        """``KL(N(mu, exp(logvar)) || N(0, I))`` ``[B]`` in nats, summed over the latent."""
        return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)

    # ------------------------------------------------------------------ the contract
    def loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``loss = recon + beta_t kl``; ``recon``, ``kl`` and the negative ELBO ``elbo`` in nats per
        composition."""
        levels = self.levels_of(batch)
        mu, logvar = self.encode(batch)
        z = self.reparameterise(mu, logvar)
        recon = -self.observation_log_prob(self.decode(z), levels).mean()
        kl = self.kl_per_item(mu, logvar).mean()
        return {"loss": recon + self.current_beta() * kl, "recon": recon, "kl": kl, "elbo": recon + kl}

    def _sample(self, n: int, generator: torch.Generator | None, condition: Any) -> dict[str, Tensor]:
        logits = self.decode(self.sample_prior(n, generator))
        if not self.sample_observation:
            return {"counts": logits}
        # Gumbel-max: argmax(logits + Gumbel noise) is a draw from Categorical(softmax(logits)).
        uniform = self._rand(logits.shape, generator)
        tiny = torch.finfo(logits.dtype).tiny
        gumbel = -torch.log((-torch.log(uniform.clamp_min(tiny))).clamp_min(tiny))
        return {"counts": logits + gumbel}

    # ------------------------------------------------------------------ likelihood of held-out data
    def _posterior_draws(
        self, batch: Mapping[str, Tensor], draws: int, generator: torch.Generator | None
    ) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor]]:
        """``(levels, mu, logvar, z)`` with ``z`` ``[k, B, D]``: the ``draws`` posterior draws in chunks of
        ``k`` (at most :data:`CHUNK_ENTRIES` decoder outputs at a time), noise from ``generator``."""
        if draws < 1:
            raise ValueError(f"draws must be >= 1, got {draws}")
        levels = self.levels_of(batch)
        mu, logvar = self.encode(batch)
        per_draw = mu.shape[0] * self.num_elements * self.num_levels
        chunk = max(1, min(draws, CHUNK_ENTRIES // max(per_draw, 1)))
        for start in range(0, draws, chunk):
            k = min(chunk, draws - start)
            z = mu + torch.exp(0.5 * logvar) * self._randn((k, *mu.shape), generator)
            yield levels, mu, logvar, z

    def _log_px(self, z: Tensor, levels: Tensor) -> Tensor:
        """``log p(x | z)`` ``[k, B]`` for draws ``z`` ``[k, B, D]`` of the items whose levels are
        ``levels``."""
        k, b = z.shape[:2]
        logits = self.decode(z.reshape(k * b, -1))
        return self.observation_log_prob(logits, levels.repeat(k, 1)).view(k, b)

    @torch.no_grad()
    def log_importance_weights(
        self, batch: Mapping[str, Tensor], draws: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """``[draws, B]`` values of ``log p(x | z_i) + log N(z_i; 0, I) - log q(z_i | x)``, float64, for
        ``z_i`` drawn from the encoder's posterior with noise from ``generator``."""
        out = []
        for levels, mu, logvar, z in self._posterior_draws(batch, draws, generator):
            log_prior = gaussian_log_density(z, torch.zeros_like(z), torch.zeros_like(z)).sum(-1)
            log_posterior = gaussian_log_density(z, mu, logvar).sum(-1)
            out.append(self._log_px(z, levels).double() + (log_prior - log_posterior).double())
        return torch.cat(out)

    @torch.no_grad()
    def negative_elbo(
        self, batch: Mapping[str, Tensor], draws: int = 1, generator: torch.Generator | None = None
    ) -> Tensor:
        """``[B]`` negative ELBO in nats: minus ``log p(x | z)`` averaged over ``draws`` posterior draws, plus
        the closed-form KL."""
        recon, kl = None, None
        for levels, mu, logvar, z in self._posterior_draws(batch, draws, generator):
            part = -self._log_px(z, levels).double().sum(0)
            recon = part if recon is None else recon + part
            kl = self.kl_per_item(mu, logvar).double()
        assert recon is not None and kl is not None
        return recon / draws + kl

    def test_nll(
        self, batch: Mapping[str, Tensor], draws: int = 1, generator: torch.Generator | None = None
    ) -> Tensor:
        """``[B]`` nats per composition: the importance-weighted bound with ``k = draws`` (see the module
        docstring)."""
        return importance_weighted_nll(self.log_importance_weights(batch, draws, generator))

