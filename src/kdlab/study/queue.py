"""``kdlab queue STUDY``: submit what the study needs next. Safe to run every few minutes.

For every run of the grid, in priority order (teachers, pure students, then KD runs):

- ``completed``                                  -> done, skip
- ``in_progress``/``queued``, job pending/running -> live, skip (counts towards the limit)
- ``in_progress``/``queued``, job gone            -> submit again (training resumes from its
  checkpoint); a run whose jobs ended :data:`MAX_MISSED_STARTS` times before training
  even began is reported instead and resubmitted only with ``--retry-failed``; so are a
  run whose training stopped on an environment failure (full disk) more often than
  :data:`~kdlab.study.progress.MAX_ENVIRONMENT_RESUBMISSIONS` times and an earlier-code run in
  progress (kdlab cannot resume the earlier code's checkpoint: ``--retry-failed``
  restarts it under kdlab, with ``kdlab train --force-restart``)
- ``in_progress``/``queued``, liveness unknown    -> left alone, counted as live
- ``failed``                                      -> reported with its reason; resubmitted
  only with ``--retry-failed``
- KD run whose teacher run is not ``completed``   -> wait; never submitted
- KD run whose teacher was trained by the earlier research code -> refused, unless the
  study sets ``accept_earlier_teachers = true`` or ``[training] augmentation = "earlier"``
- no status.json                                  -> submit
- unreadable status.json                          -> reported (file and reason), left alone

**Packs.** With ``scheduler.pack_size = N`` (default 1: one run per job) the runs to
submit are grouped into packs of at most N runs, and each pack is one job,
``kdlab train --config A/config.json --config B/config.json ...``, counted once towards
``max_live_jobs``. Runs share a pack only when they agree on every TrainConfig field that
is not one of :data:`PER_RUN_FIELDS` (the model, method and optimisation of each run):
data set, seed, batch size, augmentation, data root, device, ... (a field added to
TrainConfig later separates packs until it is named there), and KD runs only with KD runs
of the same teacher run. The pure student joins the pack of its seed's KD students when
both are ready; a teacher is always alone (its students need it finished, and it is what
they all wait for). Every member's status.json records the job id and the members
(``pack``: run names, the first one's directory holds the job's script and logs); a
member's job is its pack's job, so it is live while that job is. When the job is gone,
its unfinished members are submitted again, packed by the same rule with whatever else
is ready; a member that has not begun while another member of its job trained did not
miss a start.

Never more live jobs of the study than ``scheduler.max_live_jobs``. The decision and the
submissions happen under an exclusive lock (``fcntl.flock`` on ``.kdlab-queue.lock`` in the
experiments directory), so overlapping ``kdlab queue`` runs never submit a run twice. At
submission the job id is written into the run's status.json (status ``queued``, ``job_id``,
``scheduler``, ``submitted_at``) before the job can start, and the run's settings into its
``config.json`` (the job runs ``kdlab train --config RUN_DIR/config.json``, one
``--config`` per member of its pack). Nothing is ever deleted.
"""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from ..run import state_files
from ..run.config import complete_options, write_config_file
from ..run.errors import UserError
from ..run.layout import NO_ALPHA_LAYOUT
from .decisions import (ACTIONS, DONE, ERROR, FAILED_ACTION, LATER, LIVE, REFUSED, SUBMIT,
    UNKNOWN, WAIT, Decision, Pack)
from .packs import make_packs
from ..schedulers import Scheduler, SchedulerError, backend_of_status, ending, get_scheduler
from .progress import (COMPLETED, FAILED, NOT_STARTED, QUEUED, RUNNING, UNREADABLE, WAITING,
    RunState, check_liveness, resume_blocker, study_run_states)
from .study_file import Study, load_study

LOCK_FILE = ".kdlab-queue.lock"
LOCK_TIMEOUT_SECONDS = 600.0
# A run whose jobs ended this many times before its training began is not resubmitted
# without --retry-failed: something (data, environment) keeps the job from starting.
MAX_MISSED_STARTS = 3

# ---- deciding ----------------------------------------------------------------------------------

