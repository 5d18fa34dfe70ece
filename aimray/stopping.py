"""Stopping when asked: SIGINT (Ctrl-C) and SIGTERM (Kubernetes, Slurm, spot preemption) alike.

Within `on_signals()`, the first signal asks the run to stop: the loop finishes the optimizer step (or the
merge, or the evaluation of one task) in progress, writes a checkpoint, marks its manifest "stopped" and
raises `StopRequested`, whose `exit_code` is 130 for SIGINT and 143 for SIGTERM, as a shell reports a
process those signals ended. A second signal stops at once (the default action of that signal). Outside
`on_signals()` nothing changes. A sweep's trials are asked through aimray.launch.stop.RayStop, a Stop that
polls the sweep driver's flag.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequested(Exception):
    """A run stopped on request at a step boundary or between the cells of an evaluation, its checkpoint
    written (`checkpointed` False: stopped while evaluating the untrained model, before its first one)."""

    def __init__(self, signum: int, where: str, checkpointed: bool = True) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} at {where}")
        self.signum, self.where, self.checkpointed = signum, where, checkpointed

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def line(self) -> str:
        """What the CLI prints: where it stopped and how to continue."""
        if self.checkpointed:
            return f"[run] stopped at {self.where}, checkpoint written: the same command continues"
        return f"[run] stopped at {self.where}, nothing to keep yet: the same command starts again"


@dataclass
class Stop:
    """Whether a stop was asked for, and by which signal (None: keep going)."""

    signum: int | None = None

    def asked(self) -> int | None:
        """The signal that asked to stop, or None (a subclass may ask elsewhere: aimray.launch.stop)."""
        return self.signum

    def report(self, method: str, who: str) -> None:
        """Tell the asker that `who` (a trial, a run folder) started, finished or stopped: nothing here (a
        Ray driver's flag records it: aimray.launch.stop.RayStop)."""

    def check(self, where: str) -> None:
        """Raise StopRequested saying `where` if a stop was asked for."""
        signum = self.asked()
        if signum is not None:
            raise StopRequested(signum, where)


STOP = Stop()  # the process's: signal handlers are process-wide too


@contextlib.contextmanager
def first_signal(stop: Stop, on_first: Callable[[int], None]) -> Iterator[Stop]:
    """SIGINT and SIGTERM inside the block: the first sets `stop.signum` and calls `on_first(signum)` (it runs
    in the signal handler: keep it short); a second stops at once (the default action of that signal). The
    previous handlers come back after the block. In a thread other than the main one (where handlers cannot
    be set) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}

    def handle(signum: int, _frame: object) -> None:
        if stop.signum is not None:  # the second: at once, as if no handler were there
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        stop.signum = signum
        on_first(signum)

    for s in SIGNALS:
        signal.signal(s, handle)
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def on_signals(log: Callable[[str], None] = print, stop: Stop = STOP) -> Iterator[Stop]:
    """SIGINT and SIGTERM ask `stop` to stop (once; a second signal stops at once), inside the block only
    (first_signal); `stop` is cleared after it."""

    def say(signum: int) -> None:
        name = signal.Signals(signum).name
        what = "the current step (or the task being scored), with a checkpoint (again to stop at once)"
        log(f"[run] {name}: stopping after {what}")

    try:
        with first_signal(stop, say):
            yield stop
    finally:
        stop.signum = None
