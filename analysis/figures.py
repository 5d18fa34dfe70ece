"""Figures of a study (matplotlib): one function per figure, each returning a Figure; `save` writes PNG
and PDF. Nothing here computes a metric: tables.py does, these draw.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import matplotlib.patches
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.load import Study
from analysis.tables import matrix, method_order, trial_metrics

TRIGGER_COLOURS = {
    "normal": "tab:red",
    "early": "tab:orange",
    "forced": "tab:purple",
    "fixed": "tab:gray",
    "task_end": "black",
}


def save(fig: Figure, out: str | Path, name: str) -> list[Path]:
    """Write `name`.png (150 dpi) and `name`.pdf under `out`; returns the paths. The same figure gives the
    same bytes (no creation date in the PDF), so a regenerated report changes only the figures that changed."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    for p in paths:
        fig.savefig(p, dpi=150, bbox_inches="tight", metadata={"CreationDate": None} if p.suffix == ".pdf" else None)
    plt.close(fig)
    return paths


def trajectory(study: Study, path: str, task: str | None = None) -> Figure:
    """The controller's trajectory over the inner steps of one run (every task, or one): top, the
    forgetting signal (memory-batch loss) and the threshold delta; middle, the learning signal Lambda at
    each merge; bottom, the merge interval S and burst length M. Merges are vertical lines coloured by
    trigger; shaded spans are rehearsal bursts; dotted lines separate tasks. x is the run's global
    optimizer step (inner and burst steps count alike)."""
    steps = study.steps[(study.steps.path == path) & (study.steps.phase == "inner")]
    bursts = study.steps[(study.steps.path == path) & (study.steps.phase == "burst")]
    merges = study.merges[study.merges.path == path] if len(study.merges) else pd.DataFrame()
    if task is not None:
        steps, bursts = steps[steps.task == task], bursts[bursts.task == task]
        merges = merges[merges.task == task] if len(merges) else merges
    fig, axes = plt.subplots(3, 1, figsize=(10, 7), sharex=True, height_ratios=[2, 1, 1])
    if steps.empty:
        axes[0].text(0.5, 0.5, "no inner steps recorded", ha="center", transform=axes[0].transAxes)
        return fig
    x = steps.global_step
    ax = axes[0]
    ax.plot(x, steps.train_loss, lw=0.8, alpha=0.5, color="tab:blue", label="train loss (new task)")
    if steps.memory_loss.notna().any():
        ax.plot(x, steps.memory_loss, lw=1.2, color="tab:green", label="forgetting signal (memory loss)")
    if steps.threshold.notna().any():
        ax.step(x, steps.threshold, where="post", lw=1.2, color="tab:red", ls="--", label="threshold δ")
    ax.set_ylabel("loss")
    ax = axes[1]
    if len(merges):
        ax.plot(merges.global_step, merges.lam, "o-", ms=3, color="tab:brown", label="learning signal Λ")
        ax.set_yscale("log" if (merges.lam > 0).all() and merges.lam.max() > 10 * merges.lam.min() else "linear")
    ax.set_ylabel("Λ")
    ax = axes[2]
    ax.step(x, steps.interval, where="post", color="tab:blue", label="interval S")
    ax.step(x, steps.burst_len, where="post", color="tab:orange", label="burst M")
    ax.set_ylabel("steps")
    ax.set_xlabel("global optimizer step")
    starts = steps.groupby("task_index").global_step.min()
    # consecutive burst steps form one span per merge
    spans = bursts.global_step.groupby((bursts.global_step.diff() != 1).cumsum()).agg(["min", "max"])
    mark_events(axes, steps, starts, spans, merges)
    run = study.runs.set_index("path").loc[path]
    fig.suptitle(f"{run.method}, order {run.order}, seed {run.seed}" + (f", task {task}" if task else ""))
    fig.tight_layout()
    return fig


def mark_events(axes, steps: pd.DataFrame, starts: pd.Series, spans: pd.DataFrame, merges: pd.DataFrame) -> None:
    """On every axis: task boundaries (dotted), rehearsal bursts (shaded), merges (dashed, by trigger);
    the task names on top and the legends."""
    for axis in axes:
        for gs in starts.iloc[1:]:
            axis.axvline(gs - 0.5, color="gray", ls=":", lw=1)
        for lo, hi in spans.itertuples(index=False):
            axis.axvspan(lo - 0.5, hi + 0.5, color="tab:orange", alpha=0.15, lw=0)
        for trig, g in merges.groupby("trigger") if len(merges) else ():
            for gs in g.global_step:
                axis.axvline(gs, color=TRIGGER_COLOURS.get(trig, "black"), lw=1, ls="--", alpha=0.8)
    for task_index, gs in starts.items():
        name = steps[steps.task_index == task_index].task.iloc[0]
        axes[0].annotate(name, (gs, 1.0), xycoords=("data", "axes fraction"), fontsize=8, va="bottom")
    handles = [
        plt.Line2D([], [], color=c, lw=1, ls="--", label=f"merge ({t})")
        for t, c in TRIGGER_COLOURS.items()
        if len(merges) and t in set(merges.trigger)
    ]
    if len(spans):
        handles.append(matplotlib.patches.Patch(color="tab:orange", alpha=0.15, label="rehearsal burst"))
    for axis in axes:
        h, _ = axis.get_legend_handles_labels()
        if h:
            axis.legend(handles=h + (handles if axis is axes[0] else []), fontsize=7, loc="upper right")


