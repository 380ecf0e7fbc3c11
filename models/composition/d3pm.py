"""comp_d3pm: discrete diffusion (D3PM) on a composition's per-element count levels.

Austin, Johnson, Ho, Tarlow & van den Berg (2021), "Structured Denoising Diffusion Models in Discrete
State-Spaces", NeurIPS, arXiv:2107.03006. Each element's count level (``0`` absent, ``k`` atoms; the
``composition_counts`` representation) is a categorical variable diffused by the paper's Markov chain,
:class:`~bench.models.diffusion.processes.Categorical` (the crystal ``d3pm``'s process of the atom types):

- ``kind="absorbing"`` (default): each step sends a level to an extra [MASK] state with probability
  ``beta_t = 1 / (T - t + 1)`` (the mutual-information schedule of their section 3.4), so ``x_T`` is all
  [MASK] and a level, once unmasked in the reverse process, stays;
- ``kind="uniform"``: each step re-draws the level uniformly with the cosine schedule's ``beta_t``.

The network is x0-parameterised (section 3.3): from the noisy states of all ``E`` elements and the step ``t``
it emits the logits of ``p(x0 | x_t)`` per element, and the reverse step ``p(x_{t-1} | x_t)`` is the posterior
averaged over that prediction (their eq. 4). Two networks are offered: :class:`ElementMLP` (default: a
residual MLP over the flattened composition, which trains within the track's one-thread CPU budget) and
:class:`ElementTransformer` (a small pre-norm transformer over the element tokens, each with a learned element
embedding). Training minimises the hybrid loss ``L_vb + lambda L_CE`` (section 3.4) at a uniform step,
averaged over the elements. Sampling is ancestral from all [MASK] (or uniform levels), drawing at every step,
the last one included, optionally over a respaced subset of the steps (exact for this chain: the transition
between any two steps is in closed form).

Test likelihood (:meth:`CompositionD3PM.test_nll`): the negative variational bound of the ``T``-step model on
the ``E`` count levels, in nats per composition, ``L_T + sum_{t>=2} E_q KL(q(x_{t-1}|x_t,x0) ||
p(x_{t-1}|x_t)) + E_q[-log p(x0|x_1)]``, summed over the elements; ``L_T`` in closed form (0 for the default
schedule), the sum over steps estimated by stratified draws of ``t``. It bounds the NLL of the discrete
variable from above, so it is never negative.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from bench.models.base import Likelihood, OptimizerFactory
from bench.models.composition.counts import CountsModule
from bench.models.diffusion.processes import Categorical
from bench.models.diffusion.samplers import AncestralSampler
from bench.models.embeddings import timestep_embedding
from torch import Tensor, nn

__all__ = ["CompositionD3PM", "ElementMLP", "ElementTransformer"]


class ElementMLP(nn.Module):
    """x0-parameterised network: logits of ``p(x0 | x_t)`` ``[B, E, K]`` from states ``x_t`` ``[B, E, S]``,
    as an MLP over the whole flattened composition.

    The ``E x S`` one-hot states are flattened (the element order is fixed, so position is identity) and
    mapped to ``hidden`` units; ``n_blocks`` pre-norm residual blocks (layer norm, linear, SiLU, linear) each
    read the stream plus an embedding of the step (an MLP of its sinusoidal embedding, shared by the blocks);
    a final layer norm and a linear head give ``E x K`` logits.

    Args:
        num_elements: E.
        num_states: S, the chain's states (K levels, plus [MASK] for the absorbing chain).
        num_classes: K, the levels.
        hidden: width of the residual stream.
        n_blocks: residual blocks.
        time_dim: width of the sinusoidal step embedding.
    """

    def __init__(
        self, num_elements: int, num_states: int, num_classes: int, hidden: int = 512, n_blocks: int = 3,
        time_dim: int = 128,
    ) -> None:
        super().__init__()
        if n_blocks < 1:
            raise ValueError(f"n_blocks must be >= 1, got {n_blocks}")
        self.num_elements, self.num_classes = int(num_elements), int(num_classes)
        self.time_dim = int(time_dim)
        self.inp = nn.Linear(num_elements * num_states, hidden)
        self.time = nn.Sequential(nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden)
            )
            for _ in range(n_blocks)
        )
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, num_elements * num_classes)

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        """Logits ``[B, E, K]`` at steps ``t`` ``[B]``."""
        time = self.time(timestep_embedding(t, self.time_dim))
        h = self.inp(x_t.flatten(1))
        for block in self.blocks:
            h = h + block(h + time)
        return self.head(self.norm(h)).view(-1, self.num_elements, self.num_classes)


class ElementTransformer(nn.Module):
    """x0-parameterised network: logits of ``p(x0 | x_t)`` ``[B, E, K]`` from states ``x_t`` ``[B, E, S]``,
    as a transformer over the ``E`` element tokens.

    One token per element: a linear embedding of its one-hot state (``S`` states, [MASK] included), plus a
    learned embedding of the element (the elements are a fixed, ordered set), plus an MLP of the step's
    sinusoidal embedding; then pre-norm transformer blocks (self-attention over the elements, so every
    element's prediction reads the whole noisy composition), a final layer norm and a linear head over the
    ``K`` levels.

    Args:
        num_elements: E.
        num_states: S.
        num_classes: K.
        d_model: token width.
        n_layers: transformer blocks.
        n_heads: attention heads.
        dropout: dropout inside the blocks.
    """

    def __init__(
        self, num_elements: int, num_states: int, num_classes: int, d_model: int = 64, n_layers: int = 2,
        n_heads: int = 4, dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be a multiple of n_heads ({n_heads})")
        self.d_model = int(d_model)
        self.state = nn.Linear(num_states, d_model)
        self.element = nn.Parameter(0.02 * torch.randn(num_elements, d_model))
        self.time = nn.Sequential(nn.Linear(d_model, d_model), nn.SiLU(), nn.Linear(d_model, d_model))
        layer = nn.TransformerEncoderLayer(
            d_model, n_heads, 4 * d_model, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        """Logits ``[B, E, K]`` at steps ``t`` ``[B]``."""
        time = self.time(timestep_embedding(t, self.d_model)).unsqueeze(1)
        h = self.state(x_t) + self.element + time
        return self.head(self.norm(self.blocks(h)))


class CompositionD3PM(CountsModule):
    """D3PM over the ``E`` per-element count levels (see the module docstring).

    Args:
        optimizer: partial building the optimiser.
        num_elements: E (the representation's ``sizes()``).
        num_levels: L = K, count levels per element, level 0 meaning absent.
        process: the :class:`~bench.models.diffusion.processes.Categorical` chain (kind, schedule, ``T``,
            ``lambda`` of the hybrid loss).
        denoiser: partial of the x0 network, called with ``num_elements``, ``num_states`` and ``num_classes``
            (:class:`ElementMLP` or :class:`ElementTransformer`).
        sampler: an ancestral sampler (:class:`~bench.models.diffusion.samplers.AncestralSampler` or a
            subclass): its ``steps`` respace the reverse chain; one that sets ``final_noise`` (the ``pc``
            sampler with ``step_lr: 0``, the configured one) draws ``x_0`` from ``p(x0 | x_1)`` instead of
            taking its mode.
    """

    family = "diffusion"
    paper = (
        "Austin, Johnson, Ho, Tarlow, van den Berg (2021). "
        "Structured Denoising Diffusion Models in Discrete State-Spaces. NeurIPS. arXiv:2107.03006"
    )
    likelihood = Likelihood(
        "upper_bound",
        "vlb",
        "negative variational bound of the T-step D3PM on the E count levels, summed over the elements: "
        "closed-form L_T (0 for the absorbing chain's mutual-information schedule), the KL terms of the "
        "x0-parameterised reverse steps and the t = 1 reconstruction -log p(x0 | x_1), the sum over steps "
        "estimated with one t per stratum of 1..T (strata = draws, each term weighted by its stratum's "
        "size), x_t drawn from q(x_t | x0)",
    )

    def __init__(
        self,
        optimizer: OptimizerFactory,
        num_elements: int,
        num_levels: int,
        process: Categorical,
        denoiser: Callable[..., nn.Module],
        sampler: AncestralSampler,
    ) -> None:
        super().__init__(optimizer, num_elements, num_levels)
        if not isinstance(process, Categorical):
            raise TypeError(f"process must be a Categorical chain (D3PM), got {type(process).__name__}")
        if not isinstance(sampler, AncestralSampler):
            raise TypeError(
                f"comp_d3pm samples ancestrally: sampler must be an AncestralSampler (e.g. sampler=pc with "
                f"step_lr: 0), got {type(sampler).__name__}"
            )
        self._save_plain_hparams(ignore=["process", "denoiser"])
        self.process = process
        self.sampler = sampler
        self.num_states = process.num_states(num_levels)
        self.net = denoiser(num_elements=num_elements, num_states=self.num_states, num_classes=num_levels)

    @property
    def timesteps(self) -> int:
        """T."""
        return self.process.timesteps

    @property
    def nfe(self) -> int:
        """Network evaluations per sample: one per visited reverse step."""
        return self.sampler.nfe(self.timesteps)

    # ------------------------------------------------------------------ training
    def states_of(self, batch: Mapping[str, Tensor]) -> Tensor:
        """The chain's one-hot states ``[B, E, S]`` of a batch's levels (a zero [MASK] channel appended for
        the absorbing chain)."""
        return self.process.states(self.counts_of(batch))

    def predict(self, x_t: Tensor, t: Tensor) -> Tensor:
        """The network's logits of ``p(x0 | x_t)`` ``[B, E, K]``."""
        return self.net(x_t, t)

    def loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The hybrid loss ``L_vb + lambda L_CE`` at one uniform step per composition, averaged over the
        elements (``loss``), its terms ``vb`` and ``ce`` (nats per element), and ``nll_bound``: the
        single-step estimate of the bound, ``L_T + T sum_e vb``, in nats per composition."""
        x0 = self.states_of(batch)
        t = torch.randint(1, self.timesteps + 1, (x0.shape[0],), device=self.device)
        x_t = self.process.q_sample(x0, t, torch.randn_like(x0))
        terms = self.process.loss(self.predict(x_t, t), x0, x_t, t)
        bound = self.process.prior_kl(x0).sum(-1).to(x0.dtype) + self.timesteps * terms["vb"].sum(-1)
        return {
            "loss": terms["loss"].mean(),
            "vb": terms["vb"].mean(),
            "ce": terms["ce"].mean(),
            "nll_bound": bound.mean(),
        }

    # ------------------------------------------------------------------ sampling
    def _sample(self, n: int, generator: torch.Generator | None, condition: Any) -> dict[str, Tensor]:
        shape = (n, self.num_elements, self.num_states)
        x_T = {"counts": self.process.prior(shape, generator, self.device)}

        def predictor(x: Mapping[str, Tensor], t: Tensor) -> dict[str, Tensor]:
            return {"counts": self.predict(x["counts"], t)}

        def noise() -> dict[str, Tensor]:
            return {"counts": self._randn(shape, generator)}

        x0 = self.sampler(predictor, {"counts": self.process}, x_T, self.timesteps, noise)
        return {"counts": self.process.decode(x0["counts"])}

    # ------------------------------------------------------------------ likelihood of held-out data
    def fit_likelihood(
        self, data: Mapping[str, Tensor], generator: torch.Generator | None = None
    ) -> dict[str, Any]:
        """Nothing to fit: returns the settings that define the bound, to be recorded with it."""
        return {
            "vlb_timesteps": self.timesteps,
            "vlb_kind": self.process.kind,
            "vlb_schedule": self.process.schedule,
            "vlb_steps": "L_T in closed form; one t per stratum of 1..T (draws strata), weighted by its size",
        }

    def _step_terms(self, x0: Tensor, t: Tensor, generator: torch.Generator | None) -> Tensor:
        """``sum_e vb_t`` per composition ``[B]`` (float64) at steps ``t``; ``x_t`` drawn from
        ``generator``."""
        x_t = self.process.q_sample(x0, t, self._randn(x0.shape, generator))
        return self.process.loss(self.predict(x_t, t), x0, x_t, t)["vb"].double().sum(-1)

    @torch.no_grad()
    def test_nll(
        self, batch: Mapping[str, Tensor], draws: int = 1, generator: torch.Generator | None = None,
        every_step: bool = False,
    ) -> Tensor:
        """``[B]`` nats per composition: the negative variational bound of the ``T``-step chain, an upper
        bound on ``-log p`` of the count levels.

        ``L_T`` is exact; the sum of the ``T`` step terms is estimated without bias by stratified sampling:
        ``1..T`` is cut into ``draws`` strata of (nearly) equal size, one ``t`` is drawn uniformly in each,
        and its term counts as many times as its stratum has steps (``draws = 1``: ``T`` times one uniform
        step). ``every_step``: every term, ``T`` network evaluations, one ``x_t`` per step. Each term's
        ``x_t`` is one draw from ``q(x_t | x0)``. Every random number comes from ``generator``; call it in
        eval mode.
        """
        if draws < 1:
            raise ValueError(f"draws must be >= 1, got {draws}")
        x0 = self.states_of(batch)
        size, steps = x0.shape[0], self.timesteps
        total = self.process.prior_kl(x0).sum(-1)
        if every_step:
            for step in range(1, steps + 1):
                t = torch.full((size,), step, dtype=torch.long, device=self.device)
                total = total + self._step_terms(x0, t, generator)
            return total
        edges = [round(i * steps / draws) for i in range(draws + 1)]
        for low, high in zip(edges[:-1], edges[1:], strict=True):
            if high == low:
                continue
            offset = _randint(high - low, size, generator).to(self.device)
            total = total + (high - low) * self._step_terms(x0, low + 1 + offset, generator)
        return total


def _randint(high: int, size: int, generator: torch.Generator | None) -> Tensor:
    """``size`` integers uniform in ``0..high-1`` from ``generator`` (on its device)."""
    if generator is None:
        return torch.randint(0, high, (size,))
    return torch.randint(0, high, (size,), generator=generator, device=generator.device)
