"""Reports: the prose and the markdown made from analysis.tables' numbers. Display cells (points, mean ±
std, intervals), markdown and LaTeX renderers, a sweep's best.md with what it can conclude, an ablation
study's ablation.md, the held-out orders' reading, and the claims of a method comparison (where AimMerging
wins and where it does not). tables.py computes; this module words and renders.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from analysis.tables import ABLATION_NAMES, NAMES, TIE, cell, order_means

# ---------------------------------------------------------------------------------------------- render


def markdown(cells: pd.DataFrame) -> str:
    """A DataFrame of display cells as a GitHub markdown table."""
    lines = ["| " + " | ".join(map(str, cells.columns)) + " |", "|" + "---|" * len(cells.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def latex(cells: pd.DataFrame, caption: str = "", label: str = "") -> str:
    """A DataFrame of display cells as a booktabs LaTeX table (needs \\usepackage{booktabs})."""

    def esc(v) -> str:
        s = cell(v).replace("±", "$\\pm$")
        for ch in ("_", "%", "&", "#"):
            s = s.replace(ch, "\\" + ch)
        return s

    lines = [
        "\\begin{table}[t]",
        "\\centering",
        "\\begin{tabular}{l" + "r" * (len(cells.columns) - 1) + "}",
        "\\toprule",
        " & ".join(esc(c) for c in cells.columns) + " \\\\",
        "\\midrule",
    ]
    lines += [" & ".join(esc(v) for v in row) + " \\\\" for row in cells.itertuples(index=False)]
    lines += ["\\bottomrule", "\\end{tabular}"]
    if caption:
        lines.append(f"\\caption{{{esc(caption)}}}")
    if label:
        lines.append(f"\\label{{{label}}}")
    lines.append("\\end{table}")
    return "\n".join(lines) + "\n"


def points(v: float) -> str:
    """A fraction in points with two decimals ("–" for a missing value; never "-0.00")."""
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{round(100 * v, 2) + 0.0:.2f}"


def plus_minus(mean: float, std: float) -> str:
    if mean is None or math.isnan(mean):
        return "–"
    return f"{points(mean)} ± {points(std)}"


def interval(point: float, lo: float, hi: float, signed: bool = True) -> str:
    """`mean [lo, hi]` from fractions, in points with two decimals ("+1.50 [-0.50, +3.00]"; unsigned:
    "1.50 [..]"); "–" for a missing mean, the mean alone ("+1.50 [–]") without an interval."""

    def fmt(v: float) -> str:
        return f"{round(100 * v, 2) + 0.0:{'+' if signed else ''}.2f}"

    if point is None or point != point:
        return "–"
    if lo is None or hi is None or lo != lo or hi != hi:
        return f"{fmt(point)} [–]"
    return f"{fmt(point)} [{fmt(lo)}, {fmt(hi)}]"


def _points_mean_std(values: pd.Series) -> str:
    """The mean +/- std of values already in points, two decimals each; "-" when there is none."""
    return "-" if values.empty else f"{values.mean():.2f} +/- {values.std(ddof=0):.2f}"


def _same(a, b) -> bool:
    if isinstance(b, float) or isinstance(a, float):
        return a is not None and b is not None and abs(float(a) - float(b)) < 1e-9
    return a == b


def _objective_cell(column: str, value: float) -> str:
    """compute in examples (a count), every other objective in points."""
    if column.endswith("compute"):
        return f"{value:.0f}"
    return f"{100 * value:.2f}"


# ------------------------------------------------------------------------------------------- cells


def comparison(
    table: pd.DataFrame,
    by: str = "method",
    metrics_shown=("op", "bwt", "fwt_paper", "fwt_base"),
    per_order: pd.DataFrame | None = None,
):
    """The method table as display cells (points): with `per_order` (order_table) of several orders, OP
    and BWT per order; mean +/- std of each metric (columns of metrics no run has are dropped), merges per
    task, wall time."""
    shown = [m for m in metrics_shown if table[f"{m}/mean"].notna().any()]
    orders = sorted(per_order.order.unique()) if per_order is not None else []
    cols: dict[str, list[str]] = {by: [str(v) for v in table[by]], "runs": [str(v) for v in table.runs]}
    for m in shown:
        if m in ("op", "bwt") and len(orders) > 1:
            for o in orders:
                values = per_order[per_order.order == o].set_index(by)[m]
                cols[f"{NAMES[m]} o{o}"] = [points(values.get(key, math.nan)) for key in table[by]]
        pairs = zip(table[f"{m}/mean"], table[f"{m}/std"], strict=True)
        cols[f"{NAMES[m]} mean ± std"] = [plus_minus(a, b) for a, b in pairs]
    cols["merges/task"] = [f"{v:.1f}" for v in table.merges_per_task]
    cols["wall (s)"] = [f"{v:.0f}" for v in table.wall_seconds]
    return pd.DataFrame(cols)


def paired_cells(pairs: pd.DataFrame, reference: str = "aimmerging", metrics_shown=("op", "bwt")) -> pd.DataFrame:
    """`paired` as display cells: difference in points, and wins-ties-losses of the reference."""
    cols: dict[str, list[str]] = {"method": list(pairs.method), "pairs": [str(v) for v in pairs.pairs]}
    for m in metrics_shown:
        if pairs[f"{m}/diff"].isna().all():
            continue
        cols[f"{reference} − method, {NAMES[m]}"] = [f"{100 * v:+.2f}" if v == v else "–" for v in pairs[f"{m}/diff"]]
        wtl = zip(pairs[f"{m}/wins"], pairs[f"{m}/ties"], pairs[f"{m}/losses"], strict=True)
        cols[f"{NAMES[m]} wins-ties-losses"] = [f"{w}-{t}-{lo}" if w + t + lo else "–" for w, t, lo in wtl]
    return pd.DataFrame(cols)


POWER_SHOWN = 1000  # pairs; beyond it the power column says "over 1,000"


def decision_cells(table: pd.DataFrame, hours: dict | None = None) -> pd.DataFrame:
    """analysis.planner.comparisons as display cells: AimMerging minus the method (points) with the design's
    interval, pairs read of the pairs the design wants, the decision, and the pairs (hours, given run `hours`
    per method and AimMerging's) an open comparison would need for the design's power at its mean."""
    if table.empty:
        return pd.DataFrame()

    def need(r) -> str:
        if r.power_pairs is None or r.power_pairs != r.power_pairs:
            return "–"
        if r.power_pairs > POWER_SHOWN:  # a mean near 0: no study of this kind would find it
            return f"over {POWER_SHOWN:,}"
        text = f"{int(r.power_pairs)}"
        if hours and r.method in hours:
            text += f" ({int(r.power_pairs) * (hours[r.method] + hours['aimmerging']):.1f} h)"
        return text

    def diff(r) -> str:
        if r.mean != r.mean:
            return "–"
        return f"{r.mean:+.2f}" + ("" if r.lo != r.lo else f" [{r.lo:+.2f}, {r.hi:+.2f}]")

    cols = {
        "method": list(table.method),
        "metric": [NAMES.get(m, m) for m in table.metric],
        "aimmerging − method": [diff(r) for r in table.itertuples()],
        "pairs / target": [
            f"{r.pairs} / {int(r.target)}" if r.target == r.target and r.target else f"{r.pairs} / –"
            for r in table.itertuples()
        ],
        "decision": list(table.decision),
        "pairs for power at the mean": [need(r) for r in table.itertuples()],
    }
    return pd.DataFrame(cols)


def paired_interval_cells(
    pairs: pd.DataFrame, reference: str = "aimmerging", metrics_shown=("op", "bwt")
) -> pd.DataFrame:
    """`paired_intervals` as display cells (points): per metric, the mean difference with its interval,
    `mean [lo, hi]` (`interval`), whether the interval contains 0 ("yes": the pairs do not tell the two
    methods apart at that level; "–": fewer than two pairs), and wins-ties-losses of the reference."""
    cols: dict[str, list[str]] = {"method": list(pairs.method), "pairs": [str(v) for v in pairs.pairs]}
    pct = f"{100 * float(pairs.level.iloc[0]):g}%" if len(pairs) else "95%"
    for m in metrics_shown:
        if pairs[f"{m}/diff"].isna().all():
            continue
        spans = zip(pairs[f"{m}/diff"], pairs[f"{m}/lo"], pairs[f"{m}/hi"], strict=True)
        cols[f"{reference} − method, {NAMES[m]} mean [{pct} interval]"] = [interval(*v) for v in spans]
        cols[f"{NAMES[m]}: 0 in interval"] = [
            "–" if z is None or z != z else ("yes" if z else "no") for z in pairs[f"{m}/contains_zero"]
        ]
        wtl = zip(pairs[f"{m}/wins"], pairs[f"{m}/ties"], pairs[f"{m}/losses"], strict=True)
        cols[f"{NAMES[m]} wins-ties-losses"] = [f"{w}-{t}-{lo}" if w + t + lo else "–" for w, t, lo in wtl]
    return pd.DataFrame(cols)


def sensitivity_cells(sens: pd.DataFrame) -> pd.DataFrame:
    """The sensitivity table for display (points)."""
    return pd.DataFrame(
        {
            "knob": sens.knob,
            "bin": sens.bin,
            "trials": sens.trials,
            "objective (dev)": [plus_minus(a, b) for a, b in zip(sens.objective, sens.objective_std, strict=True)],
            "test OP": [points(v) for v in sens.op],
            "test BWT": [points(v) for v in sens.bwt],
            "order spread": [points(v) for v in sens.order_spread],
        }
    )


def best_cells(best: pd.DataFrame, knobs: Sequence[str]) -> pd.DataFrame:
    """`best_trials` as display cells: objective and test metrics in points, then each knob's value."""
    cells = {"trial": best.trial_id, "objective (dev)": [points(v) for v in best.objective]}
    for c, name in (("op", "test OP"), ("bwt", "test BWT"), ("op_spread", "order spread")):
        if c in best:
            cells[name] = [points(v) for v in best[c]]
    for k in knobs:
        if f"config/{k}" in best:
            cells[k] = [cell(v) for v in best[f"config/{k}"]]
    return pd.DataFrame(cells)


def pareto_cells(front: pd.DataFrame, objectives: Sequence[str], knobs: Sequence[str]) -> pd.DataFrame:
    """`pareto_front` as display cells: objectives and test metrics in points (compute in examples), then
    each knob's value."""
    cells = pd.DataFrame({"trial": front.trial_id})
    for name in objectives:
        cells[name] = [_objective_cell(name, v) for v in front[f"objective/{name}"]]
    cells["test OP"] = [points(v) for v in front.op]
    cells["test BWT"] = [points(v) for v in front.bwt]
    for k in knobs:
        if f"config/{k}" in front:
            cells[k] = [cell(v, missing="") for v in front[f"config/{k}"]]
    return cells


def controller_cells(table: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "method": table.method,
            "tasks with a memory": table.tasks,
            "merges per task": [
                f"{m:.1f} ({lo}-{hi})"
                for m, lo, hi in zip(table.merges_per_task, table.min_merges, table.max_merges, strict=True)
            ],
            "tasks where S changed": [f"{100 * v:.0f}%" for v in table.s_changed],
            "S range": [f"{lo}-{hi}" for lo, hi in zip(table.s_min, table.s_max, strict=True)],
            "triggers": table.triggers,
        }
    )


