"""The settings of one training run (shared by ``kdlab train``, study files and the queue).

Kept free of torch so that planning a study never imports it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

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
    # auto: bf16 on CUDA where supported (else fp16 with a grad scaler), fp32 on CPU
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    channels_last: bool = False  # NHWC memory layout for models and batches
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
