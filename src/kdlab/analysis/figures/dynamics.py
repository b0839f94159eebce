"""Representations over training under ``figures/{dataset}/dynamics/``, from dynamics.csv:

cka_over_training         linear CKA with the teacher (its final weights) against epoch, one
                          panel per stage: a line per method x alpha (mean over seeds;
                          alphas as shades of the method's colour), the pure student's
                          curve as a band (mean ± std over seeds), the teacher-vs-teacher
                          noise floor as a band
effective_dim_over_training  components for 90% variance against epoch, per stage
accuracy_vs_cka_over_training  a path per run: (last stage's CKA, test accuracy from the
                          run's metrics.json) at each snapshot, first and last epoch marked
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.colors import to_rgb
from matplotlib.ticker import MaxNLocator

from .common import (FLOORS, PURE, PURE_COLOUR, TEACHER, TEACHER_COLOUR, Grid, alpha_text,
                     figure_legend, figure_title, no_data, save_figure, subplots)

TEACHER_FLOOR = FLOORS[1]   # ('floor_teacher_vs_teacher', label, colour)


def _shade(grid: Grid, method: str, alpha: float) -> tuple:
    """The method's colour, lighter for smaller alphas (the largest alpha is the full
    colour)."""
    base = np.array(to_rgb(grid.method_colour(method)))
    rank = grid.alphas.index(alpha) if alpha in grid.alphas else len(grid.alphas) - 1
    strength = 0.35 + 0.65 * (rank + 1) / max(1, len(grid.alphas))
    return tuple(1.0 - strength * (1.0 - base))


def _curve(rows) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(epochs, mean, std (0 for one seed), seeds) over the seeds of ``rows``."""
    by_epoch = rows.groupby("epoch")["value"]
    mean, std = by_epoch.mean(), by_epoch.std(ddof=1).fillna(0.0)
    return (mean.index.to_numpy(dtype=float), mean.to_numpy(), std.to_numpy(),
            int(rows["seed"].nunique()))


def _seeds(count: int) -> str:
    return f"{count} seed" + ("" if count == 1 else "s")


def _epoch_axis(ax, frame) -> None:
    epochs = frame["epoch"].to_numpy(dtype=float)
    if epochs.size and epochs.min() >= 1 and epochs.max() / epochs.min() >= 20:
        ax.set_xscale("log")   # snapshot epochs are often spaced logarithmically
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs, not 1.5
    ax.set_xlabel("epoch", fontsize=8)
    ax.grid(alpha=0.3)


def _over_training(grid: Grid, frame, metric: str, ylabel: str, floors: dict, out: Path,
                   name: str, title: str) -> Path:
    rows = frame[frame["metric"] == metric]
    stages = [stage for stage in grid.stages if stage in set(rows["stage"])] or [grid.last_stage]
    figure, axes = subplots(1, len(stages), width=4.2, height=3.2)
    for column, stage in enumerate(stages):
        ax = axes[0, column]
        of_stage = rows[rows["stage"] == stage]
        drawn = False
        for method in list(grid.methods):
            for alpha in grid.alphas:
                series = of_stage[(of_stage["method"] == method) & (of_stage["alpha"] == alpha)]
                if series.empty:
                    continue
                epochs, mean, _, seeds = _curve(series)
                ax.plot(epochs, mean, "-o", ms=3, lw=1.3, color=_shade(grid, method, alpha),
                        label=f"{method} α={alpha_text(alpha)} ({_seeds(seeds)})")
                drawn = True
        for who, colour, label in ((PURE, PURE_COLOUR, f"pure ({grid.student_model})"),
                                   (TEACHER, TEACHER_COLOUR, f"teacher ({grid.teacher_model})")):
            series = of_stage[of_stage["method"] == who]
            if series.empty:
                continue
            epochs, mean, std, seeds = _curve(series)
            ax.plot(epochs, mean, "--", lw=1.2, color=colour, label=f"{label} ({_seeds(seeds)})")
            ax.fill_between(epochs, mean - std, mean + std, color=colour, alpha=0.15, lw=0)
            drawn = True
        floor = floors.get(stage)
        if floor is not None:
            mean, std, count = floor
            ax.axhline(mean, color=TEACHER_FLOOR[2], lw=1.0, ls=":",
                       label=f"floor: {TEACHER_FLOOR[1]} (n={count})")
            ax.axhspan(mean - std, mean + std, color=TEACHER_FLOOR[2], alpha=0.15, lw=0)
        if not drawn:
            no_data(ax, "no snapshots")
        _epoch_axis(ax, of_stage)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_title(stage, fontsize=9)
    figure_legend(figure, axes, columns=4)
    figure_title(figure, grid, title)
    path = out / f"{name}.png"
    save_figure(figure, path)
    return path


