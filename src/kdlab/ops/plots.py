"""``kdlab plot STUDY``: every progress figure of a study.

- Per run: ``curves.png`` next to the run's ``metrics.json`` (loss and accuracy, train and
  test, per epoch; see :mod:`.plot_curves`), redrawn only when its source changed. An
  earlier-code run in progress has no metrics.json: its ``checkpoint.pth`` gives the curves.
- Study overview, in ``analysis/experiment_{study}/progress/``: ``progress_grid.png`` (one
  cell per data set × row of the grid, a square per alpha × seed coloured by the run's
  state) and ``accuracy_overview.png`` (best test accuracy of completed runs per data set,
  grouped by method and alpha, teacher and pure student as reference lines).
- A completed run at chance accuracy is *collapsed*: marked in both overview figures, left
  out of the accuracy overview's means and axis range (one collapsed run would flatten
  every other line), and its curves drawn on a 0–100 % axis.
- Every run without complete curves is reported: one line per reason with a count; every
  unreadable file is also named on its own line, with why.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from ..run import state_files
from ..run.errors import UserError
from ..run.layout import analysis_dir, format_alpha
from ..study.progress import (COMPLETED, FAILED, NOT_STARTED, QUEUED, RUN_STATES, RUNNING,
    UNREADABLE, WAITING, RunState, study_run_states)
from ..study.progress import outside_grid, outside_grid_summary
from ..study.study_file import Pair, Study, load_study
from ..study.summaries import accuracy_groups, group_keys, time_text
from ..analysis.figure_files import new_figure, save_figure
from .plot_curves import CURVES_FILE, Curves, num_classes_of, plot_run_curves

PROGRESS_GRID_FILE = "progress_grid.png"
ACCURACY_OVERVIEW_FILE = "accuracy_overview.png"
# A completed run at chance: its own colour in the progress grid (not a run state).
COLLAPSED = "collapsed"

STATE_COLOURS = {
    COMPLETED: "#2e7d32", COLLAPSED: "#8d6e63", RUNNING: "#1e88e5", QUEUED: "#90caf9",
    FAILED: "#d32f2f", WAITING: "#ffb300", NOT_STARTED: "#e0e0e0", UNREADABLE: "#6a1b9a",
}
STATE_LABELS = {
    COMPLETED: "completed", COLLAPSED: "completed, collapsed (at chance)", RUNNING: "running",
    QUEUED: "queued", FAILED: "failed", WAITING: "waiting for teacher",
    NOT_STARTED: "not started", UNREADABLE: "unreadable",
}
_GRID_STATES = (COMPLETED, COLLAPSED) + RUN_STATES[1:]


def progress_dir(study: Study) -> Path:
    """Where the study's overview figures go."""
    return analysis_dir(study.analysis_dir, study.name) / "progress"


@dataclass
class PlotReport:
    """What one ``kdlab plot`` did. ``incomplete``: (run name, why, partial) for every run
    without complete curves, ``partial`` marking those that got curves so far;
    ``reasons``: run name -> its reason category (one of :data:`REASONS`)."""

    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    incomplete: list[tuple[str, str, bool]] = field(default_factory=list)  # name, why, partial
    reasons: dict[str, str] = field(default_factory=dict)
    collapsed: list[str] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    outside_grid: list[dict] = field(default_factory=list)  # as status --json lists them

    def add_incomplete(self, name: str, reason: str, why: str, partial: bool) -> None:
        self.incomplete.append((name, why, partial))
        self.reasons[name] = reason


# ---- runs, their titles and why they lack curves -----------------------------------------

def run_is_collapsed(state: RunState) -> bool:
    """A completed run whose best accuracy is at chance (:attr:`RunState.collapsed`, the
    rule ``status`` uses)."""
    return state.collapsed


def _planned_epochs(status: dict | None) -> int | None:
    status = status or {}
    epochs = status.get("epochs")
    if epochs is None and isinstance(status.get("config"), dict):
        epochs = status["config"].get("epochs")
    return epochs if isinstance(epochs, int) and not isinstance(epochs, bool) else None


def _epoch_text(state: RunState, planned: int | None = None) -> str:
    """'epoch 7/12'; without a planned count (the earlier code's config names none) just
    'epoch 7' rather than a question mark."""
    status = state.status or {}
    planned = _planned_epochs(status) or planned
    epoch = status.get("epoch", 0)
    return f"epoch {epoch}/{planned}" if planned else f"epoch {epoch}"


