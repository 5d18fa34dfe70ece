"""`python benchmarks/quality.py --plan adaptive`: the pilot grid, then the pairs analysis.planner picks, run
on Ray a round at a time, until every comparison is decided or the budget is spent.

The pairs are (order, seed) in a fixed sequence: the study's orders at its seeds (the pilot), then the
benchmark's other orders (the long benchmark's seeded permutations 101-120) at the first seed, then every
order at the next seeds. A round plans from the finished runs alone (the pilot's spreads and the runs' mean
hours: processor time where every run counted it, else wall time), starts as many runs as run side by side,
and plans again: stop it at any time and run the same command to continue (finished runs are cached by
config hash, an interrupted one resumes). <out>/plan.json records the design, the budget and every round; a
changed design is refused (its readings would be a new look at the same pairs).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from analysis import planner as P

PLAN_FILE = "plan.json"


def pair_sequence(benchmark: str, orders: list[int], seeds: list[int], more_seeds: int = 4) -> list[tuple[int, int]]:
    """The pairs in the order the planner adds them (the first len(orders) * len(seeds) are the pilot)."""
    from aimray.tasks import get_benchmark

    others = [o for o in sorted(get_benchmark(benchmark).orders) if o not in orders]
    later = range(max(seeds) + 1, max(seeds) + 1 + more_seeds)
    return (
        [(o, s) for s in seeds for o in orders]
        + [(o, seeds[0]) for o in others]
        + [(o, s) for s in later for o in [*orders, *others]]
    )


def read_state(out: Path, sequence, methods: list[str], design: P.Design, budget_hours: float, mode: str | None = None):
    """Where the plan stands (analysis.planner.standing) from the runs of `methods` under `out`, in `mode`
    (default: each run's headline scoring, generation under the long preset)."""
    from analysis import tables as T
    from analysis.load import NotAStudyError, open_study

    try:
        runs = T.run_metrics(open_study(out, mode=mode))
    except NotAStudyError:
        return P.standing(None, sequence, design, budget_hours)
    mine = runs[runs.method.isin(methods)] if len(runs) else runs
    return P.standing(mine, sequence, design, budget_hours, methods)


def check_plan_file(out: Path, design: P.Design, budget_hours: float, sequence, methods: list[str]) -> dict:
    """<out>/plan.json, made or read: a design other than the recorded one is refused (naming the field); the
    study's methods are recorded (the notebook's progress view counts a method without runs as pilot)."""
    from aimray.files import read_json

    path = out / PLAN_FILE
    if not path.exists():
        return {
            "design": design.to_dict(),
            "budgets": [budget_hours],
            "sequence": sequence,
            "methods": list(methods),
            "rounds": [],
        }
    record = read_json(path)
    record["methods"] = list(methods)
    for key, value in design.to_dict().items():
        if record["design"].get(key) != value:
            raise ValueError(
                f"{path}: this study was planned with {key}={record['design'].get(key)}, not {value}: a new design "
                "would read the same pairs again (a second look); use another --out"
            )
    if budget_hours != record["budgets"][-1]:
        print(f"[plan] budget {record['budgets'][-1]} h -> {budget_hours} h (recorded in {PLAN_FILE})")
        record["budgets"].append(budget_hours)
    return record


def run_planned(
    base_cfgs: list, out: Path, make, args, design: P.Design, sequence, methods: list[str], record: dict
) -> list:
    """Run the pilot grid (`base_cfgs`), then the planned pairs round by round, recording each round in
    `record` (check_plan_file's); returns every config the study ran. `make(method, order, seed)` builds a
    checked config."""
    import os

    from aimray.files import write_json_atomic
    from aimray.launch.ablations import run_study

    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / PLAN_FILE, record)
    run_study(base_cfgs, out, args.cpus_per_run)
    cfgs, tried = list(base_cfgs), set()
    slots = max(1, math.floor((os.cpu_count() or 1) / args.cpus_per_run))
    while True:
        state = read_state(out, sequence, methods, design, args.budget_hours)
        if not state["plan"]:
            break
        room = slots if args.max_runs is None else min(slots, args.max_runs - len(tried))
        if room <= 0:
            print(f"[plan] --max-runs {args.max_runs} reached in this sitting; the same command continues")
            break
        batch = [make(m, *sequence[i]) for m, i in state["plan"][:room]]
        again = [f"{c.method} order {c.order} seed {c.seed}" for c in batch if (c.method, c.order, c.seed) in tried]
        if again:  # it ran in this sitting and did not finish: its folder says why
            raise RuntimeError(f"planned run(s) did not finish: {', '.join(again)} (see their folders under {out})")
        tried |= {(c.method, c.order, c.seed) for c in batch}
        left = len(state["plan"])
        print(
            f"[plan] {hours(state['spent'])} of {hours(args.budget_hours)} spent; {left} runs planned; next: "
            + ", ".join(f"{c.method} order {c.order} seed {c.seed}" for c in batch)
        )
        record["rounds"].append(
            {
                "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "spent_hours": round(state["spent"], 3),
                "clock": state["clock"],  # the hours' clock (analysis.planner.cost_clock)
                "planned": [[m, *sequence[i]] for m, i in state["plan"]],
            }
        )
        write_json_atomic(out / PLAN_FILE, record)
        cfgs += batch
        run_study(cfgs, out, args.cpus_per_run)
    return cfgs


