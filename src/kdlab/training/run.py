"""One run: validate, skip when done, train or resume, record a crash as a failure.

One call of :func:`train_run` trains (or resumes, or skips) the run that a
:class:`~kdlab.run.config.TrainConfig` describes. After every epoch it writes, each atomically:
``best.pth`` (when the accuracy on the selection split improved: test, or the validation
hold-out, see :mod:`kdlab.training.selection`), ``checkpoint.pth`` (everything needed to
resume), ``metrics.json`` and ``status.json``. Killed at any instant, the run resumes from
the last finished epoch and ends with exactly the metrics of an uninterrupted run (on CPU):
shuffling and augmentation of epoch ``e`` draw from a generator seeded by ``(seed, e)``, and
the checkpoint restores every other piece of state.

A stop request (SIGTERM or SIGUSR1, what schedulers send ahead of the walltime kill) ends the
run at the next batch boundary: the partial epoch is dropped (the checkpoint of the last
finished epoch is already on disk), the status stays ``in_progress`` and the process exits
with :data:`~kdlab.run.errors.EXIT_PREEMPTED` so that a re-queue resumes it.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

from ..run import layout, state_files
from ..run.config import (TrainConfig, complete_options, check_config_file, validate_config,
    write_config_file)
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


def train_run(config: TrainConfig, *, force_restart: bool = False, download: bool = False,
              quiet: bool = False) -> str:
    """Train, resume or skip the run of ``config``; return its final status
    ('completed', 'failed', or 'in_progress' when stopped by a signal or by an environment
    failure such as a full disk)."""
    validate_config(config)
    if config.distillation != PURE:
        config = complete_options(config)
    spec = config.run_spec()
    run_dir = layout.run_dir(config.experiments_dir, spec)
    check_writable(run_dir)
    flag = StopFlag()
    device = device_module.resolve_device(config.device)
    ctx = RunContext(config, spec, run_dir, device, quiet,
                     device_module.amp_dtype(device, config.precision))
    with RunLock(run_dir) as lock, stop_signals(flag), \
            thread_limits(config.threads) as threads:
        ctx.threads = threads
        if run_dir.exists():  # refuse early when another process trains it
            lock.acquire()
        status = read_own_status(run_dir, force_restart)
        if status and status["status"] == state_files.COMPLETED and not force_restart:
            ctx.say(f"{spec.name}: already completed (best test accuracy "
                    f"{status.get('max_acc', float('nan')):.2f}%); --force-restart to retrain")
            return state_files.COMPLETED
        try:
            return _train(ctx, status, force_restart, download, flag, lock)
        except WriteError as error:  # the writer's one-line form of a full disk, a lost mount
            return record_environment_failure(ctx, error)
        except (UserError, KeyboardInterrupt):
            raise
        except OSError as error:
            return record_environment_failure(ctx, error)
        except Exception as error:
            return record_crash(ctx, error)


def read_own_status(run_dir: Path, force_restart: bool) -> dict | None:
    try:
        return state_files.read_status(run_dir)
    except state_files.StateFileError as error:
        if not force_restart:
            raise UserError(f"{error}; kept it: fix it or pass --force-restart") from None
        return None


def record_crash(ctx: RunContext, error: Exception) -> str:
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


def record_environment_failure(ctx: RunContext, error: OSError) -> str:
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


def check_writable(run_dir: Path) -> None:
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


def load_teacher(config: TrainConfig, num_classes: int, device: torch.device):
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


def _train(ctx: RunContext, status: dict | None, force_restart: bool, download: bool,
           flag: StopFlag, lock: RunLock) -> str:
    config = ctx.config
    device_module.make_deterministic(ctx.device, config.seed)
    data, info, validation_split = load_data(config, ctx.device, download)
    teacher = (load_teacher(config, info.num_classes, ctx.device)
               if config.distillation != PURE else None)
    state = build_state(ctx, info.num_classes, info.image_size, data.train_labels, teacher)
    restore_state(ctx, state, force_restart)
    if not lock.held:  # a new run: its directory is created only now, once all is valid
        lock.acquire()
    student = start_student(ctx, state, status, force_restart, validation_split)
    try:
        if state.distiller is not None:
            pretrain(ctx, state.distiller, teacher, data, flag, fresh=force_restart)
    except Preempted:
        mark_stopped(student, flag.signal_name)
        return student.result
    run_epochs([student], teacher, data, flag)
    return student.result


def load_data(config: TrainConfig, device: torch.device, download: bool):
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


def restore_state(ctx: RunContext, state: TrainingState, force_restart: bool) -> None:
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


def start_student(ctx: RunContext, state: TrainingState, status: dict | None,
                  force_restart: bool, validation_split: dict | None = None) -> Student:
    """Write what a run that now trains owns, once :func:`restore_state` has checked it:
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
