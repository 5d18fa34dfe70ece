"""The continual loop: one LoRA adapter through a sequence of tasks, in a plain Python process.

    for each task:
        for each optimizer step:
            inner step on the current task
            forgetting signal: loss on a fresh memory batch (no gradient)
            ask the controller; on a merge: delta_in, rehearsal burst, delta_out, fusion, learning signal
        evaluate every task of the benchmark (seen and unseen) on test and dev
        add the task to the rehearsal memory, checkpoint, report

Baselines and ablations are configurations of this loop (aimray.methods). No Ray here: aimray.launch
runs this function inside Ray Train workers.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from aimray.checkpoint import Checkpointer
from aimray.config import RunConfig
from aimray.distributed import LOCAL, Dist
from aimray.events import SCHEMA_VERSION, EventWriter, now, write_json_atomic
from aimray.memory import RehearsalMemory
from aimray.merging import fusion, signals
from aimray.merging.controller import MergeController
from aimray.methods import Method, get_method
from aimray.model import Backbone, answer_loss, answer_tokens, evaluate, load_backbone, resolve_path
from aimray.provenance import provenance
from aimray.results import RunResult, collect, result_json
from aimray.tasks import TaskData, TaskSpec, benchmark_tasks
from aimray.tasks.spec import Example


class SimulatedKill(RuntimeError):
    """Raised by `stop_at` right after a checkpoint, to test resuming (nothing else is written)."""


@dataclass
class Stage:
    """One training stage: a task, or for MTL all tasks together."""

    index: int  # 0-based
    name: str
    train: list[Example]
    eval_tasks: list[int]  # which benchmark tasks to evaluate after this stage


@dataclass
class Costs:
    steps: int = 0
    merges: int = 0
    train_examples: int = 0
    replay_examples: int = 0
    burst_examples: int = 0
    monitor_examples: int = 0
    forward_passes: int = 0
    backward_passes: int = 0
    eval_examples: int = 0
    eval_seconds: float = 0.0  # part of wall_seconds spent evaluating (and tracking the best dev state)
    wall_seconds: float = 0.0


@dataclass
class TaskState:
    """What changes inside a task, all of it checkpointed."""

    step: int = 0
    anchor: dict[str, torch.Tensor] = field(default_factory=dict)  # theta_t: adapter at the last merge
    imp_in: dict[str, torch.Tensor] = field(default_factory=dict)  # importance on the new task
    imp_out: dict[str, torch.Tensor] = field(default_factory=dict)  # importance on the memory
    best: dict[str, torch.Tensor] = field(default_factory=dict)  # best-dev adapter (checkpoint.keep)
    best_score: float = -math.inf
    costs: Costs = field(default_factory=Costs)
    t_start: float = 0.0


def run_identity(config: dict) -> str:
    """What must match for a checkpoint to be resumed: the config less execution-only fields (threads)."""
    config = json.loads(json.dumps(config))
    config["train"].pop("threads", None)
    return json.dumps(config, sort_keys=True)


def config_hash(cfg: RunConfig) -> str:
    """8 hex digits identifying a run's config (less execution-only fields): caches key finished runs by it."""
    return hashlib.sha256(run_identity(cfg.to_dict()).encode()).hexdigest()[:8]


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


def previous_status(out: Path) -> str | None:
    path = out / "manifest.json"
    return json.loads(path.read_text()).get("status") if path.exists() else None


def _silent(*_args) -> None:
    pass


def _report(report: Callable[[dict], None] | None, row: dict) -> None:
    if report is not None:
        report(row)


def snapshot(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: p.detach().clone() for k, p in params.items()}


@torch.no_grad()
def assign(params: dict[str, torch.Tensor], values: dict[str, torch.Tensor]) -> None:
    for k, p in params.items():
        p.copy_(values[k])


def linear_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int):
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


def make_stages(method: Method, specs: list[TaskSpec], data: list[TaskData]) -> list[Stage]:
    if method.joint:
        union = [ex for d in data for ex in d.train]
        return [Stage(0, "joint", union, list(range(len(specs))))]
    if method.reset_each_task:
        return [Stage(i, s.name, d.train, [i]) for i, (s, d) in enumerate(zip(specs, data, strict=True))]
    return [
        Stage(i, s.name, d.train, list(range(len(specs)))) for i, (s, d) in enumerate(zip(specs, data, strict=True))
    ]


