"""Stopping when asked (aimray.stopping): SIGTERM and SIGINT stop `python -m aimray run --workers 0` at a
step boundary with a checkpoint, one line and exit 143 / 130; the same command continues to the result an
uninterrupted run has (tiny random-init Llama: unit tests only)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import aimray.loop
from aimray.events import SCHEMAS, read_events
from aimray.loop import run
from aimray.stopping import Stop, StopRequested
from tests.test_loop import TINY, comparable, quiet, tiny_config

ROOT = Path(__file__).resolve().parents[1]


def tiny_args(model: str) -> list[str]:
    flat = [f"{section}.{k}={'null' if v is None else v}" for section, d in TINY.items() for k, v in d.items()]
    return [*flat, f"model.name_or_path={model}"]


def stop_during(cmd: list[str], sig: int, marker: str) -> tuple[subprocess.CompletedProcess, float]:
    """Run `cmd`, send `sig` once a progress line contains `marker`; (the process, seconds it took to end)."""
    env = {**os.environ, "AIMRAY_PROGRESS_S": "0", "PYTHONUNBUFFERED": "1"}  # each progress line as it comes
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if marker in line:
            break
    sent = time.time()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    seconds = time.time() - sent
    return subprocess.CompletedProcess(cmd, proc.returncode, "".join(lines) + out, err), seconds


def test_sigterm_and_sigint_stop_a_run_with_a_checkpoint_and_the_same_command_continues(tiny_causal, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "aimray", "run", "--workers", "0", "--out", str(out), *tiny_args(tiny_causal)]
    for sig, code, marker in ((signal.SIGTERM, 143, "task 2/4 (amazon): step"), (signal.SIGINT, 130, "task 3/4")):
        proc, _seconds = stop_during(cmd, sig, marker)
        assert proc.returncode == code, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr, proc.stderr[-3000:]  # seconds: measured by faults.py, never asserted
        assert "[run] stopped at task" in proc.stderr and "the same command continues" in proc.stderr
        assert f"[run] {signal.Signals(sig).name}: stopping after the current step" in proc.stdout
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["status"] == "stopped" and "StopRequested" in manifest["error"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from checkpoint" in done.stdout
    assert json.loads((out / "manifest.json").read_text())["status"] == "success"
    whole = tmp_path / "whole"
    run(tiny_config(tiny_causal), whole, log=quiet)
    for kind in SCHEMAS:
        assert comparable(whole, kind) == comparable(out, kind), kind


def test_a_stop_while_evaluating_keeps_the_trained_task_and_scores_it_again(tiny_causal, tmp_path, monkeypatch):
    """Asked to stop while the base model or a trained task is being scored: the run stops after the task it
    is scoring (not after the whole round), keeps what training it has done and records none of the round;
    the same call continues to exactly the events of an uninterrupted run."""
    stop, where, scored = Stop(), {"after": -1, "cells": 0}, aimray.loop.score_modes
    stops = [(0, 2), (2, 2)]  # (after task, cell): SIGTERM arrives as the second task's scores are computed
    evaluate = aimray.loop.evaluate_tasks

    def evaluating(r, after_index, *args, **kwargs):
        where.update(after=after_index, cells=0)
        return evaluate(r, after_index, *args, **kwargs)

    def scoring(*args, **kwargs):
        where["cells"] += 1
        if stops and (where["after"], where["cells"]) == stops[0]:
            stop.signum = signal.SIGTERM
            stops.pop(0)
        return scored(*args, **kwargs)

    monkeypatch.setattr(aimray.loop, "evaluate_tasks", evaluating)
    monkeypatch.setattr(aimray.loop, "score_modes", scoring)
    out, cfg = tmp_path / "run", tiny_config(tiny_causal)
    with pytest.raises(StopRequested) as base:
        run(cfg, out, log=quiet, stop=stop)
    assert base.value.where == "the base model's evaluation" and not base.value.checkpointed
    assert "nothing to keep yet" in base.value.line() and not (out / "checkpoints").exists()
    stop.signum = None
    with pytest.raises(StopRequested) as trained:
        run(cfg, out, log=quiet, stop=stop)
    assert trained.value.where == "the evaluation after task 2/4 (amazon; its training kept)", trained.value.where
    assert json.loads((out / "manifest.json").read_text())["status"] == "stopped"
    assert set(read_events(out, "evals").column("after_index").to_pylist()) == {0, 1}  # none of task 2's round
    monkeypatch.undo()
    lines = []
    run(cfg, out, log=lines.append)
    assert "[run] task 2 (amazon): trained before the stop; evaluating" in lines, lines
    whole = tmp_path / "whole"
    run(cfg, whole, log=quiet)
    for kind in SCHEMAS:
        assert comparable(whole, kind) == comparable(out, kind), kind


def test_a_second_signal_stops_at_once() -> None:
    script = (
        "import os, signal, time\n"
        "from aimray.stopping import on_signals\n"
        "with on_signals(log=lambda _: None) as stop:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    assert stop.signum == signal.SIGTERM\n"
        "    print('asked', flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(30)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.stdout == "asked\n" and proc.returncode == -signal.SIGTERM


def test_a_failed_trial_and_a_failed_storage_call_take_one_line_each() -> None:
    """What Tune logs with a traceback when a trial fails (Ray's wrapper of the trial's error) or when its own
    storage call fails (the storage away) reaches the terminal as one line naming the error, the URI in it."""
    import io
    import logging

    from ray.exceptions import RayTaskError

    from aimray.launch.stop import quiet_tune_hints
    from aimray.launch.storage import StorageUnavailableError

    quiet_tune_hints()
    terminal = io.StringIO()
    handler = logging.StreamHandler(terminal)  # Ray's loggers do not propagate: listen on them
    trial_log, storage_log = (
        logging.getLogger(n) for n in ("ray.tune.execution.tune_controller", "ray.train._internal.storage")
    )
    cause = StorageUnavailableError("s3://studies/x/runs/ab12: storage unreachable for 21 s while uploading\na run")
    trial_error = RayTaskError("ImplicitFunc.train()", "Traceback (most recent call last):\n  ...", cause)
    for logger in (trial_log, storage_log):
        logger.addHandler(handler)
    try:
        trial_log.error("Trial task failed for trial %s", "run_trial_ab12", exc_info=trial_error.as_instanceof_cause())
        try:
            raise OSError("When testing for existence of bucket 'studies': AWS Error NETWORK_CONNECTION")
        except OSError:
            storage_log.exception("Caught exception when creating directory at x:")
    finally:
        for logger in (trial_log, storage_log):
            logger.removeHandler(handler)
    assert terminal.getvalue().splitlines() == [
        "Trial task failed for trial run_trial_ab12: StorageUnavailableError: s3://studies/x/runs/ab12: storage "
        "unreachable for 21 s while uploading a run",
        "Caught exception when creating directory at x: OSError: When testing for existence of bucket 'studies': "
        "AWS Error NETWORK_CONNECTION",
    ]


KEEP_TO_CPUS = """
import time, ray
from aimray.launch.cluster import ensure_ray
from aimray.launch.stop import RayStop

