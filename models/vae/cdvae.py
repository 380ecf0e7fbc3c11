"""CDVAE on the periodic core: a VAE whose encoder and denoising decoder both respect periodicity.

Xie, Fu, Ganea, Barzilay, Jaakkola (2022), "Crystal Diffusion Variational Autoencoder for Periodic Material
Generation", ICLR, arXiv:2110.06197. Section 3 (and its figure 2) splits a crystal's generation in two:

1. from a latent ``z`` (a periodic GNN encoder's mean-pooled output, section 3.3), small MLPs predict the
   crystal's aggregated properties: its number of atoms, its lattice and its composition;
2. a noise-conditional score network, conditioned on ``z`` and on the lattice, denoises the atom types and
   coordinates of exactly that many atoms (sections 3.2 and 3.4); sampling runs annealed Langevin dynamics
   from noise (algorithm 1).

Here the encoder and the decoder are :class:`~bench.models.backbones.periodic.PeriodicMPNN` networks and the
decoder's corruption is DiffCSP's (the processes and sampler of :mod:`bench.models.diffusion`): a
variance-preserving diffusion of the continuous one-hot types and a wrapped-normal variance-exploding
diffusion of the fractional coordinates. The lattice is never diffused: it is teacher-forced in training and
predicted from ``z`` at sampling, then held fixed while the atoms are denoised.

No test likelihood is reported (:attr:`~bench.models.base.GenerativeModule.likelihood` stays None, so the
record has no ``nll_test``): the decoder is a denoising score model with no tractable ``p(x | z)``, and the
lattice is a point prediction from ``z``, so a negative ELBO would need the diffusion decoder's own
variational bound (and an invented lattice noise), separate work shared with the diffusion models.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from bench.models.backbones.periodic import PeriodicMPNN
from bench.models.base import OptimizerFactory
from bench.models.diffusion.diffcsp import PredictorCorrectorSampler
from bench.models.diffusion.processes import VPGaussian, WrappedNormalVE
from bench.models.embeddings import timestep_embedding
from bench.models.periodic_base import ATOM_FIELDS, PeriodicCrystalModule
from bench.models.vae.latents import Latent
from bench.models.vae.vae import GaussianLatent
from torch import Tensor, nn

__all__ = ["CrystalCDVAE", "gaussian_kl"]


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """``KL(N(mu, exp(logvar)) || N(0, I))`` summed over the latent and averaged over the batch (as CDVAE)."""
    return (0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)).mean()


def _head(width_in: int, hidden: int, width_out: int) -> nn.Sequential:
    """CDVAE's property MLP from ``z`` (``fc_num_layers = 1``): one hidden layer."""
    return nn.Sequential(nn.Linear(width_in, hidden), nn.SiLU(), nn.Linear(hidden, width_out))


