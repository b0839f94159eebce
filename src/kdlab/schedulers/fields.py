"""What a study may put into a job script, field by field.

A job script is a shell script whose first lines (``#SBATCH``/``#PBS``) the scheduler
reads as options. A line break in a value that lands in such a line would end the block
and turn the rest into a shell command, so every study value that reaches a job script is
checked here when the study is loaded (one :class:`~kdlab.run.errors.UserError` line naming
the key), and the run directories once more when a script is rendered (they include the
directory ``kdlab queue`` runs in).

Per study key: where it lands, and what it may hold.

- ``scheduler.queue``: ``--partition=`` / ``#PBS -q``; letters, digits and ``_ . - @ ,``,
  not starting with ``-``.
- ``scheduler.account``: ``--account=`` / ``#PBS -P``; letters, digits and ``_ . - @``,
  not starting with ``-``.
- ``scheduler.walltime``: ``--time=`` / ``walltime=``; ``H``, ``M:S`` or ``H:M:S`` (digits).
- ``scheduler.memory``: ``--mem=`` / ``mem=`` (in megabytes); a number, spaces, a unit.
- ``scheduler.extra_directives``: one directive line each; printable text, no line break.
- ``scheduler.template``: the template file's path; no control characters.
- ``scheduler.setup``: shell lines of the script, run as written; no control character
  but tab.
- ``scheduler.kdlab_command``: the training line, split like a shell and each word
  shell-quoted; no control character but tab, and balanced quotes.
- ``experiments_dir``: the run directories, in ``--output``/``--error`` and
  ``#PBS -o``/``-e`` (Slurm and PBS backends); letters, digits and ``_ . / - + , = @ ~ :``
  (no spaces, quotes, ``$`` or ``%``, which Slurm expands).
- ``data_root``: a training argument, shell-quoted; no control characters.

``setup`` and ``kdlab_command`` are the user's own shell by design (module loads, a venv,
``python -m kdlab``): kdlab runs them as written and guards only against a value that is
not the one line it looks like. Every other value in a shell line of the script (paths,
training arguments) is quoted with :func:`shlex.quote`.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

from ..run import catalog
from ..run.errors import UserError

# C0 and C1 control characters, DEL, and the Unicode line and paragraph separators.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROL_BUT_TAB = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_QUEUE = re.compile(r"[A-Za-z0-9_.@][A-Za-z0-9_.@,-]*")
_ACCOUNT = re.compile(r"[A-Za-z0-9_.@][A-Za-z0-9_.@-]*")
_WALLTIME = re.compile(r"[0-9]+(:[0-9]+){0,2}")
_MEMORY = re.compile(r" *[0-9]+(\.[0-9]+)? *[KMGTkmgt]?i?[Bb]? *")
_DIRECTIVE_PATH = re.compile(r"[A-Za-z0-9_./+,=@~:-]+")
_JOB_NAME = re.compile(r"[A-Za-z0-9_.+=,-]+")

DIRECTIVE_PATH_CHARACTERS = "letters, digits and _ . / - + , = @ ~ :"
BATCH_BACKENDS = tuple(name for name, facts in catalog.BACKEND_FACTS.items() if facts.batch)


def _single_line(value: str, allow_tab: bool = False) -> str | None:
    if (_CONTROL_BUT_TAB if allow_tab else _CONTROL).search(value):
        return ("one line without control characters (line breaks, "
                + ("" if allow_tab else "tabs, ") + "escape codes)")
    return None


def _problem_of(key: str, value: str) -> str | None:
    """What ``value`` of study key ``key`` should have been, or None when it is fine."""
    if key in ("scheduler.setup", "scheduler.kdlab_command"):
        problem = _single_line(value, allow_tab=True)
        if problem is None and key == "scheduler.kdlab_command":
            try:
                if not shlex.split(value):
                    return "a command such as 'kdlab' or 'python -m kdlab'"
            except ValueError as error:
                return f"a command that splits like a shell line ({error})"
        return problem
    problem = _single_line(value)
    if problem is not None:
        return problem
    if key == "scheduler.queue" and not _QUEUE.fullmatch(value):
        return "a queue/partition name: letters, digits and _ . - @ , (not starting with -)"
    if key == "scheduler.account" and not _ACCOUNT.fullmatch(value):
        return "an account/project name: letters, digits and _ . - @ (not starting with -)"
    if key == "scheduler.walltime" and not _WALLTIME.fullmatch(value):
        return "HH:MM:SS (digits and colons)"
    if key == "scheduler.memory" and not _MEMORY.fullmatch(value):
        return "a memory size such as '24GB' or '512MB'"
    return None


def job_value_problem(settings: Any, experiments_dir: str,
                      data_root: str) -> tuple[str, str, Any] | None:
    """The first study value that must not reach a job script, as (study key, what was
    expected, the value), or None. ``settings`` is the study's SchedulerSettings."""
    values: list[tuple[str, Any]] = [
        ("scheduler.queue", settings.queue), ("scheduler.account", settings.account),
        ("scheduler.walltime", settings.walltime), ("scheduler.memory", settings.memory),
        ("scheduler.template", settings.template),
        ("scheduler.kdlab_command", settings.kdlab_command),
        ("data_root", data_root), ("experiments_dir", experiments_dir)]
    values += [("scheduler.extra_directives", line) for line in settings.extra_directives]
    values += [("scheduler.setup", line) for line in settings.setup]
    for key, value in values:
        if value is None:
            continue
        problem = _problem_of(key, value)
        if problem is not None:
            return key, problem, value
    if settings.requeue and (settings.backend != "slurm" or settings.signal_seconds <= 0):
        return ("scheduler.requeue", "false unless backend is 'slurm' and signal_seconds is "
                "positive (the job requeues itself at Slurm's pre-timeout signal)", True)
    if settings.backend in BATCH_BACKENDS and not _DIRECTIVE_PATH.fullmatch(experiments_dir):
        return ("experiments_dir", f"a path of {DIRECTIVE_PATH_CHARACTERS} (it goes into "
                f"{settings.backend} directives)", experiments_dir)
    return None


def check_directive_values(job_name: str, run_dir: Path) -> None:
    """Refuse, in one line, a job name or run directory that a directive cannot hold (the
    run directory is absolute: it includes where ``kdlab queue`` runs)."""
    if not _JOB_NAME.fullmatch(job_name):
        raise UserError(f"job name {job_name!r}: expected letters, digits and _ . + = , -")
    if not _DIRECTIVE_PATH.fullmatch(str(run_dir)):
        raise UserError(f"run directory {str(run_dir)!r} (experiments_dir): expected a path "
                        f"of {DIRECTIVE_PATH_CHARACTERS}, as it goes into job-script "
                        "directives; run kdlab queue from such a directory or set an absolute "
                        "experiments_dir")
