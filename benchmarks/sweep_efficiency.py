"""How much search is enough? A small exhaustive grid over controller knobs against Optuna TPE with ASHA
and against random search, each given at most a third of the grid's compute, over several search seeds.

    python benchmarks/sweep_efficiency.py [--preset sweep] [--orders 1,2,3] [--search-seeds 0,1,2]
        [--budget 0.333] [--grid controller.s0=2,3,4 ...] [--out benchmarks/results/sweep_efficiency]
        [--results benchmarks/RESULTS.md] [--report-only] [key=value ...]

1. The grid: every combination of the --grid values (default: controller.s0 2,3,4 x
   controller.threshold_factor 1.5,2,3 x memory.per_task 4,8 = 18 configs) on every order, as `python -m
   aimray run` folders through Ray (<out>/runs/..., cached by config hash: a rerun continues).
2. The searches, replayed on the grid's results (a tabular benchmark: every config a search can propose
   is a grid point, so it costs no further training): a search trial is a config; it runs the orders one
   after another and may be stopped after any of them, so its compute is the number of orders it ran
   (the grid's compute is configs x orders). Optuna TPE with a successive-halving pruner (ASHA's rule,
   reduction factor 2, rungs at each order) and plain random search with the same pruner, on the dev
   objective (mean dev OP over the orders run), until the budget is spent; one per search seed.
3. The table: per search and seed, the best config it found (by dev), its dev and test OP against the
   grid's best-by-dev config, the compute it used, and whether it came within one OP point of the grid's
   best on dev; then per search the mean gaps and how often it came within a point. Written to
   <out>/efficiency.md and, for the default --out, as the `sweep_efficiency` section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from pathlib import Path

from aimray.cliargs import error_text, int_list

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "sweep_efficiency"
DEFAULT_GRID = ["controller.s0=2,3,4", "controller.threshold_factor=1.5,2.0,3.0", "memory.per_task=4,8"]
SECTION = "sweep_efficiency"


def parse_grid(items: list[str]) -> dict[str, list]:
    """["key=v1,v2", ...] -> {key: [v1, v2]} (numbers parsed as YAML does); ValueError naming the item."""
    import yaml

    grid = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise ValueError(f"--grid {item!r}: expected key=v1,v2,...")
        grid[key] = [yaml.safe_load(v) for v in values.split(",")]
    return grid


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="sweep", help="run preset (default sweep: the demo sweep's runs)")
    parser.add_argument("--orders", type=int_list, default=[1, 2, 3], help="orders (default 1,2,3)")
    parser.add_argument("--search-seeds", type=int_list, default=[0, 1, 2], dest="seeds", help="default 0,1,2")
    parser.add_argument("--budget", type=float, default=1 / 3, help="a search's compute / the grid's (default 1/3)")
    parser.add_argument("--grid", nargs="+", default=DEFAULT_GRID, metavar="KEY=V1,V2", help="the grid's knobs")
    parser.add_argument("--cpus-per-run", type=float, default=1.0, dest="cpus_per_run", help="default 1")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="folder of the grid's runs and efficiency.md")
    parser.add_argument(
        "--results", help="RESULTS.md to put the section in (default: the repository's for the default --out)"
    )
    parser.add_argument("--report-only", action="store_true", help="replay the searches on the finished grid only")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="run-config overrides for every run")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    from aimray.config import deep_merge, make_config, nest, parse_overrides
    from aimray.launch.ablations import StudyInterrupted, run_dir, run_study
    from aimray.loop import check_inputs
    from aimray.tasks import benchmark_tasks

    try:
        if not 0 < args.budget <= 1:
            raise ValueError(f"--budget={args.budget} must be in (0, 1]")
        grid = parse_grid(args.grid)
        base = parse_overrides(args.overrides)
        points = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
        cfgs = {
            (i, o): make_config(args.preset, deep_merge(base, nest(p)), method="aimmerging", order=o)
            for i, p in enumerate(points)
            for o in args.orders
        }
        check_inputs(cfgs.values())
    except (ValueError, KeyError, FileNotFoundError) as err:
        print(f"error: {error_text(err)}", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    t0 = time.time()
    if not args.report_only:
        try:
            run_study(list(cfgs.values()), out, args.cpus_per_run)
        except StudyInterrupted as stop:  # finished runs cached: the same command continues
            print(f"[study] {stop}", file=sys.stderr)
            return stop.exit_code
    table = grid_table(out, points, args.orders, {k: run_dir(out, c) for k, c in cfgs.items()})
    first = cfgs[(0, args.orders[0])]
    sizes = {
        "dev": first.data.dev,
        "test": first.data.test,
        "tasks": len(benchmark_tasks(first.benchmark, first.order)),
    }
    text = efficiency_markdown(table, points, args, time.time() - t0, sizes)
    (out / "efficiency.md").write_text(text)
    results = (
        Path(args.results)
        if args.results
        else (ROOT / "benchmarks" / "RESULTS.md" if out == DEFAULT_OUT.resolve() else None)
    )
    if results is not None and results.exists():
        from aimray.files import put_section, section_markers, write_text_atomic

        begin, end = section_markers(SECTION)
        write_text_atomic(results, put_section(results.read_text(), SECTION, f"{begin}\n{text}\n{end}"))
    print(text)
    return 0


def grid_table(out: Path, points: list[dict], orders: list[int], folders: dict) -> dict:
    """{point index: {"dev": [dev OP after each order], "test": [...], "done": bool}} from the finished runs."""
    from aimray.launch.ablations import is_finished
    from aimray.results import collect

    table = {}
    for i in range(len(points)):
        dev, test, done = [], [], True
        for o in orders:
            folder = folders[(i, o)]
            if not is_finished(folder):
                done = False
                break
            result = collect(folder)
            dev.append(result.metrics.get("dev_op", math.nan))
            test.append(result.metrics.get("op", math.nan))
        table[i] = {"dev": dev, "test": test, "done": done}
    return table


def replay_search(table: dict, points: list[dict], n_orders: int, budget: float, kind: str, seed: int) -> dict:
    """One search replayed on the grid: trials propose a value of each knob (so TPE models each knob, as in a
    sweep; a repeated point costs again) with the sweep's own TPE sampler (aimray.launch.tune.tpe_sampler,
    sized to the trials the budget allows) or at random, run order by order under a successive-halving
    pruner, until `budget` order-runs are spent. Returns the best completed trial's point, its dev
    objective, the compute."""
    import optuna

    from aimray.launch.tune import tpe_sampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = max(1, int(budget // n_orders))  # the trials the budget allows when none is pruned
    sampler = tpe_sampler(seed, trials) if kind == "tpe" else optuna.samplers.RandomSampler(seed=seed)
    pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2)
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    knobs = {key: sorted({p[key] for p in points}) for key in points[0]}
    index = {tuple(p[key] for key in knobs): i for i, p in enumerate(points)}
    spent = 0
    best = (None, -math.inf)
    while spent + 1 <= budget:
        trial = study.ask()
        point = index[tuple(trial.suggest_categorical(key, values) for key, values in knobs.items())]
        dev = table[point]["dev"]
        pruned = False
        for k in range(n_orders):
            if spent + 1 > budget:
                pruned = True
                break
            spent += 1
            value = float(sum(dev[: k + 1]) / (k + 1))
            trial.report(value, k + 1)
            if k + 1 < n_orders and trial.should_prune():
                pruned = True
                break
        if pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            continue
        objective = float(sum(dev) / n_orders)
        study.tell(trial, objective)
        if objective > best[1]:
            best = (point, objective)
    return {"point": best[0], "dev": best[1], "compute": spent, "trials": len(study.trials)}


def efficiency_markdown(table: dict, points: list[dict], args, seconds: float, sizes: dict) -> str:
    """The section: the grid's spread and what each knob does, one example's worth, then every search.
    `sizes`: dev and test examples per task and tasks per order (what one example is worth)."""
    n_orders = len(args.orders)
    done = {i: r for i, r in table.items() if r["done"]}
    lines = [
        "## Search efficiency: grid vs Optuna TPE + successive halving vs random search",
        "",
        f"`python benchmarks/sweep_efficiency.py` (preset `{args.preset}`, orders {','.join(map(str, args.orders))}), "
        f"{time.strftime('%Y-%m-%d')}. Grid: {' x '.join(args.grid)} = {len(points)} configs x {n_orders} orders; "
        f"{len(done)} of {len(points)} configs finished.",
        "",
    ]
    if len(done) < len(points):
        return "\n".join([*lines, "The grid is not finished yet: no comparison (run the same command again).", ""])
    mean = {i: sum(r["dev"]) / n_orders for i, r in done.items()}
    test = {i: sum(r["test"]) / n_orders for i, r in done.items()}
    grid_best = max(mean, key=mean.get)
    budget = args.budget * len(points) * n_orders
    dev_worth = 100 / (sizes["dev"] * sizes["tasks"] * n_orders)
    test_worth = 100 / (sizes["test"] * sizes["tasks"] * n_orders)
    ranked = sorted(mean.values())
    rho = spearman([mean[i] for i in done], [test[i] for i in done])
    test_best = max(test, key=test.get)
    lines += [
        f"One dev example is worth {dev_worth:.2f} points of the dev objective (mean OP over {n_orders} orders of "
        f"{sizes['tasks']} tasks, {sizes['dev']} dev examples each), one test example {test_worth:.2f} points of "
        f"test OP. The grid's dev OP: best {100 * ranked[-1]:.2f}, median {100 * ranked[len(ranked) // 2]:.2f}, "
        f"worst {100 * ranked[0]:.2f}; {sum(100 * (ranked[-1] - v) <= dev_worth + 1e-9 for v in ranked)} of "
        f"{len(ranked)} configs are within one dev example of the best. Dev and test rank the grid's configs "
        f"with Spearman rho {rho:.2f}; the best config by test is {points[test_best]} (test OP "
        f"{100 * test[test_best]:.2f}, dev OP {100 * mean[test_best]:.2f}).",
        "",
        "What each knob does over the grid (mean OP of the configs with that value, points):",
        "",
        "| knob | value | dev OP | test OP |",
        "|---|---|---|---|",
    ]
    lines += knob_rows(done, points, mean, test)
    lines += [
        "",
        f"The grid's best config by dev: {points[grid_best]} (dev OP {100 * mean[grid_best]:.2f}, test OP "
        f"{100 * test[grid_best]:.2f}); the grid's compute: {len(points) * n_orders} order-runs. Each search "
        f"gets {budget:.0f} ({args.budget:.2f} of it) and is replayed on the grid's results (every config it can "
        "propose is a grid point). Gap: the grid's best minus the search's choice, in OP points (dev, and test "
        "of the same configs); within 1: the dev gap (what the searches optimise) is at most one point.",
        "",
        "| search | seed | trials | compute (order-runs) | chosen config | dev gap | test gap | within 1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows, summary = search_rows(done, points, n_orders, budget, args.seeds, mean, test, dev_worth)
    lines += rows
    reading = (
        f"Reading: dev and test agree on the grid's order only weakly (rho {rho:.2f}), so finding the grid's "
        "best dev config is not finding its best test config; at this size a search tells knobs apart only "
        "where their effect exceeds a few dev examples, and larger dev sets are what would change that."
        if rho < 0.5
        else f"Reading: dev and test agree on the grid's order (rho {rho:.2f}): the dev objective is a usable guide."
    )
    return "\n".join([*lines, *summary_rows(summary), "", reading]) + "\n"


def knob_rows(done: dict, points: list[dict], mean: dict, test: dict) -> list[str]:
    """| knob | value | dev OP | test OP |: the mean over the grid's configs with that value, in points."""
    lines = []
    for key in points[0]:
        for value in sorted({p[key] for p in points}):
            chosen = [i for i in done if points[i][key] == value]
            d = 100 * sum(mean[i] for i in chosen) / len(chosen)
            t = 100 * sum(test[i] for i in chosen) / len(chosen)
            lines.append(f"| {key} | {value} | {d:.2f} | {t:.2f} |")
    return lines


