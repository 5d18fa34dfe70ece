"""The continual loop on a tiny random-init Llama (unit tests only) and real packaged data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from aimray.config import make_config
from aimray.events import SCHEMAS, TIMINGS, read_events
from aimray.faults import KillAt, SimulatedKill
from aimray.loop import batch_for_step, progress_line, run
from aimray.merging import arithmetic, signals
from aimray.methods import METHODS, Stage
from aimray.tasks.spec import Example

TINY = {
    "data": {"train": 16, "dev": 4, "test": 6},
    "train": {"batch_size": 4, "epochs": 2, "warmup_steps": 1, "lr": 1e-2, "eval_batch_size": 8, "threads": 1},
    "memory": {"fraction": None, "per_task": 6, "batch_size": 4},
    "controller": {"s0": 2, "m0": 1, "fixed_s": 2, "fixed_m": 1},
    # fp32 (no bf16 autocast): these tests compare runs exactly; the real-model tests use the default.
    "model": {"max_prompt_tokens": 48, "autocast": "off"},
}


def tiny_config(model_path: str, method: str = "aimmerging", order: int = 1, **extra):
    overrides = {**TINY, "model": {**TINY["model"], "name_or_path": model_path}}
    for key, value in extra.items():
        overrides[key] = {**overrides.get(key, {}), **value}
    return make_config(None, overrides, method=method, benchmark="offline-standard", order=order)


def quiet(_: str) -> None:
    pass


def comparable(out, kind: str) -> list[dict]:
    rows = read_events(out, kind).to_pylist()
    for r in rows:
        for key in TIMINGS:
            r.pop(key, None)
        for k, v in r.items():
            if isinstance(v, float) and v != v:
                r[k] = "nan"  # NaN != NaN: compare it as a value (mask fusion logs no scalar weights)
    return rows


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_runs_through_the_loop(tiny_causal, tmp_path, method) -> None:
    result = run(tiny_config(tiny_causal, method), tmp_path, log=quiet)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["status"] == "success" and manifest["method"] == method
    assert manifest["provenance"]["versions"]["torch"] and "commit" in manifest["provenance"]["git"]
    stages = 1 if method == "mtl" else 4
    assert result.test.shape == (stages, 4)
    assert len(read_events(tmp_path, "costs")) == stages
    steps = read_events(tmp_path, "steps").to_pylist()
    inner = sum(r["phase"] == "inner" for r in steps)
    if method == "replay":  # memory examples join each later task's training set: more steps
        costs = read_events(tmp_path, "costs").to_pandas()
        assert inner > 32 and costs.replay_examples.iloc[0] == 0 and (costs.replay_examples.iloc[1:] > 0).all()
    else:
        assert inner == 32
    merges = read_events(tmp_path, "merges").to_pylist()
    if METHODS[method].schedule == "none":
        assert not merges and "op" in result.metrics
    else:
        assert merges, "a merging method merged nothing"
        assert all(m["task_index"] >= 1 for m in merges)  # task 1 has no memory, no merges
    if method == "single_merge":
        assert [m["trigger"] for m in merges] == ["task_end"] * 3
    if method.startswith("fixed_interval"):  # every fixed_s steps; masks element-wise, or the rule at S = fixed_s
        assert {m["trigger"] for m in merges} == {"fixed"}
        weights = {(m["w_in"], m["w_out"]) for m in merges}
        assert weights == {(0.6, 0.4)} if method == "fixed_interval_rule" else all(np.isnan(w).all() for w in weights)
    if method == "single_task":
        assert np.isnan(result.test[0, 1]) and not np.isnan(np.diag(result.test)).any()
    assert json.loads((tmp_path / "matrix.json").read_text())["tasks"] == ["wordnet", "amazon", "trec", "bbc"]


def test_aimmerging_events_follow_the_controller(tiny_causal, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("AIMRAY_PROGRESS_S", "0")  # a progress line after every step but a task's last
    lines: list[str] = []
    run(tiny_config(tiny_causal), tmp_path, log=lines.append)
    steps = read_events(tmp_path, "steps").to_pandas()
    inner = steps[steps.phase == "inner"]
    assert inner[inner.task_index == 0].memory_loss.isna().all()  # no memory while training task 1
    assert inner[inner.task_index > 0].memory_loss.notna().all()
    merges = read_events(tmp_path, "merges").to_pandas()
    assert set(merges.trigger) <= {"normal", "early", "forced"}
    assert (merges.burst_len == 1).all() and (merges.l1_delta_in > 0).all()
    # The burst uses the inner optimizer at the schedule's current lr (released code): at a task's last step the
    # linear decay has reached 0 and the burst moves nothing. With a separate outer optimizer it always moves.
    assert (merges.l1_delta_out > 0).any()
    for m in merges.itertuples():  # the fusion weights are the rule's, at the merge's own state; lam = |delta_in| / S
        assert (m.w_in, m.w_out) == signals.rule_weights(m.activations, m.interval, 70)
        assert m.lam == pytest.approx(m.l1_delta_in / m.interval, rel=1e-6)
    bursts = steps[steps.phase == "burst"]
    assert len(bursts) == len(merges)  # M = 1 rehearsal step per merge
    assert steps.global_step.tolist() == list(range(len(steps)))
    costs = read_events(tmp_path, "costs").to_pandas()
    assert costs.burst_examples.sum() == 4 * len(merges) and costs.merges.sum() == len(merges)
    assert (costs.monitor_examples[1:] == 8 * 4).all()  # one memory batch of 4 per step, 8 steps
    assert (costs.cpu_seconds > 0).all() and costs.cpu_seconds.notna().all()  # processor time, on the CPU
    evals = read_events(tmp_path, "evals").to_pandas()
    assert sorted(evals.after_index.unique()) == [0, 1, 2, 3, 4] and set(evals.split) == {"test", "dev"}
    progress = [line for line in lines if ": step " in line]
    assert len(progress) == 4 * 7  # 8 steps per task
    for task_index, name in enumerate(["wordnet", "amazon", "trec", "bbc"]):
        for step in range(1, 8):  # the merges the line counts are those before the step
            before = int(((merges.task_index == task_index) & (merges.step < step)).sum())
            line = progress[task_index * 7 + step - 1]
            assert line.startswith(f"[run] task {task_index + 1}/4 ({name}): step {step}/8, {before} merge")
            assert line.endswith("of training left")


def test_progress_lines() -> None:
    stage = Stage(index=1, name="amazon", train=[], eval_tasks=[], seen=[0, 1])
    line = progress_line(stage, 4, step=40, total=96, merges=1, elapsed=50.0, first=0)
    assert line == "[run] task 2/4 (amazon): step 40/96, 1 merge, about 1 min 10 s of training left"
    resumed = progress_line(stage, 4, step=40, total=96, merges=3, elapsed=20.0, first=30)  # 2 s per step
    assert resumed.endswith("step 40/96, 3 merges, about 1 min 52 s of training left")


def test_outer_optimizer_option(tiny_causal, tmp_path) -> None:
    run(tiny_config(tiny_causal, controller={"outer_lr": 1e-2}), tmp_path, log=quiet)
    merges = read_events(tmp_path, "merges").to_pandas()
    assert len(merges) and (merges.l1_delta_out > 0).all()
    bursts = read_events(tmp_path, "steps").to_pandas().query("phase == 'burst'")
    assert (bursts.lr == 1e-2).all()


def test_no_burst_and_fixed_weights_ablations(tiny_causal, tmp_path) -> None:
    run(tiny_config(tiny_causal, "aimmerging_no_burst"), tmp_path / "nb", log=quiet)
    merges = read_events(tmp_path / "nb", "merges").to_pandas()
    assert (merges.l1_delta_out == 0).all() and (merges.burst_len == 0).all()
    run(tiny_config(tiny_causal, "aimmerging_fixed_weights"), tmp_path / "fw", log=quiet)
    merges = read_events(tmp_path / "fw", "merges").to_pandas()
    assert (merges.w_in == 0.5).all() and (merges.w_out == 0.5).all()


@pytest.mark.parametrize(
    ("method", "stop", "extra"),
    [
        ("aimmerging", (2, 0), {}),  # killed right after task 2's checkpoint
        ("aimmerging", (2, 3), {"checkpoint": {"every_steps": 3}}),  # killed mid-task 3, after its step-3 checkpoint
        # mid-task state beyond the adapter: importance estimates (masks), and the burst's own optimizer with
        # the best-dev adapter so far
        ("fixed_interval", (2, 3), {"checkpoint": {"every_steps": 3}}),
        (
            "aimmerging",
            (2, 3),
            {
                "checkpoint": {"every_steps": 3, "keep": "best_dev", "best_dev_every": 2},
                "controller": {"outer_lr": 1e-2},
            },
        ),
    ],
)
def test_resume_reproduces_the_uninterrupted_run(tiny_causal, tmp_path, method, stop, extra) -> None:
    cfg = tiny_config(tiny_causal, method, **extra)
    whole = run(cfg, tmp_path / "whole", log=quiet)
    with pytest.raises(SimulatedKill):
        run(cfg, tmp_path / "split", log=quiet, on_checkpoint=KillAt(*stop))
    assert json.loads((tmp_path / "split" / "manifest.json").read_text())["status"] == "running"
    resumed = run(cfg, tmp_path / "split", log=quiet)
    assert np.array_equal(whole.test, resumed.test) and np.array_equal(whole.dev, resumed.dev)
    for kind in SCHEMAS:
        assert comparable(tmp_path / "whole", kind) == comparable(tmp_path / "split", kind), kind
    manifest = json.loads((tmp_path / "split" / "manifest.json").read_text())
    assert manifest["status"] == "success" and manifest["resumed_from"]


def test_interval_and_burst_adapt_inside_the_loop(tiny_causal, tmp_path) -> None:
    """cold_start 0, 16 steps per task: a task's second merge moves S (a falling Lambda grows it, as the
    controller's unit tests spell out), the steps after it run with the new S, and every burst is
    int(S x M0 / S0) logged steps long."""
    cfg = tiny_config(tiny_causal, controller={"cold_start": 0, "s0": 2, "m0": 2}, train={"epochs": 4})
    run(cfg, tmp_path, log=quiet)
    merges = read_events(tmp_path, "merges").to_pandas()
    steps = read_events(tmp_path, "steps").to_pandas()
    inner = steps[steps.phase == "inner"]
    for task, group in merges.groupby("task_index"):
        lams = group.lam.tolist()
        after = inner[(inner.task_index == task) & (inner.step > group.step.iloc[1])]
        want = signals.next_interval(2, lams[1], lams[:1], cold_start=0, s_min=2, s_max=128, halve_at=64)
        assert len(lams) >= 2 and (after.interval == want).all() and want != 2, (task, lams, want)
    assert (merges.burst_len == [signals.burst_length(s, 2, 2) for s in merges.interval]).all()
    bursts = steps[steps.phase == "burst"]
    assert len(bursts) == merges.burst_len.sum()
    assert (bursts.burst_len.values == np.repeat(merges.burst_len.values, merges.burst_len.values)).all()


def test_a_fresh_start_clears_events_of_an_attempt_without_checkpoints(tiny_causal, tmp_path) -> None:
    """A run folder whose checkpoints are gone (e.g. a fresh clone: they are never committed) starts over
    without mixing the earlier attempt's event parts into the new ones."""
    import shutil

    cfg = tiny_config(tiny_causal, "seqlora")
    with pytest.raises(SimulatedKill):
        run(cfg, tmp_path / "clean", log=quiet, on_checkpoint=KillAt(1, 0))
    with pytest.raises(SimulatedKill):
        run(cfg, tmp_path / "again", log=quiet, on_checkpoint=KillAt(3, 0))
    shutil.rmtree(tmp_path / "again" / "checkpoints")
    with pytest.raises(SimulatedKill):
        run(cfg, tmp_path / "again", log=quiet, on_checkpoint=KillAt(1, 0))
    for kind in SCHEMAS:
        assert comparable(tmp_path / "clean", kind) == comparable(tmp_path / "again", kind), kind


