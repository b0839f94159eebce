"""The one small interface behind which local processes, Slurm and PBS look the same.

A scheduler backend does three things: ``submit`` a run's ``kdlab train`` command and
return a job id, tell whether a job id ``is_alive`` (pending or running), and ``cancel``
a job. ``submit`` takes a ``record`` callback that it calls with the new job id *after*
the job exists and *before* it can start (jobs are submitted held and released after the
callback), so that the job id is in the run's status.json before the job itself, or
anything else, can look at it.

Batch backends (Slurm, PBS) write a job script into the run directory. Its text comes
from :func:`script_fields`: the same named fields fill kdlab's generated scripts and a
user's own template (study key ``scheduler.template``, Python ``str.format`` syntax, so a
literal brace in the shell script is written twice: ``${{HOME}}``). The fields are:

``job_name``          the run's name (``RunSpec.name``)
``run_dir``           absolute run directory; job output and error files go here
``workdir``           absolute directory ``kdlab queue`` ran in (relative paths of the study)
``output_file``       absolute path of the job's standard output file
``error_file``        absolute path of the job's standard error file
``walltime``          HH:MM:SS
``walltime_seconds``  the same in seconds
``cpus``, ``gpus``    counts from the study
``memory``            as written in the study (e.g. ``24GB``)
``memory_mb``         the same in megabytes (integer)
``queue``, ``account``  queue/partition and account/project ('' when not set)
``signal_seconds``    seconds before the walltime at which training is told to checkpoint
``directives``        the whole block of ``#SBATCH``/``#PBS`` lines kdlab would write
``extra_directives``  the study's extra directive lines, each already prefixed
``setup``             the study's setup lines (module loads, venv activation), one per line
``command``           the shell-quoted training command, to be ``exec``-ed
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Iterable

from ..run.errors import UserError
from ..run.study_settings import SchedulerSettings

TEMPLATE_FIELDS = ("job_name", "run_dir", "workdir", "output_file", "error_file", "walltime",
                   "walltime_seconds", "cpus", "gpus", "memory", "memory_mb", "queue", "account",
                   "signal_seconds", "directives", "extra_directives", "setup", "command")

# Scheduler commands get this long to answer before kdlab gives up on them.
COMMAND_TIMEOUT_SECONDS = 60
# An error message quotes at most this much of what a scheduler printed (one line).
REPLY_QUOTE_CHARACTERS = 300


class SchedulerError(Exception):
    """A scheduler command failed or could not be run (the message says which and why).

    Raised by ``is_alive`` when the scheduler cannot tell (then a job must be treated as
    'liveness unknown', never as gone) and by ``submit``/``cancel`` when they fail.

    Liveness has three answers: alive (True), gone (False) and unknown (this error). A job
    is gone only when the scheduler says so unambiguously: an end state, a message that
    the job is unknown or finished, or a listing that kdlab read in full and that leaves the
    job out. A reply kdlab cannot read (a login banner, another format, a timeout) is
    unknown, and the queue leaves the job's run alone (see :func:`liveness_of`)."""


class Scheduler(ABC):
    """A backend. ``name`` is what status.json records under ``scheduler``."""

    name: str = ""
    commands: tuple[str, ...] = ()   # executables the backend needs on PATH

    def available(self) -> str | None:
        """None when the backend can be used here, else why not (one line)."""
        missing = [command for command in self.commands if shutil.which(command) is None]
        if missing:
            return f"{', '.join(missing)} not found on PATH"
        return None

    def argv(self, settings: SchedulerSettings, train_arguments: list[str]) -> list[str]:
        """The argv of a job's training process: ``kdlab_command`` + ``train_arguments``."""
        return training_argv(settings, train_arguments)

    @abstractmethod
    def submit(self, run_name: str, command: list[str], run_dir: Path,
               settings: SchedulerSettings, record: Callable[[str], None]) -> str:
        """Start ``command`` (argv of the training process) as a job named ``run_name``,
        with its output in ``run_dir``; call ``record(job_id)`` before the job can start;
        return the job id. If ``record`` raises, the job is cancelled and the error passed
        on. Raises :class:`SchedulerError` when submission fails."""

    def job_script_text(self, run_name: str, command: list[str], run_dir: Path,
                        settings: SchedulerSettings) -> str:
        """Exactly what ``submit`` would hand to the scheduler now (``kdlab queue --dry-run
        --show-script``): a batch backend's job script, rendered, so that its errors show
        before anything is submitted. This default: the command line alone."""
        return f"# {self.name}: no job script; the job runs\n{shlex.join(command)}\n"

    @abstractmethod
    def is_alive(self, job_id: str) -> bool:
        """True while the job is pending or running; False once it is gone (finished,
        killed, unknown to the scheduler). :class:`SchedulerError` when the scheduler
        cannot tell."""

    def alive_jobs(self, job_ids: Iterable[str]) -> dict[str, bool | SchedulerError]:
        """``is_alive`` of many jobs at once: job id -> bool, or the error for that job."""
        answers: dict[str, bool | SchedulerError] = {}
        for job_id in job_ids:
            try:
                answers[job_id] = self.is_alive(job_id)
            except SchedulerError as error:
                answers[job_id] = error
        return answers

    def job_states(self, job_ids: Iterable[str]) -> dict[str, tuple[str, str]]:
        """The scheduler's own view of live jobs, in one call for many: job id -> (state as
        the scheduler abbreviates it, e.g. 'R' or 'PD', elapsed time as it prints it, e.g.
        '0:27:33'). Jobs it does not list are left out; this default knows none."""
        return {}

    def job_ends(self, job_ids: Iterable[str]) -> dict[str, dict]:
        """Why the given (gone) jobs ended, in one call: job id -> end record (see
        :mod:`kdlab.schedulers.ending`). Jobs the scheduler cannot tell about are left out;
        this default knows none."""
        return {}

    @abstractmethod
    def cancel(self, job_id: str) -> None:
        """Stop the job (training saves a checkpoint on the signal, when it can)."""

    def record_then_release(self, job_id: str, record: Callable[[str], None],
                            release: list[str]) -> str:
        """The second half of a held submission: ``record(job_id)``, then run ``release``.

        If recording fails, or the release does, the held job is cancelled: a job left held
        would look alive for ever, and the next ``kdlab queue`` must see it gone and submit
        the run again.
        """
        try:
            record(job_id)
        except BaseException:
            self._cancel_quietly(job_id)
            raise
        result = run_command(release, f"{self.name} release")
        if result.returncode != 0:
            self._cancel_quietly(job_id)
            raise SchedulerError(command_failure(release, result))
        return job_id

    def _cancel_quietly(self, job_id: str) -> None:
        try:
            self.cancel(job_id)
        except SchedulerError:
            pass


