"""The rehearsal memory: a small, class-balanced sample of the training set of every earlier task."""

from __future__ import annotations

import hashlib
import math
import random
from collections import defaultdict
from typing import Any

from aimray.config import MemoryConfig
from aimray.tasks.spec import MAX_CLASSES, Example, content_hash

DEFAULT_FRACTION = 0.02  # 2% of each earlier task's training set (the paper)


def check_config(fraction: float | None, per_task: int | None, seed: int) -> None:
    """Raise ValueError naming the field unless exactly one of fraction, per_task is set and all are valid
    (the same rules as the run config's `memory` section, which does the checking)."""
    MemoryConfig(fraction=fraction, per_task=per_task)
    if not (isinstance(seed, int) and not isinstance(seed, bool)):
        raise ValueError(f"seed={seed!r} must be an integer")


def sample_size(num_train: int, fraction: float | None, per_task: int | None) -> int:
    """n = floor(fraction * num_train) or per_task, at least 1 and at most num_train."""
    n = per_task if per_task is not None else math.floor(fraction * num_train + 1e-9)
    return max(1, min(n, num_train))


def select_indices(targets: list[str], n: int, rng: random.Random, class_rule: str = "capped") -> list[int]:
    """Class-balanced sample: max(1, n // C) per class (C classes), topped up at random to n; sorted indices.

    class_rule "capped": with more than MAX_CLASSES distinct targets (a generation task) a plain random sample
    of n. "literal" (the released sampler): the per-class rule whatever C, so a task with C > n distinct
    outputs keeps one example of each (C examples, not n).
    """
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, target in enumerate(targets):
        by_class[target].append(i)
    if len(by_class) > MAX_CLASSES and class_rule == "capped":
        return sorted(rng.sample(range(len(targets)), n))
    quota = max(1, n // len(by_class))
    chosen = [i for label in sorted(by_class) for i in rng.sample(by_class[label], min(quota, len(by_class[label])))]
    taken = set(chosen)
    rest = [i for i in range(len(targets)) if i not in taken]
    chosen += rng.sample(rest, min(max(0, n - len(chosen)), len(rest)))
    return sorted(chosen)


def digest(examples: list[Example]) -> str:
    """Fingerprint of the selected examples (texts and targets), to check that a restore re-attached them."""
    joined = "\n".join(content_hash(e.text) + "\t" + e.target for e in examples)
    return hashlib.sha256(joined.encode()).hexdigest()[:16]


class RehearsalMemory:
    """Rehearsal buffer: per earlier task, a fraction (or a count) of its training set, class-balanced.

    The sample of a task depends only on (seed, task name, its training set), never on the order in which
    tasks were added. The memory stores indices into each task's training set; `state_dict` holds those.
    """

    def __init__(
        self, fraction: float | None = None, per_task: int | None = None, seed: int = 0, class_rule: str = "capped"
    ) -> None:
        if fraction is None and per_task is None:
            fraction = DEFAULT_FRACTION
        check_config(fraction, per_task, seed)
        MemoryConfig(fraction=fraction, per_task=per_task, class_rule=class_rule)
        self.fraction, self.per_task, self.seed, self.class_rule = fraction, per_task, seed, class_rule
        self._indices: dict[str, list[int]] = {}
        self._examples: dict[str, list[Example]] = {}
        self._train_sizes: dict[str, int] = {}

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks in the memory, in the order they were added."""
        return tuple(self._indices)

    def __len__(self) -> int:
        return sum(len(v) for v in self._examples.values())

    def add_task(self, task: str, train: list[Example]) -> list[int]:
        """Select and store the sample of a finished task; returns its indices into `train` (sorted)."""
        if task in self._indices:
            raise ValueError(f"task {task!r} is already in the rehearsal memory")
        if not train:
            raise ValueError(f"task {task!r}: empty training set, nothing to remember")
        n = sample_size(len(train), self.fraction, self.per_task)
        rng = random.Random(f"memory/{self.seed}/{task}")
        indices = select_indices([e.target for e in train], n, rng, self.class_rule)
        self._indices[task] = indices
        self._examples[task] = [train[i] for i in indices]
        self._train_sizes[task] = len(train)
        return list(indices)

    def examples(self) -> list[Example]:
        """Every stored example, task by task in the order the tasks were added."""
        return [e for task in self._examples for e in self._examples[task]]

    def sample_batch(self, n: int, rng: random.Random) -> list[Example]:
        """n stored examples drawn without replacement (all of them if fewer; [] if the memory is empty)."""
        if n < 0:
            raise ValueError(f"batch size n={n} must be >= 0")
        pool = self.examples()
        return rng.sample(pool, min(n, len(pool)))

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state: the config and, per task in order, its indices, train size and digest."""
        return {
            "fraction": self.fraction,
            "per_task": self.per_task,
            "seed": self.seed,
            "tasks": [self._task_state(task) for task in self._indices],
        }

    def _task_state(self, task: str) -> dict[str, Any]:
        return {
            "task": task,
            "indices": list(self._indices[task]),
            "train_size": self._train_sizes[task],
            "digest": digest(self._examples[task]),
        }

    def load_state_dict(self, state: dict[str, Any], train_sets: dict[str, list[Example]]) -> None:
        """Restore exactly, re-attaching the examples from `train_sets` (task -> the same training set).

        Raises KeyError if a task's training set is missing, ValueError if it differs from the one stored.
        """
        check_config(state["fraction"], state["per_task"], state["seed"])
        missing = [e["task"] for e in state["tasks"] if e["task"] not in train_sets]
        if missing:
            raise KeyError(f"memory tasks {missing} have no training set; given: {sorted(train_sets)}")
        indices, examples, sizes = {}, {}, {}
        for entry in state["tasks"]:
            task, train = entry["task"], train_sets[entry["task"]]
            if len(train) != entry["train_size"] or any(not 0 <= i < len(train) for i in entry["indices"]):
                size = entry["train_size"]
                raise ValueError(f"task {task!r}: training set has {len(train)} examples, memory built on {size}")
            chosen = [train[i] for i in entry["indices"]]
            if digest(chosen) != entry["digest"]:
                raise ValueError(f"task {task!r}: training set differs from the one the memory was built on")
            indices[task], examples[task], sizes[task] = list(entry["indices"]), chosen, len(train)
        self.fraction, self.per_task, self.seed = state["fraction"], state["per_task"], state["seed"]
        self._indices, self._examples, self._train_sizes = indices, examples, sizes
