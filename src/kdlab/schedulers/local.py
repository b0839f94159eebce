"""Local backend: ``kdlab train`` as detached processes on this machine.

A job is a process in its own session (it outlives ``kdlab queue`` and a closed terminal),
its output appended to ``run_dir/train.log``. The job id is ``{pid}-{start}-{boot}``: the
process id, its start time in clock ticks since boot (``/proc/<pid>/stat``) and the first
characters of this boot's id, so that a recycled process id, or a reboot, never makes a
dead job look alive. Linux only (it reads ``/proc``).
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable

from ..run.study_settings import SchedulerSettings
from .base import Scheduler, SchedulerError, training_argv

LOG_FILE = "train.log"
_PROC = Path("/proc")
_BOOT_ID_FILE = _PROC / "sys/kernel/random/boot_id"
# The child waits for one line on its stdin before it execs the training command: the
# job id is recorded in status.json first (see Scheduler.submit).
_GATE_SCRIPT = 'read -r _gate && exec "$@" </dev/null'

# Processes started by this process, kept so that they can be reaped (no zombies, no
# "still running" warnings) while a long-lived caller (a test) goes on.
_CHILDREN: dict[int, subprocess.Popen] = {}


def boot_id() -> str:
    try:
        return _BOOT_ID_FILE.read_text().strip().replace("-", "")[:8]
    except OSError:
        return "noboot"


def process_start_ticks(pid: int) -> tuple[int, str] | None:
    """(start time in clock ticks since boot, state letter) of a process; None if absent.
    SchedulerError when its stat file cannot be read or understood: then the process may
    well be alive (liveness unknown), which must never read as gone."""
    path = _PROC / str(pid) / "stat"
    try:
        text = path.read_text(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError as error:
        raise SchedulerError(f"local: cannot read {path} ({error.strerror})") from None
    # The command name (field 2) is in parentheses and may itself hold spaces or ')'.
    try:
        fields = text[text.rindex(")") + 2:].split()
        return int(fields[19]), fields[0]
    except (ValueError, IndexError):
        raise SchedulerError(f"local: {path} is not in the expected format") from None


def make_job_id(pid: int) -> str:
    info = process_start_ticks(pid)
    if info is None:
        raise SchedulerError(f"local: process {pid} ended before its start time was read")
    return f"{pid}-{info[0]}-{boot_id()}"


def parse_job_id(job_id: str) -> tuple[int, int, str]:
    try:
        pid_text, start_text, boot = str(job_id).split("-")
        return int(pid_text), int(start_text), boot
    except ValueError:
        raise SchedulerError(f"local: {job_id!r} is not a local job id "
                             "(expected PID-START-BOOT)") from None


def job_environment(settings: SchedulerSettings) -> dict[str, str]:
    """The job's environment: ours, with its thread count set to the study's ``cpus``.

    Several jobs share this machine's cores; with every job running one thread per core,
    OpenMP threads wait on descheduled siblings and each job slows down many times over.
    An explicit OMP_NUM_THREADS in the caller's environment wins.
    """
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, settings.cpus))
    return env


class LocalScheduler(Scheduler):
    name = "local"

    def available(self) -> str | None:
        if not (_PROC / "self" / "stat").exists():
            return "the local backend needs /proc (Linux)"
        return None

    def argv(self, settings: SchedulerSettings, train_arguments: list[str]) -> list[str]:
        """The default ``kdlab`` command runs through this very interpreter, so that the
        jobs use the same installation as ``kdlab queue`` whether or not it is on PATH."""
        if settings.kdlab_command.strip() == "kdlab":
            return [sys.executable, "-m", "kdlab", *train_arguments]
        return training_argv(settings, train_arguments)

    def job_script_text(self, run_name: str, command: list[str], run_dir: Path,
                        settings: SchedulerSettings) -> str:
        threads = job_environment(settings)["OMP_NUM_THREADS"]
        return (f"# local: no job script; this process starts in its own session, its output "
                f"appended to {Path(run_dir) / LOG_FILE}\n"
                f"OMP_NUM_THREADS={shlex.quote(threads)} {shlex.join(command)}\n")

    def submit(self, run_name: str, command: list[str], run_dir: Path,
               settings: SchedulerSettings, record: Callable[[str], None]) -> str:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        gate_read, gate_write = os.pipe()
        try:
            with open(run_dir / LOG_FILE, "ab") as log:
                process = subprocess.Popen(
                    ["/bin/sh", "-c", _GATE_SCRIPT, f"kdlab-job {run_name}", *command],
                    stdin=gate_read, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True, close_fds=True, env=job_environment(settings))
        except OSError as error:
            os.close(gate_write)
            raise SchedulerError(f"local: cannot start {command[0]} ({error.strerror})") from None
        finally:
            os.close(gate_read)
        _CHILDREN[process.pid] = process
        try:
            job_id = make_job_id(process.pid)
            record(job_id)
        except BaseException:
            os.close(gate_write)  # the child reads end-of-file and exits without training
            process.wait()
            _CHILDREN.pop(process.pid, None)
            raise
        os.write(gate_write, b"go\n")
        os.close(gate_write)
        return job_id

    def job_states(self, job_ids) -> dict[str, tuple[str, str]]:
        """'R' and the time since the process started, for the live ones."""
        states = {}
        for job_id in job_ids:
            try:
                alive = self.is_alive(job_id)
                uptime = float((_PROC / "uptime").read_text().split()[0])
                info = process_start_ticks(parse_job_id(job_id)[0]) if alive else None
            except (SchedulerError, OSError, ValueError):
                continue
            if info is not None:
                seconds = max(0, int(uptime - info[0] / os.sysconf("SC_CLK_TCK")))
                states[job_id] = ("R", f"{seconds // 3600}:{seconds // 60 % 60:02d}:"
                                       f"{seconds % 60:02d}")
        return states

    def is_alive(self, job_id: str) -> bool:
        pid, start_ticks, boot = parse_job_id(job_id)
        child = _CHILDREN.get(pid)
        if child is not None and child.poll() is not None:
            del _CHILDREN[pid]
            return False
        if boot != boot_id():
            return False
        info = process_start_ticks(pid)
        if info is None or info[0] != start_ticks:
            return False
        return info[1] not in ("Z", "X", "x")  # a zombie has finished

    def cancel(self, job_id: str) -> None:
        if not self.is_alive(job_id):
            return
        pid = parse_job_id(job_id)[0]
        try:
            os.killpg(pid, signal.SIGTERM)  # the job leads its own session and group
        except ProcessLookupError:
            pass
        except PermissionError:
            raise SchedulerError(f"local: not allowed to stop process {pid}") from None
