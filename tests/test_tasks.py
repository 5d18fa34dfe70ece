"""Task registry, benchmarks and orders, offline task splits (real packaged data, no model)."""

from __future__ import annotations

from collections import Counter

import pytest

from aimray.config import make_config
from aimray.tasks import (
    BENCHMARKS,
    TASKS,
    Benchmark,
    SplitSizes,
    benchmark_tasks,
    get_benchmark,
    get_task,
    register_benchmark,
    register_task,
)
from aimray.tasks.offline import inventory
from aimray.tasks.registry import permuted_order
from aimray.tasks.spec import content_hash, format_parts
from aimray.tasks.splits import balanced_take, check_disjoint, dedupe, make_splits

OFFLINE = ["wordnet", "amazon", "trec", "bbc", "sms_spam", "tweet_sentiment"]


def test_offline_tasks_registered() -> None:
    assert set(OFFLINE) <= set(TASKS)


@pytest.mark.parametrize(
    ("call", "valid"),
    [
        (lambda: get_task("dbpedia"), "wordnet, amazon"),
        (lambda: get_benchmark("standart"), "offline-standard, offline-six, standard, long, offline-long, superni"),
        (lambda: get_benchmark("standard").order(4), "[1, 2, 3]"),
        (lambda: TASKS["trec"].load(SplitSizes(), 0).split("val"), "train, dev, test"),
    ],
)
def test_unknown_names_list_the_valid_ones(call, valid) -> None:
    with pytest.raises(KeyError) as err:
        call()
    assert valid in str(err.value)


def test_registering_twice_fails() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_task(TASKS["trec"])
    with pytest.raises(ValueError, match="already registered"):
        register_benchmark(BENCHMARKS["standard"])
    with pytest.raises(ValueError, match="unregistered tasks"):
        register_benchmark(Benchmark("bad", {1: ("trec", "nope")}, False, ""))


def test_paper_orders_are_as_in_the_spec() -> None:
    assert get_benchmark("standard").orders == {
        1: ("dbpedia", "amazon", "yahoo", "agnews"),
        2: ("dbpedia", "amazon", "agnews", "yahoo"),
        3: ("yahoo", "amazon", "agnews", "dbpedia"),
    }
    long_ = get_benchmark("long")
    assert sorted(long_.orders) == [4, 5, 6, *range(101, 121)] and all(len(o) == 15 for o in long_.orders.values())
    assert long_.orders[4][:4] == ("mnli", "cb", "wic", "copa") and long_.orders[6][-1] == "wic"
    ni = get_benchmark("superni")
    assert sorted(ni.orders) == [7, 8] and ni.orders[7][0] == "task1572" and ni.orders[8][-1] == "task875"
    assert all(sorted(o) == sorted(ni.orders[7]) for o in ni.orders.values())
    with pytest.raises(ValueError, match="--data-dir"):
        benchmark_tasks("long", 4)


def test_offline_standard_maps_the_four_roles() -> None:
    bench = get_benchmark("offline-standard")
    assert [t.name for t in benchmark_tasks("offline-standard", 1)] == ["wordnet", "amazon", "trec", "bbc"]
    assert bench.orders[2] == ("wordnet", "amazon", "bbc", "trec")
    assert bench.orders[3] == ("trec", "amazon", "bbc", "wordnet")


LONG_NEW = ["corr2cause", "hedge", "sense", "quartz", "simlex", "socialiqa", "afinn", "sarcasm", "newsgroups"]


def test_offline_long_is_the_long_sequence_role_for_role() -> None:
    bench = get_benchmark("offline-long")
    paper = get_benchmark("long")
    assert sorted(bench.orders) == [4, 5, 6, *range(101, 121)] and set(bench.tasks) == set(OFFLINE) | set(LONG_NEW)
    assert all(len(set(order)) == 15 for order in bench.orders.values())
    roles = dict(zip(paper.orders[4], bench.orders[4], strict=True))
    for k in (5, 6, *range(101, 121)):  # the paper's orders and the permutations, the same substitution
        assert bench.orders[k] == tuple(roles[t] for t in paper.orders[k])
    assert roles["mnli"] == "corr2cause" and roles["yahoo"] == "newsgroups" and roles["amazon"] == "amazon"


def test_permuted_orders_are_fixed_by_their_key() -> None:
    """Orders 101-120 are the same sequences on every machine: pinned here (a change would silently give a
    cached study's order number another sequence), all distinct, each a permutation of order 4."""
    paper = get_benchmark("long")
    assert paper.orders[101][:5] == ("agnews", "cb", "sst-2", "qqp", "yahoo")
    assert paper.orders[120] == permuted_order(paper.orders[4], "long/20")
    assert len({paper.orders[k] for k in (4, 5, 6, *range(101, 121))}) == 23
    assert all(sorted(paper.orders[k]) == sorted(paper.orders[4]) for k in range(101, 121))
    assert permuted_order(("a", "b", "c"), "x") == permuted_order(("a", "b", "c"), "x")


