"""Shared by the composition model tests: real mp_e_form formulas and a training loop on count matrices."""

from __future__ import annotations

from pathlib import Path

import torch
from bench.datasets.composition_representation import CompositionCounts


def real_training_formulas(data_dir: Path, n: int, seed: int = 0) -> list[str]:
    """``n`` distinct reduced formulas of mp_e_form's pinned training split that the count matrix encodes,
    from a seeded shuffle of the pinned file's rows: each row reduced and placed in its split by the pinned
    rule, as the loader and the split do, without reducing all 132,752 rows."""
    import pandas as pd
    from bench.datasets.composition_split import DEFAULT_FRACTIONS, DEFAULT_SEED, assignment_value
    from bench.datasets.compositions import normalise_formula, resolve_composition_file

    rows = pd.read_csv(resolve_composition_file("mp_e_form", data_dir=data_dir, download=False))["formula"]
    rep = CompositionCounts(levels=9)
    kept: dict[str, None] = {}
    for raw in rows.sample(frac=1.0, random_state=seed):
        formula = normalise_formula(raw)
        if assignment_value(formula, DEFAULT_SEED) < DEFAULT_FRACTIONS[0] and rep.can_encode(formula):
            kept[formula] = None
            if len(kept) == n:
                break
    return list(kept)


def pinned_split_counts(
    data_dir: Path, n_train: int = 3000, n_test: int = 500
) -> tuple[CompositionCounts, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A seeded draw of ``n_train`` encodable formulas of mp_e_form's pinned training split, the count matrix
    fitted on them, their encoding and that of the first ``n_test`` encodable test formulas."""
    from bench.datasets.composition_split import load_composition_split

    split = load_composition_split("mp_e_form", data_dir=data_dir, download=False)
    rep = CompositionCounts(levels=9)
    kept = [f for f in split.train if rep.can_encode(f)]
    pick = torch.randperm(len(kept), generator=torch.Generator().manual_seed(0))[:n_train]
    formulas = [kept[i] for i in pick.tolist()]
    rep.fit(formulas)
    test = [f for f in split.test if rep.can_encode(f)][:n_test]
    return rep, rep.encode(formulas), rep.encode(test)


def train_on_counts(
    model: torch.nn.Module,
    counts: torch.Tensor,
    steps: int,
    batch: int,
    *,
    torch_seed: int | None = None,
    eval_after: bool = False,
) -> list[float]:
    """The model's optimiser on seeded random minibatches of ``counts`` (``model.loss({"counts": ...})``);
    the loss of every step. ``torch_seed`` seeds torch's global generator first (for models that draw noise
    in their loss); ``eval_after`` leaves the model in eval mode."""
    optimizer = model.configure_optimizers()
    g = torch.Generator().manual_seed(0)
    if torch_seed is not None:
        torch.manual_seed(torch_seed)
    history = []
    for _ in range(steps):
        idx = torch.randint(0, len(counts), (batch,), generator=g)
        loss = model.loss({"counts": counts[idx]})["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(float(loss.detach()))
    if eval_after:
        model.eval()
    return history
