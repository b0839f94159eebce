"""The earlier research code's figures that kdlab's own analysis lacks or redefines, drawn
beside kdlab's as named extra outputs. Each function takes arrays and an output path,
writes one PNG atomically and returns its path; none reads a run or a study.

- :func:`plot_ica_correlation` (``ica_correlation.png``): |r| between a teacher's and a
  student's independent components, rows and columns in Hungarian-matched order, one row
  of panels per method (one representative run each, :func:`representative_run`), one
  column per layer.
- :func:`plot_teacher_self_cka` (``cka_cross_layer_teacher_self.png``): linear CKA of the
  teacher's layers with each other, the panel the earlier cross-layer CKA figure put
  before the teacher-vs-student panels (kdlab's own figure has only the latter).
- :func:`plot_pca_scatter_teacher_basis` (``pca_scatter_teacher_basis.png``): every model
  projected onto the teacher's first two principal directions, for data sets with more
  than 10 classes every 10th class (:func:`scatter_classes`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from .figure_files import new_figure, save_figure
from .metrics import cross_layer_linear_cka

ICA_CORRELATION_FILE = "ica_correlation.png"
TEACHER_SELF_CKA_FILE = "cka_cross_layer_teacher_self.png"
PCA_SCATTER_TEACHER_BASIS_FILE = "pca_scatter_teacher_basis.png"


# ---- the arrays behind the figures ---------------------------------------------------------

def matched_correlation(sources_teacher, sources_student):
    """|Pearson r| between every teacher component [n, ka] and student component [n, kb],
    rows and columns reordered so that the Hungarian matching (maximum total |r|) lies on
    the diagonal, strongest matched pair first; unmatched components follow.

    Returns (matrix [ka, kb], teacher order [ka], student order [kb]): matrix[i, j] is
    |r| of teacher component teacher_order[i] and student component student_order[j].
    A constant component correlates 0 with everything."""
    a = np.asarray(sources_teacher, dtype=np.float64)
    b = np.asarray(sources_student, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0] or a.shape[0] < 2:
        raise ValueError(f"expected sources [n, ka] and [n, kb] of the same n >= 2 inputs, "
                         f"found {a.shape} and {b.shape}")
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (a.T @ b) / np.outer(np.linalg.norm(a, axis=0), np.linalg.norm(b, axis=0))
    r = np.abs(np.nan_to_num(r, nan=0.0, posinf=0.0, neginf=0.0))
    rows, columns = linear_sum_assignment(r, maximize=True)
    strongest = np.argsort(-r[rows, columns], kind="stable")
    rows, columns = rows[strongest], columns[strongest]
    teacher_order = np.concatenate([rows, np.setdiff1d(np.arange(r.shape[0]), rows)])
    student_order = np.concatenate([columns, np.setdiff1d(np.arange(r.shape[1]), columns)])
    return r[np.ix_(teacher_order, student_order)], teacher_order, student_order


def representative_run(accuracies: Mapping) -> object:
    """The key of the run whose accuracy is nearest the median of ``accuracies`` (key ->
    percent, e.g. (alpha, seed) -> test accuracy of one method's runs); ties go to the
    smallest key. The run an example figure shows for a method."""
    if not accuracies:
        raise ValueError("representative_run: no runs to choose from")
    median = float(np.median(list(accuracies.values())))
    return min(sorted(accuracies), key=lambda key: abs(accuracies[key] - median))


def scatter_classes(num_classes: int) -> list[int]:
    """Classes drawn in a scatter: all of them up to 10, else every 10th (0, 10, 20, ...),
    as the earlier figure drew 10 of Cifar100's 100."""
    if num_classes < 1:
        raise ValueError(f"num_classes: expected >= 1, found {num_classes}")
    return list(range(num_classes)) if num_classes <= 10 else list(range(0, num_classes, 10))


def teacher_basis_projection(teacher_features, features) -> np.ndarray:
    """``features`` [n, d] projected onto the teacher's first two principal directions
    (centred on the teacher's mean) [n, 2]. The teacher [m, d] must have the same channel
    count d; each direction's sign makes the teacher's largest-magnitude score positive."""
    teacher = np.asarray(teacher_features, dtype=np.float64)
    array = np.asarray(features, dtype=np.float64)
    if teacher.ndim != 2 or array.ndim != 2 or teacher.shape[1] != array.shape[1]:
        raise ValueError(f"projection onto the teacher's basis needs the teacher's channel "
                         f"count: teacher {teacher.shape}, model {array.shape}")
    mean = teacher.mean(axis=0)
    _, _, vt = np.linalg.svd(teacher - mean, full_matrices=False)
    basis = vt[:2].T
    scores = (teacher - mean) @ basis
    signs = np.sign(scores[np.argmax(np.abs(scores), axis=0), np.arange(basis.shape[1])])
    signs[signs == 0] = 1.0
    return (array - mean) @ (basis * signs)


# ---- drawing ---------------------------------------------------------------------------------

# colour maps on [0, 1] and the values above which their cells are dark (white text)
_DARK_ABOVE = {"YlOrRd": 0.6, "viridis": float("inf")}
_DARK_BELOW = {"YlOrRd": -1.0, "viridis": 0.55}


def _annotated_heatmap(axes, matrix: np.ndarray, labels_x, labels_y, cmap: str,
                       annotate: bool) -> object:
    image = axes.imshow(matrix, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto",
                        interpolation="nearest")
    if annotate:
        for (i, j), value in np.ndenumerate(matrix):
            dark = value > _DARK_ABOVE[cmap] or value < _DARK_BELOW[cmap]
            axes.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                      color="white" if dark else "black")
    axes.set_xticks(range(len(labels_x)), labels_x, fontsize=7)
    axes.set_yticks(range(len(labels_y)), labels_y, fontsize=7)
    return image


