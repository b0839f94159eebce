"""The run settings' validation and the CLI's conversion, moved unchanged from ``train.py``.

These four functions move on into ``config.py`` (one definition of a run's settings); this
module then imports them from there or goes.
"""

from __future__ import annotations

import math

from ..config import TrainConfig
from ..errors import UserError
from ..layout import PURE


def validate_config(config: TrainConfig) -> None:
    """Every problem a user can cause with flags, as one UserError line."""
    from ..data import dataset_info
    from ..models import BLOCKS_PER_STAGE, MODEL_NAMES

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
    _validate_run_options(config)
    if config.distillation == PURE:
        if config.alpha is not None or config.teacher_model is not None:
            raise UserError("--alpha/--teacher-model were given without --distillation: "
                            "expected a method (logit, fitnets, ...) or neither flag")
        return
    from ..distill import method_class

    method_class(config.distillation)
    if config.teacher_model is None:
        raise UserError(f"--distillation {config.distillation} needs --teacher-model")
    if config.alpha is None or not 0.0 <= config.alpha <= 1.0 or math.isnan(config.alpha):
        raise UserError(f"--alpha {config.alpha}: expected a KD strength in [0, 1]")
    if config.temperature <= 0:
        raise UserError(f"--temperature {config.temperature}: expected a positive number")


def _validate_run_options(config: TrainConfig) -> None:
    """Augmentation, selection, threads: one UserError line each."""
    from ..config import SELECTIONS
    from ..data import AUGMENTATIONS

    if config.augmentation not in AUGMENTATIONS:
        raise UserError(f"--augmentation {config.augmentation!r}: expected one of "
                        f"{', '.join(AUGMENTATIONS)}")
    if config.selection not in SELECTIONS:
        raise UserError(f"--selection {config.selection!r}: expected one of "
                        f"{', '.join(SELECTIONS)}")
    if not 0.0 < config.validation_fraction < 1.0:
        raise UserError(f"--validation-fraction {config.validation_fraction}: expected a "
                        "fraction in (0, 1)")
    if config.threads is not None and (isinstance(config.threads, bool)
                                       or not isinstance(config.threads, int)
                                       or config.threads < 1):
        raise UserError(f"--threads {config.threads}: expected a positive integer")
    if config.tensorboard:
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            raise UserError("tensorboard = true needs the tensorboard package: expected it "
                            "installed (pip install 'kdlab[tensorboard]')")


def _with_complete_options(config: TrainConfig) -> TrainConfig:
    """A copy whose method options are typed and complete (defaults merged, the run's
    temperature for methods that take one), so the recorded config names every setting the
    method used and a resume compares like with like. Unknown options fail in one line."""
    from dataclasses import replace

    from ..distill import method_defaults, resolve_options

    options = dict(config.method_options)
    if "temperature" in method_defaults(config.distillation):
        options.setdefault("temperature", config.temperature)
    options = resolve_options(config.distillation, options)
    if options.get("hint_epochs", 0) >= config.epochs:
        raise UserError(f"--option hint_epochs={options['hint_epochs']}: expected fewer than "
                        f"--epochs {config.epochs} (stage 1 leaves the classifier untrained)")
    return replace(config, method_options=options)



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
    from ..data import default_data_root

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
        experiments_dir=str(args.experiments_dir), device=args.device,
        augmentation=getattr(args, "augmentation", "kdlab"),
        selection=getattr(args, "selection", "test"),
        validation_fraction=getattr(args, "validation_fraction", 0.1),
        threads=getattr(args, "threads", None),
        tensorboard=getattr(args, "tensorboard", False))
