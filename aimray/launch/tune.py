"""Ray Tune + Optuna over the AimMerging controller and the rehearsal sizes, each trial across task orders.

A sweep spec (YAML, sweeps/configs/) names the method, benchmark, orders, preset, fixed overrides and the
search space. Each trial runs the same config over the spec's orders (empty: the benchmark's paper orders;
the benchmark: the spec's, else the preset's), in the trial's process or in a TorchTrainer with N workers,
and reports after every task: `tasks_done` (the fidelity for ASHA or HyperBand) and `objective` (dev data
only; aimray.objective). Test metrics are recorded for reporting. `--resume` continues the sweep in --out
only with the settings it began with (sweep.json; `check_resumed`).

Output under --out:
    trials.parquet          one row per trial: config columns, objective(s), Pareto front, status, wall time
    trial_orders.parquet    one row per trial and finished order: its run's test OP/BWT/FWT, dev OP/BWT and
                            compute (long form: the order is a column)
    best.md                 the best configs with dev and test metrics (analysis.report.best_markdown)
    runs/<trial>/order<k>/  every run's trajectory events, manifest and accuracy matrix
    ray/tune/               Tune's experiment state (--resume continues from it)
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
import typing
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pyarrow.fs as pafs
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, HyperBandScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from aimray import plugins
from aimray.cliargs import check_out_dir
from aimray.config import RunConfig, _coerce, deep_merge, make_config, nest, parse_overrides, read_yaml
from aimray.files import locked, pid_alive, read_json, write_parquet_atomic
from aimray.launch import storage as storage_lib
from aimray.launch.cluster import ensure_ray, link_ray_logs
from aimray.launch.stop import RayStop, StopFlag, driver_signals, flag_name, quiet_tune_hints
from aimray.loop import check_inputs, run
from aimray.manifest import status_of
from aimray.methods import get_method
from aimray.objective import OBJECTIVES, ORDER_METRICS, SENSES, ObjectiveTracker, order_summary
from aimray.results import collect
from aimray.stopping import STOP, Stop, StopRequested
from aimray.tasks import get_benchmark
from analysis import report as R
from analysis import stats

logger = logging.getLogger(__name__)
KINDS = ("uniform", "loguniform", "int", "logint", "choice")
TRACKERS = ("tensorboard", "mlflow", "wandb")


@dataclass(frozen=True)
class Param:
    """One searched config key: kind (uniform, loguniform, int, logint, choice), its range or choices,
    and an optional condition {other key: value} under which it is searched (define-by-run)."""

    key: str
    kind: str
    values: tuple
    when: tuple[tuple[str, Any], ...] = ()

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.values))
        low, high = self.values
        if self.kind in ("int", "logint"):
            return trial.suggest_int(self.key, int(low), int(high), log=self.kind == "logint")
        return trial.suggest_float(self.key, float(low), float(high), log=self.kind == "loguniform")


@dataclass(frozen=True)
class SweepSpec:
    method: str = "aimmerging"
    benchmark: str | None = None  # None: the preset's (load_sweep resolves it; offline-standard if it names none)
    orders: tuple[int, ...] = ()  # empty: the benchmark's paper orders (not its seeded permutations, 101+)
    preset: str | None = "sweep"
    seed: int = 0
    data_dir: str | None = None
    overrides: dict = field(default_factory=dict)  # fixed config values (nested)
    space: tuple[Param, ...] = ()
    objective: str = "dev_op"
    # multi-objective search (Optuna's multi-objective TPE): e.g. (dev_op, dev_bwt, compute); the first is
    # also `objective`, the scalar ASHA / HyperBand stop trials on. Empty: single-objective on `objective`.
    objectives: tuple[str, ...] = ()
    # orders left out of the search: the best config(s) and the defaults run on them after it (transfer)
    holdout_orders: tuple[int, ...] = ()
    # experiment trackers fed by Ray Tune's callbacks with every report: tensorboard, mlflow, wandb
    callbacks: tuple[str, ...] = ()
    mlflow_uri: str = ""  # "": sqlite:///<out>/mlflow.db (or $MLFLOW_TRACKING_URI)
    # the searcher's Optuna study, live while the sweep runs (optuna-dashboard <it>): "" = a journal file
    # <out>/optuna.journal; an RDB URL (sqlite:///..., postgresql://...) also works
    optuna_storage: str = ""
    storage: str = ""  # Ray's storage (--storage): a URI makes it the study's home (aimray.launch.storage)
    scheduler: str = "asha"  # asha, hyperband or none
    num_samples: int = 8
    concurrency: int = 0  # 0: sized to the cluster
    max_failures: int = 2  # a trial whose process or node dies starts again (its runs from their last copy)
    workers: int = 0  # 0: each trial runs the loop in its own process; N: a TorchTrainer with N workers
    cpus_per_trial: float = 0.0  # 0: all CPUs / concurrency (in-process) or 1 per worker
    gpus_per_trial: float = 0.0  # GPUs per in-process trial (fractional: small-model trials share a GPU)
    gpus_per_worker: float = 0.0  # GPUs per Ray Train worker (with workers > 0)
    out: str = "runs/sweep"
    include_defaults: bool = True  # the first trial evaluates the preset's values of the searched keys
    # modules that register tasks, methods, ... (aimray.plugins), imported in the driver and in every trial
    plugins: tuple[str, ...] = ()

    def all_orders(self) -> tuple[int, ...]:
        bench = get_benchmark(self.benchmark)
        return self.orders or bench.main_orders

    def tune_orders(self) -> tuple[int, ...]:
        """The orders trials run on: every order but the held-out ones."""
        return tuple(o for o in self.all_orders() if o not in self.holdout_orders)

    def kinds(self) -> list[str]:
        """Every objective searched: `objectives`, or [objective]."""
        return list(self.objectives) or [self.objective]

    def num_tasks(self) -> int:
        return len(get_benchmark(self.benchmark).order(self.all_orders()[0]))


def parse_space(raw: dict) -> tuple[Param, ...]:
    """{key: {kind: [low, high] | [choices], if: {key: value}}} -> Params. A condition names a choice or int
    key searched before it, with a value it can take. (load_sweep checks the keys against the run config.)"""
    if not isinstance(raw or {}, dict):
        raise ValueError(f"space: expected a mapping of config keys to ranges, got {raw!r}")
    params: dict[str, Param] = {}
    for key, rule in (raw or {}).items():
        if not isinstance(rule, dict):
            raise ValueError(f"space.{key}: expected a mapping like {{uniform: [1.0, 3.0]}}, got {rule!r}")
        kinds = [k for k in rule if k in KINDS]
        unknown = [k for k in rule if k not in (*KINDS, "if")]
        if len(kinds) != 1 or unknown:
            raise ValueError(f"space.{key}: give exactly one of {', '.join(KINDS)} (and optionally 'if'); got {rule}")
        kind = kinds[0]
        if not isinstance(rule[kind], list):
            raise ValueError(f"space.{key}: {kind} needs a list, got {rule[kind]!r}")
        values = tuple(rule[kind])
        if kind != "choice":
            numbers = all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values)
            if len(values) != 2 or not numbers or not values[0] < values[1]:
                raise ValueError(
                    f"space.{key}: {kind} needs [low, high], finite numbers with low < high, got {list(values)}"
                )
            if kind.startswith("log") and values[0] <= 0:
                raise ValueError(f"space.{key}: {kind} needs low > 0, got {list(values)}")
        if kind == "choice" and not values:
            raise ValueError(f"space.{key}: choice needs at least one value")
        when = rule.get("if") or {}
        if not isinstance(when, dict):
            raise ValueError(f"space.{key}.if: expected a mapping {{key: value}}, got {when!r}")
        for other, value in when.items():
            cond = params.get(other)
            if cond is None:
                raise ValueError(
                    f"space.{key}.if: {other!r} is not a key searched before it (earlier keys: "
                    f"{', '.join(params) or 'none'})"
                )
            if cond.kind in ("uniform", "loguniform"):
                raise ValueError(f"space.{key}.if: {other!r} is a {cond.kind} range; a condition needs a choice or int")
            if cond.kind == "choice":
                takes = value in cond.values
            else:
                whole = isinstance(value, int) and not isinstance(value, bool)
                takes = whole and cond.values[0] <= value <= cond.values[1]
            if not takes:
                sampled = f"{cond.kind} {list(cond.values)}"
                raise ValueError(f"space.{key}.if: {other}={value!r} is never sampled ({sampled})")
        params[key] = Param(key, kind, values, tuple(when.items()))
    return tuple(params.values())


def load_sweep(path: str | Path | None, overrides: list[str], **flags: Any) -> SweepSpec:
    """The sweep spec from YAML, then `key=value` overrides (spec fields or config keys), then CLI flags;
    checked (check_spec) before anything runs."""
    raw = spec_values(read_yaml(path) if path else {}, parse_overrides(overrides), flags)
    raw["plugins"] = tuple(plugins.load(raw.get("plugins")))  # before any config names what they register
    spec = SweepSpec(**raw)
    if spec.benchmark is None:  # the preset's, as `python -m aimray run --preset P` takes it
        spec = replace(spec, benchmark=make_config(spec.preset, spec.overrides, method=spec.method).benchmark)
    if spec.objectives:
        spec = replace(spec, objective=spec.objectives[0])
    check_spec(spec)
    return spec


def spec_values(raw: dict, extra: dict, flags: dict) -> dict:
    """The spec's fields from the YAML mapping, the key=value overrides and the flags, each coerced to its
    type; ValueError naming an unknown key or a bad value."""
    spec_fields = {f for f in SweepSpec.__dataclass_fields__}
    run_fields = set(RunConfig.__dataclass_fields__)
    for key, value in extra.items():
        if key not in spec_fields and key not in run_fields:
            raise ValueError(
                f"unknown key {key!r}: not a sweep field ({', '.join(sorted(spec_fields - {'overrides', 'space'}))}) "
                f"nor a run-config key ({', '.join(sorted(run_fields))})"
            )
        if key in spec_fields and key not in ("overrides", "space"):
            raw[key] = value
        else:  # a run config key: a fixed value for every trial
            raw.setdefault("overrides", {})
            raw["overrides"] = deep_merge(raw["overrides"], {key: value})
    raw.update({k: v for k, v in flags.items() if v is not None})
    unknown = sorted(set(raw) - spec_fields)
    if unknown:
        raise ValueError(f"unknown sweep key(s) {unknown}; valid: {', '.join(sorted(spec_fields))}")
    raw["space"] = parse_space(raw.get("space", {}))
    for key in ("orders", "holdout_orders"):
        orders = raw.get(key) or ()
        if not isinstance(orders, list | tuple):
            raise ValueError(
                f"{key}={orders!r} must be a list of order numbers" + " (empty: the paper's orders)" * (key == "orders")
            )
        raw[key] = tuple(_coerce(v, int, key) for v in orders)
    for key in ("objectives", "callbacks", "plugins"):
        names = raw.get(key) or ()
        if isinstance(names, str):
            names = [o.strip() for o in names.split(",") if o.strip()]
        if not isinstance(names, list | tuple):
            raise ValueError(f"{key}={names!r} must be a list of names")
        raw[key] = tuple(str(o) for o in names)
    if not isinstance(raw.get("overrides") or {}, dict):
        raise ValueError(f"overrides={raw['overrides']!r} must be a mapping of run-config keys to values")
    raw["overrides"] = raw.get("overrides") or {}
    hints = typing.get_type_hints(SweepSpec)
    for key in set(raw) - {"orders", "holdout_orders", "objectives", "callbacks", "plugins", "overrides", "space"}:
        raw[key] = _coerce(raw[key], hints[key], key)
    return raw


def check_spec(spec: SweepSpec) -> None:
    """ValueError naming the field for a spec no sweep could run: resources, objectives, trackers, orders,
    a method without a sequence, data whose dev is test, or a space with a value the run config refuses."""
    for key in ("concurrency", "workers", "cpus_per_trial", "gpus_per_trial", "gpus_per_worker"):
        if getattr(spec, key) < 0:
            raise ValueError(f"{key}={getattr(spec, key)!r} must be >= 0")
    check_out_dir(spec.out, "out")
    for name in spec.kinds():
        if name not in OBJECTIVES:
            where = f"objectives: {name!r}" if spec.objectives else f"objective={name!r}"
            raise ValueError(f"{where} is unknown; valid: {', '.join(OBJECTIVES)}")
    if len(set(spec.kinds())) != len(spec.kinds()):
        raise ValueError(f"objectives={list(spec.objectives)} names one objective twice")
    unknown = [c for c in spec.callbacks if c not in TRACKERS]
    if unknown:
        raise ValueError(f"callbacks: {', '.join(unknown)} unknown; valid: {', '.join(TRACKERS)}")
    tracker_callbacks(spec)  # a tracker whose package is missing fails now, naming the extra
    bad = [o for o in spec.holdout_orders if o not in spec.all_orders()]
    if bad:
        raise ValueError(f"holdout_orders={list(spec.holdout_orders)}: {bad} not among the orders {spec.all_orders()}")
    if trial_config(spec, spec.all_orders()[0], {}).data.release_split:
        raise ValueError(
            "data.release_split=true: that dev overlaps test, so a sweep tuning on dev would tune on test; "
            "it is for reproducing the released code's numbers with fixed configs only"
        )
    if spec.holdout_orders and not spec.tune_orders():
        raise ValueError(f"holdout_orders={list(spec.holdout_orders)} leaves no order to tune on")
    if spec.scheduler not in ("asha", "hyperband", "none"):
        raise ValueError(f"scheduler={spec.scheduler!r}; valid: asha, hyperband, none")
    method = get_method(spec.method)
    if method.shape != "sequential":
        raise ValueError(
            f"method={spec.method!r}: a sweep's objective needs a sequence of tasks (not mtl or single_task)"
        )
    if spec.num_samples < 1:
        raise ValueError(f"num_samples={spec.num_samples} must be >= 1")
    check_space(spec)


def check_space(spec: SweepSpec) -> None:
    """Every order, and both ends of every range (every choice), against the run config now, not in a trial;
    then whether the schedule can act within a task at the space's largest values."""
    for order in spec.all_orders():
        trial_config(spec, order, {p.key: p.values[0] for p in spec.space})
        trial_config(spec, order, {p.key: p.values[-1] for p in spec.space})
    for p in spec.space:
        for value in p.values[1:-1]:
            trial_config(spec, spec.all_orders()[0], {p.key: value})
    check_expressible(spec)


