"""The one network shared by every model family: a small set transformer over a lattice token and site tokens.

A crystal batch (see :mod:`bench.datasets.codec`) becomes ``1 + N`` tokens: one lattice token (a linear map of
the six standardised lattice parameters) and one token per site slot (a linear map of the site's type vector
and of ``sin``/``cos`` of ``2 pi`` times its fractional coordinates, so the input is periodic in the unit
cell). A conditioning vector (a diffusion time embedding, a VAE latent, GAN noise) is added to every token.
Without learned slot embeddings and without positional encodings, the transformer (Vaswani et al. 2017,
"Attention is all you need") treats the site tokens as a set: permuting the input sites permutes the per-site
outputs and leaves the lattice and pooled outputs unchanged. Decoders and generators that must produce a set
from a vector switch on learned slot embeddings, which break that symmetry on purpose.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

__all__ = ["CrystalTransformer", "periodic_features"]


def periodic_features(frac_coords: Tensor, num_frequencies: int = 1) -> Tensor:
    """``sin``/``cos`` of ``2 pi k x``, ``k = 1..num_frequencies``: features invariant to ``x -> x + 1``.

    Args:
        frac_coords: fractional coordinates ``[..., 3]``.
        num_frequencies: number of harmonics per coordinate.

    Returns:
        ``[..., 6 * num_frequencies]`` features.
    """
    k = torch.arange(1, num_frequencies + 1, device=frac_coords.device, dtype=frac_coords.dtype)
    angles = 2.0 * math.pi * frac_coords.unsqueeze(-1) * k  # [..., 3, F]
    feats = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)  # [..., 3, 2F]
    return feats.flatten(-2)


class CrystalTransformer(nn.Module):
    """Permutation-aware transformer: a crystal batch and/or a conditioning vector to per-field outputs.

    Args:
        num_types: K + 1, the width of ``atom_types`` (elements plus the empty slot).
        max_atoms: N, the number of site slots.
        d_model: token width.
        n_layers: number of transformer encoder layers.
        n_heads: attention heads per layer (must divide ``d_model``).
        cond_dim: width of the conditioning vector added to every token (0: no conditioning).
        slot_embeddings: add a learned embedding per site slot (and a learned lattice token), so the network
            can produce a set from a vector alone; breaks permutation equivariance.
        out_scale: output channels per input channel, e.g. 2 for a flow's scale and shift.
        pooled_dim: width of a pooled output read from the lattice token (0: none).
        field_heads: produce the per-field outputs (switch off for encoders and critics that only need
            ``pooled``).
        dim_feedforward: hidden width of each feed-forward block (default ``2 * d_model``).
        num_frequencies: harmonics of the periodic fractional-coordinate features.
        raw_frac: also feed the ``frac_coords`` values themselves (not only their periodic features); for
            networks whose ``frac_coords`` input is a noisy or transformed variable rather than a coordinate
            in ``[0, 1)``.
        dropout: dropout inside the transformer layers.
        zero_init: initialise the output heads to zero (a flow coupling then starts as the identity).
        field_inputs: build the input projections of a crystal batch. A slot-embedding network driven by
            ``cond`` alone sets it False, so it holds no parameter that never gets a gradient (DDP rejects
            those).
    """

    def __init__(
        self,
        num_types: int,
        max_atoms: int,
        d_model: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        cond_dim: int = 0,
        slot_embeddings: bool = False,
        out_scale: int = 1,
        pooled_dim: int = 0,
        field_heads: bool = True,
        dim_feedforward: int | None = None,
        num_frequencies: int = 1,
        raw_frac: bool = False,
        dropout: float = 0.0,
        zero_init: bool = False,
        field_inputs: bool = True,
    ) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        if not field_heads and pooled_dim <= 0:
            raise ValueError("a backbone with field_heads=False needs pooled_dim > 0, or it outputs nothing")
        self.num_types = int(num_types)
        self.max_atoms = int(max_atoms)
        self.d_model = int(d_model)
        self.cond_dim = int(cond_dim)
        self.out_scale = int(out_scale)
        self.pooled_dim = int(pooled_dim)
        self.field_heads = bool(field_heads)
        self.num_frequencies = int(num_frequencies)
        self.raw_frac = bool(raw_frac)

        site_width = self.num_types + 6 * self.num_frequencies + (3 if self.raw_frac else 0)
        if not field_inputs and not slot_embeddings:
            raise ValueError("a backbone without field inputs needs slot_embeddings=True to have any input")
        self.site_in = nn.Linear(site_width, d_model) if field_inputs else None
        self.lattice_in = nn.Linear(6, d_model) if field_inputs else None
        # Marks the lattice token apart from site tokens (it also carries the pooled summary).
        self.lattice_token = nn.Parameter(torch.zeros(d_model))
        self.cond_in = nn.Linear(self.cond_dim, d_model) if self.cond_dim > 0 else None
        # Unit-scale init (like nn.Embedding): slots must differ from the start, or a generator driven only by
        # a shared conditioning vector emits nearly the same site in every slot and breaks the tie slowly.
        self.slot_embedding = nn.Parameter(torch.randn(self.max_atoms, d_model)) if slot_embeddings else None
        layer = nn.TransformerEncoderLayer(
            d_model,
            n_heads,
            dim_feedforward=dim_feedforward or 2 * d_model,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        if self.field_heads:
            self.types_out = nn.Linear(d_model, self.num_types * self.out_scale)
            self.frac_out = nn.Linear(d_model, 3 * self.out_scale)
            self.lattice_out = nn.Linear(d_model, 6 * self.out_scale)
            if zero_init:
                for head in (self.types_out, self.frac_out, self.lattice_out):
                    nn.init.zeros_(head.weight)
                    nn.init.zeros_(head.bias)
        self.pooled_out = nn.Linear(d_model, self.pooled_dim) if self.pooled_dim > 0 else None

    @property
    def has_slot_embeddings(self) -> bool:
        """Whether learned per-slot embeddings are used (the network is then not permutation-equivariant)."""
        return self.slot_embedding is not None

    def forward(
        self,
        batch: Mapping[str, Tensor] | None = None,
        cond: Tensor | None = None,
        padding_mask: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Run the network.

        Args:
            batch: ``atom_types`` ``[B, N, K+1]``, ``frac_coords`` ``[B, N, 3]`` and ``lattice`` ``[B, 6]``
                (any real values); may be ``None`` for a slot-embedding network driven by ``cond`` alone.
            cond: conditioning vector ``[B, cond_dim]``, required when ``cond_dim > 0``.
            padding_mask: ``[B, N]`` bool, True for site slots that attention must ignore (the lattice token
                is always attended to). ``None`` attends to every slot.

        Returns:
            ``atom_types`` ``[B, N, (K+1) * out_scale]``, ``frac_coords`` ``[B, N, 3 * out_scale]`` and
            ``lattice`` ``[B, 6 * out_scale]`` when ``field_heads``; ``pooled`` ``[B, pooled_dim]`` when
            ``pooled_dim > 0``.
        """
        tokens = self._embed(batch, cond)
        mask = None
        if padding_mask is not None:
            keep_lattice = torch.zeros_like(padding_mask[:, :1], dtype=torch.bool)
            mask = torch.cat([keep_lattice, padding_mask.to(torch.bool)], dim=1)
        hidden = self.norm(self.encoder(tokens, src_key_padding_mask=mask))
        lattice_h, site_h = hidden[:, 0], hidden[:, 1:]
        out: dict[str, Tensor] = {}
        if self.field_heads:
            out["atom_types"] = self.types_out(site_h)
            out["frac_coords"] = self.frac_out(site_h)
            out["lattice"] = self.lattice_out(lattice_h)
        if self.pooled_out is not None:
            out["pooled"] = self.pooled_out(lattice_h)
        return out

    def _embed(self, batch: Mapping[str, Tensor] | None, cond: Tensor | None) -> Tensor:
        """Build the ``[B, 1 + N, d_model]`` token sequence."""
        if batch is None and (self.slot_embedding is None or cond is None):
            raise ValueError("without an input batch the backbone needs slot embeddings and a cond vector")
        if self.cond_in is not None and cond is None:
            raise ValueError(f"this backbone is conditioned (cond_dim={self.cond_dim}) but no cond was given")
        if batch is not None:
            if self.site_in is None or self.lattice_in is None:
                raise ValueError("this backbone was built with field_inputs=False and takes no input batch")
            frac = batch["frac_coords"]
            parts = [batch["atom_types"], periodic_features(frac, self.num_frequencies)]
            if self.raw_frac:
                parts.append(frac)
            site_feats = torch.cat(parts, dim=-1)
            sites = self.site_in(site_feats)
            lattice = self.lattice_in(batch["lattice"]) + self.lattice_token
        else:
            size = cond.shape[0]
            sites = cond.new_zeros(size, self.max_atoms, self.d_model)
            lattice = self.lattice_token.expand(size, -1)
        if self.slot_embedding is not None:
            sites = sites + self.slot_embedding
        tokens = torch.cat([lattice.unsqueeze(1), sites], dim=1)
        if self.cond_in is not None:
            tokens = tokens + self.cond_in(cond).unsqueeze(1)
        return tokens