# -------------------------------------------------------------------------------- the launchers' reports


def ablation_markdown(table: pd.DataFrame) -> str:
    """ablation.md from `ablation_runs`: per method (in the table's order), the finished runs and the mean
    +/- std (points, over orders and seeds) of every metric the table has, the FWT variants named, mean
    merges and wall seconds; then the runs not finished."""
    ok = table[table.status == "success"]
    cols = [c for c in ("op", "bwt", "forgetting", "fwt_paper", "fwt_base") if c in ok]
    lines = [
        "| method | runs | " + " | ".join(ABLATION_NAMES[c] for c in cols) + " | merges | wall time (s) |",
        "|" + "---|" * (len(cols) + 4),
    ]
    for method, group in ok.groupby("method", sort=False):
        cells = [method, str(len(group))] + [_points_mean_std(100 * group[c].dropna()) for c in cols]
        cells += [f"{group.merges.mean():.1f}", f"{group.wall_seconds.mean():.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    failed = table[table.status != "success"]
    if len(failed):
        lines += ["", f"{len(failed)} runs not finished: " + ", ".join(failed.run)]
    return "\n".join(lines) + "\n"


def best_markdown(
    trials: pd.DataFrame,
    per_order: pd.DataFrame | None,
    *,
    method: str,
    benchmark: str,
    orders: Sequence[int],
    objective: str,
    seconds: float,
    knobs: Sequence[str] = (),
    top: int = 5,
    objectives: Sequence[str] | None = None,
    holdout: pd.DataFrame | None = None,
    default: dict | None = None,
    dev_per_task: int | None = None,
    tasks: int | None = None,
    mode: str = "score",
) -> str:
    """A sweep's best.md from its trials table (trials.parquet, best objective first) and its per-order
    results (trial_orders.parquet): the trial counts by status and the wall time, then the `top` completed
    trials with their objective (dev), mean test OP and BWT over orders (points) and the values of the
    searched `knobs`; with several `objectives`, the Pareto front instead; with `holdout`
    (holdout.parquet), the chosen configs on the held-out orders beside the defaults. With
    `default` (the preset's point), `dev_per_task` and `tasks`: what the sweep can conclude, i.e. how many
    points one dev example is worth and whether the best trial beats the default beyond that. `mode`: the
    scoring the objective reads (the runs' headline eval.mode)."""
    completed = trials[trials.status == "completed"]
    done = order_means(completed[completed.pareto] if objectives else completed.head(top), per_order)
    config_cols = [f"config/{k}" for k in knobs if f"config/{k}" in trials]
    what = f"objectives {', '.join(objectives)}" if objectives else f"objective {objective}"
    lines = [
        f"# Sweep: {method} on {benchmark}, orders {list(orders)}, {what} (dev, {mode} scoring)",
        "",
        f"{len(trials)} trials ({(trials.status == 'completed').sum()} completed, "
        f"{(trials.status == 'stopped').sum()} stopped early, {(trials.status == 'error').sum()} errors) "
        f"in {seconds / 60:.1f} min.",
        "",
    ]
    scored = [f"objective/{k}" for k in objectives] if objectives else ["objective"]
    if objectives:
        lines += [
            f"The Pareto front: {len(done)} of {len(completed)} completed trials that no other trial beats "
            "on every objective.",
            "",
        ]
    names = list(objectives) if objectives else ["objective"]
    header = ["trial", *names, "test OP", "test BWT", *[k for k in knobs if f"config/{k}" in trials]]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, r in done.iterrows():
        cells = [r.trial_id, *[_objective_cell(c, r[c]) for c in scored]]
        cells += [f"{100 * r.op:.2f}", f"{100 * r.bwt:.2f}"]
        cells += [cell(r[c], missing="") for c in config_cols]
        lines.append("| " + " | ".join(cells) + " |")
    if dev_per_task and tasks and objective in ("dev_op", "dev_op_bwt", "worst_dev_op"):
        means = order_means(trials, per_order)
        lines += ["", *conclusion_lines(means, knobs, default, dev_per_task, tasks, len(orders))]
    if holdout is not None and len(holdout):
        lines += ["", *holdout_lines(holdout, dev_per_task * tasks if dev_per_task and tasks else None)]
    return "\n".join(lines) + "\n"


def conclusion_lines(
    trials: pd.DataFrame, knobs: Sequence[str], default: dict | None, dev_per_task: int, tasks: int, orders: int
) -> list[str]:
    """What the sweep can and cannot conclude: one dev example's worth in objective points, the spread of
    dev OP across orders, and the best completed trial against the default point (trial or none).
    `trials`: with the order means (order_means)."""
    worth = 100.0 / (dev_per_task * tasks * orders)  # one dev example in one order, on the mean objective
    t = trials[trials.status == "completed"]
    lines = ["## What this sweep can conclude", ""]
    lines.append(
        f"One dev example moves the objective by {worth:.2f} points ({dev_per_task} dev examples per task, {tasks} "
        f"tasks, {orders} orders)."
    )
    if len(t) and t.dev_op_spread.notna().any():
        lines.append(
            f"Dev OP spread across orders (std, completed trials): median {100 * t.dev_op_spread.median():.2f} points."
        )
    config_cols = [f"config/{k}" for k in knobs if f"config/{k}" in t]
    is_default = pd.Series(False, index=t.index)
    if default:
        is_default = pd.Series(
            [
                all(_same(r[f"config/{k}"], v) for k, v in default.items() if f"config/{k}" in t)
                for _, r in t.iterrows()
            ],
            index=t.index,
        )
    if len(t) < 2 or not is_default.any() or not config_cols:
        lines.append("No completed default trial to compare the best with.")
        return lines
    best, base = t.objective.max(), t[is_default].objective.max()
    gap = 100 * (best - base)
    if gap <= 0:
        lines.append("No trial beats the default (the preset's values) on dev.")
    elif gap <= worth:
        lines.append(f"The best trial beats the default by {gap:.2f} points: within one dev example, i.e. noise.")
    else:
        lines.append(
            f"The best trial beats the default by {gap:.2f} points, {gap / worth:.1f} dev examples: beyond one "
            "example, but with one seed and this many examples a re-run on other seeds (or held-out orders) "
            "is what tells a better config from a lucky one."
        )
    return lines


def holdout_lines(holdout: pd.DataFrame, dev_per_order: int | None = None) -> list[str]:
    """The held-out orders: per config, mean dev and test OP / BWT over those orders and its compute, and
    its difference from the defaults (the test of whether tuned values carry over to an unseen order); with
    `dev_per_order` (dev examples per order: per task x tasks), whether each difference on dev exceeds one
    dev example."""
    orders = sorted(holdout.order.unique())
    ok = holdout[holdout.status == "success"]
    means = ok.groupby("config", sort=False)[["dev_op", "dev_bwt", "op", "bwt", "compute"]].mean()
    lines = [
        f"## On the held-out orders {', '.join(map(str, orders))} (not seen by the search)",
        "",
        "| config | dev OP | dev BWT | test OP | test BWT | compute | dev OP vs default | test OP vs default |",
        "|---|---|---|---|---|---|---|---|",
    ]
    base = means.loc["default"] if "default" in means.index else None
    readings = []
    for name, r in means.iterrows():
        cells = [points(r.dev_op), points(r.dev_bwt), points(r.op), points(r.bwt), f"{r.compute:.0f}"]
        if name == "default" or base is None:
            cells += ["", ""]
        else:
            dev_gap, test_gap = 100 * (r.dev_op - base.dev_op), 100 * (r.op - base.op)
            cells += [f"{dev_gap:+.2f}", f"{test_gap:+.2f}"]
            if dev_per_order:
                worth = 100.0 / (dev_per_order * len(orders))
                verdict = (
                    "carries over"
                    if dev_gap >= worth
                    else "does not carry over (the defaults do better)"
                    if dev_gap <= -worth
                    else "is within one dev example of the defaults"
                )
                readings.append(
                    f"{name} {verdict}: dev OP {dev_gap:+.2f} points, {dev_gap / worth:+.1f} dev examples "
                    f"(one is {worth:.2f} points here); test OP {test_gap:+.2f} (reported, not chosen on)."
                )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if readings:
        lines += ["", *readings]
    failed = holdout[holdout.status != "success"]
    if len(failed):
        lines += [
            "",
            f"{len(failed)} held-out run(s) failed: "
            + "; ".join(f"{r.config} order {r.order}: {r.error}" for r in failed.itertuples()),
        ]
    return lines


# ------------------------------------------------------------------------------------------ claims


def claims(table, pairs: int | None = None, behind: dict | None = None, fwt_pairs: int | None = None) -> list[str]:
    """The paper's claims (+1.9 OP, +5.5 BWT and +2.9 FWT over the best baseline, fewer merges than a fixed
    interval) against this table, in plain words (FWT: the paper's variant, against single-task runs, where the
    study has them); baselines are the methods that are not AimMerging's ablations or the single-task / joint
    references. `pairs`: the order-seed pairs the table is read on; `behind`: {method: its pairs} for the
    methods left out for having fewer; `fwt_pairs`: of those pairs, how many FWT is read on (the ones with
    a single_task run)."""
    rows = table.set_index("method")
    if "aimmerging" not in rows.index:
        return []
    baselines = [m for m in rows.index if not m.startswith("aimmerging") and m not in ("single_task", "mtl")]
    if not baselines:
        return []
    if pairs is None:
        where = "On the order-seed pairs every method has finished"
    else:
        where = f"On the {pairs} order-seed pairs every method here has finished"
    if behind:
        left = ", ".join(f"{m} ({n} of {pairs})" for m, n in behind.items())
        where += f"; left out until they have them: {left}"
    lines = ["", "## Against the paper's claims", "", where + ".", ""]
    aim = rows.loc["aimmerging"]
    for metric, name, paper in (("op", "OP", 1.9), ("bwt", "BWT", 5.5), ("fwt_paper", "FWT", 2.9)):
        have = rows.loc[baselines, f"{metric}/mean"].dropna() if f"{metric}/mean" in rows else rows.iloc[:0]
        if have.empty or aim[f"{metric}/mean"] != aim[f"{metric}/mean"]:
            if metric == "fwt_paper":  # it reads single-task runs: none on the pairs every method has
                lines.append(
                    f"- FWT: open: the paper's variant needs single_task runs on these pairs (the paper: +{paper})."
                )
            continue
        best = have.idxmax()
        diff = 100 * (aim[f"{metric}/mean"] - have.max())
        verdict = "AimMerging ahead" if diff > 0 else "AimMerging behind" if diff < 0 else "a tie"
        few = metric == "fwt_paper" and fwt_pairs is not None and pairs is not None and fwt_pairs < pairs
        lines.append(
            f"- {name}: AimMerging {100 * aim[f'{metric}/mean']:.2f}, the best baseline ({best}) "
            f"{100 * have.max():.2f}: {diff:+.2f} points ({verdict}; the paper: +{paper} on its benchmarks)"
            + (f"; read on {fwt_pairs} of the {pairs} pairs, those with a single_task run." if few else ".")
        )
    lines += not_won(rows)
    if "fixed_interval" in rows.index:
        a, f = aim.merges_per_task, rows.loc["fixed_interval"].merges_per_task
        lines.append(
            f"- Merges: AimMerging {a:.1f} per task (task 1 included), fixed_interval {f:.1f} "
            f"({'fewer' if a < f else 'not fewer'}, {a / f:.2f}x; the paper: fewer merges than a fixed interval)."
        )
    return lines


def not_won(rows) -> list[str]:
    """Every method (ablations and references included) whose mean OP or BWT is level with AimMerging's or
    above it, in one line per metric; nothing where AimMerging leads all of them."""
    aim = rows.loc["aimmerging"]
    lines = []
    for metric, name in (("op", "OP"), ("bwt", "BWT")):
        own = aim[f"{metric}/mean"]
        others = rows[f"{metric}/mean"].drop("aimmerging").dropna().sort_values(ascending=False)
        ahead = [f"{m} {points(v)} ({100 * (v - own):+.2f})" for m, v in others.items() if v - own > TIE]
        level = [m for m, v in others.items() if abs(v - own) <= TIE]
        parts = [f"ahead of it: {', '.join(ahead)}"] if ahead else []
        parts += [f"level with it: {', '.join(level)}"] if level else []
        if parts:
            lines.append(f"- Where AimMerging does not win on {name} ({points(own)}): {'; '.join(parts)}.")
    return lines
