"""The sample stage: load a trained run, draw structures with a seeded generator, decode, write the samples file."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bench.records import peak_memory_mb
from bench.runtime import seed_everything, set_threads
from bench.structures_io import write_samples_csv

__all__ = ["sample", "samples_path", "sampler_override", "sampler_tag"]

log = logging.getLogger(__name__)


def _sampler_presets() -> dict[str, dict[str, Any]]:
    """``_target_ -> settings`` of the sampler presets shipped in ``conf/sampler/`` (read as YAML, no torch)."""
    from importlib import resources

    presets: dict[str, dict[str, Any]] = {}
    for entry in resources.files("bench.conf").joinpath("sampler").iterdir():
        if entry.name.endswith(".yaml"):
            node = OmegaConf.to_container(OmegaConf.create(entry.read_text(encoding="utf-8")), resolve=True)
            if isinstance(node, dict) and node.get("_target_"):
                presets[str(node["_target_"])] = node
    return presets


def sampler_tag(sampler: dict[str, Any]) -> str:
    """Short label of a sampler config for variant names, e.g. ``ddim-50`` or ``ddim-50-eta0.5``.

    The class name without ``Sampler``, the number of steps, and every other setting that differs from the
    class's preset in ``conf/sampler/``, so two sampler configs that sample differently never share a label.
    """
    target = str(sampler.get("_target_", "sampler"))
    parts = [target.rsplit(".", 1)[-1].removesuffix("Sampler").lower() or "sampler"]
    if sampler.get("steps") is not None:
        parts.append(str(sampler["steps"]))
    preset = _sampler_presets().get(target, {})
    for key in sorted(sampler):
        if key in ("_target_", "steps") or (key in preset and sampler[key] == preset[key]):
            continue
        parts.append(f"{key}{sampler[key]}")
    return "-".join(parts)


def sampler_override(model_cfg: DictConfig, trained_model: DictConfig) -> str | None:
    """:func:`sampler_tag` of ``model_cfg``'s sampler when it differs from the one the run trained with, else None."""
    if "sampler" not in model_cfg.get("module", {}) or "sampler" not in trained_model.get("module", {}):
        return None
    asked = OmegaConf.to_container(model_cfg.module.sampler, resolve=True)
    trained_with = OmegaConf.to_container(trained_model.module.sampler, resolve=True)
    return None if asked == trained_with else sampler_tag(asked)


def samples_path(cfg: DictConfig) -> Path:
    """Where the sample stage writes (and the evaluate stage reads by default): ``<run_dir>/samples.csv``, or
    ``<run_dir>/samples+<sampler tag>.csv`` when ``cfg`` samples the run with another sampler than its own, so
    the run's own samples are never overwritten."""
    run_dir = Path(cfg.paths.run_dir)
    saved = run_dir / "config.yaml"
    if saved.exists():
        tag = sampler_override(cfg.model, OmegaConf.load(saved).model)
        if tag is not None:
            return run_dir / f"samples+{tag}.csv"
    return run_dir / "samples.csv"


def sample(cfg: DictConfig) -> dict[str, Any]:
    """Sample ``cfg.sample.num_samples`` crystals from the run in ``cfg.paths.run_dir``; return the sample summary."""
    set_threads(cfg.threads)
    import torch
    from tqdm.auto import tqdm

    from bench.train import load_trained

    set_threads(cfg.threads)
    seed_everything(int(cfg.seed))
    module, codec, saved = load_trained(cfg.paths.run_dir, cfg.model)
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
                if not item and hasattr(item, "reason"):
                    item = type(item)(item.reason, done + j)
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
        "sample_seconds": sample_seconds,
        "samples_per_second": n_total / sample_seconds if sample_seconds > 0 else None,
        "sample_peak_memory_mb": peak_memory_mb(),
        "device": str(device),
    }
    path = write_samples_csv(samples_path(cfg), items, meta=summary)
    summary["path"] = str(path)
    log.info(
        "sampled %d crystals in %.1f s (%.1f/s); %d could not be decoded; written to %s",
        n_total, sample_seconds, summary["samples_per_second"] or 0.0, n_failed, path,
    )
    return summary
