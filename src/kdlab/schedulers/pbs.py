"""PBS backend (PBS Pro / OpenPBS): a generated ``#PBS`` script, ``qsub``, ``qstat``.

The script (``run_dir/pbs-job-N.sh``) names the job after the run, asks for
``select=1:ncpus=..:ngpus=..:mem=..``, the walltime, queue (``-q``) and project (``-P``),
writes output and error to ``run_dir/pbs-N.out``/``.err`` and runs the study's setup lines.
PBS has no pre-timeout signal: at the walltime it sends SIGTERM, then SIGKILL after the
server's kill delay. So the training command runs under ``timeout --signal=USR1``, which
sends USR1 ``signal_seconds`` before the walltime (training checkpoints and exits 75) and
passes a SIGTERM from PBS straight on to training; the script ``exec``s it, so no shell
sits in between. Jobs are submitted held (``qsub -h``) and released (``qrls``) once their
id is in status.json.

Liveness: ``qstat -f -F json ID`` (``job_state``), falling back to plain ``qstat -f ID``
where JSON output is not offered or not parseable. "Unknown Job Id" and "Job has
finished" mean the job is gone; so does state F (finished), X (finished sub-job) or
C (completed, Torque). qstat asked about one job it does not know says so and fails, so
a reply that exits 0 without listing the job, one with lines kdlab cannot read, a job
listed without a readable ``job_state`` or with a state kdlab does not know all mean
liveness unknown.

Why a job ended: ``qstat -x -f -F json IDS`` (job history, PBS Pro/OpenPBS), else plain
``qstat -x -f ID``: ``Exit_status`` (Torque: ``exit_status``), ``resources_used.walltime``
and the server's ``comment`` map onto Slurm's end states: 0 COMPLETED; -29 or a comment
"walltime ... exceeded limit" TIMEOUT; -27/-26 or "mem ... exceeded limit" OUT_OF_MEMORY;
256 + N killed by signal N (FAILED, signal N, unless the comment says why); any other
value FAILED with that exit code.
"""

from __future__ import annotations

import os
import pwd
import re
from pathlib import Path
from typing import Callable, Iterable

from ..run.state_files import atomic_write_text
from ..run.study_settings import SchedulerSettings
from .base import (Scheduler, SchedulerError, command_failure, liveness_of, next_script_path,
                   render_script, reply_quote, run_command, scheduler_json, script_body,
                   script_fields)
from .ending import OUT_OF_MEMORY, end_record
from .fields import check_directive_values

ALIVE_STATES = frozenset("QRHWEBTSUM")  # queued, running, held, waiting, exiting, begun,
#                                          transit, suspended, user-suspended, moved
GONE_STATES = frozenset("FXC")
_GONE_MESSAGES = ("unknown job id", "job has finished")


def directives(run_name: str, run_dir: Path, settings: SchedulerSettings, output_file: Path,
               error_file: Path) -> tuple[list[str], list[str]]:
    """(kdlab's #PBS lines, the study's extra directive lines), each a full line."""
    check_directive_values(run_name, run_dir)
    select = f"select=1:ncpus={settings.cpus}"
    if settings.gpus > 0:
        select += f":ngpus={settings.gpus}"
    select += f":mem={settings.memory_megabytes()}mb"
    lines = [f"#PBS -N {run_name}", f"#PBS -l {select}", f"#PBS -l walltime={settings.walltime}"]
    if settings.queue:
        lines.append(f"#PBS -q {settings.queue}")
    if settings.account:
        lines.append(f"#PBS -P {settings.account}")
    lines += [f"#PBS -o {output_file}", f"#PBS -e {error_file}"]
    extra = [line if line.lstrip().startswith("#") else f"#PBS {line}"
             for line in settings.extra_directives]
    return lines, extra