def plan_queue(study: Study, states: list[RunState] | None = None, *,
               liveness: dict[Path, bool | str] | None = None,
               retry_failed: bool = False) -> list[Decision]:
    """One :class:`Decision` per run of ``study`` in priority order; submits nothing. The
    runs to submit are grouped into packs (:func:`~kdlab.study.packs.make_packs`, each
    decision's ``pack``); the ``max_live_jobs`` limit counts jobs, a pack's job once.

    ``states`` defaults to :func:`~kdlab.study.status.study_run_states`; ``liveness`` (run dir ->
    True alive / False gone / str why unknown) to asking the schedulers of the live runs."""
    if states is None:
        states = study_run_states(study)
    if liveness is None:
        liveness = check_liveness(states, study.scheduler.backend)
    ends = ending.gone_job_ends(states, liveness, study.scheduler.backend)
    by_spec = {state.spec: state for state in states}
    accept_earlier = (study.accept_earlier_teachers
                      or study.training.get("augmentation") == "earlier")
    backend = study.scheduler.backend
    began = {_job_key(state, backend) for state in states
             if state.state in (RUNNING, COMPLETED, FAILED) and state.job_id is not None}
    decisions: list[Decision] = []
    candidates: list[Decision] = []
    for state in states:
        decision = _decide(state, by_spec, liveness, retry_failed,
                           _job_key(state, backend) in began, ends.get(state.run_dir))
        if decision.action == SUBMIT and not accept_earlier:
            decision = _unless_teacher_earlier(decision, by_spec)
        decisions.append(decision)
        if decision.action == SUBMIT:
            candidates.append(decision)
    live = live_jobs(decisions, backend)
    slots = max(study.scheduler.max_live_jobs - live, 0)
    for pack in make_packs(study, candidates)[slots:]:
        for decision in pack.members:
            decision.action = LATER
            decision.reason += (f"; held back: {live + slots} of "
                                f"{study.scheduler.max_live_jobs} live jobs")
    return decisions


def _job_key(state: RunState, default_backend: str) -> tuple[str, str | None]:
    """A job as (backend, job id): runs recording the same key are in one job."""
    return backend_of_status(state.status, default_backend), state.job_id


def live_jobs(decisions: list[Decision], default_backend: str) -> int:
    """Live (or possibly live) jobs among ``decisions``: a pack's job counts once."""
    return len({_job_key(decision.run, default_backend) for decision in decisions
                if decision.counts_as_live})


def _decide(state: RunState, by_spec: dict, liveness: dict, retry_failed: bool,
            job_began: bool = False, end: dict | None = None) -> Decision:
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
        gone = f"job {job_id} " + (ending.end_text(end) if end else f"is gone ({state.detail})")
        blocker = resume_blocker(state)
        if blocker is not None:
            if not retry_failed:
                return Decision(state, FAILED_ACTION, f"{gone}: {blocker}", job_end=end)
            decision = Decision(state, SUBMIT, f"retrying: {gone}: {blocker}",
                                retried=True, restart=state.earlier_code, job_end=end)
            return _unless_teacher_missing(decision, by_spec)
        out_of_memory = ending.out_of_memory_count(status, end)
        if out_of_memory >= ending.MAX_OUT_OF_MEMORY and not retry_failed:
            return Decision(state, FAILED_ACTION, f"{gone}; its jobs ran out of memory "
                            f"{out_of_memory} times: raise scheduler.memory, or --retry-failed "
                            "to submit again", job_end=end)
        missed = int(status.get("missed_starts") or 0)
        missed_start = state.state == QUEUED and not job_began
        if missed_start and missed + 1 >= MAX_MISSED_STARTS and not retry_failed:
            return Decision(state, FAILED_ACTION,
                            f"job {job_id} is gone and training never began "
                            f"({missed + 1} jobs so far; see the logs in {state.run_dir}); "
                            "--retry-failed to submit again")
        if state.state == RUNNING:
            why = "resumes from its checkpoint"
        elif missed_start:
            why = "it never began training"
        else:
            why = "it had not begun while other runs of its pack trained"
        decision = Decision(state, SUBMIT, f"{gone}; resubmitting: {why}",
                            missed_start=missed_start, job_end=end)
        return _unless_teacher_missing(decision, by_spec)
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


def _unless_teacher_earlier(decision: Decision, by_spec: dict) -> Decision:
    """A student is not distilled from a teacher the earlier research code trained (other
    augmentation, other method weights) unless the study says so."""
    teacher_spec = decision.run.spec.teacher_run()
    teacher = by_spec.get(teacher_spec) if teacher_spec is not None else None
    if teacher is None or not teacher.earlier_code:
        return decision
    return Decision(decision.run, REFUSED,
                    f"teacher {teacher_spec.name} was trained by the earlier research code; "
                    "set accept_earlier_teachers = true (or [training] augmentation = "
                    "\"earlier\") in the study to distil from it")


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


