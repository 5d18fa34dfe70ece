"""The sweep objectives: computed on dev data (and compute counters) only, across task orders; test
metrics ride along.

A trial runs one config over several orders. After every task the tracker turns the loop's report into
Tune metrics: `tasks_done` (the fidelity for ASHA/HyperBand, counted across orders), `objective/<name>`
for each of the sweep's objectives, and `objective`, the first of them (the one a scheduler stops on).
Finished orders contribute their final value and the running order its value so far (its dev accuracy
over the tasks seen, its compute so far). A finished order counts with the metrics of its run
(aimray.results.run_summary, in memory) under their own names (ORDER_METRICS), plus its compute. The
per-order values themselves travel as rows (trial_orders.parquet, aimray.launch.tune), never in metric
names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from aimray.results import RunResult

OBJECTIVES = {
    "dev_op": "mean over orders of OP on dev",
    "dev_bwt": "mean over orders of BWT on dev",
    "dev_op_bwt": "mean over orders of OP + BWT on dev",
    "worst_dev_op": "worst order's OP on dev",
    "compute": "mean over orders of the examples a run passes through the model beyond its tasks' own "
    "training data: rehearsal (replayed and burst) plus monitoring (forgetting-signal) examples",
}
SENSES = {name: "min" if name == "compute" else "max" for name in OBJECTIVES}
# The metrics an order of a trial is summarised by: the run's (test op, bwt, fwt_base; dev_op, dev_bwt),
# under the names every run table uses, and its compute
ORDER_METRICS = ("op", "bwt", "fwt_base", "dev_op", "dev_bwt", "compute")


def extra_examples(costs: dict) -> float:
    """The `compute` objective of one run or task: replayed + burst + monitoring examples."""
    return float(sum(costs.get(k, 0) for k in ("replay_examples", "burst_examples", "monitor_examples")))


def order_summary(run_metrics: dict[str, float], costs: dict | None = None) -> dict[str, float]:
    """One finished order's run metrics (aimray.results.run_summary) and compute (its costs): ORDER_METRICS,
    NaN where undefined."""
    values = {**run_metrics, "compute": extra_examples(costs) if costs is not None else math.nan}
    return {name: float(values.get(name, math.nan)) for name in ORDER_METRICS}


def combine(kind: str, values: list[dict[str, float]]) -> float:
    """The objective over per-order summaries (each needs dev_op, and dev_bwt for dev_op_bwt)."""
    if kind not in OBJECTIVES:
        raise ValueError(f"objective {kind!r} is unknown; valid: {', '.join(OBJECTIVES)}")
    if kind in ("dev_op", "compute"):
        per_order = [v[kind] for v in values]
    elif kind == "dev_bwt":
        per_order = [0.0 if math.isnan(v["dev_bwt"]) else v["dev_bwt"] for v in values]
    elif kind == "dev_op_bwt":
        per_order = [v["dev_op"] + (0.0 if math.isnan(v["dev_bwt"]) else v["dev_bwt"]) for v in values]
    else:
        return float(min(v["dev_op"] for v in values))
    return float(np.mean(per_order))


@dataclass
class ObjectiveTracker:
    """Turns the per-task loop reports and the finished runs of one trial into Tune metrics; its state
    (`state_dict`) is plain data, so a Ray Train worker can carry on from the trial's."""

    kind: str  # the first objective (`objective`); `kinds`: all of them
    orders: list[int]
    num_tasks: int
    order_index: int = 0  # which of `orders` is running
    finished: list[dict] = field(default_factory=list)  # summaries of the finished orders
    kinds: list[str] = field(default_factory=list)  # every objective (multi-objective search); [] = [kind]
    running_compute: float = 0.0  # the running order's compute so far

    def is_last(self, row: dict) -> bool:
        """Whether `row` (as passed to the loop's `report`) is the running order's last task: its metrics
        come from `finish`, once the run has returned its result."""
        return row["stage"] >= self.num_tasks

    def update(self, row: dict) -> dict:
        """Metrics after a task of the running order before its last (`row` as passed to the loop's
        `report`): tasks_done, order, and the objective over the finished orders plus the running one at its
        dev OP over the tasks seen so far."""
        seen = [v for (task, split), v in row["scores"].items() if split == "dev" and task in row["seen"]]
        self.running_compute += extra_examples(row["costs"])
        running = {
            "dev_op": float(np.mean(seen)) if seen else math.nan,
            "dev_bwt": 0.0,
            "compute": self.running_compute,
        }
        tasks_done = self.order_index * self.num_tasks + row["stage"]
        return self._metrics(tasks_done, self.orders[self.order_index], [*self.finished, running])

    def finish(self, result: RunResult) -> dict:
        """Record the running order's summary from its finished run (`aimray.loop.run`'s result, also
        returned for a run that had finished before); returns the metrics after its last task."""
        self.finished.append({"order": self.orders[self.order_index], **order_summary(result.metrics, result.costs)})
        self.order_index += 1
        self.running_compute = 0.0
        return self.final_metrics()

    def final_metrics(self) -> dict:
        """The metrics as of the last finished order (once every order has finished: the trial's, reported
        again at its end in case a restored trial found its runs complete and had nothing left to report)."""
        return self._metrics(len(self.finished) * self.num_tasks, self.orders[len(self.finished) - 1], self.finished)

    def _metrics(self, tasks_done: int, order: int, summaries: list[dict]) -> dict:
        """tasks_done, order (the one running) and the objective over `summaries`, each objective's value
        under objective/<name>."""
        out = {"tasks_done": tasks_done, "order": order, "objective": combine(self.kind, summaries)}
        for kind in self.kinds:
            out[f"objective/{kind}"] = combine(kind, summaries)
        return out

    def state_dict(self) -> dict:
        """The constructor's arguments: ObjectiveTracker(**state_dict()) is an equal tracker."""
        return {
            "kind": self.kind,
            "orders": self.orders,
            "num_tasks": self.num_tasks,
            "order_index": self.order_index,
            "finished": self.finished,
            "kinds": self.kinds,
            "running_compute": self.running_compute,
        }
