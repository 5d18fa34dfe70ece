"""Does AimMerging beat its baselines here? AimMerging, its four ablations and the baselines on
offline-standard, orders 1-3, through Ray, written up as benchmarks/RESULTS.md.

    python benchmarks/quality.py [--preset bench] [--orders 1,2,3] [--seeds 0] [--methods m1,m2]
                                 [--cpus-per-run 1] [--out benchmarks/results/quality]
                                 [--results benchmarks/RESULTS.md] [--report-only] [key=value ...]
    python benchmarks/quality.py --preset study   (the study: benchmarks/RESULTS-study.md)

`--preset study` is the comparison at a scale where the controller acts (aimray/presets/study.yaml): 7
methods (AimMerging, its no-LS and no-FS ablations, fixed_interval, replay, seqlora, single_task for FWT)
x orders 1-3 x seeds 0 and 1, written to benchmarks/results/study/ and benchmarks/RESULTS-study.md. Runs go
in priority order: seed 0 of every method, then seed 1 of aimmerging, fixed_interval, replay and
aimmerging_no_ls, then the rest; the first runs of each (seed, first task) go first, so that the others
take task 1 from the stage cache.

Every run is a `python -m aimray run` folder under <out>/runs/<method>/o<order>-s<seed>-<config hash>/:
a finished run of the same config is skipped, an interrupted one resumes from its checkpoint, so the
comparison can be completed over several sittings (stop it with Ctrl-C and run the same command again).
`--report-only` writes RESULTS.md from the runs finished so far, without running anything.

RESULTS.md: test OP, BWT and FWT (the paper's variant: against the single_task run of the same order and
seed) mean +/- std over orders and seeds, OP per order, merges per task, rehearsal examples used
(replayed plus burst examples), wall time per run, and the command, machine and date; then the ranking,
how many points one test example is worth (from the preset's test size and the number of tasks), and
AimMerging against every method on the same orders and seeds: the mean difference with its 95% bootstrap
interval, whether that interval contains 0, and wins-ties-losses. The numbers come from analysis.tables
and analysis.stats, the code behind `python -m analysis`.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections import Counter
from pathlib import Path

from aimray.cliargs import add_plugins_arg, error_text, int_list

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "quality"
DEFAULT_RESULTS = ROOT / "benchmarks" / "RESULTS.md"
STUDIES = {  # presets with their own methods, orders, seeds, folder and write-up
    "study": {
        "benchmark": "offline-standard",
        "orders": [1, 2, 3],
        "methods": [
            "aimmerging",
            "aimmerging_no_ls",
            "aimmerging_no_fs",
            "fixed_interval",
            "replay",
            "seqlora",
            "single_task",
            "mtl",  # the joint-training upper bound (run last, outside the claims)
        ],
        "seeds": [0, 1],
        "first": ["aimmerging", "fixed_interval", "replay", "aimmerging_no_ls"],  # seed 1 of these before the rest
        "last": ["mtl"],  # after every other run
        "out": ROOT / "benchmarks" / "results" / "study",
        "results": ROOT / "benchmarks" / "RESULTS-study.md",
    },
    "long": {  # 15 tasks, both scorings: the paper's orders 4-6 and one seeded permutation (order 101)
        "benchmark": "offline-long",
        "orders": [4, 5, 6, 101],
        "methods": ["aimmerging", "fixed_interval", "replay", "seqlora", "aimmerging_no_ls", "single_task", "mtl"],
        "seeds": [0],
        "first": ["aimmerging", "fixed_interval", "replay", "seqlora"],  # every order of these before the rest
        "last": ["mtl"],
        "out": ROOT / "benchmarks" / "results" / "long",
        "results": ROOT / "benchmarks" / "RESULTS-long.md",
    },
}
DEFAULT = {"benchmark": "offline-standard", "orders": [1, 2, 3], "seeds": [0], "last": []}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="bench", help="run preset (default bench: 3 hours here for all)")
    parser.add_argument(
        "--orders",
        type=int_list,
        help="comma-separated orders (default 1,2,3 of offline-standard; long: 4,5,6,101 of offline-long)",
    )
    parser.add_argument("--seeds", type=int_list, help="comma-separated seeds (default 0; study: 0,1)")
    parser.add_argument(
        "--methods",
        help="comma-separated method names (default: AimMerging, its 4 ablations, "
        "6 baselines; study: its 7; `python -m aimray run --help` lists them)",
    )
    parser.add_argument(
        "--cpus-per-run",
        type=float,
        default=1.0,
        dest="cpus_per_run",
        help="CPUs (torch threads) per run; runs go in parallel on the rest",
    )
    parser.add_argument(
        "--out",
        help="the study folder (runs are cached here; default benchmarks/results/quality, "
        "study: benchmarks/results/study)",
    )
    parser.add_argument(
        "--results",
        help="the markdown write-up (default: benchmarks/RESULTS.md for the "
        "default --out, benchmarks/RESULTS-study.md for the study's, else <out>/RESULTS.md: a "
        "scratch study never replaces the committed one)",
    )
    parser.add_argument("--report-only", action="store_true", help="write RESULTS.md from finished runs only")
    parser.add_argument(
        "--plan",
        choices=["grid", "adaptive"],
        default="grid",
        help="grid (default): every method at every order and seed; adaptive: that grid as the pilot, then the "
        "pairs the planner picks (benchmarks/planned.py: Stein's two-stage design on AimMerging's paired "
        "differences in OP and BWT) until every comparison is decided or --budget-hours is spent",
    )
    parser.add_argument(
        "--budget-hours",
        type=float,
        default=12.0,
        dest="budget_hours",
        help="adaptive: run hours the whole study may spend, the pilot included (default 12)",
    )
    parser.add_argument(
        "--margin",
        type=float,
        default=1.0,
        help="adaptive: points within which two methods count as practically equivalent (default 1.0)",
    )
    parser.add_argument("--alpha", type=float, default=0.05, help="adaptive: the design's two-sided error rate")
    parser.add_argument(
        "--max-runs",
        type=int,
        dest="max_runs",
        help="adaptive: start at most this many planned runs in this sitting (the pilot aside); the same "
        "command continues",
    )
    add_plugins_arg(parser)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="run-config overrides for every run")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from aimray import plugins
    from aimray.assets import AssetMissingError
    from aimray.config import parse_overrides
    from aimray.files import get_section, put_section, write_text_atomic
    from aimray.launch.ablations import (
        DEFAULT_METHODS,
        StudyInterrupted,
        configs,
        priority_order,
        run_dir,
        run_study,
    )

    preset = STUDIES.get(args.preset, DEFAULT)
    try:
        plugins.load(args.plugins)  # before any config names what they register
        methods = args.methods.split(",") if args.methods else preset.get("methods", list(DEFAULT_METHODS))
        orders, seeds = args.orders or preset["orders"], args.seeds or preset["seeds"]
        overrides = parse_overrides(args.overrides)
        cfgs = configs(args.preset, methods, preset["benchmark"], orders, seeds, overrides)
    except (ValueError, KeyError, FileNotFoundError, AssetMissingError) as err:
        print(f"error: {error_text(err)}", file=sys.stderr)
        return 2
    if args.preset == "long":  # pairs complete order by order: the comparisons gain a pair at a time
        cfgs = pair_order(cfgs, preset["first"], preset["last"])
    else:
        cfgs = priority_order(cfgs, preset.get("first", methods), preset["last"])
    default_out = preset.get("out", DEFAULT_OUT)
    out = Path(args.out or default_out).resolve()
    if args.results is None:
        default_results = preset.get("results", DEFAULT_RESULTS)
        args.results = str(default_results if out == default_out.resolve() else out / "RESULTS.md")
    shown = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--report-only"]  # what makes the runs
    command = " ".join(["python", "benchmarks/quality.py", *shown])
    if args.plan == "adaptive":
        return adaptive(args, cfgs, out, methods, orders, seeds, overrides, preset, command)
    t0 = time.time()
    if not args.report_only:
        try:
            run_study(cfgs, out, args.cpus_per_run)
        except StudyInterrupted as stop:  # the finished runs are cached; no write-up that reads as final
            print(f"[study] {stop}", file=sys.stderr)
            return stop.exit_code
    paths = {str(run_dir(out, cfg).relative_to(out)): cfg.method for cfg in cfgs}  # run folder -> its method
    text = results_markdown(out, paths, command, time.time() - t0, args.preset, cfgs[0].data.test, Path(args.results))
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    for name in ("faults", "sweep_efficiency"):  # sections other scripts keep in the same file
        kept = get_section(results.read_text(), name) if results.exists() else None
        text = put_section(text, name, kept) if kept else text
    write_text_atomic(results, text)  # never half a write-up
    print(text)
    print(f"written to {args.results}")
    return 0


def adaptive(args, cfgs, out: Path, methods, orders, seeds, overrides, preset, command: str) -> int:
    """--plan adaptive: the grid as the pilot, then the planned pairs (benchmarks/planned.py); the write-up
    from every finished run of the study folder."""
    import planned

    from aimray.launch.ablations import StudyInterrupted, configs
    from analysis.planner import Design

    try:
        design = Design(alpha=args.alpha, margin=args.margin, pilot=len(orders) * len(seeds))
        sequence = planned.pair_sequence(preset["benchmark"], orders, seeds)

        def make(method: str, order: int, seed: int):
            return configs(args.preset, [method], preset["benchmark"], [order], [seed], overrides)[0]

        record = planned.check_plan_file(out, design, args.budget_hours, sequence, methods)  # a report reads it too
        if not args.report_only:
            try:
                planned.run_planned(cfgs, out, make, args, design, sequence, methods, record)
            except StudyInterrupted as stop:  # finished runs cached, plan.json has every round so far
                print(f"[study] {stop}", file=sys.stderr)
                return stop.exit_code
        text = planned.study_markdown(out, args, design, sequence, methods, command)
    except (ValueError, KeyError, RuntimeError) as err:
        print(f"error: {error_text(err)}", file=sys.stderr)
        return 2
    from aimray.files import write_text_atomic

    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(results, text)
    print(text)
    print(f"written to {results}")
    return 0


def pair_order(cfgs: list, first: list[str], last: list[str]) -> list:
    """The order runs start in for a study of few seeds and many orders: the `first` methods order by order
    (each (order, seed) pair complete before the next starts), then the other methods the same way, the
    `last` ones at the end."""
    orders = list(dict.fromkeys(c.order for c in cfgs))
    methods = list(dict.fromkeys(c.method for c in cfgs))

    def key(c) -> tuple:
        tier = 0 if c.method in first else 2 if c.method in last else 1
        return tier, c.seed, orders.index(c.order), methods.index(c.method)

    return sorted(cfgs, key=key)


def results_markdown(
    out: Path, paths: dict[str, str], command: str, seconds: float, preset: str, test_per_task: int, results: Path
) -> str:
    """RESULTS.md (at `results`) from the runs at `paths` (run folder under the study folder `out` -> its
    method; unfinished ones listed); the controller figure goes to <out>/figures/."""
    from aimray.provenance import provenance
    from analysis import report as R
    from analysis import tables as T
    from analysis.load import NotAStudyError, open_study

    prov = provenance()
    hw = prov.get("hardware", {})
    head = [
        "# Study: AimMerging where the controller acts (study preset)"
        if preset == "study"
        else "# Quality: AimMerging against its ablations and baselines",
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
    missing = [p for p in paths if p not in set(done.path)]
    if len(missing) > 12:  # a long queue: counted per method, in the order the runs start
        queued = Counter(paths[p] for p in missing)
        later = "; not yet (queued, in priority order): " + ", ".join(f"{m} {n}" for m, n in queued.items())
    else:
        later = f"; not yet: {', '.join(missing)}" if missing else ""
    finished = f"{len(done)} of {len(paths)} runs finished" + later
    if done.empty:
        return "\n".join([*head, finished + ".", ""])
    runs = T.run_metrics(study)
    table = T.method_table(runs)
    cells = R.comparison(table, metrics_shown=("op", "bwt", "fwt_paper", "fwt_base"), per_order=T.order_table(runs))
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
        R.markdown(cells),
        *reading(runs, table, test_per_task),
        *R.claims(*claims_inputs(runs)),
        *controller_section(study, out, results),
        *cache_section(study, list(done.path)),
    ]
    return "\n".join([*head, *body]) + "\n"


def controller_section(study, out: Path, results: Path) -> list[str]:
    """How the merge schedules acted (analysis.tables.controller_activity) and the figure of S and Lambda."""
    import os

    from analysis import figures
    from analysis import report as R
    from analysis import tables as T

    table = T.controller_activity(study)
    if table.empty:
        return []
    png = figures.save(figures.interval_trajectories(study), out / "figures", "intervals")[0]
    link = os.path.relpath(png, results.parent)
    return [
        "",
        "## The merge controller at work",
        "",
        "Tasks with a memory (the second task on; task 1 has nothing to rehearse), finished runs. S: the "
        "interval in force at each merge; a task counts as changed when its merges ran at more than one S.",
        "",
        R.markdown(R.controller_cells(table)),
        "",
        f"![S and Λ at each merge]({link})",
    ]


def claims_inputs(runs) -> tuple:
    """analysis.report.claims' arguments for a study's runs: the method table on the common pairs, how many
    pairs that is, the methods left out for having fewer, and how many of the pairs FWT (paper) is read on."""
    from analysis import tables as T

    chosen, behind = common_pairs(runs)
    pairs = len(set(zip(chosen.order, chosen.seed, strict=True)))
    fwt = chosen[chosen.fwt_paper.notna()] if "fwt_paper" in chosen else chosen.iloc[:0]
    return T.method_table(chosen), pairs, behind, len(set(zip(fwt.order, fwt.seed, strict=True)))


def common_pairs(runs) -> tuple:
    """(runs, behind): the runs on the (order, seed) pairs shared by the methods with the most finished pairs
    (mtl aside: an upper bound, not a continual learner, outside the claims), and {method: its pairs} for
    the methods left out for having fewer. While a study is incomplete, means over different pairs would
    compare different orders and seeds, and a method queued behind the others (one pair of four) would
    otherwise shrink every comparison to its one pair."""
    learners = runs[runs.method != "mtl"]
    pairs = {m: set(zip(g.order, g.seed, strict=True)) for m, g in learners.groupby("method", sort=False)}
    most = max((len(p) for p in pairs.values()), default=0)
    kept = [m for m, p in pairs.items() if len(p) == most]
    shared = set.intersection(*(pairs[m] for m in kept)) if kept else set()
    keys = zip(learners.order, learners.seed, strict=True)
    chosen = learners[learners.method.isin(kept).to_numpy() & [k in shared for k in keys]]
    return chosen, {m: len(p) for m, p in pairs.items() if m not in kept}


def cache_section(study, paths: list[str]) -> list[str]:
    """What the stage cache saved: compute with / without it, from every finished run's manifest (its
    record of what came from the cache) and the study's costs rows (the task counters' wall seconds)."""
    from aimray.manifest import Manifest

    costs = study.costs
    spent = float(costs[costs.path.isin(paths)].wall_seconds.sum()) if len(costs) else 0.0
    saved = 0.0
    hits = runs = 0
    for path in paths:
        cache = Manifest.read(study.root / path).cache
        if not cache:
            continue
        runs += 1
        hits += bool(cache.get("stage", {}).get("hit"))
        saved += cache.get("stage", {}).get("seconds_saved", 0.0) + cache.get("evals", {}).get("seconds_saved", 0.0)
    if not runs:
        return []
    return [
        "",
        "## Compute and the stage cache",
        "",
        f"{hits} of {runs} runs took task 1 (and its evaluation) from the stage cache. Task compute spent "
        f"{spent / 3600:.2f} h; without the cache it would have been {(spent + saved) / 3600:.2f} h: "
        f"with / without = {spent / (spent + saved):.2f}. (The untrained model's evaluation, row 0, is outside "
        "the task counters in both figures.)",
    ]


def reading(runs, table, test_per_task: int) -> list[str]:
    """What the table says, from its numbers: the ranking by test OP and AimMerging against every other
    method on the same orders (so a loss is reported as plainly as a win)."""
    from analysis import report as R
    from analysis import stats
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
    worth = stats.example_worth(test_per_task, tasks)
    lines += [
        f"One test example moves a task's accuracy by {worth.task:.2f} points and OP by {worth.mean:.2f} "
        f"({test_per_task} test examples per task, {tasks} tasks): differences of a point or two rest on a "
        "handful of examples.",
        "",
    ]
    pairs = T.paired_intervals(runs)
    if len(pairs):
        lines += [
            "AimMerging against each method on the same order and seed (positive: AimMerging higher; "
            "the mean difference over the pairs with its 95% bootstrap interval; wins-ties-losses over the "
            "pairs):",
            "",
            R.markdown(R.paired_interval_cells(pairs)),
            *interval_notes(pairs, worth),
        ]
    return lines


def interval_notes(pairs, worth) -> list[str]:
    """How the intervals were made and what they say: per metric, the methods whose interval excludes 0
    (and on which side) and those whose interval contains it; then the mean OP differences smaller than
    one test example of OP and the OP intervals that lie wholly beyond one example."""
    from analysis import stats
    from analysis import tables as T

    n_lo, n_hi = int(pairs.pairs.min()), int(pairs.pairs.max())
    if n_hi < 2:
        lines = ["One pair per method: differences without intervals (an interval needs two pairs or more).", ""]
    else:
        if pairs.stratified.all():
            how = "the seeds within each order"
        elif not pairs.stratified.any():
            how = "the pairs across orders (one seed per order leaves nothing to resample within an order)"
        else:
            how = "the seeds within each order where every order has two pairs or more, else the pairs across orders"
        n = str(n_lo) if n_lo == n_hi else f"{n_lo} to {n_hi}"
        lines = [
            f"Intervals: percentile bootstrap of the mean paired difference, {int(pairs.reps.iloc[0])} resamples "
            f"of {how}. A percentile interval never reaches beyond the smallest and largest difference, so with "
            f"{n} pairs per method it is optimistic: an interval that excludes 0 says the pairs agree in sign, "
            "not that the difference would hold over more seeds and orders."
            + (" A method with one pair has no interval." if n_lo < 2 else ""),
            "",
        ]
    for m in ("op", "bwt"):
        have = pairs[pairs[f"{m}/lo"].notna()] if f"{m}/lo" in pairs else pairs.iloc[:0]
        if have.empty:
            continue
        ends = zip(have[f"{m}/lo"], have[f"{m}/hi"], strict=True)
        side = dict(zip(have.method, [stats.separation(lo, hi, tol=T.TIE) for lo, hi in ends], strict=True))
        above = [k for k, s in side.items() if s > 0]
        below = [k for k, s in side.items() if s < 0]
        inside = [k for k, s in side.items() if s == 0]
        parts = [f"AimMerging higher than {', '.join(above)}"] if above else []
        parts += [f"lower than {', '.join(below)}"] if below else []
        text = f"- {T.NAMES[m]}: the interval excludes 0 for {len(above) + len(below)} of {len(have)} methods"
        text += f" ({'; '.join(parts)})" if parts else ""
        text += f"; it contains 0 for {', '.join(inside)}." if inside else "."
        lines.append(text)
    one = worth.mean / 100  # one test example of OP, as a fraction like the table's values
    small = list(pairs.method[pairs["op/diff"].abs() < one - T.TIE])
    text = (
        f"- One test example of OP is {worth.mean:.2f} points: the mean OP difference is smaller than that for "
        f"{len(small)} of {len(pairs)} methods" + (f" ({', '.join(small)})" if small else "")
    )
    have = pairs[pairs["op/lo"].notna()]
    if len(have):
        ends = zip(have.method, have["op/lo"], have["op/hi"], strict=True)
        clear = [k for k, lo, hi in ends if stats.separation(lo, hi, margin=one, tol=T.TIE)]
        text += f"; the whole OP interval lies beyond it for {len(clear)} of {len(have)}"
        text += f" ({', '.join(clear)})" if clear else ""
    lines.append(text + ".")
    return lines


if __name__ == "__main__":
    sys.exit(main())