def job_script(run_name: str, command: list[str], run_dir: Path, settings: SchedulerSettings,
               attempt: int = 1) -> str:
    """The text of the job script of one submission (``attempt`` numbers its log files)."""
    run_dir = Path(run_dir).resolve()
    output_file, error_file = run_dir / f"pbs-{attempt}.out", run_dir / f"pbs-{attempt}.err"
    kdlab_lines, extra = directives(run_name, run_dir, settings, output_file, error_file)
    fields = script_fields(run_name, command, run_dir, settings, output_file, error_file,
                           directives=kdlab_lines + extra, extra_directives=extra)
    warn_after = settings.walltime_seconds() - settings.signal_seconds
    wrap = (["timeout", "--preserve-status", "--signal=USR1", f"{warn_after}s"]
            if settings.signal_seconds > 0 and warn_after > 0 else None)
    default = script_body(["#!/bin/bash", *kdlab_lines, *extra], fields, wrap_command=wrap)
    return render_script(fields, settings, default)


_QSUB_LINE = re.compile(r"\s*(\d+(\[\d*\])?(\.[\w.-]+)?)\s*")


def parse_qsub_output(text: str) -> str:
    """The job id printed by ``qsub`` ('1234.server'), on a line of its own; other lines
    (warnings) may come before or after it, and the last such line is taken."""
    found = [match[1] for match in map(_QSUB_LINE.fullmatch, text.splitlines()) if match]
    if not found:
        raise SchedulerError(f"qsub: expected a job id such as 1234.server, got "
                             f"{reply_quote(text) or 'no output'!r}")
    return found[-1]


def qstat_jobs(text: str) -> dict:
    """The ``Jobs`` table of ``qstat -F json`` output: job id -> its attributes (an entry
    that is not an object is kept as it is, for the caller to judge). {} when no job is
    listed; ValueError when the text is not JSON of that shape."""
    data = scheduler_json(text)
    if not isinstance(data, dict):
        raise ValueError(f"qstat JSON is a {type(data).__name__}, not an object")
    jobs = data.get("Jobs")  # PBS leaves out "Jobs" when no job matches
    if jobs is None:
        return {}
    if not isinstance(jobs, dict):
        raise ValueError(f"qstat JSON \"Jobs\" is a {type(jobs).__name__}, not an object")
    return jobs


def _matching_job(jobs: dict, job_id: str):
    """The entry of ``job_id`` among qstat's jobs (ids may differ in the server suffix)."""
    if job_id in jobs:
        return jobs[job_id]
    number = job_id.split(".")[0]
    for key, value in jobs.items():
        if key.split(".")[0] == number:
            return value
    return None


def parse_qstat_json(text: str, job_id: str) -> str | None:
    """job_state of ``job_id`` in ``qstat -f -F json`` output; None if the job is not listed.
    Raises ValueError when the text is not the expected JSON."""
    job = _matching_job(qstat_jobs(text), job_id)
    if job is None:
        return None
    state = job.get("job_state") if isinstance(job, dict) else None
    if not isinstance(state, str) or not state:
        raise ValueError(f"job {job_id} has no job_state")
    return state


_JOB_BLOCK = re.compile(r"^Job Id:\s*(\S+)\s*$", re.MULTILINE)
_JOB_STATE = re.compile(r"^\s+job_state\s*=\s*(\S+)\s*$", re.MULTILINE)


def read_qstat_full(text: str) -> tuple[dict[str, str], list[str]]:
    """(job id -> its block of attribute lines, the non-blank lines before the first block)
    of plain ``qstat -f`` output: the lines kdlab cannot read as a job's."""
    starts = list(_JOB_BLOCK.finditer(text))
    blocks = {}
    for index, match in enumerate(starts):
        end = starts[index + 1].start() if index + 1 < len(starts) else len(text)
        blocks[match[1]] = text[match.end():end]
    before = text[:starts[0].start()] if starts else text
    return blocks, [line for line in before.splitlines() if line.strip()]


