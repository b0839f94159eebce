"""One epoch of training, the evaluation on the test split, and the hook that runs a method's
stage before student training (factor transfer's paraphraser)."""

from __future__ import annotations

import math
import sys
import time
import traceback

import torch
import torch.nn.functional as F

from ..run import layout, state_files
from .device import autocast, epoch_generator
from .guards import Preempted, StopFlag
from ..run.catalog import BENCHMARK_OBJECTIVE
from ..distill.base import BatchContext
from ..distill.logit import kd_divergence
from ..models.features import Features
from .state import RunContext, Student, TrainingState

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


def teacher_forward(ctx: RunContext, teacher, images) -> Features:
    """The frozen teacher's features for a batch, in float32 and out of inference mode
    (autograd may save them); computed once per batch for every student of a pack."""
    with torch.inference_mode(), autocast(ctx.device, ctx.amp_dtype):
        features = teacher(images)
    return features.map(lambda tensor: tensor.float().clone())


def batch_loss(ctx: RunContext, state: TrainingState, teacher_features, images, labels,
               distill_only: bool = False, batch: BatchContext | None = None):
    """(total loss, named terms, student logits) of one batch; ``distill_only``: the total is
    the method's terms alone (a partial stage), the cross-entropy is only logged; ``batch``:
    what the method reads about the batch (default: its labels alone). The total is kdlab's
    ``(1 - alpha) ce + alpha distill`` or, with ``objective = "benchmark"``, ``ce_weight ce +
    kd_weight kd + distill`` (terms logged unweighted except the method's own, which carry
    their weight, beta)."""
    config, device = ctx.config, ctx.device
    with autocast(device, ctx.amp_dtype):
        student_features = state.model(images)
    logits = student_features.logits.float()
    ce = F.cross_entropy(logits, labels, label_smoothing=config.effective_label_smoothing)
    if state.distiller is None:
        return ce, {"ce": ce}, logits
    with torch.autocast(device.type, enabled=False):
        distill_terms = state.distiller(student_features.map(lambda tensor: tensor.float()),
                                        teacher_features,
                                        batch if batch is not None else BatchContext(labels))
    distill_loss = sum(distill_terms.values())
    terms = {"ce": ce, "distill": distill_loss, **distill_terms}
    if distill_only:
        total = distill_loss
    elif config.objective == BENCHMARK_OBJECTIVE:
        # gamma CE + alpha KD + beta L (RepDistiller): beta is already in the method's terms.
        total = config.ce_weight * ce + distill_loss
        if config.kd_weight:
            with torch.autocast(device.type, enabled=False):
                terms["kd"] = kd_divergence(logits, teacher_features.logits, config.temperature)
            total = total + config.kd_weight * terms["kd"]
    else:
        total = (1.0 - config.alpha) * ce + config.alpha * distill_loss
    return total, terms, logits


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


def crash_reason(error: Exception) -> str:
    first_line = (str(error).strip().splitlines() or [""])[0]
    return f"crashed: {type(error).__name__}: {first_line}"


def _step(student: Student, sums: EpochSums, images, teacher_features, batch: BatchContext,
          isolate: bool, partial: bool) -> None:
    labels = batch.labels
    try:
        total_loss, terms, logits = batch_loss(student.ctx, student.state, teacher_features,
                                               images, labels, distill_only=partial, batch=batch)
        skipped = optimizer_step(student.state, total_loss)
    except Exception as error:
        if not isolate:
            raise
        # In a pack one student's crash is its own: it leaves, the others go on.
        traceback.print_exc()
        student.failure = crash_reason(error)
        return
    sums.add(total_loss, terms, logits, labels, skipped)


def train_epoch(students: list[Student], teacher, data, epoch: int, flag: StopFlag, *,
                isolate: bool = False) -> list[dict]:
    """Train epoch ``epoch`` (0-based) of every student over the batches of ``(seed,
    epoch)``, shared (one teacher pass per batch); each student's figures (see
    :class:`EpochSums`). A stop request raises Preempted between batches; with ``isolate``
    a student whose step raises gets ``failure`` set and sits out the rest."""
    lead = students[0].ctx
    sums = [EpochSums(student.ctx.device) for student in students]
    partial = [_enter_train_mode(student.state, epoch) is not None for student in students]
    start = time.perf_counter()
    progress = _progress_bar(lead, data.num_train, epoch) if len(students) == 1 else None
    steps_per_epoch = steps_in_epoch(data.num_train, lead.config.batch_size)
    try:
        batches = data.train_batches(lead.config.batch_size,
                                     epoch_generator(lead.config.seed, epoch), with_indices=True)
        for step, (images, labels, indices) in enumerate(batches):
            flag.raise_if_set()
            batch = BatchContext(labels, indices, epoch, step, steps_per_epoch)
            if lead.config.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            live = [(student, student_sums, stage)
                    for student, student_sums, stage in zip(students, sums, partial)
                    if student.failure is None]
            teacher_features = (teacher_forward(lead, teacher, images)
                                if any(s.state.distiller is not None for s, _, _ in live)
                                else None)
            for student, student_sums, stage in live:
                _step(student, student_sums, images, teacher_features, batch, isolate, stage)
            if progress is not None:
                progress.update(1)
    finally:
        if progress is not None:
            progress.close()
    flag.raise_if_set()
    seconds = time.perf_counter() - start
    return [student_sums.stats(seconds) for student_sums in sums]


def steps_in_epoch(num_train: int, batch_size: int) -> int:
    """Batches in one epoch of ``DeviceData.train_batches`` (a last batch of one image is
    dropped)."""
    full, rest = divmod(num_train, batch_size)
    return full + (rest >= 2 or (rest == 1 and batch_size == 1))


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


def pretrain(ctx: RunContext, distiller, teacher, data, flag: StopFlag,
             fresh: bool = False) -> None:
    """The method's stage before student training (a no-op for most methods); ``fresh``:
    redo it even where a result shared by the teacher's students exists."""
    from ..distill import PretrainContext

    config = ctx.config
    context = PretrainContext(
        teacher=teacher,
        train_batches=lambda epoch: data.train_batches(
            config.batch_size, epoch_generator(config.seed + PRETRAIN_SEED_OFFSET, epoch)),
        device=ctx.device, run_dir=ctx.run_dir, seed=config.seed,
        should_stop=lambda: bool(flag), log=ctx.say,
        save=lambda path, obj: state_files.atomic_torch_save(obj, path),
        batch_size=config.batch_size,
        teacher_dir=layout.run_dir(config.experiments_dir, config.run_spec().teacher_run()),
        fresh=fresh)
    distiller.pretrain(context)
    flag.raise_if_set()


__all__ = ["EpochSums", "teacher_forward", "batch_loss", "optimizer_step", "crash_reason",
           "train_epoch", "evaluate", "pretrain", "Preempted"]
