"""The scheduler backends' command layer: local processes for real; Slurm and PBS through
fake ``sbatch``/``squeue``/``scontrol``/``scancel`` and ``qsub``/``qstat``/``qrls``/``qdel``
executables on PATH that answer in the documented output formats (the real Slurm cluster
is exercised in test_queue_slurm.py)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from kdlab.run.errors import UserError
from kdlab.schedulers import SchedulerError, backend_of_status, get_scheduler
from kdlab.schedulers.base import TEMPLATE_FIELDS
from kdlab.schedulers.local import LocalScheduler, boot_id, parse_job_id, process_start_ticks
from kdlab.schedulers.pbs import PbsScheduler, parse_qstat_full, parse_qstat_json, parse_qsub_output
from kdlab.schedulers.slurm import SlurmScheduler, parse_sbatch_output, parse_squeue_states
from kdlab.run.study_settings import SchedulerSettings
from builders import calls, install_fake


def settings(**changes) -> SchedulerSettings:
    base = dict(backend="slurm", max_live_jobs=3, walltime="02:00:00", cpus=8, memory="24GB",
                gpus=1, queue="gpu_1", account="PROJ0101",
                extra_directives=["--constraint=v100", "#SBATCH --exclusive"],
                setup=["module load cuda/12", "source venv/bin/activate"], signal_seconds=300,
                kdlab_command="kdlab")
    base.update(changes)
    return SchedulerSettings(**base)


# ---- local -------------------------------------------------------------------------------------

def wait_for(condition, timeout: float = 120.0) -> None:
    """Poll ``condition`` until true or ``timeout`` s (generous: the machine may be loaded)."""
    deadline = time.time() + timeout
    while not condition() and time.time() < deadline:
        time.sleep(0.05)


def test_local_job_lifecycle_and_pid_reuse_guard(tmp_path):
    scheduler = LocalScheduler()
    assert scheduler.available() is None
    run_dir = tmp_path / "run"
    recorded = []
    marker = tmp_path / "started"
    command = [sys.executable, "-c",
               f"import pathlib, time; pathlib.Path({str(marker)!r}).write_text('x'); "
               "time.sleep(60)"]

    def record(job_id):
        recorded.append(job_id)
        # The command may not have started yet: the gate holds it until record returns.
        time.sleep(0.3)
        assert not marker.exists()

    job_id = scheduler.submit("run-a", command, run_dir, settings(backend="local"), record)
    assert recorded == [job_id]
    pid, start_ticks, _ = parse_job_id(job_id)
    assert process_start_ticks(pid)[0] == start_ticks
    assert scheduler.is_alive(job_id)
    # The process leads its own session (it outlives the queue command and its terminal).
    assert os.getsid(pid) == pid
    wait_for(marker.exists)
    assert marker.exists()
    # Same pid, other start time: a recycled pid must not look alive.
    assert not scheduler.is_alive(f"{pid}-{start_ticks + 1}-{job_id.split('-')[2]}")
    # Another boot's job is gone whatever its pid.
    assert not scheduler.is_alive(f"{pid}-{start_ticks}-00000000")
    scheduler.cancel(job_id)
    wait_for(lambda: not scheduler.is_alive(job_id))
    assert not scheduler.is_alive(job_id)
    assert (run_dir / "train.log").exists()


def test_local_job_output_goes_to_train_log_and_exit_is_seen(tmp_path):
    scheduler = LocalScheduler()
    run_dir = tmp_path / "run"
    job_id = scheduler.submit("run-b", [sys.executable, "-c", "print('hello from the job')"],
                              run_dir, settings(backend="local"), lambda job_id: None)
    wait_for(lambda: not scheduler.is_alive(job_id))
    assert not scheduler.is_alive(job_id)
    assert "hello from the job" in (run_dir / "train.log").read_text()


def test_local_record_failure_means_the_command_never_runs(tmp_path):
    scheduler = LocalScheduler()
    marker = tmp_path / "ran"

    def record(job_id):
        raise OSError("disk full")

    with pytest.raises(OSError):
        scheduler.submit("run-c", [sys.executable, "-c",
                                   f"open({str(marker)!r}, 'w').write('x')"],
                         tmp_path / "run", settings(backend="local"), record)
    # submit waited for the child to end: had it run the command, the marker would exist.
    assert not marker.exists()


def test_local_dead_and_zombie_processes_are_not_alive(tmp_path):
    scheduler = LocalScheduler()
    # A child that exits but is not reaped stays a zombie ('Z') in /proc.
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    wait_for(lambda: (process_start_ticks(child.pid) or (0, "Z"))[1] == "Z")
    info = process_start_ticks(child.pid)
    assert info is not None and info[1] == "Z"
    assert not scheduler.is_alive(f"{child.pid}-{info[0]}-{boot_id()}")
    child.wait()
    assert not scheduler.is_alive(f"{child.pid}-{info[0]}-{boot_id()}")
    with pytest.raises(SchedulerError, match="not a local job id"):
        scheduler.is_alive("4101237.sched01")


def test_local_default_command_uses_this_interpreter():
    scheduler = LocalScheduler()
    argv = scheduler.argv(settings(backend="local"), ["train", "--dataset", "Digits"])
    assert argv == [sys.executable, "-m", "kdlab", "train", "--dataset", "Digits"]
    argv = scheduler.argv(settings(backend="local", kdlab_command="python3 -m kdlab"), ["train"])
    assert argv == ["python3", "-m", "kdlab", "train"]


# ---- slurm -------------------------------------------------------------------------------------

SBATCH = """
STATE["next"] = STATE.get("next", 4100) + 1
job = str(STATE["next"])
STATE.setdefault("jobs", {})[job] = "PENDING" if "--hold" in argv else "RUNNING"
STATE.setdefault("held", []).append(job) if "--hold" in argv else None
save()
print(job + ";kdlabtest" if os.environ.get("FAKE_CLUSTER_SUFFIX") else job)
"""
SCONTROL = """
if argv[:1] == ["release"]:
    if os.environ.get("FAKE_RELEASE_FAILS"):
        print("scontrol: error: Invalid job id specified", file=sys.stderr); sys.exit(1)
    STATE["held"].remove(argv[1]); STATE["jobs"][argv[1]] = "RUNNING"; save()
