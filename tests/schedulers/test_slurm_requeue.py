"""Self-requeue on Slurm (``[scheduler] requeue = true``): the job script's part, run by
bash with a stand-in training process and a fake ``scontrol`` (the real cluster is in
test_queue_slurm.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kdlab.run.errors import EXIT_PREEMPTED, UserError
from kdlab.schedulers.slurm import job_script
from kdlab.run.study_settings import SchedulerSettings
from kdlab.study.study_file import load_study
import builders
from builders import calls, install_fake

# Stand-in training: says it is ready, then checkpoints and exits 75 on USR1 or TERM, or
# completes on its own after FAKE_SECONDS.
TRAIN = f"""\
import os, signal, sys, time
from pathlib import Path
here = Path(sys.argv[1])
stop = []
signal.signal(signal.SIGUSR1, lambda *a: stop.append("USR1"))
signal.signal(signal.SIGTERM, lambda *a: stop.append("TERM"))
(here / "ready").write_text(str(os.getpid()))
deadline = time.time() + float(os.environ.get("FAKE_SECONDS", "60"))
while not stop and time.time() < deadline:
    time.sleep(0.02)
(here / "stopped-by").write_text(",".join(stop))
sys.exit({EXIT_PREEMPTED} if stop else 0)
"""


def run_script(tmp_path: Path, fake_bin: Path, send: int | None, seconds: str = "60"):
    install_fake(fake_bin, "scontrol", "pass\n")
    trainer = tmp_path / "train.py"
    trainer.write_text(TRAIN)
    settings = SchedulerSettings(backend="slurm", requeue=True, walltime="00:10:00",
                                 signal_seconds=60)
    script = tmp_path / "job.sh"
    script.write_text(job_script("run-r", [sys.executable, str(trainer), str(tmp_path)],
                                 tmp_path / "run", settings))
    env = dict(os.environ, SLURM_JOB_ID="4242", FAKE_SECONDS=seconds)
    process = subprocess.Popen(["bash", str(script)], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (tmp_path / "ready").exists() and time.time() < deadline:
        time.sleep(0.02)
    assert (tmp_path / "ready").exists()
    if send is not None:
        process.send_signal(send)   # to the batch shell, as Slurm's --signal=B: does
    out, err = process.communicate(timeout=60)
    return process.returncode, err, script.read_text()


def test_pre_timeout_signal_checkpoints_then_requeues_the_same_job(tmp_path, fake_bin):
    code, err, text = run_script(tmp_path, fake_bin, signal.SIGUSR1)
    assert "#SBATCH --requeue" in text and "#SBATCH --signal=B:USR1@60" in text
    assert "#SBATCH --open-mode=append" in text
    assert (tmp_path / "stopped-by").read_text() == "USR1"  # passed on to training
    assert [call for call in calls(fake_bin)] == [["scontrol", "requeue", "4242"]]
    assert code == 0 and "requeueing job 4242" in err


def test_a_cancel_or_a_finished_run_is_never_requeued(tmp_path, fake_bin):
    code, _, _ = run_script(tmp_path, fake_bin, signal.SIGTERM)  # scancel, preemption
    assert (tmp_path / "stopped-by").read_text() == "TERM"
    assert code == EXIT_PREEMPTED and calls(fake_bin) == []
    for name in ("ready", "stopped-by"):
        (tmp_path / name).unlink()
    code, _, _ = run_script(tmp_path, fake_bin, None, seconds="0.2")  # training completed
    assert code == 0 and calls(fake_bin) == []


def test_requeue_off_keeps_the_exec_script(tmp_path):
    text = job_script("r", ["kdlab", "train"], tmp_path, SchedulerSettings(backend="slurm"))
    assert "--requeue" not in text and "scontrol requeue" not in text
    assert text.rstrip().splitlines()[-1] == "exec kdlab train"


@pytest.mark.parametrize("scheduler", ['backend = "pbs"\nrequeue = true',
                                       'backend = "local"\nrequeue = true',
                                       'backend = "slurm"\nrequeue = true\nsignal_seconds = 0'])
def test_requeue_needs_slurm_and_a_pre_timeout_signal(tmp_path, scheduler):
    study = builders.write_study(tmp_path / "study.toml", name="r", methods=(), alphas=(),
                                 training="", tables=f"[scheduler]\n{scheduler}\n")
    with pytest.raises(UserError, match="key 'scheduler.requeue'"):
        load_study(study)
