"""The ``matgenbench`` command.

``matgenbench train|sample|evaluate|run [-m] [OVERRIDES...]`` hands everything after the subcommand to Hydra, so
``matgenbench run -m model=vae,ddpm seed=0,1,2`` sweeps. ``matgenbench datasets list|fetch|verify`` and
``matgenbench leaderboard build`` are plain commands.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

__all__ = ["main"]

log = logging.getLogger("bench")

HYDRA_COMMANDS = ("train", "sample", "evaluate", "run")
USAGE = """usage: matgenbench COMMAND [ARGS...]

commands (Hydra overrides follow; add -m for a sweep, --cfg job to print the config):
  run          train -> sample -> evaluate, print the metrics, write a result record
  train        train a model; checkpoint, codec and config go to paths.run_dir
  sample       sample a trained run into <run_dir>/samples.csv
  evaluate     score samples (samples=PATH for any CSV with a 'cif' column / CIF folder / JSON)
  datasets     list | fetch NAME [--split S] | verify NAME
  leaderboard  build | show [--dataset D] [--sort METRIC]: the board from the result records

examples:
  matgenbench run model=ddpm dataset=perov_5 dataset.train_split=val trainer.max_steps=30 seed=0
  matgenbench run -m model=vae,wgan_gp,ddpm,realnvp seed=0,1,2
  matgenbench evaluate samples=my_samples.csv dataset=carbon_24 dataset.train_split=val
"""

_COMMAND = "run"


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


def _regenerate_board(cfg: Any) -> None:
    if not cfg.record.get("regenerate_board", True):
        return
    from bench.leaderboard import build

    try:
        out = build(cfg.paths.results_dir, cfg.paths.leaderboard_dir)
        log.info("leaderboard regenerated: %s", ", ".join(str(p) for p in out.values()))
    except OSError as err:  # the board is a convenience; the record is what counts
        log.warning("could not regenerate the leaderboard: %s", err)


def _job(cfg: Any) -> Any:
    """One Hydra job: dispatch to the stage function; in a sweep a failing cell is logged and the sweep goes on."""
    from bench.runtime import set_threads

    set_threads(cfg.threads)
    try:
        if _COMMAND == "train":
            summary = _call("train", cfg)
            print(f"trained {summary['steps']} steps in {summary['train_seconds']:.1f} s; "
                  f"checkpoint: {summary['checkpoint']}")
            return summary
        if _COMMAND == "sample":
            summary = _call("sample", cfg)
            print(summary["path"])
            return summary
        record, path = _call(_COMMAND, cfg)
        from bench.evaluate import metrics_table

        print(metrics_table(record))
        _regenerate_board(cfg)
        if path is not None:
            print(path)
        return str(path)
    except Exception as err:
        if _is_multirun():
            log.error("cell failed (%s: %s); the sweep goes on", type(err).__name__, err)
            if _COMMAND == "run":
                _regenerate_board(cfg)
            return None
        raise


def _call(name: str, cfg: Any) -> Any:
    if name == "train":
        from bench.train import train

        return train(cfg)
    if name == "sample":
        from bench.sample import sample

        return sample(cfg)
    if name == "evaluate":
        from bench.evaluate import evaluate

        return evaluate(cfg)
    from bench.run import run

    return run(cfg)


def _hydra_main(argv: list[str]) -> None:
    import hydra

    sys.argv = [f"matgenbench {_COMMAND}", *argv]
    hydra.main(config_path="pkg://bench.conf", config_name="config", version_base="1.3")(_job)()


def _datasets_main(argv: list[str]) -> int:
    from bench.config import cache_dir
    from bench.datasets import commands

    parser = argparse.ArgumentParser(prog="matgenbench datasets", description="List, fetch or verify datasets.")
    parser.add_argument("action", choices=["list", "fetch", "verify"])
    parser.add_argument("name", nargs="?", help="dataset name (fetch / verify)")
    parser.add_argument("--split", action="append", help="split to fetch (repeatable; default: all)")
    parser.add_argument("--data-dir", type=Path, default=None, help="local copy, laid out as DIR/<name>/<split>.csv")
    args = parser.parse_args(argv)
    import os

    data_dir = args.data_dir or (Path(os.environ["MATGENBENCH_DATA_DIR"])
                                 if os.environ.get("MATGENBENCH_DATA_DIR") else None)
    cache = cache_dir()
    if args.action == "list":
        commands.render_table(commands.list_rows(data_dir, cache))
        return 0
    if not args.name:
        parser.error(f"'{args.action}' needs a dataset name")
    if args.action == "fetch":
        from bench.datasets import DatasetUnavailableError

        try:
            for split, path in commands.fetch(args.name, args.split, data_dir, cache).items():
                print(f"{args.name}/{split}: {path}")
        except (DatasetUnavailableError, ValueError) as err:
            print(f"matgenbench datasets fetch: {err}", file=sys.stderr)
            return 1
        return 0
    rows = commands.verify(args.name, data_dir, cache)
    commands.render_table(rows)
    return 0 if all(r.get("ok") for r in rows if r.get("present", True)) else 1


def _leaderboard_main(argv: list[str]) -> int:
    import os

    parser = argparse.ArgumentParser(prog="matgenbench leaderboard", description="Build or show the leaderboard.")
    parser.add_argument("action", choices=["build", "show"])
    parser.add_argument("--results", type=Path,
                        default=Path(os.environ.get("MATGENBENCH_RESULTS_DIR", "leaderboard/results")))
    parser.add_argument("--out", type=Path, default=Path("leaderboard"), help="build: where README.md/index.html go")
    parser.add_argument("--dataset", default=None, help="show: one dataset only")
    parser.add_argument("--sort", default=None, help="show: sort by this metric (best first) or a cost column")
    parser.add_argument("--metrics", default=None, help="show: comma-separated metrics to show")
    args = parser.parse_args(argv)
    from bench.leaderboard import build, show

    if args.action == "build":
        for path in build(args.results, args.out).values():
            print(path)
        return 0
    try:
        show(args.results, dataset=args.dataset, sort=args.sort,
             metrics=args.metrics.split(",") if args.metrics else None)
    except ValueError as err:
        print(f"matgenbench leaderboard show: {err}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``matgenbench`` console script."""
    global _COMMAND
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command in HYDRA_COMMANDS:
        _COMMAND = command
        _hydra_main(rest)
        return 0
    if command == "datasets":
        return _datasets_main(rest)
    if command == "leaderboard":
        return _leaderboard_main(rest)
    print(f"matgenbench: unknown command '{command}'; choose one of: "
          f"{', '.join((*HYDRA_COMMANDS, 'datasets', 'leaderboard'))}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
