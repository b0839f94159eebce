"""One epoch of training, the evaluation on the test split, and the hook that runs a method's
stage before student training (factor transfer's paraphraser)."""

from __future__ import annotations

import math
import sys
import time

import torch
import torch.nn.functional as F

from .. import runstate
from .device import autocast, epoch_generator
from .guards import Preempted, StopFlag
from .state import RunContext, TrainingState

# Stage 1 of a method draws its batches from another stream than the student's epochs.
PRETRAIN_SEED_OFFSET = 7919


class EpochSums:
    """Running sums of one epoch, kept on the device (no host sync per batch)."""

    def __init__(self, device: torch.device) -> None:
        self.terms: dict[str, torch.Tensor] = {}
        self.loss = torch.zeros((), device=device, dtype=torch.float64)
        self.correct = torch.zeros((), device=device, dtype=torch.int64)
        self.nonfinite = torch.zeros((), device=device, dtype=torch.int64)
        self.seen = self.steps = self.skipped = 0

    def add(self, total_loss, terms: dict, logits, labels, skipped: bool) -> None:
        batch = labels.shape[0]
        detached = total_loss.detach()
        self.nonfinite += (~torch.isfinite(detached)).to(torch.int64)
        self.loss += detached.double() * batch
        for key, value in terms.items():
            self.terms[key] = self.terms.get(key, 0) + value.detach().double() * batch
        self.correct += (logits.detach().argmax(1) == labels).sum()
        self.seen += batch
        self.steps += 1
        self.skipped += int(skipped)

    def stats(self, seconds: float) -> dict:
        seen = max(self.seen, 1)
        return {"loss": float(self.loss) / seen, "acc": 100.0 * int(self.correct) / seen,
                "terms": {key: float(value) / seen for key, value in self.terms.items()},
                "nonfinite": int(self.nonfinite), "steps": self.steps, "skipped": self.skipped,
                "images": self.seen, "seconds": seconds}


def batch_loss(ctx: RunContext, state: TrainingState, teacher, images, labels,
               distill_only: bool = False):
    """(total loss, named terms, student logits) of one batch; ``distill_only``: the total is
    the method's terms alone (a partial stage), the cross-entropy is only logged."""
    config, device = ctx.config, ctx.device
    if config.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with autocast(device, ctx.amp_dtype):
        student_outputs = state.model(images)
    logits = student_outputs[-1].float()
    ce = F.cross_entropy(logits, labels, label_smoothing=config.effective_label_smoothing)
    if state.distiller is None:
        return ce, {"ce": ce}, logits
    with torch.inference_mode(), autocast(device, ctx.amp_dtype):
        teacher_outputs = teacher(images)
    # Out of inference mode (autograd may save them) and in float32.
    teacher_outputs = [output.float().clone() for output in teacher_outputs]
    with torch.autocast(device.type, enabled=False):
        distill_terms = state.distiller([output.float() for output in student_outputs],
                                        teacher_outputs, labels)
    distill_loss = sum(distill_terms.values())
    total = (distill_loss if distill_only
             else (1.0 - config.alpha) * ce + config.alpha * distill_loss)
    return total, {"ce": ce, "distill": distill_loss, **distill_terms}, logits


def optimizer_step(state: TrainingState, total_loss) -> bool:
    """Backward and step; True when the grad scaler skipped the step (inf/NaN gradients)."""
    state.optimizer.zero_grad(set_to_none=True)
    scaler = state.scaler
    if scaler is None:
        total_loss.backward()
        state.optimizer.step()
        return False
    scale_before = scaler.get_scale()
    scaler.scale(total_loss).backward()
    scaler.step(state.optimizer)
    scaler.update()
    return scaler.get_scale() < scale_before


def _progress_bar(ctx: RunContext, num_train: int, epoch: int):
    if ctx.quiet or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    total = math.ceil(num_train / ctx.config.batch_size)
    return tqdm(total=total, desc=f"epoch {epoch + 1}/{ctx.config.epochs}", leave=False,
                unit="batch")


def train_epoch(ctx: RunContext, state: TrainingState, teacher, data, epoch: int,
                flag: StopFlag) -> dict:
    """Train epoch ``epoch`` (0-based) over the batches of ``(seed, epoch)``; the epoch's
    figures (see :class:`EpochSums`). A stop request raises Preempted between batches."""
    stage = _enter_train_mode(state, epoch)
    sums = EpochSums(ctx.device)
    start = time.perf_counter()
    progress = _progress_bar(ctx, data.num_train, epoch)
    try:
        for images, labels in data.train_batches(ctx.config.batch_size,
                                                 epoch_generator(ctx.config.seed, epoch)):
            flag.raise_if_set()
            total_loss, terms, logits = batch_loss(ctx, state, teacher, images, labels,
                                                   distill_only=stage is not None)
            skipped = optimizer_step(state, total_loss)
            sums.add(total_loss, terms, logits, labels, skipped)
            if progress is not None:
                progress.update(1)
    finally:
        if progress is not None:
            progress.close()
    flag.raise_if_set()
    return sums.stats(time.perf_counter() - start)


def _enter_train_mode(state: TrainingState, epoch: int) -> int | None:
    """Train mode for the student and the method's modules; in a method's partial stage
    (FitNets' hint stage) the student's modules past the trained output stay in eval mode,
    so that their BatchNorm statistics do not move either. The stage's output index."""
    from ..models import modules_after

    state.model.train()
    if state.distiller is None:
        return None
    state.distiller.train()
    stage = state.distiller.partial_stage(epoch)
    if stage is not None:
        for module in modules_after(state.model, stage):
            module.eval()
    return stage


def evaluate(model, data, batch_size: int, amp_dtype=None,
             split: str = "test") -> tuple[float, float]:
    """(mean cross-entropy, accuracy in percent) on the ``split`` ("test" or "validation"),
    eval mode, no augmentation."""
    model.eval()
    loss_sum = 0.0
    correct = 0
    count = 0
    device = next(model.parameters()).device
    with torch.inference_mode():
        batches = data.validation_batches if split == "validation" else data.test_batches
        for images, labels in batches(batch_size):
            with autocast(device, amp_dtype):
                logits = model(images)[-1]
            logits = logits.float()
            loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
            correct += int((logits.argmax(1) == labels).sum())
            count += labels.shape[0]
    return loss_sum / max(count, 1), 100.0 * correct / max(count, 1)


def pretrain(ctx: RunContext, distiller, teacher, data, flag: StopFlag) -> None:
    """The method's stage before student training (a no-op for most methods)."""
    from ..distill import PretrainContext

    config = ctx.config
    context = PretrainContext(
        teacher=teacher,
        train_batches=lambda epoch: data.train_batches(
            config.batch_size, epoch_generator(config.seed + PRETRAIN_SEED_OFFSET, epoch)),
        device=ctx.device, run_dir=ctx.run_dir, seed=config.seed,
        should_stop=lambda: bool(flag), log=ctx.say,
        save=lambda path, obj: runstate.atomic_torch_save(obj, path),
        batch_size=config.batch_size)
    distiller.pretrain(context)
    flag.raise_if_set()


__all__ = ["EpochSums", "batch_loss", "optimizer_step", "train_epoch", "evaluate", "pretrain",
           "Preempted"]
