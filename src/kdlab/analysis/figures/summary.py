"""Summary figures under ``figures/{dataset}/summary/``: pca_scatter_{last stage}, the UMAP
of the teacher's last stage with students' last stages mapped into it (umap-learn), and the
accuracy table. Files are named by the student's last stage (``layer3`` for the ResNets).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .common import (PURE, TEACHER, Grid, Values, alpha_text, figure_title, no_data, plt,
                     save_figure, subplots)
from ..metrics import subsample_indices
from ..store import load_representation, stage_names_of

def draw_summary(grid: Grid, values: Values, payload: dict, out: Path
                 ) -> tuple[list[Path], list[str]]:
    """The summary group: PCA scatter and accuracy table; (files, notes). The UMAP is a
    group of its own (:func:`umap_figure`)."""
    written = [path for path in (pca_scatter(grid, payload, out),) if path is not None]
    written.append(accuracy_table_figure(grid, values, out))
    return written, []


def class_colours(classes: int) -> np.ndarray:
    """RGBA colours [classes, 4], all distinct: tab10 up to 10 classes, tab20 up to 20,
    else evenly spaced hues of a continuous map (never ``label % 10``)."""
    if classes <= 10:
        return plt.get_cmap("tab10")(np.arange(classes))
    if classes <= 20:
        return plt.get_cmap("tab20")(np.arange(classes))
    return plt.get_cmap("turbo")(np.linspace(0.0, 1.0, classes))


def scatter_panels(grid: Grid, panels: list, classes: int, title: str, path: Path) -> Path:
    """One scatter panel per (title, coords [m, 2] or None, labels [m] or None), coloured by
    class; a legend of classes (a colour bar above 20 classes)."""
    columns = min(4, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure, axes = subplots(rows, columns, width=3.2, height=3.0)
    colours = class_colours(classes)
    for index, ax in enumerate(axes.flat):
        if index >= len(panels):
            ax.axis("off")
            continue
        name, coords, labels = panels[index]
        ax.set_title(name, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        if coords is None or not np.isfinite(coords).any():
            no_data(ax, "no run" if coords is None else "degenerate (rank < 2)")
            continue
        ax.scatter(coords[:, 0], coords[:, 1], c=colours[labels], s=2, alpha=0.6,
                   linewidths=0)
    if classes <= 20:
        handles = [plt.Line2D([], [], marker="o", ls="", color=colours[c], label=str(c))
                   for c in range(classes)]
        figure.legend(handles=handles, title="class", fontsize=7, loc="outside right center")
    else:
        mappable = plt.cm.ScalarMappable(cmap="turbo", norm=plt.Normalize(0, classes - 1))
        figure.colorbar(mappable, ax=axes.ravel().tolist(), shrink=0.8, label="class")
    figure_title(figure, grid, title)
    save_figure(figure, path)
    return path


def pca_scatter(grid: Grid, payload: dict, out: Path) -> Path | None:
    """The last stage in each chosen model's first two principal components."""
    panels = payload["scatter_panels"]  # [(title, coords [m,2] or None, labels [m] or None)]
    classes = payload["num_classes"]
    if not panels or classes is None:
        return None
    return scatter_panels(grid, panels, classes, f"{grid.last_stage} (the last stage), first "
                          "two principal components (each model's own PCA)",
                          out / f"pca_scatter_{grid.last_stage}.png")


