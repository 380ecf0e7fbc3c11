"""DCGAN on the crystal matrix: a generator of fractionally-strided convolutions and a strided convolutional
discriminator over the FTCP-style matrix of :mod:`bench.datasets.crystal_matrix`.

Radford, Metz & Chintala (2016), "Unsupervised Representation Learning with Deep Convolutional Generative
Adversarial Networks", ICLR, arXiv:1511.06434. The paper's architecture guidelines (section 3) and training
details (section 4):

- no pooling: the generator upsamples with fractionally-strided (transposed) convolutions, the discriminator
  downsamples with strided convolutions;
- batch normalisation in both networks, except on the generator's output layer and the discriminator's input
  layer;
- no fully connected hidden layers: the uniform noise ``z`` is projected (one linear map) and reshaped into
  the first feature map; the discriminator's last feature map is flattened into one logit;
- ReLU in the generator (the output layer excepted), LeakyReLU with slope 0.2 in the discriminator;
- weights from ``N(0, 0.02)``, Adam with ``lr = 2e-4`` and ``beta1 = 0.5``; the GAN game with the
  non-saturating generator loss (Goodfellow et al. 2014), one discriminator step per generator step.

Fitted to the matrix (``H = K + 6`` rows, ``W = max(N, 3)`` site columns; Perov-5 62 x 5, Carbon-24 7 x 24):

- **Strides per axis.** Each axis is doubled (kernel 4, stride 2, padding 1: exactly twice the size) in as
  many of the first layers as keep the projected seed at least 3 long, and kept (kernel 3, stride 1,
  padding 1) in the rest; the output is cropped to ``H x W`` (:func:`axis_plan`). Perov-5's 62 rows grow
  8 -> 16 -> 32 -> 64 and its 5 site columns keep their size; Carbon-24's 24 site columns grow 3 -> 6 -> 12
  -> 24. The discriminator mirrors the plan with strided convolutions.
- **Linear output.** The paper's tanh suits images scaled to ``[-1, 1]``; the matrix holds standardised
  lattice parameters, which leave ``[-1, 1]`` routinely, so the generator's output layer is linear (the
  representation's decode reads one-hots by argmax, occupancy by a threshold and coordinates mod 1).
- **Discrete read-out** (``hard_types``, default on; :meth:`CrystalDCGAN.discrete_readout`): the linear output
  is written as the data hold it (straight-through one-hot elements and 0/1 occupancies, empty slots zero)
  before the discriminator sees it; with the raw output the discriminator separates generated from real
  matrices by the exactness of those entries alone (``models/cards/dcgan.md``).

The model reads either batch: ``matrix`` from the crystal-matrix representation (its config's default) or
the crystal codec's fields, which it lays out as matrices itself. ``output`` says what :meth:`sample`
returns: ``matrix`` (set by the representation's ``sizes()``; the representation decodes it) or ``crystal``
(the codec's fields, read off the matrix the same way).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from bench.datasets.crystal_matrix import CrystalMatrixLayout
from bench.models.base import OptimizerFactory
from bench.models.gan.base import CrystalGAN
from torch import Tensor, nn

__all__ = ["CrystalDCGAN", "MatrixDiscriminator", "MatrixGenerator", "axis_plan"]

OUTPUTS = ("crystal", "matrix")
MIN_SEED = 3
"""The projected seed map is at least this long along each axis (see :func:`axis_plan`)."""
LEAK = 0.2
"""The discriminator's LeakyReLU slope (paper, section 4)."""


def axis_plan(size: int, n_layers: int) -> tuple[int, int]:
    """``(doublings, seed)`` of one matrix axis of ``size`` entries for ``n_layers`` convolution layers.

    The axis is doubled in the first ``doublings`` layers (at most ``n_layers``), as often as the seed
    ``ceil(size / 2**doublings)`` stays at least :data:`MIN_SEED` long; the generator's output,
    ``seed * 2**doublings >= size`` entries, is cropped to ``size``.
    """
    if size < 1 or n_layers < 1:
        raise ValueError(f"size and n_layers must be >= 1, got {size} and {n_layers}")
    doublings = 0
    while doublings < n_layers and size / 2 ** (doublings + 1) >= MIN_SEED:
        doublings += 1
    return doublings, math.ceil(size / 2**doublings)


