"""CrystalGPT: a GPT-style causal transformer decoder over the token sequence of a crystal, trained from
scratch by next-token cross-entropy.

Radford, Narasimhan, Salimans & Sutskever (2018), "Improving Language Understanding by Generative
Pre-Training" (GPT): section 3.1, the objective ``L(U) = sum_i log P(u_i | u_<i)`` and the model
``h_0 = U W_e + W_p``, ``h_l = transformer_block(h_{l-1})``, ``P(u) = softmax(h_n W_e^T)`` (learned token and
position embeddings, masked self-attention, the output layer tied to the token embedding); section 4.1, the
GELU feed-forward of width ``4 d``, dropout 0.1 and ``N(0, 0.02)`` initialisation. Radford, Wu, Child, Luan,
Amodei & Sutskever (2019), "Language Models are Unsupervised Multitask Learners" (GPT-2), section 2.3: layer
normalisation at the input of each sub-block and after the last block, residual projections initialised with
``0.02 / sqrt(2 n_layers)``.

The sequence is the crystal's (:mod:`bench.datasets.tokens`): ``BOS``, six lattice tokens, ``element x y z``
per site, ``EOS``. Sampling draws one token at a time with a key/value cache, with the temperature and top-k
of the :class:`~bench.models.autoregressive.sampling.TokenSampler`; the grammar is not imposed unless the
sampler is ``constrained``, so a sequence that is no crystal reaches the samples file as a parse failure.

Test likelihood (:meth:`CrystalGPT.test_nll`): the exact negative log-likelihood of each crystal's token
sequence, ``-sum_t log P(u_t | u_<t)`` up to and including EOS, with dropout off. It is a probability of
the discretised sequence (coordinates rounded to ``1 / coord_bins``, the lattice to its bins), not a density
of the crystal codec's fields, so its space (:meth:`CrystalGPT.nll_space`, naming the grammar) keeps it
apart from the flows' and VAEs' values: it is never ranked against them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from bench.datasets.tokens import (
    BOS,
    DEFAULT_COORD_BINS,
    DEFAULT_LATTICE_BINS,
    DEFAULT_LATTICE_RANGE,
    EOS,
    PAD,
    CrystalTokenizer,
)
from bench.models.autoregressive.sampling import TokenSampler
from bench.models.base import GenerativeModule, Likelihood, OptimizerFactory
from torch import Tensor, nn

__all__ = ["CausalSelfAttention", "CrystalGPT", "GPTBlock", "GPTDecoder", "KVCache", "layer_windows"]

KeyValues = tuple[Tensor, Tensor]
"""One block's keys and values ``[B, H, T, d / H]`` of the positions seen so far."""
KVCache = list[KeyValues]
"""Per block, its :data:`KeyValues`."""

OUTPUTS = ("crystal", "tokens")


