"""Scheduler backends behind one interface (see :mod:`kdlab.schedulers.base`)."""

from __future__ import annotations

from .. import catalog
from ..errors import UserError
from .base import TEMPLATE_FIELDS, Scheduler, SchedulerError

BACKEND_NAMES = catalog.BACKENDS


def get_scheduler(name: str) -> Scheduler:
    """The backend called ``name`` ('local', 'slurm' or 'pbs')."""
    if name == "local":
        from .local import LocalScheduler
        return LocalScheduler()
    if name == "slurm":
        from .slurm import SlurmScheduler
        return SlurmScheduler()
    if name == "pbs":
        from .pbs import PbsScheduler
        return PbsScheduler()
    raise UserError(f"unknown scheduler backend {name!r}: expected one of {', '.join(BACKEND_NAMES)}")


def backend_of_status(status: dict | None, default: str) -> str:
    """The backend that ran the job recorded in a status.json: its ``scheduler`` key, else
    the legacy key's backend (``pbs_job_id`` / ``slurm_job_id``), else ``default``."""
    status = status or {}
    recorded = status.get("scheduler")
    if isinstance(recorded, str) and recorded in BACKEND_NAMES:
        return recorded
    if status.get("job_id") in (None, ""):
        if status.get("pbs_job_id") not in (None, ""):
            return "pbs"
        if status.get("slurm_job_id") not in (None, ""):
            return "slurm"
    return default


__all__ = ["BACKEND_NAMES", "TEMPLATE_FIELDS", "Scheduler", "SchedulerError", "get_scheduler",
           "backend_of_status"]
