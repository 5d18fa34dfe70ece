"""Ray Train: a TorchTrainer whose workers run the continual loop, data-parallel over N workers.

Every worker runs `aimray.loop.run` with a `Dist` over Train's process group (gloo on CPU, nccl on GPU):
batches are sharded, gradients and signals summed, so every rank takes the same controller decisions.
Rank 0 writes the run folder and reports each task-end checkpoint through `ray.train.Checkpoint`; a worker
failure is retried (FailureConfig) from the last reported checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import ray
import ray.train
import torch
from ray.train import Checkpoint, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from aimray import plugins
from aimray.checkpoint import Checkpointer, checkpoint_name
from aimray.config import RunConfig as AimRunConfig
from aimray.config import config_from_dict
from aimray.distributed import Dist
from aimray.launch.cluster import ensure_ray, link_ray_logs
from aimray.launch.stop import RayStop, StopFlag, asking, flag_name
from aimray.launch.storage import remote_folder
from aimray.loop import OnCheckpoint, check_inputs, run
from aimray.manifest import status_of
from aimray.objective import ObjectiveTracker
from aimray.results import RunResult, collect
from aimray.stopping import STOP, Stop, StopRequested


@dataclass(frozen=True)
class Resources:
    """How a run is laid out on Ray: `workers` data-parallel ranks with these resources each."""

    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_failures: int = 1

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers={self.workers} must be >= 1 for Ray Train (0 runs in-process)")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"cpus_per_worker={self.cpus_per_worker} must be > 0")
        if self.gpus_per_worker < 0:
            raise ValueError(f"gpus_per_worker={self.gpus_per_worker} must be >= 0")


def flat_metrics(row: dict) -> dict:
    """The per-task report as flat metrics: stage, task, <task>/<split> scores, cost counters."""
    metrics = {"stage": row["stage"], "task": row["task"]}
    metrics.update({f"{task}/{split}": value for (task, split), value in row["scores"].items()})
    metrics.update({f"cost/{k}": v for k, v in row["costs"].items()})
    return metrics


def log(msg: str) -> None:
    """Progress lines straight to stdout (Ray forwards them once; Train's patched print would repeat them)."""
    sys.stdout.write(msg + "\n")
    sys.stdout.flush()


def quiet_train_logs() -> None:
    """Ray Train logs every report and checkpoint at INFO on each worker (one 600-character
    `TrainingReport(...)` line per task and another per checkpoint): those go to Ray's log files only,
    unless AIMRAY_RAY_LOG_LEVEL=INFO asks for them on the terminal."""
    level = getattr(logging, os.environ.get("AIMRAY_RAY_LOG_LEVEL", "WARNING").upper(), logging.WARNING)
    logging.getLogger("ray.train").setLevel(level)
    with contextlib.suppress(ImportError, AttributeError):  # Train V2's reporting logger is named by its file
        from ray.train.v2._internal.execution import context

        context.logger.setLevel(level)


def train_worker(config: dict) -> None:
    """The function every Ray Train worker runs."""
    quiet_train_logs()
    plugins.load(config["plugins"], env=False)  # what registered the config's method, tasks, ... in the driver
    cfg = config_from_dict(config["run"])
    out = Path(config["out"])
    threads = max(1, int(config["cpus_per_worker"]))
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    device = "cuda" if torch.cuda.is_available() and config["gpus_per_worker"] > 0 else "cpu"
    dist = Dist.from_process_group(device)
    if dist.main:
        log(f"[ray] {dist.world} worker(s) on {device}, {torch.get_num_threads()} torch threads each")

    # Inside a Tune trial: the sweep's objective rides on every report (TuneReportCallback forwards rank 0's).
    tracker = ObjectiveTracker(**config["tracker"]) if config.get("tracker") else None
    last: list[dict] = []  # the order's last task: reported with the finished run's summary

    def report(row: dict) -> None:
        if tracker is not None and tracker.is_last(row):
            last.append(row)
            return
        train_report(row, tracker.update(row) if tracker is not None else {})

    # a fault injected by a test or benchmark (aimray.faults) rides on every checkpoint, else None
    on_checkpoint = checkpoint_reporter(out, dist, tracker is None, config.get("on_checkpoint"))

    # A copy in the sweep's storage (rank 0 copies, from whichever node it runs on), brought back first.
    copy = remote_folder(*config["remote"]) if config.get("remote") and dist.main else None
    if copy is not None:
        copy.restore(out)

    def report_and_copy(row: dict) -> None:
        if copy is not None:
            copy.upload(out)
        report(row)

    previous = ray.train.get_checkpoint()  # a retried worker: Train's last reported checkpoint
    try:
        with (
            contextlib.suppress(StopRequested),  # asked to stop: checkpointed, a clean end (not a worker failure)
            previous.as_directory() if previous is not None else contextlib.nullcontext() as folder,
        ):
            resume = Path(folder) if folder is not None else None
            result = run(
                cfg,
                out,
                log=log,
                report=report_and_copy,
                dist=dist,
                resume_from=resume,
                on_checkpoint=on_checkpoint,
                labels=config.get("labels"),
                stop=RayStop(config["stop"]) if config.get("stop") else STOP,
            )
    finally:
        if copy is not None:
            copy.upload(out)
    if tracker is not None and last:  # `last` is set only when the run finished (not when it stopped)
        train_report(last[-1], tracker.finish(result))


def checkpoint_reporter(out: Path, dist: Dist, to_train: bool, fault: OnCheckpoint | None) -> OnCheckpoint:
    """The loop's on_checkpoint in a worker: a mid-task checkpoint goes to Ray Train too (`to_train`), so a
    failed worker is retried from it and not from the task's start (task-end checkpoints ride on the
    per-task report); not inside a Tune trial, where Tune would take the report for a result and the
    sweep's metrics come once per task. Then `fault`, if any."""

    def on_checkpoint(stage: int, step: int) -> None:
        if step > 0 and to_train:
            path = out / "checkpoints" / checkpoint_name(stage, step)  # the one the loop has just written
            checkpoint = Checkpoint.from_directory(str(path)) if dist.main else None
            ray.train.report({"stage": stage, "step": step}, checkpoint=checkpoint)
        if fault is not None:
            fault(stage, step)

    return on_checkpoint


def train_report(row: dict, objective: dict) -> None:
    """Report one task to Ray Train: its flat metrics, the objective's metrics, and its checkpoint."""
    path = row.get("checkpoint")
    checkpoint = Checkpoint.from_directory(str(path)) if path is not None else None
    ray.train.report({**flat_metrics(row), **objective}, checkpoint=checkpoint)


def run_name(cfg: AimRunConfig, out: Path) -> str:
    """Deterministic per output folder: rerunning into the same --out resumes the same Ray Train run."""
    digest = hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:8]
    return f"{cfg.method}-o{cfg.order}-s{cfg.seed}-{digest}"


