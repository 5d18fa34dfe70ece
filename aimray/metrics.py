"""Continual-learning metrics over the accuracy matrix (pure numpy).

a[j][i] = score on task i after training through task j (0-based, T x T); NaN where not evaluated.
The Tune objective, the CLI and the analysis all call these functions.
"""

from __future__ import annotations

import numpy as np


def _matrix(a) -> np.ndarray:
    a = np.asarray(a, dtype=float)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"accuracy matrix must be square (T x T), got shape {a.shape}")
    return a


def average_performance(a) -> float:
    """OP = mean_i a[T-1][i]: the final score averaged over all tasks."""
    return float(np.mean(_matrix(a)[-1]))


def backward_transfer(a) -> float:
    """BWT = mean over i < T-1 of (a[T-1][i] - a[i][i]); NaN for a single task."""
    a = _matrix(a)
    t = a.shape[0]
    if t < 2:
        return float("nan")
    return float(np.mean([a[-1, i] - a[i, i] for i in range(t - 1)]))


def forward_transfer_paper(a, single_task) -> float:
    """FWT (AimMerging paper) = mean_i (a[i][i] - s_i), s_i the single-task LoRA's score on task i."""
    a = _matrix(a)
    s = np.asarray(single_task, dtype=float)
    return float(np.mean(np.diag(a) - s))


def forward_transfer_base(a, base) -> float:
    """FWT (GEM style) = mean over i >= 1 of (a[i-1][i] - b_i), b_i the base model's score on task i."""
    a = _matrix(a)
    b = np.asarray(base, dtype=float)
    t = a.shape[0]
    if t < 2:
        return float("nan")
    return float(np.mean([a[i - 1, i] - b[i] for i in range(1, t)]))


def forgetting(a) -> float:
    """Forgetting (Chaudhry et al. 2018; Mammoth) = mean over i < T-1 of (max over i <= j < T-1 of a[j][i])
    - a[T-1][i]: the best score task i had from the row it was learned in, not before (the harness also
    scores unseen tasks; a score from before the task was learned is transfer, not knowledge to forget)."""
    a = _matrix(a)
    t = a.shape[0]
    if t < 2:
        return float("nan")
    return float(np.mean([np.max(a[i : t - 1, i]) - a[-1, i] for i in range(t - 1)]))


def summary(a, base=None, single_task=None) -> dict[str, float]:
    """OP, BWT, forgetting, and the FWT variants whose references are given (named by variant)."""
    out = {"op": average_performance(a), "bwt": backward_transfer(a), "forgetting": forgetting(a)}
    if base is not None:
        out["fwt_base"] = forward_transfer_base(a, base)
    if single_task is not None:
        out["fwt_paper"] = forward_transfer_paper(a, single_task)
    return out
