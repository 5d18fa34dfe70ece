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
    test: np.ndarray  # accuracy matrix a[j][i] on test
    dev: np.ndarray
    base_test: list[float] | None
    metrics: dict[str, float]
    merges: dict[str, int]
    costs: dict[str, float] = field(default_factory=dict)  # the costs rows summed over tasks (aimray.checkpoint.Costs)


def accuracy_matrix(evals, tasks: list[str], split: str) -> tuple[np.ndarray, list[float] | None]:
    """(a, base): a[j][i] after stage j+1 on task i (NaN where not evaluated); base = row 0 if present."""
    rows = [r for r in evals if r["split"] == split]
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


def collect(out: Path) -> RunResult:
    """Read a finished run's events back into accuracy matrices, metrics and merge counts."""
    manifest = Manifest.read(out)
    evals = read_events(out, "evals").to_pylist()
    test, base = accuracy_matrix(evals, manifest.tasks, "test")
    dev, _ = accuracy_matrix(evals, manifest.tasks, "dev")
    summary = run_summary(run_shape(manifest), test, dev, base)
    merges: dict[str, int] = {}
    for r in read_events(out, "merges").to_pylist():
        merges[r["trigger"]] = merges.get(r["trigger"], 0) + 1
    costs: dict[str, float] = {}
    for row in read_events(out, "costs").to_pylist():
        for k, v in row.items():
            if isinstance(v, int | float) and not isinstance(v, bool) and k != "task_index":
                costs[k] = costs.get(k, 0) + v
    return RunResult(out, manifest.tasks, test, dev, base, summary, merges, costs)


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


def result_json(result: RunResult) -> dict:
    def clean(a):
        return [[None if np.isnan(v) else float(v) for v in row] for row in np.atleast_2d(a)]

    return {
        "tasks": result.tasks,
        "test": clean(result.test),
        "dev": clean(result.dev),
        "base_test": None if result.base_test is None else clean([result.base_test])[0],
        "metrics": {k: (None if v != v else v) for k, v in result.metrics.items()},
        "merges": result.merges,
    }