@dataclass
class Context:
    """Everything a run holds; the loop's functions read it and append events through it."""

    cfg: RunConfig
    method: Method
    run_id: str
    specs: list[TaskSpec]
    data: list[TaskData]
    bb: Backbone
    params: dict[str, torch.Tensor]
    memory: RehearsalMemory
    controller: MergeController
    events: EventWriter
    ckpt: Checkpointer
    manifest: dict
    log: Callable[[str], None]
    stop_at: tuple[int, int] | None
    dist: Dist = LOCAL
    global_step: int = 0  # optimizer steps so far in the run, inner and burst

    def reseed(self, phase: int) -> None:
        """Seed torch (dropout) from (seed, global step, phase, rank): a resumed run and every data-parallel
        rank draw exactly what the uninterrupted run draws, on CPU and GPU, with no generator state to save."""
        torch.manual_seed(hash((self.cfg.seed, self.global_step, phase, self.dist.rank)) & 0x7FFF_FFFF)

    def tick(self) -> int:
        self.global_step += 1
        return self.global_step - 1

    def checkpoint(
        self, stage: int, step: int, ts: TaskState | None = None, optim: dict | None = None,
        mem_rng: random.Random | None = None,
    ) -> None:  # fmt: skip
        """Flush the events, then write one checkpoint that records how many event parts it covers (rank 0
        writes; every rank keeps the same counters)."""
        parts = self.events.flush()
        tensors = {"adapter": dict(self.params)}
        if ts is not None:
            ts.costs.wall_seconds += time.time() - ts.t_start
            ts.t_start = time.time()
            tensors["anchor"] = ts.anchor
            tensors.update({g: getattr(ts, g) for g in ("imp_in", "imp_out", "best") if getattr(ts, g)})
        state = {
            "run_id": self.run_id,
            "config": self.cfg.to_dict(),
            "started_at": self.manifest["started_at"],
            "stage": stage,
            "step": step,
            "event_parts": parts,
            "global_step": self.global_step,
            "controller": self.controller.state_dict(),
            "memory": self.memory.state_dict(),
            "mem_rng": mem_rng.getstate() if mem_rng is not None else None,
            "best_score": ts.best_score if ts else None,
            "costs": vars(ts.costs) if ts else None,
        }
        objects = {k: v.state_dict() for k, v in (optim or {}).items() if v is not None}
        if self.dist.main:
            self.ckpt.save(f"t{stage:02d}-s{step:06d}", tensors, objects, state)
        if self.stop_at == (stage, step):
            raise SimulatedKill(f"stopped at stage {stage}, step {step}")


def preflight(cfg: RunConfig) -> list[TaskSpec]:
    """What a run needs before anything starts (a folder, Ray, a worker): its tasks, from the paper's data
    when the benchmark reads it, and its backbone's files. Raises ValueError / FileNotFoundError /
    AssetMissingError naming what is missing; returns the task specs."""
    specs = benchmark_tasks(cfg.benchmark, cfg.order, cfg.data_dir)
    resolve_path(cfg.model.name_or_path)
    return specs


