"""The analysis package on studies made by the loop (tiny random-init Llama: unit tests only) and on
synthetic tables with known answers; the notebook executes headless."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aimray.loop import run
from analysis import __main__ as cli
from analysis import figures as F
from analysis import report as R
from analysis import tables as T
from analysis.load import NotAStudyError, Study, accuracy_matrix, open_study
from tests.test_loop import quiet, tiny_config

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("aimmerging", "seqlora", "single_task", "mtl")


@pytest.fixture(scope="module")
def study(tiny_causal, tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    for method in METHODS:
        run(tiny_config(tiny_causal, method), root / method, log=quiet)
    return root


def test_open_study_returns_tidy_tables(study) -> None:
    s = open_study(study)
    assert s.kind == "runs" and sorted(s.runs.method) == sorted(METHODS) and (s.runs.status == "success").all()
    assert set(s.evals.path) == set(METHODS) and {"after_index", "eval_task", "split"} <= set(s.evals)
    assert len(s.merges) and (s.merges.path == "aimmerging").all()
    assert len(s.costs) == 13 and s.trials is None and s.ablation is None and s.runs.trial.isna().all()
    a = accuracy_matrix(s, "aimmerging")
    assert list(a.columns) == ["wordnet", "amazon", "trec", "bbc"] and list(a.index) == [0, 1, 2, 3, 4]


def test_not_a_study_and_other_schema_fail_clearly(tmp_path, study) -> None:
    with pytest.raises(NotAStudyError, match="holds no aimray run"):
        open_study(tmp_path)
    copy = tmp_path / "old"
    shutil.copytree(study / "seqlora", copy / "seqlora")
    manifest = copy / "seqlora" / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "schema_version": 0}))
    with pytest.raises(ValueError, match="schema version 0"):
        open_study(copy)


def test_run_metrics_agree_with_the_runs_own_results(study) -> None:
    s = open_study(study)
    runs = T.run_metrics(s).set_index("method")
    for method in METHODS:
        own = json.loads((study / method / "matrix.json").read_text())
        np.testing.assert_allclose(runs.loc[method, "test"], np.array(own["test"], dtype=float), equal_nan=True)
        for key, value in own["metrics"].items():
            assert runs.loc[method, key] == pytest.approx(value, nan_ok=True), (method, key)
    merges = s.merges.groupby("path").size()
    assert runs.loc["aimmerging", "merges"] == merges["aimmerging"] and runs.loc["seqlora", "merges"] == 0
    # FWT (paper) against the single_task run's diagonal; undefined for the reference runs themselves.
    single = np.diag(runs.loc["single_task", "test"])
    want = np.mean(np.diag(runs.loc["aimmerging", "test"]) - single)
    assert runs.loc["aimmerging", "fwt_paper"] == pytest.approx(want)
    assert math.isnan(runs.loc["single_task", "fwt_paper"]) and math.isnan(runs.loc["mtl", "bwt"])


def synthetic_runs() -> pd.DataFrame:
    """Two methods x two orders x two seeds with known metrics."""
    rows = []
    for method, base in (("seqlora", 0.5), ("aimmerging", 0.7)):
        for order in (1, 2):
            for seed in (0, 1):
                rows.append(
                    {
                        "method": method,
                        "order": order,
                        "seed": seed,
                        "op": base + 0.1 * order + 0.01 * seed,
                        "bwt": -0.1,
                        "fwt_paper": math.nan,
                        "fwt_base": 0.02,
                        "forgetting": 0.1,
                        "merges": 4,
                        "merges_per_task": 1.0,
                        "wall_seconds": 10.0,
                        "rehearsal_examples": 8,
                    }
                )
    return pd.DataFrame(rows)


def test_method_table_means_per_order_and_over_everything() -> None:
    table = T.method_table(synthetic_runs())
    assert list(table.method) == ["aimmerging", "seqlora"]  # AimMerging first
    row = table.set_index("method").loc["aimmerging"]
    assert row["op/mean"] == pytest.approx(0.855) and row.runs == 4
    assert row["op/std"] == pytest.approx(np.std([0.8, 0.81, 0.9, 0.91]))
    per_order = T.order_table(synthetic_runs()).set_index(["method", "order"])  # the order is a column
    assert per_order.op[("aimmerging", 1)] == pytest.approx(0.805) and per_order.op[("aimmerging", 2)] == pytest.approx(
        0.905
    )
    assert per_order.runs[("aimmerging", 1)] == 2
    cells = R.comparison(table, per_order=T.order_table(synthetic_runs()))
    assert list(cells.columns)[:4] == ["method", "runs", "OP o1", "OP o2"] and "FWT (paper) mean ± std" not in cells
    assert cells.iloc[0]["OP mean ± std"] == f"85.50 ± {100 * np.std([0.8, 0.81, 0.9, 0.91]):.2f}"
    md = R.markdown(cells)
    assert md.startswith("| method | runs | OP o1 |") and md.count("\n") == 4
    tex = R.latex(cells, caption="c", label="tab:x")
    assert "\\toprule" in tex and "$\\pm$" in tex and "\\label{tab:x}" in tex and tex.count("\\\\") == 3


def test_paired_compares_runs_of_the_same_order_and_seed() -> None:
    runs = synthetic_runs()
    runs.loc[(runs.method == "seqlora") & (runs.order == 2) & (runs.seed == 1), "op"] = 2.0  # seqlora wins one pair
    extra = runs[runs.method == "seqlora"].assign(method="replay", order=3)  # no pair with aimmerging: left out
    pairs = T.paired(pd.concat([runs, extra]), metrics_shown=("op", "fwt_paper")).set_index("method")
    assert list(pairs.index) == ["seqlora"] and pairs.loc["seqlora", "pairs"] == 4
    assert pairs.loc["seqlora", "op/diff"] == pytest.approx((0.2 * 3 + (0.91 - 2.0)) / 4)
    assert pairs.loc["seqlora", ["op/wins", "op/ties", "op/losses"]].tolist() == [3, 0, 1]
    assert math.isnan(pairs.loc["seqlora", "fwt_paper/diff"])  # all NaN: no difference, no wins
    cells = R.paired_cells(pairs.reset_index(), metrics_shown=("op", "fwt_paper"))
    assert cells.iloc[0].tolist() == ["seqlora", "4", f"{100 * (0.6 - 1.09) / 4:+.2f}", "3-0-1"]


def synthetic_sweep(n: int = 24) -> Study:
    """A sweep whose objective depends on knob `a` only (b is noise-free but irrelevant)."""
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, n)
    b = rng.integers(1, 9, n)
    trials = pd.DataFrame(
        {
            "trial_id": [f"t{i}" for i in range(n)],
            "status": ["completed"] * (n - 1) + ["stopped"],
            "objective": 0.5 + 0.3 * a,
            "config/a": a,
            "config/b": b,
            "config/c": ["x", "y"] * (n // 2),
        }
    )
    rows = [
        (t.trial_id, o, t.objective + 0.01 * o, t.objective - 0.01 * o) for t in trials.itertuples() for o in (1, 2)
    ]
    per_order = pd.DataFrame(rows, columns=["trial_id", "order", "dev_op", "op"]).assign(
        status="success", bwt=-0.05, dev_bwt=0.0
    )
    space = [
        {"key": "a", "kind": "uniform", "values": [0, 1], "when": []},
        {"key": "b", "kind": "int", "values": [1, 8], "when": []},
        {"key": "c", "kind": "choice", "values": ["x", "y"], "when": []},
    ]
    empty = pd.DataFrame()
    return Study(Path("synthetic"), "sweep", empty, empty, empty, empty, empty, trials, per_order, None, space, {})


def test_sensitivity_bins_and_importances_on_a_known_sweep() -> None:
    s = synthetic_sweep()
    sens = T.sensitivity(s, bins=4)
    a = sens[sens.knob == "a"]
    assert len(a) == 4 and a.trials.sum() == 23  # quantile bins; the stopped trial is left out
    assert a.objective.is_monotonic_increasing and (a.low.iloc[1:].values == a.high.iloc[:-1].values).all()
    c = sens[sens.knob == "c"]
    assert list(c.bin) == ["x", "y"] and c.trials.sum() == 23
    assert sens.order_spread.round(6).eq(0.005).all()  # std over two orders whose test OP differ by 0.01
    imp = T.importances(s).set_index("knob").importance
    assert imp.idxmax() == "a" and imp.sum() == pytest.approx(1.0)
    # Early-stopped trials count only when asked (a small ASHA sweep completes few trials).
    assert T.sensitivity(s, bins=4, completed_only=False).query("knob == 'a'").trials.sum() == 24
    assert T.importances(s, completed_only=False).set_index("knob").importance.idxmax() == "a"
    cells = R.sensitivity_cells(sens)
    assert list(cells.columns[:3]) == ["knob", "bin", "trials"]
    best = T.best_trials(s, top=3)
    assert list(best.trial_id) == list(s.trials[s.trials.status == "completed"].nlargest(3, "objective").trial_id)


def test_every_figure_draws_and_saves(study, tmp_path) -> None:
    s = open_study(study)
    fig = F.trajectory(s, "aimmerging")
    assert len(fig.axes) == 3 and fig.axes[0].get_lines()
    assert F.save(fig, tmp_path, "traj") == [tmp_path / "traj.png", tmp_path / "traj.pdf"]
    assert (tmp_path / "traj.png").stat().st_size > 1000 and (tmp_path / "traj.pdf").stat().st_size > 1000
    first = [p.read_bytes() for p in (tmp_path / "traj.png", tmp_path / "traj.pdf")]
    F.save(F.trajectory(s, "aimmerging"), tmp_path, "traj")
    assert [p.read_bytes() for p in (tmp_path / "traj.png", tmp_path / "traj.pdf")] == first  # reports diff cleanly
    heat = F.accuracy_heatmaps(s)
    assert sum(bool(ax.images) for ax in heat.axes) == len(METHODS)
    curves = F.forgetting_curves(s)
    assert {t.get_text().split(" ")[0] for t in curves.axes[0].get_legend().get_texts()} == {
        "aimmerging",
        "seqlora",
        "single_task",
    }
    sweep = synthetic_sweep()
    assert len([ax for ax in F.sensitivity_curves(T.sensitivity(sweep)).axes if ax.lines]) == 3
    assert F.optimization_history(sweep).axes[0].lines
    assert F.importance_bars(T.importances(sweep)).axes[0].patches


def test_cli_writes_tables_and_figures_and_replaces_output_whole(study, tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "report"
    assert cli.main([str(study), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("| method | runs | OP mean ± std |") and "| aimmerging | 1 |" in printed
    for name in ("methods.md", "methods.tex", "methods.csv", "runs.parquet"):
        assert (out / "tables" / name).exists(), name
    for name in ("accuracy_matrices", "forgetting", "trajectory_aimmerging"):
        assert (out / "figures" / f"{name}.png").exists() and (out / "figures" / f"{name}.pdf").exists(), name
    report = (out / "report.md").read_text()
    assert "![forgetting](figures/forgetting.png)" in report
    # A failure midway leaves the previous output as it was, and no temp folder behind.
    before = sorted(p.relative_to(out) for p in out.rglob("*"))

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(cli, "write_all", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        cli.main([str(study), "--out", str(out)])
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def test_cli_on_a_folder_that_is_not_a_study(tmp_path) -> None:
    proc = subprocess.run([sys.executable, "-m", "analysis", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and f"{tmp_path} holds no aimray run" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "analysis", str(tmp_path), "--bins", "0"], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 2 and "argument --bins: '0' is not a positive integer" in proc.stderr


def test_analysis_never_imports_torch_or_ray(study, tmp_path) -> None:
    """The study named by its file:// URI (as any URI pyarrow knows may name it), read without torch or Ray."""
    code = (
        f"import sys; from analysis.__main__ import main; sys.exit(main([{study.as_uri()!r}, '--out', "
        f"{str(tmp_path)!r}]) or 3 * any(m in sys.modules for m in ('torch', 'ray')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "tables" / "methods.md").exists()


def test_notebook_executes_headless(study, monkeypatch) -> None:
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("AIMRAY_STUDY", str(study))
    path = ROOT / "analysis" / "notebooks" / "explore.ipynb"
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3  # heatmaps, forgetting, trajectory
    assert any("| aimmerging |" in o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert os.environ["AIMRAY_STUDY"] == str(study)