def study_markdown(out: Path, args, design: P.Design, sequence, methods: list[str], command: str) -> str:
    """RESULTS-long.md: the method table in both scorings, the planner's decisions and hours, the controller
    at work and the paper's claims, from every finished run under `out`."""
    import platform

    import quality

    from aimray.provenance import provenance
    from analysis import report as R
    from analysis import tables as T
    from analysis.load import open_study

    prov = provenance()
    hw = prov.get("hardware", {})
    head = [
        "# Long study: AimMerging over 15 tasks with generated answers (offline-long, long preset)",
        "",
        f"`{command}`. Real SmolLM2-135M-Instruct; offline-long's 15 tasks (`python -m aimray tasks --benchmark "
        f"offline-long -v`). Written {time.strftime('%Y-%m-%d')} on {platform.machine()} ({hw.get('cpus', '?')} "
        f"CPUs, {', '.join(hw.get('gpus', [])) or 'no GPU'}), torch {prov['versions'].get('torch')}, commit "
        f"{prov.get('git', {}).get('commit', '?')[:10]}.",
        "",
    ]
    state = read_state(out, sequence, methods, design, args.budget_hours)
    if state["runs"] is None:
        return "\n".join([*head, "No run has finished yet.", ""])
    runs = state["runs"]
    pilot = set(sequence[: design.pilot])
    in_pilot = [(o, sd) in pilot for o, sd in zip(runs.order, runs.seed, strict=True)]
    per = runs[in_pilot].method.value_counts()
    body = [
        f"Pilot ({design.pilot} pairs: {', '.join(f'order {o} seed {sd}' for o, sd in sequence[: design.pilot])}): "
        f"{sum(in_pilot)} of {len(methods) * design.pilot} runs finished ("
        + ", ".join(f"{m} {per.get(m, 0)}" for m in methods)
        + f"; the rest queued in that order); planned runs finished: {len(runs) - sum(in_pilot)}. Wall times are "
        "of runs that shared this 2-core machine (two at a time; three at times before the stop-flag fix of "
        "2026-12-07, LOG.md; and beside tests at times): compute spent, not speed."
    ]
    by_mode = {}  # every scoring's finished runs, the headline (the runs' first scoring) first
    for mode in dict.fromkeys(m for ms in _modes(out) for m in ms):
        mruns = T.run_metrics(open_study(out, mode=mode))
        by_mode[mode] = mruns[mruns.method.isin(methods)]
        table = T.method_table(by_mode[mode])
        cells = R.comparison(table, metrics_shown=("op", "bwt", "fwt_paper", "fwt_base", "forgetting"))
        cells.insert(len(cells.columns) - 1, "rehearsal examples", [f"{v:.0f}" for v in table.rehearsal_examples])
        body += ["", f"## Methods, scoring: {mode}", "", R.markdown(cells)]
    body += decisions_section(state, design, args.budget_hours, sequence, by_mode)
    body += open_questions(state.get("table"))
    study = open_study(out).select(list(runs.path))
    body += quality.controller_section(study, out, Path(args.results))
    body += R.claims(*quality.claims_inputs(runs))
    return "\n".join([*head, *body]) + "\n"


