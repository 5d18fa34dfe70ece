"""A report of real runs on offline-long: accuracy matrices and metrics per scoring, merges per task, and a
run's time split into training, monitoring, merges (rehearsal bursts and fusion) and evaluation.

    python benchmarks/long_runs.py RUN_FOLDER [RUN_FOLDER ...] [--out benchmarks/results/offline-long.md]

Each folder is one `python -m aimray run` output (manifest.json, events/, matrix.json). Reads Parquet and
JSON only (aimray.results, aimray.events): no torch, no model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from aimray.events import read_events
from aimray.manifest import Manifest
from aimray.results import collect


def pct(v) -> str:
    return "-" if v is None or v != v else f"{100 * v:.1f}"


def matrix_lines(tasks: list[str], a: np.ndarray, base, sub: np.ndarray | None) -> list[str]:
    """The matrix as a markdown table, rows after each task (and the base row), cells scored on a
    subsample marked with *."""
    lines = ["| after \\ on | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    if base is not None:
        lines.append("| base | " + " | ".join(pct(v) for v in base) + " |")
    for j, row in enumerate(a):
        cells = [pct(v) + ("*" if sub is not None and sub[j, i] else "") for i, v in enumerate(row)]
        lines.append(f"| {j + 1} {tasks[j]} | " + " | ".join(cells) + " |")
    return lines


def time_split(folder: Path) -> dict[str, float]:
    """Seconds of the run: training (wall less the rest), monitoring, merges, evaluation, and the whole."""
    costs = read_events(folder, "costs").to_pandas()
    wall = float(costs.wall_seconds.sum())
    parts = {k: float(costs[f"{k}_seconds"].fillna(0).sum()) for k in ("monitor", "merge", "eval")}
    return {"training": wall - sum(parts.values()), **parts, "tasks": wall}


def run_section(folder: Path) -> list[str]:
    manifest, res = Manifest.read(folder), collect(folder)
    lines = [f"## {manifest.method}, order {manifest.order}, seed {manifest.seed} ({folder.name})", ""]
    started, finished = manifest.started_at, manifest.finished_at
    split = time_split(folder)
    git = manifest.provenance.get("git", {})
    commit = git.get("commit", "")[:7] + (" (dirty)" if git.get("dirty") else "")
    lines += [
        f"Status {manifest.status}; started {started}, finished {finished} (the base row included); git {commit}.",
        "",
        "| time (s) | training | monitoring | merges | evaluation | tasks in all |",
        "|---|---|---|---|---|---|",
        "| | " + " | ".join(f"{split[k]:.0f}" for k in ("training", "monitor", "merge", "eval", "tasks")) + " |",
        "",
        "| scoring | OP | BWT | forgetting | FWT (vs base) |",
        "|---|---|---|---|---|",
    ]
    for mode, m in res.modes.items():
        met = m["metrics"]
        lines.append(
            f"| {mode} | {pct(met['op'])} | {pct(met['bwt'])} | {pct(met['forgetting'])} | {pct(met.get('fwt_base'))} |"
        )
    merges = read_events(folder, "merges").to_pandas()
    if len(merges):
        per_task = merges.groupby("task_index").size()
        s_values = merges.groupby("task_index").interval.agg(lambda x: "-".join(map(str, sorted(set(x)))))
        lines += [
            "",
            f"Merges per task (tasks 2-{len(res.tasks)}): "
            + ", ".join(str(int(per_task.get(i, 0))) for i in range(1, len(res.tasks))),
            f"(min {int(per_task.min())}, mean {per_task.mean():.1f}); triggers "
            + ", ".join(f"{k} {int(v)}" for k, v in merges.trigger.value_counts().items())
            + "; "
            "S values per task: " + ", ".join(s_values.tolist()) + ".",
        ]
    for mode, m in res.modes.items():
        lines += ["", f"Test accuracy (%), {mode}:", ""]
        lines += matrix_lines(res.tasks, m["test"], m["base_test"], res.subsampled)
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="run folders")
    ap.add_argument("--out", default="benchmarks/results/offline-long.md", help="the markdown report")
    args = ap.parse_args(argv)
    lines = [
        "# Real runs on offline-long (SmolLM2-135M-Instruct, preset long)",
        "",
        "Written by benchmarks/long_runs.py. Accuracy in % of 100 test examples per task (one example = 1 point);",
        "cells marked * were scored on the fixed 20-example subsample (eval.matrix=metrics): OP, BWT and FWT",
        "read whole-split cells only, forgetting includes subsampled ones.",
        "",
    ]
    for folder in args.runs:
        lines += run_section(Path(folder))
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
