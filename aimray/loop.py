"""The continual loop: one LoRA adapter through a sequence of tasks, in a plain Python process.

    for each task:
        for each optimizer step:
            inner step on the current task
            forgetting signal: loss on a fresh memory batch (no gradient)
            ask the merge schedule; on a merge: delta_in, rehearsal burst, delta_out, fusion, learning signal
        evaluate every task of the benchmark (seen and unseen) on test and dev
        add the task to the rehearsal memory, checkpoint, report

Baselines and ablations are configurations of this loop (aimray.methods): the loop applies the method's
parts (memory use, merge schedule, fusion rule, shape) and never asks which method it runs. No Ray here:
aimray.launch runs this function inside Ray Train workers.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import math
import os
import random
import shutil
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from aimray import checkpoint, plan, plugins
from aimray.checkpoint import Checkpointer, Costs, RunState, SavedTask, TaskState
from aimray.config import RunConfig, identity_dict, run_identity
from aimray.distributed import LOCAL, Dist
from aimray.events import EventWriter
from aimray.files import DiskFullError, folder_bytes, locked, now, write_json_atomic
from aimray.manifest import Manifest, status_of
from aimray.memory import RehearsalMemory
from aimray.merging import arithmetic, fusion, signals
from aimray.merging.controller import NO_MERGE, Decision, make_schedule
from aimray.methods import SHAPES, Method, Shape, Stage, get_method
from aimray.model import (
    Backbone,
    answer_loss,
    answer_tokens,
    evaluate_modes,
    load_backbone,
    read_model_config,
    resolve_path,
)
from aimray.provenance import provenance
from aimray.results import RunResult, collect, result_json
from aimray.stagecache import FROM_ENV, Shared, StageCache, StageEntry
from aimray.step import Learner, memory_loss, optimize
from aimray.stopping import STOP, Stop, StopRequested
from aimray.tasks import TaskData, TaskSpec, benchmark_tasks
from aimray.tasks.spec import Example

Tensors = dict[str, torch.Tensor]
Report = Callable[[dict], None]
OnCheckpoint = Callable[[int, int], None]  # (stage, step) right after each checkpoint (fault injection in tests)


def preflight(cfg: RunConfig) -> list[TaskSpec]:
    """What a run needs before anything starts (a folder, Ray, a worker): its tasks, from the paper's data
    when the benchmark reads it, and its backbone's files. Raises ValueError / FileNotFoundError /
    AssetMissingError naming what is missing; returns the task specs."""
    specs = benchmark_tasks(cfg.benchmark, cfg.order, cfg.data_dir)
    resolve_path(cfg.model.name_or_path)
    return specs


def check_inputs(cfgs: Iterable[RunConfig]) -> None:
    """Everything a run would otherwise find only once its folder (or Ray) exists, for every config:
    `preflight`, then its data files loaded (once per task and size) and its model's config read. Raises
    ValueError / FileNotFoundError / AssetMissingError naming the file, field or model. The launchers call
    it before they create a folder or start Ray."""
    loaded, models = set(), set()
    for cfg in cfgs:
        for spec in preflight(cfg):
            key = (spec.name, cfg.data_dir, cfg.data, cfg.seed)
            if key not in loaded:
                spec.load(cfg.data, cfg.seed)
                loaded.add(key)
        if cfg.model.name_or_path not in models:
            read_model_config(cfg.model.name_or_path)
            models.add(cfg.model.name_or_path)


@dataclass
class Run:
    """What a run holds: the parts fixed at its start, and its typed, checkpointed progress (`state`)."""

    cfg: RunConfig
    out: Path
    method: Method
    shape: Shape
    specs: list[TaskSpec]
    data: list[TaskData]
    stages: list[Stage]
    bb: Backbone
    params: Tensors  # the live LoRA tensors of the model
    initial: Tensors  # the adapter before any training (independent stages start from it)
    memory: RehearsalMemory
    events: EventWriter
    ckpt: Checkpointer
    manifest: Manifest
    state: RunState
    log: Callable[[str], None]
    dist: Dist
    on_checkpoint: OnCheckpoint | None
    shared: Shared = field(default_factory=lambda: Shared(None))  # computations other runs share (task 1, evals)
    validation: list[list[Example]] = field(default_factory=list)  # per task: where best states are chosen
    micro: int | None = None  # train.micro_batch_size resolved (aimray.plan.resolve_micro_batch)
    stop: Stop = field(default_factory=lambda: STOP)  # asked to stop (aimray.stopping): between steps and evaluations

    @property
    def learner(self) -> Learner:
        return Learner(self.bb, self.params, self.dist, self.micro)

    def reseed(self, phase: int) -> None:
        """Seed torch (dropout) from (seed, global step, phase, rank): a resumed run and every data-parallel
        rank draw exactly what the uninterrupted run draws, on CPU and GPU, with no generator state to save."""
        key = (self.cfg.seed, self.state.global_step, phase, self.dist.rank)
        torch.manual_seed(hash(key) & 0x7FFF_FFFF)

    def write(self, name: str, obj: object) -> None:
        if self.dist.main:
            write_json_atomic(self.out / name, obj)

    def write_manifest(self, **changes: object) -> None:
        """manifest.json: the run's record with what it shared so far and `changes` (its status at the end)."""
        if self.dist.main:
            replace(self.shared.recorded(self.manifest), **changes).write(self.out)