def summary_rows(summary: dict[str, list[tuple]]) -> list[str]:
    """Per search kind: the mean gaps and how many seeds came within 1 point and within one dev example."""
    lines = [
        "",
        "| search | mean dev gap | mean test gap | within 1 point | within one dev example |",
        "|---|---|---|---|---|",
    ]
    for kind, rows in summary.items():
        gaps = [r for r in rows if not math.isnan(r[0])]
        mdev = sum(r[0] for r in gaps) / len(gaps) if gaps else math.nan
        mtest = sum(r[1] for r in gaps) / len(gaps) if gaps else math.nan
        within = f"{sum(r[2] for r in rows)} of {len(rows)} | {sum(r[3] for r in rows)} of {len(rows)}"
        lines.append(f"| {kind} | {mdev:.2f} | {mtest:.2f} | {within} |")
    return lines


def search_rows(
    done: dict, points: list[dict], n_orders: int, budget: float, seeds, mean: dict, test: dict, dev_worth: float
) -> tuple[list[str], dict[str, list[tuple]]]:
    """Each search replayed on the grid (TPE + successive halving, random; every seed): its table rows, and
    per search kind (dev gap, test gap, within 1 point, within one dev example) per seed."""
    grid_best = max(mean, key=mean.get)
    lines: list[str] = []
    summary = {}
    for kind in ("tpe", "random"):
        for seed in seeds:
            res = replay_search(done, points, n_orders, budget, kind, seed)
            if res["point"] is None:
                lines.append(f"| {kind} | {seed} | {res['trials']} | {res['compute']} | none completed | | | no |")
                summary.setdefault(kind, []).append((math.nan, math.nan, False, False))
                continue
            dev_gap = 100 * (mean[grid_best] - mean[res["point"]])
            test_gap = 100 * (test[grid_best] - test[res["point"]])
            within = dev_gap <= 1.0
            summary.setdefault(kind, []).append((dev_gap, test_gap, within, dev_gap <= dev_worth + 1e-9))
            config = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in points[res["point"]].items())
            lines.append(
                f"| {kind} | {seed} | {res['trials']} | {res['compute']} | {config} | {dev_gap:.2f} | {test_gap:.2f} "
                f"| {'yes' if within else 'no'} |"
            )
    return lines, summary


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (ties get their mean rank)."""
    import numpy as np

    def ranks(x: list[float]) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        order = x.argsort(kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x), dtype=float)
        for value in np.unique(x):  # ties: their mean rank
            r[x == value] = r[x == value].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    return float(np.corrcoef(ra, rb)[0, 1]) if ra.std() and rb.std() else float("nan")


if __name__ == "__main__":
    sys.exit(main())
