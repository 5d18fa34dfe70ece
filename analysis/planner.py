"""The study planner: how many (order, seed) pairs each comparison needs, which runs to add next, and when a
comparison is decided, without the repeated looks that inflate false differences.

A comparison is AimMerging against one other method on one metric (OP or BWT, in points), read over paired
runs: the same order and seed. The design is Stein's two-stage procedure for a mean of paired differences:

1. Pilot: the first `pilot` pairs of every comparison. Their standard deviation s0 fixes the interval every
   later reading uses, mean +- q * s0 / sqrt(n), with q the t quantile at 1 - alpha/2 on pilot - 1 degrees
   of freedom, and the target: the fewest pairs whose half-width is at most margin / 2. At the target every
   outcome is decided: the interval excludes 0 (a difference) or, containing 0 and being at most `margin`
   wide on each side, lies within +-margin (practically equivalent).
2. Second stage: more pairs, chosen from the pilot's spreads and the runs' costs alone (the pair that buys
   the most interval width per hour of compute goes first), never from a mean, until every comparison
   reaches its target or the budget is spent. A comparison is read once, then: at its target, or where the
   budget ran out.

For normal differences sqrt(n) (mean - mu) / s0 has the t distribution on pilot - 1 degrees of freedom
whatever n the second stage picked, because n depends on the pilot's spreads only (independent of its
means): the interval keeps its 1 - alpha coverage and a comparison of equal methods declares a difference
with probability alpha. `simulate` checks that, and shows what stopping at the first interval that clears
0 (rule "peek") does to it. Readings before the end are provisional and say so.

Pure functions of numbers and data frames (no torch, no ray): benchmarks/quality.py runs what they plan.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import cached_property

import numpy as np
import pandas as pd
from scipy import stats as st

REFERENCE = "aimmerging"
NOT_COMPARED = ("mtl", "single_task")  # an upper bound and FWT's reference: run, never compared
PLANNED_METRICS = ("op", "bwt")


@dataclass(frozen=True)
class Design:
    alpha: float = 0.05  # two-sided: the chance an equal pair of methods is declared different
    margin: float = 1.0  # points: differences within +-margin are practically equivalent
    pilot: int = 4  # pairs of the first stage (every comparison has them before any is planned)
    power: float = 0.8  # for the pairs a comparison would need to detect its observed difference

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must lie in (0, 1), got {self.alpha}")
        if self.margin <= 0:
            raise ValueError(f"margin must be positive (points), got {self.margin}")
        if self.pilot < 2:
            raise ValueError(f"pilot must be at least 2 pairs (a spread needs two), got {self.pilot}")

    @cached_property
    def quantile(self) -> float:
        return float(st.t.ppf(1 - self.alpha / 2, self.pilot - 1))

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "quantile"}


def half_width(sd0: float, n: int, design: Design) -> float:
    """The interval's half-width with n pairs (points), from the pilot's standard deviation."""
    return design.quantile * sd0 / math.sqrt(n)


def target_pairs(sd0: float, design: Design) -> int:
    """The fewest pairs (at least the pilot's) whose half-width is at most margin / 2: every outcome decided."""
    need = (design.quantile * sd0 / (design.margin / 2)) ** 2
    return max(design.pilot, math.ceil(need - 1e-9))


def pairs_for_power(sd0: float, effect: float, design: Design) -> int | None:
    """Pairs a comparison would need to detect a difference of `effect` points with the design's power (t
    quantiles on the pilot's degrees of freedom); None where the effect is 0."""
    if abs(effect) < 1e-12:
        return None
    z = design.quantile + float(st.t.ppf(design.power, design.pilot - 1))
    return max(design.pilot, math.ceil((z * sd0 / abs(effect)) ** 2 - 1e-9))


def decide(diffs: Sequence[float], design: Design, final: bool) -> dict:
    """One comparison read from its differences (points, in the pair sequence's order: the first `pilot` are
    the pilot). Decision: "pilot" (fewer pairs than the pilot), "running" (before its target while the budget
    lasts: the interval is provisional), else "difference" (the interval excludes 0), "equivalent" (within
    +-margin) or "open" (neither: the budget ran out first)."""
    d = np.asarray(diffs, dtype=float)
    n = len(d)
    row = {"pairs": n, "mean": float(d.mean()) if n else math.nan, "sd0": math.nan, "lo": math.nan, "hi": math.nan}
    row |= {"target": None, "decision": "pilot"}
    if n < design.pilot:
        return row
    sd0 = float(d[: design.pilot].std(ddof=1))
    h = half_width(sd0, n, design)
    target = target_pairs(sd0, design)
    row |= {"sd0": sd0, "lo": row["mean"] - h, "hi": row["mean"] + h, "target": target}
    if n < target and not final:
        row["decision"] = "running"
    elif row["lo"] > 0 or row["hi"] < 0:
        row["decision"] = "difference"
    elif -design.margin <= row["lo"] and row["hi"] <= design.margin:
        row["decision"] = "equivalent"
    else:
        row["decision"] = "open"
    return row


def plan_next(
    pairs: Mapping[str, int],
    sd0: Mapping[str, Mapping[str, float]],
    hours: Mapping[str, float],
    left_hours: float,
    design: Design,
    reference: str = REFERENCE,
    limit: int | None = None,
) -> list[tuple[str, int]]:
    """The runs to add, in the order to start them, as (method, pair index from 0): `pairs` has each
    method's pairs so far (the reference's included), `sd0` each compared method's pilot spread per metric
    (points), `hours` a run's cost per method. Greedy: the next pair goes to the method whose metrics still
    short of their target gain the most interval width (in margins) per hour, counting the reference's run
    where that pair lacks one; until every target is met, the next pair would overrun `left_hours` or the
    methods have the `limit` pairs there are."""
    have = dict(pairs)
    plan: list[tuple[str, int]] = []
    targets = {m: {k: target_pairs(s, design) for k, s in by.items()} for m, by in sd0.items()}
    while True:
        best, best_rate, best_cost = None, 0.0, 0.0
        for m, by in sd0.items():
            n = have.get(m, 0)
            gain = sum(
                (half_width(s, n, design) - half_width(s, n + 1, design)) / design.margin
                for k, s in by.items()
                if n < targets[m][k]
            )
            if gain <= 0 or (limit is not None and n >= limit):
                continue
            cost = hours[m] + (hours[reference] if have.get(reference, 0) <= n else 0.0)
            if cost <= left_hours + 1e-9 and gain / cost > best_rate:
                best, best_rate, best_cost = m, gain / cost, cost
        if best is None:
            return plan
        n = have.get(best, 0)
        if have.get(reference, 0) <= n:
            plan.append((reference, n))
            have[reference] = n + 1
        plan.append((best, n))
        have[best] = n + 1
        left_hours -= best_cost


def comparisons(
    runs: pd.DataFrame,
    pair_sequence: Sequence[tuple[int, int]],
    design: Design,
    final: bool,
    reference: str = REFERENCE,
    metrics: Sequence[str] = PLANNED_METRICS,
) -> pd.DataFrame:
    """Every comparison of the reference with another method of `runs` (analysis.tables.run_metrics: values
    as fractions) on `metrics`: the pairs it has (in `pair_sequence`'s order; a pair counts once both runs
    finished, and only while every earlier pair of the sequence has too: the pilot is the first pairs), its
    reading (`decide`), the pairs the design wants and the pairs it would need for the design's power at the
    observed mean."""
    rows = []
    keyed = {(r.method, r.order, r.seed): r for r in runs.itertuples()}
    for method in [m for m in dict.fromkeys(runs.method) if m not in (reference, *NOT_COMPARED)]:
        for metric in metrics:
            diffs = []
            for order, seed in pair_sequence:
                a, b = keyed.get((reference, order, seed)), keyed.get((method, order, seed))
                if a is None or b is None:
                    break
                diffs.append(100 * (getattr(a, metric) - getattr(b, metric)))
            row = {"method": method, "metric": metric, **decide(diffs, design, final)}
            row["power_pairs"] = pairs_for_power(row["sd0"], row["mean"], design) if row["target"] else None
            rows.append(row)
    return pd.DataFrame(rows)


def leading_pairs(runs: pd.DataFrame, method: str, sequence: Sequence[tuple[int, int]]) -> int:
    """How many pairs of the sequence, from the first, `method` has finished without a gap."""
    mine = runs[runs.method == method]
    done = set(zip(mine.order, mine.seed, strict=True))
    n = 0
    for pair in sequence:
        if pair not in done:
            break
        n += 1
    return n


def cost_clock(runs: pd.DataFrame) -> str:
    """What a run costs is read on: "cpu" (processor seconds, which other work on the machine does not
    inflate) when every run counted them, else "wall" (a study begun before the loop counted them stays on
    wall time, so that its hours add up on one clock)."""
    cpu = runs.get("cpu_seconds")
    return "cpu" if cpu is not None and len(cpu) and cpu.notna().all() else "wall"


def standing(
    runs: pd.DataFrame | None, sequence, design: Design, budget_hours: float, methods: Sequence[str] | None = None
) -> dict:
    """Where a planned study stands, from its finished runs (analysis.tables.run_metrics): run hours spent
    ("spent"), a run's mean hours per method ("hours"), the clock they are read on ("clock": `cost_clock`),
    every method's leading pairs ("pairs"), the plan from here ("plan": None until the pilot is complete, []
    once nothing is left) and the comparisons ("table": final once nothing is left to plan). `methods`: the
    study's, when some may have no finished run yet (their pilot is not complete either)."""
    if runs is None or runs.empty:
        return {"runs": None, "plan": None, "spent": 0.0, "clock": "wall"}
    ran = list(dict.fromkeys(runs.method))
    clock = cost_clock(runs)
    seconds = runs[f"{clock}_seconds"]
    hours_of = seconds.groupby(runs.method).mean() / 3600
    hours = {m: float(hours_of[m]) for m in ran}
    pairs = {m: leading_pairs(runs, m, sequence) for m in ran}
    spent = float(seconds.sum() / 3600)
    table = comparisons(runs, sequence, design, final=False)
    compared = list(dict.fromkeys(table.method)) if len(table) else []
    state = {"runs": runs, "plan": None, "spent": spent, "hours": hours, "pairs": pairs, "table": table, "clock": clock}
    queued = [m for m in methods or () if m not in (REFERENCE, *NOT_COMPARED)]
    if any(pairs.get(m, 0) < design.pilot for m in [REFERENCE, *compared, *queued]):
        return state
    sd0 = {m: dict(zip(table[table.method == m].metric, table[table.method == m].sd0, strict=True)) for m in compared}
    plan = plan_next(pairs, sd0, hours, budget_hours - spent, design, limit=len(sequence))
    return state | {"plan": plan, "table": comparisons(runs, sequence, design, final=not plan)}


def progress(root) -> dict | None:
    """A planned study's standing from its folder alone (the notebook's view): <root>/plan.json's design,
    pair sequence and latest budget, and its finished runs; None without a plan."""
    import json
    from pathlib import Path

    from analysis import tables as T
    from analysis.load import open_study

    path = Path(root) / "plan.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    design = Design(**record["design"])
    runs = T.run_metrics(open_study(root))
    sequence = [tuple(pair) for pair in record["sequence"]]
    state = standing(runs, sequence, design, record["budgets"][-1], record.get("methods"))
    return state | {"design": design, "budget": record["budgets"][-1], "rounds": len(record["rounds"])}


def fixed_design_hours(table: pd.DataFrame, hours: Mapping[str, float], reference: str = REFERENCE) -> float:
    """What a fixed grid would have cost for the same decisions: every compared method (and the reference)
    run at the most pairs any comparison of `table` used."""
    if table.empty:
        return 0.0
    n = int(table.pairs.max())
    return n * (hours[reference] + sum(hours[m] for m in dict.fromkeys(table.method)))


def simulate(
    design: Design,
    gaps: Mapping[str, float],
    spread: float,
    hours: Mapping[str, float],
    budget_hours: float,
    reps: int = 2000,
    seed: int = 0,
    rule: str = "stein",
    reference: str = REFERENCE,
) -> pd.DataFrame:
    """Simulated studies of the planner: per rep and compared method, the decision on one metric. Each
    method's run scores `mu - gap` (the reference's `mu`) plus an effect of the pair's order that every
    method shares, plus noise, scaled so the paired differences have standard deviation `spread` (points).
    rule "stein": this module's design; "peek": the same pilot, then one pair at a time to each comparison
    in turn, stopping a comparison the first time a plain t interval (n - 1 degrees of freedom) excludes 0
    (the rule the design exists to avoid)."""
    if rule not in ("stein", "peek"):
        raise ValueError(f"rule must be 'stein' or 'peek', got {rule!r}")
    rng = np.random.default_rng(seed)
    methods = list(gaps)
    cap = 400  # more pairs than any budget here buys
    rows = []
    for rep in range(reps):
        order_effect = rng.normal(0, 3 * spread, cap)
        noise = spread / math.sqrt(2)  # two independent runs per difference
        ref = order_effect + rng.normal(0, noise, cap)
        diffs = {m: ref - (order_effect - gaps[m] + rng.normal(0, noise, cap)) for m in methods}
        play = _stein if rule == "stein" else _peek
        decided = play(diffs, design, hours, budget_hours, reference)
        rows += [{"rep": rep, "method": m, **decided[m]} for m in methods]
    return pd.DataFrame(rows)


def _stein(diffs: dict, design: Design, hours: Mapping[str, float], budget: float, reference: str) -> dict:
    pilot = design.pilot
    spent = pilot * (hours[reference] + sum(hours[m] for m in diffs))
    sd0 = {m: {"metric": float(d[:pilot].std(ddof=1))} for m, d in diffs.items()}
    plan = plan_next({reference: pilot, **{m: pilot for m in diffs}}, sd0, hours, budget - spent, design, reference)
    n = {m: pilot + sum(1 for k, _ in plan if k == m) for m in diffs}
    return {m: decide(d[: n[m]], design, final=True) for m, d in diffs.items()}


def _peek(diffs: dict, design: Design, hours: Mapping[str, float], budget: float, reference: str) -> dict:
    n = {m: design.pilot for m in diffs}
    left = budget - design.pilot * (hours[reference] + sum(hours[m] for m in diffs))
    out = {}
    while True:
        for m, d in diffs.items():
            if m in out:
                continue
            x = d[: n[m]]
            h = float(st.t.ppf(1 - design.alpha / 2, n[m] - 1)) * x.std(ddof=1) / math.sqrt(n[m])
            if abs(x.mean()) > h:
                out[m] = {"pairs": n[m], "mean": float(x.mean()), "decision": "difference"}
        open_ = [m for m in diffs if m not in out]
        cost = sum(hours[m] for m in open_) + hours[reference]
        if not open_ or cost > left:
            break
        left -= cost
        for m in open_:
            n[m] += 1
    return out | {m: {"pairs": n[m], "mean": float(diffs[m][: n[m]].mean()), "decision": "open"} for m in open_}