def run(
    cfg: RunConfig,
    out: str | Path,
    *,
    log: Callable[[str], None] = print,
    report: Callable[[dict], None] | None = None,
    stop_at: tuple[int, int] | None = None,
    dist: Dist = LOCAL,
    resume_from: Path | None = None,
) -> RunResult:
    """Run (or resume, if `out` holds a checkpoint of the same config) one continual-learning run.

    `report(row)` is called after every task with its scores, costs and checkpoint folder (the Ray layer
    reports through it). `stop_at=(stage, step)` raises SimulatedKill right after that checkpoint (stage k =
    after k tasks). `dist` shards every batch over data-parallel ranks (rank 0 writes the files).
    `resume_from` names a checkpoint folder to resume from instead of the latest one under `out`.
    """
    out = Path(out)
    specs = preflight(cfg)  # a missing data folder or asset fails here, before anything is written
    out.mkdir(parents=True, exist_ok=True)
    if dist.world > 1:
        check_shared(out, dist)
    if not dist.main:
        log = _silent
    method = get_method(cfg.method)
    data = [spec.load(cfg.data, cfg.seed) for spec in specs]
    stages = make_stages(method, specs, data)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.seed)
    bb = load_backbone(cfg.model, seed=cfg.seed)
    params = bb.lora_state()
    initial_adapter = snapshot(params)
    run_id = f"{cfg.method}-{cfg.benchmark}-o{cfg.order}-s{cfg.seed}"
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "method": cfg.method,
        "benchmark": cfg.benchmark,
        "order": cfg.order,
        "seed": cfg.seed,
        "tasks": [s.name for s in specs],
        "config": cfg.to_dict(),
        "provenance": provenance(),
        "status": "running",
        "started_at": now(),
    }
    ctx = Context(
        cfg, method, run_id, specs, data, bb, params,
        RehearsalMemory(cfg.memory.fraction, cfg.memory.per_task, cfg.seed),
        MergeController(cfg.controller, method.schedule, method.learning_signal, method.forgetting_signal),
        EventWriter(out, run_id, enabled=dist.main), Checkpointer(out / "checkpoints"), manifest, log, stop_at, dist,
    )  # fmt: skip
    write = write_json_atomic if dist.main else _silent

    # Resume from the latest checkpoint of this same config, if there is one.
    start, resume, optim_states, mem_rng_state = 0, None, {}, None
    latest = Path(resume_from) if resume_from is not None else ctx.ckpt.latest()
    if latest is not None:
        tensors, objects, state = Checkpointer.load(latest)
        if state["run_id"] != run_id or run_identity(state["config"]) != run_identity(cfg.to_dict()):
            raise ValueError(
                f"{out} holds a checkpoint of a different run or config; use another --out or delete {out}"
            )
        assign(params, tensors["adapter"])
        ctx.memory.load_state_dict(state["memory"], {d.name: d.train for d in data})
        ctx.controller.load_state_dict(state["controller"])
        ctx.events.truncate(state["event_parts"])
        manifest["started_at"] = state["started_at"]
        start = state["stage"]
        ctx.global_step = state["global_step"]
        if state["step"] > 0:
            on = {g: {k: v.to(bb.device) for k, v in tensors.get(g, {}).items()} for g in ("anchor", "imp_in",
                  "imp_out", "best")}  # fmt: skip
            resume = TaskState(
                step=state["step"], anchor=on["anchor"], imp_in=on["imp_in"], imp_out=on["imp_out"], best=on["best"],
                best_score=state["best_score"], costs=Costs(**state["costs"]),
            )  # fmt: skip
            optim_states, mem_rng_state = objects, state["mem_rng"]
        log(f"[run] {run_id}: resuming from checkpoint {latest.name}")
    else:  # a fresh start: event parts of an earlier attempt without a checkpoint would mix with this one's
        ctx.events.truncate(0)
    if latest is not None and start >= len(stages) and previous_status(out) == "success":
        log(f"[run] {run_id}: already finished in {out}")
        return collect(out, method)  # nothing to do, nothing rewritten
    manifest["resumed_from"] = latest.name if latest else None
    write(out / "manifest.json", manifest)

    try:
        if latest is None and cfg.eval.base and not method.reset_each_task:
            log(f"[run] {run_id}: evaluating the base model on {len(specs)} tasks")
            evaluate_tasks(ctx, 0, "", list(range(len(specs))), Costs())
        for stage in stages[start:]:
            mem_rng = random.Random(f"{cfg.seed}/memory/{stage.index}")
            if mem_rng_state is not None:
                mem_rng.setstate((mem_rng_state[0], tuple(mem_rng_state[1]), mem_rng_state[2]))
            if method.reset_each_task and resume is None:
                assign(params, initial_adapter)
            ts = train_stage(ctx, stage, mem_rng, resume, optim_states)
            resume, optim_states, mem_rng_state = None, {}, None
            if cfg.checkpoint.keep == "best_dev" and ts.best:
                assign(params, ts.best)
            scores = evaluate_tasks(ctx, stage.index + 1, stage.name, stage.eval_tasks, ts.costs)
            ts.costs.wall_seconds += time.time() - ts.t_start
            ctx.events.add("costs", task_index=stage.index, task=stage.name, **vars(ts.costs))
            if method.memory != "none" and stage.index < len(stages) - 1:
                ctx.memory.add_task(stage.name, stage.train)
            test = ", ".join(f"{t} {100 * v:.1f}" for (t, split), v in scores.items() if split == "test")
            log(f"[run] after task {stage.index + 1}/{len(stages)} ({stage.name}): test {test}")
            ctx.checkpoint(stage.index + 1, 0)
            dist.sum(0.0)  # barrier: rank 0 has written the checkpoint and the events
            seen = [specs[i].name for i in stage.eval_tasks if method.joint or i <= stage.index]
            row = {"stage": stage.index + 1, "task": stage.name, "seen": seen, "scores": scores,
                   "costs": vars(ts.costs), "checkpoint": ctx.ckpt.latest() if dist.main else None}  # fmt: skip
            if stage.index + 1 < len(stages):
                _report(report, row)
        result = collect(out, method)
        write(out / "matrix.json", result_json(result))
        write(out / "manifest.json", {**manifest, "status": "success", "finished_at": now()})
    except SimulatedKill:
        raise
    except BaseException as err:
        # SystemExit / KeyboardInterrupt: stopped from outside (e.g. a Tune scheduler ending the trial).
        status = "stopped" if isinstance(err, SystemExit | KeyboardInterrupt) else "failed"
        write(out / "manifest.json", {**manifest, "status": status, "error": repr(err)[:2000], "finished_at": now()})
        raise
    if start < len(stages):  # the last task's report comes once the run's files are complete
        _report(report, row)
    return result


