"""``kdlab queue STUDY``: submit what the study needs next. Safe to run every few minutes.

For every run of the grid, in priority order (teachers, pure students, then KD runs):

- ``completed``                                  -> done, skip
- ``in_progress``/``queued``, job pending/running -> live, skip (counts towards the limit)
- ``in_progress``/``queued``, job gone            -> submit again (training resumes from its
  checkpoint); a run whose jobs ended :data:`MAX_MISSED_STARTS` times before training
  even began is reported instead and resubmitted only with ``--retry-failed``
- ``in_progress``/``queued``, liveness unknown    -> left alone, counted as live
- ``failed``                                      -> reported with its reason; resubmitted
  only with ``--retry-failed``
- KD run whose teacher run is not ``completed``   -> wait; never submitted
- no status.json                                  -> submit
- unreadable status.json                          -> reported (file and reason), left alone

Never more live jobs of the study than ``scheduler.max_live_jobs``. The decision and the
submissions happen under an exclusive lock (``fcntl.flock`` on ``.kdlab-queue.lock`` in the
experiments directory), so overlapping ``kdlab queue`` runs never submit a run twice. At
submission the job id is written into the run's status.json (status ``queued``, ``job_id``,
``scheduler``, ``submitted_at``) before the job can start. Nothing is ever deleted.
"""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from . import runstate
from .errors import UserError
from .schedulers import Scheduler, SchedulerError, get_scheduler
from .status import (COMPLETED, FAILED, NOT_STARTED, QUEUED, RUNNING, UNREADABLE, WAITING,
                     RunState, check_liveness, study_run_states)
from .study import Study, load_study

LOCK_FILE = ".kdlab-queue.lock"
LOCK_TIMEOUT_SECONDS = 600.0
# A run whose jobs ended this many times before its training began is not resubmitted
# without --retry-failed: something (data, environment) keeps the job from starting.
MAX_MISSED_STARTS = 3
# A run whose jobs ended this many times in a row on an environment failure (full disk, I/O
# error; counted by `kdlab train` in status.json, reset by a finished epoch) is not
# resubmitted without --retry-failed.
MAX_ENVIRONMENT_FAILURES = 3

# Actions of a decision, as printed (one word each).
DONE = "done"          # completed
LIVE = "live"          # its job is pending or running
SUBMIT = "submit"      # submitted now (or would be, with --dry-run)
LATER = "later"        # would be submitted, but the study is at its live-job limit
WAIT = "wait"          # KD run whose teacher run is not completed
FAILED_ACTION = "failed"   # failed (or never started); left alone without --retry-failed
UNKNOWN = "unknown"    # liveness of its job cannot be told; left alone
ERROR = "error"        # status.json unreadable; left alone
ACTIONS = (DONE, LIVE, SUBMIT, LATER, WAIT, FAILED_ACTION, UNKNOWN, ERROR)


@dataclass
class Decision:
    """What ``kdlab queue`` does with one run and why (``reason``: one line)."""

    run: RunState
    action: str
    reason: str
    counts_as_live: bool = False   # a live (or possibly live) job of the study
    job_id: str | None = None      # the new job, once submitted

    def line(self, dry_run: bool = False) -> str:
        action = self.action
        if dry_run and action == SUBMIT:
            action = "would-submit"
        return f"{action:<12} {self.run.spec.name}: {self.reason}"


# ---- deciding ----------------------------------------------------------------------------------

def plan_queue(study: Study, states: list[RunState] | None = None, *,
               liveness: dict[Path, bool | str] | None = None,
               retry_failed: bool = False) -> list[Decision]:
    """One :class:`Decision` per run of ``study`` in priority order; submits nothing.

    ``states`` defaults to :func:`~kdlab.status.study_run_states`; ``liveness`` (run dir ->
    True alive / False gone / str why unknown) to asking the schedulers of the live runs."""
    if states is None:
        states = study_run_states(study)
    if liveness is None:
        liveness = check_liveness(states, study.scheduler.backend)
    by_spec = {state.spec: state for state in states}
    decisions: list[Decision] = []
    candidates: list[Decision] = []
    for state in states:
        decision = _decide(state, by_spec, liveness, retry_failed)
        decisions.append(decision)
        if decision.action == SUBMIT:
            candidates.append(decision)
    live = sum(decision.counts_as_live for decision in decisions)
    slots = max(study.scheduler.max_live_jobs - live, 0)
    for decision in candidates[slots:]:
        decision.action = LATER
        decision.reason += (f"; held back: {live + slots} of {study.scheduler.max_live_jobs} "
                            "live jobs")
    return decisions