def test_resume_refuses_another_config(tiny_causal, tmp_path) -> None:
    run(tiny_config(tiny_causal, "seqlora"), tmp_path, log=quiet)
    with pytest.raises(ValueError, match="different run or config"):
        run(tiny_config(tiny_causal, "replay"), tmp_path, log=quiet)


def test_resume_refuses_events_behind_the_checkpoint(tiny_causal, tmp_path) -> None:
    """A run folder whose event parts stop before what its checkpoint follows (an older copy mirrored over a
    newer run) fails at once naming the folder and the parts, instead of resuming with a hole."""
    cfg = tiny_config(tiny_causal, "seqlora")
    run(cfg, tmp_path, log=quiet)
    (tmp_path / "events" / "evals" / "part-00001.parquet").unlink()
    with pytest.raises(ValueError, match=r"follows \d+ event parts, but events/evals/part-00001 are missing"):
        run(cfg, tmp_path, log=quiet)


def test_failed_run_is_marked_failed(tiny_causal, tmp_path, monkeypatch) -> None:
    import aimray.loop

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(aimray.loop, "train_stage", boom)
    with pytest.raises(RuntimeError):
        run(tiny_config(tiny_causal), tmp_path, log=quiet)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "disk full" in manifest["error"]


def test_a_stopped_run_is_marked_stopped_and_resumes(tiny_causal, tmp_path, monkeypatch) -> None:
    """KeyboardInterrupt / SystemExit (Ctrl-C, a Tune scheduler) -> status "stopped", not "failed"; the
    checkpoints written so far are the last two, `latest` naming the newest, nothing half-written."""
    import aimray.loop

    real, calls = aimray.loop.train_stage, []

    def stop_at_task_4(ctx, stage, *args, **kwargs):
        calls.append(stage.index)
        if stage.index == 3:
            raise KeyboardInterrupt
        return real(ctx, stage, *args, **kwargs)

    monkeypatch.setattr(aimray.loop, "train_stage", stop_at_task_4)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_config(tiny_causal, "seqlora"), tmp_path, log=quiet)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["status"] == "stopped" and "KeyboardInterrupt" in manifest["error"] and calls == [0, 1, 2, 3]
    folders = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir())
    assert len(folders) == 2 and (tmp_path / "checkpoints" / "latest").read_text() == folders[-1]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    monkeypatch.setattr(aimray.loop, "train_stage", real)  # the same command again finishes the run
    assert run(tiny_config(tiny_causal, "seqlora"), tmp_path, log=quiet).test.shape == (4, 4)


