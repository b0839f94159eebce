"""The epoch loop over one student or a pack: levelled, then lock-step; after each epoch a
student is evaluated, guarded and saved (``best.pth``, its snapshot when the epoch is one of
``snapshot_epochs``, ``checkpoint.pth``, ``metrics.json``, ``status.json``, in that order,
each atomically)."""

from __future__ import annotations

import time
from pathlib import Path

from ..run import layout, state_files
from ..run.config import TrainConfig
from .guards import Preempted, StopFlag, check_epoch
from .loop import evaluate, train_epoch
from .selection import VALIDATION, accuracy_summary
from .state import Student


def run_epochs(students: list[Student], teacher, data, flag: StopFlag, *,
               isolate: bool = False) -> None:
    """Train every student to its last epoch; set each one's ``result``. Students behind
    the others (resumed from an older checkpoint) train alone until they are level."""
    try:
        while True:
            waiting = [student for student in students if student.result is None
                       and student.state.epoch < student.ctx.config.epochs]
            if not waiting:
                break
            epoch = min(student.state.epoch for student in waiting)
            active = [student for student in waiting if student.state.epoch == epoch]
            started = time.perf_counter()
            # The rate each epoch trains with (the schedule steps after the epoch).
            rates = [student.state.optimizer.param_groups[0]["lr"] for student in active]
            stats = train_epoch(active, teacher, data, epoch, flag, isolate=isolate)
            for student, student_stats, lr in zip(active, stats, rates):
                finish_epoch(student, student_stats, data, epoch, started, lr)
    except Preempted:
        for student in students:
            if student.result is None:
                mark_stopped(student, flag.signal_name)
        return
    finally:
        for student in students:
            if student.events is not None:
                student.events.close()
    for student in students:
        if student.result is None:
            _completed(student)


def finish_epoch(student: Student, train_stats: dict, data, epoch: int, started: float,
                 lr: float) -> None:
    """Evaluate, guard and save epoch ``epoch`` (0-based) of ``student``, trained at rate
    ``lr``; a failure ends it."""
    ctx, state = student.ctx, student.state
    if student.failure is not None:
        _fail(student, student.failure, epoch + 1)
        return
    state.scheduler.step()
    size = ctx.config.eval_batch_size
    evaluation = {"test": evaluate(state.model, data, size, ctx.amp_dtype)}
    if ctx.config.selection == VALIDATION:
        evaluation[VALIDATION] = evaluate(state.model, data, size, ctx.amp_dtype,
                                          split=VALIDATION)
    test_loss, test_acc = evaluation["test"]
    seconds = time.perf_counter() - started
    failure = check_epoch(train_stats, epoch)
    state.record_epoch(train_stats, evaluation, seconds, lr)
    if failure:
        _fail(student, failure, epoch + 1)
        return
    state.epoch = epoch + 1
    _save_epoch(student, evaluation[ctx.config.selection][1])
    if student.events is not None:
        student.events.write(state.metrics, state.epoch)
    images_per_second = train_stats["images"] / max(train_stats["seconds"], 1e-9)
    ctx.say(f"{ctx.spec.name} epoch {epoch + 1}/{ctx.config.epochs}  "
            f"loss {train_stats['loss']:.4f}  acc {train_stats['acc']:.2f}%  "
            f"test_loss {test_loss:.4f}  test_acc {test_acc:.2f}%  "
            f"{images_per_second:.0f} img/s  {seconds:.1f}s")


def _save_epoch(student: Student, selection_acc: float) -> None:
    """best.pth (when the accuracy on the selection split improved), the epoch's snapshot,
    checkpoint.pth, metrics.json, status.json — in that order, so that a kill between two
    writes resumes from a consistent checkpoint (a snapshot written before the kill is
    written again, with the same weights, by the epoch the resume repeats)."""
    ctx, state, status = student.ctx, student.state, student.status
    if selection_acc > state.best_acc:
        state.best_acc = selection_acc
        state_files.atomic_torch_save({"weights": state.model.state_dict()},
                                   ctx.run_dir / state_files.BEST_FILE)
    if state.epoch in ctx.config.snapshot_epoch_list:
        state_files.atomic_torch_save({"weights": state.model.state_dict(), "epoch": state.epoch},
                                   layout.snapshot_path(ctx.run_dir, state.epoch))
    state_files.atomic_torch_save(state.state_dict(), ctx.run_dir / state_files.CHECKPOINT_FILE)
    write_metrics(ctx.run_dir, state.metrics, ctx.config)
    status.update(epoch=state.epoch, **accuracy_summary(state.metrics, ctx.config.selection),
                  duration_seconds=sum(state.metrics["epoch_seconds"]))
    status.pop("environment_failures", None)  # it progressed: the count starts over
    write_status(ctx.run_dir, status)


def _fail(student: Student, reason: str, epoch: int) -> None:
    ctx = student.ctx
    write_metrics(ctx.run_dir, student.state.metrics, ctx.config)
    student.status.update(status=state_files.FAILED, reason=reason, failed_epoch=epoch,
                          failed_at=time.time())
    write_status(ctx.run_dir, student.status)
    ctx.say(f"{ctx.spec.name}: FAILED at epoch {epoch}: {reason}", always=True)
    student.result = state_files.FAILED


def mark_stopped(student: Student, signal_name: str | None) -> None:
    student.status.update(stopped_by=signal_name, stopped_at=time.time())
    write_status(student.ctx.run_dir, student.status)
    student.ctx.say(f"{student.ctx.spec.name}: stopped by {signal_name}; checkpoint of epoch "
                    f"{student.status['epoch']} kept, resumes from there", always=True)
    student.result = state_files.IN_PROGRESS


def _completed(student: Student) -> None:
    student.status.update(status=state_files.COMPLETED, completed_at=time.time())
    student.status.pop("stopped_by", None)
    student.status.pop("stopped_at", None)
    write_status(student.ctx.run_dir, student.status)
    config = student.ctx.config
    summary = accuracy_summary(student.state.metrics, config.selection)
    chosen = summary.get("selected_acc", summary["max_acc"])
    student.ctx.say(f"{student.ctx.spec.name}: completed, test accuracy {chosen:.2f}% at the "
                    f"epoch chosen on the {config.selection} split (epoch "
                    f"{summary.get('selected_epoch', '-')})")
    student.result = state_files.COMPLETED


def write_status(run_dir: Path, status: dict) -> None:
    # Merge with what is on disk so that a job id written by the queue after we started
    # (e.g. a re-submission that found this process alive) is never lost.
    try:
        on_disk = state_files.read_status(run_dir) or {}
    except state_files.StateFileError:
        on_disk = {}
    for key in ("job_id", "scheduler", "submitted_at", "pack"):
        if key in on_disk and key not in status:
            status[key] = on_disk[key]
    state_files.write_status(run_dir, status)


def write_metrics(run_dir: Path, metrics: dict, config: TrainConfig) -> None:
    state_files.atomic_write_json(run_dir / state_files.METRICS_FILE,
                               {**metrics, "config": config.to_dict(), "epochs": config.epochs})
