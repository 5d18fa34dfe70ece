"""The merge controller and its pure signals (docs/method.md, section 2): signal sequences in, decisions out."""

from __future__ import annotations

import json
import math

import pytest
import torch

from aimray.config import ControllerConfig
from aimray.merging import signals
from aimray.merging.controller import AtTaskEnd, Decision, FixedInterval, MergeController, Schedule

# The two sanity examples of docs/method.md (S0=8, cold start 3): the S in force at each successive merge.
FALLING_S = [8, 8, 8, 8, 8, 16, 33, 69, 111, 128, 128]
RISING_S = [8, 8, 8, 8, 8, 7, 6, 5, 4, 3, 2, 2]


def lambdas(ratio: float, n: int) -> list[float]:
    """Lambda_1 = 1, each next one `ratio` times the last (0.9: falling 10% per merge, 1.1: rising 10%)."""
    out = [1.0]
    for _ in range(n - 1):
        out.append(out[-1] * ratio)
    return out


def run_steps(ctl: MergeController, losses: list[float | None]) -> list[Decision]:
    return [ctl.step(loss) for loss in losses]


def merge_steps(decisions: list[Decision]) -> list[int]:
    """1-based step numbers at which the controller said merge."""
    return [i + 1 for i, d in enumerate(decisions) if d.merge]


# ------------------------------------------------------------------------------ learning signal, interval rule


def test_learning_signal_is_sum_abs_over_nominal_interval():
    delta = {"a": torch.tensor([[1.0, -2.0], [3.0, -4.0]]), "b": torch.tensor([0.5, -0.5])}
    assert signals.learning_signal(delta, 4) == pytest.approx(11.0 / 4)
    assert signals.learning_signal(delta, 1) == pytest.approx(11.0)
    assert signals.learning_signal({"z": torch.zeros(3, 3)}, 8) == 0.0


@pytest.mark.parametrize(("ratio", "expected"), [(0.9, FALLING_S), (1.1, RISING_S)])
def test_sanity_sequences_next_interval(ratio, expected):
    s, history, in_force = 8, [], []
    for lam in lambdas(ratio, len(expected)):
        in_force.append(s)
        s = signals.next_interval(s, lam, history, cold_start=3, s_min=2, s_max=128, halve_at=64)
        history.append(lam)
    assert in_force == expected


@pytest.mark.parametrize(("ratio", "expected"), [(0.9, FALLING_S), (1.1, RISING_S)])
def test_sanity_sequences_through_controller(ratio, expected):
    ctl = MergeController(ControllerConfig())
    in_force, bursts = [], []
    for lam in lambdas(ratio, len(expected)):
        in_force.append(ctl.state.interval)
        bursts.append(ctl.state.burst)
        ctl.merged(lam)
    assert in_force == expected
    assert bursts == expected  # M = int(S * M0 / S0) = S with M0 = S0 = 8
    assert ctl.state.lambdas == lambdas(ratio, len(expected))


def test_burst_scales_with_interval():
    cfg = ControllerConfig(s0=8, m0=4)
    ctl = MergeController(cfg)
    seen = []
    for lam in lambdas(0.9, len(FALLING_S)):
        seen.append((ctl.state.interval, ctl.state.burst))
        ctl.merged(lam)
    assert seen == [(s, int(s * 4 / 8)) for s in FALLING_S]
    assert (33, 16) in seen  # int(16.5)


def test_cold_start_holds_interval_for_five_merges_whatever_lambda():
    ctl = MergeController(ControllerConfig())
    for lam in [1.0, 100.0, 0.01, 5.0]:
        ctl.merged(lam)
        assert (ctl.state.interval, ctl.state.burst) == (8, 8)
    ctl.merged(0.5)  # the fifth merge: 4 values stored before it, more than cold_start=3
    assert ctl.state.interval == int(8 * (5.0 / 0.5 + 1)) == 88


