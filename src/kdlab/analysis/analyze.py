"""``kdlab analyze STUDY``: representations -> metrics.csv, dynamics.csv, accuracy tables,
figures, report.

The study's grid says which representation files are expected; whichever of them exist are
analysed and the others are listed as missing (and show as gaps in the figures). Work runs
in ``--jobs`` worker processes (BLAS limited to one thread each, so N workers use N cores,
not N x cores); per-model and per-pair results and figures are cached
(:mod:`kdlab.analysis.compute`, :mod:`kdlab.analysis.figures`), so a re-run after one new
run recomputes only what depends on it.

A run's snapshots (representations of its weights after chosen epochs, in the
``snapshots/`` folder beside the final ones, :func:`kdlab.run.layout.representation_path`) are
analysed as more models with the same registry and cache, each snapshot paired with its
teacher's *final* representation, into ``dynamics.csv`` (:mod:`kdlab.analysis.dynamics`);
a new snapshot costs one model and one pair.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..run import layout
from ..run.errors import UserError
from ..run.layout import RunSpec
from ..run.state_files import atomic_write_text
from ..study.study_file import Pair, Role, Study, load_study
from . import compute, dynamics, floors, store, workers

TEACHER = "teacher"
PURE = "pure"
# pair: the study's pair the row is shown with ('ResNet56 -> ResNet20'); a teacher shared by
# two pairs has its per-model rows under each
COLUMNS = ["dataset", "pair", "method", "alpha", "seed", "layer", "metric", "value"]


@dataclass(frozen=True)
class Entry:
    """One expected representation of the study grid. ``method`` is the KD method, or
    'teacher' / 'pure' (baseline student); ``alpha`` None for those two. ``pairs``: the
    study's pairs it is shown with (a teacher shared by two pairs: both; a KD run: its
    own); ``named``: the study has several pairs, so the label names the model or pair."""

    dataset: str
    method: str
    alpha: float | None
    seed: int
    spec: RunSpec
    path: Path
    pairs: tuple[Pair, ...] = ()
    named: bool = False
    epoch: int | None = None   # a snapshot's (1-based) epoch; None: the final weights

    @property
    def model(self) -> str:
        """The model whose representation this is."""
        return self.spec.model

    @property
    def role(self) -> str:
        return self.method if self.method in (TEACHER, PURE) else "kd"

    @property
    def label(self) -> str:
        who = ""
        if self.named:
            who = f" {self.spec.teacher}->{self.model}" if self.spec.teacher else f" {self.model}"
        snapshot = "" if self.epoch is None else f" epoch {self.epoch}"
        if self.alpha is None:
            return f"{self.dataset} {self.method}{who} s{self.seed}{snapshot}"
        return (f"{self.dataset} {self.method} a{layout.format_alpha(self.alpha)}{who} "
                f"s{self.seed}{snapshot}")


@dataclass
class AnalysisReport:
    """What one ``analyze`` pass produced and noticed."""

    root: Path
    available: list[Entry] = field(default_factory=list)
    missing: list[Entry] = field(default_factory=list)
    unreadable: list[tuple[Entry, str]] = field(default_factory=list)  # present, not usable
    problems: list[str] = field(default_factory=list)        # files skipped, with reasons
    notes: list[str] = field(default_factory=list)           # everything else worth saying
    models_computed: int = 0
    models_cached: int = 0
    pairs_computed: int = 0
    pairs_cached: int = 0
    floors_computed: int = 0
    floors_cached: int = 0
    snapshots: list[Entry] = field(default_factory=list)    # snapshot representations found
    snapshot_models_computed: int = 0
    snapshot_models_cached: int = 0
    snapshot_pairs_computed: int = 0
    snapshot_pairs_cached: int = 0
    dynamics: object = None    # this pass's dynamics.csv frame (dynamics.COLUMNS)
    figures_drawn: int = 0
    figures_kept: int = 0
    metric_seconds: dict[str, float] = field(default_factory=dict)  # summed worker CPU time
    step_seconds: dict[str, float] = field(default_factory=dict)    # wall time per step
    outputs: list[Path] = field(default_factory=list)

    @property
    def readable(self) -> list[Entry]:
        """Available representations that are complete files."""
        unreadable = {entry for entry, _ in self.unreadable}
        return [entry for entry in self.available if entry not in unreadable]

    def counts(self) -> str:
        text = f"{len(self.readable)} representations"
        if self.unreadable:
            text += (f", {len(self.unreadable)} unreadable ("
                     + ", ".join(entry.label for entry, _ in self.unreadable) + ")")
        return text + f", {len(self.missing)} of the grid missing"

    def summary(self) -> str:
        return (f"{self.counts()}; models {self.models_computed} computed / {self.models_cached} "
                f"cached; pairs {self.pairs_computed} computed / {self.pairs_cached} cached; "
                f"noise floors {self.floors_computed} computed / {self.floors_cached} cached; "
                + (f"snapshots {len(self.snapshots)}: models {self.snapshot_models_computed} "
                   f"computed / {self.snapshot_models_cached} cached, pairs "
                   f"{self.snapshot_pairs_computed} computed / {self.snapshot_pairs_cached} "
                   "cached; " if self.snapshots else "")
                + f"figures {self.figures_drawn} drawn / {self.figures_kept} unchanged; "
                f"report {self.root / 'report.html'}")


def snapshot_entries(study: Study, entries: list[Entry]) -> list[Entry]:
    """The snapshot representations present for ``entries`` (runs of the grid), run by run
    in grid order, then by epoch; found whether or not the run's final representation
    exists yet (a run still training)."""
    found = []
    for entry in entries:
        folder = entry.path.parent / layout.SNAPSHOTS_DIR
        epochs = set()
        for path in folder.glob(f"{entry.path.stem}_e*.npz"):
            number = path.stem.removeprefix(f"{entry.path.stem}_e")
            # only the layout's own name for an epoch counts (not e.g. '_e5' or '_e0000')
            if number.isdigit() and int(number) >= 1 and path == study.representation_path(
                    entry.spec, entry.role, int(number)):
                epochs.add(int(number))
        found += [Entry(entry.dataset, entry.method, entry.alpha, entry.seed, entry.spec,
                        study.representation_path(entry.spec, entry.role, epoch),
                        entry.pairs, entry.named, epoch)
                  for epoch in sorted(epochs)]
    return found


def expected_entries(study: Study) -> list[Entry]:
    """Every representation the study's grid can produce, in grid order (teachers, pure
    students, KD runs), each once with every pair it is shown with."""
    pairs_of: dict[tuple[Path, str], list[Pair]] = {}
    specs: dict[tuple[Path, str], RunSpec] = {}
    for cell in study.cells():
        for spec in study.cell_runs(cell):
            key = (study.representation_path(spec, cell.role), str(cell.role))
            specs.setdefault(key, spec)
            pairs_of.setdefault(key, [])
            if cell.pair not in pairs_of[key]:
                pairs_of[key].append(cell.pair)
    order = {str(Role.TEACHER): 0, str(Role.PURE): 1, str(Role.KD): 2}
    entries = []
    for (path, role), spec in sorted(specs.items(), key=lambda item: order[item[0][1]]):
        method = spec.method if role == "kd" else role
        entries.append(Entry(spec.dataset, method, spec.alpha, spec.seed, spec, path,
                             tuple(pairs_of[(path, role)]), study.has_several_pairs))
    return entries


@dataclass
class _Pass:
    """One analysis pass: the study, where tasks run, the metric settings and the report
    being filled in."""

    study: Study
    pool: object
    result: AnalysisReport
    settings: dict
    show_progress: bool

    def run(self, tasks: list, description: str):
        return workers.run_all(self.pool, tasks, description, self.show_progress)

    def model_cache(self, entry: Entry) -> str:
        return str(layout.model_cache_path(self.study.analysis_dir, self.study.name,
                                           entry.dataset, entry.path))

    def pair_task(self, reference: Entry, others: list[Entry]) -> tuple:
        """(reference, task function, *arguments) of one reference and the models compared
        with it."""
        study = self.study
        compared = [(str(other.path), self.model_cache(other),
                     str(layout.pair_cache_path(study.analysis_dir, study.name,
                                                reference.dataset, reference.path, other.path)))
                    for other in others]
        return (reference, compute.teacher_task, str(reference.path),
                self.model_cache(reference), compared, self.settings)


def _inventory(study: Study, result: AnalysisReport) -> None:
    """Sort the grid's representations into available and missing; note stray files."""
    store.ensure_writable_dir(result.root, "analysis folder")
    expected = expected_entries(study)
    for entry in expected:
        (result.available if entry.path.is_file() else result.missing).append(entry)
    for entry in result.available:
        reason = store.unreadable_reason(entry.path)
        if reason is not None:
            result.unreadable.append((entry, reason))
    expected_paths = {entry.path for entry in expected}
    stray = sorted(path for path in layout.representations_dir(
        study.analysis_dir, study.name).glob("*/*.npz") if path not in expected_paths)
    if stray:
        result.notes.append(f"{len(stray)} representation file(s) outside the study's grid "
                            f"ignored (e.g. {stray[0]})")
    if not result.readable:
        raise UserError(f"no readable representations of study {study.name} under "
                        f"{layout.representations_dir(study.analysis_dir, study.name)}: "
                        f"expected .npz files from 'kdlab extract {study.path}' (run it "
                        "after training)")


