"""VQ-VAE's latent: the encoder's output quantised to a learned codebook, and a learned prior over the codes.

van den Oord, Vinyals & Kavukcuoglu (2017), "Neural Discrete Representation Learning", NeurIPS,
arXiv:1711.00937:

- section 3.1: the encoder's output ``z_e(x)`` is replaced by its nearest codebook vector ``e_k``
  (``k = argmin_j ||z_e(x) - e_j||``), the decoder's input ``z_q(x)``;
- section 3.2: the gradient of the decoder's input is copied to the encoder's output (straight-through), and
  equation 3 adds the codebook loss ``||sg[z_e(x)] - e||^2`` (it moves the codebook only) and the commitment
  loss ``beta ||z_e(x) - sg[e]||^2`` (it moves the encoder only), ``beta = 0.25``;
- section 3.2: while the autoencoder trains the prior over the codes is uniform, so the KL is the constant
  ``log K`` and has no gradient; section 3.3: an autoregressive prior is then fitted to the codes the trained
  encoder assigns, and sampling draws codes from it and decodes them.

A crystal has no spatial grid of latents: its encoder gives one vector per crystal, split here into ``M``
groups of width ``d``, each quantised to the nearest of ``K`` codebook vectors shared by all groups (as the
paper's one codebook serves every position of its latent grid). A crystal is thus a sequence of ``M`` codes,
and the autoregressive prior is a small causal transformer over that sequence in place of the paper's
PixelCNN over the image grid.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from bench.models.vae.latents import Latent, LatentPenalty, NoiseFn
from torch import Tensor, nn

__all__ = ["CodePrior", "VQLatent", "code_perplexity", "nearest_codes"]


def nearest_codes(z: Tensor, codebook: Tensor) -> Tensor:
    """The index of the nearest codebook row (squared Euclidean distance; the first one on a tie) of each
    vector of ``z`` ``[..., d]``, for a codebook ``[K, d]``; the result has ``z``'s leading shape."""
    flat = z.detach().reshape(-1, z.shape[-1])
    book = codebook.detach()
    distance = flat.pow(2).sum(-1, keepdim=True) - 2.0 * flat @ book.T + book.pow(2).sum(-1)
    return distance.argmin(dim=-1).reshape(z.shape[:-1])


def code_perplexity(codes: Tensor, num_codes: int) -> Tensor:
    """``exp`` of the entropy of the codes' empirical frequencies: ``K`` when all ``K`` codes are used
    equally often, 1 when a single code is used (the usual measure of a codebook's use)."""
    counts = torch.bincount(codes.flatten(), minlength=num_codes).to(torch.float64)
    freq = counts / counts.sum().clamp_min(1.0)
    return torch.exp(-torch.special.xlogy(freq, freq).sum()).to(torch.float32)


