"""Compatibility names: the training code lives in :mod:`kdlab.training`, the run's settings
in :mod:`kdlab.config`; these names stay importable from here for scripts and notebooks."""

from __future__ import annotations

from .config import (_with_complete_options, config_from_args, parse_options,  # noqa: F401
                     prepare_configs, validate_config)
from .training.device import epoch_generator, resolve_device, seed_everything
from .training.guards import check_epoch as _guard
from .training.loop import evaluate
from .training.pack import command, train_pack
from .training.run import train_run

__all__ = ["train_run", "train_pack", "command", "evaluate", "resolve_device", "seed_everything",
           "epoch_generator", "validate_config", "parse_options", "config_from_args",
           "prepare_configs", "_with_complete_options", "_guard"]
