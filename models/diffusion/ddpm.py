"""Denoising diffusion (epsilon prediction, cosine schedule) over the continuous fields of the crystal batch.

Ho, Jain & Abbeel (2020), "Denoising Diffusion Probabilistic Models", NeurIPS, arXiv:2006.11239, with the
cosine schedule of Nichol & Dhariwal (2021), "Improved Denoising Diffusion Probabilistic Models", ICML,
arXiv:2102.09672. All three fields diffuse in Euclidean space, each by its own variance-preserving process
(:class:`~bench.models.diffusion.processes.VPGaussian`) with the same schedule, so the model's corruption is a
dict keyed by field like every diffusion model's here, and the samplers of
:mod:`bench.models.diffusion.samplers` (ancestral, DDIM, Analytic-DPM, the ELBO-optimal DP path) drive it:

- ``atom_types``: the one-hot scaled to ``{-1, +1}`` (decoded by argmax, as in analog-bits style continuous
  relaxations, Chen, Zhang & Hinton 2023, arXiv:2208.04202);
- ``frac_coords``: ``2 f - 1`` in ``[-1, 1)``, plain (non-periodic) values; the decoder wraps them mod 1;
- ``lattice``: the codec's standardised parameters as they are.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from bench.models.backbone import CrystalTransformer
from bench.models.base import FIELDS, GenerativeModule, OptimizerFactory
from bench.models.diffusion.processes import VPGaussian
from bench.models.diffusion.samplers import AncestralSampler, DiffusionSampler
from bench.models.embeddings import timestep_embedding
from torch import Tensor, nn

__all__ = ["CrystalDDPM", "timestep_embedding"]


class CrystalDDPM(GenerativeModule):
    """Epsilon-prediction DDPM on ``(atom_types, frac_coords, lattice)`` with a transformer denoiser.

    The corruption is :attr:`processes`, one :class:`~bench.models.diffusion.processes.VPGaussian` per field,
    built from ``timesteps``, ``schedule`` and the fields' bounds (types and coordinates 1, the lattice
    ``lattice_clip``). The loss is the simple objective of Ho et al. (2020): the mean squared error of the
    predicted noise (each process's target), averaged within each field and summed over fields with weights
    (so the ``K + 1`` type channels do not swamp the three coordinates). Sampling is delegated to the
    configured sampler (:mod:`bench.models.diffusion.samplers`), which steps the processes.

    Args:
        backbone: partial of :class:`~bench.models.backbone.CrystalTransformer` (called once, for the
            denoiser).
        optimizer: partial building the optimiser.
        sampler: a built sampler, e.g. :class:`~bench.models.diffusion.samplers.AncestralSampler`.
        num_types: K + 1 (from the fitted codec).
        max_atoms: N (from the fitted codec).
        timesteps: T, the number of diffusion steps (of every field's process).
        schedule: ``"cosine"`` (default) or ``"linear"`` (of every field's process).
        time_dim: width of the time embedding fed to the backbone as its conditioning vector.
        type_weight: weight of the type-noise MSE.
        frac_weight: weight of the coordinate-noise MSE.
        lattice_weight: weight of the lattice-noise MSE.
        lattice_clip: bound on ``|x0_hat|`` of the standardised lattice while sampling (``None``: no clip),
            the lattice process's ``clip``. Types and coordinates are clipped to their range ``[-1, 1]``
            (unless the sampler's ``clip_denoised`` is false). Near ``t = T`` the cosine schedule's
            ``alpha_bar`` is tiny, so ``x0_hat = (x_t - sqrt(1 - a) eps_hat) / sqrt(a)`` magnifies small
            noise-prediction errors by orders of magnitude; unclipped, they survive into the sample as absurd
            cells. Five standard deviations keep every realistic cell.
    """

    family = "diffusion"
    paper = (
        "Ho, Jain, Abbeel (2020). Denoising Diffusion Probabilistic Models. NeurIPS. arXiv:2006.11239; "
        "cosine schedule: Nichol, Dhariwal (2021). Improved Denoising Diffusion Probabilistic Models. ICML. "
        "arXiv:2102.09672"
    )

    def __init__(
        self,
        backbone: Callable[..., CrystalTransformer],
        optimizer: OptimizerFactory,
        num_types: int,
        max_atoms: int,
        sampler: DiffusionSampler | None = None,
        timesteps: int = 1000,
        schedule: str = "cosine",
        time_dim: int = 64,
        type_weight: float = 1.0,
        frac_weight: float = 1.0,
        lattice_weight: float = 1.0,
        lattice_clip: float | None = 5.0,
    ) -> None:
        super().__init__(optimizer, num_types, max_atoms)
        self._save_plain_hparams()
        self.sampler: DiffusionSampler = sampler if sampler is not None else AncestralSampler()
        self.timesteps = int(timesteps)
        self.time_dim = int(time_dim)
        self.weights = {"atom_types": type_weight, "frac_coords": frac_weight, "lattice": lattice_weight}
        #: The corruption: one variance-preserving process per field, all on the same schedule, each clipping
        #: ``x0_hat`` to its field's range while sampling. Rebuilt from the config, never saved.
        self.processes: dict[str, VPGaussian] = {
            "atom_types": VPGaussian(timesteps, schedule, clip=1.0),
            "frac_coords": VPGaussian(timesteps, schedule, clip=1.0),
            "lattice": VPGaussian(timesteps, schedule, clip=lattice_clip),
        }
        self.time_mlp = nn.Sequential(
            nn.Linear(self.time_dim, self.time_dim), nn.SiLU(), nn.Linear(self.time_dim, self.time_dim)
        )
        self.denoiser = backbone(
            num_types=num_types, max_atoms=max_atoms, cond_dim=self.time_dim, raw_frac=True
        )

    # ------------------------------------------------------------------ representation
    @staticmethod
    def to_diffusion_space(batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Map a data batch to the diffused variables: types to ``{-1, 1}``, coordinates to ``[-1, 1)``."""
        return {
            "atom_types": 2.0 * batch["atom_types"] - 1.0,
            "frac_coords": 2.0 * batch["frac_coords"] - 1.0,
            "lattice": batch["lattice"],
        }

    @staticmethod
    def from_diffusion_space(x: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Inverse of :meth:`to_diffusion_space` (types stay scores for the argmax)."""
        return {
            "atom_types": (x["atom_types"] + 1.0) / 2.0,
            "frac_coords": (x["frac_coords"] + 1.0) / 2.0,
            "lattice": x["lattice"],
        }

    def predict(self, x_t: Mapping[str, Tensor], t: Tensor) -> dict[str, Tensor]:
        """``eps_hat(x_t, t)`` per field at the processes' steps ``t`` ``[B]`` in ``1..T``.

        The time embedding reads the 0-based index ``t - 1``, the convention the trained checkpoints use.
        """
        cond = self.time_mlp(timestep_embedding(t - 1, self.time_dim))
        # The backbone reads coordinates as fractions (periodic features) plus their raw values.
        inputs = {**x_t, "frac_coords": (x_t["frac_coords"] + 1.0) / 2.0}
        out = self.denoiser(inputs, cond=cond)
        return {k: out[k] for k in FIELDS}

    # ------------------------------------------------------------------ training
    def loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Weighted per-field noise MSE at uniformly drawn steps ``t`` in ``1..T``."""
        x0 = self.to_diffusion_space(batch)
        size = x0["lattice"].shape[0]
        t = torch.randint(1, self.timesteps + 1, (size,), device=self.device)
        noise = {k: torch.randn_like(v) for k, v in x0.items()}
        x_t = {k: self.processes[k].q_sample(x0[k], t, noise[k]) for k in FIELDS}
        pred = self.predict(x_t, t)
        terms = {f"{k}_mse": F.mse_loss(pred[k], self.processes[k].target(noise[k], t)) for k in FIELDS}
        total = sum(self.weights[k] * terms[f"{k}_mse"] for k in FIELDS)
        return {"loss": total, **terms}

    # ------------------------------------------------------------------ sampling
    @property
    def nfe(self) -> int:
        """Network evaluations per sample: the reverse steps the configured sampler visits."""
        return self.sampler.nfe(self.timesteps)

    def weights_fingerprint(self) -> str:
        """sha256 of the weights (every tensor of the state dict, in order): what a sampler's cached
        statistics of this model are keyed by."""
        digest = hashlib.sha256()
        for name, value in self.state_dict().items():
            value = value.detach().cpu().contiguous()
            digest.update(f"{name}:{tuple(value.shape)}:{value.dtype}".encode())
            digest.update(value.numpy().tobytes())
        return digest.hexdigest()

    @torch.no_grad()
    def prepare_sampler(
        self, batch: Mapping[str, Tensor], cache_dir: str | Path | None = None, batch_size: int = 512
    ) -> None:
        """Give a sampler that reads the training data (``needs_data``: Analytic-DPM's ``Gamma_t``, the DP
        sampler's cost table) its statistics, estimated from this model on ``batch`` (the training split
        encoded by the run's representation); a no-op for the other samplers.

        Args:
            batch: the encoded training data (``atom_types``, ``frac_coords``, ``lattice``; other keys are
                ignored).
            cache_dir: where the statistics are cached as JSON (keyed by the sampler's settings, the data and
                the weights), or None.
            batch_size: crystals per network evaluation of the Monte Carlo estimate.
        """
        if not getattr(self.sampler, "needs_data", False):
            return
        x0 = {k: v.detach().cpu().float() for k, v in self.to_diffusion_space(batch).items()}
        was_training = self.training
        self.eval()
        try:
            self.sampler.prepare(  # type: ignore[attr-defined]
                self.predict, self.processes, x0, self.timesteps, cache_dir=cache_dir,
                fingerprint=self.weights_fingerprint(), batch_size=batch_size, device=self.device,
            )
        finally:
            self.train(was_training)

    def _sample(self, n: int, generator: torch.Generator | None, condition: Any) -> dict[str, Tensor]:
        shapes = {
            "atom_types": (n, self.max_atoms, self.num_types),
            "frac_coords": (n, self.max_atoms, 3),
            "lattice": (n, 6),
        }
        x = {k: self.processes[k].prior(shapes[k], generator, self.device) for k in sorted(shapes)}

        def noise() -> dict[str, Tensor]:
            return {k: self._randn(shapes[k], generator) for k in sorted(shapes)}

        return self.from_diffusion_space(self.sampler(self.predict, self.processes, x, self.timesteps, noise))
