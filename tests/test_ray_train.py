"""The loop in Ray Train workers on a local Ray (tiny random-init Llama: unit tests only)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from aimray.events import SCHEMAS, read_events
from aimray.loop import run
from tests.test_loop import comparable, quiet, tiny_config

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    from aimray.launch.cluster import ensure_ray

    ensure_ray(num_cpus=2)  # as a run starts it: no dashboard, Ray Train's cleaner kept quiet
    yield
    ray.shutdown()


def test_two_workers_take_the_same_decisions_as_one(local_ray, tiny_causal, tmp_path, s3) -> None:
    from aimray.launch.storage import remote_folder
    from aimray.launch.train import Resources, run_with_ray_train

    # No dropout: the ranks draw their own dropout masks, which would make the two runs differ by chance.
    cfg = tiny_config(tiny_causal, train={"threads": 1}, model={"lora_dropout": 0.0})
    # The 1-worker run keeps a copy in an S3 bucket (moto on loopback), as a sweep's --workers trials do: the
    # credentials ride on the URI, since the workers' processes predate this test's environment.
    uri = f"s3://testing:testing@studies/train{s3[1]}"
    one = run_with_ray_train(cfg, tmp_path / "one", Resources(workers=1, cpus_per_worker=1), remote=(uri, "one"))
    two = run_with_ray_train(cfg, tmp_path / "two", Resources(workers=2, cpus_per_worker=1))
    merges = [read_events(tmp_path / d, "merges").to_pandas() for d in ("one", "two")]
    key = ["task_index", "step", "trigger", "interval", "burst_len"]
    assert len(merges[0]) > 0 and merges[0][key].equals(merges[1][key])
    steps = [read_events(tmp_path / d, "steps").to_pandas() for d in ("one", "two")]
    # Same global batch split in two: sums in another order, so losses agree to float32 rounding.
    assert np.allclose(steps[0].train_loss, steps[1].train_loss, rtol=1e-4, atol=1e-5)
    # Tolerance for the matrix: at most one test example (1/6) may flip on a near tie.
    assert np.nanmax(np.abs(one.test - two.test)) <= 1 / 6 + 1e-9
    assert json.loads((tmp_path / "two" / "manifest.json").read_text())["status"] == "success"
    # rank 0 copied the run folder to the bucket after every task and at the end: the copy is the run
    copy = tmp_path / "copy"
    assert remote_folder(uri, "one").download(copy)
    assert json.loads((copy / "manifest.json").read_text())["status"] == "success"
    for kind in ("steps", "merges", "evals", "costs"):
        assert comparable(copy, kind) == comparable(tmp_path / "one", kind), kind
    assert (copy / "matrix.json").read_text() == (tmp_path / "one" / "matrix.json").read_text()
    # Ray's own logs are linked from the run folder, and stay on the node (the copy skips them)
    assert (tmp_path / "one" / ".ray-logs").is_dir() and not (copy / ".ray-logs").exists()
    # without a dashboard Train's placement-group cleaner cannot reach the State API: it says so quietly
    worker_logs = [p.read_text(errors="replace") for p in (tmp_path / "one" / ".ray-logs").glob("worker-*")]
    assert worker_logs and not any("Failed to query Ray Train Controller" in text for text in worker_logs)


@pytest.mark.parametrize(
    ("at", "sigkill", "extra", "resumed_from"),
    [
        ((2, 0), False, {}, "t01-s000000"),  # an exception right after task 2's checkpoint, before its report
        # the worker process SIGKILLed mid-task 3: mid-task checkpoints reach Train; the retry starts from the
        # last one Train had registered (it takes reports in asynchronously: the kill may beat the newest)
        ((2, 3), True, {"checkpoint": {"every_steps": 3}}, r"t0[12]-s\d{6}"),
    ],
)
def test_ray_train_retries_a_failed_worker_from_the_last_checkpoint(
    local_ray, tiny_causal, tmp_path, at, sigkill, extra, resumed_from
) -> None:
    from aimray.faults import FailOnceAt
    from aimray.launch.train import Resources, run_with_ray_train

    cfg = tiny_config(tiny_causal, **extra)
    whole = run(cfg, tmp_path / "inprocess", log=quiet)
    fail = FailOnceAt(*at, tmp_path / "ray" / ".failed-once", sigkill=sigkill)
    resumed = run_with_ray_train(cfg, tmp_path / "ray", Resources(workers=1, max_failures=1), on_checkpoint=fail)
    assert (tmp_path / "ray" / ".failed-once").exists()
    assert re.fullmatch(resumed_from, json.loads((tmp_path / "ray" / "manifest.json").read_text())["resumed_from"])
    in_train = [json.loads(p.read_text()) for p in (tmp_path / "ray" / "ray").glob("*/checkpoint_*/state.json")]
    assert any(s["task"] is not None for s in in_train) == bool(extra)  # mid-task checkpoints went to Train
    assert np.array_equal(whole.test, resumed.test)
    for kind in SCHEMAS:
        assert comparable(tmp_path / "inprocess", kind) == comparable(tmp_path / "ray", kind), kind
