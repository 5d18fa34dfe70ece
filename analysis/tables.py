"""Tables from a study: per-run metrics, the method / ablation comparison (paired differences with
bootstrap intervals from analysis.stats: `paired_intervals`), the sweep's sensitivity study and
parameter importances. Every table is a DataFrame; `markdown` and `latex` render one for a paper. The
launchers' own summaries are made here too: an ablation study's runs.parquet and ablation.md
(`ablation_runs`, `ablation_markdown`) and a sweep's best.md (`best_markdown`).

Metrics come from aimray.metrics (pure numpy over the accuracy matrix, the functions the Tune objective
uses), in points (x100) only when rendered.
"""

from __future__ import annotations

import math
import re
import warnings
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pandas as pd

from aimray.methods import METHODS
from aimray.results import accuracy_matrix, fwt_vs_single_task, run_summary
from analysis import stats
from analysis.load import Study

METRICS = ("op", "bwt", "fwt_paper", "fwt_base", "forgetting")
TIE = 1e-9  # two metric values closer than this are the same (a tie; an interval end this close to 0 is 0)
NAMES = {
    "op": "OP",
    "bwt": "BWT",
    "fwt_paper": "FWT (paper)",
    "fwt_base": "FWT (base)",
    "forgetting": "Forgetting",
    "dev_op": "dev OP",
    "objective": "objective",
}


# ------------------------------------------------------------------------------------------- per run


def matrix(study: Study, path: str, split: str = "test") -> tuple[np.ndarray, np.ndarray | None]:
    """(a, base): a[j][i] = score on task i after stage j+1 (NaN where not evaluated); base = the scores
    before training (after_index 0) when the run measured them. The loop's own reader does the work."""
    tasks = list(study.runs.set_index("path").loc[path, "tasks"])
    rows = study.evals[study.evals.path == path].to_dict("records")
    a, base = accuracy_matrix(rows, tasks, split)
    return a, (None if base is None else np.asarray(base, dtype=float))


def run_metrics(study: Study) -> pd.DataFrame:
    """One row per finished run: identity (path, method, order, seed, trial), test OP / BWT / forgetting /
    FWT (paper: against the study's single_task run of the same order and seed; base: against the
    untrained model), dev OP / BWT, merges (all triggers), wall seconds, rehearsal examples used."""
    done = study.runs[study.runs.status == "success"]
    rows = []
    for run in done.itertuples():
        row = {k: getattr(run, k) for k in ("path", "method", "shape", "benchmark", "order", "seed", "trial")}
        row["tasks"] = list(run.tasks)
        test, base = matrix(study, run.path, "test")
        dev, _ = matrix(study, run.path, "dev")
        row.update(run_summary(run.shape, test, dev, base))
        costs = study.costs[study.costs.path == run.path]
        merges = study.merges[study.merges.path == run.path] if len(study.merges) else study.merges
        row["merges"] = len(merges)
        row["merges_per_task"] = len(merges) / len(run.tasks)
        row["wall_seconds"] = float(costs.wall_seconds.sum())
        row["eval_seconds"] = float(costs.eval_seconds.sum())
        row["rehearsal_examples"] = int(costs.burst_examples.sum() + costs.replay_examples.sum())
        row["test"] = test
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["fwt_paper"] = [_fwt_paper(r, table) for r in table.itertuples()]
    for col in (*METRICS, "dev_op", "dev_bwt"):
        if col not in table:
            table[col] = math.nan
    return table


def _fwt_paper(r, table: pd.DataFrame) -> float:
    ref = table[(table["shape"] == "independent") & (table.order == r.order) & (table.seed == r.seed)]
    if ref.empty:
        return math.nan
    return fwt_vs_single_task(r.shape, r.tasks, r.test, ref.iloc[0].tasks, ref.iloc[0].test)


ABLATION_METRICS = ("op", "bwt", "forgetting", "fwt_base")
ABLATION_NAMES = {
    "op": "OP",
    "bwt": "BWT",
    "forgetting": "Forgetting",
    "fwt_paper": "FWT (paper, vs single-task)",
    "fwt_base": "FWT (vs base)",
}