def run(
    cfg: RunConfig,
    out: str | Path,
    *,
    log: Callable[[str], None] = print,
    report: Report | None = None,
    dist: Dist = LOCAL,
    resume_from: Path | None = None,
    on_checkpoint: OnCheckpoint | None = None,
    cache: StageCache | str | Path | None = FROM_ENV,
    labels: dict[str, str] | None = None,
    stop: Stop = STOP,
) -> RunResult:
    """Run (or resume, if `out` holds a checkpoint of the same config) one continual-learning run.

    `report(row)` is called after every task with its scores, costs and checkpoint folder (the Ray layer
    reports through it). `dist` shards every batch over data-parallel ranks (rank 0 writes the files).
    `resume_from` names a checkpoint folder to resume from instead of the latest one under `out`.
    `on_checkpoint(stage, step)` is called right after every checkpoint (tests inject faults there).
    `cache`: where task 1 and the evaluations other runs compute too are shared (aimray.stagecache; None:
    nowhere; a folder; default: the folder $AIMRAY_STAGE_CACHE names). `labels` go into the manifest (a
    sweep's trial: {"trial": id}). `stop`: asked to stop (aimray.stopping.on_signals sets the process's),
    the run finishes its optimizer step (or, evaluating, the task it is scoring), checkpoints, marks itself
    stopped and raises StopRequested.
    """
    out = Path(out)
    shared = StageCache.resolve(cache)
    r = set_up(cfg, out, log, dist, on_checkpoint, shared, labels)  # every check, data, backbone: nothing on disk
    r.stop = stop
    out.mkdir(parents=True, exist_ok=True)
    with locked(out / ".lock") if dist.main else contextlib.nullcontext():  # one writer per run folder
        if dist.world > 1:
            check_shared(out, dist)
        latest = Path(resume_from) if resume_from is not None else r.ckpt.latest()
        saved = restore(r, latest) if latest is not None else start_fresh(r)
        if latest is not None and r.state.stage >= len(r.stages) and status_of(out) == "success":
            r.log(f"[run] {r.state.run_id}: already finished in {out}")
            return collect(out)  # nothing to do, nothing rewritten
        r.write_manifest()
        rows = []
        try:
            if latest is None and cfg.eval.base and r.shape.base_eval:
                r.log(f"[run] {r.state.run_id}: evaluating the base model on {len(r.specs)} tasks")
                evaluate_tasks(r, 0, "", list(range(len(r.specs))), Costs(), shared="base_evals")
            for stage in r.stages[r.state.stage :]:
                task = train_stage(r, stage, saved)
                saved = None
                rows.append(finish_stage(r, stage, task))
                if stage.index + 1 < len(r.stages) and report is not None:
                    report(rows[-1])
                signum = stop_asked(r) if stage.index + 1 < len(r.stages) else None
                if signum is not None:
                    raise StopRequested(signum, f"the end of task {stage.index + 1}/{len(r.stages)} ({stage.name})")
            result = collect(out)
            r.write("matrix.json", result_json(result))
            r.write_manifest(status="success", finished_at=now())
        except (Exception, SystemExit, KeyboardInterrupt) as err:
            # SystemExit / KeyboardInterrupt: stopped from outside (a Tune scheduler ending the trial, Ctrl-C).
            # Any other BaseException passes untouched, as a SIGKILL would (aimray.faults.SimulatedKill).
            mark_ended(r, err)
            raise
    if rows and report is not None:  # the last task's report comes once the run's files are complete
        report(rows[-1])
    return result


