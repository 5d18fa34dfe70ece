"""Larger models: gradient accumulation and activation checkpointing take the same steps as one pass (tiny
random-init Llama, fp32, dropout 0: unit tests only), a 16-bit frozen base keeps the adapter in fp32, and the
memory plan."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from aimray import plan
from aimray.checkpoint import Checkpointer, load
from aimray.cli import main as cli
from aimray.config import config_hash, make_config
from aimray.distributed import LOCAL
from aimray.events import read_events
from aimray.faults import KillAt, SimulatedKill
from aimray.loop import run
from aimray.merging import arithmetic
from aimray.model import ModelConfig, load_backbone
from aimray.step import Learner, micro_batches, optimize
from aimray.tasks import TASKS, SplitSizes
from tests.test_loop import quiet, tiny_config

# Batch 16 over 64 examples, 2 epochs: 8 optimizer steps per task, merges from task 2 on; memory batches of 8.
WHOLE = {
    "data": {"train": 64},
    "train": {"batch_size": 16, "epochs": 2},
    "memory": {"per_task": 12, "batch_size": 8},
    "model": {"lora_dropout": 0.0},
}
DECISIONS = ["task_index", "step", "global_step", "phase", "activations", "interval", "burst_len"]
MERGES = ["task_index", "step", "global_step", "trigger", "interval", "burst_len", "activations"]


def config(tiny: str, micro: int | None = None, checkpointing: bool = False, **extra):
    sections = {k: dict(v) for k, v in WHOLE.items()}
    sections["train"]["micro_batch_size"] = micro
    sections["model"]["gradient_checkpointing"] = checkpointing
    for key, value in extra.items():
        sections[key] = {**sections.get(key, {}), **value}
    return tiny_config(tiny, "aimmerging", **sections)


def final_adapter(out) -> dict[str, torch.Tensor]:
    return load(Checkpointer(out / "checkpoints").latest())[1]


def assert_same_run(a, b, result_a, result_b) -> None:
    """Same decisions exactly; losses, thresholds and weights to relative 1e-5, scores, adapters within 1e-5."""
    sa, sb = read_events(a, "steps").to_pandas(), read_events(b, "steps").to_pandas()
    assert sa[DECISIONS].equals(sb[DECISIONS])
    for col in ("train_loss", "memory_loss", "threshold", "lam", "lr"):
        assert np.allclose(sa[col], sb[col], rtol=1e-5, atol=0, equal_nan=True), col
    ma, mb = read_events(a, "merges").to_pandas(), read_events(b, "merges").to_pandas()
    assert len(ma) >= 4 and ma[MERGES].equals(mb[MERGES])
    for col in ("w_in", "w_out", "l1_delta_in", "l1_delta_out", "lam"):
        assert np.allclose(ma[col], mb[col], rtol=1e-5, atol=0, equal_nan=True), col
    assert np.allclose(result_a.test, result_b.test) and np.allclose(result_a.dev, result_b.dev)
    wa, wb = final_adapter(a), final_adapter(b)
    assert all((wa[k] - wb[k]).abs().max() < 1e-5 for k in wa)  # lr 1e-2 over 32 steps: rounding grows


@pytest.fixture(scope="module")
def whole_batch(tiny_causal, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    return out, run(config(tiny_causal), out, log=quiet)


def test_micro_batches_split_in_order() -> None:
    assert micro_batches(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert micro_batches(list(range(4)), None) == [[0, 1, 2, 3]] and micro_batches([], 2) == []


@pytest.mark.parametrize("checkpointing", [False, True], ids=["accumulation", "accumulation+checkpointing"])
def test_accumulated_steps_equal_one_pass(tiny_causal, tmp_path, whole_batch, checkpointing) -> None:
    """Batch 16 in four passes of 4 (memory batches of 8 in two): the run of one pass, step by step."""
    cfg = config(tiny_causal, micro=4, checkpointing=checkpointing)
    assert config_hash(cfg) == config_hash(config(tiny_causal))  # how a step is computed is not the run
    result = run(cfg, tmp_path, log=quiet)
    assert_same_run(whole_batch[0], tmp_path, whole_batch[1], result)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["micro_batch"] == {"size": 4, "source": "config"}


def test_a_resumed_accumulated_run_equals_the_uninterrupted_one(tiny_causal, tmp_path, whole_batch) -> None:
    cfg = config(tiny_causal, micro=8, checkpoint={"every_steps": 2})
    with pytest.raises(SimulatedKill):
        run(cfg, tmp_path, log=quiet, on_checkpoint=KillAt(2, 2))  # mid-task 3
    resumed = run(cfg, tmp_path, log=quiet)
    assert_same_run(whole_batch[0], tmp_path, whole_batch[1], resumed)


def test_checkpointing_keeps_the_gradients_of_a_seq2seq_backbone(tiny_seq2seq) -> None:
    examples = TASKS["amazon"].load(SplitSizes(8, 2, 2), 0).train
    grads = []
    for checkpointing in (False, True):
        cfg = ModelConfig(
            name_or_path=tiny_seq2seq, autocast="off", lora_dropout=0.0, gradient_checkpointing=checkpointing
        )
        bb = load_backbone(cfg, seed=0)
        bb.model.train()
        params = bb.lora_state()
        optimize(Learner(bb, params, LOCAL, 2), examples, torch.optim.SGD(list(params.values()), lr=0.0), clip=1e9)
        grads.append({k: p.grad.clone() for k, p in params.items()})
    assert sum(bool(g.abs().sum() > 0) for g in grads[1].values()) >= 8  # the B matrices (A gets 0 while B is 0)
    assert all(torch.allclose(grads[0][k], grads[1][k], rtol=1e-5, atol=1e-8) for k in grads[0])


def test_a_bfloat16_base_keeps_adapter_optimizer_merges_and_losses_in_fp32(tiny_causal) -> None:
    cfg = ModelConfig(name_or_path=tiny_causal, dtype="bfloat16", autocast="off", lora_dropout=0.0)
    bb = load_backbone(cfg, seed=0)
    params = bb.lora_state()
    frozen = [p for p in bb.model.parameters() if not p.requires_grad]
    assert {p.dtype for p in frozen} == {torch.bfloat16} and {p.dtype for p in params.values()} == {torch.float32}
    examples = TASKS["amazon"].load(SplitSizes(8, 2, 2), 0).train
    optimizer = torch.optim.AdamW(list(params.values()), lr=1e-2)
    before = {k: p.detach().clone() for k, p in params.items()}
    bb.model.train()
    loss = optimize(Learner(bb, params, LOCAL, 4), examples, optimizer, clip=1.0)
    assert isinstance(loss, float) and np.isfinite(loss)
    states = [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor) and t.ndim]
    assert states and {t.dtype for t in states} == {torch.float32}
    delta = arithmetic.difference(params, before)
    assert {t.dtype for t in delta.values()} == {torch.float32} and any(t.abs().sum() > 0 for t in delta.values())


def test_micro_batch_and_checkpointing_errors_name_the_fields() -> None:
    with pytest.raises(ValueError, match=r"train.micro_batch_size=5 does not divide train.batch_size=32"):
        make_config(None, {"train": {"micro_batch_size": 5}})
    with pytest.raises(ValueError, match=r"train.micro_batch_size='many' must be a positive integer, auto or null"):
        make_config(None, {"train": {"micro_batch_size": "many"}})
    with pytest.raises(ValueError, match=r"model.gradient_checkpointing=True cannot be combined with model.compile"):
        make_config(None, {"model": {"gradient_checkpointing": True, "compile": "train"}})
    assert make_config("paper").train.micro_batch_size == "auto"
    assert make_config("reference").train.micro_batch_size == "auto"


def test_auto_micro_batch_on_a_cpu_follows_the_plan_and_is_recorded(tiny_causal, tmp_path) -> None:
    cfg = config(tiny_causal, micro="auto", data={"train": 16}, train={"batch_size": 16, "epochs": 1})
    run(cfg, tmp_path, log=quiet)
    record = json.loads((tmp_path / "manifest.json").read_text())["micro_batch"]
    assert record["size"] == 16 and record["source"] == "plan" and record["predicted_peak"] > 0


# ------------------------------------------------------------------------------------------------- the plan


def test_the_plan_counts_the_published_shapes() -> None:
    cfg = make_config("paper", {"model": {"dtype": "bfloat16"}})
    sizes = {}
    for name, params in (("t5-large", 737.7e6), ("llama-2-7b", 6738e6), ("llama-2-13b", 13016e6)):
        arch = plan.read_arch(name)
        assert abs(arch.params - params) / params < 0.002
        sizes[name] = plan.make_plan(cfg, "cuda", 80 * plan.GiB, arch)
    assert sizes["llama-2-7b"].adapter == 32 * 2 * 8 * (4096 + 4096)  # r 8 on q and v of 32 layers
    for p in sizes.values():  # more micro-batch, more memory; checkpointing keeps less
        acts = [p.activations[m] for m in sorted(p.activations)]
        assert acts == sorted(acts) and all(p.activations_other[m] < p.activations[m] for m in p.activations)
    assert sizes["t5-large"].micro == 32 and 1 <= sizes["llama-2-13b"].micro < sizes["llama-2-7b"].micro
    assert plan.make_plan(cfg, "cuda", 16 * plan.GiB, plan.read_arch("llama-2-13b")).micro is None  # 24 GiB of weights


def test_plan_cli_prints_the_plan_and_a_micro_batch(capsys) -> None:
    assert cli(["plan", "--preset", "paper", "--memory", "80GiB"]) == 0
    out = capsys.readouterr().out
    assert "memory plan: smollm2" in out and "fits: micro-batch 32" in out and "frozen weights" in out
    assert cli(["plan", "--preset", "paper", "--model", "llama-2-13b", "--memory", "40GiB", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["micro"] is None


def test_plan_errors_name_the_model_and_the_size(tmp_path, capsys) -> None:
    assert cli(["plan", "--model", str(tmp_path)]) == 2
    assert f"model {str(tmp_path)!r}: no configuration readable here" in capsys.readouterr().err
    assert cli(["plan", "--memory", "lots"]) == 2
    assert "--memory='lots': expected a size" in capsys.readouterr().err
    assert plan.parse_bytes("80GiB") == 80 * plan.GiB and plan.parse_bytes("512 MB") == 512 * 2**20
