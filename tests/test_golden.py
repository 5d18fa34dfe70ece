"""Golden numbers, in torchtune's manner: the tiny model's first optimizer steps pinned for seqlora and
aimmerging (losses, the forgetting signal, and the merge decisions with their weights), so that any change
of numbers in the loop shows at once, with the step where it starts.

The values come from the loop as it was before the second architecture step (commit fbd165d, 2026-12-06)
and were bit for bit the same after it. Losses are compared to 2e-5 relative: float32 on a CPU, one thread;
another CPU's kernels may sum in another order (float32 rounding, about 1e-7), while a change of the
computation moves them further: a learning rate 5% higher already moves task 1's fifth loss by 1.5e-4.
Decisions are compared exactly.
"""

from __future__ import annotations

import math

import pytest

from aimray.events import read_events
from aimray.loop import run
from tests.test_loop import quiet, tiny_config

STEPS = 16  # the first rows of the steps table: task 1 (8 steps), then task 2 through aimmerging's first burst

TASK_1 = [  # plain LoRA training, the same for every method but mtl: (task_index, step, phase, loss, memory loss)
    (0, 0, "inner", 10.792961120605469, None),
    (0, 1, "inner", 10.828836441040039, None),
    (0, 2, "inner", 10.82420825958252, None),
    (0, 3, "inner", 10.851967811584473, None),
    (0, 4, "inner", 10.804441452026367, None),
    (0, 5, "inner", 10.779897689819336, None),
    (0, 6, "inner", 10.70266342163086, None),
    (0, 7, "inner", 10.762381553649902, None),
]
GOLDEN = {  # method: (first steps' (task_index, step, phase, train_loss, memory_loss), every merge's
    # (global_step, trigger, interval, burst_len, w_in, w_out))
    "seqlora": (
        [
            *TASK_1,
            (1, 0, "inner", 10.763694763183594, None),
            (1, 1, "inner", 10.77380657196045, None),
            (1, 2, "inner", 10.697826385498047, None),
            (1, 3, "inner", 10.650859832763672, None),
            (1, 4, "inner", 10.651836395263672, None),
            (1, 5, "inner", 10.625972747802734, None),
            (1, 6, "inner", 10.618779182434082, None),
            (1, 7, "inner", 10.61644172668457, None),
        ],
        [],
    ),
    "aimmerging": (
        [
            *TASK_1,
            (1, 0, "inner", 10.763694763183594, 10.6995267868042),
            (1, 1, "inner", 10.77380657196045, 10.715221405029297),
            (1, 2, "inner", 10.697826385498047, 10.783352851867676),
            (1, 3, "inner", 10.650859832763672, 10.750190734863281),
            (1, 3, "burst", 10.732637405395508, None),
            (1, 4, "inner", 10.696761131286621, 10.741190910339355),
            (1, 5, "inner", 10.63995361328125, 10.820985794067383),
            (1, 6, "inner", 10.656390190124512, 10.78724479675293),
        ],
        [
            (11, "forced", 2, 1, 0.6, 0.4),
            (16, "forced", 2, 1, 0.6, 0.4),
            (21, "forced", 2, 1, 0.6, 0.4),
            (26, "forced", 2, 1, 0.6, 0.4),
            (31, "forced", 2, 1, 0.6, 0.4),
            (36, "forced", 2, 1, 0.6, 0.4),
        ],
    ),
}


def trajectory(out) -> tuple[list[tuple], list[tuple]]:
    steps = read_events(out, "steps").to_pandas().head(STEPS)
    merges = read_events(out, "merges").to_pandas()
    rows = [(r.task_index, r.step, r.phase, r.train_loss, r.memory_loss) for r in steps.itertuples()]
    decisions = [(m.global_step, m.trigger, m.interval, m.burst_len, m.w_in, m.w_out) for m in merges.itertuples()]
    return rows, decisions


def close(got: float, want: float | None) -> bool:
    """`want` None: no value (NaN in the events)."""
    if want is None:
        return math.isnan(got)
    return got == pytest.approx(want, rel=2e-5)


@pytest.mark.parametrize("method", ["seqlora", "aimmerging"])
def test_the_first_steps_keep_their_numbers(tiny_causal, tmp_path, method) -> None:
    run(tiny_config(tiny_causal, method), tmp_path, log=quiet)
    rows, decisions = trajectory(tmp_path)
    want_rows, want_decisions = GOLDEN[method]
    for got, want in zip(rows, want_rows, strict=True):
        assert got[:3] == want[:3], (got, want)
        assert close(got[3], want[3]) and close(got[4], want[4]), f"step {got[:3]}: {got[3:]} != {want[3:]}"
    assert len(decisions) == len(want_decisions)
    for got, want in zip(decisions, want_decisions, strict=True):
        assert got[:4] == want[:4] and close(got[4], want[4]) and close(got[5], want[5]), (got, want)
