"""AimMerging, its ablations and the baselines over task orders x seeds, in parallel on Ray.

    python sweeps/ablations.py [--methods m1,m2] [--benchmark B] [--data-dir DIR] [--orders 1,2,3]
        [--seeds 0] [--preset smoke] [--cpus-per-run 1] [--out runs/ablations] [key=value ...]

Every run lands in <out>/runs/<method>/o<order>-s<seed>-<config hash>/ with its events, manifest and
matrix; finished runs of the same config are skipped on a rerun. Writes <out>/runs.parquet and
<out>/ablation.md (mean +/- std over orders and seeds; FWT in the paper's variant when single_task is among
the methods). `python -m analysis <out>` turns the study into tables and figures.
"""

from __future__ import annotations

import sys
from pathlib import Path

from aimray.cliargs import ArgumentParser, add_plugins_arg, check_out_dir, error_text, int_list


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", help="comma-separated (default: AimMerging, its 4 ablations, 6 baselines)")
    parser.add_argument("--benchmark", help="benchmark (default: the preset's, else offline-standard)")
    parser.add_argument("--data-dir", dest="data_dir", help="the paper's data, for standard/long/superni")
    parser.add_argument("--orders", type=int_list, help="comma-separated (default: the benchmark's paper orders)")
    parser.add_argument("--seeds", type=int_list, default=[0], help="comma-separated seeds (default 0)")
    parser.add_argument("--preset", default="smoke", help="run preset (default smoke)")
    parser.add_argument(
        "--cpus-per-run",
        type=float,
        default=1.0,
        dest="cpus_per_run",
        help="CPUs (torch threads) per run; runs go in parallel on the rest (default 1)",
    )
    parser.add_argument("--out", default="runs/ablations", help="the study folder (default runs/ablations)")
    add_plugins_arg(parser)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="run-config overrides for every run")
    args = parser.parse_args(argv)

    from aimray import plugins
    from aimray.assets import AssetMissingError
    from aimray.config import make_config, parse_overrides
    from aimray.launch.ablations import DEFAULT_METHODS, StudyInterrupted, configs, run_study
    from aimray.tasks import get_benchmark

    try:
        plugins.load(args.plugins)  # before any config names what they register
        check_out_dir(args.out)
        if not args.cpus_per_run > 0:
            raise ValueError(f"--cpus-per-run={args.cpus_per_run} must be > 0")
        methods = args.methods.split(",") if args.methods else list(DEFAULT_METHODS)
        overrides = parse_overrides(args.overrides)
        bench = get_benchmark(args.benchmark or make_config(args.preset, overrides).benchmark)
        orders, seeds = args.orders or list(bench.main_orders), args.seeds
        cfgs = configs(args.preset, methods, bench.name, orders, seeds, overrides, args.data_dir)
    except (ValueError, KeyError, FileNotFoundError, AssetMissingError) as err:
        print(f"error: {error_text(err)}", file=sys.stderr)
        return 2
    try:
        table = run_study(cfgs, Path(args.out), args.cpus_per_run)
    except StudyInterrupted as stop:  # finished runs cached: the same command continues
        print(f"[study] {stop}", file=sys.stderr)
        return stop.exit_code
    print((Path(args.out) / "ablation.md").read_text())
    print(f"runs table: {Path(args.out) / 'runs.parquet'}")
    return 0 if (table.status == "success").all() else 1


if __name__ == "__main__":
    sys.exit(main())
