"""python -m analysis STUDY_DIR [--out DIR]: every table and figure of a study; prints the headline table."""

from __future__ import annotations

import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import pandas as pd

from aimray.cliargs import ArgumentParser, check_out_dir, error_text, positive_int
from analysis import figures as F
from analysis import report as R
from analysis import tables as T
from analysis.load import NotAStudyError, Study, open_study


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="python -m analysis",
        description="Turn a study folder (one `python -m aimray run` folder, a sweeps/tune_controller.py sweep or "
        "a sweeps/ablations.py study) into tables (markdown, LaTeX, CSV) and figures (PNG, PDF), and print "
        "the headline table. Reads Parquet only. Output: tables/, figures/ and report.md under --out.",
    )
    parser.add_argument("study", help="the study folder")
    parser.add_argument("--out", help="output folder (default: STUDY/analysis); replaced as a whole when done")
    parser.add_argument("--split", default="test", choices=("test", "dev"), help="split of the method table")
    parser.add_argument("--bins", type=positive_int, default=4, help="quantile bins per numeric knob (default 4)")
    parser.add_argument(
        "--mode",
        choices=("score", "generate"),
        help="the scoring of the matrices and metrics, for runs that evaluated several (eval.modes); default: "
        "each run's headline mode (its eval.mode). A sweep's objective columns stay in the headline mode",
    )
    args = parser.parse_args(argv)
    try:
        study = open_study(args.study, mode=args.mode)
        out = Path(args.out) if args.out else study.root / "analysis"
        check_out_dir(out)
        if not (study.runs.status == "success").any():
            raise NotAStudyError(f"{study.root}: no finished run to analyse")
    except (NotAStudyError, ValueError) as err:
        print(f"error: {error_text(err)}", file=sys.stderr)
        return 2
    # Everything is written to a sibling temp folder that replaces --out at the end: a failure midway leaves
    # the previous analysis in place, never a half-written one.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # NaN means of metrics a method does not define
            headline = write_all(study, tmp, args.split, args.bins)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except NotAStudyError as err:  # e.g. no run of the study finished
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"error: {error_text(err)}", file=sys.stderr)
        return 2
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(headline)
    print(f"tables, figures and report.md in {out}")
    return 0


def write_all(study: Study, out: Path, split: str, bins: int) -> str:
    """Write tables/ and figures/ and report.md under `out`; returns the headline (markdown)."""
    tables, figs = out / "tables", out / "figures"
    tables.mkdir()
    n = len(study.runs)
    report = [f"# Analysis of {study.root.name} ({study.kind}, {n} run{'s' * (n != 1)})", ""]
    scorings = sorted(set(study.runs["mode"]))
    report += [f"Scoring: {', '.join(scorings)} (eval.modes; `--mode` picks another the runs evaluated).", ""]
    if "subsample" in study.evals and (study.evals.subsample > 0).any():
        report += [
            "Cells off the metrics' path were scored on a fixed subsample (eval.matrix=metrics): OP, BWT and FWT "
            "read whole splits only; the forgetting metric and curves include subsampled cells.",
            "",
        ]
    unfinished = study.runs[study.runs.status != "success"]
    if len(unfinished):
        report += [f"{len(unfinished)} runs not finished (left out): " + ", ".join(unfinished.path), ""]
    runs = T.run_metrics(study) if split == "test" else _dev_metrics(study)
    if runs.empty:
        raise NotAStudyError(f"{study.root}: no finished run to analyse")
    headline = write_method_tables(study, runs, tables, split, report)
    if study.kind == "sweep" and study.trials is not None:
        headline = write_sweep_tables(study, tables, figs, bins, report)
    write_run_figures(study, runs, figs, split, report)
    (out / "report.md").write_text("\n".join(report) + "\n")
    return headline


def write_method_tables(study: Study, runs: pd.DataFrame, tables: Path, split: str, report: list[str]) -> str:
    """runs.parquet and the method (or trial) table as markdown, CSV and LaTeX; returns the markdown."""
    runs.drop(columns=["test"]).to_parquet(tables / "runs.parquet", index=False)
    by = "trial" if study.kind == "sweep" else "method"
    table, per_order = T.method_table(runs, by=by), T.order_table(runs, by=by)
    cells = R.comparison(table, by=by, per_order=per_order)
    table.to_csv(tables / "methods.csv", index=False)
    per_order.to_csv(tables / "methods_by_order.csv", index=False)
    headline = R.markdown(cells)
    (tables / "methods.md").write_text(headline)
    (tables / "methods.tex").write_text(
        R.latex(cells, caption=f"{split} metrics (points), mean ± std over orders and seeds", label="tab:methods")
    )
    report += [f"## {'Trials' if by == 'trial' else 'Methods'} ({split})", "", headline]
    _log(f"tables/methods.md ({len(table)} rows)")
    return headline