def test_best_dev_checkpoint_option(tiny_causal, tmp_path) -> None:
    cfg = tiny_config(tiny_causal, "seqlora", checkpoint={"keep": "best_dev", "best_dev_every": 2})
    result = run(cfg, tmp_path, log=quiet)
    assert result.test.shape == (4, 4)
    costs = read_events(tmp_path, "costs").to_pandas()
    assert (costs.eval_examples > 4 * 10).all()  # the best-dev checks read dev examples
    # Training through task 1 is the same as keep=last's; the kept adapter is the best of the candidates the
    # last state is one of, so task 1's dev score after it is at least the last state's.
    last = run(tiny_config(tiny_causal, "seqlora"), tmp_path / "last", log=quiet)
    assert result.dev[0, 0] >= last.dev[0, 0]
    assert comparable(tmp_path, "steps")[:8] == comparable(tmp_path / "last", "steps")[:8]


def test_batches_are_a_pure_function_of_seed_and_step() -> None:
    examples = [Example("t", str(i), "a") for i in range(10)]
    epoch = [batch_for_step(examples, s, 4, "x") for s in range(3)]
    assert sorted(e.text for b in epoch for e in b) == sorted(e.text for e in examples)
    assert [len(b) for b in epoch] == [4, 4, 2]
    assert batch_for_step(examples, 1, 4, "x") == epoch[1]
    assert batch_for_step(examples, 3, 4, "x") != epoch[0]  # a new shuffle in the second epoch


