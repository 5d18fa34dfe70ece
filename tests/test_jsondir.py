"""Tasks read from folders in the AimMerging and O-LoRA layouts, built here in tmp_path (no network)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from aimray.tasks import SplitSizes, benchmark_tasks
from aimray.tasks.jsondir import OLORA_INSTRUCTIONS, detect_layout, json_task
from aimray.tasks.spec import content_hash
from aimray.tasks.splits import overlaps

SIZES = SplitSizes(train=30, dev=9, test=12)


def write(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")


def texts(task: str, split: str, labels: list[str], per_label: int) -> list[tuple[str, str]]:
    """(text, label) pairs, per_label of each label, every text distinct."""
    return [(f"{task} {split} text {i} about {lab}", lab) for lab in labels for i in range(per_label)]


def olora_task_dir(root: Path, kind: str, task: str, labels: list[str], per_label=(20, 5, 6)) -> Path:
    """<root>/<kind>/<task>/{train,dev,test}.json and labels.json."""
    folder = root / kind / task
    write(folder / "labels.json", labels)
    for split, n in zip(("train", "dev", "test"), per_label, strict=True):
        write(folder / f"{split}.json", [{"label": y, "sentence": x} for x, y in texts(task, split, labels, n)])
    return folder


def aim_file(root: Path, split: str, stem: str, pairs: list[tuple[str, str]]) -> None:
    items = [{"id": f"{stem}-{split}-{i}", "input": x, "output": y} for i, (x, y) in enumerate(pairs)]
    write(root / split / f"{stem}_T5.json", items)


@pytest.fixture
def olora_root(tmp_path: Path) -> Path:
    """The four Standard CL tasks in the O-LoRA layout."""
    root = tmp_path / "CL_Benchmark"
    olora_task_dir(root, "TC", "dbpedia", ["Company", "Artist", "Village"])
    olora_task_dir(root, "SC", "amazon", ["negative", "positive"])
    olora_task_dir(root, "TC", "yahoo", ["Health", "Sports", "Politics"])
    olora_task_dir(root, "TC", "agnews", ["World", "Sports", "Business"])
    return root


def cls_input(text: str) -> str:
    return f"What is the topic? Choose one from the option. Option: a, b, c.\n{text}\nAnswer:"


@pytest.fixture
def aim_root(tmp_path: Path) -> Path:
    """AimMerging layout: a 3-class task whose dev equals test (plus 2 train texts that are in test),
    and a SuperNI-style generation task whose dev equals test."""
    root = tmp_path / "aim"
    labels = ["a", "b", "c"]
    test = [(cls_input(x), y) for x, y in texts("cb", "test", labels, 5)]
    aim_file(root, "train", "cb", [(cls_input(x), y) for x, y in texts("cb", "train", labels, 20)] + test[:2])
    aim_file(root, "dev", "cb", test)
    aim_file(root, "test", "cb", test)
    gen = [(f"Summarize: dialogue {i} " + "words " * (i % 7), f"summary {i} of the chat") for i in range(100)]
    aim_file(root, "train", "task1572_samsum_summary", gen[:80])
    aim_file(root, "dev", "task1572_samsum_summary", gen[80:])
    aim_file(root, "test", "task1572_samsum_summary", gen[80:])
    return root


def test_detect_layout(olora_root: Path, aim_root: Path, tmp_path: Path) -> None:
    assert detect_layout(olora_root) == "olora"
    assert detect_layout(aim_root) == "aimmerging"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither layout"):
        detect_layout(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        json_task("cb", tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("kind", "start"),
    [
        ("NLI", 'What is the logical relationship between the "sentence 1" and the "sentence 2"?'),
        ("QQP", 'Whether the "first sentence" and the "second sentence" have the same meaning?'),
        ("SC", "What is the sentiment of the following paragraph?"),
        ("TC", "What is the topic of the following paragraph?"),
        ("BoolQA", "According to the following passage, is the question true or false?"),
        (
            "MultiRC",
            "According to the following passage and question, is the candidate answer true or false?",
        ),
        (
            "WiC",
            "Given a word and two sentences, whether the word is used with the same sense in both sentence?",
        ),
    ],
)
def test_olora_prompt(tmp_path: Path, kind: str, start: str) -> None:
    olora_task_dir(tmp_path, kind, "Some-Task", ["yes", "no"])
    spec = json_task("some-task", tmp_path)
    assert spec.labels == ("yes", "no") and spec.metric == "accuracy"
    assert spec.instruction == OLORA_INSTRUCTIONS[kind.lower()] == start + " Choose one from the option."
    ex = spec.load(SIZES, 0).train[0]
    assert ex.task == "some-task"
    assert ex.prefix == f"{start} Choose one from the option. Option: yes, no.\n"  # the paper's input, inlined
    assert ex.suffix == "\nAnswer:"
    assert ex.prompt == ex.prefix + ex.text + "\nAnswer:" and ex.text.startswith("Some-Task train text")


def test_olora_copa_has_no_instruction(tmp_path: Path) -> None:
    olora_task_dir(tmp_path, "COPA", "COPA", ["A", "B"])
    ex = json_task("copa", tmp_path).load(SIZES, 0).test[0]
    assert (ex.prefix, ex.suffix) == ("", "\nAnswer:")


def test_olora_unknown_type_folder(tmp_path: Path) -> None:
    olora_task_dir(tmp_path, "XYZ", "thing", ["A", "B"])
    with pytest.raises(ValueError, match="unknown O-LoRA type folder 'XYZ'"):
        json_task("thing", tmp_path)


def test_aimmerging_classification(aim_root: Path) -> None:
    spec = json_task("CB", aim_root)  # case-insensitive
    assert spec.labels == ("a", "b", "c") and spec.metric == "accuracy" and spec.instruction == ""
    data = spec.load(SIZES, 0)
    ex = data.test[0]
    # the input is the whole prompt; its trailing "Answer:" is kept apart so truncation never cuts it
    assert ex.prefix == "" and ex.suffix == "Answer:" and not ex.text.endswith("Answer:")
    assert ex.text.startswith("What is the topic?") and ex.prompt.endswith("\nAnswer:")
    assert ex.uid.startswith("cb-test-")


def test_aimmerging_generation_task(aim_root: Path) -> None:
    spec = json_task("task1572", aim_root)  # matches task1572_samsum_summary_T5.json
    assert spec.labels == () and spec.metric == "rouge_l"
    data = spec.load(SplitSizes(train=50, dev=10, test=15), 3)
    assert [len(data.train), len(data.dev), len(data.test)] == [50, 10, 15]
    assert data.dev[0].target.startswith("summary ")
    assert "dev/test overlap: 20 of 20 dev texts are in test; dev rebuilt from train" in data.notes
    assert not overlaps(data.dev, data.test) and not overlaps(data.train, data.dev)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_sizes_and_class_balance(olora_root: Path, seed: int) -> None:
    data = json_task("dbpedia", olora_root).load(SIZES, seed)
    assert Counter(e.target for e in data.train) == {"Company": 10, "Artist": 10, "Village": 10}
    assert Counter(e.target for e in data.dev) == {"Company": 3, "Artist": 3, "Village": 3}
    assert Counter(e.target for e in data.test) == {"Company": 4, "Artist": 4, "Village": 4}
    assert data.notes == ()


def test_seeded(olora_root: Path) -> None:
    spec = json_task("amazon", olora_root)
    assert spec.load(SIZES, 0) == spec.load(SIZES, 0)
    assert spec.load(SIZES, 0).train != spec.load(SIZES, 1).train


def test_small_files_are_noted(olora_root: Path) -> None:
    data = json_task("amazon", olora_root).load(SplitSizes(train=100, dev=10, test=100), 0)
    assert len(data.test) == 12  # the whole test file
    assert "test: 12 of 100 requested (data exhausted)" in data.notes


def test_dev_test_overlap_removed_and_refilled(aim_root: Path) -> None:
    data = json_task("cb", aim_root).load(SIZES, 0)
    assert len(data.dev) == SIZES.dev and len(data.test) == SIZES.test and len(data.train) == SIZES.train
    full_test = {content_hash(cls_input(x)) for x, _ in texts("cb", "test", ["a", "b", "c"], 5)}
    assert not {content_hash(e.text) for e in data.dev + data.train} & full_test  # disjoint from the whole file
    assert Counter(e.target for e in data.dev) == {"a": 3, "b": 3, "c": 3}
    assert data.notes[:3] == (
        "train/test overlap: 2 of 62 train texts are in test; dropped from train",
        "dev/test overlap: 15 of 15 dev texts are in test; dev rebuilt from train",
        "dev: 9 examples moved from train (none of them in test)",
    )


def test_dev_refill_leaves_a_small_train_set_mostly_intact(aim_root: Path) -> None:
    data = json_task("cb", aim_root).load(SplitSizes(train=1000, dev=50, test=15), 0)
    assert len(data.dev) == 6  # 10% of the 60 train texts not in test
    assert len(data.train) == 54
    assert "dev: 6 of 50 requested (data exhausted)" in data.notes


def test_missing_dev_file_builds_dev_from_train(tmp_path: Path) -> None:
    folder = olora_task_dir(tmp_path, "SC", "imdb", ["negative", "positive"])
    (folder / "dev.json").unlink()
    data = json_task("imdb", tmp_path).load(SIZES, 0)
    assert len(data.dev) == SIZES.dev and data.notes[0] == "no dev file; dev built from train"


@pytest.mark.parametrize("name", ["mnli", "task9"])
def test_missing_task_lists_found_names(olora_root: Path, aim_root: Path, name: str) -> None:
    with pytest.raises(FileNotFoundError) as err:
        json_task(name, olora_root)
    assert all(s in str(err.value) for s in (str(olora_root), repr(name), "agnews, amazon, dbpedia, yahoo"))
    with pytest.raises(FileNotFoundError) as err:
        json_task(name, aim_root)
    assert all(s in str(err.value) for s in (str(aim_root), repr(name), "cb, task1572_samsum_summary"))


def test_ambiguous_prefix(tmp_path: Path) -> None:
    for stem in ("task1_alpha", "task1_beta"):
        aim_file(tmp_path, "train", stem, [("x", "y")])
    with pytest.raises(ValueError, match="ambiguous"):
        json_task("task1", tmp_path)
    assert json_task("task1_beta", tmp_path).source.endswith("task1_beta_T5.json")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"input": "x", "output": "y"}, "expected a JSON list of objects, got dict"),
        ([{"id": "1", "input": "x"}], "item 0 has no key 'output'"),
        ([{"id": "1", "input": "x", "output": "y"}, {"output": "y"}], "item 1 has no key 'input'"),
        ([{"id": "1", "input": "x", "output": 3}], "item 0 key 'output' has type int, expected a string"),
        (["x"], "item 0 has type str, expected an object"),
    ],
)
def test_malformed_file(tmp_path: Path, content: object, message: str) -> None:
    write(tmp_path / "train" / "bad_T5.json", content)
    with pytest.raises(ValueError, match=message) as err:
        json_task("bad", tmp_path)
    assert str(tmp_path / "train" / "bad_T5.json") in str(err.value)


def test_malformed_test_file_is_named_at_load(olora_root: Path) -> None:
    path = olora_root / "TC" / "yahoo" / "test.json"
    write(path, [{"label": "Health", "text": "no sentence key"}])
    with pytest.raises(ValueError, match="item 0 has no key 'sentence'") as err:
        json_task("yahoo", olora_root).load(SIZES, 0)
    assert str(path) in str(err.value)


def test_bad_labels_json(olora_root: Path) -> None:
    write(olora_root / "SC" / "amazon" / "labels.json", {"negative": 0})
    with pytest.raises(ValueError, match=re.escape("labels.json: expected a non-empty JSON list of strings")):
        json_task("amazon", olora_root)


def test_standard_benchmark_reads_data_dir(olora_root: Path) -> None:
    specs = benchmark_tasks("standard", 1, data_dir=olora_root)
    assert [s.name for s in specs] == ["dbpedia", "amazon", "yahoo", "agnews"]
    assert [s.labels[0] for s in specs] == ["Company", "negative", "Health", "World"]
    with pytest.raises(ValueError, match="--data-dir"):
        benchmark_tasks("standard", 1)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\xff\xfe[]", r"not UTF-8 text \(byte 0xff at offset 0\)"),
        (b'[{"input": "a", "output": "b"},\n {"input": ', r"not valid JSON at line 2, column 12: Expecting value"),
    ],
)
def test_undecodable_or_truncated_files_are_named_with_the_place(tmp_path: Path, raw: bytes, message: str) -> None:
    path = tmp_path / "train" / "bad_T5.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(raw)
    with pytest.raises(ValueError, match=message) as err:
        json_task("bad", tmp_path)
    assert str(err.value).startswith(str(path))
