"""Training runs: one set-up path for a pack of runs, one run being a pack of one.

:func:`train_pack` trains (or resumes, or skips) the runs that some
:class:`~kdlab.run.config.TrainConfig` describe in one process; :func:`train_run` is the pack
of one. A pack's runs share one data set, seed, batch size and teacher: each batch is loaded
and augmented once and the teacher runs once on it; then every student steps. A student
keeps its own run directory, files, optimizer, schedule and method modules, and is
initialised from the global generator exactly as it is alone (the same seed, the same draws
before it), so a packed run ends with the metrics and weights it gets alone (on CPU).

After every epoch each run writes, each atomically: ``best.pth`` (when the accuracy on the
selection split improved: test, or the validation hold-out, see
:mod:`kdlab.training.selection`), ``checkpoint.pth`` (everything needed to resume),
``metrics.json`` and ``status.json``. Killed at any instant, a run resumes from the last
finished epoch and ends with exactly the metrics of an uninterrupted run (on CPU): shuffling
and augmentation of epoch ``e`` draw from a generator seeded by ``(seed, e)``, and the
checkpoint restores every other piece of state.

A stop request (SIGTERM or SIGUSR1, what schedulers send ahead of the walltime kill) ends
the runs at the next batch boundary: the partial epoch is dropped (the checkpoint of the
last finished epoch is already on disk), the status stays ``in_progress`` and the process
exits with :data:`~kdlab.run.errors.EXIT_PREEMPTED` so that a re-queue resumes it.

A run alone raises what the user must fix (a damaged status or checkpoint, settings that
differ from its config.json) as a one-line UserError. In a pack of several, one run's
failure is its own, a member that cannot resume included: it leaves the pack, failed with
the reason, and the others train on. A pack never holds the teacher of one of its members.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..run import layout, state_files
from ..run.config import (TrainConfig, check_config_file, complete_options, pack_shared_fields,
                          validate_config, write_config_file)
from ..run.errors import UserError, WriteError
from ..run.layout import PURE
from . import device as device_module
from .epochs import mark_stopped, run_epochs, write_status
from .guards import Preempted, StopFlag, stop_signals
from .lock import RunLock
from .loop import crash_reason, pretrain
from .selection import VALIDATION, accuracy_summary
from .state import RunContext, Student, TrainingState, build_state, read_checkpoint
from .tensorboard import EpochEvents
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


def train_run(config: TrainConfig, *, force_restart: bool = False, download: bool = False,
              quiet: bool = False) -> str:
    """Train, resume or skip the run of ``config`` (a pack of one); its final status
    ('completed', 'failed', or 'in_progress' when stopped by a signal or by an environment
    failure such as a full disk)."""
    (result,) = train_pack([config], force_restart=force_restart, download=download,
                           quiet=quiet).values()
    return result


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
    alone = len(configs) == 1
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
            _check_writable(run_dir)
            ctx = RunContext(config, spec, run_dir, device, quiet, amp_dtype)
            ctx.threads = threads
            lock = stack.enter_context(RunLock(run_dir))
            if run_dir.exists():
                lock.acquire()
            try:
                status = _read_own_status(run_dir, force_restart)
            except UserError as error:
                if alone:
                    raise
                # Its status.json is damaged: it is kept for the user (writing 'failed'
                # would replace it), and the member stays out of the pack so the others
                # train on instead of stalling in every job the queue submits.
                print(f"{spec.name}: FAILED, left its pack: {error}", file=sys.stderr,
                      flush=True)
                results[spec.name] = state_files.FAILED
                continue
            if status and status["status"] == state_files.COMPLETED and not force_restart:
                ctx.say(f"{spec.name}: already completed (best test accuracy "
                        f"{status.get('max_acc', float('nan')):.2f}%); --force-restart to retrain")
                results[spec.name] = state_files.COMPLETED
                continue
            members.append(_Member(ctx, status, lock))
        if members:
            results.update(_train_members(members, force_restart, download, flag, alone))
    return results


def _train_members(members: list[_Member], force_restart: bool, download: bool,
                   flag: StopFlag, alone: bool) -> dict[str, str]:
    students: list[Student] = []
    try:
        teacher, data = _setup(members, students, force_restart, download, alone)
        for student in students:
            if student.state.distiller is not None:
                pretrain(student.ctx, student.state.distiller, teacher, data, flag,
                         fresh=force_restart)
        run_epochs(students, teacher, data, flag, isolate=not alone)
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
            (_record_environment_failure if environment else _record_crash)(member.ctx, error)
    unfinished = state_files.IN_PROGRESS if environment else state_files.FAILED
    return {member.ctx.spec.name: state_files.FAILED if member.left else
            next((student.result for student in students
                  if student.ctx is member.ctx and student.result), unfinished)
            for member in members}


def _setup(members: list[_Member], students: list[Student], force_restart: bool,
           download: bool, alone: bool):
    """Data and teacher once; then each student drawn as it is alone (the same seed, the
    draws of the teacher a run builds before its student)."""
    from ..models import build_model

    lead = members[0].ctx
    device_module.make_deterministic(lead.device, lead.config.seed)
    data, info, validation_split = _load_data(lead.config, lead.device, download)
    kd_configs = [m.ctx.config for m in members if m.ctx.config.distillation != PURE]
    teacher = _load_teacher(kd_configs[0], info.num_classes, lead.device) if kd_configs else None
    checked = []
    for member in members:
        config = member.ctx.config
        device_module.seed_everything(config.seed)
        if config.distillation != PURE:  # the draws of the teacher it builds before its student
            build_model(config.teacher_model, info.num_classes)
        state = build_state(member.ctx, info.num_classes, info.image_size,
                            data.train_labels, teacher)
        try:
            _restore_state(member.ctx, state, force_restart)
        except UserError as error:
            if alone:
                raise
            # A member that cannot resume (a damaged checkpoint or config.json, other
            # settings) leaves the pack, failed with the reason: a pack that stopped for it
            # would stall its healthy members in every job the queue submits.
            _leave_pack(member, str(error))
            continue
        checked.append((member, state))
    for member, state in checked:  # every check passed: now the members' files are written
        if not member.lock.held:  # a new run: its directory is made only now, all valid
            member.lock.acquire()
        students.append(_start_student(member.ctx, state, member.status, force_restart,
                                      validation_split))
    if alone:
        return teacher, data
    names = sorted(member.ctx.spec.name for member, _ in checked)
    for student in students:  # each member's status names its pack (the queue's order kept)
        if student.status.get("pack") is None or set(student.status["pack"]) != set(names):
            student.status["pack"] = names
        write_status(student.ctx.run_dir, student.status)
    return teacher, data


def _read_own_status(run_dir: Path, force_restart: bool) -> dict | None:
    try:
        return state_files.read_status(run_dir)
    except state_files.StateFileError as error:
        if not force_restart:
            raise UserError(f"{error}; kept it: fix it or pass --force-restart") from None
        return None


def _record_crash(ctx: RunContext, error: Exception) -> str:
    """A crash must not leave the run 'in_progress' (a re-queue would resubmit it for ever):
    record it as failed with the reason, keep the traceback in the log."""
    import traceback

    traceback.print_exc()
    reason = crash_reason(error)
    try:
        state_files.update_status(ctx.run_dir, status=state_files.FAILED, reason=reason,
                               failed_at=time.time())
    except (OSError, state_files.StateFileError):
        pass
    print(f"{ctx.spec.name}: FAILED: {reason}", file=sys.stderr, flush=True)
    return state_files.FAILED


def _record_environment_failure(ctx: RunContext, error: OSError) -> str:
    """A full disk, a lost mount, an I/O error: not the run's fault. The last checkpoint is
    kept (writes are atomic), the run stays resumable ('in_progress' with the reason), and
    ``environment_failures`` counts such ends since the last finished epoch, so that the queue
    resubmits it a bounded number of times."""
    reason = f"environment failure: {type(error).__name__}: {error}"
    try:
        previous = state_files.read_status(ctx.run_dir) or {}
        failures = int(previous.get("environment_failures") or 0) + 1
        state_files.update_status(ctx.run_dir, status=state_files.IN_PROGRESS, reason=reason,
                               environment_failures=failures, environment_failed_at=time.time())
    except (OSError, ValueError, TypeError, state_files.StateFileError):
        pass  # e.g. the disk is still full: the status stays 'in_progress' all the same
    print(f"{ctx.spec.name}: stopped by an {reason}; the checkpoint of the last finished "
          "epoch is kept and the run resumes from there", file=sys.stderr, flush=True)
    return state_files.IN_PROGRESS


def _check_writable(run_dir: Path) -> None:
    """Refuse an unwritable experiments directory without creating anything: probe the run
    directory, or its nearest existing ancestor when it does not exist yet."""
    target = run_dir
    while not target.exists() and target != target.parent:
        target = target.parent
    try:
        if not target.is_dir():
            raise NotADirectoryError(20, "Not a directory")
        probe = target / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise UserError(f"cannot write the run directory {run_dir} "
                        f"({error.strerror or error}): expected a writable experiments "
                        "directory") from None


def _load_teacher(config: TrainConfig, num_classes: int, device: torch.device):
    """The finished teacher of a KD run, frozen and in eval mode."""
    from ..models import build_model, load_weights_file

    teacher_spec = config.run_spec().teacher_run()
    teacher_dir = layout.run_dir(config.experiments_dir, teacher_spec)
    try:
        status = state_files.read_status(teacher_dir)
    except state_files.StateFileError as error:
        raise UserError(f"teacher run status unreadable: {error}") from None
    if status is None:
        raise UserError(f"teacher run {teacher_dir} has no status.json: train the teacher "
                        f"{teacher_spec.model} on {teacher_spec.dataset} (seed "
                        f"{teacher_spec.seed}) first")
    if status["status"] != state_files.COMPLETED:
        raise UserError(f"teacher run {teacher_dir} is '{status['status']}' (epoch "
                        f"{status.get('epoch', '?')}): a student is only distilled from a "
                        "completed teacher")
    teacher = build_model(config.teacher_model, num_classes)
    load_weights_file(teacher, teacher_dir / state_files.BEST_FILE, what="teacher checkpoint")
    teacher.to(device).eval()
    if config.channels_last:
        teacher.to(memory_format=torch.channels_last)
    teacher.requires_grad_(False)
    return teacher


def _load_data(config: TrainConfig, device: torch.device, download: bool):
    """The run's data on the device (with its augmentation), the data set's facts, and the
    validation hold-out's record when best.pth is chosen on one (else None)."""
    from ..data import DeviceData, load_arrays

    arrays = load_arrays(config.dataset, config.data_root, download=download)
    validation_split = None
    if config.selection == VALIDATION:
        from ..data.validation import hold_out_validation

        arrays, validation_split = hold_out_validation(arrays, config.validation_fraction,
                                                       config.seed)
    return (DeviceData(arrays, device, augmentation=config.augmentation), arrays.info,
            validation_split)


