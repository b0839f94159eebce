"""The study's ``[scheduler]`` and ``[sync]`` tables, each key declared as a run setting is
(:func:`kdlab.run.config.setting`: default, kind, help, check), so that the study loader
validates them with the run settings' code and the scheduler backends read them without
importing the study layer."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from . import catalog
from .config import at_least, setting

BACKENDS = catalog.BACKENDS


def _walltime_problem(text: str) -> str | None:
    try:
        parts = [int(part) for part in text.split(":")]
    except ValueError:
        return "HH:MM:SS"
    return None if 1 <= len(parts) <= 3 and all(part >= 0 for part in parts) else "HH:MM:SS"


def _memory_problem(text: str) -> str | None:
    try:
        memory_megabytes(text)
    except ValueError:
        return "a memory size such as '24GB' or '512MB'"
    return None


_POSITIVE = at_least(1, "a positive integer")
_NOT_NEGATIVE = at_least(0, "an integer >= 0")


def _study_setting(default: Any, help: str, kind, **meta):
    """A [scheduler] or [sync] key, declared as run settings are (kdlab.run.config.setting):
    default, kind, help, and the check that names what was expected."""
    return setting(default, help, kind, where="study", **meta)


@dataclass
class SchedulerSettings:
    """The study's ``[scheduler]`` table: how its jobs are submitted. Each key's kind, check
    and help are declared here and validated by one loader (:func:`_load_settings`)."""

    backend: str = _study_setting("local", "scheduler backend", str, choices=BACKENDS)
    max_live_jobs: int = _study_setting(2, "jobs live at once", int, check=_POSITIVE)
    walltime: str = _study_setting("02:00:00", "a job's walltime, HH:MM:SS", str,
                                   check=_walltime_problem)
    cpus: int = _study_setting(1, "cores per job", int, check=_POSITIVE)
    memory: str = _study_setting("4GB", "memory per job ('24GB', '512MB')", str,
                                 check=_memory_problem)
    gpus: int = _study_setting(0, "GPUs per job", int, check=_NOT_NEGATIVE)
    queue: str | None = _study_setting(None, "PBS queue / Slurm partition", str, optional=True)
    account: str | None = _study_setting(None, "PBS project / Slurm account", str, optional=True)
    extra_directives: list[str] = _study_setting(
        [], "raw '#PBS ...' / '#SBATCH ...' directive bodies", (list, str))
    setup: list[str] = _study_setting([], "shell lines a job runs first (module load, venv)",
                                      (list, str))
    template: str | None = _study_setting(None, "a job-script template file (str.format "
                                          "fields)", str, optional=True)
    signal_seconds: int = _study_setting(300, "warn the job this long before the walltime "
                                         "kill", int, check=_NOT_NEGATIVE)
    kdlab_command: str = _study_setting("kdlab", "how a job invokes kdlab (e.g. 'python -m "
                                        "kdlab')", str)
    pack_size: int = _study_setting(1, "runs trained together by one job (see kdlab.study.queue)",
                                    int, check=_POSITIVE)
    requeue: bool = _study_setting(False, "Slurm: the job requeues itself at the pre-timeout "
                                   "signal", bool)

    def walltime_seconds(self) -> int:
        parts = [int(part) for part in self.walltime.split(":")]
        while len(parts) < 3:
            parts.insert(0, 0)
        hours, minutes, seconds = parts
        return hours * 3600 + minutes * 60 + seconds

    def memory_megabytes(self) -> int:
        """``memory`` in megabytes (1024-based units: '24GB', '24 GB', '512M', '1.5G')."""
        return memory_megabytes(self.memory)


_MEMORY_UNITS = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}


def memory_megabytes(text: str) -> int:
    """Megabytes of a memory size such as '24GB', '24 GB', '512MB', '1.5G' or '4096' (MB).
    Raises ValueError when the text is not a size."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGTkmgt]?)(?:i?[Bb])?\s*", text)
    if not match:
        raise ValueError(f"not a memory size: {text!r}")
    value = float(match[1]) * _MEMORY_UNITS[(match[2] or "M").upper()]
    if value < 1:
        raise ValueError(f"less than one megabyte: {text!r}")
    return int(round(value))


@dataclass
class SyncSettings:
    """The study's ``[sync]`` table (``kdlab sync``), declared and validated as
    :class:`SchedulerSettings` is."""

    host: str | None = _study_setting(None, "ssh host (none: the remote is this machine)", str,
                                      optional=True)
    user: str | None = _study_setting(None, "ssh user", str, optional=True)
    remote_dir: str | None = _study_setting(None, "project directory on the remote", str,
                                            optional=True)
    local_dir: str = _study_setting(".", "project directory here", str)
    remote_setup: list[str] = _study_setting([], "lines run before the remote kdlab",
                                             (list, str))
    ssh_options: list[str] = _study_setting([], "ssh -o options", (list, str))
    exclude: list[str] = _study_setting(
        ["data/", "experiments/", "analysis/", ".venv/", "venv/", "__pycache__/", ".git/"],
        "paths rsync leaves out", (list, str))
    log_file: str = _study_setting("sync.log", "where sync logs", str)
