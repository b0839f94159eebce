"""``kdlab status STUDY``: where every run of a study stands.

:func:`study_run_states` reads only the runs' state files (no scheduler is asked) and
classifies every run of the grid; ``kdlab plot``, ``kdlab queue`` and the table printed
here all build on it. Works on experiment trees of the earlier research code too
(status.json with status, epoch, max_acc, config, pbs_job_id).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import runstate
from .layout import RunSpec, format_alpha, run_dir
from .study import Study, load_study

# The states a run of a study can be in (what the table counts).
COMPLETED = "completed"
RUNNING = "running"          # status.json says in_progress
QUEUED = "queued"
FAILED = "failed"
WAITING = "waiting"          # KD run not started whose teacher run is not completed
NOT_STARTED = "not_started"  # no status.json yet
UNREADABLE = "unreadable"    # status.json exists but cannot be read or parsed
RUN_STATES = (COMPLETED, RUNNING, QUEUED, FAILED, WAITING, NOT_STARTED, UNREADABLE)

# status.json 'status' -> state of the run
_STATE_OF_STATUS = {runstate.COMPLETED: COMPLETED, runstate.IN_PROGRESS: RUNNING,
                    runstate.QUEUED: QUEUED, runstate.FAILED: FAILED}

ROLES = ("teacher", "pure", "kd")


@dataclass
class RunState:
    """One run of a study and what its state files say.

    ``role``: 'teacher' | 'pure' | 'kd'; ``state``: one of :data:`RUN_STATES`;
    ``status``: the parsed status.json (None when absent or unreadable);
    ``detail``: one human-readable line (progress, failure reason, parse error, ...).
    """

    spec: RunSpec
    run_dir: Path
    role: str
    state: str
    status: dict | None
    detail: str

    @property
    def job_id(self) -> str | None:
        return runstate.job_id_of(self.status)

    @property
    def max_acc(self) -> float | None:
        """Best test accuracy in percent, when status.json records a finite one."""
        value = (self.status or {}).get("max_acc")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        return None


def classify_run(study: Study, spec: RunSpec, teacher_state: RunState | None = None) -> RunState:
    """The :class:`RunState` of one run; ``teacher_state`` is that of the teacher run of a
    KD run (read here when not given)."""
    role = study.role_of(spec)
    directory = run_dir(study.experiments_dir, spec)
    try:
        status = runstate.read_status(directory)
    except runstate.StateFileError as error:
        return RunState(spec, directory, role, UNREADABLE, None, str(error))
    if status is None:
        if role == "kd":
            if teacher_state is None:
                teacher_state = classify_run(study, spec.teacher_run())
            if teacher_state.state != COMPLETED:
                return RunState(spec, directory, role, WAITING, None,
                                f"teacher {teacher_state.spec.name} is "
                                f"{teacher_state.state.replace('_', ' ')}")
        return RunState(spec, directory, role, NOT_STARTED, None, "not started")
    state = _STATE_OF_STATUS[status["status"]]
    return RunState(spec, directory, role, state, status, _detail(state, status))


def _detail(state: str, status: dict) -> str:
    epoch, epochs = status.get("epoch"), status.get("epochs")
    if epochs is None and isinstance(status.get("config"), dict):
        epochs = status["config"].get("epochs")
    progress = f"epoch {epoch if epoch is not None else 0}/{epochs if epochs is not None else '?'}"
    job_id = runstate.job_id_of(status)
    job = f", job {job_id}" if job_id else ""
    max_acc = status.get("max_acc")
    accuracy = (f", best {max_acc:.2f}%" if isinstance(max_acc, (int, float))
                and not isinstance(max_acc, bool) else "")
    if state == COMPLETED:
        return f"completed {progress}{accuracy}"
    if state == FAILED:
        return f"failed at {progress}: {status.get('reason') or 'no reason recorded'}"
    if state == RUNNING:
        return f"in progress, {progress}{accuracy}{job}"
    return f"queued{job}"


def study_run_states(study: Study) -> list[RunState]:
    """Every run of the grid in priority order (teachers, pure students, KD runs), classified
    from its state files alone."""
    states: list[RunState] = []
    by_spec: dict[RunSpec, RunState] = {}
    for spec in study.runs():
        teacher_spec = spec.teacher_run()
        teacher_state = by_spec.get(teacher_spec) if teacher_spec is not None else None
        state = classify_run(study, spec, teacher_state)
        by_spec[spec] = state
        states.append(state)
    return states


# ---- liveness of the jobs of running and queued runs -----------------------------------------

def check_liveness(states: list[RunState], default_backend: str,
                   scheduler_factory=None) -> dict[Path, bool | str]:
    """Ask the schedulers about the jobs of running and queued runs that record a job id.

    Returns run dir -> True (job pending or running), False (job gone) or a string saying
    why liveness is unknown (scheduler command missing or failing). A job is asked of the
    backend recorded in its status.json (``scheduler``; legacy ``pbs_job_id`` means PBS),
    else of ``default_backend``. Runs without a job id are not in the answer."""
    from .schedulers import SchedulerError, backend_of_status, get_scheduler

    factory = scheduler_factory or get_scheduler
    by_backend: dict[str, list[RunState]] = {}
    for state in states:
        if state.state in (RUNNING, QUEUED) and state.job_id is not None:
            backend = backend_of_status(state.status, default_backend)
            by_backend.setdefault(backend, []).append(state)
    answers: dict[Path, bool | str] = {}
    for backend, runs in by_backend.items():
        scheduler = factory(backend)
        problem = scheduler.available()
        if problem is not None:
            for state in runs:
                answers[state.run_dir] = f"{backend}: {problem}"
            continue
        alive = scheduler.alive_jobs(sorted({state.job_id for state in runs}))
        for state in runs:
            answer = alive.get(state.job_id)
            if isinstance(answer, SchedulerError):
                answers[state.run_dir] = str(answer)
            elif answer is None:
                answers[state.run_dir] = f"{backend}: no answer about job {state.job_id}"
            else:
                answers[state.run_dir] = bool(answer)
    return answers


# ---- the status report -------------------------------------------------------------------------

_COUNT_COLUMNS = (COMPLETED, RUNNING, QUEUED, FAILED, WAITING, NOT_STARTED, UNREADABLE)


def _group_key(state: RunState) -> tuple[str, str, float | None]:
    """(data set, row, alpha): row is 'teacher', 'pure' or the KD method."""
    spec = state.spec
    if state.role == "kd":
        return spec.dataset, spec.method, spec.alpha
    return spec.dataset, state.role, None


def status_report(study: Study, states: list[RunState] | None = None,
                  liveness: dict[Path, bool | str] | None = None,
                  check_jobs: bool = True) -> dict[str, Any]:
    """Everything ``kdlab status`` shows, as plain JSON-able data.

    ``liveness`` (run dir -> True / False / why unknown) defaults to asking the schedulers
    when ``check_jobs``; without it, running and queued runs have liveness 'not checked'."""
    if states is None:
        states = study_run_states(study)
    if liveness is None:
        liveness = check_liveness(states, study.scheduler.backend) if check_jobs else {}
    from .schedulers import ending  # lazy: the schedulers import the study module
    ends = ending.gone_job_ends(states, liveness, study.scheduler.backend) if check_jobs else {}
    job_states = ending.live_job_states(states, liveness, study.scheduler.backend)
    total = len(states)
    counts = {name: 0 for name in RUN_STATES}
    groups: dict[tuple, dict[str, Any]] = {}
    accuracies: dict[tuple, list[float]] = {}
    epochs_done = epochs_planned = 0
    for state in states:
        counts[state.state] += 1
        key = _group_key(state)
        if key not in groups:
            groups[key] = {"dataset": key[0], "method": key[1], "alpha": key[2],
                           "model": state.spec.model, "runs": 0,
                           **{name: 0 for name in _COUNT_COLUMNS}}
            accuracies[key] = []
        groups[key]["runs"] += 1
        groups[key][state.state] += 1
        if state.state == COMPLETED and state.max_acc is not None:
            accuracies[key].append(state.max_acc)
        planned = _planned_epochs(state, study)
        epochs_planned += planned
        epochs_done += planned if state.state == COMPLETED else min(_epoch(state), planned)
    for key, group in groups.items():
        group["mean_max_acc"] = _mean(accuracies[key])
        group["completed_with_accuracy"] = len(accuracies[key])
    all_accuracies = [acc for values in accuracies.values() for acc in values]

    failed, stuck, unknown, unreadable = [], [], [], []
    for state in states:
        entry = {"run": state.spec.name, "run_dir": str(state.run_dir), "detail": state.detail}
        if state.state == FAILED:
            failed.append({**entry, "reason": (state.status or {}).get("reason")
                           or "no reason recorded"})
        elif state.state == UNREADABLE:
            unreadable.append(entry)
        elif state.state in (RUNNING, QUEUED):
            job_id = state.job_id
            alive = liveness.get(state.run_dir)
            if job_id is None:
                unknown.append({**entry, "job_id": None,
                                "reason": "no job id recorded (started by hand?)"})
            elif alive is False:
                end = ends.get(state.run_dir)
                gone = ending.end_text(end) if end else "is gone"
                stuck.append({**entry, "job_id": job_id, "job_end": end,
                              "reason": f"job {job_id} {gone} but status.json says "
                                        f"{state.status['status']}; kdlab queue resubmits it"})
            elif alive is not True:
                unknown.append({**entry, "job_id": job_id,
                                "reason": f"liveness unknown ({alive or 'not checked'})"})

    runs = []
    for state in states:
        status = state.status or {}
        alive = liveness.get(state.run_dir)
        runs.append({"run": state.spec.name, "dataset": state.spec.dataset,
                     "model": state.spec.model, "method": state.spec.method,
                     "teacher": state.spec.teacher, "alpha": state.spec.alpha,
                     "seed": state.spec.seed, "role": state.role, "state": state.state,
                     "detail": state.detail, "job_id": state.job_id,
                     "job_alive": alive if isinstance(alive, bool) else None,
                     "epoch": status.get("epoch"), "epochs": _planned_epochs(state, study),
                     "max_acc": state.max_acc, "run_dir": str(state.run_dir),
                     "last_job_end": ends.get(state.run_dir) or status.get("last_job_end"),
                     "job_state": job_states.get(state.run_dir)})
    return {
        "study": study.name, "study_file": str(study.path),
        "experiments_dir": str(study.experiments_dir), "backend": study.scheduler.backend,
        "total": total, "counts": counts,
        "progress_percent": 100.0 * counts[COMPLETED] / total if total else 0.0,
        "epoch_progress_percent": 100.0 * epochs_done / epochs_planned if epochs_planned else 0.0,
        "mean_max_acc_completed": _mean(all_accuracies),
        "groups": list(groups.values()), "failed": failed, "stuck": stuck,
        "liveness_unknown": unknown, "unreadable": unreadable, "runs": runs,
        "live": [{"run": run["run"], "job_id": run["job_id"], "job_state": run["job_state"],
                  "last_job_end": run["last_job_end"]}
                 for run in runs if run["job_alive"] is True],
    }


def _planned_epochs(state: RunState, study: Study) -> int:
    status = state.status or {}
    value = status.get("epochs")
    if value is None and isinstance(status.get("config"), dict):
        value = status["config"].get("epochs")
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return int(study.training["epochs"])


def _epoch(state: RunState) -> int:
    value = (state.status or {}).get("epoch")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def format_report(report: dict[str, Any]) -> str:
    """The report as the text ``kdlab status`` prints: the table, totals, problem runs."""
    headers = ["data set", "runs of", "alpha", "done", "running", "queued", "failed",
               "waiting", "to do", "unreadable", "mean acc %"]
    rows = []
    for group in report["groups"]:
        label = (f"{group['method']} {group['model']}" if group["method"] in ("teacher", "pure")
                 else group["method"])
        accuracy = group["mean_max_acc"]
        rows.append([group["dataset"], label, _alpha_text(group["alpha"]),
                     *(str(group[name]) for name in _COUNT_COLUMNS),
                     "-" if accuracy is None else f"{accuracy:.2f}"])
    lines = [f"study {report['study']} ({report['study_file']}): {report['total']} runs in "
             f"{report['experiments_dir']}, backend {report['backend']}", ""]
    lines += _table(headers, rows)
    counts = report["counts"]
    accuracy = report["mean_max_acc_completed"]
    lines += ["", f"progress: {counts[COMPLETED]}/{report['total']} runs completed "
                  f"({report['progress_percent']:.1f}%), {report['epoch_progress_percent']:.1f}% "
                  "of all epochs trained; "
                  + ", ".join(f"{counts[name]} {name.replace('_', ' ')}" for name in RUN_STATES
                              if name != COMPLETED),
              "accuracy of completed runs: "
              + ("-" if accuracy is None else f"{accuracy:.2f}% (mean of best test accuracy)")]
    if report.get("live"):  # the scheduler's own state and elapsed time, as '[R 0:27:33]'
        lines += ["", f"live jobs ({len(report['live'])}):"]
        lines += [f"  {entry['run']}: job {entry['job_id']}" + (
            f" [{' '.join(entry['job_state'])}]" if entry["job_state"] else "") + _ended(entry)
            for entry in report["live"]]
    for title, key, field in (("failed", "failed", "reason"), ("stuck", "stuck", "reason"),
                              ("liveness unknown", "liveness_unknown", "reason"),
                              ("unreadable status.json", "unreadable", "detail")):
        if report[key]:
            lines += ["", f"{title} ({len(report[key])}):"]
            lines += [f"  {entry['run']}: {entry[field]}" for entry in report[key]]
    return "\n".join(lines)


def _ended(entry: dict[str, Any]) -> str:
    """'; job 123 ended OUT_OF_MEMORY after 00:14:02' for a run's previous job, or ''."""
    from .schedulers.ending import end_text
    end = entry.get("last_job_end")
    if not isinstance(end, dict) or end.get("job_id") == entry.get("job_id"):
        return ""
    return f"; job {end.get('job_id')} {end_text(end)}"


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]
    def line(cells):
        return "  ".join(str(cell).ljust(width) if i < 3 else str(cell).rjust(width)
                         for i, (cell, width) in enumerate(zip(cells, widths))).rstrip()
    return [line(headers), line(["-" * width for width in widths]), *(line(row) for row in rows)]


def _alpha_text(alpha: float | None) -> str:
    return "-" if alpha is None else format_alpha(alpha)


# ---- the status command ----------------------------------------------------------------------

def command(args) -> int:
    study = load_study(args.study)
    report = status_report(study)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(format_report(report))
    return 0