def plot_ica_correlation(panels: Mapping[str, Mapping[str, tuple]], path: str | Path, *,
                         title: str, strong: float = 0.5) -> Path:
    """ICA correlation heatmaps: ``panels`` row label (e.g. 'logit α=0.5 seed 1') -> layer
    -> (teacher sources [n, ka], student sources [n, kb]) of one run. Each panel shows
    :func:`matched_correlation` (ticks: component indices; title: mean matched |r| and the
    pairs above ``strong``). Rows of panels in the mapping's order; columns: every layer
    found, in first-seen order."""
    layers = list(dict.fromkeys(layer for row in panels.values() for layer in row))
    if not panels or not layers:
        raise ValueError("plot_ica_correlation: no panels")
    figure = new_figure(3.3 * len(layers) + 1.2, 3.0 * len(panels) + 0.8)
    figure.set_layout_engine("constrained")
    axes_grid = figure.subplots(len(panels), len(layers), squeeze=False)
    image = None
    for row, (label, by_layer) in enumerate(panels.items()):
        for column, layer in enumerate(layers):
            axes = axes_grid[row, column]
            if layer not in by_layer:
                axes.text(0.5, 0.5, "no components", ha="center", va="center",
                          transform=axes.transAxes, color="0.4")
                axes.set_xticks([])
                axes.set_yticks([])
                continue
            matrix, teacher_order, student_order = matched_correlation(*by_layer[layer])
            image = _annotated_heatmap(axes, matrix, student_order, teacher_order, "YlOrRd",
                                       annotate=max(matrix.shape) <= 12)
            matched = np.diag(matrix)
            axes.set_title(f"{layer} · mean matched |r| {matched.mean():.2f} · "
                           f"{int(np.sum(matched > strong))}/{matched.size} above {strong:g}",
                           fontsize=8)
            axes.set_xlabel("student component (matched order)", fontsize=7)
            if column == 0:
                axes.set_ylabel(f"{label}\nteacher component", fontsize=8)
    if image is not None:
        figure.colorbar(image, ax=axes_grid.ravel().tolist(), shrink=0.7, label="|r|")
    figure.suptitle(title, fontsize=10)
    path = Path(path)
    save_figure(figure, path)
    return path


