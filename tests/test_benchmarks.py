"""The benchmark scripts run end to end (tiny random-init Llama: unit tests only; nothing here is timed)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.test_tune import tiny_overrides

ROOT = Path(__file__).resolve().parent.parent


def test_perf_script_writes_every_row_and_the_targets(tiny_causal, tmp_path) -> None:
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "perf.py"),
        "--model",
        tiny_causal,
        "--batch",
        "2",
        "--steps-per-task",
        "1",
        "--seq-len",
        "32",
        "--eval-examples",
        "2",
        "--no-ray",
        "--out",
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "perf.json").read_text())
    rows = {(r["row"], r["precision"]) for r in report["rows"]}
    assert {("matmul 2048^3", "fp32"), ("matmul 2048^3", "bf16"), ("bare PEFT loop", "fp32")} <= rows
    names = {r["row"] for r in report["rows"]}
    assert {
        "harness seqlora",
        "harness seqlora (autocast off)",
        "harness replay",
        "harness aimmerging",
        "harness seqlora (model.compile=train)",
        "harness seqlora (model.compile=train, compiled before)",
        "eval (label scoring)",
    } <= names
    for r in report["rows"]:
        if r["row"].startswith(("bare", "harness")):
            assert r["examples_per_s"] > 0 and r["flops_per_s"] > 0 and r["peak_mib"] > 0, r
    assert set(report["targets"]) == {
        "seqlora_vs_bare",
        "aimmerging_vs_replay_train_time",
        "aimmerging_vs_replay_end_to_end",
        "seqlora_compiled_vs_bare",
    }
    named = {r["row"]: r for r in report["rows"] if r["row"].startswith(("bare", "harness"))}  # one row each
    for name, r in named.items():  # every ratio is the row's rate over the bare loop's, from the same run
        assert r["vs_bare"] == pytest.approx(r["examples_per_s"] / named["bare PEFT loop"]["examples_per_s"]), name
    aim, rep = named["harness aimmerging"], named["harness replay"]
    assert report["targets"]["seqlora_vs_bare"] == named["harness seqlora"]["vs_bare"]
    again = named["harness seqlora (model.compile=train, compiled before)"]
    assert report["targets"]["seqlora_compiled_vs_bare"] == again["vs_bare"]
    assert report["targets"]["aimmerging_vs_replay_train_time"] == pytest.approx(aim["seconds"] / rep["seconds"])
    assert "| bare PEFT loop | fp32 |" in proc.stdout and (tmp_path / "perf.md").read_text() == proc.stdout


def test_ray_overhead_script_splits_both_runs_the_same_way(tiny_causal, tmp_path) -> None:
    """The same run in this process and in Ray Train, each split into fixed cost, training and evaluation."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "ray_overhead.py"), "--model", tiny_causal]
    cmd += ["--batch", "2", "--steps-per-task", "1", "--test", "2", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "ray_overhead.json").read_text())
    assert report["steps"] == 4 and report["workers"] == 1 and report["ray_start_seconds"] > 0
    for side in ("in_process", "ray_train"):
        r = report[side]
        assert r["examples"] == 8 and r["seconds"] > 0 and r["eval_seconds"] > 0, side
        assert r["fixed_seconds"] + r["seconds"] + r["eval_seconds"] == pytest.approx(r["end_to_end"]), side
    a, b = report["in_process"], report["ray_train"]
    assert report["ratio_end_to_end"] == pytest.approx(b["end_to_end"] / a["end_to_end"])
    assert report["ratio_training"] == pytest.approx(b["seconds"] / a["seconds"])
    md = (tmp_path / "ray_overhead.md").read_text()
    assert "| end to end |" in md and proc.stdout.endswith(md)  # after the worker's lines, which Ray forwards


