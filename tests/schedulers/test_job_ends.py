"""Why a job ended, through fake ``sacct``/``scontrol``/``squeue``/``sbatch`` and ``qstat``
executables that answer in the documented output formats; the real Slurm cluster (with
accounting) is in test_queue_slurm.py."""

from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path

import pytest

from kdlab.run import state_files
from kdlab.run.layout import run_dir
from kdlab.study.decisions import FAILED_ACTION, SUBMIT
from kdlab.study.queue import plan_queue, run_queue
from kdlab.schedulers.ending import end_text, out_of_memory_count
from kdlab.schedulers.pbs import PbsScheduler
from kdlab.schedulers.slurm import SlurmScheduler, parse_sacct, parse_scontrol_job
from kdlab.study.status import format_report, status_report
from kdlab.study.study_file import load_study
import builders
from builders import calls, install_fake as install

# `sacct -n -P -X -o JobIDRaw,State,ExitCode,Elapsed -j ...` as Slurm 22.05 prints it.
SACCT_TEXT = textwrap.dedent("""\
    101|OUT_OF_MEMORY|0:125|00:14:02
    102|TIMEOUT|0:0|02:00:17
    103|CANCELLED by 1000|0:15|00:03:10
    104|FAILED|3:0|00:00:05
    105|NODE_FAIL|1:0|1-02:03:04
    106|COMPLETED|0:0|00:41:00
    107|RUNNING|0:0|00:01:00
    """)
# `scontrol -o show job 104` (one line; abridged to the fields that matter and a few more).
SCONTROL_TEXT = ("JobId=104 JobName=Digits-pure-ResNet8-s0 UserId=someone(1000) "
                 "JobState=FAILED Reason=NonZeroExitCode Dependency=(null) Requeue=1 "
                 "Restarts=0 BatchFlag=1 Reboot=0 ExitCode=3:0 RunTime=00:00:05 "
                 "TimeLimit=02:00:00 TimeMin=N/A\n")


def test_sacct_and_scontrol_output_become_end_records():
    ends = parse_sacct(SACCT_TEXT)
    assert set(ends) == {"101", "102", "103", "104", "105", "106"}  # 107 still runs
    assert {job: end["state"] for job, end in ends.items()} == {
        "101": "OUT_OF_MEMORY", "102": "TIMEOUT", "103": "CANCELLED", "104": "FAILED",
        "105": "NODE_FAIL", "106": "COMPLETED"}
    assert (ends["104"]["exit_code"], ends["104"]["signal"]) == (3, 0)
    assert ends["105"]["elapsed"] == "1-02:03:04" and ends["101"]["source"] == "sacct"
    assert end_text(ends["101"]) == "ended OUT_OF_MEMORY after 00:14:02"
    assert end_text(ends["104"]) == "ended FAILED (exit code 3) after 00:00:05"
    assert end_text(ends["102"]) == "ended TIMEOUT after 02:00:17"
    scontrol = parse_scontrol_job(SCONTROL_TEXT, "104")
    assert scontrol == {**ends["104"], "source": "scontrol"}
    assert parse_scontrol_job(SCONTROL_TEXT.replace("FAILED", "RUNNING"), "104") is None


SACCT = f"""
if os.environ.get("FAKE_NO_ACCOUNTING"):
    print("sacct: error: Slurm accounting storage is disabled", file=sys.stderr)
    sys.exit(1)
wanted = argv[argv.index("-j") + 1].split(",")
for line in {SACCT_TEXT!r}.splitlines():
    if line.split("|")[0] in wanted:
        print(line)
"""
SCONTROL = f"""
if argv[:3] == ["-o", "show", "job"]:
    if argv[3] == "104":
        print({SCONTROL_TEXT!r}, end="")
    else:
        print("slurm_load_jobs error: Invalid job id specified", file=sys.stderr)
        sys.exit(1)
elif argv[:1] == ["release"]:
    pass
"""
SQUEUE = """
if "," not in argv[argv.index("-j") + 1]:  # squeue fails only when no asked job is known
    print("slurm_load_jobs error: Invalid job id specified", file=sys.stderr)
    sys.exit(1)
"""
SBATCH = """
print(700)
"""


