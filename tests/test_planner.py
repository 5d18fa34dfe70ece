"""The study planner (analysis.planner): Stein's two-stage design keeps its error rate where stopping at the
first interval that clears 0 does not, plans pairs by interval width per hour, and reads a study's runs."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from analysis import planner as P

HOURS = {"aimmerging": 0.75, "b": 0.5}


def test_target_is_the_fewest_pairs_that_decide_every_outcome():
    design = P.Design(margin=1.0, pilot=4)
    for sd0 in (0.3, 1.0, 2.5):
        n = P.target_pairs(sd0, design)
        assert P.half_width(sd0, n, design) <= design.margin / 2 + 1e-12
        if n > design.pilot:
            assert P.half_width(sd0, n - 1, design) > design.margin / 2
    assert P.target_pairs(0.0, design) == design.pilot
    assert math.isclose(design.quantile, 3.182446, rel_tol=1e-5)  # t(0.975, 3 df)
    with pytest.raises(ValueError, match="pilot"):
        P.Design(pilot=1)


def test_decide_reads_once_at_the_target_or_the_end():
    design = P.Design(margin=1.0, pilot=4)
    assert P.decide([1.0, 2.0], design, final=False)["decision"] == "pilot"
    wide = [3.0, -1.0, 4.0, 0.0]  # sd 2.2: target far beyond 4 pairs
    assert P.decide(wide, design, final=False)["decision"] == "running"
    assert P.decide(wide, design, final=True)["decision"] == "open"  # the budget ran out: contains 0, too wide
    clear = [5.0, 5.2, 4.9, 5.1]
    row = P.decide(clear, design, final=False)
    assert row["target"] == 4 and row["decision"] == "difference" and row["lo"] > 0
    same = [0.1, -0.1, 0.05, -0.05]
    assert P.decide(same, design, final=False)["decision"] == "equivalent"
    row = P.decide([*wide, 1.0, 1.0], design, final=True)  # the pilot's spread, all pairs' mean
    assert row["sd0"] == pytest.approx(pd.Series(wide).std()) and row["mean"] == pytest.approx(8 / 6)


def test_plan_spends_the_budget_where_width_per_hour_is_largest():
    design = P.Design(margin=1.0, pilot=4)
    pairs = {"aimmerging": 4, "wide": 4, "narrow": 4}
    sd0 = {"wide": {"op": 3.0}, "narrow": {"op": 0.2}}  # narrow is at its target already
    hours = {"aimmerging": 1.0, "wide": 0.5, "narrow": 0.5}
    plan = P.plan_next(pairs, sd0, hours, left_hours=4.6, design=design)
    assert plan == [("aimmerging", 4), ("wide", 4), ("aimmerging", 5), ("wide", 5), ("aimmerging", 6), ("wide", 6)]
    assert P.plan_next(pairs, sd0, hours, left_hours=1.0, design=design) == []  # a pair costs 1.5 h
    # the reference's run is counted once per pair: the second method on a pair pays only its own run
    sd0 = {"wide": {"op": 3.0}, "other": {"op": 3.0}}
    plan = P.plan_next({"aimmerging": 4, "wide": 4, "other": 4}, sd0, hours | {"other": 0.5}, 2.0, design)
    assert plan == [("aimmerging", 4), ("wide", 4), ("other", 4)]
    # no more pairs than the sequence has
    assert P.plan_next(pairs, {"wide": {"op": 3.0}}, hours, 100.0, design, limit=5) == [("aimmerging", 4), ("wide", 4)]
    # every target met: nothing to add, whatever the budget
    assert P.plan_next({"aimmerging": 9, "wide": 9}, {"wide": {"op": 0.3}}, hours, 100.0, design) == []


def test_equal_methods_declare_a_difference_at_most_alpha_of_the_time():
    """The design's error rate, over 4000 simulated studies (standard error 0.0034 at 5%), against the rule it
    replaces: stopping a comparison the first time a plain interval excludes 0."""
    design = P.Design(alpha=0.05, margin=1.0, pilot=4)
    for budget in (12.0, 30.0):
        sims = P.simulate(design, {"b": 0.0}, spread=2.0, hours=HOURS, budget_hours=budget, reps=4000, seed=1)
        assert (sims.decision == "difference").mean() < 0.06
    three = {"x": 0.0, "y": 0.0, "z": 0.0}  # shared reference runs: each comparison still at alpha
    sims = P.simulate(design, three, 2.0, HOURS | dict.fromkeys(three, 0.5), 12.0, reps=2000, seed=2)
    assert sims.groupby("method").decision.apply(lambda d: (d == "difference").mean()).max() < 0.065
    peek = P.simulate(design, {"b": 0.0}, 2.0, HOURS, 30.0, reps=2000, seed=1, rule="peek")
    assert (peek.decision == "difference").mean() > 0.12  # repeated looks inflate false differences


def test_a_gap_of_one_spread_is_decided_within_the_budget():
    design = P.Design(margin=1.0, pilot=4)
    sims = P.simulate(design, {"b": 2.0}, spread=2.0, hours=HOURS, budget_hours=30.0, reps=2000, seed=3)
    assert (sims.decision == "difference").mean() > 0.8
    assert (sims["mean"] > 0).mean() > 0.99  # the sign: the reference is the better one here
    short = P.simulate(design, {"b": 2.0}, 2.0, HOURS, 12.0, reps=2000, seed=3)  # 9 pairs: about half
    assert 0.35 < (short.decision == "difference").mean() < 0.7


def _runs(values: dict) -> pd.DataFrame:
    rows = [
        {"method": m, "order": o, "seed": 0, "op": v / 100, "bwt": -v / 200, "wall_seconds": 3600.0}
        for m, by_order in values.items()
        for o, v in by_order.items()
    ]
    return pd.DataFrame(rows)


def test_comparisons_read_pairs_in_sequence_and_skip_the_references():
    runs = _runs(
        {
            "aimmerging": {4: 60, 5: 62, 6: 61, 101: 63, 102: 60},
            "seqlora": {4: 55, 5: 58, 6: 57, 101: 58, 102: 56},
            "replay": {4: 59, 6: 60, 101: 61},  # order 5 missing: only the pair before it counts
            "single_task": {4: 70},
            "mtl": {4: 72},
        }
    )
    sequence = [(4, 0), (5, 0), (6, 0), (101, 0), (102, 0)]
    table = P.comparisons(runs, sequence, P.Design(pilot=4), final=False)
    assert set(table.method) == {"seqlora", "replay"} and set(table.metric) == {"op", "bwt"}
    seq = table[(table.method == "seqlora") & (table.metric == "op")].iloc[0]
    assert seq.pairs == 5 and seq["mean"] == pytest.approx(4.4)
    assert seq.decision in ("difference", "running")
    rep = table[(table.method == "replay") & (table.metric == "op")].iloc[0]
    assert rep.pairs == 1 and rep.decision == "pilot"
    hours = {"aimmerging": 1.0, "seqlora": 0.5, "replay": 0.5}
    assert P.fixed_design_hours(table, hours) == 5 * 2.0


def test_standing_plans_once_the_pilot_is_complete_and_reads_finally_when_the_budget_is_spent():
    design = P.Design(pilot=4)
    sequence = [(o, 0) for o in (4, 5, 6, 101, 102, 103, 104)]
    values = {"aimmerging": {4: 60, 5: 62, 6: 61, 101: 66}, "seqlora": {4: 55, 5: 58, 6: 57, 101: 58}}
    early = P.standing(_runs({"aimmerging": values["aimmerging"], "seqlora": {4: 55, 5: 58}}), sequence, design, 20.0)
    assert early["plan"] is None and early["spent"] == 6.0  # the pilot is not complete: nothing planned
    state = P.standing(_runs(values), sequence, design, budget_hours=12.0)  # 8 run hours spent, a pair costs 2
    assert state["plan"] == [("aimmerging", 4), ("seqlora", 4), ("aimmerging", 5), ("seqlora", 5)]
    assert set(state["table"].decision) == {"running"}  # provisional while runs are planned
    spent = P.standing(_runs(values), sequence, design, budget_hours=9.0)  # not one more pair fits
    assert spent["plan"] == [] and set(spent["table"].decision) <= {"difference", "equivalent", "open"}
    assert P.standing(None, sequence, design, 9.0)["plan"] is None
    # a study method with no finished run yet (queued behind the others): its pilot is not complete either;
    # mtl and single_task are run, never compared, and do not hold the plan back
    study = ["aimmerging", "seqlora", "aimmerging_no_ls", "single_task", "mtl"]
    assert P.standing(_runs(values), sequence, design, 12.0, methods=study)["plan"] is None
    assert P.standing(_runs(values), sequence, design, 12.0, methods=[*study[:2], *study[3:]])["plan"]


def test_standing_reads_costs_on_processor_time_once_every_run_counted_it():
    """A run's processor seconds are its compute (a suite running beside it inflates wall time, not them):
    the planner reads hours on them when every run has them, else on wall time (a study begun before the
    loop counted them, or a GPU run, whose processor time is not its compute: NaN)."""
    design, sequence = P.Design(pilot=4), [(o, 0) for o in (4, 5, 6, 101, 102, 103, 104)]
    values = {"aimmerging": {4: 60, 5: 62, 6: 61, 101: 66}, "seqlora": {4: 55, 5: 58, 6: 57, 101: 58}}
    runs = _runs(values).assign(cpu_seconds=[1800.0] * 4 + [900.0] * 4)  # walls inflated to 1 h each
    state = P.standing(runs, sequence, design, budget_hours=12.0)
    assert state["clock"] == "cpu" and state["spent"] == 3.0 and state["hours"] == {"aimmerging": 0.5, "seqlora": 0.25}
    assert len(state["plan"]) > 4  # a pair costs 0.75 h, not 2 h: more of them fit in the 9 h left
    older = runs.assign(cpu_seconds=[math.nan] + [1800.0] * 7)
    wall = P.standing(older, sequence, design, budget_hours=12.0)
    assert wall["clock"] == "wall" and wall["spent"] == 8.0 and wall["hours"]["seqlora"] == 1.0
    assert P.standing(_runs(values), sequence, design, 12.0)["clock"] == "wall"  # no column at all


def test_decision_cells_show_the_reading_and_what_an_open_comparison_would_need():
    from analysis import report as R

    table = pd.DataFrame(
        [
            {"method": "seqlora", "metric": "op", "pairs": 4, "mean": 4.35, "lo": 1.69, "hi": 7.01, "target": 113}
            | {"decision": "running", "power_pairs": 4},
            {"method": "fixed_interval", "metric": "op", "pairs": 4, "mean": -0.01, "lo": -2.38, "hi": 2.36}
            | {"target": 90, "decision": "running", "power_pairs": 553724},  # a mean near 0
            {"method": "replay", "metric": "bwt", "pairs": 2, "mean": -2.5, "lo": math.nan, "hi": math.nan}
            | {"target": None, "decision": "pilot", "power_pairs": None},
        ]
    )
    cells = R.decision_cells(table, {"aimmerging": 1.0, "seqlora": 0.75, "fixed_interval": 1.0, "replay": 0.8})
    assert list(cells["aimmerging − method"]) == ["+4.35 [+1.69, +7.01]", "-0.01 [-2.38, +2.36]", "-2.50"]
    assert list(cells["pairs / target"]) == ["4 / 113", "4 / 90", "2 / –"]
    assert list(cells["pairs for power at the mean"]) == ["4 (7.0 h)", "over 1,000", "–"]
