"""Fixed configs of AimMerging, its ablations and the baselines over orders x seeds, in parallel on Ray.

Every (method, order, seed) is one CL run in a Ray task with its own CPUs, written to
<out>/runs/<method>/o<order>-s<seed>-<config hash>/ (the run folder of `python -m aimray run`). A finished
run of the same config is skipped and an interrupted one resumes from its checkpoint, so rerunning the
same command completes a partial study; a changed config gets new folders. At the end:
<out>/runs.parquet (one row per run) and <out>/ablation.md (mean +/- std over orders and seeds per method).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pandas as pd
import ray

from aimray.config import RunConfig, make_config
from aimray.launch.cluster import ensure_ray
from aimray.loop import config_hash, preflight, run
from aimray.methods import get_method
from aimray.results import collect, fwt_vs_single_task

DEFAULT_METHODS = (
    "aimmerging", "aimmerging_no_ls", "aimmerging_no_fs", "aimmerging_fixed_weights", "aimmerging_no_burst",
    "seqlora", "replay", "fixed_interval", "single_merge", "mtl", "single_task",
)  # fmt: skip


def run_dir(out: Path, cfg: RunConfig) -> Path:
    """<out>/runs/<method>/o<order>-s<seed>-<config hash>: a changed config never reuses a finished run."""
    return out / "runs" / cfg.method / f"o{cfg.order}-s{cfg.seed}-{config_hash(cfg)}"


def is_finished(folder: Path) -> bool:
    manifest = folder / "manifest.json"
    return manifest.exists() and json.loads(manifest.read_text()).get("status") == "success"


@ray.remote
def _run_remote(cfg_dict: dict, folder: str, threads: int) -> dict:
    from aimray.config import config_from_dict

    cfg = config_from_dict({**cfg_dict, "train": {**cfg_dict["train"], "threads": threads}})
    t0 = time.time()
    try:
        run(cfg, folder, log=lambda _: None)
        return {"folder": folder, "status": "success", "seconds": time.time() - t0, "error": None}
    except Exception as err:  # one failed run must not sink the study: it is reported in the table
        return {"folder": folder, "status": "failed", "seconds": time.time() - t0, "error": repr(err)[:500]}


def configs(
    preset: str | None, methods, benchmark: str, orders, seeds, overrides: dict, data_dir: str | None = None
) -> list[RunConfig]:
    """Every (method, order, seed) config, validated (tasks, data, backbone: `preflight`) before anything runs."""
    cfgs = [
        make_config(preset, overrides, method=m, benchmark=benchmark, order=o, seed=s, data_dir=data_dir)
        for m in methods
        for o in orders
        for s in seeds
    ]
    for cfg in cfgs:
        preflight(cfg)
    return cfgs


def run_study(cfgs: list[RunConfig], out: Path, cpus_per_run: float = 1.0, log=print) -> pd.DataFrame:
    """Run the configs on Ray (finished runs skipped); returns and writes the runs table and ablation.md.
    `cfgs` come from `configs`, which has checked their tasks, data and backbone before this starts Ray."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    ensure_ray(dashboard=False)
    todo = {}
    for cfg in cfgs:
        folder = run_dir(out, cfg)
        if is_finished(folder):
            continue
        task = _run_remote.options(num_cpus=cpus_per_run).remote(cfg.to_dict(), str(folder), max(1, int(cpus_per_run)))
        todo[task] = cfg
    log(f"[ablations] {len(cfgs)} runs, {len(cfgs) - len(todo)} already finished, {len(todo)} to run")
    pending = list(todo)
    done = 0
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        res = ray.get(ready[0])
        done += 1
        cfg = todo[ready[0]]
        log(f"[ablations] {done}/{len(todo)} {cfg.method} order {cfg.order} seed {cfg.seed}: {res['status']} "
            f"({res['seconds']:.0f} s){' ' + res['error'] if res['error'] else ''}")  # fmt: skip
    table = runs_table(cfgs, out)
    table.to_parquet(out / "runs.parquet.tmp", index=False)
    os.replace(out / "runs.parquet.tmp", out / "runs.parquet")
    (out / "ablation.md").write_text(ablation_markdown(table))
    return table


def runs_table(cfgs: list[RunConfig], out: Path) -> pd.DataFrame:
    """One row per run: method, order, seed, status, OP/BWT/forgetting/FWT (base and paper), merges, time."""
    rows = []
    for cfg in cfgs:
        folder = run_dir(out, cfg)
        row = {"method": cfg.method, "order": cfg.order, "seed": cfg.seed, "run": str(folder.relative_to(out))}
        manifest = json.loads((folder / "manifest.json").read_text()) if (folder / "manifest.json").exists() else {}
        row["status"] = manifest.get("status", "missing")
        if row["status"] == "success":
            result = collect(folder)
            row.update({k: result.metrics.get(k, math.nan) for k in ("op", "bwt", "forgetting", "fwt_base")})
            row["merges"] = sum(result.merges.values())
            row["tasks"] = result.tasks
            row["test"] = result.test.tolist()  # the whole matrix: any FWT variant can be recomputed
            costs = pd.read_parquet(folder / "events" / "costs")
            row["wall_seconds"] = float(costs.wall_seconds.sum())
            row["rehearsal_examples"] = int(costs.burst_examples.sum() + costs.replay_examples.sum())
        rows.append(row)
    table = pd.DataFrame(rows)
    # FWT as the paper defines it needs the single-task scores (the diagonal of single_task runs).
    table["fwt_paper"] = [fwt_paper(r, table) for r in table.itertuples()] if "test" in table else math.nan
    return table


def fwt_paper(r, table: pd.DataFrame) -> float:
    """FWT (paper) of one run against the single_task run of the same order and seed, when there is one."""
    ref = table[(table.method == "single_task") & (table.order == r.order) & (table.seed == r.seed)]
    if r.status != "success" or ref.empty or ref.iloc[0].status != "success":
        return math.nan
    return fwt_vs_single_task(get_method(r.method).shape, r.tasks, r.test, ref.iloc[0].tasks, ref.iloc[0].test)


def ablation_markdown(table: pd.DataFrame) -> str:
    """Mean +/- std over orders and seeds per method (points); FWT variants named."""
    ok = table[table.status == "success"]
    cols = [c for c in ("op", "bwt", "forgetting", "fwt_paper", "fwt_base") if c in ok]
    names = {"op": "OP", "bwt": "BWT", "forgetting": "Forgetting", "fwt_paper": "FWT (paper, vs single-task)",
             "fwt_base": "FWT (vs base)"}  # fmt: skip
    lines = ["| method | runs | " + " | ".join(names[c] for c in cols) + " | merges | wall time (s) |",
             "|" + "---|" * (len(cols) + 4)]  # fmt: skip
    for method, group in ok.groupby("method", sort=False):
        cells = [method, str(len(group))]
        for c in cols:
            values = 100 * group[c].dropna()
            cells.append("-" if values.empty else f"{values.mean():.2f} +/- {values.std(ddof=0):.2f}")
        cells += [f"{group.merges.mean():.1f}", f"{group.wall_seconds.mean():.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    failed = table[table.status != "success"]
    if len(failed):
        lines += ["", f"{len(failed)} runs not finished: " + ", ".join(failed.run)]
    return "\n".join(lines) + "\n"
