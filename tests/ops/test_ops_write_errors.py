"""Write failures of the operations commands end in one line naming the path (exit 2), not
a traceback, and leave nothing half-written: a file where an output directory must be, a
directory where an output file must be, a read-only analysis directory. The translation
lives in the shared atomic writer, so every command that writes through it gets it."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kdlab import cli
from kdlab.run import state_files
from kdlab.run.errors import UserError, WriteError
from kdlab.run.layout import RunSpec
from builders import write_local_study, write_run

SRC = Path(__file__).resolve().parents[2] / "src"


def _one_error_line(capsys, path) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert str(path) in lines[0] and "Traceback" not in captured.err
    return lines[0]


def _study(tmp_path: Path) -> Path:
    path = write_local_study(tmp_path / "study.toml", name="wstudy")
    write_run(tmp_path / "experiments", RunSpec("Digits", "ResNet20", 0))
    return path


def test_writer_error_is_a_user_error_and_keeps_errno(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    with pytest.raises(WriteError) as caught:
        state_files.atomic_write_text(blocker / "sub" / "out.md", "x")
    assert isinstance(caught.value, UserError) and isinstance(caught.value, OSError)
    assert caught.value.errno in (errno.EEXIST, errno.ENOTDIR)
    assert str(caught.value).startswith(f"cannot write {blocker / 'sub' / 'out.md'} (")
    assert str(blocker) in str(caught.value)
    with pytest.raises(WriteError) as caught:
        state_files.atomic_write_text(tmp_path, "x")        # a directory in the file's place
    assert caught.value.errno == errno.EISDIR
    assert [p.name for p in tmp_path.iterdir()] == ["blocker"]   # no temporary file left


def test_methodology_output_dir_that_is_a_file(tmp_path, capsys):
    study = _study(tmp_path)
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    assert cli.main(["methodology", str(study), "--output-dir", str(target)]) == 2
    line = _one_error_line(capsys, target)
    assert "is a file, not a directory" in line
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("command", ["methodology", "plot"])   # one writer serves both
def test_analysis_dir_that_is_a_file(tmp_path, capsys, command):
    study = _study(tmp_path)
    (tmp_path / "analysis").write_text("not a directory")
    assert cli.main([command, str(study)]) == 2
    line = _one_error_line(capsys, tmp_path / "analysis")
    assert f"({tmp_path / 'analysis'} is a file, not a directory)" in line
    assert (tmp_path / "analysis").read_text() == "not a directory"


def test_digest_output_that_is_a_directory(tmp_path, capsys):
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "-C", str(repo), "init", "-q"], check=True)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert cli.main(["digest", "--repo", str(repo), "--output", str(out_dir)]) == 2
    line = _one_error_line(capsys, out_dir)
    assert "Is a directory" in line
    assert list(out_dir.iterdir()) == []
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def _world_readable_copy(tmp_path: Path) -> Path:
    """A study under a world-traversable directory (pytest's tmp_path is 0700), so another
    user can read it."""
    base = Path(os.environ.get("TMPDIR", "/tmp")) / f"kdlab-ro-{os.getpid()}-{tmp_path.name}"
    base.mkdir(mode=0o755)
    study = write_local_study(base / "study.toml", name="rostudy")
    write_run(base / "experiments", RunSpec("Digits", "ResNet20", 0))
    (base / "analysis").mkdir()
    for path in [base, *base.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    (base / "analysis").chmod(0o555)
    return study


def test_methodology_into_a_read_only_analysis_dir(tmp_path):
    """Read-only for real: as an unprivileged user (root ignores permissions, so a root test
    runs the command as 'nobody' through setpriv)."""
    study = _world_readable_copy(tmp_path)
    try:
        argv = [sys.executable, "-m", "kdlab", "methodology", str(study)]
        if os.geteuid() == 0:
            if shutil.which("setpriv") is None:
                pytest.skip("running as root without setpriv: cannot drop privileges to "
                            "make a directory read-only")
            argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] + argv
        env = dict(os.environ, PYTHONPATH=str(SRC), HOME=str(study.parent),
                   MPLCONFIGDIR=str(study.parent / "mpl"))
        result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300,
                                cwd=study.parent)
        if "Permission denied" in result.stderr and "python" in result.stderr.lower() \
                and "kdlab" not in result.stderr:
            pytest.skip(f"the unprivileged user cannot run this Python: {result.stderr[-200:]}")
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr
        assert str(study.parent / "analysis") in lines[0] and "Permission denied" in lines[0]
        assert list((study.parent / "analysis").iterdir()) == []
    finally:
        (study.parent / "analysis").chmod(0o755)
        shutil.rmtree(study.parent)
