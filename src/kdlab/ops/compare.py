"""``kdlab compare STUDY``: kdlab's accuracies beside reference numbers (the published tables
of the field's benchmark, or a study's own CSV of earlier results).

Per data set, (teacher, student) pair and row of the grid (teacher, pure student, each
method x alpha): kdlab's mean, Student-t 95 % interval and n over the completed seeds of the
accuracy the study reports (``reported_accuracy``), the reference number, the difference
and whether the reference lies inside the interval. Written as ``compare.md``,
``compare.csv`` and ``compare.png`` (one panel per data set and pair) under the study's
analysis directory, and printed.

Reference CSV: one row per (dataset, teacher, student, method, top1, source, epoch); method
``teacher`` / ``pure`` are the teacher and the student trained alone; ``epoch`` says whether
the number is the last epoch's or the best epoch's accuracy.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

from ..run import state_files
from ..run.layout import analysis_dir, format_alpha
from ..study.stats import SeedSummary, summarize
from ..study.progress import COMPLETED, RunState, study_run_states
from ..study.study_file import Study, load_study
from ..study.references import Reference, read_references
from ..study.summaries import markdown_table, selection_accuracy

TEACHER_ROW, PURE_ROW = "teacher", "pure"
# Runs that will still report a number: trained now, queued, or waiting for their teacher.
_UNFINISHED = ("running", "queued", "waiting", "not_started")


def study_pairs(study: Study) -> list[tuple[str, str]]:
    """The (teacher, student) pairs a study trains."""
    return [(pair.teacher, pair.student) for pair in study.pairs]


def pair_key(state: RunState, teacher: str, student: str) -> tuple | None:
    """The grid row of ``state`` within the pair (teacher, student), None outside it: the
    teacher's run, the student's pure run (a teacher run where the student is another
    pair's teacher) and the student's runs distilled from this teacher."""
    spec = state.spec
    if state.role == "kd":
        if (spec.model, spec.teacher) != (student, teacher):
            return None
        return (spec.dataset, "kd", spec.method, spec.alpha)
    if spec.model == teacher and state.role == "teacher":
        return (spec.dataset, "teacher", "teacher", None)
    if spec.model == student:
        return (spec.dataset, "pure", "pure", None)
    return None


@dataclass
class Comparison:
    """One row of the comparison: kdlab's cell (``row``: 'teacher', 'pure' or the method;
    ``alpha`` None for teacher and pure) against one reference number (None: none known).
    ``summary``: the completed seeds' reported accuracy; ``unfinished``: runs of the cell
    that have not completed (training, queued, waiting, not started)."""

    dataset: str
    teacher: str
    student: str
    row: str
    alpha: float | None
    summary: SeedSummary
    unfinished: int
    failed: int
    reference: Reference | None

    @property
    def difference(self) -> float | None:
        """kdlab's mean minus the reference (percentage points)."""
        if self.reference is None or self.summary.mean is None:
            return None
        return self.summary.mean - self.reference.top1

    @property
    def inside(self) -> bool | None:
        """Whether the reference lies inside kdlab's 95 % interval (None without one)."""
        if self.reference is None or self.summary.ci_low is None:
            return None
        return self.summary.ci_low <= self.reference.top1 <= self.summary.ci_high


