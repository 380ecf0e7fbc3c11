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

Razavi, van den Oord & Vinyals (2019), "Generating Diverse High-Fidelity Images with VQ-VAE-2", NeurIPS,
arXiv:1906.00446, stack two such latents: a coarse top map ``e_top = Quantise(E_top(x))`` and a finer bottom
map ``e_bottom = Quantise(E_bottom(x, e_top))`` whose encoder sees the quantised top, each with its own
codebook, moving averages and commitment loss (their algorithm 1 and equation 2); the decoder reads both.
Their stage 2 (algorithm 2) fits a prior over the top codes and a prior over the bottom codes conditioned on
the top codes, and samples top, then bottom, then decodes. :class:`HierarchicalVQLatent` is that latent for a
crystal: the top level is a :class:`VQLatent` (``M`` codes per crystal), the bottom level one code per atom,
and the bottom prior a :class:`CodePrior` that reads the top codes as its context.

The pieces both latents share: :class:`VectorQuantiser` (a codebook, its moving averages or codebook loss,
the commitment loss, dead-code restarts) and :class:`CodePrior` (the autoregressive prior, with or without a
context).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F
from bench.models.vae.latents import Latent, LatentPenalty, NoiseFn
from torch import Tensor, nn

__all__ = [
    "CodePrior",
    "HierarchicalCode",
    "HierarchicalVQLatent",
    "VQLatent",
    "VectorQuantiser",
    "code_perplexity",
    "nearest_codes",
]


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

    With ``context_length > 0`` it is a conditional prior ``p(c | s) = prod_i p(c_i | c_<i, s)`` over a
    context of ``context_length`` codes ``s`` from a vocabulary of ``context_codes`` (VQ-VAE-2's bottom prior,
    conditioned on the top codes): the context's tokens (their own embedding and positions) are put before
    the start token, attend to each other in both directions and to nothing after them, and every code
    attends to the whole context and to the codes before it. Called without a context, the same weights give
    the unconditional prior (the context's tokens are left out): exactly what a prior built with
    ``context_length = 0`` computes with those weights.

    Its output layer starts at zero, so an untrained prior is exactly the uniform prior of the autoencoder's
    training stage (every logit 0): sampling works before the prior has been trained.

    Args:
        num_codes: ``K``, the size of the codebook.
        length: ``M``, the number of codes per crystal.
        width: width of the transformer.
        num_layers: number of transformer layers.
        num_heads: number of attention heads.
        dropout: dropout of the transformer layers (training only).
        context_codes: the size of the context's vocabulary (0 without a context).
        context_length: the number of context codes (0: an unconditional prior).
    """

    def __init__(
        self, num_codes: int, length: int, width: int = 128, num_layers: int = 2, num_heads: int = 4,
        dropout: float = 0.1, context_codes: int = 0, context_length: int = 0,
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
        if context_length < 0 or (context_length > 0 and context_codes < 1):
            raise ValueError(
                f"context_length must be >= 0, and context_codes >= 1 with a context, got {context_length}, "
                f"{context_codes}"
            )
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
        # the context's own tokens, built after every shared weight (an unconditional prior built from the
        # same seed has the same shared weights)
        self.context_length = int(context_length)
        self.context_codes = int(context_codes) if self.context_length else 0
        self.context_embed: nn.Embedding | None = None
        self.context_position: nn.Parameter | None = None
        if self.context_length:
            self.context_embed = nn.Embedding(self.context_codes, width)
            self.context_position = nn.Parameter(0.02 * torch.randn(self.context_length, width))

    def _context_mask(self, size: int, like: Tensor) -> Tensor:
        """The additive attention mask ``[S + L, S + L]`` of ``S`` context tokens then ``L`` code tokens:
        the context sees the context; a code sees the context and the codes up to itself."""
        c = self.context_length
        mask = torch.zeros((c + size, c + size), device=like.device, dtype=like.dtype)
        mask[:c, c:] = float("-inf")
        mask[c:, c:] = nn.Transformer.generate_square_subsequent_mask(
            size, device=like.device, dtype=like.dtype
        )
        return mask

    def next_logits(self, prefix: Tensor, context: Tensor | None = None) -> Tensor:
        """Logits ``[B, L + 1, K]`` of the codes ``c_1 .. c_{L+1}``, each given the codes before it, from the
        first ``L < M`` codes ``prefix`` ``[B, L]``, and given the ``context`` codes ``[B, S]`` if any (None:
        the unconditional prior)."""
        start = prefix.new_full((prefix.shape[0], 1), self.num_codes)
        tokens = torch.cat([start, prefix], dim=1)
        size = tokens.shape[1]
        if size > self.length:
            raise ValueError(
                f"a prefix of {prefix.shape[1]} codes is longer than M - 1 = {self.length - 1}"
            )
        hidden = self.embed(tokens) + self.position[:size]
        if context is None:
            causal = nn.Transformer.generate_square_subsequent_mask(
                size, device=hidden.device, dtype=hidden.dtype
            )
            hidden = self.blocks(hidden, mask=causal, is_causal=True)
        else:
            if self.context_embed is None or self.context_position is None:
                raise ValueError("this prior was built without a context (context_length = 0)")
            if context.shape != (prefix.shape[0], self.context_length):
                raise ValueError(
                    f"context must be [B, S] = [{prefix.shape[0]}, {self.context_length}], got "
                    f"{list(context.shape)}"
                )
            given = self.context_embed(context) + self.context_position
            joint = self.blocks(torch.cat([given, hidden], dim=1), mask=self._context_mask(size, hidden))
            hidden = joint[:, self.context_length:]
        return self.out(self.norm(hidden))

    def forward(self, codes: Tensor, context: Tensor | None = None) -> Tensor:
        """Logits ``[B, M, K]`` of every code of ``codes`` ``[B, M]`` given the codes before it (and the
        ``context`` ``[B, S]``, if any)."""
        return self.next_logits(codes[:, :-1], context)

    def nll(self, codes: Tensor, context: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """``-log p(c) / M``: the cross-entropy of the codes ``[B, M]`` (given the ``context``, if any), in
        nats per code, averaged over the batch; with ``mask`` ``[B, M]`` (1: the code counts), averaged over
        the codes it keeps (the codes after them still see them, never the other way round)."""
        logits = self(codes, context)
        if mask is None:
            return F.cross_entropy(logits.reshape(-1, self.num_codes), codes.reshape(-1))
        per_code = F.cross_entropy(logits.reshape(-1, self.num_codes), codes.reshape(-1), reduction="none")
        keep = mask.reshape(-1).to(per_code.dtype)
        return (per_code * keep).sum() / keep.sum().clamp_min(1.0)

    def sample(self, uniform: Tensor, context: Tensor | None = None) -> Tensor:
        """Codes ``[n, M]`` drawn one after the other, ``c_i`` by inverting the CDF of ``p(c_i | c_<i)``
        (given the ``context`` ``[n, S]``, if any) at ``uniform[:, i]`` (``uniform`` ``[n, M]`` in
        ``[0, 1]``): the same numbers give the same codes."""
        codes = torch.zeros((uniform.shape[0], 0), dtype=torch.long, device=uniform.device)
        for i in range(self.length):
            probs = F.softmax(self.next_logits(codes, context)[:, -1].double(), dim=-1)
            cdf = probs.cumsum(dim=-1)
            drawn = torch.searchsorted(cdf, uniform[:, i : i + 1].to(cdf).contiguous(), right=True)
            codes = torch.cat([codes, drawn.clamp_max(self.num_codes - 1)], dim=1)
        return codes


class VectorQuantiser(nn.Module):
    """A codebook of ``K`` vectors of width ``d`` and what trains it (van den Oord et al. 2017, section 3.2
    and appendix A.1): vectors are replaced by their nearest code, gradients straight through
    (:meth:`quantise`), and :meth:`quantiser_loss` gives equation 3's commitment loss
    ``beta ||z_e - sg[e]||^2`` and, with ``codebook_update="loss"``, its codebook loss ``||sg[z_e] - e||^2``,
    each squared norm summed over the ``d`` coordinates of a code and averaged over the vectors quantised.
    With ``codebook_update="ema"`` the codebook is a buffer that follows the moving averages of appendix A.1
    (:meth:`update_codebook`); codes unused for ``dead_after`` training batches are moved onto vectors of the
    batch (:meth:`restart_codes`). Every VQ latent here owns one per level.

    Args:
        code_dim: ``d``, the width of a codebook vector.
        codes: ``K``, the size of the codebook.
        commitment: ``beta`` of the commitment loss (the paper: 0.25).
        dead_after: a code unused for this many training batches in a row counts as dead.
        codebook_update: ``"ema"``, the moving averages of the paper's appendix A.1, or ``"loss"``, the
            codebook loss of its equation 3.
        decay: the moving averages' decay ``gamma`` (the paper: 0.99).
        restart_dead: move dead codes onto vectors of the batch (:meth:`restart_codes`).
    """

    def __init__(
        self,
        code_dim: int = 8,
        codes: int = 512,
        commitment: float = 0.25,
        dead_after: int = 100,
        codebook_update: str = "ema",
        decay: float = 0.99,
        restart_dead: bool = True,
    ) -> None:
        super().__init__()
        if code_dim < 1 or codes < 2:
            raise ValueError(f"code_dim must be >= 1 and codes >= 2, got {code_dim}, {codes}")
        if commitment < 0 or dead_after < 1:
            raise ValueError(f"commitment must be >= 0 and dead_after >= 1, got {commitment}, {dead_after}")
        if codebook_update not in ("ema", "loss"):
            raise ValueError(f"codebook_update must be 'ema' or 'loss', got {codebook_update!r}")
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.code_dim = int(code_dim)
        self.num_codes = int(codes)
        self.commitment = float(commitment)
        self.dead_after = int(dead_after)
        self.codebook_update = codebook_update
        self.decay = float(decay)
        self.restart_dead = bool(restart_dead)
        scale = 1.0 / self.num_codes
        book = torch.empty(self.num_codes, self.code_dim).uniform_(-scale, scale)
        if codebook_update == "loss":
            self.codebook = nn.Parameter(book)
        else:  # the codebook follows moving averages: a buffer, with the averages' count and sum
            self.register_buffer("codebook", book)
            self.register_buffer("ema_count", torch.zeros(self.num_codes))
            self.register_buffer("ema_sum", torch.zeros(self.num_codes, self.code_dim))
        # training batches since each code was last used (dead codes are counted and restarted from it)
        self.register_buffer("idle_batches", torch.zeros(self.num_codes, dtype=torch.long))

    def quantise(self, z_e: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(z_q, codes, e)`` for vectors ``z_e`` ``[..., d]``: the nearest codes ``[...]``, their vectors
        ``e`` and ``z_q = z_e + sg[e - z_e]`` (the value ``e``, the gradient of ``z_e``)."""
        codes = nearest_codes(z_e, self.codebook)
        e = self.codebook[codes]
        z_q = z_e + (e - z_e).detach()  # straight-through: e forward, the identity backward
        return z_q, codes, e

    def quantiser_loss(
        self, z_e: Tensor, e: Tensor, codes: Tensor, keep: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss of the vectors ``z_e`` ``[..., d]`` quantised to ``e`` (codes ``[...]``), and its terms
        (see the class docstring); only the vectors where ``keep`` ``[...]`` is True count (None: all of
        them), for the losses, the code counts, the moving averages and the restarts alike. In training it
        also updates the codebook (moving averages, restarts of dead codes).

        Logged: ``vq_codebook`` and ``vq_commitment`` (the same distance; the first is a loss only with
        ``codebook_update="loss"``), ``perplexity`` (:func:`code_perplexity` of the codes kept),
        ``codes_used`` (distinct codes kept) and ``dead_codes`` (dead at this step)."""
        if keep is not None:
            z_e, e, codes = z_e[keep], e[keep], codes[keep]
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
        return vq_loss, terms

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
        """Move each ``dead`` code (``[K]``, bool) onto one of the batch's vectors ``z_e`` ``[..., d]``,
        drawn at random (distinct ones while the batch has enough): the random restarts of Dhariwal et al.
        (2020), "Jukebox: A Generative Model for Music", arXiv:2005.00341. The code's moving averages start
        afresh."""
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


class VQLatent(VectorQuantiser, Latent):
    """VQ-VAE's latent (van den Oord et al. 2017, section 3): ``M`` groups of ``d`` encoder outputs, each
    quantised to its nearest of ``K`` shared codebook vectors, gradients straight through to the encoder.

    - :meth:`posterior`: ``z_q = z_e + sg[e - z_e]`` (the value ``e``, the gradient of ``z_e``), ``M d`` wide.
    - :meth:`penalty`: no KL (the prior of the autoencoder's stage is uniform, so the KL is the constant
      ``M log K``); the auxiliary loss is equation 3's commitment loss ``beta ||z_e - sg[e]||^2`` and, with
      ``codebook_update="loss"``, its codebook loss ``||sg[z_e] - e||^2``, each squared norm summed over the
      ``d`` coordinates of a code and averaged over the ``B M`` codes of the batch
      (:meth:`~VectorQuantiser.quantiser_loss`). With ``codebook_update="ema"`` (the default) the codebook is
      a buffer that follows the moving averages of the paper's appendix A.1
      (:meth:`~VectorQuantiser.update_codebook`) instead: under Adam a codebook trained by the loss moves
      about one learning rate per step while the encoder's output moves much faster, and on Perov-5 the
      commitment loss ran away (to hundreds within 300 steps); the moving averages track the encoder
      whatever its speed. Codes unused for ``dead_after`` training batches are moved onto encoder outputs of
      the batch (:meth:`~VectorQuantiser.restart_codes`; without it 484 of 512 codes were dead after 300
      steps on Perov-5). Logged: both losses, the codebook's perplexity on the batch, the codes the batch
      used, and the dead codes found at that step.
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
        restart_dead: move dead codes onto encoder outputs of the batch.
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
        if groups < 1 or code_dim < 1 or codes < 2:
            raise ValueError(
                f"groups and code_dim must be >= 1 and codes >= 2, got {groups}, {code_dim}, {codes}"
            )
        super().__init__(code_dim, codes, commitment, dead_after, codebook_update, decay, restart_dead)
        self.groups = int(groups)
        self.param_dim = self.dim = self.groups * self.code_dim
        self.code_prior = CodePrior(
            self.num_codes, self.groups, prior_width, prior_layers, prior_heads, prior_dropout
        )

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
        z_q, codes, e = self.quantise(z_e)
        return z_q.reshape(params.shape[0], self.dim), {"z_e": z_e, "e": e, "codes": codes}

    def prior_codes(self, n: int, generator: torch.Generator | None, randn: NoiseFn) -> Tensor:
        """``n`` code sequences ``[n, M]`` from the :class:`CodePrior`, at uniform numbers made from
        ``randn``'s normal draws."""
        uniform = torch.special.ndtr(randn((n, self.groups), generator).double())  # U(0, 1) from N(0, 1)
        return self.code_prior.sample(uniform)

    def prior(self, n: int, generator: torch.Generator | None, randn: NoiseFn) -> Tensor:
        return self.decode_codes(self.prior_codes(n, generator, randn))

    def penalty(self, stats: Mapping[str, Tensor], z: Tensor, step: int) -> LatentPenalty:
        vq_loss, terms = self.quantiser_loss(stats["z_e"], stats["e"], stats["codes"])
        return LatentPenalty(z.new_zeros(()), vq_loss, terms)

    def prior_networks(self) -> list[nn.Module]:
        return [self.code_prior]

    def prior_loss(self, params: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        nll = self.code_prior.nll(self.codes(params))
        return nll, {"prior_ce": nll}


class HierarchicalCode(NamedTuple):
    """VQ-VAE-2's ``z`` of a batch of crystals: what the decoder reads, and the codes behind it.

    Attributes:
        top: ``[B, M d]``, the crystal's quantised top level (what the heads read).
        top_codes: ``[B, M]``, its codes.
        bottom: ``[B, N, d_b]``, each atom's quantised bottom level (zero in empty slots); None until the
            bottom level has been drawn (sampling draws it once the atom count is known).
        bottom_codes: ``[B, N]``, its codes (every slot's; only the atoms' are used).
    """

    top: Tensor
    top_codes: Tensor
    bottom: Tensor | None = None
    bottom_codes: Tensor | None = None


class HierarchicalVQLatent(Latent):
    """VQ-VAE-2's two-level latent for a crystal (Razavi et al. 2019, section 3.2 and algorithms 1-2).

    - **Top level** (coarse, ``M`` positions): a :class:`VQLatent` of the encoder's per-crystal readout,
      ``e_top = Quantise(E_top(x))``; its :class:`CodePrior` is the top prior.
    - **Bottom level** (fine, one position per atom slot): ``e_bottom = Quantise(E_bottom(x, e_top))``, where
      ``E_bottom`` (:attr:`bottom_encoder`) is an MLP over each atom's encoder features beside the quantised
      top (straight-through, so the bottom's losses reach the top encoder too, as in the paper), quantised
      by a :class:`VectorQuantiser` of its own (``K_b`` codes of width ``d_b``). Empty slots are quantised
      but count for nothing (losses, code counts, moving averages, restarts) and are zero in ``z``.
    - **Loss** (equation 2 of the paper, per level): the commitment loss of both levels (and their codebook
      losses with ``codebook_update="loss"``), both codebooks on moving averages by default; no KL (both
      priors are uniform while the autoencoder trains). Logged with ``top_`` and ``bottom_`` prefixes.
    - **Priors** (algorithm 2): the top prior ``p(c_top)`` and the bottom prior
      ``p(c_bottom | c_top)``, a :class:`CodePrior` over the ``N`` slots whose context is the top codes;
      the bottom prior's cross-entropy counts the atoms' codes only. Both are trained in the ``prior`` stage
      on the codes of the frozen encoder (:meth:`prior_loss`).
    - **Sampling**: :meth:`prior` draws the top codes; once the model has read the atom count from them,
      :meth:`prior_bottom` draws the bottom codes given the top codes.

    ``posterior`` reads ``{"crystal": [B, M d], "atoms": [B, N, atom_features], "mask": [B, N]}`` (the
    encoder's readout, its atom features, the atom mask) and returns a :class:`HierarchicalCode` as ``z``.

    Args:
        slots: ``N``, the atom slots per crystal (the codec's ``max_atoms``; the model passes it).
        groups: ``M``, top codes per crystal.
        code_dim: ``d``, the width of a top code.
        codes: ``K``, the size of the top codebook.
        commitment: ``beta`` of both levels' commitment losses (the paper: 0.25).
        prior_width: width of both priors' transformers.
        prior_layers: layers of both priors' transformers.
        prior_heads: attention heads of both priors' transformers.
        prior_dropout: dropout of both priors' transformers.
        dead_after: a code unused for this many training batches in a row counts as dead (both levels).
        codebook_update: ``"ema"`` or ``"loss"``, for both codebooks (see :class:`VectorQuantiser`).
        decay: the moving averages' decay (both levels).
        restart_dead: restart dead codes (both levels).
        bottom_code_dim: ``d_b``, the width of a bottom code.
        bottom_codes: ``K_b``, the size of the bottom codebook.
        atom_features: the width of the atom features ``E_bottom`` reads (and of its hidden layer).
    """

    def __init__(
        self,
        slots: int,
        groups: int = 4,
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
        bottom_code_dim: int = 8,
        bottom_codes: int = 512,
        atom_features: int = 64,
    ) -> None:
        super().__init__()
        if slots < 1 or atom_features < 1:
            raise ValueError(f"slots and atom_features must be >= 1, got {slots}, {atom_features}")
        self.top = VQLatent(
            groups, code_dim, codes, commitment, prior_width, prior_layers, prior_heads, prior_dropout,
            dead_after, codebook_update, decay, restart_dead,
        )
        self.bottom = VectorQuantiser(
            bottom_code_dim, bottom_codes, commitment, dead_after, codebook_update, decay, restart_dead
        )
        self.slots = int(slots)
        self.atom_features = int(atom_features)
        self.atom_dim = self.bottom.code_dim
        self.param_dim, self.dim = self.top.param_dim, self.top.dim
        self.bottom_encoder = nn.Sequential(
            nn.Linear(self.atom_features + self.top.dim, self.atom_features),
            nn.SiLU(),
            nn.Linear(self.atom_features, self.atom_dim),
        )
        self.bottom_prior = CodePrior(
            self.bottom.num_codes, self.slots, prior_width, prior_layers, prior_heads, prior_dropout,
            context_codes=self.top.num_codes, context_length=self.top.groups,
        )

    def bottom_inputs(self, atoms: Tensor, top: Tensor) -> Tensor:
        """``E_bottom(x, e_top)`` ``[B, N, d_b]``: the bottom encoder on each atom's features ``atoms``
        ``[B, N, atom_features]`` beside the crystal's quantised top ``top`` ``[B, M d]``."""
        if atoms.shape[1] != self.slots:
            raise ValueError(f"atoms has {atoms.shape[1]} slots, the latent was built for {self.slots}")
        beside = top.unsqueeze(1).expand(-1, atoms.shape[1], -1)
        return self.bottom_encoder(torch.cat([atoms, beside], dim=-1))

    def posterior(self, params: Mapping[str, Tensor]) -> tuple[HierarchicalCode, dict[str, Tensor]]:
        top, top_stats = self.top.posterior(params["crystal"])
        mask = params["mask"]
        z_e = self.bottom_inputs(params["atoms"], top)
        bottom, bottom_codes, e = self.bottom.quantise(z_e)
        z = HierarchicalCode(top, top_stats["codes"], bottom * mask.unsqueeze(-1), bottom_codes)
        stats = {**top_stats, "bottom_z_e": z_e, "bottom_e": e, "bottom_codes": bottom_codes, "mask": mask}
        return z, stats

    def penalty(self, stats: Mapping[str, Tensor], z: HierarchicalCode, step: int) -> LatentPenalty:
        top = self.top.penalty(stats, z.top, step)
        keep = stats["mask"] > 0.5
        bottom_loss, bottom_terms = self.bottom.quantiser_loss(
            stats["bottom_z_e"], stats["bottom_e"], stats["bottom_codes"], keep
        )
        terms = {
            **{f"top_{k}": v for k, v in top.terms.items()},
            **{f"bottom_{k}": v for k, v in bottom_terms.items()},
        }
        return LatentPenalty(top.regulariser, top.auxiliary + bottom_loss, terms)

    def prior(self, n: int, generator: torch.Generator | None, randn: NoiseFn) -> HierarchicalCode:
        """The top level of ``n`` crystals from the top prior (the bottom level is drawn by
        :meth:`prior_bottom` once the atom count is known)."""
        codes = self.top.prior_codes(n, generator, randn)
        return HierarchicalCode(self.top.decode_codes(codes), codes)

    def prior_bottom(
        self, z: HierarchicalCode, mask: Tensor, generator: torch.Generator | None, randn: NoiseFn
    ) -> HierarchicalCode:
        """``z`` with its bottom level drawn from the bottom prior given its top codes: a code for every one
        of the ``N`` slots (inverse CDF at uniform numbers made from ``randn``'s normal draws), the atoms of
        ``mask`` ``[n, N]`` keeping their codebook vectors and empty slots zero."""
        uniform = torch.special.ndtr(randn((z.top.shape[0], self.slots), generator).double())
        codes = self.bottom_prior.sample(uniform, context=z.top_codes)
        bottom = self.bottom.codebook[codes] * mask.unsqueeze(-1).to(self.bottom.codebook.dtype)
        return z._replace(bottom=bottom, bottom_codes=codes)

    @torch.no_grad()
    def codes(self, params: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The top codes ``[B, M]`` and the bottom codes ``[B, N]`` the encoder outputs ``params`` get (as
        :meth:`posterior`, no gradient)."""
        top_codes = self.top.codes(params["crystal"])
        z_e = self.bottom_inputs(params["atoms"], self.top.decode_codes(top_codes))
        return top_codes, nearest_codes(z_e, self.bottom.codebook)

    def prior_networks(self) -> list[nn.Module]:
        return [self.top.code_prior, self.bottom_prior]

    def prior_loss(self, params: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """``-log p(c_top) / M - log p(c_bottom | c_top) / n``: the top prior's cross-entropy per top code
        plus the bottom prior's per atom code; the two priors share no weight, so each learns from its own
        term."""
        top_codes, bottom_codes = self.codes(params)
        top_ce = self.top.code_prior.nll(top_codes)
        bottom_ce = self.bottom_prior.nll(bottom_codes, context=top_codes, mask=params["mask"] > 0.5)
        return top_ce + bottom_ce, {"top_prior_ce": top_ce, "bottom_prior_ce": bottom_ce}
