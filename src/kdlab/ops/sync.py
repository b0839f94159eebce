"""``kdlab sync STUDY``: keep a remote cluster busy from a laptop's cron.

Steps, in order, all configured by the study's ``[sync]`` table (nothing hard-coded):

0. ``connect`` (with a ``host``) one ``ssh HOST true``: an unreachable host or a refused
   key ends the sync in one line naming the host; the local copy is still plotted, nothing
   is pulled, pushed or queued.
1. ``pull``  rsync the remote experiments tree here (over ssh; never deletes anything here).
2. ``plot``  regenerate the progress figures from the local copy.
3. ``push``  rsync the code to the remote, without data, experiments, analysis, virtual
   environments (``sync.exclude`` plus the study's own data/experiments/analysis paths).
4. ``queue`` run ``kdlab queue STUDY`` on the remote, after ``sync.remote_setup``.

A failed step is logged and reported; the steps that do not depend on it still run (only
``queue`` depends on ``push``: it must not run against half-pushed code). The exit code
is non-zero when any step failed. A lock file stops overlapping runs (a second sync while
one is running logs that and exits 0). Every line goes to ``sync.log_file`` with a
timestamp.

ssh: ``ssh`` is run with ``sync.ssh_options`` (e.g. ``["-p", "2222", "-i", "~/.ssh/cluster"]``
or ``["-F", "ssh_config"]``), so everything in ``~/.ssh/config`` applies as on the command
line; kdlab adds ``BatchMode=yes`` (cron cannot answer a prompt) and ``ConnectTimeout=30``
unless the options set them, and puts ``[user@]host`` after ``--``.

Paths: the study's relative paths are relative to the project directory — ``local_dir``
here, ``remote_dir`` on the remote. With ``host`` unset the "remote" is this machine
(rsync between two local directories, the queue command run locally through bash): that is
how the tests run it. A ``remote_dir`` of ``~/project`` (or a relative one) is the project
under the remote login's home directory, for rsync and the remote shell alike.

``--install-cron [--every MINUTES]`` / ``--remove-cron`` edit the user's crontab through
the ``crontab`` command, idempotently: the entry carries a marker comment naming the study.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import posixpath
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..run.errors import UserError
from ..study.study_file import Study, load_study

STEP_TIMEOUT_SECONDS = 3 * 3600
CONNECT_TIMEOUT = 30     # seconds ssh waits for the host (unless ssh_options say otherwise)
# The atomic writers' temporary files: never worth copying.
_TEMP_PATTERN = ".*.tmp"


@dataclass
class StepResult:
    name: str
    ok: bool
    message: str
    skipped: bool = False


class SyncPlan:
    """Every path and command of one study's sync, derived from its ``[sync]`` table."""

    def __init__(self, study: Study) -> None:
        settings = study.sync
        if not settings.remote_dir:
            raise UserError(f"{study.path}: key 'sync.remote_dir': expected the project "
                            "directory on the remote; it is required for kdlab sync")
        self.study = study
        self.settings = settings
        self.local_dir = Path(settings.local_dir).resolve()
        if not self.local_dir.is_dir():
            raise UserError(f"{study.path}: key 'sync.local_dir': {self.local_dir} is not a "
                            "directory; expected the project directory here")
        _check_values(study)
        self.remote_dir = _remote_directory(settings.remote_dir, settings.host)
        _check_destination(study, self.local_dir, self.remote_dir)
        try:
            self.study_relative = Path(study.path).resolve().relative_to(self.local_dir)
        except ValueError:
            raise UserError(f"study file {study.path} is outside sync.local_dir "
                            f"{self.local_dir}: expected it inside the project, so that it is "
                            "pushed with the code") from None
        log_path = Path(settings.log_file)
        self.log_path = log_path if log_path.is_absolute() else self.local_dir / log_path
        self.lock_path = self.local_dir / f".kdlab-sync-{study.name}.lock"
        self.rsync_secludes_arguments = False
        if settings.host is not None:
            self.rsync_secludes_arguments = _rsync_secludes_arguments()
            if not self.rsync_secludes_arguments:
                for key, path in (("sync.remote_dir", self.remote_dir),
                                  ("experiments_dir", self.remote_path(study.experiments_dir))):
                    _check_shell_inert(study, key, path)

    # ---- paths on either side ----
    def local_path(self, path: Path) -> Path:
        return path if path.is_absolute() else self.local_dir / path

    def remote_path(self, path: Path) -> str:
        return str(path) if path.is_absolute() else f"{self.remote_dir}/{path.as_posix()}"

    def remote_spec(self, remote_path: str) -> str:
        """rsync's name of a remote path: ``[user@]host:path``, or the plain path when the
        remote is this machine."""
        if self.settings.host is None:
            return remote_path
        return f"{self.ssh_target()}:{remote_path}"

    def ssh_target(self) -> str:
        host = self.settings.host
        return f"{self.settings.user}@{host}" if self.settings.user else host

    def ssh_argv(self) -> list[str]:
        """``ssh`` and its options, without the target (rsync appends that itself)."""
        options = list(self.settings.ssh_options)
        # cron cannot answer a password prompt: fail instead of hanging
        for key, value in (("BatchMode", "yes"), ("ConnectTimeout", str(CONNECT_TIMEOUT))):
            if not any(key.lower() in option.lower() for option in options):
                options += ["-o", f"{key}={value}"]
        return ["ssh", *options]

    def ssh_command(self, remote_command: str) -> list[str]:
        """ssh running ``remote_command`` (one shell line) on the remote; the target comes
        after ``--`` so that nothing in it can be read as an option."""
        return self.ssh_argv() + ["--", self.ssh_target(), remote_command]

    def rsync_base(self) -> list[str]:
        argv = ["rsync", "-a", f"--exclude={_TEMP_PATTERN}"]
        if self.settings.host is not None:
            # -s (--secluded-args, formerly --protect-args) sends the paths through rsync's
            # own protocol, never through the remote shell, whatever RSYNC_OLD_ARGS says
            argv[2:2] = ["-s"] if self.rsync_secludes_arguments else []
            argv += ["-e", shlex.join(self.ssh_argv())]
        return argv

    # ---- the commands of the steps ----
    def pull_argv(self) -> list[str]:
        source = self.remote_spec(self.remote_path(self.study.experiments_dir))
        target = self.local_path(self.study.experiments_dir)
        return self.rsync_base() + [source.rstrip("/") + "/", f"{target}/"]

    def push_excludes(self) -> list[str]:
        excludes = list(self.settings.exclude)
        for path in (self.study.data_root, self.study.experiments_dir, self.study.analysis_dir):
            if not path.is_absolute():
                excludes.append(f"/{path.as_posix().strip('/')}/")   # anchored at the project
        for own in (self.log_path, self.lock_path):
            try:
                excludes.append("/" + own.relative_to(self.local_dir).as_posix())
            except ValueError:
                pass
        return excludes

    def push_argv(self) -> list[str]:
        argv = self.rsync_base() + [f"--exclude={pattern}" for pattern in self.push_excludes()]
        return argv + [f"{self.local_dir}/", self.remote_spec(self.remote_dir) + "/"]

    def queue_script(self) -> str:
        lines = ["set -e", f"cd {shlex.quote(self.remote_dir)}"]
        lines += list(self.settings.remote_setup)
        # the words of kdlab_command, each quoted: '$(...)', ';' or a backtick stay inert text
        kdlab = shlex.join(shlex.split(self.study.scheduler.kdlab_command))
        lines.append(f"{kdlab} queue {shlex.quote(self.study_relative.as_posix())}")
        return "\n".join(lines)

    def queue_argv(self) -> list[str]:
        if self.settings.host is None:
            return ["bash", "-c", self.queue_script()]
        return self.ssh_command("bash -c " + shlex.quote(self.queue_script()))