@pytest.mark.parametrize(
    ("cold_start", "stored", "changes"),
    [(3, 3, False), (3, 4, True), (0, 0, False), (0, 1, True), (5, 5, False), (5, 6, True)],
)
def test_cold_start_counts_values_stored_before(cold_start, stored, changes):
    history = [2.0] * stored
    s = signals.next_interval(8, 1.0, history, cold_start=cold_start)
    assert (s != 8) is changes


# history [1, 1, 1, ref] is past the cold start; the reference (trend "last") is ref.
@pytest.mark.parametrize(
    ("s", "ref", "lam", "kw", "expected"),
    [
        # learning speeds up (lam >= ref): S <- max(s_min, int(S * ref / lam)), halved if >= halve_at
        (8, 1.0, 2.0, {}, 4),
        (8, 1.0, 100.0, {}, 2),  # floor s_min
        (8, 1.0, 100.0, {"s_min": 5}, 5),
        (8, 1.0, 1.0, {}, 8),  # equal counts as "speeds up": S unchanged, 8 < 64
        (128, 1.0, 1.0, {}, 64),  # 128 >= 64: halved
        (100, 4.0, 5.0, {}, 40),  # int(80) >= 64: halved
        (100, 1.0, 2.0, {}, 50),  # 50 < 64: not halved
        (127, 1.0, 1.0, {}, 63),  # int(127 / 2)
        (100, 4.0, 5.0, {"halve_at": 90}, 80),
        # learning slows down (lam < ref): S <- min(s_max, int(S * (ref / lam + 1, or + 0.5 when S >= 64)))
        (8, 2.0, 1.0, {}, 24),
        (40, 5.0, 4.0, {}, 90),  # 40 * 2.25
        (63, 5.0, 4.0, {}, 128),  # 63 * 2.25 = 141.75, capped
        (64, 5.0, 4.0, {}, 112),  # 64 * (1.25 + 0.5)
        (80, 3.0, 2.0, {}, 128),  # 80 * 2.0 = 160, capped
        (40, 5.0, 4.0, {"s_max": 50}, 50),
        (64, 5.0, 4.0, {"halve_at": 100, "s_max": 1000}, 144),  # below halve_at: + 1, not + 0.5
    ],
)
def test_next_interval_growth_and_shrink(s, ref, lam, kw, expected):
    assert signals.next_interval(s, lam, [1.0, 1.0, 1.0, ref], **kw) == expected


@pytest.mark.parametrize("lam", [0.0, -1.0, math.nan, math.inf])
def test_next_interval_ignores_degenerate_lambda(lam):
    assert signals.next_interval(8, lam, [1.0] * 4) == 8


@pytest.mark.parametrize(
    ("trend", "lam", "expected"),
    [
        ("last", 3.0, int(8 * (4.0 / 3.0 + 1))),  # ref = 4 (the last value): slows down -> 18
        ("window", 3.0, 8),  # ref = mean(2, 3, 4) = 3: lam >= ref, int(8 * 3 / 3)
        ("window", 6.0, 4),  # int(8 * 3 / 6)
        ("window", 2.0, 20),  # int(8 * (3 / 2 + 1))
    ],
)
def test_trend_window(trend, lam, expected):
    history = [1.0, 2.0, 3.0, 4.0]
    assert signals.next_interval(8, lam, history, trend=trend, window=3) == expected
    ctl = MergeController(ControllerConfig(trend=trend, trend_window=3))
    for value in history:
        ctl.merged(value)
    assert ctl.state.interval == 8  # cold start
    ctl.merged(lam)
    assert ctl.state.interval == expected


def test_previous_lambda_window_shorter_history():
    assert signals.previous_lambda([2.0, 4.0], "window", 5) == 3.0
    assert signals.previous_lambda([2.0, 4.0], "last", 5) == 4.0


# ------------------------------------------------------------------------------------------ forgetting signal


@pytest.mark.parametrize(("s", "warm"), [(8, 5), (6, 4), (12, 8), (3, 2), (2, 1), (1, 1), (128, 85)])
def test_monitor_steps(s, warm):
    assert signals.monitor_steps(s) == warm


