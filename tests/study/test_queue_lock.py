"""Two ``kdlab queue`` processes at once (overlapping cron runs) never submit a run twice.

The scheduler is a fake Slurm whose ``sbatch`` takes half a second per job, so the two
processes' decide-and-submit steps would overlap for seconds without the lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from kdlab.study.progress import study_run_states
from kdlab.study.study_file import load_study
from builders import write_study

FAKE_HEAD = f"#!{sys.executable}\n" + textwrap.dedent("""\
    import fcntl, json, os, sys, time
    from pathlib import Path
    HERE = Path(__file__).parent
    argv = sys.argv[1:]
    guard = open(HERE / "state.lock", "a")
    fcntl.flock(guard, fcntl.LOCK_EX)
    STATE_FILE = HERE / "state.json"
    STATE = json.loads(STATE_FILE.read_text()) if STATE_FILE.exists() else {"jobs": {}, "next": 100}
    def save():
        STATE_FILE.write_text(json.dumps(STATE))
    """)
FAKES = {
    "sbatch": """
        script = Path(argv[-1]).read_text()
        name = next(line.split("=", 1)[1] for line in script.splitlines()
                    if line.startswith("#SBATCH --job-name="))
        STATE["next"] += 1
        job = str(STATE["next"])
        STATE["jobs"][job] = {"name": name, "state": "PENDING"}
        save()
        fcntl.flock(guard, fcntl.LOCK_UN)
        time.sleep(0.5)  # a slow scheduler: the window in which a second queue could interfere
        print(job)
        """,
    "scontrol": """
        STATE["jobs"][argv[1]]["state"] = "RUNNING"; save()
        """,
    "squeue": """
        ids = argv[argv.index("-j") + 1].split(",")
        known = [i for i in ids if i in STATE["jobs"]]
        if len(ids) == 1 and not known:
            print("slurm_load_jobs error: Invalid job id specified", file=sys.stderr); sys.exit(1)
        for i in known:
            print(i, STATE["jobs"][i]["state"])
        """,
    "scancel": """
        STATE["jobs"][argv[0]]["state"] = "CANCELLED"; save()
        """,
}


def test_two_concurrent_queue_processes_never_submit_a_run_twice(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in FAKES.items():
        (bin_dir / name).write_text(FAKE_HEAD + textwrap.dedent(body))
        (bin_dir / name).chmod(0o755)
    study_path = write_study(tmp_path / "study.toml", name="locktest", methods=(), alphas=(),
                             seeds=(0, 1, 2),
                             tables='[scheduler]\nbackend = "slurm"\nmax_live_jobs = 4\n')
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    queue = [sys.executable, "-m", "kdlab", "queue", str(study_path)]
    first = subprocess.Popen(queue, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    second = subprocess.Popen(queue, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    outputs = [process.communicate(timeout=120) for process in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs

    state = json.loads((bin_dir / "state.json").read_text())
    names = [job["name"] for job in state["jobs"].values()]
    # Four submissions in all (the limit), each run at most once, in priority order.
    study = load_study(study_path)
    expected = [spec.name for spec in (study.teacher_runs() + study.pure_student_runs())[:4]]
    assert sorted(names) == sorted(expected)
    for run in study_run_states(study):
        status = run.status or {}
        if run.spec.name in expected:
            assert status["status"] == "queued" and status["submissions"] == 1
            assert state["jobs"][status["job_id"]]["name"] == run.spec.name
        else:
            assert run.status is None
    # One process submitted, the other found the jobs live.
    words = [line.split()[0] for out, _ in outputs for line in out.splitlines()]
    assert words.count("submit") == 4 and words.count("live") == 4, outputs
