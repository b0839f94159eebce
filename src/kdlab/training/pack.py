"""A pack: many runs of one data set, seed, batch size and teacher trained by one process.

Each batch is loaded and augmented once and the teacher runs once on it; then every student
steps. A student keeps its own run directory, files, optimizer, schedule and method modules,
and is initialised from the global generator exactly as a solo run (the same seed, the same
draws before it), so a packed run ends with the metrics and weights it gets alone (on CPU).
One student's failure is its own, a member that cannot resume (a damaged checkpoint, other
settings) included: it leaves the pack, failed with the reason, and the others train on. A
stop signal stops all, each with its last epoch saved. A pack never holds the teacher of one
of its members.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass

from ..run import layout, state_files
from ..run.config import TrainConfig, complete_options, pack_shared_fields, validate_config
from ..run.errors import UserError, WriteError
from ..run.layout import PURE
from . import device as device_module
from .epochs import mark_stopped, run_epochs, write_status
from .guards import Preempted, StopFlag, stop_signals
from .lock import RunLock
from .loop import pretrain
from .run import (check_writable, read_own_status, record_crash,
                  record_environment_failure, load_data, load_teacher, restore_state,
                  start_student, train_run)
from .state import RunContext, Student, build_state
from .threads import thread_limits

# What the members of a pack share (and the teacher model, for its KD members): every
# setting but the per-run ones (kdlab.run.config.PER_RUN_FIELDS), as the queue groups them.
PACK_KEYS = tuple(pack_shared_fields())


@dataclass
class _Member:
    ctx: RunContext
    status: dict | None
    lock: RunLock
    left: bool = False  # it could not resume and left the pack, failed (see _leave_pack)


def check_pack(configs: list[TrainConfig]) -> None:
    """A UserError naming the first setting that keeps ``configs`` from training as a pack."""
    first = configs[0]
    for config in configs[1:]:
        for key in PACK_KEYS:
            if getattr(config, key) != getattr(first, key):
                raise UserError(f"runs {first.run_spec().name} and {config.run_spec().name} "
                                f"differ in {key} ({getattr(first, key)!r} vs "
                                f"{getattr(config, key)!r}): expected a pack to share "
                                f"{', '.join(PACK_KEYS)} and the teacher")
    teachers = {config.teacher_model for config in configs if config.distillation != PURE}
    if len(teachers) > 1:
        raise UserError(f"the runs of a pack distil from {', '.join(sorted(teachers))}: "
                        "expected one teacher")
    specs = {config.run_spec() for config in configs}
    for config in configs:  # experiments_dir is shared: a run spec names one directory
        teacher_spec = config.run_spec().teacher_run()
        if teacher_spec in specs:
            raise UserError(f"run {teacher_spec.name} is the teacher of run "
                            f"{config.run_spec().name} in the same pack: expected a teacher "
                            "to be trained (and completed) alone before its students")
    names = [config.run_spec().name for config in configs]
    if len(set(names)) != len(names):
        raise UserError(f"run {max(names, key=names.count)} is given twice: expected each run "
                        "once in a pack")


def train_pack(configs: list[TrainConfig], *, force_restart: bool = False,
               download: bool = False, quiet: bool = False) -> dict[str, str]:
    """Train, resume or skip the runs of ``configs`` as one pack; their final statuses by
    run name ('completed', 'failed' or 'in_progress')."""
    if len(configs) == 1:
        return {configs[0].run_spec().name: train_run(configs[0], force_restart=force_restart,
                                                      download=download, quiet=quiet)}
    for config in configs:
        validate_config(config)
    configs = [complete_options(config) if config.distillation != PURE else config
               for config in configs]
    check_pack(configs)
    device = device_module.resolve_device(configs[0].device)
    amp_dtype = device_module.amp_dtype(device, configs[0].precision)
    results: dict[str, str] = {}
    flag = StopFlag()
    with contextlib.ExitStack() as stack, stop_signals(flag), \
            thread_limits(configs[0].threads) as threads:
        members = []
        for config in configs:
            spec = config.run_spec()
            run_dir = layout.run_dir(config.experiments_dir, spec)
            check_writable(run_dir)
            ctx = RunContext(config, spec, run_dir, device, quiet, amp_dtype)
            ctx.threads = threads
            lock = stack.enter_context(RunLock(run_dir))
            if run_dir.exists():
                lock.acquire()
            try:
                status = read_own_status(run_dir, force_restart)
            except UserError as error:
                # Its status.json is damaged: it is kept for the user (writing 'failed'
                # would replace it), and the member stays out of the pack so the others
                # train on instead of stalling in every job the queue submits.
                print(f"{spec.name}: FAILED, left its pack: {error}", file=sys.stderr,
                      flush=True)
                results[spec.name] = state_files.FAILED
                continue
            if status and status["status"] == state_files.COMPLETED and not force_restart:
                ctx.say(f"{spec.name}: already completed; --force-restart to retrain")
                results[spec.name] = state_files.COMPLETED
                continue
            members.append(_Member(ctx, status, lock))
        if members:
            results.update(_train_members(members, force_restart, download, flag))
    return results


def _train_members(members: list[_Member], force_restart: bool, download: bool,
                   flag: StopFlag) -> dict[str, str]:
    students: list[Student] = []
    try:
        teacher, data = _setup(members, students, force_restart, download)
        for student in students:
            if student.state.distiller is not None:
                pretrain(student.ctx, student.state.distiller, teacher, data, flag,
                         fresh=force_restart)
        run_epochs(students, teacher, data, flag, isolate=True)
    except WriteError as error:  # a full disk or lost mount: every unfinished run resumes
        return _unfinished(members, students, error, environment=True)
    except (UserError, KeyboardInterrupt):
        raise
    except Preempted:
        for student in students:
            if student.result is None:
                mark_stopped(student, flag.signal_name)
    except Exception as error:  # outside any one student's step: every unfinished one
        return _unfinished(members, students, error, environment=isinstance(error, OSError))
    return {**{member.ctx.spec.name: state_files.FAILED for member in members if member.left},
            **{student.ctx.spec.name: student.result for student in students}}


def _leave_pack(member: _Member, reason: str) -> None:
    """Record ``member`` as failed with ``reason`` (it waits for the user: ``kdlab queue
    --retry-failed`` or ``kdlab train --force-restart``); its other files are kept."""
    member.left = True
    try:
        state_files.update_status(member.ctx.run_dir, status=state_files.FAILED, reason=reason,
                               failed_at=time.time())
    except (OSError, state_files.StateFileError):
        pass  # the line below still names it
    print(f"{member.ctx.spec.name}: FAILED, left its pack: {reason}", file=sys.stderr,
          flush=True)


def _unfinished(members: list[_Member], students: list[Student], error: Exception,
                environment: bool) -> dict[str, str]:
    """Record ``error`` for every member that has no result yet; the results by run name."""
    for member in members:
        if not member.left and not any(student.ctx is member.ctx and student.result for student in students):
            (record_environment_failure if environment else record_crash)(member.ctx, error)
    unfinished = state_files.IN_PROGRESS if environment else state_files.FAILED
    return {member.ctx.spec.name: state_files.FAILED if member.left else
            next((student.result for student in students
                  if student.ctx is member.ctx and student.result), unfinished)
            for member in members}


def _setup(members: list[_Member], students: list[Student], force_restart: bool,
           download: bool):
    """Data and teacher once; then each student drawn as a solo run draws it."""
    from ..models import build_model

    lead = members[0].ctx
    device_module.make_deterministic(lead.device, lead.config.seed)
    data, info, validation_split = load_data(lead.config, lead.device, download)
    kd_configs = [m.ctx.config for m in members if m.ctx.config.distillation != PURE]
    teacher = load_teacher(kd_configs[0], info.num_classes, lead.device) if kd_configs else None
    checked = []
    for member in members:
        config = member.ctx.config
        device_module.seed_everything(config.seed)
        if config.distillation != PURE:  # the draws of the teacher a solo run builds first
            build_model(config.teacher_model, info.num_classes)
        state = build_state(member.ctx, info.num_classes, info.image_size,
                            data.train_labels, teacher)
        try:
            restore_state(member.ctx, state, force_restart)
        except UserError as error:
            # A member that cannot resume (a damaged checkpoint or config.json, other
            # settings) leaves the pack, failed with the reason: a pack that stopped for it
            # would stall its healthy members in every job the queue submits.
            _leave_pack(member, str(error))
            continue
        checked.append((member, state))
    for member, state in checked:  # every check passed: now the members' files are written
        if not member.lock.held:  # a new run: its directory is made only now, all valid
            member.lock.acquire()
        students.append(start_student(member.ctx, state, member.status, force_restart,
                                      validation_split))
    names = sorted(member.ctx.spec.name for member, _ in checked)
    for student in students:  # each member's status names its pack (the queue's order kept)
        if student.status.get("pack") is None or set(student.status["pack"]) != set(names):
            student.status["pack"] = names
        write_status(student.ctx.run_dir, student.status)
    return teacher, data