"""
SQUEUE = """
if os.environ.get("FAKE_SQUEUE_DOWN"):
    print("slurm_load_jobs error: Unable to contact slurm controller (connect failure)",
          file=sys.stderr)
    sys.exit(1)
ids = argv[argv.index("-j") + 1].split(",")
known = [i for i in ids if i in STATE.get("jobs", {})]
if len(ids) == 1 and not known:
    print("slurm_load_jobs error: Invalid job id specified", file=sys.stderr)
    sys.exit(1)
for i in known:
    print(f"{i} {STATE['jobs'][i]}")
"""
SCANCEL = """
STATE["jobs"][argv[0]] = "CANCELLED"; save()
"""


@pytest.fixture
def fake_slurm(fake_bin):
    for name, body in (("sbatch", SBATCH), ("scontrol", SCONTROL), ("squeue", SQUEUE),
                       ("scancel", SCANCEL)):
        install_fake(fake_bin, name, body)
    return fake_bin


def test_slurm_script_has_the_study_resources_and_execs_training(tmp_path):
    from kdlab.schedulers.slurm import job_script

    run_dir = tmp_path / "exp" / "run"
    command = ["kdlab", "train", "--dataset", "Cifar10", "--data-root", "/data dir"]
    text = job_script("Cifar10-pure-ResNet112-s0", command, run_dir, settings())
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    directives = [line for line in lines if line.startswith("#SBATCH")]
    resolved = run_dir.resolve()
    for expected in ("--job-name=Cifar10-pure-ResNet112-s0", f"--output={resolved}/slurm-%j.out",
                     f"--error={resolved}/slurm-%j.err", "--time=02:00:00",
                     "--cpus-per-task=8", f"--mem={24 * 1024}M", "--gres=gpu:1",
                     "--partition=gpu_1", "--account=PROJ0101", "--signal=B:USR1@300",
                     "--constraint=v100", "--exclusive"):
        assert f"#SBATCH {expected}" in directives, expected
    # Directives come before any command; setup lines before the exec; exec is last.
    first_command = next(i for i, line in enumerate(lines)
                         if line and not line.startswith("#"))
    assert all(i < first_command for i, line in enumerate(lines) if line.startswith("#SBATCH"))
    assert lines.index("module load cuda/12") < lines.index("source venv/bin/activate")
    exec_line = [line for line in lines if line.startswith("exec ")]
    assert exec_line == ["exec " + shlex.join(command)]
    # Setup lines run in the submission directory (relative venv paths work there).
    assert lines.index(f"cd {shlex.quote(os.getcwd())}") < lines.index("module load cuda/12")
    result = subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True)
    assert result.returncode == 0, result.stderr


def test_slurm_without_gpus_queue_or_account_leaves_them_out(tmp_path):
    from kdlab.schedulers.slurm import job_script

    text = job_script("r", ["kdlab"], tmp_path, settings(gpus=0, queue=None, account=None,
                                                          signal_seconds=0, extra_directives=[]))
    assert "--gres" not in text and "--partition" not in text and "--account" not in text
    assert "--signal" not in text


def test_slurm_submit_holds_until_recorded_then_releases(tmp_path, fake_slurm):
    scheduler = SlurmScheduler()
    assert scheduler.available() is None
    run_dir = tmp_path / "run"
    seen = []

    def record(job_id):
        # The job exists but is held: it cannot start before its id is recorded.
        state = json.loads((fake_slurm / "state.json").read_text())
        seen.append((job_id, list(state["held"])))
        assert not any(call[0] == "scontrol" for call in calls(fake_slurm))

    job_id = scheduler.submit("run-x", ["kdlab", "train"], run_dir, settings(), record)
    assert seen == [(job_id, [job_id])]
    sbatch_call, release_call = calls(fake_slurm)
    assert sbatch_call[:3] == ["sbatch", "--parsable", "--hold"]
    script = Path(sbatch_call[3])
    assert script.parent == run_dir and script.name == "slurm-job-1.sh"
    assert release_call == ["scontrol", "release", job_id]
    assert scheduler.is_alive(job_id)
    # A second submission keeps the first script (nothing is overwritten).
    scheduler.submit("run-x", ["kdlab", "train"], run_dir, settings(), lambda job_id: None)
    assert sorted(p.name for p in run_dir.glob("slurm-job-*.sh")) == ["slurm-job-1.sh",
                                                                       "slurm-job-2.sh"]


def test_slurm_failed_release_cancels_the_job(tmp_path, fake_slurm, monkeypatch):
    monkeypatch.setenv("FAKE_RELEASE_FAILS", "1")
    scheduler = SlurmScheduler()
    with pytest.raises(SchedulerError, match="scontrol release"):
        scheduler.submit("run-x", ["kdlab"], tmp_path / "run", settings(), lambda job_id: None)
    assert calls(fake_slurm)[-1][0] == "scancel"
    state = json.loads((fake_slurm / "state.json").read_text())
    assert list(state["jobs"].values()) == ["CANCELLED"]


def test_slurm_record_failure_cancels_the_job(tmp_path, fake_slurm):
    scheduler = SlurmScheduler()

    def record(job_id):
        raise OSError("read-only file system")

    with pytest.raises(OSError):
        scheduler.submit("run-x", ["kdlab"], tmp_path / "run", settings(), record)
    assert [call[0] for call in calls(fake_slurm)] == ["sbatch", "scancel"]


def test_slurm_liveness_states_unknown_ids_and_failures(fake_slurm, monkeypatch):
    (fake_slurm / "state.json").write_text(json.dumps({"jobs": {
        "11": "PENDING", "12": "RUNNING", "13": "COMPLETING", "14": "COMPLETED",
        "15": "CANCELLED", "16": "TIMEOUT", "17": "NODE_FAIL", "18": "SUSPENDED"}}))
    scheduler = SlurmScheduler()
    answers = scheduler.alive_jobs(["11", "12", "13", "14", "15", "16", "17", "18", "99",
                                    "12;kdlabtest"])
    assert answers == {"11": True, "12": True, "13": True, "14": False, "15": False,
                       "16": False, "17": False, "18": True, "99": False, "12;kdlabtest": True}
    assert len(calls(fake_slurm)) == 1  # one squeue call for all of them
    assert scheduler.is_alive("12")
    assert not scheduler.is_alive("99")  # single unknown id: squeue exits 1, job is gone
    monkeypatch.setenv("FAKE_SQUEUE_DOWN", "1")
    with pytest.raises(SchedulerError, match="Unable to contact"):
        scheduler.is_alive("12")
    answers = scheduler.alive_jobs(["11", "12"])
    assert all(isinstance(answer, SchedulerError) for answer in answers.values())


def test_slurm_output_parsers():
    assert parse_sbatch_output("4242\n") == "4242"
    assert parse_sbatch_output("4242;cluster\n") == "4242"
    with pytest.raises(SchedulerError):
        parse_sbatch_output("sbatch: error: Batch job submission failed\n")
    assert parse_squeue_states("7 RUNNING\n8 PENDING\n\n") == {"7": "RUNNING", "8": "PENDING"}


def test_slurm_unavailable_without_its_commands(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert "sbatch" in SlurmScheduler().available()
    assert "qsub" in PbsScheduler().available()


# ---- pbs ---------------------------------------------------------------------------------------

# Modelled on `qstat -f -F json JOBID` of PBS Pro / OpenPBS (attributes trimmed).
QSTAT_JSON_RUNNING = """{
    "timestamp":1700000000,
    "pbs_version":"2022.1.1",
    "pbs_server":"sched01",
    "Jobs":{
        "4101237.sched01":{
            "Job_Name":"Cifar10-pure-ResNet56-s1",
            "Job_Owner":"someone@login1",
            "job_state":"%s",
            "queue":"gpu_1",
            "server":"sched01",
            "Resource_List":{
                "mem":"24gb",
                "ncpus":8,
                "ngpus":1,
                "select":"1:ncpus=8:ngpus=1:mem=24gb",
                "walltime":"02:00:00"
            },
            "substate":42
        }
    }
}
"""
# Modelled on plain `qstat -f JOBID` (PBS Pro, OpenPBS; Torque prints the same shape).
QSTAT_FULL = """Job Id: 4101237.sched01
    Job_Name = Cifar10-pure-ResNet56-s1
    Job_Owner = someone@login1
    resources_used.walltime = 00:41:07
    job_state = %s
    queue = gpu_1
    Resource_List.select = 1:ncpus=8:ngpus=1:mem=24gb
    Resource_List.walltime = 02:00:00