def train_stage(
    ctx: Context, stage: Stage, mem_rng: random.Random, ts: TaskState | None, optim_states: dict
) -> TaskState:
    """All optimizer steps of one task, with monitoring and merges; returns the task's state and costs."""
    cfg, method, memory, controller = ctx.cfg, ctx.method, ctx.memory, ctx.controller
    examples = stage.train + (memory.examples() if method.memory == "replay" else [])
    total = max(1, math.ceil(len(examples) * cfg.train.epochs / cfg.train.batch_size))
    params = list(ctx.params.values())
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    scheduler = linear_schedule(optimizer, cfg.train.warmup_steps, total)
    merging = method.schedule != "none" and len(memory) > 0  # task 1 has no memory: plain LoRA training
    outer = None
    if merging and cfg.controller.outer_lr is not None:
        outer = torch.optim.AdamW(params, lr=cfg.controller.outer_lr)
    optim = {"optimizer": optimizer, "scheduler": scheduler, "outer": outer}
    if ts is None:
        ts = TaskState(anchor=snapshot(ctx.params))
        controller.reset_task()
    else:
        for name, obj in optim.items():
            if obj is not None:
                obj.load_state_dict(optim_states[name])
    ts.t_start = time.time()
    batch_seed = f"{cfg.seed}/{stage.name}"
    ctx.log(f"[run] task {stage.index + 1} ({stage.name}): {total} steps, {len(examples)} examples, "
            f"memory {len(memory)}")  # fmt: skip
    for step in range(ts.step, total):
        ctx.bb.model.train()
        batch = batch_for_step(examples, step, cfg.train.batch_size, batch_seed)
        lr = optimizer.param_groups[0]["lr"]
        loss = optimize(ctx, batch, optimizer, ts.imp_in if method.weights == "mask" and merging else None)
        scheduler.step()
        c = ts.costs
        c.steps += 1
        c.train_examples += len(batch)
        if method.memory == "replay":
            c.replay_examples += sum(ex.task != stage.name for ex in batch)
        c.forward_passes += 1
        c.backward_passes += 1
        memory_loss = None
        if merging and controller.needs_memory_loss:
            memory_loss = forgetting_signal(ctx, mem_rng, c)
        decision = controller.step(memory_loss) if merging else None
        st = controller.state
        ctx.events.add(
            "steps", task_index=stage.index, task=stage.name, step=step, global_step=ctx.tick(),
            phase="inner", train_loss=loss, memory_loss=memory_loss, threshold=st.threshold,
            activations=st.activations, interval=st.interval, burst_len=st.burst,
            lam=st.lambdas[-1] if st.lambdas else None, lr=lr,
        )  # fmt: skip
        if decision is not None and decision.merge:
            merge(ctx, stage, ts, step, decision.trigger, optimizer, outer, mem_rng)
        ts.step = step + 1
        if cfg.checkpoint.keep == "best_dev" and ts.step % cfg.checkpoint.best_dev_every == 0:
            track_best(ctx, stage, ts)
        if cfg.checkpoint.every_steps and ts.step % cfg.checkpoint.every_steps == 0 and ts.step < total:
            ctx.checkpoint(stage.index, ts.step, ts, optim, mem_rng)
    if method.schedule == "single" and merging:
        interval = total
        burst = signals.burst_length(interval, cfg.controller.s0, cfg.controller.m0)
        merge(ctx, stage, ts, total - 1, "task_end", optimizer, outer, mem_rng, interval, burst)
    if cfg.checkpoint.keep == "best_dev":
        track_best(ctx, stage, ts)
    return ts


