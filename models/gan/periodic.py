"""WGAN-GP on the periodic core: a message-passing generator and critic that read crystals only through
periodic, translation- and permutation-invariant features.

Gulrajani, Ahmed, Arjovsky, Dumoulin & Courville (2017), "Improved Training of Wasserstein GANs", NeurIPS,
arXiv:1704.00028 (the loss, the penalty and algorithm 1), with both networks built from
:class:`~bench.models.backbones.periodic.PeriodicMPNN` (after DiffCSP's CSPNet, Jiao et al. 2023,
arXiv:2309.04475) and the number of atoms drawn from the training set as DiffCSP and FlowMM do.

- The critic sees the fields of :class:`~bench.models.periodic_base.PeriodicCrystalModule` (continuous
  one-hot types ``2 onehot - 1``, fractional coordinates, standardised lattice) and the atom mask, and scores
  a crystal by a linear read-out of its mean-pooled atom features and the backbone's lattice output. The score
  is invariant to permutations of the atoms, to a global shift of every fractional coordinate and to moving
  one atom by a lattice vector.
- The generator draws the number of atoms from the training set, starts every atom at a uniform point of the
  torus, and each of its passes (a separate network conditioned on the per-crystal noise vector) adds type
  logits, a displacement of the coordinates (wrapped mod 1) and a lattice correction; see
  :class:`PeriodicGenerator`. Generated types are ``2 p - 1`` for the softmax (by default straight-through
  one-hot) ``p`` of the logits, in the range of the real continuous one-hots.
- The penalty's gradient norm may weight the fields (``penalty_metric``): with the paper's Euclidean norm a
  1-Lipschitz critic barely reads the coordinates, whose errors are small next to those of type vectors.
- In a critic step the generated crystals take the atom counts of the real batch they are set against, so the
  penalty's interpolates are well defined (real and generated atoms pair slot by slot) and the critic cannot
  score the atom count, which the generator does not control.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from bench.models.backbones.periodic import PeriodicMPNN
from bench.models.base import FIELDS, OptimizerFactory, periodic_difference
from bench.models.gan.base import CrystalGAN, critic_gradient_penalty
from bench.models.periodic_base import AtomCounts, PeriodicCrystalModule
from torch import Tensor, nn

__all__ = ["CrystalPeriodicWGANGP", "PeriodicCritic", "PeriodicGenerator", "wrap"]


def wrap(frac: Tensor) -> Tensor:
    """Fractional coordinates mod 1, strictly below 1 (``remainder`` can round a tiny negative up to 1)."""
    frac = torch.remainder(frac, 1.0)
    return torch.where(frac >= 1.0, frac - 1.0, frac)


class PeriodicGenerator(nn.Module):
    """Noise to crystal fields through ``passes`` periodic networks, each refining the last one's output.

    Each pass moves every atom by ``o_i`` from the coordinate head and, with ``pull_dim > 0``, by an
    attention-weighted pull ``sum_j w_ij wrap(f_j - f_i)`` towards the other atoms of its crystal
    (``w_ij = softmax_j(q_i . k_j / sqrt(pull_dim))`` over the atoms, itself included; ``q``, ``k`` are extra
    channels of the per-atom head, fed back as inputs of the next pass). The pull lets a pass gather atoms
    that start at different points onto one anchor; it is zero when every atom starts at the same point.

    With ``rank_inputs`` every pass also reads each atom's rank within its crystal, ranked by the first
    channel of the atom's own noise: a role the atoms agree on without slot embeddings, so a pass can give
    "the first atom" and "the second atom" different offsets (a one-shot generator otherwise has to break the
    symmetry between atoms of the same kind from their noise alone). With ``template`` the first pass also
    adds a learned offset per rank, and the coordinate heads start at zero, so at first every crystal is
    the same arrangement: the critic's gradients on all samples then move one arrangement together, where
    arrangements that differ per sample receive gradients towards different nearest structures that cancel.

    Equivariant by construction: permuting the atoms' noise permutes the output (independent noise per atom,
    ranks that permute with the atoms, no slot embeddings), and shifting every starting coordinate shifts
    every output coordinate (the networks read only wrapped differences).

    Args:
        backbone: partial of :class:`~bench.models.backbones.periodic.PeriodicMPNN`.
        type_dim: K, the number of element channels.
        noise_dim: width of the per-crystal noise vector (the networks' condition).
        passes: number of networks applied in turn.
        pull_dim: width of the attention queries and keys (0: offsets only).
        max_atoms: N, the number of slots (the width of the rank one-hot).
        rank_inputs: feed every pass each atom's rank (see above).
        rank_scale: the value of the rank one-hot's hot entry (larger: the rank outweighs the noise in the
            first layer at initialisation).
        atom_noise_dim: per-atom noise channels, zero-padded to the per-atom width (0: that width).
        template: add a learned offset per rank (a template of N positions) in the first pass, with the
            coordinate heads initialised at zero (needs ``rank_inputs``).
        template_scale: the template is stored divided by this, so the optimiser moves it this much faster.
        hard_types: emit straight-through one-hots (hard forward, softmax gradient) instead of softmax
            probabilities, mapped to ``2 p - 1`` either way.
    """

    def __init__(
        self, backbone: Callable[..., PeriodicMPNN], type_dim: int, noise_dim: int, passes: int,
        pull_dim: int = 0, max_atoms: int = 0, rank_inputs: bool = False, rank_scale: float = 1.0,
        atom_noise_dim: int = 0, template: bool = False, template_scale: float = 1.0,
        hard_types: bool = False,
    ) -> None:
        super().__init__()
        if pull_dim < 0:
            raise ValueError(f"pull_dim must be >= 0, got {pull_dim}")
        self.type_dim = int(type_dim)
        self.pull_dim = int(pull_dim)
        self.hard_types = bool(hard_types)
        if rank_inputs and max_atoms < 1:
            raise ValueError(f"rank_inputs needs max_atoms >= 1, got {max_atoms}")
        self.rank_dim = int(max_atoms) if rank_inputs else 0
        self.rank_scale = float(rank_scale)
        self.atom_dim = self.type_dim + 2 * self.pull_dim  # per-atom channels out of every pass
        # Per-atom noise channels (zero-padded to atom_dim as the first pass's input); 0: atom_dim.
        self.atom_noise_dim = int(atom_noise_dim) if 0 < atom_noise_dim <= self.atom_dim else self.atom_dim
        self.passes = nn.ModuleList(
            backbone(type_dim=self.atom_dim + self.rank_dim, cond_dim=noise_dim) for _ in range(passes)
        )
        if template and not rank_inputs:
            raise ValueError("template needs rank_inputs (the template is indexed by rank)")
        # Learned offset per rank, added in the first pass; the coordinate heads then start at zero, so every
        # crystal starts as the same template (a random one), which the critic's gradients move as one.
        # Stored divided by template_scale, so an optimiser step moves the positions template_scale times
        # further (one parameter per position would otherwise crawl at the learning rate per step).
        self.template_scale = float(template_scale)
        self.template = nn.Parameter(torch.rand(max_atoms, 3) / self.template_scale) if template else None
        if template:
            for net in self.passes:
                nn.init.zeros_(net.frac_out.weight)
                nn.init.zeros_(net.frac_out.bias)

    def forward(self, noise: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Crystal fields from ``noise``.

        Args:
            noise: ``mask`` ``[B, N]``, ``global`` ``[B, noise_dim]``, per-atom ``atom_types``
                ``[B, N, atom_noise_dim]`` (normal; channel 0 also ranks the atoms) and starting
                ``frac_coords`` ``[B, N, 3]`` (uniform on the torus), per-crystal ``lattice`` ``[B, 6]``.

        Returns:
            ``atom_types`` (``2 p - 1``, empty slots zero), ``frac_coords`` in ``[0, 1)`` (empty slots zero),
            ``lattice``, ``mask`` and the type ``logits``.
        """
        mask = noise["mask"]
        m = mask.unsqueeze(-1)
        ranks = self.ranks(noise["atom_types"][..., 0], mask) if self.rank_dim else None
        if ranks is not None:
            ranks = ranks * self.rank_scale
        atoms = nn.functional.pad(noise["atom_types"], (0, self.atom_dim - noise["atom_types"].shape[-1]))
        frac, lattice = noise["frac_coords"], noise["lattice"]
        logits: Tensor | None = None
        for i, net in enumerate(self.passes):
            inputs = atoms if ranks is None else torch.cat([atoms, ranks], dim=-1)
            fields = {"atom_types": inputs * m, "frac_coords": frac * m, "lattice": lattice}
            out = net(fields, mask, cond=noise["global"])
            # The per-atom head is as wide as the input; its rank channels are unused.
            head, pull = out["atom_types"][..., : self.atom_dim].split([self.type_dim, 2 * self.pull_dim], -1)
            logits = head if logits is None else logits + head
            lattice = out["lattice"] if i == 0 else lattice + out["lattice"]
            offset = out["frac_coords"]
            if i == 0 and self.template is not None and ranks is not None:
                offset = offset + (ranks / self.rank_scale) @ (self.template_scale * self.template)
            frac = wrap(frac + self.pull(frac, pull, mask) + offset)
            atoms = torch.cat([self.types(logits), pull], dim=-1)
        return {
            "atom_types": self.types(logits) * m, "frac_coords": frac * m, "lattice": lattice, "mask": mask,
            "logits": logits,
        }

    @staticmethod
    def ranks(keys: Tensor, mask: Tensor) -> Tensor:
        """``[B, N, N]`` one-hot rank of every atom's ``keys`` value ``[B, N]`` among its crystal's atoms
        (ascending; empty slots zero)."""
        keys = keys.masked_fill(mask <= 0, float("inf"))
        rank = keys.argsort(dim=1).argsort(dim=1)
        return nn.functional.one_hot(rank, keys.shape[1]).to(mask.dtype) * mask.unsqueeze(-1)

    def pull(self, frac: Tensor, channels: Tensor, mask: Tensor) -> Tensor:
        """``sum_j w_ij wrap(f_j - f_i)`` with ``w_ij = softmax_j(q_i . k_j / sqrt(pull_dim))`` over the
        crystal's atoms (``channels`` = ``[q, k]``); zero without ``pull_dim``."""
        if self.pull_dim == 0:
            return torch.zeros_like(frac)
        query, key = channels.split(self.pull_dim, dim=-1)
        scores = query @ key.transpose(1, 2) / self.pull_dim**0.5  # [B, i, j]
        scores = scores.masked_fill(mask.unsqueeze(1) <= 0, float("-inf"))
        weights = torch.softmax(scores, dim=-1)  # every row has its own atom, so never all -inf
        delta = periodic_difference(frac.unsqueeze(1), frac.unsqueeze(2))  # [B, i, j, 3]: wrap(f_j - f_i)
        return (weights.unsqueeze(-1) * delta).sum(dim=2)

    def types(self, logits: Tensor) -> Tensor:
        """``2 p - 1`` for the softmax (or straight-through one-hot) ``p`` of ``logits``: the range of the
        real continuous one-hots, with the same sum ``2 - K`` over the K channels."""
        probs = torch.softmax(logits, dim=-1)
        if self.hard_types:
            hard = nn.functional.one_hot(probs.argmax(dim=-1), probs.shape[-1]).to(probs.dtype)
            probs = hard + probs - probs.detach()
        return 2.0 * probs - 1.0


