"""``kdlab plot STUDY``: every progress figure of a study.

- Per run: ``curves.png`` next to the run's ``metrics.json`` (loss and accuracy, train and
  test, per epoch). The PNG carries the SHA-256 of the metrics file it was drawn from in a
  text chunk, so a figure is redrawn only when ``metrics.json`` changed (content, not
  mtime: rsync and copies move mtimes around).
- Study overview, in ``analysis/experiment_{study}/progress/``: ``progress_grid.png`` (one
  cell per data set × row of the grid, a square per alpha × seed coloured by the run's
  state) and ``accuracy_overview.png`` (best test accuracy of completed runs per data set,
  grouped by method and alpha, teacher and pure student as reference lines).
- Every run without complete curves is reported with why.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import runstate
from ..layout import analysis_dir, format_alpha
from ..status import (COMPLETED, FAILED, NOT_STARTED, QUEUED, RUN_STATES, RUNNING, UNREADABLE,
                      WAITING, RunState, study_run_states)
from ..study import Study, load_study
from .common import accuracy_groups, time_text

CURVES_FILE = "curves.png"
PROGRESS_GRID_FILE = "progress_grid.png"
ACCURACY_OVERVIEW_FILE = "accuracy_overview.png"
# PNG text-chunk key holding the SHA-256 of the metrics.json a curves figure was drawn from.
_STAMP_KEY = "kdlab-metrics-sha256"

STATE_COLOURS = {
    COMPLETED: "#2e7d32", RUNNING: "#1e88e5", QUEUED: "#90caf9", FAILED: "#d32f2f",
    WAITING: "#ffb300", NOT_STARTED: "#e0e0e0", UNREADABLE: "#6a1b9a",
}
STATE_LABELS = {
    COMPLETED: "completed", RUNNING: "running", QUEUED: "queued", FAILED: "failed",
    WAITING: "waiting for teacher", NOT_STARTED: "not started", UNREADABLE: "unreadable",
}


def progress_dir(study: Study) -> Path:
    """Where the study's overview figures go."""
    return analysis_dir(study.analysis_dir, study.name) / "progress"


@dataclass
class PlotReport:
    """What one ``kdlab plot`` did. ``incomplete``: (run name, why) for every run without
    complete curves; ``partial`` marks those of them that got curves so far."""

    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    incomplete: list[tuple[str, str, bool]] = field(default_factory=list)  # name, why, partial
    figures: list[Path] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


# ---- per-run curves ------------------------------------------------------------------------