def ablation_runs(index: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """An ablation study's runs table (runs.parquet): the launcher's `index` (one row per run: method,
    order, seed, run = its folder relative to the study, status) with each finished run's metrics from
    `runs` (`run_metrics` of the study's runs at those folders): op, bwt, forgetting, fwt_base, merges,
    tasks, test (the whole matrix, as lists), wall_seconds, rehearsal_examples, then fwt_paper; NaN for
    a run that did not finish."""
    if runs.empty:
        return index.assign(fwt_paper=math.nan)
    cols = [*ABLATION_METRICS, "merges", "tasks", "test", "wall_seconds", "rehearsal_examples", "fwt_paper"]
    done = runs[["path", *cols]].rename(columns={"path": "run"})
    done = done.assign(test=[np.asarray(t).tolist() for t in done.test])  # lists: Parquet holds no 2-D arrays
    return index.merge(done, on="run", how="left", validate="many_to_one")


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


def _points_mean_std(values: pd.Series) -> str:
    """The mean +/- std of values already in points, two decimals each; "-" when there is none."""
    return "-" if values.empty else f"{values.mean():.2f} +/- {values.std(ddof=0):.2f}"


def method_order(names) -> list[str]:
    """AimMerging first, then its ablations, then the baselines in registry order; unknown names last."""
    known = sorted(METHODS, key=lambda n: (n != "aimmerging", not n.startswith("aimmerging_")))  # stable sort
    return sorted(names, key=lambda n: (known.index(n) if n in known else len(known), str(n)))


# ------------------------------------------------------------------------------------ comparison table


def method_table(runs: pd.DataFrame, by: str = "method") -> pd.DataFrame:
    """Rows: methods (or trials, `by`). Columns: for each metric, the mean over seeds per order
    (`op/o1`, ...) and the mean and std over all orders and seeds (`op/mean`, `op/std`); then runs,
    merges per run and per task, wall seconds and rehearsal examples per run (means)."""
    out = []
    for key, group in runs.groupby(by, sort=False, dropna=False):
        row: dict = {by: key, "runs": len(group)}
        for m in METRICS:
            values = group[m].dropna()
            for order, g in group.groupby("order"):
                row[f"{m}/o{order}"] = g[m].mean()
            row[f"{m}/mean"] = values.mean() if len(values) else math.nan
            row[f"{m}/std"] = values.std(ddof=0) if len(values) else math.nan
        for c in ("merges", "merges_per_task", "wall_seconds", "eval_seconds", "rehearsal_examples"):
            row[c] = group[c].mean() if c in group else math.nan
        out.append(row)
    table = pd.DataFrame(out)
    if by == "method" and len(table):
        table = table.set_index("method").loc[method_order(table.method)].reset_index()
    return table


def comparison(table: pd.DataFrame, by: str = "method", metrics_shown=("op", "bwt", "fwt_paper", "fwt_base")):
    """The method table as display cells (points): per-order OP and BWT, mean +/- std of each metric
    (columns of metrics no run has are dropped), merges per task, wall time."""
    shown = [m for m in metrics_shown if table[f"{m}/mean"].notna().any()]
    orders = sorted({int(c.split("/o")[1]) for c in table.columns if c.startswith("op/o")})
    cols: dict[str, list[str]] = {by: [str(v) for v in table[by]], "runs": [str(v) for v in table.runs]}
    for m in shown:
        if m in ("op", "bwt") and len(orders) > 1:
            for o in orders:
                cols[f"{NAMES[m]} o{o}"] = [points(v) for v in table[f"{m}/o{o}"]]
        pairs = zip(table[f"{m}/mean"], table[f"{m}/std"], strict=True)
        cols[f"{NAMES[m]} mean ± std"] = [plus_minus(a, b) for a, b in pairs]
    cols["merges/task"] = [f"{v:.1f}" for v in table.merges_per_task]
    cols["wall (s)"] = [f"{v:.0f}" for v in table.wall_seconds]
    return pd.DataFrame(cols)


def paired(runs: pd.DataFrame, reference: str = "aimmerging", metrics_shown=("op", "bwt")) -> pd.DataFrame:
    """`reference` against every other method on the runs they share (same order and seed): per method,
    the pairs, and per metric the mean of reference minus method and the reference's wins / ties / losses
    (a tie: the same value to 1e-9). Methods with no pair with the reference are left out."""
    ref = runs[runs.method == reference].set_index(["order", "seed"])
    out = []
    for method in method_order(runs.method.unique()):
        if method == reference:
            continue
        other = runs[runs.method == method].set_index(["order", "seed"])
        keys = ref.index.intersection(other.index)
        if not len(keys):
            continue
        row: dict = {"method": method, "pairs": len(keys)}
        for m in metrics_shown:
            diff = (ref.loc[keys, m] - other.loc[keys, m]).dropna()
            row[f"{m}/diff"] = diff.mean() if len(diff) else math.nan
            row[f"{m}/wins"] = int((diff > 1e-9).sum())
            row[f"{m}/ties"] = int((diff.abs() <= 1e-9).sum())
            row[f"{m}/losses"] = int((diff < -1e-9).sum())
        out.append(row)
    return pd.DataFrame(out)


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


def paired_intervals(
    runs: pd.DataFrame,
    reference: str = "aimmerging",
    metrics_shown=("op", "bwt"),
    reps: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """`paired` (its rows and columns) with the uncertainty of each difference added. Per method and
    metric, over the differences d = reference - method of the runs the two share (same order and seed;
    a pair with a NaN side is dropped: stats.paired_differences):
    `{m}/lo`, `{m}/hi`: the percentile bootstrap interval of the mean of d at `level`
    (stats.bootstrap_ci, `reps` resamples, `seed`); NaN with fewer than two pairs.
    `{m}/contains_zero`: lo <= 0 <= hi, ends within TIE of 0 counting as 0 (stats.separation); None
    without an interval.
    `{m}/iqm`: the interquartile mean of d (stats.iqm).
    `{m}/p_improvement`: P(reference > method) over the pairs, a tie (within TIE) counting half
    (stats.probability_of_improvement, paired).
    `stratified`: the bootstrap resamples within each order (strata = order) when every order has at
    least two pairs, else across all pairs (one seed per order leaves nothing to resample within an
    order). `level` and `reps` are columns too. Runs repeated on one (method, order, seed) are an
    error: a pair is one run against one run."""
    repeated = runs[runs.duplicated(["method", "order", "seed"], keep=False)]
    if len(repeated):
        first = repeated.iloc[0]
        raise ValueError(
            f"{len(repeated)} runs share a (method, order, seed), e.g. {first.method} o{first.order} s{first.seed}:"
            " pair one run per order and seed (select one trial)"
        )
    pairs = paired(runs, reference, metrics_shown)
    if pairs.empty:
        return pairs
    ref = runs[runs.method == reference]
    extra: list[dict] = []
    for method in pairs.method:
        other = runs[runs.method == method]
        shared = set(zip(ref.order, ref.seed, strict=True)) & set(zip(other.order, other.seed, strict=True))
        counts = Counter(order for order, _ in shared)
        row: dict = {"stratified": bool(counts) and min(counts.values()) >= 2, "level": level, "reps": reps}
        for m in metrics_shown:
            keys, d = stats.paired_differences(_keyed(ref, m), _keyed(other, m))
            strata = [k[0] for k in keys] if row["stratified"] else None
            _, lo, hi = stats.bootstrap_ci(d, strata=strata, reps=reps, level=level, seed=seed)
            if len(d) < 2:
                lo = hi = math.nan
            row[f"{m}/lo"], row[f"{m}/hi"] = lo, hi
            row[f"{m}/contains_zero"] = None if math.isnan(lo) else stats.separation(lo, hi, tol=TIE) == 0
            row[f"{m}/iqm"] = stats.iqm(d)
            row[f"{m}/p_improvement"] = stats.probability_of_improvement(d, np.zeros_like(d), paired=True, tol=TIE)
        extra.append(row)
    out = pd.concat([pairs, pd.DataFrame(extra, index=pairs.index)], axis=1)
    per_metric = ("diff", "lo", "hi", "contains_zero", "iqm", "p_improvement", "wins", "ties", "losses")
    cols = ["method", "pairs", "stratified", *[f"{m}/{c}" for m in metrics_shown for c in per_metric]]
    return out[[*cols, "level", "reps"]]


def _keyed(runs: pd.DataFrame, metric: str) -> dict:
    """{(order, seed): value of `metric`} for one method's runs."""
    return {(o, s): float(v) for o, s, v in zip(runs.order, runs.seed, runs[metric], strict=True)}


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


def points(v: float) -> str:
    """A fraction in points with two decimals ("–" for a missing value; never "-0.00")."""
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{round(100 * v, 2) + 0.0:.2f}"


def plus_minus(mean: float, std: float) -> str:
    if mean is None or math.isnan(mean):
        return "–"
    return f"{points(mean)} ± {points(std)}"


# ------------------------------------------------------------------------------------ sweep sensitivity


def trial_metrics(study: Study) -> pd.DataFrame:
    """The sweep's trials with the means and across-order spreads of the per-order metrics added
    (`order_means`)."""
    if study.trials is None:
        raise ValueError(f"{study.root} is not a sweep (no trials.parquet)")
    return order_means(study.trials)


def order_means(trials: pd.DataFrame) -> pd.DataFrame:
    """A trials table (trials.parquet) with `dev_op`, `dev_bwt`, `test_op`, `test_bwt` (means over the
    orders' o<k>/<name> columns) and `dev_op_spread`, ... (std over orders, of the same unit) added."""
    t = trials.copy()
    for key in ("dev_op", "dev_bwt", "test_op", "test_bwt"):
        cols = [c for c in t.columns if re.fullmatch(rf"o\d+/{key}", c)]
        if cols:
            t[key] = t[cols].mean(axis=1)
            t[f"{key}_spread"] = t[cols].std(axis=1, ddof=0)
    return t


def knobs(study: Study) -> list[str]:
    """The searched config keys, in the order of the search space."""
    if study.space:
        return [p["key"] for p in study.space]
    return [
        c.removeprefix("config/")
        for c in (study.trials.columns if study.trials is not None else [])
        if c.startswith("config/")
    ]


def sensitivity(study: Study, bins: int = 4, completed_only: bool = True) -> pd.DataFrame:
    """Long table, one row per (knob, bin): numeric knobs with more than `bins` distinct values are cut
    into `bins` quantile bins, the others grouped by value. Per bin: trials, mean objective (dev) and its
    std, mean dev and test OP and test BWT, and the across-order spread (mean over the bin's trials of the
    std over orders of test OP). Early-stopped trials are left out unless completed_only is False: their
    objective covers fewer orders."""
    t = trial_metrics(study)
    if completed_only:
        t = t[t.status == "completed"]
    rows = []
    for knob in knobs(study):
        col = f"config/{knob}"
        if col not in t:
            continue
        sub = t[t[col].notna()]
        values = sub[col]
        numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
        if numeric and values.nunique() > bins:
            groups = pd.qcut(values.astype(float), q=bins, duplicates="drop")
        else:
            groups = values
        for interval, g in sub.groupby(groups, observed=True, sort=True):
            lo, hi, center = _bounds(interval, g[col])
            rows.append(
                {
                    "knob": knob,
                    "bin": _bin_label(interval),
                    "low": lo,
                    "high": hi,
                    "center": center,
                    "trials": len(g),
                    "objective": g.objective.mean(),
                    "objective_std": g.objective.std(ddof=0),
                    "dev_op": g.get("dev_op", pd.Series(dtype=float)).mean(),
                    "test_op": g.get("test_op", pd.Series(dtype=float)).mean(),
                    "test_bwt": g.get("test_bwt", pd.Series(dtype=float)).mean(),
                    "order_spread": g.get("test_op_spread", pd.Series(dtype=float)).mean(),
                }
            )
    return pd.DataFrame(rows)


def _bin_label(interval) -> str:
    if isinstance(interval, pd.Interval):
        return f"({interval.left:.4g}, {interval.right:.4g}]"
    return _cell(interval)


def _bounds(interval, values: pd.Series) -> tuple:
    if isinstance(interval, pd.Interval):
        return interval.left, interval.right, float(values.astype(float).mean())
    return interval, interval, interval


def dev_example_worth(study: Study) -> float | None:
    """One dev example's worth of a sweep's dev objective (mean over orders of the mean over tasks), as a
    fraction: 1 / (dev examples per task x tasks x orders), from the dev evaluations recorded; None when
    there are none."""
    dev = study.evals[study.evals.split == "dev"] if len(study.evals) else study.evals
    if dev.empty:
        return None
    runs = study.runs[study.runs.trial.notna()] if study.runs.trial.notna().any() else study.runs  # a sweep's trials
    tasks = int(runs.tasks.map(len).max())
    orders = int(runs.order.nunique())
    return 1.0 / (float(dev.n.median()) * tasks * orders)


def importances(
    study: Study, evaluator: str = "ped-anova", seed: int = 0, completed_only: bool = True, objective: str = "objective"
) -> pd.DataFrame:
    """Optuna parameter importances of the objective over the sweep's completed trials, on the search
    space of sweep.json: PED-ANOVA (default; the top quantile is max(10%, 2 trials), so small sweeps work)
    or fANOVA (evaluator="fanova", needs scikit-learn). Only knobs sampled in every trial count (a
    conditional knob is left out). Returns knob, importance (sums to 1), evaluator; empty when fewer than
    2 trials count. completed_only=False also counts early-stopped trials (objective over fewer orders).
    `objective`: the trials-table column to explain, e.g. "objective/compute" of a multi-objective sweep
    (minimised objectives are explained as such)."""
    with warnings.catch_warnings():  # optuna's tqdm notice in notebooks; PED-ANOVA is marked experimental
        warnings.simplefilter("ignore")
        import optuna

        return _importances(study, evaluator, seed, completed_only, optuna, objective)


def _importances(study: Study, evaluator: str, seed: int, completed_only: bool, optuna, objective: str) -> pd.DataFrame:
    from aimray.objective import SENSES

    t = trial_metrics(study)
    t = t[((t.status == "completed") | (not completed_only)) & t[objective].notna()]
    dists = {p["key"]: _distribution(p) for p in study.space if not p.get("when")}
    dists = {k: d for k, d in dists.items() if f"config/{k}" in t and t[f"config/{k}"].notna().all()}
    if len(t) < 2 or not dists:
        return pd.DataFrame(columns=["knob", "importance", "evaluator"])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sense = SENSES.get(objective.removeprefix("objective/"), "max")
    ostudy = optuna.create_study(direction="minimize" if sense == "min" else "maximize")
    for r in t.to_dict("records"):
        params = {k: _native(r[f"config/{k}"], d) for k, d in dists.items()}
        ostudy.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=float(r[objective])))
    if evaluator == "fanova":
        ev = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    elif evaluator == "ped-anova":
        ev = optuna.importance.PedAnovaImportanceEvaluator(target_quantile=min(0.5, max(0.1, 2 / len(t))))
    else:
        raise ValueError(f"evaluator {evaluator!r}: use fanova or ped-anova")
    scores = optuna.importance.get_param_importances(ostudy, evaluator=ev, normalize=True)
    return pd.DataFrame({"knob": list(scores), "importance": list(scores.values()), "evaluator": evaluator})


