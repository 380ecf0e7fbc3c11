"""Reference rows: the ceiling and floor of every metric, scored by the same suite as the models.

- ``test``: structures of the reference (test) split, scored as if generated — what a perfect model of the
  test distribution would get (novelty is measured against the training split, so it stays high).
- ``copy``: structures of the training split — high fidelity and zero novelty: what memorisation looks like.
- ``random``: random crystals — lattice parameters drawn independently from the training marginals, positions
  uniform in the cell, the number of atoms and the elements drawn from the training frequencies. The floor.

Each is a seeded draw of ``sample.num_samples`` structures and is written as a record with
``kind="reference"``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from pymatgen.core import Lattice, Structure

from bench.records import ResultRecord
from bench.runtime import load_dataset_split, seed_everything
from bench.structures_io import SampleSet

__all__ = [
    "REFERENCE_KINDS", "crystal_reference", "reference_samples", "random_crystals", "score_reference",
]

log = logging.getLogger(__name__)

REFERENCE_KINDS = {
    "test": ("Test", "the reference split itself, scored as if generated"),
    "copy": ("Copy", "training structures, scored as if generated (memorisation)"),
    "random": ("Random", "random lattice, uniform positions, elements from training frequencies"),
}


def random_crystals(train: list[Structure], n: int, rng: np.random.Generator) -> list[Structure | None]:
    """``n`` random crystals whose statistics (cell parameters, atom count, elements) follow ``train``'s
    marginals.

    Lattice parameters ``a, b, c, alpha, beta, gamma`` are drawn independently from the empirical training
    values, so the cell may be impossible (``None`` with the reason logged) — as for a model that learnt the
    marginals only.
    """
    params = np.array([[*s.lattice.abc, *s.lattice.angles] for s in train])
    counts = np.array([len(s) for s in train])
    element_counts = Counter(site.specie.symbol for s in train for site in s)
    symbols = sorted(element_counts)
    weights = np.array([element_counts[e] for e in symbols], dtype=float)
    weights /= weights.sum()
    out: list[Structure | None] = []
    for _ in range(n):
        lat = [params[rng.integers(len(params)), j] for j in range(6)]
        n_atoms = int(counts[rng.integers(len(counts))])
        species = list(rng.choice(symbols, size=n_atoms, p=weights))
        coords = rng.random((n_atoms, 3))
        try:
            lattice = Lattice.from_parameters(*lat)
            if not np.isfinite(lattice.volume) or lattice.volume <= 0:
                raise ValueError("non-positive volume")
            out.append(Structure(lattice, species, coords))
        except Exception as err:  # impossible angle combinations: counted as not constructed
            log.debug("random crystal not constructed: %s", err)
            out.append(None)
    return out


def reference_samples(cfg: DictConfig, kind: str) -> SampleSet:
    """The structures of one reference row, a seeded draw of ``sample.num_samples`` items."""
    if kind not in REFERENCE_KINDS:
        raise ValueError(f"unknown reference {kind!r}; choose one of: {', '.join(REFERENCE_KINDS)}")
    n = int(cfg.sample.num_samples)
    rng = np.random.default_rng(int(cfg.seed))
    ds = cfg.dataset
    if kind == "test":
        pool = load_dataset_split(cfg, ds.eval_split, limit=ds.get("limit_eval"))
    else:
        pool = load_dataset_split(cfg, ds.train_split, limit=ds.get("limit_train"))
    if kind == "random":
        structures = random_crystals(pool.structures, n, rng)
        ids = [f"random-{i}" for i in range(n)]
    else:
        idx = rng.choice(len(pool.structures), size=min(n, len(pool.structures)), replace=False)
        structures = [pool.structures[i] for i in idx]
        ids = [pool.ids[i] for i in idx]
    reasons = [None if s is not None else "random cell parameters give no valid lattice" for s in structures]
    source = f"reference:{kind}:{ds.name}/{ds.eval_split if kind == 'test' else ds.train_split}"
    return SampleSet(list(structures), ids, reasons, source, {"reference": kind})


def score_reference(cfg: DictConfig) -> tuple[ResultRecord, Path | None]:
    """Score the reference row ``cfg.reference`` of ``cfg.dataset``'s track and write its record: test /
    copy / random crystals here, test / val / random formulas on the composition track
    (:func:`bench.composition_stages.score_reference`)."""
    from bench.tracks import track_of_dataset

    return track_of_dataset(cfg).reference(cfg)


def crystal_reference(cfg: DictConfig) -> tuple[ResultRecord, Path | None]:
    """Score the crystal reference row ``cfg.reference`` (test / copy / random) and write its record."""
    from bench.evaluate import score

    kind = cfg.get("reference")
    if kind not in REFERENCE_KINDS:
        raise ValueError(
            f"reference={kind}: choose one of {', '.join(REFERENCE_KINDS)} (e.g. reference=test)"
        )
    seed_everything(int(cfg.seed))
    start = time.perf_counter()
    sample_set = reference_samples(cfg, kind)
    name, description = REFERENCE_KINDS[kind]
    return score(
        cfg, sample_set, model=name, family="reference", variant=description, kind="reference",
        cost={"sample_seconds": time.perf_counter() - start}, started=start,
    )