def set_up(
    cfg: RunConfig,
    out: Path,
    log: Callable[[str], None],
    dist: Dist,
    on_checkpoint: OnCheckpoint | None,
    shared: StageCache | None = None,
    labels: dict[str, str] | None = None,
) -> Run:
    """Check the inputs, load the data and the backbone; nothing trained, nothing written yet. `shared`:
    where this run takes and gives the computations other runs share (None: nowhere)."""
    specs = preflight(cfg)  # a missing data folder or asset fails here, before anything is written
    method = get_method(cfg.method)
    shape = SHAPES[method.shape]
    data = [spec.load(cfg.data, cfg.seed) for spec in specs]
    for note in (n for d in data for n in d.notes if "release_split" in n):
        log(f"[run] warning: {note}")
    data, validation = hold_out(data, cfg.checkpoint.holdout_fraction, cfg.seed)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.seed)
    bb = load_backbone(cfg.model, seed=cfg.seed)
    params = bb.lora_state()
    micro, micro_record = plan.resolve_micro_batch(cfg, bb, per_rank=max(1, cfg.train.batch_size // dist.world))
    if cfg.train.micro_batch_size == "auto":
        log(
            f"[run] train.micro_batch_size=auto: {micro} ({micro_record['source']}; {micro_record.get('note', 'fits')})"
        )
    manifest = replace(new_manifest(cfg, method.shape, specs, bb), labels=dict(labels or {}), micro_batch=micro_record)
    return Run(
        cfg=cfg,
        out=out,
        method=method,
        shape=shape,
        specs=specs,
        data=data,
        stages=shape.stages(specs, data),
        bb=bb,
        params=params,
        initial=snapshot(params),
        memory=RehearsalMemory(cfg.memory.fraction, cfg.memory.per_task, cfg.seed, cfg.memory.class_rule),
        events=EventWriter(out, manifest.run_id, enabled=dist.main),
        ckpt=Checkpointer(out / "checkpoints", warn=log),
        manifest=manifest,
        state=RunState(manifest.run_id, cfg.to_dict(), manifest.started_at),
        log=log if dist.main else _silent,
        dist=dist,
        on_checkpoint=on_checkpoint,
        shared=shared.bind(bb, dist) if shared is not None else Shared(None),
        validation=validation,
        micro=micro,
    )


def new_manifest(cfg: RunConfig, shape: str, specs: list[TaskSpec], bb: Backbone) -> Manifest:
    """A starting run's manifest: what runs, on what (provenance, plugins, resolved precision)."""
    return Manifest(
        run_id=f"{cfg.method}-{cfg.benchmark}-o{cfg.order}-s{cfg.seed}",
        method=cfg.method,
        shape=shape,
        benchmark=cfg.benchmark,
        order=cfg.order,
        seed=cfg.seed,
        tasks=[s.name for s in specs],
        config=cfg.to_dict(),
        provenance=provenance(),
        plugins=plugins.loaded(),  # the modules that registered what the config names (aimray.plugins)
        precision=bb.precision,  # model.autocast resolved (by a probe kept per machine where "auto")
        started_at=now(),
    )


def start_fresh(r: Run) -> None:
    """A fresh start: event parts of an earlier attempt without a checkpoint would mix with this one's."""
    r.events.truncate(0)
    r.manifest.resumed_from = None


def restore(r: Run, path: Path) -> SavedTask | None:
    """Resume from the checkpoint at `path` (of this same config); returns the task in progress, if any."""
    run_state, adapter, task, memory = checkpoint.load(path)
    if run_state["run_id"] != r.state.run_id or run_identity(run_state["config"]) != run_identity(r.cfg.to_dict()):
        out = r.out
        raise ValueError(f"{out} holds a checkpoint of a different run or config; use another --out or delete {out}")
    r.state.load_state_dict(run_state)
    r.manifest.started_at = r.state.started_at
    assign(r.params, adapter)
    r.memory.load_state_dict(memory, {d.name: d.train for d in r.data})
    name = checkpoint.checkpoint_name(r.state.stage, task.state["step"] if task is not None else 0)
    if missing := r.events.missing(r.state.event_parts):  # resuming would leave a hole in the trajectory
        raise ValueError(
            f"{r.out}: checkpoint {name} follows {r.state.event_parts} event parts, but events/"
            f"{', events/'.join(missing[:3])}{' ...' if len(missing) > 3 else ''} are missing: the events are "
            f"behind the checkpoint (an older copy of the run folder over a newer one?); delete {r.out} to start again"
        )
    r.events.truncate(r.state.event_parts)
    r.manifest.resumed_from = name  # the folder may be a copy under another name (Ray Train's)
    r.shared.resume(r.out)  # what earlier attempts took from the computations shared
    r.log(f"[run] {r.state.run_id}: resuming from checkpoint {name}" + (f" ({path})" if path.name != name else ""))
    return task


def finish_stage(r: Run, stage: Stage, task: TaskState) -> dict:
    """After a stage's training: keep the best-dev state if asked, evaluate, log the costs, remember the
    task, checkpoint; returns the report row."""
    if r.cfg.checkpoint.keep != "last" and task.best:
        assign(r.params, task.best)
    shared = "evals" if task.shared else None  # the adapter after a shared first stage
    task.trained = True
    try:
        scores = evaluate_tasks(r, stage.index + 1, stage.name, stage.eval_tasks, task.costs, shared)
    except StopRequested as stop:  # asked while evaluating: the trained adapter is kept, the evaluation redone
        save_checkpoint(r)
        raise StopRequested(stop.signum, f"{stop.where} ({stage.name}; its training kept)") from None
    task.lap()
    if r.bb.device.type != "cpu":  # on an accelerator the processor's seconds are not the run's compute
        task.costs.cpu_seconds = math.nan
    r.events.add("costs", task_index=stage.index, task=stage.name, **vars(task.costs))
    if r.method.remembers and stage.index < len(r.stages) - 1:
        r.memory.add_task(stage.name, stage.train)
    test = ", ".join(f"{t} {100 * v:.1f}" for (t, split), v in scores.items() if split == "test")
    r.log(f"[run] after task {stage.index + 1}/{len(r.stages)} ({stage.name}): test {test}")
    r.state.stage, r.state.task = stage.index + 1, None
    path = save_checkpoint(r)
    r.dist.sum(0.0)  # barrier: rank 0 has written the checkpoint and the events
    return {
        "stage": stage.index + 1,
        "task": stage.name,
        "seen": [r.specs[i].name for i in stage.seen],
        "scores": scores,
        "costs": vars(task.costs),
        "checkpoint": path,
    }


def save_checkpoint(r: Run) -> Path | None:
    """Flush the events, then write one checkpoint that records how many event parts it covers (rank 0
    writes and gets its folder; every rank keeps the same counters). A full disk: DiskFullError (disk_full)."""
    try:
        r.state.event_parts = r.events.flush()
        if r.state.task is not None:
            r.state.task.lap()
        path = checkpoint.save(r.ckpt, r.state, r.params, r.memory) if r.dist.main else None
    except Exception as err:  # safetensors reports a full disk as its own error, "... (os error 28)"
        full = getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(err)
        if not full:
            raise
        raise disk_full(r.ckpt) from None
    if r.on_checkpoint is not None:
        r.on_checkpoint(r.state.stage, r.state.task.step if r.state.task is not None else 0)
    return path


@dataclass
class StageParts:
    """What one stage's steps use, built once (stage_parts): its examples, optimizers and merge schedule."""

    examples: list[Example]
    total: int  # optimizer steps of the stage (inner steps; bursts come on top)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    burst_optimizer: torch.optim.Optimizer  # the inner one unless controller.outer_lr sets its own
    merging: bool  # the schedule can merge and the memory holds examples
    track: bool  # the fusion rule needs the importance EMAs
    replayed: bool  # memory examples are mixed into the training set (counted as replay)


def stage_parts(r: Run, stage: Stage, saved: SavedTask | None) -> tuple[StageParts, TaskState]:
    """The stage's parts and its task state (fresh, or loaded from `saved`), installed as r.state.task."""
    cfg, memory = r.cfg, r.memory
    examples = r.method.training_set(stage, memory.examples())
    total = max(1, math.ceil(len(examples) * cfg.train.epochs / cfg.train.batch_size))
    params = list(r.params.values())
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    schedule = make_schedule(r.method.schedule, cfg.controller, **r.method.options)
    merging = schedule.merges and len(memory) > 0  # task 1 has no memory: plain LoRA training
    outer = None
    if merging and cfg.controller.outer_lr is not None:
        outer = torch.optim.AdamW(params, lr=cfg.controller.outer_lr, weight_decay=cfg.train.weight_decay)
    scheduler = linear_schedule(optimizer, cfg.train.warmup_steps, total)
    optimizers = {"optimizer": optimizer, "scheduler": scheduler, "outer": outer}
    task = TaskState(schedule, random.Random(f"{cfg.seed}/memory/{stage.index}"), optimizers)
    if saved is not None:
        task.load_state_dict(saved.tensors, saved.objects, saved.state, r.bb.device)
    else:
        if r.shape.fresh_adapter:
            assign(r.params, r.initial)
        task.anchor = snapshot(r.params)
    r.state.task = task
    track = merging and fusion.get_fusion(cfg.controller.weights).needs_importance
    replayed = len(examples) > len(stage.train)
    parts = StageParts(examples, total, optimizer, scheduler, outer or optimizer, merging, track, replayed)
    return parts, task


def train_stage(r: Run, stage: Stage, saved: SavedTask | None) -> TaskState:
    """All optimizer steps of one stage, with monitoring and merges; returns the task's state and costs.
    A first stage of plain LoRA training from the start is one other runs compute too: taken from r.shared
    when it holds it, given to it once computed."""
    parts, task = stage_parts(r, stage, saved)
    if task.trained:  # stopped while evaluating the task: its training and task-end merge are done
        r.log(f"[run] task {stage.index + 1} ({stage.name}): trained before the stop; evaluating")
        return task
    n = len(parts.examples)
    r.log(f"[run] task {stage.index + 1} ({stage.name}): {parts.total} steps, {n} examples, memory {len(r.memory)}")
    task.shared = stage.index == 0 and saved is None and not parts.merging
    known = r.shared.stage(stage_reads(r, stage), r.params, parts.examples, r.bb.device) if task.shared else None
    if known is not None:
        r.log(f"[run] task 1 ({stage.name}): {r.shared.describe(known)}")
        return replay_stage(r, stage, task, known)
    t0 = time.time()
    losses = train_steps(r, stage, task, parts)
    decision = task.schedule.at_task_end(parts.total) if parts.merging else NO_MERGE
    if decision.merge:
        merge(r, stage, task, parts.total - 1, decision, parts.burst_optimizer, parts.track)
    if r.cfg.checkpoint.keep != "last":
        track_best(r, stage, task)
    if task.shared:
        counts = {k: v for k, v in asdict(task.costs).items() if not k.endswith("seconds")}
        seconds = time.time() - t0
        r.shared.store_stage(StageEntry(snapshot(r.params), losses, counts, seconds, task.best, task.best_score))
    return task


def train_steps(r: Run, stage: Stage, task: TaskState, parts: StageParts) -> list[tuple[float, float]]:
    """The stage's inner steps from task.step on: train, watch the forgetting signal, ask the schedule,
    merge when it says so; progress lines, best-dev tracking and mid-task checkpoints. Returns each step's
    (loss, lr)."""
    cfg, losses = r.cfg, []
    t0, every, first = time.time(), progress_every(), task.step
    shown = t0
    for step in range(task.step, parts.total):
        lr = parts.optimizer.param_groups[0]["lr"]
        loss = inner_step(r, stage, task, parts, step)
        signal = forgetting_signal(r, task) if parts.merging and task.schedule.needs_memory_loss else None
        decision = task.schedule.step(signal) if parts.merging else NO_MERGE
        log_step(r, stage, step, "inner", loss, lr, signal)
        losses.append((loss, lr))
        if decision.merge:
            merge(r, stage, task, step, decision, parts.burst_optimizer, parts.track)
        task.step = step + 1
        if every is not None and time.time() - shown >= every and task.step < parts.total:
            shown = time.time()
            r.log(progress_line(stage, len(r.stages), task.step, parts.total, task.costs.merges, shown - t0, first))
        if cfg.checkpoint.keep != "last" and task.step % cfg.checkpoint.best_dev_every == 0:
            track_best(r, stage, task)
        signum = stop_asked(r) if task.step < parts.total else None
        if task.step < parts.total and (every_n(cfg, task.step) or signum is not None):
            save_checkpoint(r)
            if signum is not None:
                where = f"task {stage.index + 1}/{len(r.stages)} ({stage.name}), step {task.step}/{parts.total}"
                raise StopRequested(signum, where)
    return losses


def disk_full(ckpt: Checkpointer) -> DiskFullError:
    """The error of a run whose disk filled up while it wrote its events and checkpoint: the folder, the
    bytes a checkpoint needs (the last complete one's size), what is free, and what to do. Nothing half-written
    is left to read: event parts and checkpoints are written under temporary names and renamed when complete."""
    out, previous = ckpt.root.parent, None
    with contextlib.suppress(Exception):  # what the disk still holds; the error must come out whatever it is
        previous = ckpt.latest()
    needed = folder_bytes(previous) if previous is not None else 0
    free = shutil.disk_usage(out).free
    if previous is None:  # nothing to size the next checkpoint by
        what = f"({_size(free)} free; the first checkpoint was being written)"
    else:
        what = f"(a checkpoint needs about {_size(needed)}, {_size(free)} free); the last complete checkpoint, "
        what += f"{previous.name}, is intact"
    return DiskFullError(
        f"{out}: no space left on device while writing events and a checkpoint {what}: free space and run the "
        "same command",
    )


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def stop_asked(r: Run) -> int | None:
    """The signal that asked the run to stop, or None; agreed by every data-parallel rank, so that all stop
    at the same step (a rank that has not seen the request stops as if by SIGTERM)."""
    signum = r.stop.asked()
    if r.dist.world > 1 and r.dist.sum(float(signum is not None)) > 0:
        return signum or signal.SIGTERM
    return signum


def every_n(cfg: RunConfig, step: int) -> bool:
    """checkpoint.every_steps: whether a mid-task checkpoint is due after `step` steps."""
    return bool(cfg.checkpoint.every_steps) and step % cfg.checkpoint.every_steps == 0


def inner_step(r: Run, stage: Stage, task: TaskState, parts: StageParts, step: int) -> float:
    """One optimizer step on the step-th batch of the stage's examples (and its costs); returns the loss."""
    r.bb.model.train()
    batch = batch_for_step(parts.examples, step, r.cfg.train.batch_size, f"{r.cfg.seed}/{stage.name}")
    loss = train_step(r, batch, parts.optimizer, task.imp_in if parts.track else None)
    parts.scheduler.step()
    c = task.costs
    c.steps += 1
    c.train_examples += len(batch)
    c.replay_examples += sum(ex.task != stage.name for ex in batch) if parts.replayed else 0
    c.forward_passes += 1
    c.backward_passes += 1
    return loss


def progress_every() -> float | None:
    """Seconds between progress lines inside a task: $AIMRAY_PROGRESS_S (default 30; 0 = every step;
    "off" = none). A sweep's trials log nothing: Tune's status table is the sweep's display."""
    setting = os.environ.get("AIMRAY_PROGRESS_S", "30").strip().lower()
    if setting == "off":
        return None
    try:
        return max(0.0, float(setting))
    except ValueError:
        raise ValueError(f"AIMRAY_PROGRESS_S={setting!r}: expected seconds or 'off'") from None


def progress_line(stage: Stage, stages: int, step: int, total: int, merges: int, elapsed: float, first: int) -> str:
    """`[run] task 2/4 (amazon): step 40/96, 5 merges, about 1 min 20 s of training left`: the pace of the
    steps this process has run in the task (`first`: the step it started from, after a resume)."""
    minutes, seconds = divmod(round(elapsed / max(1, step - first) * (total - step)), 60)
    eta = f"{minutes} min {seconds} s" if minutes else f"{seconds} s"
    where = f"[run] task {stage.index + 1}/{stages} ({stage.name})"
    return f"{where}: step {step}/{total}, {merges} merge{'' if merges == 1 else 's'}, about {eta} of training left"


def stage_reads(r: Run, stage: Stage) -> dict:
    """What a first stage's training reads beside the backbone, its starting adapter and its examples (the
    key of a shared stage is made of these): the train config (less neutral fields), seed, stage, first global
    step, and with best-dev tracking its settings and the seen tasks' dev examples and scoring."""
    cfg = r.cfg
    train = identity_dict(cfg.to_dict())["train"]
    reads = {"train": train, "seed": cfg.seed, "stage": stage.name, "global_step": r.state.global_step}
    if cfg.checkpoint.keep != "last":  # tracking the best dev state reads the seen tasks' dev data
        n = cfg.checkpoint.best_dev_examples
        dev = [[r.validation[i][:n], eval_settings(r.specs[i], cfg)] for i in stage.seen]
        reads["best_dev"] = [cfg.checkpoint.keep, cfg.checkpoint.best_dev_every, n, dev]
    return reads


def replay_stage(r: Run, stage: Stage, task: TaskState, entry: StageEntry) -> TaskState:
    """A first stage computed before: its adapter, its best-dev state and counters, and its step rows logged through
    this run's own schedule (so the events equal those of the run that computed it)."""
    assign(r.params, entry.adapter)
    task.best, task.best_score = entry.best, entry.best_score
    for step, (loss, lr) in enumerate(entry.steps):
        log_step(r, stage, step, "inner", loss, lr)
    task.step = len(entry.steps)
    task.costs = Costs(**entry.costs)  # the seconds are this run's own
    return task


def log_step(
    r: Run,
    stage: Stage,
    step: int,
    phase: str,
    loss: float,
    lr: float,
    memory_loss: float | None = None,
    decision: Decision | None = None,
) -> None:
    """One `steps` row with the schedule's state (a burst step logs the merge's own S and M)."""
    st = r.state.task.schedule.state
    r.events.add(
        "steps",
        task_index=stage.index,
        task=stage.name,
        step=step,
        global_step=r.state.tick(),
        phase=phase,
        train_loss=loss,
        memory_loss=memory_loss,
        threshold=st.threshold,
        activations=st.activations,
        interval=decision.interval if decision else st.interval,
        burst_len=decision.burst if decision else st.burst,
        lam=st.lambdas[-1] if st.lambdas else None,
        lr=lr,
    )


def train_step(
    r: Run, batch: list[Example], optimizer: torch.optim.Optimizer, importance: Tensors | None, scale: float = 1.0
) -> float:
    """One optimizer step of the run (inner or burst): dropout reseeded for this global step, then `optimize`
    with the run's gradient clipping and importance EMA."""
    r.reseed(0)
    clip, beta = r.cfg.train.grad_clip, r.cfg.controller.importance_beta
    return optimize(r.learner, batch, optimizer, clip, importance, beta, scale)


def forgetting_signal(r: Run, task: TaskState) -> float:
    """The loss on one fresh random memory batch, no gradient (train or eval mode, controller.fs_mode)."""
    t0 = time.time()
    batch = r.memory.sample_batch(r.cfg.memory.batch_size, task.mem_rng)
    r.reseed(1)
    loss = memory_loss(r.learner, batch, eval_mode=r.cfg.controller.fs_mode == "eval")
    task.costs.monitor_examples += len(batch)
    task.costs.forward_passes += 1
    task.costs.monitor_seconds += time.time() - t0
    return loss


def merge(
    r: Run, stage: Stage, task: TaskState, step: int, decision: Decision, optimizer: torch.optim.Optimizer, track: bool
) -> None:
    """delta_in = theta - theta_t; rehearsal burst of M steps; delta_out; fusion; learning signal."""
    t0 = time.time()
    cfg, params, schedule = r.cfg, r.params, task.schedule
    activations = schedule.state.activations
    trigger_step = r.state.global_step - 1  # the inner step that triggered the merge
    delta_in = arithmetic.difference(params, task.anchor)
    before = snapshot(params)
    for _ in range(decision.burst):
        batch = r.memory.sample_batch(cfg.memory.batch_size, task.mem_rng)
        lr = optimizer.param_groups[0]["lr"]
        loss = train_step(r, batch, optimizer, task.imp_out if track else None, cfg.controller.burst_loss_scale)
        task.costs.burst_examples += len(batch)
        task.costs.forward_passes += 1
        task.costs.backward_passes += 1
        log_step(r, stage, step, "burst", loss, lr, decision=decision)
    delta_out = arithmetic.difference(params, before)
    rule = fusion.get_fusion(cfg.controller.weights)
    inputs = fusion.Merge(
        task.anchor, delta_in, delta_out, task.imp_in, task.imp_out, activations, decision.interval, cfg.controller
    )
    fused, w_in, w_out = rule.combine(inputs)
    assign(params, fused)
    task.anchor = snapshot(params)
    lam = signals.learning_signal(delta_in, decision.interval)
    schedule.merged(lam)
    task.costs.merges += 1
    task.costs.merge_seconds += time.time() - t0
    r.events.add(
        "merges",
        task_index=stage.index,
        task=stage.name,
        step=step,
        global_step=trigger_step,
        trigger=decision.trigger,
        interval=decision.interval,
        burst_len=decision.burst,
        activations=activations,
        w_in=w_in,
        w_out=w_out,
        l1_delta_in=_l1(delta_in),
        l1_delta_out=_l1(delta_out),
        lam=lam,
    )


def mark_ended(r: Run, err: BaseException) -> None:
    """The manifest of a run that ended early: "stopped" when asked (StopRequested, SystemExit, Ctrl-C),
    else "failed", with the error. A full disk may refuse the manifest too: the error stands."""
    status = "failed" if isinstance(err, Exception) and not isinstance(err, StopRequested) else "stopped"
    with contextlib.suppress(OSError):
        r.write_manifest(status=status, error=repr(err)[:2000], finished_at=now())


def track_best(r: Run, stage: Stage, task: TaskState) -> None:
    """checkpoint.keep=best_dev(_loss): score the adapter on a few dev examples of every seen task (this
    reads past-task dev data beyond the memory) and keep the best state: the highest mean score, or for
    best_dev_loss (the released code) the lowest mean answer loss."""
    n, batch = r.cfg.checkpoint.best_dev_examples, r.cfg.train.eval_batch_size
    t0 = time.time()
    if r.cfg.checkpoint.keep == "best_dev_loss":
        values = [-dev_loss(r.bb, r.dist, r.validation[i][:n], batch) for i in stage.seen]
    else:
        values = [score(r.bb, r.dist, r.validation[i][:n], eval_settings(r.specs[i], r.cfg))[0] for i in stage.seen]
    task.costs.eval_examples += n * len(stage.seen)
    task.costs.eval_seconds += time.time() - t0
    mean = sum(values) / len(values)
    if mean > task.best_score:
        task.best_score, task.best = mean, snapshot(r.params)


def evaluate_tasks(
    r: Run, after_index: int, after_task: str, which: list[int], costs: Costs, shared: str | None = None
) -> dict:
    """Evaluate tasks on the configured splits in every mode (eval.modes, one pass over the prompts); one
    evals row per task, split and mode. Returns {(task, split): value} in the headline mode. `shared`: the
    adapter is one other runs evaluate too (untrained, or after a shared first stage): each score goes
    through r.shared, counted under that name ("base_evals" or "evals"). Asked to stop, it raises
    StopRequested between two tasks' scores, having recorded none of the round (finish_stage checkpoints)."""
    scores, rows, seen = {}, [], 0
    where = f"the evaluation after task {after_index}/{len(r.stages)}" if after_index else "the base model's evaluation"
    t0 = time.time()
    through = r.shared.scorer(shared, r.params) if shared else None
    modes = r.cfg.eval.all_modes
    for i in which:
        spec = r.specs[i]
        size = cell_subsample(r.cfg, after_index, i, len(r.stages))
        for split in r.cfg.eval.splits:
            signum = stop_asked(r)
            if signum is not None:  # nothing of this round is kept: all of it is done again
                raise StopRequested(signum, where, checkpointed=False)
            examples = fixed_subsample(r.data[i].split(split), size, f"{spec.name}/{split}/{r.cfg.seed}")
            settings = {mode: eval_settings(spec, r.cfg, mode) for mode in modes}
            compute = functools.partial(score_modes, r.bb, r.dist, examples, settings)
            got = through(examples, settings, compute) if through else compute(list(modes))
            seen += len(examples)
            subsample = size if len(examples) < len(r.data[i].split(split)) else 0
            for mode in modes:
                value, n, metric = got[mode]
                rows.append(
                    dict(
                        after_index=after_index,
                        after_task=after_task,
                        eval_index=i,
                        eval_task=spec.name,
                        split=split,
                        metric=metric,
                        value=value,
                        n=n,
                        mode=mode,
                        subsample=subsample,
                    )
                )
            scores[(spec.name, split)] = got[modes[0]][0]
    for row in rows:  # the round complete: its rows and costs
        r.events.add("evals", **row)
    costs.eval_examples += seen
    costs.eval_seconds += time.time() - t0
    return scores


def cell_subsample(cfg: RunConfig, after_index: int, task: int, stages: int) -> int:
    """eval.matrix=metrics: 0 (the whole split) where OP, BWT or FWT read the cell - the base row, task j and
    j+1 after task j, every task after the last - else eval.matrix_subsample; eval.matrix=full: always 0."""
    if cfg.eval.matrix == "full" or after_index in (0, stages) or task in (after_index - 1, after_index):
        return 0
    return cfg.eval.matrix_subsample


def fixed_subsample(examples: list[Example], size: int, key: str) -> list[Example]:
    """`size` examples of a split, the same ones after every task (seeded by task, split and run seed), in
    split order; the whole split when size is 0 or not smaller."""
    if size == 0 or size >= len(examples):
        return examples
    keep = sorted(random.Random(f"matrix/{key}").sample(range(len(examples)), size))
    return [examples[k] for k in keep]


@torch.no_grad()
def dev_loss(bb: Backbone, dist: Dist, examples: list[Example], batch_size: int) -> float:
    """Mean answer loss per token over `examples` in eval mode, in batches (ranks sum their shards)."""
    bb.model.eval()
    shard, total = dist.shard(examples), 0.0
    for s in range(0, len(shard), batch_size):
        total += answer_loss(bb, shard[s : s + batch_size], reduction="sum").item()
    bb.model.train()
    return dist.sum(total) / max(1, dist.sum(answer_tokens(bb, shard)))


def eval_settings(spec: TaskSpec, cfg: RunConfig, mode: str | None = None) -> dict:
    """How a task is scored in one mode (default: the headline one): the arguments of model.evaluate beside
    the model and the examples (a shared evaluation is keyed by exactly these). A task without options is
    always generated."""
    return {
        "options": spec.labels,
        "mode": (mode or cfg.eval.mode) if spec.labels else "generate",
        "batch_size": cfg.train.eval_batch_size,
        "max_new_tokens": cfg.eval.max_new_tokens,
        "rouge_stemmer": cfg.eval.rouge_stemmer,
    }


def score(bb: Backbone, dist: Dist, examples: list[Example], settings: dict) -> tuple[float, int, str]:
    """(value, n, metric) on `examples` scored with `settings` (eval_settings)."""
    return score_modes(bb, dist, examples, {"one": settings}, ["one"])["one"]


def score_modes(
    bb: Backbone, dist: Dist, examples: list[Example], settings: dict[str, dict], modes: list[str]
) -> dict[str, tuple[float, int, str]]:
    """{mode: (value, n, metric)} for the `modes` of `settings` ({mode: eval_settings}), from one pass over
    the prompts; each rank scores its shard and the sums are combined."""
    one = settings[modes[0]]
    actual = {m: settings[m]["mode"] for m in modes}  # a task without options generates in every mode
    kw = {k: v for k, v in one.items() if k != "mode"}
    res = evaluate_modes(bb, dist.shard(examples), modes=sorted(set(actual.values())), **kw)
    out = {}
    for m in modes:
        got = res[actual[m]]
        n = dist.sum(got.n)
        out[m] = (dist.sum(got.value * got.n) / max(n, 1), int(n), got.metric)
    return out


# ------------------------------------------------------------------------------------------------ small parts


def hold_out(data: list[TaskData], fraction: float, seed: int) -> tuple[list[TaskData], list[list[Example]]]:
    """checkpoint.holdout_fraction: a seeded fraction (at least one example) of each task's training set
    taken out of training to choose the best state on (the released single-task runs: 10%); without it
    the best state is chosen on dev. Returns (the data, per task the examples states are chosen on)."""
    if not fraction:
        return data, [d.dev for d in data]
    out, validation = [], []
    for d in data:
        k = max(1, math.floor(fraction * len(d.train)))
        held = set(random.Random(f"{seed}/holdout/{d.name}").sample(range(len(d.train)), k))
        note = f"checkpoint.holdout_fraction: {k} of {len(d.train)} training examples held out for validation"
        train = [ex for i, ex in enumerate(d.train) if i not in held]
        out.append(TaskData(d.name, train, d.dev, d.test, (*d.notes, note)))
        validation.append([ex for i, ex in enumerate(d.train) if i in held])
    return out, validation


def check_shared(out: Path, dist: Dist) -> None:
    """Data-parallel ranks must see one run folder: rank 0 writes a token there, every rank reads it."""
    token = random.SystemRandom().randrange(1, 2**31) if dist.main else 0
    token = int(dist.sum(token))
    marker = out / ".shared-check"
    if dist.main:
        marker.write_text(str(token))
    dist.sum(0.0)  # barrier
    seen = marker.read_text().strip() if marker.exists() else ""
    if int(dist.sum(0.0 if seen == str(token) else 1.0)):
        raise RuntimeError(f"data-parallel workers do not all see {out}: the run folder must be on shared storage")


def _silent(*_args) -> None:
    pass


def snapshot(params: Tensors) -> Tensors:
    return {k: p.detach().clone() for k, p in params.items()}


@torch.no_grad()
def assign(params: Tensors, values: Tensors) -> None:
    for k, p in params.items():
        p.copy_(values[k])


def _l1(state: Tensors) -> float:
    return float(sum(t.abs().sum().item() for t in state.values()))


def linear_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the base lr over `warmup` steps, then linear decay to 0 at `total`."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def batch_for_step(examples: list[Example], step: int, batch_size: int, seed: str) -> list[Example]:
    """The step-th batch of a seeded per-epoch shuffle: a pure function of (seed, step), so a resumed run
    sees exactly the batches the uninterrupted run saw."""
    n = len(examples)
    per_epoch = math.ceil(n / batch_size)
    epoch, pos = divmod(step, per_epoch)
    order = list(range(n))
    random.Random(f"{seed}/epoch{epoch}").shuffle(order)
    return [examples[i] for i in order[pos * batch_size : (pos + 1) * batch_size]]
