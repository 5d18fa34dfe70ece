"""Tasks read from a folder in one of the paper's two public JSON layouts, found automatically.

AimMerging / Recurrent-KIF: `<root>/{train,dev,test}/<task>_T5.json`, JSON lists of {"id", "input", "output"};
the input already inlines the instruction and the options, so it is the whole prompt.
O-LoRA: `<root>/<Type>/<Task>/{train,dev,test}.json`, JSON lists of {"label", "sentence"}, plus `labels.json`
(the options); the instruction comes from the Type folder and the options are inlined after it, as the
paper's input: "<instruction> Option: a, b, c.\n<text>\nAnswer:" (spec.format_parts, inline).

The public copies have a known defect: dev overlaps test (SuperNI dev == test; CB, COPA, RTE too). The loader
removes test texts from dev and train, refills dev from train, and records what it did in TaskData.notes.
"""

from __future__ import annotations

import functools
import math
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path

from aimray.files import read_json
from aimray.tasks.spec import MAX_CLASSES, Example, SplitSizes, TaskData, TaskSpec, content_hash, format_parts
from aimray.tasks.splits import balanced_take, check_disjoint

SPLITS = ("train", "dev", "test")
CHOOSE = " Choose one from the option."
# O-LoRA instruction per Type folder (lower case). COPA has none in O-LoRA: its sentence already asks the
# question and lists A and B, and the prompt is just "<sentence>\nAnswer:".
OLORA_INSTRUCTIONS = {
    "nli": 'What is the logical relationship between the "sentence 1" and the "sentence 2"?' + CHOOSE,
    "qqp": 'Whether the "first sentence" and the "second sentence" have the same meaning?' + CHOOSE,
    "sc": "What is the sentiment of the following paragraph?" + CHOOSE,
    "tc": "What is the topic of the following paragraph?" + CHOOSE,
    "boolqa": "According to the following passage, is the question true or false?" + CHOOSE,
    "multirc": "According to the following passage and question, is the candidate answer true or false?" + CHOOSE,
    "wic": "Given a word and two sentences, whether the word is used with the same sense in both sentence?" + CHOOSE,
    "copa": "",
}
DEV_FROM_TRAIN = 0.1  # dev refill: train's surplus over its requested size, or at least this fraction of it

Record = tuple[str, str, str]  # (text, target, id)
MakeExample = Callable[[str, str, str], Example]


@functools.cache
def read_records(path: Path, text_key: str, target_key: str, id_key: str = "") -> tuple[Record, ...]:
    """A JSON list of objects as (text, target, id) triples, read once per process.

    Raises ValueError naming the file (and the key) when the file is not a list of objects with string values,
    or when two items have the same id.
    """
    items = read_json(path)
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a JSON list of objects, got {type(items).__name__}")
    records = []
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"{path}: item {i} has type {type(item).__name__}, expected an object")
        for key in (text_key, target_key):
            if key not in item:
                raise ValueError(f"{path}: item {i} has no key {key!r} (keys: {sorted(item)})")
            if not isinstance(item[key], str):
                raise ValueError(f"{path}: item {i} key {key!r} has type {type(item[key]).__name__}, expected a string")
        uid = str(item.get(id_key, "")) if id_key else ""
        if uid and uid in seen:
            raise ValueError(f"{path}: items {seen[uid]} and {i} have the same {id_key} {uid!r}")
        seen[uid] = i
        records.append((item[text_key], item[target_key], uid))
    return tuple(records)


