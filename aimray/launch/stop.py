"""Stopping Ray work well: SIGINT or SIGTERM to a driver (a sweep, a study, a run in Ray Train workers)
reaches every run it started through a named Ray actor; each run finishes its step, checkpoints and marks
itself stopped; the driver exits 130 or 143 with one line saying how to continue. A sweep's Tune saves its
state too (`--resume`).

    flag = StopFlag.start(flag_name(folder))     # the driver, before anything runs
    with driver_signals(flag) as asked: ...      # a sweep: flag.ask(signum), then Tune's own stop
    with asking(flag, "[study]", "...") as asked: ...   # a study or a Ray Train run: flag.ask(signum)
    RayStop(name)                                # a run's aimray.stopping.Stop: polls the flag
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import ray

from aimray.stopping import Stop, first_signal

POLL_S = 1.0  # how often a trial asks the flag
T = TypeVar("T")


def grace_seconds() -> float:
    """How long the driver waits for its running trials to checkpoint before Tune stops them:
    $AIMRAY_SWEEP_GRACE_S (default 25, inside the 30 s a Kubernetes pod gets by default). A trial still busy
    then (a step or one task's evaluation slower than that) is ended by Tune and redoes the steps since its
    last checkpoint on --resume."""
    return float(os.environ.get("AIMRAY_SWEEP_GRACE_S", "25"))


def flag_name(folder: str | Path) -> str:
    """The stop flag actor's name for the driver of `folder` (a sweep's or study's --out, a run's folder)."""
    return "aimray-stop-" + hashlib.sha256(str(Path(folder).resolve()).encode()).hexdigest()[:12]


@ray.remote(num_cpus=0)
class StopFlag:
    """The sweep's stop request and which trials have stopped on it (one named actor per sweep)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.running: set[str] = set()
        self.stopped: set[str] = set()

    def ask(self, signum: int) -> None:
        self.signum = self.signum or signum

    def asked(self) -> int | None:
        return self.signum

    def started(self, trial: str) -> None:
        self.running.add(trial)

    def finished(self, trial: str) -> None:
        self.running.discard(trial)

    def stopped_trial(self, trial: str) -> None:
        self.stopped.add(trial)

    def all_stopped(self) -> bool:
        return self.running <= self.stopped

    def running_now(self) -> list[str]:
        return sorted(self.running)

    @staticmethod
    def start(name: str):
        """The flag actor under `name` (a fresh one; a flag left by an earlier driver is replaced, once its name
        is free)."""
        with contextlib.suppress(ValueError):
            ray.kill(ray.get_actor(name))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                ray.get_actor(name)
            except ValueError:
                break
            time.sleep(0.1)
        return StopFlag.options(name=name).remote()


