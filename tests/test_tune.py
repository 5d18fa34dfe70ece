"""Ray Tune + Optuna sweeps on Ray: a local instance and a two-node cluster started here (tiny random-init
Llama: unit tests only). The driver is the real CLI, sweeps/tune_controller.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aimray.launch.tune import define_by_run, load_sweep, parse_space, tpe_sampler, trial_config
from aimray.manifest import Manifest

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "sweeps" / "configs" / "smoke.yaml"


def tiny_overrides(model: str) -> list[str]:
    return [
        f"model.name_or_path={model}",
        "model.max_prompt_tokens=40",
        "data.train=8",
        "data.dev=4",
        "data.test=4",
        "train.batch_size=4",
        "train.epochs=1",
        "train.warmup_steps=0",
        "memory.per_task=4",
        "memory.batch_size=2",
        "controller.s0=1",
        "controller.m0=1",
        "eval.base=false",
    ]


def sweep_cli(out: Path, model: str, *extra: str, env: dict | None = None, **popen) -> subprocess.Popen:
    cmd = [
        sys.executable,
        str(ROOT / "sweeps" / "tune_controller.py"),
        "--config",
        str(SMOKE),
        "--out",
        str(out),
        "--num-samples",
        "2",
        "--cpus-per-trial",
        "1",
        *extra,
        *tiny_overrides(model),
    ]
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, text=True, **popen)


def check_sweep(out: Path, samples: int = 2) -> pd.DataFrame:
    assert (out / "ray-logs").is_dir()  # Ray's own logs, linked from the sweep's folder
    table = pd.read_parquet(out / "trials.parquet")
    assert len(table) == samples and (table.status == "completed").all(), table[["status", "error"]]
    assert table.objective.between(0, 1).all() and (table.tasks_done == 12).all()
    per_order = pd.read_parquet(out / "trial_orders.parquet")  # long form: one row per trial and order
    assert len(per_order) == 3 * samples and (per_order.status == "success").all()
    assert set(per_order.order) == {1, 2, 3} and per_order[["op", "dev_op", "compute"]].notna().all().all()
    dev = per_order.groupby("trial_id").dev_op.mean()  # dev_op: the mean over orders, dev data only
    assert np.allclose(table.objective, dev[table.trial_id].to_numpy())
    assert {"config/controller.threshold_factor", "config/memory.per_task"} <= set(table.columns)
    for trial in table.trial_id:
        for order in (1, 2, 3):
            run = out / "runs" / trial / f"order{order}"
            assert (run / "matrix.json").exists() and list((run / "events" / "steps").glob("*.parquet"))
            assert Manifest.read(run).labels == {"trial": trial}  # each run names its trial
    assert "| trial | objective | test OP |" in (out / "best.md").read_text()
    # Read while the sweep runs (trial_orders.parquet comes at the end): the same per-trial means.
    from analysis import tables as T
    from analysis.load import open_study

    means = T.trial_metrics(open_study(out)).set_index("trial_id")[["op", "dev_op", "op_spread"]]
    (out / "trial_orders.parquet").rename(out / "trial_orders.kept")
    try:
        study = open_study(out)
        assert set(study.runs.trial) == set(table.trial_id)
        live = T.trial_metrics(study).set_index("trial_id")[["op", "dev_op", "op_spread"]]
        assert np.allclose(live.loc[means.index].to_numpy(), means.to_numpy())
    finally:
        (out / "trial_orders.kept").rename(out / "trial_orders.parquet")
    return table


def test_space_parsing_and_define_by_run() -> None:
    import optuna

    space = parse_space(
        {"a.x": {"uniform": [0.0, 1.0]}, "a.k": {"choice": ["p", "q"]}, "a.y": {"int": [1, 3], "if": {"a.k": "q"}}}
    )
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        define_by_run(space)(trial)
        params = trial.params
        assert ("a.y" in params) == (params["a.k"] == "q")
        seen.add(params["a.k"])
        study.tell(trial, 0.0)
    assert seen == {"p", "q"}
    with pytest.raises(ValueError, match="space.a.x"):
        parse_space({"a.x": {"uniform": [2, 1]}})
    with pytest.raises(ValueError, match="space.a.x"):
        parse_space({"a.x": {"normal": [0, 1]}})


def test_sweep_spec_errors_name_the_field(tmp_path) -> None:
    with pytest.raises(ValueError, match="objective='accuracy'"):
        load_sweep(SMOKE, ["objective=accuracy"])
    with pytest.raises(ValueError, match="train.lrr"):
        load_sweep(SMOKE, ["train.lrr=1"])
    with pytest.raises(ValueError, match="unknown key 'nope': not a sweep field .*num_samples.* nor a run-config key"):
        load_sweep(SMOKE, ["nope=1"])
    with pytest.raises(ValueError, match="no order 7"):
        load_sweep(SMOKE, [], orders=(7,))
    spec = load_sweep(SMOKE, ["num_samples=3", "train.lr=0.01"], out=str(tmp_path))
    assert spec.num_samples == 3 and spec.overrides["train"]["lr"] == 0.01 and spec.all_orders() == (1, 2, 3)


def test_sweep_benchmark_is_the_presets_unless_named(tmp_path) -> None:
    """A sweep config that names no benchmark sweeps the preset's (`--preset long`: offline-long on the paper's
    orders 4-6, not the 20 seeded permutations); one the config or a key=value names wins."""
    controller = ROOT / "sweeps" / "configs" / "controller.yaml"
    out = str(tmp_path / "sweep")
    spec = load_sweep(controller, [], out=out)
    assert spec.benchmark == "offline-standard" and spec.all_orders() == (1, 2, 3)
    spec = load_sweep(controller, [], preset="long", out=out)
    assert spec.benchmark == "offline-long" and spec.all_orders() == (4, 5, 6) and spec.num_tasks() == 15
    assert trial_config(spec, 5, {}).benchmark == "offline-long"
    assert trial_config(spec, 5, {}).eval.splits == ("test", "dev")  # the long preset scores test only
    assert load_sweep(controller, ["benchmark=offline-standard"], preset="long", out=out).all_orders() == (1, 2, 3)
    named = load_sweep(SMOKE, [], preset="long", out=out)  # smoke.yaml names offline-standard
    assert named.benchmark == "offline-standard" and trial_config(named, 1, {}).benchmark == "offline-standard"
    assert load_sweep(controller, [], preset="long", orders=(101,), out=out).all_orders() == (101,)


def test_two_trial_sweep_on_local_ray(tiny_causal, tmp_path) -> None:
    """The real CLI on a local Ray, multi-objective: --objectives dev_op,dev_bwt,compute tunes on orders 1-2
    (order 3 held out), marks the Pareto front, then runs the front and the defaults on order 3; best.md shows
    both, the analysis draws the front and the best trial's trajectories, the trackers and the live Optuna
    study hold every trial, and the same command again is refused. (The single-objective path: the two-node
    test.)"""
    out = tmp_path / "sweep"
    extra = ["--objectives", "dev_op,dev_bwt,compute", "--holdout-orders", "3", "--callbacks", "mlflow,tensorboard"]
    extra += ["scheduler=none"]  # key=value arguments after the flags
    stop_midway_with_sigterm(out, tiny_causal, extra)
    proc = sweep_cli(out, tiny_causal, "--resume", *extra, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    stdout, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, stdout[-4000:]
    assert "reported value is ignored" not in stdout  # Optuna's warning on a resumed trial: off the terminal
    assert "# Sweep: aimmerging on offline-standard" in stdout
    table = pd.read_parquet(out / "trials.parquet")
    assert (table.status == "completed").all() and (table.tasks_done == 8).all()  # 2 orders x 4 tasks
    # The first trial evaluates the preset's own values (points_to_evaluate); TPE proposes the second.
    assert table["config/controller.threshold_factor"].round(6).isin([2.0]).any()
    per_order = pd.read_parquet(out / "trial_orders.parquet")
    assert set(per_order.order) == {1, 2}  # the held-out order is never tuned on
    for name in ("dev_op", "dev_bwt", "compute"):
        means = per_order.groupby("trial_id")[name].mean()[table.trial_id].to_numpy()
        assert np.allclose(table[f"objective/{name}"], means), name
    assert np.allclose(table.objective, table["objective/dev_op"]) and (table["objective/compute"] > 0).all()
    values = table[["objective/dev_op", "objective/dev_bwt", "objective/compute"]].to_numpy()
    signed = values * np.array([1, 1, -1])
    for i, on_front in enumerate(table.pareto):  # brute force: not dominated by any other trial
        dominated = any((signed[j] >= signed[i]).all() and (signed[j] > signed[i]).any() for j in range(len(table)))
        assert on_front == (not dominated)
    holdout = pd.read_parquet(out / "holdout.parquet")
    front = table[table.pareto]
    is_default = front["config/controller.threshold_factor"].round(6) == 2.0  # the preset's point, run as default
    assert set(holdout.config) == {"default", *front.trial_id[~is_default]} and set(holdout.order) == {3}
    assert (holdout.status == "success").all() and holdout.op.notna().all() and holdout.dev_op.notna().all()
    best = (out / "best.md").read_text()
    assert "objectives dev_op, dev_bwt, compute" in best and "The Pareto front:" in best
    assert "## On the held-out orders 3" in best and "| default |" in best and "| dev OP vs default |" in best
    if len(set(holdout.config)) > 1:  # a tuned config beside the defaults: a reading in dev examples
        assert " dev examples (one is 6.25 points here)" in best  # 4 dev x 4 tasks, 1 order
    # what it can conclude: 4 dev examples per task x 4 tasks x 2 orders -> one example is 3.12 points
    assert "One dev example moves the objective by 3.12 points" in best
    assert "beats the default" in best or "No trial beats the default" in best
    from analysis import tables as T
    from analysis.load import open_study

    assert T.dev_example_worth(open_study(out)) == pytest.approx(1 / 32)  # the sensitivity figure's noise band
    figures = analyse(out, "Best trials (objective on dev")
    assert "pareto.png" in figures and (out / "analysis" / "tables" / "pareto.md").exists()
    assert all((out / "analysis" / "tables" / f"importances_{n}.md").exists() for n in ("dev_op", "dev_bwt", "compute"))
    assert {"sensitivity.png", "optimization_history.png"} <= figures
    assert any(f.startswith("trajectory_runs_") and f.endswith("_order1.png") for f in figures)
    assert "## On the held-out orders 3" in (out / "analysis" / "tables" / "holdout.md").read_text()
    # the notebook takes the sweep: the front and the held-out orders among its outputs
    import nbformat
    from nbclient import NotebookClient

    path = ROOT / "analysis" / "notebooks" / "explore.ipynb"
    nb = nbformat.read(path, as_version=4)
    env = {"AIMRAY_STUDY": str(out)}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        NotebookClient(
            nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
        ).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    shown = "".join(o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert "## On the held-out orders 3" in shown and "dev_op" in shown
    # The live Optuna study (a journal file) holds every trial with its three values; MLflow (a real sqlite
    # store) holds one run per trial with the reported metrics; TensorBoard files are in each trial's folder.
    import mlflow
    import optuna
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(out / "optuna.journal")))
    study = optuna.load_study(study_name="aimray-sweep", storage=storage)
    assert len(study.trials) == 2 and all(len(t.values) == 3 for t in study.trials)
    assert study.metric_names == ["dev_op", "dev_bwt", "compute"]  # the dashboard's axis labels
    client = mlflow.tracking.MlflowClient(f"sqlite:///{out}/mlflow.db")
    experiment = client.get_experiment_by_name("aimray-sweep")
    tracked = client.search_runs([experiment.experiment_id])
    assert len(tracked) == 2 and all(
        {"objective", "tasks_done", "objective/compute"} <= set(r.data.metrics) for r in tracked
    )
    # one TensorBoard run (folder) per trial; a resumed trial adds a file to it, which TensorBoard reads as one
    assert len({p.parent for p in (out / "ray" / "tune").glob("*/events.out.tfevents.*")}) == 2
    # The same command again is refused before anything is written: the sweep's record stays as it was.
    record = (out / "sweep.json").read_text()
    again = sweep_cli(out, tiny_causal, "--num-samples", "3", stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    text, _ = again.communicate(timeout=300)
    assert again.returncode == 2 and "already holds a sweep: pass --resume" in text, text[-2000:]
    assert (out / "sweep.json").read_text() == record


def stop_midway_with_sigterm(out: Path, model: str, extra: list[str]) -> None:
    """Start the sweep and SIGTERM its driver once a run has checkpointed: the running trials' runs finish
    their step and checkpoint (manifest "stopped"), Tune saves its state, and the driver exits 143 with one
    line saying how to continue; no tables are written, nothing is dumped on the terminal. The same command
    with --resume and another seed is refused."""
    proc = sweep_cli(out, model, *extra, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 600
    while time.time() < deadline and not list(out.glob("runs/*/order1/checkpoints/latest")):
        assert proc.poll() is None, proc.communicate()[0][-4000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=300)
    assert proc.returncode == 143, stdout[-4000:]
    assert "[sweep] SIGTERM: the running trials checkpoint and stop" in stdout, stdout[-4000:]
    assert "of 2 trials finished; run the same command with --resume" in stdout, stdout[-4000:]
    for noise in ("Tuner.restore", "Fatal Python error", "Traceback"):
        assert noise not in stdout, stdout[-4000:]
    assert not (out / "best.md").exists() and not (out / "trials.parquet").exists()
    statuses = [Manifest.read(p.parent).status for p in out.glob("runs/*/order*/manifest.json")]
    assert "stopped" in statuses and "running" not in statuses and "failed" not in statuses, statuses
    # --resume under other settings would mix two searches in one study: refused, naming what differs
    again = sweep_cli(out, model, "--resume", *extra, "seed=1", stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    stdout, _ = again.communicate(timeout=300)
    assert again.returncode == 2 and "holds a sweep begun with other settings (seed was 0, now 1)" in stdout, stdout


def analyse(study: Path, headline: str) -> set[str]:
    """Run `python -m analysis` on a study; check the headline; return the figure files written."""
    proc = subprocess.run([sys.executable, "-m", "analysis", str(study)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0 and headline in proc.stdout, (proc.stdout + proc.stderr)[-3000:]
    assert (study / "analysis" / "report.md").exists()
    return {p.name for p in (study / "analysis" / "figures").iterdir()}


def test_one_driver_per_sweep_folder(tmp_path, capsys) -> None:
    """A second driver on a held sweep folder fails at once naming the holder; the lock file of a driver that
    died is taken over with a warning; a folder made for a sweep that fails before writing is removed."""
    from aimray.files import FolderInUseError, locked
    from aimray.launch.tune import sweep_folder

    out = tmp_path / "sweep"
    with (
        locked(out / ".lock"),
        pytest.raises(FolderInUseError, match=f"in use by another process \\(pid {os.getpid()}\\)"),
        sweep_folder(out),
    ):
        pass
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / ".lock").write_text(dead.stdout.strip())
    with sweep_folder(out):
        assert (out / ".lock").read_text() == str(os.getpid())
    assert f"taking over from pid {dead.stdout.strip()}, which is no longer running" in capsys.readouterr().out
    fresh = tmp_path / "fresh"
    with pytest.raises(ValueError, match="no GPU"), sweep_folder(fresh):
        raise ValueError("no GPU")
    assert not fresh.exists()


def test_ablation_script_writes_runs_and_table(tiny_causal, tmp_path) -> None:
    out = tmp_path / "abl"
    cmd = [
        sys.executable,
        str(ROOT / "sweeps" / "ablations.py"),
        "--methods",
        "aimmerging,seqlora,single_task",
        "--orders",
        "1,2",
        "--out",
        str(out),
        *tiny_overrides(tiny_causal),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    table = pd.read_parquet(out / "runs.parquet")
    assert len(table) == 6 and (table.status == "success").all()
    assert table[table.method == "aimmerging"].fwt_paper.notna().all()
    assert table[table.method == "single_task"].fwt_paper.isna().all()
    md = (out / "ablation.md").read_text()
    assert "| aimmerging | 2 |" in md and "FWT (paper, vs single-task)" in md
    figures = analyse(out, "| aimmerging | 2 |")
    assert {"accuracy_matrices.pdf", "forgetting.pdf"} <= figures
    assert any(f.startswith("trajectory_runs_aimmerging_o1-s0-") and f.endswith(".pdf") for f in figures)
    methods = (out / "analysis" / "tables" / "methods.md").read_text()
    assert "FWT (paper) mean ± std" in methods and methods.index("| aimmerging |") < methods.index("| seqlora |")
    # A rerun skips the finished runs.
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and "6 runs, 6 already finished, 0 to run" in again.stdout
    assert "Started a local Ray instance" not in again.stderr  # nothing to run: no Ray, the tables all the same
    assert (out / "ablation.md").read_text() == md and "| aimmerging | 2 |" in again.stdout


def test_a_sweep_asking_for_gpus_the_cluster_lacks_fails_at_once(tiny_causal, tmp_path) -> None:
    """Resources are checked against the cluster before the sweep starts: one error line naming the flag,
    exit 2, nothing written under --out."""
    out = tmp_path / "sweep"
    proc = sweep_cli(out, tiny_causal, "--gpus-per-trial", "0.5", stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    stdout, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "error: --gpus-per-trial=0.5, but the cluster has 0 GPUs" in stdout, stdout[-2000:]
    assert not out.exists()


def test_tpe_leaves_its_random_start_up_within_the_sweep() -> None:
    """Optuna's default start-up (10 random trials) would make a sweep of 10 trials or fewer random search."""
    assert [tpe_sampler(0, n)._n_startup_trials for n in (2, 6, 12, 30, 100)] == [3, 3, 4, 10, 10]


