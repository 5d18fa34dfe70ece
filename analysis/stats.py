"""Statistics a reader can trust over a handful of runs: percentile bootstrap intervals (stratified by task
order when asked), differences of two methods paired on (order, seed), the interquartile mean, the
probability of improvement, and how many points one evaluation example is worth. numpy only.

Missing values: every function drops NaN before it counts (a run that did not measure a metric is not a
zero); a paired function drops the pair when either side is NaN. Nothing left gives NaN.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

Stat = Callable[..., float]


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    stat: Stat = np.mean,
    strata: Sequence[Hashable] | np.ndarray | None = None,
    reps: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(point, lo, hi): point = stat(x) over the values x, and the percentile bootstrap interval
    lo, hi = the (1 - level) / 2 and (1 + level) / 2 quantiles (numpy's linear rule) of stat(x*_r) over
    `reps` resamples x*_r, each n values drawn with replacement from x.

    With `strata` (one label per value, e.g. the task order of each run) the bootstrap is stratified:
    a resample draws n_s values with replacement from stratum s only, for every s, so each stratum keeps
    its size and no value crosses into another stratum. A stratum of one value is therefore held fixed
    (it adds no spread); when every stratum has one value the interval has zero width: there is nothing
    to resample, pass strata=None.

    NaN values are dropped (with their labels) first; none left gives (nan, nan, nan), one value v gives
    (v, v, v). `stat` is called as stat(samples, axis=1) on the (reps, n) resamples when it accepts an
    axis (np.mean, np.median), else once per resample. Deterministic given `seed`. For a statistic that
    lies between the smallest and largest value (mean, median, IQM) the percentile interval never reaches
    beyond that range, so with few values it is optimistic (n = 3: it is the range)."""
    if not 0 < level < 1:
        raise ValueError(f"level {level}: must be in (0, 1)")
    x = np.asarray(values, dtype=float).ravel()
    labels = None if strata is None else np.asarray(strata).ravel()
    if labels is not None and labels.shape != x.shape:
        raise ValueError(f"strata: {labels.shape[0]} labels for {x.shape[0]} values")
    keep = ~np.isnan(x)
    x = x[keep]
    if x.size == 0:
        return (np.nan, np.nan, np.nan)
    point = float(stat(x))
    if x.size == 1:
        return (point, point, point)
    rng = np.random.default_rng(seed)
    if labels is None:
        idx = rng.integers(0, x.size, size=(reps, x.size))
    else:
        labels = labels[keep]
        blocks = []
        for s in _unique(labels):
            members = np.flatnonzero(labels == s)
            blocks.append(members[rng.integers(0, members.size, size=(reps, members.size))])
        idx = np.concatenate(blocks, axis=1)
    stats = _apply(stat, x[idx])
    lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return (point, float(lo), float(hi))


def _unique(labels: np.ndarray) -> list:
    """The distinct labels in first-seen order (labels of mixed types need no ordering)."""
    return list(dict.fromkeys(labels.tolist()))


def _apply(stat: Stat, samples: np.ndarray) -> np.ndarray:
    try:
        out = np.asarray(stat(samples, axis=1), dtype=float)
        if out.shape == (samples.shape[0],):
            return out
    except TypeError:
        pass
    return np.array([stat(s) for s in samples], dtype=float)


def paired_differences(a: Mapping[Hashable, float], b: Mapping[Hashable, float]) -> tuple[list[Hashable], np.ndarray]:
    """(keys, d): d_k = a[k] - b[k] for every key k (e.g. an (order, seed) tuple) that both methods have
    with neither value NaN, keys in a's order. Unmatched keys are left out: a difference is only taken
    between runs that saw the same task order and seed."""
    keys = [k for k in a if k in b and not (np.isnan(a[k]) or np.isnan(b[k]))]
    return keys, np.array([float(a[k]) - float(b[k]) for k in keys], dtype=float)


def iqm(values: Sequence[float] | np.ndarray, fractional: bool = True) -> float:
    """The interquartile mean: the mean of the middle 50% of the values, NaN dropped.

    fractional=True (default): 2 * the integral from 0.25 to 0.75 of the empirical quantile function.
    With x_(1) <= ... <= x_(n) sorted, x_(i) owns the slice [(i-1)/n, i/n] and weighs
    w_i = 2 * |[(i-1)/n, i/n] ∩ [0.25, 0.75]|, so sum w_i = 1 and the values at the quartile boundaries
    count in part: n = 4 gives (x_(2) + x_(3)) / 2, n = 3 gives (x_(1) + 4 x_(2) + x_(3)) / 6, n = 1, 2
    the mean.

    fractional=False: rliable's rule (scipy.stats.trim_mean(x, 0.25)): drop g = floor(n / 4) values at
    each end and average the rest, so n < 4 gives the plain mean."""
    x = np.sort(np.asarray(values, dtype=float).ravel())
    x = x[~np.isnan(x)]
    n = x.size
    if n == 0:
        return np.nan
    if not fractional:
        g = n // 4
        return float(x[g : n - g].mean())
    edges = np.arange(n + 1) / n
    w = np.clip(np.minimum(edges[1:], 0.75) - np.maximum(edges[:-1], 0.25), 0.0, None)
    return float(np.dot(w, x) / w.sum())


