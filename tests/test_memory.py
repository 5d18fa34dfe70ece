"""The rehearsal memory: class balance, the max(1, n // C) rule, determinism, batches, state round trip."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from aimray.memory import RehearsalMemory
from aimray.tasks.spec import Example


def train_set(task: str, counts: dict[str, int]) -> list[Example]:
    """A training set with counts[label] examples of each label, labels interleaved."""
    labels = [lab for lab, n in counts.items() for _ in range(n)]
    random.Random(task).shuffle(labels)
    return [Example(task, f"{task} text {i}", lab, "P:", "\nA:") for i, lab in enumerate(labels)]


THREE = {"x": 400, "y": 300, "z": 300}  # 1000 examples, 3 classes


@pytest.mark.parametrize(
    ("config", "counts", "expected"),
    [
        ({"fraction": 0.02}, THREE, {"x": 6, "y": 6, "z": 6}),  # n=20, 6 per class, 2 topped up at random
        ({"fraction": None, "per_task": 9}, THREE, {"x": 3, "y": 3, "z": 3}),
        ({"fraction": None, "per_task": 30}, {"x": 50, "y": 50, "z": 5}, {"x": 10, "y": 10, "z": 5}),
        (
            {"fraction": 0.02},
            {"x": 40, "y": 40, "z": 20},
            {"x": 1, "y": 1, "z": 1},
        ),  # n=2: max(1, 2 // 3) each
        (
            {"fraction": None, "per_task": 1},
            {"x": 5, "y": 5, "z": 5, "w": 5},
            {"x": 1, "y": 1, "z": 1, "w": 1},
        ),
    ],
)
def test_class_balance(config: dict, counts: dict[str, int], expected: dict[str, int]) -> None:
    memory = RehearsalMemory(**config, seed=3)
    train = train_set("t", counts)
    indices = memory.add_task("t", train)
    got = Counter(train[i].target for i in indices)
    n = config.get("per_task") or int(config["fraction"] * len(train))
    assert len(indices) == max(n, len(counts)) == len(memory)
    assert all(got[lab] >= k for lab, k in expected.items())  # the per-class floor
    assert sum(got.values()) - sum(expected.values()) == max(0, n - sum(expected.values()))  # top-up
    assert indices == sorted(set(indices))


def test_fraction_two_percent_of_a_thousand() -> None:
    memory = RehearsalMemory()
    assert len(memory.add_task("a", train_set("a", THREE))) == 20
    assert len(memory.add_task("b", train_set("b", {"p": 125, "q": 125}))) == 5  # CB: 250 examples


def test_tiny_task_keeps_one_example() -> None:
    memory = RehearsalMemory(fraction=0.02)
    train = train_set("tiny", {"only": 3})
    assert len(memory.add_task("tiny", train)) == 1


def test_generation_task_is_not_balanced_per_target() -> None:
    train = [Example("gen", f"q {i}", f"free answer {i}") for i in range(1000)]
    assert len(RehearsalMemory().add_task("gen", train)) == 20  # not one per distinct target


def test_deterministic_and_independent_of_task_order() -> None:
    sets = {t: train_set(t, THREE) for t in ("a", "b", "c")}
    first, second = RehearsalMemory(seed=5), RehearsalMemory(seed=5)
    picks_first = {t: first.add_task(t, sets[t]) for t in ("a", "b", "c")}
    picks_second = {t: second.add_task(t, sets[t]) for t in ("c", "a", "b")}
    assert picks_first == picks_second
    assert first.tasks == ("a", "b", "c") and second.tasks == ("c", "a", "b")
    assert [e.task for e in first.examples()] == ["a"] * 20 + ["b"] * 20 + ["c"] * 20
    assert RehearsalMemory(seed=6).add_task("a", sets["a"]) != picks_first["a"]


def test_task_added_twice() -> None:
    memory = RehearsalMemory()
    memory.add_task("a", train_set("a", THREE))
    with pytest.raises(ValueError, match="'a' is already in the rehearsal memory"):
        memory.add_task("a", train_set("a", THREE))
    with pytest.raises(ValueError, match="empty training set"):
        memory.add_task("b", [])


@pytest.mark.parametrize(("n", "expected"), [(0, 0), (7, 7), (40, 40), (41, 40), (1000, 40)])
def test_sample_batch_sizes(n: int, expected: int) -> None:
    memory = RehearsalMemory()
    for t in ("a", "b"):
        memory.add_task(t, train_set(t, THREE))
    batch = memory.sample_batch(n, random.Random(0))
    assert len(batch) == expected
    assert len({e.text for e in batch}) == expected  # no repeats within a batch
    assert set(batch) <= set(memory.examples())


def test_sample_batch_empty_and_seeded() -> None:
    assert RehearsalMemory().sample_batch(32, random.Random(0)) == []
    memory = RehearsalMemory()
    memory.add_task("a", train_set("a", THREE))
    assert memory.sample_batch(8, random.Random(1)) == memory.sample_batch(8, random.Random(1))
    with pytest.raises(ValueError, match="n=-1"):
        memory.sample_batch(-1, random.Random(0))


def test_state_dict_round_trip() -> None:
    sets = {t: train_set(t, THREE) for t in ("b", "a")}
    memory = RehearsalMemory(fraction=None, per_task=10, seed=4)
    for t in ("b", "a"):
        memory.add_task(t, sets[t])
    state = json.loads(json.dumps(memory.state_dict()))
    restored = RehearsalMemory()  # config comes from the state
    restored.load_state_dict(state, sets)
    assert restored.examples() == memory.examples()
    assert restored.tasks == ("b", "a")
    assert (restored.fraction, restored.per_task, restored.seed) == (None, 10, 4)
    assert restored.state_dict() == memory.state_dict()
    rng_a, rng_b = random.Random(9), random.Random(9)
    assert restored.sample_batch(12, rng_a) == memory.sample_batch(12, rng_b)


def test_load_state_dict_errors() -> None:
    sets = {"a": train_set("a", THREE)}
    memory = RehearsalMemory()
    memory.add_task("a", sets["a"])
    state = memory.state_dict()
    with pytest.raises(KeyError, match="'a'"):
        RehearsalMemory().load_state_dict(state, {})
    with pytest.raises(ValueError, match="training set has 999 examples"):
        RehearsalMemory().load_state_dict(state, {"a": sets["a"][:-1]})
    with pytest.raises(ValueError, match="differs"):
        RehearsalMemory().load_state_dict(state, {"a": train_set("other", THREE)})
    with pytest.raises(ValueError, match="per_task=0"):
        RehearsalMemory().load_state_dict({**state, "fraction": None, "per_task": 0}, sets)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fraction": 0.1, "per_task": 5}, "exactly one of fraction and per_task"),
        ({"fraction": 0.0}, "fraction=0.0 must be"),
        ({"fraction": 1.5}, "fraction=1.5 must be"),
        ({"fraction": "0.1"}, "fraction='0.1' must be"),
        ({"fraction": True}, "fraction=True must be"),
        ({"fraction": None, "per_task": 0}, "per_task=0 must be a positive integer"),
        ({"fraction": None, "per_task": 2.5}, "per_task=2.5 must be a positive integer"),
        ({"seed": "1"}, "seed='1' must be an integer"),
    ],
)
def test_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RehearsalMemory(**kwargs)


def test_defaults() -> None:
    assert RehearsalMemory().fraction == 0.02
    memory = RehearsalMemory(per_task=5)
    assert (memory.fraction, memory.per_task) == (None, 5)