def _accuracy_paths(grid: Grid, frame, accuracy: list, out: Path) -> Path:
    figure, axes = subplots(1, 1, width=5.6, height=4.4)
    ax = axes[0, 0]
    rows = frame[(frame["metric"] == "cka_linear") & (frame["stage"] == grid.last_stage)]
    accuracy_of = {(run, epoch): value for run, epoch, value in accuracy}
    labelled: set[str] = set()
    paths = 0
    for run, of_run in rows.groupby("run", sort=True):
        of_run = of_run.sort_values("epoch")
        points = [(cka, accuracy_of[(run, int(epoch))], int(epoch))
                  for cka, epoch in zip(of_run["value"], of_run["epoch"])
                  if (run, int(epoch)) in accuracy_of]
        if not points:
            continue
        method = of_run["method"].iloc[0]
        alpha = of_run["alpha"].iloc[0]
        colour = PURE_COLOUR if method == PURE else _shade(grid, method, alpha)
        label = f"pure ({grid.student_model})" if method == PURE else \
            f"{method} α={alpha_text(alpha)}"
        x, y, epochs = map(np.array, zip(*points))
        ax.plot(x, y, "-o", ms=3, lw=1.1, color=colour, alpha=0.9,
                label=None if label in labelled else label)
        labelled.add(label)
        for index in {0, len(epochs) - 1}:
            ax.annotate(f"e{epochs[index]}", (x[index], y[index]), fontsize=6,
                        xytext=(3, 3), textcoords="offset points", color="0.3")
        paths += 1
    if not paths:
        no_data(ax, "no snapshot with both a teacher and a recorded test accuracy")
    else:
        ax.legend(fontsize=7, loc="lower right")
    ax.set_xlabel(f"linear CKA with the teacher, {grid.last_stage} (the last stage)", fontsize=9)
    ax.set_ylabel("test accuracy at the snapshot's epoch (%)", fontsize=9)
    ax.grid(alpha=0.3)
    figure_title(figure, grid, f"accuracy against alignment over training ({paths} runs)")
    path = out / "accuracy_vs_cka_over_training.png"
    save_figure(figure, path)
    return path


def draw_dynamics(grid: Grid, frame, payload: dict, out: Path) -> list[Path]:
    """The three figures of representations over training. ``frame``: dynamics.csv rows of
    one data set; ``payload``: {'floors': [(student stage, mean, std, n)] of the
    teacher-vs-teacher linear CKA, 'accuracy': [(run, epoch, test_acc %)]}."""
    floors = {stage: (mean, std, count) for stage, mean, std, count in payload["floors"]
              if not math.isnan(mean)}
    return [
        _over_training(grid, frame, "cka_linear", "linear CKA with the teacher (final)",
                       floors, out, "cka_over_training",
                       "linear CKA with the teacher against epoch (mean over seeds; pure "
                       "student ± std; teacher-vs-teacher floor)"),
        _over_training(grid, frame, "effective_dim_90", "components for 90% variance", {}, out,
                       "effective_dim_over_training",
                       "effective dimensionality against epoch (mean over seeds)"),
        _accuracy_paths(grid, frame, payload["accuracy"], out)]


def floor_payload(grid: Grid, shown) -> list[tuple[str, float, float, int]]:
    """(student stage, mean, std, n) of the teacher-vs-teacher linear CKA floor at the
    teacher stage paired with each student stage, from the metrics frame ``shown``."""
    floors = []
    rows = shown[(shown["method"] == TEACHER_FLOOR[0]) & (shown["metric"] == "cka_linear")]
    for stage in grid.stages:
        teacher_stage = grid.teacher_stage(stage)
        values = rows.loc[rows["layer"] == teacher_stage, "value"].to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        if values.size:
            std = float(np.std(values, ddof=1)) if values.size > 1 else 0.0
            floors.append((stage, float(values.mean()), std, int(values.size)))
    return floors
