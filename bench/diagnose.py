"""``matgenbench diagnose RUN_DIR``: where along the flow a trained flow-matching model learned its velocity.

A flow-matching loss averaged over time hides *where* the network beats the trivial predictor. This splits
the coordinate-velocity loss of a trained run by flow time ``t`` on held-out crystals and divides it by the
loss of a zero velocity on the same draws: 1.0 means nothing was learned at those times, 0 means the
conditional velocity is predicted exactly. The mean velocity over each crystal's atoms is left out of both (a
network that reads only coordinate differences cannot predict it; :meth:`CrystalFlowMatching.drift_free`).

Near ``t = 0`` every model is close to 1 (the target there is the prior's draw, unpredictable); a model that
has learned the data's geometry falls well below 1 near ``t = 1``, where the remaining displacement is small
and fixed by the crystal. ``models/cards/flowmm.md`` uses it to show that the coordinate field learns Perov-5
but not Carbon-24 at the CPU budgets.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["main", "velocity_loss_by_time"]

FIELD = "frac_coords"


def velocity_loss_by_time(
    module: Any, batch: Mapping[str, Any], bins: int = 5, draws: int = 2, seed: int = 0,
    velocity: Callable[..., Mapping[str, Any]] | None = None,
) -> list[dict[str, float]]:
    """Mean-free coordinate-velocity loss of ``module`` per flow-time bin, against a zero velocity.

    Args:
        module: a flow-matching model (``paths``, ``data_fields``, ``draw_prior``, ``velocity``,
            ``masked_mse``, ``drift_free``; e.g.
            :class:`~bench.models.flow_matching.model.CrystalFlowMatching`).
        batch: an encoded batch of crystals (the run's representation).
        bins: equal-width bins of ``t`` in ``[0, 1]``.
        draws: prior draws per crystal and bin.
        seed: seeds the prior draws and the times, so two runs are scored on the same draws.
        velocity: the field to score, ``velocity(x_t, t, mask)`` (default: ``module.velocity``).

    Returns:
        One row per bin: ``t_low``, ``t_high``, ``model`` and ``zero`` (mean squared error per coordinate) and
        ``ratio`` (``model / zero``).
    """
    import torch

    field = velocity if velocity is not None else module.velocity
    generator = torch.Generator().manual_seed(int(seed))
    x1, mask = module.data_fields(batch)
    edges = torch.linspace(0.0, 1.0, int(bins) + 1).tolist()
    rows = []
    with torch.no_grad():
        for low, high in zip(edges[:-1], edges[1:], strict=True):
            model_loss = zero_loss = 0.0
            for _ in range(int(draws)):
                shapes = {k: tuple(v.shape) for k, v in x1.items()}
                x0 = module.draw_prior(module.paths, shapes, mask, generator)
                t = low + (high - low) * torch.rand(mask.shape[0], generator=generator)
                x_t, u_t = {}, {}
                for key in x1:
                    x_t[key], u_t[key] = module.paths[key].interpolate(x0[key], x1[key], t)
                target = module.drift_free(u_t[FIELD], mask)
                predicted = module.drift_free(field(x_t, t, mask)[FIELD], mask)
                model_loss += float(module.masked_mse(predicted, target, mask))
                zero_loss += float(module.masked_mse(torch.zeros_like(target), target, mask))
            rows.append({"t_low": low, "t_high": high, "model": model_loss / draws, "zero": zero_loss / draws,
                         "ratio": model_loss / zero_loss if zero_loss > 0 else float("nan")})
    return rows


def main(argv: list[str] | None = None) -> int:
    """``matgenbench diagnose RUN_DIR [--split test] [--limit 256] [--checkpoint CKPT] ...``."""
    parser = argparse.ArgumentParser(
        prog="matgenbench diagnose",
        description="Split a trained flow-matching run's coordinate-velocity loss by flow time, against a "
                    "zero velocity (1.0: nothing learned at those times).",
    )
    parser.add_argument("run_dir", help="a run folder written by matgenbench train/run")
    parser.add_argument("--split", default="test", help="the dataset split to score on (default: test)")
    parser.add_argument("--limit", type=int, default=256, help="crystals of the split (default: 256)")
    parser.add_argument("--checkpoint", default=None, help="another checkpoint of the run (default: its own)")
    parser.add_argument("--bins", type=int, default=5)
    parser.add_argument("--draws", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=os.environ.get("MATGENBENCH_DATA_DIR"),
                        help="local data folder (default: $MATGENBENCH_DATA_DIR, else the run's own setting)")
    args = parser.parse_args(argv)

    import torch

    from bench.runtime import load_dataset_split
    from bench.train import load_trained

    run_dir = Path(args.run_dir)
    try:
        module, codec, saved = load_trained(run_dir)
    except FileNotFoundError as err:
        print(f"matgenbench diagnose: {err}", file=sys.stderr)
        return 2
    if not all(callable(getattr(module, name, None)) for name in ("drift_free", "velocity", "draw_prior")):
        print(f"matgenbench diagnose: {run_dir} is a {type(module).__name__}, not a flow-matching model "
              "(e.g. model=flowmm): nothing to split by flow time", file=sys.stderr)
        return 2
    if args.checkpoint:
        state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
        module.eval()
    if args.data_dir:
        saved.paths.data_dir = args.data_dir
    split = load_dataset_split(saved, args.split, limit=args.limit)
    usable = [s for s in split.structures if codec.can_encode(s)]
    if not usable:
        print(f"matgenbench diagnose: the run's representation can encode none of the "
              f"{len(split.structures)} structures of {saved.dataset.name}/{args.split}: choose the split "
              "it was trained on or its eval split", file=sys.stderr)
        return 2
    encoded = codec.encode(usable)
    batch = {k: torch.as_tensor(v) for k, v in encoded.items() if hasattr(v, "shape")}
    rows = velocity_loss_by_time(module, batch, bins=args.bins, draws=args.draws, seed=args.seed)
    left_out = len(split.structures) - len(usable)
    print(f"{run_dir.name}: coordinate-velocity loss by flow time on {len(usable)} "
          f"{saved.dataset.name}/{args.split} crystals, {args.draws} prior draws each "
          "(mean velocity left out)"
          + (f"; {left_out} structures left out (the representation cannot encode them)" if left_out else ""))
    print(f"{'t':>12}  {'model':>8}  {'zero':>8}  {'ratio':>6}")
    for row in rows:
        print(f"[{row['t_low']:.2f}, {row['t_high']:.2f})  {row['model']:8.4f}  {row['zero']:8.4f}  "
              f"{row['ratio']:6.3f}")
    return 0
