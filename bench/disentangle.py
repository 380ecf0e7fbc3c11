"""``matgenbench disentangle RUN_DIR``: how disentangled a trained VAE-family run's latent is (MIG).

The beta family (beta-VAE, beta-TCVAE, FactorVAE, JointVAE, and CDVAE as their beta = 1 baseline) exists to
disentangle, which no sample-quality metric sees. This encodes held-out crystals with the run's encoder and
scores the latent against factors known from each structure (:mod:`bench.crystal_factors`) with the Mutual
Information Gap of Chen et al. (2018) (:mod:`bench.mig`), and writes ``<run_dir>/disentanglement.json``.

What is scored, per latent (:func:`latent_codes`):

- a Gaussian latent (vae, cdvae, beta_vae, cvae, vae_gan; beta-TCVAE's and FactorVAE's): the posterior mean;
- JointVAE's: the mean of its Gaussian part, and each categorical code (the argmax of its logits, as the model
  reads it at evaluation) as one more, discrete, dimension;
- VQ-VAE's: the encoder's outputs before quantisation (``M d`` coordinates, one dimension each).

For a Gaussian latent the score is given twice: on the posterior mean (the common estimator, the headline
``mig``), and on one draw ``z = mu + sigma eps`` per crystal (``posterior_draw``), which is the paper's
``I(z_j; v_k)`` under ``q(z_j | x)``. They differ where a dimension has collapsed to the prior: its mean still
varies a little from crystal to crystal, and equal-width bins over that tiny range can read a factor from it,
but the decoder reads it through noise of scale ``sigma ~ 1`` and the draw carries next to nothing.

Models with no encoder to a latent (diffusion, flows, GANs...) are refused.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ACTIVE_UNIT_THRESHOLD", "LatentCodes", "has_encoder", "latent_codes", "main", "score_latents"]

ACTIVE_UNIT_THRESHOLD = 0.01
"""A Gaussian dimension is active when the variance of its posterior mean over the crystals exceeds this
(Burda, Grosse & Salakhutdinov 2016, "Importance Weighted Autoencoders", ICLR, section 5.2). An inactive
dimension still gets equal-width bins over its tiny range, so its mutual information is read with that in
mind."""


@dataclass
class LatentCodes:
    """The latent of a batch of crystals as scored.

    Attributes:
        continuous: ``[n, Dc]`` continuous dimensions (binned before scoring): a posterior mean, or the
            encoder's outputs.
        discrete: ``[n, Dd]`` discrete dimensions (category indices, scored as they are).
        kind: one line: which part of the latent this is.
        std: ``[n, Dc]`` posterior standard deviations when ``continuous`` is a Gaussian posterior mean, else
            None.
    """

    continuous: np.ndarray
    discrete: np.ndarray
    kind: str
    std: np.ndarray | None = None

    @property
    def names(self) -> list[str]:
        """``z0, z1, ...`` then ``c0, c1, ...`` for the discrete dimensions."""
        continuous, discrete = self.continuous.shape[1], self.discrete.shape[1]
        return [f"z{j}" for j in range(continuous)] + [f"c{j}" for j in range(discrete)]


def has_encoder(module: Any) -> bool:
    """Whether ``module`` encodes a crystal to a latent (the VAE family's ``posterior_params``)."""
    return callable(getattr(module, "posterior_params", None))


def _posterior_params(module: Any, batch: Mapping[str, Any]) -> Any:
    from bench.models.periodic_base import PeriodicCrystalModule

    if isinstance(module, PeriodicCrystalModule):  # CDVAE and its variants read the model's own fields
        return module.posterior_params(*module.data_fields(batch))
    return module.posterior_params(batch)


def latent_codes(module: Any, batch: Mapping[str, Any]) -> LatentCodes:
    """The scored latent of an encoded ``batch`` (see the module docstring), without gradients.

    Raises:
        TypeError: the module has no encoder, or a latent object this function does not know.
    """
    import torch

    from bench.models.vae.latents import DiagonalGaussian, JointLatent
    from bench.models.vae.vq import VQLatent

    if not has_encoder(module):
        raise TypeError(f"{type(module).__name__} has no encoder to a latent")
    latent = getattr(module, "latent", None)
    with torch.no_grad():
        params = _posterior_params(module, batch).double()
    empty = np.zeros((params.shape[0], 0), dtype=np.int64)

    def numpy(x: Any) -> np.ndarray:
        return x.cpu().numpy()

    if latent is None:
        mu, logvar = params.chunk(2, dim=-1)
        std = torch.exp(0.5 * logvar.clamp(-10.0, 10.0))  # as the model's encode()
        return LatentCodes(numpy(mu), empty, f"Gaussian posterior mean ({mu.shape[1]} dims)", numpy(std))
    if isinstance(latent, JointLatent):
        mu, logvar, logits = latent.split(params)
        codes = torch.stack([x.argmax(dim=-1) for x in logits], dim=-1)
        kind = (f"JointVAE: Gaussian posterior mean ({mu.shape[1]} dims) and {len(logits)} categorical "
                f"code(s) ({', '.join(str(k) for k in latent.codes)} categories; argmax)")
        return LatentCodes(numpy(mu), numpy(codes).astype(np.int64), kind, numpy(torch.exp(0.5 * logvar)))
    if isinstance(latent, DiagonalGaussian):
        mu, logvar = latent.split(params)
        kind = f"{type(latent).__name__}: Gaussian posterior mean ({mu.shape[1]} dims)"
        return LatentCodes(numpy(mu), empty, kind, numpy(torch.exp(0.5 * logvar)))
    if isinstance(latent, VQLatent):
        kind = (f"VQ-VAE: encoder outputs before quantisation ({latent.groups} groups x {latent.code_dim} = "
                f"{params.shape[1]} dims)")
        return LatentCodes(numpy(params), empty, kind)
    raise TypeError(f"no MIG reading of the latent {type(latent).__name__}")


def _gaps(continuous: np.ndarray, codes: LatentCodes, labels: np.ndarray, factor_names: list[str],
          bins: int) -> dict[str, Any]:
    """MIG, its per-factor rows and the mutual information matrix of the continuous values ``continuous``
    (binned) beside the discrete dimensions of ``codes``."""
    from bench.mig import (
        discrete_entropy,
        discretise,
        independence_bias,
        mutual_information_gap,
        mutual_information_matrix,
    )

    binned = np.concatenate([discretise(continuous, bins), codes.discrete], axis=1) \
        if continuous.shape[1] else codes.discrete
    mi = mutual_information_matrix(binned, labels)
    entropies = np.array([discrete_entropy(labels[:, k]) for k in range(labels.shape[1])])
    mig, rows = mutual_information_gap(mi, entropies, factor_names)
    names = codes.names
    factors = []
    for k, row in enumerate(rows):
        values = len(np.unique(labels[:, k].astype(str)))
        used = len(np.unique(binned[:, row.best_dim]))
        factors.append({
            **row.as_dict(), "best_dim": names[row.best_dim], "second_dim": names[row.second_dim],
            "values": values, "independence_bias": independence_bias(used, values, labels.shape[0]),
        })
    return {"mig": mig, "factors": factors,
            "mutual_information": {"dims": names, "factors": factor_names, "nats": mi.tolist()}}


def score_latents(
    codes: LatentCodes, labels: np.ndarray, factor_names: list[str], bins: int, seed: int = 0
) -> dict[str, Any]:
    """MIG and its per-factor rows for latents ``codes`` and factor ``labels`` ``[n, K]``.

    Returns:
        ``mig``, ``factors`` (one dict per factor: the :class:`~bench.mig.FactorGap` fields with dimension
        names, the factor's number of values and the plug-in bias of an independent dimension),
        ``mutual_information`` (the ``[D, K]`` matrix in nats) and ``latent`` (dimensions, and for a Gaussian
        latent their activity), all of the posterior mean. For a Gaussian latent also ``posterior_draw``: the
        same of one draw ``z = mu + sigma eps`` per crystal (``eps`` from ``seed``), which reads
        ``I(z_j; v_k)`` under ``q(z_j | x)`` as the paper defines it: a dimension whose mean varies little
        against its posterior spread (a collapsed one) scores near 0 there, however finely its mean is binned.
    """
    out = _gaps(codes.continuous, codes, labels, factor_names, bins)
    latent: dict[str, Any] = {
        "kind": codes.kind, "continuous_dims": int(codes.continuous.shape[1]),
        "discrete_dims": int(codes.discrete.shape[1]),
    }
    out["latent"] = latent
    if codes.std is not None:
        variance = codes.continuous.var(axis=0)
        latent["active_dims"] = int((variance > ACTIVE_UNIT_THRESHOLD).sum())
        latent["active_threshold"] = ACTIVE_UNIT_THRESHOLD
        latent["mean_variance"] = [float(v) for v in variance]
        latent["mean_posterior_std"] = [float(v) for v in codes.std.mean(axis=0)]
        noise = np.random.default_rng(seed).standard_normal(codes.continuous.shape)
        draw = codes.continuous + codes.std * noise
        out["posterior_draw"] = {"seed": seed, **_gaps(draw, codes, labels, factor_names, bins)}
    return out


def _encode_all(module: Any, codec: Any, structures: list[Any], properties: Mapping[str, np.ndarray] | None,
                batch_size: int) -> LatentCodes:
    import torch

    parts = []
    for start in range(0, len(structures), batch_size):
        chunk = structures[start:start + batch_size]
        props = None
        if properties is not None:
            props = {k: v[start:start + batch_size] for k, v in properties.items()}
        encoded = codec.encode(chunk, props)
        batch = {k: torch.as_tensor(v) for k, v in encoded.items() if hasattr(v, "shape")}
        parts.append(latent_codes(module, batch))
    continuous = np.concatenate([p.continuous for p in parts])
    discrete = np.concatenate([p.discrete for p in parts])
    std = None if parts[0].std is None else np.concatenate([p.std for p in parts])  # type: ignore[misc]
    return LatentCodes(continuous, discrete, parts[0].kind, std)


def _table(scores: Mapping[str, Any], mean_variance: list[float] | None) -> str:
    """The per-factor rows of ``scores`` (``factors`` of :func:`score_latents` or of its
    ``posterior_draw``), the best dimension flagged when it is inactive."""
    lines = [f"  {'factor':<18} {'H(v)':>6} {'best':>5} {'I(best)':>8} {'2nd':>5} {'I(2nd)':>8} {'gap/H':>7} "
             f"{'bias':>6}"]
    for row in scores["factors"]:
        flag = ""
        if mean_variance is not None and row["best_dim"].startswith("z") \
                and mean_variance[int(row["best_dim"][1:])] <= ACTIVE_UNIT_THRESHOLD:
            flag = "  (best dim inactive)"
        lines.append(f"  {row['factor']:<18} {row['entropy']:6.3f} {row['best_dim']:>5} "
                     f"{row['best_mi']:8.4f} {row['second_dim']:>5} {row['second_mi']:8.4f} "
                     f"{row['gap']:7.4f} {row['independence_bias']:6.4f}{flag}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``matgenbench disentangle RUN_DIR [--split test] [--limit N] [--bins 20] [--factors NAME] ...``."""
    from bench.crystal_factors import DATASET_FACTORS, FACTOR_SETS

    parser = argparse.ArgumentParser(
        prog="matgenbench disentangle",
        description="Score a trained VAE-family run's latent against ground-truth factors of held-out "
                    "crystals with the Mutual Information Gap (Chen et al. 2018); writes "
                    "RUN_DIR/disentanglement.json.",
    )
    parser.add_argument("run_dir", help="a run folder written by matgenbench train/run")
    parser.add_argument("--split", default="test", help="the dataset split to encode (default: test)")
    parser.add_argument("--limit", type=int, default=None,
                        help="the first N crystals of the split (default: all)")
    parser.add_argument("--bins", type=int, default=20,
                        help="equal-width bins per continuous latent dimension (default: 20)")
    parser.add_argument("--factors", default=None, choices=sorted(FACTOR_SETS),
                        help="the factor set (default: the dataset's own; perov_5: perovskite)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--data-dir", default=os.environ.get("MATGENBENCH_DATA_DIR"),
                        help="local data folder (default: $MATGENBENCH_DATA_DIR, else the run's own setting)")
    args = parser.parse_args(argv)
    if args.bins < 2:
        parser.error(f"--bins must be >= 2, got {args.bins}")

    from bench.io_utils import atomic_write_json
    from bench.runtime import load_dataset_split
    from bench.train import load_trained

    run_dir = Path(args.run_dir)
    try:
        module, codec, saved = load_trained(run_dir)
    except FileNotFoundError as err:
        print(f"matgenbench disentangle: {err}", file=sys.stderr)
        return 2
    if not has_encoder(module):
        print(f"matgenbench disentangle: {run_dir} is a {type(module).__name__}, which has no encoder to a "
              "latent: MIG scores a VAE-family run (e.g. model=beta_vae)", file=sys.stderr)
        return 2
    dataset = str(saved.dataset.name)
    factor_set = args.factors or DATASET_FACTORS.get(dataset)
    if factor_set is None:
        print(f"matgenbench disentangle: no ground-truth factors are defined for dataset {dataset} (defined "
              f"for: {', '.join(sorted(DATASET_FACTORS))}; --factors NAME asks for a set by name)",
              file=sys.stderr)
        return 2
    if args.data_dir:
        saved.paths.data_dir = args.data_dir
    from bench.datasets import DatasetUnavailableError

    try:
        split = load_dataset_split(saved, args.split, limit=args.limit)
    except (DatasetUnavailableError, ValueError) as err:
        print(f"matgenbench disentangle: {err}", file=sys.stderr)
        return 2
    encodable = [i for i, s in enumerate(split.structures) if codec.can_encode(s)]
    table = FACTOR_SETS[factor_set]([split.structures[i] for i in encodable])
    keep = [encodable[i] for i in table.kept]
    left_out = dict(table.left_out)
    if len(encodable) < len(split.structures):
        left_out["the run's representation cannot encode it"] = len(split.structures) - len(encodable)
    if len(keep) < 2:
        print(f"matgenbench disentangle: {len(keep)} of the {len(split.structures)} structures of "
              f"{dataset}/{args.split} have {factor_set} factors and can be encoded; need at least 2",
              file=sys.stderr)
        return 2
    properties = {k: np.asarray(v)[keep] for k, v in split.properties.items()} if split.properties else None
    codes = _encode_all(module, codec, [split.structures[i] for i in keep], properties, args.batch_size)
    result = score_latents(codes, table.labels, table.names, args.bins)
    for row, description in zip(result["factors"], table.descriptions, strict=True):
        row["description"] = description
    result.update({
        "metric": "mig",
        "reference": "Chen, Li, Grosse, Duvenaud (2018). Isolating Sources of Disentanglement in Variational "
                     "Autoencoders. NeurIPS. arXiv:1802.04942, section 5",
        "estimator": {
            "bins": args.bins,
            "binning": "equal-width bins over each continuous dimension's range on the scored crystals; "
                       "discrete dimensions as they are",
            "mutual_information": "plug-in (exact on the joint histogram), nats",
            "independence_bias": "(values of the best dimension - 1)(values of the factor - 1) / (2 n) nats: "
                                 "the expected plug-in MI of an independent dimension",
            "posterior_draw": "Gaussian latents: the same, on one draw z = mu + sigma eps per crystal",
        },
        "run": run_dir.name, "model": str(saved.model.name), "variant": str(saved.model.get("variant", "")),
        "dataset": dataset, "split": args.split, "limit": args.limit, "factor_set": factor_set,
        "n_structures": len(split.structures), "n_scored": len(keep), "left_out": left_out,
        "factor_details": table.details,
    })
    path = atomic_write_json(run_dir / "disentanglement.json", result)
    latent = result["latent"]
    variance = latent.get("mean_variance")
    active = f", {latent['active_dims']} of them active" if "active_dims" in latent else ""
    print(f"{run_dir.name}: MIG = {result['mig']:.4f} on {len(keep)} {dataset}/{args.split} crystals "
          f"({factor_set} factors; {args.bins} equal-width bins per dimension; nats)")
    print(f"latent: {latent['kind']}{active}")
    if left_out:
        print("left out: " + "; ".join(f"{n} ({reason})" for reason, n in left_out.items()))
    print(_table(result, variance))
    if "posterior_draw" in result:
        draw = result["posterior_draw"]
        print(f"one posterior draw z = mu + sigma eps per crystal (I(z_j; v) under q(z_j | x)): "
              f"MIG = {draw['mig']:.4f}")
        print(_table(draw, variance))
    print(path)
    return 0