def test_threshold_window_sets_delta_and_counts_nothing():
    cfg = ControllerConfig(s0=8, threshold_factor=2.0)  # warm-up window floor(16 / 3) = 5 steps
    ctl = MergeController(cfg)
    assert ctl.needs_memory_loss
    window = [1.0, 2.0, 3.0, 50.0, 100.0]  # huge losses inside the window are collected, not counted
    for i, loss in enumerate(window, start=1):
        assert not ctl.step(loss).merge
        assert ctl.state.activations == 0
        assert (ctl.state.threshold is None) == (i < 5)  # delta is set at step floor(2S/3) = 5
    assert ctl.state.losses == window
    assert ctl.state.threshold == pytest.approx(2.0 * sum(window) / 5)  # 62.4
    assert not ctl.step(62.3).merge  # just below delta: nothing
    assert ctl.state.activations == 0
    assert not ctl.step(62.4).merge  # loss >= delta at step 7 < S: one activation, no merge yet
    assert (ctl.state.activations, ctl.state.normal) == (1, 1)
    d = ctl.step(0.0)  # step 8 = S with one activation: merge, with S and M in force
    assert d == Decision(True, "normal", 8, 8)


def test_threshold_uses_factor():
    ctl = MergeController(ControllerConfig(s0=6, threshold_factor=2.5))
    run_steps(ctl, [1.0, 1.0, 2.0, 4.0])
    assert ctl.state.threshold == pytest.approx(2.5 * 2.0)


def test_normal_trigger_at_s():
    ctl = MergeController(ControllerConfig(s0=6))  # window 4 steps
    decisions = run_steps(ctl, [1.0] * 4 + [5.0] + [0.0])  # delta 2; activation at step 5, merge at 6
    assert merge_steps(decisions) == [6]
    assert decisions[-1] == Decision(True, "normal", 6, 8)
    assert ctl.weights() == (0.6, 0.4)  # one activation: history not important; S = 6 <= 70


def test_activation_after_s_merges_at_once():
    ctl = MergeController(ControllerConfig(s0=6))
    decisions = run_steps(ctl, [1.0] * 4 + [0.0] * 5 + [2.0])  # first loss >= delta at step 10
    assert merge_steps(decisions) == [10]
    assert decisions[-1].trigger == "normal"


def test_early_trigger_three_activations_before_s():
    ctl = MergeController(ControllerConfig(s0=12))  # window 8 steps
    decisions = run_steps(ctl, [1.0] * 8 + [9.0, 9.0, 9.0])
    assert merge_steps(decisions) == [11]
    assert decisions[-1] == Decision(True, "early", 12, 8)
    assert ctl.state.activations == 3
    assert ctl.weights() == (0.5, 0.5)  # history important (3 > 1) and new task important (12 <= 70)


@pytest.mark.parametrize(("s0", "multiple"), [(8, 2.0), (6, 2.0), (8, 3.0), (7, 1.5)])
def test_forced_trigger(s0, multiple):
    ctl = MergeController(ControllerConfig(s0=s0, forced_multiple=multiple))
    fire = math.ceil(multiple * s0)
    decisions = run_steps(ctl, [1.0] * fire)  # never >= delta = 2
    assert merge_steps(decisions) == [fire]
    assert decisions[-1] == Decision(True, "forced", s0, 8)
    assert (ctl.state.forced, ctl.state.normal) == (1, 0)


def test_forced_at_2s_with_default_config():
    ctl = MergeController(ControllerConfig())
    decisions = run_steps(ctl, [1.0] * 16)
    assert merge_steps(decisions) == [16]
    assert decisions[-1].trigger == "forced"


def test_merged_resets_forgetting_state_and_stores_lambda():
    ctl = MergeController(ControllerConfig(s0=6))
    run_steps(ctl, [1.0] * 4 + [5.0, 5.0])
    assert ctl.state.activations == 2
    ctl.merged(0.25)
    st = ctl.state
    assert (st.since, st.losses, st.threshold, st.activations, st.normal, st.forced) == (0, [], None, 0, 0, 0)
    assert st.lambdas == [0.25]
    # the next cycle collects a fresh window and sets a fresh threshold
    run_steps(ctl, [10.0] * 4)
    assert ctl.state.threshold == pytest.approx(20.0)
    assert ctl.state.activations == 0