def compare(study: Study, states: list[RunState] | None = None,
            references: list[Reference] | None = None) -> list[Comparison]:
    """Every row of the study's grid for every pair, against the matching references (one
    :class:`Comparison` per reference; one without a reference when none matches). A
    reference matches a row by data set, teacher, student and method (any alpha)."""
    if states is None:
        states = study_run_states(study)
    if references is None:
        references = read_references(study.compare_reference)
    accuracy_key, _ = selection_accuracy(study)
    rows = []
    for teacher, student in study_pairs(study):
        cells: dict[tuple, list[RunState]] = {}
        for state in states:
            key = pair_key(state, teacher, student)
            if key is not None:
                cells.setdefault(key, []).append(state)
        for dataset in study.datasets:
            keys = [(dataset, "teacher", "teacher", None), (dataset, "pure", "pure", None)]
            keys += [(dataset, "kd", method, alpha) for method in study.methods
                     for alpha in study.alpha_levels()]
            for key in keys:
                cell_states = cells.get(key, [])
                values = [_recorded(state.status, accuracy_key) for state in cell_states
                          if state.state == COMPLETED]
                summary = summarize([value for value in values if value is not None])
                unfinished = sum(1 for state in cell_states if state.state in _UNFINISHED)
                failed = sum(1 for state in cell_states
                             if state.state not in _UNFINISHED and state.state != COMPLETED)
                row = key[2]
                matching = [reference for reference in references
                            if (reference.dataset, reference.teacher, reference.student,
                                reference.method) == (dataset, teacher, student, row)]
                for reference in matching or [None]:
                    rows.append(Comparison(dataset, teacher, student, row, key[3], summary,
                                           unfinished, failed, reference))
    return rows


def _recorded(status: dict | None, key: str) -> float | None:
    value = (status or {}).get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


# ---- text ----------------------------------------------------------------------------------

HEADERS = ["row", "α", "kdlab mean", "95 % CI", "n", "reference", "source", "Δ (points)",
           "reference inside CI"]


def _cells(item: Comparison, reported: str) -> list[str]:
    summary = item.summary
    n_text = str(summary.n)
    if item.unfinished:
        n_text += f" (+{item.unfinished} still training or to come)"
    if item.failed:
        n_text += f" ({item.failed} failed)"
    mean = "—" if summary.mean is None else f"{summary.mean:.2f}"
    interval = ("—" if summary.ci_low is None
                else f"[{summary.ci_low:.2f}, {summary.ci_high:.2f}]")
    reference = item.reference
    if reference is None:
        published, source, difference, inside = "no reference number", "—", "—", "—"
    else:
        published = f"{reference.top1:.2f} ({reference.epoch} epoch)"
        if reference.epoch != reported:
            published += f"; this study reports the {reported} epoch"
        source = reference.source
        difference = "—" if item.difference is None else f"{item.difference:+.2f}"
        inside = ({True: "yes", False: "no"}.get(item.inside)
                  or ("— (no interval below 2 seeds)" if summary.n == 1 else "—"))
    alpha = "—" if item.alpha is None else format_alpha(item.alpha)
    return [item.row, alpha, mean, interval, n_text, published, source, difference, inside]


def comparison_markdown(study: Study, rows: list[Comparison], reference_name: str) -> str:
    """The comparison as Markdown: one table per data set and pair, each stating which
    accuracy it reports."""
    _, words = selection_accuracy(study)
    lines = [f"# {study.name}: kdlab against {reference_name}", ""]
    for dataset, teacher, student in dict.fromkeys((r.dataset, r.teacher, r.student)
                                                   for r in rows):
        lines += [f"## {dataset}: {teacher} → {student}", "",
                  f"kdlab: {words} (reported_accuracy = \"{study.reported_accuracy}\"); "
                  "mean, Student-t 95 % interval of the mean and n over the completed seeds. "
                  "Δ = kdlab mean − reference.", ""]
        table = [_cells(item, study.reported_accuracy) for item in rows
                 if (item.dataset, item.teacher, item.student) == (dataset, teacher, student)]
        lines += [markdown_table(HEADERS, table), ""]
    return "\n".join(lines)


def comparison_csv(rows: list[Comparison]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["dataset", "teacher", "student", "row", "alpha", "mean", "ci95_low",
                     "ci95_high", "n", "unfinished", "failed", "reference", "reference_epoch",
                     "source", "difference", "inside_ci"])
    for item in rows:
        summary, reference = item.summary, item.reference
        writer.writerow([item.dataset, item.teacher, item.student, item.row,
                         "" if item.alpha is None else item.alpha,
                         _number(summary.mean), _number(summary.ci_low),
                         _number(summary.ci_high), summary.n, item.unfinished, item.failed,
                         "" if reference is None else reference.top1,
                         "" if reference is None else reference.epoch,
                         "" if reference is None else reference.source,
                         _number(item.difference),
                         "" if item.inside is None else str(item.inside).lower()])
    return buffer.getvalue()


