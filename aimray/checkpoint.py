"""A run's state (progress, and inside a task everything that changes) and its checkpoints, side by side.

A checkpoint folder holds safetensors and JSON only:
    tensors-<group>.safetensors   adapter, anchor (theta_t), importance estimates, best-dev adapter (a file each)
    optim.safetensors, optim.json optimizer and LR-schedule states (inside a task only): tensors + skeleton
    state.json                    progress, memory, merge schedule, the memory-batch RNG, costs, and the
                                  sha256 of every other file (checked before anything is loaded)
Dropout is reseeded from (seed, global step) at every forward pass (aimray.loop), so no torch RNG state is
saved. A folder is written under a temporary name, fsynced and renamed into place; `latest` is rewritten
last, so a run killed at any moment resumes from a complete checkpoint, and one whose files were truncated
or changed later falls back to the previous complete one.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from aimray.files import sha256_file, write_text_atomic
from aimray.memory import RehearsalMemory
from aimray.merging.controller import Schedule

Tensors = dict[str, torch.Tensor]
TASK_GROUPS = ("anchor", "imp_in", "imp_out", "best")


@dataclass
class Costs:
    """Per-task compute counters (events kind `costs`)."""

    steps: int = 0
    merges: int = 0
    train_examples: int = 0
    replay_examples: int = 0
    burst_examples: int = 0
    monitor_examples: int = 0
    forward_passes: int = 0
    backward_passes: int = 0
    eval_examples: int = 0
    eval_seconds: float = 0.0  # part of wall_seconds spent evaluating (and tracking the best dev state)
    monitor_seconds: float = 0.0  # part of wall_seconds spent on forgetting-signal passes
    merge_seconds: float = 0.0  # part of wall_seconds spent merging: rehearsal bursts and fusion
    wall_seconds: float = 0.0
    # processor seconds of the run's process (rank 0's; all its threads) over the task: its compute, which other
    # work on the machine does not inflate as it does wall_seconds (a study planner's cost); NaN on a GPU
    cpu_seconds: float = 0.0


@dataclass
class TaskState:
    """What changes inside a task: the step, the merge schedule, the memory-batch RNG, the optimizers and the
    tensors a merge needs. All of it is checkpointed."""

    schedule: Schedule
    mem_rng: random.Random
    optimizers: dict[str, Any]  # name -> optimizer or LR schedule (anything with state_dict); None if unused
    step: int = 0
    anchor: Tensors = field(default_factory=dict)  # theta_t: adapter at the last merge (or the task start)
    imp_in: Tensors = field(default_factory=dict)  # importance on the new task (mask fusion)
    imp_out: Tensors = field(default_factory=dict)  # importance on the memory (mask fusion)
    best: Tensors = field(default_factory=dict)  # best-dev adapter (checkpoint.keep=best_dev)
    best_score: float = -math.inf
    costs: Costs = field(default_factory=Costs)
    t_start: float = field(default_factory=time.time)
    cpu_start: float = field(default_factory=time.process_time)
    trained: bool = False  # steps and the task-end merge done: a checkpoint now resumes at the evaluation
    shared: bool = False  # a stage other runs compute too (aimray.stagecache; not checkpointed)

    def lap(self) -> None:
        """Add the wall and processor time since the last lap to the costs."""
        now, cpu = time.time(), time.process_time()
        self.costs.wall_seconds += now - self.t_start
        self.costs.cpu_seconds += cpu - self.cpu_start
        self.t_start, self.cpu_start = now, cpu

    def state_dict(self) -> tuple[dict[str, Tensors], dict, dict]:
        """(tensor groups, optimizer states, JSON state)."""
        tensors = {g: getattr(self, g) for g in TASK_GROUPS if getattr(self, g)}
        objects = {k: v.state_dict() for k, v in self.optimizers.items() if v is not None}
        version, internal, gauss = self.mem_rng.getstate()
        state = {
            "step": self.step,
            "schedule": self.schedule.state_dict(),
            "mem_rng": [version, list(internal), gauss],
            "best_score": self.best_score,
            "costs": asdict(self.costs),
            "trained": self.trained,
        }
        return tensors, objects, state

    def load_state_dict(self, tensors: dict[str, Tensors], objects: dict, state: dict, device: torch.device) -> None:
        for g in TASK_GROUPS:
            setattr(self, g, {k: v.to(device) for k, v in tensors.get(g, {}).items()})
        for name, obj in self.optimizers.items():
            if obj is not None:
                obj.load_state_dict(objects[name])
        version, internal, gauss = state["mem_rng"]
        self.mem_rng.setstate((version, tuple(internal), gauss))
        self.schedule.load_state_dict(state["schedule"])
        self.step, self.best_score = state["step"], state["best_score"]
        self.costs = Costs(**{"cpu_seconds": math.nan, **state["costs"]})  # not counted before 2026-12-07: unknown
        self.trained = state.get("trained", False)  # absent from checkpoints written before 2026-12-07


@dataclass
class SavedTask:
    """A task state read from a checkpoint, loaded into the task's TaskState once its parts are built."""

    tensors: dict[str, Tensors]
    objects: dict
    state: dict