def _modes(out: Path) -> list[list[str]]:
    from aimray.manifest import Manifest
    from analysis.load import run_folders, run_modes

    return [run_modes(Manifest.read(folder)) for folder in run_folders(out)]


def open_questions(table) -> list[str]:
    """In plain words, what the headline scoring has decided and what is still open."""
    if table is None or table.empty:
        return []
    from analysis.tables import NAMES

    def said(r) -> str:
        if r.decision == "difference":
            return f"{r.method} {NAMES[r.metric]}: AimMerging {'higher' if r.mean > 0 else 'lower'} ({r.mean:+.2f})"
        if r.decision == "equivalent":
            return f"{r.method} {NAMES[r.metric]}: practically equivalent ({r.mean:+.2f})"
        return f"{r.method} {NAMES[r.metric]} ({r.decision}, {r.pairs} pairs, mean {r.mean:+.2f})"

    decided = [said(r) for r in table.itertuples() if r.decision in ("difference", "equivalent")]
    still = [said(r) for r in table.itertuples() if r.decision not in ("difference", "equivalent")]
    lines = ["", "Decided: " + ("; ".join(decided) if decided else "nothing yet") + "."]
    if still:
        lines.append("Still open: " + "; ".join(still) + ".")
    return lines


CLOCKS = {
    "wall": "wall time",  # some runs did not count processor time (or ran on a GPU)
    "cpu": "processor time",
}


def hours(h: float) -> str:
    """Hours as a reader takes them in: "2.45 h", or minutes below a tenth of an hour."""
    return f"{h:.2f} h" if h >= 0.1 else f"{60 * h:.1f} min"


def decisions_section(state: dict, design: P.Design, budget: float, sequence, by_mode: dict) -> list[str]:
    """The comparisons' readings in each scoring (`by_mode`: its finished runs, the headline first), the hours
    the plan spent against a fixed grid's for the same decisions, and what the open ones would need."""
    from analysis import report as R

    lines = [
        "",
        "## AimMerging against each method: decisions",
        "",
        f"Design: Stein's two-stage procedure on the paired differences (same order and seed), alpha "
        f"{design.alpha} two-sided, margin ±{design.margin} points, pilot {design.pilot} pairs "
        f"(t quantile {design.quantile:.2f} on {design.pilot - 1} degrees of freedom). The interval is the mean "
        "± t · s0 / √n with s0 the pilot's standard deviation; the next pairs are chosen from the pilot's spreads "
        "and the runs' hours only, and a comparison is read once, at its target (the fewest pairs whose half-width "
        "is at most margin/2, where every outcome is decided) or when the budget is spent. Before that a reading is "
        "provisional (`running`). Simulated (tests/test_planner.py): equal methods are declared different in "
        "under 6% of 4,000 studies; stopping at the first plain t interval that clears 0 does so in over 12%.",
    ]
    final = state.get("plan") == []  # None: the pilot is not complete, and no reading is final before it is
    for k, (mode, runs) in enumerate(by_mode.items()):
        table = P.comparisons(runs, sequence, design, final=final)
        lines += ["", f"Scoring: {mode}" + (" (the runs' headline: it decides the plan)" if k == 0 else ""), ""]
        lines.append(R.markdown(R.decision_cells(table, state.get("hours"))) if len(table) else "No pairs yet.")
    if state.get("hours") is None:
        return [*lines, "", "The pilot is not complete: nothing planned yet."]
    table = state["table"]
    fixed = P.fixed_design_hours(table, state["hours"])
    planned = state["plan"] or []
    clock = CLOCKS[state["clock"]]
    lines += [
        "",
        f"Hours: {hours(state['spent'])} spent of a {hours(budget)} budget (run {clock}, pilot included); a fixed "
        f"grid giving every compared method the {int(table.pairs.max())} pairs the most-run comparison has would cost "
        f"{hours(fixed)}. A run's mean {clock}: "
        + ", ".join(f"{m} {hours(h)}" for m, h in state["hours"].items())
        + ". "
        + (
            "The pilot is not complete: nothing planned yet."
            if state.get("plan") is None
            else f"Still planned: {len(planned)} runs."
            if planned
            else "Nothing left to plan: the readings are final."
        ),
    ]
    return lines
