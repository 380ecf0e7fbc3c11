"""VQ-VAE-2 on the periodic core: cdvae with a two-level discrete latent, a crystal-level top and an
atom-level bottom, and a prior over each.

Razavi, van den Oord & Vinyals (2019), "Generating Diverse High-Fidelity Images with VQ-VAE-2", NeurIPS,
arXiv:1906.00446. Their hierarchy (section 3.2, algorithm 1) encodes an image into a coarse top map
``e_top = Quantise(E_top(x))`` and a finer bottom map ``e_bottom = Quantise(E_bottom(x, e_top))`` and decodes
``x = D(e_top, e_bottom)``; stage 2 (section 3.3, algorithm 2) fits a prior over the top codes and a prior
over the bottom codes conditioned on the top codes, and sampling runs top prior, bottom prior, decoder.

On a crystal (what each piece is here; the model card says why):

- ``E_top``: cdvae's periodic encoder read out per crystal (its readout MLP), ``M`` codes: the crystal's
  global summary, from which the heads read the atom count, the lattice and the composition;
- ``E_bottom``: the same encoder's per-atom features, projected, beside the quantised top, through an MLP:
  one code per atom slot, the crystal's finer level;
- ``D``: the heads on ``e_top`` and the denoiser of the atoms, conditioned on ``e_top`` (every atom) and on
  each atom's own ``e_bottom`` (per-atom conditioning of the message-passing network).

The latent itself (quantisers, moving averages, the bottom encoder and both priors) is
:class:`~bench.models.vae.vq.HierarchicalVQLatent`; this class wires it into
:class:`~bench.models.vae.cdvae.CrystalCDVAE` through that class's hooks, so the loss, the two training stages
and the sampler are cdvae's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from bench.models.backbones.periodic import PeriodicMPNN
from bench.models.base import OptimizerFactory
from bench.models.diffusion.diffcsp import PredictorCorrectorSampler
from bench.models.diffusion.processes import VPGaussian, WrappedNormalVE
from bench.models.vae.cdvae import CrystalCDVAE
from bench.models.vae.vq import HierarchicalCode, HierarchicalVQLatent
from torch import Tensor, nn

__all__ = ["CrystalVQVAE2"]


class CrystalVQVAE2(CrystalCDVAE):
    """VQ-VAE-2 on cdvae: a top code sequence per crystal and a bottom code per atom (see the module
    docstring).

    The loss is cdvae's (denoising, lattice, atom count, composition) plus both levels' commitment losses;
    training runs in two stages, ``autoencoder`` then ``prior`` (both priors, on the codes of the frozen
    encoder). Sampling draws the top codes from the top prior, reads the atom count and the lattice from them,
    draws a bottom code for every slot from the bottom prior given the top codes, and denoises the atoms
    conditioned on both levels.

    Args:
        backbone: partial of :class:`~bench.models.backbones.periodic.PeriodicMPNN` (as cdvae).
        optimizer: partial building the optimiser.
        num_types: K + 1 (from the fitted codec).
        max_atoms: N (from the fitted codec); the bottom level's number of slots.
        processes: ``{"atom_types": ..., "frac_coords": ...}`` (as cdvae).
        latent: partial of :class:`~bench.models.vae.vq.HierarchicalVQLatent`, completed here with
            ``slots = max_atoms``.
        sampler: the predictor-corrector sampler over the atom fields (as cdvae).
        **kwargs: cdvae's other arguments (``hidden_dim``, ``time_dim``, the loss weights; ``beta`` is 0:
            no KL).
    """

    paper = (
        "Razavi, van den Oord, Vinyals (2019). Generating Diverse High-Fidelity Images with VQ-VAE-2. "
        "NeurIPS. arXiv:1906.00446"
    )

    def __init__(
        self,
        backbone: Callable[..., PeriodicMPNN],
        optimizer: OptimizerFactory,
        num_types: int,
        max_atoms: int,
        processes: Mapping[str, VPGaussian | WrappedNormalVE],
        latent: Callable[..., HierarchicalVQLatent],
        sampler: PredictorCorrectorSampler | None = None,
        **kwargs: Any,
    ) -> None:
        built = latent(slots=max_atoms)
        if not isinstance(built, HierarchicalVQLatent):
            raise TypeError(
                f"vq_vae2's latent must build a HierarchicalVQLatent (model.module.latent with _partial_: "
                f"true), got {type(built).__name__}"
            )
        super().__init__(
            backbone, optimizer, num_types, max_atoms, processes, sampler, latent=built, **kwargs
        )
        # E_bottom's input: the encoder's per-atom features, projected to the width the latent reads
        self.encoder.types_out = nn.Linear(self.encoder.type_in.out_features, built.atom_features)
        # each atom's bottom code, projected to the denoiser's conditioning width
        self.atom_latent_in = nn.Linear(built.atom_dim, self.time_dim)

    # ------------------------------------------------------------------ hooks of cdvae
    def latent_inputs(self, x0: Mapping[str, Tensor], mask: Tensor) -> dict[str, Tensor]:
        """The encoder's per-crystal readout (``crystal``, for the top level), its projected per-atom
        features (``atoms``, for the bottom level) and the atom ``mask``, from one encoder pass."""
        out = self.encoder(x0, mask)
        return {"crystal": out["lattice"], "atoms": out["atom_types"], "mask": mask}

    def posterior_params(self, x0: Mapping[str, Tensor], mask: Tensor) -> Tensor:
        """The encoder's per-crystal readout ``[B, M d]``: the top level before quantisation."""
        return self.latent_inputs(x0, mask)["crystal"]

    def decode_stats(self, z: HierarchicalCode) -> dict[str, Tensor]:  # type: ignore[override]
        """The heads read the top level: the crystal's atom count, lattice and composition."""
        return super().decode_stats(z.top)

    def decoder_condition(self, t: Tensor, z: HierarchicalCode) -> Tensor:  # type: ignore[override]
        """``[B, N, time_dim]``: cdvae's conditioning on the steps and the top level, the same for every atom,
        plus each atom's own bottom code."""
        if z.bottom is None:
            raise ValueError("the bottom level has not been drawn (complete_latent draws it)")
        return super().decoder_condition(t, z.top).unsqueeze(1) + self.atom_latent_in(z.bottom)

    def complete_latent(
        self, z: HierarchicalCode, mask: Tensor, generator: torch.Generator | None
    ) -> HierarchicalCode:
        """The bottom codes of every slot from the bottom prior, given the top codes ``z`` drew."""
        return self.latent.prior_bottom(z, mask, generator, self._randn)  # type: ignore[union-attr]
