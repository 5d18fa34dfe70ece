"""Fixed configs of AimMerging, its ablations and the baselines over orders x seeds, in parallel on Ray.

Every (method, order, seed) is one CL run in a Ray task with its own CPUs, written to
<out>/runs/<method>/o<order>-s<seed>-<config hash>/ (the run folder of `python -m aimray run`). A finished
run of the same config is skipped and an interrupted one resumes from its checkpoint, so rerunning the
same command completes a partial study; a changed config gets new folders. At the end:
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
from aimray.loop import check_inputs, run
from aimray.manifest import status_of
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


@ray.remote
def _run_remote(
    cfg_dict: dict, folder: str, threads: int, remote: tuple[str, str] | None = None, plugins: list[str] = ()
) -> dict:
    """One run in a Ray task. `remote` (storage URI, path under it): the run folder is copied there after
    every task and at the end, and brought back from there first (a run retried on another node).
    `plugins`: the driver's (aimray.plugins), imported before the config is rebuilt."""
    from aimray import plugins as plugin_modules
    from aimray.config import config_from_dict
    from aimray.launch.storage import remote_folder

    plugin_modules.load(plugins, env=False)

    cfg = config_from_dict({**cfg_dict, "train": {**cfg_dict["train"], "threads": threads}})
    copy = remote_folder(*remote) if remote is not None else None
    if copy is not None:
        copy.restore(Path(folder))
    t0 = time.time()
    try:
        run(cfg, folder, log=lambda _: None, report=(lambda _: copy.upload(Path(folder))) if copy else None)
        return {"folder": folder, "status": "success", "seconds": time.time() - t0, "error": None}
    except Exception as err:  # one failed run must not sink the study: it is reported in the table
        return {"folder": folder, "status": "failed", "seconds": time.time() - t0, "error": repr(err)[:500]}
    finally:
        if copy is not None:
            copy.upload(Path(folder))  # its final state, failed or not


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
    todo = {}
    for cfg in left:
        folder = str(run_dir(out, cfg))
        threads = max(1, int(cpus_per_run))
        task = _run_remote.options(num_cpus=cpus_per_run).remote(cfg.to_dict(), folder, threads, None, plugins.loaded())
        todo[task] = cfg
    pending = list(todo)
    done = 0
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        res = ray.get(ready[0])
        done += 1
        cfg = todo[ready[0]]
        log(
            f"[ablations] {done}/{len(todo)} {cfg.method} order {cfg.order} seed {cfg.seed}: {res['status']} "
            f"({res['seconds']:.0f} s){' ' + res['error'] if res['error'] else ''}"
        )
    index = run_index(cfgs, out)
    table = T.ablation_runs(index, finished_metrics(out, list(index.run)))
    write_parquet_atomic(table, out / "runs.parquet")
    (out / "ablation.md").write_text(R.ablation_markdown(table))
    return table


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
