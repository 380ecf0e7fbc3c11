"""The sample stage: load a trained run, draw structures with a seeded generator, decode, write the samples
file."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from omegaconf import DictConfig

from bench.config import training_hash
from bench.records import peak_memory_mb
from bench.rundirs import find_trained_run, samples_path, sampling_hash
from bench.runtime import seed_everything, set_threads
from bench.structures_io import write_samples_csv

__all__ = ["sample"]

log = logging.getLogger(__name__)


def sample(cfg: DictConfig) -> dict[str, Any]:
    """Sample ``cfg.sample.num_samples`` crystals from the trained run of ``cfg``; return the sample summary.

    The run is :func:`bench.rundirs.find_trained_run` (checked against ``cfg``'s training hash); the samples
    go to :func:`bench.rundirs.samples_path`.

    Raises:
        bench.rundirs.RunMismatchError: ``paths.run_dir`` holds a run trained with another config.
        FileNotFoundError: no trained run for ``cfg``.
    """
    if int(cfg.sample.num_samples) < 1:
        raise ValueError(f"sample.num_samples={cfg.sample.num_samples}: zero samples give no result")
    set_threads(cfg.threads)
    import torch
    from tqdm.auto import tqdm

    from bench.train import load_trained

    set_threads(cfg.threads)
    seed_everything(int(cfg.seed))
    run_dir = find_trained_run(cfg)
    module, codec, saved = load_trained(run_dir, cfg.model)
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.trainer.accelerator == "gpu" else "cpu")
    module.to(device)
    n_total = int(cfg.sample.num_samples)
    batch_size = int(cfg.sample.batch_size)
    generator = torch.Generator(device=device).manual_seed(int(cfg.sample.seed))

    items: list[Any] = []
    start = time.perf_counter()
    with torch.no_grad(), tqdm(total=n_total, desc=f"sampling {saved.model.name}", unit="crystal") as bar:
        done = 0
        while done < n_total:
            n = min(batch_size, n_total - done)
            batch = module.sample(n, generator=generator)
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
    n_failed = sum(1 for it in items if not hasattr(it, "lattice"))
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
    if callable(getattr(codec, "decode_settings", None)):  # the thresholds that made failures failures
        summary["decode"] = codec.decode_settings()
    path = write_samples_csv(samples_path(cfg), items, meta=summary)
    summary["path"] = str(path)
    log.info(
        "sampled %d crystals in %.1f s (%.1f/s); %d could not be decoded; written to %s",
        n_total, sample_seconds, summary["samples_per_second"] or 0.0, n_failed, path,
    )
    return summary
