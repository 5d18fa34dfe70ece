"""The sweep objective: computed on dev data only, across task orders; test metrics ride along.

A trial runs one config over several orders. After every task the tracker turns the loop's report into
Tune metrics: `tasks_done` (the fidelity for ASHA/HyperBand, counted across orders) and `objective`,
where finished orders contribute their final value and the running order its dev accuracy so far.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aimray import metrics
from aimray.results import collect

OBJECTIVES = {
    "dev_op": "mean over orders of OP on dev",
    "dev_op_bwt": "mean over orders of OP + BWT on dev",
    "worst_dev_op": "worst order's OP on dev",
}


def order_summary(dev: np.ndarray, test: np.ndarray, base_test=None) -> dict[str, float]:
    """OP, BWT and FWT (vs base, where the base row exists) of one order's dev and test matrices."""
    out = {}
    for split, a in (("dev", dev), ("test", test)):
        out[f"{split}_op"] = metrics.average_performance(a)
        out[f"{split}_bwt"] = metrics.backward_transfer(a)
    out["test_fwt_base"] = metrics.forward_transfer_base(test, base_test) if base_test is not None else math.nan
    return out


def combine(kind: str, values: list[dict[str, float]]) -> float:
    """The objective over per-order summaries (each needs dev_op, and dev_bwt for dev_op_bwt)."""
    if kind not in OBJECTIVES:
        raise ValueError(f"objective {kind!r} is unknown; valid: {', '.join(OBJECTIVES)}")
    if kind == "dev_op":
        per_order = [v["dev_op"] for v in values]
    elif kind == "dev_op_bwt":
        per_order = [v["dev_op"] + (0.0 if math.isnan(v["dev_bwt"]) else v["dev_bwt"]) for v in values]
    else:
        return float(min(v["dev_op"] for v in values))
    return float(np.mean(per_order))


@dataclass
class ObjectiveTracker:
    """Turns the per-task loop reports of one trial into Tune metrics; JSON-serialisable state."""

    kind: str
    orders: list[int]
    num_tasks: int
    order_index: int = 0  # which of `orders` is running
    finished: list[dict] = field(default_factory=list)  # summaries of the finished orders

    def update(self, row: dict, out: Path) -> dict:
        """Metrics after one task of the running order (`row` as passed to the loop's `report`; `out` the
        run folder, read back at the order's end so that a resumed run counts every task)."""
        stage = row["stage"]
        order = self.orders[self.order_index]
        metrics_ = {"tasks_done": self.order_index * self.num_tasks + stage, "order": order}
        if stage < self.num_tasks:
            seen = [v for (task, split), v in row["scores"].items() if split == "dev" and task in row["seen"]]
            running = {"dev_op": float(np.mean(seen)) if seen else math.nan, "dev_bwt": 0.0}
            metrics_["objective"] = combine(self.kind, [*self.finished, running])
        else:
            self.finish(out)
            metrics_["objective"] = combine(self.kind, self.finished)
        for summary in self.finished:  # every report carries the finished orders (Tune keeps the last one)
            metrics_.update({f"o{summary['order']}/{k}": v for k, v in summary.items() if k != "order"})
        return metrics_

    def final_metrics(self) -> dict:
        """The trial's metrics once every order has finished (reported again at the end of a trial, in case a
        restored trial found its runs already complete and had nothing left to report)."""
        out = {"tasks_done": len(self.finished) * self.num_tasks, "order": self.orders[-1],
               "objective": combine(self.kind, self.finished)}  # fmt: skip
        for summary in self.finished:
            out.update({f"o{summary['order']}/{k}": v for k, v in summary.items() if k != "order"})
        return out

    def finish(self, out: Path) -> None:
        """Record the running order's summary, read back from its finished run folder."""
        result = collect(out)
        order = self.orders[self.order_index]
        self.finished.append({"order": order, **order_summary(result.dev, result.test, result.base_test)})
        self.order_index += 1

    def state_dict(self) -> dict:
        return {"kind": self.kind, "orders": self.orders, "num_tasks": self.num_tasks,
                "order_index": self.order_index, "finished": self.finished}  # fmt: skip