def _remote_directory(remote_dir: str, host: str | None) -> str:
    """The project directory on the remote as rsync and ``cd`` both read it: over ssh a
    leading ``~/`` becomes a path relative to the login directory (the home directory;
    quoted, ``cd '~/x'`` would look for a directory named '~'); on this machine ``~`` is
    expanded here."""
    remote_dir = remote_dir.rstrip("/") or "/"
    if host is None:
        return str(Path(remote_dir).expanduser())
    if remote_dir == "~":
        return "."
    return remote_dir[2:] if remote_dir.startswith("~/") else remote_dir


# rsync gained -s (then --protect-args) in 3.0.0; the remote rsync must be 3.0.0 or newer too.
_SECLUDED_ARGS_SINCE = (3, 0, 0)
# What a remote shell reads as plain text in an unquoted word: letters, digits and these.
_SHELL_INERT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                         "_-./+,:=@%")


def _rsync_secludes_arguments() -> bool:
    """Whether this machine's rsync has ``-s`` (3.0.0 and newer, from ``rsync --version``);
    False when rsync is missing or its version cannot be read (the sync step reports a
    missing rsync itself)."""
    try:
        result = subprocess.run(["rsync", "--version"], capture_output=True, text=True,
                                timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    words = (result.stdout.splitlines() or [""])[0].split()
    if result.returncode != 0 or "version" not in words[:-1]:
        return False
    number = words[words.index("version") + 1].lstrip("v")
    try:
        version = tuple(int(part) for part in number.split("-")[0].split(".")[:3])
    except ValueError:
        return False
    return version >= _SECLUDED_ARGS_SINCE


def _check_shell_inert(study: Study, key: str, remote_path: str) -> None:
    """Without rsync's -s the remote shell reads the remote paths (old-args behaviour): refuse
    any character it would read as more than text (``$(...)``, a backtick, a space ...)."""
    odd = sorted({character for character in remote_path if character not in _SHELL_INERT})
    if odd:
        raise UserError(f"{study.path}: key '{key}': {remote_path!r} holds "
                        f"{' '.join(repr(c) for c in odd)}, which the remote shell would read "
                        "(this rsync has no -s to protect paths, 3.0.0 has); expected letters, "
                        "digits and _-./+,:=@% only")


def _home_directories() -> set[Path]:
    """This user's home and every account's home directory that this machine knows."""
    homes = {Path.home().resolve()}
    try:
        import pwd
        homes |= {Path(entry.pw_dir).resolve() for entry in pwd.getpwall()
                  if entry.pw_dir not in ("", "/")}
    except (ImportError, OSError):
        pass
    return homes


def _check_destination(study: Study, local_dir: Path, remote_dir: str) -> None:
    """Refuse a push destination that would nest the project in itself or scatter it over a
    filesystem root or a home directory, in one line, before anything is copied. Without a
    host the destination is a directory here: it must neither contain ``local_dir`` nor lie
    inside it (rsync would copy the previous copy into the next, mirror/mirror/...). With a
    host only its text is known: '/', '~' (the login directory) and '..' are refused."""
    def fail(reason: str) -> None:
        raise UserError(f"{study.path}: key 'sync.remote_dir': {study.sync.remote_dir!r} "
                        f"{reason}; expected a project directory of its own, outside "
                        f"sync.local_dir {local_dir}")

    if study.sync.host is not None:
        normal = posixpath.normpath(remote_dir)
        if normal == "/" or normal == "." or normal == ".." or normal.startswith("../"):
            fail("is a filesystem root, the login's home directory or above it on "
                 f"{study.sync.host}")
        return
    destination = Path(remote_dir).resolve()
    if destination.parent == destination:
        fail(f"is a filesystem root ({destination})")
    if destination in _home_directories():
        fail(f"is a home directory ({destination})")
    if destination == local_dir:
        fail("is the project directory itself")
    if local_dir in destination.parents:
        fail(f"lies inside the project directory ({destination}): every sync would push a "
             "copy into the last one")
    if destination in local_dir.parents:
        fail(f"contains the project directory ({destination})")


def _has_control(text: str) -> bool:
    return any(ord(character) < 32 or ord(character) == 127 for character in text)


def _check_values(study: Study) -> None:
    """Refuse ``[sync]`` and ``kdlab_command`` values that could change what the ssh, rsync
    or remote shell command means: a host or user read as an option (leading ``-``) or
    holding whitespace, control characters or ``@``; control characters (a newline is a
    second shell line) anywhere else."""
    settings = study.sync

    def fail(key: str, value: str, expected: str) -> None:
        raise UserError(f"{study.path}: key '{key}': expected {expected}, found {value!r}")

    for key, value in (("sync.host", settings.host), ("sync.user", settings.user)):
        if value is None:
            continue
        if (not value or value.startswith("-") or _has_control(value)
                or any(character.isspace() or character in "@/" for character in value)):
            fail(key, value, "a name without spaces, control characters, '@' or '/' that "
                             "does not start with '-'")
    if settings.user is not None and ":" in settings.user:
        fail("sync.user", settings.user, "a user name without ':'")
    if settings.remote_dir.startswith("-") or _has_control(settings.remote_dir):
        fail("sync.remote_dir", settings.remote_dir,
             "a directory without control characters that does not start with '-'")
    for key, values in (("sync.remote_setup", settings.remote_setup),
                        ("sync.ssh_options", settings.ssh_options)):
        for value in values:
            if _has_control(value):
                fail(key, value, "one line per entry, without control characters")
    command = study.scheduler.kdlab_command
    try:
        words = shlex.split(command)
    except ValueError as error:
        words = []
        fail("scheduler.kdlab_command", command, f"a command line shlex can split ({error})")
    if not words or _has_control(command):
        fail("scheduler.kdlab_command", command,
             "a command (e.g. 'kdlab' or 'python -m kdlab') without control characters")


# ---- running ---------------------------------------------------------------------------------

class SyncLog:
    """Timestamped lines appended to the log file (and echoed unless quiet)."""

    def __init__(self, path: Path, quiet: bool) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(path, "a", encoding="utf-8", buffering=1)
        self.quiet = quiet

    def __call__(self, message: str, echo: bool = True) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        for line in message.splitlines() or [""]:
            self.handle.write(f"{stamp} {line}\n")
        if echo and not self.quiet:
            print(message, flush=True)

    def close(self) -> None:
        self.handle.close()


def _run_step(name: str, argv: list[str], log: SyncLog, cwd: Path) -> StepResult:
    log(f"[{name}] {shlex.join(argv)}", echo=False)
    try:
        result = subprocess.run(argv, capture_output=True, text=True, cwd=cwd,
                                timeout=STEP_TIMEOUT_SECONDS)
    except FileNotFoundError:
        return StepResult(name, False, f"{argv[0]} not found on PATH")
    except subprocess.TimeoutExpired:
        return StepResult(name, False, f"no answer within {STEP_TIMEOUT_SECONDS} s")
    output = (result.stdout + result.stderr).strip()
    if output:
        log("\n".join(f"[{name}]   {line}" for line in output.splitlines()), echo=False)
    if result.returncode != 0:
        last = " ".join(output.splitlines()[-1:]) or "no message"
        return StepResult(name, False, f"exit status {result.returncode}: {last}")
    return StepResult(name, True, "ok")


def _plot_step(plan: SyncPlan, log: SyncLog) -> StepResult:
    from .plots import format_report, plot_study

    local_study = dataclasses.replace(
        plan.study, experiments_dir=plan.local_path(plan.study.experiments_dir),
        analysis_dir=plan.local_path(plan.study.analysis_dir))
    try:
        report = plot_study(local_study)
    except Exception as error:  # a plotting bug must not stop the push and the queue
        return StepResult("plot", False, f"{type(error).__name__}: {error}")
    log("\n".join(f"[plot]   {line}" for line in format_report(report).splitlines()[:3]),
        echo=False)
    return StepResult("plot", True, f"{len(report.written)} curves drawn, "
                                    f"{len(report.unchanged)} unchanged")


def _connect_step(plan: SyncPlan, log: SyncLog, step_runner) -> StepResult:
    """``ssh HOST true``: the one place an unreachable host or a refused key shows, named."""
    result = step_runner("connect", plan.ssh_command("true"), log, plan.local_dir)
    if result.ok:
        return result
    reason = result.message.split(": ", 1)[1] if result.message.startswith("exit status") \
        else result.message
    return StepResult("connect", False, f"cannot reach {plan.ssh_target()} over ssh: {reason}")


def _rsync_step(name: str, argv: list[str], plan: SyncPlan, log: SyncLog,
                step_runner) -> StepResult:
    if shutil.which("rsync") is None:
        return StepResult(name, False, "rsync not found on PATH")
    return step_runner(name, argv, log, plan.local_dir)


def run_sync(study: Study, *, quiet: bool = False,
             step_runner: Callable[..., StepResult] = _run_step) -> list[StepResult] | None:
    """Run the steps under the lock; the results, or None when another sync of this study
    holds the lock."""
    plan = SyncPlan(study)
    log = SyncLog(plan.log_path, quiet)
    lock = open(plan.lock_path, "a")
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"sync {study.name}: another sync of this study is running "
                f"(lock {plan.lock_path}); skipped")
            return None
        log(f"sync {study.name}: start")
        results = _run_steps(plan, log, step_runner)
        connect = results[0] if results[0].name == "connect" else None
        failed = [r.name for r in results if not r.ok]
        if connect is not None and not connect.ok:
            log(f"sync {study.name}: {connect.message}; pulled, pushed and queued nothing")
        else:
            log(f"sync {study.name}: " + (f"FAILED steps: {', '.join(failed)}" if failed
                                          else "all steps ok"))
        return results
    finally:
        lock.close()   # releases the lock
        log.close()