def accuracy_heatmaps(study: Study, paths: list[str] | None = None, split: str = "test") -> Figure:
    """The accuracy matrix of each run (rows: after which task; columns: evaluated task), in points."""
    paths = paths or list(study.runs[study.runs.status == "success"].path)
    n = len(paths)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.8 * cols, 3.4 * rows), squeeze=False, layout="constrained")
    runs = study.runs.set_index("path")
    for k, (ax, path) in enumerate(zip(axes.flat, paths, strict=False)):
        a, base = matrix(study, path, split)
        tasks = list(runs.loc[path, "tasks"])
        labels = tasks[: a.shape[0]] if a.shape[0] > 1 else ["all (joint)"]
        if base is not None:
            a, labels = np.vstack([base, a]), ["base", *labels]
        im = ax.imshow(100 * a, vmin=0, vmax=100, cmap="viridis", aspect="auto")
        for (i, j), v in np.ndenumerate(100 * a):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7, color="white" if v < 60 else "black")
        ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        if k % cols == 0:
            ax.set_ylabel("trained through", fontsize=8)
        run = runs.loc[path]
        ax.set_title(
            f"{run.method} o{run.order} s{run.seed}" + (f" ({run.trial})" if isinstance(run.trial, str) else ""),
            fontsize=9,
        )
    for ax in axes.flat[n:]:
        ax.axis("off")
    fig.colorbar(im, ax=axes, shrink=0.8, label=f"{split} accuracy (%)")
    fig.get_layout_engine().set(w_pad=0.05, h_pad=0.05)
    return fig


def pareto_fronts(study: Study) -> Figure:
    """A multi-objective sweep: every pair of objectives, completed trials as dots and the Pareto front
    (trials.parquet's `pareto`) ringed; last panel, the hypervolume of the front over trials."""
    from itertools import combinations

    from analysis.tables import hypervolume_history, objective_names

    t = study.trials
    names = objective_names(study)
    pairs = list(combinations(names, 2))
    fig, axes = plt.subplots(1, len(pairs) + 1, figsize=(4 * (len(pairs) + 1), 3.6), squeeze=False)
    done = t[t.status == "completed"]
    for ax, (a, b) in zip(axes[0], pairs, strict=False):
        ax.scatter(done[f"objective/{a}"], done[f"objective/{b}"], s=14, color="tab:blue", label="completed")
        front = done[done.pareto]
        ring = {"s": 60, "facecolors": "none", "edgecolors": "tab:red", "label": "Pareto front"}
        ax.scatter(front[f"objective/{a}"], front[f"objective/{b}"], **ring)
        ax.set_xlabel(a)
        ax.set_ylabel(b)
    axes[0, 0].legend(fontsize=7)
    hv = hypervolume_history(study)
    ax = axes[0, -1]
    ax.plot(hv.trials, hv.hypervolume, "o-", ms=3)
    ax.set_xlabel("completed trials")
    ax.set_ylabel(f"hypervolume ({names[0]} x {names[1]})" if len(names) > 1 else "hypervolume")
    fig.suptitle("Multi-objective search: fronts in 2-D projections", fontsize=10)
    fig.tight_layout()
    return fig


def interval_trajectories(study: Study) -> Figure:
    """The interval S (top) and the learning signal Lambda (bottom) at each merge, against the step within
    the task: one column per merging method, one line per (run, task) from the second task on."""
    runs = study.runs[study.runs.status == "success"]
    merges = study.merges[study.merges.path.isin(runs.path)] if len(study.merges) else pd.DataFrame()
    methods = [
        m
        for m in method_order(runs.method.unique())
        if len(merges) and (merges.path.isin(runs.path[runs.method == m])).any()
    ]
    fig, axes = plt.subplots(
        2, max(1, len(methods)), figsize=(3.2 * max(1, len(methods)), 5), sharex=True, squeeze=False
    )
    if not methods:
        axes[0, 0].text(0.5, 0.5, "no merges recorded", ha="center", transform=axes[0, 0].transAxes)
        return fig
    for col, method in enumerate(methods):
        mine = merges[merges.path.isin(runs.path[runs.method == method])]
        for (_, index), task in mine.groupby(["path", "task_index"]):
            colour = plt.cm.viridis(index / max(1, mine.task_index.max()))
            axes[0, col].step(task.step, task.interval, where="post", lw=0.8, alpha=0.6, color=colour)
            axes[1, col].plot(task.step, task.lam, "o-", ms=2, lw=0.6, alpha=0.6, color=colour)
        axes[0, col].set_title(method, fontsize=9)
        axes[1, col].set_xlabel("step within the task")
        if (mine.lam > 0).all():
            axes[1, col].set_yscale("log")
    axes[0, 0].set_ylabel("interval S at the merge")
    axes[1, 0].set_ylabel("learning signal Λ")
    fig.suptitle("The merge controller at work (colour: task position in the order)", fontsize=10)
    fig.tight_layout()
    return fig