def _number(value: float | None) -> str:
    return "" if value is None else repr(round(value, 6))


# ---- the figure ----------------------------------------------------------------------------

def comparison_figure(study: Study, rows: list[Comparison]) -> bytes:
    """PNG: one panel per data set and pair; per row of the grid kdlab's mean with its 95 %
    interval as error bar (a plain point with one seed) and the reference numbers as marks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys((r.dataset, r.teacher, r.student) for r in rows))
    figure, axes = plt.subplots(len(panels), 1, figsize=(7.5, 3.2 * len(panels)),
                                squeeze=False)
    _, words = selection_accuracy(study)
    for axis, panel in zip(axes[:, 0], panels):
        items = [item for item in rows if (item.dataset, item.teacher, item.student) == panel]
        labels = list(dict.fromkeys(_label(item) for item in items))
        position = {label: index for index, label in enumerate(labels)}
        drawn_kdlab = drawn_reference = False
        for item in items:
            x = position[_label(item)]
            summary = item.summary
            if summary.mean is not None:
                error = (None if summary.ci_low is None
                         else [[summary.mean - summary.ci_low], [summary.ci_high - summary.mean]])
                axis.errorbar([x], [summary.mean], yerr=error, fmt="o", color="tab:blue",
                              capsize=4, label=None if drawn_kdlab else "kdlab (95 % CI)")
                drawn_kdlab = True
            if item.reference is not None:
                axis.plot([x + 0.15], [item.reference.top1], marker="_", markersize=14,
                          markeredgewidth=2.5, color="tab:red", linestyle="none",
                          label=None if drawn_reference else "reference")
                drawn_reference = True
            if summary.mean is None:
                axis.annotate("no runs yet" if item.unfinished else "no runs", (x, 0.02),
                              xycoords=("data", "axes fraction"), ha="center", fontsize=7,
                              color="0.4")
        axis.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        axis.set_xlim(-0.6, len(labels) - 0.4)
        axis.set_ylabel("top-1 accuracy (%)")
        axis.set_title(f"{panel[0]}: {panel[1]} → {panel[2]}", fontsize=10)
        axis.grid(axis="y", alpha=0.3)
        if drawn_kdlab or drawn_reference:
            axis.legend(fontsize=7, loc="best")
    figure.suptitle(f"{study.name}: {words.split(':')[0]}", fontsize=9)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def _label(item: Comparison) -> str:
    return item.row if item.alpha is None else f"{item.row} α={format_alpha(item.alpha)}"


# ---- the command ---------------------------------------------------------------------------

def write_comparison(study: Study, output_dir: str | Path | None = None,
                     states: list[RunState] | None = None) -> tuple[str, list[Path]]:
    """Compute the comparison and write compare.md, compare.csv and compare.png; returns the
    Markdown text and the paths written."""
    rows = compare(study, states)
    reference_name = (f"the reference numbers of {study.compare_reference}"
                      if study.compare_reference is not None
                      else "the published numbers (CRD and DKD papers)")
    output = (Path(output_dir) if output_dir is not None
              else analysis_dir(study.analysis_dir, study.name) / "compare")
    markdown = comparison_markdown(study, rows, reference_name)
    paths = [output / "compare.md", output / "compare.csv", output / "compare.png"]
    state_files.atomic_write_text(paths[0], markdown + "\n")
    state_files.atomic_write_text(paths[1], comparison_csv(rows))
    state_files.atomic_write_bytes(paths[2], comparison_figure(study, rows))
    return markdown, paths


def command(args) -> int:
    study = load_study(args.study)
    markdown, paths = write_comparison(study, args.output_dir)
    print(markdown)
    for path in paths:
        print(f"wrote {path}")
    return 0