@pytest.fixture
def fake_slurm(fake_bin):
    for name, body in (("sacct", SACCT), ("scontrol", SCONTROL), ("squeue", SQUEUE),
                       ("sbatch", SBATCH), ("scancel", "")):
        install(fake_bin, name, body)
    return fake_bin


def test_slurm_job_ends_from_sacct_else_scontrol(fake_slurm, monkeypatch):
    scheduler = SlurmScheduler()
    ends = scheduler.job_ends(["101", "104", "107", "999", "102;kdlabtest"])
    assert {job: end["state"] for job, end in ends.items()} == {
        "101": "OUT_OF_MEMORY", "104": "FAILED", "102;kdlabtest": "TIMEOUT"}
    monkeypatch.setenv("FAKE_NO_ACCOUNTING", "1")
    ends = scheduler.job_ends(["101", "104"])
    assert list(ends) == ["104"] and ends["104"]["source"] == "scontrol"


# `qstat -x -f -F json ID` (PBS Pro 2022 / OpenPBS: job history) of finished jobs, abridged.
def qstat_job(exit_status, walltime, comment):
    return {"Job_Name": "Cifar10-pure-ResNet56-s1", "job_state": "F",
            "comment": comment, "Exit_status": exit_status,
            "resources_used": {"cput": "00:10:00", "mem": "2048kb", "walltime": walltime},
            "Resource_List": {"walltime": "02:00:00"}}


PBS_JOBS = {
    "9001.sched01": qstat_job(-29, "02:00:03", "job killed: walltime 7203 exceeded limit 7200"),
    "9002.sched01": qstat_job(271, "02:00:05", "job killed: walltime 7205 exceeded limit 7200"),
    "9003.sched01": qstat_job(-27, "00:14:02", "job killed: mem 25165824kb exceeded limit "
                                               "25165824kb"),
    "9004.sched01": qstat_job(3, "00:00:05", "Job run at Mon Jan 01 at 10:00 on (node1:ncpus=8) "
                                             "and failed"),
    "9005.sched01": qstat_job(271, "00:03:10", "Job run at Mon Jan 01 at 10:00 and finished"),
}
QSTAT = f"""
import json
jobs = {PBS_JOBS!r}
ids = [arg for arg in argv if not arg.startswith("-") and arg != "json"]
ids = [next((key for key in jobs if key.split(".")[0] == i.split(".")[0]), i) for i in ids]
if "-F" in argv and not os.environ.get("FAKE_NO_JSON"):
    listed = {{i: jobs[i] for i in ids if i in jobs}}
    print(json.dumps({{"pbs_version": "2022.1.1", "Jobs": listed}}))
elif "-F" in argv:
    print("qstat: invalid option -- 'F'", file=sys.stderr); sys.exit(2)
else:
    for i in ids:
        if i not in jobs:
            print(f"qstat: Unknown Job Id {{i}}", file=sys.stderr); sys.exit(153)
        job = jobs[i]
        print(f"Job Id: {{i}}")
        for key, value in job.items():
            if isinstance(value, dict):
                for inner, item in value.items():
                    print(f"    {{key}}.{{inner}} = {{item}}")
            else:
                print(f"    {{key}} = {{value}}")
        print()
"""