def submit_pack(study: Study, pack: Pack, scheduler: Scheduler) -> str:
    """Submit one pack as one job; every member's status.json says ``queued`` with the job
    id (and, for several members, ``pack``: their names) before the job can start. The job's
    script and logs go to the first member's directory. Returns the job id; raises
    SchedulerError when the submission fails."""
    names = pack.names
    changes = [_submission_changes(scheduler, decision, names) for decision in pack.members]
    for decision in pack.members:  # the job's input, from the study: replaces a damaged one
        write_config_file(decision.run.run_dir,
                          complete_options(study.train_config(decision.run.spec)), force=True)
    argv = scheduler.argv(study.scheduler, pack_arguments(study, pack))

    def record(job_id: str) -> None:
        for decision, change in zip(pack.members, changes):
            state_files.update_status(decision.run.run_dir, job_id=job_id, **change)

    return scheduler.submit(_job_name(pack), argv, pack.members[0].run.run_dir,
                            study.scheduler, record)


def pack_arguments(study: Study, pack: Pack) -> list[str]:
    """The ``kdlab`` arguments of a pack's job: ``train --config A --config B ...``."""
    arguments = ["train"] + (["--force-restart"] if any(d.restart for d in pack.members) else [])
    for decision in pack.members:
        arguments += study.train_command(decision.run.spec)[1:]
    return arguments


def _job_name(pack: Pack) -> str:
    lead = pack.members[0].run
    return lead.spec.name if len(pack.members) == 1 else f"{lead.spec.name}-pack{len(pack.members)}"


def job_scripts(study: Study, decisions: list[Decision], scheduler: Scheduler) -> list[str]:
    """The job script of every pack about to be submitted, rendered now: a value that no
    script may hold is a UserError before anything is written or submitted."""
    return [scheduler.job_script_text(_job_name(pack),
                                      scheduler.argv(study.scheduler, pack_arguments(study, pack)),
                                      pack.members[0].run.run_dir, study.scheduler)
            for pack in packs_of(decisions) if pack.members[0].action == SUBMIT]


def submit_run(study: Study, decision: Decision, scheduler: Scheduler) -> str:
    """Submit one run alone (a pack of one)."""
    return submit_pack(study, Pack([decision]), scheduler)


def _submission_changes(scheduler: Scheduler, decision: Decision, names: list[str]) -> dict:
    """What a submission writes into a member's status.json (besides the job id)."""
    state = decision.run
    previous = state.status or {}
    changes: dict = {"status": state_files.QUEUED, "scheduler": scheduler.name,
                     "submitted_at": time.time(),
                     "submissions": int(previous.get("submissions") or 0) + 1,
                     "pack": names if len(names) > 1 else None}
    old_job = state_files.job_id_of(previous)
    if old_job is not None:
        changes["job_history"] = list(previous.get("job_history") or []) + [old_job]
    if decision.missed_start and old_job is not None:
        changes["missed_starts"] = int(previous.get("missed_starts") or 0) + 1
    elif state.state == RUNNING:
        changes["missed_starts"] = None
    if state.state == FAILED or decision.retried:
        changes["previous_reason"] = previous.get("reason")
        changes["reason"] = None
    if decision.retried:
        changes["environment_failures"] = None
    return changes