def layer_windows(window: int | None, n_layers: int) -> list[int | None]:
    """Per-layer attention windows whose stack reads exactly ``window`` positions: layer ``l`` attends to its
    ``w_l`` latest positions (itself included), so the stack's output at ``t`` reads inputs
    ``t - sum_l (w_l - 1) .. t``; the ``window - 1`` extra positions are shared out as evenly as possible,
    earlier layers taking the remainder. None: every layer attends to all earlier positions."""
    if window is None:
        return [None] * n_layers
    if window < 1 or n_layers < 1:
        raise ValueError(
            f"window and n_layers must be >= 1 (window None: full context), got {window}, {n_layers}"
        )
    base, extra = divmod(window - 1, n_layers)
    return [1 + base + (1 if layer < extra else 0) for layer in range(n_layers)]


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which position ``t`` attends to positions ``<= t`` only (with a
    ``window``, to positions ``t - window + 1 .. t``: a banded causal mask)."""

    def __init__(self, d_model: int, n_heads: int, dropout: float, window: int | None = None) -> None:
        super().__init__()
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1 (None: full context), got {window}")
        self.n_heads = n_heads
        self.window = None if window is None else int(window)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.attn_dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, past: KeyValues | None = None) -> tuple[Tensor, KeyValues]:
        """``x`` ``[B, T, d]``: the next ``T`` positions; ``past``: keys and values of the earlier positions
        (with a cache, ``T`` must be 1). Returns the output and the keys and values of every position."""
        b, t, d = x.shape
        q, k, v = (y.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2)
                   for y in self.qkv(x).split(d, dim=-1))
        if past is not None:
            if t != 1:
                raise ValueError(f"with a key/value cache, feed one position at a time (got {t})")
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        keys, values, band = k, v, None
        if self.window is not None:
            if past is not None:  # the one new position reads the latest `window` cached ones
                keys, values = k[:, :, -self.window:], v[:, :, -self.window:]
            else:
                offset = torch.arange(t, device=x.device)
                lag = offset.unsqueeze(1) - offset.unsqueeze(0)  # query minus key position
                band = (lag >= 0) & (lag < self.window)
        y = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=band, dropout_p=self.attn_dropout if self.training else 0.0,
            is_causal=past is None and band is None,
        )
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(b, t, d))), (k, v)


class GPTBlock(nn.Module):
    """GPT-2's pre-norm block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``, a GELU MLP of width ``4 d``
    (``window``: the attention's band, :class:`CausalSelfAttention`)."""

    def __init__(self, d_model: int, n_heads: int, dropout: float, window: int | None = None) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads, dropout, window)
        self.ln_2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model), nn.Dropout(dropout)
        )

    def forward(self, x: Tensor, past: KeyValues | None = None) -> tuple[Tensor, KeyValues]:
        h, kv = self.attn(self.ln_1(x), past)
        x = x + h
        return x + self.mlp(self.ln_2(x)), kv


class GPTDecoder(nn.Module):
    """The GPT network: token and position embeddings, ``n_layers`` causal blocks, the output tied to the
    token embedding (GPT section 3.1; GPT-2 section 2.3).

    Args:
        vocab_size: ``V``.
        context: the most positions it reads (``L - 1`` for sequences of length ``L``).
        d_model, n_layers, n_heads: width, depth, attention heads (``d_model % n_heads == 0``).
        dropout: on embeddings, attention weights and residual branches (training only).
        window: the receptive field in tokens: the logits at position ``t`` read the tokens at
            ``t - window + 1 .. t`` only (banded attention, :func:`layer_windows`); None, or at least
            ``context``: every earlier token, every layer attending to all of them (the GPT).
        cond_dim: width of a conditioning vector whose linear map is added to every position's embedding (0:
            none).
    """

    def __init__(
        self, vocab_size: int, context: int, d_model: int = 128, n_layers: int = 4, n_heads: int = 4,
        dropout: float = 0.1, window: int | None = None, cond_dim: int = 0,
    ) -> None:
        super().__init__()
        if min(vocab_size, context, d_model, n_layers, n_heads) < 1 or d_model % n_heads:
            raise ValueError(
                f"vocab_size, context, d_model, n_layers, n_heads must be >= 1 and d_model a multiple of "
                f"n_heads, got {vocab_size}, {context}, {d_model}, {n_layers}, {n_heads}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if cond_dim < 0:
            raise ValueError(f"cond_dim must be >= 0, got {cond_dim}")
        self.context = int(context)
        self.window = None if window is None or window >= self.context else int(window)
        self.cond_dim = int(cond_dim)
        self.token_embedding = nn.Embedding(vocab_size, d_model)
        self.position_embedding = nn.Embedding(self.context, d_model)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            GPTBlock(d_model, n_heads, dropout, w) for w in layer_windows(self.window, n_layers)
        )
        self.ln_f = nn.LayerNorm(d_model)
        if self.cond_dim:
            self.cond_proj = nn.Linear(self.cond_dim, d_model)
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)
        for block in self.blocks:  # GPT-2: residual projections scaled by 1 / sqrt(number of residual layers)
            for proj in (block.attn.proj, block.mlp[2]):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * n_layers))

    def forward(
        self, tokens: Tensor, past: KVCache | None = None, cond: Tensor | None = None
    ) -> tuple[Tensor, KVCache]:
        """Logits ``[B, T, V]`` of the token after each of ``tokens`` ``[B, T]``, and the key/value cache.

        Without ``past`` the tokens are positions ``0..T-1``; with it, ``tokens`` is the one next position
        (``T = 1``) after those cached. ``cond`` ``[B, cond_dim]``: the conditioning vector (required when
        ``cond_dim > 0``, refused otherwise).
        """
        if (cond is None) != (self.cond_dim == 0):
            raise ValueError(f"this decoder takes a conditioning vector of width {self.cond_dim} (0: none), "
                             f"got {None if cond is None else tuple(cond.shape)}")
        start = 0 if past is None else past[0][0].shape[2]
        size = tokens.shape[1]
        if start + size > self.context:
            raise ValueError(f"positions {start}..{start + size - 1} exceed the context of {self.context}")
        positions = torch.arange(start, start + size, device=tokens.device)
        h = self.token_embedding(tokens) + self.position_embedding(positions)
        if cond is not None:
            h = h + self.cond_proj(cond).unsqueeze(1)
        h = self.dropout(h)
        cache: KVCache = []
        for i, block in enumerate(self.blocks):
            h, kv = block(h, None if past is None else past[i])
            cache.append(kv)
        return self.ln_f(h) @ self.token_embedding.weight.T, cache