def parse_qstat_full(text: str, job_id: str) -> str | None:
    """job_state of ``job_id`` in plain ``qstat -f`` output; None if the job is not listed."""
    block = _matching_job(read_qstat_full(text)[0], job_id)
    if block is None:
        return None
    state = _JOB_STATE.search(block)
    return state[1] if state else None


# PBS Pro / OpenPBS exit statuses set by the server or MoM when it kills a job (job.h).
_KILLED_FOR = {-29: "TIMEOUT", -27: OUT_OF_MEMORY, -26: OUT_OF_MEMORY}
_ATTRIBUTE = re.compile(r"^\s+([\w.]+)\s*=\s*(.*?)\s*$", re.MULTILINE)


def pbs_end(job_id: str, attributes: dict, source: str) -> dict | None:
    """The end record of a finished job from its qstat attributes (flat names, such as
    ``resources_used.walltime``); None while it is not finished or says no exit status."""
    state = str(attributes.get("job_state", "")).strip()[:1].upper()
    status = attributes.get("Exit_status", attributes.get("exit_status"))
    if state not in GONE_STATES or status is None:
        return None
    try:
        status = int(status)
    except (TypeError, ValueError):
        return None
    comment = str(attributes.get("comment", "")).lower()
    signal = status - 256 if status > 256 else None
    if status in _KILLED_FOR:
        name = _KILLED_FOR[status]
    elif "exceeded limit" in comment and "walltime" in comment:
        name = "TIMEOUT"
    elif "exceeded limit" in comment and "mem" in comment:
        name = OUT_OF_MEMORY
    else:
        name = "COMPLETED" if status == 0 else "FAILED"
    return end_record(job_id, name, None if signal else status, signal,
                      attributes.get("resources_used.walltime"), source)


def _flat(job: dict) -> dict:
    """qstat JSON attributes with nested tables flattened ('resources_used.walltime')."""
    flat = {}
    for key, value in job.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{inner}": item for inner, item in value.items()})
        else:
            flat[key] = value
    return flat


def parse_qstat_history(text: str, job_id: str) -> dict | None:
    """The end record of ``job_id`` in plain ``qstat -x -f ID`` output."""
    for match in _JOB_BLOCK.finditer(text):
        if match[1].split(".")[0] != job_id.split(".")[0]:
            continue
        block = text[match.end():]
        following = _JOB_BLOCK.search(block)
        block = block[:following.start()] if following else block
        return pbs_end(job_id, dict(_ATTRIBUTE.findall(block)), "qstat -x")
    return None


def _says_gone(result) -> bool:
    message = f"{result.stderr}\n{result.stdout}".lower()
    return any(phrase in message for phrase in _GONE_MESSAGES)


def _state_verdict(state) -> bool | None:
    """True for an alive job_state, False for an ended one, None for anything else."""
    letter = state.strip()[:1].upper() if isinstance(state, str) else ""
    return True if letter and letter in ALIVE_STATES else (
        False if letter and letter in GONE_STATES else None)


def _known(answer: bool | SchedulerError) -> bool:
    if isinstance(answer, SchedulerError):
        raise answer
    return answer


