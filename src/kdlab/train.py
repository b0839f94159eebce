"""``kdlab train``: the command module. The training itself lives in :mod:`kdlab.training`;
these names stay importable from here for callers of the earlier layout."""

from __future__ import annotations

from .training.device import epoch_generator, resolve_device, seed_everything
from .training.guards import check_epoch as _guard
from .training.loop import evaluate
from .training.pack import command, train_pack
from .training.run import train_run
from .training.settings import (_with_complete_options, config_from_args, parse_options,
                                validate_config)

__all__ = ["train_run", "train_pack", "command", "evaluate", "resolve_device", "seed_everything",
           "epoch_generator", "validate_config", "parse_options", "config_from_args",
           "_with_complete_options", "_guard"]
