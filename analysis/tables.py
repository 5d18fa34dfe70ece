"""Tables from a study: per-run metrics, the method / ablation comparison, the sweep's sensitivity study and
parameter importances. Every table is a DataFrame; `markdown` and `latex` render one for a paper.

Metrics come from aimray.metrics (pure numpy over the accuracy matrix, the functions the Tune objective
uses), in points (x100) only when rendered.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd

from aimray.methods import METHODS
from aimray.results import accuracy_matrix, fwt_vs_single_task, run_summary
from analysis.load import Study

METRICS = ("op", "bwt", "fwt_paper", "fwt_base", "forgetting")
NAMES = {"op": "OP", "bwt": "BWT", "fwt_paper": "FWT (paper)", "fwt_base": "FWT (base)", "forgetting": "Forgetting",
         "dev_op": "dev OP", "objective": "objective"}  # fmt: skip


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


def points(v: float) -> str:
    """A fraction in points with two decimals ("–" for a missing value; never "-0.00")."""
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{round(100 * v, 2) + 0.0:.2f}"


def plus_minus(mean: float, std: float) -> str:
    if mean is None or math.isnan(mean):
        return "–"
    return f"{points(mean)} ± {points(std)}"


# ------------------------------------------------------------------------------------ sweep sensitivity


def trial_metrics(study: Study) -> pd.DataFrame:
    """The sweep's trials with the means and across-order spreads of the per-order metrics added:
    `dev_op`, `test_op`, `test_bwt` (means over orders) and `dev_op_spread`, `test_op_spread` (std over
    orders, points of the same unit)."""
    if study.trials is None:
        raise ValueError(f"{study.root} is not a sweep (no trials.parquet)")
    t = study.trials.copy()
    for key in ("dev_op", "dev_bwt", "test_op", "test_bwt"):
        cols = [c for c in t.columns if c.startswith("o") and c.endswith(f"/{key}")]
        if cols:
            t[key] = t[cols].mean(axis=1)
            t[f"{key}_spread"] = t[cols].std(axis=1, ddof=0)
    return t


def knobs(study: Study) -> list[str]:
    """The searched config keys, in the order of the search space."""
    if study.space:
        return [p["key"] for p in study.space]
    return [c.removeprefix("config/") for c in (study.trials.columns if study.trials is not None else [])
            if c.startswith("config/")]  # fmt: skip


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
            rows.append({
                "knob": knob, "bin": _bin_label(interval), "low": lo, "high": hi, "center": center, "trials": len(g),
                "objective": g.objective.mean(), "objective_std": g.objective.std(ddof=0),
                "dev_op": g.get("dev_op", pd.Series(dtype=float)).mean(),
                "test_op": g.get("test_op", pd.Series(dtype=float)).mean(),
                "test_bwt": g.get("test_bwt", pd.Series(dtype=float)).mean(),
                "order_spread": g.get("test_op_spread", pd.Series(dtype=float)).mean(),
            })  # fmt: skip
    return pd.DataFrame(rows)


def _bin_label(interval) -> str:
    if isinstance(interval, pd.Interval):
        return f"({interval.left:.4g}, {interval.right:.4g}]"
    return _cell(interval)


def _bounds(interval, values: pd.Series) -> tuple:
    if isinstance(interval, pd.Interval):
        return interval.left, interval.right, float(values.astype(float).mean())
    return interval, interval, interval


def importances(study: Study, evaluator: str = "ped-anova", seed: int = 0, completed_only: bool = True) -> pd.DataFrame:
    """Optuna parameter importances of the objective over the sweep's completed trials, on the search
    space of sweep.json: PED-ANOVA (default; the top quantile is max(10%, 2 trials), so small sweeps work)
    or fANOVA (evaluator="fanova", needs scikit-learn). Only knobs sampled in every trial count (a
    conditional knob is left out). Returns knob, importance (sums to 1), evaluator; empty when fewer than
    2 trials count. completed_only=False also counts early-stopped trials (objective over fewer orders)."""
    with warnings.catch_warnings():  # optuna's tqdm notice in notebooks; PED-ANOVA is marked experimental
        warnings.simplefilter("ignore")
        import optuna

        return _importances(study, evaluator, seed, completed_only, optuna)


def _importances(study: Study, evaluator: str, seed: int, completed_only: bool, optuna) -> pd.DataFrame:
    t = trial_metrics(study)
    t = t[((t.status == "completed") | (not completed_only)) & t.objective.notna()]
    dists = {p["key"]: _distribution(p) for p in study.space if not p.get("when")}
    dists = {k: d for k, d in dists.items() if f"config/{k}" in t and t[f"config/{k}"].notna().all()}
    if len(t) < 2 or not dists:
        return pd.DataFrame(columns=["knob", "importance", "evaluator"])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ostudy = optuna.create_study(direction="maximize")
    for r in t.to_dict("records"):
        params = {k: _native(r[f"config/{k}"], d) for k, d in dists.items()}
        ostudy.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=float(r["objective"])))
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


# ---------------------------------------------------------------------------------------------- render


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

    lines = ["\\begin{table}[t]", "\\centering", "\\begin{tabular}{l" + "r" * (len(cells.columns) - 1) + "}",
             "\\toprule", " & ".join(esc(c) for c in cells.columns) + " \\\\", "\\midrule"]  # fmt: skip
    lines += [" & ".join(esc(v) for v in row) + " \\\\" for row in cells.itertuples(index=False)]
    lines += ["\\bottomrule", "\\end{tabular}"]
    if caption:
        lines.append(f"\\caption{{{esc(caption)}}}")
    if label:
        lines.append(f"\\label{{{label}}}")
    lines.append("\\end{table}")
    return "\n".join(lines) + "\n"


def _cell(v) -> str:
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def sensitivity_cells(sens: pd.DataFrame) -> pd.DataFrame:
    """The sensitivity table for display (points)."""
    return pd.DataFrame({
        "knob": sens.knob, "bin": sens.bin, "trials": sens.trials,
        "objective (dev)": [plus_minus(a, b) for a, b in zip(sens.objective, sens.objective_std, strict=True)],
        "test OP": [points(v) for v in sens.test_op], "test BWT": [points(v) for v in sens.test_bwt],
        "order spread": [points(v) for v in sens.order_spread],
    })  # fmt: skip


def best_cells(best: pd.DataFrame) -> pd.DataFrame:
    cells = {"trial": best.trial_id, "objective (dev)": [points(v) for v in best.objective]}
    for c, name in (("test_op", "test OP"), ("test_bwt", "test BWT"), ("test_op_spread", "order spread")):
        if c in best:
            cells[name] = [points(v) for v in best[c]]
    for c in best.columns:
        if c.startswith("config/"):
            cells[c.removeprefix("config/")] = [_cell(v) for v in best[c]]
    return pd.DataFrame(cells)