def liveness_of(job_id: str, listed: bool, state: Any, verdict: Callable[[Any], bool | None],
                unread: list[str], what: str) -> bool | SchedulerError:
    """The liveness of one job from a scheduler's listing of jobs: True (alive), False (gone)
    or the SchedulerError saying why it is unknown.

    ``listed``: the listing names the job, with ``state``; ``verdict(state)`` is True for an
    alive state, False for an ended one, None for a state kdlab does not know (unknown).
    A job the listing leaves out is gone only when ``unread`` (the lines of the reply kdlab
    could not read) is empty: a banner or a message in another format may hide the job."""
    if listed:
        answer = verdict(state)
        if answer is None:
            return SchedulerError(f"{what}: job {job_id} has state "
                                  f"{reply_quote(repr(state))}, which kdlab does not know")
        return answer
    if unread:
        return SchedulerError(f"{what}: job {job_id} is not listed, and the reply holds lines "
                              f"kdlab cannot read ({reply_quote(unread[0])})")
    return False


# Terminal escape sequences (CSI, OSC up to its terminator or the line's end, two-character
# ESC sequences, 8-bit CSI), then every control character but tab and line feed.
_ESCAPE_SEQUENCE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]?|\x1b\][^\x07\x1b\n]*(?:\x07|\x1b\\)?"
                              r"|\x1b[ -~]?|\x9b[0-?]*[ -/]*[@-~]?")
_CONTROL_CHARACTER = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def scheduler_text(text: str) -> str:
    """Text from outside kdlab (what a scheduler printed) as kdlab may store and print it:
    without terminal escape sequences (a title change, a screen clear) and control
    characters; tabs and line breaks are kept."""
    return _CONTROL_CHARACTER.sub("", _ESCAPE_SEQUENCE.sub("", text))


def reply_quote(text: str, limit: int = REPLY_QUOTE_CHARACTERS) -> str:
    """``text`` (a scheduler's reply) for a one-line message: whitespace runs as one space,
    cut after ``limit`` characters with a note of how much more there was."""
    head = " ".join(text[:limit * 4].split())
    if len(head) <= limit and len(text) <= limit * 4:
        return head
    return f"{head[:limit]}... ({len(text) - limit} more characters)"


