"""Per-method figures under ``figures/{dataset}/per_method/{method}/``, one column per
alpha: pca_variance, effective_dimensionality, cka_same_layer, cka_cross_layer,
principal_angles, ica_summary, fisher. Teacher and pure student are drawn beside the method.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..registry import MATCH_THRESHOLD
from .common import (PURE, PURE_COLOUR, TEACHER, TEACHER_COLOUR, Grid, Values, alpha_text,
                     floor_bands,
                     alpha_titles, figure_legend, figure_title, grouped_bars, heatmap,
                     missing_note, no_data, plt, save_figure, subplots)


@dataclass
class Method:
    """One method's figure group: what every figure of it needs."""

    grid: Grid
    values: Values
    method: str
    out: Path

    @property
    def student(self) -> str:
        return f"{self.method} ({self.grid.student_model})"

    @property
    def colour(self):
        return self.grid.method_colour(self.method)

    @property
    def seeds_found(self) -> list[int]:
        return [self.values.stats(self.method, alpha, "logits", "test_acc")[2]
                for alpha in self.grid.alphas]

    def reference_series(self, metric: str, with_teacher: bool = True) -> list:
        """Bar series of the teacher (optional) and the pure student for one metric."""
        grid, values = self.grid, self.values
        series = [(f"pure ({grid.student_model})", PURE_COLOUR,
                   [values.stats(PURE, None, layer, metric) for layer in grid.stages])]
        if with_teacher:
            series.insert(0, (f"teacher ({grid.teacher_model})", TEACHER_COLOUR,
                              [values.stats(TEACHER, None, grid.teacher_stage(layer), metric)
                               for layer in grid.stages]))
        return series

    def method_series(self, alpha: float, metric: str) -> tuple:
        return (self.student, self.colour,
                [self.values.stats(self.method, alpha, layer, metric)
                 for layer in self.grid.stages])


def seed_points(ax, values: Values, method: str, alpha, layer: str, metric: str,
                x: float) -> None:
    """One dot per seed at ``x``, with its bootstrap interval as an error bar where the
    metric has one (rows ``{metric}_ci_low`` / ``_ci_high``)."""
    points = values.seeds(method, alpha, layer, metric)
    low = values.seeds(method, alpha, layer, f"{metric}_ci_low")
    high = values.seeds(method, alpha, layer, f"{metric}_ci_high")
    for seed, value in points.items():
        if seed in low and seed in high:
            ax.errorbar([x], [value], yerr=[[value - low[seed]], [high[seed] - value]],
                        fmt="k.", ms=3, elinewidth=0.8, capsize=1.5)
        else:
            ax.plot([x], [value], "k.", ms=3)


def save(figure, path: Path) -> Path:
    save_figure(figure, path)
    return path


def draw_per_method(grid: Grid, values: Values, method: str, out: Path) -> list[Path]:
    """Every per-method figure of ``method``; returns the files written."""
    group = Method(grid, values, method, out)
    return [draw(group) for draw in (pca_variance, effective_dimensionality, cka_same_layer,
                                     cka_cross_layer, principal_angles_figure, ica_summary,
                                     fisher)]


