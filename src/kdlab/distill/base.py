"""The one interface every distillation method implements.

A method is a small ``nn.Module`` subclass of :class:`Distiller`, registered by name. It
owns its extra trainable modules (connectors, regressors, translators): they are its
sub-modules, so the training loop puts ``distiller.parameters()`` into the optimizer and
``distiller.state_dict()`` into the checkpoint without knowing what they are. Its
``forward`` returns *named, already weighted* float32 loss terms; the loop sums them into
``distill_loss`` and logs each one per epoch. The loop never branches on a method's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

import torch
from torch import nn

from ..run.errors import UserError
from ..models.features import Features, FeatureShapes


class Preempted(Exception):
    """Raised when a stop was requested (SIGTERM/SIGUSR1) and progress has been saved."""


@dataclass
class PretrainContext:
    """What a method with a stage before student training (factor transfer) is given.

    ``train_batches(epoch)`` yields augmented, normalised ``(images, labels)`` batches of
    ``batch_size`` on ``device`` drawn deterministically from the run's seed and ``epoch``;
    ``should_stop()`` turns True once the scheduler asked the job to stop: save progress
    and raise :class:`Preempted`. ``save(path, obj)`` writes atomically. ``teacher_dir``:
    the teacher's run directory, where a stage's result that depends only on the teacher,
    the seed and the stage's settings is shared by every student (None: not shared);
    ``fresh``: the run starts over (``--force-restart``), so a shared result is redone too.
    """

    teacher: nn.Module
    train_batches: Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]]
    device: torch.device
    run_dir: Path
    seed: int
    should_stop: Callable[[], bool]
    log: Callable[[str], None]
    save: Callable[[Path, Any], None]
    batch_size: int
    teacher_dir: Path | None = None
    fresh: bool = False


@dataclass
class BatchContext:
    """What a method may read about the batch besides both models' features.

    ``labels`` [B] int64; ``indices`` [B] int64: each sample's index in the training set
    (CRD's memory bank), None where the data has none; ``epoch``: 0-based epoch of student
    training; ``step``: 0-based step within it; ``steps_per_epoch``: steps in one epoch
    (DKD's warm-up is counted in epochs)."""

    labels: torch.Tensor
    indices: torch.Tensor | None = None
    epoch: int = 0
    step: int = 0
    steps_per_epoch: int = 1


class Distiller(nn.Module):
    """Base class. Subclasses set ``name``, ``defaults`` (option -> default, every option the
    method accepts, each default's source documented in :mod:`kdlab.run.catalog`) and implement
    ``forward``."""

    name: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    citation: ClassVar[str] = ""

    def __init__(self, student: FeatureShapes, teacher: FeatureShapes,
                 options: dict[str, Any]) -> None:
        """``student``/``teacher``: the shapes of both models' :class:`Features` (what a
        method sizes its connectors from); ``options``: complete option dict (defaults
        already merged and validated by the registry)."""
        super().__init__()
        self.student_shapes = student
        self.teacher_shapes = teacher
        self.options = dict(options)

    def forward(self, student: Features, teacher: Features,
                batch: BatchContext) -> dict[str, torch.Tensor]:
        """Named, weighted float32 scalar loss terms; their sum is the distillation loss.
        ``teacher`` arrives detached, in float32."""
        raise NotImplementedError

    # ---- optional: state over the whole training set (CRD's memory bank) ----
    def attach_training_set(self, labels: torch.Tensor) -> None:
        """Called once before training (and before a checkpoint is loaded) with the labels
        [N] int64 of the training set that ``BatchContext.indices`` index into."""
        return None

    # ---- optional stage that trains part of the student on this method alone (FitNets) ----
    def partial_stage(self, epoch: int) -> int | None:
        """For epoch ``epoch`` (0-based) of a stage that trains only the student up to one of
        its outputs, on this method's terms alone: that output's position in ``[*stages,
        logits]``; None for the normal objective (the default). The loop then leaves the
        later student modules out of training (eval mode, no gradient reaches them) and
        drops the cross-entropy from the loss."""
        return None

    # ---- optional stage before the student is trained (factor transfer's paraphraser) ----
    def pretrain(self, context: PretrainContext) -> None:
        """Run (or resume, or skip when already done) a stage before student training."""
        return None

    # ---- optional: read what the method needs from the loaded teacher (OFD's margins) ----
    def attach_teacher(self, teacher: nn.Module) -> None:
        """Called once with the teacher, its weights loaded, before student training starts
        (and before a checkpoint's distiller state is restored). A method that derives fixed
        values from the teacher's weights computes them here and keeps them in buffers, so
        they are saved with the checkpoint. The default needs nothing."""
        return None

    def frozen_state_files(self) -> list[str]:
        """Files in the run directory this method writes besides the loop's own; the loop
        removes them when a run is started over (``--force-restart``)."""
        return []


def stage_position(value: Any, stage_count: int, option: str, method: str) -> int:
    """The 0-based position among ``stage_count`` stages that an option names: ``"layerK"``
    (the K-th stage, 1-based: the CIFAR ResNets' own stage names, valid for every model with
    K stages or more), an integer position (negative from the end) or ``"last"``. A model's
    own stage names are turned into positions by the registry before a method sees them."""
    text = str(value).strip()
    position = None
    if text == "last":
        position = stage_count - 1
    elif text.startswith("layer") and text[5:].isdigit() and int(text[5:]) >= 1:
        position = int(text[5:]) - 1
    else:
        try:
            position = int(text)
        except ValueError:
            position = None
        if position is not None and position < 0:
            position += stage_count
    if position is None or not 0 <= position < stage_count:
        names = ", ".join(f"layer{k}" for k in range(1, stage_count + 1))
        raise UserError(f"option {option}={value!r} for method {method!r}: expected one of "
                        f"{names}, last or a position -{stage_count}..{stage_count - 1} "
                        f"(this model has {stage_count} stages)")
    return position


def stage_positions(value: Any, stage_count: int, option: str, method: str) -> list[int]:
    """Distinct positions of a comma list of stages (each as :func:`stage_position`), or every
    stage for ``"all"``."""
    parts = [part.strip() for part in str(value).split(",") if part.strip()]
    if parts == ["all"]:
        return list(range(stage_count))
    positions = [stage_position(part, stage_count, option, method) for part in parts]
    if not positions or len(set(positions)) != len(positions):
        raise UserError(f"option {option}={value!r} for method {method!r}: expected a comma-"
                        "separated list of distinct stages (layerK, positions or last) or all")
    return positions


def autocast_off(features: Features):
    """A context with autocast disabled on the device of ``features`` (methods run their loss
    math in float32)."""
    return torch.autocast(features.logits.device.type, enabled=False)