def probability_of_improvement(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    paired: bool = False,
    tol: float = 0.0,
) -> float:
    """P(X > Y) + 0.5 P(X = Y), a tie being |x - y| <= tol.

    Unpaired (default): over all n_x * n_y pairs (x_i, y_j), the Mann-Whitney U statistic of x over y
    divided by n_x n_y (rliable's per-task probability of improvement). paired=True: x and y are matched
    (x_i and y_i share an order and seed) and the mean runs over the n matched pairs only. NaN dropped
    (paired: the pair); nothing left gives NaN. 0.5 means no tendency either way."""
    a, b = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    if paired:
        if a.shape != b.shape:
            raise ValueError(f"paired: {a.size} values against {b.size}")
        keep = ~(np.isnan(a) | np.isnan(b))
        d = a[keep] - b[keep]
    else:
        d = (a[~np.isnan(a)][:, None] - b[~np.isnan(b)][None, :]).ravel()
    if d.size == 0:
        return np.nan
    return float(np.mean(np.where(np.abs(d) <= tol, 0.5, (d > 0).astype(float))))


class Worth(NamedTuple):
    """Points (x100) that one example changes: a task's score (`task`) and the mean over tasks (`mean`)."""

    task: float
    mean: float


def example_worth(n_examples_per_task: int, n_tasks: int) -> Worth:
    """How far one example moves a score in points: 100 / n on a task of n examples, and
    100 / (n * n_tasks) on the mean over n_tasks such tasks (OP, or a dev objective averaged over tasks).
    E.g. 50 test examples per task and 4 tasks: 2.0 points per task, 0.5 points of the mean. A
    difference smaller than that is one example flipping, not a result."""
    if n_examples_per_task < 1 or n_tasks < 1:
        raise ValueError(f"example_worth({n_examples_per_task}, {n_tasks}): both must be at least 1")
    return Worth(100.0 / n_examples_per_task, 100.0 / (n_examples_per_task * n_tasks))


def separation(lo: float, hi: float, margin: float = 0.0, tol: float = 0.0) -> int:
    """Which side of [-margin, margin] an interval [lo, hi] lies on: +1 when lo > margin + tol, -1 when
    hi < -margin - tol, 0 when it overlaps (or is NaN). margin=0: does the interval exclude 0; margin =
    one example's worth (`example_worth`, as a fraction): is the difference separated beyond one example.
    `tol` absorbs float error in an end that is 0 by construction (a tie)."""
    if lo > margin + tol:
        return 1
    if hi < -margin - tol:
        return -1
    return 0


def pareto_mask(values: np.ndarray, senses: list[str]) -> np.ndarray:
    """Which rows of `values` (points x objectives) are Pareto-optimal: no other row is at least as good
    in every objective and better in one. `senses`: "max" or "min" per column. Rows with a NaN are never
    on the front (and never dominate)."""
    v = np.asarray(values, dtype=float)
    if v.ndim != 2 or v.shape[1] != len(senses):
        raise ValueError(f"pareto_mask: values of shape {v.shape} against {len(senses)} senses")
    signed = v * np.array([1.0 if s == "max" else -1.0 for s in senses])  # larger is better everywhere
    ok = ~np.isnan(signed).any(axis=1)
    front = np.zeros(len(v), dtype=bool)
    for i in np.flatnonzero(ok):
        others = signed[ok]
        dominated = ((others >= signed[i]).all(axis=1) & (others > signed[i]).any(axis=1)).any()
        front[i] = not dominated
    return front


def hypervolume_2d(points: np.ndarray, reference: tuple[float, float]) -> float:
    """The area dominated by `points` (n x 2, both to maximise) above `reference`: the hypervolume of a
    2-objective front (a minimised objective enters negated)."""
    p = np.asarray(points, dtype=float)
    p = p[(p[:, 0] > reference[0]) & (p[:, 1] > reference[1])] if len(p) else p
    if not len(p):
        return 0.0
    p = p[np.argsort(-p[:, 0])]
    area, best_y = 0.0, reference[1]
    for x, y in p:
        if y > best_y:
            area += (x - reference[0]) * (y - best_y)
            best_y = y
    return float(area)