def run_title(state: RunState, curves: Curves) -> str:
    """Title of a run's curves: its name, state and epochs, the count taken from the
    metrics when neither status.json nor the config names one."""
    planned = _planned_epochs(state.status) or curves.planned_epochs
    if planned is None and state.state == COMPLETED:
        planned = curves.epochs
    done = curves.epochs
    progress = f"epoch {done}/{planned}" if planned else f"epoch {done}"
    words = {COMPLETED: "completed", RUNNING: "in progress", FAILED: "failed",
             QUEUED: "queued"}.get(state.state, state.state.replace("_", " "))
    text = f"{state.spec.name} — {words}, {progress}"
    if state.max_acc is not None:
        text += f", best {state.max_acc:.2f}%"
    if run_is_collapsed(state):
        text += " — COLLAPSED (at chance)"
    if curves.source.name == state_files.CHECKPOINT_FILE:
        text += f" (from {state_files.CHECKPOINT_FILE})"
    return text


# reason category of a run without complete curves, in the order the report lists them
REASONS = ("in progress", "queued", "failed", "waiting for the teacher", "not started",
           "unreadable file", "completed without curves", "cannot write curves")


def _why_incomplete(state: RunState) -> tuple[str, str]:
    """(reason category, one line) of a run that is not completed."""
    if state.state == NOT_STARTED:
        return "not started", "not started"
    if state.state == WAITING:
        return "waiting for the teacher", f"not started: waiting for the teacher ({state.detail})"
    if state.state == RUNNING:
        return "in progress", f"in progress ({_epoch_text(state)})"
    if state.state == QUEUED:
        return "queued", f"queued ({_epoch_text(state)})"
    if state.state == FAILED:
        reason = (state.status or {}).get("reason") or "no reason recorded"
        return "failed", f"failed at {_epoch_text(state)}: {reason}"
    if state.state == UNREADABLE:
        return "unreadable file", f"unreadable file {state.detail}"
    return state.state.replace("_", " "), state.detail


# ---- the study overview -------------------------------------------------------------------

def _grid_rows(study: Study) -> list[tuple[Pair, str, str, list[float | None]]]:
    """(pair, row key, label, alphas of the row) for the progress grid: each pair's
    teacher, pure student and methods (a method's label names the pair in a study of
    several)."""
    rows = []
    for pair in study.pairs:
        rows += [(pair, "teacher", f"teacher\n{pair.teacher}", [None]),
                 (pair, "pure", f"pure student\n{pair.student}", [None])]
        rows += [(pair, method, f"{method}\n{pair.label}" if study.has_several_pairs
                  else method, study.alpha_levels()) for method in study.methods]
    return rows


def progress_cells(study: Study, states: list[RunState]) -> dict[tuple, str]:
    """State of every square of the progress grid, keyed (data set, pair, row, alpha,
    seed) with row 'teacher', 'pure' or the method name and alpha None for the pure rows
    (a teacher shared by two pairs has a square in each); a collapsed completed run is
    :data:`COLLAPSED`."""
    cells = {}
    for state in states:
        shown = COLLAPSED if run_is_collapsed(state) else state.state
        for dataset, pair, _, row, alpha in group_keys(study, state):
            cells[(dataset, pair, row, alpha, state.spec.seed)] = shown
    return cells


def progress_title(study: Study, states: list[RunState], made: float) -> str:
    counts = {name: 0 for name in RUN_STATES}
    for state in states:
        counts[state.state] += 1
    parts = [f"{counts[name]} {STATE_LABELS[name]}" for name in RUN_STATES
             if counts[name] and name != COMPLETED]
    collapsed = sum(1 for state in states if run_is_collapsed(state))
    head = f"{study.name}: {counts[COMPLETED]}/{len(states)} runs completed"
    head += f" ({collapsed} collapsed)" if collapsed else ""
    return head + ("; " + ", ".join(parts) if parts else "") + f" — made {time_text(made)}"


