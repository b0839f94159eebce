"""The one exception type for mistakes a user can cause.

The CLI turns a :class:`UserError` into one line on stderr and exit code 2; anything
else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A bad flag, missing or corrupt file, malformed study: what, where, what was expected."""


EXIT_USER_ERROR = 2
# Exit code of a run that saved its checkpoint after SIGTERM/SIGUSR1 (walltime warning):
# distinct from success and from failure so that a job script or re-queue can tell.
EXIT_PREEMPTED = 75