def _restore_state(ctx: RunContext, state: TrainingState, force_restart: bool) -> None:
    """Resume ``state`` from the run's checkpoint (unless ``--force-restart``), after
    checking that the run's config.json may be replaced; writes nothing, so that a refusal
    (a UserError naming the file) leaves the run as it was."""
    check_config_file(ctx.run_dir, ctx.config, force_restart)
    checkpoint_path = ctx.run_dir / state_files.CHECKPOINT_FILE
    if checkpoint_path.exists() and not force_restart:
        state.load_state_dict(read_checkpoint(checkpoint_path, ctx.config))
        ctx.say(f"{ctx.spec.name}: resuming after epoch {state.epoch}/{ctx.config.epochs}")


def _start_over(ctx: RunContext, state: TrainingState) -> None:
    """``--force-restart``: also remove the method's stage files (factor transfer's
    paraphraser), starting over means stage 1 too, e.g. after the teacher or the batch size
    changed; and the snapshots of the earlier training, which the new one may not write
    again."""
    distiller = state.distiller
    stale = [ctx.run_dir / name
             for name in (distiller.frozen_state_files() if distiller else [])
             if (ctx.run_dir / name).exists()]
    stale += [layout.snapshot_path(ctx.run_dir, epoch)
              for epoch in layout.snapshot_epochs_present(ctx.run_dir)]
    if stale or (ctx.run_dir / state_files.CHECKPOINT_FILE).exists():
        ctx.say(f"{ctx.spec.name}: --force-restart: starting over")
    for path in stale:
        path.unlink()