def pca_variance(group: Method) -> Path:
    grid, values, method, out = group.grid, group.values, group.method, group.out
    student, colour = group.student, group.colour
    seeds_found = group.seeds_found
    figure, axes = subplots(len(grid.stages), len(grid.alphas))
    for row, layer in enumerate(grid.stages):
        for column, alpha in enumerate(grid.alphas):
            ax = axes[row, column]
            drawn = False
            for who, who_alpha, who_colour, style, label in (
                    (TEACHER, None, TEACHER_COLOUR, "-", f"teacher ({grid.teacher_model})"),
                    (PURE, None, PURE_COLOUR, "--", f"pure ({grid.student_model})"),
                    (method, alpha, colour, "-", student)):
                mean, std, count = values.curve(
                    who, who_alpha, grid.teacher_stage(layer) if who == TEACHER else layer,
                    "pca_cumvar_")
                if count == 0:
                    if who == method:
                        missing_note(ax, f"no {method} run")
                    continue
                components = np.arange(1, mean.size + 1)
                ax.plot(components, mean, style, color=who_colour, label=label, lw=1.4)
                ax.fill_between(components, mean - std, np.minimum(mean + std, 1.0),
                                color=who_colour, alpha=0.15, lw=0)
                drawn = True
            if not drawn:
                no_data(ax)
            ax.set_ylim(0, 1.02)
            ax.set_xlabel("components", fontsize=8)
            ax.set_ylabel(f"{layer}: cum. variance", fontsize=8)
            ax.grid(alpha=0.3)
    alpha_titles(axes[0], grid, seeds_found)
    figure_legend(figure, axes)
    figure_title(figure, grid, f"{method}: PCA cumulative explained variance "
                                "(mean ± std over seeds)")
    return save(figure, out / "pca_variance.png")


def bar_grid(group: Method, rows: list[tuple[str, str]], with_teacher: bool,
             decorate=None):
    """Grouped bars per layer, one row per (metric, axis label), one column per alpha:
    references and the method; ``decorate(ax, metric, alpha)`` adds to a panel."""
    figure, axes = subplots(len(rows), len(group.grid.alphas))
    for row, (metric, label) in enumerate(rows):
        for column, alpha in enumerate(group.grid.alphas):
            ax = axes[row, column]
            grouped_bars(ax, group.reference_series(metric, with_teacher)
                         + [group.method_series(alpha, metric)], group.grid.stages)
            ax.set_ylabel(label, fontsize=8)
            if decorate is not None:
                decorate(ax, metric, alpha)
    alpha_titles(axes[0], group.grid, group.seeds_found)
    figure_legend(figure, axes)
    return figure, axes


def effective_dimensionality(group: Method) -> Path:
    rows = [("effective_dim_90", "components for 90%"), ("effective_dim_95", "components for 95%"),
            ("participation_ratio", "participation ratio")]
    figure, _ = bar_grid(group, rows, with_teacher=True)
    figure_title(figure, group.grid, f"{group.method}: effective dimensionality "
                                     "(mean ± std over seeds)")
    return save(figure, group.out / "effective_dimensionality.png")


def cka_same_layer(group: Method) -> Path:
    def seeds_and_limits(ax, metric, alpha):
        for position, layer in enumerate(group.grid.stages):
            floor_bands(ax, group.grid, group.values, layer, metric,
                        span=(position - 0.45, position + 0.45))
            seed_points(ax, group.values, group.method, alpha, layer, metric, position + 0.2)
        ax.set_ylim(0, 1.05)

    rows = [("cka_linear", "linear CKA with teacher"), ("cka_rbf", "RBF CKA with teacher")]
    figure, _ = bar_grid(group, rows, with_teacher=False, decorate=seeds_and_limits)
    figure_title(figure, group.grid, f"{group.method}: CKA with the teacher at the same layer "
                                     "(bars: mean ± std over seeds; dots: seeds with 95% "
                                     "bootstrap intervals; bands: noise floors)")
    return save(figure, group.out / "cka_same_layer.png")


