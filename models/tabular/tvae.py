"""TVAE: a variational autoencoder of mode-specific normalised rows.

Xu, Skoularidou, Cuesta-Infante & Veeramachaneni (2019), "Modeling Tabular data using Conditional GAN",
NeurIPS, arXiv:1907.00503, section 4.4 and appendix: the VAE they propose beside CTGAN, on the same
preprocessing (:class:`~bench.datasets.tabular_representation.ModeSpecificNormalizer`). On the encoded row
``r``:

- encoder: ``h1 = ReLU(FC_128(r))``, ``h2 = ReLU(FC_128(h1))``, ``mu = FC_128(h2)``,
  ``sigma = exp(FC_128(h2) / 2)``, ``q(z | r) = N(mu, sigma^2 I)``;
- decoder: ``h1 = ReLU(FC_128(z))``, ``h2 = ReLU(FC_128(h1))``; per column ``alpha_bar = tanh(FC_1(h2))`` and
  ``alpha ~ N(alpha_bar, delta_i^2)`` with ``delta_i`` a learned parameter per column, and
  ``beta ~ softmax(FC_K(h2))``;
- loss: the negative ELBO (Kingma & Welling 2014, arXiv:1312.6114), ``-E_q[log p(r | z)] + KL(q || N(0,
  I))``, here in nats per row: the Gaussian log-density of every scalar (its constant included) and the
  categorical log-probability of every mode;
- Adam with learning rate ``1e-3`` (the released code adds weight decay ``1e-5``).

Two details follow the released code where the paper is silent: ``delta_i`` starts at 0.1 and is kept in
``[0.01, 1]`` (here smoothly, ``delta = 0.01 + 0.99 sigmoid(theta)``, where the code clamps the parameter
after every step); and the code weights the reconstruction by ``loss_factor = 2``, which equals a KL weight
of 0.5 (``beta``; the paper's ELBO has 1, the default). Sampling follows the generative model:
``z ~ N(0, I)``, ``alpha`` drawn around ``alpha_bar`` with ``delta`` and each mode drawn from its softmax
(``sample_observation: true``), or the means and the most probable modes (``false``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from bench.models.base import OptimizerFactory
from bench.models.tabular.base import TableModule
from torch import Tensor, nn

__all__ = ["TVAE", "SIGMA_RANGE"]

SIGMA_RANGE = (0.01, 1.0)
"""The range of the decoder's per-column standard deviation ``delta`` (the released code's clamp)."""
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _mlp(inputs: int, hidden: Sequence[int]) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    width = inputs
    for h in hidden:
        layers += [nn.Linear(width, int(h)), nn.ReLU()]
        width = int(h)
    return nn.Sequential(*layers), width


class TVAE(TableModule):
    """TVAE (see the module docstring).

    Args:
        optimizer: partial building the optimiser (Adam, ``1e-3``).
        modes: the kept modes of each column (from the representation).
        latent_dim: width of ``z`` (128).
        hidden_dims: widths of the encoder's and the decoder's hidden layers (128, 128).
        beta: the KL weight (1: the ELBO).
        sigma_init: the decoder's starting ``delta`` (0.1).
        sample_observation: draw ``alpha`` and the modes from ``p(r | z)``; false: its means and argmax modes.
    """

    family = "vae"
    paper = (
        "Xu, Skoularidou, Cuesta-Infante, Veeramachaneni (2019). Modeling Tabular data using Conditional "
        "GAN (TVAE, section 4.4). NeurIPS. arXiv:1907.00503"
    )

    def __init__(
        self,
        optimizer: OptimizerFactory,
        modes: Sequence[int],
        latent_dim: int = 128,
        hidden_dims: Sequence[int] = (128, 128),
        beta: float = 1.0,
        sigma_init: float = 0.1,
        sample_observation: bool = True,
    ) -> None:
        # plain values (a config's lists arrive as ListConfig), so checkpoints hold only plain hyperparameters
        modes, hidden_dims = [int(v) for v in modes], [int(v) for v in hidden_dims]
        super().__init__(optimizer, modes)
        low, high = SIGMA_RANGE
        if latent_dim < 1 or beta < 0 or not low < sigma_init < high:
            raise ValueError(f"latent_dim must be >= 1, beta >= 0 and sigma_init in ({low}, {high})")
        self._save_plain_hparams()
        self.latent_dim = int(latent_dim)
        self.beta = float(beta)
        self.sample_observation = bool(sample_observation)
        self.encoder, width = _mlp(self.width, list(hidden_dims))
        self.to_mu = nn.Linear(width, self.latent_dim)
        self.to_logvar = nn.Linear(width, self.latent_dim)
        self.decoder, width = _mlp(self.latent_dim, list(reversed(list(hidden_dims))))
        self.to_row = nn.Linear(width, self.width)
        start = (sigma_init - low) / (high - low)
        self.sigma_logit = nn.Parameter(torch.full((len(self.modes),), math.log(start / (1.0 - start))))

    @property
    def sigma(self) -> Tensor:
        """``delta`` per column ``[C]``, in :data:`SIGMA_RANGE`."""
        low, high = SIGMA_RANGE
        return low + (high - low) * torch.sigmoid(self.sigma_logit)

    def decode_raw(self, z: Tensor) -> Tensor:
        """The decoder's raw outputs ``[B, D]``: per column the pre-``tanh`` scalar and the mode logits."""
        return self.to_row(self.decoder(z))

    def loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The negative ELBO in nats per row (``beta = 1``) and its terms."""
        rows = self.rows_of(batch)
        h = self.encoder(rows)
        mu, logvar = self.to_mu(h), self.to_logvar(h)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        raw = self.decode_raw(z)
        index = list(self.alpha_index)
        alpha_bar = torch.tanh(raw[:, index])
        sigma = self.sigma
        gaussian = 0.5 * ((self.alphas(rows) - alpha_bar) / sigma) ** 2 + torch.log(sigma) + _HALF_LOG_2PI
        categorical = sum(F.cross_entropy(raw[:, s:e], rows[:, s:e].argmax(dim=1), reduction="none")
                          for s, e in self.mode_spans)
        reconstruction = gaussian.sum(dim=1) + categorical
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)
        return {"loss": (reconstruction + self.beta * kl).mean(), "reconstruction": reconstruction.mean(),
                "kl": kl.mean()}

    def _sample(self, n: int, generator: torch.Generator | None, condition: Any) -> dict[str, Tensor]:
        """``z ~ N(0, I)``, then ``alpha`` and the modes from ``p(r | z)`` (or its means), every random number
        from ``generator``."""
        z = self._randn((n, self.latent_dim), generator)
        raw = self.decode_raw(z)
        out = raw.clone()
        index = list(self.alpha_index)
        alpha = torch.tanh(raw[:, index])
        if self.sample_observation:
            alpha = alpha + self.sigma * self._randn((n, len(index)), generator)
        out[:, index] = alpha
        if self.sample_observation:
            for start, end in self.mode_spans:
                out[:, start:end] = raw[:, start:end] + self.gumbel((n, end - start), generator)
        return {"rows": out}
