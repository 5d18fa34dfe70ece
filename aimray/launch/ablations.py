"""Fixed configs of AimMerging, its ablations and the baselines over orders x seeds, in parallel on Ray.

Every (method, order, seed) is one CL run in a Ray task with its own CPUs, written to
<out>/runs/<method>/o<order>-s<seed>-<config hash>/ (the run folder of `python -m aimray run`). A finished
run of the same config is skipped and an interrupted one resumes from its checkpoint, so rerunning the
same command completes a partial study; a changed config gets new folders. SIGINT or SIGTERM to the driver
asks the running runs to checkpoint and stop (aimray.launch.stop) and ends the study with StudyInterrupted
(exit 130 or 143 from the scripts). At the end:
<out>/runs.parquet (one row per run) and <out>/ablation.md (mean +/- std over orders and seeds per method),
both made by analysis.tables from the run folders.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import ray

from aimray import plugins
from aimray.config import RunConfig, config_hash, make_config
from aimray.files import write_parquet_atomic
from aimray.launch.cluster import ensure_ray
from aimray.launch.stop import RayStop, StopFlag, asking, flag_name, grace_seconds
from aimray.loop import check_inputs, run
from aimray.manifest import status_of
from aimray.stopping import STOP, StopRequested
from aimray.tasks import benchmark_tasks
from analysis import report as R
from analysis import tables as T
from analysis.load import NotAStudyError, open_study

DEFAULT_METHODS = (
    "aimmerging",
    "aimmerging_no_ls",
    "aimmerging_no_fs",
    "aimmerging_fixed_weights",
    "aimmerging_no_burst",
    "seqlora",
    "replay",
    "fixed_interval",
    "single_merge",
    "mtl",
    "single_task",
)


def run_dir(out: Path, cfg: RunConfig) -> Path:
    """<out>/runs/<method>/o<order>-s<seed>-<config hash>: a changed config never reuses a finished run."""
    return out / "runs" / cfg.method / f"o{cfg.order}-s{cfg.seed}-{config_hash(cfg)}"


def is_finished(folder: Path) -> bool:
    """Whether the run folder's manifest says the run succeeded."""
    return status_of(folder) == "success"


class StudyInterrupted(Exception):
    """The study's driver was asked to stop (SIGINT or SIGTERM): its running runs checkpointed (or, past the
    grace, will redo the steps since their last checkpoint). `exit_code`: 130 or 143."""

    def __init__(self, signum: int, finished: int, runs: int) -> None:
        super().__init__(f"interrupted: {finished} of {runs} runs finished; run the same command to continue")
        self.exit_code = 128 + signum


@ray.remote
def _run_remote(
    cfg_dict: dict,
    folder: str,
    threads: int,
    remote: tuple[str, str] | None = None,
    plugins: list[str] = (),
    stop_flag: str | None = None,
) -> dict:
    """One run in a Ray task. `remote` (storage URI, path under it): the run folder is copied there after
    every task and at the end, and brought back from there first (a run retried on another node).
    `plugins`: the driver's (aimray.plugins), imported before the config is rebuilt. `stop_flag`: the
    driver's stop flag (aimray.launch.stop), asked before the run starts and at every step."""
    from aimray import plugins as plugin_modules
    from aimray.config import config_from_dict
    from aimray.launch.storage import remote_folder

    stop = RayStop(stop_flag) if stop_flag else STOP
    if stop.asked() is not None:  # queued when the driver was asked to stop: never started
        return {"folder": folder, "status": "not started", "seconds": 0.0, "error": None}
    stop.report("started", folder)
    plugin_modules.load(plugins, env=False)
    cfg = config_from_dict({**cfg_dict, "train": {**cfg_dict["train"], "threads": threads}})
    copy = remote_folder(*remote) if remote is not None else None
    if copy is not None:
        copy.restore(Path(folder))
    t0 = time.time()
    try:
        upload = (lambda _: copy.upload(Path(folder))) if copy else None
        run(cfg, folder, log=lambda _: None, report=upload, stop=stop)
        return {"folder": folder, "status": "success", "seconds": time.time() - t0, "error": None}
    except StopRequested as err:
        return {"folder": folder, "status": "stopped", "seconds": time.time() - t0, "error": str(err)}
    except Exception as err:  # one failed run must not sink the study: it is reported in the table
        return {"folder": folder, "status": "failed", "seconds": time.time() - t0, "error": repr(err)[:500]}
    finally:
        if copy is not None:
            copy.upload(Path(folder))  # its final state, failed or not
        stop.report("finished", folder)


def configs(
    preset: str | None,
    methods: Sequence[str],
    benchmark: str,
    orders: Sequence[int],
    seeds: Sequence[int],
    overrides: dict,
    data_dir: str | None = None,
) -> list[RunConfig]:
    """Every (method, order, seed) config, checked (tasks, data files, backbone: `check_inputs`) before
    anything runs."""
    cfgs = [
        make_config(preset, overrides, method=m, benchmark=benchmark, order=o, seed=s, data_dir=data_dir)
        for m in methods
        for o in orders
        for s in seeds
    ]
    check_inputs(cfgs)
    return cfgs


