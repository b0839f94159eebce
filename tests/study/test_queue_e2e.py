"""The local backend end to end with real ``kdlab train`` processes: ``kdlab queue`` run
repeatedly (as cron would) takes a small Digits study to completion; a job killed outright
(SIGKILL, as a node failure would) is noticed as gone, submitted again and resumes from its
checkpoint. (Teacher-before-student ordering with real training is in test_queue_slurm.py;
every decision, KD waiting included, is in test_queue.py.)"""

from __future__ import annotations

import functools
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kdlab.run import state_files
from kdlab.schedulers.local import LocalScheduler, parse_job_id
from kdlab.study.progress import study_run_states
from kdlab.study.study_file import load_study
import builders

pytestmark = pytest.mark.slow

DEADLINE_SECONDS = 900  # generous, for a loaded machine; nothing here asserts a duration
wait_until = functools.partial(builders.wait_until, timeout=DEADLINE_SECONDS)


def queue(study_path: Path, *extra: str) -> list[str]:
    result = subprocess.run([sys.executable, "-m", "kdlab", "queue", str(study_path), *extra],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()




def test_local_study_completes_and_a_killed_job_resumes(tmp_path):
    study_path = builders.write_study(
        tmp_path / "study.toml", name="e2e", methods=(), alphas=(),
        top=f'data_root = "{tmp_path / "data"}"\n', training='epochs = 2\ndevice = "cpu"',
        tables='[scheduler]\nbackend = "local"\nmax_live_jobs = 2\n')
    study = load_study(study_path)
    teacher, pure = study.runs()
    lines = queue(study_path)
    assert [line.split()[0] for line in lines[:-1]] == ["submit", "submit"]
    pure_dir = next(s.run_dir for s in study_run_states(study) if s.spec == pure)
    first_job = state_files.read_status(pure_dir)["job_id"]

    def after_first_epoch():
        status = state_files.read_status(pure_dir) or {}
        return status.get("status") == "in_progress" and status.get("epoch", 0) >= 1 and status
    status = wait_until(after_first_epoch, "the first epoch of the pure student", every=0.1)
    assert status["job_id"] == first_job
    pid = parse_job_id(first_job)[0]
    os.kill(pid, signal.SIGKILL)  # no chance to save anything
    wait_until(lambda: not LocalScheduler().is_alive(first_job), "the killed job to end")
    stopped = state_files.read_status(pure_dir)
    assert stopped["status"] == "in_progress", stopped
    epochs_before = stopped["epoch"]
    metrics_before = state_files.read_metrics(pure_dir)

    def all_completed():
        lines = queue(study_path)
        return all(s.state == "completed" for s in study_run_states(study)) and lines
    lines = wait_until(all_completed, "the study to complete", every=2.0)
    assert "2 completed" in lines[-1]

    final = state_files.read_status(pure_dir)
    assert final["job_history"] == [first_job] and final["submissions"] == 2
    metrics = state_files.read_metrics(pure_dir)
    assert len(metrics["train_loss"]) == 2
    assert metrics["train_loss"][:epochs_before] == metrics_before["train_loss"][:epochs_before]
    resumed_at = re.search(r"resuming after epoch (\d+)/2", (pure_dir / "train.log").read_text())
    assert resumed_at and int(resumed_at[1]) >= epochs_before
    teacher_status = next(s.status for s in study_run_states(study) if s.spec == teacher)
    assert teacher_status["submissions"] == 1 and "job_history" not in teacher_status
