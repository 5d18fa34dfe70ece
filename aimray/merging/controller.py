"""The merge controller: watches the forgetting signal, decides when to merge, adapts the interval.

It returns decisions; the loop applies them (inner steps, bursts, fusion). State resets at every task.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from aimray.config import ControllerConfig
from aimray.merging import signals


@dataclass
class ControllerState:
    interval: int  # S, the nominal merge interval in force
    burst: int  # M, rehearsal steps per merge
    since: int = 0  # optimizer steps since the last merge (or the task start)
    losses: list[float] = field(default_factory=list)  # memory losses collected to set the threshold
    threshold: float | None = None  # delta
    activations: int = 0
    normal: int = 0  # activations from memory loss >= delta
    forced: int = 0  # activations from since >= forced_multiple * S
    lambdas: list[float] = field(default_factory=list)  # learning signals stored this task


@dataclass(frozen=True)
class Decision:
    merge: bool
    trigger: str | None = None  # "normal", "early" or "forced"


class MergeController:
    """schedule "adaptive" (AimMerging), "fixed" (every fixed_s steps), "single" or "none" (never fires)."""

    def __init__(
        self,
        cfg: ControllerConfig,
        schedule: str = "adaptive",
        learning_signal: bool = True,
        forgetting_signal: bool = True,
    ) -> None:
        self.cfg = cfg
        self.schedule = schedule
        self.use_ls = learning_signal and schedule == "adaptive"
        self.use_fs = forgetting_signal and schedule == "adaptive"
        self.reset_task()

    def reset_task(self) -> None:
        if self.schedule == "fixed":
            self.state = ControllerState(self.cfg.fixed_s, self.cfg.fixed_m)
        else:
            self.state = ControllerState(self.cfg.s0, self.cfg.m0)

    @property
    def needs_memory_loss(self) -> bool:
        """Whether the loop must measure the forgetting signal (a memory-batch loss) after each step."""
        return self.use_fs

    def step(self, memory_loss: float | None = None) -> Decision:
        """Account for one inner optimizer step (and its memory loss); say whether to merge now."""
        st, cfg = self.state, self.cfg
        if self.schedule in ("none", "single"):
            return Decision(False)
        st.since += 1
        if not self.use_fs:
            return Decision(True, "normal") if st.since >= st.interval else Decision(False)
        if memory_loss is None:
            raise ValueError("the forgetting signal needs the memory loss of every step")
        warm = signals.monitor_steps(st.interval)
        if st.since <= warm:
            st.losses.append(memory_loss)
            if st.since == warm:
                st.threshold = signals.threshold(st.losses, cfg.threshold_factor)
        elif memory_loss >= st.threshold:
            st.activations += 1
            st.normal += 1
        elif st.since >= cfg.forced_multiple * st.interval:
            st.activations += 1
            st.forced += 1
        if st.since >= st.interval and st.activations >= 1:
            return Decision(True, "normal" if st.normal else "forced")
        if st.activations >= cfg.early_count:
            return Decision(True, "early")
        return Decision(False)

    def weights(self) -> tuple[float, float]:
        """Scalar fusion weights (w_in, w_out) from the paper's cues, with the state at the merge."""
        return signals.rule_weights(self.state.activations, self.state.interval, self.cfg.new_task_important_s)

    def merged(self, lam: float) -> None:
        """After a merge with learning signal `lam`: adapt S and M (if the learning signal is on), store
        Lambda, and reset the forgetting-signal state."""
        st, cfg = self.state, self.cfg
        if self.use_ls:
            st.interval = signals.next_interval(
                st.interval, lam, st.lambdas, cold_start=cfg.cold_start, s_min=cfg.s_min, s_max=cfg.s_max,
                halve_at=cfg.halve_at, trend=cfg.trend, window=cfg.trend_window,
            )  # fmt: skip
            st.burst = signals.burst_length(st.interval, cfg.s0, cfg.m0)
        st.lambdas.append(lam)
        st.since, st.losses, st.threshold = 0, [], None
        st.activations = st.normal = st.forced = 0

    def state_dict(self) -> dict:
        return {"schedule": self.schedule, "state": asdict(self.state)}

    def load_state_dict(self, state: dict) -> None:
        if state["schedule"] != self.schedule:
            raise ValueError(f"controller state is for schedule {state['schedule']!r}, not {self.schedule!r}")
        self.state = ControllerState(**state["state"])
