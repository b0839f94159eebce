"""kdlab sync against a local "remote" (rsync between two directories, the remote queue
command run through bash), its lock and log, failures of single steps, and the crontab
entry through a fake ``crontab`` executable."""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kdlab import cli
from kdlab.run.errors import UserError
from kdlab.run.layout import RunSpec, run_dir
from kdlab.ops import sync
from kdlab.ops.plots import CURVES_FILE
from kdlab.study.study_file import load_study
from builders import make_project

pytestmark = pytest.mark.skipif(shutil.which("rsync") is None,
                                reason="rsync is not installed (apt-get install rsync)")

VENV_BIN = Path(sys.executable).parent


def test_sync_pulls_plots_pushes_and_queues(tmp_path, monkeypatch):
    local, remote, study_path = make_project(tmp_path)
    monkeypatch.chdir(tmp_path)   # not the project: every path must come from [sync]
    assert cli.main(["sync", str(study_path), "--quiet"]) == 0

    # pulled: the remote's runs, byte for byte, with curves drawn here
    study = load_study(study_path)
    for spec in study.runs():
        remote_run = run_dir(remote / "experiments", spec)
        local_run = run_dir(local / "experiments", spec)
        for name in ("status.json", "metrics.json"):
            assert (local_run / name).read_bytes() == (remote_run / name).read_bytes()
        assert (local_run / CURVES_FILE).exists()
        assert not (remote_run / CURVES_FILE).exists()   # plots are not pushed
    assert (local / "analysis" / "experiment_syncstudy" / "progress").is_dir()
    # pushed: code and study, without data, experiments, analysis, venv, log
    assert (remote / "src" / "code.py").read_text() == "print('new code')\n"
    assert (remote / "studies" / "sync.toml").exists()
    for excluded in ("data", ".venv", "analysis", "logs/sync.log",
                     ".kdlab-sync-syncstudy.lock"):
        assert not (remote / excluded).exists(), excluded
    # the log has a timestamped line per step; the real kdlab queue ran on the remote
    log = (local / "logs" / "sync.log").read_text().splitlines()
    assert all(line[:4].isdigit() and line[4] == "-" for line in log)
    for summary in ("pull: ok", "plot: 3 curves drawn, 0 unchanged", "push: ok", "queue: ok"):
        assert sum(line.endswith(f" {summary}") for line in log) == 1, summary
    # the queue's own output (it ran in the remote project, on the pushed study file)
    assert any(line.split(" ", 2)[2].startswith("[queue]   ") and "syncstudy" in line
               for line in log)
    assert log[-1].endswith("sync syncstudy: all steps ok")


def test_failed_step_is_reported_and_independent_steps_still_run(tmp_path, capsys):
    local, remote, study_path = make_project(tmp_path, remote_runs=False)
    # no experiments on the remote yet: the pull fails, the rest still runs
    assert cli.main(["sync", str(study_path)]) == 1
    out = capsys.readouterr().out
    assert "pull: exit status" in out
    assert "plot: 0 curves drawn" in out
    assert "push: ok" in out and "queue: ok" in out
    assert "FAILED steps: pull" in out
    assert (remote / "src" / "code.py").exists()


def test_queue_is_skipped_when_the_push_fails(tmp_path):
    local, remote, study_path = make_project(tmp_path)
    calls = []

    def runner(name, argv, log, cwd):
        calls.append(name)
        if name == "push":
            return sync.StepResult(name, False, "exit status 12: connection closed")
        return sync._run_step(name, argv, log, cwd)

    results = sync.run_sync(load_study(study_path), quiet=True, step_runner=runner)
    assert calls == ["pull", "push"]
    by_name = {r.name: r for r in results}
    assert by_name["pull"].ok and by_name["plot"].ok and not by_name["push"].ok
    assert by_name["queue"].skipped and "push failed" in by_name["queue"].message


