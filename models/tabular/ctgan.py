"""CTGAN: a conditional Wasserstein GAN with gradient penalty and PacGAN over mode-specific normalised rows.

Xu, Skoularidou, Cuesta-Infante & Veeramachaneni (2019), "Modeling Tabular data using Conditional GAN",
NeurIPS, arXiv:1907.00503. What the paper sets out, and how it is done here:

- **Mode-specific normalisation** (section 4.2): the representation's
  (:class:`~bench.datasets.tabular_representation.ModeSpecificNormalizer`): per continuous column a scalar
  ``alpha`` and the one-hot ``beta`` of its mode.
- **Generator** (section 4.4): ``h0 = z + cond``, ``h1 = h0 + ReLU(BN(FC_256(h0)))``,
  ``h2 = h1 + ReLU(BN(FC_256(h1)))`` (``+`` concatenates: residual blocks that pass their input on), then
  per column ``alpha = tanh(FC(h2))`` and ``beta = gumbel_softmax_0.2(FC(h2))``; ``z ~ N(0, I_128)``.
- **Critic** (section 4.4) with PacGAN (Lin, Khetan, Fanti & Oh 2018, arXiv:1712.04086): ``pac = 10`` rows
  (each joined with its conditional vector) are concatenated and scored together, ``FC_256``, LeakyReLU
  0.2, dropout 0.5, twice, then ``FC_1``.
- **Loss**: WGAN-GP (Gulrajani et al. 2017, arXiv:1704.00028), the penalty ``10 E[(||grad D(x_hat)|| -
  1)^2]`` on interpolates of real and generated packs (one mixing weight per pack); one critic step per
  generator step; Adam, learning rate ``2e-4``, ``betas = (0.5, 0.9)`` (the released code adds weight decay
  ``1e-6``).
- **Conditional generator and training-by-sampling** (section 4.3): the conditional vector is the
  concatenation of one mask per *discrete* column; a step picks a discrete column uniformly, one of its
  categories with probability proportional to the log of its frequency, sets that entry, draws the real rows
  of the critic step among those with that category, and adds to the generator's loss the cross-entropy
  between the mask and the generated category of that column. Sampling draws conditional vectors with the
  categories' plain frequencies.

The composition tables have continuous columns only, so the paper's conditional vector is empty
(``conditional_columns: none``, the default): no conditional vector, no training-by-sampling, real rows drawn
uniformly (with replacement), and CTGAN is a PacGAN WGAN-GP on mode-specific normalised rows.
``conditional_columns: modes`` instead treats each continuous column's mode indicator ``beta`` as a discrete
column and applies the conditional machinery to it (the mode of an element's fraction says mostly whether
the element is present and at which level), which restores training-by-sampling over the rare modes; this is
an adaptation, not the paper's.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from bench.models.base import OptimizerFactory
from bench.models.tabular.base import TableModule
from torch import Tensor, nn

__all__ = ["CONDITIONAL_COLUMNS", "CTGAN", "PacCritic", "Residual", "ResidualGenerator"]

CONDITIONAL_COLUMNS = ("none", "modes")
"""What the conditional vector ranges over: ``none`` (no discrete column: the paper's CTGAN on an
all-continuous table) or ``modes`` (each column's mode indicator as a discrete column)."""


class Residual(nn.Module):
    """``x + ReLU(BN(FC(x)))``, ``+`` concatenating (the generator's block, section 4.4)."""

    def __init__(self, inputs: int, outputs: int) -> None:
        super().__init__()
        self.fc = nn.Linear(inputs, outputs)
        self.bn = nn.BatchNorm1d(outputs)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([F.relu(self.bn(self.fc(x))), x], dim=1)


class ResidualGenerator(nn.Module):
    """Residual blocks of the given widths, then a linear map to the row's ``D`` raw outputs."""

    def __init__(self, inputs: int, hidden: Sequence[int], outputs: int) -> None:
        super().__init__()
        blocks, width = [], inputs
        for h in hidden:
            blocks.append(Residual(width, int(h)))
            width += int(h)
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Linear(width, outputs)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.blocks(x))


