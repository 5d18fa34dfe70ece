"""Seeded, class-balanced, disjoint train/dev/test splits, and the content-hash overlap check."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable, Sequence

from aimray.tasks.spec import Example, SplitSizes, content_hash


def dedupe(pairs: Iterable[tuple[str, str]]) -> tuple[list[tuple[str, str]], int, int]:
    """Keep one copy of each text (by content hash); drop texts seen with two different labels.

    Returns (unique (text, label) pairs in first-seen order, duplicates dropped, conflicting texts dropped).
    """
    first: dict[str, tuple[str, str]] = {}
    conflicted: set[str] = set()
    dups = 0
    for text, label in pairs:
        h = content_hash(text)
        if h in first:
            dups += 1
            if first[h][1] != label:
                conflicted.add(h)
            continue
        first[h] = (text, label)
    kept = [pair for h, pair in first.items() if h not in conflicted]
    return kept, dups, len(conflicted)


def balanced_take(by_label: dict[str, list], n: int, rng: random.Random) -> list:
    """Take n items, n // C per label (remainder to random labels), topping up from the rest at random
    when a label runs short. Items are popped from the lists, so successive calls never repeat one."""
    labels = sorted(by_label)
    quota = {lab: n // len(labels) for lab in labels}
    for lab in rng.sample(labels, n % len(labels)):
        quota[lab] += 1
    taken = []
    for lab in labels:
        k = min(quota[lab], len(by_label[lab]))
        taken += by_label[lab][:k]
        del by_label[lab][:k]
    short = n - len(taken)
    if short > 0:
        rest = [(lab, i) for lab in labels for i in range(len(by_label[lab]))]
        picks = sorted(rng.sample(rest, min(short, len(rest))), key=lambda p: (p[0], -p[1]))
        for lab, i in picks:  # highest index first so the remaining indices stay valid
            taken.append(by_label[lab].pop(i))
    rng.shuffle(taken)
    return taken


def make_splits(
    task: str,
    pairs: Sequence[tuple[str, str]],
    sizes: SplitSizes,
    seed: int,
    make_example,
) -> tuple[list[Example], list[Example], list[Example], list[str]]:
    """Split (text, label) pairs into disjoint test, dev and train sets, in that order of priority.

    Duplicated texts are removed first, so no text (by normalised content hash) can be in two splits.
    Each split is class-balanced where the data allows and topped up at random where a class runs short;
    when the data are too few, train gets what is left. `make_example(text, label)` builds an Example.
    """
    return split_unique(task, dedupe(pairs), sizes, seed, make_example)


def split_unique(
    task: str,
    deduped: tuple[list[tuple[str, str]], int, int],
    sizes: SplitSizes,
    seed: int,
    make_example,
) -> tuple[list[Example], list[Example], list[Example], list[str]]:
    """make_splits from `dedupe(pairs)`'s result, which a loader may compute once per process (hashing every
    text of a task is most of the time a split takes); `deduped` is read, never changed."""
    unique, dups, conflicts = deduped
    rng = random.Random(f"{task}/{seed}")
    by_label: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for pair in unique:
        by_label[pair[1]].append(pair)
    for lab in sorted(by_label):
        rng.shuffle(by_label[lab])
    notes = []
    if dups or conflicts:
        notes.append(f"{dups} duplicate texts removed, {conflicts} texts with conflicting labels dropped")
    out: dict[str, list[Example]] = {}
    for split in ("test", "dev", "train"):
        want = getattr(sizes, split)
        taken = balanced_take(by_label, want, rng)
        if not taken:
            raise ValueError(f"task {task!r}: no examples left for the {split} split ({len(unique)} unique)")
        if len(taken) < want:
            notes.append(f"{split}: {len(taken)} of {want} requested (data exhausted)")
        out[split] = [make_example(text, label) for text, label in taken]
    check_disjoint(task, out["train"], out["dev"], out["test"])
    return out["train"], out["dev"], out["test"], notes


def overlaps(a: Iterable[Example], b: Iterable[Example]) -> set[str]:
    """Content hashes of the texts found in both collections."""
    return {content_hash(e.text) for e in a} & {content_hash(e.text) for e in b}


def check_disjoint(task: str, train: list[Example], dev: list[Example], test: list[Example]) -> None:
    """Raise if any text (by normalised content hash) is in two splits."""
    for (na, a), (nb, b) in [
        (("train", train), ("dev", dev)),
        (("train", train), ("test", test)),
        (("dev", dev), ("test", test)),
    ]:
        both = overlaps(a, b)
        if both:
            raise ValueError(f"task {task!r}: {len(both)} texts are in both {na} and {nb}")