@dataclass
class RunState:
    """A run's progress: `stage` tasks done (or the one in progress), optimizer steps so far (inner and
    burst), event parts written. `task` is the task in progress, None at a task boundary."""

    run_id: str
    config: dict
    started_at: str
    stage: int = 0
    global_step: int = 0
    event_parts: int = 0
    task: TaskState | None = None

    def tick(self) -> int:
        """Count one optimizer step; returns its global index."""
        self.global_step += 1
        return self.global_step - 1

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("run_id", "config", "started_at", "stage", "global_step", "event_parts")}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)


def save(ckpt: Checkpointer, run: RunState, adapter: Tensors, memory: RehearsalMemory) -> Path:
    """One checkpoint of the run: the adapter, the memory, the progress and the task in progress (if any)."""
    tensors: dict[str, Tensors] = {"adapter": adapter}
    objects: dict = {}
    state = {"run": run.state_dict(), "memory": memory.state_dict(), "task": None}
    if run.task is not None:
        task_tensors, objects, state["task"] = run.task.state_dict()
        tensors.update(task_tensors)
    return ckpt.save(checkpoint_name(run.stage, run.task.step if run.task is not None else 0), tensors, objects, state)


def checkpoint_name(stage: int, step: int) -> str:
    """t<stage>-s<step>: stage k = after k tasks (or task k+1 in progress at `step`); sorts in run order."""
    return f"t{stage:02d}-s{step:06d}"


def load(path: Path) -> tuple[dict, Tensors, SavedTask | None, dict]:
    """(run state, adapter, the task in progress or None, memory state) of a checkpoint folder."""
    tensors, objects, state = Checkpointer.load(path)
    task = SavedTask(tensors, objects, state["task"]) if state["task"] is not None else None
    return state["run"], tensors["adapter"], task, state["memory"]


# ------------------------------------------------------------------------- optimizer state without pickle


