"""Scheduler backends behind one interface (see :mod:`kdlab.schedulers.base`)."""

from __future__ import annotations

import importlib

from ..run import catalog
from ..run.errors import UserError
from .base import TEMPLATE_FIELDS, Scheduler, SchedulerError

BACKEND_NAMES = catalog.BACKENDS


def get_scheduler(name: str) -> Scheduler:
    """The backend called ``name`` (one of :data:`kdlab.run.catalog.BACKEND_FACTS`)."""
    facts = catalog.BACKEND_FACTS.get(name)
    if facts is None:
        raise UserError(f"unknown scheduler backend {name!r}: expected one of "
                        f"{', '.join(BACKEND_NAMES)}")
    module, _, class_name = facts.scheduler.partition(":")
    return getattr(importlib.import_module(module), class_name)()


def backend_of_status(status: dict | None, default: str) -> str:
    """The backend that ran the job recorded in a status.json: its ``scheduler`` key, else
    the legacy key's backend (``pbs_job_id`` / ``slurm_job_id``), else ``default``."""
    status = status or {}
    recorded = status.get("scheduler")
    if isinstance(recorded, str) and recorded in BACKEND_NAMES:
        return recorded
    if status.get("job_id") in (None, ""):
        for name, facts in catalog.BACKEND_FACTS.items():
            if facts.legacy_job_id_key and status.get(facts.legacy_job_id_key) not in (None, ""):
                return name
    return default


__all__ = ["BACKEND_NAMES", "TEMPLATE_FIELDS", "Scheduler", "SchedulerError", "get_scheduler",
           "backend_of_status"]
