"""AimMerging, its ablations and the baselines, as configurations of the one continual loop."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    """How the loop treats memory, merges and the adapter.

    memory:   "none"; "replay" (memory examples mixed into the current task's training set);
              "rehearsal" (memory used for the forgetting signal and rehearsal bursts).
    schedule: "none" (no merges); "adaptive" (AimMerging controller); "fixed" (every controller.fixed_s
              steps); "single" (one burst and fusion at the end of each task).
    weights:  "rule" (AimMerging cues), "fixed" (controller.fixed_w_in/out), "mask" (importance masks).
    """

    name: str
    memory: str = "none"
    schedule: str = "none"
    learning_signal: bool = True
    forgetting_signal: bool = True
    weights: str = "rule"
    burst: bool = True
    joint: bool = False  # MTL: all tasks trained together as one stage
    reset_each_task: bool = False  # single-task LoRA: a fresh adapter per task
    about: str = ""


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is already registered")
    if method.memory not in ("none", "replay", "rehearsal"):
        raise ValueError(f"method {method.name!r}: memory={method.memory!r} must be none, replay or rehearsal")
    if method.schedule not in ("none", "adaptive", "fixed", "single"):
        raise ValueError(f"method {method.name!r}: schedule={method.schedule!r} is unknown")
    if method.weights not in ("rule", "fixed", "mask"):
        raise ValueError(f"method {method.name!r}: weights={method.weights!r} must be rule, fixed or mask")
    if method.schedule != "none" and method.memory != "rehearsal":
        raise ValueError(f"method {method.name!r}: merging needs memory='rehearsal'")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; valid: {', '.join(METHODS)}")
    return METHODS[name]


for _m in [
    Method("aimmerging", "rehearsal", "adaptive", about="AimMerging: learning + forgetting signals, rule fusion"),
    Method("seqlora", about="one adapter trained task after task, no memory (lower bound)"),
    Method("replay", "replay", about="LoRAReplay: memory examples mixed into each task's training set"),
    Method("fixed_interval", "rehearsal", "fixed", weights="mask",
           about="Recurrent-KIF style: merge every fixed_s steps, fixed_m burst steps, importance masks"),
    Method("fixed_interval_rule", "rehearsal", "fixed",
           about="fixed_interval with AimMerging's rule weights (at the fixed S, no activations) instead of masks"),
    Method("single_merge", "rehearsal", "single", weights="fixed",
           about="train the whole task, then one rehearsal burst and one fusion"),
    Method("mtl", joint=True, about="joint training on all tasks (upper bound)"),
    Method("single_task", reset_each_task=True, about="a fresh adapter per task (reference for FWT)"),
    Method("aimmerging_no_ls", "rehearsal", "adaptive", learning_signal=False,
           about="ablation: no learning signal (S fixed at s0)"),
    Method("aimmerging_no_fs", "rehearsal", "adaptive", forgetting_signal=False,
           about="ablation: no forgetting signal (merge at the nominal S only)"),
    Method("aimmerging_fixed_weights", "rehearsal", "adaptive", weights="fixed",
           about="ablation: fusion weights fixed (fixed_w_in, fixed_w_out)"),
    Method("aimmerging_no_burst", "rehearsal", "adaptive", burst=False,
           about="ablation: no rehearsal burst (delta_out = 0)"),
]:  # fmt: skip
    register_method(_m)
