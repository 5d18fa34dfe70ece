"""What a task is: examples, prompts in the O-LoRA format, and the spec that loads and scores them."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Example:
    """One labelled example, its prompt kept in three parts so that only `text` is ever truncated.

    The model sees `prefix + text + suffix` and is trained to answer `target` (a label word, or free
    text for generation tasks).
    """

    task: str
    text: str
    target: str
    prefix: str = ""
    suffix: str = ""
    uid: str = ""

    @property
    def prompt(self) -> str:
        return self.prefix + self.text + self.suffix


def format_parts(instruction: str, options: tuple[str, ...], inline: bool = False) -> tuple[str, str]:
    """(prefix, suffix) of a prompt: the instruction, the options, the text, then "Answer:".

    inline=True is the paper's input (docs/method.md, both public layouts): "<instruction> Option: a, b, c."
    on one line. The embedded offline tasks put "Option: a, b, c" on a line of its own (their results in
    benchmarks/ were measured so)."""
    head = instruction.strip()
    if options:
        head += (" Option: " + ", ".join(options) + ".") if inline else ("\nOption: " + ", ".join(options))
    return head + "\n", "\nAnswer:"


def normalise(text: str) -> str:
    """Lower case, single spaces: two texts that differ only in case or spacing count as the same."""
    return re.sub(r"\s+", " ", text).strip().lower()


# A task with more distinct outputs than this is free text (generation): the paper-layout loader gives it no
# label set and the rehearsal memory samples it at random instead of class-balanced.
MAX_CLASSES = 50


def content_hash(text: str) -> str:
    return hashlib.sha256(normalise(text).encode()).hexdigest()[:16]


# A config field added after runs were committed: it enters a run's identity only away from its default
# (aimray.config.identity_dict), so that those runs keep their hashes.
ADDED_LATER_FIELD = {"identity": "added_later"}


@dataclass(frozen=True)
class SplitSizes:
    """Examples per split; the offline loaders make seeded, class-balanced, disjoint splits of these sizes."""

    train: int = 1000
    dev: int = 200
    test: int = 500
    # the public copies' own dev where it overlaps test (CB, COPA, RTE, SuperNI), as the released code uses
    # it: for reproducing its numbers only (dev is then test; a sweep refuses it). Default: dev made disjoint.
    release_split: bool = field(default=False, metadata=ADDED_LATER_FIELD)

    def __post_init__(self) -> None:
        for name in ("train", "dev", "test"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"split size {name}={value!r} must be a positive integer")
        if not isinstance(self.release_split, bool):
            raise ValueError(f"data.release_split={self.release_split!r} must be true or false")


@dataclass(frozen=True)
class TaskData:
    """The three splits of one task, plus what was found while making them (sizes, overlaps)."""

    name: str
    train: list[Example]
    dev: list[Example]
    test: list[Example]
    notes: tuple[str, ...] = ()

    def split(self, name: str) -> list[Example]:
        if name not in ("train", "dev", "test"):
            raise KeyError(f"unknown split {name!r}; valid: train, dev, test")
        return getattr(self, name)


@dataclass(frozen=True)
class TaskSpec:
    """A task: name, instruction, label words, loader and metric.

    `load(sizes, seed)` returns the task's splits. `labels` are the options for label-word scoring;
    an empty tuple means a generation task (metric rouge_l, scored by generation).
    """

    name: str
    instruction: str
    labels: tuple[str, ...]
    load: Callable[[SplitSizes, int], TaskData] = field(repr=False)
    metric: str = "accuracy"
    source: str = ""

    def __post_init__(self) -> None:
        if self.metric not in ("accuracy", "rouge_l"):
            raise ValueError(f"task {self.name!r}: metric {self.metric!r} must be accuracy or rouge_l")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"task {self.name!r}: duplicate label words in {self.labels}")

    def example(self, text: str, label: str, uid: str = "") -> Example:
        prefix, suffix = format_parts(self.instruction, self.labels)
        return Example(self.name, text, label, prefix, suffix, uid or content_hash(text))
