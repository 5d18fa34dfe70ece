"""Checkpoints: safetensors + JSON only (no pickle is ever loaded), checked by sha256, falling back to the
previous complete one, one writer per run folder."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch

from aimray.checkpoint import Checkpointer, CheckpointError, join_tensors, split_tensors
from aimray.events import SCHEMAS
from aimray.faults import KillAt, SimulatedKill
from aimray.files import FolderInUseError, locked
from aimray.loop import linear_schedule, run
from tests.test_loop import comparable, quiet, tiny_config


def trained_optimizers() -> tuple[torch.nn.Parameter, torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(3, 4))
    opt = torch.optim.AdamW([w], lr=1e-2, weight_decay=0.1)
    sched = linear_schedule(opt, 2, 10)
    for _ in range(3):
        w.grad = None
        (w**2).sum().backward()
        opt.step()
        sched.step()
    return w, opt, sched


def test_optimizer_state_round_trips_through_safetensors_and_json(tmp_path) -> None:
    w, opt, sched = trained_optimizers()
    ckpt = Checkpointer(tmp_path)
    path = ckpt.save(
        "t00-s000003", {"adapter": {"w": w.detach()}}, {"opt": opt.state_dict(), "lr": sched.state_dict()}, {}
    )
    names = sorted(p.name for p in path.iterdir())
    assert names == ["optim.json", "optim.safetensors", "state.json", "tensors-adapter.safetensors"]
    _, objects, _ = Checkpointer.load(path)
    w2 = torch.nn.Parameter(w.detach().clone())
    opt2 = torch.optim.AdamW([w2], lr=1e-2, weight_decay=0.1)
    sched2 = linear_schedule(opt2, 2, 10)
    opt2.load_state_dict(objects["opt"])
    sched2.load_state_dict(objects["lr"])
    assert list(objects["opt"]["state"]) == [0]  # int parameter ids stay ints (a str key would be dropped)
    for param, optimizer, schedule in ((w, opt, sched), (w2, opt2, sched2)):  # one more step each
        param.grad = None
        (param**2).sum().backward()
        optimizer.step()
        schedule.step()
    assert torch.equal(w, w2) and sched.get_last_lr() == sched2.get_last_lr()


def test_split_and_join_are_inverse_and_refuse_other_objects() -> None:
    state = {"a": [1, 2.5, None, "x", True], 3: {"t": torch.arange(4)}, "__items__": torch.ones(2)}
    tensors: dict = {}
    skeleton = split_tensors(state, tensors)
    back = join_tensors(json.loads(json.dumps(skeleton)), tensors)
    assert back["a"] == state["a"] and torch.equal(back[3]["t"], state[3]["t"]) and 3 in back
    assert torch.equal(back["__items__"], state["__items__"])
    with pytest.raises(TypeError, match=r"state\.x: object"):
        split_tensors({"x": object()}, {})


class Payload:
    """A pickle that runs code when it is loaded: writes a file."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_a_checkpoint_carrying_a_pickle_is_refused_and_never_unpickled(tmp_path) -> None:
    ckpt = Checkpointer(tmp_path / "checkpoints")
    path = ckpt.save("t01-s000000", {"adapter": {"w": torch.zeros(2)}}, {}, {})
    target = tmp_path / "pwned"
    (path / "torch.pt").write_bytes(pickle.dumps(Payload(str(target))))
    with pytest.raises(CheckpointError, match="torch.pt.*pickle"):
        Checkpointer.load(path)
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        ckpt.latest()
    assert not target.exists()


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path) -> None:
    warnings: list[str] = []
    ckpt = Checkpointer(tmp_path, warn=warnings.append)
    first = ckpt.save("t01-s000000", {"adapter": {"w": torch.zeros(8)}}, {}, {"n": 1})
    second = ckpt.save("t02-s000000", {"adapter": {"w": torch.ones(8)}}, {}, {"n": 2})
    assert ckpt.latest() == second and not warnings
    data = (second / "tensors-adapter.safetensors").read_bytes()
    (second / "tensors-adapter.safetensors").write_bytes(data[:-5])  # truncated
    assert ckpt.latest() == first
    assert "t02-s000000" in warnings[0] and "sha256" in warnings[0]
    (first / "state.json").unlink()
    with pytest.raises(CheckpointError, match="no complete checkpoint.*state.json is missing"):
        ckpt.latest()


def test_resume_after_the_latest_checkpoint_was_corrupted_still_reproduces_the_run(tiny_causal, tmp_path) -> None:
    cfg = tiny_config(tiny_causal, "seqlora")
    whole = run(cfg, tmp_path / "whole", log=quiet)
    with pytest.raises(SimulatedKill):
        run(cfg, tmp_path / "split", log=quiet, on_checkpoint=KillAt(3, 0))
    newest = tmp_path / "split" / "checkpoints" / "t03-s000000"
    (newest / "state.json").write_text("{")  # garbled: resume goes back to the end of task 2
    logged: list[str] = []
    resumed = run(cfg, tmp_path / "split", log=logged.append)
    assert any("skipping t03-s000000" in line for line in logged)
    assert any("resuming from checkpoint t02-s000000" in line for line in logged)
    assert np.array_equal(whole.test, resumed.test)
    for kind in SCHEMAS:
        assert comparable(tmp_path / "whole", kind) == comparable(tmp_path / "split", kind), kind


def test_one_writer_per_run_folder(tiny_causal, tmp_path) -> None:
    out = tmp_path / "run"
    busy = pytest.raises(FolderInUseError, match=f"in use by another process \\(pid {os.getpid()}\\)")
    with locked(out / ".lock"), busy:  # another run holds the folder (flock conflicts across open files)
        run(tiny_config(tiny_causal, "seqlora"), out, log=quiet)
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing else written


def test_bad_input_found_while_loading_leaves_no_run_folder(tiny_causal, tmp_path) -> None:
    from tests.test_jsondir import olora_task_dir

    root = tmp_path / "data"
    for kind, name in (("TC", "dbpedia"), ("SC", "amazon"), ("TC", "yahoo")):
        olora_task_dir(root, kind, name, ["World", "Sports"])
    task = olora_task_dir(root, "TC", "agnews", ["World", "Sports"])
    (task / "test.json").write_bytes(b"\xff\xfe not json")  # the last task of the order: found only by loading
    cfg = tiny_config(tiny_causal, "seqlora")
    cfg = type(cfg)(**{**cfg.__dict__, "benchmark": "standard", "data_dir": str(root)})
    with pytest.raises(ValueError, match="test.json: not UTF-8 text"):
        run(cfg, tmp_path / "run", log=quiet)
    assert not (tmp_path / "run").exists()
    # The launchers called directly (not through a CLI) check the data before a folder or Ray exists too.
    import ray

    from aimray.launch.train import run_with_ray_train

    with pytest.raises(ValueError, match="test.json: not UTF-8 text"):
        run_with_ray_train(cfg, tmp_path / "ray-run")
    assert not (tmp_path / "ray-run").exists() and not ray.is_initialized()