def _decide(state: RunState, by_spec: dict, liveness: dict, retry_failed: bool) -> Decision:
    status = state.status or {}
    if state.state == COMPLETED:
        return Decision(state, DONE, state.detail)
    if state.state == UNREADABLE:
        return Decision(state, ERROR, f"{state.detail}; left alone")
    if state.state == WAITING:
        return Decision(state, WAIT, state.detail)
    if state.state in (RUNNING, QUEUED):
        job_id = state.job_id
        if job_id is None:
            return Decision(state, UNKNOWN, f"{state.detail}, but no job id recorded "
                                            "(started by hand?); left alone")
        alive = liveness.get(state.run_dir)
        if alive is True:
            return Decision(state, LIVE, state.detail, counts_as_live=True)
        if alive is not True and alive is not False:
            why = alive if isinstance(alive, str) else "not checked"
            return Decision(state, UNKNOWN, f"{state.detail}; liveness unknown ({why}); "
                                            "left alone", counts_as_live=True)
        missed = int(status.get("missed_starts") or 0)
        if state.state == QUEUED and missed + 1 >= MAX_MISSED_STARTS and not retry_failed:
            return Decision(state, FAILED_ACTION,
                            f"job {job_id} is gone and training never began "
                            f"({missed + 1} jobs so far; see the logs in {state.run_dir}); "
                            "--retry-failed to submit again")
        failures = int(status.get("environment_failures") or 0)
        if failures >= MAX_ENVIRONMENT_FAILURES and not retry_failed:
            return Decision(state, FAILED_ACTION,
                            f"job {job_id} is gone after {failures} environment failures in a "
                            f"row ({status.get('reason', 'no reason recorded')}); fix the "
                            "environment, then --retry-failed to submit again")
        reason = (f"job {job_id} is gone ({state.detail}); "
                  + ("resumes from its checkpoint" if state.state == RUNNING
                     else "it never began training"))
        return _unless_teacher_missing(Decision(state, SUBMIT, reason), by_spec)
    if state.state == FAILED:
        if not retry_failed:
            return Decision(state, FAILED_ACTION, f"{state.detail}; --retry-failed to submit again")
        return _unless_teacher_missing(Decision(state, SUBMIT, f"retrying: {state.detail}"),
                                       by_spec)
    if state.state == NOT_STARTED:
        return _unless_teacher_missing(Decision(state, SUBMIT, "not started"), by_spec)
    raise AssertionError(f"unhandled run state {state.state!r}")


def _unless_teacher_missing(decision: Decision, by_spec: dict) -> Decision:
    """A KD run is only ever submitted when its teacher run is completed."""
    teacher_spec = decision.run.spec.teacher_run()
    if teacher_spec is None:
        return decision
    teacher = by_spec.get(teacher_spec)
    if teacher is None or teacher.state != COMPLETED:
        teacher_state = teacher.state.replace("_", " ") if teacher else "not in the study"
        return Decision(decision.run, WAIT, f"teacher {teacher_spec.name} is {teacher_state}")
    return decision


# ---- submitting --------------------------------------------------------------------------------

@contextmanager
def queue_lock(experiments_dir: Path, timeout: float = LOCK_TIMEOUT_SECONDS,
               say: Callable[[str], None] = print) -> Iterator[None]:
    """Hold the study's queue lock (an exclusive ``flock`` on a file in the experiments
    directory; released by the kernel if the process dies). Waits up to ``timeout`` s."""
    path = Path(experiments_dir) / LOCK_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")
    except OSError as error:
        raise UserError(f"{path}: cannot create the queue lock file ({error.strerror}); "
                        "expected a writable experiments directory") from None
    try:
        deadline = time.monotonic() + timeout
        told = False
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise UserError(f"{path}: another kdlab queue has held this lock for "
                                    f"{timeout:.0f} s; expected it to finish sooner") from None
                if not told:
                    say(f"waiting for another kdlab queue to finish (lock {path})")
                    told = True
                time.sleep(0.1)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # closing the descriptor releases the lock