"""
QSUB = """
if os.environ.get("FAKE_QSUB_FAILS"):
    print("qsub: Unknown queue", file=sys.stderr); sys.exit(170)
STATE["next"] = STATE.get("next", 4101300) + 1
job = f"{STATE['next']}.sched01"
STATE.setdefault("jobs", {})[job] = "H" if "-h" in argv else "Q"
save()
print(job)
"""
QRLS = """
STATE["jobs"][argv[0]] = "Q"; save()
"""
QDEL = """
STATE["jobs"][argv[0]] = "F"; save()
"""
# The fake qstat knows the formats; FAKE_QSTAT_MODE picks a PBS flavour.
QSTAT = """
mode = os.environ.get("FAKE_QSTAT_MODE", "json")
if "-F" in argv and mode in ("nojson",):
    print("qstat: invalid option -- 'F'", file=sys.stderr)
    print("usage: qstat [-f] [-J] [-p] [-t] [-x] [-E] [-F format] [-D delim] [job_identifier...]",
          file=sys.stderr)
    sys.exit(2)
if mode == "down":
    print("Connection refused", file=sys.stderr)
    print("qstat: cannot connect to server sched01 (errno=15010)", file=sys.stderr)
    sys.exit(1)
ids = [arg for arg in argv if not arg.startswith("-") and arg != "json"]
code, found = 0, {}
for job in ids:
    state = STATE.get("jobs", {}).get(job)
    if state is None:
        print(f"qstat: Unknown Job Id {job}", file=sys.stderr); code = 153
    elif state == "F":
        print(f"qstat: {job} Job has finished, use -x or -H to obtain historical job information",
              file=sys.stderr)
        code = 35
    else:
        found[job] = state