class CrystalCDVAE(GaussianLatent, PeriodicCrystalModule):
    """CDVAE: a periodic encoder to a Gaussian latent, property heads on the latent, and a latent-conditioned
    denoiser of the atoms.

    The loss (CDVAE's equation of section 3.4, with this suite's corruption) is ::

        w_types |eps_hat - eps|^2 + w_frac |score_hat - score|^2        (decoder, at a uniform step t)
        + w_lattice MSE(lattice_head(z), lattice)                      (standardised parameters)
        + w_atoms CE(num_atoms_head(z), n) + w_comp CE(composition_head(z), composition)
        + beta KL(q(z | x) || N(0, I))

    with ``z = mu + sigma eps`` from the encoder, and the true lattice fed to the decoder (teacher forcing).
    The atom count comes from ``z``; the base's training-set count (``fit_data``) is kept, not sampled.

    A ``latent`` object (:mod:`bench.models.vae.latents`) replaces the Gaussian latent: the encoder's readout
    emits its ``param_dim`` parameters, the heads and the decoder read its ``dim``-wide ``z``, and
    ``beta KL`` becomes ``beta`` times its regulariser plus its auxiliary objective (beta-TCVAE, FactorVAE,
    JointVAE are such objects; beta-VAE is this class with a larger ``beta``). A latent with a learned prior
    (VQ-VAE's :class:`~bench.models.vae.vq.VQLatent`) makes the model train in two stages, ``autoencoder``
    then ``prior`` (:meth:`~bench.models.vae.vae.GaussianLatent.declare_latent_stages`); models with any
    other latent keep one stage and no ``training_stages``. Three hooks, :meth:`latent_inputs`,
    :meth:`decoder_condition` and :meth:`complete_latent`, let a latent with a per-atom part (VQ-VAE-2,
    :class:`~bench.models.vae.vq_vae2.CrystalVQVAE2`) share this loss and this sampler.

    Args:
        backbone: partial of :class:`~bench.models.backbones.periodic.PeriodicMPNN`, called twice: the encoder
            (``cond_dim = 0``; its per-crystal readout becomes the posterior head) and the decoder
            (``cond_dim = time_dim``; its lattice head is dropped, the lattice is an input only).
        optimizer: partial building the optimiser.
        num_types: K + 1 (from the fitted codec).
        max_atoms: N (from the fitted codec).
        processes: ``{"atom_types": ..., "frac_coords": ...}`` with a common ``timesteps`` (no lattice
            process: the lattice is not diffused).
        sampler: a :class:`~bench.models.diffusion.diffcsp.PredictorCorrectorSampler` over the atom fields.
        latent_dim: width of the Gaussian latent.
        hidden_dim: hidden width of the heads on ``z``.
        time_dim: width of the time embedding (``z`` is projected to it and added).
        beta: weight of the KL term (CDVAE: 0.01).
        kl_warmup_steps: ramp ``beta`` linearly from 0 over this many steps (0: none, as CDVAE).
        type_weight: weight of the type denoising loss.
        frac_weight: weight of the coordinate denoising loss.
        lattice_weight: weight of the lattice head's MSE (CDVAE: 10).
        num_atoms_weight: weight of the atom-count cross-entropy (CDVAE: 1).
        composition_weight: weight of the composition cross-entropy (CDVAE: 1; 0 drops the head).
        latent: a :class:`~bench.models.vae.latents.Latent` owning the posterior draw, the prior draw and the
            regulariser; None (the default, CDVAE) is the Gaussian latent of width ``latent_dim``.
    """

    family = "vae"
    paper = (
        "Xie, Fu, Ganea, Barzilay, Jaakkola (2022). Crystal Diffusion Variational Autoencoder for Periodic "
        "Material Generation. ICLR. arXiv:2110.06197"
    )

    def __init__(
        self,
        backbone: Callable[..., PeriodicMPNN],
        optimizer: OptimizerFactory,
        num_types: int,
        max_atoms: int,
        processes: Mapping[str, VPGaussian | WrappedNormalVE],
        sampler: PredictorCorrectorSampler | None = None,
        latent_dim: int = 64,
        hidden_dim: int = 128,
        time_dim: int = 64,
        beta: float = 0.01,
        kl_warmup_steps: int = 0,
        type_weight: float = 1.0,
        frac_weight: float = 1.0,
        lattice_weight: float = 10.0,
        num_atoms_weight: float = 1.0,
        composition_weight: float = 1.0,
        latent: Latent | None = None,
    ) -> None:
        super().__init__(
            optimizer, num_types, max_atoms, backbone, time_dim,
            {"atom_types": type_weight, "frac_coords": frac_weight, "lattice": lattice_weight},
        )
        self._save_plain_hparams(ignore=["processes", "latent"])
        if latent_dim < 1 or hidden_dim < 1:
            raise ValueError(f"latent_dim and hidden_dim must be >= 1, got {latent_dim}, {hidden_dim}")
        if beta < 0 or num_atoms_weight < 0 or composition_weight < 0:
            raise ValueError(
                f"beta, num_atoms_weight and composition_weight must be >= 0, got {beta}, "
                f"{num_atoms_weight}, {composition_weight}"
            )
        self.processes = self._atom_processes(processes)
        self.timesteps = next(iter(self.processes.values())).timesteps
        self.sampler = sampler if sampler is not None else PredictorCorrectorSampler()
        self.latent_dim = int(latent_dim)
        self.beta = float(beta)
        self.kl_warmup_steps = int(kl_warmup_steps)
        self.num_atoms_weight = float(num_atoms_weight)
        self.composition_weight = float(composition_weight)
        self.latent = latent

        # Encoder: the backbone's per-crystal readout (an MLP on the mean of the atoms' final features) is
        # replaced by one emitting (mu, logvar); its per-atom heads are not needed.
        self.encoder = backbone(type_dim=num_types - 1, cond_dim=0)
        width = self.encoder.type_in.out_features
        self.encoder.types_out = nn.Identity()
        self.encoder.frac_out = nn.Identity()
        self.encoder.lattice_out = _head(width, width, self.posterior_width)
        # Decoder (self.net, built by the base with cond_dim = time_dim): the lattice is an input only.
        self.net.lattice_out = nn.Identity()
        self.latent_in = nn.Linear(self.code_width, self.time_dim)

        self.num_atoms_head = _head(self.code_width, hidden_dim, max_atoms)
        self.lattice_head = _head(self.code_width, hidden_dim, 6)
        self.composition_head = (
            _head(self.code_width, hidden_dim, num_types - 1) if self.composition_weight > 0 else None
        )
        self.declare_latent_stages()  # two stages only for a latent with a prior to train (VQ-VAE)

    @staticmethod
    def _atom_processes(processes: Mapping[str, Any]) -> dict[str, Any]:
        """The per-atom processes, refusing a missing one, a lattice process or unequal ``timesteps``."""
        keys = set(processes)
        if keys != set(ATOM_FIELDS):
            raise ValueError(
                f"processes must name exactly {sorted(ATOM_FIELDS)} (CDVAE predicts the lattice from z and "
                f"does not diffuse it), got {sorted(keys)}"
            )
        steps = {k: p.timesteps for k, p in processes.items()}
        if len(set(steps.values())) != 1:
            raise ValueError(f"every field's process needs the same timesteps, got {steps}")
        return dict(processes)

    # ------------------------------------------------------------------ encoder and latent
    def posterior_params(self, x0: Mapping[str, Tensor], mask: Tensor) -> Tensor:
        """The encoder's ``[B, posterior_width]`` readout of the crystals ``x0`` (fields of
        :meth:`data_fields`)."""
        return self.encoder(x0, mask)["lattice"]

    def latent_inputs(self, x0: Mapping[str, Tensor], mask: Tensor) -> Any:
        """What the latent object's ``posterior`` and ``prior_loss`` read: the encoder's readout
        (:meth:`posterior_params`). A variant whose latent reads more of the encoder (VQ-VAE-2's per-atom
        bottom level) overrides it."""
        return self.posterior_params(x0, mask)

    def encode(self, x0: Mapping[str, Tensor], mask: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior mean and log-variance ``[B, latent_dim]`` of the built-in Gaussian latent."""
        mu, logvar = self.posterior_params(x0, mask).chunk(2, dim=-1)
        return mu, logvar.clamp(-10.0, 10.0)

    def regulariser(self, mu: Tensor, logvar: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """``beta KL(q(z|x) || N(0, I))`` and the unweighted KL for logging."""
        kl = gaussian_kl(mu, logvar)
        return self.current_beta() * kl, {"kl": kl}

    def decode_stats(self, z: Tensor) -> dict[str, Tensor]:
        """What the heads read from ``z``: ``num_atoms`` logits over ``1..N`` ``[B, N]``, the standardised
        ``lattice`` ``[B, 6]`` and (when the head exists) ``composition`` logits over the K elements."""
        stats = {"num_atoms": self.num_atoms_head(z), "lattice": self.lattice_head(z)}
        if self.composition_head is not None:
            stats["composition"] = self.composition_head(z)
        return stats

    # ------------------------------------------------------------------ decoder
    def decoder_condition(self, t: Tensor, z: Tensor) -> Tensor:
        """The denoiser's conditioning ``[B, time_dim]``: the embedding of the steps ``t`` ``[B]`` plus ``z``
        projected to its width. A variant with a per-atom latent returns ``[B, N, time_dim]``."""
        return self.time_mlp(timestep_embedding(t, self.time_dim)) + self.latent_in(z)

    def predict(self, x_t: Mapping[str, Tensor], t: Tensor, z: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """The denoiser's ``atom_types`` and ``frac_coords`` targets for noisy atoms ``x_t`` on the lattice
        ``x_t["lattice"]`` at integer steps ``t`` ``[B]``, conditioned on ``z`` (added to the time
        embedding: :meth:`decoder_condition`)."""
        out = self.net(self.mask_atoms(x_t, mask), mask, cond=self.decoder_condition(t, z))
        return {k: out[k] for k in ATOM_FIELDS}

    # ------------------------------------------------------------------ the contract
    def loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Denoising, head and KL terms and their weighted total (see the class docstring); in the ``prior``
        stage of a latent with a learned prior, that prior's loss alone."""
        x0, mask = self.data_fields(batch)
        if self.stage == "prior":
            with torch.no_grad():  # the encoder is frozen: only the prior learns
                params = self.latent_inputs(x0, mask)
            return self.prior_stage_loss(params)
        if self.latent is None:
            mu, logvar = self.encode(x0, mask)
            z = self.reparameterise(mu, logvar)
        else:
            params = self.latent_inputs(x0, mask)
            z, posterior = self.latent.posterior(params)

        stats = self.decode_stats(z)
        n_atoms = mask.sum(dim=1).round().long()
        terms = {
            "num_atoms_ce": F.cross_entropy(stats["num_atoms"], (n_atoms - 1).clamp_min(0)),
            "lattice_mse": self.masked_mse(stats["lattice"], x0["lattice"], None),
        }
        if self.composition_head is not None:
            counts = (batch["atom_types"][..., 1:] * mask.unsqueeze(-1)).sum(dim=1)
            fractions = counts / counts.sum(dim=-1, keepdim=True).clamp_min(1.0)
            log_probs = F.log_softmax(stats["composition"], dim=-1)
            terms["composition_ce"] = -(fractions * log_probs).sum(-1).mean()

        t = torch.randint(1, self.timesteps + 1, (mask.shape[0],), device=self.device)
        noise = {k: torch.randn_like(x0[k]) for k in ATOM_FIELDS}
        x_t = {k: self.processes[k].q_sample(x0[k], t, noise[k]) for k in ATOM_FIELDS}
        x_t["lattice"] = x0["lattice"]  # teacher forcing: the decoder sees the true lattice
        pred = self.predict(x_t, t, z, mask)
        for k in ATOM_FIELDS:
            terms[f"{k}_mse"] = self.masked_mse(pred[k], self.processes[k].target(noise[k], t), mask)

        if self.latent is None:
            penalty, reg_terms = self.regulariser(mu, logvar)
        else:
            penalty, reg_terms = self.latent_regulariser(posterior, z)
        total = self.weighted_total(terms) + self.num_atoms_weight * terms["num_atoms_ce"] + penalty
        if "composition_ce" in terms:
            total = total + self.composition_weight * terms["composition_ce"]
        if self.latent is not None and self.trains_prior_alongside():
            prior_terms = self.prior_stage_loss(params)
            total = total + prior_terms.pop("loss")
            reg_terms = {**reg_terms, **prior_terms}
        return {"loss": total, **terms, **reg_terms}

    def complete_latent(self, z: Any, mask: Tensor, generator: torch.Generator | None) -> Any:
        """The rest of a prior draw ``z`` once the atoms ``mask`` ``[n, N]`` are known (VQ-VAE-2 draws its
        per-atom bottom level here); ``z`` itself for every latent drawn whole."""
        return z

    @property
    def nfe(self) -> int:
        """Decoder evaluations per sample (the heads on ``z`` are not counted; the encoder is not used)."""
        return self.sampler.nfe(self.timesteps)

    def _sample(self, n: int, generator: torch.Generator | None, condition: Any) -> dict[str, Tensor]:
        """``z ~ N(0, I)`` (or the latent object's prior); the atom count (argmax of its head, as CDVAE) and
        the lattice from ``z``; then the predictor-corrector sampler over the atom fields, on that fixed
        lattice."""
        z = self.sample_prior(n, generator)
        stats = self.decode_stats(z)
        mask = self.atom_mask(stats["num_atoms"].argmax(dim=-1) + 1)
        z = self.complete_latent(z, mask, generator)
        lattice = stats["lattice"]

        all_shapes = self.field_shapes(n)
        shapes = {k: all_shapes[k] for k in ATOM_FIELDS}
        x = self.draw_prior(self.processes, shapes, mask, generator)

        def noise() -> dict[str, Tensor]:
            return {k: self._randn(shapes[k], generator) for k in sorted(shapes)}

        def predictor(x_t: Mapping[str, Tensor], t: Tensor) -> dict[str, Tensor]:
            return self.predict({**x_t, "lattice": lattice}, t, z, mask)

        out = self.sampler(predictor, self.processes, x, self.timesteps, noise)
        return self.to_batch({**out, "lattice": lattice}, mask)