def test_adaptive_step_needs_memory_loss():
    with pytest.raises(ValueError, match="memory loss"):
        MergeController(ControllerConfig()).step(None)


# -------------------------------------------------------------------------------------------- fusion weights


@pytest.mark.parametrize(
    ("activations", "interval", "expected"),
    [
        (2, 8, (0.5, 0.5)),  # both cues
        (3, 70, (0.5, 0.5)),  # both (S = 70 counts as new task important)
        (2, 71, (0.4, 0.6)),  # history only
        (5, 128, (0.4, 0.6)),
        (1, 8, (0.6, 0.4)),  # new task only (one activation is not "history important")
        (0, 70, (0.6, 0.4)),
        (1, 71, (0.5, 0.5)),  # neither
        (0, 128, (0.5, 0.5)),
    ],
)
def test_rule_weights(activations, interval, expected):
    assert signals.rule_weights(activations, interval) == expected
    ctl = MergeController(ControllerConfig())
    ctl.state.activations, ctl.state.interval = activations, interval
    assert ctl.weights() == expected


def test_rule_weights_threshold_from_config():
    ctl = MergeController(ControllerConfig(new_task_important_s=100))
    ctl.state.activations, ctl.state.interval = 0, 90
    assert ctl.weights() == (0.6, 0.4)
    assert signals.rule_weights(0, 90, 80) == (0.5, 0.5)


# ------------------------------------------------------------------------------------ schedules and ablations


def test_fixed_schedule():
    cfg = ControllerConfig(fixed_s=5, fixed_m=3, s0=8, m0=8)
    ctl = FixedInterval(cfg)
    assert not ctl.needs_memory_loss
    assert (ctl.state.interval, ctl.state.burst) == (5, 3)
    fired = []
    for g in range(1, 31):
        if ctl.step().merge:
            fired.append(g)
            ctl.merged(float(g) ** 3)  # wild learning signals change nothing
            assert (ctl.state.interval, ctl.state.burst) == (5, 3)
    assert fired == [5, 10, 15, 20, 25, 30]


@pytest.mark.parametrize("schedule", [AtTaskEnd, Schedule])
def test_single_and_none_never_fire(schedule):
    ctl = schedule(ControllerConfig())
    assert not ctl.needs_memory_loss
    assert not any(ctl.step(loss).merge for loss in [None, 1.0, 100.0] * 100)


def test_no_learning_signal_keeps_s():
    ctl = MergeController(ControllerConfig(s0=8, m0=4), learning_signal=False)
    assert ctl.needs_memory_loss
    for lam in lambdas(0.9, 11) + lambdas(1.5, 11):
        ctl.merged(lam)
        assert (ctl.state.interval, ctl.state.burst) == (8, 4)


def test_no_forgetting_signal_fires_at_nominal_s():
    ctl = MergeController(ControllerConfig(), forgetting_signal=False)
    assert not ctl.needs_memory_loss
    taken = []
    for lam in lambdas(0.9, len(FALLING_S)):
        steps = 1
        while not (d := ctl.step()).merge:
            steps += 1
        assert d.trigger == "normal"
        taken.append(steps)
        ctl.merged(lam)
    assert taken == FALLING_S  # the learning signal still adapts S


@pytest.mark.parametrize(
    "make", [FixedInterval, lambda cfg: MergeController(cfg, learning_signal=False, forgetting_signal=False)]
)
def test_flags(make):
    ctl = make(ControllerConfig())
    assert not ctl.needs_memory_loss
    ctl.merged(5.0)
    for lam in lambdas(0.5, 8):  # no learning signal: S never moves
        ctl.merged(lam)
    assert ctl.state.interval == ctl.initial_state().interval


