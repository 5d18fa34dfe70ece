"""A run's results read back from its events: accuracy matrices, CL metrics, merge counts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aimray import metrics
from aimray.events import read_events
from aimray.manifest import Manifest
from aimray.methods import METHODS


@dataclass
class RunResult:
    out: Path
    tasks: list[str]
    test: np.ndarray  # accuracy matrix a[j][i] on test, in the headline mode (eval.mode)
    dev: np.ndarray
    base_test: list[float] | None
    metrics: dict[str, float]
    merges: dict[str, int]
    costs: dict[str, float] = field(default_factory=dict)  # the costs rows summed over tasks (aimray.checkpoint.Costs)
    mode: str = "score"  # the headline mode
    # every mode the run evaluated (eval.modes): {mode: {"test", "dev", "base_test", "metrics"}}
    modes: dict[str, dict] = field(default_factory=dict)
    subsampled: np.ndarray | None = None  # True where a test cell was scored on a subsample (eval.matrix)


def run_modes(manifest: Manifest) -> tuple[str, ...]:
    """The modes a run evaluates, its headline mode first (a config before eval.modes: its eval.mode)."""
    cfg = manifest.config.get("eval", {})
    return tuple(cfg.get("modes") or ()) or (cfg.get("mode", "score"),)


def accuracy_matrix(
    evals, tasks: list[str], split: str, mode: str | None = None
) -> tuple[np.ndarray, list[float] | None]:
    """(a, base): a[j][i] after stage j+1 on task i (NaN where not evaluated); base = row 0 if present.
    `mode`: only the rows of that scoring (rows without a mode column belong to every mode)."""
    rows = [r for r in evals if r["split"] == split and (mode is None or r.get("mode", mode) == mode)]
    stages = max((r["after_index"] for r in rows), default=0)
    a = np.full((stages, len(tasks)), np.nan)
    base = [np.nan] * len(tasks)
    for r in rows:
        if r["after_index"] == 0:
            base[r["eval_index"]] = r["value"]
        else:
            a[r["after_index"] - 1, r["eval_index"]] = r["value"]
    has_base = not all(np.isnan(base))
    return a, (base if has_base else None)


def subsample_mask(evals, tasks: list[str], split: str = "test") -> np.ndarray:
    """True where a cell after training was scored on a subsample (eval.matrix=metrics)."""
    stages = max((r["after_index"] for r in evals), default=0)
    mask = np.zeros((stages, len(tasks)), dtype=bool)
    for r in evals:
        if r["split"] == split and r["after_index"] > 0 and r.get("subsample", 0):
            mask[r["after_index"] - 1, r["eval_index"]] = True
    return mask


def collect(out: Path) -> RunResult:
    """Read a finished run's events back into accuracy matrices and metrics (per mode), merge counts."""
    manifest = Manifest.read(out)
    modes = run_modes(manifest)
    evals = read_events(out, "evals", modes[0]).to_pylist()
    shape = run_shape(manifest)
    per_mode = {}
    for mode in modes:
        test, base = accuracy_matrix(evals, manifest.tasks, "test", mode)
        dev, _ = accuracy_matrix(evals, manifest.tasks, "dev", mode)
        per_mode[mode] = {"test": test, "dev": dev, "base_test": base, "metrics": run_summary(shape, test, dev, base)}
    merges: dict[str, int] = {}
    for r in read_events(out, "merges").to_pylist():
        merges[r["trigger"]] = merges.get(r["trigger"], 0) + 1
    costs: dict[str, float] = {}
    for row in read_events(out, "costs").to_pylist():
        for k, v in row.items():
            if isinstance(v, int | float) and not isinstance(v, bool) and k != "task_index":
                costs[k] = costs.get(k, 0) + v
    head = per_mode[modes[0]]
    return RunResult(
        out,
        manifest.tasks,
        head["test"],
        head["dev"],
        head["base_test"],
        head["metrics"],
        merges,
        costs,
        modes[0],
        per_mode,
        subsample_mask(evals, manifest.tasks),
    )


def run_shape(manifest: Manifest) -> str:
    """The run's shape (sequential, joint, independent) as its manifest records it; manifests older than the
    field name only their method, whose shape is looked up (sequential if the method is unknown)."""
    if manifest.shape:
        return manifest.shape
    method = METHODS.get(manifest.method)
    return method.shape if method is not None else "sequential"


def run_summary(shape: str, test: np.ndarray, dev: np.ndarray, base=None) -> dict[str, float]:
    """The metrics a run of this shape defines, from its test and dev matrices (base: scores before
    training). A joint run has one stage (only OP); an independent run's diagonal holds the single-task
    scores; a sequential run gets OP / BWT / forgetting / FWT (base), and dev OP / BWT when it has dev
    scores."""
    if shape == "joint":
        return {"op": float(np.nanmean(test[-1]))}
    if shape == "independent":
        return {"op": float(np.nanmean(np.diag(test)))}
    summary = metrics.summary(test, base=base)
    if dev.size and not np.isnan(dev).all():
        summary["dev_op"] = metrics.average_performance(dev)
        summary["dev_bwt"] = metrics.backward_transfer(dev)
    return summary


def fwt_vs_single_task(shape: str, tasks, test, single_tasks, single_test) -> float:
    """FWT as the paper defines it: a sequential run's test matrix against the single-task scores (the
    diagonal of the single_task run of the same order and seed). NaN for other shapes."""
    if shape != "sequential":
        return float("nan")
    single = dict(zip(single_tasks, np.diag(np.asarray(single_test, dtype=float)), strict=True))
    return metrics.forward_transfer_paper(np.asarray(test, dtype=float), [single.get(t, np.nan) for t in tasks])


def _clean(a) -> list[list[float | None]]:
    return [[None if np.isnan(v) else float(v) for v in row] for row in np.atleast_2d(a)]


def _mode_json(m: dict) -> dict:
    return {
        "test": _clean(m["test"]),
        "dev": _clean(m["dev"]),
        "base_test": None if m["base_test"] is None else _clean([m["base_test"]])[0],
        "metrics": {k: (None if v != v else v) for k, v in m["metrics"].items()},
    }


def result_json(result: RunResult) -> dict:
    """matrix.json: the headline mode's matrices and metrics at the top (as before eval.modes), every mode's
    under "modes", and which test cells were subsampled (eval.matrix=metrics)."""
    head = {"test": result.test, "dev": result.dev, "base_test": result.base_test, "metrics": result.metrics}
    out = {"tasks": result.tasks, **_mode_json(head), "merges": result.merges, "mode": result.mode}
    out["modes"] = {mode: _mode_json(m) for mode, m in result.modes.items()}
    if result.subsampled is not None and result.subsampled.any():
        out["subsampled"] = result.subsampled.tolist()
    return out
