"""Where each run of a study stands: classification from state files, liveness, provenance.

:func:`study_run_states` reads only the runs' state files (no scheduler is asked) and
classifies every run of the grid as a :class:`RunState`; ``status``, ``queue``, ``plot`` and
the other reports build on it. :func:`check_liveness` asks the schedulers about the jobs of
running and queued runs; :func:`outside_grid` names every run directory on disk that is no
run of the study. Works on experiment trees of the earlier research code too (status.json
with status, epoch, max_acc, config, pbs_job_id; or only a job id while queued).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..run import catalog, state_files
from ..run.layout import LAYOUTS, RunSpec, format_alpha, read_run_path, run_dir, status_files
from ..schedulers import SchedulerError, backend_of_status, get_scheduler
from .study_file import Cell, Pair, Role, Study

# The states a run of a study can be in (what the status table counts).
COMPLETED = "completed"
RUNNING = "running"          # status.json says in_progress
QUEUED = "queued"
FAILED = "failed"
WAITING = "waiting"          # KD run not started whose teacher run is not completed
NOT_STARTED = "not_started"  # no status.json yet
UNREADABLE = "unreadable"    # status.json exists but cannot be read or parsed
RUN_STATES = (COMPLETED, RUNNING, QUEUED, FAILED, WAITING, NOT_STARTED, UNREADABLE)

# A run whose training stopped on an environment failure (a full disk: status.json stays
# in_progress with the reason and an ``environment_failures`` count) is resubmitted this
# many times; after that ``kdlab queue`` leaves it until --retry-failed.
MAX_ENVIRONMENT_RESUBMISSIONS = 3

# A completed run whose best accuracy is at most this many points above chance (100/classes)
# has not learnt: it is flagged collapsed.
COLLAPSE_MARGIN_POINTS = 2.0


def is_collapsed(accuracy: float | None, num_classes: int | None) -> bool:
    """The collapse rule (``status`` and ``plot`` both use it): ``accuracy`` (percent) within
    :data:`COLLAPSE_MARGIN_POINTS` of chance (100 / ``num_classes``) or below it. Unknown
    or NaN accuracy, or unknown class count: False."""
    if accuracy is None or not num_classes or num_classes < 1:
        return False
    if isinstance(accuracy, float) and math.isnan(accuracy):
        return False
    return accuracy <= 100.0 / num_classes + COLLAPSE_MARGIN_POINTS


# status.json 'status' -> state of the run
_STATE_OF_STATUS = {state_files.COMPLETED: COMPLETED, state_files.IN_PROGRESS: RUNNING,
                    state_files.QUEUED: QUEUED, state_files.FAILED: FAILED}


@dataclass
class RunState:
    """One run of a study and what its state files say.

    ``role``: a :class:`~kdlab.study.study_file.Role`; ``state``: one of :data:`RUN_STATES`;
    ``status``: the parsed status.json (None when absent or unreadable);
    ``detail``: one human-readable line (progress, failure reason, parse error, ...).
    """

    spec: RunSpec
    run_dir: Path
    role: Role
    state: str
    status: dict | None
    detail: str

    @property
    def job_id(self) -> str | None:
        return state_files.job_id_of(self.status)

    @property
    def max_acc(self) -> float | None:
        """Best test accuracy in percent, when status.json records a finite one."""
        value = (self.status or {}).get("max_acc")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        return None

    @property
    def made_by(self) -> str | None:
        """'kdlab <version>', 'earlier code' (the earlier research code's run), 'kdlab'
        (kdlab from before the mark), or None without a readable status.json."""
        if not self.status:
            return None
        if state_files.is_earlier_code(self.status):
            return "earlier code"
        return self.status.get("made_by") or "kdlab"

    @property
    def earlier_code(self) -> bool:
        return state_files.is_earlier_code(self.status)

    @property
    def pack(self) -> list[str] | None:
        """The runs (names) that the run's last job trained together, this one among them;
        None when that job trained it alone (status.json ``pack``, written by the queue)."""
        value = (self.status or {}).get("pack")
        if isinstance(value, list) and len(value) > 1:
            return [str(name) for name in value]
        return None

    @property
    def environment_failures(self) -> int:
        """How many times training stopped on an environment failure (full disk, ...)."""
        value = (self.status or {}).get("environment_failures")
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    @property
    def collapsed(self) -> bool:
        """Completed at chance accuracy: within :data:`COLLAPSE_MARGIN_POINTS` of
        100/classes, or below it."""
        info = catalog.DATASETS.get(self.spec.dataset)
        return self.state == COMPLETED and is_collapsed(self.max_acc,
                                                        info.classes if info else None)


def classify_run(study: Study, spec: RunSpec, teacher_state: RunState | None = None) -> RunState:
    """The :class:`RunState` of one run; ``teacher_state`` is that of the teacher run of a
    KD run (read here when not given)."""
    role = study.role_of(spec)
    directory = study.run_dir(spec)
    try:
        status = state_files.read_status(directory)
    except state_files.StateFileError as error:
        return RunState(spec, directory, role, UNREADABLE, None, f"unreadable: {error}")
    if status is None:
        if role is Role.KD:
            if teacher_state is None:
                teacher_state = classify_run(study, spec.teacher_run())
            if teacher_state.state != COMPLETED:
                return RunState(spec, directory, role, WAITING, None,
                                f"teacher {teacher_state.spec.name} is "
                                f"{teacher_state.state.replace('_', ' ')}")
        return RunState(spec, directory, role, NOT_STARTED, None, "not started")
    state = _STATE_OF_STATUS[status["status"]]
    run = RunState(spec, directory, role, state, status, _detail(state, status))
    if run.collapsed:
        chance = catalog.DATASETS[spec.dataset].chance_percent
        run.detail += f"; collapsed (chance is {chance:.2f}%)"
    return run


def resume_blocker(state: RunState) -> str | None:
    """Why ``kdlab queue`` does not resubmit a run in progress whose job is gone unless told
    to (``--retry-failed``); None when it resubmits it (training resumes from its checkpoint).

    - an earlier-code run: kdlab cannot resume the earlier code's checkpoint, and a job
      would end at start every time (a loop of submissions);
    - a run whose training stopped on an environment failure (full disk, ...) more than
      :data:`MAX_ENVIRONMENT_RESUBMISSIONS` times: resubmitting it again would fail again."""
    if state.state != RUNNING:
        return None
    if state.earlier_code:
        return ("earlier-code run in progress whose job is gone: not resumable by kdlab "
                "(it cannot resume the earlier code's checkpoint); --retry-failed restarts it "
                "under kdlab from epoch 0, replacing the earlier code's checkpoint.pth")
    failures = state.environment_failures
    if failures > MAX_ENVIRONMENT_RESUBMISSIONS:
        reason = (state.status or {}).get("reason") or "no reason recorded"
        return (f"training stopped on an environment failure {failures} times (last: "
                f"{reason}); resubmitted {MAX_ENVIRONMENT_RESUBMISSIONS} times already: fix "
                "the environment, then --retry-failed")
    return None


def planned_epochs(status: dict | None, default: int) -> int:
    """The run's epoch count: status.json's ``epochs``, its config's, else ``default``."""
    status = status or {}
    value = status.get("epochs")
    if value is None and isinstance(status.get("config"), dict):
        value = status["config"].get("epochs")
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return default


def _detail(state: str, status: dict) -> str:
    epoch = status.get("epoch")
    # The earlier code's config has no epoch count: a completed run ran all of its epochs.
    epochs = planned_epochs(status, 0) or (epoch if state == COMPLETED and epoch else "?")
    progress = f"epoch {epoch if epoch is not None else 0}/{epochs}"
    job_id = state_files.job_id_of(status)
    job = f", job {job_id}" if job_id else ""
    max_acc = status.get("max_acc")
    accuracy = (f", best {max_acc:.2f}%" if isinstance(max_acc, (int, float))
                and not isinstance(max_acc, bool) else "")
    if state == COMPLETED and isinstance(status.get("imported"), dict):
        return f"completed: imported (kdlab import-teacher){accuracy}"
    if state == COMPLETED:
        return f"completed {progress}{accuracy}"
    if state == FAILED:
        return f"failed at {progress}: {status.get('reason') or 'no reason recorded'}"
    pack = status.get("pack")
    if job and isinstance(pack, list) and len(pack) > 1:
        job += f" (pack of {len(pack)})"
    if state == RUNNING:
        stopped = f"; stopped: {status['reason']}" if status.get("reason") else ""
        return f"in progress, {progress}{accuracy}{job}{stopped}"
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


def states_by_cell(study: Study, states: list[RunState]) -> list[tuple[Cell, list[RunState]]]:
    """The study's cells in report order, each with its runs' states in seed order (runs of
    ``states`` outside the grid are left out): the one iteration tables and figures use."""
    by_key: dict[tuple, list[RunState]] = {cell.key: [] for cell in study.cells()}
    for state in states:
        for cell in study.cells_of(state.spec):  # a shared teacher: in each of its pairs
            by_key[cell.key].append(state)
    return [(cell, sorted(by_key[cell.key], key=lambda state: state.spec.seed))
            for cell in study.cells()]


# ---- liveness of the jobs of running and queued runs -----------------------------------------

def check_liveness(states: list[RunState], default_backend: str,
                   scheduler_factory=None) -> dict[Path, bool | str]:
    """Ask the schedulers about the jobs of running and queued runs that record a job id.

    Returns run dir -> True (job pending or running), False (job gone) or a string saying
    why liveness is unknown (scheduler command missing or failing). A job is asked of the
    backend recorded in its status.json (``scheduler``; legacy ``pbs_job_id`` means PBS),
    else of ``default_backend``. Runs without a job id are not in the answer."""
    live = [state for state in states
            if state.state in (RUNNING, QUEUED) and state.job_id is not None]
    if not live:
        return {}
    factory = scheduler_factory or get_scheduler
    by_backend: dict[str, list[RunState]] = {}
    for state in live:
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


# ---- what is on disk but outside the grid --------------------------------------------------

def outside_grid(study: Study, states: list[RunState] | None = None) -> list[dict]:
    """Every directory under the experiments directory holding a status.json that is no run
    of the study, as ``{"run_dir": relative path, "reason": ..., "alpha": ...}``. Reasons:
    'other alpha', 'other model', 'other data set', 'other method', 'other seed',
    'other layout', 'alias of RUN' (a non-canonical spelling such as alpha_0.50 or seed 00)
    and 'unparseable path'."""
    if states is None:
        states = study_run_states(study)
    inside = {Path(state.run_dir) for state in states}
    root = Path(study.experiments_dir)
    found = []
    for directory, relative in status_files(root):
        if directory in inside:
            continue
        entry = {"run_dir": relative, **_why_outside(study, relative)}
        found.append(entry)
    return found


def _why_outside(study: Study, relative: str) -> dict:
    alpha_value = study.alphas[0] if study.alphas else None
    spec = read_run_path(relative, study.layout, alpha_value)
    if spec is None:
        others = [scheme for scheme in LAYOUTS if scheme != study.layout]
        if any(read_run_path(relative, scheme, alpha_value or 0.0) is not None
               for scheme in others):
            return {"reason": "other layout"}
        return {"reason": "unparseable path"}
    canonical = run_dir(".", spec, study.layout).as_posix()
    if canonical != relative:
        return {"reason": f"alias of {canonical}"}
    if spec.dataset not in study.datasets:
        return {"reason": "other data set"}
    if spec.is_pure:
        if spec.model not in {model for pair in study.pairs for model in (pair.teacher,
                                                                          pair.student)}:
            return {"reason": "other model"}
        return {"reason": "other seed"}
    if Pair(spec.teacher, spec.model) not in study.pairs:
        return {"reason": "other model"}
    if spec.method not in study.methods:
        return {"reason": "other method"}
    if spec.alpha not in study.alpha_levels():
        return {"reason": "other alpha", "alpha": spec.alpha}
    return {"reason": "other seed"}


def outside_grid_summary(entries: list[dict]) -> str | None:
    """One line: how many run directories are outside the grid, why, and a hint."""
    if not entries:
        return None
    reasons: dict[str, int] = {}
    for entry in entries:
        reason = "alias" if entry["reason"].startswith("alias of") else entry["reason"]
        reasons[reason] = reasons.get(reason, 0) + 1
    parts = ", ".join(f"{count} {reason}" for reason, count in reasons.items())
    alphas = sorted({entry["alpha"] for entry in entries if entry.get("alpha") is not None})
    hint = ""
    if alphas:
        hint = ("; alphas found: " + ", ".join(format_alpha(alpha) for alpha in alphas)
                + " (add them to the study's alphas to include these runs)")
    elif "other layout" in reasons:
        hint = '; a tree without alpha_* levels reads with layout = "no-alpha"'
    return (f"{len(entries)} run director{'y' if len(entries) == 1 else 'ies'} outside the "
            f"grid ({parts}){hint}; --json lists them")


__all__ = ["COMPLETED", "RUNNING", "QUEUED", "FAILED", "WAITING", "NOT_STARTED", "UNREADABLE",
           "RUN_STATES", "MAX_ENVIRONMENT_RESUBMISSIONS", "RunState", "classify_run",
           "resume_blocker", "study_run_states", "states_by_cell",
           "check_liveness",
           "outside_grid", "outside_grid_summary", "planned_epochs"]