class CodePrior(nn.Module):
    """An autoregressive prior over ``M`` code indices, ``p(c) = prod_i p(c_i | c_<i)``: a small causal
    transformer (pre-norm encoder layers with a causal mask), a learned start token and learned positions.

    Its output layer starts at zero, so an untrained prior is exactly the uniform prior of the autoencoder's
    training stage (every logit 0): sampling works before the prior has been trained.

    Args:
        num_codes: ``K``, the size of the codebook.
        length: ``M``, the number of codes per crystal.
        width: width of the transformer.
        num_layers: number of transformer layers.
        num_heads: number of attention heads.
        dropout: dropout of the transformer layers (training only).
    """

    def __init__(
        self, num_codes: int, length: int, width: int = 128, num_layers: int = 2, num_heads: int = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if num_codes < 2 or length < 1 or width < 1 or num_layers < 1 or num_heads < 1:
            raise ValueError(
                f"num_codes must be >= 2 and length, width, num_layers, num_heads >= 1, got {num_codes}, "
                f"{length}, {width}, {num_layers}, {num_heads}"
            )
        if width % num_heads:
            raise ValueError(f"width ({width}) must be a multiple of num_heads ({num_heads})")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.num_codes = int(num_codes)
        self.length = int(length)
        self.embed = nn.Embedding(self.num_codes + 1, width)  # row K is the start token
        self.position = nn.Parameter(0.02 * torch.randn(self.length, width))
        layer = nn.TransformerEncoderLayer(
            width, num_heads, 4 * width, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, self.num_codes)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def next_logits(self, prefix: Tensor) -> Tensor:
        """Logits ``[B, L + 1, K]`` of the codes ``c_1 .. c_{L+1}``, each given the codes before it, from the
        first ``L < M`` codes ``prefix`` ``[B, L]``."""
        start = prefix.new_full((prefix.shape[0], 1), self.num_codes)
        tokens = torch.cat([start, prefix], dim=1)
        size = tokens.shape[1]
        if size > self.length:
            raise ValueError(
                f"a prefix of {prefix.shape[1]} codes is longer than M - 1 = {self.length - 1}"
            )
        hidden = self.embed(tokens) + self.position[:size]
        causal = nn.Transformer.generate_square_subsequent_mask(
            size, device=hidden.device, dtype=hidden.dtype
        )
        hidden = self.blocks(hidden, mask=causal, is_causal=True)
        return self.out(self.norm(hidden))

    def forward(self, codes: Tensor) -> Tensor:
        """Logits ``[B, M, K]`` of every code of ``codes`` ``[B, M]`` given the codes before it."""
        return self.next_logits(codes[:, :-1])

    def nll(self, codes: Tensor) -> Tensor:
        """``-log p(c) / M``: the cross-entropy of the codes ``[B, M]``, in nats per code, averaged over the
        batch."""
        logits = self(codes)
        return F.cross_entropy(logits.reshape(-1, self.num_codes), codes.reshape(-1))

    def sample(self, uniform: Tensor) -> Tensor:
        """Codes ``[n, M]`` drawn one after the other, ``c_i`` by inverting the CDF of ``p(c_i | c_<i)`` at
        ``uniform[:, i]`` (``uniform`` ``[n, M]`` in ``[0, 1]``): the same numbers give the same codes."""
        codes = torch.zeros((uniform.shape[0], 0), dtype=torch.long, device=uniform.device)
        for i in range(self.length):
            probs = F.softmax(self.next_logits(codes)[:, -1].double(), dim=-1)
            cdf = probs.cumsum(dim=-1)
            drawn = torch.searchsorted(cdf, uniform[:, i : i + 1].to(cdf).contiguous(), right=True)
            codes = torch.cat([codes, drawn.clamp_max(self.num_codes - 1)], dim=1)
        return codes


class VQLatent(Latent):
    """VQ-VAE's latent (van den Oord et al. 2017, section 3): ``M`` groups of ``d`` encoder outputs, each
    quantised to its nearest of ``K`` shared codebook vectors, gradients straight through to the encoder.

    - :meth:`posterior`: ``z_q = z_e + sg[e - z_e]`` (the value ``e``, the gradient of ``z_e``), ``M d`` wide.
    - :meth:`penalty`: no KL (the prior of the autoencoder's stage is uniform, so the KL is the constant
      ``M log K``); the auxiliary loss is equation 3's commitment loss ``beta ||z_e - sg[e]||^2`` and, with
      ``codebook_update="loss"``, its codebook loss ``||sg[z_e] - e||^2``, each squared norm summed over the
      ``d`` coordinates of a code and averaged over the ``B M`` codes of the batch. With
      ``codebook_update="ema"`` (the default) the codebook is a buffer that follows the moving averages of the
      paper's appendix A.1 (:meth:`update_codebook`) instead: under Adam a codebook trained by the loss moves
      about one learning rate per step while the encoder's output moves much faster, and on Perov-5 the
      commitment loss ran away (to hundreds within 300 steps); the moving averages track the encoder
      whatever its speed. Codes unused for ``dead_after`` training batches are moved onto encoder outputs of
      the batch (:meth:`restart_codes`; without it 484 of 512 codes were dead after 300 steps on Perov-5).
      Logged: both losses, the codebook's perplexity on the batch, the codes the batch used, and the dead
      codes found at that step.
    - :meth:`prior`: codes from the :class:`CodePrior` (uniform until it is trained), decoded by the codebook.
    - :meth:`prior_networks` / :meth:`prior_loss`: the prior is trained in a stage of its own, on the codes
      the frozen encoder assigns (cross-entropy).

    Args:
        groups: ``M``, codes per crystal.
        code_dim: ``d``, the width of a codebook vector.
        codes: ``K``, the size of the codebook.
        commitment: ``beta`` of the commitment loss (the paper: 0.25).
        prior_width: width of the prior's transformer.
        prior_layers: layers of the prior's transformer.
        prior_heads: attention heads of the prior's transformer.
        prior_dropout: dropout of the prior's transformer.
        dead_after: a code unused for this many training batches in a row counts as dead.
        codebook_update: ``"ema"``, the moving averages of the paper's appendix A.1, or ``"loss"``, the
            codebook loss of its equation 3.
        decay: the moving averages' decay ``gamma`` (the paper: 0.99).
        restart_dead: move dead codes onto encoder outputs of the batch (:meth:`restart_codes`).
    """

    def __init__(
        self,
        groups: int = 8,
        code_dim: int = 8,
        codes: int = 512,
        commitment: float = 0.25,
        prior_width: int = 128,
        prior_layers: int = 2,
        prior_heads: int = 4,
        prior_dropout: float = 0.1,
        dead_after: int = 100,
        codebook_update: str = "ema",
        decay: float = 0.99,
        restart_dead: bool = True,
    ) -> None:
        super().__init__()
        if groups < 1 or code_dim < 1 or codes < 2:
            raise ValueError(
                f"groups and code_dim must be >= 1 and codes >= 2, got {groups}, {code_dim}, {codes}"
            )
        if commitment < 0 or dead_after < 1:
            raise ValueError(f"commitment must be >= 0 and dead_after >= 1, got {commitment}, {dead_after}")
        if codebook_update not in ("ema", "loss"):
            raise ValueError(f"codebook_update must be 'ema' or 'loss', got {codebook_update!r}")
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.groups = int(groups)
        self.code_dim = int(code_dim)
        self.num_codes = int(codes)
        self.commitment = float(commitment)
        self.dead_after = int(dead_after)
        self.codebook_update = codebook_update
        self.decay = float(decay)
        self.restart_dead = bool(restart_dead)
        self.param_dim = self.dim = self.groups * self.code_dim
        scale = 1.0 / self.num_codes
        book = torch.empty(self.num_codes, self.code_dim).uniform_(-scale, scale)
        if codebook_update == "loss":
            self.codebook = nn.Parameter(book)
        else:  # the codebook follows moving averages: a buffer, with the averages' count and sum
            self.register_buffer("codebook", book)
            self.register_buffer("ema_count", torch.zeros(self.num_codes))
            self.register_buffer("ema_sum", torch.zeros(self.num_codes, self.code_dim))
        self.code_prior = CodePrior(
            self.num_codes, self.groups, prior_width, prior_layers, prior_heads, prior_dropout
        )
        # training batches since each code was last used (dead codes are counted and restarted from it)
        self.register_buffer("idle_batches", torch.zeros(self.num_codes, dtype=torch.long))

    def split(self, params: Tensor) -> Tensor:
        """The encoder's ``[B, M d]`` output as ``M`` vectors ``z_e`` ``[B, M, d]``."""
        return params.reshape(params.shape[0], self.groups, self.code_dim)

    def codes(self, params: Tensor) -> Tensor:
        """The code of each group ``[B, M]`` (no gradient)."""
        return nearest_codes(self.split(params), self.codebook)

    def decode_codes(self, codes: Tensor) -> Tensor:
        """``z`` ``[B, M d]``: the codebook vectors of the codes ``[B, M]``, side by side."""
        return self.codebook[codes].reshape(codes.shape[0], self.dim)

    def posterior(self, params: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        z_e = self.split(params)
        codes = nearest_codes(z_e, self.codebook)
        e = self.codebook[codes]
        z_q = z_e + (e - z_e).detach()  # straight-through: e forward, the identity backward
        return z_q.reshape(params.shape[0], self.dim), {"z_e": z_e, "e": e, "codes": codes}

    def prior(self, n: int, generator: torch.Generator | None, randn: NoiseFn) -> Tensor:
        uniform = torch.special.ndtr(randn((n, self.groups), generator).double())  # U(0, 1) from N(0, 1)
        return self.decode_codes(self.code_prior.sample(uniform))

    def penalty(self, stats: Mapping[str, Tensor], z: Tensor, step: int) -> LatentPenalty:
        z_e, e, codes = stats["z_e"], stats["e"], stats["codes"]
        codebook_loss = (z_e.detach() - e).pow(2).sum(-1).mean()
        commitment_loss = (z_e - e.detach()).pow(2).sum(-1).mean()
        counts = torch.bincount(codes.flatten(), minlength=self.num_codes)
        if self.training:
            self.idle_batches.add_(1).masked_fill_(counts > 0, 0)
        dead = self.idle_batches >= self.dead_after
        n_dead = dead.sum().to(torch.float32)
        if self.training:
            if self.codebook_update == "ema":
                self.update_codebook(z_e.detach(), codes)
            if self.restart_dead and bool(dead.any()):
                self.restart_codes(dead, z_e.detach())
        terms = {
            "vq_codebook": codebook_loss,
            "vq_commitment": commitment_loss,
            "perplexity": code_perplexity(codes, self.num_codes),
            "codes_used": (counts > 0).sum().to(torch.float32),
            "dead_codes": n_dead,
        }
        vq_loss = self.commitment * commitment_loss
        if self.codebook_update == "loss":
            vq_loss = vq_loss + codebook_loss
        return LatentPenalty(z.new_zeros(()), vq_loss, terms)

    @torch.no_grad()
    def update_codebook(self, z_e: Tensor, codes: Tensor) -> None:
        """The paper's appendix A.1: ``N_i <- g N_i + (1 - g) n_i`` and ``m_i <- g m_i + (1 - g) sum_j z_j``
        over the ``n_i`` vectors ``z_j`` of the batch assigned to code ``i``, then ``e_i = m_i / N_i`` (``g``
        the decay). ``N`` and ``m`` start at zero, so ``e_i`` is the decay-weighted mean of the vectors
        assigned to code ``i`` so far. A code whose ``N_i`` is below ``1e-8`` (never used, or unused for
        about 1,800 batches) keeps its vector, which no new assignment has changed."""
        flat_codes = codes.flatten()
        counts = torch.bincount(flat_codes, minlength=self.num_codes).to(self.ema_count)
        sums = torch.zeros_like(self.ema_sum).index_add_(0, flat_codes, z_e.reshape(-1, self.code_dim))
        self.ema_count.mul_(self.decay).add_(counts, alpha=1.0 - self.decay)
        self.ema_sum.mul_(self.decay).add_(sums, alpha=1.0 - self.decay)
        live = self.ema_count > 1e-8
        self.codebook[live] = self.ema_sum[live] / self.ema_count[live].unsqueeze(-1)

    @torch.no_grad()
    def restart_codes(self, dead: Tensor, z_e: Tensor) -> None:
        """Move each ``dead`` code (``[K]``, bool) onto one of the batch's encoder outputs ``z_e``
        ``[B, M, d]``, drawn at random (distinct ones while the batch has enough): the random restarts of
        Dhariwal et al. (2020), "Jukebox: A Generative Model for Music", arXiv:2005.00341. The code's moving
        averages start afresh."""
        flat = z_e.reshape(-1, self.code_dim)
        index = dead.nonzero().squeeze(1)
        if index.numel() <= flat.shape[0]:
            pick = torch.randperm(flat.shape[0], device=flat.device)[: index.numel()]
        else:
            pick = torch.randint(flat.shape[0], (index.numel(),), device=flat.device)
        self.codebook.data[index] = flat[pick].to(self.codebook.dtype)
        if self.codebook_update == "ema":
            self.ema_count[index] = 0.0
            self.ema_sum[index] = 0.0
        self.idle_batches[index] = 0

    def prior_networks(self) -> list[nn.Module]:
        return [self.code_prior]

    def prior_loss(self, params: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        nll = self.code_prior.nll(self.codes(params))
        return nll, {"prior_ce": nll}
