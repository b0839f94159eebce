"""Figures of the analysis (matplotlib, Agg), per data set under ``figures/{dataset}/``.

``per_method/{method}/``  per-model and teacher-student metrics, one column per alpha:
                          pca_variance, effective_dimensionality, cka_same_layer,
                          cka_cross_layer, principal_angles, ica_summary, fisher
``sweeps/``               sweep_{metric}: metric against alpha, one line per method, +-1 std
                          over seeds shaded, teacher / pure-student reference lines;
                          heatmap_{metric}: method x alpha; accuracy_vs_cka_layer3
``summary/``              pca_scatter_layer3 (10-class data), umap_teacher_layer3 (with
                          umap-learn), accuracy_table

Gaps never crash a figure and stay visible: a missing mean is a missing marker (lines
break), an 'n/a' cell or bar label, or a 'no runs' panel; legends and titles give the
number of runs found against the number expected.

Figures are drawn in groups (one per data set x method, one for the sweeps, one for the
summary); a group is redrawn only when the data it shows changed (digest in
``cache/figures.json``), so a re-run after one new run redraws only what it touches.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from dataclasses import dataclass, asdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .. import layout  # noqa: E402
from ..runstate import atomic_write_bytes, atomic_write_json, read_json, StateFileError  # noqa: E402
from .store import LAYERS  # noqa: E402

# Bump when a figure's drawing changes: every group is redrawn.
FIGURE_VERSION = 2
DPI = 110
TEACHER = "teacher"
PURE = "pure"
TEACHER_COLOUR = "black"
PURE_COLOUR = "0.45"
MISSING_COLOUR = "0.88"

# (metric, axis label, True when it compares with the teacher, i.e. has no teacher line)
SWEEP_METRICS = [
    ("cka_linear", "linear CKA with teacher", True),
    ("cka_rbf", "RBF CKA with teacher", True),
    ("cka_rbf_minus_linear", "RBF CKA − linear CKA", True),
    ("effective_dim_90", "components for 90% variance", False),
    ("participation_ratio", "participation ratio", False),
    ("fisher", "Fisher criterion tr(S_B)/tr(S_W)", False),
    ("ica_matched_r_mean", "mean matched ICA |r|", True),
    ("principal_angle_mean", "mean principal angle (°)", True),
    ("rsa_spearman", "RSA Spearman ρ with teacher", True),
    ("twonn_dim", "TwoNN intrinsic dimension", False),
    ("knn_acc", "5-NN probe accuracy (%)", False),
]


@dataclass(frozen=True)
class Grid:
    """The part of a study a figure group needs (picklable for worker processes)."""

    study: str
    dataset: str
    methods: tuple[str, ...]
    alphas: tuple[float, ...]
    seeds: tuple[int, ...]
    teacher_model: str
    student_model: str

    def method_colour(self, method: str):
        if method == TEACHER:
            return TEACHER_COLOUR
        if method == PURE:
            return PURE_COLOUR
        return plt.get_cmap("tab10")(self.methods.index(method) % 10)


def alpha_text(alpha: float | None) -> str:
    return "—" if alpha is None else layout.format_alpha(alpha)


class Values:
    """Fast lookup of metric values of one data set: (method, alpha, layer, metric) ->
    {seed: value}. ``frame`` has the columns of :data:`kdlab.analysis.analyze.COLUMNS`."""

    def __init__(self, frame) -> None:
        self.table: dict[tuple, dict[int, float]] = {}
        for method, alpha, seed, layer, metric, value in frame[
                ["method", "alpha", "seed", "layer", "metric", "value"]].itertuples(index=False):
            key = (method, None if math.isnan(alpha) else layout.format_alpha(alpha), layer, metric)
            self.table.setdefault(key, {})[int(seed)] = float(value)

    def seeds(self, method: str, alpha: float | None, layer: str, metric: str) -> dict[int, float]:
        key = (method, None if alpha is None else layout.format_alpha(alpha), layer, metric)
        return self.table.get(key, {})

    def array(self, method, alpha, layer, metric) -> np.ndarray:
        values = self.seeds(method, alpha, layer, metric)
        return np.array([values[seed] for seed in sorted(values)], dtype=float)

    def stats(self, method, alpha, layer, metric) -> tuple[float, float, int]:
        """(mean, std (ddof=1; 0 for one seed), count) over the finite seed values."""
        values = self.array(method, alpha, layer, metric)
        values = values[np.isfinite(values)]
        if values.size == 0:
            return math.nan, math.nan, 0
        std = float(np.std(values, ddof=1)) if values.size > 1 else 0.0
        return float(np.mean(values)), std, int(values.size)

    def curve(self, method, alpha, layer, prefix: str) -> tuple[np.ndarray, np.ndarray, int]:
        """Mean and std [k] over seeds of metrics ``{prefix}01..`` (e.g. the cumulative
        PCA variance), and the number of seeds."""
        columns = []
        for index in range(1, 1000):
            values = self.seeds(method, alpha, layer, f"{prefix}{index:02d}")
            if not values:
                break
            columns.append(values)
        if not columns:
            return np.array([]), np.array([]), 0
        seeds = sorted(set.intersection(*(set(c) for c in columns)))
        if not seeds:
            return np.array([]), np.array([]), 0
        matrix = np.array([[column[seed] for column in columns] for seed in seeds])
        std = matrix.std(axis=0, ddof=1) if len(seeds) > 1 else np.zeros(matrix.shape[1])
        return matrix.mean(axis=0), std, len(seeds)


# ---- small drawing helpers ---------------------------------------------------------------

def save_figure(figure, path: Path) -> None:
    """Render ``figure`` to PNG in memory and write it atomically; close it."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())


