"""Job-script injection: every study string that reaches a Slurm or PBS job script, given
a line break, ``$(...)``, backticks or ``;``, is either refused in one line naming its key
or inert. Inert is shown twice: in the rendered script (directive values stay inside
``#`` lines, shell values inside single quotes) and by running the submitted scripts with
``bash`` through fake ``sbatch``/``qsub`` executables: the payload would create a marker
file, and the marker must not exist afterwards.

``scheduler.setup`` is the user's own shell by design (module loads, venv activation):
its lines run as written, which one test shows; a line break in one is still refused."""

from __future__ import annotations

import json
import os
import shlex
import sys
import textwrap
from pathlib import Path

import pytest

from kdlab.cli import main

BACKENDS = ("slurm", "pbs")

# Runs the submitted script with bash, as the job would (synchronously: it is a fake).
FAKE_SUBMIT = """#!{python}
import os, subprocess, sys
from pathlib import Path
here = Path(__file__).parent
count = here / "count"
n = int(count.read_text()) + 1 if count.exists() else 501
count.write_text(str(n))
script = sys.argv[-1]
with open(here / "scripts.log", "a") as log:
    log.write(script + "\\n")
subprocess.run(["bash", script], cwd=os.getcwd(), stdout=subprocess.DEVNULL,
               stderr=subprocess.DEVNULL)
print(f"{{n}}.server" if Path(sys.argv[0]).name == "qsub" else n)
"""
FAKE_QUIET = "#!/bin/sh\nexit 0\n"