def accuracy_table_figure(grid: Grid, values: Values, out: Path) -> Path:
    """The accuracy table as a figure: rows teacher, pure, methods; columns alphas."""
    row_names = [f"teacher ({grid.teacher_model})", f"pure ({grid.student_model})"] + list(grid.methods)
    # KD cells without an alpha (the benchmark's objective) share the "—" column
    levels = [alpha for alpha in grid.alphas if alpha is not None]
    column_names = ["—"] + [f"α = {alpha_text(a)}" for a in levels]
    text = [["" for _ in column_names] for _ in row_names]
    shade = np.full((len(row_names), len(column_names)), np.nan)
    for row, (who, alphas) in enumerate([(TEACHER, [None]), (PURE, [None])]
                                        + [(m, list(grid.alphas)) for m in grid.methods]):
        for alpha in alphas:
            column = 0 if alpha is None else 1 + levels.index(alpha)
            mean, std, count = values.stats(who, alpha, "logits", "test_acc")
            if count == 0:
                text[row][column] = "n/a"
            elif count == 1:
                text[row][column] = f"{mean:.2f} (1)"
            else:
                text[row][column] = f"{mean:.2f} ± {std:.2f} ({count})"
            shade[row, column] = mean
    figure, axes = subplots(1, 1, width=1.45 * len(column_names) + 1.8,
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
    save_figure(figure, out / "accuracy_table.png")
    return out / "accuracy_table.png"


def map_into(features: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``features`` [n, p] mapped into the space of ``target`` [n, q] by the affine least-
    squares fit (the channels of two networks are not aligned)."""
    mean, target_mean = features.mean(axis=0), target.mean(axis=0)
    mapping, *_ = np.linalg.lstsq(features - mean, target - target_mean, rcond=None)
    return (features - mean) @ mapping + target_mean


def teacher_umap(teacher: np.ndarray, others: list[np.ndarray]):
    """The 2-D UMAP of ``teacher`` [n, d] (seed 0) and each of ``others`` [m, d] placed in
    it by ``transform``: (teacher coords [n, 2], [coords [m, 2] per other]).

    The Euclidean distances are computed by SciPy and given to UMAP precomputed: on fewer
    than 4,096 points umap-learn's own exact path calls its distance function from Python
    once per pair (4 million calls for 2,000 points), which made this figure take most of
    a first analysis' figure time."""
    import warnings

    import umap
    from scipy.spatial.distance import cdist

    reducer = umap.UMAP(n_components=2, random_state=0, n_jobs=1, metric="precomputed")
    with warnings.catch_warnings():
        # umap notes that precomputed distances rule out inverse_transform (unused) and
        # that transform expects distances to the training points (what it gets here)
        warnings.filterwarnings("ignore", message=".*precomputed metric.*", category=UserWarning)
        embedded = reducer.fit_transform(cdist(teacher, teacher))
        placed = [reducer.transform(cdist(other, teacher)) for other in others]
    return embedded, placed


def umap_figure(grid: Grid, payload: dict, out: Path):
    """The teacher's last stage in a 2-D UMAP (McInnes et al. 2018), with each method's chosen
    student mapped into the teacher's feature space (:func:`map_into`) and placed by the
    teacher's UMAP. Returns the figure path, or a note saying why it was skipped."""
    try:
        import umap  # optional extra: pip install 'kdlab[umap]'
    except ImportError:
        return (f"{grid.dataset}: UMAP projection skipped: umap-learn is not installed "
                "(optional extra: pip install 'kdlab[umap]')")

    teacher_path = payload.get("umap_teacher")
    if teacher_path is None:
        return f"{grid.dataset}: UMAP projection skipped: no teacher representation"
    teacher = load_representation(teacher_path)
    index = subsample_indices(teacher["labels"].shape[0], 2000, 0)
    teacher_features = teacher[stage_names_of(teacher)[-1]][index].astype(np.float64)
    labels = teacher["labels"][index]
    titles, students = [], []
    for title, path in payload.get("umap_students", []):
        arrays = load_representation(path)
        student = arrays[stage_names_of(arrays)[-1]][index].astype(np.float64)
        titles.append(title)
        students.append(map_into(student, teacher_features))
    embedded, placed = teacher_umap(teacher_features, students)
    panels = [("teacher", embedded, labels)] + [(title, coords, labels)
                                                for title, coords in zip(titles, placed)]
    return scatter_panels(grid, panels, int(labels.max()) + 1, f"{grid.last_stage} (the last "
                          "stage) in the teacher's UMAP space (students mapped by least "
                          "squares)", out / f"umap_teacher_{grid.last_stage}.png")