@pytest.mark.parametrize("name", LONG_NEW)
def test_offline_long_tasks_read_the_real_files_into_disjoint_balanced_splits(name) -> None:
    # the long preset's sizes, seeds 0 and 1: every new task has a fixed set of at most 10 label words, at
    # least 600 unique examples, and disjoint class-balanced splits
    spec, cfg = TASKS[name], make_config("long", {})
    assert 2 <= len(spec.labels) <= 10 and spec.source and spec.instruction.endswith("Choose one from the option.")
    counts = inventory([name])[name]
    assert counts["unique"] >= 600 and set(counts["labels"]) == set(spec.labels), counts
    for seed in (0, 1):
        data = spec.load(cfg.data, seed)
        assert (len(data.train), len(data.dev), len(data.test)) == (cfg.data.train, cfg.data.dev, cfg.data.test)
        check_disjoint(name, data.train, data.dev, data.test)
        test = Counter(e.target for e in data.test)
        assert max(test.values()) - min(test.values()) <= 1, test


def test_offline_long_reports_texts_shared_across_tasks() -> None:
    inv = inventory(list(get_benchmark("offline-long").tasks))
    assert len(inv) == 15
    for name, row in inv.items():  # symmetric: what a task shares with another, the other shares with it
        for other, n in row["shared"].items():
            assert inv[other]["shared"][name] == n
    # the two word-level tasks share many words (asked different questions); the questions share nothing
    assert inv["afinn"]["shared"]["sense"] > 1000 and not inv["quartz"]["shared"] and not inv["corr2cause"]["shared"]


def test_prompt_follows_olora_format() -> None:
    ex = TASKS["bbc"].load(SplitSizes(20, 10, 10), 0).test[0]
    assert ex.prompt.startswith("What is the topic of the following paragraph? Choose one from the option.\n")
    assert "\nOption: business, entertainment, politics, sport, tech\n" in ex.prompt
    assert ex.prompt.endswith("\nAnswer:") and ex.target in TASKS["bbc"].labels
    assert format_parts("Q?", ("a", "b")) == ("Q?\nOption: a, b\n", "\nAnswer:")
    assert format_parts("Q?", ("a", "b"), inline=True) == ("Q? Option: a, b.\n", "\nAnswer:")


SPLITS = ("train", "dev", "test")


@pytest.mark.parametrize("name", OFFLINE)
def test_offline_splits_are_disjoint_balanced_and_seeded(name) -> None:
    spec = TASKS[name]
    data = spec.load(SplitSizes(), 0)
    assert (len(data.train), len(data.dev), len(data.test)) == (1000, 200, 500)
    hashes = [{content_hash(e.text) for e in data.split(s)} for s in ("train", "dev", "test")]
    assert not (hashes[0] & hashes[1]) and not (hashes[0] & hashes[2]) and not (hashes[1] & hashes[2])
    assert len(hashes[2]) == 500  # no duplicates inside a split either
    counts = Counter(e.target for e in data.test)
    assert set(counts) <= set(spec.labels)
    assert max(counts.values()) - min(counts.values()) <= 1  # the test split is class-balanced
    again = spec.load(SplitSizes(), 0)
    assert [e.uid for e in again.test] == [e.uid for e in data.test]
    other = spec.load(SplitSizes(), 1)
    assert [e.uid for e in other.test] != [e.uid for e in data.test]
    # the de-duplicated pool is computed once per process: no load may change it for the next
    third = spec.load(SplitSizes(), 0)
    assert [[e.uid for e in third.split(s)] for s in SPLITS] == [[e.uid for e in data.split(s)] for s in SPLITS]


def test_split_sizes_are_validated() -> None:
    with pytest.raises(ValueError, match="dev=0"):
        SplitSizes(dev=0)


def test_dedupe_drops_duplicates_and_conflicts() -> None:
    pairs = [("A b", "x"), ("a  B", "x"), ("c", "x"), ("C", "y"), ("d", "y")]
    kept, dups, conflicts = dedupe(pairs)
    assert kept == [("A b", "x"), ("d", "y")] and dups == 2 and conflicts == 1


def test_balanced_take_tops_up_short_classes() -> None:
    import random

    pools = {"a": list(range(100)), "b": list(range(100, 103))}
    taken = balanced_take(pools, 20, random.Random(0))
    assert len(taken) == 20 and sum(t >= 100 for t in taken) == 3
    assert len(pools["a"]) + len(pools["b"]) == 83  # taken items are removed from the pools


def test_make_splits_prioritises_test_and_reports_shortage() -> None:
    from aimray.tasks.spec import Example

    pairs = [(f"text {i}", "ab"[i % 2]) for i in range(30)] + [("text 0", "a")]

    def make(text, label):
        return Example("toy", text, label)

    train, dev, test, notes = make_splits("toy", pairs, SplitSizes(50, 6, 10), 0, make)
    assert (len(train), len(dev), len(test)) == (14, 6, 10)
    assert Counter(e.target for e in test) == {"a": 5, "b": 5}
    assert any("train: 14 of 50" in n for n in notes) and any("1 duplicate" in n for n in notes)
    with pytest.raises(ValueError, match="in both train and test"):
        check_disjoint("toy", train, dev, train[:1])