def _figure(width: float, height: float):
    """A Figure on the Agg canvas, without pyplot's global state (safe in any process)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Render to PNG in memory and write atomically (a reader never sees half a PNG)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata=metadata or {})
    runstate.atomic_write_bytes(path, buffer.getvalue())


def _stamp_of(png_path: Path) -> str | None:
    """The metrics hash recorded in an existing curves PNG (None if absent/unreadable)."""
    from PIL import Image

    try:
        with Image.open(png_path) as image:
            return image.info.get(_STAMP_KEY)
    except (OSError, SyntaxError, ValueError):
        return None


def _metric_series(metrics: dict, key: str, path: Path) -> list[float]:
    values = metrics.get(key, [])
    if not isinstance(values, list) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) or v is None for v in values):
        raise runstate.StateFileError(f"{path}: '{key}' is not a list of numbers")
    return [math.nan if v is None else float(v) for v in values]


def plot_run_curves(run_directory: str | Path, title: str, *, force: bool = False) -> str | None:
    """Draw ``curves.png`` of one run from its ``metrics.json``.

    Returns 'written', 'unchanged' (figure already drawn from these exact metrics) or None
    when there is no metrics.json or it holds no epoch yet. Raises StateFileError when the
    file is unreadable.
    """
    run_directory = Path(run_directory)
    metrics_path = run_directory / runstate.METRICS_FILE
    try:
        raw = metrics_path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise runstate.StateFileError(f"{metrics_path}: cannot read ({error.strerror})") from None
    digest = hashlib.sha256(raw).hexdigest()
    png_path = run_directory / CURVES_FILE
    if not force and png_path.exists() and _stamp_of(png_path) == digest:
        return "unchanged"
    try:
        metrics = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise runstate.StateFileError(f"{metrics_path}: not valid JSON ({error})") from None
    if not isinstance(metrics, dict):
        raise runstate.StateFileError(f"{metrics_path}: expected a JSON object")
    series = {key: _metric_series(metrics, key, metrics_path)
              for key in ("train_loss", "test_loss", "train_acc", "test_acc",
                          "train_ce", "train_distill")}
    if not any(series[key] for key in ("train_loss", "test_loss", "train_acc", "test_acc")):
        return None

    figure = _figure(11, 4.2)
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    styles = {"train_loss": ("train", "-", "#1e88e5"), "test_loss": ("test", "-", "#d32f2f"),
              "train_ce": ("train CE term", "--", "#90caf9"),
              "train_distill": ("train distillation term", ":", "#7b1fa2")}
    for key, (label, style, colour) in styles.items():
        values = series[key]
        if values:
            loss_axes.plot(range(1, len(values) + 1), values, style, color=colour, label=label)
    loss_axes.set(xlabel="epoch", ylabel="loss", title="loss")
    for key, label, colour in (("train_acc", "train", "#1e88e5"), ("test_acc", "test", "#d32f2f")):
        values = series[key]
        if values:
            accuracy_axes.plot(range(1, len(values) + 1), values, color=colour, label=label)
    test_accuracy = [v for v in series["test_acc"] if not math.isnan(v)]
    if test_accuracy:
        best = max(test_accuracy)
        best_epoch = series["test_acc"].index(best) + 1
        accuracy_axes.plot([best_epoch], [best], "o", color="#d32f2f")
        accuracy_axes.annotate(f"best {best:.2f}% (epoch {best_epoch})", (best_epoch, best),
                               textcoords="offset points", xytext=(-10, -18), ha="right",
                               fontsize=9, bbox={"boxstyle": "round", "facecolor": "white",
                                                 "edgecolor": "#cccccc", "alpha": 0.9})
    accuracy_axes.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for axes in (loss_axes, accuracy_axes):
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
        axes.xaxis.get_major_locator().set_params(integer=True)
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    save_figure(figure, png_path, {_STAMP_KEY: digest})
    return "written"


def _epoch_text(state: RunState) -> str:
    status = state.status or {}
    epochs = status.get("epochs")
    if epochs is None and isinstance(status.get("config"), dict):
        epochs = status["config"].get("epochs")
    return f"epoch {status.get('epoch', 0)}/{epochs if epochs is not None else '?'}"


def _why_incomplete(state: RunState) -> str:
    if state.state == NOT_STARTED:
        return "not started"
    if state.state == WAITING:
        return f"not started: waiting for the teacher ({state.detail})"
    if state.state == RUNNING:
        return f"in progress ({_epoch_text(state)})"
    if state.state == QUEUED:
        return f"queued ({_epoch_text(state)})"
    if state.state == FAILED:
        reason = (state.status or {}).get("reason") or "no reason recorded"
        return f"failed at {_epoch_text(state)}: {reason}"
    if state.state == UNREADABLE:
        return f"unreadable file {state.detail}"
    return state.detail


# ---- the study overview -------------------------------------------------------------------

def _grid_rows(study: Study) -> list[tuple[str, str, list[float | None]]]:
    """(row key, label, alphas of the row) for the progress grid."""
    rows = [("teacher", f"teacher\n{study.teacher}", [None]),
            ("pure", f"pure student\n{study.student}", [None])]
    rows += [(method, method, list(study.alphas)) for method in study.methods]
    return rows


def progress_cells(study: Study, states: list[RunState]) -> dict[tuple, str]:
    """State of every square of the progress grid, keyed (data set, row, alpha, seed) with
    row 'teacher', 'pure' or the method name and alpha None for the pure rows."""
    cells = {}
    for state in states:
        row = state.role if state.role in ("teacher", "pure") else state.spec.method
        cells[(state.spec.dataset, row, state.spec.alpha, state.spec.seed)] = state.state
    return cells


def progress_title(study: Study, states: list[RunState], made: float) -> str:
    counts = {name: 0 for name in RUN_STATES}
    for state in states:
        counts[state.state] += 1
    parts = [f"{counts[name]} {STATE_LABELS[name]}" for name in RUN_STATES
             if counts[name] and name != COMPLETED]
    head = f"{study.name}: {counts[COMPLETED]}/{len(states)} runs completed"
    return head + ("; " + ", ".join(parts) if parts else "") + f" — made {time_text(made)}"


def plot_progress_grid(study: Study, states: list[RunState], path: Path, made: float) -> None:
    """Rows: teacher, pure student, each method; columns: data sets; in each cell one square
    per alpha (sub-rows) × seed (sub-columns), coloured by state."""
    from matplotlib.patches import Patch, Rectangle

    state_of = progress_cells(study, states)
    rows = _grid_rows(study)
    seeds = list(study.seeds)
    cell_width = len(seeds) + 1.0        # squares + gap
    row_heights = [len(alphas) + 0.8 for _, _, alphas in rows]
    total_height = sum(row_heights)
    x_range = (-7.0, len(study.datasets) * cell_width + 0.2)   # labels on the left
    y_range = (total_height + 1.8, -2.0)        # y grows downwards, like a table
    inches_per_unit = 0.3                       # one square is about 0.27 in
    title_inches = 0.6                          # room above the grid for a two-line title
    height_inches = inches_per_unit * (y_range[0] - y_range[1]) + title_inches
    # at least wide enough for the legend and the title
    width_inches = max(7.5, inches_per_unit * (x_range[1] - x_range[0]))
    figure = _figure(width_inches, height_inches)
    axes = figure.add_axes([0.0, 0.0, 1.0, 1.0 - title_inches / height_inches])
    axes.set_xlim(*x_range)
    axes.set_ylim(*y_range)
    axes.set_aspect("equal", adjustable="box")  # squares stay square; the box is centred
    axes.axis("off")

    for column, dataset in enumerate(study.datasets):
        x0 = column * cell_width
        axes.text(x0 + len(seeds) / 2, -0.9, dataset, ha="center", va="bottom",
                  fontsize=10, fontweight="bold")
        for index, seed in enumerate(seeds):
            axes.text(x0 + index + 0.5, -0.15, f"s{seed}", ha="center", va="bottom", fontsize=7,
                      color="#555555")
    y = 0.0
    for (key, label, alphas), height in zip(rows, row_heights):
        axes.text(-6.9, y + len(alphas) / 2, label, ha="left", va="center", fontsize=9)
        for sub_row, alpha in enumerate(alphas):
            if alpha is not None:
                axes.text(-0.15, y + sub_row + 0.5, f"α={format_alpha(alpha)}", ha="right",
                          va="center", fontsize=7, color="#555555")
            for column, dataset in enumerate(study.datasets):
                for index, seed in enumerate(seeds):
                    state = state_of.get((dataset, key, alpha, seed), NOT_STARTED)
                    axes.add_patch(Rectangle((column * cell_width + index + 0.06,
                                              y + sub_row + 0.06), 0.88, 0.88,
                                             facecolor=STATE_COLOURS[state],
                                             edgecolor="white", linewidth=0.5))
        y += height

    counts = {name: sum(1 for s in states if s.state == name) for name in RUN_STATES}
    handles = [Patch(facecolor=STATE_COLOURS[name], label=f"{STATE_LABELS[name]} ({counts[name]})")
               for name in RUN_STATES]
    axes.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=False,
                bbox_to_anchor=(0.5, 0.0))
    figure.text(0.5, 0.995, progress_title(study, states, made), ha="center", va="top",
                fontsize=10, wrap=True)
    save_figure(figure, path)


def plot_accuracy_overview(study: Study, states: list[RunState], path: Path, made: float) -> None:
    """Per data set: mean ± std (dots: each seed) of the best test accuracy of completed KD
    runs per method, one colour per alpha; teacher and pure student means as lines."""
    from matplotlib import colormaps

    groups = accuracy_groups(study, states)
    datasets = list(study.datasets)
    figure = _figure(max(4.5 * len(datasets), 6.0), 4.8)
    axes_list = figure.subplots(1, len(datasets), squeeze=False)[0]
    colours = colormaps["viridis"]
    alpha_colour = {alpha: colours(0.15 + 0.7 * i / max(1, len(study.alphas) - 1))
                    for i, alpha in enumerate(study.alphas)}
    completed = sum(1 for s in states if s.state == COMPLETED)
    for axes, dataset in zip(axes_list, datasets):
        by_key = {(g.method, g.alpha): g for g in groups if g.dataset == dataset}
        values = [a for g in by_key.values() for a in g.accuracies]
        if not values:
            axes.text(0.5, 0.5, "no completed runs", ha="center", va="center",
                      transform=axes.transAxes, color="#777777")
            axes.set_xticks([])
            axes.set_yticks([])
            axes.set_title(dataset)
            continue
        for key, style, colour in (("teacher", "--", "#333333"), ("pure", ":", "#d32f2f")):
            group = by_key[(key, None)]
            if group.mean is not None:
                axes.axhline(group.mean, linestyle=style, color=colour, linewidth=1.2,
                             label=f"{group.label(study)}: {group.mean_std_text()} (n={group.n})")
        width = 0.8 / max(1, len(study.alphas))
        for position, method in enumerate(study.methods):
            for index, alpha in enumerate(study.alphas):
                group = by_key[(method, alpha)]
                if not group.accuracies:
                    continue
                x = position - 0.4 + width * (index + 0.5)
                axes.scatter([x] * group.n, group.accuracies, s=10, color=alpha_colour[alpha],
                             alpha=0.5, zorder=2)
                axes.errorbar([x], [group.mean], yerr=[group.std or 0.0], fmt="o",
                              color=alpha_colour[alpha], capsize=3, markersize=6, zorder=3)
        low, high = min(values), max(values)
        margin = max(1.0, 0.1 * (high - low))
        axes.set_ylim(max(0.0, low - margin), min(100.0, high + margin))
        axes.set_xlim(-0.6, max(len(study.methods), 1) - 0.4)
        axes.set_xticks(range(len(study.methods)), study.methods, rotation=30, ha="right",
                        fontsize=8)
        axes.set_title(dataset)
        axes.set_ylabel("best test accuracy (%)")
        axes.grid(axis="y", alpha=0.3)
        handles, labels = axes.get_legend_handles_labels()
        if handles:
            axes.legend(fontsize=7, loc="lower left")
    if study.alphas and study.methods:
        from matplotlib.lines import Line2D
        figure.legend(handles=[Line2D([], [], marker="o", linestyle="", color=alpha_colour[a],
                                      label=f"α={format_alpha(a)}") for a in study.alphas],
                      loc="upper right", fontsize=8, ncol=len(study.alphas), frameon=False)
    figure.suptitle(f"{study.name}: best test accuracy of completed runs ({completed} of "
                    f"{len(states)}) — made {time_text(made)}", fontsize=10, x=0.02, ha="left")
    figure.tight_layout(rect=(0, 0, 1, 0.93))
    save_figure(figure, path)


# ---- the command -----------------------------------------------------------------------------

def plot_study(study: Study, *, progress=None) -> PlotReport:
    """Per-run curves for every run with metrics, then the two overview figures.

    ``progress``: optional callable(str) given one line per figure drawn.
    """
    report = PlotReport()
    states = study_run_states(study)
    for name in RUN_STATES:
        report.counts[name] = sum(1 for s in states if s.state == name)
    for state in states:
        name = state.spec.name
        outcome = None
        if state.state != UNREADABLE:
            title = f"{name} — {state.detail}"
            try:
                outcome = plot_run_curves(state.run_dir, title)
            except runstate.StateFileError as error:
                report.incomplete.append((name, f"unreadable file {error}", False))
                continue
        if outcome == "written":
            report.written.append(name)
            if progress:
                progress(f"curves  {state.run_dir / CURVES_FILE}")
        elif outcome == "unchanged":
            report.unchanged.append(name)
        if state.state == COMPLETED:
            if outcome is None:
                report.incomplete.append((name, "completed but has no metrics.json epochs",
                                          False))
            continue
        report.incomplete.append((name, _why_incomplete(state), outcome is not None))

    made = time.time()
    out = progress_dir(study)
    for filename, draw in ((PROGRESS_GRID_FILE, plot_progress_grid),
                           (ACCURACY_OVERVIEW_FILE, plot_accuracy_overview)):
        draw(study, states, out / filename, made)
        report.figures.append(out / filename)
        if progress:
            progress(f"overview  {out / filename}")
    return report


def format_report(report: PlotReport) -> str:
    lines = [f"curves: {len(report.written)} drawn, {len(report.unchanged)} unchanged "
             f"(metrics.json did not change)"]
    lines += [f"overview: {path}" for path in report.figures]
    if report.incomplete:
        lines.append(f"runs without complete curves ({len(report.incomplete)}):")
        for name, why, partial in report.incomplete:
            lines.append(f"  {name}: {why}" + ("  [curves so far drawn]" if partial else ""))
    return "\n".join(lines)


def command(args) -> int:
    study = load_study(args.study)
    report = plot_study(study)
    print(format_report(report))
    return 0