class PbsScheduler(Scheduler):
    name = "pbs"
    commands = ("qsub", "qstat", "qdel", "qrls")

    def job_script_text(self, run_name: str, command: list[str], run_dir: Path,
                        settings: SchedulerSettings) -> str:
        attempt = next_script_path(Path(run_dir), "pbs-job", ".sh")[1]
        return job_script(run_name, command, run_dir, settings, attempt)

    def submit(self, run_name: str, command: list[str], run_dir: Path,
               settings: SchedulerSettings, record: Callable[[str], None]) -> str:
        run_dir = Path(run_dir)
        text = self.job_script_text(run_name, command, run_dir, settings)
        run_dir.mkdir(parents=True, exist_ok=True)
        script_path, _ = next_script_path(run_dir, "pbs-job", ".sh")
        atomic_write_text(script_path, text)
        argv = ["qsub", "-h", str(script_path)]
        result = run_command(argv, "pbs submit")
        if result.returncode != 0:
            raise SchedulerError(command_failure(argv, result))
        try:
            job_id = parse_qsub_output(result.stdout)
        except SchedulerError as error:
            raise SchedulerError(f"{error}; {self._cancel_held_jobs(script_path)}") from None
        return self.record_then_release(job_id, record, ["qrls", job_id])

    def _cancel_held_jobs(self, script_path: Path) -> str:
        """Cancel this user's held jobs whose submission ran ``script_path`` (a qsub whose
        job id could not be read: the job exists, held, and would stay so for ever). PBS
        records each job's ``Submit_arguments``; every submission has a script path of its
        own, so no other job matches. Returns what was done, for the error message."""
        paths = {str(script_path), str(Path(script_path).resolve())}
        left = f"a held job of {script_path} may be left"
        argv = ["qselect", "-u", pwd.getpwuid(os.getuid()).pw_name, "-s", "H"]
        try:
            result = run_command(argv, "pbs clean-up")
            if result.returncode != 0:
                return f"{left} ({command_failure(argv, result)}): qdel it"
            candidates = [line.strip() for line in result.stdout.splitlines()
                          if _QSUB_LINE.fullmatch(line.strip())]
            if not candidates:
                return f"no held job of {script_path} found"
            argv = ["qstat", "-f", "-F", "json", *candidates]
            result = run_command(argv, "pbs clean-up")
            jobs = qstat_jobs(result.stdout)
        except (SchedulerError, ValueError) as error:
            return f"{left} ({reply_quote(str(error))}): qdel it"
        held = [job_id for job_id, attributes in jobs.items() if isinstance(attributes, dict)
                and str(attributes.get("Submit_arguments", "")).split()[-1:] in
                ([path] for path in paths)]
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
        return f"no held job of {script_path} found; qdel it if one is left"

    def alive_jobs(self, job_ids: Iterable[str]) -> dict[str, bool | SchedulerError]:
        """One ``qstat -f -F json ID...`` call for all jobs; a job that call leaves unexplained
        (not listed, no message about it, or output that does not parse) is asked alone."""
        job_ids = [str(job_id) for job_id in job_ids]
        if len(job_ids) <= 1:
            return super().alive_jobs(job_ids)
        answers: dict[str, bool | SchedulerError] = {}
        argv = ["qstat", "-f", "-F", "json", *job_ids]
        try:
            result = run_command(argv, "pbs liveness")
            jobs = qstat_jobs(result.stdout) if result.stdout.strip() else {}
        except (SchedulerError, ValueError):
            jobs, result = {}, None
        messages = (result.stderr or "").splitlines() if result is not None else []
        for job_id in job_ids:
            job = _matching_job(jobs, job_id)
            if isinstance(job, dict) and isinstance(job.get("job_state"), str):
                answers[job_id] = liveness_of(job_id, True, job["job_state"], _state_verdict,
                                              [], "qstat")
                continue
            about = [line.lower() for line in messages if job_id in line]
            if any(phrase in line for line in about for phrase in _GONE_MESSAGES):
                answers[job_id] = False
        unexplained = [job_id for job_id in job_ids if job_id not in answers]
        answers.update(super().alive_jobs(unexplained))
        return answers

    def is_alive(self, job_id: str) -> bool:
        argv = ["qstat", "-f", "-F", "json", job_id]
        result = run_command(argv, "pbs liveness")
        listed_unreadably = None  # why the JSON listed the job, but not so that it can be read
        if result.returncode == 0:
            try:
                job = _matching_job(qstat_jobs(result.stdout), job_id)
            except ValueError:
                pass  # some PBS versions write invalid JSON; the plain format still works
            else:
                state = job.get("job_state") if isinstance(job, dict) else None
                if isinstance(state, str):
                    return _known(liveness_of(job_id, True, state, _state_verdict, [], "qstat"))
                if job is not None:
                    listed_unreadably = (f"qstat: job {job_id} is listed without a readable "
                                         f"job_state ({reply_quote(repr(job))})")
        elif _says_gone(result):
            return False
        # Older PBS/Torque without -F json, or JSON that did not parse: plain full format.
        plain = ["qstat", "-f", job_id]
        result = run_command(plain, "pbs liveness")
        if result.returncode == 0:
            blocks, unread = read_qstat_full(result.stdout)
            block = _matching_job(blocks, job_id)
            if block is None:
                raise SchedulerError(listed_unreadably or (
                    f"qstat: job {job_id} is not listed, though qstat exited 0"
                    + (f" ({reply_quote(unread[0])})" if unread else "")))
            state = _JOB_STATE.search(block)
            return _known(liveness_of(job_id, True, state[1] if state else None,
                                      _state_verdict, unread, "qstat"))
        if _says_gone(result):
            return False
        raise SchedulerError(command_failure(plain, result))

    def job_states(self, job_ids: Iterable[str]) -> dict[str, tuple[str, str]]:
        """One ``qstat -f -F json`` call (else plain ``qstat -f``): job_state and
        resources_used.walltime ('0:00:00' before the job runs)."""
        job_ids = [str(job_id) for job_id in job_ids]
        if not job_ids:
            return {}
        try:
            result = run_command(["qstat", "-f", "-F", "json", *job_ids], "pbs job states")
            listed = qstat_jobs(result.stdout) if result.stdout.strip() else {}
            jobs = {key: _flat(job) for key, job in listed.items() if isinstance(job, dict)}
        except (SchedulerError, ValueError):
            jobs = {}
        if not jobs:  # no JSON output here: the plain format
            try:
                result = run_command(["qstat", "-f", *job_ids], "pbs job states")
            except SchedulerError:
                return {}
            starts = list(_JOB_BLOCK.finditer(result.stdout))
            for index, match in enumerate(starts):
                end = starts[index + 1].start() if index + 1 < len(starts) else None
                jobs[match[1]] = dict(_ATTRIBUTE.findall(result.stdout[match.end():end]))
        states = {}
        for job_id in job_ids:
            job = _matching_job(jobs, job_id)
            if job and job.get("job_state"):
                states[job_id] = (str(job["job_state"]),
                                  str(job.get("resources_used.walltime") or "0:00:00"))
        return states

    def job_ends(self, job_ids: Iterable[str]) -> dict[str, dict]:
        """One ``qstat -x -f -F json`` call; jobs it leaves unexplained asked alone in the
        plain format. Job history must be enabled on the server (PBS Pro's default)."""
        job_ids = [str(job_id) for job_id in job_ids]
        ends: dict[str, dict] = {}
        if not job_ids:
            return ends
        try:
            result = run_command(["qstat", "-x", "-f", "-F", "json", *job_ids], "pbs history")
            jobs = qstat_jobs(result.stdout) if result.stdout.strip() else {}
        except (SchedulerError, ValueError):
            jobs = {}
        for job_id in job_ids:
            job = _matching_job(jobs, job_id)
            end = pbs_end(job_id, _flat(job), "qstat -x") if isinstance(job, dict) else None
            if end is None:
                try:
                    result = run_command(["qstat", "-x", "-f", job_id], "pbs history")
                except SchedulerError:
                    continue
                end = parse_qstat_history(result.stdout, job_id) if result.returncode == 0 else None
            if end is not None:
                ends[job_id] = end
        return ends

    def cancel(self, job_id: str) -> None:
        argv = ["qdel", job_id]
        result = run_command(argv, "pbs cancel")
        if result.returncode != 0 and not _says_gone(result):
            raise SchedulerError(command_failure(argv, result))