def test_a_finished_run_is_not_run_or_rewritten_again(tiny_causal, tmp_path) -> None:
    cfg = tiny_config(tiny_causal, "seqlora")
    first = run(cfg, tmp_path, log=quiet)
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    again = run(cfg, tmp_path, log=quiet)
    assert np.array_equal(first.test, again.test)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == stamps


def test_generation_scoring_changes_the_scores_not_the_training(tiny_causal, tmp_path) -> None:
    """eval.mode=generate (the paper preset's exact match) is plumbed through the loop: training is identical
    to label scoring, every score is a fraction of the 6 test examples, and the modes disagree somewhere."""
    evals = {"splits": ["test"], "base": True}
    scored = run(tiny_config(tiny_causal, "seqlora", eval=evals), tmp_path / "score", log=quiet)
    generated = run(
        tiny_config(tiny_causal, "seqlora", eval={**evals, "mode": "generate"}), tmp_path / "gen", log=quiet
    )
    assert comparable(tmp_path / "score", "steps") == comparable(tmp_path / "gen", "steps")
    values = np.concatenate([generated.test.ravel(), generated.base_test])
    assert np.allclose(values * 6, np.round(values * 6)) and ((values >= 0) & (values <= 1)).all()
    both = [np.vstack([r.base_test, r.test]) for r in (scored, generated)]
    assert not np.array_equal(*both)