def _layer_shape(strided: bool) -> dict[str, int]:
    # stride 2: kernel 4, padding 1 (doubles / halves exactly); stride 1: kernel 3, padding 1 (keeps the size)
    return {"kernel_size": 4, "stride": 2} if strided else {"kernel_size": 3, "stride": 1}


def _conv_args(strided: tuple[bool, bool]) -> dict[str, tuple[int, int]]:
    rows, cols = _layer_shape(strided[0]), _layer_shape(strided[1])
    return {key: (rows[key], cols[key]) for key in ("kernel_size", "stride")} | {"padding": (1, 1)}


def _dcgan_init(module: nn.Module) -> None:
    """The paper's initialisation: every weight from ``N(0, 0.02)``; batch-norm scales from ``N(1, 0.02)``
    (the common reading for the scales, whose zero-centred draw would switch the features off), biases 0."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class MatrixGenerator(nn.Module):
    """``z`` ``[B, noise_dim]`` to matrices ``[B, H, W]``: project and reshape, batch norm and ReLU, then
    ``n_layers`` fractionally-strided convolutions (batch norm and ReLU after all but the last, which is
    linear), halving the channels from ``width * 2**(n_layers - 1)`` to ``width``, then one output channel.

    Args:
        noise_dim: width of ``z``.
        shape: ``(H, W)`` of the matrix.
        width: channels of the last hidden feature map.
        n_layers: transposed convolutions.
    """

    def __init__(self, noise_dim: int, shape: tuple[int, int], width: int, n_layers: int) -> None:
        super().__init__()
        if min(noise_dim, width, n_layers) < 1:
            raise ValueError(
                f"noise_dim, width and n_layers must be >= 1, got {noise_dim}, {width}, {n_layers}"
            )
        self.shape = (int(shape[0]), int(shape[1]))
        plans = [axis_plan(size, n_layers) for size in self.shape]
        self.seed = (plans[0][1], plans[1][1])
        channels = [width * 2 ** (n_layers - 1 - i) for i in range(n_layers)] + [1]
        layers: list[nn.Module] = [
            nn.Linear(noise_dim, channels[0] * self.seed[0] * self.seed[1], bias=False),
            nn.Unflatten(1, (channels[0], *self.seed)),
            nn.BatchNorm2d(channels[0]),
            nn.ReLU(),
        ]
        for i in range(n_layers):
            last = i == n_layers - 1
            strided = (i < plans[0][0], i < plans[1][0])
            layers.append(nn.ConvTranspose2d(channels[i], channels[i + 1], bias=last, **_conv_args(strided)))
            if not last:
                layers += [nn.BatchNorm2d(channels[i + 1]), nn.ReLU()]
        self.net = nn.Sequential(*layers)
        _dcgan_init(self)

    def forward(self, z: Tensor) -> Tensor:
        """Matrices ``[B, H, W]`` (the last map cropped to the matrix)."""
        return self.net(z)[:, 0, : self.shape[0], : self.shape[1]]


class MatrixDiscriminator(nn.Module):
    """Matrices ``[B, H, W]`` to one logit each: ``n_layers`` strided convolutions mirroring the generator's
    plan (channels ``width``, ``2 width``, ...), LeakyReLU 0.2 after each and batch norm after all but the
    first (the input layer), then the last feature map flattened into one linear output.

    Args:
        shape: ``(H, W)`` of the matrix.
        width: channels of the first feature map.
        n_layers: convolutions.
    """

    def __init__(self, shape: tuple[int, int], width: int, n_layers: int) -> None:
        super().__init__()
        if min(width, n_layers) < 1:
            raise ValueError(f"width and n_layers must be >= 1, got {width} and {n_layers}")
        self.shape = (int(shape[0]), int(shape[1]))
        doublings = [axis_plan(size, n_layers)[0] for size in self.shape]
        layers: list[nn.Module] = [nn.Unflatten(1, (1, self.shape[0]))]
        size = list(self.shape)
        channels = [1] + [width * 2**i for i in range(n_layers)]
        for j in range(n_layers):
            # mirror of the generator: its layer n_layers - 1 - j is strided along an axis iff j >= L - d
            strided = tuple(j >= n_layers - d for d in doublings)
            layers.append(nn.Conv2d(channels[j], channels[j + 1], bias=j == 0, **_conv_args(strided)))
            if j > 0:
                layers.append(nn.BatchNorm2d(channels[j + 1]))
            layers.append(nn.LeakyReLU(LEAK))
            size = [s // 2 if down else s for s, down in zip(size, strided, strict=True)]
        layers += [nn.Flatten(), nn.Linear(channels[-1] * size[0] * size[1], 1)]
        self.net = nn.Sequential(*layers)
        _dcgan_init(self)

    def forward(self, matrix: Tensor) -> Tensor:
        """Logits ``[B]`` (higher: more like the data)."""
        return self.net(matrix).squeeze(-1)


class CrystalDCGAN(CrystalGAN):
    """DCGAN on crystal matrices (see the module docstring): the GAN base's training loop (one discriminator
    step, then one generator step, manual optimisation) with the non-saturating loss and the convolutional
    networks of :class:`MatrixGenerator` and :class:`MatrixDiscriminator`.

    Args:
        optimizer: partial building each of the two optimisers (the paper's: Adam, lr 2e-4, betas (0.5,
            0.999)).
        num_types: K + 1 (from the fitted representation).
        max_atoms: N (from the fitted representation).
        noise_dim: width of ``z``, drawn uniform on ``[-1, 1]`` (the paper's 100).
        width: channels of the generator's last hidden map and of the discriminator's first map.
        n_layers: convolutions per network.
        hard_types: read the generator's linear output out as the data hold it (:meth:`discrete_readout`):
            straight-through one-hot elements and 0/1 occupancies, empty slots and unused entries zero;
            False: the raw linear output (the paper's network as it is).
        output: ``crystal`` (sample the codec's fields) or ``matrix`` (sample matrices; set by the
            crystal-matrix representation).
    """

    paper = (
        "Radford, Metz, Chintala (2016). Unsupervised Representation Learning with Deep Convolutional "
        "Generative Adversarial Networks. ICLR. arXiv:1511.06434"
    )

    def __init__(
        self,
        optimizer: OptimizerFactory,
        num_types: int,
        max_atoms: int,
        noise_dim: int = 100,
        width: int = 32,
        n_layers: int = 3,
        hard_types: bool = True,
        output: str = "crystal",
    ) -> None:
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        # Read by build_networks, which the base calls in __init__.
        self.layout = CrystalMatrixLayout(num_types, max_atoms)
        self.width = int(width)
        self.n_layers = int(n_layers)
        self.output = output
        super().__init__(
            None, optimizer, num_types, max_atoms, noise_dim=noise_dim, n_critic=1, loss="non_saturating",
            gp_weight=0.0, clip_value=None, site_noise=False, hard_types=hard_types,
        )

    # ------------------------------------------------------------------ networks
    def build_networks(self, backbone: Any) -> tuple[nn.Module, nn.Module]:
        """The convolutional generator and discriminator over the layout's ``(H, W)`` (no backbone)."""
        shape = self.layout.shape
        return (MatrixGenerator(self.noise_dim, shape, self.width, self.n_layers),
                MatrixDiscriminator(shape, self.width, self.n_layers))

    def matrix_of(self, batch: Mapping[str, Tensor]) -> Tensor:
        """The matrices ``[B, H, W]`` of a batch: its ``matrix``, or the codec's fields laid out."""
        if "matrix" in batch:
            return batch["matrix"].to(self.device, torch.float32)
        return self.layout.encode(batch["atom_types"], batch["frac_coords"], batch["lattice"])

    def real_fields(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """What the discriminator reads of a training batch: its matrices."""
        return {"matrix": self.matrix_of(batch)}

    def fake_like(self, real: Mapping[str, Tensor], condition: Tensor | None = None) -> dict[str, Tensor]:
        return self.generate(self._noise(real["matrix"].shape[0]), condition)

    def generate(self, noise: Mapping[str, Tensor], condition: Tensor | None = None) -> dict[str, Tensor]:
        """Matrices from the noise ``global`` ``[B, noise_dim]`` (with ``hard_types``, through
        :meth:`discrete_readout`); ``condition`` must be None."""
        raw = self.generator(self.generator_cond(noise["global"], condition))
        return {"matrix": self.discrete_readout(raw) if self.hard_types else raw}

    def discrete_readout(self, raw: Tensor) -> Tensor:
        """The generator's linear output ``[B, H, W]`` written as a data matrix: per site slot a one-hot of
        the softmax over the element rows and a 0/1 occupancy from the sigmoid of its occupancy entry, both
        straight-through (exact values forward, the softmax's and sigmoid's gradients backward; Bengio,
        Leonard & Courville 2013, arXiv:1308.3432); the element and coordinate entries of an empty slot, and
        the entries the layout leaves empty, are zero; coordinates and lattice stay linear.

        A real matrix's element and occupancy entries are exactly 0 or 1, so without this the discriminator
        separates any real-valued output from the data by those entries alone. Decoding reads the same
        crystal from ``raw`` (argmax of the element rows, occupancy logit above 0)."""
        layout = self.layout
        k, n = layout.num_elements, layout.max_atoms
        probs = torch.softmax(raw[:, :k, :n], dim=1)
        one_hot = nn.functional.one_hot(probs.argmax(dim=1), k).transpose(1, 2).to(probs.dtype)
        elements = one_hot + probs - probs.detach()
        prob = torch.sigmoid(raw[:, layout.occupancy_row, :n])
        filled = (prob > 0.5).to(prob.dtype)
        # The empty slots are zeroed by the hard 0/1 value, with no gradient through it: through the product,
        # emptying a slot would be the generator's cheapest way to hide a slot the discriminator dislikes (it
        # collapsed to empty cells within 300 steps on Perov-5 that way). The occupancy learns from its own
        # entry only.
        mask = filled.unsqueeze(1)
        out = torch.zeros_like(raw)
        out[:, :k, :n] = elements * mask
        out[:, layout.coords_rows, :n] = raw[:, layout.coords_rows, :n] * mask
        out[:, layout.occupancy_row, :n] = filled + prob - prob.detach()
        for row in (layout.lengths_row, layout.angles_row):
            out[:, row, :3] = raw[:, row, :3]
        return out

    def score(self, batch: Mapping[str, Tensor], condition: Tensor | None = None) -> Tensor:
        """Discriminator logits ``[B]`` of ``matrix``; ``condition`` must be None."""
        self.critic_cond(condition, batch["matrix"].shape[0])
        return self.critic(batch["matrix"])

    def _noise(self, size: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """``z`` uniform on ``[-1, 1]^noise_dim`` (the paper's noise)."""
        return {"global": 2.0 * self._rand((size, self.noise_dim), generator) - 1.0}

    # ------------------------------------------------------------------ the base's loop on matrix batches
    def _counted(self, batch: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
        """The batch with a ``lattice`` field, by which the base's loop counts a batch (a matrix batch holds
        it in its lattice rows)."""
        if "lattice" in batch:
            return batch
        return {**batch, "lattice": self.layout.lattice(batch["matrix"])}

    def loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return super().loss(self._counted(batch))

    def training_objectives(self, batch: Mapping[str, Tensor]) -> list[Tensor]:
        return super().training_objectives(self._counted(batch))

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        return super().training_step(self._counted(batch), batch_idx)

    # ------------------------------------------------------------------ sampling
    def _sample(self, n: int, generator: torch.Generator | None, condition: Any) -> dict[str, Tensor]:
        noise = self._noise(n, generator)
        matrix = self.generate(noise, self.sample_condition(n, generator, condition))["matrix"]
        return self.layout.to_fields(matrix)

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None = None, condition: Any = None
    ) -> dict[str, Tensor]:
        """``n`` crystals: ``{"matrix": [n, H, W]}`` when ``output="matrix"``, else the codec's fields read
        off the matrices. Batch norm uses its running statistics (eval mode), so a sample does not depend on
        the others drawn with it. ``condition`` must be None."""
        if self.output == "crystal":
            return super().sample(n, generator, condition)
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if condition is not None:
            raise ValueError(f"{type(self).__name__} is unconditional: pass condition=None")
        was_training = self.training
        self.eval()
        try:
            return {"matrix": self.generate(self._noise(n, generator))["matrix"].to(torch.float32)}
        finally:
            self.train(was_training)