def plot_teacher_self_cka(matrices: Sequence[np.ndarray], path: str | Path, *,
                          layer_names: Sequence[str], title: str) -> Path:
    """The teacher-vs-itself panel of the cross-layer CKA figure: the mean over seeds of
    ``matrices`` (one [L, L] linear-CKA matrix per teacher seed, see
    :func:`teacher_self_cka`), values written in the cells, the seed count in the title."""
    stack = np.asarray([np.asarray(m, dtype=np.float64) for m in matrices])
    if stack.ndim != 3 or stack.shape[1:] != (len(layer_names), len(layer_names)):
        raise ValueError(f"expected {len(layer_names)} x {len(layer_names)} matrices, "
                         f"found {stack.shape}")
    figure = new_figure(4.2, 3.6)
    figure.set_layout_engine("constrained")
    axes = figure.subplots()
    image = _annotated_heatmap(axes, stack.mean(axis=0), layer_names, layer_names, "viridis",
                               annotate=True)
    axes.set_xlabel("teacher layer", fontsize=8)
    axes.set_ylabel("teacher layer", fontsize=8)
    axes.set_title(f"teacher vs itself ({len(stack)} seed{'s' if len(stack) != 1 else ''})",
                   fontsize=9)
    figure.colorbar(image, ax=axes, shrink=0.8, label="linear CKA")
    figure.suptitle(title, fontsize=10)
    path = Path(path)
    save_figure(figure, path)
    return path


def teacher_self_cka(layers: Sequence[np.ndarray]) -> np.ndarray:
    """Linear CKA of every teacher layer [n, d_i] with every other [L, L] (symmetric, ones
    on the diagonal)."""
    return cross_layer_linear_cka(layers, layers)


def plot_pca_scatter_teacher_basis(teacher_features, models: Sequence[tuple[str, np.ndarray]],
                                   labels, path: str | Path, *, num_classes: int, title: str,
                                   max_points: int = 2000, seed: int = 0) -> Path:
    """Every model's features [n, d] (``models``: (panel title, features), the teacher's
    own first) projected onto the teacher's first two principal directions, so all panels
    share one coordinate system. ``labels`` [n]; the classes of :func:`scatter_classes`
    are drawn, at most ``max_points`` points (a fixed-seed subsample, the same inputs in
    every panel). A model whose channel count differs from the teacher's gets a note."""
    from matplotlib import colormaps
    from matplotlib.lines import Line2D

    labels = np.asarray(labels)
    classes = scatter_classes(num_classes)
    chosen = np.flatnonzero(np.isin(labels, classes))
    if chosen.size > max_points:
        chosen = np.sort(np.random.default_rng(seed).choice(chosen, max_points, replace=False))
    colours = colormaps["tab10" if len(classes) <= 10 else "tab20"]
    columns = min(4, len(models))
    rows = math.ceil(len(models) / columns)
    figure = new_figure(3.4 * columns + 1.4, 3.2 * rows + 0.6)
    axes_grid = figure.subplots(rows, columns, squeeze=False)
    colour_of = {c: colours(index % colours.N) for index, c in enumerate(classes)}
    for index, axes in enumerate(axes_grid.flat):
        if index >= len(models):
            axes.axis("off")
            continue
        name, features = models[index]
        axes.set_title(name, fontsize=8)
        axes.tick_params(labelsize=6)
        try:
            scores = teacher_basis_projection(teacher_features, np.asarray(features)[chosen])
        except ValueError:
            axes.text(0.5, 0.5, "other channel count\nthan the teacher", ha="center",
                      va="center", transform=axes.transAxes, color="0.4")
            axes.set_xticks([])
            axes.set_yticks([])
            continue
        axes.scatter(scores[:, 0], scores[:, 1], s=5, alpha=0.6, linewidths=0,
                     c=[colour_of[c] for c in labels[chosen]])
        axes.set_xlabel("teacher PC 1", fontsize=7)
        axes.set_ylabel("teacher PC 2", fontsize=7)
        axes.grid(alpha=0.2)
    handles = [Line2D([], [], marker="o", linestyle="", color=colour_of[c], label=str(c))
               for c in classes]
    figure.legend(handles=handles, title="class", fontsize=7, loc="center right",
                  ncol=1 if len(classes) <= 10 else 2)
    subset = "" if len(classes) == num_classes else f", every 10th of {num_classes} classes"
    figure.suptitle(f"{title} (teacher's PCA basis{subset})", fontsize=10)
    figure.tight_layout(rect=(0, 0, 1 - 1.3 / figure.get_figwidth(), 0.95))
    path = Path(path)
    save_figure(figure, path)
    return path
