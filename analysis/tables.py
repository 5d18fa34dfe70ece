"""Tables from a study: per-run metrics, the method / ablation comparison (paired differences with
bootstrap intervals from analysis.stats: `paired_intervals`), per-order means (long form), the sweep's
sensitivity study and parameter importances, the controller's activity. Every table is a DataFrame of
numbers; analysis.report turns them into cells, markdown, LaTeX and the reports' words.

Metrics come from aimray.metrics (pure numpy over the accuracy matrix, the functions the Tune objective
uses), as fractions; points (x100) only when rendered.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter

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
    untrained model), dev OP / BWT, merges (all triggers), wall and processor seconds (cpu_seconds: NaN for a
    run on a GPU, or one begun or resumed before the loop counted them), rehearsal examples used."""
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
        row["cpu_seconds"] = float(costs.cpu_seconds.sum()) if costs.cpu_seconds.notna().all() else math.nan
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


def method_order(names) -> list[str]:
    """AimMerging first, then its ablations, then the baselines in registry order; unknown names last."""
    known = sorted(METHODS, key=lambda n: (n != "aimmerging", not n.startswith("aimmerging_")))  # stable sort
    return sorted(names, key=lambda n: (known.index(n) if n in known else len(known), str(n)))


# ------------------------------------------------------------------------------------ comparison table


def method_table(runs: pd.DataFrame, by: str = "method") -> pd.DataFrame:
    """Rows: methods (or trials, `by`). Columns: for each metric, the mean and std over all orders and
    seeds (`op/mean`, `op/std`); then runs, merges per run and per task, wall seconds and rehearsal examples
    per run (means). Per order: `order_table`."""
    out = []
    for key, group in runs.groupby(by, sort=False, dropna=False):
        row: dict = {by: key, "runs": len(group)}
        for m in METRICS:
            values = group[m].dropna()
            row[f"{m}/mean"] = values.mean() if len(values) else math.nan
            row[f"{m}/std"] = values.std(ddof=0) if len(values) else math.nan
        for c in ("merges", "merges_per_task", "wall_seconds", "eval_seconds", "rehearsal_examples"):
            row[c] = group[c].mean() if c in group else math.nan
        out.append(row)
    table = pd.DataFrame(out)
    if by == "method" and len(table):
        table = table.set_index("method").loc[method_order(table.method)].reset_index()
    return table


def order_table(runs: pd.DataFrame, by: str = "method") -> pd.DataFrame:
    """Long form, one row per method (or trial, `by`) and order: the runs and each metric's mean over them
    (seeds)."""
    groups = runs.groupby([by, "order"], sort=False, dropna=False)
    table = groups[list(METRICS)].mean().join(groups.size().rename("runs")).reset_index()
    return table[[by, "order", "runs", *METRICS]]


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


# ------------------------------------------------------------------------------------ sweep sensitivity


def trial_metrics(study: Study) -> pd.DataFrame:
    """The sweep's trials with the means and across-order spreads of the per-order metrics added
    (`order_means`)."""
    if study.trials is None:
        raise ValueError(f"{study.root} is not a sweep (no trials.parquet)")
    return order_means(study.trials, trial_orders(study))


def trial_orders(study: Study) -> pd.DataFrame | None:
    """A sweep's per-order results: trial_orders.parquet, or while the sweep runs (it is written at the
    end) the same rows from its finished runs that name their trial."""
    if study.trial_orders is not None:
        return study.trial_orders
    runs = run_metrics(study)
    if runs.empty or runs.trial.isna().all():
        return None
    runs = runs[runs.trial.notna()]
    return runs.rename(columns={"trial": "trial_id"}).assign(status="success")[
        ["trial_id", "order", "path", "status", *ORDER_MEANS]
    ]


ORDER_MEANS = ("op", "bwt", "dev_op", "dev_bwt")


def order_means(trials: pd.DataFrame, per_order: pd.DataFrame | None) -> pd.DataFrame:
    """A trials table (trials.parquet) with, from its finished orders (trial_orders.parquet), the mean of
    op, bwt (test), dev_op and dev_bwt over orders and their spread across orders (`op_spread`, ...: the
    std, in the same unit) added; NaN for a trial with no finished order."""
    t = trials.copy()
    done = per_order[per_order.status == "success"] if per_order is not None else None
    if done is None or done.empty:
        return t.assign(**{c: math.nan for k in ORDER_MEANS for c in (k, f"{k}_spread")})
    grouped = done.groupby("trial_id")[list(ORDER_MEANS)]
    spread = grouped.std(ddof=0).add_suffix("_spread")
    return t.merge(grouped.mean().join(spread), left_on="trial_id", right_index=True, how="left")