class PacCritic(nn.Module):
    """Scores packs of ``pac`` rows: ``[B, W] -> [B / pac]`` (rows of one pack concatenated, section 4.4)."""

    def __init__(self, inputs: int, hidden: Sequence[int], pac: int, dropout: float) -> None:
        super().__init__()
        self.pac = int(pac)
        layers: list[nn.Module] = []
        width = inputs * self.pac
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.LeakyReLU(0.2), nn.Dropout(dropout)]
            width = int(h)
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def pack(self, x: Tensor) -> Tensor:
        """``[B, W] -> [B / pac, pac W]``.

        Raises:
            ValueError: ``B`` is not a multiple of ``pac``.
        """
        if x.shape[0] % self.pac:
            raise ValueError(
                f"a batch of {x.shape[0]} rows cannot be cut into packs of {self.pac}: use a "
                "train.batch_size that is a multiple of model.module.pac"
            )
        return x.reshape(x.shape[0] // self.pac, -1)

    def forward(self, packed: Tensor) -> Tensor:
        return self.net(packed).squeeze(-1)


class CTGAN(TableModule):
    """CTGAN (see the module docstring), trained by manual optimisation: per batch one critic step, then one
    generator step (Lightning counts both in ``global_step``).

    Args:
        optimizer: partial building each of the two optimisers (Adam, ``2e-4``, ``(0.5, 0.9)``).
        modes: the kept modes of each column (from the representation).
        noise_dim: width of ``z`` (128).
        generator_dims: widths of the generator's residual blocks (256, 256).
        critic_dims: widths of the critic's hidden layers (256, 256).
        pac: rows per pack of the critic (10).
        gp_weight: weight of the gradient penalty (10).
        tau: temperature of the Gumbel softmax of the mode spans while training (0.2).
        dropout: the critic's dropout (0.5).
        conditional_columns: :data:`CONDITIONAL_COLUMNS`.
    """

    family = "gan"
    paper = (
        "Xu, Skoularidou, Cuesta-Infante, Veeramachaneni (2019). Modeling Tabular data using Conditional "
        "GAN. NeurIPS. arXiv:1907.00503"
    )

    def __init__(
        self,
        optimizer: OptimizerFactory,
        modes: Sequence[int],
        noise_dim: int = 128,
        generator_dims: Sequence[int] = (256, 256),
        critic_dims: Sequence[int] = (256, 256),
        pac: int = 10,
        gp_weight: float = 10.0,
        tau: float = 0.2,
        dropout: float = 0.5,
        conditional_columns: str = "none",
    ) -> None:
        # plain values (a config's lists arrive as ListConfig), so checkpoints hold only plain hyperparameters
        modes, generator_dims, critic_dims = ([int(v) for v in x]
                                              for x in (modes, generator_dims, critic_dims))
        super().__init__(optimizer, modes)
        if conditional_columns not in CONDITIONAL_COLUMNS:
            raise ValueError(f"conditional_columns must be one of {CONDITIONAL_COLUMNS}, got "
                             f"{conditional_columns!r}")
        if pac < 1 or noise_dim < 1 or tau <= 0 or gp_weight < 0:
            raise ValueError("pac and noise_dim must be >= 1, tau > 0 and gp_weight >= 0")
        self._save_plain_hparams()
        self.automatic_optimization = False
        self.noise_dim = int(noise_dim)
        self.pac = int(pac)
        self.gp_weight = float(gp_weight)
        self.tau = float(tau)
        self.conditional_columns = conditional_columns
        self.cond_dim = sum(self.modes) if conditional_columns == "modes" else 0
        self.generator = ResidualGenerator(self.noise_dim + self.cond_dim, list(generator_dims), self.width)
        self.critic = PacCritic(self.width + self.cond_dim, list(critic_dims), self.pac, float(dropout))
        # how often each mode occurs in the encoded training rows (the conditional vector's frequencies)
        self.register_buffer("mode_counts", torch.zeros(sum(self.modes)))
        # training-by-sampling's index of the training rows (fit_data; not saved: sampling needs only counts)
        self.register_buffer("train_rows", None, persistent=False)
        self.register_buffer("flat_order", None, persistent=False)
        self.register_buffer("mode_start", None, persistent=False)

    # ------------------------------------------------------------------ data
    def fit_data(self, data: Mapping[str, Tensor]) -> None:
        """Count the modes of the training rows (kept in the checkpoint) and, for training-by-sampling,
        index the rows by the mode of each column."""
        rows = self.rows_of(data)
        self.mode_counts = torch.cat([rows[:, s:e].sum(dim=0) for s, e in self.mode_spans])
        if self.cond_dim:
            self.train_rows = rows
            modes = torch.stack([rows[:, s:e].argmax(dim=1) for s, e in self.mode_spans], dim=1)  # [N, C]
            n = len(rows)
            # per column the rows sorted by mode (column c occupies [c N, (c + 1) N) of flat_order), and where
            # each mode's rows start in it
            self.flat_order = torch.argsort(modes, dim=0, stable=True).T.reshape(-1)
            starts = []
            for c, k in enumerate(self.modes):
                counts = torch.bincount(modes[:, c], minlength=k)
                starts.append(c * n + torch.cumsum(counts, 0) - counts)
            self.mode_start = torch.cat(starts)  # [sum K]

    @property
    def _mode_offset(self) -> Tensor:
        """Where each column's modes start in the conditional vector ``[C]``."""
        return torch.tensor([0, *torch.cumsum(torch.tensor(self.modes), 0).tolist()[:-1]], device=self.device)

    def _draw_condition(self, n: int, log_frequency: bool, generator: torch.Generator | None
                        ) -> tuple[Tensor, Tensor, Tensor]:
        """Training-by-sampling's draw (section 4.3): a column uniformly, then one of its modes with
        probability proportional to ``log(1 + count)`` (``log_frequency``) or to its count.

        Returns:
            ``(cond [n, sum K] one-hot, column [n], mode index within the column [n])``.
        """
        n_columns = len(self.modes)
        columns = torch.floor(self._rand((n,), generator) * n_columns).long().clamp_max(n_columns - 1)
        weights = torch.log1p(self.mode_counts) if log_frequency else self.mode_counts
        offset = self._mode_offset
        chosen = torch.empty(n, dtype=torch.long, device=self.device)
        u = self._rand((n,), generator)
        for c, k in enumerate(self.modes):
            rows = columns == c
            if not rows.any():
                continue
            p = weights[offset[c]: offset[c] + k]
            cdf = torch.cumsum(p / p.sum(), 0)
            chosen[rows] = torch.searchsorted(cdf, u[rows].contiguous(), right=True).clamp_max(k - 1)
        cond = torch.zeros(n, self.cond_dim, device=self.device)
        cond[torch.arange(n, device=self.device), offset[columns] + chosen] = 1.0
        return cond, columns, chosen

    def _rows_with(self, columns: Tensor, chosen: Tensor) -> Tensor:
        """A training row for each (column, mode), uniformly among the rows whose column has that mode."""
        flat = self._mode_offset[columns] + chosen
        counts = self.mode_counts[flat]
        pick = torch.floor(torch.rand(len(flat), device=self.device) * counts).long()
        index = self.flat_order[self.mode_start[flat] + torch.minimum(pick, counts.long() - 1)]
        return self.train_rows[index]

    # ------------------------------------------------------------------ networks
    def activate(self, raw: Tensor, hard: bool = False) -> Tensor:
        """The generator's output layer: ``tanh`` on the scalars, a Gumbel softmax of temperature ``tau`` on
        each mode span (straight-through one-hot with ``hard``)."""
        parts = []
        for index, (start, end) in zip(self.alpha_index, self.mode_spans, strict=True):
            parts.append(torch.tanh(raw[:, index: index + 1]))
            parts.append(F.gumbel_softmax(raw[:, start:end], tau=self.tau, hard=hard))
        return torch.cat(parts, dim=1)

    def generate(self, n: int, cond: Tensor | None) -> Tensor:
        """Raw generator outputs ``[n, D]`` (before :meth:`activate`) from fresh noise."""
        z = torch.randn(n, self.noise_dim, device=self.device)
        return self.generator(z if cond is None else torch.cat([z, cond], dim=1))

    def score(self, rows: Tensor, cond: Tensor | None) -> Tensor:
        """Critic value per pack ``[B / pac]``."""
        x = rows if cond is None else torch.cat([rows, cond], dim=1)
        return self.critic(self.critic.pack(x))

    def gradient_penalty(self, real: Tensor, fake: Tensor) -> Tensor:
        """``E[(||grad D(x_hat)|| - 1)^2]`` over packs, ``x_hat`` a random mix of a real and a generated pack
        (inputs with their conditional vectors joined)."""
        real_p, fake_p = self.critic.pack(real), self.critic.pack(fake.detach())
        eps = torch.rand(real_p.shape[0], 1, device=self.device)
        mixed = (eps * real_p + (1.0 - eps) * fake_p).requires_grad_(True)
        (grad,) = torch.autograd.grad(self.critic(mixed).sum(), mixed, create_graph=True)
        return (grad.norm(dim=1) - 1.0).pow(2).mean()

    # ------------------------------------------------------------------ losses
    def _real_and_cond(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """The critic step's real rows, their conditional vectors and the generator's (permuted pairing as
        the released code: the generated rows are conditioned on ``c1``, the real rows drawn for ``c2``, a
        permutation of ``c1``)."""
        rows = self.rows_of(batch)
        if not self.cond_dim:
            return rows, None, None
        if self.train_rows is None:
            raise RuntimeError("CTGAN with conditional_columns=modes needs fit_data(training rows) first")
        cond, columns, chosen = self._draw_condition(len(rows), True, None)
        perm = torch.randperm(len(rows), device=self.device)
        real = self._rows_with(columns[perm], chosen[perm])
        return real, cond[perm], cond

    def critic_terms(self, batch: Mapping[str, Tensor], penalty: bool = True) -> dict[str, Tensor]:
        """The critic's loss ``E[D(fake)] - E[D(real)] + lambda GP`` and the Wasserstein estimate."""
        real, real_cond, fake_cond = self._real_and_cond(batch)
        with torch.no_grad():
            fake = self.activate(self.generate(len(real), fake_cond))
        real_in = real if real_cond is None else torch.cat([real, real_cond], dim=1)
        fake_in = fake if fake_cond is None else torch.cat([fake, fake_cond], dim=1)
        real_score = self.critic(self.critic.pack(real_in))
        fake_score = self.critic(self.critic.pack(fake_in))
        gap = real_score.mean() - fake_score.mean()
        gp = self.gradient_penalty(real_in, fake_in) if penalty and self.gp_weight > 0 else gap.new_zeros(())
        return {"critic": -gap + self.gp_weight * gp, "wasserstein": gap, "gp": gp}

    def generator_terms(self, size: int) -> dict[str, Tensor]:
        """The generator's loss ``-E[D(G(z, cond))]`` plus, with a conditional vector, the cross-entropy of
        the conditioned column's generated mode against the chosen one."""
        cond, columns, chosen = (None, None, None)
        if self.cond_dim:
            cond, columns, chosen = self._draw_condition(size, True, None)
        raw = self.generate(size, cond)
        adversarial = -self.score(self.activate(raw), cond).mean()
        if cond is None:
            return {"generator": adversarial, "cross_entropy": adversarial.new_zeros(())}
        ce = adversarial.new_zeros(())
        for c, (start, end) in enumerate(self.mode_spans):
            rows = columns == c
            if rows.any():
                ce = ce + F.cross_entropy(raw[rows, start:end], chosen[rows], reduction="sum")
        ce = ce / size
        return {"generator": adversarial + ce, "cross_entropy": ce}

    def loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Critic and generator terms for logging; ``loss`` is the critic objective (without the penalty under
        inference mode, where autograd is off)."""
        penalty = torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
        terms = self.critic_terms(batch, penalty=penalty)
        return {"loss": terms["critic"], **terms, **self.generator_terms(len(self.rows_of(batch)))}

    def training_objectives(self, batch: Mapping[str, Tensor]) -> list[Tensor]:
        """The critic objective (critic weights) and the generator loss (generator weights)."""
        size = len(self.rows_of(batch))
        return [self.critic_terms(batch)["critic"], self.generator_terms(size)["generator"]]

    # ------------------------------------------------------------------ Lightning
    def generator_parameters(self) -> Iterator[nn.Parameter]:
        return self.generator.parameters()

    def critic_parameters(self) -> Iterator[nn.Parameter]:
        return self.critic.parameters()

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        """One critic step, then one generator step."""
        opt_g, opt_c = self.optimizers()
        terms = self.critic_terms(batch)
        self.check_finite(terms["critic"], "critic")
        opt_c.zero_grad()
        self.manual_backward(terms["critic"])
        opt_c.step()
        gen = self.generator_terms(len(self.rows_of(batch)))
        self.check_finite(gen["generator"], "generator")
        opt_g.zero_grad()
        self.manual_backward(gen["generator"])
        opt_g.step()
        self._log_terms("train", {"loss": terms["critic"], **terms, **gen}, len(self.rows_of(batch)))
        return terms["critic"].detach()

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """Generator optimiser first, critic optimiser second, both from the same partial."""
        return [self.build_optimizer(list(self.generator_parameters())),
                self.build_optimizer(list(self.critic_parameters()))]

    def _sample(self, n: int, generator: torch.Generator | None, condition: Any) -> dict[str, Tensor]:
        """``z`` (and, with a conditional vector, a column and mode by their plain frequencies) from
        ``generator``; each mode span's entry is its logits plus Gumbel noise, whose argmax is a draw from the
        softmax (what the paper's Gumbel softmax becomes at sampling)."""
        z = self._randn((n, self.noise_dim), generator)
        if self.cond_dim:
            cond, _, _ = self._draw_condition(n, False, generator)
            z = torch.cat([z, cond], dim=1)
        raw = self.generator(z)
        out = raw.clone()
        index = list(self.alpha_index)
        out[:, index] = torch.tanh(raw[:, index])
        for start, end in self.mode_spans:
            out[:, start:end] = raw[:, start:end] + self.gumbel((n, end - start), generator)
        return {"rows": out}