def priority_order(cfgs: list[RunConfig], first: Sequence[str], last: Sequence[str] = ()) -> list[RunConfig]:
    """The order runs start in: every method at the first seed, then the `first` methods at the other seeds,
    then the rest, and the `last` methods' runs (every seed) after all of them; within that, one run of each
    distinct (seed, first task) before the others, so that the runs after them take task 1 from the stage
    cache instead of computing it side by side."""
    seeds = sorted({c.seed for c in cfgs})
    methods = list(dict.fromkeys(c.method for c in cfgs))

    def group(c: RunConfig) -> int:
        return 3 if c.method in last else 0 if c.seed == seeds[0] else 1 if c.method in first else 2

    ranked = sorted(cfgs, key=lambda c: (group(c), c.seed, methods.index(c.method), c.order))
    leaders, seen = [], set()
    for c in ranked:
        start = (group(c), c.seed, benchmark_tasks(c.benchmark, c.order, c.data_dir)[0].name)
        if start not in seen:
            seen.add(start)
            leaders.append(c)
    rest = [c for c in ranked if not any(c is leader for leader in leaders)]
    return sorted(leaders + rest, key=lambda c: (group(c), c.seed, not any(c is x for x in leaders)))


def run_study(
    cfgs: list[RunConfig], out: Path, cpus_per_run: float = 1.0, log: Callable[[str], None] = print
) -> pd.DataFrame:
    """Run the configs on Ray (finished runs skipped); returns and writes the runs table and ablation.md.
    `cfgs` come from `configs`, which has checked their tasks, data and backbone before this starts Ray."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    left = [cfg for cfg in cfgs if not is_finished(run_dir(out, cfg))]
    log(f"[ablations] {len(cfgs)} runs, {len(cfgs) - len(left)} already finished, {len(left)} to run")
    if left:
        ensure_ray(dashboard=False)  # not for a study that is complete: its tables are written all the same
        flag = StopFlag.start(flag_name(out))
        with asking(flag, "[study]", "the running runs checkpoint and stop", log) as asked:
            _run_all(left, out, cpus_per_run, flag, asked, log)
        if asked.signum is not None:
            raise StudyInterrupted(asked.signum, sum(is_finished(run_dir(out, c)) for c in cfgs), len(cfgs))
    index = run_index(cfgs, out)
    table = T.ablation_runs(index, finished_metrics(out, list(index.run)))
    write_parquet_atomic(table, out / "runs.parquet")
    (out / "ablation.md").write_text(R.ablation_markdown(table))
    return table


def _run_all(cfgs: list[RunConfig], out: Path, cpus_per_run: float, flag, asked, log: Callable[[str], None]) -> None:
    """Every config in a Ray task, logging each as it ends; once `asked` (a signal), the queued tasks are
    cancelled and the running ones get grace_seconds() to checkpoint, then are ended."""
    threads = max(1, int(cpus_per_run))
    todo = {}
    for cfg in cfgs:
        args = (cfg.to_dict(), str(run_dir(out, cfg)), threads, None, plugins.loaded(), flag_name(out))
        todo[_run_remote.options(num_cpus=cpus_per_run).remote(*args)] = cfg
    pending, done, deadline = list(todo), 0, None
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
        for ref in ready:
            cfg = todo[ref]
            try:
                res = ray.get(ref)
            except ray.exceptions.TaskCancelledError:  # queued when the stop came
                continue
            done += 1
            error = f" {res['error']}" if res["error"] and res["status"] == "failed" else ""
            log(
                f"[ablations] {done}/{len(todo)} {cfg.method} order {cfg.order} seed {cfg.seed}: {res['status']} "
                f"({res['seconds']:.0f} s){error}"
            )
        if asked.signum is not None and deadline is None:
            deadline = time.monotonic() + grace_seconds()
            running = set(ray.get(flag.running_now.remote()))
            for ref in pending:  # a queued task is dropped; a running one is left to checkpoint
                if str(run_dir(out, todo[ref])) not in running:
                    ray.cancel(ref)
        if deadline is not None and time.monotonic() > deadline:
            for ref in pending:
                ray.cancel(ref, force=True)  # past the grace: it redoes the steps since its last checkpoint
            return


def run_index(cfgs: list[RunConfig], out: Path) -> pd.DataFrame:
    """One row per config: method, order, seed, run (its folder relative to `out`) and status (the
    manifest's, "missing" for a run that never started)."""
    rows = []
    for cfg in cfgs:
        folder = run_dir(out, cfg)
        status = status_of(folder) or "missing"
        rows.append([cfg.method, cfg.order, cfg.seed, str(folder.relative_to(out)), status])
    return pd.DataFrame(rows, columns=["method", "order", "seed", "run", "status"])


def finished_metrics(out: Path, paths: list[str]) -> pd.DataFrame:
    """analysis.tables.run_metrics of the study's runs at `paths` (folders relative to `out`); empty when
    none of them has written anything."""
    try:
        study = open_study(out)
    except NotAStudyError:
        return pd.DataFrame()
    return T.run_metrics(study.select(paths))
