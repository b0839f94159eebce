"""Whatever a scheduler prints, ``kdlab status`` and ``kdlab queue`` neither crash nor
resubmit a job that may be alive: login banners, bytes that are not UTF-8, JSON of another
shape, escape sequences, megabytes of output, nothing at all, and a command that hangs.
Fake ``squeue``/``sacct``/``scontrol``/``sbatch`` and ``qstat``/``qsub`` executables on
PATH answer with the reply under test; accounting (``sacct``, ``scontrol``) says the job
runs, as it did when the banner defect was found."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kdlab.run import state_files
from kdlab.cli import main
from kdlab.run.layout import run_dir
from kdlab.schedulers import base
from kdlab.study.study_file import load_study
import builders
from builders import calls, install_fake

LIVE_JOB = {"slurm": "4101", "pbs": "4101.sched01"}
# Control characters a terminal or a JSON reader would act on (tab and line feed allowed).
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")

# The reply of every scheduler command but accounting: (stdout, stderr, exit status).
REPLIES = {
    "banner": (b"Welcome to HPC!\nJOBID STATE\n(null)\n", b"", 0),
    "banner-escapes": (b"\x1b]0;owned\x07Welcome\x1b[2J to HPC!\n(null)\n", b"", 0),
    "non-utf8": (b"\xff\xfe\x80\x81 RUNNING\n\xc3\x28 4101\n", b"\xff\xfe\n", 0),
    "json-jobs-list": (b'{"Jobs": [{"job_state": "R"}]}\n', b"", 0),
    "json-job-strings": (b'{"Jobs": {"JOB": "R", "4102.sched01": ["R"]}}\n', b"", 0),
    "json-state-number": (b'{"Jobs": {"JOB": {"job_state": 5}}}\n', b"", 0),
    "json-state-escape": (b'{"Jobs": {"JOB": {"job_state": "\\u001b]0;owned\\u0007Z"}}}\n',
                          b"", 0),
    "json-scalar": (b'"R"\n', b"", 0),
    "json-deep": (b"[" * 200_000, b"", 0),
    "huge": ((b"x" * 999 + b"\n") * 30_000, b"", 0),
    "empty": (b"", b"", 0),
    "stderr-escapes": (b"", b"\x1b[2Jslurm_load_jobs error: \x1b]0;owned\x07 down\n", 1),
    "hang": (b"", b"", 0),
}

FAKE = """
name = Path(sys.argv[0]).name
live = os.environ["FAKE_LIVE_JOB"]
if name in ("sbatch", "qsub"):
    STATE["submitted"] = STATE.get("submitted", 0) + 1; save()
    print(f"{5000 + STATE['submitted']}" + (".sched01" if name == "qsub" else ""))
    sys.exit(0)
if name == "sacct":
    print(f"{live}|RUNNING|0:0|00:10:00"); sys.exit(0)
if name == "scontrol" and argv[:2] == ["-o", "show"]:
    print(f"JobId={live} JobState=RUNNING ExitCode=0:0 RunTime=00:10:00"); sys.exit(0)
if name in ("scontrol", "scancel", "qrls", "qdel"):
    sys.exit(0)
if os.environ.get("FAKE_HANG"):
    import time
    time.sleep(120)