def _model_step(run: _Pass, entries: list[Entry] | None = None, kind: str = "models",
                description: str = "per-model metrics") -> dict:
    """Per-model metrics of every available representation (or of ``entries``): Entry ->
    outcome."""
    model_results: dict[Entry, dict] = {}
    entries = run.result.available if entries is None else entries
    tasks = [(entry, compute.model_task, str(entry.path), run.model_cache(entry), run.settings)
             for entry in entries]
    for entry, outcome in run.run(tasks, description):
        _collect(run.result, entry, outcome, kind, model_results)
    return model_results


def _dynamics_step(run: _Pass, model_results: dict):
    """Per-model metrics of every snapshot, and its pair metrics against its teacher's final
    representation (same data set and seed), as the dynamics.csv frame; written."""
    result, study = run.result, run.study
    result.snapshots = snapshot_entries(study, expected_entries(study))
    snapshot_results = _model_step(run, result.snapshots, "snapshot_models",
                                   "per-model metrics of snapshots")
    teachers = {(e.dataset, e.seed, e.model): e for e in model_results if e.method == TEACHER}
    partners_of: dict[Entry, list[Entry]] = defaultdict(list)
    without_teacher = 0
    for entry in snapshot_results:
        if entry.method == TEACHER:
            continue    # the teacher's own snapshots: per-model metrics only
        teacher_model = entry.spec.teacher or (entry.pairs[0] if entry.pairs
                                               else study.pairs[0]).teacher
        teacher = teachers.get((entry.dataset, entry.seed, teacher_model))
        if teacher is None:
            without_teacher += 1
        else:
            partners_of[teacher].append(entry)
    if without_teacher:
        result.notes.append(f"{without_teacher} student snapshot(s) have no teacher "
                            "representation of their seed, so no teacher-student metrics "
                            "over training")
    pair_results = _pair_step(run, partners_of, "snapshot_pairs",
                              "teacher-student metrics of snapshots")
    frame = dynamics.dynamics_frame(
        [(entry.dataset, entry.spec.name, entry.method, entry.alpha, entry.seed, entry.epoch,
          outcome["rows"]) for results in (snapshot_results, {other: outcome for (_, other),
                                                              outcome in pair_results.items()})
         for entry, outcome in results.items()])
    path = layout.analysis_table_path(study.analysis_dir, study.name, "dynamics.csv")
    atomic_write_text(path, frame.to_csv(index=False, float_format="%.6g"))
    result.outputs.append(path)
    result.dynamics = frame
    return frame