class CrystalGPT(GenerativeModule):
    """A GPT over crystal token sequences (see the module docstring).

    It reads either batch: ``tokens`` from the token representation (``conf/representation/crystal_tokens``,
    its config's default) or the crystal codec's fields, which it tokenises with the same grammar.
    ``output`` says what :meth:`sample` returns: ``tokens`` (set by the token representation's ``sizes()``;
    the representation parses them, so a sequence that is no crystal is a decode failure with its reason) or
    ``crystal`` (the codec's fields; a sequence that does not parse becomes an empty cell).

    Args:
        optimizer: partial building the optimiser.
        sampler: the :class:`~bench.models.autoregressive.sampling.TokenSampler` (temperature, top-k,
            constrained).
        num_types, max_atoms: the codec's sizes (elements + 1, site slots).
        d_model, n_layers, n_heads, dropout: the :class:`GPTDecoder`.
        lattice_bins, coord_bins, lattice_range: the grammar
            (:class:`~bench.datasets.tokens.CrystalTokenizer`; given by the token representation).
        output: ``crystal`` or ``tokens``.
    """

    family = "autoregressive"
    paper = (
        "Radford et al. 2018, Improving Language Understanding by Generative Pre-Training (GPT); Radford et "
        "al. 2019, Language Models are Unsupervised Multitask Learners (GPT-2)"
    )
    likelihood = Likelihood(
        "exact",
        "exact",
        "exact NLL of the crystal's token sequence (BOS excluded, EOS included; coordinates and lattice "
        "rounded to the grammar's bins): a discrete probability, not comparable with densities of the "
        "codec's fields",
    )

    def __init__(
        self,
        optimizer: OptimizerFactory,
        sampler: TokenSampler,
        num_types: int,
        max_atoms: int,
        d_model: int = 128,
        n_layers: int = 4,
        n_heads: int = 4,
        dropout: float = 0.1,
        lattice_bins: int = DEFAULT_LATTICE_BINS,
        coord_bins: int = DEFAULT_COORD_BINS,
        lattice_range: float = DEFAULT_LATTICE_RANGE,
        output: str = "crystal",
    ) -> None:
        super().__init__(optimizer, num_types, max_atoms)
        if not callable(getattr(sampler, "choose", None)):
            raise TypeError(
                f"CrystalGPT samples token by token and needs a TokenSampler (sampler@model.module.sampler="
                f"token), got {type(sampler).__name__}"
            )
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        self._save_plain_hparams()
        self.sampler = sampler
        self.output = output
        self.tokenizer = CrystalTokenizer(num_types, max_atoms, lattice_bins, coord_bins, lattice_range)
        self.net = GPTDecoder(
            self.tokenizer.vocab_size, self.tokenizer.length - 1, d_model, n_layers, n_heads, dropout
        )
        self.register_buffer("grammar", self.tokenizer.grammar(), persistent=False)

    @property
    def nfe(self) -> int:
        """Network evaluations per sample: one per generated token, at most ``L - 1``."""
        return self.tokenizer.length - 1

    def tokens_of(self, batch: Mapping[str, Tensor]) -> Tensor:
        """The token sequences of a batch: its ``tokens``, or the codec fields tokenised."""
        if "tokens" in batch:
            return batch["tokens"].long()
        return self.tokenizer.encode(batch["atom_types"], batch["frac_coords"], batch["lattice"])

    def loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Next-token cross-entropy in nats per token (positions after EOS are not scored), and the negative
        log-likelihood per crystal (``nll_crystal``, nats)."""
        tokens = self.tokens_of(batch)
        logits, _ = self.net(tokens[:, :-1])
        targets = tokens[:, 1:]
        per_token = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=PAD, reduction="none")
        scored = targets != PAD
        loss = per_token.sum() / scored.sum().clamp_min(1)
        return {"loss": loss, "nll_crystal": per_token.sum(dim=1).mean()}

    def nll_space(self) -> str:
        """The token sequences of this grammar: ``crystal_tokens(lattice_bins=.., lattice_range=..,
        coord_bins=..)``; other bins are another space."""
        t = self.tokenizer
        return (f"crystal_tokens(lattice_bins={t.lattice_bins},lattice_range={t.lattice_range:g},"
                f"coord_bins={t.coord_bins})")

    @torch.no_grad()
    def test_nll(
        self, batch: Mapping[str, Tensor], draws: int = 1, generator: torch.Generator | None = None
    ) -> Tensor:
        """``[B]`` exact negative log-likelihood of each crystal's token sequence in nats (``draws`` and
        ``generator`` are unused: nothing is sampled). Call it in eval mode (no dropout)."""
        tokens = self.tokens_of(batch)
        logits, _ = self.net(tokens[:, :-1])
        per_token = F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], ignore_index=PAD, reduction="none")
        return per_token.sum(dim=1).double()

    @torch.no_grad()
    def generate(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` token sequences ``[n, L]`` (int64), one token at a time from the sampler (in eval mode: no
        dropout); after a sequence's EOS the rest is PAD. Every random number comes from ``generator``."""
        was_training = self.training
        self.eval()
        try:
            return self._generate(n, generator)
        finally:
            self.train(was_training)

    def generation_condition(self, n: int, generator: torch.Generator | None) -> Tensor | None:
        """The conditioning vector ``[n, cond_dim]`` of the network while it writes ``n`` sequences, drawn
        from ``generator`` before any token (a latent-variable decoder's ``z``); None for the GPT."""
        return None

    def _generate(self, n: int, generator: torch.Generator | None) -> Tensor:
        length, vocab = self.tokenizer.length, self.tokenizer.vocab_size
        tokens = torch.full((n, length), PAD, dtype=torch.int64, device=self.device)
        tokens[:, 0] = BOS
        done = torch.zeros(n, dtype=torch.bool, device=self.device)
        cond = self.generation_condition(n, generator)
        logits, cache = self.net(tokens[:, :1], cond=cond)
        for t in range(1, length):
            allowed = self.grammar[t] if self.sampler.constrained else None
            uniform = self._rand((n, vocab), generator)
            token = self.sampler.choose(logits[:, -1], uniform, allowed)
            token = torch.where(done, torch.full_like(token, PAD), token)
            tokens[:, t] = token
            done |= token == EOS
            if t == length - 1 or bool(done.all()):
                break
            logits, cache = self.net(token.unsqueeze(1), cache, cond=cond)
        return tokens

    def _sample(self, n: int, generator: torch.Generator | None, condition: Any) -> dict[str, Tensor]:
        parsed = self.tokenizer.parse(self.generate(n, generator))
        classes = torch.as_tensor(parsed.classes, device=self.device)
        return {
            "atom_types": F.one_hot(classes, self.num_types).to(torch.float32),
            "frac_coords": torch.as_tensor(parsed.frac_coords, dtype=torch.float32, device=self.device),
            "lattice": torch.as_tensor(parsed.lattice, dtype=torch.float32, device=self.device),
        }

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None = None, condition: Any = None
    ) -> dict[str, Tensor]:
        """``n`` crystals: token sequences ``{"tokens": [n, L]}`` when ``output="tokens"``, else the
        codec's fields (a sequence that does not parse is an empty cell). ``condition`` must be None."""
        if self.output == "crystal":
            return super().sample(n, generator, condition)
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if condition is not None:
            raise ValueError(f"{type(self).__name__} is unconditional: pass condition=None")
        return {"tokens": self.generate(n, generator)}