reply = HERE / "reply"
sys.stdout.buffer.write((reply / "stdout").read_bytes().replace(b"JOB", live.encode()))
sys.stderr.buffer.write((reply / "stderr").read_bytes())
sys.exit(int((reply / "code").read_text()))
"""


def study_with_live_runs(tmp_path: Path, backend: str):
    """A teacher and a pure student, both in progress under the live job."""
    path = builders.write_study(
        tmp_path / "study.toml", name="replies", methods=(), alphas=(), training="",
        tables=f'[scheduler]\nbackend = "{backend}"\nkdlab_command = "true"\n')
    study = load_study(path)
    for spec in study.runs():
        state_files.write_status(run_dir(study.experiments_dir, spec),
                              {"status": "in_progress", "epoch": 3, "job_id": LIVE_JOB[backend],
                               "scheduler": backend})
    return path, study


@pytest.mark.parametrize("kind", sorted(REPLIES))
@pytest.mark.parametrize("backend", ["slurm", "pbs"])
def test_status_and_queue_survive_every_reply_and_resubmit_nothing(
        tmp_path, fake_bin, monkeypatch, capsys, backend, kind):
    for name in ("squeue", "sacct", "scontrol", "sbatch", "scancel",
                 "qstat", "qsub", "qrls", "qdel"):
        install_fake(fake_bin, name, FAKE)
    stdout, stderr, code = REPLIES[kind]
    reply = fake_bin / "reply"
    reply.mkdir()
    (reply / "stdout").write_bytes(stdout)
    (reply / "stderr").write_bytes(stderr)
    (reply / "code").write_text(str(code))
    monkeypatch.setenv("FAKE_LIVE_JOB", LIVE_JOB[backend])
    if kind == "hang":
        monkeypatch.setenv("FAKE_HANG", "1")
        monkeypatch.setattr(base, "COMMAND_TIMEOUT_SECONDS", 1)
    path, study = study_with_live_runs(tmp_path, backend)
    before = {spec.name: state_files.read_status(run_dir(study.experiments_dir, spec))
              for spec in study.runs()}

    assert main(["status", str(path)]) == 0
    text = capsys.readouterr()
    assert main(["status", "--json", str(path)]) == 0
    report_text = capsys.readouterr()
    report = json.loads(report_text.out)
    assert sorted(entry["run"] for entry in report["liveness_unknown"]) == sorted(before)
    assert report["stuck"] == []
    assert main(["queue", str(path)]) == 0
    queued = capsys.readouterr()

    assert not any(call[0] in ("sbatch", "qsub") for call in calls(fake_bin))
    for spec in study.runs():
        assert state_files.read_status(run_dir(study.experiments_dir, spec)) == before[spec.name]
    unknown = [line for line in queued.out.splitlines() if line.startswith("unknown")]
    assert len(unknown) == 2 and all("liveness unknown (" in line for line in unknown)
    for output in (text.out, text.err, report_text.out, report_text.err, queued.out, queued.err):
        assert not CONTROL.search(output), output[:500]
        assert "Traceback" not in output
        assert max(map(len, output.splitlines()), default=0) < 1000  # quotes are bounded
    if kind == "hang":
        assert "did not answer within 1 s" in queued.out


# ---- sbatch's reply (issue 20, item 6) ---------------------------------------------------------

SBATCH = """
STATE["next"] = STATE.get("next", 700) + 1
job = str(STATE["next"])
STATE.setdefault("jobs", {})[job] = {"state": "PENDING", "held": True, "script": argv[-1]}
save()
if os.environ.get("FAKE_SBATCH_GARBAGE"):
    sys.stdout.write("sbatch: warning: " + "z" * 60_000_000 + "\\n")
else:
    print("sbatch: warning: can't run 1 processes on 2 nodes, setting nnodes to 1")
    print(job + ";cluster1")
"""
SCONTROL = """
if argv[:1] == ["release"]:
    STATE["jobs"][argv[1]].update(held=False, state="RUNNING"); save()
"""
SQUEUE = """
jobs = STATE.get("jobs", {})
if "%i %o" in argv:   # this user's pending jobs of one name, with their scripts
    for job, info in jobs.items():
        if info["state"] == "PENDING":
            print(job, info["script"])
else:
    for job in argv[argv.index("-j") + 1].split(","):
        if job in jobs:
            print(job, jobs[job]["state"])
"""
SCANCEL = """
STATE["jobs"][argv[0]]["state"] = "CANCELLED"; save()
"""


@pytest.mark.parametrize("garbage", [False, True])
def test_sbatch_warnings_never_leave_held_jobs_over_three_cycles(tmp_path, fake_bin, capsys,
                                                                 monkeypatch, garbage):
    for name, body in (("sbatch", SBATCH), ("scontrol", SCONTROL), ("squeue", SQUEUE),
                       ("scancel", SCANCEL), ("sacct", "sys.exit(1)")):
        install_fake(fake_bin, name, body)
    if garbage:
        monkeypatch.setenv("FAKE_SBATCH_GARBAGE", "1")
    path = builders.write_study(
        tmp_path / "study.toml", name="sbatch", methods=(), alphas=(), training="",
        tables='[scheduler]\nbackend = "slurm"\nkdlab_command = "true"\n')
    study = load_study(path)
    outputs = []
    for _ in range(3):
        assert main(["queue", str(path)]) == (1 if garbage else 0)
        outputs.append(capsys.readouterr())
    jobs = json.loads((fake_bin / "state.json").read_text())["jobs"]
    sbatch_calls = [call for call in calls(fake_bin) if call[0] == "sbatch"]
    assert not [job for job, info in jobs.items() if info["state"] == "PENDING"]  # none held
    if not garbage:
        # Two runs, two jobs, recorded and released once; later cycles see them live.
        assert len(sbatch_calls) == 2 and sorted(jobs) == ["701", "702"]
        assert {state_files.read_status(run_dir(study.experiments_dir, spec))["job_id"]
                for spec in study.runs()} == {"701", "702"}
        assert all(info["state"] == "RUNNING" for info in jobs.values())
        return
    # Each cycle's one submission fails (the first failure holds back the rest), and its
    # held job is found by its script and cancelled.
    assert len(sbatch_calls) == 3
    assert [call[1] for call in calls(fake_bin) if call[0] == "scancel"] == ["701", "702", "703"]
    for output in outputs:
        errors = [line for line in output.out.splitlines() if "; submission failed:" in line]
        assert len(errors) == 1 and len(errors[0]) < 1000
        assert "expected a job id" in errors[0] and "was cancelled" in errors[0]