def forgetting_curves(study: Study, split: str = "test") -> Figure:
    """Accuracy on the first task of the order after each task of the sequence, one line per method
    (mean over the study's orders and seeds, band = min..max)."""
    curves: dict[str, list[np.ndarray]] = {}
    for run in study.runs[study.runs.status == "success"].itertuples():
        a, base = matrix(study, run.path, split)
        if a.shape[0] < 2:  # joint training has no sequence
            continue
        curve = np.concatenate([[np.nan if base is None else base[0]], a[:, 0]])  # index = tasks trained
        curves.setdefault(run.method, []).append(curve)
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in method_order(curves):
        stack = np.vstack(curves[method])
        x = np.arange(stack.shape[1])
        with warnings.catch_warnings():  # a column of NaN (no base scores) is left blank
            warnings.simplefilter("ignore", RuntimeWarning)
            mean, low, high = (100 * f(stack, axis=0) for f in (np.nanmean, np.nanmin, np.nanmax))
        (line,) = ax.plot(x, mean, "o-", ms=3, label=f"{method} ({len(stack)})")
        if len(stack) > 1:
            ax.fill_between(x, low, high, alpha=0.15, color=line.get_color())
    ax.set_xlabel("tasks trained (0 = base model)")
    ax.set_ylabel(f"first task {split} accuracy (%)")
    ax.set_title("Forgetting of the first task")
    ax.legend(fontsize=7)
    return fig


def sensitivity_curves(sens: pd.DataFrame, noise: float | None = None) -> Figure:
    """One panel per searched knob: mean objective (dev) and test OP against the knob's bin, with the
    across-order spread of test OP as error bars; `noise` (a fraction: one dev example's worth of the
    objective, `analysis.tables.dev_example_worth`) draws a band of +-noise around the mean objective, so a
    knob whose curve stays inside it moved nothing one example could not."""
    knobs = list(dict.fromkeys(sens.knob))
    cols = min(len(knobs), 3) or 1
    rows = math.ceil(len(knobs) / cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, knob in zip(axes.flat, knobs, strict=False):
        g = sens[sens.knob == knob]
        numeric = all(isinstance(v, int | float | np.number) and not isinstance(v, bool) for v in g.center)
        x = g.center.astype(float) if numeric else np.arange(len(g))
        ax.plot(x, 100 * g.objective, "o-", label="objective (dev)")
        if noise:
            mid = 100 * sens.objective.mean()
            band = {"color": "tab:blue", "alpha": 0.12, "label": "± one dev example"}
            ax.axhspan(mid - 100 * noise, mid + 100 * noise, **band)
        ax.errorbar(
            x,
            100 * g.op,
            yerr=100 * g.order_spread.fillna(0),
            fmt="s--",
            capsize=3,
            label="test OP ± order spread",
        )
        if not numeric:
            ax.set_xticks(x, [str(v) for v in g.center])
        ax.set_title(knob, fontsize=9)
        ax.set_ylabel("points")
    for ax in axes.flat[len(knobs) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def optimization_history(study: Study) -> Figure:
    """The sweep's objective per trial in start order (early-stopped trials hollow) and the best so far."""
    t = trial_metrics(study).copy()
    t["_n"] = [int(s.split("_")[-1]) if s.split("_")[-1].isdigit() else i for i, s in enumerate(t.trial_id)]
    t = t.sort_values("_n").reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    done = t.status == "completed"
    ax.plot(t.index[done], 100 * t.objective[done], "o", label="completed")
    ax.plot(t.index[~done], 100 * t.objective[~done], "o", mfc="none", label="stopped early / error")
    ax.step(t.index, 100 * t.objective.where(done).cummax(), where="post", color="tab:red", label="best so far")
    ax.set_xlabel("trial (start order)")
    ax.set_ylabel("objective (dev, points)")
    ax.set_title("Optimisation history")
    ax.legend(fontsize=7)
    return fig


def importance_bars(imp: pd.DataFrame) -> Figure:
    """Horizontal bars of the parameter importances."""
    fig, ax = plt.subplots(figsize=(6, 0.4 * max(len(imp), 2) + 1))
    imp = imp.sort_values("importance")
    ax.barh(imp.knob, imp.importance)
    ax.set_xlabel(f"importance ({imp.evaluator.iloc[0] if len(imp) else ''})")
    return fig
