"""Alpha sweeps under ``figures/{dataset}/sweeps/``: sweep_{metric} (the metric against
alpha, one line per method, +-1 std over seeds shaded, teacher / pure-student references),
heatmap_{metric} (method x alpha) and accuracy_vs_cka_{last stage} (one point per run).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..registry import sweep_metrics
from .common import (PURE, floor_bands, PURE_COLOUR, TEACHER, TEACHER_COLOUR, Grid, Values, alpha_text,
                     figure_legend, figure_title, heatmap, no_data, save_figure, subplots)


def sweep_axis(ax, grid: Grid, values: Values, layer: str, metric: str, pairwise: bool,
                ylabel: str) -> None:
    alphas = np.array(grid.alphas, dtype=float)
    expected = len(grid.seeds) * len(grid.alphas)
    any_drawn = False
    for method in grid.methods:
        stats = [values.stats(method, alpha, layer, metric) for alpha in grid.alphas]
        means = np.array([s[0] for s in stats])
        stds = np.array([s[1] for s in stats])
        found = sum(s[2] for s in stats)
        colour = grid.method_colour(method)
        ax.plot(alphas, means, "-o", color=colour, ms=4, lw=1.4,
                label=f"{method} ({found}/{expected})")
        ax.fill_between(alphas, means - stds, means + stds, color=colour, alpha=0.15, lw=0)
        any_drawn |= bool(np.isfinite(means).any())
    pure_label = "pure vs teacher (floor)" if pairwise else f"pure ({grid.student_model})"
    references = [(PURE, PURE_COLOUR, "--", pure_label)]
    if pairwise:
        any_drawn |= floor_bands(ax, grid, values, layer, metric)
    else:
        references.insert(0, (TEACHER, TEACHER_COLOUR, "-", f"teacher ({grid.teacher_model})"))
    for who, colour, style, label in references:
        mean, std, count = values.stats(who, None, layer, metric)
        if count:
            ax.axhline(mean, color=colour, ls=style, lw=1.2,
                       label=f"{label} ({count}/{len(grid.seeds)})")
            if std > 0:
                ax.axhspan(mean - std, mean + std, color=colour, alpha=0.08, lw=0)
            any_drawn = True
    if not any_drawn:
        no_data(ax)
    ax.set_xticks(alphas, [alpha_text(a) for a in grid.alphas])
    ax.set_xlabel("α (distillation weight)", fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.grid(alpha=0.3)


def draw_sweep(grid: Grid, values: Values, out: Path, metric: str) -> list[Path]:
    """sweep_{metric}.png and heatmap_{metric}.png."""
    written = []
    for name, label, pairwise, layers, digits in sweep_metrics(grid.stages):
        if name != metric:
            continue
        figure, axes = subplots(1, len(layers), width=4.2, height=3.2)
        for column, layer in enumerate(layers):
            sweep_axis(axes[0, column], grid, values, layer, metric, pairwise, label)
            axes[0, column].set_title(layer, fontsize=9)
        figure_legend(figure, axes, columns=5)
        figure_title(figure, grid, f"{label} against α (mean ± std over seeds; runs found "
                                    "of expected)")
        written.append(out / f"sweep_{metric}.png")
        save_figure(figure, written[-1])

        figure, axes = subplots(1, len(layers), width=0.7 * len(grid.alphas) + 2.2,
                                 height=0.45 * len(grid.methods) + 1.6)
        image = None
        for column, layer in enumerate(layers):
            matrix = np.array([[values.stats(method, alpha, layer, metric)[0]
                                for alpha in grid.alphas] for method in grid.methods])
            image = heatmap(axes[0, column], matrix, grid.methods,
                             [alpha_text(a) for a in grid.alphas],
                            digits=digits)
            axes[0, column].set_title(layer, fontsize=9)
            axes[0, column].set_xlabel("α", fontsize=8)
            if image is not None:
                figure.colorbar(image, ax=axes[0, column], shrink=0.8)
        figure_title(figure, grid, f"{label}: method × α (mean over seeds)")
        written.append(out / f"heatmap_{metric}.png")
        save_figure(figure, written[-1])
    return written


def draw_accuracy_vs_alignment(grid: Grid, values: Values, out: Path) -> list[Path]:
    written = []
    figure, axes = subplots(1, 1, width=5.2, height=4.2)
    ax = axes[0, 0]
    xs, ys = [], []
    for method in list(grid.methods) + [PURE]:
        alphas = [None] if method == PURE else list(grid.alphas)
        points = []
        for alpha in alphas:
            cka = values.seeds(method, alpha, grid.last_stage, "cka_linear")
            accuracy = values.seeds(method, alpha, "logits", "test_acc")
            points += [(cka[seed], accuracy[seed]) for seed in sorted(set(cka) & set(accuracy))]
        if points:
            x, y = np.array(points).T
            ax.scatter(x, y, s=22, color=grid.method_colour(method), alpha=0.85,
                       marker="s" if method == PURE else "o",
                       label=f"{method} ({len(points)})")
            if method != PURE:
                xs += list(x)
                ys += list(y)
    finite = np.isfinite(xs) & np.isfinite(ys) if xs else np.array([], dtype=bool)
    if finite.sum() >= 3 and np.ptp(np.array(xs)[finite]) > 0 and np.ptp(np.array(ys)[finite]) > 0:
        from scipy.stats import pearsonr, spearmanr

        x, y = np.array(xs)[finite], np.array(ys)[finite]
        text = (f"KD runs: Pearson r = {pearsonr(x, y).statistic:.2f}, "
                f"Spearman ρ = {spearmanr(x, y).statistic:.2f} (n = {x.size})")
    else:
        text = f"correlation n/a (n = {int(finite.sum())} KD runs)"
    ax.text(0.02, 0.98, text, transform=ax.transAxes, va="top", fontsize=8,
            bbox={"facecolor": "white", "alpha": 0.8, "lw": 0})
    if not xs and not ax.collections:
        no_data(ax)
    ax.set_xlabel(f"linear CKA with teacher, {grid.last_stage} (the last stage)", fontsize=9)
    ax.set_ylabel("test accuracy (%)", fontsize=9)
    ax.grid(alpha=0.3)
    if ax.collections:
        ax.legend(fontsize=7, loc="lower right")
    figure_title(figure, grid, "accuracy against alignment (one point per run)")
    written.append(out / f"accuracy_vs_cka_{grid.last_stage}.png")
    save_figure(figure, written[-1])
    return written