def test_lock_stops_an_overlapping_sync(tmp_path):
    local, remote, study_path = make_project(tmp_path)
    study = load_study(study_path)
    plan = sync.SyncPlan(study)
    with open(plan.lock_path, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert sync.run_sync(study, quiet=True) is None
        assert cli.main(["sync", str(study_path), "--quiet"]) == 0
    assert not (local / "experiments" / "Digits").exists()   # nothing was pulled
    log = plan.log_path.read_text()
    assert log.count("another sync of this study is running") == 2


def test_remote_commands_over_ssh_come_from_the_study(tmp_path):
    local, remote, study_path = make_project(tmp_path)
    text = study_path.read_text().replace(
        "[sync]\n", '[sync]\nhost = "cluster.example.org"\nuser = "researcher"\n'
                    'ssh_options = ["-p", "2222"]\n')
    study_path.write_text(text)
    plan = sync.SyncPlan(load_study(study_path))
    pull = plan.pull_argv()
    assert pull[:2] == ["rsync", "-a"]
    assert pull[pull.index("-e") + 1] == "ssh -p 2222 -o BatchMode=yes -o ConnectTimeout=30"
    assert pull[-2:] == [f"researcher@cluster.example.org:{remote}/experiments/",
                         f"{local}/experiments/"]
    push = plan.push_argv()
    assert push[-2:] == [f"{local}/", f"researcher@cluster.example.org:{remote}/"]
    for pattern in ("data/", ".venv/", "/experiments/", "/analysis/", "/data/",
                    "/logs/sync.log"):
        assert f"--exclude={pattern}" in push
    queue = plan.queue_argv()
    assert queue[:-1] == ["ssh", "-p", "2222", "-o", "BatchMode=yes", "-o", "ConnectTimeout=30",
                          "--",
                          "researcher@cluster.example.org"]
    script = shlex.split(queue[-1])
    assert script[:2] == ["bash", "-c"]
    assert script[2].splitlines() == [
        "set -e", f"cd {remote}", "export KDLAB_SYNC_TEST=1",
        f"{sys.executable} -m kdlab queue studies/sync.toml"]


def _with_sync_values(study_path: Path, host: str, user: str) -> None:
    text = study_path.read_text().replace(
        "[sync]\n", f"[sync]\nhost = {_toml(host)}\nuser = {_toml(user)}\n")
    study_path.write_text(text)


def _toml(value: str) -> str:
    return json.dumps(value)   # a JSON string is a TOML basic string


@pytest.mark.parametrize("host, user, key", [
    ("-oProxyCommand=touch pwned", "researcher", "sync.host"),
    ("login.example.org", "-oProxyCommand=touch pwned", "sync.user"),
    ("login.example.org\nrm -rf x", "researcher", "sync.host"),
    ("login example.org", "researcher", "sync.host"),
    ("login.example.org", "re searcher", "sync.user"),
    ("login.example.org", "a\tb", "sync.user"),
    ("login.example.org", "other@evil", "sync.user"),
    ("", "researcher", "sync.host"),
])
def test_hostile_host_or_user_is_refused_in_one_line(tmp_path, capsys, host, user, key):
    local, remote, study_path = make_project(tmp_path, remote_runs=False)
    _with_sync_values(study_path, host, user)
    assert cli.main(["sync", str(study_path)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and f"key '{key}'" in err and str(study_path) in err
    assert captured.out == ""
    assert not (local / "logs").exists()        # refused before anything ran or was logged
    assert not list(tmp_path.rglob("pwned"))


def test_ssh_target_comes_after_double_dash(tmp_path):
    local, remote, study_path = make_project(tmp_path)
    _with_sync_values(study_path, "login-1.example.org", "first.last")
    queue = sync.SyncPlan(load_study(study_path)).queue_argv()
    assert queue[-3:-1] == ["--", "first.last@login-1.example.org"]
    assert queue.index("--") == len(queue) - 3    # every option before it


@pytest.mark.parametrize("payload", ["$(touch {m})", "`touch {m}`", "; touch {m}",
                                     "&& touch {m}", "| touch {m}"])
def test_kdlab_command_is_inert_in_the_remote_shell(tmp_path, payload):
    local, remote, study_path = make_project(tmp_path)
    marker = tmp_path / "pwned"
    text = study_path.read_text().replace(
        f'kdlab_command = "{sys.executable} -m kdlab"',
        f"kdlab_command = '{sys.executable} -m kdlab {payload.format(m=marker)}'")
    study_path.write_text(text)
    plan = sync.SyncPlan(load_study(study_path))
    script = plan.queue_script().splitlines()[-1]
    # the payload's words reach the remote as plain arguments of kdlab ...
    assert shlex.split(script)[:3] == [sys.executable, "-m", "kdlab"]
    assert payload.format(m=marker).split()[0] in shlex.split(script)
    # ... and running the remote step (bash -c, as over ssh) runs none of it
    subprocess.run(plan.queue_argv(), cwd=local, capture_output=True, timeout=120)
    assert not marker.exists()
    # over ssh the whole script is one quoted word of 'bash -c'
    _with_sync_values(study_path, "login.example.org", "researcher")
    over_ssh = sync.SyncPlan(load_study(study_path)).queue_argv()[-1]
    assert shlex.split(over_ssh) == ["bash", "-c", plan.queue_script()]


@pytest.mark.parametrize("line", ['kdlab_command = "kdlab\\nrm -rf /"',
                                  "kdlab_command = 'kdlab \"unclosed'",
                                  'kdlab_command = ""'])
def test_unusable_kdlab_command_is_refused(tmp_path, capsys, line):
    local, remote, study_path = make_project(tmp_path)
    text = study_path.read_text().replace(f'kdlab_command = "{sys.executable} -m kdlab"', line)
    study_path.write_text(text)
    assert cli.main(["sync", str(study_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "key 'scheduler.kdlab_command'" in err


# ---- cron ------------------------------------------------------------------------------------


def test_install_and_remove_cron_idempotently(tmp_path, fake_crontab, capsys):
    local, remote, study_path = make_project(tmp_path)
    assert cli.main(["sync", str(study_path), "--install-cron", "--every", "30"]) == 0
    fake_crontab.write_text("0 3 * * * backup.sh\n" + fake_crontab.read_text())
    assert cli.main(["sync", str(study_path), "--install-cron", "--every", "120"]) == 0
    assert cli.main(["sync", str(study_path), "--install-cron", "--every", "20"]) == 0
    lines = fake_crontab.read_text().splitlines()
    assert lines[0] == "0 3 * * * backup.sh"
    entries = [line for line in lines if line.endswith("# kdlab-sync:syncstudy")]
    assert len(entries) == 1 and entries[0].startswith("*/20 * * * * cd ")

    # the installed command itself runs a sync (as cron would, through a shell)
    command = entries[0][len("*/20 * * * * "):-len(" # kdlab-sync:syncstudy")]
    subprocess.run(["bash", "-c", command], check=True, cwd="/", timeout=300)
    assert (local / "experiments" / "Digits" / "pure").is_dir()
    assert "sync syncstudy: all steps ok" in (local / "logs" / "sync.log").read_text()

    assert cli.main(["sync", str(study_path), "--remove-cron"]) == 0
    assert cli.main(["sync", str(study_path), "--remove-cron"]) == 0
    assert fake_crontab.read_text().splitlines() == ["0 3 * * * backup.sh"]
    capsys.readouterr()
    assert cli.main(["sync", str(study_path), "--install-cron", "--every", "90"]) == 2
    assert "--every 90" in capsys.readouterr().err


def test_cron_schedules():
    assert sync.cron_schedule(15) == "*/15 * * * *"
    assert sync.cron_schedule(60) == "0 */1 * * *"
    assert sync.cron_schedule(180) == "0 */3 * * *"
    assert sync.cron_schedule(1440) == "0 0 * * *"
    for bad in (0, 61, 1500):
        with pytest.raises(Exception, match=f"--every {bad}"):
            sync.cron_schedule(bad)


def test_remote_dir_under_the_home_directory(tmp_path):
    """'~/project' on the remote: a path relative to the login directory for rsync and for
    the remote cd (a quoted '~' would not expand there)."""
    local, remote, study_path = make_project(tmp_path)
    text = study_path.read_text().replace(f'remote_dir = "{remote}"',
                                          'remote_dir = "~/kd project/"')
    study_path.write_text(text.replace("[sync]\n", '[sync]\nhost = "login.example.org"\n'))
    plan = sync.SyncPlan(load_study(study_path))
    assert plan.pull_argv()[-2] == "login.example.org:kd project/experiments/"
    assert plan.push_argv()[-1] == "login.example.org:kd project/"
    script = shlex.split(plan.queue_argv()[-1])[2].splitlines()
    assert script[1] == "cd 'kd project'"
    # on this machine (no host) '~' is this user's home
    study_path.write_text(text)
    assert sync.SyncPlan(load_study(study_path)).remote_dir == \
        str(Path("~/kd project").expanduser())


def test_cron_line_escapes_percent_signs(tmp_path, fake_crontab):
    """cron ends a command at its first unescaped '%': a project path holding '%', or
    log_file = "sync-%Y.log", once left an entry that never ran a sync."""
    project_root = tmp_path / "kd 100%"
    project_root.mkdir()
    local, remote, study_path = make_project(project_root)
    study_path.write_text(study_path.read_text().replace('log_file = "logs/sync.log"',
                                                         'log_file = "logs/sync-%Y.log"'))
    assert cli.main(["sync", str(study_path), "--install-cron", "--every", "30"]) == 0
    [entry] = [line for line in fake_crontab.read_text().splitlines()
               if line.endswith("# kdlab-sync:syncstudy")]
    installed = entry[len("*/30 * * * * "):-len(" # kdlab-sync:syncstudy")]

    def as_cron_reads(text: str) -> tuple[str, str | None]:
        """cronie's do_command: '\\%' gives '%', the first bare '%' ends the command (the
        rest is its standard input); other backslashes stay."""
        command, escaped = [], False
        for index, character in enumerate(text):
            if escaped:
                if character == "%":
                    command[-1] = "%"
                else:
                    command.append(character)
                escaped = False
            elif character == "\\":
                command.append(character)
                escaped = True
            elif character == "%":
                return "".join(command), text[index + 1:]
            else:
                command.append(character)
        return "".join(command), None

    command, standard_input = as_cron_reads(installed)
    assert standard_input is None
    assert command == (f"cd {shlex.quote(str(local))} && {shlex.quote(sys.executable)} -m kdlab "
                       f"sync {shlex.quote(str(study_path))} --quiet "
                       f">> {shlex.quote(str(local / 'logs' / 'sync-%Y.log'))} 2>&1")
    # as cron then runs it, through a shell: a sync, logged to the file named literally
    subprocess.run(["/bin/sh", "-c", command], check=True, cwd="/", timeout=300)
    assert "sync syncstudy: all steps ok" in (local / "logs" / "sync-%Y.log").read_text()
    assert (remote / "src" / "code.py").exists()


def test_cron_refuses_what_a_crontab_line_cannot_hold():
    assert sync.cron_command("cd '/a/100%' && run") == "cd '/a/100\\%' && run"
    for command in ("cd '/a\\%b' && run", "cd '/a\nb' && run"):
        with pytest.raises(UserError, match="cron cannot run"):
            sync.cron_command(command)


def _with_remote_dir(study_path: Path, remote: Path, value: str, host: str | None = None):
    text = study_path.read_text().replace(f'remote_dir = "{remote}"',
                                          f"remote_dir = {_toml(value)}")
    if host is not None:
        text = text.replace("[sync]\n", f"[sync]\nhost = {_toml(host)}\n")
    study_path.write_text(text)


@pytest.mark.parametrize("where, reason", [
    ("{local}/mirror", "lies inside the project directory"),
    ("{local}/backup/../mirror/", "lies inside the project directory"),
    ("{local}", "is the project directory itself"),
    ("{tmp}", "contains the project directory"),
    ("..", "contains the project directory"),
    ("/", "is a filesystem root (/)"),
    ("~", "is a home directory"),
])
def test_a_destination_holding_or_inside_the_project_is_refused(tmp_path, capsys, monkeypatch,
                                                                 where, reason):
    """Without a host, a remote_dir inside local_dir nested a new copy on every run
    (mirror/mirror/mirror/); '..', '/' and '~' were accepted and pushed to."""
    local, remote, study_path = make_project(tmp_path)
    monkeypatch.chdir(local)          # '..' as cron's 'cd local_dir' would read it
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    value = where.format(local=local, tmp=tmp_path)
    _with_remote_dir(study_path, remote, value)
    before = sorted(str(path) for path in tmp_path.rglob("*"))
    assert cli.main(["sync", str(study_path)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and captured.out == ""
    assert "key 'sync.remote_dir'" in err and reason in err and str(study_path) in err
    assert sorted(str(path) for path in tmp_path.rglob("*")) == before   # nothing copied


@pytest.mark.parametrize("value", ["/", "~", "~/", "..", "../..", "."])
def test_a_root_or_home_destination_over_ssh_is_refused(tmp_path, capsys, value):
    local, remote, study_path = make_project(tmp_path)
    _with_remote_dir(study_path, remote, value, host="login.example.org")
    assert cli.main(["sync", str(study_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "key 'sync.remote_dir'" in err
    assert "filesystem root, the login's home directory or above it on login.example.org" in err
    assert not (local / "logs").exists()


def test_a_project_beside_the_destination_is_accepted(tmp_path):
    """The checks refuse nesting, not names that merely share a prefix."""
    local, remote, study_path = make_project(tmp_path)
    _with_remote_dir(study_path, remote, f"{local}-mirror")
    assert sync.SyncPlan(load_study(study_path)).remote_dir == f"{local}-mirror"


OLD_RSYNC = """#!/bin/sh
if [ "$1" = "--version" ]; then
  echo "rsync  version 2.6.9  protocol version 29"; exit 0
fi
echo "$@" >> "$FAKE_RSYNC_CALLS"
"""


@pytest.fixture
def old_rsync(tmp_path, monkeypatch):
    bin_dir = tmp_path / "oldbin"
    bin_dir.mkdir()
    (bin_dir / "rsync").write_text(OLD_RSYNC)
    (bin_dir / "rsync").chmod(0o755)
    calls = tmp_path / "rsync-calls.txt"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_RSYNC_CALLS", str(calls))
    return calls


def test_rsync_paths_are_secluded_from_the_remote_shell(tmp_path):
    """rsync >= 3.0.0 here: -s sends the paths through rsync's protocol, so RSYNC_OLD_ARGS
    (or an rsync older than 3.2.4) cannot hand them to the remote shell."""
    local, remote, study_path = make_project(tmp_path)
    _with_remote_dir(study_path, remote, "/srv/kd $(touch x)/`id`", host="login.example.org")
    plan = sync.SyncPlan(load_study(study_path))
    for argv in (plan.pull_argv(), plan.push_argv()):
        assert argv[:3] == ["rsync", "-a", "-s"]
    assert plan.push_argv()[-1] == "login.example.org:/srv/kd $(touch x)/`id`/"


@pytest.mark.parametrize("value", ["/srv/kd $(touch {m})", "/srv/kd`touch {m}`", "/srv/kd x",
                                   "/srv/kd;touch {m}"])
def test_without_secluded_args_a_shell_active_remote_dir_is_refused(tmp_path, capsys,
                                                                    old_rsync, value):
    """An rsync without -s (before 3.0.0) cannot keep the remote shell off the paths: such
    characters are refused in one line, before anything runs."""
    local, remote, study_path = make_project(tmp_path)
    marker = tmp_path / "pwned"
    _with_remote_dir(study_path, remote, value.format(m=marker), host="login.example.org")
    assert cli.main(["sync", str(study_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "key 'sync.remote_dir'" in err
    assert "this rsync has no -s" in err
    assert not old_rsync.exists() and not marker.exists() and not (local / "logs").exists()


def test_without_secluded_args_a_plain_remote_dir_is_pushed_as_before(tmp_path, old_rsync):
    local, remote, study_path = make_project(tmp_path)
    _with_remote_dir(study_path, remote, "/srv/kd-project_1", host="login.example.org")
    plan = sync.SyncPlan(load_study(study_path))
    assert "-s" not in plan.push_argv() and plan.push_argv()[:2] == ["rsync", "-a"]
    assert plan.push_argv()[-1] == "login.example.org:/srv/kd-project_1/"
