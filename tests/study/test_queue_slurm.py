"""The slurm backend against a real one-node Slurm cluster on this machine.

Real ``kdlab train`` jobs (Digits, ResNet20 teacher, ResNet8 student, 2 epochs, CPU) are
submitted by ``kdlab queue``, one is cancelled mid-run with ``scancel``, the next
``kdlab queue`` submits it again and it resumes from its checkpoint; repeated queue calls
take the study to completion. Stand-in training commands then end jobs every way a
scheduler ends them (out of memory, past the time limit, scancelled, failed), which
``status`` and ``queue`` must name from the accounting database, and requeue a job under
its own id at the pre-timeout signal. The cluster comes from ``tests/slurm_cluster.sh``
(started by .ci/run; started here when Slurm is installed but not running); without Slurm
these tests are skipped, saying why."""

from __future__ import annotations

import functools
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kdlab.run import state_files
from kdlab.cli import main
from kdlab.study.status import format_report, status_report
from kdlab.study.progress import study_run_states
from kdlab.study.study_file import load_study
import builders
from builders import read_slurm_env

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

DEADLINE_SECONDS = 900  # for the whole study under a loaded machine; never a timing assertion
wait_until = functools.partial(builders.wait_until, timeout=DEADLINE_SECONDS)


def write_study(tmp_path: Path) -> Path:
    study = tmp_path / "study.toml"
    study.write_text(textwrap.dedent(f"""\
        name = "slurmtest"
        datasets = ["Digits"]
        teacher = "ResNet20"
        student = "ResNet8"
        methods = ["logit"]
        alphas = [0.5]
        seeds = [0]
        experiments_dir = "{tmp_path / 'experiments'}"
        data_root = "{tmp_path / 'data'}"

        [training]
        epochs = 2
        device = "cpu"

        [scheduler]
        backend = "slurm"
        max_live_jobs = 2
        cpus = 1
        memory = "1GB"
        walltime = "00:30:00"
        signal_seconds = 120
        setup = ["export OMP_NUM_THREADS=1"]
        kdlab_command = "{sys.executable} -m kdlab"
        """))
    return study


def squeue_state(job_id: str) -> str:
    result = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%T", "-j", job_id],
                            capture_output=True, text=True)
    return result.stdout.strip() or f"unknown ({result.stderr.strip()})"


def queue(study_path: Path, capsys) -> list[str]:
    assert main(["queue", str(study_path)]) == 0
    return capsys.readouterr().out.splitlines()


def test_real_slurm_jobs_complete_and_a_cancelled_one_resumes(slurm_cluster, tmp_path, capsys):
    study_path = write_study(tmp_path)
    study = load_study(study_path)
    teacher, pure, kd = study.runs()
    lines = queue(study_path, capsys)
    words = {line.split()[1].rstrip(":"): line.split()[0] for line in lines[:-1]}
    assert words == {teacher.name: "submit", pure.name: "submit", kd.name: "wait"}, lines
    states = {state.spec: state for state in study_run_states(study)}
    for spec in (teacher, pure):
        status = states[spec].status
        assert status["scheduler"] == "slurm" and status["job_id"].isdigit()
        assert squeue_state(status["job_id"]) in ("PENDING", "CONFIGURING", "RUNNING",
                                                  "COMPLETING", "COMPLETED")
    pure_dir = states[pure].run_dir
    first_job = states[pure].status["job_id"]

    # Cancel the pure student's job once it has finished its first epoch.
    def after_first_epoch():
        status = state_files.read_status(pure_dir) or {}
        return status.get("status") == "in_progress" and status.get("epoch", 0) >= 1 and status
    status = wait_until(after_first_epoch, "the first epoch of the pure student", every=0.1)
    assert status["job_id"] == first_job  # training kept the job id the queue recorded
    subprocess.run(["scancel", first_job], check=True)
    wait_until(lambda: squeue_state(first_job) == "CANCELLED", "the cancelled job to end")
    # The training process (its pid is in status.json; one-node cluster) must be gone:
    # SIGTERM makes it save and stop, or KillWait's SIGKILL ends it. Either way the run
    # stays in progress (not failed) with a checkpoint to resume from.
    wait_until(lambda: not Path(f"/proc/{status['pid']}").exists(), "the training process to end")
    stopped = state_files.read_status(pure_dir)
    assert stopped["status"] == "in_progress", stopped
    epochs_before = stopped["epoch"]
    assert epochs_before >= 1
    metrics_before = state_files.read_metrics(pure_dir)
    assert (pure_dir / state_files.CHECKPOINT_FILE).exists()

    lines = queue(study_path, capsys)
    resubmitted = [line for line in lines if pure.name in line]
    assert resubmitted[0].startswith("submit") and re.search(
        rf"job {first_job} ended CANCELLED after \d\d:\d\d:\d\d; resubmitting", resubmitted[0])

    # Repeated queue calls (as cron would) until every run is completed.
    def all_completed():
        queue(study_path, capsys)
        return all(state.state == "completed" for state in study_run_states(study))
    wait_until(all_completed, "the study to complete", every=2.0)

    final = state_files.read_status(pure_dir)
    assert final["job_history"] == [first_job] and final["submissions"] == 2
    assert final["job_id"] != first_job
    metrics = state_files.read_metrics(pure_dir)
    assert len(metrics["train_loss"]) == study.training["epochs"]
    # Resumed, not restarted: the epochs trained before the cancel are kept as they were.
    assert metrics["train_loss"][:epochs_before] == metrics_before["train_loss"][:epochs_before]
    second_log = (pure_dir / f"slurm-{final['job_id']}.out").read_text()
    resumed_at = re.search(r"resuming after epoch (\d+)/", second_log)
    assert resumed_at and int(resumed_at[1]) >= epochs_before, second_log
    # The KD run was submitted only after its teacher had completed.
    teacher_status = state_files.read_status(states[teacher].run_dir)
    kd_status = state_files.read_status(states[kd].run_dir)
    assert kd_status["submitted_at"] > teacher_status["completed_at"]
    assert kd_status["submissions"] == 1 and teacher_status["submissions"] == 1
    # Each submission kept its own script; outputs landed in the run directories.
    assert sorted(p.name for p in pure_dir.glob("slurm-job-*.sh")) == ["slurm-job-1.sh",
                                                                       "slurm-job-2.sh"]
    assert (pure_dir / f"slurm-{first_job}.out").exists()
    lines = queue(study_path, capsys)
    assert "3 completed" in lines[-1]