def check_expressible(spec: SweepSpec) -> None:
    """ValueError when some trials' merge schedule cannot act within a task: a trial that never merges
    measures SeqLoRA, not a controller. Without an activation AimMerging's first merge comes at
    forced_multiple x S0 steps and fixed_interval's at fixed_s; both must fit in a task's steps (at the
    largest values the space can draw, against the requested training-set size)."""
    method = get_method(spec.method)
    if method.schedule not in ("adaptive", "fixed"):
        return
    cfg = trial_config(spec, spec.all_orders()[0], {})
    steps = math.ceil(cfg.data.train * cfg.train.epochs / cfg.train.batch_size)
    space = {p.key: p for p in spec.space}

    def largest(key: str, value: float) -> float:
        p = space.get(key)
        return value if p is None else max(p.values) if p.kind == "choice" else p.values[1]

    if method.schedule == "adaptive":
        s0, multiple = (
            largest("controller.s0", cfg.controller.s0),
            largest("controller.forced_multiple", cfg.controller.forced_multiple),
        )
        if s0 * multiple > steps:
            fit = max(1, int(steps // multiple))
            raise ValueError(
                f"space: controller.s0 up to {s0:g} with forced_multiple {multiple:g} puts the first merge at "
                f"{s0 * multiple:g} steps, but a task has {steps} ({cfg.data.train} examples x {cfg.train.epochs:g} "
                f"epochs / batch {cfg.train.batch_size}): such trials may never merge; keep controller.s0 <= {fit} "
                "(or forced_multiple lower, or more steps per task)"
            )
    elif largest("controller.fixed_s", cfg.controller.fixed_s) > steps:
        raise ValueError(f"space: controller.fixed_s can exceed a task's {steps} steps: such trials never merge")


def trial_config(spec: SweepSpec, order: int, sampled: dict[str, Any]):
    """A trial's run config on `order`; dev joins eval.splits where the preset scores test only (the long
    preset): a sweep is scored on dev."""
    overrides = deep_merge(spec.overrides, nest(sampled))
    top = dict(method=spec.method, benchmark=spec.benchmark, order=order, seed=spec.seed, data_dir=spec.data_dir)
    cfg = make_config(spec.preset, overrides, **top)
    if "dev" in cfg.eval.splits:
        return cfg
    return make_config(spec.preset, deep_merge(overrides, {"eval": {"splits": [*cfg.eval.splits, "dev"]}}), **top)


@dataclass(frozen=True)
class define_by_run:
    """Optuna define-by-run search space: a parameter is searched only when its condition holds."""

    space: tuple[Param, ...]

    def __call__(self, trial: optuna.Trial) -> None:
        chosen: dict[str, Any] = {}
        for p in self.space:
            if all(chosen.get(k) == v for k, v in p.when):
                chosen[p.key] = p.suggest(trial)


def default_point(spec: SweepSpec) -> dict[str, Any]:
    """The preset's values of the searched keys (a first trial to compare the search against)."""
    cfg = make_config(
        spec.preset,
        spec.overrides,
        method=spec.method,
        benchmark=spec.benchmark,
        order=spec.all_orders()[0],
        seed=spec.seed,
        data_dir=spec.data_dir,
    ).to_dict()
    point: dict[str, Any] = {}
    for p in spec.space:
        node: Any = cfg
        for part in p.key.split("."):
            node = node[part]
        if not all(point.get(k) == v for k, v in p.when):
            continue
        if p.kind == "choice" and node not in p.values:
            return {}
        if p.kind != "choice" and not (p.values[0] <= node <= p.values[1]):
            return {}  # the preset lies outside the space: no default point
        point[p.key] = node
    return point


# --------------------------------------------------------------------------------------------- trainable


def run_trial(config: dict, spec: SweepSpec) -> None:
    """One Tune trial: the sampled config over every order; reports after every task."""
    plugins.load(spec.plugins, env=False)  # this worker process has not imported them yet
    trial_id = tune.get_context().get_trial_id()
    stop = RayStop(stop_name(spec))
    stop.report("started", trial_id)
    try:
        metrics = run_orders(config, spec, trial_id, stop)
    except StopRequested:
        # The driver asked the sweep to stop: this trial's run checkpointed and stopped. Tune ends the trial
        # (its state saved as unfinished: --resume starts it again, and its runs resume from their checkpoints).
        stop.report("stopped_trial", trial_id)
        while True:
            time.sleep(60)
    stop.report("finished", trial_id)
    tune.report(metrics)


def stop_name(spec: SweepSpec) -> str:
    """The name of the sweep's stop flag actor: one per sweep folder."""
    return flag_name(spec.out)


def run_orders(config: dict, spec: SweepSpec, trial_id: str, stop: RayStop) -> dict:
    """The sampled config over every order of the trial, in order; returns the trial's final metrics."""
    orders = spec.tune_orders()
    trial_dir = Path(spec.out).resolve() / "runs" / trial_id
    tracker = ObjectiveTracker(spec.objective, list(orders), spec.num_tasks(), kinds=spec.kinds())
    sampled = {k: v for k, v in config.items() if not k.startswith("_")}
    if spec.workers == 0:  # one thread per CPU given to the trial, or trials fight for cores
        sampled["train.threads"] = max(1, int(spec.cpus_per_trial))
    fs, base = storage_lib.location(spec.storage, Path(spec.out))
    for order in orders:
        cfg = trial_config(spec, order, sampled)
        out = trial_dir / f"order{order}"
        where = f"runs/{trial_id}/order{order}"
        if spec.workers == 0:
            remote = storage_lib.RemoteFolder(fs, f"{base}/{where}") if fs is not None else None
            if remote is not None:
                remote.restore(out)  # a trial retried on another node carries on from its last copy
            run_order(cfg, out, tracker, remote, labels={"trial": trial_id}, stop=stop)
        else:  # the workers report every task (rank 0 copies the folder); the tracker records their run
            from aimray.launch.train import Resources, run_with_ray_train

            res = Resources(spec.workers, spec.cpus_per_trial, spec.gpus_per_worker)
            copy = (spec.storage, where) if fs is not None else None
            state = tracker.state_dict()
            labels = {"trial": trial_id}
            tracker.finish(run_with_ray_train(cfg, out, res, tracker=state, remote=copy, labels=labels, stop=stop.name))
    return tracker.final_metrics()


def run_order(
    cfg: RunConfig,
    out: Path,
    tracker: ObjectiveTracker,
    remote: storage_lib.RemoteFolder | None = None,
    labels: dict[str, str] | None = None,
    stop: Stop = STOP,
) -> None:
    """Run one order in this process, reporting to Tune after every task; the last task's report carries
    the order's summary from the result `run` returns. A run that had finished before (a restored trial)
    reports nothing and is recorded all the same. With `remote`, the run folder is copied to the sweep's
    storage after every task and at the end. `labels` go into the run's manifest (its trial)."""
    last: list[dict] = []

    def report(row: dict) -> None:
        if remote is not None:
            remote.upload(out)
        if tracker.is_last(row):
            last.append(row)
        else:
            tune.report(tracker.update(row))

    result = run(cfg, out, report=report, log=lambda _: None, labels=labels, stop=stop)
    if remote is not None:
        remote.upload(out)
    metrics = tracker.finish(result)
    if last:
        tune.report(metrics)


def sweep(
    spec: SweepSpec,
    resume: bool = False,
    address: str | None = None,
    storage: str | None = None,
    dashboard: str | None = None,
    verbose: bool = False,
) -> pd.DataFrame:
    """Run (or resume) the sweep; returns the trials table (also written to <out>/trials.parquet).
    `dashboard`: a host for the local Ray's dashboard (started only when given). `verbose`: Tune's detailed
    output, every result of every trial, instead of its periodic status table."""
    out = Path(spec.out).resolve()
    fs, storage_path = storage_lib.location(storage, out / "ray")
    experiment = f"{storage_path}/tune"
    # a missing --data-dir, a broken data file or asset fails here, before anything is written
    check_inputs(trial_config(spec, order, {}) for order in spec.all_orders())
    lease = contextlib.nullcontext()
    if storage:  # one driver per storage prefix too, across machines
        lease = storage_lib.prefix_lease(fs or pafs.LocalFileSystem(), storage_path, storage)
    with sweep_folder(out), lease:  # one driver per sweep folder, from here to the end
        restorable = tune.Tuner.can_restore(experiment, storage_filesystem=fs)
        if resume and not restorable:
            raise FileNotFoundError(f"no sweep to resume in {experiment}; run without --resume first")
        if resume:
            check_resumed(spec, out / "sweep.json")
        if not resume and restorable:
            raise FileExistsError(f"{out} already holds a sweep: pass --resume to continue it, or use another --out")
        ensure_ray(address, dashboard=dashboard is not None, dashboard_host=dashboard or "127.0.0.1")
        check_resources(spec, ray.cluster_resources())  # before anything but the lock is written
        return run_sweep(spec, out, fs, storage, storage_path, resume, verbose)


# What a sweep's trials are: resuming with another value would mix two searches in one study.
SWEEP_IDENTITY = (
    "method",
    "benchmark",
    "orders",
    "holdout_orders",
    "preset",
    "seed",
    "data_dir",
    "overrides",
    "space",
    "objective",
    "objectives",
)


def spec_record(spec: SweepSpec) -> dict:
    """The spec as <out>/sweep.json holds it (tuples as lists, anything else JSON lacks as text)."""
    return json.loads(json.dumps(asdict(spec), default=str))


def check_resumed(spec: SweepSpec, path: Path) -> None:
    """ValueError naming every field of SWEEP_IDENTITY in which `spec` differs from the sweep the folder
    began (its sweep.json): e.g. a sweep begun when an unnamed benchmark meant offline-standard, resumed
    under a preset that names another."""
    if not path.is_file():
        return
    stored = read_json(path)
    if not isinstance(stored, dict):
        raise ValueError(f"{path}: expected a JSON object (the sweep's spec), got {type(stored).__name__}")
    now = spec_record(spec)
    changed = [k for k in SWEEP_IDENTITY if k in stored and stored[k] != now[k]]
    if changed:
        diffs = "; ".join(f"{k} was {stored[k]!r}, now {now[k]!r}" for k in changed)
        raise ValueError(
            f"--resume: {path.parent} holds a sweep begun with other settings ({diffs}): resume it with the "
            "settings it began with, or start this one in another --out"
        )


@contextlib.contextmanager
def sweep_folder(out: Path) -> Iterator[None]:
    """Hold <out>/.lock while the sweep runs: a second driver on the same folder fails at once with
    FolderInUseError naming the holder's pid (the kernel drops the lock when its holder dies; a lock file a
    dead driver left is taken over with a warning). A folder made here is removed again if the sweep fails
    before writing anything but the lock."""
    created, lock = not out.exists(), out / ".lock"
    out.mkdir(parents=True, exist_ok=True)
    before = lock.read_text().strip() if lock.exists() else ""
    try:
        with locked(lock):
            if before.isdigit() and int(before) != os.getpid() and not pid_alive(int(before)):
                print(f"[sweep] {out}: taking over from pid {before}, which is no longer running", flush=True)
            try:
                yield
            finally:
                lock.write_text("")  # released: the next driver finds no pid to take over from
    except BaseException:
        if created and {p.name for p in out.iterdir()} <= {".lock"}:
            shutil.rmtree(out, ignore_errors=True)
        raise


def run_sweep(
    spec: SweepSpec, out: Path, fs, storage: str | None, storage_path: str, resume: bool, verbose: bool
) -> pd.DataFrame:
    """`sweep` once its folder is held and Ray is up: Tune, then the sweep's tables and reports."""
    logs = link_ray_logs(out)
    if logs is not None:
        print(f"[sweep] Ray's own logs: {logs} (linked as {out / 'ray-logs'})", flush=True)
    per_trial = spec.cpus_per_trial or 1.0  # CPUs per in-process trial, or per Train worker
    spec = replace(spec, cpus_per_trial=per_trial, out=str(out), storage=storage or "")
    (out / "sweep.json").write_text(json.dumps(spec_record(spec), indent=1))
    t0 = time.time()
    flag = StopFlag.start(stop_name(spec))
    quiet_tune_hints()
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # SIGINT is driver_signals'; Tune keeps SIGUSR1
    with driver_signals(flag) as asked:
        grid = fit(make_tuner(spec, storage_path, fs, resume, verbose), fs, storage_path)
    if asked.signum is not None:  # no tables: a stopped sweep's would read as final
        done = int((trials_table(grid, spec).get("status", pd.Series(dtype=str)) == "completed").sum())
        raise SweepInterrupted(asked.signum, done, spec.num_samples)
    if fs is not None:  # every trial's trajectories, wherever it ran, from the storage into --out
        storage_lib.bring_home(fs, f"{storage_path}/runs", out / "runs", f"{storage}/runs")
    table = trials_table(grid, spec)
    write_parquet_atomic(table, out / "trials.parquet")
    per_order = trial_orders(table.get("trial_id", []), spec)
    write_parquet_atomic(per_order, out / "trial_orders.parquet")
    write_reports(spec, table, per_order, time.time() - t0)
    if fs is not None:  # the storage holds the whole study: `python -m analysis <storage>` reads it
        names = ("sweep.json", "trials.parquet", "trial_orders.parquet", "holdout.parquet", "best.md")
        storage_lib.upload_files(fs, storage_path, [out / n for n in names])
    return table


def fit(tuner: tune.Tuner, fs: pafs.FileSystem | None, storage_path: str) -> tune.ResultGrid:
    """`tuner.fit()`; an OSError from the sweep's remote storage (Tune saves and reads its state there through
    pyarrow's own retries only, and lists it once more at the end) becomes StorageUnavailableError naming
    the storage, one line instead of Tune's traceback."""
    try:
        return tuner.fit()
    except OSError as err:
        if fs is None or isinstance(err, storage_lib.StorageUnavailableError):
            raise
        raise storage_lib.StorageUnavailableError(
            f"{fs.type_name}://{storage_path}: storage unreachable while Tune saved or read the sweep's state "
            f"({err}); run the same command with --resume once it is back"
        ) from None


class SweepInterrupted(Exception):
    """The sweep stopped on SIGINT or SIGTERM: its trials checkpointed, Tune's state saved; `--resume`
    continues it. `exit_code`: 130 or 143."""

    def __init__(self, signum: int, finished: int, trials: int) -> None:
        super().__init__(f"interrupted: {finished} of {trials} trials finished; run the same command with --resume")
        self.exit_code = 128 + signum


def make_tuner(spec: SweepSpec, storage_path: str, fs, resume: bool, verbose: bool) -> tune.Tuner:
    """Tune's Tuner for the spec (restored from <storage_path>/tune when resuming): trials sized to the
    cluster."""
    cluster_cpus = ray.cluster_resources().get("CPU", 1)
    if spec.workers == 0:
        concurrency = spec.concurrency or max(1, int(cluster_cpus // spec.cpus_per_trial))
        resources = {"cpu": spec.cpus_per_trial, "gpu": spec.gpus_per_trial}
    else:  # the trial only drives a TorchTrainer whose workers hold the CPUs (0 is rejected)
        concurrency = spec.concurrency or max(1, int(cluster_cpus // (spec.workers * spec.cpus_per_trial)))
        resources = {"cpu": 0.1}
    trainable = tune.with_resources(tune.with_parameters(run_trial, spec=spec), resources)
    if resume:
        return tune.Tuner.restore(
            f"{storage_path}/tune", trainable, resume_unfinished=True, resume_errored=True, storage_filesystem=fs
        )
    run_config = tune.RunConfig(
        name="tune",
        storage_path=storage_path,
        storage_filesystem=fs,
        callbacks=tracker_callbacks(spec),
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        verbose=2 if verbose else 1,
    )
    return tune.Tuner(trainable, tune_config=tune_config(spec, concurrency), run_config=run_config)


def write_reports(spec: SweepSpec, table: pd.DataFrame, per_order: pd.DataFrame, seconds: float) -> None:
    """The held-out orders' runs (holdout.parquet), then best.md."""
    out = Path(spec.out)
    holdout = run_holdout(spec, table) if spec.holdout_orders else None
    if holdout is not None:
        write_parquet_atomic(holdout, out / "holdout.parquet")
    first = trial_config(spec, spec.all_orders()[0], {})
    best = R.best_markdown(
        table,
        per_order,
        method=spec.method,
        benchmark=spec.benchmark,
        orders=spec.tune_orders(),
        objective=spec.objective,
        seconds=seconds,
        knobs=[p.key for p in spec.space],
        objectives=spec.kinds() if spec.objectives else None,
        holdout=holdout,
        default=default_point(spec) if spec.include_defaults else None,
        dev_per_task=first.data.dev,
        tasks=spec.num_tasks(),
        mode=first.eval.mode,
    )
    (out / "best.md").write_text(best)


def check_resources(spec: SweepSpec, cluster: dict) -> None:
    """ValueError naming the flag when one trial asks for more than the whole cluster has (GPUs above all)."""
    gpus, cpus = cluster.get("GPU", 0.0), cluster.get("CPU", 0.0)
    if spec.workers == 0 and spec.gpus_per_worker:
        raise ValueError(
            "--gpus-per-worker is for Ray Train workers (--workers N); in-process trials: --gpus-per-trial"
        )
    if spec.workers and spec.gpus_per_trial:
        raise ValueError("--gpus-per-trial is for in-process trials (--workers 0); Train workers: --gpus-per-worker")
    if spec.gpus_per_trial > gpus:
        raise ValueError(f"--gpus-per-trial={spec.gpus_per_trial:g}, but the cluster has {gpus:g} GPUs")
    if spec.workers * spec.gpus_per_worker > gpus:
        raise ValueError(
            f"--gpus-per-worker={spec.gpus_per_worker:g} x --workers={spec.workers}, but the cluster has {gpus:g} GPUs"
        )
    need = (spec.cpus_per_trial or 1.0) * max(1, spec.workers)
    if need > cpus:
        raise ValueError(
            f"--cpus-per-trial={spec.cpus_per_trial or 1.0:g} per trial or worker: one trial needs {need:g} CPUs, "
            f"the cluster has {cpus:g}"
        )


def holdout_configs(spec: SweepSpec, table: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """What runs on the held-out orders: the default point (the preset's values), and the best completed
    trial, or with several objectives every completed trial on the Pareto front (a trial that sampled the
    default point is the default's run); name -> sampled values."""
    done = table[table.status == "completed"]
    chosen = done[done.pareto] if spec.objectives else done.head(1)
    configs: dict[str, dict[str, Any]] = {"default": default_point(spec)}
    for _, row in chosen.iterrows():
        sampled = {p.key: row[f"config/{p.key}"] for p in spec.space if f"config/{p.key}" in row}
        sampled = {k: _native(v) for k, v in sampled.items() if not _missing(v)}
        if sampled not in configs.values():
            configs[row.trial_id] = sampled
    return configs


def run_holdout(spec: SweepSpec, table: pd.DataFrame) -> pd.DataFrame:
    """Run each of `holdout_configs` on every held-out order (Ray tasks, one per run, spec.cpus_per_trial
    CPUs each; a finished run folder is reused) under <out>/holdout/<name>/order<k>; returns holdout.parquet:
    one row per (config, order) with its dev and test metrics and compute."""
    from aimray.launch.ablations import _run_remote

    out = Path(spec.out)
    fs, base = storage_lib.location(spec.storage, out)
    jobs = {}
    for name, sampled in holdout_configs(spec, table).items():
        for order in spec.holdout_orders:
            cfg = trial_config(spec, order, sampled)
            folder = out / "holdout" / name / f"order{order}"
            copy = (spec.storage, f"holdout/{name}/order{order}") if fs is not None else None
            task = _run_remote.options(num_cpus=spec.cpus_per_trial or 1).remote(
                cfg.to_dict(), str(folder), max(1, int(spec.cpus_per_trial or 1)), copy, spec.plugins
            )
            jobs[task] = (name, order, folder)
    results = {task: ray.get(task) for task in jobs}
    if fs is not None:  # the runs may have run on any node: their copies come into --out/holdout
        storage_lib.bring_home(fs, f"{base}/holdout", out / "holdout", f"{spec.storage}/holdout")
    rows = []
    for task, (name, order, folder) in jobs.items():
        res = results[task]
        row = {"config": name, "order": order, "status": res["status"], "error": res["error"]}
        if res["status"] == "success":
            result = collect(folder)
            row.update(order_summary(result.metrics, result.costs))
        rows.append(row)
    return pd.DataFrame(rows)


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _native(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def tracker_callbacks(spec: SweepSpec) -> list:
    """Ray Tune's logger callbacks for spec.callbacks: TBXLoggerCallback (TensorBoard files in each trial's
    folder under <out>/ray/tune), MLflowLoggerCallback (one MLflow run per trial, experiment
    "aimray-sweep", in spec.mlflow_uri), WandbLoggerCallback (offline unless WANDB_API_KEY is set).
    ImportError naming the pip extra when a tracker's package is missing."""
    callbacks = []
    for name in spec.callbacks:
        try:
            if name == "tensorboard":
                from ray.tune.logger import TBXLoggerCallback

                callbacks.append(TBXLoggerCallback())
            elif name == "mlflow":
                import mlflow  # noqa: F401  (MLflowLoggerCallback imports it only later, in a trial)
                from ray.air.integrations.mlflow import MLflowLoggerCallback

                uri = spec.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{spec.out}/mlflow.db"
                mlflow_callback = resuming_mlflow(MLflowLoggerCallback)
                callbacks.append(mlflow_callback(tracking_uri=uri, experiment_name="aimray-sweep"))
            elif name == "wandb":
                import wandb  # noqa: F401
                from ray.air.integrations.wandb import WandbLoggerCallback

                mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
                callbacks.append(WandbLoggerCallback(project="aimray", mode=mode, dir=str(spec.out)))
        except ImportError as err:
            raise ImportError(
                f"--callbacks {name}: {err.name} is not installed; pip install 'aimray[tracking]'"
            ) from None
    return callbacks


def resuming_mlflow(base: type) -> type:
    """MLflowLoggerCallback that keeps one MLflow run per trial across `--resume`: a trial the new driver
    restores continues the run its first driver started (found by the trial_name tag Ray sets)."""

    class ResumingMLflow(base):
        def log_trial_start(self, trial) -> None:
            if trial not in self._trial_runs:
                util = self.mlflow_util
                found = util._mlflow.search_runs(
                    experiment_ids=[util.experiment_id],
                    filter_string=f"tags.trial_name = '{trial}'",
                    output_format="list",
                )
                if found:
                    self._trial_runs[trial] = found[0].info.run_id
            super().log_trial_start(trial)

    return ResumingMLflow


def optuna_storage(spec: SweepSpec):
    """The searcher's study storage: a JournalFileBackend file (default <out>/optuna.journal) or an RDB URL."""
    target = spec.optuna_storage or str(Path(spec.out) / "optuna.journal")
    if "://" in target:
        return optuna.storages.RDBStorage(target)
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(target))


DIRECTIONS = {"min": "minimize", "max": "maximize"}  # Tune's modes as Optuna's directions


class ResumableOptunaSearch(OptunaSearch):
    """OptunaSearch that lets Tune run again a trial the Optuna study has already finished: a sweep resumed
    from a Tune state older than the study (the storage was away past the limit, so Tune could not save its
    state while its trials failed and were told FAIL; faults.py's storage-outage case). Optuna cannot
    reopen a finished trial: that trial's reports and result stay out of the study (the sampler misses one
    point, said in Ray's logs) and trials.parquet records them as ever."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            logger.warning("trial %s: finished in the Optuna study before this resume; its reports stay out", trial_id)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        try:
            super().on_trial_complete(trial_id, result, error)
        except optuna.exceptions.UpdateFinishedTrialError:
            logger.warning("trial %s: finished in the Optuna study before this resume; its result stays out", trial_id)


def tpe_sampler(seed: int, trials: int) -> optuna.samplers.TPESampler:
    """Multivariate TPE whose random start-up takes a third of the trials (at least 3, at most Optuna's 10):
    with Optuna's default of 10, a sweep of 10 trials or fewer (the demo's 6) would be random search."""
    startup = min(10, max(3, trials // 3))
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=startup)


def tune_config(spec: SweepSpec, concurrency: int) -> tune.TuneConfig:
    """TPE (multi-objective TPE for several objectives) with the preset's values first; ASHA / HyperBand
    stop trials on `objective`, the first objective, in its sense."""
    max_t = len(spec.tune_orders()) * spec.num_tasks()
    points = [default_point(spec)] if spec.include_defaults and spec.space else []
    points = [p for p in points if p]
    sampler = tpe_sampler(spec.seed, spec.num_samples)
    kinds = spec.kinds()
    multi = len(kinds) > 1
    storage = optuna_storage(spec)
    # The study exists before the searcher loads it, so that it carries the objectives' names (what
    # optuna-dashboard labels its axes with; OptunaSearch would leave them "Objective 0", "Objective 1").
    named = optuna.create_study(
        storage=storage,
        study_name="aimray-sweep",
        directions=[DIRECTIONS[SENSES[k]] for k in kinds],
        load_if_exists=True,
    )
    named.set_metric_names(kinds)
    searcher = ResumableOptunaSearch(
        space=define_by_run(spec.space),
        metric=[f"objective/{k}" for k in kinds] if multi else "objective",
        mode=[SENSES[k] for k in kinds] if multi else SENSES[spec.objective],
        sampler=sampler,
        points_to_evaluate=points or None,
        storage=storage,
        study_name="aimray-sweep",
    )
    mode = SENSES[spec.objective]
    if spec.scheduler == "asha":
        scheduler = ASHAScheduler(
            time_attr="tasks_done",
            metric="objective",
            mode=mode,
            max_t=max_t,
            grace_period=spec.num_tasks(),
            reduction_factor=2,
        )
    elif spec.scheduler == "hyperband":
        scheduler = HyperBandScheduler(time_attr="tasks_done", metric="objective", mode=mode, max_t=max_t)
    else:
        scheduler = None
    return tune.TuneConfig(
        search_alg=ConcurrencyLimiter(searcher, max_concurrent=concurrency),
        scheduler=scheduler,
        num_samples=spec.num_samples,
    )


def trials_table(grid: Iterable[tune.Result], spec: SweepSpec) -> pd.DataFrame:
    """trials.parquet: what Tune reports, one row per trial (best objective first): trial_id, status
    (completed, stopped or error), tasks_done, objective, objective/<name> of every objective, pareto
    (completed trials not dominated on the objectives; every completed trial is on the front of one
    objective's maximum), wall_seconds, config/<key>, error. Per-order values: trial_orders. Every other
    summary is analysis.tables'."""
    max_t = len(spec.tune_orders()) * spec.num_tasks()
    rows = []
    for result in grid:
        m = result.metrics or {}
        config = {k: v for k, v in (result.config or {}).items() if not k.startswith("_")}
        done = int(m.get("tasks_done", 0) or 0)
        status = "error" if result.error else ("completed" if done >= max_t else "stopped")
        row = {
            "trial_id": m.get("trial_id") or Path(result.path).name,
            "status": status,
            "tasks_done": done,
            "objective": m.get("objective", math.nan),
            **{f"objective/{k}": m.get(f"objective/{k}", m.get("objective", math.nan)) for k in spec.kinds()},
            "wall_seconds": m.get("time_total_s", math.nan),
        }
        row.update({f"config/{k}": v for k, v in config.items()})
        row["error"] = repr(result.error)[:500] if result.error else None
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    kinds = spec.kinds()
    values = table[[f"objective/{k}" for k in kinds]].to_numpy(dtype=float, copy=True)
    values[(table.status != "completed").to_numpy()] = math.nan  # a stopped trial's values are partial
    table.insert(4 + len(kinds), "pareto", stats.pareto_mask(values, [SENSES[k] for k in kinds]))
    ascending = SENSES[spec.objective] == "min"
    return table.sort_values("objective", ascending=ascending, na_position="last").reset_index(drop=True)


def trial_orders(trial_ids: Iterable[str], spec: SweepSpec) -> pd.DataFrame:
    """trial_orders.parquet: one row per trial and tuned order that has a run folder: trial_id, order, path
    (the folder under --out), status (its manifest's) and, once it finished, the order's summary
    (aimray.objective.ORDER_METRICS: op, bwt, fwt_base on test; dev_op, dev_bwt; compute) read from the run
    itself; NaN before."""
    rows = []
    for trial in trial_ids:
        for order in spec.tune_orders():
            path = f"runs/{trial}/order{order}"
            status = status_of(Path(spec.out) / path)
            if status is None:
                continue
            row = {"trial_id": trial, "order": order, "path": path, "status": status}
            try:
                if status == "success":
                    result = collect(Path(spec.out) / path)
                    row.update(order_summary(result.metrics, result.costs))
            except (OSError, ValueError) as err:  # a damaged copy: the row says so, the sweep's tables go on
                row["status"] = f"unreadable: {err}"[:200]
            rows.append(row)
    columns = ["trial_id", "order", "path", "status", *ORDER_METRICS]
    return pd.DataFrame(rows, columns=columns).astype({"order": "int64"})


__all__ = ["SweepSpec", "load_sweep", "sweep", "trials_table"]