def scheduler_json(text: str) -> Any:
    """A scheduler's JSON reply, with every key and string value of its objects passed
    through :func:`scheduler_text`. ValueError when the text is not JSON (or nests too
    deeply to read)."""
    def clean(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        return {scheduler_text(key): scheduler_text(value) if isinstance(value, str) else value
                for key, value in pairs}

    try:
        return json.loads(text, object_pairs_hook=clean)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def run_command(argv: list[str], what: str, input_text: str | None = None,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a scheduler command, capturing its output, decoded tolerantly (bytes that are
    not UTF-8 become U+FFFD) and cleaned by :func:`scheduler_text`. Raises SchedulerError
    if the program is missing or does not answer within :data:`COMMAND_TIMEOUT_SECONDS`;
    then its whole process group is killed (a wrapper script's children too, which would
    otherwise hold its output open). The caller judges the exit status."""
    try:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL if input_text is None
                                   else subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, env=env, start_new_session=True)
    except FileNotFoundError:
        raise SchedulerError(f"{what}: {argv[0]} not found on PATH") from None
    except OSError as error:
        raise SchedulerError(f"{what}: cannot run {argv[0]} ({error.strerror})") from None
    try:
        stdout, stderr = process.communicate(
            None if input_text is None else input_text.encode("utf-8"),
            timeout=COMMAND_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        raise SchedulerError(f"{what}: {argv[0]} did not answer within "
                             f"{COMMAND_TIMEOUT_SECONDS} s") from None
    except BaseException:
        _kill_group(process)
        raise
    return subprocess.CompletedProcess(
        argv, process.returncode, scheduler_text(stdout.decode("utf-8", errors="replace")),
        scheduler_text(stderr.decode("utf-8", errors="replace")))


def _kill_group(process: subprocess.Popen) -> None:
    """Kill a command started by :func:`run_command` (the leader of its own session) and
    everything it started, and reap it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        process.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        pass  # a child that left the group holds the pipes: leave it, do not wait for it


def command_failure(argv: list[str], result: subprocess.CompletedProcess) -> str:
    """One line describing a failed command: the program, its exit status, its message
    (at most :data:`REPLY_QUOTE_CHARACTERS` of it)."""
    message = reply_quote(result.stderr or result.stdout or "")
    return f"{shlex.join(argv)} exited with {result.returncode}: {message or 'no message'}"


def training_argv(settings: SchedulerSettings, train_arguments: list[str]) -> list[str]:
    """The full argv of a training job: the study's ``kdlab_command`` + ``train ...``."""
    return shlex.split(settings.kdlab_command) + list(train_arguments)


def next_script_path(run_dir: Path, stem: str, suffix: str) -> tuple[Path, int]:
    """``run_dir/{stem}-{n}{suffix}`` with the first unused n (1, 2, ...): every submission
    keeps its own job script and log files, nothing is overwritten."""
    attempt = 1
    while (run_dir / f"{stem}-{attempt}{suffix}").exists():
        attempt += 1
    return run_dir / f"{stem}-{attempt}{suffix}", attempt


def script_fields(run_name: str, command: list[str], run_dir: Path, settings: SchedulerSettings,
                  output_file: Path, error_file: Path, directives: list[str],
                  extra_directives: list[str]) -> dict[str, object]:
    """The named fields of a job script (documented in this module's docstring)."""
    return {
        "job_name": run_name,
        "run_dir": str(run_dir),
        "workdir": os.getcwd(),
        "output_file": str(output_file),
        "error_file": str(error_file),
        "walltime": settings.walltime,
        "walltime_seconds": settings.walltime_seconds(),
        "cpus": settings.cpus,
        "gpus": settings.gpus,
        "memory": settings.memory,
        "memory_mb": settings.memory_megabytes(),
        "queue": settings.queue or "",
        "account": settings.account or "",
        "signal_seconds": settings.signal_seconds,
        "directives": "\n".join(directives),
        "extra_directives": "\n".join(extra_directives),
        "setup": "\n".join(settings.setup),
        "command": shlex.join(command),
    }


def render_script(fields: dict[str, object], settings: SchedulerSettings,
                  default_body: str) -> str:
    """The job script: the user's template filled with ``fields`` when the study names one,
    else kdlab's own script ``default_body`` (already filled)."""
    if settings.template is None:
        return default_body
    path = Path(settings.template)
    try:
        template = path.read_text(encoding="utf-8")
    except OSError as error:
        raise UserError(f"job-script template {path}: cannot read ({error.strerror})") from None
    try:
        return template.format(**fields)
    except KeyError as error:
        raise UserError(f"job-script template {path}: unknown field {{{error.args[0]}}}: "
                        f"expected one of {', '.join(TEMPLATE_FIELDS)} "
                        "(write a literal brace twice: {{ }})") from None
    except (ValueError, IndexError) as error:
        raise UserError(f"job-script template {path}: {error} "
                        "(str.format syntax; write a literal brace twice: {{ }})") from None


def script_body(shebang_and_directives: list[str], fields: dict[str, object],
                wrap_command: list[str] | None = None,
                run_lines: Callable[[str], list[str]] | None = None) -> str:
    """kdlab's own job script: directives, ``cd`` to the submission directory, setup lines,
    then ``exec`` the training command, so that the scheduler's signals reach the training
    process itself (it checkpoints on SIGTERM/SIGUSR1) instead of a waiting shell.
    ``run_lines(command)``, when given, gives the lines that run the command instead."""
    command = str(fields["command"])
    if wrap_command:
        command = f"{shlex.join(wrap_command)} {command}"
    lines = list(shebang_and_directives)
    lines += ["", "# The study's relative paths are relative to where kdlab queue ran.",
              f"cd {shlex.quote(str(fields['workdir']))}",
              "", "# Environment of the job (study: scheduler.setup)."]
    lines += [str(line) for line in str(fields["setup"]).splitlines()]
    if run_lines is not None:
        return "\n".join(lines + [""] + run_lines(command) + [""])
    lines += ["", "# exec: the training process replaces this shell and receives the signals.",
              f"exec {command}", ""]
    return "\n".join(lines)
