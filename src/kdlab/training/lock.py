"""One process per run: an OS lock (``fcntl.flock``) on a file in the run directory.

The kernel releases the lock when its holder exits in any way (SIGKILL included), so a lock
left by a dead process is simply taken. The file also names the holder (pid, host) for the
one-line refusal the second process prints; it is read tolerantly (a holder may be writing it).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

from ..run.errors import UserError

LOCK_FILE = "train.lock"


class RunLock:
    """``with RunLock(run_dir) as lock: ... lock.acquire() ...``; released on exit."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._handle = None

    @property
    def held(self) -> bool:
        return self._handle is not None

    def acquire(self) -> None:
        """Create the run directory if needed and take the lock, or raise a UserError naming
        the process that holds it."""
        if self.held:
            return
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, "a+", encoding="utf-8")
        except OSError as error:
            raise UserError(f"cannot write the run directory {self.run_dir} "
                            f"({error.strerror or error}): expected a writable experiments "
                            "directory") from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise UserError(f"run {self.run_dir} is being trained by {self.holder()} "
                            f"(lock {self.path}): expected one kdlab train per run; wait for "
                            "it or stop it") from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": os.uname().nodename,
                                 "since": time.time()}) + "\n")
        handle.flush()
        self._handle = handle

    def holder(self) -> str:
        """'pid N on host H' from the lock file, or what could be told."""
        try:
            record = json.loads(self.path.read_text(encoding="utf-8"))
            return f"pid {int(record['pid'])} on host {record['host']}"
        except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
            return "another process (its pid and host are not recorded yet)"

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the descriptor releases the flock
            self._handle = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()
