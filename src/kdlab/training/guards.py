"""What stops a run early: a stop signal from the scheduler, a non-finite loss, an epoch whose
optimizer steps the grad scaler skipped. :class:`Preempted` is the one exception for "stopped
by a signal, progress saved", shared with the methods' own stages."""

from __future__ import annotations

import contextlib
import signal

from ..distill.base import Preempted

# An epoch in which the grad scaler skipped at least this share of optimizer steps has not
# trained (the earlier round's RKD runs sat at chance for 150 epochs this way).
MAX_SKIPPED_STEP_FRACTION = 0.9
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

__all__ = ["MAX_SKIPPED_STEP_FRACTION", "STOP_SIGNALS", "Preempted", "StopFlag", "stop_signals",
           "check_epoch"]


class StopFlag:
    """Set by SIGTERM/SIGUSR1; polled between batches (never acted on inside a handler)."""

    def __init__(self) -> None:
        self.signal_name: str | None = None

    def __bool__(self) -> bool:
        return self.signal_name is not None

    def handler(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        self.signal_name = signal.Signals(signum).name

    def raise_if_set(self) -> None:
        if self.signal_name is not None:
            raise Preempted(f"stopped by {self.signal_name}")


@contextlib.contextmanager
def stop_signals(flag: StopFlag):
    """Route the stop signals to ``flag`` for the duration of the block."""
    previous = {}
    try:
        for signum in STOP_SIGNALS:
            previous[signum] = signal.signal(signum, flag.handler)
    except ValueError:  # not the main thread: signals stay with whoever owns them
        previous = {}
    try:
        yield flag
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def check_epoch(stats: dict, epoch: int) -> str | None:
    """The reason to stop the run after epoch ``epoch`` (0-based) with ``stats`` (keys
    ``nonfinite``, ``steps``, ``skipped``, ``terms``), or None."""
    if stats["nonfinite"]:
        terms = ", ".join(f"{key}={value:.4g}" for key, value in stats["terms"].items())
        return (f"non-finite loss in {stats['nonfinite']} of {stats['steps']} steps of epoch "
                f"{epoch + 1} (epoch means: {terms})")
    if stats["steps"] and stats["skipped"] >= MAX_SKIPPED_STEP_FRACTION * stats["steps"]:
        return (f"the optimizer skipped {stats['skipped']} of {stats['steps']} steps in epoch "
                f"{epoch + 1} (grad scaler found inf/NaN gradients): the model is not training")
    return None