def _students_of_teachers(model_results: dict, result: AnalysisReport) -> dict:
    """Teacher Entry -> its students (same data set and seed, a pair with that teacher);
    notes the students without one."""
    teachers = {(e.dataset, e.seed, e.model): e for e in model_results if e.method == TEACHER}
    students_of: dict[Entry, list[Entry]] = defaultdict(list)
    without_teacher: dict[tuple[str, int, str], int] = defaultdict(int)
    for entry in model_results:
        if entry.method == TEACHER:
            continue
        for pair in entry.pairs:
            teacher = teachers.get((entry.dataset, entry.seed, pair.teacher))
            if teacher is None:
                without_teacher[(entry.dataset, entry.seed, pair.teacher)] += 1
            else:
                students_of[teacher].append(entry)
    several = len({pair.teacher for entry in model_results for pair in entry.pairs}) > 1
    for (dataset, seed, model), count in sorted(without_teacher.items()):
        which = f" ({model})" if several else ""
        result.notes.append(f"{dataset} seed {seed}: no teacher{which} representation, so "
                            f"{count} student run(s) have no teacher-student metrics")
    return students_of


def _pair_step(run: _Pass, partners_of: dict, kind: str, description: str) -> dict:
    """Pair metrics, one task per reference: {(reference, other): outcome}."""
    tasks = [run.pair_task(reference, others) for reference, others in partners_of.items()]
    results: dict[tuple[Entry, Entry], dict] = {}
    for reference, outcomes in run.run(tasks, description):
        for other, outcome in zip(partners_of[reference], outcomes):
            _collect(run.result, other, outcome, kind, results, key=(reference, other))
    return results