if "-F" in argv:
    if mode == "badjson":
        print('{"Jobs":{"x":{"Variable_List":"PATH=C:\\\\x","job_state":"R"')
    elif found:
        data = json.loads(JSON_TEXT % "R")
        template = data["Jobs"].pop("4101237.sched01")
        data["Jobs"] = {job: dict(template, job_state=state) for job, state in found.items()}
        print(json.dumps(data, indent=4))
    else:
        print(json.dumps({"timestamp": 1, "pbs_version": "2022.1.1", "pbs_server": "sched01"}))
else:
    for job, state in found.items():
        print(FULL_TEXT.replace("4101237.sched01", job) % state)
sys.exit(code)
"""


@pytest.fixture
def fake_pbs(fake_bin):
    for name, body in (("qsub", QSUB), ("qrls", QRLS), ("qdel", QDEL)):
        install_fake(fake_bin, name, body)
    install_fake(fake_bin, "qstat", f"JSON_TEXT = {QSTAT_JSON_RUNNING!r}\n"
                                    f"FULL_TEXT = {QSTAT_FULL!r}\n" + QSTAT)
    return fake_bin


def test_pbs_script_has_the_study_resources(tmp_path):
    from kdlab.schedulers.pbs import job_script

    run_dir = tmp_path / "run"
    command = ["kdlab", "train", "--dataset", "Cifar10"]
    text = job_script("Cifar10-pure-ResNet112-s0", command, run_dir, settings(backend="pbs"),
                      attempt=3)
    lines = text.splitlines()
    resolved = run_dir.resolve()
    for expected in ("-N Cifar10-pure-ResNet112-s0",
                     f"-l select=1:ncpus=8:ngpus=1:mem={24 * 1024}mb",
                     "-l walltime=02:00:00", "-q gpu_1", "-P PROJ0101",
                     f"-o {resolved}/pbs-3.out", f"-e {resolved}/pbs-3.err",
                     "--constraint=v100"):
        assert f"#PBS {expected}" in lines, expected
    assert "#SBATCH --exclusive" in lines  # an extra line given in full is kept as written
    # USR1 comes signal_seconds before the walltime: 2 h - 300 s.
    exec_line = [line for line in lines if line.startswith("exec ")]
    assert exec_line == ["exec timeout --preserve-status --signal=USR1 6900s "
                         + shlex.join(command)]
    assert lines.index("module load cuda/12") < lines.index(exec_line[0])
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0


def test_pbs_timeout_wrapper_passes_sigterm_on_and_sends_usr1_early(tmp_path):
    """The wrapper of the PBS script, for real: the job process gets USR1 at the warning time,
    and a SIGTERM sent to the job (what PBS does at the walltime) reaches it too."""
    import shutil
    if shutil.which("timeout") is None:
        pytest.skip("coreutils timeout not installed")
    probe = tmp_path / "probe.py"
    probe.write_text(textwrap.dedent("""\
        import signal, sys, time
        def on(signum, frame):
            print(signal.Signals(signum).name, flush=True); sys.exit(75)
        signal.signal(signal.SIGUSR1, on); signal.signal(signal.SIGTERM, on)
        print("ready", flush=True)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
        time.sleep(30)
        """))
    # USR1 is blocked from before the probe starts until its handler is in place (the mask
    # is inherited through timeout and exec), so however slow the start, the signal waits.
    early = subprocess.run(["timeout", "--preserve-status", "--signal=USR1", "0.2s",
                            sys.executable, str(probe)], capture_output=True, text=True,
                           timeout=60, preexec_fn=lambda: signal.pthread_sigmask(
                               signal.SIG_BLOCK, {signal.SIGUSR1}))
    assert early.stdout.split() == ["ready", "SIGUSR1"] and early.returncode == 75
    process = subprocess.Popen(["timeout", "--preserve-status", "--signal=USR1", "60s",
                                sys.executable, str(probe)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=30)
    assert out.split() == ["SIGTERM"] and process.returncode == 75


def test_pbs_submit_holds_until_recorded_then_releases(tmp_path, fake_pbs):
    scheduler = PbsScheduler()
    assert scheduler.available() is None
    seen = []

    def record(job_id):
        seen.append((job_id, json.loads((fake_pbs / "state.json").read_text())["jobs"][job_id]))

    job_id = scheduler.submit("run-p", ["kdlab", "train"], tmp_path / "run",
                              settings(backend="pbs"), record)
    assert job_id == "4101301.sched01"
    assert seen == [(job_id, "H")]  # held while its id was recorded
    names = [call[0] for call in calls(fake_pbs)]
    assert names == ["qsub", "qrls"]
    assert calls(fake_pbs)[0][1] == "-h"
    assert scheduler.is_alive(job_id)
    scheduler.cancel(job_id)
    assert not scheduler.is_alive(job_id)   # "Job has finished"
    assert (tmp_path / "run" / "pbs-job-1.sh").exists()


def test_pbs_submission_failure_is_a_scheduler_error(tmp_path, fake_pbs, monkeypatch):
    monkeypatch.setenv("FAKE_QSUB_FAILS", "1")
    with pytest.raises(SchedulerError, match="Unknown queue"):
        PbsScheduler().submit("run-p", ["kdlab"], tmp_path / "run", settings(backend="pbs"),
                              lambda job_id: None)


@pytest.mark.parametrize("mode", ["json", "nojson", "badjson"])
def test_pbs_liveness_in_every_format(fake_pbs, mode, monkeypatch):
    monkeypatch.setenv("FAKE_QSTAT_MODE", mode)
    jobs = {"1.sched01": "R", "2.sched01": "Q", "3.sched01": "H", "4.sched01": "E",
            "5.sched01": "W", "6.sched01": "B", "7.sched01": "F", "8.sched01": "X"}
    (fake_pbs / "state.json").write_text(json.dumps({"jobs": jobs}))
    scheduler = PbsScheduler()
    for job_id, state in jobs.items():
        assert scheduler.is_alive(job_id) == (state not in "FX"), (job_id, state)
    assert not scheduler.is_alive("99.sched01")  # Unknown Job Id
    if mode != "json":
        assert any(call[1:] == ["-f", "1.sched01"] for call in calls(fake_pbs))
    # Many jobs at once: one qstat call where JSON works, one call per job where it does not.
    (fake_pbs / "calls.log").unlink()
    asked = [*jobs, "99.sched01"]
    answers = scheduler.alive_jobs(asked)
    assert answers == {job_id: jobs.get(job_id, "F") not in "FX" for job_id in asked}
    qstat_calls = [call for call in calls(fake_pbs) if call[0] == "qstat"]
    if mode == "json":
        assert len(qstat_calls) == 1
    else:
        plain = {call[-1] for call in qstat_calls if "-F" not in call}
        gone_by_message = {"7.sched01", "99.sched01"}  # finished / unknown: said on stderr
        # Without -F the first call fails outright: every job is asked alone, in plain form;
        # with JSON that does not parse, the messages about gone jobs still count.
        assert plain == (set(asked) if mode == "nojson" else set(asked) - gone_by_message)


def test_pbs_liveness_unknown_when_the_server_does_not_answer(fake_pbs, monkeypatch):
    monkeypatch.setenv("FAKE_QSTAT_MODE", "down")
    (fake_pbs / "state.json").write_text(json.dumps({"jobs": {"1.sched01": "R"}}))
    with pytest.raises(SchedulerError, match="cannot connect"):
        PbsScheduler().is_alive("1.sched01")


def test_pbs_output_parsers():
    assert parse_qsub_output("4101237.sched01\n") == "4101237.sched01"
    assert parse_qsub_output("12345\n") == "12345"
    with pytest.raises(SchedulerError):
        parse_qsub_output("qsub: Job rejected by all possible destinations\n")
    assert parse_qstat_json(QSTAT_JSON_RUNNING % "R", "4101237.sched01") == "R"
    # The server suffix may be spelled longer or shorter than the id we recorded.
    assert parse_qstat_json(QSTAT_JSON_RUNNING % "Q", "4101237.sched01.cluster.example") == "Q"
    assert parse_qstat_json('{"timestamp":1,"pbs_version":"x","pbs_server":"s"}', "1.s") is None
    with pytest.raises(ValueError):
        parse_qstat_json("{not json", "1.s")
    two = QSTAT_FULL % "R" + QSTAT_FULL.replace("4101237", "4101238") % "F"
    assert parse_qstat_full(two, "4101237.sched01") == "R"
    assert parse_qstat_full(two, "4101238.sched01") == "F"
    assert parse_qstat_full(two, "1.sched01") is None


# ---- templates and helpers --------------------------------------------------------------------

def test_user_template_gets_every_field(tmp_path):
    from kdlab.schedulers.pbs import job_script

    template = tmp_path / "job.tmpl"
    template.write_text("#!/bin/bash\n" + "\n".join(f"# {name}={{{name}}}"
                                                    for name in TEMPLATE_FIELDS)
                        + "\necho ${{HOME}}\nexec {command}\n")
    text = job_script("run-t", ["kdlab", "train", "--seed", "1"], tmp_path / "run",
                      settings(backend="pbs", template=str(template)), attempt=2)
    values = dict(line[2:].split("=", 1) for line in text.splitlines()
                  if line.startswith("# ") and "=" in line and "\n" not in line)
    assert values["job_name"] == "run-t"
    assert values["walltime_seconds"] == "7200"
    assert values["memory_mb"] == str(24 * 1024)
    assert values["queue"] == "gpu_1" and values["account"] == "PROJ0101"
    assert values["output_file"] == str((tmp_path / "run").resolve() / "pbs-2.out")
    assert values["command"] == "kdlab train --seed 1"
    assert "echo ${HOME}" in text  # doubled braces are literal braces
    assert "#PBS -N run-t" in text  # {directives} holds kdlab's own directive block


def test_user_template_with_an_unknown_field_is_one_clear_error(tmp_path):
    from kdlab.schedulers.slurm import job_script

    template = tmp_path / "job.tmpl"
    template.write_text("#!/bin/bash\necho ${HOME}\n")
    with pytest.raises(UserError, match=r"job\.tmpl: unknown field \{HOME\}.*job_name"):
        job_script("r", ["kdlab"], tmp_path, settings(template=str(template)))


def test_get_scheduler_and_recorded_backend():
    assert get_scheduler("local").name == "local"
    assert get_scheduler("slurm").name == "slurm"
    assert get_scheduler("pbs").name == "pbs"
    with pytest.raises(UserError, match="unknown scheduler backend 'sge'"):
        get_scheduler("sge")
    assert backend_of_status({"job_id": "1", "scheduler": "slurm"}, "local") == "slurm"
    assert backend_of_status({"pbs_job_id": "4101237.sched01"}, "local") == "pbs"
    assert backend_of_status({"slurm_job_id": "17"}, "pbs") == "slurm"
    assert backend_of_status({"job_id": "17"}, "pbs") == "pbs"
    assert backend_of_status(None, "local") == "local"


def test_local_job_threads_follow_the_study_cpus(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    scheduler = LocalScheduler()
    run_dir = tmp_path / "run"
    command = [sys.executable, "-c", "import os; print('threads', os.environ['OMP_NUM_THREADS'])"]
    job_id = scheduler.submit("run-t", command, run_dir, settings(backend="local", cpus=3),
                              lambda job_id: None)
    wait_for(lambda: not scheduler.is_alive(job_id))
    assert "threads 3" in (run_dir / "train.log").read_text()


# ---- replies kdlab cannot read (issue 20) ----------------------------------------------------

def test_slurm_banner_makes_liveness_unknown_never_gone(fake_bin, monkeypatch):
    """Login nodes print banners: squeue's reply then holds lines that are no job listing,
    and a job it leaves out is not known to be gone (sacct and scontrol said RUNNING)."""
    install_fake(fake_bin, "squeue", """
