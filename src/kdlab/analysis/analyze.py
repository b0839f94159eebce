"""``kdlab analyze STUDY``: representations -> metrics.csv, accuracy tables, figures, report.

The study's grid says which representation files are expected; whichever of them exist are
analysed and the others are listed as missing (and show as gaps in the figures). Work runs
in ``--jobs`` worker processes (BLAS limited to one thread each, so N workers use N cores,
not N x cores); per-model and per-pair results and figures are cached
(:mod:`kdlab.analysis.compute`, :mod:`kdlab.analysis.figures`), so a re-run after one new
run recomputes only what depends on it.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from .. import layout
from ..errors import UserError
from ..layout import RunSpec
from ..runstate import atomic_write_text
from ..study import Study, load_study
from . import compute, workers
from .workers import resolve_jobs  # noqa: F401  (kdlab.analysis.analyze.resolve_jobs)

TEACHER = "teacher"
PURE = "pure"
COLUMNS = ["dataset", "method", "alpha", "seed", "layer", "metric", "value"]


@dataclass(frozen=True)
class Entry:
    """One expected representation of the study grid. ``method`` is the KD method, or
    'teacher' / 'pure' (baseline student); ``alpha`` None for those two."""

    dataset: str
    method: str
    alpha: float | None
    seed: int
    spec: RunSpec
    path: Path

    @property
    def label(self) -> str:
        if self.alpha is None:
            return f"{self.dataset} {self.method} s{self.seed}"
        return f"{self.dataset} {self.method} a{layout.format_alpha(self.alpha)} s{self.seed}"


@dataclass
class AnalysisReport:
    """What one ``analyze`` pass produced and noticed."""

    root: Path
    available: list[Entry] = field(default_factory=list)
    missing: list[Entry] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)        # files skipped, with reasons
    notes: list[str] = field(default_factory=list)           # everything else worth saying
    models_computed: int = 0
    models_cached: int = 0
    pairs_computed: int = 0
    pairs_cached: int = 0
    figures_drawn: int = 0
    figures_kept: int = 0
    metric_seconds: dict[str, float] = field(default_factory=dict)  # summed worker CPU time
    step_seconds: dict[str, float] = field(default_factory=dict)    # wall time per step
    outputs: list[Path] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{len(self.available)} representations ({len(self.missing)} of the grid "
                f"missing); models {self.models_computed} computed / {self.models_cached} "
                f"cached; pairs {self.pairs_computed} computed / {self.pairs_cached} cached; "
                f"figures {self.figures_drawn} drawn / {self.figures_kept} unchanged; "
                f"report {self.root / 'report.html'}")


def expected_entries(study: Study) -> list[Entry]:
    """Every representation the study's grid can produce, in grid order."""
    entries = []
    for role, specs in ((TEACHER, study.teacher_runs()), (PURE, study.pure_student_runs()),
                        ("kd", study.kd_runs())):
        for spec in specs:
            path = layout.representation_path(study.analysis_dir, study.name, spec, role)
            method = spec.method if role == "kd" else role
            entries.append(Entry(spec.dataset, method, spec.alpha, spec.seed, spec, path))
    return entries


def _cache_paths(study: Study, teacher: Entry, student: Entry) -> tuple[str, str, str]:
    """(student representation, its model cache, the pair's cache) for the pair task."""
    return (str(student.path),
            str(layout.model_cache_path(study.analysis_dir, study.name, student.dataset,
                                        student.path)),
            str(layout.pair_cache_path(study.analysis_dir, study.name, teacher.dataset,
                                       teacher.path, student.path)))


def _model_cache(study: Study, entry: Entry) -> str:
    return str(layout.model_cache_path(study.analysis_dir, study.name, entry.dataset,
                                       entry.path))


def _inventory(study: Study, result: AnalysisReport) -> None:
    """Sort the grid's representations into available and missing; note stray files."""
    expected = expected_entries(study)
    for entry in expected:
        (result.available if entry.path.is_file() else result.missing).append(entry)
    expected_paths = {entry.path for entry in expected}
    stray = sorted(path for path in layout.representations_dir(
        study.analysis_dir, study.name).glob("*/*.npz") if path not in expected_paths)
    if stray:
        result.notes.append(f"{len(stray)} representation file(s) outside the study's grid "
                            f"ignored (e.g. {stray[0]})")
    if not result.available:
        raise UserError(f"no representations of study {study.name} under "
                        f"{layout.representations_dir(study.analysis_dir, study.name)}: "
                        f"expected .npz files from 'kdlab extract {study.path}' (run it "
                        "after training)")