@functools.cache
def read_labels(path: Path) -> tuple[str, ...]:
    """O-LoRA `labels.json`: a non-empty JSON list of distinct strings (the options, in file order)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (the O-LoRA layout keeps the options in labels.json)")
    labels = read_json(path)
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise ValueError(f"{path}: expected a non-empty JSON list of strings, got {labels!r:.200}")
    if len(set(labels)) != len(labels):
        raise ValueError(f"{path}: duplicate labels in {labels}")
    return tuple(labels)


def detect_layout(root: Path) -> str:
    """ "aimmerging" if `<root>/train` is a folder, "olora" if `<root>/<Type>/<Task>/train.json` exists."""
    if not root.is_dir():
        raise FileNotFoundError(f"data dir {root} does not exist or is not a folder")
    if (root / "train").is_dir():
        return "aimmerging"
    if any(root.glob("*/*/train.json")):
        return "olora"
    raise ValueError(
        f"{root} is in neither layout: expected {root}/train/<task>_T5.json (AimMerging) "
        f"or {root}/<Type>/<Task>/train.json (O-LoRA)"
    )


def matches(found: str, name: str) -> bool:
    """Case-insensitive: equal, or `found` starts with name + "_" (task1572 matches task1572_samsum_...)."""
    found, name = found.lower(), name.lower()
    return found == name or found.startswith(name + "_")


def pick(name: str, found: dict[Path, str], root: Path, layout: str) -> Path:
    """The path whose task name matches `name` (an exact match wins over prefix matches)."""
    hits = [p for p, t in found.items() if t.lower() == name.lower()]
    hits = hits or [p for p, t in found.items() if matches(t, name)]
    if not hits:
        names = ", ".join(sorted(set(found.values()), key=str.lower)) or "none"
        raise FileNotFoundError(f"task {name!r} not found in {root} ({layout} layout); tasks found: {names}")
    if len(hits) > 1:
        raise ValueError(f"task {name!r} is ambiguous in {root}: it matches {sorted(found[p] for p in hits)}")
    return hits[0]


def hashes(examples: Iterable[Example]) -> set[str]:
    return {content_hash(e.text) for e in examples}


def without(examples: list[Example], excluded: set[str]) -> list[Example]:
    """The examples whose text (by content hash) is not in `excluded`, in order."""
    return [e for e in examples if content_hash(e.text) not in excluded]


def subsample(examples: list[Example], n: int, rng: random.Random, balanced: bool) -> list[Example]:
    """At most n examples: class-balanced on the target (splits.balanced_take), else a plain random sample."""
    n = min(n, len(examples))
    if not balanced or n == 0:
        return rng.sample(examples, n)
    by_label: dict[str, list[Example]] = defaultdict(list)
    for e in examples:
        by_label[e.target].append(e)
    for label in sorted(by_label):
        rng.shuffle(by_label[label])
    return balanced_take(by_label, n, rng)


def disjoint_splits(
    name: str,
    files: dict[str, list[Example]],
    sizes: SplitSizes,
    seed: int,
    balanced: bool,
) -> tuple[list[Example], list[Example], list[Example], list[str]]:
    """Subsample the three files to `sizes`, keeping dev and train disjoint from the whole test file.

    Test texts are dropped from train and dev. A dev that is then short is refilled from train examples not
    in test, taken out of train: train's surplus over sizes.train, and at least DEV_FROM_TRAIN of train,
    so a small task keeps most of its training data. Returns (train, dev, test, notes).
    """
    rng = {split: random.Random(f"{name}/{split}/{seed}") for split in SPLITS}
    train, dev, test = files["train"], files["dev"], files["test"]
    notes = []
    in_test = hashes(test)
    train_pool, dev_pool = without(train, in_test), without(dev, in_test)
    if sizes.release_split and len(dev_pool) < len(dev):  # the released code's dev, test texts and all
        notes.append(
            f"dev/test overlap kept (data.release_split): {len(dev) - len(dev_pool)} of {len(dev)} dev texts "
            "are in test; dev scores are test scores"
        )
        dev_pool = list(dev)
    if len(train_pool) < len(train):
        dropped = len(train) - len(train_pool)
        notes.append(f"train/test overlap: {dropped} of {len(train)} train texts are in test; dropped from train")
    if len(dev_pool) < len(dev):
        fix = "dev rebuilt from train" if not dev_pool else "removed from dev"
        dropped = len(dev) - len(dev_pool)
        notes.append(f"dev/test overlap: {dropped} of {len(dev)} dev texts are in test; {fix}")
    elif not dev:
        notes.append("no dev file; dev built from train")
    test_out = subsample(test, sizes.test, rng["test"], balanced)
    dev_out = subsample(dev_pool, sizes.dev, rng["dev"], balanced)
    pool = without(train_pool, hashes(dev_out))
    if len(pool) < len(train_pool):
        notes.append(f"train/dev overlap: {len(train_pool) - len(pool)} train texts are in dev; dropped from train")
    short = sizes.dev - len(dev_out)
    if short > 0:
        room = max(len(pool) - sizes.train, math.floor(DEV_FROM_TRAIN * len(pool)))
        extra = subsample(pool, min(short, room), rng["dev"], balanced)
        if extra:
            notes.append(f"dev: {len(extra)} examples moved from train (none of them in test)")
        dev_out += extra
        pool = without(pool, hashes(extra))
    train_out = subsample(pool, sizes.train, rng["train"], balanced)
    for split, got in (("train", train_out), ("dev", dev_out), ("test", test_out)):
        if not got:
            raise ValueError(f"task {name!r}: no examples left for the {split} split")
        if len(got) < getattr(sizes, split):
            notes.append(f"{split}: {len(got)} of {getattr(sizes, split)} requested (data exhausted)")
    check_disjoint(name, train_out, dev_out if not sizes.release_split else [], test_out)
    return train_out, dev_out, test_out, notes


def unknown_targets(data: dict[str, list[Example]], labels: tuple[str, ...]) -> list[str]:
    """Notes for examples whose target is not among the labels (they cannot be scored by label words)."""
    notes = []
    for split, examples in data.items():
        bad = Counter(e.target for e in examples if e.target not in labels)
        if bad:
            notes.append(f"{split}: {sum(bad.values())} examples have targets outside the labels: {dict(bad)}")
    return notes


def make_loader(
    name: str,
    files: dict[str, Path],
    keys: tuple[str, str, str],
    make: MakeExample,
    labels: tuple[str, ...],
    labels_file: Path | None = None,
) -> Callable[[SplitSizes, int], TaskData]:
    """A loader that reads the three files (a missing dev file counts as empty) and makes disjoint splits.
    With `labels_file` (the options of the task), a target outside `labels` is an error naming the file."""

    def load(sizes: SplitSizes, seed: int) -> TaskData:
        if not files["test"].is_file():
            raise FileNotFoundError(f"task {name!r}: test file {files['test']} is missing")
        records = {split: read_records(path, *keys) if path.is_file() else () for split, path in files.items()}
        for split in ("train", "test"):
            if files[split].is_file() and not records[split]:
                raise ValueError(f"{files[split]}: no examples (an empty list); the {split} split needs some")
        if labels_file is not None:
            for split, recs in records.items():
                bad = next(((i, t) for i, (_, t, _) in enumerate(recs) if t not in labels), None)
                if bad is not None:
                    raise ValueError(
                        f"{files[split]}: item {bad[0]} has {keys[1]} {bad[1]!r}, which is not in {labels_file} "
                        f"({', '.join(labels)})"
                    )
        data = {split: [make(*r) for r in recs] for split, recs in records.items()}
        train, dev, test, notes = disjoint_splits(name, data, sizes, seed, balanced=bool(labels))
        if labels:
            notes += unknown_targets({"train": train, "dev": dev, "test": test}, labels)
        return TaskData(name, train, dev, test, tuple(notes))

    return load


def aimmerging_task(name: str, root: Path) -> TaskSpec:
    """A task in the AimMerging layout: the input is the whole prompt; labels = distinct train outputs."""
    found = {p: p.stem[:-3] if p.stem.lower().endswith("_t5") else p.stem for p in (root / "train").glob("*.json")}
    train_path = pick(name, found, root, "AimMerging")
    files = {split: root / split / train_path.name for split in SPLITS}
    keys = ("input", "output", "id")
    outputs = sorted({target for _, target, _ in read_records(train_path, *keys)})
    labels = tuple(outputs) if len(outputs) <= MAX_CLASSES else ()

    def make(text: str, target: str, uid: str) -> Example:
        # The input is the whole prompt; keep a trailing "Answer:" apart so truncation never cuts it.
        body, sep, rest = text.rpartition("Answer:")
        if sep and not rest.strip():
            return Example(name, body.rstrip(" "), target, "", sep + rest, uid or content_hash(text))
        return Example(name, text, target, "", "", uid or content_hash(text))

    load = make_loader(name, files, keys, make, labels)
    metric = "accuracy" if labels else "rouge_l"
    return TaskSpec(name, "", labels, load, metric, f"AimMerging layout: {root}/*/{train_path.name}")


def olora_task(name: str, root: Path) -> TaskSpec:
    """A task in the O-LoRA layout: instruction from the Type folder, options from labels.json."""
    found = {p.parent: p.parent.name for p in root.glob("*/*/train.json")}
    folder = pick(name, found, root, "O-LoRA")
    kind = folder.parent.name
    if kind.lower() not in OLORA_INSTRUCTIONS:
        raise ValueError(f"{folder}: unknown O-LoRA type folder {kind!r}; known: {', '.join(OLORA_INSTRUCTIONS)}")
    instruction = OLORA_INSTRUCTIONS[kind.lower()]
    labels = read_labels(folder / "labels.json")
    prefix, suffix = format_parts(instruction, labels, inline=True) if instruction else ("", "\nAnswer:")

    def make(text: str, target: str, uid: str) -> Example:  # COPA has no instruction: the text only
        return Example(name, text, target, prefix, suffix, content_hash(text))

    files = {split: folder / f"{split}.json" for split in SPLITS}
    load = make_loader(name, files, ("sentence", "label", ""), make, labels, folder / "labels.json")
    return TaskSpec(name, instruction, labels, load, "accuracy", f"O-LoRA layout: {folder}")


def json_task(name: str, root: Path) -> TaskSpec:
    """The task `name` read from `root` in the AimMerging or the O-LoRA layout (detected)."""
    root = Path(root)
    if detect_layout(root) == "aimmerging":
        return aimmerging_task(name, root)
    return olora_task(name, root)
