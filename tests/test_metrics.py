"""CL metrics over hand-made accuracy matrices (a[j][i] = score on task i after training through task j)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from aimray import metrics

A3 = [
    [0.8, 0.1, 0.2],
    [0.7, 0.9, 0.3],
    [0.6, 0.8, 0.7],
]
SINGLE3 = [0.7, 1.0, 0.4]  # single-task LoRA scores s_i
BASE3 = [0.0, 0.05, 0.1]  # base-model scores b_i

A4 = [
    [80, 10, 20, 30],
    [70, 90, 25, 35],
    [85, 85, 60, 40],  # task 0 peaks after task 2: forgetting differs from -BWT
    [65, 80, 55, 95],
]
SINGLE4 = [70, 95, 50, 90]
BASE4 = [5, 8, 20, 30]

# Expected values written out by hand.
# A3: OP = (0.6 + 0.8 + 0.7) / 3 = 0.7
#     BWT = ((0.6 - 0.8) + (0.8 - 0.9)) / 2 = -0.15
#     forgetting = ((max(0.8, 0.7) - 0.6) + (max(0.1, 0.9) - 0.8)) / 2 = (0.2 + 0.1) / 2 = 0.15
#     FWT paper = ((0.8 - 0.7) + (0.9 - 1.0) + (0.7 - 0.4)) / 3 = 0.3 / 3 = 0.1
#     FWT base = ((a[0][1] - b1) + (a[1][2] - b2)) / 2 = ((0.1 - 0.05) + (0.3 - 0.1)) / 2 = 0.125
# A4: OP = (65 + 80 + 55 + 95) / 4 = 73.75
#     BWT = ((65 - 80) + (80 - 90) + (55 - 60)) / 3 = -30 / 3 = -10
#     forgetting = ((85 - 65) + (90 - 80) + (60 - 55)) / 3 = 35 / 3
#     FWT paper = ((80 - 70) + (90 - 95) + (60 - 50) + (95 - 90)) / 4 = 20 / 4 = 5
#     FWT base = ((10 - 8) + (25 - 20) + (40 - 30)) / 3 = 17 / 3
CASES = [
    ("3x3", A3, SINGLE3, BASE3, {"op": 0.7, "bwt": -0.15, "forgetting": 0.15, "fwt_paper": 0.1, "fwt_base": 0.125}),
    (
        "4x4",
        A4,
        SINGLE4,
        BASE4,
        {"op": 73.75, "bwt": -10.0, "forgetting": 35 / 3, "fwt_paper": 5.0, "fwt_base": 17 / 3},
    ),
]


@pytest.mark.parametrize(("name", "a", "single", "base", "expected"), CASES, ids=[c[0] for c in CASES])
def test_metrics_by_hand(name, a, single, base, expected):
    assert metrics.average_performance(a) == pytest.approx(expected["op"])
    assert metrics.backward_transfer(a) == pytest.approx(expected["bwt"])
    assert metrics.forgetting(a) == pytest.approx(expected["forgetting"])
    assert metrics.forward_transfer_paper(a, single) == pytest.approx(expected["fwt_paper"])
    assert metrics.forward_transfer_base(a, base) == pytest.approx(expected["fwt_base"])
    assert metrics.summary(a, base=base, single_task=single) == pytest.approx(expected)


def test_accepts_numpy_and_lists_alike():
    assert metrics.summary(np.array(A4, dtype=float)) == pytest.approx(metrics.summary(A4))


def test_no_forgetting_when_scores_never_drop():
    a = [[0.5, 0.0], [0.6, 0.9]]
    assert metrics.backward_transfer(a) == pytest.approx(0.1)
    assert metrics.forgetting(a) == pytest.approx(-0.1)  # max over j < T is a[0][0] = 0.5; 0.5 - 0.6


def test_single_task():
    a = [[0.5]]
    assert metrics.average_performance(a) == 0.5
    assert math.isnan(metrics.backward_transfer(a))
    assert math.isnan(metrics.forgetting(a))
    assert math.isnan(metrics.forward_transfer_base(a, [0.1]))
    assert metrics.forward_transfer_paper(a, [0.25]) == pytest.approx(0.25)
    out = metrics.summary(a, base=[0.1], single_task=[0.25])
    assert math.isnan(out["bwt"]) and math.isnan(out["forgetting"]) and math.isnan(out["fwt_base"])
    assert out["op"] == 0.5 and out["fwt_paper"] == pytest.approx(0.25)


@pytest.mark.parametrize("bad", [np.zeros((2, 3)), np.zeros((3, 2)), np.zeros(4), np.zeros((2, 2, 2))])
@pytest.mark.parametrize(
    "fn", [metrics.average_performance, metrics.backward_transfer, metrics.forgetting, metrics.summary]
)
def test_non_square_raises(bad, fn):
    with pytest.raises(ValueError, match="square"):
        fn(bad)


@pytest.mark.parametrize(
    ("base", "single", "keys"),
    [
        (None, None, {"op", "bwt", "forgetting"}),
        (BASE3, None, {"op", "bwt", "forgetting", "fwt_base"}),
        (None, SINGLE3, {"op", "bwt", "forgetting", "fwt_paper"}),
        (BASE3, SINGLE3, {"op", "bwt", "forgetting", "fwt_base", "fwt_paper"}),
    ],
)
def test_summary_keys(base, single, keys):
    out = metrics.summary(A3, base=base, single_task=single)
    assert set(out) == keys
    assert all(isinstance(v, float) for v in out.values())


def test_run_summary_follows_the_method():
    """One rule for what a run's metrics are, used by the run folder's matrix.json and by analysis."""
    from aimray.methods import get_method
    from aimray.results import run_summary

    a, dev = np.array(A3), np.array(A3) - 0.1
    full = run_summary(get_method("aimmerging").shape, a, dev, base=BASE3)
    assert full["op"] == pytest.approx(0.7) and full["bwt"] == pytest.approx(-0.15)
    assert full["fwt_base"] == pytest.approx(0.125) and full["dev_op"] == pytest.approx(0.6)
    assert run_summary(get_method("single_task").shape, a, dev) == {"op": pytest.approx((0.8 + 0.9 + 0.7) / 3)}
    assert run_summary(get_method("mtl").shape, a[-1:], dev[-1:]) == {"op": pytest.approx(0.7)}
    no_dev = run_summary(get_method("seqlora").shape, a, np.full((3, 3), np.nan))
    assert "dev_op" not in no_dev and "fwt_base" not in no_dev


def test_fwt_vs_single_task_matches_tasks_by_name():
    """The single_task run's diagonal is looked up by task name; a task it lacks counts as NaN."""
    from aimray.methods import get_method
    from aimray.results import fwt_vs_single_task

    tasks = ["t0", "t1", "t2"]
    single = np.diag(SINGLE3)  # a single_task matrix whose diagonal is SINGLE3
    got = fwt_vs_single_task(get_method("aimmerging").shape, tasks, A3, tasks, single)
    assert got == pytest.approx(0.1)
    shuffled = fwt_vs_single_task(get_method("aimmerging").shape, tasks, A3, tasks[::-1], single[::-1, ::-1])
    assert shuffled == pytest.approx(0.1)
    assert math.isnan(fwt_vs_single_task(get_method("mtl").shape, tasks, A3, tasks, single))
    assert math.isnan(fwt_vs_single_task(get_method("single_task").shape, tasks, A3, tasks, single))