def test_single_task_scores_do_not_depend_on_the_order(tiny_causal, tmp_path) -> None:
    """single_task starts every task from the same initial adapter: a task's score is the same whichever
    position it has in the order (dropout off, so nothing depends on the global step)."""
    diagonals = []
    for order in (1, 2):
        cfg = tiny_config(tiny_causal, "single_task", model={"lora_dropout": 0.0}, order=order)
        result = run(cfg, tmp_path / f"o{order}", log=quiet)
        diagonals.append(dict(zip(result.tasks, np.diag(result.test), strict=True)))
    assert diagonals[0] == diagonals[1] and list(diagonals[0]) != list(diagonals[1])


def test_a_merge_installs_the_fused_adapter_as_the_new_anchor(tiny_causal, tmp_path, monkeypatch) -> None:
    """Right after every fusion the adapter the loop trains on is exactly the fused one, w_in x delta_in +
    w_out x delta_out over the anchor (checked where the loop snapshots it as the next anchor)."""
    import aimray.loop as loop

    fused_results, checked = [], []
    real_fuse, real_snapshot = arithmetic.fuse, loop.snapshot

    def fuse(anchor, delta_in, delta_out, w_in, w_out):
        out = real_fuse(anchor, delta_in, delta_out, w_in, w_out)
        want = {k: anchor[k] + w_in * delta_in[k] + w_out * delta_out[k] for k in anchor}
        assert all(torch.allclose(out[k], want[k]) for k in anchor)
        fused_results.append({k: v.clone() for k, v in out.items()})
        return out

    def snapshot(params):
        if len(fused_results) > len(checked):  # the snapshot that follows a fusion
            checked.append(all(torch.equal(params[k], fused_results[-1][k]) for k in params))
        return real_snapshot(params)

    monkeypatch.setattr(arithmetic, "fuse", fuse)  # the fusion rules call it
    monkeypatch.setattr(loop, "snapshot", snapshot)
    run(tiny_config(tiny_causal), tmp_path, log=quiet)
    merges = read_events(tmp_path, "merges")
    assert len(fused_results) == len(merges) >= 3 and checked == [True] * len(merges)


def test_compiled_training_steps_match_eager_ones(tiny_causal, tmp_path) -> None:
    """model.compile=train: the layers' training forward and backward through torch.compile (evaluation
    eager); without dropout the run takes the eager run's decisions, with losses equal to float rounding."""
    extra = {"model": {"lora_dropout": 0.0}, "data": {"train": 8}}
    eager = run(tiny_config(tiny_causal, **extra), tmp_path / "eager", log=quiet)
    extra["model"] = {**extra["model"], "compile": "train"}
    compiled = run(tiny_config(tiny_causal, **extra), tmp_path / "compiled", log=quiet)
    steps = [read_events(tmp_path / d, "steps").to_pandas() for d in ("eager", "compiled")]
    assert len(steps[0]) == len(steps[1]) and (steps[0].phase == steps[1].phase).all()
    assert np.allclose(steps[0].train_loss, steps[1].train_loss, rtol=1e-4, atol=1e-5)
    merges = [read_events(tmp_path / d, "merges").to_pandas() for d in ("eager", "compiled")]
    key = ["task_index", "step", "trigger", "interval", "burst_len"]
    assert len(merges[0]) > 0 and merges[0][key].equals(merges[1][key])
    assert np.nanmax(np.abs(eager.test - compiled.test)) <= 1 / 6 + 1e-9  # at most one near-tie example flips
    # the compiled code went to inductor's on-disk cache ($AIMRAY_HOME/inductor unless the user set one)
    assert list(Path(os.environ["TORCHINDUCTOR_CACHE_DIR"]).iterdir())