def _model_step(study: Study, pool, result: AnalysisReport, show_progress: bool) -> dict:
    """Per-model metrics of every available representation: Entry -> outcome."""
    model_results: dict[Entry, dict] = {}
    tasks = [(entry, compute.model_task, str(entry.path), _model_cache(study, entry))
             for entry in result.available]
    for entry, outcome in workers.run_all(pool, tasks, "per-model metrics", show_progress):
        _collect(result, entry, outcome, "models", model_results)
    return model_results


def _students_of_teachers(model_results: dict, result: AnalysisReport) -> dict:
    """Teacher Entry -> its students (same data set and seed); notes seeds without one."""
    teachers = {(e.dataset, e.seed): e for e in model_results if e.method == TEACHER}
    students_of: dict[Entry, list[Entry]] = defaultdict(list)
    without_teacher: dict[tuple[str, int], int] = defaultdict(int)
    for entry in model_results:
        if entry.method == TEACHER:
            continue
        teacher = teachers.get((entry.dataset, entry.seed))
        if teacher is None:
            without_teacher[(entry.dataset, entry.seed)] += 1
        else:
            students_of[teacher].append(entry)
    for (dataset, seed), count in sorted(without_teacher.items()):
        result.notes.append(f"{dataset} seed {seed}: no teacher representation, so "
                            f"{count} student run(s) have no teacher-student metrics")
    return students_of


def _pair_step(study: Study, pool, model_results: dict, result: AnalysisReport,
               show_progress: bool) -> dict:
    """Teacher-student metrics, one task per teacher: student Entry -> outcome."""
    students_of = _students_of_teachers(model_results, result)
    tasks = [(teacher, compute.teacher_task, str(teacher.path), _model_cache(study, teacher),
              [_cache_paths(study, teacher, student) for student in students])
             for teacher, students in students_of.items()]
    pair_results: dict[Entry, dict] = {}
    for teacher, outcomes in workers.run_all(pool, tasks, "teacher-student metrics",
                                             show_progress):
        for entry, outcome in zip(students_of[teacher], outcomes):
            _collect(result, entry, outcome, "pairs", pair_results)
    return pair_results


def _table_step(study: Study, frame, result: AnalysisReport):
    """metrics.csv and the accuracy tables; returns the accuracy table."""
    from . import tables

    def path(name):
        return layout.analysis_table_path(study.analysis_dir, study.name, name)

    path("metrics.csv").parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path("metrics.csv"), frame.to_csv(index=False, float_format="%.6g"))
    accuracy = tables.accuracy_table(frame, study)
    atomic_write_text(path("accuracy.csv"), accuracy.to_csv(index=False, float_format="%.6g"))
    atomic_write_text(path("accuracy.md"), tables.accuracy_markdown(accuracy, study))
    result.outputs += [path("metrics.csv"), path("accuracy.csv"), path("accuracy.md")]
    _note_ica_failures(frame, result)
    return accuracy


def _figure_step(study: Study, pool, frame, model_results: dict, result: AnalysisReport,
                 show_progress: bool) -> None:
    from . import figures

    scatter = {entry: (outcome["scatter"], outcome["scatter_labels"])
               for entry, outcome in model_results.items()}
    drawn = figures.draw_study(study, frame, scatter, pool, show_progress=show_progress)
    result.figures_drawn += drawn.drawn
    result.figures_kept += drawn.kept
    result.notes += drawn.notes


class _Step:
    """Times one step of the pass into ``result.step_seconds`` and logs it."""

    def __init__(self, result: AnalysisReport, name: str) -> None:
        self.result, self.name = result, name

    def __enter__(self):
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc_info) -> None:
        self.result.step_seconds[self.name] = time.perf_counter() - self.started