# ---- why a job ended (accounting) ----------------------------------------------------------

# Stand-in for `kdlab train` whose behaviour depends on the run: the Digits teacher takes
# far more memory than the study gives it, the Digits student outlives the time limit, the
# Cifar10 teacher waits to be scancelled and the Cifar10 student fails with exit code 3.
MISBEHAVING_TRAIN = """\
import json, sys, time
args = sys.argv[1:]
config = json.load(open(args[args.index("--config") + 1]))   # the job's one argument
run = (config["dataset"], config["model"])
if run == ("Digits", "ResNet20"):
    block = bytearray(600 * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    time.sleep(120)
elif run == ("Cifar10", "ResNet8"):
    sys.exit(3)
else:
    time.sleep(600)
"""


def test_real_slurm_says_why_jobs_ended(slurm_cluster, tmp_path, capsys):
    env = read_slurm_env()
    fake = tmp_path / "misbehave.py"
    fake.write_text(MISBEHAVING_TRAIN)
    study_path = builders.write_study(
        tmp_path / "study.toml", name="slurmends", datasets=("Digits", "Cifar10"), methods=(),
        alphas=(), training="", tables=textwrap.dedent(f"""\
        [scheduler]
        backend = "slurm"
        max_live_jobs = 4
        memory = "200MB"
        walltime = "00:01:00"
        signal_seconds = 0
        kdlab_command = "{sys.executable} {fake}"
        """))
    study = load_study(study_path)
    names = {(spec.dataset, spec.model): spec.name for spec in study.runs()}
    lines = queue(study_path, capsys)
    assert sum(line.startswith("submit") for line in lines) == 4, lines
    jobs = {state.spec.name: state.job_id for state in study_run_states(study)}
    cancelled = jobs[names["Cifar10", "ResNet20"]]
    wait_until(lambda: squeue_state(cancelled) == "RUNNING", "the job to be cancelled to run")
    subprocess.run(["scancel", cancelled], check=True)

    def all_ends():
        report = status_report(study)
        ends = {entry["run"]: entry.get("job_end") for entry in report["stuck"]}
        return (len(ends) == 4 and all(ends.values())) and (report, ends)
    report, ends = wait_until(all_ends, "every job to end and be accounted for", timeout=300,
                              every=2.0)
    source = "sacct" if env.get("KDLAB_SLURM_ACCOUNTING") == "1" else "scontrol"
    assert {end["source"] for end in ends.values()} == {source}
    oom = ends[names["Digits", "ResNet20"]]
    if env.get("KDLAB_SLURM_MEMORY") == "cgroup":
        assert oom["state"] == "OUT_OF_MEMORY", oom
    else:  # polling enforcement: slurmstepd kills the step (see tests/slurm_cluster.sh)
        assert (oom["state"], oom["signal"]) == ("FAILED", 9), oom
    assert ends[names["Digits", "ResNet8"]]["state"] == "TIMEOUT"
    assert ends[names["Cifar10", "ResNet20"]]["state"] == "CANCELLED"
    failed = ends[names["Cifar10", "ResNet8"]]
    assert (failed["state"], failed["exit_code"]) == ("FAILED", 3)
    assert all(re.fullmatch(r"(\d+-)?\d\d:\d\d:\d\d", end["elapsed"]) for end in ends.values())
    text = format_report(report)
    assert re.search(rf"job {jobs[names['Digits', 'ResNet8']]} ended TIMEOUT after "
                     r"00:0[1-3]:\d\d", text), text

    lines = queue(study_path, capsys)
    timeout_line = next(line for line in lines if names["Digits", "ResNet8"] in line)
    assert f"job {jobs[names['Digits', 'ResNet8']]} ended TIMEOUT after " in timeout_line
    assert "; resubmitting" in timeout_line
    try:
        for name, job_id in jobs.items():
            status = state_files.read_status(next(state.run_dir for state in study_run_states(study)
                                               if state.spec.name == name))
            assert status["last_job_end"]["job_id"] == job_id, status
            assert status["last_job_end"] == ends[name] and status["job_history"] == [job_id]
    finally:
        for state in study_run_states(study):
            subprocess.run(["scancel", state.job_id], capture_output=True)


