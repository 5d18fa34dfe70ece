"""Both scorings from one run (eval.modes) and the metrics-only matrix (eval.matrix), on a tiny random-init
Llama (unit tests only) and the real offline data; version-2 runs committed by the study still read."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from aimray import metrics
from aimray.config import make_config
from aimray.events import read_events
from aimray.loop import run
from aimray.results import collect
from analysis.load import open_study
from tests.test_loop import quiet, tiny_config

STUDY = Path(__file__).parent.parent / "benchmarks" / "results" / "study"


def script(name: str):
    """A script of benchmarks/ as a module (the folder is not a package)."""
    path = STUDY.parent.parent / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MODES = {"eval": {"modes": ["generate", "score"], "matrix": "metrics", "matrix_subsample": 3}}


@pytest.fixture(scope="module")
def two_runs(tiny_causal, tmp_path_factory) -> tuple[Path, Path]:
    """The same AimMerging run scored both ways with the metrics-only matrix, and scored by labels alone with
    the full matrix."""
    root = tmp_path_factory.mktemp("modes")
    run(tiny_config(tiny_causal, **MODES), root / "both", log=quiet)
    run(tiny_config(tiny_causal), root / "score", log=quiet)
    return root / "both", root / "score"


def test_modes_config_puts_the_headline_first_and_checks_names() -> None:
    cfg = make_config(None, {"eval": {"modes": ["generate", "score"]}})
    assert cfg.eval.mode == "generate" and cfg.eval.all_modes == ("generate", "score")
    one = make_config(None, {"eval": {"modes": ["generate"]}})
    assert one.eval.mode == "generate" and one.eval.modes == () and one.eval.all_modes == ("generate",)
    with pytest.raises(ValueError, match="eval.modes"):
        make_config(None, {"eval": {"modes": ["score", "score"]}})
    with pytest.raises(ValueError, match="eval.matrix"):
        make_config(None, {"eval": {"matrix": "half"}})
    with pytest.raises(ValueError, match="eval.matrix_subsample"):
        make_config(None, {"eval": {"matrix_subsample": 0}})


def test_one_run_writes_a_matrix_per_mode(two_runs) -> None:
    both, alone = two_runs
    evals = read_events(both, "evals").to_pandas()
    assert set(evals["mode"]) == {"generate", "score"}
    per_cell = evals.groupby(["after_index", "eval_index", "split"])["mode"].apply(sorted)
    assert all(m == ["generate", "score"] for m in per_cell)
    saved = json.loads((both / "matrix.json").read_text())
    assert saved["mode"] == "generate" and set(saved["modes"]) == {"generate", "score"}
    assert (
        saved["test"] == saved["modes"]["generate"]["test"]
        and saved["metrics"] == saved["modes"]["generate"]["metrics"]
    )
    # Label scoring from the shared prompt pass equals a run that scored by labels alone, cell for cell on
    # the whole-split cells (the same adapter: evaluation does not change training).
    score = np.array(saved["modes"]["score"]["test"], dtype=float)
    full = ~np.array(saved["subsampled"])
    reference = np.array(json.loads((alone / "matrix.json").read_text())["test"], dtype=float)
    np.testing.assert_array_equal(score[full], reference[full])
    # two scorings, not one copied: a random model's generated answers rarely match a label exactly
    assert saved["modes"]["generate"]["test"] != saved["modes"]["score"]["test"]


def test_headline_metrics_read_whole_split_cells_only(two_runs) -> None:
    both, _ = two_runs
    evals = read_events(both, "evals").to_pandas()
    test = evals[(evals.split == "test") & (evals["mode"] == "generate")]
    t = 4
    for row in test.itertuples():
        needed = row.after_index in (0, t) or row.eval_index in (row.after_index - 1, row.after_index)
        assert (row.subsample == 0) == needed, row
        assert row.n == (6 if needed else 3)
    res = collect(both)
    mask = res.subsampled
    # 16 cells less the 10 the metrics read: task j and j + 1 in the rows before the last, all 4 in it
    assert mask.sum() == 6 and not mask[-1].any() and not np.diag(mask).any()
    # Whatever the subsampled cells hold, OP, BWT and FWT stay the same: they never read them.
    scrambled = np.where(mask, 0.123, res.test)
    for name, value in metrics.summary(scrambled, base=res.base_test).items():
        if name != "forgetting":
            assert value == pytest.approx(res.metrics[name]), name


def test_analysis_takes_the_mode_and_reads_version_2_runs(two_runs, tmp_path) -> None:
    both, _ = two_runs
    for mode in ("generate", "score"):
        study = open_study(both, mode=mode)
        assert set(study.evals["mode"]) == {mode} and list(study.runs["mode"]) == [mode]
        a = study.evals[(study.evals.split == "test") & (study.evals.after_index == 4)].sort_values("eval_index")
        saved = json.loads((both / "matrix.json").read_text())["modes"][mode]["test"][-1]
        assert list(a.value) == pytest.approx(saved)
    assert set(open_study(both).evals["mode"]) == {"generate"}  # the headline mode by default
    with pytest.raises(ValueError, match="not in mode 'generate'"):
        open_study(two_runs[1], mode="generate")
    # A run the study committed with event schema version 2 (no mode column) reads as its one mode.
    old = sorted((STUDY / "runs" / "seqlora").glob("o1-s0-*"))[0]
    shutil.copytree(old, tmp_path / "old", ignore=shutil.ignore_patterns("checkpoints"))
    assert json.loads((old / "manifest.json").read_text())["schema_version"] == 2
    study = open_study(tmp_path / "old")
    assert set(study.evals["mode"]) == {"score"} and (study.evals.subsample == 0).all()
    res = collect(tmp_path / "old")
    saved = json.loads((old / "matrix.json").read_text())
    np.testing.assert_allclose(res.test, np.array(saved["test"], dtype=float))
    assert res.metrics["op"] == pytest.approx(saved["metrics"]["op"]) and res.mode == "score"


def test_the_eval_cost_and_long_runs_scripts_report_both_modes(two_runs, tiny_causal, tmp_path) -> None:
    """benchmarks/eval_cost.py (each way timed, predictions compared) and benchmarks/long_runs.py (matrices
    per mode, subsampled cells marked, the time split) on the tiny model and the runs above."""
    eval_cost, long_runs = (script(name) for name in ("eval_cost", "long_runs"))
    argv = ["--benchmark", "offline-standard", "--preset", "smoke", "--model", tiny_causal, "--examples", "3"]
    assert eval_cost.main([*argv, "--repeats", "1", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "eval_cost.json").read_text())["rows"]
    assert [r["task"] for r in rows] == ["wordnet", "amazon", "trec", "bbc"]
    assert all(r["same_predictions"] and r["both_s"] > 0 and r["n"] == 3 for r in rows)
    both, alone = two_runs
    assert long_runs.main([str(both), str(alone), "--out", str(tmp_path / "long.md")]) == 0
    text = (tmp_path / "long.md").read_text()
    assert "| generate |" in text and "| score |" in text and "Test accuracy (%), generate:" in text
    assert "*" in text.split("Test accuracy (%), generate:")[1]  # subsampled cells marked
    assert "| time (s) | training | monitoring | merges | evaluation | tasks in all |" in text
    assert "Merges per task (tasks 2-4): " in text and "S values per task: " in text  # the aimmerging run


def test_a_version_2_run_resumed_by_this_version_reads_both_kinds_of_parts(tmp_path) -> None:
    """A run begun before the costs' monitor and merge seconds and resumed after: its old and new parts read
    together, in the current column order, the old rows' new columns null."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from aimray.events import SCHEMAS

    folder = tmp_path / "events" / "costs"
    folder.mkdir(parents=True)
    schema = SCHEMAS["costs"]
    row = {name: (1.0 if pa.types.is_floating(schema.field(name).type) else 1) for name in schema.names}
    row["run_id"], row["task"] = "r", "t"
    old_names = [n for n in schema.names if n not in ("monitor_seconds", "merge_seconds")]
    pq.write_table(
        pa.Table.from_pylist([{n: row[n] for n in old_names}], schema=pa.schema([schema.field(n) for n in old_names])),
        folder / "part-00000.parquet",
    )
    pq.write_table(pa.Table.from_pylist([row], schema=schema), folder / "part-00001.parquet")
    table = read_events(tmp_path, "costs")
    assert table.column_names == schema.names and len(table) == 2
    assert table["monitor_seconds"].to_pylist() == [None, 1.0]
    from analysis.load import read_parts  # the analysis reader takes the same parts

    frame = read_parts(sorted(folder.glob("part-*.parquet")), "costs")
    assert list(frame.columns) == schema.names and frame.monitor_seconds.isna().tolist() == [True, False]
