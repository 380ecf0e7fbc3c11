"""The ``matgenbench`` command.

``matgenbench train|sample|evaluate|run [-m] [OVERRIDES...]`` hands everything after the subcommand to Hydra,
so ``matgenbench run -m model=vae,ddpm seed=0,1,2`` sweeps. ``matgenbench datasets list|fetch|verify`` and
``matgenbench leaderboard build`` are plain commands.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["main"]

log = logging.getLogger("bench")

HYDRA_COMMANDS = ("train", "sample", "evaluate", "run", "reference")
USAGE = """usage: matgenbench COMMAND [ARGS...]

commands (Hydra overrides follow; add -m for a sweep, --cfg job to print the config):
  run          train -> sample -> evaluate, print the metrics, write a result record
  train        train a model into outputs/runs/<run_name>__<training hash> (or paths.run_dir)
  sample       sample the trained run of the same overrides into <run_dir>/samples.csv
  evaluate     score samples (samples=PATH for any CSV with a 'cif' column / CIF folder / JSON)
  reference    score a reference row: reference=test|copy|random (the ceiling and floor of every metric)
  datasets     list | fetch NAME [--split S] | verify NAME
  leaderboard  build | show [--dataset D] [--protocol P] [--sort METRIC] [--metrics M,...|all]: the board
               | show --funnel: the usability funnel, requested to plausible, per row
  perf         evaluate [--n 2000]: time the metric suite, fast path vs straightforward path, same run
  reproduce    RECORD.json: re-run a record, compare metrics within tolerances | --published cdvae
  rescore      RECORD.json|FOLDER [--write]: score a record's shipped samples again with this code, compare
               | --funnel-from-tables: add the usability funnel from each record's per-sample table
  list         [models|datasets|experiments|samplers|metrics]: what can be run and scored
  diagnose     RUN_DIR [--split test]: a flow-matching run's velocity loss by flow time, against zero
  disentangle  RUN_DIR [--split test] [--limit N] [--bins 20]: a VAE-family run's MIG against known factors
  composition-eval  SAMPLES.csv dataset=NAME [--references] [--out R.json]: score generated formulas
  check        CIF... --rules RULES.yaml [--json OUT]: check structures against domain rules

examples:
  matgenbench run model=ddpm dataset=perov_5 dataset.train_split=val trainer.max_steps=30 seed=0
  matgenbench run -m model=vae,wgan_gp,ddpm,realnvp seed=0,1,2
  matgenbench run -m hydra/launcher=joblib model=vae,ddpm seed=0,1   (parallel; README: Sweeps and clusters)
  matgenbench evaluate samples=my_samples.csv dataset=carbon_24 dataset.train_split=val
