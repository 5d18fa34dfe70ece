"""Merge schedules: after every inner step (and at a task's end) they decide whether to merge, and how.

A schedule returns complete decisions (merge or not, the trigger, the nominal interval S, the burst length
M); the loop applies them (rehearsal burst, fusion) without asking which method it runs, then calls
`merged(lam)` with the merge's learning signal. State resets at every task and round-trips through
`state_dict()`. The kinds, by registry name (SCHEDULES):

    adaptive   AimMerging's controller: forgetting signal, normal / early / forced triggers, learning signal
    fixed      every controller.fixed_s steps with controller.fixed_m burst steps (Recurrent-KIF style)
    task_end   one merge after the task's last step, burst = total steps x M0 / S0
    none       never merges

A new schedule is a class with `step`, `at_task_end`, `merged` and a `register_schedule` call; a static
`check_config(controller_config, fusion)` that raises ValueError, if it has one, runs when a config is built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from aimray.merging import signals

if TYPE_CHECKING:
    from aimray.config import ControllerConfig
    from aimray.merging.fusion import Fusion


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
    """What the loop does after a step: merge or not; if so the trigger (normal, early, forced, fixed,
    task_end), the nominal interval S the learning signal divides by, and M, the rehearsal burst's steps."""

    merge: bool
    trigger: str | None = None
    interval: int = 0
    burst: int = 0


NO_MERGE = Decision(False)


class Schedule:
    """The base schedule: never merges. Subclasses override `step` and/or `at_task_end`."""

    name = "none"
    merges = False  # whether this schedule can merge at all (the loop tracks importance only if it can)
    needs_memory_loss = False  # whether the loop must measure the forgetting signal after each step

    def __init__(self, cfg: ControllerConfig) -> None:
        self.cfg = cfg
        self.reset_task()

    def initial_state(self) -> ControllerState:
        return ControllerState(self.cfg.s0, self.cfg.m0)

    def reset_task(self) -> None:
        self.state = self.initial_state()

    def step(self, memory_loss: float | None = None) -> Decision:
        """Account for one inner optimizer step (and its memory loss); say whether to merge now."""
        return NO_MERGE

    def at_task_end(self, total_steps: int) -> Decision:
        """After the task's last inner step."""
        return NO_MERGE

    def weights(self) -> tuple[float, float]:
        """Scalar fusion weights (w_in, w_out) from the paper's cues, with the state at the merge."""
        return signals.rule_weights(self.state.activations, self.state.interval, self.cfg.new_task_important_s)

    def merged(self, lam: float) -> None:
        """After a merge with learning signal `lam`: store it and reset the per-merge state."""
        st = self.state
        st.lambdas.append(lam)
        st.since, st.losses, st.threshold = 0, [], None
        st.activations = st.normal = st.forced = 0

    def state_dict(self) -> dict:
        return {"schedule": self.name, "state": asdict(self.state)}

    def load_state_dict(self, state: dict) -> None:
        if state["schedule"] != self.name:
            raise ValueError(f"controller state is for schedule {state['schedule']!r}, not {self.name!r}")
        self.state = ControllerState(**state["state"])


class MergeController(Schedule):
    """AimMerging (docs/method.md, section 2). The ablations switch off its learning signal (S stays S0), its
    forgetting signal (merge at the nominal S only) or its rehearsal burst (M = 0 at every merge)."""

    name = "adaptive"
    merges = True

    def __init__(
        self,
        cfg: ControllerConfig,
        learning_signal: bool = True,
        forgetting_signal: bool = True,
        burst: bool = True,
    ) -> None:
        self.use_ls, self.use_fs, self.use_burst = learning_signal, forgetting_signal, burst
        self.needs_memory_loss = forgetting_signal
        super().__init__(cfg)

    def _merge(self, trigger: str) -> Decision:
        st = self.state
        return Decision(True, trigger, st.interval, st.burst if self.use_burst else 0)

    def step(self, memory_loss: float | None = None) -> Decision:
        st, cfg = self.state, self.cfg
        st.since += 1
        if not self.use_fs:
            return self._merge("normal") if st.since >= st.interval else NO_MERGE
        if memory_loss is None:
            raise ValueError("the forgetting signal needs the memory loss of every step")
        warm = signals.monitor_steps(st.interval) + (cfg.warmup_count == "code")  # released: one more
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
            return self._merge("normal" if st.normal else "forced")
        if st.activations >= cfg.early_count:
            return self._merge("early")
        return NO_MERGE

    def merged(self, lam: float) -> None:
        """Adapt S and M from `lam` (if the learning signal is on), then store it and reset (rule 5)."""
        st, cfg = self.state, self.cfg
        if self.use_ls:
            st.interval = signals.next_interval(
                st.interval,
                lam,
                st.lambdas,
                cold_start=cfg.cold_start,
                s_min=cfg.s_min,
                s_max=cfg.s_max,
                halve_at=cfg.halve_at,
                trend=cfg.trend,
                window=cfg.trend_window,
            )
            st.burst = signals.burst_length(st.interval, cfg.s0, cfg.m0)
        super().merged(lam)


class FixedInterval(Schedule):
    """Every controller.fixed_s steps, controller.fixed_m burst steps; the learning signal changes nothing."""

    name = "fixed"
    merges = True

    @staticmethod
    def check_config(cfg: ControllerConfig, fusion: Fusion) -> None:
        """Importance masks come from the rehearsal burst: a fusion that needs them needs fixed_m >= 1."""
        if fusion.needs_importance and cfg.fixed_m < 1:
            raise ValueError(
                f"controller.fixed_m={cfg.fixed_m!r} must be >= 1 with controller.weights={fusion.name!r} on the "
                "fixed schedule: its importance masks come from the rehearsal burst (fixed_interval_rule fuses "
                "without them)"
            )

    def initial_state(self) -> ControllerState:
        return ControllerState(self.cfg.fixed_s, self.cfg.fixed_m)

    def step(self, memory_loss: float | None = None) -> Decision:
        st = self.state
        st.since += 1
        return Decision(True, "fixed", st.interval, st.burst) if st.since >= st.interval else NO_MERGE


class AtTaskEnd(Schedule):
    """One merge per task after its last step: S = the task's steps, M = int(S x M0 / S0) (the controller's
    ratio of burst to training steps)."""

    name = "task_end"
    merges = True

    def at_task_end(self, total_steps: int) -> Decision:
        burst = signals.burst_length(total_steps, self.cfg.s0, self.cfg.m0)
        return Decision(True, "task_end", total_steps, burst)


SCHEDULES: dict[str, Callable[..., Schedule]] = {}


def register_schedule(name: str, factory: Callable[..., Schedule]) -> None:
    """Add a schedule kind; `factory(cfg, **options)` builds it (options come from the method)."""
    if name in SCHEDULES:
        raise ValueError(f"schedule {name!r} is already registered")
    SCHEDULES[name] = factory


def make_schedule(name: str, cfg: ControllerConfig, **options: bool) -> Schedule:
    if name not in SCHEDULES:
        raise KeyError(f"unknown schedule {name!r}; valid: {', '.join(SCHEDULES)}")
    return SCHEDULES[name](cfg, **options)


for _schedule in (Schedule, MergeController, FixedInterval, AtTaskEnd):
    register_schedule(_schedule.name, _schedule)