def write_sweep_tables(study: Study, tables: Path, figs: Path, bins: int, report: list[str]) -> str:
    """A sweep's best trials, sensitivity, importances, Pareto front and held-out orders; returns the
    headline (the best trials)."""
    best = R.best_cells(T.best_trials(study), T.knobs(study))
    (tables / "best.md").write_text(R.markdown(best))
    # With fewer than 3 completed trials (ASHA stops most of a small sweep), early-stopped trials count
    # too: their objective covers only the orders they finished, which the report says.
    completed = int((study.trials.status == "completed").sum())
    everything = completed < 3
    sens = T.sensitivity(study, bins=bins, completed_only=not everything)
    sens.to_csv(tables / "sensitivity.csv", index=False)
    (tables / "sensitivity.md").write_text(R.markdown(R.sensitivity_cells(sens)))
    (tables / "sensitivity.tex").write_text(R.latex(R.sensitivity_cells(sens), label="tab:sensitivity"))
    imp = T.importances(study, completed_only=not everything)
    imp.to_csv(tables / "importances.csv", index=False)
    (tables / "importances.md").write_text(R.markdown(imp))
    which = (
        f"all {len(study.trials)} trials, early-stopped ones included (only {completed} completed): their "
        "objective covers the orders they finished"
        if everything
        else f"the {completed} completed trials"
    )
    report += ["## Best trials", "", R.markdown(best), "## Sensitivity", "", f"Over {which}.", ""]
    report += [R.markdown(R.sensitivity_cells(sens)), "## Parameter importances", "", f"Over {which}.", ""]
    report += [R.markdown(imp)]
    _log("tables/best.md, sensitivity.md, importances.md")
    if len(sens):
        _save(F.sensitivity_curves(sens, noise=T.dev_example_worth(study)), figs, "sensitivity", report)
    _save(F.optimization_history(study), figs, "optimization_history", report)
    if len(imp):
        _save(F.importance_bars(imp), figs, "importances", report)
    write_pareto(study, tables, figs, not everything, report)
    holdout = study.root / "holdout.parquet"
    if holdout.exists():  # --holdout-orders: the chosen configs beside the defaults on unseen orders
        lines = R.holdout_lines(pd.read_parquet(holdout))
        (tables / "holdout.md").write_text("\n".join(lines) + "\n")
        report += ["", *lines, ""]
    return "Best trials (objective on dev; test for reporting):\n\n" + R.markdown(best)


def write_pareto(study: Study, tables: Path, figs: Path, completed_only: bool, report: list[str]) -> None:
    """A multi-objective sweep's Pareto front, and what each objective's value depends on."""
    if not T.objective_names(study):
        return
    front = T.pareto_front(study)
    cells = R.pareto_cells(front, T.objective_names(study), T.knobs(study))
    (tables / "pareto.md").write_text(R.markdown(cells))
    report += ["## Pareto front (dev objectives; test for reporting)", "", R.markdown(cells)]
    _save(F.pareto_fronts(study), figs, "pareto", report)
    for name in T.objective_names(study):
        per = T.importances(study, completed_only=completed_only, objective=name)
        (tables / f"importances_{name}.md").write_text(R.markdown(per))
        report += [f"### Parameter importances for {name}", "", R.markdown(per)]


def write_run_figures(study: Study, runs: pd.DataFrame, figs: Path, split: str, report: list[str]) -> None:
    """Accuracy matrices, forgetting curves and the representative runs' trajectories."""
    shown = representative_runs(study, runs)
    _save(F.accuracy_heatmaps(study, list(shown.path), split), figs, "accuracy_matrices", report)
    if (runs.method != "mtl").any():
        _save(F.forgetting_curves(study, split), figs, "forgetting", report)
    for r in shown.itertuples():
        if len(study.steps) and (study.steps.path == r.path).any() and (study.merges.path == r.path).any():
            name = "trajectory_" + r.path.replace("/", "_").strip("._") if r.path != "." else "trajectory"
            _save(F.trajectory(study, r.path), figs, name, report)


def representative_runs(study: Study, runs: pd.DataFrame) -> pd.DataFrame:
    """The runs drawn one by one: a sweep's best trial (every order), else each method's first run."""
    if study.kind == "sweep" and study.trials is not None and (study.trials.status == "completed").any():
        best = T.best_trials(study, top=1).trial_id.iloc[0]
        return runs[runs.trial == best].sort_values("order")
    first = runs.sort_values(["order", "seed"]).groupby("method", sort=False).head(1)
    return first.set_index("method").loc[T.method_order(first.method)].reset_index()


def _dev_metrics(study: Study) -> pd.DataFrame:
    """run_metrics on dev matrices: swap the splits and reuse the same code."""
    evals = study.evals.copy()
    evals["split"] = evals.split.map({"dev": "test", "test": "dev"}).fillna(evals.split)
    swapped = Study(**{**study.__dict__, "evals": evals})
    return T.run_metrics(swapped)


def _save(fig, folder: Path, name: str, report: list[str]) -> None:
    F.save(fig, folder, name)
    report += [f"![{name}](figures/{name}.png)", ""]
    _log(f"figures/{name}.png, .pdf")


def _log(msg: str) -> None:
    print(f"[analysis] {msg}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