"""

_COMMAND = "run"
_COMMAND_ENV = "MATGENBENCH_COMMAND"
_USER_ERROR: str | None = None


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
    from bench.config import leaderboard_dir, results_dir
    from bench.leaderboard import build

    try:
        out = build(results_dir(cfg), leaderboard_dir(cfg))
        log.info("leaderboard regenerated: %s", ", ".join(str(p) for p in out.values()))
    except OSError as err:  # the board is a convenience; the record is what counts
        log.warning("could not regenerate the leaderboard: %s", err)


def _job(cfg: Any) -> Any:
    """One Hydra job: run the stage; in a sweep, skip a finished cell; a failed cell never stops the rest.

    A single run that fails on a user error (unreadable samples, missing data, a diverged loss...) leaves a
    one-line message for :func:`main` instead of a traceback; other errors propagate to Hydra.
    """
    global _USER_ERROR
    from bench.runtime import set_threads

    set_threads(cfg.threads)  # before the stage imports torch: OMP/MKL read their thread count once
    if _is_multirun():
        return _sweep_cell(cfg)
    try:
        return _stage(cfg)
    except Exception as err:
        message = _user_error(err)
        if message is None:
            raise
        _USER_ERROR = message
        return None


def _stage(cfg: Any) -> Any:
    """Run ``_COMMAND`` on ``cfg`` and print its outcome (from the rank-zero process only)."""
    if _COMMAND == "train":
        summary = _call("train", cfg)
        if summary.get("global_zero", True):
            print(f"trained {summary['steps']} steps in {summary['train_seconds']:.1f} s; "
                  f"checkpoint: {summary['checkpoint']}")
        return summary
    if _COMMAND == "sample":
        summary = _call("sample", cfg)
        print(summary["path"])
        return summary
    record, path = _call(_COMMAND, cfg)
    if record is None:  # a data-parallel process other than rank zero: rank zero evaluates and reports
        return None
    from bench.evaluate import metrics_table

    print(metrics_table(record))
    _regenerate_board(cfg)
    if path is not None:
        print(path)
    return str(path)


def _sweep_cell(cfg: Any) -> Any:
    """One cell of a sweep: skipped when its ``complete`` record exists (unless ``force``), run in the run
    directory a single run of the same config uses (:mod:`bench.rundirs`), its outcome left in ``cell.json``
    for the end-of-sweep summary; a failure never raises."""
    import time

    from bench.runtime import env_rank
    from bench.sweep import find_record, write_cell_status

    started = time.time()
    if env_rank() != 0:  # an extra data-parallel process of this cell (e.g. SLURM tasks): rank zero reports
        return _stage(cfg)
    if _COMMAND in ("run", "evaluate", "reference") and not cfg.get("force", False):
        done = find_record(cfg)
        if done is not None:
            log.info("cell already complete, skipped (force=true re-runs it): %s", done)
            print(f"skipped, already complete: {done}")
            write_cell_status("skipped", reason="a complete record with this config hash exists", record=done,
                              started=started)
            return str(done)
    try:
        result = _stage(cfg)
    except Exception as err:
        reason = f"{type(err).__name__}: {err}"
        failed = find_record(cfg, ("failed",)) if _COMMAND in ("run", "evaluate", "reference") else None
        if failed is not None and failed.stat().st_mtime < started:
            failed = None  # an older attempt's record: this failure happened before a record was written
        if failed is not None:
            from bench.io_utils import read_json

            reason = read_json(failed).get("reason") or reason
        log.error("cell failed (%s); the sweep goes on", reason)
        write_cell_status("failed", reason=reason, record=failed, started=started)
        if _COMMAND == "run":
            _regenerate_board(cfg)
        return None
    record = result if isinstance(result, str) else None
    write_cell_status("complete", record=record, started=started)
    return result


def _user_error(err: BaseException) -> str | None:
    """The one-line message for an error the user can fix from the command line, else None."""
    from bench.conditioning import ConditionRequestError
    from bench.datasets import (
        ChecksumMismatchError,
        ConditionError,
        DatasetUnavailableError,
        UnknownDatasetError,
    )
    from bench.rundirs import RunMismatchError
    from bench.structures_io import SampleFileError
    from bench.tracks import TrackMismatchError

    user_errors: tuple[type[BaseException], ...] = (
        SampleFileError, DatasetUnavailableError, ChecksumMismatchError, FileNotFoundError,
        UnknownDatasetError, RunMismatchError, ConditionRequestError, ConditionError, TrackMismatchError,
    )
    if "torch" in sys.modules:  # only a stage that imported torch can have raised it
        from bench.models.base import NonFiniteLossError

        user_errors = (*user_errors, NonFiniteLossError)
    if "lightning_fabric" in sys.modules:  # Lightning refuses a trainer setting (e.g. trainer.max_steps=-5)
        from lightning_fabric.utilities.exceptions import MisconfigurationException

        user_errors = (*user_errors, MisconfigurationException)
    if isinstance(err, user_errors):
        return f"{type(err).__name__}: {err}"
    return None


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
    if name == "reference":
        from bench.references import score_reference

        return score_reference(cfg)
    from bench.run import run

    return run(cfg)


def _hydra_main(argv: list[str]) -> int:
    """Run ``_COMMAND`` through Hydra; return the exit status (1 when a run or any cell of a sweep failed)."""
    import warnings

    import hydra

    from bench.overrides import check_overrides, check_sweep_data
    from bench.sweep import last_summary

    global _USER_ERROR
    # conf/hydra/launcher/submitit_slurm.yaml sets our defaults on the plugin's schema of the same name
    warnings.filterwarnings("ignore", message=r"(?s).*is validated against ConfigStore schema",
                            category=UserWarning)
    problem = check_overrides(argv)
    if problem is None and _COMMAND in ("run", "train", "evaluate", "reference"):
        problem = check_sweep_data(argv)
    if problem:
        print(f"matgenbench {_COMMAND}: {problem}", file=sys.stderr)
        return 2
    # Lightning's `ddp` strategy starts the other processes by re-running this program with the same arguments
    # (and LOCAL_RANK set); they read the subcommand from here because Hydra must see only overrides in argv.
    os.environ[_COMMAND_ENV] = _COMMAND
    sys.argv = [sys.argv[0], *argv]
    _USER_ERROR = None
    hydra.main(config_path="pkg://bench.conf", config_name="config", version_base="1.3")(_job)()
    if _USER_ERROR is not None:
        print(f"matgenbench {_COMMAND}: {_USER_ERROR}", file=sys.stderr)
        return 1
    summary = last_summary()
    if summary is not None:
        print("\n".join(summary.lines()))
        return 0 if summary.ok else 1
    return 0


def _datasets_main(argv: list[str]) -> int:
    from bench.config import cache_dir
    from bench.datasets import commands

    parser = argparse.ArgumentParser(prog="matgenbench datasets",
                                     description="List, fetch or verify datasets.")
    parser.add_argument("action", choices=["list", "fetch", "verify"])
    parser.add_argument("name", nargs="?", help="dataset name (fetch / verify)")
    parser.add_argument("--split", action="append", help="split to fetch (repeatable; default: all)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="local copy, laid out as DIR/<name>/<split>.csv")
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
    from bench.datasets import UnknownDatasetError, get_spec

    try:
        get_spec(args.name)
    except UnknownDatasetError as err:
        print(f"matgenbench datasets {args.action}: {err}", file=sys.stderr)
        return 2
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

    parser = argparse.ArgumentParser(prog="matgenbench leaderboard",
                                     description="Build or show the leaderboard.")
    parser.add_argument("action", choices=["build", "show"])
    parser.add_argument("--results", type=Path,
                        default=Path(os.environ.get("MATGENBENCH_RESULTS_DIR", "leaderboard/results")))
    parser.add_argument("--out", type=Path, default=Path("leaderboard"),
                        help="build: where README.md/index.html go")
    parser.add_argument("--dataset", default=None, help="show: one dataset only")
    parser.add_argument("--sort", default=None,
                        help="show: sort by this metric (best first) or a cost column")
    parser.add_argument("--metrics", default=None,
                        help="show: comma-separated metrics, or 'all' (default: the headline metrics)")
    parser.add_argument("--protocol", default=None,
                        help="show: one split protocol only (its id, short id or experiment name)")
    parser.add_argument("--funnel", action="store_true",
                        help="show: the usability funnel (requested to plausible) instead of the metrics")
    args = parser.parse_args(argv)
    from bench.leaderboard import build, show

    if args.action == "build":
        for path in build(args.results, args.out).values():
            print(path)
        return 0
    try:
        show(args.results, dataset=args.dataset, sort=args.sort, protocol=args.protocol,
             metrics=args.metrics.split(",") if args.metrics else None, funnel=args.funnel)
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
    if command in (*HYDRA_COMMANDS, "reproduce", "rescore"):
        from bench.records import code_version

        code_version()  # records name the code this process started with, even if the checkout changes later
    if command not in HYDRA_COMMANDS and "LOCAL_RANK" in os.environ \
            and os.environ.get(_COMMAND_ENV) in HYDRA_COMMANDS:  # a DDP process started by Lightning
        command, rest = os.environ[_COMMAND_ENV], argv
    if command in HYDRA_COMMANDS:
        _COMMAND = command
        return _hydra_main(rest)
    if command == "datasets":
        return _datasets_main(rest)
    if command == "leaderboard":
        return _leaderboard_main(rest)
    if command == "perf":
        from bench.metrics.perf import main as perf_main

        return perf_main(rest)
    if command == "reproduce":
        from bench.reproduce import main as reproduce_main

        return reproduce_main(rest)
    if command == "rescore":
        from bench.rescore import main as rescore_main

        return rescore_main(rest)
    if command == "list":
        from bench.catalog import main as list_main

        return list_main(rest)
    if command == "diagnose":
        from bench.diagnose import main as diagnose_main

        return diagnose_main(rest)
    if command == "disentangle":
        from bench.disentangle import main as disentangle_main

        return disentangle_main(rest)
    if command == "composition-eval":
        from bench.composition_eval import main as composition_eval_main

        return composition_eval_main(rest)
    if command == "check":
        from bench.check import main as check_main

        return check_main(rest)
    commands = (*HYDRA_COMMANDS, "datasets", "leaderboard", "perf", "reproduce", "rescore", "list",
                "diagnose", "disentangle", "composition-eval", "check")
    print(f"matgenbench: unknown command '{command}'; choose one of: {', '.join(commands)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