def plot_progress_grid(study: Study, states: list[RunState], path: Path, made: float) -> None:
    """Rows: teacher, pure student, each method; columns: data sets; in each cell one square
    per alpha (sub-rows) × seed (sub-columns), coloured by state (a collapsed run: its own
    colour and a ×)."""
    from matplotlib.patches import Patch, Rectangle

    state_of = progress_cells(study, states)
    rows = _grid_rows(study)
    seeds = list(study.seeds)
    cell_width = len(seeds) + 1.0        # squares + gap
    row_heights = [len(alphas) + 0.8 for *_, alphas in rows]
    total_height = sum(row_heights)
    x_range = (-7.0, len(study.datasets) * cell_width + 0.2)   # labels on the left
    y_range = (total_height + 2.6, -2.0)        # y grows downwards, like a table
    inches_per_unit = 0.3                       # one square is about 0.27 in
    title_inches = 0.6                          # room above the grid for a two-line title
    height_inches = inches_per_unit * (y_range[0] - y_range[1]) + title_inches
    # at least wide enough for the legend and the title
    width_inches = max(7.5, inches_per_unit * (x_range[1] - x_range[0]))
    figure = new_figure(width_inches, height_inches)
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
    for (pair, key, label, alphas), height in zip(rows, row_heights):
        axes.text(-6.9, y + len(alphas) / 2, label, ha="left", va="center", fontsize=9)
        for sub_row, alpha in enumerate(alphas):
            if alpha is not None:
                axes.text(-0.15, y + sub_row + 0.5, f"α={format_alpha(alpha)}", ha="right",
                          va="center", fontsize=7, color="#555555")
            for column, dataset in enumerate(study.datasets):
                for index, seed in enumerate(seeds):
                    state = state_of.get((dataset, pair, key, alpha, seed), NOT_STARTED)
                    x = column * cell_width + index
                    axes.add_patch(Rectangle((x + 0.06, y + sub_row + 0.06), 0.88, 0.88,
                                             facecolor=STATE_COLOURS[state],
                                             edgecolor="white", linewidth=0.5))
                    if state == COLLAPSED:
                        axes.text(x + 0.5, y + sub_row + 0.5, "×", ha="center", va="center",
                                  color="white", fontsize=9, fontweight="bold")
        y += height

    counts = {name: 0 for name in _GRID_STATES}
    for state in state_of.values():
        counts[state] += 1
    handles = [Patch(facecolor=STATE_COLOURS[name], label=f"{STATE_LABELS[name]} ({counts[name]})")
               for name in _GRID_STATES]
    axes.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=False,
                bbox_to_anchor=(0.5, 0.0))
    figure.text(0.5, 0.995, progress_title(study, states, made), ha="center", va="top",
                fontsize=10, wrap=True)
    save_figure(figure, path)


def overview_groups(study: Study, states: list[RunState]):
    """The accuracy groups of the overview without their collapsed runs, and the collapsed
    runs' accuracies per group key ((data set, pair, role, method, alpha) as in
    ``group_keys``)."""
    collapsed: dict[tuple, list[float]] = {}
    for state in states:
        if run_is_collapsed(state):
            for key in group_keys(study, state):
                collapsed.setdefault(key, []).append(state.max_acc)
    groups = accuracy_groups(study, states)
    for group in groups:
        for value in collapsed.get(group.key, []):
            group.accuracies.remove(value)
    return groups, collapsed


def _mark_collapsed(axes, x: float, values: list[float]) -> None:
    """Collapsed runs as ▼ at the bottom edge with their accuracy, outside the scale."""
    from matplotlib.transforms import blended_transform_factory

    transform = blended_transform_factory(axes.transData, axes.transAxes)
    axes.plot([x], [0.025], marker="v", color=STATE_COLOURS[COLLAPSED], markersize=8,
              linestyle="", transform=transform, clip_on=False, zorder=4)
    axes.text(x, 0.05, "\n".join(f"{value:.2f}%" for value in sorted(values)),
              transform=transform, ha="center", va="bottom", fontsize=7,
              color=STATE_COLOURS[COLLAPSED])