def _run_steps(plan: SyncPlan, log: SyncLog, step_runner) -> list[StepResult]:
    """connect (with a host), pull, plot, push, queue; each result logged as it ends."""
    results = []

    def record(result: StepResult) -> StepResult:
        results.append(result)
        log(f"{result.name}: {result.message}")
        return result

    reachable = True
    if plan.settings.host is not None:
        reachable = record(_connect_step(plan, log, step_runner)).ok
    unreachable = StepResult("", False, f"skipped: {plan.ssh_target()} cannot be reached",
                             skipped=True)
    plan.local_path(plan.study.experiments_dir).mkdir(parents=True, exist_ok=True)
    if reachable:
        record(_rsync_step("pull", plan.pull_argv(), plan, log, step_runner))
    else:
        record(dataclasses.replace(unreachable, name="pull"))
    record(_plot_step(plan, log))
    if reachable:
        push = record(_rsync_step("push", plan.push_argv(), plan, log, step_runner))
    else:
        push = record(dataclasses.replace(unreachable, name="push"))
    if push.ok:
        record(step_runner("queue", plan.queue_argv(), log, plan.local_dir))
    elif reachable:
        record(StepResult("queue", False, "skipped: the code push failed, so the remote "
                                          "would queue with stale or half-copied code",
                          skipped=True))
    else:
        record(dataclasses.replace(unreachable, name="queue"))
    return results


