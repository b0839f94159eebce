"""The training loop of one run: pure or distilled, resumable, guarded, signal-aware.

One call of :func:`train_run` trains (or resumes, or skips) the run that a
:class:`~kdlab.config.TrainConfig` describes. After every epoch it writes, each atomically:
``best.pth`` (when the test accuracy improved), ``checkpoint.pth`` (everything needed to
resume), ``metrics.json`` and ``status.json``. Killed at any instant, the run resumes from
the last finished epoch and ends with exactly the metrics of an uninterrupted run (on CPU):
shuffling and augmentation of epoch ``e`` draw from a generator seeded by ``(seed, e)``, and
the checkpoint restores every other piece of state.

A stop request (SIGTERM or SIGUSR1, what schedulers send ahead of the walltime kill) ends the
run at the next batch boundary: the partial epoch is dropped (the checkpoint of the last
finished epoch is already on disk), the status stays ``in_progress`` and the process exits
with :data:`~kdlab.errors.EXIT_PREEMPTED` so that a re-queue resumes it.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import layout, runstate
from .config import (TrainConfig, _with_complete_options, config_from_args,  # noqa: F401
                     parse_options, prepare_configs, validate_config)
from .errors import EXIT_PREEMPTED, UserError
from .layout import PURE

# An epoch in which the grad scaler skipped at least this share of optimizer steps has not
# trained (the earlier round's RKD runs sat at chance for 150 epochs this way).
MAX_SKIPPED_STEP_FRACTION = 0.9
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


@dataclass
class _RunContext:
    config: TrainConfig
    spec: layout.RunSpec
    run_dir: Path
    device: torch.device
    quiet: bool


class _StopFlag:
    """Set by SIGTERM/SIGUSR1; polled between batches (never acted on inside a handler)."""

    def __init__(self) -> None:
        self.signal_name: str | None = None

    def __bool__(self) -> bool:
        return self.signal_name is not None

    def handler(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        self.signal_name = signal.Signals(signum).name


@contextlib.contextmanager
def _stop_signals(flag: _StopFlag):
    previous = {}
    try:
        for signum in _STOP_SIGNALS:
            previous[signum] = signal.signal(signum, flag.handler)
    except ValueError:  # not the main thread: signals stay with whoever owns them
        previous = {}
    try:
        yield flag
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class _Preempted(Exception):
    pass


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator that shuffles and augments epoch ``epoch`` of a run with ``seed``."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but PyTorch sees no CUDA device here")
    return torch.device(name)


def _ensure_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise UserError(f"cannot write the run directory {run_dir} "
                        f"({error.strerror or error}): expected a writable experiments "
                        "directory") from None


def _load_teacher(config: TrainConfig, num_classes: int, device: torch.device):
    """The finished teacher of a KD run, frozen and in eval mode."""
    from .models import build_model, load_weights_file

    teacher_spec = config.run_spec().teacher_run()
    teacher_dir = layout.run_dir(config.experiments_dir, teacher_spec)
    try:
        status = runstate.read_status(teacher_dir)
    except runstate.StateFileError as error:
        raise UserError(f"teacher run status unreadable: {error}") from None
    if status is None:
        raise UserError(f"teacher run {teacher_dir} has no status.json: train the teacher "
                        f"{teacher_spec.model} on {teacher_spec.dataset} (seed "
                        f"{teacher_spec.seed}) first")
    if status["status"] != runstate.COMPLETED:
        raise UserError(f"teacher run {teacher_dir} is '{status['status']}' (epoch "
                        f"{status.get('epoch', '?')}): a student is only distilled from a "
                        "completed teacher")
    teacher = build_model(config.teacher_model, num_classes)
    load_weights_file(teacher, teacher_dir / runstate.BEST_FILE, what="teacher checkpoint")
    teacher.to(device).eval()
    teacher.requires_grad_(False)
    return teacher


# ---- the run -------------------------------------------------------------------------------

def train_run(config: TrainConfig, *, force_restart: bool = False, download: bool = False,
              quiet: bool = False) -> str:
    """Train, resume or skip the run of ``config``; return its final status
    ('completed', 'failed' or 'in_progress' when stopped by a signal)."""
    validate_config(config)
    if config.distillation != PURE:
        config = _with_complete_options(config)
    spec = config.run_spec()
    run_dir = layout.run_dir(config.experiments_dir, spec)
    _ensure_writable(run_dir)

    try:
        status = runstate.read_status(run_dir)
    except runstate.StateFileError as error:
        if not force_restart:
            raise UserError(f"{error}; kept it: fix it or pass --force-restart") from None
        status = None
    if status and status["status"] == runstate.COMPLETED and not force_restart:
        _say(quiet, f"{spec.name}: already completed (best test accuracy "
                    f"{status.get('max_acc', float('nan')):.2f}%); --force-restart to retrain")
        return runstate.COMPLETED

    flag = _StopFlag()
    with _stop_signals(flag):
        try:
            return _train(_RunContext(config, spec, run_dir, resolve_device(config.device),
                                      quiet), status, force_restart, download, flag)
        except (UserError, KeyboardInterrupt):
            raise
        except Exception as error:
            # A crash must not leave the run 'in_progress' (a re-queue would resubmit it for
            # ever): record it as failed with the reason, keep the traceback in the log.
            import traceback

            traceback.print_exc()
            first_line = (str(error).strip().splitlines() or [""])[0]
            reason = f"crashed: {type(error).__name__}: {first_line}"
            try:
                runstate.update_status(run_dir, status=runstate.FAILED, reason=reason,
                                       failed_at=time.time())
            except (OSError, runstate.StateFileError):
                pass
            print(f"{spec.name}: FAILED: {reason}", file=sys.stderr, flush=True)
            return runstate.FAILED


def _say(quiet: bool, line: str) -> None:
    if not quiet:
        print(line, flush=True)


def _train(ctx: _RunContext, status: dict | None, force_restart: bool, download: bool,
           flag: _StopFlag) -> str:
    from .data import DeviceData, load_arrays
    from .models import build_model, feature_shapes

    config, run_dir, device = ctx.config, ctx.run_dir, ctx.device
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    seed_everything(config.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)

    arrays = load_arrays(config.dataset, config.data_root, download=download)
    info = arrays.info
    teacher = (_load_teacher(config, info.num_classes, device)
               if config.distillation != PURE else None)
    data = DeviceData(arrays, device)

    model = build_model(config.model, info.num_classes).to(device)
    distiller = None
    if teacher is not None:
        from .distill import build_distiller

        options = config.method_options
        shapes = feature_shapes(config.model, info.num_classes, info.image_size)
        teacher_shapes = feature_shapes(config.teacher_model, info.num_classes, info.image_size)
        distiller = build_distiller(config.distillation, shapes, teacher_shapes, options).to(device)
    trainable = list(model.parameters()) + (list(distiller.parameters()) if distiller else [])
    optimizer = torch.optim.SGD(trainable, lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    amp_dtype = _amp_dtype(device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None

    metrics: dict[str, list] = {}
    best_acc = -1.0
    start_epoch = 0
    checkpoint_path = run_dir / runstate.CHECKPOINT_FILE
    if checkpoint_path.exists() and not force_restart:
        checkpoint = _read_checkpoint(checkpoint_path, config)
        model.load_state_dict(checkpoint["model"])
        if distiller is not None:
            distiller.load_state_dict(checkpoint["distiller"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        if scaler is not None and checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
        metrics = checkpoint["metrics"]
        best_acc = checkpoint["best_acc"]
        start_epoch = checkpoint["epoch"]
        _restore_rng(checkpoint["rng"])
        _say(ctx.quiet, f"{ctx.spec.name}: resuming after epoch {start_epoch}/{config.epochs}")
    elif force_restart:
        # Also the method's own stage files (factor transfer's paraphraser): starting over
        # means stage 1 too, e.g. after the teacher or the batch size changed.
        stale = [run_dir / name for name in (distiller.frozen_state_files() if distiller else [])
                 if (run_dir / name).exists()]
        if stale or checkpoint_path.exists():
            _say(ctx.quiet, f"{ctx.spec.name}: --force-restart: starting over")
        for path in stale:
            path.unlink()

    # Keep what others wrote (job id, scheduler, submitted_at); set what this run owns.
    base_status = {key: value for key, value in (status or {}).items()
                   if key not in ("reason",)}
    if force_restart:
        base_status.pop("started_at", None)
    base_status.update(status=runstate.IN_PROGRESS, epoch=start_epoch, epochs=config.epochs,
                       max_acc=max(best_acc, 0.0), config=config.to_dict(),
                       run=ctx.spec.name, host=os.uname().nodename, pid=os.getpid())
    base_status.setdefault("started_at", time.time())
    _write_status(run_dir, base_status)

    try:
        if distiller is not None:
            _pretrain(ctx, distiller, teacher, data, flag)
        for epoch in range(start_epoch, config.epochs):
            epoch_start = time.perf_counter()
            train_stats = _train_epoch(ctx, model, teacher, distiller, data, optimizer, scaler,
                                       amp_dtype, epoch, flag)
            scheduler.step()
            test_loss, test_acc = evaluate(model, data, config.eval_batch_size, amp_dtype)
            seconds = time.perf_counter() - epoch_start

            failure = _guard(train_stats, epoch)
            for key, value in train_stats["terms"].items():
                metrics.setdefault(f"train_{key}", []).append(value)
            for key, value in (("train_loss", train_stats["loss"]),
                               ("train_acc", train_stats["acc"]), ("test_loss", test_loss),
                               ("test_acc", test_acc), ("epoch_seconds", seconds),
                               ("skipped_steps", train_stats["skipped"]),
                               ("lr", optimizer.param_groups[0]["lr"])):
                metrics.setdefault(key, []).append(value)
            if failure:
                _fail(run_dir, base_status, metrics, config, failure, epoch + 1)
                _say(False, f"{ctx.spec.name}: FAILED at epoch {epoch + 1}: {failure}")
                return runstate.FAILED

            if test_acc > best_acc:
                best_acc = test_acc
                runstate.atomic_torch_save({"weights": model.state_dict()},
                                           run_dir / runstate.BEST_FILE)
            runstate.atomic_torch_save({
                "model": model.state_dict(),
                "distiller": distiller.state_dict() if distiller is not None else None,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "metrics": metrics, "best_acc": best_acc, "epoch": epoch + 1,
                "rng": _rng_state(), "config": config.identity(),
            }, checkpoint_path)
            _write_metrics(run_dir, metrics, config)
            base_status.update(epoch=epoch + 1, max_acc=best_acc,
                               duration_seconds=sum(metrics["epoch_seconds"]))
            _write_status(run_dir, base_status)
            images_per_second = train_stats["images"] / max(train_stats["seconds"], 1e-9)
            _say(ctx.quiet, f"{ctx.spec.name} epoch {epoch + 1}/{config.epochs}  "
                            f"loss {train_stats['loss']:.4f}  acc {train_stats['acc']:.2f}%  "
                            f"test_loss {test_loss:.4f}  test_acc {test_acc:.2f}%  "
                            f"{images_per_second:.0f} img/s  {seconds:.1f}s")
    except _Preempted:
        base_status.update(stopped_by=flag.signal_name, stopped_at=time.time())
        _write_status(run_dir, base_status)
        _say(False, f"{ctx.spec.name}: stopped by {flag.signal_name}; checkpoint of epoch "
                    f"{base_status['epoch']} kept, resumes from there")
        return runstate.IN_PROGRESS

    base_status.update(status=runstate.COMPLETED, completed_at=time.time())
    base_status.pop("stopped_by", None)
    base_status.pop("stopped_at", None)
    _write_status(run_dir, base_status)
    _say(ctx.quiet, f"{ctx.spec.name}: completed, best test accuracy {best_acc:.2f}%")
    return runstate.COMPLETED


def _amp_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 on CUDA where supported, else fp16 (with a grad scaler); none (fp32) on CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _autocast(device: torch.device, amp_dtype: torch.dtype | None):
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=amp_dtype)


def _read_checkpoint(path: Path, config: TrainConfig) -> dict:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        required = {"model", "optimizer", "scheduler", "metrics", "best_acc", "epoch", "rng",
                    "config"}
        if not isinstance(checkpoint, dict) or not required <= set(checkpoint):
            raise ValueError("missing entries")
    except Exception as error:  # corrupt or foreign file: keep it, refuse to overwrite
        raise UserError(f"checkpoint {path} is corrupt or not a kdlab checkpoint "
                        f"({type(error).__name__}); kept it: move it away or pass "
                        "--force-restart to start the run over") from None
    saved, wanted = checkpoint["config"], config.identity()
    if saved != wanted:
        differing = sorted(key for key in set(saved) | set(wanted)
                           if saved.get(key) != wanted.get(key))
        raise UserError(f"checkpoint {path} was made with other settings ({', '.join(differing)}"
                        "): expected the same settings to resume, or --force-restart")
    return checkpoint


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _write_status(run_dir: Path, status: dict) -> None:
    # Merge with what is on disk so that a job id written by the queue after we started
    # (e.g. a re-submission that found this process alive) is never lost.
    try:
        on_disk = runstate.read_status(run_dir) or {}
    except runstate.StateFileError:
        on_disk = {}
    for key in ("job_id", "scheduler", "submitted_at"):
        if key in on_disk and key not in status:
            status[key] = on_disk[key]
    runstate.write_status(run_dir, status)


def _write_metrics(run_dir: Path, metrics: dict, config: TrainConfig) -> None:
    runstate.atomic_write_json(run_dir / runstate.METRICS_FILE,
                               {**metrics, "config": config.to_dict(), "epochs": config.epochs})


def _fail(run_dir: Path, status: dict, metrics: dict, config: TrainConfig, reason: str,
          epoch: int) -> None:
    _write_metrics(run_dir, metrics, config)
    status.update(status=runstate.FAILED, reason=reason, failed_epoch=epoch,
                  failed_at=time.time())
    _write_status(run_dir, status)


def _guard(stats: dict, epoch: int) -> str | None:
    """The reason to stop the run after this epoch, or None."""
    if stats["nonfinite"]:
        terms = ", ".join(f"{key}={value:.4g}" for key, value in stats["terms"].items())
        return (f"non-finite loss in {stats['nonfinite']} of {stats['steps']} steps of epoch "
                f"{epoch + 1} (epoch means: {terms})")
    if stats["steps"] and stats["skipped"] >= MAX_SKIPPED_STEP_FRACTION * stats["steps"]:
        return (f"the optimizer skipped {stats['skipped']} of {stats['steps']} steps in epoch "
                f"{epoch + 1} (grad scaler found inf/NaN gradients): the model is not training")
    return None


def _pretrain(ctx: _RunContext, distiller, teacher, data, flag: _StopFlag) -> None:
    from .distill import PretrainContext, Preempted

    context = PretrainContext(
        teacher=teacher,
        train_batches=lambda epoch: data.train_batches(ctx.config.batch_size,
                                                       epoch_generator(ctx.config.seed + 7919,
                                                                       epoch)),
        device=ctx.device, run_dir=ctx.run_dir, seed=ctx.config.seed,
        should_stop=lambda: bool(flag), log=lambda line: _say(ctx.quiet, line),
        save=lambda path, obj: runstate.atomic_torch_save(obj, path),
        batch_size=ctx.config.batch_size)
    try:
        distiller.pretrain(context)
    except Preempted:
        raise _Preempted() from None
    if flag:
        raise _Preempted()


def _train_epoch(ctx: _RunContext, model, teacher, distiller, data, optimizer, scaler,
                 amp_dtype, epoch: int, flag: _StopFlag) -> dict:
    config, device = ctx.config, ctx.device
    alpha = config.alpha if distiller is not None else 0.0
    smoothing = config.effective_label_smoothing
    model.train()
    if distiller is not None:
        distiller.train()
    sums: dict[str, torch.Tensor] = {}
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    nonfinite = torch.zeros((), device=device, dtype=torch.int64)
    seen = steps = skipped = 0
    start = time.perf_counter()
    batches = data.train_batches(config.batch_size, epoch_generator(config.seed, epoch))
    progress = None
    if not ctx.quiet and sys.stderr.isatty():
        from tqdm import tqdm

        total = math.ceil(data.num_train / config.batch_size)
        progress = tqdm(total=total, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
                        unit="batch")
    for images, labels in batches:
        if flag:
            if progress is not None:
                progress.close()
            raise _Preempted()
        with _autocast(device, amp_dtype):
            student_outputs = model(images)
        logits = student_outputs[-1].float()
        ce = F.cross_entropy(logits, labels, label_smoothing=smoothing)
        terms = {"ce": ce}
        total_loss = ce
        if distiller is not None:
            with torch.inference_mode(), _autocast(device, amp_dtype):
                teacher_outputs = teacher(images)
            # Out of inference mode (autograd may save them) and in float32.
            teacher_outputs = [output.float().clone() for output in teacher_outputs]
            with torch.autocast(device.type, enabled=False):
                distill_terms = distiller([output.float() for output in student_outputs],
                                          teacher_outputs, labels)
            distill_loss = sum(distill_terms.values())
            terms.update(distill=distill_loss, **distill_terms)
            total_loss = (1.0 - alpha) * ce + alpha * distill_loss
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scale_before = scaler.get_scale()
            scaler.scale(total_loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if scaler.get_scale() < scale_before:
                skipped += 1
        else:
            total_loss.backward()
            optimizer.step()
        batch = labels.shape[0]
        detached = total_loss.detach()
        nonfinite += (~torch.isfinite(detached)).to(torch.int64)
        loss_sum += detached.double() * batch
        for key, value in terms.items():
            sums[key] = sums.get(key, 0) + value.detach().double() * batch
        correct += (logits.detach().argmax(1) == labels).sum()
        seen += batch
        steps += 1
        if progress is not None:
            progress.update(1)
    if progress is not None:
        progress.close()
    if flag:
        raise _Preempted()
    seconds = time.perf_counter() - start
    return {
        "loss": float(loss_sum) / max(seen, 1),
        "acc": 100.0 * int(correct) / max(seen, 1),
        "terms": {key: float(value) / max(seen, 1) for key, value in sums.items()},
        "nonfinite": int(nonfinite), "steps": steps, "skipped": skipped,
        "images": seen, "seconds": seconds,
    }


def evaluate(model, data, batch_size: int, amp_dtype=None) -> tuple[float, float]:
    """(mean cross-entropy, accuracy in percent) on the test split, eval mode, no augmentation."""
    model.eval()
    loss_sum = 0.0
    correct = 0
    count = 0
    device = next(model.parameters()).device
    with torch.inference_mode():
        for images, labels in data.test_batches(batch_size):
            with _autocast(device, amp_dtype):
                logits = model(images)[-1]
            logits = logits.float()
            loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
            correct += int((logits.argmax(1) == labels).sum())
            count += labels.shape[0]
    return loss_sum / max(count, 1), 100.0 * correct / max(count, 1)


# ---- CLI -----------------------------------------------------------------------------------

def command(args) -> int:
    for config in prepare_configs(args):  # one per --config file (or the flags' one run)
        final = train_run(config, force_restart=args.force_restart, download=args.download,
                          quiet=args.quiet)
        exit_status = {runstate.COMPLETED: 0, runstate.IN_PROGRESS: EXIT_PREEMPTED}.get(final, 1)
        if exit_status:
            return exit_status
    return 0