@pytest.mark.parametrize("flavour", ["json", "plain"])
def test_pbs_job_ends_from_qstat_history(fake_bin, monkeypatch, flavour):
    install(fake_bin, "qstat", QSTAT)
    if flavour == "plain":
        monkeypatch.setenv("FAKE_NO_JSON", "1")
    ends = PbsScheduler().job_ends([*PBS_JOBS, "9999.sched01"])
    summary = {job: (end["state"], end["exit_code"], end["signal"], end["elapsed"])
               for job, end in ends.items()}
    assert summary == {
        "9001.sched01": ("TIMEOUT", -29, None, "02:00:03"),
        "9002.sched01": ("TIMEOUT", None, 15, "02:00:05"),
        "9003.sched01": ("OUT_OF_MEMORY", -27, None, "00:14:02"),
        "9004.sched01": ("FAILED", 3, None, "00:00:05"),
        "9005.sched01": ("FAILED", None, 15, "00:03:10"),
    }


def write_study(tmp_path: Path) -> Path:
    return builders.write_study(tmp_path / "study.toml", name="ends", methods=(), alphas=(),
                                training="",
                                tables='[scheduler]\nbackend = "slurm"\nkdlab_command = "true"\n')


def test_queue_records_why_a_job_ended_and_stops_after_three_out_of_memory(tmp_path, fake_slurm):
    study = load_study(write_study(tmp_path))
    teacher, pure = study.runs()
    teacher_dir = run_dir(study.experiments_dir, teacher)
    pure_dir = run_dir(study.experiments_dir, pure)
    state_files.write_status(teacher_dir, {"status": "in_progress", "epoch": 3, "job_id": "101",
                                        "scheduler": "slurm"})
    earlier = [{"job_id": job, "state": "OUT_OF_MEMORY", "exit_code": 0, "signal": 125,
                "elapsed": "00:10:00", "source": "sacct"} for job in ("98", "99")]
    state_files.write_status(pure_dir, {"status": "in_progress", "epoch": 2, "job_id": "101",
                                     "scheduler": "slurm", "job_ends": earlier})
    # status shows why the job ended, and writes nothing.
    before = {path: path.read_bytes() for path in (teacher_dir / "status.json",
                                                   pure_dir / "status.json")}
    report = status_report(study)
    reasons = {entry["run"]: entry["reason"] for entry in report["stuck"]}
    assert reasons[teacher.name].startswith("job 101 ended OUT_OF_MEMORY after 00:14:02")
    assert "job 101 ended OUT_OF_MEMORY" in format_report(report)
    assert all(path.read_bytes() == text for path, text in before.items())

    lines = []
    decisions, code = run_queue(study, say=lines.append)
    assert code == 0
    by_run = {decision.run.spec.name: decision for decision in decisions}
    assert by_run[teacher.name].action == SUBMIT
    assert ("job 101 ended OUT_OF_MEMORY after 00:14:02; resubmitting"
            in by_run[teacher.name].reason)
    assert by_run[pure.name].action == FAILED_ACTION
    assert "ran out of memory 3 times" in by_run[pure.name].reason
    assert "--retry-failed" in by_run[pure.name].reason
    teacher_status = state_files.read_status(teacher_dir)
    assert teacher_status["last_job_end"]["state"] == "OUT_OF_MEMORY"
    assert [end["job_id"] for end in teacher_status["job_ends"]] == ["101"]
    assert teacher_status["job_id"] == "700" and teacher_status["job_history"] == ["101"]
    pure_status = state_files.read_status(pure_dir)   # recorded though not resubmitted
    assert [end["job_id"] for end in pure_status["job_ends"]] == ["98", "99", "101"]
    assert pure_status["job_id"] == "101" and out_of_memory_count(pure_status) == 3

    # Asked again, nothing is recorded twice; --retry-failed submits the run.
    decisions = plan_queue(study)
    assert {d.run.spec.name: d.action for d in decisions}[pure.name] == FAILED_ACTION
    decisions, code = run_queue(study, say=lines.append, retry_failed=True)
    assert {d.run.spec.name: d.action for d in decisions}[pure.name] == SUBMIT
    pure_status = state_files.read_status(pure_dir)
    assert [end["job_id"] for end in pure_status["job_ends"]] == ["98", "99", "101"]
    assert pure_status["job_id"] == "700"


# ---- the scheduler's own state of live jobs -------------------------------------------------

