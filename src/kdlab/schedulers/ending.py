"""Why a job ended: the scheduler's own end state of a job that is gone.

A backend's ``job_ends(job_ids)`` answers, in one call for many jobs, with an *end record*
per job it still knows (a plain dict, stored as is in the run's status.json)::

    {"job_id": "123", "state": "OUT_OF_MEMORY", "exit_code": 0, "signal": 9,
     "elapsed": "00:14:02", "source": "sacct"}

``state`` is Slurm's vocabulary (COMPLETED, FAILED, CANCELLED, TIMEOUT, OUT_OF_MEMORY,
NODE_FAIL, PREEMPTED, BOOT_FAIL, DEADLINE), which PBS exit statuses are mapped onto;
``exit_code``/``signal``/``elapsed`` are None when the scheduler does not say. Jobs the
scheduler has forgotten are left out of the answer. ``kdlab queue`` keeps every end in
the run's status.json (``job_ends``, the latest also as ``last_job_end``) when it finds a
job gone, and does not resubmit a run whose jobs ran out of memory
:data:`MAX_OUT_OF_MEMORY` times without ``--retry-failed``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

from . import backend_of_status, get_scheduler

OUT_OF_MEMORY = "OUT_OF_MEMORY"
MAX_OUT_OF_MEMORY = 3


def end_record(job_id: str, state: str, exit_code: int | None, signal: int | None,
               elapsed: str | None, source: str) -> dict[str, Any]:
    return {"job_id": str(job_id), "state": state, "exit_code": exit_code, "signal": signal,
            "elapsed": None if elapsed is None else str(elapsed), "source": source}


def end_text(end: dict[str, Any]) -> str:
    """'ended OUT_OF_MEMORY after 00:14:02', 'ended FAILED (exit code 3) after 00:00:05'.
    Exit code and signal are shown for FAILED only: the other states say why already (and
    Slurm's 'signal' of an OUT_OF_MEMORY job is an internal marker, not a signal)."""
    state = str(end.get("state") or "in an unknown state")
    details = []
    if state == "FAILED":
        for key, label in (("exit_code", "exit code"), ("signal", "signal")):
            if isinstance(end.get(key), int) and end[key]:
                details.append(f"{label} {end[key]}")
    text = f"ended {state}" + (f" ({', '.join(details)})" if details else "")
    if end.get("elapsed"):
        text += f" after {end['elapsed']}"
    return text


def recorded_ends(status: dict | None) -> list[dict[str, Any]]:
    """The end records kept in a status.json (entries that are not records are skipped)."""
    ends = (status or {}).get("job_ends")
    if not isinstance(ends, list):
        return []
    return [end for end in ends if isinstance(end, dict) and isinstance(end.get("job_id"), str)]


def out_of_memory_count(status: dict | None, end: dict[str, Any] | None = None) -> int:
    """How many of the run's jobs ended OUT_OF_MEMORY: those recorded, plus ``end`` when it
    is not recorded yet."""
    ends = recorded_ends(status)
    if end is not None and all(known["job_id"] != end["job_id"] for known in ends):
        ends = ends + [end]
    return sum(known.get("state") == OUT_OF_MEMORY for known in ends)


def status_changes(status: dict | None, end: dict[str, Any]) -> dict[str, Any]:
    """The status.json keys that record ``end`` ({} when it is recorded already or empty)."""
    if not end:
        return {}
    ends = recorded_ends(status)
    if any(known["job_id"] == end["job_id"] for known in ends):
        return {}
    return {"job_ends": ends + [end], "last_job_end": end}


def live_job_states(runs: Iterable[Any], liveness: dict[Path, Any], default_backend: str,
                    scheduler_factory: Callable | None = None) -> dict[Path, tuple[str, str]]:
    """Run dir -> (scheduler state, elapsed) of its job, for the runs whose job ``liveness``
    says is alive; one call per backend."""
    return _ask_backends(runs, liveness, True, default_backend, scheduler_factory,
                         lambda scheduler, ids: scheduler.job_states(ids))


def gone_job_ends(runs: Iterable[Any], liveness: dict[Path, Any], default_backend: str,
                  scheduler_factory: Callable | None = None) -> dict[Path, dict[str, Any]]:
    """Run dir -> end record of its job, for the running and queued runs (objects with
    ``run_dir``, ``status``, ``job_id``) whose job ``liveness`` says is gone. Asks each
    backend once; a backend that cannot tell (missing, failing) leaves its runs out."""
    return _ask_backends(runs, liveness, False, default_backend, scheduler_factory,
                         lambda scheduler, ids: scheduler.job_ends(ids))


def _ask_backends(runs: Iterable[Any], liveness: dict[Path, Any], alive: bool,
                  default_backend: str, scheduler_factory: Callable | None,
                  ask: Callable) -> dict[Path, Any]:
    """``ask(scheduler, job ids)`` of each backend once, for the runs whose liveness is
    ``alive``; answers keyed by run directory. A backend that cannot be used is skipped."""
    factory = scheduler_factory or get_scheduler
    by_backend: dict[str, list[Any]] = {}
    for run in runs:
        if liveness.get(run.run_dir) is alive and run.job_id is not None:
            backend = backend_of_status(run.status, default_backend)
            by_backend.setdefault(backend, []).append(run)
    answers: dict[Path, Any] = {}
    for backend, asked in by_backend.items():
        scheduler = factory(backend)
        if scheduler.available() is not None:
            continue
        found = ask(scheduler, sorted({run.job_id for run in asked}))
        for run in asked:
            if run.job_id in found:
                answers[run.run_dir] = found[run.job_id]
    return answers