# ---- cron ----------------------------------------------------------------------------------------

def cron_marker(study: Study) -> str:
    return f"# kdlab-sync:{study.name}"


def cron_schedule(every_minutes: int) -> str:
    """Cron time fields for 'every N minutes' (N < 60, or whole hours up to a day)."""
    if 1 <= every_minutes < 60:
        return f"*/{every_minutes} * * * *"
    if every_minutes >= 60 and every_minutes % 60 == 0 and every_minutes <= 24 * 60:
        hours = every_minutes // 60
        return "0 0 * * *" if hours == 24 else f"0 */{hours} * * *"
    raise UserError(f"--every {every_minutes}: expected 1-59 minutes or whole hours up to "
                    "1440 (cron cannot express other intervals)")


def cron_line(study: Study, every_minutes: int) -> str:
    plan = SyncPlan(study)
    command = (f"cd {shlex.quote(str(plan.local_dir))} && {shlex.quote(sys.executable)} -m kdlab "
               f"sync {shlex.quote(str(Path(study.path).resolve()))} --quiet "
               f">> {shlex.quote(str(plan.log_path))} 2>&1")
    return f"{cron_schedule(every_minutes)} {cron_command(command)} {cron_marker(study)}"


def cron_command(command: str) -> str:
    """``command`` as a crontab line must spell it: cron ends the command at the first
    unescaped '%' (the rest becomes its input) and turns '\\%' into '%', so every '%' is
    written '\\%'. A backslash right before a '%' (cron would keep both and cut there) or a
    control character (a line break ends the entry) cannot be written: UserError."""
    if "\\%" in command or _has_control(command):
        raise UserError(f"cron cannot run {command!r}: it holds a backslash before '%' or a "
                        "control character; expected paths without them")
    return command.replace("%", "\\%")


