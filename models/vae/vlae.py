"""Variational Lossy Autoencoder on the crystal's token sequence: a local autoregressive decoder and an
autoregressive-flow prior.

Chen, Kingma, Salimans, Duan, Dhariwal, Schulman, Sutskever & Abbeel (2017), "Variational Lossy Autoencoder",
ICLR, arXiv:1611.02731. Section 2 (bits-back coding and information preference): information that the
decoder can model without ``z`` is, under the ELBO, not put in ``z``. Section 3.1 (lossy code via explicit
information placement): so control what ``z`` encodes by what the decoder *cannot* model, there a PixelCNN
whose receptive field is a small window, so that global structure must go through ``z``. Section 3.2 (learned
prior with autoregressive flow): an autoregressive-flow prior on ``z`` (:mod:`bench.models.vae.flow_prior`).

On crystals (see the card): ``x`` is the crystal's token sequence of ``crystal_gpt``
(:mod:`bench.datasets.tokens`: BOS, six lattice tokens, ``element x y z`` per site, EOS), and the decoder is
crystal_gpt's network (:class:`~bench.models.autoregressive.gpt.GPTDecoder`) with banded attention: the
logits of token ``i`` read the tokens ``i - W .. i - 1`` only (``window = W``; the position and ``z`` are
read everywhere), ``z`` added to every position's embedding. With ``W = 4`` (one site's tokens) the decoder
can model a site from the one before it in the sequence, but sees neither the lattice once past it nor any
element more than a site back: which elements go together beyond neighbours and how the cell goes with the
composition must be carried by ``z``. ``window: null``
is the full-context decoder, whose latent the paper expects to collapse. The encoder is the VAE family's
set transformer (:class:`~bench.models.backbone.CrystalTransformer`, as in ``vae``) over the crystal that the
token sequence spells (its discretised lattice and coordinates), read out to ``(mu, log sigma^2)``.

Loss: the negative ELBO in nats per crystal, ``-log p(x | z) + beta KL(q(z|x) || p(z))`` with ``beta = 1``
(optional linear warm-up; optional free bits, ``latent.free_nats``): ``-log p(x|z)`` is the token
cross-entropy summed over the sequence (BOS excluded, EOS included, as crystal_gpt), the KL the flow latent's
one-draw estimate. Sampling: ``z`` from the flow
prior, then one token at a time with crystal_gpt's sampler and key/value cache.

Test likelihood (:meth:`CrystalVLAE.test_nll`): the importance-weighted bound of Burda, Grosse &
Salakhutdinov (2016), arXiv:1509.00519, on ``-log P(x)`` of the token sequence, ``k`` draws from ``q(z|x)``,
``-log (1/k) sum_i P(x | z_i) p(z_i) / q(z_i | x)`` with the flow's exact ``log p(z)``. It is in crystal_gpt's
space (the token grammar with its bins, :meth:`~bench.models.autoregressive.gpt.CrystalGPT.nll_space`), so it
compares with crystal_gpt's exact NLL and never with the codec-space densities of the other VAEs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from bench.datasets.tokens import (
    DEFAULT_COORD_BINS,
    DEFAULT_LATTICE_BINS,
    DEFAULT_LATTICE_RANGE,
    PAD,
    SPECIAL,
    CrystalTokenizer,
)
from bench.models.autoregressive.gpt import CrystalGPT, GPTDecoder
from bench.models.autoregressive.sampling import TokenSampler
from bench.models.backbone import CrystalTransformer
from bench.models.base import Likelihood, OptimizerFactory
from bench.models.vae.flow_prior import FlowPriorLatent
from bench.models.vae.vae import GaussianLatent, importance_weighted_nll
from torch import Tensor

__all__ = ["CrystalVLAE", "token_fields"]


def token_fields(tokenizer: CrystalTokenizer, tokens: Tensor) -> dict[str, Tensor]:
    """The crystal a well-formed token sequence ``[B, L]`` spells, as codec fields: one-hot ``atom_types``
    ``[B, N, K + 1]`` (PAD and EOS slots empty), ``frac_coords`` ``[B, N, 3]`` (the coordinate tokens' values,
    0 in empty slots) and the standardised ``lattice`` ``[B, 6]`` (the lattice tokens' values). Tensor
    arithmetic for the training sequences the representation wrote; a generated sequence is read by
    :meth:`~bench.datasets.tokens.CrystalTokenizer.parse`, which checks the grammar."""
    t = tokenizer
    lattice = -t.lattice_range + (tokens[:, 1:7] - t.lattice_start).to(torch.float32) * t.lattice_step
    sites = tokens[:, 7:7 + 4 * t.max_atoms].reshape(tokens.shape[0], t.max_atoms, 4)
    element = sites[..., 0]
    filled = (element >= SPECIAL) & (element < t.lattice_start)
    classes = torch.where(filled, element - SPECIAL + 1, torch.zeros_like(element))
    coords = (sites[..., 1:] - t.coord_start).to(torch.float32) / t.coord_bins
    coords = torch.where(filled.unsqueeze(-1), coords, torch.zeros_like(coords))
    types = F.one_hot(classes, t.num_elements + 1).to(torch.float32)
    return {"atom_types": types, "frac_coords": coords, "lattice": lattice}


class CrystalVLAE(GaussianLatent, CrystalGPT):
    """VLAE over crystal token sequences (see the module docstring): crystal_gpt's tokens, sampler and
    likelihood space, the VAE family's encoder and latent machinery.

    Args:
        backbone: partial of :class:`~bench.models.backbone.CrystalTransformer`, the encoder.
        optimizer: partial building the optimiser.
        sampler: the :class:`~bench.models.autoregressive.sampling.TokenSampler`.
        latent: the :class:`~bench.models.vae.flow_prior.FlowPriorLatent` (its ``dim`` is ``z``'s width;
            ``layers: 0`` is the standard normal prior).
        num_types, max_atoms: the codec's sizes.
        window: the decoder's receptive field ``W`` in tokens (None: full context).
        d_model, n_layers, n_heads, dropout: the decoder (:class:`GPTDecoder`).
        beta: weight of the KL (1: the ELBO).
        kl_warmup_steps: ramp ``beta`` linearly from 0 over this many steps (0: none).
        lattice_bins, coord_bins, lattice_range: the token grammar.
        output: ``crystal`` or ``tokens`` (as crystal_gpt).
    """

    family = "vae"
    paper = (
        "Chen, Kingma, Salimans, Duan, Dhariwal, Schulman, Sutskever, Abbeel (2017). Variational Lossy "
        "Autoencoder. ICLR. arXiv:1611.02731"
    )
    likelihood = Likelihood(
        "upper_bound",
        "iwae",
        "importance-weighted bound (Burda et al. 2016) with k posterior draws on -log P of the crystal's "
        "token sequence (BOS excluded, EOS included; coordinates and lattice rounded to the grammar's bins) "
        "under the window-W decoder and the autoregressive-flow prior's exact log-density: crystal_gpt's "
        "space",
    )

    def __init__(
        self,
        backbone: Callable[..., CrystalTransformer],
        optimizer: OptimizerFactory,
        sampler: TokenSampler,
        latent: FlowPriorLatent,
        num_types: int,
        max_atoms: int,
        window: int | None = 4,
        d_model: int = 128,
        n_layers: int = 4,
        n_heads: int = 4,
        dropout: float = 0.1,
        beta: float = 1.0,
        kl_warmup_steps: int = 0,
        lattice_bins: int = DEFAULT_LATTICE_BINS,
        coord_bins: int = DEFAULT_COORD_BINS,
        lattice_range: float = DEFAULT_LATTICE_RANGE,
        output: str = "crystal",
    ) -> None:
        if not isinstance(latent, FlowPriorLatent):
            raise TypeError(
                f"vlae needs a FlowPriorLatent (model.module.latent), got {type(latent).__name__}"
            )
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1 (null: full context), got {window}")
        if beta < 0 or kl_warmup_steps < 0:
            raise ValueError(f"beta and kl_warmup_steps must be >= 0, got {beta} and {kl_warmup_steps}")
        with warnings.catch_warnings():  # the GPT records every argument; the line after records them again
            warnings.filterwarnings("ignore", message="Attribute 'latent' is an instance of `nn.Module`")
            super().__init__(
                optimizer, sampler, num_types, max_atoms, d_model, n_layers, n_heads, dropout, lattice_bins,
                coord_bins, lattice_range, output,
            )
        self._save_plain_hparams(ignore=["latent"])  # plain values only; the latent is in the state dict
        self.latent = latent
        self.latent_dim = latent.dim
        self.beta = float(beta)
        self.kl_warmup_steps = int(kl_warmup_steps)
        self.window = None if window is None else int(window)
        # crystal_gpt's network, now banded to W tokens and reading z at every position
        self.net = GPTDecoder(
            self.tokenizer.vocab_size, self.tokenizer.length - 1, d_model, n_layers, n_heads, dropout,
            window=self.window, cond_dim=self.code_width,
        )
        self.encoder = backbone(
            num_types=num_types, max_atoms=max_atoms, pooled_dim=self.posterior_width, field_heads=False
        )

    # ------------------------------------------------------------------ the networks
    def posterior_params(self, batch: Mapping[str, Tensor]) -> Tensor:
        """The encoder's ``[B, 2 dim]`` output ``(mu, log sigma^2)`` for a batch (the VAE family's reading of
        a crystal's latent)."""
        return self.encode_tokens(self.tokens_of(batch))

    def encode_tokens(self, tokens: Tensor) -> Tensor:
        """:meth:`posterior_params` of token sequences ``[B, L]``; empty slots are masked out of attention."""
        fields = token_fields(self.tokenizer, tokens)
        return self.encoder(fields, padding_mask=fields["atom_types"][..., 0] > 0.5)["pooled"]

    def token_nll(self, tokens: Tensor, z: Tensor) -> Tensor:
        """``[B]`` ``-log P(x | z)`` of each sequence in nats (BOS excluded, EOS included, PAD not scored)."""
        logits, _ = self.net(tokens[:, :-1], cond=z)
        per_token = F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], ignore_index=PAD, reduction="none")
        return per_token.sum(dim=1)

    def generation_condition(self, n: int, generator: torch.Generator | None) -> Tensor:
        """``n`` draws of ``z`` from the flow prior (before any token is drawn)."""
        return self.sample_prior(n, generator)

    # ------------------------------------------------------------------ the contract
    def loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The negative ELBO per crystal (``loss``, with ``beta`` after warm-up), its reconstruction term
        ``recon_nll`` (nats per crystal), the KL estimate ``kl`` and ``nll_token`` (the reconstruction per
        scored token, crystal_gpt's ``loss`` scale)."""
        tokens = self.tokens_of(batch)
        z, stats = self.latent.posterior(self.encode_tokens(tokens))  # type: ignore[union-attr]
        recon = self.token_nll(tokens, z)
        penalty, terms = self.latent_regulariser(stats, z)
        scored = (tokens[:, 1:] != PAD).sum().clamp_min(1)
        return {
            "loss": recon.mean() + penalty,
            "recon_nll": recon.mean(),
            "nll_token": recon.sum() / scored,
            **terms,
        }

    # ------------------------------------------------------------------ likelihood of held-out data
    @torch.no_grad()
    def log_importance_weights(
        self, batch: Mapping[str, Tensor], draws: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """``[draws, B]`` values of ``log P(x | z_i) + log p(z_i) - log q(z_i | x)`` for ``z_i ~ q(z | x)``,
        every draw from ``generator``."""
        if draws < 1:
            raise ValueError(f"draws must be >= 1, got {draws}")
        latent: FlowPriorLatent = self.latent  # type: ignore[assignment]
        tokens = self.tokens_of(batch)
        mu, logvar = latent.split(self.encode_tokens(tokens))
        std = torch.exp(0.5 * logvar)
        out = []
        for _ in range(draws):
            z = mu + std * self._randn(mu.shape, generator)
            log_pxz = -self.token_nll(tokens, z)
            out.append((log_pxz + latent.log_prior(z) - latent.log_posterior(z, mu, logvar)).double())
        return torch.stack(out)

    def test_nll(
        self, batch: Mapping[str, Tensor], draws: int = 1, generator: torch.Generator | None = None
    ) -> Tensor:
        """``[B]`` nats per crystal: the importance-weighted bound with ``k = draws`` (the module docstring).
        Call it in eval mode (no dropout)."""
        return importance_weighted_nll(self.log_importance_weights(batch, draws, generator))