def cka_cross_layer(group: Method) -> Path:
    grid, values, method, out = group.grid, group.values, group.method, group.out
    panels = [(method, alpha, f"α = {alpha_text(alpha)}") for alpha in grid.alphas]
    panels.append((PURE, None, f"pure ({grid.student_model})"))
    figure, axes = subplots(1, len(panels), width=3.0, height=2.9)
    image = None
    for column, (who, alpha, title) in enumerate(panels):
        matrix = np.array([[values.stats(who, alpha, student_layer,
                                         f"cka_linear_vs_teacher_{teacher_layer}")[0]
                            for student_layer in grid.student_stages]
                           for teacher_layer in grid.teacher_stages])
        image = heatmap(axes[0, column], matrix, grid.teacher_stages, grid.student_stages,
                        vmin=0.0, vmax=1.0)
        count = values.stats(who, alpha, grid.last_stage, "cka_linear")[2]
        axes[0, column].set_title(f"{title} ({count}/{len(grid.seeds)})", fontsize=9)
        axes[0, column].set_xlabel("student layer", fontsize=8)
        if column:
            axes[0, column].set_yticklabels([])
    axes[0, 0].set_ylabel("teacher layer", fontsize=8)
    figure.colorbar(image, ax=axes[0, :].tolist(), shrink=0.8, label="linear CKA")
    figure_title(figure, grid, f"{method}: linear CKA across layers")
    return save(figure, out / "cka_cross_layer.png")


def principal_angles_figure(group: Method) -> Path:
    grid, values, method, out = group.grid, group.values, group.method, group.out
    seeds_found = group.seeds_found
    figure, axes = subplots(1, len(grid.alphas))
    layer_colours = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, len(grid.stages)))
    for column, alpha in enumerate(grid.alphas):
        ax = axes[0, column]
        drawn = False
        for layer, layer_colour in zip(grid.stages, layer_colours):
            for who, who_alpha, style, suffix in ((method, alpha, "-o", ""),
                                                  (PURE, None, "--", " pure")):
                mean, std, count = values.curve(who, who_alpha, layer, "principal_angle_")
                if count == 0:
                    if who == method and layer == grid.stages[0]:
                        missing_note(ax, f"no {method} run")
                    continue
                index = np.arange(1, mean.size + 1)
                ax.plot(index, mean, style, color=layer_colour, ms=3, lw=1.2,
                        label=f"{layer}{suffix}")
                if who == method:
                    ax.fill_between(index, mean - std, mean + std, color=layer_colour,
                                    alpha=0.15, lw=0)
                drawn = True
        if not drawn:
            no_data(ax)
        ax.set_ylim(0, 90)
        ax.set_xlabel("angle index (top-k PCA subspaces)", fontsize=8)
        ax.set_ylabel("principal angle (°)", fontsize=8)
        ax.grid(alpha=0.3)
    alpha_titles(axes[0], grid, seeds_found)
    figure_legend(figure, axes, columns=6)
    figure_title(figure, grid, f"{method}: principal angles to the teacher (solid: "
                                f"{method}, dashed: pure student)")
    return save(figure, out / "principal_angles.png")


def ica_summary(group: Method) -> Path:
    grid, values, method = group.grid, group.values, group.method

    def unit_range(ax, metric, alpha):
        if metric == "ica_matched_r_mean":
            ax.set_ylim(0, 1.05)

    rows = [("ica_matched_r_mean", "mean matched |r|"),
            (f"ica_matched_above_{MATCH_THRESHOLD}", f"components with |r| > {MATCH_THRESHOLD}")]
    figure, _ = bar_grid(group, rows, with_teacher=False, decorate=unit_range)
    failures = sum(1 for alpha in grid.alphas for layer in grid.stages
                   for converged in values.seeds(method, alpha, layer, "ica_converged").values()
                   if converged == 0)
    failures += sum(1 for who, stages in ((TEACHER, grid.teacher_stages), (PURE, grid.stages))
                    for layer in stages
                    for converged in values.seeds(who, None, layer, "ica_converged").values()
                    if converged == 0)
    warning = f" — {failures} FastICA fit(s) did not converge" if failures else ""
    figure_title(figure, grid, f"{method}: ICA components matched to the teacher{warning}")
    return save(figure, group.out / "ica_summary.png")


def fisher(group: Method) -> Path:
    figure, _ = bar_grid(group, [("fisher", "tr(S_B) / tr(S_W)")], with_teacher=True)
    figure_title(figure, group.grid, f"{group.method}: Fisher criterion (class separability)")
    return save(figure, group.out / "fisher.png")