@pytest.fixture
def fake_schedulers(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("sbatch", "qsub"):
        (bin_dir / name).write_text(FAKE_SUBMIT.format(python=sys.executable))
    for name in ("squeue", "scontrol", "scancel", "qstat", "qrls", "qdel"):
        (bin_dir / name).write_text(FAKE_QUIET)
    for path in bin_dir.iterdir():
        path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    return bin_dir


def payloads(marker: Path) -> dict[str, str]:
    touch = f"touch {marker}"
    return {"newline": f"x\n{touch}", "subshell": f"x$({touch})", "backticks": f"x`{touch}`",
            "semicolon": f"x; {touch}"}


def toml_value(value) -> str:
    return json.dumps(value)  # a JSON string or list of strings is valid TOML


def write_study(tmp_path: Path, backend: str, **fields) -> Path:
    """A two-run study (teacher + pure student) whose training command is ``true``;
    ``fields`` are scheduler keys, or top-level keys when named so."""
    top = {"experiments_dir": str(tmp_path / "experiments"), "data_root": "data"}
    for key in ("experiments_dir", "data_root"):
        if key in fields:
            top[key] = fields.pop(key)
    scheduler = {"backend": backend, "kdlab_command": "true", "memory": "1GB",
                 "walltime": "00:10:00", **fields}
    lines = [f"{key} = {toml_value(value)}" for key, value in top.items()]
    lines += ["[scheduler]"] + [f"{key} = {toml_value(value)}" for key, value in scheduler.items()]
    path = tmp_path / f"study-{backend}.toml"
    path.write_text(textwrap.dedent("""\
        name = "inject"
        datasets = ["Digits"]
        teacher = "ResNet20"
        student = "ResNet8"
        seeds = [0]
        """) + "\n".join(lines) + "\n")
    return path


# Study keys and the payloads each must refuse (every payload for directive fields; a line
# break for values that are quoted or run as the user's own shell).
REFUSED = {
    "queue": ("newline", "subshell", "backticks", "semicolon"),
    "account": ("newline", "subshell", "backticks", "semicolon"),
    "walltime": ("newline", "subshell", "backticks", "semicolon"),
    "memory": ("newline", "subshell", "backticks", "semicolon"),
    "experiments_dir": ("newline", "subshell", "backticks", "semicolon"),
    "extra_directives": ("newline",),
    "setup": ("newline",),
    "kdlab_command": ("newline",),
    "data_root": ("newline",),
    "template": ("newline",),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("key", sorted(REFUSED))
def test_unsafe_values_are_refused_in_one_line_naming_the_key(tmp_path, fake_schedulers,
                                                              backend, key, capsys):
    marker = tmp_path / "marker"
    for name in REFUSED[key]:
        value = payloads(marker)[name]
        if key in ("walltime", "memory"):
            value = ("00:10:00" if key == "walltime" else "1GB") + value[1:]
        elif key == "experiments_dir":
            value = str(tmp_path / "exp") + value[1:]
        study = write_study(tmp_path, backend,
                            **{key: [value] if key in ("extra_directives", "setup") else value})
        for argv in (["queue", "--dry-run", str(study)], ["queue", str(study)],
                     ["status", str(study)]):
            assert main(argv) == 2, (key, name, argv)
            err = capsys.readouterr().err
            assert len(err.strip().splitlines()) == 1, err
            full_key = key if key in ("experiments_dir", "data_root") else f"scheduler.{key}"
            assert f"key '{full_key}'" in err, err
    assert not marker.exists()
    assert not (fake_schedulers / "scripts.log").exists()  # nothing was submitted


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("payload", ("subshell", "backticks", "semicolon"))
def test_accepted_values_are_inert_in_the_script_and_when_it_runs(tmp_path, fake_schedulers,
                                                                  backend, payload, capsys):
    marker = tmp_path / "marker"
    value = payloads(marker)[payload]
    study = write_study(tmp_path, backend, extra_directives=[f"--comment={value}"],
                        kdlab_command=f"true {value}", data_root=value)
    assert main(["queue", "--dry-run", "--show-script", str(study)]) == 0
    shown = capsys.readouterr().out
    assert main(["queue", str(study)]) == 0, capsys.readouterr()
    scripts = [Path(line) for line in (fake_schedulers / "scripts.log").read_text().splitlines()]
    assert len(scripts) == 2  # the teacher and the pure student ran (as far as `true` goes)
    assert not marker.exists(), "a study value ran as a shell command"
    prefix = "#SBATCH" if backend == "slurm" else "#PBS"
    for script in scripts:
        text = script.read_text()
        assert text in shown  # --dry-run --show-script printed exactly what was submitted
        lines = text.splitlines()
        body = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
        header = lines[1:lines.index("")]
        # The directive block is whole, before any command, and holds the study's directive.
        assert all(line.startswith(prefix) for line in header), header
        assert len(header) >= 6 and f"{prefix} --comment={value}" in header
        assert not any(line.startswith(prefix) for line in lines[len(header) + 1:])
        assert body > len(header)
        # The values in shell lines are single words of the exec line, quoted.
        exec_line = next(line for line in lines if line.startswith("exec "))
        words = shlex.split(exec_line)
        command_words = shlex.split(f"true {value}")  # kdlab_command, word by word
        start = words.index("true")  # after any wrapper such as PBS's timeout
        end = start + len(command_words)
        assert words[start:end] == command_words and words[end:end + 2] == ["train", "--config"]
        # The run's settings reach the job in its config.json, never as shell words.
        config = json.loads(Path(words[words.index("--config") + 1]).read_text())
        assert config["data_root"] == value
        assert lines.count(exec_line) == 1 and lines[-1] == exec_line
        for line in lines[body:]:
            assert value not in line or line == exec_line, line


@pytest.mark.parametrize("backend", BACKENDS)
def test_setup_lines_are_the_users_own_shell(tmp_path, fake_schedulers, backend, capsys):
    """Documented: setup lines run as written (they load modules and activate venvs)."""
    marker = tmp_path / "setup-ran"
    study = write_study(tmp_path, backend, setup=[f"touch {shlex.quote(str(marker))}"])
    assert main(["queue", str(study)]) == 0, capsys.readouterr()
    assert marker.exists()


def test_show_script_needs_dry_run_and_shows_template_errors(tmp_path, fake_schedulers, capsys):
    template = tmp_path / "job.tmpl"
    template.write_text("#!/bin/bash\n#SBATCH --time={walltime}\n{setup}\nexec {command} {oops}\n")
    study = write_study(tmp_path, "slurm", template=str(template))
    assert main(["queue", "--show-script", str(study)]) == 2
    assert "--show-script needs --dry-run" in capsys.readouterr().err
    assert main(["queue", "--dry-run", str(study)]) == 0  # the plan alone renders nothing
    capsys.readouterr()
    assert main(["queue", "--dry-run", "--show-script", str(study)]) == 2
    err = capsys.readouterr().err
    assert "unknown field {oops}" in err and len(err.strip().splitlines()) == 1
    template.write_text("#!/bin/bash\n#SBATCH --time={walltime}\n{setup}\nexec {command}\n")
    assert main(["queue", "--dry-run", "--show-script", str(study)]) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --time=00:10:00\n" in out and "exec true train --config " in out
    assert not (tmp_path / "experiments").exists()  # a dry run writes nothing


def test_run_directories_a_directive_cannot_hold_are_refused_at_render(tmp_path, fake_schedulers,
                                                                        monkeypatch, capsys):
    """The run directories include where kdlab queue runs: checked when a script is made."""
    here = tmp_path / "my project"
    here.mkdir()
    monkeypatch.chdir(here)
    study = write_study(tmp_path, "pbs", experiments_dir="experiments")
    assert main(["queue", "--dry-run", str(study)]) == 0  # planning needs no script
    capsys.readouterr()
    for argv in (["queue", "--dry-run", "--show-script", str(study)], ["queue", str(study)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "(experiments_dir)" in err, err
    assert not (fake_schedulers / "scripts.log").exists()


def test_a_kdlab_command_that_does_not_split_is_refused(tmp_path, capsys):
    study = write_study(tmp_path, "slurm", kdlab_command="python -m 'kdlab")
    assert main(["status", str(study)]) == 2
    err = capsys.readouterr().err
    assert "key 'scheduler.kdlab_command'" in err and "splits like a shell line" in err