print("Welcome to HPC!"); print("JOBID STATE"); print("(null)")
if os.environ.get("FAKE_LISTED"):
    print("4102 RUNNING")
""")
    install_fake(fake_bin, "sacct", 'print("4101|RUNNING|0:0|00:10:00")')
    for name in ("sbatch", "scontrol", "scancel"):
        install_fake(fake_bin, name, "")
    scheduler = SlurmScheduler()
    answer = scheduler.alive_jobs(["4101"])["4101"]
    assert isinstance(answer, SchedulerError) and "Welcome to HPC!" in str(answer)
    with pytest.raises(SchedulerError, match="cannot read"):
        scheduler.is_alive("4101")
    monkeypatch.setenv("FAKE_LISTED", "1")
    assert scheduler.alive_jobs(["4102"]) == {"4102": True}  # listed: the banner is moot


def test_slurm_unlisted_job_that_accounting_says_runs_is_unknown(fake_bin, monkeypatch):
    install_fake(fake_bin, "squeue", "")   # lists nothing, exit 0
    install_fake(fake_bin, "sacct", 'print(os.environ["FAKE_SACCT"])')
    monkeypatch.setenv("FAKE_SACCT", "4101|RUNNING")
    answer = SlurmScheduler().alive_jobs(["4101"])["4101"]
    assert isinstance(answer, SchedulerError) and "sacct says RUNNING" in str(answer)
    monkeypatch.setenv("FAKE_SACCT", "4101|COMPLETED")
    assert SlurmScheduler().alive_jobs(["4101"]) == {"4101": False}
    # A state kdlab does not know is not a verdict either.
    install_fake(fake_bin, "squeue", 'print("4101 HIBERNATING")')
    answer = SlurmScheduler().alive_jobs(["4101"])["4101"]
    assert isinstance(answer, SchedulerError) and "HIBERNATING" in str(answer)


@pytest.mark.parametrize("reply", [
    '{"Jobs": {"4101.sched01": {"job_state": 5}}}', '{"Jobs": {"4101.sched01": "R"}}',
    '{"Jobs": [{"job_state": "R"}]}', '["R"]', '{"Jobs": {"4101.sched01": {"job_state": null}}}'])
def test_pbs_job_without_a_readable_state_is_unknown_never_gone(fake_bin, reply):
    # Both formats answer the same JSON, as a broken or foreign qstat might.
    install_fake(fake_bin, "qstat", f"print({reply!r})")
    scheduler = PbsScheduler()
    with pytest.raises(SchedulerError, match="4101.sched01"):
        scheduler.is_alive("4101.sched01")
    answers = scheduler.alive_jobs(["4101.sched01", "4102.sched01"])
    assert all(isinstance(answer, SchedulerError) for answer in answers.values())


def test_pbs_qstat_json_shapes():
    from kdlab.schedulers.pbs import qstat_jobs

    assert qstat_jobs('{"pbs_server": "s"}') == {}
    assert qstat_jobs('{"Jobs": {"1.s": "R"}}') == {"1.s": "R"}  # the caller judges entries
    for text in ('{"Jobs": [1]}', '[]', '"R"', "[" * 100_000, "{not json"):
        with pytest.raises(ValueError):
            qstat_jobs(text)
    with pytest.raises(ValueError, match="job_state"):
        parse_qstat_json('{"Jobs": {"1.s": "R"}}', "1.s")
    # Escape sequences in JSON strings are gone once read.
    jobs = qstat_jobs('{"Jobs": {"1.s": {"job_state": "\\u001b]0;owned\\u0007R\\u001b[2J"}}}')
    assert jobs == {"1.s": {"job_state": "R"}}


def test_scheduler_text_and_quotes_are_clean_and_bounded():
    from kdlab.schedulers.base import reply_quote, scheduler_text

    assert scheduler_text("\x1b]0;owned\x07RUNNING\x1b[2J\x1b[31m\r\n\tx\x9b1m\x00y") == "RUNNING\n\txy"
    assert scheduler_text("\x1b]0;title to the line's end\nnext") == "\nnext"
    quote = reply_quote("x" * 60_000_000)
    assert len(quote) < 400 and quote.endswith("(59999700 more characters)")
    assert reply_quote("a\n  b\tc") == "a b c"


def test_non_utf8_and_escapes_in_a_reply_are_read_tolerantly(fake_bin):
    install_fake(fake_bin, "squeue", """
