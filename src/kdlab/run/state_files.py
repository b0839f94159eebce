"""State files of a run directory: atomic writes, reading with clear errors, run states.

``status.json``   status (queued | in_progress | completed | failed), epoch, max_acc, config,
                  job_id / scheduler (set at submission), reason (for failures), updated_at.
``metrics.json``  per-epoch arrays (train_loss, train_acc, test_loss, test_acc, epoch_seconds,
                  one train_{term} per loss term) and config.

Every write of a state file goes through :func:`atomic_write_bytes`: a temporary file in
the same directory, flushed and fsynced, then renamed over the target, so a reader (or a
kill at any instant) sees either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import errno
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .. import __version__
from . import catalog
from .errors import WriteError

STATUS_FILE = "status.json"
METRICS_FILE = "metrics.json"
CHECKPOINT_FILE = "checkpoint.pth"
BEST_FILE = "best.pth"

QUEUED = "queued"
IN_PROGRESS = "in_progress"
COMPLETED = "completed"
FAILED = "failed"
STATES = (QUEUED, IN_PROGRESS, COMPLETED, FAILED)
CONFIG_FILE = "config.json"

# Key of the scheduler job id; the earlier research code wrote a key per backend
# ("pbs_job_id", "slurm_job_id": kdlab.run.catalog.BACKEND_FACTS).
JOB_ID_KEYS = ("job_id", *(facts.legacy_job_id_key for facts in catalog.BACKEND_FACTS.values()
                           if facts.legacy_job_id_key))


class StateFileError(Exception):
    """A state file exists but cannot be read or parsed; the message names the file."""


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same directory, fsync, rename)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise _write_error(path, error) from None
    try:
        # mkstemp makes the file 0600; give it the mode a plain open() would (0666 minus
        # the umask) so that group members on shared storage can read it.
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException as error:
        try:
            os.unlink(temp_name)
        except FileNotFoundError:
            pass
        if isinstance(error, OSError):
            raise _write_error(path, error) from None
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def current_umask() -> int:
    """The process's umask: from /proc where the kernel reports it (reading it that way
    does not change it for other threads), else by setting and restoring it."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def ensure_directory(path: str | Path) -> None:
    """Create ``path`` (and its parents) for files kdlab writes, and check it takes a file;
    the writer's one-line WriteError naming it, or the file in its way, otherwise (before
    any work is done)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _write_error(path / "-", error, shown=path) from None
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        read_only = error.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
        raise WriteError(error.errno, "the directory is read-only" if read_only
                         else error.strerror or type(error).__name__, str(path)) from None


def _write_error(path: Path, error: OSError, shown: Path | None = None) -> WriteError:
    """The one-line error of a failed write of ``path`` (errno kept): names the path in the
    way when it is not ``path`` itself (a file where a directory must be)."""
    reason = error.strerror or type(error).__name__
    blocker = next((parent for parent in reversed(path.parents)
                    if parent.exists() and not parent.is_dir()), None)
    if blocker is not None:    # a file where a directory must be
        reason = f"{blocker} is a file, not a directory"
    elif error.filename and Path(error.filename) != path and not str(error.filename).endswith(".tmp"):
        reason += f": {error.filename}"
    return WriteError(error.errno, reason, str(shown or path))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through the atomic writer (serialised in memory first)."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _json_default(value: Any):
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in a state file")


def read_json(path: str | Path) -> dict | None:
    """The JSON object in ``path``; None if the file does not exist; StateFileError if it
    cannot be read, decoded (UTF-8) or parsed, or holds no JSON object."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise StateFileError(f"{path}: cannot read ({error.strerror or error})") from error
    try:
        obj = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise StateFileError(f"{path}: not UTF-8 text (byte {error.start}: "
                             f"{error.reason})") from error
    except (json.JSONDecodeError, RecursionError) as error:
        raise StateFileError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(obj, dict):
        raise StateFileError(f"{path}: expected a JSON object, found {type(obj).__name__}")
    return obj


