"""analysis.stats on hand-computed values and edge cases, and the paired-interval table built on it
(analysis.tables.paired_intervals) on synthetic runs with known differences."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis import report as R
from analysis import stats as S
from analysis import tables as T

# ------------------------------------------------------------------------------------------ bootstrap


def test_bootstrap_of_two_values_is_their_range_and_deterministic() -> None:
    # Resample means of [0, 1]: 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4, so the 2.5% and 97.5%
    # quantiles are the ends.
    assert S.bootstrap_ci([0.0, 1.0]) == (0.5, 0.0, 1.0)
    # Three values: all three the smallest has probability 1/27 > 2.5%: the interval is the range.
    assert S.bootstrap_ci([0.2, -0.1, 0.6]) == pytest.approx((0.7 / 3, -0.1, 0.6))
    x = np.random.default_rng(1).normal(size=30)
    assert S.bootstrap_ci(x, seed=3) == S.bootstrap_ci(x, seed=3)
    assert S.bootstrap_ci(x, seed=3) != S.bootstrap_ci(x, seed=4)
    point, lo, hi = S.bootstrap_ci(x)
    assert point == pytest.approx(x.mean()) and lo < point < hi
    # A wider level gives a wider interval from the same resamples.
    _, lo99, hi99 = S.bootstrap_ci(x, level=0.99)
    assert lo99 <= lo and hi99 >= hi


def test_bootstrap_edge_cases() -> None:
    assert S.bootstrap_ci([0.4]) == (0.4, 0.4, 0.4)
    assert all(math.isnan(v) for v in S.bootstrap_ci([]))
    assert all(math.isnan(v) for v in S.bootstrap_ci([math.nan, math.nan]))
    point, lo, hi = S.bootstrap_ci([0.1] * 7)
    assert lo == hi == point == pytest.approx(0.1)  # all equal: zero width
    # NaN dropped: the same as the values without it (the same resample draws).
    assert S.bootstrap_ci([1.0, math.nan, 3.0, 4.0]) == S.bootstrap_ci([1.0, 3.0, 4.0])
    with pytest.raises(ValueError, match="2 labels for 3 values"):
        S.bootstrap_ci([1.0, 2.0, 3.0], strata=[1, 2])
    with pytest.raises(ValueError, match="level 1.5"):
        S.bootstrap_ci([1.0, 2.0], level=1.5)


def test_stratified_bootstrap_never_mixes_strata() -> None:
    # Constant within each stratum, different across: every stratified resample is the data itself.
    values = [1.0, 1.0, 1.0, 5.0, 5.0]
    strata = ["a", "a", "a", "b", "b"]
    point, lo, hi = S.bootstrap_ci(values, strata=strata)
    assert point == pytest.approx(2.6) and lo == pytest.approx(2.6) and hi == pytest.approx(2.6)
    _, lo_mixed, hi_mixed = S.bootstrap_ci(values)  # unstratified: resamples change the share of 5s
    assert lo_mixed < 2.0 and hi_mixed > 3.0
    assert S.bootstrap_ci(values, stat=np.median, strata=strata)[1:] == (1.0, 1.0)
    # A NaN value goes with its label; a stratum left with one value is held fixed.
    point, lo, hi = S.bootstrap_ci([0.0, math.nan, 2.0, 7.0], strata=[1, 2, 1, 2])
    assert point == pytest.approx(3.0) and lo == pytest.approx(7 / 3) and hi == pytest.approx(11 / 3)
    # Every stratum of one value: nothing to resample.
    assert S.bootstrap_ci([1.0, 2.0, 3.0], strata=[1, 2, 3]) == pytest.approx((2.0, 2.0, 2.0))


def test_bootstrap_covers_the_true_mean_about_as_often_as_it_says() -> None:
    # The percentile interval runs a little short at small n (about 93% at n = 30, 92% at n = 20).
    rng = np.random.default_rng(0)
    hits = sum(
        lo <= 0 <= hi for _, lo, hi in (S.bootstrap_ci(rng.normal(size=30), reps=300, seed=i) for i in range(200))
    )
    assert 0.88 <= hits / 200 <= 0.99
    # Stratified, two strata with different means: the interval is for the mean of the pooled design.
    hits = 0
    for i in range(200):
        x = np.concatenate([rng.normal(0.0, 1.0, 15), rng.normal(3.0, 1.0, 15)])
        _, lo, hi = S.bootstrap_ci(x, strata=[0] * 15 + [1] * 15, reps=300, seed=i)
        hits += lo <= 1.5 <= hi
    assert 0.88 <= hits / 200 <= 0.99


def test_bootstrap_takes_a_statistic_without_an_axis() -> None:
    x = np.random.default_rng(2).normal(size=12)
    point, lo, hi = S.bootstrap_ci(x, stat=S.iqm, reps=200)
    assert point == S.iqm(x) and lo < point < hi
    assert (point, lo, hi) == S.bootstrap_ci(x, stat=S.iqm, reps=200)


# ------------------------------------------------------------------------------- the other statistics


def test_paired_differences_match_on_the_key_and_drop_nan_pairs() -> None:
    a = {(1, 0): 0.7, (2, 0): 0.6, (3, 0): math.nan, (4, 0): 0.5}
    b = {(2, 0): 0.5, (1, 0): 0.75, (3, 0): 0.1, (5, 0): 0.2}
    keys, d = S.paired_differences(a, b)
    assert keys == [(1, 0), (2, 0)]  # a's order; (3, 0) has a NaN side, (4, 0) and (5, 0) no partner
    np.testing.assert_allclose(d, [-0.05, 0.1])
    keys, d = S.paired_differences({}, b)
    assert keys == [] and d.shape == (0,)


def test_iqm_by_hand() -> None:
    assert S.iqm([4.0, 1.0, 3.0, 2.0]) == pytest.approx(2.5)  # (x2 + x3) / 2
    assert S.iqm([1.0, 2.0, 10.0]) == pytest.approx(19 / 6)  # (x1 + 4 x2 + x3) / 6
    assert S.iqm([1.0, 2.0, 3.0, 5.0, 10.0]) == pytest.approx(0.3 * 2 + 0.4 * 3 + 0.3 * 5)
    assert S.iqm([0.0, 0.0, 0.0, 6.0, 6.0, 12.0]) == pytest.approx((0 + 2 * 0 + 2 * 6 + 6) / 6)
    assert S.iqm(np.arange(1.0, 9.0)) == pytest.approx(4.5)  # n = 8: the middle four exactly
    assert S.iqm([7.0]) == 7.0 and S.iqm([1.0, 3.0]) == 2.0
    assert S.iqm([1.0, math.nan, 2.0, 10.0]) == pytest.approx(19 / 6) and math.isnan(S.iqm([math.nan]))
    # rliable's rule (scipy.stats.trim_mean(x, 0.25)): floor(n / 4) dropped at each end.
    assert S.iqm([1.0, 2.0, 10.0], fractional=False) == pytest.approx(13 / 3)
    assert S.iqm([1.0, 2.0, 3.0, 5.0, 10.0], fractional=False) == pytest.approx(10 / 3)
    assert S.iqm([5.0, 1.0, 100.0, 2.0], fractional=False) == pytest.approx(3.5)


def test_probability_of_improvement_by_hand() -> None:
    # All pairs: (1,2) 0, (1,2) 0, (2,2) 1/2, (2,2) 1/2, (3,2) 1, (3,2) 1.
    assert S.probability_of_improvement([1.0, 2.0, 3.0], [2.0, 2.0]) == pytest.approx(0.5)
    assert S.probability_of_improvement([3.0, 4.0], [1.0, 2.0, 3.0]) == pytest.approx(5.5 / 6)
    x, y = [0.1, 0.5, 0.3, 0.3], [0.2, 0.3, math.nan]
    assert S.probability_of_improvement(x, y) + S.probability_of_improvement(y, x) == pytest.approx(1.0)
    # Paired: only matched pairs count, a NaN side drops the pair.
    assert S.probability_of_improvement([1.0, 2.0, 3.0, 9.0], [0.0, 2.0, 4.0, math.nan], paired=True) == 0.5
    assert S.probability_of_improvement([1.0 + 1e-12], [1.0], tol=1e-9) == 0.5
    assert S.probability_of_improvement([1.0 + 1e-12], [1.0]) == 1.0
    assert math.isnan(S.probability_of_improvement([], [1.0]))
    with pytest.raises(ValueError, match="paired: 2 values against 1"):
        S.probability_of_improvement([1.0, 2.0], [1.0], paired=True)


def test_probability_of_improvement_is_the_rank_sum_u_statistic() -> None:
    # U of x over y from the pooled midranks, Mann-Whitney's way: U = R_x - n_x (n_x + 1) / 2.
    rng = np.random.default_rng(4)
    x, y = rng.integers(0, 5, 9).astype(float), rng.integers(0, 5, 7).astype(float)  # with ties
    pooled = np.concatenate([x, y])
    midrank = {v: np.flatnonzero(np.sort(pooled) == v).mean() + 1 for v in np.unique(pooled)}
    u = sum(midrank[v] for v in x) - len(x) * (len(x) + 1) / 2
    assert S.probability_of_improvement(x, y) == pytest.approx(u / (len(x) * len(y)))


def test_example_worth_and_separation() -> None:
    assert S.example_worth(50, 4) == (2.0, 0.5)
    worth = S.example_worth(16, 4)
    assert worth.task == 6.25 and worth.mean == 1.5625
    with pytest.raises(ValueError, match="at least 1"):
        S.example_worth(0, 4)
    assert S.separation(0.01, 0.03) == 1 and S.separation(-0.03, -0.01) == -1 and S.separation(-0.01, 0.02) == 0
    assert S.separation(0.004, 0.03, margin=0.005) == 0 and S.separation(0.006, 0.03, margin=0.005) == 1
    assert S.separation(-0.03, -1e-17) == -1 and S.separation(-0.03, -1e-17, tol=1e-9) == 0
    assert S.separation(math.nan, math.nan) == 0


# ------------------------------------------------------------------------------------- the paired table


def flag(v) -> bool | None:
    """A contains_zero cell as True / False, None when there is no interval."""
    return None if v is None or v != v else bool(v)


def runs_table(ops: dict[str, dict[tuple[int, int], float]]) -> pd.DataFrame:
    """A runs table (the columns `paired` reads) from {method: {(order, seed): op}}; bwt = op / 2."""
    rows = [
        {"method": m, "order": o, "seed": s, "op": v, "bwt": v / 2}
        for m, by_key in ops.items()
        for (o, s), v in by_key.items()
    ]
    return pd.DataFrame(rows)


def test_paired_intervals_add_intervals_to_the_paired_table() -> None:
    keys = [(o, s) for o in (1, 2) for s in (0, 1, 2)]
    ref = {k: 0.6 + 0.1 * k[0] for k in keys}
    diffs = dict(zip(keys, (0.02, 0.04, 0.03, -0.01, 0.05, 0.02), strict=True))
    runs = runs_table({"seqlora": {k: ref[k] - diffs[k] for k in keys}, "aimmerging": ref})
    pairs = T.paired_intervals(runs)
    row = pairs.iloc[0]
    assert row.method == "seqlora" and row.pairs == 6 and bool(row.stratified)  # three seeds in every order
    assert row["op/diff"] == pytest.approx(np.mean(list(diffs.values())))
    # The columns `paired` has are `paired`'s.
    old = T.paired(runs)
    assert old.columns.isin(pairs.columns).all() and pairs[old.columns].equals(old)
    d = np.array([diffs[k] for k in keys])
    want = S.bootstrap_ci(d, strata=[k[0] for k in keys])
    assert (row["op/diff"], row["op/lo"], row["op/hi"]) == pytest.approx(want)
    assert row["op/lo"] > 0 and flag(row["op/contains_zero"]) is False  # within orders every resample mean is > 0
    assert row["op/p_improvement"] == pytest.approx(5 / 6) and row["op/iqm"] == pytest.approx(S.iqm(d))
    assert row["bwt/hi"] == pytest.approx(row["op/hi"] / 2)
    again = T.paired_intervals(runs, reps=300, level=0.9, seed=1).iloc[0]  # the bootstrap's knobs are passed on
    assert (again["op/lo"], again["op/hi"]) == pytest.approx(
        S.bootstrap_ci(d, strata=[k[0] for k in keys], reps=300, level=0.9, seed=1)[1:]
    )


def test_paired_intervals_with_one_seed_per_order_resample_across_orders() -> None:
    keys = [(1, 0), (2, 0), (3, 0)]
    ref = dict(zip(keys, (0.635, 0.675, 0.665), strict=True))
    other = dict(zip(keys, (0.645, 0.675, 0.655), strict=True))  # a loss, a tie, a win
    single = {(1, 0): 0.5}
    pairs = T.paired_intervals(runs_table({"aimmerging": ref, "replay": other, "single_task": single}))
    replay, single_task = pairs.iloc[0], pairs.iloc[1]
    assert not replay.stratified and (replay["op/lo"], replay["op/hi"]) == pytest.approx((-0.01, 0.01))
    assert flag(replay["op/contains_zero"]) is True and replay["op/p_improvement"] == pytest.approx(0.5)
    # One pair: a difference, no interval.
    assert single_task.pairs == 1 and math.isnan(single_task["op/lo"]) and flag(single_task["op/contains_zero"]) is None
    cells = R.paired_interval_cells(pairs)
    assert list(cells.columns) == [
        "method",
        "pairs",
        "aimmerging − method, OP mean [95% interval]",
        "OP: 0 in interval",
        "OP wins-ties-losses",
        "aimmerging − method, BWT mean [95% interval]",
        "BWT: 0 in interval",
        "BWT wins-ties-losses",
    ]
    assert cells.iloc[0].tolist()[:5] == ["replay", "3", "+0.00 [-1.00, +1.00]", "yes", "1-1-1"]
    assert cells.iloc[1].tolist()[:5] == ["single_task", "1", "+13.50 [–]", "–", "1-0-0"]
    assert R.markdown(cells).count("\n") == 4


def test_an_interval_ending_at_a_tie_contains_zero() -> None:
    # Differences -8, 0 (a tie, -5.6e-17 in floats) and -0.67 points: the interval ends at 0 and holds it.
    keys = [(1, 0), (2, 0), (3, 0)]
    ref = dict(zip(keys, (0.5, 0.3, 0.5), strict=True))
    other = dict(zip(keys, (0.58, 0.1 + 0.2, 0.5067), strict=True))
    row = T.paired_intervals(runs_table({"aimmerging": ref, "m": other})).iloc[0]
    assert row["op/ties"] == 1 and row["op/hi"] < 0 and flag(row["op/contains_zero"]) is True


def test_paired_intervals_refuse_repeated_runs_and_handle_no_pairs() -> None:
    runs = runs_table({"aimmerging": {(1, 0): 0.5}, "seqlora": {(1, 0): 0.4}})
    with pytest.raises(ValueError, match="share a \\(method, order, seed\\), e.g. seqlora o1 s0"):
        T.paired_intervals(pd.concat([runs, runs.iloc[[1]]]))
    assert T.paired_intervals(runs_table({"aimmerging": {(1, 0): 0.5}, "seqlora": {(2, 0): 0.4}})).empty


def test_interval_cells() -> None:
    assert R.interval(0.015, -0.005, 0.03) == "+1.50 [-0.50, +3.00]"
    assert R.interval(-0.00001, -0.00002, 0.0, signed=False) == "0.00 [0.00, 0.00]"  # never "-0.00"
    assert R.interval(0.015, math.nan, math.nan) == "+1.50 [–]" and R.interval(math.nan, 0.0, 0.1) == "–"


def test_pareto_mask_against_brute_force() -> None:
    """Random points, mixed senses, ties and NaN: the mask equals a brute-force dominance check."""
    rng = np.random.default_rng(0)
    for trial in range(20):
        values = rng.integers(0, 4, size=(12, 3)).astype(float)  # small ints: plenty of ties
        if trial % 3 == 0:
            values[rng.integers(0, 12), rng.integers(0, 3)] = np.nan
        senses = ["max", "min", "max"]
        signed = values * np.array([1, -1, 1])
        expected = []
        for i in range(len(values)):
            if np.isnan(signed[i]).any():
                expected.append(False)
                continue
            rivals = [j for j in range(len(values)) if not np.isnan(signed[j]).any()]
            expected.append(not any((signed[j] >= signed[i]).all() and (signed[j] > signed[i]).any() for j in rivals))
        assert S.pareto_mask(values, senses).tolist() == expected
    with pytest.raises(ValueError, match="senses"):
        S.pareto_mask(np.zeros((3, 2)), ["max"])


def test_hypervolume_of_a_two_objective_front_by_hand() -> None:
    # points (3, 1), (2, 2), (1, 3) over reference (0, 0): 3x1 + 2x1 + 1x1 = 6; a dominated point adds 0
    front = np.array([[3.0, 1.0], [2.0, 2.0], [1.0, 3.0]])
    assert S.hypervolume_2d(front, (0.0, 0.0)) == pytest.approx(6.0)
    assert S.hypervolume_2d(np.vstack([front, [[1.5, 1.5]]]), (0.0, 0.0)) == pytest.approx(6.0)
    assert S.hypervolume_2d(front, (1.0, 1.0)) == pytest.approx(1.0)  # only (2, 2) lies above (1, 1)
    assert S.hypervolume_2d(np.zeros((0, 2)), (0.0, 0.0)) == 0.0
