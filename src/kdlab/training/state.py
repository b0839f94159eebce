"""Everything a run carries from epoch to epoch, saved and restored in one place.

:class:`TrainingState` holds the student, the method's modules, optimizer, schedule, grad
scaler, metrics, best accuracy and the number of finished epochs; ``state_dict()`` is the
checkpoint (with every global generator's state) and ``load_state_dict()`` restores it, so a
resumed run continues bit-identically on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..run import layout
from ..run.config import TrainConfig, setting_default
from ..run.errors import UserError
from . import device as device_module

_NUMPY_CORE = getattr(np, "_core", None) or np.core  # numpy >= 2 names it _core
_LEGACY_NUMPY_GLOBALS = [_NUMPY_CORE.multiarray._reconstruct, np.ndarray, np.dtype,
                         type(np.dtype(np.uint32))]
CHECKPOINT_ENTRIES = frozenset({"model", "optimizer", "scheduler", "metrics", "best_acc",
                                "epoch", "rng", "config"})


@dataclass
class RunContext:
    """The fixed facts of one run while it trains."""

    config: TrainConfig
    spec: layout.RunSpec
    run_dir: Path
    device: torch.device
    quiet: bool
    amp_dtype: torch.dtype | None = None
    threads: dict | None = None  # the record of training.threads.thread_limits

    def say(self, line: str, *, always: bool = False) -> None:
        if always or not self.quiet:
            print(line, flush=True)


@dataclass
class TrainingState:
    model: torch.nn.Module
    distiller: torch.nn.Module | None
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    identity: dict[str, Any]
    metrics: dict[str, list] = field(default_factory=dict)
    best_acc: float = -1.0
    epoch: int = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "distiller": self.distiller.state_dict() if self.distiller is not None else None,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "metrics": self.metrics, "best_acc": self.best_acc, "epoch": self.epoch,
            "rng": device_module.rng_state(), "config": self.identity,
        }

    def load_state_dict(self, checkpoint: dict[str, Any]) -> None:
        self.model.load_state_dict(checkpoint["model"])
        if self.distiller is not None:
            self.distiller.load_state_dict(checkpoint["distiller"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        if self.scaler is not None and checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.metrics = checkpoint["metrics"]
        self.best_acc = checkpoint["best_acc"]
        self.epoch = checkpoint["epoch"]
        device_module.restore_rng(checkpoint["rng"])

    def record_epoch(self, train_stats: dict, evaluation: dict[str, tuple[float, float]],
                     seconds: float, lr: float) -> None:
        """Append one finished epoch's figures to ``metrics``: ``evaluation`` maps a split
        ("test", "validation") to its (loss, accuracy %); ``lr`` is the learning rate the
        epoch trained with."""
        for key, value in train_stats["terms"].items():
            self.metrics.setdefault(f"train_{key}", []).append(value)
        rows = [("train_loss", train_stats["loss"]), ("train_acc", train_stats["acc"])]
        for split, (loss, accuracy) in evaluation.items():
            rows += [(f"{split}_loss", loss), (f"{split}_acc", accuracy)]
        rows += [("epoch_seconds", seconds), ("skipped_steps", train_stats["skipped"]),
                 ("lr", lr)]
        for key, value in rows:
            self.metrics.setdefault(key, []).append(value)


@dataclass
class Student:
    """One run while it trains, alone or in a pack: its fixed facts, its state, the status it
    writes, a failure met inside a step (packs keep going without it) and, once it is out of
    the epoch loop, its final status."""

    ctx: RunContext
    state: TrainingState
    status: dict = field(default_factory=dict)
    failure: str | None = None
    result: str | None = None
    events: Any = None  # the run's TensorBoard writer (tensorboard.EpochEvents)


def build_state(ctx: RunContext, num_classes: int, image_size: int,
                train_labels: torch.Tensor | None = None,
                teacher: torch.nn.Module | None = None) -> TrainingState:
    """A fresh student (and the method's modules) with its optimizer, schedule and scaler,
    drawn from the global generator in the order a solo run has always used.
    ``train_labels`` [N]: the training set's labels, given to a method with state over the
    training set (CRD's memory bank); ``teacher``: the loaded teacher, given to a method that
    derives fixed values from its weights (OFD's margins)."""
    from ..models import build_model, describe_features

    config = ctx.config
    model = build_model(config.model, num_classes).to(ctx.device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    distiller = None
    if config.distillation != layout.PURE:
        from ..distill import build_distiller

        shapes = describe_features(config.model, num_classes, image_size)
        teacher_shapes = describe_features(config.teacher_model, num_classes, image_size)
        distiller = build_distiller(config.distillation, shapes, teacher_shapes,
                                    config.method_options, student_model=config.model,
                                    teacher_model=config.teacher_model)
        if train_labels is not None:
            distiller.attach_training_set(train_labels)
        if teacher is not None:
            distiller.attach_teacher(teacher)
        distiller = distiller.to(ctx.device)
    trainable = list(model.parameters()) + (list(distiller.parameters()) if distiller else [])
    optimizer = torch.optim.SGD(trainable, lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    scheduler = lr_scheduler(optimizer, config)
    scaler = device_module.grad_scaler(ctx.device, ctx.amp_dtype)
    return TrainingState(model, distiller, optimizer, scheduler, scaler, config.identity())


def lr_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig):
    """The run's learning-rate schedule, stepped once after each epoch: 'cosine' anneals
    ``lr`` to 0 over ``epochs``; 'multistep' trains epoch e (0-based) at ``lr * lr_decay**k``,
    k the number of milestones <= e (RepDistiller's rule for its 1-based epoch e + 1 >
    milestone)."""
    if config.lr_schedule == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=config.lr_milestones,
                                                    gamma=config.lr_decay)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)


def read_checkpoint(path: Path, config: TrainConfig) -> dict:
    """The checkpoint at ``path`` if it is a kdlab checkpoint made with ``config``'s
    settings; a UserError naming the file otherwise (the file is kept)."""
    try:
        # Tensors and plain values only; the numpy arrays that earlier versions stored for
        # the RNG state are allowed as arrays (never as arbitrary objects).
        with torch.serialization.safe_globals(_LEGACY_NUMPY_GLOBALS):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(checkpoint, dict) or not CHECKPOINT_ENTRIES <= set(checkpoint):
            raise ValueError("missing entries")
    except Exception as error:  # corrupt, foreign or crafted file: keep it, refuse to use it
        raise UserError(f"checkpoint {path} is corrupt or not a kdlab checkpoint "
                        f"({type(error).__name__}: only tensors and plain values are read); "
                        "kept it: move it away or pass --force-restart to start the run "
                        "over") from None
    wanted = config.identity()
    saved = _with_new_defaults(checkpoint["config"], wanted)
    if saved != wanted:
        differing = sorted(key for key in set(saved) | set(wanted)
                           if saved.get(key) != wanted.get(key))
        raise UserError(f"checkpoint {path} was made with other settings ({', '.join(differing)}"
                        "): expected the same settings to resume, or --force-restart")
    return checkpoint


def _with_new_defaults(saved: dict[str, Any], wanted: dict[str, Any]) -> dict[str, Any]:
    """``saved`` (a checkpoint's settings) with the settings and method options added since
    it was written filled in with their defaults: a run made before a setting existed
    behaved as its default does, so it resumes as long as the run keeps that default."""
    from dataclasses import MISSING, fields


    defaults = {item.name: setting_default(item) for item in fields(TrainConfig)
                if setting_default(item) is not MISSING and item.name in wanted}
    completed = {**defaults, **saved}
    options = completed.get("method_options")
    if isinstance(options, dict) and wanted.get("distillation") not in (None, layout.PURE):
        from ..distill import method_defaults

        try:
            method_options = method_defaults(wanted["distillation"])
        except UserError:
            method_options = {}
        completed["method_options"] = {**{key: value for key, value in method_options.items()
                                          if key in wanted.get("method_options", {})},
                                       **options}
    return completed