def _distribution(p: dict):
    import optuna.distributions as od

    kind, values = p["kind"], list(p["values"])
    if kind == "choice":
        return od.CategoricalDistribution(values)
    if kind in ("int", "logint"):
        return od.IntDistribution(int(values[0]), int(values[1]), log=kind == "logint")
    return od.FloatDistribution(float(values[0]), float(values[1]), log=kind == "loguniform")


def _native(v, dist):
    import optuna.distributions as od

    if isinstance(dist, od.IntDistribution):
        return int(v)
    if isinstance(dist, od.FloatDistribution):
        return float(v)
    return v.item() if hasattr(v, "item") else v


def best_trials(study: Study, top: int = 5) -> pd.DataFrame:
    """The completed trials ranked by objective (dev), with test OP / BWT means and the searched knobs."""
    t = trial_metrics(study)
    t = t[t.status == "completed"].sort_values("objective", ascending=False).head(top)
    cols = ["trial_id", "objective", "dev_op", "test_op", "test_bwt", "test_op_spread"]
    return t[[c for c in cols if c in t] + [f"config/{k}" for k in knobs(study) if f"config/{k}" in t]]


def objective_columns(trials: pd.DataFrame) -> list[str]:
    """The objectives of a multi-objective sweep (trials.parquet's objective/<name> columns; [] if one)."""
    names = [c.removeprefix("objective/") for c in trials.columns if c.startswith("objective/")]
    return names if len(names) > 1 else []