def run_queue(study: Study, *, dry_run: bool = False, retry_failed: bool = False,
              say: Callable[[str], None] = print, scheduler: Scheduler | None = None,
              show_script: bool = False) -> tuple[list[Decision], int]:
    """Decide and (unless ``dry_run``) submit; print one line per run and a summary.
    Returns the decisions and the exit status (1 when a submission failed, else 0)."""
    scheduler = scheduler or get_scheduler(study.scheduler.backend)
    if show_script and not dry_run:
        raise UserError("kdlab queue: --show-script needs --dry-run (it prints the job "
                        "scripts that would be submitted)")
    if dry_run:
        decisions = plan_queue(study, retry_failed=retry_failed)
        for decision in decisions:
            say(decision.line(dry_run=True))
        for line in pack_lines(decisions, dry_run=True):
            say(line)
        if show_script:
            for text in job_scripts(study, decisions, scheduler):
                say(text)
        say(summary_line(study, decisions, dry_run=True))
        return decisions, 0
    if study.layout == NO_ALPHA_LAYOUT and not study.trains_without_alpha:
        raise UserError(f"{study.path}: layout = \"no-alpha\" is for reading an archived tree "
                        "(status, plot, extract, analyze); expected the default layout (or "
                        "training.objective = \"benchmark\", which has no alpha) to submit runs")
    problem = scheduler.available()
    if problem is not None:
        raise UserError(f"{study.path}: scheduler.backend '{scheduler.name}' cannot be used "
                        f"here: {problem}")
    exit_status = 0
    with queue_lock(study.experiments_dir, say=say):
        decisions = plan_queue(study, retry_failed=retry_failed)
        job_scripts(study, decisions, scheduler)  # refuse a bad value before any submission
        submission_error: str | None = None
        for decision in decisions:
            changes = ending.status_changes(decision.run.status, decision.job_end or {})
            if changes:  # why its job ended is kept in status.json, whatever happens next
                try:
                    state_files.update_status(decision.run.run_dir, **changes)
                except (OSError, state_files.StateFileError) as error:
                    decision.reason += f"; not recorded why its job ended: {error}"
            pack = decision.pack
            if decision.action == SUBMIT and not pack.tried:
                pack.tried = True
                if submission_error is not None:
                    _mark(pack, LATER, "; not submitted: an earlier submission failed")
                else:
                    try:
                        pack.job_id = submit_pack(study, pack, scheduler)
                        for member in pack.members:
                            member.job_id = pack.job_id
                        _mark(pack, SUBMIT, f" -> job {pack.job_id}")
                    except (SchedulerError, OSError, state_files.StateFileError,
                            UserError) as error:
                        submission_error = str(error)
                        _mark(pack, ERROR, f"; submission failed: {error}")
                        exit_status = 1
            say(decision.line())
        for line in pack_lines(decisions):
            say(line)
    say(summary_line(study, decisions))
    return decisions, exit_status


def _mark(pack: Pack, action: str, note: str) -> None:
    for member in pack.members:
        member.action = action
        member.reason += note


def packs_of(decisions: list[Decision]) -> list[Pack]:
    """The packs of ``decisions`` (submitted, to submit or held back), in order."""
    packs: dict[int, Pack] = {}
    for decision in decisions:
        if decision.pack is not None:
            packs.setdefault(id(decision.pack), decision.pack)
    return sorted(packs.values(), key=lambda pack: pack.number)


def pack_lines(decisions: list[Decision], dry_run: bool = False) -> list[str]:
    """One line per pack of several runs (none when every job trains one run)."""
    return [pack.line(dry_run) for pack in packs_of(decisions) if len(pack.members) > 1]


def summary_line(study: Study, decisions: list[Decision], dry_run: bool = False) -> str:
    counts = {action: 0 for action in ACTIONS}
    for decision in decisions:
        counts[decision.action] += 1
    new_jobs = len([pack for pack in packs_of(decisions) if pack.members[0].action == SUBMIT])
    live_after = (live_jobs(decisions, study.scheduler.backend)
                  + (0 if dry_run else new_jobs))
    submitted = "would submit" if dry_run else "submitted"
    if new_jobs != counts[SUBMIT]:
        submitted += f" in {new_jobs} job{'s' if new_jobs != 1 else ''}"
    parts = [f"{counts[DONE]} completed", f"{counts[LIVE]} live",
             f"{counts[SUBMIT]} {submitted}", f"{counts[LATER]} held back",
             f"{counts[WAIT]} waiting for teacher", f"{counts[FAILED_ACTION]} failed",
             f"{counts[UNKNOWN]} liveness unknown", f"{counts[ERROR]} errors"]
    if counts[REFUSED]:
        parts.append(f"{counts[REFUSED]} refused (earlier-code teacher)")
    limit = (f"live jobs {live_after}/{study.scheduler.max_live_jobs}" if not dry_run
             else f"limit {study.scheduler.max_live_jobs} live jobs")
    return (f"{'dry run: ' if dry_run else ''}study {study.name}: {len(decisions)} runs: "
            f"{', '.join(parts)} ({limit}, backend {study.scheduler.backend})")


def command(args) -> int:
    study = load_study(args.study)
    _, exit_status = run_queue(study, dry_run=args.dry_run, retry_failed=args.retry_failed,
                               show_script=getattr(args, "show_script", False))
    return exit_status
