"""Fault injection for tests and fault benchmarks: callables for `aimray.loop.run(on_checkpoint=...)`.

Nothing in the production path imports this module; a test passes one of these in.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path


class SimulatedKill(BaseException):
    """Raised right after a checkpoint, standing for a SIGKILL: a BaseException that is neither SystemExit nor
    KeyboardInterrupt, so the loop's handlers (which mark a run failed or stopped) let it pass and the
    manifest keeps saying "running", as after a real kill."""


@dataclass(frozen=True)
class KillAt:
    """Kill the run right after its checkpoint at (stage, step) (stage k = after k tasks)."""

    stage: int
    step: int = 0

    def __call__(self, stage: int, step: int) -> None:
        if (stage, step) == (self.stage, self.step):
            raise SimulatedKill(f"killed at stage {stage}, step {step}")


class FailOnceAt:
    """Fail a worker once, right after the checkpoint at (stage, step): an exception, or with sigkill=True the
    worker process SIGKILLs itself. `marker` (a file in the run folder) records that it failed, so the
    retried worker goes on. Every rank decides at its first checkpoint."""

    def __init__(self, stage: int, step: int, marker: str | Path, sigkill: bool = False) -> None:
        self.at, self.marker, self.armed, self.sigkill = (stage, step), Path(marker), None, sigkill

    def __call__(self, stage: int, step: int) -> None:
        if self.armed is None:
            self.armed = not self.marker.exists()
        if self.armed and (stage, step) == self.at:
            self.marker.touch()
            if self.sigkill:  # the worker process dies as if the node had killed it
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"simulated worker failure at stage {stage}, step {step}")
