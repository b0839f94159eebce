"""The one exception type for mistakes a user can cause.

The CLI turns a :class:`UserError` into one line on stderr and exit code 2; anything
else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A bad flag, missing or corrupt file, malformed study: what, where, what was expected."""


class WriteError(UserError, OSError):
    """A file kdlab writes could not be written (a directory in the way, a read-only or full
    file system). One line naming the path, exit 2 from the CLI; still an :class:`OSError`
    with the original ``errno``, so code that handles environment failures (a full disk
    during training) by errno keeps working. Built as ``WriteError(errno, reason, path)``."""

    def __str__(self) -> str:
        return f"cannot write {self.filename} ({self.strerror}): expected a writable location"


EXIT_USER_ERROR = 2
# Exit code of a run that saved its checkpoint after SIGTERM/SIGUSR1 (walltime warning):
# distinct from success and from failure so that a job script or re-queue can tell.
EXIT_PREEMPTED = 75