def submit_run(study: Study, decision: Decision, scheduler: Scheduler) -> str:
    """Submit one run; its status.json says ``queued`` with the job id before the job can
    start. Returns the job id; raises SchedulerError when the submission fails."""
    state = decision.run
    previous = state.status or {}
    changes: dict = {"status": runstate.QUEUED, "scheduler": scheduler.name,
                     "submitted_at": time.time(),
                     "submissions": int(previous.get("submissions") or 0) + 1}
    old_job = runstate.job_id_of(previous)
    if old_job is not None:
        changes["job_history"] = list(previous.get("job_history") or []) + [old_job]
    if state.state == QUEUED and old_job is not None:
        changes["missed_starts"] = int(previous.get("missed_starts") or 0) + 1
    elif state.state == RUNNING:
        changes["missed_starts"] = None
    if state.state == FAILED:
        changes["previous_reason"] = previous.get("reason")
        changes["reason"] = None
    argv = scheduler.argv(study.scheduler, study.train_command(state.spec))

    def record(job_id: str) -> None:
        runstate.update_status(state.run_dir, job_id=job_id, **changes)

    return scheduler.submit(state.spec.name, argv, state.run_dir, study.scheduler, record)


def run_queue(study: Study, *, dry_run: bool = False, retry_failed: bool = False,
              say: Callable[[str], None] = print,
              scheduler: Scheduler | None = None) -> tuple[list[Decision], int]:
    """Decide and (unless ``dry_run``) submit; print one line per run and a summary.
    Returns the decisions and the exit status (1 when a submission failed, else 0)."""
    scheduler = scheduler or get_scheduler(study.scheduler.backend)
    if dry_run:
        decisions = plan_queue(study, retry_failed=retry_failed)
        for decision in decisions:
            say(decision.line(dry_run=True))
        say(summary_line(study, decisions, dry_run=True))
        return decisions, 0
    problem = scheduler.available()
    if problem is not None:
        raise UserError(f"{study.path}: scheduler.backend '{scheduler.name}' cannot be used "
                        f"here: {problem}")
    exit_status = 0
    with queue_lock(study.experiments_dir, say=say):
        decisions = plan_queue(study, retry_failed=retry_failed)
        submission_error: str | None = None
        for decision in decisions:
            if decision.action == SUBMIT:
                if submission_error is not None:
                    decision.action = LATER
                    decision.reason += "; not submitted: an earlier submission failed"
                else:
                    try:
                        decision.job_id = submit_run(study, decision, scheduler)
                        decision.reason += f" -> job {decision.job_id}"
                    except (SchedulerError, OSError, runstate.StateFileError) as error:
                        submission_error = str(error)
                        decision.action = ERROR
                        decision.reason += f"; submission failed: {error}"
                        exit_status = 1
            say(decision.line())
    say(summary_line(study, decisions))
    return decisions, exit_status


def summary_line(study: Study, decisions: list[Decision], dry_run: bool = False) -> str:
    counts = {action: 0 for action in ACTIONS}
    for decision in decisions:
        counts[decision.action] += 1
    live_after = counts[LIVE] + counts[UNKNOWN] + (0 if dry_run else counts[SUBMIT])
    submitted = "would submit" if dry_run else "submitted"
    parts = [f"{counts[DONE]} completed", f"{counts[LIVE]} live",
             f"{counts[SUBMIT]} {submitted}", f"{counts[LATER]} held back",
             f"{counts[WAIT]} waiting for teacher", f"{counts[FAILED_ACTION]} failed",
             f"{counts[UNKNOWN]} liveness unknown", f"{counts[ERROR]} errors"]
    limit = (f"live jobs {live_after}/{study.scheduler.max_live_jobs}" if not dry_run
             else f"limit {study.scheduler.max_live_jobs} live jobs")
    return (f"{'dry run: ' if dry_run else ''}study {study.name}: {len(decisions)} runs: "
            f"{', '.join(parts)} ({limit}, backend {study.scheduler.backend})")


def command(args) -> int:
    study = load_study(args.study)
    _, exit_status = run_queue(study, dry_run=args.dry_run, retry_failed=args.retry_failed)
    return exit_status