def test_run_shape_comes_from_the_manifest_not_the_method_name():
    """A study is scored by the shape its runs recorded; manifests older than the field fall back to the
    method's shape (renaming a method later never changes how an old study is scored)."""
    from aimray.manifest import Manifest
    from aimray.results import run_shape

    def shape(**fields) -> str:
        base = {"run_id": "r", "benchmark": "b", "order": 1, "seed": 0, "tasks": [], "config": {}, "status": "success"}
        return run_shape(Manifest.from_dict({**base, **fields}))

    assert shape(shape="independent", method="renamed_since") == "independent"
    assert shape(method="mtl") == "joint" and shape(method="single_task") == "independent"
    assert shape(method="gone") == "sequential"


def test_forgetting_starts_at_the_row_a_task_was_learned_in():
    """Positive transfer: task 1 scores 0.8 before it is trained (row 0) and 0.6 once learned (row 1); the
    standard definition (Chaudhry et al.; Mammoth) measures forgetting from 0.6, not from 0.8."""
    a = [[0.5, 0.8, 0.1], [0.6, 0.6, 0.2], [0.4, 0.5, 0.7]]
    # task 0: max(0.5, 0.6) - 0.4 = 0.2; task 1: max(a[1][1]) - a[2][1] = 0.6 - 0.5 = 0.1 (not 0.8 - 0.5)
    assert metrics.forgetting(a) == pytest.approx((0.2 + 0.1) / 2)