def pareto_front(study: Study) -> pd.DataFrame:
    """A multi-objective sweep's Pareto front: the completed trials trials.parquet marks `pareto`, with
    each objective, test OP / BWT means and the searched knobs; empty for a single-objective sweep."""
    t = trial_metrics(study)
    names = objective_columns(t)
    if not names or "pareto" not in t:
        return t.iloc[:0]
    t = t[(t.status == "completed") & t.pareto]
    cols = ["trial_id", *[f"objective/{n}" for n in names], "test_op", "test_bwt"]
    return t[cols + [f"config/{k}" for k in knobs(study) if f"config/{k}" in t]]


def pareto_cells(front: pd.DataFrame) -> pd.DataFrame:
    """`pareto_front` as display cells: objectives and test metrics in points (compute in examples)."""
    cells = pd.DataFrame({"trial": front.trial_id})
    for c in front.columns:
        if c.startswith("objective/"):
            cells[c.removeprefix("objective/")] = [_objective_cell(c, v) for v in front[c]]
    cells["test OP"] = [points(v) for v in front.test_op]
    cells["test BWT"] = [points(v) for v in front.test_bwt]
    for c in front.columns:
        if c.startswith("config/"):
            cells[c.removeprefix("config/")] = [_cell(v, missing="") for v in front[c]]
    return cells