def _subplots(rows: int, columns: int, width: float = 3.4, height: float = 2.8, **kwargs):
    figure, axes = plt.subplots(rows, columns, figsize=(max(6.0, width * columns),
                                                        height * rows + 0.6),
                                squeeze=False, layout="constrained", **kwargs)
    return figure, axes


def _figure_legend(figure, axes, columns: int = 4) -> None:
    """One legend for the whole figure, below the panels, with every distinct entry."""
    seen: dict[str, object] = {}
    for ax in np.ravel(axes):
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    if seen:
        fits = max(1, int(figure.get_figwidth() // 1.8))  # entries side by side that fit
        figure.legend(list(seen.values()), list(seen), loc="outside lower center",
                      ncols=min(columns, len(seen), fits), fontsize=8, frameon=False)


def _missing_note(ax, text: str) -> None:
    """Say inside a panel that one series has no data (the others are still drawn)."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=8,
            color="#a00", bbox={"facecolor": "white", "alpha": 0.8, "lw": 0})


def _no_data(ax, text: str = "no runs") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes,
            color="0.4", fontsize=10)
    ax.set_facecolor("0.96")


def _grouped_bars(ax, series, layers=LAYERS) -> None:
    """Bars per layer for several series [(label, colour, [(mean, std, count)] per layer)];
    a missing value is labelled 'n/a' where its bar would be."""
    positions = np.arange(len(layers))
    width = 0.8 / max(1, len(series))
    top = [0.0]
    for index, (label, colour, stats) in enumerate(series):
        offsets = positions - 0.4 + width * (index + 0.5)
        means = np.array([s[0] for s in stats], dtype=float)
        stds = np.array([s[1] for s in stats], dtype=float)
        present = np.isfinite(means)
        ax.bar(offsets[present], means[present], width, yerr=stds[present], color=colour,
               label=label, capsize=2, edgecolor="white", linewidth=0.5)
        if present.any():
            top.append(float(np.nanmax(means[present] + np.nan_to_num(stds[present]))))
        for offset, ok in zip(offsets, present):
            if not ok:
                ax.text(offset, 0, "n/a", ha="center", va="bottom", fontsize=7, rotation=90,
                        color="0.35")
    ax.set_xticks(positions, list(layers))
    ax.set_ylim(0, max(top) * 1.15 if max(top) > 0 else 1.0)


def _heatmap(ax, matrix: np.ndarray, row_labels, column_labels, vmin=None, vmax=None,
             cmap="viridis", digits: int = 2):
    """Annotated heatmap; NaN cells drawn light grey and labelled 'n/a'."""
    if matrix.size == 0:
        _no_data(ax, "nothing to show")
        return None
    masked = np.ma.masked_invalid(matrix)
    colour_map = plt.get_cmap(cmap).with_extremes(bad=MISSING_COLOUR)
    finite = matrix[np.isfinite(matrix)]
    if vmin is None:
        vmin = float(finite.min()) if finite.size else 0.0
    if vmax is None:
        vmax = float(finite.max()) if finite.size else 1.0
    if vmax <= vmin:
        vmax = vmin + 1e-9
    image = ax.imshow(masked, cmap=colour_map, vmin=vmin, vmax=vmax, aspect="auto")
    for (i, j), value in np.ndenumerate(matrix):
        if np.isfinite(value):
            shade = (value - vmin) / (vmax - vmin)
            ax.text(j, i, f"{value:.{digits}f}", ha="center", va="center", fontsize=7,
                    color="white" if shade < 0.55 else "black")
        else:
            ax.text(j, i, "n/a", ha="center", va="center", fontsize=7, color="0.3")
    ax.set_xticks(range(len(column_labels)), column_labels)
    ax.set_yticks(range(len(row_labels)), row_labels)
    return image


def _alpha_titles(axes_row, grid: Grid, counts=None) -> None:
    for column, alpha in enumerate(grid.alphas):
        suffix = "" if counts is None else f" ({counts[column]}/{len(grid.seeds)} seeds)"
        axes_row[column].set_title(f"α = {alpha_text(alpha)}{suffix}", fontsize=9)


def _figure_title(figure, grid: Grid, text: str) -> None:
    figure.suptitle(f"{grid.dataset} · {text} · {grid.study}", fontsize=11, wrap=True)


# ---- per method -------------------------------------------------------------------------------

def _per_method(grid: Grid, values: Values, method: str, out: Path) -> list[Path]:
    written = []
    student = f"{method} ({grid.student_model})"
    colour = grid.method_colour(method)
    seeds_found = [values.stats(method, alpha, "logits", "test_acc")[2] for alpha in grid.alphas]

    # PCA cumulative explained variance
    figure, axes = _subplots(len(LAYERS), len(grid.alphas))
    for row, layer in enumerate(LAYERS):
        for column, alpha in enumerate(grid.alphas):
            ax = axes[row, column]
            drawn = False
            for who, who_alpha, who_colour, style, label in (
                    (TEACHER, None, TEACHER_COLOUR, "-", f"teacher ({grid.teacher_model})"),
                    (PURE, None, PURE_COLOUR, "--", f"pure ({grid.student_model})"),
                    (method, alpha, colour, "-", student)):
                mean, std, count = values.curve(who, who_alpha, layer, "pca_cumvar_")
                if count == 0:
                    if who == method:
                        _missing_note(ax, f"no {method} run")
                    continue
                components = np.arange(1, mean.size + 1)
                ax.plot(components, mean, style, color=who_colour, label=label, lw=1.4)
                ax.fill_between(components, mean - std, np.minimum(mean + std, 1.0),
                                color=who_colour, alpha=0.15, lw=0)
                drawn = True
            if not drawn:
                _no_data(ax)
            ax.set_ylim(0, 1.02)
            ax.set_xlabel("components", fontsize=8)
            ax.set_ylabel(f"{layer}: cum. variance", fontsize=8)
            ax.grid(alpha=0.3)
    _alpha_titles(axes[0], grid, seeds_found)
    _figure_legend(figure, axes)
    _figure_title(figure, grid, f"{method}: PCA cumulative explained variance "
                                "(mean ± std over seeds)")
    written.append(out / "pca_variance.png")
    save_figure(figure, written[-1])

    def three_way(metric):
        return [
            (f"teacher ({grid.teacher_model})", TEACHER_COLOUR,
             [values.stats(TEACHER, None, layer, metric) for layer in LAYERS]),
            (f"pure ({grid.student_model})", PURE_COLOUR,
             [values.stats(PURE, None, layer, metric) for layer in LAYERS])]

    # effective dimensionality
    rows = [("effective_dim_90", "components for 90%"), ("effective_dim_95", "components for 95%"),
            ("participation_ratio", "participation ratio")]
    figure, axes = _subplots(len(rows), len(grid.alphas))
    for row, (metric, label) in enumerate(rows):
        for column, alpha in enumerate(grid.alphas):
            series = three_way(metric) + [
                (student, colour, [values.stats(method, alpha, layer, metric) for layer in LAYERS])]
            _grouped_bars(axes[row, column], series)
            axes[row, column].set_ylabel(label, fontsize=8)
    _alpha_titles(axes[0], grid, seeds_found)
    _figure_legend(figure, axes)
    _figure_title(figure, grid, f"{method}: effective dimensionality (mean ± std over seeds)")
    written.append(out / "effective_dimensionality.png")
    save_figure(figure, written[-1])

    # CKA same layer (linear and RBF)
    rows = [("cka_linear", "linear CKA with teacher"), ("cka_rbf", "RBF CKA with teacher")]
    figure, axes = _subplots(len(rows), len(grid.alphas))
    for row, (metric, label) in enumerate(rows):
        for column, alpha in enumerate(grid.alphas):
            ax = axes[row, column]
            series = [(f"pure ({grid.student_model})", PURE_COLOUR,
                       [values.stats(PURE, None, layer, metric) for layer in LAYERS]),
                      (student, colour, [values.stats(method, alpha, layer, metric)
                                         for layer in LAYERS])]
            _grouped_bars(ax, series)
            for position, layer in enumerate(LAYERS):  # individual seeds
                points = values.array(method, alpha, layer, metric)
                ax.plot(np.full(points.size, position + 0.2), points, "k.", ms=3)
            ax.set_ylim(0, 1.05)
            ax.set_ylabel(label, fontsize=8)
    _alpha_titles(axes[0], grid, seeds_found)
    _figure_legend(figure, axes)
    _figure_title(figure, grid, f"{method}: CKA with the teacher at the same layer "
                                "(bars: mean ± std, dots: seeds)")
    written.append(out / "cka_same_layer.png")
    save_figure(figure, written[-1])

    # CKA cross-layer heatmaps (mean over seeds), pure student as the last panel
    panels = [(method, alpha, f"α = {alpha_text(alpha)}") for alpha in grid.alphas]
    panels.append((PURE, None, f"pure ({grid.student_model})"))
    figure, axes = _subplots(1, len(panels), width=3.0, height=2.9)
    image = None
    for column, (who, alpha, title) in enumerate(panels):
        matrix = np.array([[values.stats(who, alpha, student_layer,
                                         f"cka_linear_vs_teacher_{teacher_layer}")[0]
                            for student_layer in LAYERS] for teacher_layer in LAYERS])
        image = _heatmap(axes[0, column], matrix, LAYERS, LAYERS, vmin=0.0, vmax=1.0)
        count = values.stats(who, alpha, LAYERS[0], "cka_linear")[2]
        axes[0, column].set_title(f"{title} ({count}/{len(grid.seeds)})", fontsize=9)
        axes[0, column].set_xlabel("student layer", fontsize=8)
        if column:
            axes[0, column].set_yticklabels([])
    axes[0, 0].set_ylabel("teacher layer", fontsize=8)
    figure.colorbar(image, ax=axes[0, :].tolist(), shrink=0.8, label="linear CKA")
    _figure_title(figure, grid, f"{method}: linear CKA across layers")
    written.append(out / "cka_cross_layer.png")
    save_figure(figure, written[-1])

    # principal angles
    figure, axes = _subplots(1, len(grid.alphas))
    layer_colours = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, len(LAYERS)))
    for column, alpha in enumerate(grid.alphas):
        ax = axes[0, column]
        drawn = False
        for layer, layer_colour in zip(LAYERS, layer_colours):
            for who, who_alpha, style, suffix in ((method, alpha, "-o", ""),
                                                  (PURE, None, "--", " pure")):
                mean, std, count = values.curve(who, who_alpha, layer, "principal_angle_")
                if count == 0:
                    if who == method and layer == LAYERS[0]:
                        _missing_note(ax, f"no {method} run")
                    continue
                index = np.arange(1, mean.size + 1)
                ax.plot(index, mean, style, color=layer_colour, ms=3, lw=1.2,
                        label=f"{layer}{suffix}")
                if who == method:
                    ax.fill_between(index, mean - std, mean + std, color=layer_colour,
                                    alpha=0.15, lw=0)
                drawn = True
        if not drawn:
            _no_data(ax)
        ax.set_ylim(0, 90)
        ax.set_xlabel("angle index (top-k PCA subspaces)", fontsize=8)
        ax.set_ylabel("principal angle (°)", fontsize=8)
        ax.grid(alpha=0.3)
    _alpha_titles(axes[0], grid, seeds_found)
    _figure_legend(figure, axes, columns=6)
    _figure_title(figure, grid, f"{method}: principal angles to the teacher (solid: "
                                f"{method}, dashed: pure student)")
    written.append(out / "principal_angles.png")
    save_figure(figure, written[-1])

    # ICA summary
    from .compute import MATCH_THRESHOLD

    rows = [("ica_matched_r_mean", "mean matched |r|"),
            (f"ica_matched_above_{MATCH_THRESHOLD}", f"components with |r| > {MATCH_THRESHOLD}")]
    figure, axes = _subplots(len(rows), len(grid.alphas))
    for row, (metric, label) in enumerate(rows):
        for column, alpha in enumerate(grid.alphas):
            series = [(f"pure ({grid.student_model})", PURE_COLOUR,
                       [values.stats(PURE, None, layer, metric) for layer in LAYERS]),
                      (student, colour, [values.stats(method, alpha, layer, metric)
                                         for layer in LAYERS])]
            _grouped_bars(axes[row, column], series)
            axes[row, column].set_ylabel(label, fontsize=8)
            if row == 0:
                axes[row, column].set_ylim(0, 1.05)
    _alpha_titles(axes[0], grid, seeds_found)
    failures = sum(1 for alpha in grid.alphas for layer in LAYERS
                   for converged in values.seeds(method, alpha, layer, "ica_converged").values()
                   if converged == 0)
    failures += sum(1 for who in (TEACHER, PURE) for layer in LAYERS
                    for converged in values.seeds(who, None, layer, "ica_converged").values()
                    if converged == 0)
    warning = f" — {failures} FastICA fit(s) did not converge" if failures else ""
    _figure_legend(figure, axes)
    _figure_title(figure, grid, f"{method}: ICA components matched to the teacher{warning}")
    written.append(out / "ica_summary.png")
    save_figure(figure, written[-1])

    # Fisher criterion
    figure, axes = _subplots(1, len(grid.alphas))
    for column, alpha in enumerate(grid.alphas):
        series = three_way("fisher") + [
            (student, colour, [values.stats(method, alpha, layer, "fisher") for layer in LAYERS])]
        _grouped_bars(axes[0, column], series)
        axes[0, column].set_ylabel("tr(S_B) / tr(S_W)", fontsize=8)
    _alpha_titles(axes[0], grid, seeds_found)
    _figure_legend(figure, axes)
    _figure_title(figure, grid, f"{method}: Fisher criterion (class separability)")
    written.append(out / "fisher.png")
    save_figure(figure, written[-1])
    return written


# ---- sweeps -------------------------------------------------------------------------------------

def _sweep_axis(ax, grid: Grid, values: Values, layer: str, metric: str, pairwise: bool,
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
    references = [(PURE, PURE_COLOUR, "--", f"pure ({grid.student_model})")]
    if not pairwise:
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
        _no_data(ax)
    ax.set_xticks(alphas, [alpha_text(a) for a in grid.alphas])
    ax.set_xlabel("α (distillation weight)", fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.grid(alpha=0.3)


def sweep_metrics() -> list[tuple[str, str, bool, tuple[str, ...]]]:
    """(metric, label, pairwise, layers) of every sweep / heatmap figure pair."""
    return ([(metric, label, pairwise, LAYERS) for metric, label, pairwise in SWEEP_METRICS]
            + [("test_acc", "test accuracy (%)", False, ("logits",))])


def _sweep(grid: Grid, values: Values, out: Path, metric: str) -> list[Path]:
    """sweep_{metric}.png and heatmap_{metric}.png."""
    written = []
    for name, label, pairwise, layers in sweep_metrics():
        if name != metric:
            continue
        figure, axes = _subplots(1, len(layers), width=4.2, height=3.2)
        for column, layer in enumerate(layers):
            _sweep_axis(axes[0, column], grid, values, layer, metric, pairwise, label)
            axes[0, column].set_title(layer, fontsize=9)
        _figure_legend(figure, axes, columns=5)
        _figure_title(figure, grid, f"{label} against α (mean ± std over seeds; runs found "
                                    "of expected)")
        written.append(out / f"sweep_{metric}.png")
        save_figure(figure, written[-1])

        figure, axes = _subplots(1, len(layers), width=0.7 * len(grid.alphas) + 2.2,
                                 height=0.45 * len(grid.methods) + 1.6)
        image = None
        for column, layer in enumerate(layers):
            matrix = np.array([[values.stats(method, alpha, layer, metric)[0]
                                for alpha in grid.alphas] for method in grid.methods])
            image = _heatmap(axes[0, column], matrix, grid.methods,
                             [alpha_text(a) for a in grid.alphas],
                             digits=1 if metric in ("test_acc", "knn_acc",
                                                    "principal_angle_mean") else 2)
            axes[0, column].set_title(layer, fontsize=9)
            axes[0, column].set_xlabel("α", fontsize=8)
            if image is not None:
                figure.colorbar(image, ax=axes[0, column], shrink=0.8)
        _figure_title(figure, grid, f"{label}: method × α (mean over seeds)")
        written.append(out / f"heatmap_{metric}.png")
        save_figure(figure, written[-1])
    return written


def _accuracy_vs_alignment(grid: Grid, values: Values, out: Path) -> list[Path]:
    written = []
    figure, axes = _subplots(1, 1, width=5.2, height=4.2)
    ax = axes[0, 0]
    xs, ys = [], []
    for method in list(grid.methods) + [PURE]:
        alphas = [None] if method == PURE else list(grid.alphas)
        points = []
        for alpha in alphas:
            cka = values.seeds(method, alpha, "layer3", "cka_linear")
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
        _no_data(ax)
    ax.set_xlabel("linear CKA with teacher, layer3", fontsize=9)
    ax.set_ylabel("test accuracy (%)", fontsize=9)
    ax.grid(alpha=0.3)
    if ax.collections:
        ax.legend(fontsize=7, loc="lower right")
    _figure_title(figure, grid, "accuracy against alignment (one point per run)")
    written.append(out / "accuracy_vs_cka_layer3.png")
    save_figure(figure, written[-1])
    return written


# ---- summary ------------------------------------------------------------------------------------

def _summary(grid: Grid, values: Values, payload: dict, out: Path) -> tuple[list[Path], list[str]]:
    written: list[Path] = []
    notes: list[str] = []
    panels = payload["scatter_panels"]  # [(title, coords [m,2] or None, labels [m] or None)]
    classes = payload["num_classes"]
    if panels and classes is not None and classes <= 10:
        columns = min(4, len(panels))
        rows = math.ceil(len(panels) / columns)
        figure, axes = _subplots(rows, columns, width=3.2, height=3.0)
        colours = plt.get_cmap("tab10")
        for index, ax in enumerate(axes.flat):
            if index >= len(panels):
                ax.axis("off")
                continue
            title, coords, labels = panels[index]
            ax.set_title(title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            if coords is None or not np.isfinite(coords).any():
                _no_data(ax, "no run" if coords is None else "degenerate (rank < 2)")
                continue
            ax.scatter(coords[:, 0], coords[:, 1], c=colours(labels % 10), s=2, alpha=0.6,
                       linewidths=0)
        handles = [plt.Line2D([], [], marker="o", ls="", color=colours(c), label=str(c))
                   for c in range(classes)]
        figure.legend(handles=handles, title="class", fontsize=7, loc="outside right center")
        _figure_title(figure, grid, "layer3, first two principal components (each model's own PCA)")
        written.append(out / "pca_scatter_layer3.png")
        save_figure(figure, written[-1])
    elif classes is not None and classes > 10:
        notes.append(f"{grid.dataset}: PCA scatter drawn only for 10-class data "
                     f"({classes} classes here)")

    umap_result = _umap_figure(grid, payload, out)
    if isinstance(umap_result, Path):
        written.append(umap_result)
    elif umap_result:
        notes.append(umap_result)

    # accuracy table as a figure: rows teacher, pure, methods; columns alphas
    row_names = [f"teacher ({grid.teacher_model})", f"pure ({grid.student_model})"] + list(grid.methods)
    column_names = ["—"] + [f"α = {alpha_text(a)}" for a in grid.alphas]
    text = [["" for _ in column_names] for _ in row_names]
    shade = np.full((len(row_names), len(column_names)), np.nan)
    for row, (who, alphas) in enumerate([(TEACHER, [None]), (PURE, [None])]
                                        + [(m, list(grid.alphas)) for m in grid.methods]):
        for alpha in alphas:
            column = 0 if alpha is None else 1 + grid.alphas.index(alpha)
            mean, std, count = values.stats(who, alpha, "logits", "test_acc")
            if count == 0:
                text[row][column] = "n/a"
            elif count == 1:
                text[row][column] = f"{mean:.2f} (1)"
            else:
                text[row][column] = f"{mean:.2f} ± {std:.2f} ({count})"
            shade[row, column] = mean
    figure, axes = _subplots(1, 1, width=1.45 * len(column_names) + 1.8,
                             height=0.32 * len(row_names) + 0.9)
    ax = axes[0, 0]
    ax.axis("off")
    finite = shade[np.isfinite(shade)]
    low, high = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    colour_map = plt.get_cmap("Greens")
    cell_colours = [[colour_map(0.15 + 0.5 * (v - low) / (high - low + 1e-9)) if np.isfinite(v)
                     else (1, 1, 1, 1) for v in shade_row] for shade_row in shade]
    table = ax.table(cellText=text, rowLabels=row_names, colLabels=column_names,
                     cellColours=cell_colours, loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1.0, 1.3)
    ax.set_title(f"{grid.dataset}: test accuracy (%), mean ± std (seeds found, of "
                 f"{len(grid.seeds)})", fontsize=10)
    written.append(out / "accuracy_table.png")
    save_figure(figure, written[-1])
    return written, notes


def _umap_figure(grid: Grid, payload: dict, out: Path):
    """The teacher's layer3 in a 2-D UMAP (McInnes et al. 2018), with each method's chosen
    student mapped into the teacher's feature space by least squares (channels of two
    networks are not aligned) and placed by the teacher's UMAP. Returns the figure path,
    or a note saying why it was skipped."""
    try:
        import umap  # noqa: F401  (optional extra: pip install 'kdlab[umap]')
    except ImportError:
        return (f"{grid.dataset}: UMAP projection skipped: umap-learn is not installed "
                "(optional extra: pip install 'kdlab[umap]')")
    from .metrics import subsample_indices
    from .store import load_representation

    teacher_path = payload.get("umap_teacher")
    if teacher_path is None:
        return f"{grid.dataset}: UMAP projection skipped: no teacher representation"
    teacher = load_representation(teacher_path)
    index = subsample_indices(teacher["labels"].shape[0], 2000, 0)
    teacher_features = teacher["layer3"][index].astype(np.float64)
    labels = teacher["labels"][index]
    reducer = umap.UMAP(n_components=2, random_state=0)
    panels = [("teacher", reducer.fit_transform(teacher_features))]
    teacher_mean = teacher_features.mean(axis=0)
    for title, path in payload.get("umap_students", []):
        student = load_representation(path)["layer3"][index].astype(np.float64)
        student_mean = student.mean(axis=0)
        mapping, *_ = np.linalg.lstsq(student - student_mean, teacher_features - teacher_mean,
                                      rcond=None)
        panels.append((title, reducer.transform((student - student_mean) @ mapping + teacher_mean)))
    columns = min(4, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure, axes = _subplots(rows, columns, width=3.2, height=3.0)
    for ax_index, ax in enumerate(axes.flat):
        if ax_index >= len(panels):
            ax.axis("off")
            continue
        title, coords = panels[ax_index]
        ax.scatter(coords[:, 0], coords[:, 1], c=plt.get_cmap("tab10")(labels % 10), s=2,
                   linewidths=0)
        ax.set_title(title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    _figure_title(figure, grid, "layer3 in the teacher's UMAP space (students mapped by "
                                "least squares)")
    path = out / "umap_teacher_layer3.png"
    save_figure(figure, path)
    return path


# ---- groups, digests, dispatch --------------------------------------------------------------

def draw_group(kind: str, grid: Grid, frame, payload: dict, out_dir: str) -> dict:
    """Draw one group of figures (worker entry point). Returns {'files': [str], 'notes'}."""
    out = Path(out_dir)
    values = Values(frame)
    notes: list[str] = []
    if kind == "per_method":
        files = _per_method(grid, values, payload["method"], out)
    elif kind == "sweep":
        files = _sweep(grid, values, out, payload["metric"])
    elif kind == "accuracy_vs_alignment":
        files = _accuracy_vs_alignment(grid, values, out)
    elif kind == "summary":
        files, notes = _summary(grid, values, payload, out)
    else:
        raise ValueError(f"unknown figure group {kind!r}")
    return {"files": [str(path) for path in files], "notes": notes}


def _digest(kind: str, grid: Grid, frame, payload: dict) -> str:
    import pandas as pd

    digest = hashlib.sha256()
    digest.update(json.dumps([FIGURE_VERSION, kind, asdict(grid)], sort_keys=True).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    # Paths are left out (the files are identified by name, size and time in 'umap_files'),
    # so a moved or synced analysis folder keeps its figures.
    digest.update(_payload_bytes({key: value for key, value in payload.items()
                                  if key not in _PATH_KEYS}))
    return digest.hexdigest()


_PATH_KEYS = ("umap_teacher", "umap_students")


def _payload_bytes(value) -> bytes:
    if isinstance(value, np.ndarray):
        return value.tobytes() + str(value.shape).encode()
    if isinstance(value, dict):
        return b"{" + b"".join(key.encode() + b":" + _payload_bytes(value[key])
                               for key in sorted(value)) + b"}"
    if isinstance(value, (list, tuple)):
        return b"[" + b",".join(_payload_bytes(item) for item in value) + b"]"
    return repr(value).encode()


def _scatter_panels(grid: Grid, entries_scatter: dict):
    """Teacher, pure student and one student per method (largest alpha present, then the
    smallest seed) for the layer3 PCA scatter."""
    def pick(method):
        candidates = [entry for entry in entries_scatter if entry.method == method]
        if not candidates:
            return None
        return sorted(candidates, key=lambda e: (-(e.alpha or 0.0), e.seed))[0]

    panels, chosen = [], []
    for method in [TEACHER, PURE] + list(grid.methods):
        entry = pick(method)
        name = {TEACHER: f"teacher ({grid.teacher_model})",
                PURE: f"pure ({grid.student_model})"}.get(method, method)
        if entry is None:
            panels.append((name, None, None))
            continue
        coords, labels = entries_scatter[entry]
        suffix = (f" α={alpha_text(entry.alpha)}" if entry.alpha is not None else "") + \
            f" s{entry.seed}"
        panels.append((name + suffix, coords, labels))
        chosen.append((method, entry, name + suffix))
    return panels, chosen


def draw_study(study, frame, scatter: dict, executor, result, show_progress: bool = True
               ) -> list[str]:
    """Draw (or keep, when unchanged) every figure group of every data set of the study.

    ``frame``: metrics frame; ``scatter``: Entry -> (coords [m,2], labels [m]);
    ``executor``: where groups are drawn; ``result``: the AnalysisReport whose figure counts
    are updated. Returns notes for the report. The manifest ``cache/figures.json`` maps each
    group to its digest and files; files a redrawn group no longer produces are removed."""
    from .analyze import _run_all
    from .compute import file_key

    root = layout.analysis_dir(study.analysis_dir, study.name)
    manifest_path = root / "cache" / "figures.json"
    try:
        manifest = read_json(manifest_path) or {}
    except StateFileError:
        manifest = {}
    notes: list[str] = []
    tasks = []
    new_manifest: dict[str, dict] = {}
    for dataset in study.datasets:
        data = frame[frame["dataset"] == dataset].reset_index(drop=True)
        if data.empty:
            notes.append(f"{dataset}: no representations yet, no figures")
            continue
        grid = Grid(study.name, dataset, tuple(study.methods), tuple(study.alphas),
                    tuple(study.seeds), study.teacher, study.student)
        base = layout.figures_dir(study.analysis_dir, study.name, dataset)
        groups = []
        if study.methods and study.alphas:
            for method in study.methods:
                subset = data[data["method"].isin([method, TEACHER, PURE])].reset_index(
                    drop=True)
                groups.append((f"{dataset}/per_method/{method}", "per_method", subset,
                               {"method": method}, base / "per_method" / method))
            for metric, *_ in sweep_metrics():
                groups.append((f"{dataset}/sweeps/{metric}", "sweep",
                               data[data["metric"] == metric].reset_index(drop=True),
                               {"metric": metric}, base / "sweeps"))
            groups.append((f"{dataset}/sweeps/accuracy_vs_alignment", "accuracy_vs_alignment",
                           data[((data["metric"] == "cka_linear") & (data["layer"] == "layer3"))
                                | (data["metric"] == "test_acc")].reset_index(drop=True),
                           {}, base / "sweeps"))
        else:
            notes.append(f"{dataset}: the study has no KD methods / alphas, so no per-method "
                         "figures and no alpha sweeps")
        dataset_scatter = {entry: value for entry, value in scatter.items()
                           if entry.dataset == dataset}
        panels, chosen = _scatter_panels(grid, dataset_scatter)
        label_sets = [labels for _, _, labels in panels if labels is not None]
        summary_payload = {
            "scatter_panels": panels,
            "num_classes": int(max(int(labels.max()) + 1 for labels in label_sets))
            if label_sets else None,
            "umap_teacher": next((str(e.path) for m, e, _ in chosen if m == TEACHER), None),
            "umap_students": [(title, str(e.path)) for m, e, title in chosen if m != TEACHER],
            "umap_files": [file_key(e.path) for _, e, _ in chosen if e.path.exists()],
        }
        groups.append((f"{dataset}/summary", "summary",
                       data[data["metric"] == "test_acc"].reset_index(drop=True),
                       summary_payload, base / "summary"))
        for group_id, kind, subset, payload, out in groups:
            digest = _digest(kind, grid, subset, payload)
            previous = manifest.get(group_id, {})
            if (previous.get("digest") == digest
                    and all((root / f).is_file() for f in previous.get("files", []))):
                new_manifest[group_id] = previous
                notes += previous.get("notes", [])
                result.figures_kept += len(previous.get("files", []))
                continue
            tasks.append((group_id, draw_group, kind, grid, subset, payload, str(out)))
            new_manifest[group_id] = {"digest": digest, "files": [], "notes": []}

    for group_id, outcome in _run_all(executor, tasks, "figures", show_progress):
        # relative to the analysis folder, so the folder can be moved or synced
        files = [Path(os.path.relpath(f, root)).as_posix() for f in outcome["files"]]
        new_manifest[group_id]["files"] = files
        new_manifest[group_id]["notes"] = outcome["notes"]
        notes += outcome["notes"]
        result.figures_drawn += len(files)
        for stale in set(manifest.get(group_id, {}).get("files", [])) - set(files):
            (root / stale).unlink(missing_ok=True)
    for group_id, entry in manifest.items():  # groups that no longer exist (study changed)
        if group_id not in new_manifest:
            for stale in entry.get("files", []):
                (root / stale).unlink(missing_ok=True)
    atomic_write_json(manifest_path, new_manifest)
    return notes


def figure_files(study) -> dict[str, list[Path]]:
    """Group id -> existing figure files (paths under the analysis folder), from the
    manifest of the last analysis."""
    root = layout.analysis_dir(study.analysis_dir, study.name)
    try:
        manifest = read_json(root / "cache" / "figures.json") or {}
    except StateFileError:
        return {}
    return {group_id: [root / f for f in entry.get("files", []) if (root / f).is_file()]
            for group_id, entry in manifest.items()}