def analyze_study(study: Study, jobs: int = 0, log: Callable[[str], None] = print,
                  show_progress: bool = True) -> AnalysisReport:
    """Analyse whatever part of the study's grid has representations; write metrics.csv,
    accuracy.{csv,md}, figures/ and report.html under the study's analysis folder."""
    from . import report as html_report

    jobs = workers.resolve_jobs(jobs)
    result = AnalysisReport(root=layout.analysis_dir(study.analysis_dir, study.name))
    _inventory(study, result)
    log(f"analyze {study.name}: {len(result.available)} representations, "
        f"{len(result.missing)} of the grid missing, {jobs} worker(s)")
    pool = workers.executor(jobs)
    try:
        with _Step(result, "per-model metrics") as step:
            model_results = _model_step(study, pool, result, show_progress)
        log(f"  per-model metrics: {result.models_computed} computed, "
            f"{result.models_cached} from cache ({result.step_seconds[step.name]:.1f} s)")
        with _Step(result, "pair metrics") as step:
            pair_results = _pair_step(study, pool, model_results, result, show_progress)
        log(f"  teacher-student metrics: {result.pairs_computed} computed, "
            f"{result.pairs_cached} from cache ({result.step_seconds[step.name]:.1f} s)")
        with _Step(result, "tables"):
            frame = _metrics_frame(model_results, pair_results)
            accuracy = _table_step(study, frame, result)
        with _Step(result, "figures") as step:
            _figure_step(study, pool, frame, model_results, result, show_progress)
        log(f"  figures: {result.figures_drawn} drawn, {result.figures_kept} unchanged "
            f"({result.step_seconds[step.name]:.1f} s)")
    finally:
        pool.shutdown(wait=True)
    result.outputs.append(html_report.write_report(study, result, accuracy))
    return result


def _collect(result: AnalysisReport, entry: Entry, outcome: dict, kind: str,
             into: dict) -> None:
    """Keep one task's outcome in ``into``, or record its error as a problem."""
    if outcome["error"]:
        what = "skipped" if kind == "models" else "no pair metrics"
        result.problems.append(f"{entry.label}: {what}: {outcome['error']}")
        return
    into[entry] = outcome
    _count(result, outcome, kind)


def _count(result: AnalysisReport, outcome: dict, kind: str) -> None:
    if outcome["cached"]:
        setattr(result, f"{kind}_cached", getattr(result, f"{kind}_cached") + 1)
    else:
        setattr(result, f"{kind}_computed", getattr(result, f"{kind}_computed") + 1)
    for name, seconds in outcome["timings"].items():
        result.metric_seconds[name] = result.metric_seconds.get(name, 0.0) + seconds


def _metrics_frame(model_results: dict, pair_results: dict):
    """Long table: one row per data set x method x alpha x seed x layer x metric."""
    import pandas as pd

    records = []
    for results in (model_results, pair_results):
        for entry, outcome in results.items():
            alpha = entry.alpha if entry.alpha is not None else math.nan
            records += [(entry.dataset, entry.method, alpha, entry.seed, layer, metric, value)
                        for layer, metric, value in outcome["rows"]]
    frame = pd.DataFrame.from_records(records, columns=COLUMNS)
    frame["value"] = frame["value"].astype(float)
    return frame.sort_values(["dataset", "method", "alpha", "seed", "layer", "metric"],
                             na_position="first", kind="stable").reset_index(drop=True)


def _note_ica_failures(frame, result: AnalysisReport) -> None:
    failed = frame[(frame["metric"] == "ica_converged") & (frame["value"] == 0)]
    if len(failed):
        examples = ", ".join(
            f"{row.dataset} {row.method}"
            + ("" if math.isnan(row.alpha) else f" a{layout.format_alpha(row.alpha)}")
            + f" s{row.seed} {row.layer}" for row in failed.head(5).itertuples())
        more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
        result.notes.append(f"FastICA did not converge for {len(failed)} model-layer fit(s) "
                            f"({examples}{more}); their ICA numbers are flagged "
                            "ica_converged = 0 in metrics.csv")


def command(args) -> int:
    """``kdlab analyze STUDY [--jobs N]``."""
    study = load_study(args.study)
    report = analyze_study(study, jobs=args.jobs)
    for problem in report.problems:
        print(f"  problem: {problem}")
    print(f"analyze {study.name}: {report.summary()}")
    return 0