def optimize(ctx: Context, batch: list[Example], optimizer, importance: dict | None) -> float:
    """One optimizer step on the mean answer loss of `batch` (gradient clipping; importance EMA if asked).

    Each rank takes its shard and divides its summed loss by the batch's global answer-token count, so the
    gradients summed over ranks are those of the whole batch on one rank.
    """
    params = list(ctx.params.values())
    for p in params:
        p.grad = None
    shard = ctx.dist.shard(batch)
    tokens = ctx.dist.sum(answer_tokens(ctx.bb, shard))
    ctx.reseed(0)
    local = 0.0
    if shard:
        loss = answer_loss(ctx.bb, shard, reduction="sum") / tokens
        loss.backward()
        local = loss.item()
    ctx.dist.sum_grads(params)
    torch.nn.utils.clip_grad_norm_(params, ctx.cfg.train.grad_clip)
    if importance is not None:
        fusion.update_importance(importance, ctx.params, ctx.cfg.controller.importance_beta)
    optimizer.step()
    return ctx.dist.sum(local)


@torch.no_grad()
def forgetting_signal(ctx: Context, mem_rng: random.Random, costs: Costs) -> float:
    """The loss on one fresh random memory batch, no gradient (train or eval mode, controller.fs_mode)."""
    batch = ctx.memory.sample_batch(ctx.cfg.memory.batch_size, mem_rng)
    if ctx.cfg.controller.fs_mode == "eval":
        ctx.bb.model.eval()
    shard = ctx.dist.shard(batch)
    ctx.reseed(1)
    local = answer_loss(ctx.bb, shard, reduction="sum").item() if shard else 0.0
    loss = ctx.dist.sum(local) / ctx.dist.sum(answer_tokens(ctx.bb, shard))
    ctx.bb.model.train()
    costs.monitor_examples += len(batch)
    costs.forward_passes += 1
    return loss


