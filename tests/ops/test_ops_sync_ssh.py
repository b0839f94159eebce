"""kdlab sync over a real ssh connection, as from a laptop to a cluster's login node.

The test starts OpenSSH's ``sshd`` on 127.0.0.1 on a free port, as the current user, with
a host key and an authorized key made in a temporary directory. The "laptop" side reaches
it through an ssh config file the test writes (host alias, port, identity, its own
``known_hosts`` with strict checking), named in the study's ``sync.ssh_options`` the way a
researcher points kdlab at their own config. Skipped, with the reason, only where sshd
cannot run here.
"""

from __future__ import annotations

import getpass
import os
import shlex
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from kdlab import cli
from kdlab.run.layout import run_dir
from kdlab.ops.plots import CURVES_FILE
from kdlab.study.study_file import load_study
from builders import make_project

SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)
SRC = Path(__file__).resolve().parents[2] / "src"
HOST_ALIAS = "loginnode"

pytestmark = pytest.mark.skipif(
    SSHD is None or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None
    or shutil.which("rsync") is None,
    reason="needs openssh-server, openssh-client and rsync (apt-get install openssh-server "
           "rsync)")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kdlab-test",
                    "-f", str(path)], check=True, capture_output=True)


class Sshd:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.user = getpass.getuser()
        self.log = root / "sshd.log"
        _keygen(root / "host_key")
        _keygen(root / "user_key")
        _keygen(root / "other_key")           # never authorized
        (root / "authorized_keys").write_text((root / "user_key.pub").read_text())
        host_public = (root / "host_key.pub").read_text().split()
        (root / "known_hosts").write_text(
            f"[127.0.0.1]:{self.port} {host_public[0]} {host_public[1]}\n")
        (root / "sshd_config").write_text(f"""\
ListenAddress 127.0.0.1
Port {self.port}
HostKey {root / 'host_key'}
AuthorizedKeysFile {root / 'authorized_keys'}
PidFile {root / 'sshd.pid'}
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
""")

    def start(self) -> None:
        if os.geteuid() == 0 and not os.path.isdir("/run/sshd"):
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)   # sshd's privsep directory
        self.process = subprocess.Popen(
            [SSHD, "-D", "-f", str(self.root / "sshd_config"), "-E", str(self.log)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                reason = (self.log.read_text() if self.log.exists() else "") or \
                    self.process.stdout.read().decode(errors="replace")
                pytest.skip(f"sshd cannot run here: {reason.strip()[-300:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        pytest.skip("sshd did not listen within 20 s")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def ssh_config(self, path: Path, *, key: str = "user_key", port: int | None = None) -> Path:
        path.write_text(f"""\
Host {HOST_ALIAS}
    HostName 127.0.0.1
    Port {port or self.port}
    IdentityFile {self.root / key}
    IdentitiesOnly yes
    UserKnownHostsFile {self.root / 'known_hosts'}
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
""")
        return path

    def accepted(self) -> int:
        return self.log.read_text().count(f"Accepted publickey for {self.user} from 127.0.0.1")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = Sshd(tmp_path_factory.mktemp("sshd"))
    server.start()
    yield server
    server.stop()


def ssh_project(tmp_path: Path, sshd: Sshd, *, remote_runs: bool = True, **config):
    """make_project's laptop/login-node pair, the remote reached over ssh: the study names
    the host alias, the user and the ssh config; the remote setup puts this checkout's kdlab
    on the path (as a researcher's remote_setup activates their environment) and records
    that it ran in an ssh session."""
    local, remote, study_path = make_project(tmp_path, remote_runs=remote_runs)
    ssh_config = sshd.ssh_config(tmp_path / "ssh_config", **config)
    setup = [f"export PYTHONPATH={shlex.quote(str(SRC))}",
             'echo "$SSH_CONNECTION" > came_over_ssh.txt']
    text = study_path.read_text().replace(
        'remote_setup = ["export KDLAB_SYNC_TEST=1"]\n',
        f"remote_setup = {_toml_list(setup)}\n"
        f'host = "{HOST_ALIAS}"\nuser = "{sshd.user}"\n'
        f"ssh_options = {_toml_list(['-F', str(ssh_config)])}\n")
    assert "ssh_options" in text
    study_path.write_text(text)
    return local, remote, study_path


def _toml_list(values: list[str]) -> str:
    import json
    return json.dumps(values)


def _log(local: Path) -> list[str]:
    """The sync log's lines without their timestamps."""
    return [line.split(" ", 2)[2] for line in
            (local / "logs" / "sync.log").read_text().splitlines()]


def test_sync_over_ssh_pulls_plots_pushes_and_queues(tmp_path, sshd):
    local, remote, study_path = ssh_project(tmp_path, sshd)
    before = sshd.accepted()
    assert cli.main(["sync", str(study_path), "--quiet"]) == 0

    study = load_study(study_path)
    for spec in study.runs():   # pulled over ssh, byte for byte, and plotted here
        for name in ("status.json", "metrics.json"):
            assert (run_dir(local / "experiments", spec) / name).read_bytes() == \
                (run_dir(remote / "experiments", spec) / name).read_bytes()
        assert (run_dir(local / "experiments", spec) / CURVES_FILE).exists()
    assert (remote / "src" / "code.py").read_text() == "print('new code')\n"   # pushed
    assert not (remote / "data").exists() and not (remote / ".venv").exists()
    # the remote queue ran in an ssh session, in the remote project, on the pushed study
    assert (remote / "came_over_ssh.txt").read_text().startswith("127.0.0.1 ")
    log = _log(local)
    for summary in ("connect: ok", "pull: ok", "plot: 3 curves drawn, 0 unchanged", "push: ok",
                    "queue: ok"):
        assert log.count(summary) == 1, summary
    assert any(line.startswith("[queue]   ") and "syncstudy" in line for line in log)
    assert log[-1] == "sync syncstudy: all steps ok"
    assert sshd.accepted() - before == 4       # connect, pull, push, queue

    # a second pass finds the curves drawn and the code unchanged
    assert cli.main(["sync", str(study_path), "--quiet"]) == 0
    assert _log(local).count("plot: 0 curves drawn, 3 unchanged") == 1


def test_installed_cron_line_syncs_over_ssh(tmp_path, sshd, fake_crontab):
    local, remote, study_path = ssh_project(tmp_path, sshd)
    assert cli.main(["sync", str(study_path), "--install-cron", "--every", "15"]) == 0
    entries = [line for line in fake_crontab.read_text().splitlines()
               if line.endswith("# kdlab-sync:syncstudy")]
    assert len(entries) == 1 and entries[0].startswith("*/15 * * * * ")
    command = entries[0][len("*/15 * * * * "):-len(" # kdlab-sync:syncstudy")]
    # as cron runs it: /bin/sh, a minimal environment, from the home directory
    env = {"HOME": os.environ.get("HOME", "/"), "LOGNAME": sshd.user, "SHELL": "/bin/sh",
           "PATH": "/usr/bin:/bin"}
    if os.environ.get("PYTHONPATH"):   # how this test process finds kdlab (an install would)
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    before = sshd.accepted()
    result = subprocess.run(["/bin/sh", "-c", command], env=env, cwd=env["HOME"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-2000:]
    assert (run_dir(local / "experiments", load_study(study_path).runs()[0]) / CURVES_FILE).exists()
    assert (remote / "came_over_ssh.txt").exists()
    assert _log(local)[-1] == "sync syncstudy: all steps ok"
    assert sshd.accepted() - before == 4


def _assert_refused_in_one_line(local, remote, study_path, capsys, expected_reason):
    assert cli.main(["sync", str(study_path)]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    target = f"{getpass.getuser()}@{HOST_ALIAS}"
    assert out[-1].startswith(f"sync syncstudy: cannot reach {target} over ssh: ")
    assert expected_reason in out[-1] and out[-1].endswith("; pulled, pushed and queued nothing")
    log = _log(local)
    summaries = [line for line in log if not line.startswith("[")]   # not the commands
    assert summaries[1].startswith(f"connect: cannot reach {target} over ssh: ")
    assert [line.split(":")[0] for line in summaries[1:-1]] == [
        "connect", "pull", "plot", "push", "queue"]
    for step in ("pull", "push", "queue"):
        assert f"{step}: skipped: {target} cannot be reached" in log
    assert "plot: 0 curves drawn, 0 unchanged" in log     # the local copy is still plotted
    assert log[-1] == out[-1]
    assert not (remote / "src").exists() and not (remote / "came_over_ssh.txt").exists()


def test_refused_key_ends_in_one_line_naming_the_host(tmp_path, sshd, capsys):
    local, remote, study_path = ssh_project(tmp_path, sshd, remote_runs=False, key="other_key")
    _assert_refused_in_one_line(local, remote, study_path, capsys, "Permission denied")
    assert f"Failed publickey for {sshd.user}" in sshd.log.read_text() or \
        "Connection closed by authenticating user" in sshd.log.read_text()


def test_unreachable_host_ends_in_one_line_naming_the_host(tmp_path, sshd, capsys):
    local, remote, study_path = ssh_project(tmp_path, sshd, remote_runs=False,
                                            port=_free_port())   # nothing listens there
    _assert_refused_in_one_line(local, remote, study_path, capsys, "Connection refused")


@pytest.mark.parametrize("payload", ["$(touch {marker})", "`touch {marker}`"])
def test_remote_dir_reaches_no_remote_shell_with_old_args_rsync(tmp_path, sshd, monkeypatch,
                                                                 payload):
    """rsync's old-args behaviour (rsync < 3.2.4, or RSYNC_OLD_ARGS=1) hands the remote path
    to the remote shell unquoted: '$(...)' and backticks in remote_dir ran there."""
    local, remote, study_path = ssh_project(tmp_path, sshd)
    marker = tmp_path / "pwned"
    odd_remote = Path(f"{tmp_path}/remote {payload.format(marker=marker)}")
    odd_remote.mkdir(parents=True)            # a directory with that very name, literally
    shutil.copytree(remote / "experiments", odd_remote / "experiments")
    study_path.write_text(study_path.read_text().replace(f'remote_dir = "{remote}"',
                                                         f"remote_dir = '{odd_remote}'"))
    monkeypatch.setenv("RSYNC_OLD_ARGS", "1")
    exit_code = cli.main(["sync", str(study_path), "--quiet"])
    assert not marker.exists()                # the payload never ran ...
    assert exit_code == 0, _log(local)[-3:]   # ... and the paths reached rsync whole
    # pulled from and pushed to the directory of that name
    study = load_study(study_path)
    for spec in study.runs():
        assert (run_dir(local / "experiments", spec) / "status.json").read_bytes() == \
            (run_dir(odd_remote / "experiments", spec) / "status.json").read_bytes()
    assert (odd_remote / "src" / "code.py").read_text() == "print('new code')\n"
    assert (odd_remote / "came_over_ssh.txt").exists()