class RayStop(Stop):
    """A trial's Stop: asks the sweep's flag actor at most every POLL_S seconds; once asked, stays asked. No
    flag (a trial restored after its driver went away): never asked. Every call to the flag waits in a thread
    of its own (off_main_thread)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name, self.last, self.flag = name, 0.0, None

    def asked(self) -> int | None:
        if self.signum is None and time.monotonic() - self.last >= POLL_S:
            self.last = time.monotonic()
            self.signum = off_main_thread(self._ask)
        return self.signum

    def _ask(self) -> int | None:
        try:
            self.flag = self.flag or ray.get_actor(self.name)
            return ray.get(self.flag.asked.remote(), timeout=10)
        except Exception:
            self.flag = None
            return None

    def report(self, method: str, trial: str) -> None:
        """Tell the flag a trial started, finished or stopped (nothing when there is no flag)."""

        def tell() -> None:
            with contextlib.suppress(Exception):
                self.flag = self.flag or ray.get_actor(self.name)
                ray.get(getattr(self.flag, method).remote(trial), timeout=10)

        off_main_thread(tell)


def off_main_thread(call: Callable[[], T]) -> T:
    """call() in a thread of its own, waited for. While a Ray task's main thread blocks in ray.get, Ray lends
    the task's CPUs out and starts queued tasks on them, which then keep them: a study of one-CPU runs on 2
    CPUs, whose runs ask their stop flag every second, ran 3 runs at once (tests/test_stopping.py). A wait on
    another thread lends nothing."""
    box = []
    thread = threading.Thread(target=lambda: box.append(call()), daemon=True)
    thread.start()
    thread.join()
    return box[0]


@contextlib.contextmanager
def driver_signals(flag, log: Callable[[str], None] = print) -> Iterator[Stop]:
    """SIGINT and SIGTERM to the driver, inside the block: the first asks the trials to stop (they checkpoint),
    then, once they all have or grace_seconds() have passed, asks Tune to stop (SIGUSR1: Tune saves its state and ends
    the trials); a second stops at once. Yields a Stop whose signum says whether, and how, it was asked."""

    def tune_stops(_signum: int) -> None:
        deadline = time.monotonic() + grace_seconds()
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if ray.get(flag.all_stopped.remote(), timeout=5):
                    break
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGUSR1)  # Tune's graceful stop: state saved, trials ended

    with asking(flag, "[sweep]", "the running trials checkpoint and stop", log, then=tune_stops) as asked:
        yield asked


@contextlib.contextmanager
def asking(
    flag, who: str, what: str, log: Callable[[str], None] = print, then: Callable[[int], None] | None = None
) -> Iterator[Stop]:
    """SIGINT and SIGTERM inside the block: the first asks `flag` (its runs checkpoint and stop) and says so
    in one line, `who` and `what` ("[study]", "the running runs checkpoint and stop"), then calls `then(signum)`
    if given, all in a thread of its own (a signal handler only records the signal); a second stops at once.
    Yields a Stop whose signum says whether, and how, it was asked."""

    def ask(signum: int) -> None:
        log(f"{who} {signal.Signals(signum).name}: {what} (again to stop at once)")
        flag.ask.remote(signum)
        if then is not None:
            then(signum)

    def handle(signum: int) -> None:
        threading.Thread(target=ask, args=(signum,), daemon=True).start()

    with first_signal(Stop(), handle) as asked:
        yield asked


class _Drop(logging.Filter):
    """Leaves out log records that point users at Tune's API instead of aimray's `--resume`."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not any(hint in text for hint in ("Tuner.restore", "Resume experiment with", "Stop signal received"))


class _OneLine(logging.Filter):
    """Turns a record's traceback into one line: what failed and why (for a trial, the error the trial raised,
    not Ray's wrapper of it). A failed trial's whole traceback stays in its error file, which Tune names on
    the next line; a storage error's is Ray's pyarrow call and says nothing the line does not."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            record.msg, record.args = f"{record.getMessage().rstrip(':')}: {one_line(record.exc_info[1])}", None
            record.exc_info = record.exc_text = None
        return True


def one_line(error: BaseException) -> str:
    """`Type: message` of what a Ray task raised (a RayTaskError's cause), on one line."""
    cause = getattr(error, "cause", None)
    error = cause if isinstance(cause, BaseException) else error
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def quiet_tune_hints() -> None:
    """Tune's restore hint off the terminal (aimray's own line says `--resume`), and Optuna's warning that a
    resumed trial reports a step again (it does: the trial restarts from its runs' checkpoints). A failed
    trial, and a storage call of Tune's own that failed (the storage away), take one line each instead of a
    traceback (an outage repeated them for every retry of every trial: hundreds of lines)."""
    for name in ("ray.tune", "ray.tune.tune", "ray.tune.impl.tuner_internal", "ray.tune.execution.tune_controller"):
        logging.getLogger(name).addFilter(_Drop())
    for name in ("ray.tune.execution.tune_controller", "ray.train._internal.storage"):
        logging.getLogger(name).addFilter(_OneLine())
    warnings.filterwarnings("ignore", message=".*reported value is ignored because this `?step.*")