def split_tensors(obj: Any, tensors: Tensors, path: str = "state") -> Any:
    """A JSON-able skeleton of a nested state (dicts, lists, numbers, strings, None): every tensor moves into
    `tensors` under a fresh key and is replaced by {"__tensor__": key}; a dict with non-string keys (an
    optimizer's per-parameter state is keyed by int) becomes {"__items__": [[key, value], ...]}. `path`
    names the place in errors."""
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and "__tensor__" not in obj and "__items__" not in obj:
            return {k: split_tensors(v, tensors, f"{path}.{k}") for k, v in obj.items()}
        return {"__items__": [[k, split_tensors(v, tensors, f"{path}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, list | tuple):
        return [split_tensors(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"checkpoint state at {path}: {type(obj).__name__} is not a tensor, number, string or container")


def join_tensors(skeleton: Any, tensors: Tensors) -> Any:
    """The inverse of split_tensors."""
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__items__" in skeleton:
            return {k: join_tensors(v, tensors) for k, v in skeleton["__items__"]}
        return {k: join_tensors(v, tensors) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [join_tensors(v, tensors) for v in skeleton]
    return skeleton


class CheckpointError(ValueError):
    """A checkpoint folder is incomplete, corrupt, or in a format this version does not load."""


def _save_tensors(tensors: Tensors, path: Path) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_folder(final: Path, tensors: dict[str, Tensors], objects: dict, state: dict) -> None:
    """Write a folder of safetensors + JSON (state.json lists every other file's sha256) under a temporary
    name of this writer's own, fsync it and rename it to `final`. Raises FileExistsError, leaving nothing
    behind, when `final` appeared meanwhile (another writer won)."""
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        for group, tensor_dict in tensors.items():
            _save_tensors(tensor_dict, tmp / f"tensors-{group}.safetensors")
        optim: Tensors = {}
        skeleton = split_tensors(objects, optim)
        _save_tensors(optim, tmp / "optim.safetensors")
        (tmp / "optim.json").write_text(json.dumps(skeleton))
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
        (tmp / "state.json").write_text(json.dumps({**state, "files": files}, indent=1))
        for p in tmp.iterdir():
            _fsync(p)
        _fsync(tmp)
        try:
            os.rename(tmp, final)
        except OSError as err:
            if final.exists():
                raise FileExistsError(f"{final} was written by another writer meanwhile") from err
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class Checkpointer:
    """Checkpoint folders under `root`, the newest named by `root/latest`; the last `keep` are kept.

    A folder holds safetensors files and JSON only (no pickle is ever loaded): tensors-<group>.safetensors,
    optim.safetensors + the JSON skeleton of the optimizer states, and state.json, which records the
    sha256 of every other file. Files and folders are fsynced before the rename that publishes them; a
    folder that fails its checks is skipped, with a warning, for the previous complete one."""

    def __init__(self, root: Path, keep: int = 2, warn: Callable[[str], None] = print) -> None:
        self.root = Path(root)
        self.keep = keep
        self.warn = warn

    def save(self, name: str, tensors: dict[str, Tensors], objects: dict, state: dict) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob(".*.tmp"):  # a writer killed mid-save (one writer per run folder: a lock)
            shutil.rmtree(stale, ignore_errors=True)
        final = self.root / name
        if final.exists():
            shutil.rmtree(final)
        write_folder(final, tensors, objects, state)
        write_text_atomic(self.root / "latest", name)
        _fsync(self.root)
        self._prune(name)
        return final

    def _prune(self, current: str) -> None:
        done = sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        for old in done[: max(0, len(done) - self.keep)]:
            if old.name != current:
                shutil.rmtree(old, ignore_errors=True)

    def latest(self) -> Path | None:
        """The newest complete checkpoint (the one `latest` names, else the newest folder that passes its
        checks); None when there is none at all. Raises CheckpointError when folders exist but none is
        complete."""
        if not self.root.is_dir():
            return None
        folders = sorted((p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")), reverse=True)
        pointer = self.root / "latest"
        named = self.root / pointer.read_text().strip() if pointer.exists() else None
        if named in folders:
            folders.remove(named)
            folders.insert(0, named)
        problems = []
        for folder in folders:
            try:
                self.verify(folder)
            except CheckpointError as err:
                problems.append(str(err))
                self.warn(f"[checkpoint] skipping {folder.name}: {err}")
                continue
            return folder
        if problems:
            raise CheckpointError(f"no complete checkpoint in {self.root}: " + "; ".join(problems))
        return None

    @staticmethod
    def verify(path: Path) -> dict:
        """The folder's state.json after checking every file it lists against its sha256."""
        if (path / "torch.pt").exists():
            raise CheckpointError(
                f"{path} holds torch.pt, the pickle format of aimray before safetensors-only checkpoints; "
                "pickles are never loaded: delete the run folder's checkpoints/ to start over"
            )
        try:
            state = json.loads((path / "state.json").read_text())
            files = state["files"]
        except (OSError, ValueError, KeyError) as err:
            raise CheckpointError(f"{path}/state.json is missing or unreadable ({err})") from None
        for name, digest in files.items():
            if not (path / name).is_file():
                raise CheckpointError(f"{path}/{name} is missing")
            if sha256_file(path / name) != digest:
                raise CheckpointError(f"{path}/{name} does not match its sha256 (truncated or changed)")
        return state

    @staticmethod
    def load(path: Path) -> tuple[dict[str, Tensors], dict, dict]:
        """(tensor groups, optimizer states, state) of a checkpoint folder that passes its checks."""
        state = Checkpointer.verify(path)
        tensors = {
            p.name[len("tensors-") : -len(".safetensors")]: load_file(str(p))
            for p in sorted(path.glob("tensors-*.safetensors"))
        }
        objects = join_tensors(
            json.loads((path / "optim.json").read_text()), load_file(str(path / "optim.safetensors"))
        )
        return tensors, objects, state