def _accuracy_panel(axes, study: Study, by_key: dict, collapsed: dict,
                    alpha_colour: dict) -> None:
    """One data set × pair's panel; ``by_key``: (method, alpha) -> its AccuracyGroup."""
    values = [a for g in by_key.values() for a in g.accuracies]
    for key, style, colour in (("teacher", "--", "#333333"), ("pure", ":", "#d32f2f")):
        group = by_key[(key, None)]
        if group.mean is not None:
            axes.axhline(group.mean, linestyle=style, color=colour, linewidth=1.2,
                         label=f"{group.label(study)}: {group.mean_std_text()} (n={group.n})")
        if collapsed.get(group.key):
            _mark_collapsed(axes, -0.5, collapsed[group.key])
    levels = study.alpha_levels()
    width = 0.8 / max(1, len(levels))
    for position, method in enumerate(study.methods):
        for index, alpha in enumerate(levels):
            group = by_key[(method, alpha)]
            x = position - 0.4 + width * (index + 0.5)
            if collapsed.get(group.key):
                _mark_collapsed(axes, x, collapsed[group.key])
            if not group.accuracies:
                continue
            axes.scatter([x] * group.n, group.accuracies, s=10, color=alpha_colour[alpha],
                         alpha=0.5, zorder=2)
            axes.errorbar([x], [group.mean], yerr=[group.std or 0.0], fmt="o",
                          color=alpha_colour[alpha], capsize=3, markersize=6, zorder=3)
    shown_collapsed = [collapsed[g.key] for g in by_key.values() if collapsed.get(g.key)]
    if not values:   # every completed run collapsed: scale to those
        values = [a for found in shown_collapsed for a in found]
    low, high = min(values), max(values)
    margin = max(1.0, 0.1 * (high - low))
    axes.set_ylim(max(0.0, low - margin), min(100.0, high + margin))
    if shown_collapsed:
        axes.plot([], [], marker="v", linestyle="", color=STATE_COLOURS[COLLAPSED],
                  label="collapsed run (at chance): left out of the scale and the mean")


def plot_accuracy_overview(study: Study, states: list[RunState], path: Path, made: float):
    """Per data set (and pair, in a study of several): mean ± std (dots: each seed) of the
    best test accuracy of completed KD runs per method, one colour per alpha; teacher and
    pure student means as lines. Collapsed runs are marked at the bottom edge and left out
    of the means and the scale. Returns the figure (one axes per data set × pair, in the
    study's order)."""
    from matplotlib import colormaps

    groups, collapsed = overview_groups(study, states)
    panels = [(dataset, pair) for dataset in study.datasets for pair in study.pairs]
    figure = new_figure(max(4.5 * len(panels), 6.0), 4.8)
    axes_list = figure.subplots(1, len(panels), squeeze=False)[0]
    colours = colormaps["viridis"]
    levels = study.alpha_levels()
    alpha_colour = {alpha: colours(0.15 + 0.7 * i / max(1, len(levels) - 1))
                    for i, alpha in enumerate(levels)}
    completed = sum(1 for s in states if s.state == COMPLETED)
    for axes, (dataset, pair) in zip(axes_list, panels):
        by_key = {(g.method, g.alpha): g for g in groups
                  if g.dataset == dataset and g.pair == pair}
        axes.set_title(f"{dataset}\n{pair.label}" if study.has_several_pairs else dataset)
        if not any(g.accuracies for g in by_key.values()) and not any(
                collapsed.get(g.key) for g in by_key.values()):
            axes.text(0.5, 0.5, "no completed runs", ha="center", va="center",
                      transform=axes.transAxes, color="#777777")
            axes.set_xticks([])
            axes.set_yticks([])
            continue
        _accuracy_panel(axes, study, by_key, collapsed, alpha_colour)
        axes.set_xlim(-0.7, max(len(study.methods), 1) - 0.4)
        axes.set_xticks(range(len(study.methods)), study.methods, rotation=30, ha="right",
                        fontsize=8)
        axes.set_ylabel("best test accuracy (%)")
        axes.grid(axis="y", alpha=0.3)
        handles, labels = axes.get_legend_handles_labels()
        if handles:
            axes.legend(fontsize=7, loc="best")
    if study.alphas and study.methods:
        from matplotlib.lines import Line2D
        figure.legend(handles=[Line2D([], [], marker="o", linestyle="", color=alpha_colour[a],
                                      label=f"α={format_alpha(a)}") for a in study.alphas],
                      loc="upper right", bbox_to_anchor=(0.995, 0.945), fontsize=8,
                      ncol=len(study.alphas), frameon=False)
    figure.suptitle(f"{study.name}: best test accuracy of completed runs ({completed} of "
                    f"{len(states)}) — made {time_text(made)}", fontsize=10, x=0.02, ha="left")
    figure.tight_layout(rect=(0, 0, 1, 0.89))
    save_figure(figure, path)
    return figure


# ---- the command -----------------------------------------------------------------------------

def ensure_output_dir(path: Path) -> None:
    """Create ``path`` for figures, or the writer's one line naming it (a file in the way, a
    read-only directory) before anything is drawn."""
    state_files.ensure_directory(path)


