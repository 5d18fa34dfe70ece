"""The run config: presets validate, the paper preset holds the method's constants, overrides, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from aimray.config import (
    ControllerConfig,
    RunConfig,
    config_from_dict,
    load_preset,
    make_config,
    parse_overrides,
    preset_names,
)
from aimray.methods import METHODS


def test_preset_names():
    assert {"smoke", "demo", "paper", "sweep", "bench", "study", "reference"} <= set(preset_names())


@pytest.mark.parametrize("preset", ["smoke", "demo", "paper", "sweep", "bench", "study", "reference"])
def test_presets_validate(preset):
    cfg = make_config(preset)
    assert isinstance(cfg, RunConfig)
    assert config_from_dict(cfg.to_dict()) == cfg
    assert config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg  # a manifest written as JSON


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_builds(method):
    assert make_config("smoke", method=method).method == method


def test_paper_preset_holds_algorithm_constants():
    cfg = make_config("paper")
    t, m, c, lora = cfg.train, cfg.memory, cfg.controller, cfg.model
    assert (t.lr, t.batch_size, t.warmup_steps, t.grad_clip) == (3e-4, 32, 50, 1.0)
    assert (m.fraction, m.per_task, m.batch_size) == (0.02, None, 32)
    assert (c.s0, c.m0, c.s_min, c.s_max, c.halve_at) == (8, 8, 2, 128, 64)
    assert (c.threshold_factor, c.cold_start, c.early_count, c.forced_multiple) == (2.0, 3, 3, 2.0)
    assert (c.trend, c.new_task_important_s, c.weights, c.outer_lr, c.fs_mode) == ("last", 70, "rule", None, "train")
    assert (c.fixed_s, c.fixed_m, c.importance_beta, c.importance_top) == (8, 4, 0.85, 0.2)
    assert (lora.lora_r, lora.lora_alpha, lora.lora_dropout) == (8, 32, 0.05)
    assert (cfg.data.train, cfg.checkpoint.keep, t.epochs, cfg.eval.mode) == (1000, "last", 10, "generate")


def test_controller_defaults_are_the_paper_constants():
    assert make_config("paper").controller == ControllerConfig()


def test_defaults_without_preset():
    cfg = make_config()
    assert (cfg.method, cfg.benchmark, cfg.order) == ("aimmerging", "offline-standard", 1)


def test_overrides():
    items = [
        "train.lr=1e-3",
        "controller.trend=window",
        "memory.fraction=null",
        "memory.per_task=5",
        "eval.splits=test",
    ]
    overrides = parse_overrides(items)
    # PyYAML (YAML 1.1) reads "1e-3" as a string; the field's type turns it into a float below
    assert overrides == {
        "train": {"lr": "1e-3"},
        "controller": {"trend": "window"},
        "memory": {"fraction": None, "per_task": 5},
        "eval": {"splits": "test"},
    }
    cfg = make_config("paper", overrides)
    assert cfg.train.lr == 1e-3
    assert cfg.train.batch_size == 32  # the rest of the preset is kept
    assert cfg.controller.trend == "window"
    assert (cfg.memory.fraction, cfg.memory.per_task) == (None, 5)
    assert cfg.eval.splits == ("test",)


@pytest.mark.parametrize(
    ("item", "get", "expected"),
    [
        ("eval.splits=test,dev", lambda c: c.eval.splits, ("test", "dev")),
        ("controller.outer_lr=1e-3", lambda c: c.controller.outer_lr, 1e-3),
        ("controller.outer_lr=null", lambda c: c.controller.outer_lr, None),
        ("controller.s0=12", lambda c: c.controller.s0, 12),
        ("controller.s0=12.0", lambda c: c.controller.s0, 12),
        ("train.epochs=2", lambda c: c.train.epochs, 2.0),
        ("eval.base=false", lambda c: c.eval.base, False),
        ("method=replay", lambda c: c.method, "replay"),
        ("order=3", lambda c: c.order, 3),
        ("data_dir=/data/x", lambda c: c.data_dir, "/data/x"),
        ("data.train=64", lambda c: c.data.train, 64),
        ("model.lora_r=4", lambda c: c.model.lora_r, 4),
        ("model.autocast=off", lambda c: c.model.autocast, "off"),  # YAML reads off as false
        ("model.autocast=bf16", lambda c: c.model.autocast, "bf16"),
    ],
)
def test_single_override(item, get, expected):
    value = get(make_config("paper", parse_overrides([item])))
    assert value == expected
    assert type(value) is type(expected)


def test_override_value_may_contain_equals():
    assert parse_overrides(["data_dir=/a=b"]) == {"data_dir": "/a=b"}


def test_override_without_equals_names_the_form():
    with pytest.raises(ValueError, match="key=value") as err:
        parse_overrides(["train.lr"])
    assert "'train.lr'" in str(err.value)


def test_unknown_key_names_it_and_lists_valid():
    with pytest.raises(ValueError) as err:
        make_config("paper", parse_overrides(["train.lrr=1"]))
    msg = str(err.value)
    assert "train.lrr" in msg
    assert "valid:" in msg and "train.lr" in msg and "train.batch_size" in msg


def test_unknown_top_level_key():
    with pytest.raises(ValueError) as err:
        make_config("paper", parse_overrides(["methd=replay"]))
    assert "methd" in str(err.value) and "method" in str(err.value)


def test_unknown_preset_lists_valid():
    with pytest.raises(ValueError, match="paper"):
        load_preset("nope")


@pytest.mark.parametrize(
    ("items", "needles"),
    [
        (["train.batch_size=0"], ["train.batch_size", "0"]),
        (["train.lr=-1"], ["train.lr", "-1"]),
        (["train.epochs=inf"], ["train.epochs", "inf", "finite"]),
        (["train.lr=nan"], ["train.lr", "nan", "finite"]),
        (["controller.s0=inf"], ["controller.s0", "inf", "integer"]),
        (["model.autocast=fast"], ["model.autocast", "fast", "auto, bf16, off"]),
        (["controller.trend=avg"], ["controller.trend", "avg"]),
        (["controller.s_min=200"], ["controller.s_min/s_max", "200"]),
        (["method=nope"], ["method", "nope", "valid", "aimmerging", "seqlora", "replay"]),
        (["order=9"], ["order", "9", "offline-standard"]),
        (["benchmark=nope"], ["nope", "offline-standard"]),
        (["train.batch_size=2.5"], ["train.batch_size", "2.5", "integer"]),
        (["controller.s0=eight"], ["controller.s0", "eight", "integer"]),
        (["train.lr=fast"], ["train.lr", "fast", "number"]),
        (["eval.base=maybe"], ["eval.base", "maybe"]),
        (["eval.splits=valid"], ["eval.splits", "valid"]),
        (["memory.per_task=5"], ["memory.fraction/per_task", "0.02", "5"]),  # both set
        (["memory.fraction=null"], ["memory.fraction/per_task", "None"]),  # neither set
        (["memory.fraction=1.5"], ["memory.fraction", "1.5"]),
        (["train=3"], ["train", "3"]),
        (["method=fixed_interval", "controller.fixed_m=0"], ["controller.fixed_m", "0", "fixed_interval_rule"]),
    ],
)
def test_bad_values_name_field_and_value(items, needles):
    with pytest.raises(ValueError) as err:
        make_config("paper", parse_overrides(items))
    msg = str(err.value)
    for needle in needles:
        assert needle in msg, (needle, msg)


def test_method_top_level_argument_validated():
    with pytest.raises(ValueError, match="valid: .*aimmerging"):
        make_config("smoke", method="nope")


@pytest.mark.parametrize("preset", ["smoke", "paper"])
def test_config_round_trip_with_overrides(preset):
    cfg = make_config(preset, parse_overrides(["controller.trend=window", "eval.splits=test", "method=fixed_interval"]))
    assert config_from_dict(cfg.to_dict()) == cfg


def test_config_is_frozen():
    cfg = make_config("paper")
    with pytest.raises(AttributeError):
        cfg.train.lr = 1.0  # type: ignore[misc]


def test_an_unknown_fusion_rule_fails_where_the_config_is_built():
    """controller.weights names a registry entry (aimray.merging.fusion.FUSIONS, torch-free): an unknown one
    fails in make_config, like an unknown method or benchmark."""
    with pytest.raises(ValueError, match=r"controller.weights='ties' is unknown; valid: rule, fixed, mask"):
        make_config("smoke", parse_overrides(["controller.weights=ties"]))
    assert make_config("smoke", method="fixed_interval").controller.weights == "mask"  # the method's default
    assert (
        make_config("smoke", {"controller": {"weights": "rule"}}, method="fixed_interval").controller.weights == "rule"
    )


def test_reading_a_config_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, aimray.config as c; c.make_config('smoke'); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("space:\n  controller.s0: {int: [2, 8]\n  x: 1\n", r"not valid YAML: line 3, column 3: expected ',' or '\}'"),
        ("- a\n- b\n", "expected a mapping of keys to values, got list"),
        (b"\xff\xfe", "not UTF-8 text"),
    ],
)
def test_a_broken_yaml_file_is_named_with_line_and_column(tmp_path, text, message):
    from aimray.config import read_yaml

    path = tmp_path / "spec.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ValueError, match=message) as err:
        read_yaml(path)
    assert str(err.value).startswith(str(path))
    with pytest.raises(FileNotFoundError, match="missing.yaml: no such file"):
        read_yaml(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    "first", ["aimray.config", "aimray.methods", "aimray.merging.controller", "aimray.merging.fusion"]
)
def test_a_config_and_its_hash_need_no_torch_and_no_import_order(first) -> None:
    """Naming a run folder (config_hash) imports neither torch nor Ray, and the registries import in any order
    (no import circle between config, methods and the merge schedules)."""
    code = (
        f"import {first}, sys\n"
        "from aimray.config import config_hash, make_config\n"
        "print(config_hash(make_config('smoke', method='fixed_interval')))\n"
        "assert 'torch' not in sys.modules and 'ray' not in sys.modules, sorted(sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and len(proc.stdout.strip()) == 8, proc.stderr[-2000:]
