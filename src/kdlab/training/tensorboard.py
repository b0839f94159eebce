"""Live curves: TensorBoard event files of a run's per-epoch metrics, in its run directory.

With ``[training] tensorboard = true`` every finished epoch adds its figures, so that
``tensorboard --logdir experiments`` shows a whole study while it trains, one run per
directory. Tags: ``accuracy/{train,test,validation}``, ``loss/{train,test,validation}``,
``loss_terms/{ce,distill,<method term>}``, ``lr``, ``epoch_seconds``, ``skipped_steps``;
the step is the 1-based epoch.
"""

from __future__ import annotations

from pathlib import Path

from ..run.errors import UserError

_SPLITS = ("train", "test", "validation")


def tag_of(key: str) -> str:
    """The TensorBoard tag of a metrics.json key."""
    for split in _SPLITS:
        if key == f"{split}_acc":
            return f"accuracy/{split}"
        if key == f"{split}_loss":
            return f"loss/{split}"
    if key.startswith("train_"):
        return f"loss_terms/{key[len('train_'):]}"
    return key


class EpochEvents:
    """Writes the newest epoch of ``metrics`` as scalars; a no-op unless ``enabled``."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("tensorboard = true needs the tensorboard package: expected it "
                            "installed (pip install 'kdlab[tensorboard]')") from None
        self.writer = SummaryWriter(log_dir=str(run_dir))

    def write(self, metrics: dict[str, list], epoch: int) -> None:
        """Every per-epoch series of ``metrics`` that has a value for ``epoch`` (1-based)."""
        if self.writer is None:
            return
        for key, values in metrics.items():
            if isinstance(values, list) and len(values) >= epoch:
                value = values[epoch - 1]
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(tag_of(key), value, epoch)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