def _plot_run(state: RunState, report: PlotReport, full_scale: bool, progress) -> None:
    """Curves of one run, and its entry in the report."""
    name = state.spec.name
    outcome = None
    collapsed = run_is_collapsed(state)
    if collapsed:
        report.collapsed.append(name)
    if state.state != UNREADABLE:
        classes = num_classes_of(state.spec.dataset)
        try:
            outcome = plot_run_curves(state.run_dir, lambda curves: run_title(state, curves),
                                      full_scale=full_scale or collapsed,
                                      chance=100.0 / classes if classes else None)
        except state_files.StateFileError as error:
            report.add_incomplete(name, "unreadable file", f"unreadable file {error}", False)
            return
        except OSError as error:
            report.add_incomplete(name, "cannot write curves", f"cannot write "
                                  f"{state.run_dir / CURVES_FILE} ({error.strerror or error})",
                                  False)
            return
    if outcome == "written":
        report.written.append(name)
        if progress:
            progress(f"curves  {state.run_dir / CURVES_FILE}")
    elif outcome == "unchanged":
        report.unchanged.append(name)
    if state.state == COMPLETED:
        if outcome is None:
            report.add_incomplete(name, "completed without curves",
                                  "completed but has no metrics.json epochs", False)
        return
    reason, why = _why_incomplete(state)
    report.add_incomplete(name, reason, why, outcome is not None)


def plot_study(study: Study, *, progress=None, full_scale: bool = False) -> PlotReport:
    """Per-run curves for every run with metrics, then the two overview figures.

    ``progress``: optional callable(str) given one line per figure drawn;
    ``full_scale``: every run's accuracy axis from 0 to 100 % (collapsed runs always).
    Raises UserError, before drawing anything, when the figures' directory cannot be written.
    """
    out = progress_dir(study)
    ensure_output_dir(out)
    report = PlotReport()
    states = study_run_states(study)
    report.outside_grid = outside_grid(study, states)
    for name in RUN_STATES:
        report.counts[name] = sum(1 for s in states if s.state == name)
    for state in states:
        _plot_run(state, report, full_scale, progress)

    made = time.time()
    for filename, draw in ((PROGRESS_GRID_FILE, plot_progress_grid),
                           (ACCURACY_OVERVIEW_FILE, plot_accuracy_overview)):
        try:
            draw(study, states, out / filename, made)
        except OSError as error:
            raise UserError(f"cannot write {out / filename}: {error.strerror or error}") \
                from None
        report.figures.append(out / filename)
        if progress:
            progress(f"overview  {out / filename}")
    return report


def format_report(report: PlotReport, verbose: bool = False) -> str:
    """What plot did: counts, the overview files, then one line per reason a run lacks
    complete curves (with a count; ``verbose`` lists the runs under each). Every unreadable
    file is named on its own line first, verbose or not."""
    lines = [f"curves: {len(report.written)} drawn, {len(report.unchanged)} unchanged "
             f"(metrics.json did not change)"]
    lines += [f"overview: {path}" for path in report.figures]
    if report.collapsed:
        lines.append(f"collapsed (completed at chance accuracy): {len(report.collapsed)}"
                     + (" — " + ", ".join(report.collapsed) if verbose else ""))
    # a damaged file is always named (the reason names it), verbose or not
    lines += [why for name, why, _ in report.incomplete
              if report.reasons[name] == "unreadable file"]
    outside = outside_grid_summary(report.outside_grid)
    if outside:   # the line status prints: nothing on disk is silently left out
        lines.append(f"outside the grid: {outside}"
                     + "".join(f"\n  {entry['run_dir']}: {entry['reason']}"
                               for entry in report.outside_grid if verbose))
    if report.incomplete:
        lines.append(f"runs without complete curves ({len(report.incomplete)}):")
        known = [r for r in REASONS if r in report.reasons.values()]
        others = sorted(set(report.reasons.values()) - set(REASONS))
        for reason in known + others:
            entries = [e for e in report.incomplete if report.reasons[e[0]] == reason]
            partial = sum(1 for _, _, drawn in entries if drawn)
            lines.append(f"  {reason}: {len(entries)}"
                         + (f" ({partial} with curves so far)" if partial else ""))
            if verbose:
                lines += [f"    {name}: {why}" + ("  [curves so far drawn]" if drawn else "")
                          for name, why, drawn in entries]
        if not verbose:
            lines.append("  (kdlab plot --verbose lists the runs)")
    return "\n".join(lines)


def command(args) -> int:
    study = load_study(args.study)
    report = plot_study(study, full_scale=getattr(args, "full_accuracy_axis", False))
    print(format_report(report, verbose=getattr(args, "verbose", False)))
    return 0