def _table_step(study: Study, frame, floors, result: AnalysisReport):
    """metrics.csv, floors.csv and the accuracy tables; returns the accuracy table."""
    from . import tables

    def path(name):
        return layout.analysis_table_path(study.analysis_dir, study.name, name)

    path("metrics.csv").parent.mkdir(parents=True, exist_ok=True)
    written = {"metrics.csv": frame.to_csv(index=False, float_format="%.6g"),
               "floors.csv": floors.to_csv(index=False, float_format="%.6g")}
    accuracy = tables.accuracy_table(frame, study)
    written["accuracy.csv"] = accuracy.to_csv(index=False, float_format="%.6g")
    written["accuracy.md"] = tables.accuracy_markdown(accuracy, study)
    for name, text in written.items():
        atomic_write_text(path(name), text)
        result.outputs.append(path(name))
    _note_ica_failures(frame, result)
    return accuracy


def _figure_step(run: _Pass, frame, model_results: dict, dynamics_frame=None) -> None:
    from . import figures

    scatter = {entry: (outcome["scatter"], outcome["scatter_labels"])
               for entry, outcome in model_results.items()}
    accuracy = dynamics.snapshot_accuracies(run.study, run.result.snapshots)
    drawn = figures.draw_study(run.study, frame, scatter, run.pool,
                               show_progress=run.show_progress, settings=run.settings,
                               dynamics=dynamics_frame, snapshot_accuracy=accuracy)
    run.result.figures_drawn += drawn.drawn
    run.result.figures_kept += drawn.kept
    run.result.notes += drawn.notes


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
                  show_progress: bool = True, bootstrap: int | None = None,
                  floors: bool = True) -> AnalysisReport:
    """Analyse whatever part of the study's grid has representations; write metrics.csv,
    floors.csv, accuracy.{csv,md}, figures/ and report.html under the study's analysis
    folder. ``bootstrap``: resamples per interval (None: the registry's default; 0: no
    intervals); ``floors``: compute the noise floors."""
    from . import report as html_report

    jobs = workers.resolve_jobs(jobs)
    result = AnalysisReport(root=layout.analysis_dir(study.analysis_dir, study.name))
    _inventory(study, result)
    log(f"analyze {study.name}: {result.counts()}, {jobs} worker(s)")
    settings = dict(compute.SETTINGS)
    if bootstrap is not None:
        if bootstrap < 0:
            raise UserError(f"--bootstrap {bootstrap}: expected 0 (no intervals) or a "
                            "positive number of resamples")
        settings["bootstrap_samples"] = bootstrap
    run = _Pass(study, workers.executor(jobs), result, settings, show_progress)
    try:
        accuracy = _steps(run, floors, log)
    finally:
        run.pool.shutdown(wait=True)
    result.outputs.append(html_report.write_report(study, result, accuracy))
    return result


def _steps(run: _Pass, with_floors: bool, log: Callable[[str], None]):
    result = run.result
    with _Step(result, "per-model metrics") as step:
        model_results = _model_step(run)
    log(f"  per-model metrics: {result.models_computed} computed, "
        f"{result.models_cached} from cache ({result.step_seconds[step.name]:.1f} s)")
    with _Step(result, "pair metrics") as step:
        pair_results = _pair_step(run, _students_of_teachers(model_results, result), "pairs",
                                  "teacher-student metrics")
    log(f"  teacher-student metrics: {result.pairs_computed} computed, "
        f"{result.pairs_cached} from cache ({result.step_seconds[step.name]:.1f} s)")
    with _Step(result, "noise floors") as step:
        floor_results = (_pair_step(run, floors.floor_pairs(model_results), "floors",
                                    "noise floors") if with_floors else {})
        if with_floors:
            result.notes += floors.missing_floor_notes(model_results)
    log(f"  noise floors: {result.floors_computed} computed, {result.floors_cached} from "
        f"cache ({result.step_seconds[step.name]:.1f} s)")
    with _Step(result, "tables"):
        frame = _metrics_frame(model_results, pair_results)
        floor_table = floors.floor_frame(floor_results)
        accuracy = _table_step(run.study, frame, floor_table, result)
    with _Step(result, "snapshots") as step:
        dynamics_frame = _dynamics_step(run, model_results)
    if result.snapshots:
        log(f"  snapshots: {len(result.snapshots)}; models {result.snapshot_models_computed} "
            f"computed, {result.snapshot_models_cached} from cache; pairs "
            f"{result.snapshot_pairs_computed} computed, {result.snapshot_pairs_cached} from "
            f"cache ({result.step_seconds[step.name]:.1f} s)")
    with _Step(result, "figures") as step:
        import pandas as pd

        shown = pd.concat([frame, floors.as_metric_rows(floor_table, COLUMNS,
                                                        run.study.pairs)],
                          ignore_index=True)
        _figure_step(run, shown, model_results, dynamics_frame)
    log(f"  figures: {result.figures_drawn} drawn, {result.figures_kept} unchanged "
        f"({result.step_seconds[step.name]:.1f} s)")
    return accuracy