# Fields of status.json that kdlab reads, with the type each must have when present
# (None is allowed for all). A wrong type makes the file unreadable, like corrupt bytes.
_NUMBER = (int, float)
_LARGEST_FLOAT = int(sys.float_info.max)
STATUS_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "status": (str,), "epoch": (int,), "epochs": (int,), "max_acc": _NUMBER,
    "config": (dict,), "reason": (str,), "previous_reason": (str,), "scheduler": (str,),
    "job_id": (str, int), "pbs_job_id": (str, int), "slurm_job_id": (str, int),
    "submissions": (int,), "missed_starts": (int,), "job_history": (list,),
    "submitted_at": _NUMBER, "started_at": _NUMBER, "completed_at": _NUMBER,
    "failed_at": _NUMBER, "updated_at": _NUMBER, "duration_seconds": _NUMBER,
    "made_by": (str,), "run": (str,), "environment_failures": (int,), "pack": (list,),
}


def check_status_fields(path: Path, status: dict) -> None:
    """StateFileError naming the first field kdlab reads whose value has the wrong type."""
    for key, kinds in STATUS_FIELD_TYPES.items():
        value = status.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, kinds):
            names = " or ".join(kind.__name__ for kind in kinds)
            raise StateFileError(f"{path}: '{key}' is {value!r}, expected {names}")
        # JSON integers have no bound; one beyond float range breaks every reader's
        # arithmetic (OverflowError), so it reads like a wrong type
        if kinds == _NUMBER and isinstance(value, int) and abs(value) > _LARGEST_FLOAT:
            raise StateFileError(f"{path}: '{key}' is a {len(str(abs(value)))}-digit "
                                 "integer, expected a number within float range")
    history = status.get("job_history") or []
    if not all(isinstance(item, (str, int)) and not isinstance(item, bool) for item in history):
        raise StateFileError(f"{path}: 'job_history' holds {history!r}, expected job ids")
    pack = status.get("pack") or []
    if not all(isinstance(name, str) for name in pack):
        raise StateFileError(f"{path}: 'pack' holds {pack!r}, expected run names")


def read_status(run_dir: str | Path) -> dict | None:
    """The run's status.json (None if absent). Raises StateFileError when malformed.

    A status.json with a job id but no ``status`` (what the earlier research code wrote at
    submission: ``{"pbs_job_id": ...}``) reads as ``queued``; the file is not changed."""
    path = Path(run_dir) / STATUS_FILE
    status = read_json(path)
    if status is None:
        return None
    check_status_fields(path, status)
    state = status.get("status")
    if state is None and job_id_of(status) is not None:
        status = {**status, "status": QUEUED}
        state = QUEUED
    if state not in STATES:
        raise StateFileError(f"{path}: 'status' is {state!r}, expected one of {', '.join(STATES)}")
    return status


def read_metrics(run_dir: str | Path) -> dict | None:
    return read_json(Path(run_dir) / METRICS_FILE)


def job_id_of(status: dict | None) -> str | None:
    """The scheduler job id recorded in a status (new or legacy key), as text."""
    if not status:
        return None
    for key in JOB_ID_KEYS:
        value = status.get(key)
        if value not in (None, ""):
            return str(value)
    return None


def made_by() -> str:
    """The provenance mark kdlab writes into every status.json."""
    return f"kdlab {__version__}"


def is_earlier_code(status: dict | None) -> bool:
    """A status.json written by the earlier research code: neither kdlab's ``made_by`` or
    ``run`` mark nor a kdlab run config (one with ``method_options``)."""
    if not status:
        return False
    config = status.get("config")
    kdlab_config = isinstance(config, dict) and "method_options" in config
    return "made_by" not in status and "run" not in status and not kdlab_config


def write_status(run_dir: str | Path, status: dict, provenance: str | None = None) -> dict:
    """Write a whole status.json atomically, stamping ``updated_at`` (unix seconds) and
    ``made_by`` (kdlab and its version, then ``provenance`` when given: what else made the
    run, e.g. the file an imported teacher came from)."""
    status = dict(status)
    status["updated_at"] = time.time()
    status["made_by"] = f"{made_by()} {provenance}" if provenance else made_by()
    atomic_write_json(Path(run_dir) / STATUS_FILE, status)
    return status


def update_status(run_dir: str | Path, **changes: Any) -> dict:
    """Merge ``changes`` into the existing status.json (keys set to None are removed)."""
    current = read_status(run_dir) or {}
    for key, value in changes.items():
        if value is None:
            current.pop(key, None)
        else:
            current[key] = value
    return write_status(run_dir, current)