def merge(
    ctx: Context, stage: Stage, ts: TaskState, step: int, trigger: str, optimizer, outer,
    mem_rng: random.Random, interval: int | None = None, burst: int | None = None,
) -> None:  # fmt: skip
    """delta_in = theta - theta_t; rehearsal burst of M steps; delta_out; fusion; learning signal."""
    cfg, method, controller, params = ctx.cfg, ctx.method, ctx.controller, ctx.params
    st = controller.state
    interval = interval or st.interval
    burst = st.burst if burst is None else burst
    activations = st.activations
    trigger_step = ctx.global_step - 1  # the inner step that triggered the merge
    delta_in = fusion.difference(params, ts.anchor)
    before = snapshot(params)
    if method.burst:
        for _ in range(burst):
            batch = ctx.memory.sample_batch(cfg.memory.batch_size, mem_rng)
            lr = (outer or optimizer).param_groups[0]["lr"]
            loss = optimize(ctx, batch, outer or optimizer, ts.imp_out if method.weights == "mask" else None)
            ts.costs.burst_examples += len(batch)
            ts.costs.forward_passes += 1
            ts.costs.backward_passes += 1
            ctx.events.add(
                "steps", task_index=stage.index, task=stage.name, step=step,
                global_step=ctx.tick(), phase="burst", train_loss=loss, memory_loss=None,
                threshold=st.threshold, activations=activations, interval=interval, burst_len=burst,
                lam=st.lambdas[-1] if st.lambdas else None, lr=lr,
            )  # fmt: skip
    delta_out = fusion.difference(params, before)
    if method.weights == "mask" and ts.imp_in and ts.imp_out:
        fused = fusion.fuse_masked(ts.anchor, delta_in, delta_out, ts.imp_in, ts.imp_out,
                                   cfg.controller.importance_top)  # fmt: skip
        w_in = w_out = float("nan")  # element-wise
    else:
        if method.weights == "rule" and cfg.controller.weights == "rule":
            w_in, w_out = controller.weights()
        else:
            w_in, w_out = cfg.controller.fixed_w_in, cfg.controller.fixed_w_out
        fused = fusion.fuse(ts.anchor, delta_in, delta_out, w_in, w_out)
    assign(params, fused)
    ts.anchor = snapshot(params)
    lam = signals.learning_signal(delta_in, interval)
    controller.merged(lam)
    ts.costs.merges += 1
    ctx.events.add(
        "merges", task_index=stage.index, task=stage.name, step=step, global_step=trigger_step,
        trigger=trigger if method.schedule == "adaptive" else method.schedule if trigger != "task_end" else trigger,
        interval=interval, burst_len=burst if method.burst else 0, activations=activations, w_in=w_in,
        w_out=w_out, l1_delta_in=_l1(delta_in), l1_delta_out=_l1(delta_out), lam=lam,
    )  # fmt: skip


def _l1(state: dict[str, torch.Tensor]) -> float:
    return float(sum(t.abs().sum().item() for t in state.values()))


def track_best(ctx: Context, stage: Stage, ts: TaskState) -> None:
    """checkpoint.keep=best_dev: score the adapter on a few dev examples of every seen task (as the
    released code does; this reads past-task dev data beyond the memory) and keep the best state."""
    n = ctx.cfg.checkpoint.best_dev_examples
    seen = [i for i in stage.eval_tasks if ctx.method.joint or i <= stage.index]
    t0 = time.time()
    values = [score_task(ctx, i, ctx.data[i].dev[:n])[0] for i in seen]
    ts.costs.eval_examples += n * len(seen)
    ts.costs.eval_seconds += time.time() - t0
    score = sum(values) / len(values)
    if score > ts.best_score:
        ts.best_score, ts.best = score, snapshot(ctx.params)


def evaluate_tasks(ctx: Context, after_index: int, after_task: str, which: list[int], costs: Costs) -> dict:
    """Evaluate tasks on the configured splits; one evals row each. Returns {(task, split): value}."""
    scores = {}
    t0 = time.time()
    for i in which:
        spec = ctx.specs[i]
        for split in ctx.cfg.eval.splits:
            value, n, metric = score_task(ctx, i, ctx.data[i].split(split))
            costs.eval_examples += n
            ctx.events.add("evals", after_index=after_index, after_task=after_task, eval_index=i,
                           eval_task=spec.name, split=split, metric=metric, value=value, n=n)  # fmt: skip
            scores[(spec.name, split)] = value
    costs.eval_seconds += time.time() - t0
    return scores


def score_task(ctx: Context, i: int, examples: list[Example]) -> tuple[float, int, str]:
    """(value, n, metric) of task i on `examples`; each rank scores its shard and the sums are combined."""
    spec = ctx.specs[i]
    mode = ctx.cfg.eval.mode if spec.labels else "generate"
    res = evaluate(ctx.bb, ctx.dist.shard(examples), spec.labels, mode, ctx.cfg.train.eval_batch_size)
    n = ctx.dist.sum(res.n)
    return ctx.dist.sum(res.value * res.n) / max(n, 1), int(n), res.metric
