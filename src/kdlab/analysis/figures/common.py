"""What every figure module shares: the grid a figure group shows, fast lookup of metric
values over seeds, and the drawing helpers (gaps drawn as 'n/a' / 'no runs', never a crash).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ...run import layout  # noqa: E402
from ...run.state_files import atomic_write_bytes  # noqa: E402
from ..store import LAYERS  # noqa: E402

FIGURE_VERSION = 4
DPI = 110
TEACHER = "teacher"
PURE = "pure"
TEACHER_COLOUR = "black"
PURE_COLOUR = "0.45"
MISSING_COLOUR = "0.88"
# Noise floors: pairs of networks that share no distillation (see analysis.floors); the
# last field: whether the floor's layers are the teacher's stages (else the student's)
FLOORS = (("floor_pure_vs_pure", "pure vs pure (other seed)", "tab:olive", False),
          ("floor_teacher_vs_teacher", "teacher vs teacher (other seed)", "tab:brown", True))


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
    # Each model's stage names (its facts; the ResNets' for files that name none). Figures
    # draw the student's stages and compare the teacher's at the same position from the last.
    teacher_stages: tuple[str, ...] = LAYERS
    student_stages: tuple[str, ...] = LAYERS

    @property
    def stages(self) -> tuple[str, ...]:
        """The stages a figure's axis shows: the student's, first to last."""
        return self.student_stages

    @property
    def last_stage(self) -> str:
        return self.student_stages[-1]

    def teacher_stage(self, student_stage: str) -> str | None:
        """The teacher's stage at the position of ``student_stage`` from the last (None
        when the teacher has fewer stages)."""
        back = len(self.student_stages) - self.student_stages.index(student_stage)
        return self.teacher_stages[-back] if back <= len(self.teacher_stages) else None

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


def subplots(rows: int, columns: int, width: float = 3.4, height: float = 2.8, **kwargs):
    figure, axes = plt.subplots(rows, columns, figsize=(max(6.0, width * columns),
                                                        height * rows + 0.6),
                                squeeze=False, layout="constrained", **kwargs)
    return figure, axes


def figure_legend(figure, axes, columns: int = 4) -> None:
    """One legend for the whole figure, below the panels, with every distinct entry."""
    seen: dict[str, object] = {}
    for ax in np.ravel(axes):
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    if seen:
        fits = max(1, int(figure.get_figwidth() // 1.8))  # entries side by side that fit
        figure.legend(list(seen.values()), list(seen), loc="outside lower center",
                      ncols=min(columns, len(seen), fits), fontsize=8, frameon=False)


def missing_note(ax, text: str) -> None:
    """Say inside a panel that one series has no data (the others are still drawn)."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=8,
            color="#a00", bbox={"facecolor": "white", "alpha": 0.8, "lw": 0})


def no_data(ax, text: str = "no runs") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes,
            color="0.4", fontsize=10)
    ax.set_facecolor("0.96")


def grouped_bars(ax, series, layers=LAYERS) -> None:
    """Bars per layer (default: the CIFAR ResNets' stages) for several series
    [(label, colour, [(mean, std, count)] per layer)];
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


def heatmap(ax, matrix: np.ndarray, row_labels, column_labels, vmin=None, vmax=None,
             cmap="viridis", digits: int = 2):
    """Annotated heatmap; NaN cells drawn light grey and labelled 'n/a'."""
    if matrix.size == 0:
        no_data(ax, "nothing to show")
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


def alpha_titles(axes_row, grid: Grid, counts=None) -> None:
    for column, alpha in enumerate(grid.alphas):
        suffix = "" if counts is None else f" ({counts[column]}/{len(grid.seeds)} seeds)"
        axes_row[column].set_title(f"α = {alpha_text(alpha)}{suffix}", fontsize=9)


def figure_title(figure, grid: Grid, text: str) -> None:
    figure.suptitle(f"{grid.dataset} · {grid.teacher_model} -> {grid.student_model} · {text} "
                    f"· {grid.study}", fontsize=11, wrap=True)


def floor_bands(ax, grid: Grid, values: "Values", layer: str, metric: str,
                span=None) -> bool:
    """Noise-floor reference bands (mean ± std over the floor's pairs, n in the label)
    across the panel, or over ``span`` = (x0, x1) only; True when one was drawn.
    ``layer``: a student stage; the teacher's floor is read at the teacher's stage at the
    same position from the last, as the pair metrics pair them."""
    drawn = False
    for method, label, colour, of_teacher in FLOORS:
        # the logits and the like are no stage: both models have them under one name
        floor_layer = (grid.teacher_stage(layer) if of_teacher and layer in grid.stages
                       else layer)
        if floor_layer is None:
            continue
        mean, std, count = values.stats(method, None, floor_layer, metric)
        if count == 0:
            continue
        text = f"floor: {label} (n={count})"
        if span is None:
            ax.axhline(mean, color=colour, lw=1.0, ls=":", label=text)
            ax.axhspan(mean - std, mean + std, color=colour, alpha=0.15, lw=0)
        else:
            ax.plot(span, [mean, mean], color=colour, lw=1.0, ls=":", label=text)
            ax.fill_between(span, [mean - std] * 2, [mean + std] * 2, color=colour,
                            alpha=0.15, lw=0)
        drawn = True
    return drawn
