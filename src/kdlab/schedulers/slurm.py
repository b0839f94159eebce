"""Slurm backend: a generated batch script per submission, ``sbatch``, ``squeue``.

The script (``run_dir/slurm-job-N.sh``) names the job after the run, writes its output
and error files into the run directory (``slurm-JOBID.out``/``.err``), asks for the
study's resources and for ``--signal=B:USR1@signal_seconds`` (the batch shell gets USR1
that long before the time limit; the script ``exec``s the training process, so it is the
one that receives it and checkpoints). Jobs are submitted held (``--hold``) and released
(``scontrol release``) once their id is in status.json.

Liveness: ``squeue -h -t all -o '%i %T' -j IDS`` lists the jobs the controller still
remembers (for ``MinJobAge`` after they end); a job it does not list is gone, and the
run's status.json decides, but only when every line of the reply was such a listing: a
login banner or any other line kdlab cannot read makes an unlisted job's liveness unknown.
A job squeue leaves out is asked of ``sacct`` too (where accounting exists): when that
says it still runs, its liveness is unknown, not gone.

Self-requeue (``scheduler.requeue = true``): ``--requeue``, and the script runs training
as a child instead of ``exec``-ing it, so that it can pass the pre-timeout USR1 on; when
training has checkpointed and exited with EXIT_PREEMPTED after that signal, the script
runs ``scontrol requeue $SLURM_JOB_ID``: the job goes back to PENDING under the same id
(its restart count goes up) and resumes from the checkpoint, with no cron interval lost.
Its output files are appended to, not truncated, on each restart.

Why a job ended: ``sacct -X -P -j IDS`` where accounting exists (slurmdbd keeps every job);
else ``scontrol -o show job ID`` while the controller still remembers the job.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, Iterable

from ..run.errors import EXIT_PREEMPTED
from ..run.state_files import atomic_write_text
from ..run.study_settings import SchedulerSettings
from .base import (Scheduler, SchedulerError, command_failure, liveness_of, next_script_path,
                   render_script, reply_quote, run_command, script_body, script_fields)
from .ending import end_record
from .fields import check_directive_values

# Job states (squeue %T) of a job that is still pending, running or about to.
ALIVE_STATES = frozenset({
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED",
    "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED",
    "RESV_DEL_HOLD", "POWER_UP_NODE", "UPDATE_DB"})
# Job states of a job that has ended; a state in neither set makes liveness unknown.
ENDED_STATES = frozenset({
    "COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
    "DEADLINE", "OUT_OF_MEMORY", "SPECIAL_EXIT", "REVOKED"})
# What sbatch --parsable prints for a job: 'ID' or 'ID;CLUSTER', on a line of its own.
_PARSABLE_LINE = re.compile(r"\s*(\d+)(?:;[\w.-]+)?\s*")
# A line of `squeue -h -o '%i %T'`: job id (array task 12_3 or 12_[4-9], het job 12+1), state.
_SQUEUE_LINE = re.compile(r"\s*(\d+(?:_(?:\d+|\[[^\]\s]*\]))?(?:\+\d+)?)\s+([A-Za-z_]+)\s*")


def directives(run_name: str, run_dir: Path, settings: SchedulerSettings) -> tuple[list[str], list[str]]:
    """(kdlab's #SBATCH lines, the study's extra directive lines), each a full line."""
    check_directive_values(run_name, run_dir)
    lines = [f"#SBATCH --job-name={run_name}",
             f"#SBATCH --output={run_dir}/slurm-%j.out",
             f"#SBATCH --error={run_dir}/slurm-%j.err",
             f"#SBATCH --time={settings.walltime}",
             "#SBATCH --nodes=1",
             "#SBATCH --ntasks=1",
             f"#SBATCH --cpus-per-task={settings.cpus}",
             f"#SBATCH --mem={settings.memory_megabytes()}M"]
    if settings.gpus > 0:
        lines.append(f"#SBATCH --gres=gpu:{settings.gpus}")
    if settings.queue:
        lines.append(f"#SBATCH --partition={settings.queue}")
    if settings.account:
        lines.append(f"#SBATCH --account={settings.account}")
    if settings.signal_seconds > 0:
        lines.append(f"#SBATCH --signal=B:USR1@{settings.signal_seconds}")
    if settings.requeue:
        lines += ["#SBATCH --requeue", "#SBATCH --open-mode=append"]
    extra = [line if line.lstrip().startswith("#") else f"#SBATCH {line}"
             for line in settings.extra_directives]
    return lines, extra


def job_script(run_name: str, command: list[str], run_dir: Path,
               settings: SchedulerSettings) -> str:
    """The text of the batch script of one submission."""
    run_dir = Path(run_dir).resolve()
    kdlab_lines, extra = directives(run_name, run_dir, settings)
    fields = script_fields(run_name, command, run_dir, settings,
                           output_file=run_dir / "slurm-%j.out",
                           error_file=run_dir / "slurm-%j.err",
                           directives=kdlab_lines + extra, extra_directives=extra)
    default = script_body(["#!/bin/bash", *kdlab_lines, *extra], fields,
                          run_lines=requeue_lines if settings.requeue else None)
    return render_script(fields, settings, default)


def requeue_lines(command: str) -> list[str]:
    """The end of a self-requeueing job script (see the module docstring)."""
    return [
        "# Self-requeue (study: scheduler.requeue): training runs as a child, so that this",
        "# shell passes the pre-timeout USR1 on and, once training has saved its checkpoint",
        f"# and exited with {EXIT_PREEMPTED}, puts this job back in the queue (same job id).",
        "# (A USR1 that comes before training can handle it is ignored, not fatal.)",
        "warned=0",
        f"(trap '' USR1; exec {command}) &",
        "child=$!",
        "trap 'warned=1; kill -USR1 \"$child\" 2>/dev/null' USR1",
        "trap 'kill -TERM \"$child\" 2>/dev/null' TERM",
        "status=0; wait \"$child\" || status=$?",
        "while [ \"$status\" -gt 128 ] && kill -0 \"$child\" 2>/dev/null; do",
        "    status=0; wait \"$child\" || status=$?",
        "done",
        f"if [ \"$warned\" = 1 ] && [ \"$status\" = {EXIT_PREEMPTED} ]; then",
        "    echo \"kdlab: requeueing job $SLURM_JOB_ID to resume from its checkpoint\" >&2",
        "    scontrol requeue \"$SLURM_JOB_ID\" && exit 0",
        "fi",
        "exit \"$status\"",
    ]


def parse_sbatch_output(text: str) -> str:
    """The job id printed by ``sbatch --parsable`` ('123' or '123;cluster' on a line of its
    own). Other lines (warnings of sbatch, of a site's wrapper or login scripts) may come
    before or after it; sbatch prints the id last, so the last such line is taken."""
    found = [match[1] for match in map(_PARSABLE_LINE.fullmatch, text.splitlines()) if match]
    if not found:
        raise SchedulerError(f"sbatch: expected a job id (ID or ID;CLUSTER on a line of its "
                             f"own), got {reply_quote(text) or 'no output'!r}")
    return found[-1]


def _exit_and_signal(text: str) -> tuple[int | None, int | None]:
    """Slurm's 'EXIT:SIGNAL' (e.g. '0:9', '3:0')."""
    parts = text.strip().split(":")
    try:
        return int(parts[0]), (int(parts[1]) if len(parts) > 1 else None)
    except ValueError:
        return None, None


def parse_sacct(text: str) -> dict[str, dict]:
    """End records of the ended jobs in ``sacct -n -P -X -o JobIDRaw,State,ExitCode,Elapsed``
    output ('CANCELLED by 0' is CANCELLED; jobs still pending or running are left out)."""
    ends: dict[str, dict] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 4 or not parts[1].strip():
            continue
        state = parts[1].split()[0].upper()
        if state in ALIVE_STATES:
            continue
        exit_code, signal = _exit_and_signal(parts[2])
        ends[parts[0].strip()] = end_record(parts[0].strip(), state, exit_code, signal,
                                            parts[3].strip() or None, "sacct")
    return ends


def parse_scontrol_job(text: str, job_id: str) -> dict | None:
    """The end record in ``scontrol -o show job ID`` output; None while the job lives."""
    fields = dict(token.split("=", 1) for token in text.split() if "=" in token)
    state = fields.get("JobState", "").upper()
    if not state or state in ALIVE_STATES:
        return None
    exit_code, signal = _exit_and_signal(fields.get("ExitCode", ""))
    return end_record(job_id, state, exit_code, signal, fields.get("RunTime"), "scontrol")


def read_squeue_listing(text: str) -> tuple[dict[str, str], list[str]]:
    """(job id -> state, the non-blank lines that are no such listing) of ``squeue -h -o
    '%i %T'`` output."""
    states: dict[str, str] = {}
    unread: list[str] = []
    for line in text.splitlines():
        match = _SQUEUE_LINE.fullmatch(line)
        if match:
            states[match[1]] = match[2].upper()
        elif line.strip():
            unread.append(line)
    return states, unread


def parse_squeue_states(text: str) -> dict[str, str]:
    """Job id -> state from ``squeue -h -o '%i %T'`` lines (others are left out)."""
    return read_squeue_listing(text)[0]


def _state_verdict(state: str) -> bool | None:
    return True if state in ALIVE_STATES else False if state in ENDED_STATES else None


class SlurmScheduler(Scheduler):
    name = "slurm"
    commands = ("sbatch", "squeue", "scancel", "scontrol")

    def job_script_text(self, run_name: str, command: list[str], run_dir: Path,
                        settings: SchedulerSettings) -> str:
        return job_script(run_name, command, run_dir, settings)

    def submit(self, run_name: str, command: list[str], run_dir: Path,
               settings: SchedulerSettings, record: Callable[[str], None]) -> str:
        run_dir = Path(run_dir)
        text = self.job_script_text(run_name, command, run_dir, settings)
        run_dir.mkdir(parents=True, exist_ok=True)
        script_path, _ = next_script_path(run_dir, "slurm-job", ".sh")
        atomic_write_text(script_path, text)
        argv = ["sbatch", "--parsable", "--hold", str(script_path)]
        result = run_command(argv, "slurm submit")
        if result.returncode != 0:
            raise SchedulerError(command_failure(argv, result))
        try:
            job_id = parse_sbatch_output(result.stdout)
        except SchedulerError as error:
            raise SchedulerError(f"{error}; {self._cancel_held_jobs(run_name, script_path)}") from None
        return self.record_then_release(job_id, record, ["scontrol", "release", job_id])

    def _cancel_held_jobs(self, run_name: str, script_path: Path) -> str:
        """Cancel the pending jobs of this user that run ``script_path`` (submitted by an
        sbatch whose job id could not be read: the job exists, held, and would stay so for
        ever). Every submission has a script path of its own, so no other job matches.
        Returns what was done, for the error message."""
        paths = {str(script_path), str(Path(script_path).resolve())}
        argv = ["squeue", "-h", "-u", str(os.getuid()), "-t", "PENDING", "-n", run_name,
                "-o", "%i %o"]
        try:
            result = run_command(argv, "slurm clean-up")
        except SchedulerError as error:
            return f"a held job of {script_path} may be left ({error}): scancel it"
        if result.returncode != 0:
            return (f"a held job of {script_path} may be left "
                    f"({command_failure(argv, result)}): scancel it")
        rows = [line.split(None, 1) for line in result.stdout.splitlines()]
        held = [row[0] for row in rows if len(row) == 2 and row[0].isdigit()
                and row[1].strip() in paths]
        problems = []
        for job_id in held:
            try:
                self.cancel(job_id)
            except SchedulerError as error:
                problems.append(str(error))
        if problems:
            return f"could not cancel its held job: {problems[0]}"
        if held:
            return f"its held job {', '.join(held)} was cancelled"
        return f"no held job of {script_path} found"

    def alive_jobs(self, job_ids: Iterable[str]) -> dict[str, bool | SchedulerError]:
        """One ``squeue`` call for all ``job_ids``; keys are the ids as given."""
        given = _bare_ids(job_ids)
        if not given:
            return {}
        argv = ["squeue", "-h", "-t", "all", "-o", "%i %T", "-j",
                _id_list(given)]
        try:
            result = run_command(argv, "slurm liveness")
        except SchedulerError as error:
            return {job_id: error for job_id in given}
        if result.returncode != 0:
            # squeue says this when the only id it was asked about is unknown to it.
            if "Invalid job id" in f"{result.stderr}{result.stdout}" and len(set(given.values())) == 1:
                return {job_id: False for job_id in given}
            error = SchedulerError(command_failure(argv, result))
            return {job_id: error for job_id in given}
        states, unread = read_squeue_listing(result.stdout)
        answers = {job_id: liveness_of(job_id, bare in states, states.get(bare), _state_verdict,
                                       unread, "squeue")
                   for job_id, bare in given.items()}
        unlisted = {bare for job_id, bare in given.items()
                    if answers[job_id] is False and bare not in states}
        accounted = self._accounting_states(unlisted)
        for job_id, bare in given.items():
            if bare in unlisted and accounted.get(bare) in ALIVE_STATES:
                answers[job_id] = SchedulerError(
                    f"squeue does not list job {bare}, but sacct says {accounted[bare]}")
        return answers

    def _accounting_states(self, bare_ids: set[str]) -> dict[str, str]:
        """Job id -> state in ``sacct`` ({} where there is no accounting or it fails)."""
        if not bare_ids:
            return {}
        argv = ["sacct", "-n", "-P", "-X", "-o", "JobIDRaw,State", "-j", ",".join(sorted(bare_ids))]
        try:
            result = run_command(argv, "slurm accounting")
        except SchedulerError:
            return {}
        if result.returncode != 0:
            return {}
        rows = [line.split("|") for line in result.stdout.splitlines()]
        return {row[0].strip(): row[1].split()[0].upper()
                for row in rows if len(row) >= 2 and row[1].split()}

    def is_alive(self, job_id: str) -> bool:
        answer = self.alive_jobs([job_id])[str(job_id)]
        if isinstance(answer, SchedulerError):
            raise answer
        return answer

    def job_states(self, job_ids: Iterable[str]) -> dict[str, tuple[str, str]]:
        """One ``squeue -o '%i %t %M'`` call (compact state, time used)."""
        given = _bare_ids(job_ids)
        if not given:
            return {}
        argv = ["squeue", "-h", "-t", "all", "-o", "%i %t %M", "-j",
                _id_list(given)]
        try:
            result = run_command(argv, "slurm job states")
        except SchedulerError:
            return {}
        rows = [line.split() for line in result.stdout.splitlines()]
        states = {row[0]: (row[1], row[2]) for row in rows if len(row) >= 3}
        return {job_id: states[bare] for job_id, bare in given.items() if bare in states}

    def job_ends(self, job_ids: Iterable[str]) -> dict[str, dict]:
        """One ``sacct`` call; without accounting, ``scontrol`` per job. Keys as given."""
        given = _bare_ids(job_ids)
        if not given:
            return {}
        argv = ["sacct", "-n", "-P", "-X", "-o", "JobIDRaw,State,ExitCode,Elapsed", "-j",
                _id_list(given)]
        ends: dict[str, dict] = {}
        try:
            result = run_command(argv, "slurm accounting")
            if result.returncode == 0:
                ends = parse_sacct(result.stdout)
        except SchedulerError:
            pass  # no sacct here: the controller may still remember the jobs
        for bare in sorted(set(given.values()) - set(ends)):
            try:
                result = run_command(["scontrol", "-o", "show", "job", bare], "slurm job")
            except SchedulerError:
                continue
            end = parse_scontrol_job(result.stdout, bare) if result.returncode == 0 else None
            if end is not None:
                ends[bare] = end
        return {job_id: {**ends[bare], "job_id": job_id}
                for job_id, bare in given.items() if bare in ends}

    def cancel(self, job_id: str) -> None:
        argv = ["scancel", str(job_id).split(";")[0]]
        result = run_command(argv, "slurm cancel")
        if result.returncode != 0:
            raise SchedulerError(command_failure(argv, result))


def _bare_ids(job_ids: Iterable[str]) -> dict[str, str]:
    """Each job id as given -> the id Slurm knows (a recorded id may carry ';cluster')."""
    return {str(job_id): str(job_id).split(";")[0] for job_id in job_ids}


def _id_list(given: dict[str, str]) -> str:
    """The ``-j`` argument of squeue and sacct for the ids of :func:`_bare_ids`."""
    return ",".join(sorted(set(given.values())))