def _start_student(ctx: RunContext, state: TrainingState, status: dict | None,
                  force_restart: bool, validation_split: dict | None = None) -> Student:
    """Write what a run that now trains owns, once :func:`_restore_state` has checked it:
    its config.json and its status (keeping what others wrote: job id, scheduler,
    submitted_at, pack)."""
    write_config_file(ctx.run_dir, ctx.config, force=force_restart)
    if force_restart:
        _start_over(ctx, state)
    base_status = {key: value for key, value in (status or {}).items() if key != "reason"}
    if force_restart:
        base_status.pop("started_at", None)
    base_status.update(status=state_files.IN_PROGRESS, epoch=state.epoch, epochs=ctx.config.epochs,
                       config=ctx.config.to_dict(), selection=ctx.config.selection,
                       **accuracy_summary(state.metrics, ctx.config.selection),
                       run=ctx.spec.name, host=os.uname().nodename, pid=os.getpid())
    if validation_split is not None:
        base_status["validation_split"] = validation_split
    if ctx.threads is not None:
        base_status.update(threads=ctx.threads["count"], thread_settings=ctx.threads)
    base_status.setdefault("started_at", time.time())
    write_status(ctx.run_dir, base_status)
    return Student(ctx, state, base_status, events=EpochEvents(ctx.run_dir, ctx.config.tensorboard))
