"""The sample stage: load a trained run, draw structures with a seeded generator, decode, write the samples
file; a conditional model may be sampled at requested property values (``+sample.condition.<column>=[...]``).
A composition model (``track: composition``) is sampled the same way into a file of formulas
(:mod:`bench.tracks`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig

from bench.conditioning import ConditionRequestError, condition_tag, requested_condition, split_counts
from bench.config import training_hash
from bench.records import peak_memory_mb
from bench.rundirs import find_trained_run, samples_path, sampling_hash
from bench.runtime import seed_everything, set_threads
from bench.tracks import check_track

__all__ = ["sample"]

log = logging.getLogger(__name__)


def sample(cfg: DictConfig) -> dict[str, Any]:
    """Sample ``cfg.sample.num_samples`` crystals from the trained run of ``cfg``; return the sample summary.

    The run is :func:`bench.rundirs.find_trained_run` (checked against ``cfg``'s training hash); the samples
    go to :func:`bench.rundirs.samples_path`, written by the run's track (:mod:`bench.tracks`: CIFs for
    crystals, formulas for compositions), one row per requested item.

    A conditional model (its class sets ``conditional = True``; trained with ``model.condition`` or
    ``representation.condition``) is sampled at requested property values, in the data's units::

        matgenbench sample model=cgan dataset=perov_5 '+sample.condition.heat_ref=[0.6,1.3,2.3]'
        matgenbench evaluate model=cgan dataset=perov_5 '+sample.condition.heat_ref=[0.6,1.3,2.3]'

    ``sample.num_samples`` is split evenly over the values (in order; the first ``n % k`` values get one
    more), the values are standardised with the run's fitted condition scaler and passed to
    ``module.sample(n, generator, condition=[n, C])``. Each structure's requested value is written to the
    samples file (column ``condition_heat_ref``; the values and their counts in its metadata), which is named
    after them (``samples+heat_ref=0.6,1.3,2.3.csv``; its sampling hash covers them), and ``evaluate`` with
    the same overrides scores it, ``cond_hit_rate`` included. A model conditioned on several columns takes
    a list per column, all of one length (the i-th values form the i-th target). Without the override a
    conditional model is sampled as it chooses (``condition=None``, e.g. conditions drawn from the training
    distribution), and scored by the usual suite.

    Raises:
        bench.tracks.TrackMismatchError: the model and the dataset belong to different tracks.
        bench.rundirs.RunMismatchError: ``paths.run_dir`` holds a run trained with another config.
        FileNotFoundError: no trained run for ``cfg``.
        bench.conditioning.ConditionRequestError: ``sample.condition`` for an unconditional model, for a
            column the model was not trained on (or without one it was), bad values, or fewer samples than
            values.
    """
    if int(cfg.sample.num_samples) < 1:
        raise ValueError(f"sample.num_samples={cfg.sample.num_samples}: zero samples give no result")
    track = check_track(cfg)  # a model of the other track is one line, before anything is loaded
    requested = requested_condition(cfg)  # bad values are refused before anything is loaded
    set_threads(cfg.threads)
    import torch
    from tqdm.auto import tqdm

    from bench.datasets.representation import DecodeFailure
    from bench.train import load_trained

    set_threads(cfg.threads)
    seed_everything(int(cfg.seed))
    run_dir = find_trained_run(cfg)
    module, codec, saved = load_trained(run_dir, cfg.model)
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.trainer.accelerator == "gpu" else "cpu")
    module.to(device)
    prepare_seconds = _prepare_sampler(cfg, module, codec, run_dir)
    n_total = int(cfg.sample.num_samples)
    batch_size = int(cfg.sample.batch_size)
    plan = None if requested is None else _ConditionPlan.build(requested, module, codec, saved, n_total)
    generator = torch.Generator(device=device).manual_seed(int(cfg.sample.seed))

    items: list[Any] = []
    start = time.perf_counter()
    with torch.no_grad(), tqdm(total=n_total, desc=f"sampling {saved.model.name}", unit=track.item) as bar:
        done = 0
        while done < n_total:
            n = min(batch_size, n_total - done)
            if plan is None:
                batch = module.sample(n, generator=generator)
            else:  # the standardised values of these n samples
                batch = module.sample(n, generator=generator, condition=plan.standardised[done:done + n])
            decoded = codec.decode({k: v.detach().cpu() for k, v in batch.items()})
            for j, item in enumerate(decoded):
                if not item and dataclasses.is_dataclass(item) and hasattr(item, "index"):
                    item = dataclasses.replace(item, index=done + j)  # keeps the reason and species
                items.append(item)
            done += n
            bar.update(n)
    if device.type == "cuda":
        torch.cuda.synchronize()
    sample_seconds = time.perf_counter() - start
    n_failed = sum(1 for it in items if isinstance(it, DecodeFailure))
    summary = {
        "model": saved.model.name,
        "family": saved.model.family,
        "variant": saved.model.variant,
        "num_samples": n_total,
        "n_decoded": n_total - n_failed,
        "sample_seed": int(cfg.sample.seed),
        "nfe": int(module.nfe),
        "sample_seconds": sample_seconds,
        "samples_per_second": n_total / sample_seconds if sample_seconds > 0 else None,
        "sample_peak_memory_mb": peak_memory_mb(),
        "device": str(device),
        "training_hash": training_hash(cfg),  # what evaluate checks the file against
        "sampling_hash": sampling_hash(cfg),
    }
    if prepare_seconds is not None:  # the one-off estimate on the training data, not in sample_seconds
        summary["sampler_prepare_seconds"] = prepare_seconds
        report = getattr(module.sampler, "report", None)
        if isinstance(report, dict) and report:  # what a sampler fitted or trained, and on what
            summary["sampler_report"] = report
    if callable(getattr(codec, "decode_settings", None)):  # the thresholds that made failures failures
        summary["decode"] = codec.decode_settings()
    if plan is not None:  # what each block of samples was asked for; a variant of its own on the board
        summary["condition"] = plan.values
        summary["condition_counts"] = plan.counts
        summary["variant"] = f"{summary['variant']}+{condition_tag(plan.values)}"
    path = track.write_samples(samples_path(cfg), items, meta=summary,
                               conditions=None if plan is None else plan.per_item)
    summary["path"] = str(path)
    log.info(
        "sampled %d %ss in %.1f s (%.1f/s); %d could not be decoded; written to %s",
        n_total, track.item, sample_seconds, summary["samples_per_second"] or 0.0, n_failed, path,
    )
    return summary


def _prepare_sampler(cfg: DictConfig, module: Any, codec: Any, run_dir: Any) -> float | None:
    """Give a sampler that reads the training data (``needs_data``: ``sampler=analytic_dpm``, ``sampler=dp``)
    its statistics: the run's training split, encoded by the run's fitted representation, goes to the model's
    ``prepare_sampler``, which caches them in ``<run_dir>/sampler_cache``. Returns the seconds it took, or
    None when the sampler needs nothing.

    Raises:
        ValueError: the model cannot prepare such a sampler (it has no ``prepare_sampler``).
    """
    from pathlib import Path

    from bench.tracks import check_track

    sampler = getattr(module, "sampler", None)
    if not getattr(sampler, "needs_data", False):
        return None
    if not callable(getattr(module, "prepare_sampler", None)):
        raise ValueError(
            f"sampler {type(sampler).__name__} needs statistics of the training data, which model "
            f"{cfg.model.get('name', '?')} ({type(module).__name__}) cannot provide: choose another sampler"
        )
    start = time.perf_counter()
    track = check_track(cfg)
    data = track.training_data(cfg, codec, fit=False, with_val=False)  # the run's fitted representation
    module.prepare_sampler(data.train, cache_dir=Path(run_dir) / "sampler_cache")
    seconds = time.perf_counter() - start
    log.info("%s prepared on %d training %ss in %.1f s", type(sampler).__name__, data.n_train, track.item,
             seconds)
    return seconds


@dataclasses.dataclass(frozen=True)
class _ConditionPlan:
    """Which value each of the ``n`` samples is drawn at.

    Attributes:
        values: the requested values by column, in the order of the model's condition columns.
        counts: how many samples each target (the i-th values of all columns) gets.
        per_item: by column, the requested value of every sample (targets in order, each repeated).
        standardised: ``[n, C]`` float32 tensor of ``per_item`` standardised with the run's fitted scaler.
    """

    values: dict[str, list[float]]
    counts: list[int]
    per_item: dict[str, list[float]]
    standardised: Any

    @classmethod
    def build(
        cls, requested: Mapping[str, list[float]], module: Any, codec: Any, saved: DictConfig, n: int
    ) -> _ConditionPlan:
        """Check ``requested`` against what the run was trained on and lay the values out over ``n`` samples.

        Raises:
            ConditionRequestError: one line naming the problem and the fix.
        """
        import numpy as np
        import torch

        name = saved.model.get("name", "?")
        trained = tuple(getattr(codec, "condition", ()) or ())
        if not trained or not getattr(module, "conditional", False):
            raise ConditionRequestError(
                f"model {name} is unconditional (trained without a condition), so it cannot be sampled at "
                f"{condition_tag(requested)}: leave out sample.condition"
            )
        unknown = [column for column in requested if column not in trained]
        if unknown:
            raise ConditionRequestError(
                f"sample.condition.{unknown[0]}: model {name} was trained on condition {list(trained)} only: "
                "ask for values of those columns"
            )
        missing = [column for column in trained if column not in requested]
        if missing:
            raise ConditionRequestError(
                f"model {name} is conditioned on {list(trained)}: give values for {missing} too "
                f"(+sample.condition.{missing[0]}=[...], as many as for the others)"
            )
        values = {column: list(requested[column]) for column in trained}
        k = len(values[trained[0]])
        if n < k:
            raise ConditionRequestError(
                f"sample.num_samples={n} is fewer than the {k} requested values: ask for at least one sample "
                "per value"
            )
        scaler = getattr(codec, "conditioner", None)
        if scaler is None or not callable(getattr(scaler, "transform", None)):
            raise ConditionRequestError(
                f"the run's representation ({type(codec).__name__}) has no fitted condition scaler "
                "(conditioner.transform) to standardise requested values with"
            )
        counts = split_counts(n, k)
        per_item = {column: [v for v, c in zip(vals, counts, strict=True) for _ in range(c)]
                    for column, vals in values.items()}
        standardised = scaler.transform({c: np.asarray(v) for c, v in per_item.items()}, n)
        targets = scaler.transform({c: np.asarray(v) for c, v in values.items()}, k)
        for j, column in enumerate(trained):
            far = [v for v, z in zip(values[column], targets[:, j], strict=True) if abs(float(z)) > 3.0]
            if far:
                log.warning("%s=%s: more than 3 training standard deviations from the training mean; the "
                            "model is asked to extrapolate", column, far)
        log.info("sampling at %s: %s samples per target", condition_tag(values), counts)
        return cls(values, counts, per_item, torch.from_numpy(standardised))