def knobs(study: Study) -> list[str]:
    """The searched config keys, in the order of the search space (sweep.json)."""
    return [p["key"] for p in study.space]


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
                    "dev_op": g.dev_op.mean(),
                    "op": g.op.mean(),
                    "bwt": g.bwt.mean(),
                    "order_spread": g.op_spread.mean(),
                }
            )
    return pd.DataFrame(rows)


def _bin_label(interval) -> str:
    if isinstance(interval, pd.Interval):
        return f"({interval.left:.4g}, {interval.right:.4g}]"
    return cell(interval)


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
    study: Study, evaluator: str = "ped-anova", seed: int = 0, completed_only: bool = True, objective: str = ""
) -> pd.DataFrame:
    """Optuna parameter importances of the objective over the sweep's completed trials, on the search
    space of sweep.json: PED-ANOVA (default; the top quantile is max(10%, 2 trials), so small sweeps work)
    or fANOVA (evaluator="fanova", needs scikit-learn). Only knobs sampled in every trial count (a
    conditional knob is left out). Returns knob, importance (sums to 1), evaluator; empty when fewer than
    2 trials count. completed_only=False also counts early-stopped trials (objective over fewer orders).
    `objective`: one objective of a multi-objective sweep to explain, e.g. "compute" (minimised objectives
    are explained as such); "": the sweep's objective."""
    with warnings.catch_warnings():  # optuna's tqdm notice in notebooks; PED-ANOVA is marked experimental
        warnings.simplefilter("ignore")
        import optuna

        return _importances(study, evaluator, seed, completed_only, optuna, objective)


def _importances(study: Study, evaluator: str, seed: int, completed_only: bool, optuna, objective: str) -> pd.DataFrame:
    from aimray.objective import SENSES

    column = f"objective/{objective}" if objective else "objective"
    t = trial_metrics(study)
    t = t[((t.status == "completed") | (not completed_only)) & t[column].notna()]
    dists = {p["key"]: _distribution(p) for p in study.space if not p.get("when")}
    dists = {k: d for k, d in dists.items() if f"config/{k}" in t and t[f"config/{k}"].notna().all()}
    if len(t) < 2 or not dists:
        return pd.DataFrame(columns=["knob", "importance", "evaluator"])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sense = SENSES.get(objective or (study.sweep or {}).get("objective", ""), "max")
    ostudy = optuna.create_study(direction="minimize" if sense == "min" else "maximize")
    for r in t.to_dict("records"):
        params = {k: _native(r[f"config/{k}"], d) for k, d in dists.items()}
        ostudy.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=float(r[column])))
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
    cols = ["trial_id", "objective", "dev_op", "op", "bwt", "op_spread"]
    return t[[c for c in cols if c in t] + [f"config/{k}" for k in knobs(study) if f"config/{k}" in t]]


def objective_names(study: Study) -> list[str]:
    """The objectives of a multi-objective sweep, as sweep.json names them ([] with one): trials.parquet
    holds each as objective/<name>."""
    names = list((study.sweep or {}).get("objectives") or [])
    return names if len(names) > 1 else []


def pareto_front(study: Study) -> pd.DataFrame:
    """A multi-objective sweep's Pareto front: the completed trials trials.parquet marks `pareto`, with
    each objective, test OP / BWT means and the searched knobs; empty for a single-objective sweep."""
    t = trial_metrics(study)
    names = objective_names(study)
    if not names or "pareto" not in t:
        return t.iloc[:0]
    t = t[(t.status == "completed") & t.pareto]
    cols = ["trial_id", *[f"objective/{n}" for n in names], "op", "bwt"]
    return t[cols + [f"config/{k}" for k in knobs(study) if f"config/{k}" in t]]


def hypervolume_history(study: Study) -> pd.DataFrame:
    """Per completed trial in the order they finished (trial ids sort in creation order): the hypervolume
    of the front so far on the first two objectives, against the worst value seen of each (points x
    points, or points x examples for compute)."""
    from aimray.objective import SENSES

    t = study.trials
    names = objective_names(study)[:2]
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


def cell(v, missing: str = "–") -> str:
    """A value as a table cell: floats to 4 significant digits, `missing` for NaN."""
    if isinstance(v, float):
        return missing if math.isnan(v) else f"{v:.4g}"
    return str(v)