def test_quality_script_caches_runs_and_writes_the_results(tiny_causal, tmp_path) -> None:
    out, results = tmp_path / "quality", tmp_path / "RESULTS.md"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "quality.py"),
        "--methods",
        "aimmerging,seqlora,single_task",
        "--orders",
        "1",
        "--preset",
        "smoke",
        "--out",
        str(out),
        "--results",
        str(results),
        *tiny_overrides(tiny_causal),
        "train.lr=0.05",  # the methods' scores differ: the planner below has spreads to plan from
    ]
    env = {**os.environ, "AIMRAY_STAGE_CACHE": str(tmp_path / "stage-cache")}  # shared through Ray's tasks
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    caches = [json.loads(m.read_text())["cache"] for m in sorted(out.glob("runs/*/*/manifest.json"))]
    assert len({c["stage"]["key"] for c in caches}) == 1  # one task 1 for all three methods
    hits = sum(c["stage"]["hit"] for c in caches)  # the runs that started after another's task 1 ended
    assert hits >= 3 - (os.cpu_count() or 1) and len(list((tmp_path / "stage-cache" / "stages").iterdir())) == 1
    text = results.read_text()
    assert "3 of 3 runs finished." in text and "| aimmerging | 1 |" in text and "FWT (paper) mean ± std" in text
    row = next(line for line in text.splitlines() if line.startswith("| aimmerging |"))
    assert "–" not in row.split("|")[5]  # FWT (paper) is defined: the single_task run is there
    assert "## Reading the table" in text and "AimMerging is " in text and "| seqlora | 1 |" in text.split("Reading")[1]
    # A changed config is not served from the cache; --report-only runs nothing and lists what is missing.
    again = subprocess.run([*cmd, "train.lr=0.005", "--report-only"], cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 0 and "0 of 3 runs finished" in results.read_text()
    rerun = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0 and "3 runs, 3 already finished, 0 to run" in rerun.stdout + rerun.stderr
    # --plan adaptive on the same folder: the pilot (order 1 at seeds 0 and 1: seed 0 cached), then the pairs
    # the planner picks within the budget; plan.json keeps the design, and another design is refused.
    planned = [*cmd[:3], "aimmerging,seqlora", "--seeds", "0,1", *cmd[4:], "--plan", "adaptive"]
    planned += ["--budget-hours", "1", "--max-runs", "2", "--results", str(tmp_path / "planned.md")]
    # SIGTERM to the driver once a pilot run has a checkpoint: the running runs checkpoint and stop, one line,
    # exit 143, no write-up; the same command then continues
    first = subprocess.Popen(planned, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 600
    while time.time() < deadline and not list(out.glob("runs/*/o1-s1-*/checkpoints/t01-*")):
        assert first.poll() is None, first.communicate()[1][-3000:]
        time.sleep(0.1)
    first.send_signal(signal.SIGTERM)
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 143, stderr[-3000:]
    assert "[study] interrupted: " in stderr and "runs finished; run the same command to continue" in stderr
    assert not [line for line in stderr.splitlines() if "Traceback" in line and "PlacementGroupCleaner" not in line]
    assert not (tmp_path / "planned.md").exists()
    statuses = {json.loads(m.read_text())["status"] for m in out.glob("runs/*/o1-s1-*/manifest.json")}
    assert statuses and statuses <= {"stopped", "success"}, statuses
    proc = subprocess.run(planned, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    record = json.loads((out / "plan.json").read_text())
    assert record["design"] == {"alpha": 0.05, "margin": 1.0, "pilot": 2, "power": 0.8}
    assert record["sequence"][:3] == [[1, 0], [1, 1], [2, 0]]  # then the other orders at seed 0
    manifests = out.glob("runs/*/*/manifest.json")
    done = {str(m.parent.relative_to(out / "runs")).rsplit("-", 1)[0] for m in manifests if "success" in m.read_text()}
    started = {f"{m}/o{o}-s{s}" for rnd in record["rounds"] for m, o, s in rnd["planned"][:1]}  # a round's first
    assert {"aimmerging/o1-s1", "seqlora/o1-s1"} | started <= done
    assert 1 <= len(record["rounds"]) <= 2 and "--max-runs 2 reached in this sitting" in proc.stdout  # one pair
    assert {rnd["clock"] for rnd in record["rounds"]} == {"cpu"}  # every run counted its processor seconds
    text = (tmp_path / "planned.md").read_text()
    assert "budget (run processor time, pilot included)" in text
    assert "## AimMerging against each method: decisions" in text and "| seqlora | OP |" in text
    assert "Stein's two-stage" in text and "Hours:" in text and "| seqlora | OP |" in text
    other = subprocess.run([*planned, "--margin", "2", "--report-only"], cwd=ROOT, capture_output=True, text=True)
    assert other.returncode == 2 and "margin=1.0, not 2.0" in other.stderr


def test_no_reading_is_final_while_the_pilot_is_not_complete() -> None:
    """A write-up of a study whose pilot lacks runs (replay has 1 of 4) reads no comparison finally, not even
    seqlora's whose pilot is complete, and says nothing is planned yet (it said "the readings are final")."""
    from analysis import planner as P
    from benchmarks import planned
    from tests.test_planner import _runs

    design, sequence = P.Design(pilot=4), [(o, 0) for o in (4, 5, 6, 101, 102)]
    values = {"aimmerging": {4: 60, 5: 62, 6: 61, 101: 66}, "seqlora": {4: 55, 5: 58, 6: 57, 101: 58}}
    runs = _runs(values | {"replay": {4: 61}})
    state = P.standing(runs, sequence, design, budget_hours=20.0)
    assert state["plan"] is None
    text = "\n".join(planned.decisions_section(state, design, 20.0, sequence, {"generate": runs}))
    assert "The pilot is not complete: nothing planned yet." in text and "readings are final" not in text
    seqlora = [line for line in text.splitlines() if line.startswith("| seqlora |")]
    assert len(seqlora) == 2 and all("| running |" in line for line in seqlora), seqlora


def test_the_claims_say_where_aimmerging_does_not_win() -> None:
    """RESULTS' reading of the paper's claims names every method level with AimMerging or ahead of it."""
    from analysis import report as R

    table = pd.DataFrame(
        {
            "method": ["aimmerging", "aimmerging_no_ls", "fixed_interval", "replay", "single_task"],
            "op/mean": [0.8092, 0.8142, 0.8067, 0.7992, 0.8092],
            "bwt/mean": [-0.0122, -0.0061, -0.0200, -0.0500, float("nan")],
            "merges_per_task": [6.8, 21.0, 18.0, 0.0, 0.0],
        }
    )
    lines = R.claims(table)
    assert "- OP: AimMerging 80.92, the best baseline (fixed_interval) 80.67: +0.25 points (AimMerging ahead;" in (
        "\n".join(lines)
    )
    op = "- Where AimMerging does not win on OP (80.92): ahead of it: aimmerging_no_ls 81.42 (+0.50); level with it:"
    assert op + " single_task." in lines
    assert "- Where AimMerging does not win on BWT (-1.22): ahead of it: aimmerging_no_ls -0.61 (+0.61)." in lines
    assert any(line.startswith("- Merges: AimMerging 6.8 per task") and "0.38x" in line for line in lines)
    assert "- FWT: open: the paper's variant needs single_task runs on these pairs (the paper: +2.9)." in lines
    fwt = R.claims(table.assign(**{"fwt_paper/mean": [-0.01, -0.02, 0.005, -0.03, float("nan")]}))
    assert "- FWT: AimMerging -1.00, the best baseline (fixed_interval) 0.50: -1.50 points (AimMerging behind;" in (
        "\n".join(fwt)
    )
    leader = table.assign(**{"op/mean": [0.9, 0.8, 0.8, 0.8, 0.8], "bwt/mean": [0.0, -0.1, -0.1, -0.1, None]})
    assert not any("does not win" in line for line in R.claims(leader))


def test_faults_script_kills_resumes_and_writes_its_section(tiny_causal, tmp_path) -> None:
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\nkept as it is\n")
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "faults.py"),
        "--cases",
        "run",
        "--kills",
        "2",
        "--preset",
        "smoke",
        "--out",
        str(tmp_path / "faults"),
        "--results",
        str(results),
        *tiny_overrides(tiny_causal),
        "model.autocast=off",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    figures = json.loads((tmp_path / "faults" / "faults.json").read_text())
    assert figures["same_seed"] == {"lost": 0, "duplicated": 0, "identical": True}
    assert figures["kills"]["identical"] and figures["kills"]["lost"] == figures["kills"]["duplicated"] == 0
    text = results.read_text()
    assert text.startswith("# Results\n\nkept as it is\n") and text.count("<!-- faults:begin -->") == 1
    assert "| same seed twice | 0 | 0 | 0 | identical |" in text


def test_sweep_efficiency_script_runs_a_tiny_grid_and_replays_the_searches(tiny_causal, tmp_path) -> None:
    """A 2 x 2 grid on one order through Ray, then TPE + successive halving and random search replayed on it
    at half the grid's compute; the section goes into the given RESULTS.md between its markers."""
    out, results = tmp_path / "eff", tmp_path / "RESULTS.md"
    results.write_text("# Results\n\nkept text\n")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "sweep_efficiency.py"), "--preset", "smoke", "--orders", "1"]
    cmd += ["--search-seeds", "0,1", "--budget", "0.5", "--out", str(out), "--results", str(results)]
    cmd += ["--grid", "controller.s0=1,2", "memory.per_task=2,4", "--", *tiny_overrides(tiny_causal)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    text = (out / "efficiency.md").read_text()
    assert "4 of 4 configs finished" in text and "The grid's best config by dev" in text
    rows = [line for line in text.splitlines() if line.startswith(("| tpe |", "| random |"))]
    assert len(rows) == 2 * 2 + 2  # per search and seed, then one summary row per search
    assert all(int(r.split("|")[4]) <= 2 for r in rows[:4])  # compute within half of 4 configs x 1 order
    kept = results.read_text()
    assert kept.startswith("# Results\n\nkept text") and "<!-- sweep_efficiency:begin -->" in kept


def test_rerun_script_finds_a_run_identical_and_a_changed_one_not(tiny_causal, tmp_path, capsys) -> None:
    """benchmarks/rerun.py (the proof that a refactor changes no number) on a tiny run: identical to itself,
    through a fresh stage cache too; a run whose committed matrix was changed is reported, exit 1."""
    from aimray.loop import run
    from tests.test_loop import quiet, tiny_config

    spec = importlib.util.spec_from_file_location("rerun", ROOT / "benchmarks" / "rerun.py")
    rerun = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rerun)
    committed = tmp_path / "committed"
    run(tiny_config(tiny_causal, "aimmerging"), committed, log=quiet)
    assert rerun.main(["--share", str(committed), str(committed)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{committed}: identical,") and "(task 1 from the stage cache)" in lines[1]
    matrix = json.loads((committed / "matrix.json").read_text())
    matrix["test"][1][0] += 0.01
    (committed / "matrix.json").write_text(json.dumps(matrix))
    assert rerun.main([str(committed)]) == 1
    assert capsys.readouterr().out.startswith(f"{committed}: differs in matrix.json,")


def test_the_claims_leave_out_a_method_queued_behind_the_others() -> None:
    """A method with one pair of the others' four (single_task queued behind them) is left out of the claims
    and named, not allowed to shrink every comparison to its one pair; mtl is never in them."""
    from analysis import report as R
    from benchmarks import quality
    from tests.test_planner import _runs

    four = {4: 60, 5: 62, 6: 61, 101: 63}
    runs = _runs({"aimmerging": four, "replay": four, "seqlora": four, "single_task": {4: 70}, "mtl": {4: 72}})
    chosen, behind = quality.common_pairs(runs)
    assert set(chosen.method) == {"aimmerging", "replay", "seqlora"} and len(chosen) == 12
    assert behind == {"single_task": 1}
    nan = float("nan")
    keys = zip(runs.method, runs.order, strict=True)
    fwt = [0.01 if (m, o) == ("aimmerging", 4) else 0.02 if o == 4 else nan for m, o in keys]
    lines = R.claims(*quality.claims_inputs(runs.assign(fwt_paper=fwt, fwt_base=nan, forgetting=nan)))
    assert "On the 4 order-seed pairs every method here has finished; left out until they have them: " in lines[3]
    assert lines[3].endswith("single_task (1 of 4).")
    fwt_line = next(line for line in lines if line.startswith("- FWT:"))  # single_task has order 4 only
    assert "-1.00 points (AimMerging behind; the paper: +2.9 on its benchmarks); " in fwt_line
    assert fwt_line.endswith("; read on 1 of the 4 pairs, those with a single_task run.")
    uneven = _runs({"aimmerging": four, "replay": {4: 59, 5: 60, 101: 61, 102: 60}})  # 4 pairs each, 3 shared
    assert len(set(zip(*[quality.common_pairs(uneven)[0][k] for k in ("order", "seed")], strict=True))) == 3