def hypervolume_history(study: Study) -> pd.DataFrame:
    """Per completed trial in the order they finished (trial ids sort in creation order): the hypervolume
    of the front so far on the first two objectives, against the worst value seen of each (points x
    points, or points x examples for compute)."""
    from aimray.objective import SENSES

    t = study.trials
    names = objective_columns(t)[:2]
    if len(names) < 2:
        return pd.DataFrame(columns=["trials", "hypervolume"])
    done = t[t.status == "completed"].sort_values("trial_id")
    signs = np.array([1.0 if SENSES.get(n, "max") == "max" else -1.0 for n in names])
    values = done[[f"objective/{n}" for n in names]].to_numpy(dtype=float) * signs
    values = values[~np.isnan(values).any(axis=1)]
    if not len(values):
        return pd.DataFrame(columns=["trials", "hypervolume"])
    reference = tuple(values.min(axis=0))
    rows = [(i, stats.hypervolume_2d(values[:i], reference)) for i in range(1, len(values) + 1)]
    return pd.DataFrame(rows, columns=["trials", "hypervolume"])


def best_markdown(
    trials: pd.DataFrame,
    *,
    method: str,
    benchmark: str,
    orders: Sequence[int],
    objective: str,
    seconds: float,
    top: int = 5,
    objectives: Sequence[str] | None = None,
    holdout: pd.DataFrame | None = None,
    default: dict | None = None,
    dev_per_task: int | None = None,
    tasks: int | None = None,
) -> str:
    """A sweep's best.md from its trials table (trials.parquet, best objective first): the trial counts
    by status and the wall time, then the `top` completed trials with their objective (dev), mean test OP
    and BWT over orders (points) and config values; with several `objectives`, the Pareto front instead;
    with `holdout` (holdout.parquet), the chosen configs on the held-out orders beside the defaults. With
    `default` (the preset's point), `dev_per_task` and `tasks`: what the sweep can conclude, i.e. how many
    points one dev example is worth and whether the best trial beats the default beyond that."""
    completed = trials[trials.status == "completed"]
    done = order_means(completed[completed.pareto] if objectives else completed.head(top))
    config_cols = [c for c in trials.columns if c.startswith("config/")]
    what = f"objectives {', '.join(objectives)}" if objectives else f"objective {objective}"
    lines = [
        f"# Sweep: {method} on {benchmark}, orders {list(orders)}, {what} (dev)",
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
    names = [c.removeprefix("objective/") for c in scored] if objectives else ["objective"]
    header = ["trial", *names, "test OP", "test BWT", *[c.removeprefix("config/") for c in config_cols]]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, r in done.iterrows():
        cells = [r.trial_id, *[_objective_cell(c, r[c]) for c in scored]]
        cells += [f"{100 * r.test_op:.2f}", f"{100 * r.test_bwt:.2f}"]
        cells += [_cell(r[c], missing="") for c in config_cols]
        lines.append("| " + " | ".join(cells) + " |")
    if dev_per_task and tasks and objective in ("dev_op", "dev_op_bwt", "worst_dev_op"):
        lines += ["", *conclusion_lines(trials, default, dev_per_task, tasks, len(orders))]
    if holdout is not None and len(holdout):
        lines += ["", *holdout_lines(holdout, dev_per_task * tasks if dev_per_task and tasks else None)]
    return "\n".join(lines) + "\n"


def conclusion_lines(
    trials: pd.DataFrame, default: dict | None, dev_per_task: int, tasks: int, orders: int
) -> list[str]:
    """What the sweep can and cannot conclude: one dev example's worth in objective points, the spread of
    dev OP across orders, and the best completed trial against the default point (trial or none)."""
    worth = 100.0 / (dev_per_task * tasks * orders)  # one dev example in one order, on the mean objective
    t = order_means(trials[trials.status == "completed"])
    lines = ["## What this sweep can conclude", ""]
    lines.append(
        f"One dev example moves the objective by {worth:.2f} points ({dev_per_task} dev examples per task, {tasks} "
        f"tasks, {orders} orders)."
    )
    if len(t) and "dev_op_spread" in t:
        lines.append(
            f"Dev OP spread across orders (std, completed trials): median {100 * t.dev_op_spread.median():.2f} points."
        )
    config_cols = [c for c in t.columns if c.startswith("config/")]
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


def _same(a, b) -> bool:
    if isinstance(b, float) or isinstance(a, float):
        return a is not None and b is not None and abs(float(a) - float(b)) < 1e-9
    return a == b


def _objective_cell(column: str, value: float) -> str:
    """compute in examples (a count), every other objective in points."""
    if column.endswith("compute"):
        return f"{value:.0f}"
    return f"{100 * value:.2f}"


def holdout_lines(holdout: pd.DataFrame, dev_per_order: int | None = None) -> list[str]:
    """The held-out orders: per config, mean dev and test OP / BWT over those orders and its compute, and
    its difference from the defaults (the test of whether tuned values carry over to an unseen order); with
    `dev_per_order` (dev examples per order: per task x tasks), whether each difference on dev exceeds one
    dev example."""
    orders = sorted(holdout.order.unique())
    ok = holdout[holdout.status == "success"]
    means = ok.groupby("config", sort=False)[["dev_op", "dev_bwt", "test_op", "test_bwt", "compute"]].mean()
    lines = [
        f"## On the held-out orders {', '.join(map(str, orders))} (not seen by the search)",
        "",
        "| config | dev OP | dev BWT | test OP | test BWT | compute | dev OP vs default | test OP vs default |",
        "|---|---|---|---|---|---|---|---|",
    ]
    base = means.loc["default"] if "default" in means.index else None
    readings = []
    for name, r in means.iterrows():
        cells = [points(r.dev_op), points(r.dev_bwt), points(r.test_op), points(r.test_bwt), f"{r.compute:.0f}"]
        if name == "default" or base is None:
            cells += ["", ""]
        else:
            dev_gap, test_gap = 100 * (r.dev_op - base.dev_op), 100 * (r.test_op - base.test_op)
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


# ---------------------------------------------------------------------------------------------- render


# ----------------------------------------------------------------------------- the controller at work


def controller_activity(study: Study) -> pd.DataFrame:
    """Per merging method (finished runs): how the merge schedule acted in the tasks that have a memory
    (the second task on): merges per task (mean, min, max), the share of those tasks in which the
    interval S took more than one value, the range of S over all merges, and the triggers' counts."""
    runs = study.runs[study.runs.status == "success"]
    merges = study.merges[study.merges.path.isin(runs.path)] if len(study.merges) else pd.DataFrame()
    if merges.empty:
        return pd.DataFrame()
    rows = []
    for method, group in runs.groupby("method", sort=False):
        mine = merges[merges.path.isin(group.path)]
        if mine.empty:
            continue
        per_task, changed = [], []
        for run in group.itertuples():
            for index in range(1, len(run.tasks)):
                task = mine[(mine.path == run.path) & (mine.task_index == index)]
                per_task.append(len(task))
                changed.append(task.interval.nunique() > 1)
        triggers = Counter(mine.trigger)
        rows.append(
            {
                "method": method,
                "runs": len(group),
                "tasks": len(per_task),
                "merges_per_task": float(np.mean(per_task)),
                "min_merges": int(min(per_task)),
                "max_merges": int(max(per_task)),
                "s_changed": float(np.mean(changed)),
                "s_min": int(mine.interval.min()),
                "s_max": int(mine.interval.max()),
                "triggers": ", ".join(f"{t} {n}" for t, n in triggers.most_common()),
            }
        )
    table = pd.DataFrame(rows)
    return table.set_index("method").loc[method_order(table.method)].reset_index()


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


def markdown(cells: pd.DataFrame) -> str:
    """A DataFrame of display cells as a GitHub markdown table."""
    lines = ["| " + " | ".join(map(str, cells.columns)) + " |", "|" + "---|" * len(cells.columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def latex(cells: pd.DataFrame, caption: str = "", label: str = "") -> str:
    """A DataFrame of display cells as a booktabs LaTeX table (needs \\usepackage{booktabs})."""

    def esc(v) -> str:
        s = _cell(v).replace("±", "$\\pm$")
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


def _cell(v, missing: str = "–") -> str:
    """A value as a table cell: floats to 4 significant digits, `missing` for NaN."""
    if isinstance(v, float):
        return missing if math.isnan(v) else f"{v:.4g}"
    return str(v)


def sensitivity_cells(sens: pd.DataFrame) -> pd.DataFrame:
    """The sensitivity table for display (points)."""
    return pd.DataFrame(
        {
            "knob": sens.knob,
            "bin": sens.bin,
            "trials": sens.trials,
            "objective (dev)": [plus_minus(a, b) for a, b in zip(sens.objective, sens.objective_std, strict=True)],
            "test OP": [points(v) for v in sens.test_op],
            "test BWT": [points(v) for v in sens.test_bwt],
            "order spread": [points(v) for v in sens.order_spread],
        }
    )


def best_cells(best: pd.DataFrame) -> pd.DataFrame:
    cells = {"trial": best.trial_id, "objective (dev)": [points(v) for v in best.objective]}
    for c, name in (("test_op", "test OP"), ("test_bwt", "test BWT"), ("test_op_spread", "order spread")):
        if c in best:
            cells[name] = [points(v) for v in best[c]]
    for c in best.columns:
        if c.startswith("config/"):
            cells[c.removeprefix("config/")] = [_cell(v) for v in best[c]]
    return pd.DataFrame(cells)
