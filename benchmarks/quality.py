"""Does AimMerging beat its baselines here? AimMerging, its four ablations and the baselines on
offline-standard, orders 1-3, through Ray, written up as benchmarks/RESULTS.md.

    python benchmarks/quality.py [--preset bench] [--orders 1,2,3] [--seeds 0] [--methods m1,m2]
                                 [--cpus-per-run 1] [--out benchmarks/results/quality]
                                 [--results benchmarks/RESULTS.md] [--report-only] [key=value ...]

Every run is a `python -m aimray run` folder under <out>/runs/<method>/o<order>-s<seed>-<config hash>/:
a finished run of the same config is skipped, an interrupted one resumes from its checkpoint, so the
comparison can be completed over several sittings (stop it with Ctrl-C and run the same command again).
`--report-only` writes RESULTS.md from the runs finished so far, without running anything.

RESULTS.md: test OP, BWT and FWT (the paper's variant: against the single_task run of the same order and
seed) mean +/- std over orders and seeds, OP per order, merges per task, rehearsal examples used
(replayed plus burst examples), wall time per run, and the command, machine and date. The numbers come
from analysis.tables, the code behind `python -m analysis`.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

from aimray.cliargs import error_text, int_list

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "quality"
DEFAULT_RESULTS = ROOT / "benchmarks" / "RESULTS.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="bench", help="run preset (default bench: 3 hours here for all)")
    parser.add_argument(
        "--orders", type=int_list, default=[1, 2, 3], help="comma-separated orders of offline-standard (default 1,2,3)"
    )
    parser.add_argument("--seeds", type=int_list, default=[0], help="comma-separated seeds (default 0)")
    parser.add_argument("--methods", help="comma-separated method names (default: AimMerging, its 4 ablations, "
                        "6 baselines; `python -m aimray run --help` lists them)")  # fmt: skip
    parser.add_argument("--cpus-per-run", type=float, default=1.0, dest="cpus_per_run",
                        help="CPUs (torch threads) per run; runs go in parallel on the rest")  # fmt: skip
    parser.add_argument("--out", default=str(DEFAULT_OUT),
                        help="the study folder (runs are cached here; default benchmarks/results/quality)")  # fmt: skip
    parser.add_argument("--results", help="the markdown write-up (default: benchmarks/RESULTS.md for the "
                        "default --out, else <out>/RESULTS.md: a scratch study never replaces the "
                        "committed one)")  # fmt: skip
    parser.add_argument("--report-only", action="store_true", help="write RESULTS.md from finished runs only")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="run-config overrides for every run")
    args = parser.parse_args(argv)

    from aimray.assets import AssetMissingError
    from aimray.config import parse_overrides
    from aimray.events import write_text_atomic
    from aimray.launch.ablations import DEFAULT_METHODS, configs, run_dir, run_study

    try:
        methods = args.methods.split(",") if args.methods else list(DEFAULT_METHODS)
        cfgs = configs(args.preset, methods, "offline-standard", args.orders, args.seeds,
                       parse_overrides(args.overrides))  # fmt: skip
    except (ValueError, KeyError, FileNotFoundError, AssetMissingError) as err:
        print(f"error: {error_text(err)}", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    if args.results is None:
        args.results = str(DEFAULT_RESULTS if out == DEFAULT_OUT.resolve() else out / "RESULTS.md")
    t0 = time.time()
    if not args.report_only:
        run_study(cfgs, out, args.cpus_per_run)
    paths = [str(run_dir(out, cfg).relative_to(out)) for cfg in cfgs]
    command = " ".join(["python", "benchmarks/quality.py", *(argv if argv is not None else sys.argv[1:])])
    text = results_markdown(out, paths, command, time.time() - t0, args.preset, cfgs[0].data.test)
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(results, text)  # never half a write-up
    print(text)
    print(f"written to {args.results}")
    return 0


def results_markdown(out: Path, paths: list[str], command: str, seconds: float, preset: str, test_per_task: int) -> str:
    """RESULTS.md from the runs at `paths` under the study folder `out` (unfinished ones listed)."""
    from aimray.provenance import provenance
    from analysis import tables as T
    from analysis.load import NotAStudyError, open_study

    prov = provenance()
    hw = prov.get("hardware", {})
    head = [
        "# Quality: AimMerging against its ablations and baselines",
        "",
        f"`{command}` (preset `{preset}`), offline-standard (wordnet, amazon, trec, bbc in the order's sequence), "
        f"real SmolLM2-135M-Instruct. Written {time.strftime('%Y-%m-%d')} on {platform.machine()} "
        f"({hw.get('cpus', '?')} CPUs, {', '.join(hw.get('gpus', [])) or 'no GPU'}), "
        f"torch {prov['versions'].get('torch')}, "
        f"commit {prov.get('git', {}).get('commit', '?')[:10]}.",
        "",
    ]
    try:
        study = open_study(out)
    except NotAStudyError:
        return "\n".join([*head, f"0 of {len(paths)} runs finished.", ""])
    study = study.select(paths)
    done = study.runs[study.runs.status == "success"]
    missing = sorted(set(paths) - set(done.path))
    finished = f"{len(done)} of {len(paths)} runs finished" + (f"; not yet: {', '.join(missing)}" if missing else "")
    if done.empty:
        return "\n".join([*head, finished + ".", ""])
    runs = T.run_metrics(study)
    table = T.method_table(runs)
    cells = T.comparison(table, metrics_shown=("op", "bwt", "fwt_paper", "fwt_base"))
    cells.insert(len(cells.columns) - 1, "rehearsal examples", [f"{v:.0f}" for v in table.rehearsal_examples])
    body = [
        finished + ".",
        "",
        "Test metrics in points, mean ± std over orders and seeds (std over the orders' values). FWT (paper): "
        "mean over tasks of a[i][i] minus the single-task LoRA's score on task i (single_task runs of the same "
        "order and seed). FWT (base): a[i-1][i] minus the untrained model's score. merges/task counts every fusion. "
        "Rehearsal examples: memory examples trained on per run (replayed into the task data, or in bursts). "
        "Wall: seconds per run, training and evaluation, with the runs sharing this machine.",
        "",
        T.markdown(cells),
        *reading(runs, table, test_per_task),
    ]
    return "\n".join([*head, *body]) + "\n"


def reading(runs, table, test_per_task: int) -> list[str]:
    """What the table says, from its numbers: the ranking by test OP and AimMerging against every other
    method on the same orders (so a loss is reported as plainly as a win)."""
    from analysis import tables as T

    ranked = table.dropna(subset=["op/mean"]).sort_values("op/mean", ascending=False)
    if ranked.empty:
        return []
    lines = ["", "## Reading the table", ""]
    order = ", ".join(f"{m} {100 * v:.2f}" for m, v in zip(ranked.method, ranked["op/mean"], strict=True))
    lines.append(f"By test OP (mean over orders): {order}.")
    if "aimmerging" in set(ranked.method):
        place = list(ranked.method).index("aimmerging") + 1
        lines.append(f"AimMerging is {place} of {len(ranked)}.")
    tasks = len(runs.tasks.iloc[0])
    lines += [
        f"One test example moves a task's accuracy by {100 / test_per_task:.1f} points and OP by "
        f"{100 / (test_per_task * tasks):.2f} ({test_per_task} test examples per task, {tasks} tasks): "
        "differences of a point or two rest on a handful of examples.",
        "",
    ]
    pairs = T.paired(runs)
    if len(pairs):
        lines += ["AimMerging against each method on the same order and seed (positive: AimMerging higher; "
                  "wins-ties-losses over the pairs):", "", T.markdown(T.paired_cells(pairs))]  # fmt: skip
    return lines


if __name__ == "__main__":
    sys.exit(main())