sys.stdout.buffer.write(b"4101 RUN\\x1b]0;owned\\x07NING\\n\\xff\\xfe 4102\\n")
""")
    answers = SlurmScheduler().alive_jobs(["4101", "4102"])
    assert answers["4101"] is True
    assert isinstance(answers["4102"], SchedulerError)
    assert "\ufffd" in str(answers["4102"]) and "\x1b" not in str(answers["4102"])
    install_fake(fake_bin, "squeue", """
sys.stderr.buffer.write(b"\\x1b[2Jslurm_load_jobs error: \\xff" + b"y" * 10_000_000)
sys.exit(1)
""")
    error = SlurmScheduler().alive_jobs(["4101", "4102"])["4101"]
    assert str(error).startswith("squeue -h -t all") and "\x1b" not in str(error)
    assert "slurm_load_jobs error: \ufffdyyy" in str(error) and len(str(error)) < 500


def test_a_hanging_command_is_killed_with_its_children(fake_bin, monkeypatch, tmp_path):
    """A wrapper script whose child holds the output open: the whole process group goes."""
    from kdlab.schedulers import base

    child_pid_file = tmp_path / "child.pid"
    (fake_bin / "squeue").write_text(f"#!/bin/sh\nsleep 300 &\necho $! > {child_pid_file}\n"
                                     "wait\necho '4101 RUNNING'\n")
    (fake_bin / "squeue").chmod(0o755)
    monkeypatch.setattr(base, "COMMAND_TIMEOUT_SECONDS", 1)
    answer = SlurmScheduler().alive_jobs(["4101"])["4101"]
    assert isinstance(answer, SchedulerError)
    assert str(answer) == "slurm liveness: squeue did not answer within 1 s"
    child = int(child_pid_file.read_text())
    wait_for(lambda: process_start_ticks(child) is None
             or process_start_ticks(child)[1] in "ZX")
    assert process_start_ticks(child) is None or process_start_ticks(child)[1] in "ZX"


def test_sbatch_and_qsub_ids_among_warning_lines():
    assert parse_sbatch_output("sbatch: warning: no --mem given\n4242;c1\n") == "4242"
    assert parse_sbatch_output("Welcome to HPC!\n4242\nsbatch: note: ok\n") == "4242"
    from kdlab.schedulers.pbs import parse_qsub_output as qsub_id
    assert qsub_id("qsub: warning: project not set\n77.sched01\n") == "77.sched01"
    with pytest.raises(SchedulerError) as caught:
        parse_sbatch_output("x" * 60_000_000)
    assert len(str(caught.value)) < 500


QSUB_WITHOUT_ID = """
STATE["next"] = STATE.get("next", 4101300) + 1
job = f"{STATE['next']}.sched01"
STATE.setdefault("jobs", {})[job] = {"state": "H" if "-h" in argv else "Q",
                                     "args": " ".join(argv)}