ensure_ray(num_cpus=1)

@ray.remote(num_cpus=0)
class SlowFlag:  # a stop flag that answers in 0.3 s, as a busy one may: Ray has time to start a queued task
    def asked(self):
        time.sleep(0.3)

    def started(self, trial):
        pass

flag = SlowFlag.options(name="aimray-stop-cpus").remote()

@ray.remote(num_cpus=1)
def run(trial):  # as a study's run: reports itself, then asks its flag at every step (at most once a second)
    stop = RayStop("aimray-stop-cpus")
    start = time.time()
    stop.report("started", trial)
    while time.time() - start < 2:
        assert stop.asked() is None
        time.sleep(0.05)
    return start, time.time()

print(sorted(ray.get([run.remote(t) for t in ("a", "b")])))
"""


def test_runs_asking_their_stop_flag_keep_to_their_cpus() -> None:
    """Two one-CPU Ray tasks on a one-CPU Ray, each asking a slow stop flag (RayStop) for 2 s, run one after
    the other. (Asked on a task's main thread, the flag's ray.get lent the task's CPU to the next queued task,
    which then ran beside it: a study on 2 CPUs ran 3 long runs at once.)"""
    import ast
    import itertools

    proc = subprocess.run([sys.executable, "-c", KEEP_TO_CPUS], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    spans = ast.literal_eval(proc.stdout.strip().splitlines()[-1])
    assert all(later[0] >= earlier[1] for earlier, later in itertools.pairwise(spans)), spans