# `squeue -h -t all -o '%i %t %M' -j ...`: compact state and time used as Slurm prints them.
SQUEUE_STATES = """
wanted = argv[argv.index("-j") + 1].split(",")
rows = {"201": "201 R 27:33", "202": "202 PD 0:00", "203": "203 R 1-02:03:04"}
if "%i %t %M" in argv:
    print("\\n".join(rows[i] for i in wanted if i in rows))
else:
    print("\\n".join(f"{i} {'RUNNING' if rows[i].split()[1] == 'R' else 'PENDING'}"
                     for i in wanted if i in rows))
"""


def test_slurm_job_states_in_one_call_and_shown_by_status(tmp_path, fake_bin):
    install(fake_bin, "squeue", SQUEUE_STATES)
    for name in ("sbatch", "scancel", "scontrol", "sacct"):
        install(fake_bin, name, "")
    scheduler = SlurmScheduler()
    assert scheduler.job_states(["201", "202", "203", "299"]) == {
        "201": ("R", "27:33"), "202": ("PD", "0:00"), "203": ("R", "1-02:03:04")}
    squeue_calls = [call for call in calls(fake_bin) if call[0] == "squeue"]
    assert len(squeue_calls) == 1  # one call for many jobs
    study = load_study(write_study(tmp_path))
    teacher, pure = study.runs()
    earlier = {"job_id": "150", "state": "TIMEOUT", "exit_code": 0, "signal": 0,
               "elapsed": "02:00:17", "source": "sacct"}
    for spec, job in ((teacher, "201"), (pure, "202")):
        state_files.write_status(run_dir(study.experiments_dir, spec),
                              {"status": "in_progress" if job == "201" else "queued",
                               "job_id": job, "scheduler": "slurm",
                               **({"last_job_end": earlier} if job == "202" else {})})
    report = status_report(study)
    assert {entry["run"]: tuple(entry["job_state"]) for entry in report["live"]} == {
        teacher.name: ("R", "27:33"), pure.name: ("PD", "0:00")}
    text = format_report(report)
    assert f"{teacher.name}: job 201 [R 27:33]" in text
    assert f"{pure.name}: job 202 [PD 0:00]; job 150 ended TIMEOUT after 02:00:17" in text


@pytest.mark.parametrize("flavour", ["json", "plain"])
def test_pbs_job_states_from_qstat(fake_bin, monkeypatch, flavour):
    running = dict(qstat_job(0, "00:27:33", "Job run at Mon Jan 01"), job_state="R")
    queued = {"Job_Name": "x", "job_state": "Q", "comment": "Not Running: Insufficient"}
    jobs = {"9101.sched01": running, "9102.sched01": queued}
    install(fake_bin, "qstat", QSTAT.replace(repr(PBS_JOBS), repr(jobs)))
    if flavour == "plain":
        monkeypatch.setenv("FAKE_NO_JSON", "1")
    assert PbsScheduler().job_states(["9101.sched01", "9102"]) == {
        "9101.sched01": ("R", "00:27:33"), "9102": ("Q", "0:00:00")}


def test_local_job_states_give_the_time_since_the_process_started(tmp_path):
    from kdlab.schedulers.local import LocalScheduler
    from kdlab.run.study_settings import SchedulerSettings

    scheduler = LocalScheduler()
    job_id = scheduler.submit("run-l", [sys.executable, "-c", "import time; time.sleep(30)"],
                              tmp_path / "run", SchedulerSettings(), lambda job_id: None)
    try:
        time.sleep(1.2)
        state, elapsed = scheduler.job_states([job_id])[job_id]
        hours, minutes, seconds = (int(part) for part in elapsed.split(":"))
        assert state == "R" and hours == 0 and minutes == 0 and 1 <= seconds <= 20
    finally:
        scheduler.cancel(job_id)
    dead = f"{job_id.split('-')[0]}-1-{job_id.split('-')[2]}"  # another start time: gone
    assert scheduler.job_states([dead]) == {}