save()
print("qsub: warning: accounting project not set")
"""
QSELECT = """
user, state = argv[argv.index("-u") + 1], argv[argv.index("-s") + 1]
for job, info in STATE.get("jobs", {}).items():
    if info["state"] == state:
        print(job)
"""
QSTAT_SUBMIT_ARGUMENTS = """
ids = [arg for arg in argv if not arg.startswith("-") and arg != "json"]
print(json.dumps({"Jobs": {job: {"job_state": STATE["jobs"][job]["state"],
                                 "Submit_arguments": STATE["jobs"][job]["args"]}
                           for job in ids}}))
"""
QDEL_RECORD = """
STATE["jobs"][argv[0]]["state"] = "F"; save()
"""


def test_qsub_without_an_id_never_leaves_held_jobs_over_three_cycles(tmp_path, fake_bin):
    """Issue 20.6 for PBS: qsub printed no job id, so the held job it made would wait for
    ever; kdlab finds it by the script its submission ran and deletes it, and only it (a
    held job of another script of the same user is kept)."""
    for name, body in (("qsub", QSUB_WITHOUT_ID), ("qselect", QSELECT),
                       ("qstat", QSTAT_SUBMIT_ARGUMENTS), ("qdel", QDEL_RECORD)):
        install_fake(fake_bin, name, body)
    (fake_bin / "state.json").write_text(json.dumps({"jobs": {"99.sched01": {
        "state": "H", "args": "-h /elsewhere/pbs-job-1.sh"}}}))
    scheduler = PbsScheduler()
    for cycle in range(3):
        with pytest.raises(SchedulerError) as caught:
            scheduler.submit("run-x", ["kdlab", "train"], tmp_path / "run", settings(backend="pbs"),
                             lambda job_id: None)
        assert "expected a job id" in str(caught.value)
        assert f"held job 41013{cycle + 1:02d}.sched01 was cancelled" in str(caught.value)
        assert len(str(caught.value).splitlines()) == 1
    jobs = json.loads((fake_bin / "state.json").read_text())["jobs"]
    assert {job: info["state"] for job, info in jobs.items()} == {
        "99.sched01": "H", "4101301.sched01": "F", "4101302.sched01": "F",
        "4101303.sched01": "F"}


def test_every_backend_is_one_table_line_whose_facts_the_rest_of_kdlab_reads():
    """Issue 21: a backend is its module plus a line of catalog.BACKEND_FACTS; its name, its
    class, its batch flag, its CPU variable and its earlier job-id key are read from there."""
    from kdlab.run import catalog, state_files
    from kdlab.schedulers import backend_of_status, fields, get_scheduler
    from kdlab.training.threads import default_threads

    assert catalog.BACKENDS == ("local", "slurm", "pbs")
    for name, facts in catalog.BACKEND_FACTS.items():
        assert get_scheduler(name).name == name
        assert (name in fields.BATCH_BACKENDS) == facts.batch
        if facts.cpu_variable:
            assert default_threads({facts.cpu_variable: "3"}) == (3, facts.cpu_variable)
        if facts.legacy_job_id_key:
            status = {facts.legacy_job_id_key: "77.server"}
            assert state_files.job_id_of(status) == "77.server"
            assert backend_of_status(status, "local") == name
    assert default_threads({"OMP_NUM_THREADS": "5"}) == (5, "OMP_NUM_THREADS")
    with pytest.raises(UserError, match="unknown scheduler backend 'lsf': expected one of "
                                        "local, slurm, pbs"):
        get_scheduler("lsf")
