"""Reference mode: each option that reproduces the released AimMerging code, pinned on a hand-made case,
and `--preset reference` end to end on paper-layout folders (both layouts, tiny model: unit tests only).
The controller's warm-up count is pinned in test_controller.py, the forgetting definition in test_metrics.py."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aimray.config import ADDED_LATER, config_from_dict, config_hash, make_config
from aimray.distributed import LOCAL
from aimray.loop import dev_loss, set_up, snapshot, track_best, train_step
from aimray.memory import RehearsalMemory
from aimray.model import evaluate, rouge_l, stemmed_rouge_l
from aimray.tasks.spec import Example
from tests.test_jsondir import aim_file, cls_input, olora_task_dir, texts
from tests.test_loop import quiet, tiny_config

ROOT = Path(__file__).resolve().parent.parent


def test_runs_made_before_later_options_keep_their_config_hashes() -> None:
    """Fields added later (config.ADDED_LATER) stay out of the hash at their defaults: every committed
    quality run's folder still ends in its config's hash; a non-default value changes the hash."""
    manifests = sorted((ROOT / "benchmarks" / "results" / "quality" / "runs").glob("*/*/manifest.json"))
    assert len(manifests) >= 30
    for m in manifests:
        cfg = config_from_dict(json.loads(m.read_text())["config"])
        assert m.parent.name.endswith(config_hash(cfg)), m
    base = make_config("smoke")
    changes = {
        "data.release_split": {"data": {"release_split": True}},
        "checkpoint.holdout_fraction": {"checkpoint": {"holdout_fraction": 0.1}},
        "memory.class_rule": {"memory": {"class_rule": "literal"}},
        "controller.warmup_count": {"controller": {"warmup_count": "code"}},
        "controller.burst_loss_scale": {"controller": {"burst_loss_scale": 0.25}},
        "eval.max_new_tokens": {"eval": {"max_new_tokens": 128}},
        "eval.rouge_stemmer": {"eval": {"rouge_stemmer": True}},
        "model.compile": {"model": {"compile": "train"}},
        "eval.modes": {"eval": {"modes": ["generate", "score"]}},
        "eval.matrix": {"eval": {"matrix": "metrics"}},
        "eval.matrix_subsample": {"eval": {"matrix_subsample": 10}},
    }
    assert set(changes) == set(ADDED_LATER)
    for name, change in changes.items():
        assert config_hash(make_config("smoke", change)) != config_hash(base), name


def test_burst_loss_scale_scales_the_step_by_hand(tiny_causal, tmp_path) -> None:
    """With plain SGD (lr 1, no clipping) a step moves the adapter by -grad; at burst_loss_scale 0.25 by
    exactly a quarter of that (the released burst divides its loss by 32 / 8 accumulation steps)."""
    cfg = tiny_config(tiny_causal, train={"grad_clip": 1e9})
    moves = []
    for scale in (1.0, 0.25):
        r = set_up(cfg, tmp_path, quiet, LOCAL, None)
        before = snapshot(r.params)
        batch = r.data[0].train[:4]
        loss = train_step(r, batch, torch.optim.SGD(list(r.params.values()), lr=1.0), None, scale)
        moves.append({k: r.params[k].detach() - before[k] for k in before})
        assert loss > 0  # the logged loss is the unscaled one
    for k, full in moves[0].items():
        assert torch.allclose(moves[1][k], 0.25 * full, atol=1e-7, rtol=1e-4), k
    assert any(v.abs().sum() > 0 for v in moves[0].values())


def test_literal_class_rule_keeps_one_example_per_distinct_output() -> None:
    """A generation task: 1000 examples, 500 distinct outputs, 2% memory. Capped: 20 random examples;
    literal (the released sampler): max(1, 20 // 500) = 1 per distinct output, 500 examples."""
    train = [Example("gen", f"text {i}", f"output {i % 500}") for i in range(1000)]
    assert len(RehearsalMemory(0.02, class_rule="capped").add_task("gen", train)) == 20
    literal = RehearsalMemory(0.02, class_rule="literal").add_task("gen", train)
    assert len(literal) == 500 and len({train[i].target for i in literal}) == 500
    few = [Example("cls", f"text {i}", "ab"[i % 2]) for i in range(1000)]  # 2 classes: both rules agree
    assert RehearsalMemory(0.02, class_rule="literal").add_task("c", few) == RehearsalMemory(0.02).add_task("c", few)
    with pytest.raises(ValueError, match="memory.class_rule"):
        RehearsalMemory(0.02, class_rule="all")


def test_best_dev_loss_keeps_the_state_with_the_lowest_dev_loss(tiny_causal, tmp_path) -> None:
    cfg = tiny_config(tiny_causal, checkpoint={"keep": "best_dev_loss", "best_dev_examples": 4})
    r = set_up(cfg, tmp_path, quiet, LOCAL, None)
    stage = r.stages[0]
    from aimray.checkpoint import TaskState
    from aimray.merging.controller import Schedule

    task = TaskState(Schedule(cfg.controller), random.Random(0), {})
    losses = []
    for shift in (0.0, 0.5, 0.1):
        with torch.no_grad():
            for p in r.params.values():
                p.add_(shift)
        losses.append(dev_loss(r.bb, r.dist, r.data[0].dev[:4], cfg.train.eval_batch_size))
        track_best(r, stage, task)
    best = min(range(3), key=losses.__getitem__)
    assert task.best_score == pytest.approx(-losses[best])
    cumulative = [0.0, 0.5, 0.6][best]
    first = next(iter(task.best))
    assert torch.allclose(task.best[first], r.params[first].detach() - (0.6 - cumulative), atol=1e-6)


def test_stemmed_rouge_l_and_the_generation_length(tiny_causal) -> None:
    """ROUGE-L with the Porter stemmer (rouge-score, as the released evaluation): 'cats/were/running' vs
    'cat/runs' -> LCS the, cat, run = 3 of 4 and 3 of 3: F = 6/7; without stemming LCS 1: F = 2/7."""
    assert stemmed_rouge_l()("the cats were running", "the cat runs") == pytest.approx(6 / 7)
    assert rouge_l("the cats were running", "the cat runs") == pytest.approx(2 / 7)
    from aimray.model import ModelConfig, load_backbone

    bb = load_backbone(ModelConfig(name_or_path=tiny_causal, autocast="off", max_prompt_tokens=48))
    examples = [Example("gen", f"say something {i}", "something") for i in range(3)]
    short = evaluate(bb, examples, (), "generate", 4, max_new_tokens=3)
    longer = evaluate(bb, examples, (), "generate", 4, max_new_tokens=12)
    # greedy decoding: the 3-token answers are where the 12-token ones begin
    assert all(b.startswith(a) for a, b in zip(short.predictions, longer.predictions, strict=True))
    assert sum(map(len, longer.predictions)) > sum(map(len, short.predictions))
    stemmed = evaluate(bb, examples, (), "generate", 4, max_new_tokens=3, rouge_stemmer=True)
    assert stemmed.metric == "rouge_l" and 0.0 <= stemmed.value <= 1.0


def reference_olora(tmp_path: Path) -> Path:
    root = tmp_path / "CL_Benchmark"
    for kind, task, labels in [
        ("TC", "dbpedia", ["Company", "Artist", "Village"]),
        ("SC", "amazon", ["negative", "positive"]),
        ("TC", "yahoo", ["Health", "Sports", "Politics"]),
        ("TC", "agnews", ["World", "Sports", "Business"]),
    ]:
        olora_task_dir(root, kind, task, labels, per_label=(8, 3, 3))
    return root


def reference_aim(tmp_path: Path) -> Path:
    root = tmp_path / "aim"
    for task in ("dbpedia", "amazon", "yahoo", "agnews"):
        for split, n in (("train", 8), ("dev", 3), ("test", 3)):
            aim_file(root, split, task, [(cls_input(x), y) for x, y in texts(task, split, ["a", "b", "c"], n)])
    return root


@pytest.mark.parametrize("layout", ["olora", "aimmerging"])
def test_reference_preset_runs_end_to_end_on_a_paper_layout_folder(tiny_causal, tmp_path, layout) -> None:
    data = reference_olora(tmp_path) if layout == "olora" else reference_aim(tmp_path)
    out = tmp_path / "run"
    small = [
        "data.train=12",
        "data.dev=4",
        "data.test=4",
        "train.batch_size=4",
        "train.epochs=2",
        "train.warmup_steps=1",
        "controller.s0=2",
        "controller.m0=2",
        "memory.batch_size=4",
        "checkpoint.best_dev_every=2",
        "checkpoint.best_dev_examples=2",
        "eval.max_new_tokens=4",
        "model.max_prompt_tokens=48",
    ]
    cmd = [sys.executable, "-m", "aimray", "run", "--preset", "reference", "--benchmark", "standard"]
    cmd += ["--model", tiny_causal, "--data-dir", str(data), "--out", str(out), "--workers", "0", *small]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    cfg = config_from_dict(manifest["config"])
    assert manifest["status"] == "success" and cfg.model.name_or_path == tiny_causal
    assert (cfg.controller.warmup_count, cfg.controller.burst_loss_scale) == ("code", 0.25)
    assert (cfg.memory.class_rule, cfg.checkpoint.keep, cfg.eval.rouge_stemmer) == ("literal", "best_dev_loss", True)
    assert cfg.model.autocast == "off" and cfg.model.max_prompt_tokens == 48  # the override over the preset
    assert cfg.eval.mode == "generate" and cfg.eval.max_new_tokens == 4


def test_the_reference_preset_sets_the_released_single_task_runs() -> None:
    """A preset's `methods:` section applies to one method, over the method's defaults and under overrides:
    the reference single_task (FWT's reference) trains at batch 64 and keeps its lowest-loss state on 10% of
    the training set held out; every other method keeps the preset's batch 32."""
    single = make_config("reference", method="single_task")
    assert single.train.batch_size == 64 and single.checkpoint.holdout_fraction == 0.1
    assert single.checkpoint.keep == "best_dev_loss"
    assert make_config("reference", method="aimmerging").train.batch_size == 32
    assert make_config("reference", {"train": {"batch_size": 8}}, method="single_task").train.batch_size == 8


def test_holdout_fraction_takes_validation_out_of_training(tiny_causal, tmp_path) -> None:
    cfg = tiny_config(tiny_causal, "single_task", checkpoint={"keep": "best_dev_loss", "holdout_fraction": 0.25})
    r = set_up(cfg, tmp_path, quiet, LOCAL, None)
    plain = set_up(tiny_config(tiny_causal, "single_task"), tmp_path, quiet, LOCAL, None)
    for d, full, held in zip(r.data, plain.data, r.validation, strict=True):
        assert len(held) == 4 and len(d.train) == 12 and len(full.train) == 16  # 25% of 16
        assert sorted(map(str, d.train + held)) == sorted(map(str, full.train))  # a split of the same examples
        assert any("held out for validation" in n for n in d.notes)
    assert [d.dev for d in plain.data] == plain.validation  # without it, best states are chosen on dev
    again = set_up(cfg, tmp_path, quiet, LOCAL, None)
    assert again.validation == r.validation  # seeded


def test_release_split_keeps_the_overlapping_dev_and_a_sweep_refuses_it(tmp_path) -> None:
    """The public copies' dev equals test for CB: by default dev is rebuilt from train (disjoint from test);
    data.release_split keeps the released dev, says that its scores are test scores, and no sweep takes it."""
    from aimray.launch.tune import load_sweep
    from aimray.tasks.jsondir import json_task
    from aimray.tasks.spec import SplitSizes

    root = tmp_path / "aim"
    test = [(cls_input(x), y) for x, y in texts("cb", "test", ["a", "b", "c"], 5)]
    aim_file(root, "train", "cb", [(cls_input(x), y) for x, y in texts("cb", "train", ["a", "b", "c"], 20)])
    aim_file(root, "dev", "cb", test)
    aim_file(root, "test", "cb", test)
    spec = json_task("cb", root)
    ours = spec.load(SplitSizes(40, 10, 15), 0)
    released = spec.load(SplitSizes(40, 10, 15, release_split=True), 0)
    tests = {ex.text for ex in ours.test}
    assert not tests & {ex.text for ex in ours.dev}
    assert {ex.text for ex in released.dev} <= tests and len(released.dev) == 10
    assert any("dev scores are test scores" in n for n in released.notes)
    with pytest.raises(ValueError, match="release_split=true: that dev overlaps test"):
        load_sweep(ROOT / "sweeps" / "configs" / "smoke.yaml", ["data.release_split=true"], out=str(tmp_path / "s"))