def test_the_demo_sweep_is_multi_objective_with_a_held_out_order() -> None:
    spec = load_sweep(ROOT / "sweeps" / "configs" / "demo.yaml", [])
    assert spec.kinds() == ["dev_op", "dev_bwt", "compute"] and spec.holdout_orders == (3,)
    assert spec.tune_orders() == (1, 2) and spec.scheduler == "none"
    assert [p.key for p in spec.space] == ["controller.s0", "memory.per_task"]  # inside what its tasks express


@pytest.mark.parametrize("searcher", ["OptunaSearch", "ResumableOptunaSearch"])
def test_a_trial_the_optuna_study_finished_can_be_run_again_on_resume(searcher) -> None:
    """faults.py's storage-outage case: storage away past the limit, the trials failed and were told FAIL
    while Tune could not save its state; `--resume` restored the older state and ran them again, and Ray's
    OptunaSearch crashed the driver (UpdateFinishedTrialError). aimray's searcher lets them run."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from aimray.launch import tune as tune_lib

    space = define_by_run(parse_space({"a.x": {"uniform": [0.0, 1.0]}}))
    kind = {"OptunaSearch": OptunaSearch, "ResumableOptunaSearch": tune_lib.ResumableOptunaSearch}[searcher]
    search = kind(space=space, metric="objective", mode="max", sampler=optuna.samplers.RandomSampler(seed=0))
    assert search.suggest("t1")
    search._ot_study.tell(search._ot_trials["t1"], state=optuna.trial.TrialState.FAIL)  # before the outage ended
    again = [
        lambda: search.on_trial_result("t1", {"objective": 0.5, "training_iteration": 1}),
        lambda: search.on_trial_complete("t1", {"objective": 0.6, "training_iteration": 2}),
    ]
    if searcher == "OptunaSearch":  # what Ray's own searcher does
        with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
            again[0]()
        return
    for call in again:
        call()
    assert [t.state for t in search._ot_study.trials] == [optuna.trial.TrialState.FAIL]