def fit_off_the_main_thread(trainer: TorchTrainer):
    """trainer.fit() in a thread of its own: Ray Train registers its SIGINT handler (abort the run, no
    checkpoint) only when fit() runs in the main thread, which here keeps aimray's (the workers checkpoint)."""
    box: dict = {}

    def target() -> None:
        try:
            box["result"] = trainer.fit()
        except BaseException as err:  # handed to the main thread as it is
            box["error"] = err

    thread = threading.Thread(target=target, name="aimray-train-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.5)  # the main thread wakes to run signal handlers
    if "error" in box:
        raise box["error"]
    return box["result"]


def run_with_ray_train(
    cfg: AimRunConfig,
    out: str | Path,
    resources: Resources = Resources(),
    storage: str | None = None,
    on_checkpoint: OnCheckpoint | None = None,
    tracker: dict | None = None,
    remote: tuple[str, str] | None = None,
    labels: dict[str, str] | None = None,
    stop: str | None = None,
    signals: bool = False,
) -> RunResult:
    """Run one continual-learning run in a TorchTrainer (ray.init() first, or it starts a local Ray).
    `on_checkpoint` travels to every worker (tests pass aimray.faults.FailOnceAt to fail one). `remote`
    (storage URI, path under it): rank 0 copies the run folder there after every task and at the end, and
    the result is read from that copy (rank 0 may have run on another node). `labels` go into the run's
    manifest (a sweep's trial). `stop`: the name of a sweep's stop flag (aimray.launch.stop) the workers
    poll. `signals` (the CLI's run, where this is the main thread): SIGINT or SIGTERM asks the workers, through
    the run's own flag, to checkpoint and stop; then StopRequested is raised with that signal."""
    out = Path(out).resolve()
    check_inputs([cfg])  # a missing --data-dir, a broken data file or asset: one clear error, before Ray
    out.mkdir(parents=True, exist_ok=True)
    ensure_ray()
    link_ray_logs(out, ".ray-logs")  # hidden: it stays on this node (storage copies skip dot-files)
    flag = None
    if signals and stop is None:  # the run's own flag, asked on SIGINT / SIGTERM
        stop = flag_name(out)
        flag = StopFlag.start(stop)
    use_gpu = resources.gpus_per_worker > 0
    per_worker = {"CPU": resources.cpus_per_worker}
    if use_gpu:
        per_worker["GPU"] = resources.gpus_per_worker
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={
            "run": cfg.to_dict(),
            "plugins": plugins.loaded(),
            "out": str(out),
            "cpus_per_worker": resources.cpus_per_worker,
            "gpus_per_worker": resources.gpus_per_worker,
            "on_checkpoint": on_checkpoint,
            "tracker": tracker,
            "remote": remote,
            "labels": labels,
            "stop": stop,
        },
        scaling_config=ScalingConfig(num_workers=resources.workers, use_gpu=use_gpu, resources_per_worker=per_worker),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(
            name=run_name(cfg, out),
            storage_path=storage or str(out / "ray"),
            failure_config=FailureConfig(max_failures=resources.max_failures),
            callbacks=[TuneReportCallback()] if tracker is not None else None,
        ),
    )
    asking_workers = contextlib.nullcontext(Stop())
    if flag is not None:
        asking_workers = asking(flag, "[run]", "the workers finish their step, checkpoint and stop")
    with asking_workers as asked:
        result = fit_off_the_main_thread(trainer) if flag is not None else trainer.fit()
    if result.error is not None:
        raise RuntimeError(f"Ray Train run failed: {result.error}") from result.error
    if remote is not None:
        remote_folder(*remote).restore(out)  # rank 0 ran on another node: its copy comes to the driver
    if status_of(out) == "stopped":  # the workers stopped on request (a sweep's stop flag), checkpointed
        kept = Checkpointer(out / "checkpoints").latest() is not None  # none: stopped in the base model's evaluation
        raise StopRequested(asked.signum or signal.SIGTERM, f"{out} (Ray Train workers)", checkpointed=kept)
    return collect(out)
