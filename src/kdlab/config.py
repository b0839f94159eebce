"""The settings of one training run (shared by ``kdlab train``, study files and the queue).

Kept free of torch so that planning a study never imports it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .errors import UserError
from .layout import PURE, RunSpec

# Defaults of the study (the earlier round's thesis setup).
DEFAULT_EPOCHS = 150
DEFAULT_BATCH_SIZE = 128
DEFAULT_LR = 0.1
DEFAULT_MOMENTUM = 0.9
DEFAULT_WEIGHT_DECAY = 5e-4
PURE_LABEL_SMOOTHING = 0.1   # pure runs
KD_LABEL_SMOOTHING = 0.0     # the teacher's soft targets are the smoothing
DEFAULT_TEMPERATURE = 4.0


@dataclass
class TrainConfig:
    """Everything that defines one run. ``method_options`` holds the distillation method's
    own settings (weights, layers, ...), validated by the method's registry entry."""

    dataset: str
    model: str
    seed: int = 0
    epochs: int = DEFAULT_EPOCHS
    batch_size: int = DEFAULT_BATCH_SIZE
    lr: float = DEFAULT_LR
    momentum: float = DEFAULT_MOMENTUM
    weight_decay: float = DEFAULT_WEIGHT_DECAY
    label_smoothing: float | None = None  # None: 0.1 for pure runs, 0.0 when distilling
    distillation: str = PURE
    teacher_model: str | None = None
    alpha: float | None = None
    temperature: float = DEFAULT_TEMPERATURE
    method_options: dict[str, Any] = field(default_factory=dict)
    data_root: str = "data"
    experiments_dir: str = "experiments"
    device: str = "auto"  # auto | cpu | cuda
    eval_batch_size: int = 1000

    @property
    def effective_label_smoothing(self) -> float:
        if self.label_smoothing is not None:
            return self.label_smoothing
        return PURE_LABEL_SMOOTHING if self.distillation == PURE else KD_LABEL_SMOOTHING

    def run_spec(self) -> RunSpec:
        if self.distillation == PURE:
            return RunSpec(self.dataset, self.model, self.seed)
        return RunSpec(self.dataset, self.model, self.seed, method=self.distillation,
                       teacher=self.teacher_model, alpha=self.alpha)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})

    # Settings that must match for a checkpoint to be resumed (paths and device may move).
    def identity(self) -> dict[str, Any]:
        data = self.to_dict()
        for key in ("data_root", "experiments_dir", "device", "eval_batch_size"):
            data.pop(key)
        return data


# ---- validation --------------------------------------------------------------------------

def validate_config(config: TrainConfig) -> None:
    """Every problem a user can cause with flags, as one UserError line."""
    from .data import dataset_info
    from .models import BLOCKS_PER_STAGE, MODEL_NAMES

    dataset_info(config.dataset)
    for flag, name in (("--model", config.model), ("--teacher-model", config.teacher_model)):
        if name is not None and name not in BLOCKS_PER_STAGE:
            raise UserError(f"{flag} {name!r} is unknown: expected one of {', '.join(MODEL_NAMES)}")
    for flag, value in (("--epochs", config.epochs), ("--batch-size", config.batch_size)):
        if value < 1:
            raise UserError(f"{flag} {value}: expected a positive integer")
    if config.batch_size < 2:
        raise UserError("--batch-size 1: BatchNorm needs at least 2 samples per batch")
    if config.lr <= 0 or config.weight_decay < 0 or not 0 <= config.momentum < 1:
        raise UserError(f"optimizer settings lr={config.lr}, momentum={config.momentum}, "
                        f"weight_decay={config.weight_decay}: expected lr > 0, 0 <= momentum < 1, "
                        "weight_decay >= 0")
    if config.label_smoothing is not None and not 0 <= config.label_smoothing < 1:
        raise UserError(f"--label-smoothing {config.label_smoothing}: expected a value in [0, 1)")
    if config.distillation == PURE:
        if config.alpha is not None or config.teacher_model is not None:
            raise UserError("--alpha/--teacher-model were given without --distillation: "
                            "expected a method (logit, fitnets, ...) or neither flag")
        return
    from .distill import method_class

    method_class(config.distillation)
    if config.teacher_model is None:
        raise UserError(f"--distillation {config.distillation} needs --teacher-model")
    if config.alpha is None or not 0.0 <= config.alpha <= 1.0 or math.isnan(config.alpha):
        raise UserError(f"--alpha {config.alpha}: expected a KD strength in [0, 1]")
    if config.temperature <= 0:
        raise UserError(f"--temperature {config.temperature}: expected a positive number")


def _with_complete_options(config: TrainConfig) -> TrainConfig:
    """A copy whose method options are typed and complete (defaults merged, the run's
    temperature for methods that take one), so the recorded config names every setting the
    method used and a resume compares like with like. Unknown options fail in one line."""
    from dataclasses import replace

    from .distill import method_defaults, resolve_options

    options = dict(config.method_options)
    if "temperature" in method_defaults(config.distillation):
        options.setdefault("temperature", config.temperature)
    return replace(config, method_options=resolve_options(config.distillation, options))


def parse_options(pairs: list[str]) -> dict[str, str]:
    """``['weight=100', 'hint_layer=layer2']`` -> dict (values converted by the method)."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--option {pair!r}: expected KEY=VALUE")
        options[key.strip()] = value.strip()
    return options


def config_from_args(args) -> TrainConfig:
    from .data import default_data_root

    options = parse_options(args.option)
    if args.distillation == PURE and options:
        raise UserError(f"--option {args.option[0]!r} given without --distillation")
    return TrainConfig(
        dataset=args.dataset, model=args.model, seed=args.seed, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
        weight_decay=args.weight_decay, label_smoothing=args.label_smoothing,
        distillation=args.distillation, teacher_model=args.teacher_model, alpha=args.alpha,
        temperature=args.temperature, method_options=options,
        data_root=str(args.data_root or default_data_root()),
        experiments_dir=str(args.experiments_dir), device=args.device)