def _read_crontab() -> str:
    if shutil.which("crontab") is None:
        raise UserError("crontab not found on PATH: install cron to schedule kdlab sync")
    result = subprocess.run(["crontab", "-l"], capture_output=True, text=True)
    if result.returncode != 0:
        if "no crontab" in (result.stderr + result.stdout).lower():
            return ""
        raise UserError(f"crontab -l failed: {result.stderr.strip() or result.returncode}")
    return result.stdout


def _write_crontab(text: str) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".cron", delete=False) as handle:
        handle.write(text)
        name = handle.name
    try:
        result = subprocess.run(["crontab", name], capture_output=True, text=True)
    finally:
        os.unlink(name)
    if result.returncode != 0:
        raise UserError(f"crontab could not install the new table: "
                        f"{result.stderr.strip() or result.returncode}")


def edit_crontab(study: Study, every_minutes: int | None) -> str | None:
    """Remove the study's entry, then (``every_minutes`` given) add it again. Returns the
    installed line (None when removed). Lines of other studies and users are kept."""
    marker = cron_marker(study)
    kept = [line for line in _read_crontab().splitlines() if not line.endswith(marker)]
    line = cron_line(study, every_minutes) if every_minutes is not None else None
    if line is not None:
        kept.append(line)
        # the entry appends its output to the log: its folder must exist before the first run
        SyncPlan(study).log_path.parent.mkdir(parents=True, exist_ok=True)
    _write_crontab("\n".join(kept) + ("\n" if kept else ""))
    return line


def command(args) -> int:
    study = load_study(args.study)
    if args.install_cron and args.remove_cron:
        raise UserError("--install-cron and --remove-cron: expected one of them, not both")
    if args.install_cron:
        line = edit_crontab(study, args.every)
        print(f"crontab entry installed (every {args.every} min):\n{line}")
        return 0
    if args.remove_cron:
        edit_crontab(study, None)
        print(f"crontab entry of {study.name} removed (if there was one)")
        return 0
    results = run_sync(study, quiet=getattr(args, "quiet", False))
    if results is None:
        return 0
    return 0 if all(result.ok for result in results) else 1
