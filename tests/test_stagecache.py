"""The stage cache (aimray.stagecache): task 1 and the untrained adapter's evaluation shared across runs.

A wrong hit is the worst bug a cache can have: these tests change every field that task 1's computation
reads and check the key changes, change fields it does not read and check it stays, and compare a run that
took task 1 from the cache with one that computed it, file by file (timings aside)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from aimray import stagecache
from aimray.config import make_config
from aimray.distributed import LOCAL
from aimray.loop import eval_settings, run, score, set_up, stage_reads
from tests.test_loop import TINY, comparable, quiet, tiny_config

KINDS = ("steps", "merges", "evals", "costs")


def manifest(out) -> dict:
    return json.loads((out / "manifest.json").read_text())


def adapter(out) -> dict:
    folder = out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip()
    return load_file(str(folder / "tensors-adapter.safetensors"))


def test_a_cached_first_task_gives_the_files_an_uncached_run_gives(tiny_causal, tmp_path, monkeypatch) -> None:
    """seqlora fills the cache; aimmerging then takes task 1 and the base evaluation from it, and its events,
    matrix and final adapter equal those of aimmerging computed without the cache."""
    cfg = tiny_config(tiny_causal, "aimmerging")
    run(cfg, tmp_path / "plain", log=quiet)  # AIMRAY_STAGE_CACHE=off (conftest): nothing shared, nothing stored
    assert manifest(tmp_path / "plain")["cache"] == {} and not (tmp_path / "cache").exists()
    monkeypatch.setenv("AIMRAY_STAGE_CACHE", str(tmp_path / "cache"))
    run(tiny_config(tiny_causal, "seqlora"), tmp_path / "filler", log=quiet)
    filled = manifest(tmp_path / "filler")["cache"]
    assert filled["stage"]["hit"] is False
    for counts in (filled["base_evals"], filled["evals"]):  # 4 tasks x 2 splits each, before and after task 1
        assert counts == {"hits": 0, "misses": 8, "seconds_saved": 0.0}
    assert len(list((tmp_path / "cache" / "stages").iterdir())) == 1
    logs = []
    run(cfg, tmp_path / "cached", log=logs.append)
    cache = manifest(tmp_path / "cached")["cache"]
    assert cache["stage"]["hit"] is True and cache["stage"]["key"] == filled["stage"]["key"]
    assert cache["base_evals"]["hits"] == cache["evals"]["hits"] == 8
    assert cache["base_evals"]["misses"] == cache["evals"]["misses"] == 0
    assert any("from the stage cache" in line for line in logs)
    for kind in KINDS:
        assert comparable(tmp_path / "cached", kind) == comparable(tmp_path / "plain", kind), kind
    plain_matrix = json.loads((tmp_path / "plain" / "matrix.json").read_text())
    assert json.loads((tmp_path / "cached" / "matrix.json").read_text()) == plain_matrix
    for k, v in adapter(tmp_path / "plain").items():
        assert torch.equal(v, adapter(tmp_path / "cached")[k]), k
    a, b = manifest(tmp_path / "plain"), manifest(tmp_path / "cached")
    for key in ("config", "tasks", "precision", "status", "shape"):
        assert a[key] == b[key], key
    # a damaged entry is a miss (dropped and computed again), never a wrong answer
    entry = next((tmp_path / "cache" / "stages").iterdir())
    (entry / "tensors-adapter.safetensors").write_bytes(b"broken")
    run(cfg, tmp_path / "again", log=quiet)
    assert manifest(tmp_path / "again")["cache"]["stage"]["hit"] is False
    assert comparable(tmp_path / "again", "steps") == comparable(tmp_path / "plain", "steps")


def first_stage_key(r) -> str:
    stage = r.stages[0]
    identity = stagecache.backbone_identity(r.bb, 1)
    return stagecache.stage_key(identity, stage_reads(r, stage), r.params, r.method.training_set(stage, []))


MATTERS = {  # fields task 1's computation reads: each must change the key
    "seed": {"seed": 1},
    "order 3 (another first task)": {"order": 3},
    "data.train": {"data": {"train": 12}},
    "train.lr": {"train": {"lr": 2e-2}},
    "train.batch_size": {"train": {"batch_size": 8}},
    "train.epochs": {"train": {"epochs": 1}},
    "train.warmup_steps": {"train": {"warmup_steps": 2}},
    "train.grad_clip": {"train": {"grad_clip": 0.5}},
    "train.weight_decay": {"train": {"weight_decay": 0.01}},
    "train.eval_batch_size": {"train": {"eval_batch_size": 4}},
    "train.threads": {"train": {"threads": 2}},  # a thread count can change float sums: never shared
    "model.lora_r": {"model": {"lora_r": 4}},
    "model.lora_alpha": {"model": {"lora_alpha": 16}},
    "model.lora_dropout": {"model": {"lora_dropout": 0.0}},
    "model.lora_targets": {"model": {"lora_targets": ["q_proj"]}},
    "model.max_prompt_tokens": {"model": {"max_prompt_tokens": 40}},
    "model.autocast": {"model": {"autocast": "bf16"}},
    "model.attention": {"model": {"attention": "eager"}},
    "checkpoint.keep": {"checkpoint": {"keep": "best_dev"}},
    "method mtl (joint training set)": {"method": "mtl"},
}
SHARED = {  # fields task 1 does not read: the key must stay
    "controller.s0": {"controller": {"s0": 5}},
    "controller.weights": {"controller": {"weights": "mask"}},
    "memory.per_task": {"memory": {"per_task": 3}},
    "memory.batch_size": {"memory": {"batch_size": 2}},
    "checkpoint.every_steps": {"checkpoint": {"every_steps": 3}},
    "eval.splits": {"eval": {"splits": ["test"]}},
    "order 2 (the same first task, wordnet)": {"order": 2},
    **{f"method {m}": {"method": m} for m in ("seqlora", "replay", "fixed_interval", "single_task", "single_merge")},
}


def configured_key(model: str, tmp_path, change: dict) -> str:
    change = dict(change)
    method = change.pop("method", "aimmerging")
    top = {k: change.pop(k) for k in ("seed", "order") if k in change}
    overrides = {**TINY, "model": {**TINY["model"], "name_or_path": model}}
    for key, value in change.items():
        overrides[key] = {**overrides.get(key, {}), **value}
    cfg = make_config(None, overrides, method=method, benchmark="offline-standard", order=top.get("order", 1))
    cfg = replace(cfg, seed=top.get("seed", cfg.seed))
    return first_stage_key(set_up(cfg, tmp_path, quiet, LOCAL, None))


def test_the_key_changes_with_every_field_task_1_reads_and_only_those(tiny_causal, tmp_path) -> None:
    base = configured_key(tiny_causal, tmp_path, {})
    for name, change in MATTERS.items():
        assert configured_key(tiny_causal, tmp_path, change) != base, f"{name} changes task 1 but not its key"
    for name, change in SHARED.items():
        assert configured_key(tiny_causal, tmp_path, change) == base, f"{name} leaves task 1 alone but changes its key"
    best = {"checkpoint": {"keep": "best_dev"}}
    best_every = {"checkpoint": {"keep": "best_dev", "best_dev_every": 3}}
    assert configured_key(tiny_causal, tmp_path, best) != configured_key(tiny_causal, tmp_path, best_every)
    # another backbone: the same files but one weight changed by 1e-3
    other = tmp_path / "other"
    other.mkdir()
    for f in Path(tiny_causal).iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    weights = load_file(str(other / "model.safetensors"))
    name = next(iter(weights))
    weights[name] = weights[name] + 1e-3
    save_file(weights, str(other / "model.safetensors"), metadata={"format": "pt"})
    assert configured_key(str(other), tmp_path, {}) != base


def test_the_untrained_adapter_scores_as_the_base_model_whatever_its_seed(tiny_causal, stage_cache) -> None:
    """The base row is shared across seeds: with every lora_B zero the adapter adds exactly nothing."""
    values, examples = [], None
    for seed in (0, 1):
        r = set_up(replace(tiny_config(tiny_causal), seed=seed), stage_cache, quiet, LOCAL, None)
        assert stagecache.adapter_id(r.params) == "untrained"
        examples = examples or [d.test for d in r.data[:2]]  # the same examples (a seed also draws the splits)
        values.append([score(r.bb, r.dist, examples[i], eval_settings(r.specs[i], r.cfg)) for i in range(2)])
        r.params[next(k for k in r.params if "lora_B" in k)].data += 1.0
        assert stagecache.adapter_id(r.params) != "untrained"
    assert values[0] == values[1]


def test_a_study_starts_one_run_per_first_task_then_the_ones_that_share_it() -> None:
    """benchmarks/quality.py's order: seed 0 of every method first (one run per distinct first task
    leading, so that the others take task 1 from the cache), then seed 1 of the `first` methods, then
    the rest."""
    from aimray.launch.ablations import priority_order

    methods = ["aimmerging", "aimmerging_no_fs", "fixed_interval", "seqlora"]
    cfgs = [make_config("smoke", method=m, order=o, seed=s) for s in (1, 0) for m in methods for o in (1, 2, 3)]
    ranked = [(c.method, c.order, c.seed) for c in priority_order(cfgs, ["aimmerging", "fixed_interval"])]
    assert sorted(ranked) == sorted((c.method, c.order, c.seed) for c in cfgs)
    # orders 1 and 2 of offline-standard both start with wordnet, order 3 with trec
    assert ranked[:2] == [("aimmerging", 1, 0), ("aimmerging", 3, 0)]
    assert {r[2] for r in ranked[:12]} == {0}
    later = ranked[12:]
    assert {r[0] for r in later[:6]} == {"aimmerging", "fixed_interval"} and later[:2] == [
        ("aimmerging", 1, 1),
        ("aimmerging", 3, 1),
    ]
    assert {r[0] for r in later[6:]} == {"aimmerging_no_fs", "seqlora"}
    # a `last` method runs after every other run, at every seed
    ranked = [(c.method, c.seed) for c in priority_order(cfgs, ["aimmerging"], last=["seqlora"])]
    assert {m for m, _ in ranked[-6:]} == {"seqlora"} and {s for _, s in ranked[-6:]} == {0, 1}


def test_a_run_takes_a_stage_cache_by_its_folder_none_or_the_environment(tmp_path, monkeypatch) -> None:
    from aimray.stagecache import FROM_ENV, StageCache

    assert StageCache.resolve(str(tmp_path)).folder == tmp_path == StageCache.resolve(tmp_path).folder
    assert StageCache.resolve(None) is None and StageCache.resolve(FROM_ENV) is None  # conftest: "off"
    monkeypatch.setenv("AIMRAY_STAGE_CACHE", str(tmp_path / "shared"))
    assert StageCache.resolve(FROM_ENV).folder == tmp_path / "shared"