def _collect(result: AnalysisReport, entry: Entry, outcome: dict, kind: str,
             into: dict, key=None) -> None:
    """Keep one task's outcome in ``into`` (under ``key``, default ``entry``), or record
    its error as a problem."""
    if outcome["error"]:
        what = {"models": "skipped", "pairs": "no pair metrics",
                "floors": "no noise-floor metrics", "snapshot_models": "snapshot skipped",
                "snapshot_pairs": "no pair metrics of the snapshot"}[kind]
        result.problems.append(f"{entry.label}: {what}: {outcome['error']}")
        return
    into[entry if key is None else key] = outcome
    _count(result, outcome, kind)


def _count(result: AnalysisReport, outcome: dict, kind: str) -> None:
    if outcome["cached"]:
        setattr(result, f"{kind}_cached", getattr(result, f"{kind}_cached") + 1)
    else:
        setattr(result, f"{kind}_computed", getattr(result, f"{kind}_computed") + 1)
    for name, seconds in outcome["timings"].items():
        result.metric_seconds[name] = result.metric_seconds.get(name, 0.0) + seconds


def _metrics_frame(model_results: dict, pair_results: dict):
    """Long table: one row per data set x pair x method x alpha x seed x layer x metric.
    ``model_results``: Entry -> outcome (its rows under each pair it is shown with);
    ``pair_results``: (teacher Entry, student Entry) -> outcome (under their pair)."""
    import pandas as pd

    def rows(entry, pair, outcome):
        alpha = entry.alpha if entry.alpha is not None else math.nan
        return [(entry.dataset, pair.label, entry.method, alpha, entry.seed, layer, metric,
                 value) for layer, metric, value in outcome["rows"]]

    records = []
    for entry, outcome in model_results.items():
        for pair in entry.pairs:
            records += rows(entry, pair, outcome)
    for (teacher, entry), outcome in pair_results.items():
        records += rows(entry, Pair(teacher.model, entry.model), outcome)
    frame = pd.DataFrame.from_records(records, columns=COLUMNS)
    frame["value"] = frame["value"].astype(float)
    return frame.sort_values(["dataset", "pair", "method", "alpha", "seed", "layer", "metric"],
                             na_position="first", kind="stable").reset_index(drop=True)


def _note_ica_failures(frame, result: AnalysisReport) -> None:
    failed = frame[(frame["metric"] == "ica_converged") & (frame["value"] == 0)]
    if len(failed):
        examples = ", ".join(
            f"{row.dataset} {row.method}"
            + ("" if math.isnan(row.alpha) else f" a{layout.format_alpha(row.alpha)}")
            + (f" ({row.pair})" if frame["pair"].nunique() > 1 else "")
            + f" s{row.seed} {row.layer}" for row in failed.head(5).itertuples())
        more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
        result.notes.append(f"FastICA did not converge for {len(failed)} model-layer fit(s) "
                            f"({examples}{more}); their ICA numbers are flagged "
                            "ica_converged = 0 in metrics.csv")


def command(args) -> int:
    """``kdlab analyze STUDY [--jobs N]``."""
    study = load_study(args.study)
    try:
        report = analyze_study(study, jobs=args.jobs,
                               bootstrap=getattr(args, "bootstrap", None),
                               floors=not getattr(args, "no_floors", False))
    except OSError as error:
        raise store.write_failure(error) from None
    for problem in report.problems:
        print(f"  problem: {problem}")
    print(f"analyze {study.name}: {report.summary()}")
    return 0
