"""AimMerging, its ablations and the baselines, as configurations of the one continual loop.

A method names its parts, each from a small registry, and the loop applies them without asking which
method it runs:
    memory     how the rehearsal memory is used: none, replay (mixed into the training set), rehearsal
               (forgetting signal and rehearsal bursts)
    schedule   when to merge (aimray.merging.controller.SCHEDULES), with the schedule's options
    shape      how the tasks become training stages (SHAPES): sequential, joint (MTL), independent
    defaults   config values the method sets under the user's overrides, e.g. its fusion rule
               (controller.weights: rule, fixed or mask; aimray.merging.fusion.FUSIONS)

Adding a method is one `register_method(Method(...))` call (README: "Adding a method").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aimray.merging.controller import SCHEDULES
from aimray.tasks.spec import Example, TaskData, TaskSpec

MEMORY_USES = ("none", "replay", "rehearsal")


@dataclass(frozen=True)
class Stage:
    """One training stage: a task, or for MTL all tasks together."""

    index: int  # 0-based
    name: str
    train: list[Example]
    eval_tasks: list[int]  # which benchmark tasks to evaluate after this stage
    seen: list[int]  # which of them were trained on so far (the stage's "seen tasks")


@dataclass(frozen=True)
class Shape:
    """How a run turns its tasks into stages; recorded in the manifest, so that an old study is scored by
    the shape it ran with whatever its method is called today."""

    name: str
    fresh_adapter: bool = False  # every stage starts from the initial adapter
    base_eval: bool = True  # evaluate the untrained adapter first (row 0) when eval.base is on

    def stages(self, specs: list[TaskSpec], data: list[TaskData]) -> list[Stage]:
        every = list(range(len(specs)))
        if self.name == "joint":
            return [Stage(0, "joint", [ex for d in data for ex in d.train], every, every)]
        pairs = enumerate(zip(specs, data, strict=True))
        if self.name == "independent":
            return [Stage(i, s.name, d.train, [i], [i]) for i, (s, d) in pairs]
        return [Stage(i, s.name, d.train, every, every[: i + 1]) for i, (s, d) in pairs]


SHAPES: dict[str, Shape] = {
    "sequential": Shape("sequential"),  # one adapter through the tasks in order
    "joint": Shape("joint"),  # all tasks as one stage (MTL)
    "independent": Shape("independent", fresh_adapter=True, base_eval=False),  # a fresh adapter per task
}


@dataclass(frozen=True)
class Method:
    name: str
    memory: str = "none"
    schedule: str = "none"
    options: dict[str, bool] = field(default_factory=dict)  # the schedule's options (e.g. learning_signal)
    shape: str = "sequential"
    defaults: dict[str, Any] = field(default_factory=dict)  # nested config values, e.g. {"controller": {...}}
    about: str = ""

    def training_set(self, stage: Stage, memory: list[Example]) -> list[Example]:
        """The stage's examples, with the memory mixed in for replay."""
        return stage.train + memory if self.memory == "replay" else stage.train

    @property
    def remembers(self) -> bool:
        """Whether finished tasks are added to the rehearsal memory."""
        return self.memory != "none"


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add a method; raises on a duplicate name or an unknown part."""
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is already registered")
    if method.memory not in MEMORY_USES:
        raise ValueError(f"method {method.name!r}: memory={method.memory!r}; valid: {', '.join(MEMORY_USES)}")
    if method.schedule not in SCHEDULES:
        raise ValueError(f"method {method.name!r}: schedule={method.schedule!r}; valid: {', '.join(SCHEDULES)}")
    if method.shape not in SHAPES:
        raise ValueError(f"method {method.name!r}: shape={method.shape!r}; valid: {', '.join(SHAPES)}")
    if method.schedule != "none" and method.memory != "rehearsal":
        raise ValueError(f"method {method.name!r}: merging needs memory='rehearsal'")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; valid: {', '.join(METHODS)}")
    return METHODS[name]


def _weights(name: str) -> dict:
    return {"controller": {"weights": name}}


for _m in [
    Method("aimmerging", "rehearsal", "adaptive", about="AimMerging: learning + forgetting signals, rule fusion"),
    Method("seqlora", about="one adapter trained task after task, no memory (lower bound)"),
    Method("replay", "replay", about="LoRAReplay: memory examples mixed into each task's training set"),
    Method(
        "fixed_interval",
        "rehearsal",
        "fixed",
        defaults=_weights("mask"),
        about="Recurrent-KIF style: merge every fixed_s steps, fixed_m burst steps, importance masks",
    ),
    Method(
        "fixed_interval_rule",
        "rehearsal",
        "fixed",
        about="fixed_interval with AimMerging's rule weights (at the fixed S, no activations) instead of masks",
    ),
    Method(
        "single_merge",
        "rehearsal",
        "task_end",
        defaults=_weights("fixed"),
        about="train the whole task, then one rehearsal burst and one fusion",
    ),
    Method("mtl", shape="joint", about="joint training on all tasks (upper bound)"),
    Method("single_task", shape="independent", about="a fresh adapter per task (reference for FWT)"),
    Method(
        "aimmerging_no_ls",
        "rehearsal",
        "adaptive",
        {"learning_signal": False},
        about="ablation: no learning signal (S fixed at s0)",
    ),
    Method(
        "aimmerging_no_fs",
        "rehearsal",
        "adaptive",
        {"forgetting_signal": False},
        about="ablation: no forgetting signal (merge at the nominal S only)",
    ),
    Method(
        "aimmerging_fixed_weights",
        "rehearsal",
        "adaptive",
        defaults=_weights("fixed"),
        about="ablation: fusion weights fixed (fixed_w_in, fixed_w_out)",
    ),
    Method(
        "aimmerging_no_burst",
        "rehearsal",
        "adaptive",
        {"burst": False},
        about="ablation: no rehearsal burst (delta_out = 0)",
    ),
]:
    register_method(_m)