# ---- self-requeue --------------------------------------------------------------------------

# Stand-in for `kdlab train` that records each start (job id, Slurm's restart count),
# checkpoints and exits 75 on the pre-timeout USR1 of its first start, and completes on
# the next.
REQUEUED_TRAIN = """\
import os, signal, sys, time
from kdlab.run import state_files
from kdlab.cli import build_parser
from kdlab.run.config import read_config_file
from kdlab.run.layout import run_dir

args = build_parser().parse_args(sys.argv[1:])
config = read_config_file(args.config[0])   # the job's one argument: its config.json
directory = run_dir(config.experiments_dir, config.run_spec())
restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
with open(directory / "starts.log", "a") as log:
    log.write(f"{os.environ['SLURM_JOB_ID']} {restarts}\\n")
stop = []
signal.signal(signal.SIGUSR1, lambda *a: stop.append(1))
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
state_files.update_status(directory, status="in_progress", epoch=restarts, epochs=2)
if restarts == 0:
    while not stop:
        time.sleep(0.1)
    sys.exit(75)
state_files.update_status(directory, status="completed", epoch=2, max_acc=50.0)
"""


def test_real_slurm_job_requeues_itself_under_its_id(slurm_cluster, tmp_path, capsys):
    """About 2.5 minutes: Slurm (22.05) makes a requeued job eligible again only ~120 s
    after the requeue (EligibleTime), whatever the configuration of this test cluster."""
    fake = tmp_path / "requeued_train.py"
    fake.write_text(REQUEUED_TRAIN)
    study_path = builders.write_study(
        tmp_path / "study.toml", name="slurmrequeue", methods=(), alphas=(), training="",
        tables=textwrap.dedent(f"""\
        [scheduler]
        backend = "slurm"
        max_live_jobs = 1
        memory = "500MB"
        walltime = "00:01:00"
        signal_seconds = 30
        requeue = true
        kdlab_command = "{sys.executable} {fake}"
        """))
    study = load_study(study_path)
    teacher = study.runs()[0]
    lines = queue(study_path, capsys)
    assert lines[0].startswith("submit") and teacher.name in lines[0], lines
    teacher_dir = next(state.run_dir for state in study_run_states(study)
                       if state.spec == teacher)
    job_id = state_files.read_status(teacher_dir)["job_id"]
    starts = teacher_dir / "starts.log"
    wait_until(lambda: starts.exists() and starts.read_text().strip(), "the first start",
               timeout=120)

    # Once the job has been requeued (not running again yet, or just started again), the
    # queue sees it live: nothing is submitted, the run keeps its job.
    def requeued():
        answer = subprocess.run(["squeue", "-h", "-O", "State:20,RestartCnt:6", "-j", job_id],
                                capture_output=True, text=True).stdout.split()
        return len(answer) == 2 and int(answer[1]) >= 1 and answer
    state_seen = wait_until(requeued, "the job to requeue itself", timeout=150, every=0.1)
    lines = queue(study_path, capsys)
    assert lines[0].startswith("live") and teacher.name in lines[0], (state_seen, lines)

    wait_until(lambda: (state_files.read_status(teacher_dir) or {}).get("status") == "completed",
               "the requeued job to complete", timeout=180)
    assert starts.read_text().split("\n")[:2] == [f"{job_id} 0", f"{job_id} 1"]
    status = state_files.read_status(teacher_dir)
    assert status["job_id"] == job_id and status["submissions"] == 1
    assert "job_history" not in status
    script = (teacher_dir / "slurm-job-1.sh").read_text()
    assert "#SBATCH --requeue" in script and "scontrol requeue" in script
    assert "requeueing job" in (teacher_dir / f"slurm-{job_id}.err").read_text()
    assert len(list(teacher_dir.glob("slurm-job-*.sh"))) == 1
