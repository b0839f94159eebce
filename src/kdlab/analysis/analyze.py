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
import os
import sys
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


from .. import layout
from ..errors import UserError
from ..layout import RunSpec
from ..runstate import atomic_write_text
from ..study import Study, load_study
from . import compute

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


def resolve_jobs(jobs: int) -> int:
    if jobs < 0:
        raise UserError(f"--jobs {jobs}: expected 0 (all cores) or a positive number")
    return jobs or os.cpu_count() or 1


# ---- workers ----------------------------------------------------------------------------

def _init_worker() -> None:
    """One BLAS/OpenMP thread per worker process: the pool already uses every core."""
    import matplotlib

    matplotlib.use("Agg")
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)


class _InlineExecutor:
    """``--jobs 1``: tasks run one after the other in this process (plain tracebacks)."""

    def shutdown(self, wait: bool = True) -> None:
        del wait


def _executor(jobs: int):
    if jobs == 1:
        return _InlineExecutor()
    import multiprocessing

    # spawn: workers start clean (no copied BLAS thread pools or torch state from the parent)
    return ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker)


def _run_all(executor, tasks: list[tuple], description: str, show_progress: bool):
    """Run (key, function, *args) tasks; yield (key, result) as they finish."""
    if isinstance(executor, _InlineExecutor):
        done = ((key, function(*args)) for key, function, *args in tasks)
    else:
        futures = {executor.submit(function, *args): key for key, function, *args in tasks}
        done = ((futures[future], future.result()) for future in as_completed(futures))
    if show_progress and tasks:
        from tqdm import tqdm

        done = tqdm(done, total=len(tasks), desc=description, file=sys.stderr, leave=False)
    yield from done


# ---- the pass ------------------------------------------------------------------------------

def _cache_dir(root: Path, dataset: str) -> Path:
    return root / "cache" / dataset


def analyze_study(study: Study, jobs: int = 0, log: Callable[[str], None] = print,
                  show_progress: bool = True) -> AnalysisReport:
    """Analyse whatever part of the study's grid has representations; write metrics.csv,
    accuracy.{csv,md}, figures/ and report.html under the study's analysis folder."""
    from . import figures, report as html_report, tables

    jobs = resolve_jobs(jobs)
    root = layout.analysis_dir(study.analysis_dir, study.name)
    result = AnalysisReport(root=root)
    expected = expected_entries(study)
    for entry in expected:
        (result.available if entry.path.is_file() else result.missing).append(entry)
    expected_paths = {entry.path for entry in expected}
    stray = sorted(path for path in (root / "representations").glob("*/*.npz")
                   if path not in expected_paths)
    if stray:
        result.notes.append(f"{len(stray)} representation file(s) outside the study's grid "
                            f"ignored (e.g. {stray[0]})")
    if not result.available:
        raise UserError(f"no representations of study {study.name} under "
                        f"{root / 'representations'}: expected .npz files from "
                        f"'kdlab extract {study.path}' (run it after training)")
    log(f"analyze {study.name}: {len(result.available)} representations, "
        f"{len(result.missing)} of the grid missing, {jobs} worker(s)")

    executor = _executor(jobs)
    try:
        # 1. per model
        started = time.perf_counter()
        model_results: dict[Entry, dict] = {}
        tasks = [(entry, compute.model_task, str(entry.path),
                  str(_cache_dir(root, entry.dataset) / f"model_{entry.path.stem}.npz"))
                 for entry in result.available]
        for entry, outcome in _run_all(executor, tasks, "per-model metrics", show_progress):
            if outcome["error"]:
                result.problems.append(f"{entry.label}: skipped: {outcome['error']}")
                continue
            model_results[entry] = outcome
            _count(result, outcome, "models")
        result.step_seconds["per-model metrics"] = time.perf_counter() - started
        log(f"  per-model metrics: {result.models_computed} computed, "
            f"{result.models_cached} from cache "
            f"({result.step_seconds['per-model metrics']:.1f} s)")

        # 2. per teacher-student pair (same data set and seed), one task per teacher
        started = time.perf_counter()
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
        tasks = []
        for teacher, students in students_of.items():
            cache = _cache_dir(root, teacher.dataset)
            tasks.append((teacher, compute.teacher_task, str(teacher.path),
                          str(cache / f"model_{teacher.path.stem}.npz"),
                          [(str(student.path), str(cache / f"model_{student.path.stem}.npz"),
                            str(cache / f"pair_{teacher.path.stem}__{student.path.stem}.json"))
                           for student in students]))
        pair_results: dict[Entry, dict] = {}
        for teacher, outcomes in _run_all(executor, tasks, "teacher-student metrics",
                                          show_progress):
            for entry, outcome in zip(students_of[teacher], outcomes):
                if outcome["error"]:
                    result.problems.append(f"{entry.label}: no pair metrics: "
                                           f"{outcome['error']}")
                    continue
                pair_results[entry] = outcome
                _count(result, outcome, "pairs")
        result.step_seconds["pair metrics"] = time.perf_counter() - started
        log(f"  teacher-student metrics: {result.pairs_computed} computed, "
            f"{result.pairs_cached} from cache ({result.step_seconds['pair metrics']:.1f} s)")

        # 3. tables
        started = time.perf_counter()
        frame = _metrics_frame(model_results, pair_results)
        root.mkdir(parents=True, exist_ok=True)
        metrics_csv = root / "metrics.csv"
        atomic_write_text(metrics_csv, frame.to_csv(index=False, float_format="%.6g"))
        accuracy = tables.accuracy_table(frame, study)
        atomic_write_text(root / "accuracy.csv", accuracy.to_csv(index=False, float_format="%.6g"))
        atomic_write_text(root / "accuracy.md", tables.accuracy_markdown(accuracy, study))
        result.outputs += [metrics_csv, root / "accuracy.csv", root / "accuracy.md"]
        _note_ica_failures(frame, result)
        result.step_seconds["tables"] = time.perf_counter() - started

        # 4. figures
        started = time.perf_counter()
        scatter = {entry: (outcome["scatter"], outcome["scatter_labels"])
                   for entry, outcome in model_results.items()}
        figure_notes = figures.draw_study(study, frame, scatter, executor, result,
                                          show_progress=show_progress)
        result.notes += figure_notes
        result.step_seconds["figures"] = time.perf_counter() - started
        log(f"  figures: {result.figures_drawn} drawn, {result.figures_kept} unchanged "
            f"({result.step_seconds['figures']:.1f} s)")
    finally:
        executor.shutdown(wait=True)

    # 5. report
    html_report.write_report(study, result, accuracy)
    result.outputs.append(root / "report.html")
    return result


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
