"""A periodic message-passing network over the atoms of each crystal, in the spirit of DiffCSP's CSPNet.

Jiao et al. (2023), "Crystal Structure Prediction by Joint Equivariant Diffusion", NeurIPS, arXiv:2309.04475,
section 4.2: every pair of atoms of a crystal exchanges a message built from both atoms' features, the lattice
and Fourier features of their *wrapped* fractional difference. Because the network only ever sees differences
of fractional coordinates, and only through ``sin``/``cos`` of ``2 pi k`` times them, it is

- invariant to a global translation of every fractional coordinate by the same vector;
- invariant to moving one atom by a lattice vector (adding an integer to its fractional coordinates);
- permutation-equivariant over atoms (no slot embeddings; sums over neighbours);
- invariant to rotations of the crystal, since the lattice enters as its six parameters (lengths and angles,
  here the codec's standardised ``log a, log b, log c, alpha, beta, gamma``), where DiffCSP uses the Gram
  matrix ``L L^T``; both are O(3) invariants of the cell.

Written for this project; the graph is dense within a crystal (``B x N x N`` pairs, masked), which is what
small cells (Perov-5: 5 atoms, Carbon-24: up to 24) want on a CPU.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

__all__ = ["PeriodicMPNN", "fourier_features"]


def fourier_features(delta: Tensor, num_frequencies: int) -> Tensor:
    """``sin``/``cos`` of ``2 pi k delta`` for ``k = 1..num_frequencies``, per coordinate.

    Args:
        delta: fractional differences ``[..., 3]``.
        num_frequencies: harmonics per coordinate.

    Returns:
        ``[..., 6 * num_frequencies]`` features, periodic with period 1 in every coordinate.
    """
    k = torch.arange(1, num_frequencies + 1, device=delta.device, dtype=delta.dtype)
    angles = 2.0 * math.pi * delta.unsqueeze(-1) * k
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1).flatten(-2)


def _mlp(width_in: int, width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width_in, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU())


class _Layer(nn.Module):
    """One round of messages: ``h_i += phi_h(h_i, W_m mean_j SiLU(A h_i + B h_j + C e_ij))``.

    A two-layer message MLP ``W_m SiLU(W [h_i, h_j, e_ij])`` averaged over ``j`` (then a SiLU): because its
    second layer is linear it is applied after the average, and the first layer is split into per-atom and
    per-pair parts, so the work per pair of atoms (what dominates for 24-atom cells) is one
    ``edge_width x width`` product.
    """

    def __init__(self, width: int, edge_width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.source = nn.Linear(width, width)
        self.target = nn.Linear(width, width, bias=False)
        self.edge = nn.Linear(edge_width, width, bias=False)
        self.message = nn.Sequential(nn.Linear(width, width), nn.SiLU())
        self.node = _mlp(2 * width, width)

    def forward(self, h: Tensor, edge_feats: Tensor, pair_mask: Tensor) -> Tensor:
        x = self.norm(h)
        hidden = torch.nn.functional.silu(
            self.source(x).unsqueeze(2) + self.target(x).unsqueeze(1) + self.edge(edge_feats)
        )
        pooled = (
            (hidden * pair_mask.unsqueeze(-1)).sum(dim=2) / pair_mask.sum(dim=2, keepdim=True).clamp_min(1.0)
        )
        has_neighbours = (pair_mask.sum(dim=2, keepdim=True) > 0).to(h.dtype)
        aggregated = self.message(pooled) * has_neighbours
        return h + self.node(torch.cat([x, aggregated], dim=-1))


class PeriodicMPNN(nn.Module):
    """Message passing over the atoms of each crystal, reading coordinates only through wrapped differences.

    Args:
        type_dim: width of the per-atom type input and output (e.g. K element channels).
        cond_dim: width of a conditioning vector (time embedding, latent, noise) added to every atom, or
            of one vector per atom (0: none).
        width: hidden width of atoms and messages.
        n_layers: rounds of message passing.
        num_frequencies: harmonics of the Fourier features of fractional differences.
        out_scale: output channels per field channel (2 for a flow coupling's scale and shift).
        zero_init: start the output heads at zero.
        atom_heads: build the per-atom type and coordinate heads; without them the network only reads a
            crystal out (its lattice head and, on request, its pooled atom features), e.g. as a GAN critic.
    """

    def __init__(
        self,
        type_dim: int,
        cond_dim: int = 0,
        width: int = 128,
        n_layers: int = 4,
        num_frequencies: int = 8,
        out_scale: int = 1,
        zero_init: bool = False,
        atom_heads: bool = True,
    ) -> None:
        super().__init__()
        if type_dim < 1 or width < 1 or n_layers < 1 or num_frequencies < 1:
            raise ValueError(
                f"type_dim, width, n_layers and num_frequencies must be >= 1, got {type_dim}, {width}, "
                f"{n_layers}, {num_frequencies}"
            )
        self.type_dim = int(type_dim)
        self.cond_dim = int(cond_dim)
        self.num_frequencies = int(num_frequencies)
        self.out_scale = int(out_scale)
        self.width = int(width)
        self.type_in = nn.Linear(self.type_dim, width)
        self.lattice_in = nn.Linear(6, width)
        self.cond_in = nn.Linear(self.cond_dim, width) if self.cond_dim > 0 else None
        edge_width = 6 + 6 * self.num_frequencies
        self.layers = nn.ModuleList(_Layer(width, edge_width) for _ in range(n_layers))
        self.norm = nn.LayerNorm(width)
        self.types_out = nn.Linear(width, self.type_dim * self.out_scale) if atom_heads else None
        self.frac_out = nn.Linear(width, 3 * self.out_scale) if atom_heads else None
        self.lattice_out = nn.Sequential(
            nn.Linear(width, width), nn.SiLU(), nn.Linear(width, 6 * self.out_scale)
        )
        if zero_init:
            for head in (self.types_out, self.frac_out, self.lattice_out[-1]):
                if head is None:
                    continue
                nn.init.zeros_(head.weight)
                nn.init.zeros_(head.bias)

    def forward(
        self,
        batch: Mapping[str, Tensor],
        mask: Tensor,
        cond: Tensor | None = None,
        return_pooled: bool = False,
    ) -> dict[str, Tensor]:
        """Per-atom type and coordinate outputs and a per-crystal lattice output.

        Args:
            batch: ``atom_types`` ``[B, N, type_dim]``, ``frac_coords`` ``[B, N, 3]`` (any reals: read mod 1),
                ``lattice`` ``[B, 6]``.
            mask: ``[B, N]``, 1 for the atoms of the crystal and 0 for empty slots (ignored by every sum;
                their outputs are zero).
            cond: ``[B, cond_dim]`` (the same for every atom) or ``[B, N, cond_dim]`` (one per atom) when
                the network is conditioned.
            return_pooled: also return ``pooled`` ``[B, width]``, the mean of the final atom features over the
                crystal's atoms (invariant to permutations, translations and lattice shifts of single atoms).

        Returns:
            ``atom_types`` ``[B, N, type_dim * out_scale]`` and ``frac_coords`` ``[B, N, 3 * out_scale]``
            (with ``atom_heads``), ``lattice`` ``[B, 6 * out_scale]``, and ``pooled`` if asked for.
        """
        if self.cond_in is not None and cond is None:
            raise ValueError(f"this network is conditioned (cond_dim={self.cond_dim}) but no cond was given")
        mask = mask.to(batch["frac_coords"].dtype)
        frac, lattice = batch["frac_coords"], batch["lattice"]
        h = self.type_in(batch["atom_types"]) + self.lattice_in(lattice).unsqueeze(1)
        if self.cond_in is not None:
            c = self.cond_in(cond)
            h = h + (c if c.dim() == 3 else c.unsqueeze(1))
        n = frac.shape[1]
        delta = frac.unsqueeze(1) - frac.unsqueeze(2)  # [B, i, j, 3]: f_j - f_i
        edge_feats = torch.cat(
            [lattice[:, None, None, :].expand(-1, n, n, -1), fourier_features(delta, self.num_frequencies)],
            dim=-1,
        )
        not_self = 1.0 - torch.eye(n, device=frac.device, dtype=frac.dtype)
        pair_mask = mask.unsqueeze(2) * mask.unsqueeze(1) * not_self
        for layer in self.layers:
            h = layer(h, edge_feats, pair_mask)
        h = self.norm(h) * mask.unsqueeze(-1)
        pooled = h.sum(dim=1) / mask.sum(dim=1, keepdim=True).clamp_min(1.0)
        m = mask.unsqueeze(-1)
        out = {}
        if self.types_out is not None and self.frac_out is not None:
            out["atom_types"] = self.types_out(h) * m
            out["frac_coords"] = self.frac_out(h) * m
        out["lattice"] = self.lattice_out(pooled)
        if return_pooled:
            out["pooled"] = pooled
        return out