def test_reset_task():
    ctl = MergeController(ControllerConfig())
    for lam in lambdas(0.9, 7):
        ctl.merged(lam)
    run_steps(ctl, [1.0] * 3)
    assert ctl.state.interval != 8
    ctl.reset_task()
    st = ctl.state
    assert (st.interval, st.burst, st.since, st.lambdas, st.losses) == (8, 8, 0, [], [])


# ---------------------------------------------------------------------------------------------- state round trip


def drive(ctl: MergeController, losses: list[float], lams: list[float]) -> list[tuple]:
    """Feed losses; at each merge record the decision, weights and the new (S, M); use the next Lambda."""
    out, it = [], iter(lams)
    for loss in losses:
        d = ctl.step(loss)
        if d.merge:
            w = ctl.weights()
            ctl.merged(next(it))
            out.append((d.trigger, w, ctl.state.interval, ctl.state.burst))
        else:
            out.append((None,))
    return out


def loss_stream(n: int, seed: int) -> list[float]:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, generator=g) * 3).tolist()


@pytest.mark.parametrize("trend", ["last", "window"])
def test_state_dict_json_round_trip_continues_identically(trend):
    cfg = ControllerConfig(trend=trend)
    losses, lams = loss_stream(600, 0), lambdas(0.93, 200)
    ref = MergeController(cfg)
    first = drive(ref, losses[:203], lams)
    assert sum(1 for d in first if d[0]) >= 6  # past the cold start, mid-window
    blob = json.dumps(ref.state_dict())

    restored = MergeController(cfg)
    restored.load_state_dict(json.loads(blob))
    assert restored.state == ref.state
    used = len(ref.state.lambdas)
    assert drive(restored, losses[203:], lams[used:]) == drive(ref, losses[203:], lams[used:])
    assert restored.state == ref.state


def test_load_into_wrong_schedule_raises():
    state = MergeController(ControllerConfig()).state_dict()
    with pytest.raises(ValueError, match="adaptive"):
        FixedInterval(ControllerConfig()).load_state_dict(state)


def test_task_end_schedule_merges_once_with_the_controllers_ratio():
    ctl = AtTaskEnd(ControllerConfig(s0=8, m0=4))
    assert ctl.merges and not ctl.needs_memory_loss
    assert ctl.at_task_end(37) == Decision(True, "task_end", 37, 18)  # M = int(37 x 4 / 8)
    assert FixedInterval(ControllerConfig()).at_task_end(37) == Decision(False)


def test_no_burst_ablation_decides_zero_burst_steps():
    ctl = MergeController(ControllerConfig(s0=2, m0=2), forgetting_signal=False, burst=False)
    assert [ctl.step(), ctl.step()] == [Decision(False), Decision(True, "normal", 2, 0)]
    assert ctl.state.burst == 2  # the schedule's M is unchanged; only the decision skips the burst


@pytest.mark.parametrize(
    ("count", "delta", "merges"), [("spec", 2.0, [(6, "normal")]), ("code", 2.0 * 9 / 5, [(12, "forced")])]
)
def test_warmup_count_spec_or_released_code(count, delta, merges):
    """controller.warmup_count at S = 6: the spec averages floor(2S/3) = 4 memory losses and monitors from
    step 5; the released code averages 5 and monitors from step 6. Losses 1, 1, 1, 1, 5, then 1s: under
    the spec the 5 is an activation (delta 2) and the merge comes at S (step 6); under the code count the
    5 is averaged in (delta 3.6), nothing activates and the merge is forced at 2S (step 12)."""
    ctl = MergeController(ControllerConfig(s0=6, warmup_count=count))
    decisions = run_steps(ctl, [1.0, 1.0, 1.0, 1.0, 5.0, 1.0])
    assert ctl.state.threshold == pytest.approx(delta)
    if not decisions[-1].merge:
        decisions += run_steps(ctl, [1.0] * 6)
    assert [(i + 1, d.trigger) for i, d in enumerate(decisions) if d.merge] == merges
