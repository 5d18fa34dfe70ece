"""Pure functions of the AimMerging controller (docs/method.md, section 2)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def learning_signal(delta_in: Mapping[str, torch.Tensor], interval: int) -> float:
    """Lambda = sum over every LoRA element of |delta_in| / S (S the nominal interval, not steps taken)."""
    return float(sum(d.detach().abs().sum().item() for d in delta_in.values())) / interval


def threshold(losses: Sequence[float], factor: float) -> float:
    """delta = factor x mean(memory losses collected in the first floor(2S/3) steps after a merge)."""
    return factor * sum(losses) / len(losses)


def monitor_steps(interval: int) -> int:
    """Steps after a merge whose memory losses set the threshold: floor(2S/3), at least 1."""
    return max(1, (2 * interval) // 3)


def previous_lambda(history: Sequence[float], trend: str, window: int) -> float:
    """The reference the new Lambda is compared with: the last value ("last", the released code), or the
    mean of the last `window` values ("window", the paper's sliding-window trend)."""
    if trend == "last":
        return history[-1]
    recent = history[-window:]
    return sum(recent) / len(recent)


def next_interval(
    interval: int,
    lam: float,
    history: Sequence[float],
    *,
    cold_start: int = 3,
    s_min: int = 2,
    s_max: int = 128,
    halve_at: int = 64,
    trend: str = "last",
    window: int = 3,
) -> int:
    """The merge interval after a merge whose learning signal is `lam` (rule 5).

    `history` holds the Lambda values stored before this one. Cold start: S is unchanged until more than
    `cold_start` values are stored. Then, with ref the previous Lambda:
      lam >= ref (learning speeds up):  S <- max(s_min, int(S * ref / lam)); if S >= halve_at: S <- int(S / 2)
      lam <  ref (learning slows down): S <- min(s_max, int(S * (ref / lam + (0.5 if S >= halve_at else 1))))
    """
    if len(history) <= cold_start:
        return interval
    ref = previous_lambda(history, trend, window)
    if lam <= 0 or not math.isfinite(lam):
        return interval
    if lam >= ref:
        s = max(s_min, int(interval * ref / lam))
        return int(s / 2) if s >= halve_at else s
    bonus = 0.5 if interval >= halve_at else 1.0
    return min(s_max, int(interval * (ref / lam + bonus)))


def burst_length(interval: int, s0: int, m0: int) -> int:
    """M = int(S * M0 / S0): the rehearsal burst scales with the interval."""
    return int(interval * m0 / s0)


def rule_weights(activations: int, interval: int, new_task_important_s: int = 70) -> tuple[float, float]:
    """(w_in, w_out) from the cues history important (activations > 1) and new task important (S <= 70):
    both -> (0.5, 0.5); history only -> (0.4, 0.6); new task only -> (0.6, 0.4); neither -> (0.5, 0.5)."""
    history = activations > 1
    new_task = interval <= new_task_important_s
    if history and not new_task:
        return 0.4, 0.6
    if new_task and not history:
        return 0.6, 0.4
    return 0.5, 0.5
