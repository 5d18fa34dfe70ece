"""Ray Tune + Optuna sweep of the AimMerging controller and rehearsal sizes across task orders.

    python sweeps/tune_controller.py [--config sweeps/configs/controller.yaml] [--out runs/sweep]
        [--preset P] [--num-samples N] [--concurrency C] [--workers W] [--objective dev_op]
        [--objectives dev_op,dev_bwt,compute] [--holdout-orders 3]
        [--address ADDR] [--storage URI] [--resume] [key=value ...]

Each trial runs one sampled config over the benchmark's paper orders (the config's benchmark, else the
preset's) in Ray Train workers with --workers, else one process per trial, and is scored on dev data only;
test metrics are recorded beside. The output folder holds trials.parquet, best.md and every run's
trajectory. See aimray/launch/tune.py.

--objectives searches several objectives at once (Optuna's multi-objective TPE; ASHA stops trials on the
first): trials.parquet marks the Pareto front (`pareto`) and best.md lists it. --holdout-orders leaves
orders out of the search and then runs the best config (or the whole front) and the defaults on them:
holdout.parquet and a section of best.md, the test of whether tuned values carry over to an unseen order.

Ctrl-C or SIGTERM (Kubernetes, Slurm, preemption) stops the sweep well: every running trial's run
finishes its step and checkpoints, Tune saves its state, and the command exits 130 (SIGINT) or 143
(SIGTERM) saying how many trials finished; no tables are written. The same command with --resume
continues it. A second signal stops at once.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from aimray.cliargs import ArgumentParser, add_plugins_arg, error_text, int_list
from aimray.config import preset_names

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "controller.yaml"
# errors a user's input or setting causes: one line and exit 2 (with aimray's own, imported in main)
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, FileExistsError, ImportError)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="key=value: a sweep field (num_samples=8, objective=dev_op_bwt) or a fixed run-config value "
        "for every trial (train.lr=1e-3, data.train=32). Objectives: dev_op (mean OP on dev over orders), "
        "dev_bwt (mean BWT on dev), dev_op_bwt (OP + BWT on dev), worst_dev_op (worst order), compute "
        "(minimised: rehearsal + monitoring examples per order, in examples).",
    )
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="sweep spec YAML (search space etc.)")
    parser.add_argument("--out", help="output folder (default runs/sweep)")
    parser.add_argument(
        "--preset",
        help=f"run preset of every trial (default sweep): {', '.join(preset_names())}; the benchmark is the "
        "preset's unless the sweep config names one",
    )
    parser.add_argument("--num-samples", type=int, dest="num_samples", help="number of trials")
    parser.add_argument("--concurrency", type=int, help="trials at once (default: sized to the cluster)")
    parser.add_argument(
        "--max-failures",
        type=int,
        dest="max_failures",
        help="times a trial whose process or node dies starts again, its runs from their last checkpoint (default 2)",
    )
    parser.add_argument("--workers", type=int, help="Ray Train workers per run (default 0: in the trial)")
    parser.add_argument(
        "--cpus-per-trial",
        type=float,
        dest="cpus_per_trial",
        help="CPUs per trial (in-process) or per Train worker (default 1)",
    )
    parser.add_argument(
        "--gpus-per-trial",
        type=float,
        dest="gpus_per_trial",
        help="GPUs per in-process trial, fractional to share a GPU (e.g. 0.25: four small-model trials per GPU)",
    )
    parser.add_argument("--gpus-per-worker", type=float, dest="gpus_per_worker", help="GPUs per Ray Train worker")
    parser.add_argument("--objective", help="dev_op (default), dev_bwt, dev_op_bwt, worst_dev_op or compute")
    parser.add_argument(
        "--objectives",
        help="comma-separated objectives for a multi-objective search, e.g. dev_op,dev_bwt,compute "
        "(the first is the one ASHA stops trials on)",
    )
    parser.add_argument(
        "--holdout-orders",
        type=int_list,
        dest="holdout_orders",
        help="comma-separated orders left out of the search; the best config(s) and the defaults run on them after",
    )
    parser.add_argument("--scheduler", help="asha (default), hyperband or none")
    parser.add_argument(
        "--orders", type=int_list, help="comma-separated orders (default: the benchmark's paper orders)"
    )
    parser.add_argument("--data-dir", dest="data_dir", help="the paper's data, for standard/long/superni")
    add_cluster_args(parser)
    add_plugins_arg(parser)
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    return parser


def add_cluster_args(parser: ArgumentParser) -> None:
    """Where the sweep runs, where it keeps its state, and what watches it."""
    parser.add_argument("--address", help="join a running Ray cluster (RAY_ADDRESS is honoured)")
    parser.add_argument("--storage", help="shared storage for Ray (needed on a multi-node cluster)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted sweep in --out")
    parser.add_argument(
        "--dashboard",
        nargs="?",
        const="127.0.0.1",
        metavar="HOST",
        help="start the local Ray's dashboard, on HOST (default 127.0.0.1: this machine only); off by default",
    )
    parser.add_argument(
        "--callbacks",
        help="experiment trackers fed with every report: comma-separated tensorboard, mlflow, wandb "
        "(mlflow and wandb: pip install 'aimray[tracking]'; wandb runs offline without WANDB_API_KEY)",
    )
    parser.add_argument(
        "--mlflow-uri",
        dest="mlflow_uri",
        help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///<out>/mlflow.db)",
    )
    parser.add_argument(
        "--optuna-storage",
        dest="optuna_storage",
        help="where the searcher's Optuna study lives while the sweep runs (default <out>/optuna.journal, a "
        "journal file; or an RDB URL): `optuna-dashboard <it>` shows the sweep live",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="Tune's every trial result and Ray Train's INFO lines on the terminal (default: Tune's status "
        "table; Ray's own logs are linked from <out>/ray-logs)",
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verbose:  # Train workers read it (aimray.launch.train.quiet_train_logs)
        os.environ["AIMRAY_RAY_LOG_LEVEL"] = "INFO"

    from aimray.assets import AssetMissingError
    from aimray.files import FolderInUseError
    from aimray.launch.storage import StorageUnavailableError
    from aimray.launch.tune import SweepInterrupted, load_sweep, sweep

    orders = tuple(args.orders) if args.orders else None
    try:
        spec = load_sweep(
            args.config,
            args.overrides,
            out=args.out,
            preset=args.preset,
            num_samples=args.num_samples,
            concurrency=args.concurrency,
            max_failures=args.max_failures,
            workers=args.workers,
            cpus_per_trial=args.cpus_per_trial,
            gpus_per_trial=args.gpus_per_trial,
            gpus_per_worker=args.gpus_per_worker,
            objective=args.objective,
            objectives=args.objectives,
            holdout_orders=tuple(args.holdout_orders) if args.holdout_orders else None,
            callbacks=args.callbacks,
            mlflow_uri=args.mlflow_uri,
            optuna_storage=args.optuna_storage,
            scheduler=args.scheduler,
            orders=orders,
            data_dir=args.data_dir,
            plugins=args.plugins,
        )
        table = sweep(
            spec,
            resume=args.resume,
            address=args.address,
            storage=args.storage,
            dashboard=args.dashboard,
            verbose=args.verbose,
        )
    except (*USER_ERRORS, FolderInUseError, AssetMissingError) as err:
        print(f"error: {error_text(err)}", file=sys.stderr)
        return 2
    except StorageUnavailableError as err:  # Tune's state is saved as far as it got: --resume continues
        print(f"error: {err}", file=sys.stderr)
        return 1
    except SweepInterrupted as stopped:
        print(f"[sweep] {stopped}", file=sys.stderr)
        return stopped.exit_code
    out = Path(spec.out)
    print((out / "best.md").read_text())
    errors = int((table.status == "error").sum())
    print(f"trials table: {out / 'trials.parquet'}; runs: {out / 'runs'}")
    if errors:
        print(f"{errors} trial(s) failed; see the error column of trials.parquet", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