class PeriodicCritic(nn.Module):
    """A scalar score per crystal: a linear read-out of the mean-pooled atom features of a periodic network
    and its lattice output.

    Args:
        backbone: partial of :class:`~bench.models.backbones.periodic.PeriodicMPNN` (built without atom
            heads).
        type_dim: K, the number of element channels.
        cond_dim: width of a per-crystal conditioning vector added to every atom's input (0: none).
    """

    def __init__(self, backbone: Callable[..., PeriodicMPNN], type_dim: int, cond_dim: int = 0) -> None:
        super().__init__()
        self.net = backbone(type_dim=type_dim, atom_heads=False, cond_dim=cond_dim)
        self.readout = nn.Linear(self.net.width + 6, 1)

    def forward(self, fields: Mapping[str, Tensor], mask: Tensor, cond: Tensor | None = None) -> Tensor:
        """``[B]`` scores of the crystals ``fields`` with atom mask ``mask`` ``[B, N]`` (and conditioning
        vector ``cond`` ``[B, cond_dim]`` when built with one)."""
        out = self.net(fields, mask, cond=cond, return_pooled=True)
        return self.readout(torch.cat([out["pooled"], out["lattice"]], dim=-1)).squeeze(-1)


class CrystalPeriodicWGANGP(AtomCounts, CrystalGAN):
    """WGAN-GP with a periodic message-passing generator and critic (see the module docstring).

    Args:
        backbone: partial of :class:`~bench.models.backbones.periodic.PeriodicMPNN` (one for the critic,
            ``passes`` for the generator).
        optimizer: partial building each of the two optimisers.
        num_types: K + 1 (from the fitted codec).
        max_atoms: N (from the fitted codec).
        noise_dim: width of the per-crystal noise vector.
        n_critic: critic updates per generator update.
        gp_weight: weight ``lambda`` of the gradient penalty.
        passes: generator networks applied in turn (1 or more).
        pull_dim: width of the generator's attention queries and keys for its coordinate pull (0: offsets
            only); see :class:`PeriodicGenerator`.
        rank_inputs: feed the generator each atom's rank within its crystal (by its own noise).
        rank_scale: value of the rank one-hot's hot entry (the rank outweighs the noise at initialisation).
        template: add a learned offset per rank in the generator's first pass (needs ``rank_inputs``).
        template_scale: the template is stored divided by this, so the optimiser moves it this much faster.
        atom_noise_dim: per-atom noise channels.
        noise_std: standard deviation of the per-crystal noise (the noise vector and the generator's lattice
            input); small, so at initialisation the generated arrangement depends mostly on the ranks.
        shared_start: start every atom of a crystal at the same uniform point (a random translation, which
            the critic cannot see) instead of one uniform point per atom.
        hard_types: straight-through one-hot types (hard forward, softmax gradient) instead of softmax
            probabilities; either way mapped to ``2 p - 1``.
        penalty_metric: per field, how much its changes count in the penalty's gradient norm (missing
            fields: 1; all 1: the paper's Euclidean norm over the raw fields).
        condition_dim: width of a condition, as in :class:`~bench.models.gan.base.CrystalGAN` (0: none; only
            for a subclass with ``conditional = True``): joined with the per-crystal noise of the generator
            and fed to every atom of the critic.
        condition_embed_dim: width of each network's hidden layer of the condition.
    """

    paper = (
        "Gulrajani, Ahmed, Arjovsky, Dumoulin, Courville (2017). Improved Training of Wasserstein GANs. "
        "NeurIPS. arXiv:1704.00028"
    )

    def __init__(
        self,
        backbone: Callable[..., PeriodicMPNN],
        optimizer: OptimizerFactory,
        num_types: int,
        max_atoms: int,
        noise_dim: int = 32,
        n_critic: int = 5,
        gp_weight: float = 10.0,
        passes: int = 1,
        pull_dim: int = 0,
        rank_inputs: bool = True,
        rank_scale: float = 10.0,
        template: bool = True,
        template_scale: float = 10.0,
        atom_noise_dim: int = 8,
        noise_std: float = 0.1,
        shared_start: bool = True,
        hard_types: bool = True,
        penalty_metric: Mapping[str, float] | None = None,
        condition_dim: int = 0,
        condition_embed_dim: int = 32,
    ) -> None:
        if passes < 1:
            raise ValueError(f"passes must be >= 1, got {passes}")
        metric = {key: 1.0 for key in FIELDS}
        metric.update({str(k): float(v) for k, v in (penalty_metric or {}).items()})
        if set(metric) != set(FIELDS) or min(metric.values()) <= 0:
            raise ValueError(f"penalty_metric takes positive scales for {list(FIELDS)}, got {penalty_metric}")
        if noise_std <= 0:
            raise ValueError(f"noise_std must be > 0, got {noise_std}")
        # A plain dict (not the config's mapping): the base records the arguments in checkpoints.
        penalty_metric = self.penalty_metric = metric
        self.noise_std = float(noise_std)
        self.shared_start = bool(shared_start)
        self.rank_scale = float(rank_scale)
        self.template = bool(template)
        self.template_scale = float(template_scale)
        # Read by build_networks, which the base calls in __init__.
        self.generator_passes = int(passes)
        self.pull_dim = int(pull_dim)
        self.rank_inputs = bool(rank_inputs)
        self.atom_noise_dim = int(atom_noise_dim)
        super().__init__(
            backbone, optimizer, num_types, max_atoms, noise_dim=noise_dim, n_critic=n_critic,
            loss="wasserstein", gp_weight=gp_weight, clip_value=None, site_noise=True, hard_types=hard_types,
            condition_dim=condition_dim, condition_embed_dim=condition_embed_dim,
        )
        # The training set's atom-count distribution, kept as by the periodic diffusion and flow models.
        self.register_atom_counts()

    # ------------------------------------------------------------------ networks
    def build_networks(self, backbone: Callable[..., PeriodicMPNN]) -> tuple[nn.Module, nn.Module]:
        """A :class:`PeriodicGenerator` and a :class:`PeriodicCritic` over the K element channels (with a
        condition: the generator's per-crystal vector is ``[z, h_G(y)]``, the critic's is ``h_D(y)``)."""
        type_dim = self.num_types - 1
        generator = PeriodicGenerator(
            backbone, type_dim, self.noise_dim + self.condition_width, self.generator_passes,
            pull_dim=self.pull_dim, max_atoms=self.max_atoms, rank_inputs=self.rank_inputs,
            rank_scale=self.rank_scale, atom_noise_dim=self.atom_noise_dim, template=self.template,
            template_scale=self.template_scale, hard_types=self.hard_types,
        )
        return generator, PeriodicCritic(backbone, type_dim, cond_dim=self.condition_width)

    def generate(self, noise: Mapping[str, Tensor], condition: Tensor | None = None) -> dict[str, Tensor]:
        """Crystal fields (and ``mask``) from noise drawn by :meth:`_noise` (at ``condition`` ``[B, C]`` for
        a conditional model)."""
        return self.generator({**noise, "global": self.generator_cond(noise["global"], condition)})

    def score(self, batch: Mapping[str, Tensor], condition: Tensor | None = None) -> Tensor:
        """Critic value ``[B]`` of fields with a ``mask`` (higher means more data-like)."""
        return self._critic({k: batch[k] for k in FIELDS}, batch["mask"], condition)

    def _critic(self, fields: Mapping[str, Tensor], mask: Tensor, condition: Tensor | None) -> Tensor:
        cond = self.critic_cond(condition, mask.shape[0])
        return self.critic(fields, mask) if cond is None else self.critic(fields, mask, cond)

    def real_fields(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """A codec batch as the critic reads it: continuous one-hot types, coordinates, lattice, mask."""
        fields, mask = PeriodicCrystalModule.data_fields(batch)
        return {**fields, "mask": mask}

    def fake_like(self, real: Mapping[str, Tensor], condition: Tensor | None = None) -> dict[str, Tensor]:
        """Generated crystals with the atom counts of ``real``, slot for slot (at its conditions)."""
        return self.generate(self._noise(real["mask"].shape[0], mask=real["mask"]), condition)

    def gradient_penalty(
        self, real: Mapping[str, Tensor], fake: Mapping[str, Tensor], condition: Tensor | None = None
    ) -> Tensor:
        """The penalty on linear interpolates of the raw fields of real and generated crystals that share an
        atom mask (coordinates interpolate in the unwrapped chart ``[0, 1)``).

        The gradient norm is taken in the metric where field ``f`` is stretched by ``penalty_metric[f]``:
        over ``(grad_f / penalty_metric[f])_f`` (all 1: the paper's Euclidean norm over the raw fields).
        """
        mask = real["mask"]
        if not torch.equal(fake["mask"], mask):
            raise ValueError("the gradient penalty pairs real and generated crystals with the same atom mask")
        scale = self.penalty_metric

        def stretched(fields: Mapping[str, Tensor]) -> dict[str, Tensor]:
            return {k: fields[k] * scale[k] for k in FIELDS}

        def critic(fields: Mapping[str, Tensor]) -> Tensor:
            return self._critic({k: fields[k] / scale[k] for k in FIELDS}, mask, condition)

        eps = torch.rand(mask.shape[0], device=mask.device)
        return critic_gradient_penalty(critic, stretched(real), stretched(fake), eps)

    def _noise(
        self, size: int, generator: torch.Generator | None = None, mask: Tensor | None = None
    ) -> dict[str, Tensor]:
        """The generator's input: an atom mask (drawn from the training counts unless given), per-crystal
        and per-atom noise, drawn from ``generator`` in a fixed order."""
        if mask is None:
            mask = self.draw_mask(size, generator)
        noise = {
            "mask": mask,
            "global": self.noise_std * self._randn((size, self.noise_dim), generator),
            "atom_types": self._randn((size, self.max_atoms, self.generator.atom_noise_dim), generator),
            "frac_coords": self._rand((size, self.max_atoms, 3), generator),
            "lattice": self.noise_std * self._randn((size, 6), generator),
        }
        if self.shared_start:
            noise["frac_coords"] = noise["frac_coords"][:, :1].expand(-1, self.max_atoms, -1).contiguous()
        return noise

    def fit_data(self, data: Mapping[str, Tensor]) -> None:
        """The training set's atom counts and (for a conditional model) its conditions."""
        AtomCounts.fit_data(self, data)
        CrystalGAN.fit_data(self, data)

    def _sample(self, n: int, generator: torch.Generator | None, condition: Any) -> dict[str, Tensor]:
        noise = self._noise(n, generator)
        out = self.generate(noise, self.sample_condition(n, generator, condition))
        return PeriodicCrystalModule.to_batch(out, out["mask"])
