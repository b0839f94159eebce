"""Fuzzing every state file kdlab reads (issue 11, "Must hold").

A small study is trained here once (Digits, ResNet20 teacher, ResNet8 pure student, logit
and factor-transfer students at alpha 0.5, one epoch), extracted, plotted, analysed and
queued once, so that every kind of state file exists: status.json, metrics.json,
config.json, checkpoint.pth, best.pth (the student's and the teacher's), paraphraser.pth
and paraphraser_checkpoint.pth, a representation .npz, an analysis cache .npz, train.lock,
the queue lock and the study file. Each case copies that tree, damages ONE file of the
factor-transfer run (or the study / shared files) in one way (seeded random bytes, a
truncation, an empty file, or well-formed content of the wrong shape: a JSON list, fields
of the wrong types, NaN numbers, a torch or npz file holding the wrong things, a TOML file
with wrong-typed keys) and runs one command over it in-process, output captured.

Every case asserts:
- no traceback (no exception escapes ``kdlab.cli.main``; no "Traceback" in the output);
- the exit code is 0 or 2; ``kdlab train`` may also end 1 (the run failed) or 75
  (stopped, resumable) as it documents -- none of the cases here needs either;
- the damaged file is named in the output whenever the command reads it (READERS below);
- every other run is still processed (status lists them completed, queue marks them done,
  plot keeps their curves, extract writes their representations, analyze counts them);
- no file changes except those the command is meant to write, and the damaged file is
  never rewritten -- except derived data the command recomputes: analyze replaces a damaged
  entry of its own cache, extract a damaged representation (named first), from best.pth.

Paths in the study are relative and every command runs inside the copy, so a copy is
byte-identical to the original tree and the analysis cache stays valid (fast).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from kdlab import cli
from kdlab.run import layout, state_files
from kdlab.run.layout import RunSpec
from kdlab.study.study_file import load_study
from builders import snapshot, write_study

STUDY = "study.toml"
FT = RunSpec("Digits", "ResNet8", 0, "factor_transfer", "ResNet20", 0.5)
OTHERS = (RunSpec("Digits", "ResNet20", 0), RunSpec("Digits", "ResNet8", 0),
          RunSpec("Digits", "ResNet8", 0, "logit", "ResNet20", 0.5))
FT_DIR = layout.run_dir("experiments", FT)
TEACHER_DIR = layout.run_dir("experiments", OTHERS[0])
ANALYSIS = Path("analysis")


def _npz(spec: RunSpec, role: str | None = None) -> Path:
    """The representation file of a run (its role in the study unless given)."""
    if role is None:
        role = "kd" if not spec.is_pure else "teacher" if spec.model == "ResNet20" else "pure"
    return layout.representation_path(ANALYSIS, "fuzz", spec, role)


# target -> the file (relative to the tree) that a case damages
TARGETS = {
    "status": FT_DIR / "status.json",
    "metrics": FT_DIR / "metrics.json",
    "config": FT_DIR / "config.json",
    "checkpoint": FT_DIR / "checkpoint.pth",
    "best": FT_DIR / "best.pth",
    "teacher_best": TEACHER_DIR / "best.pth",
    "paraphraser": FT_DIR / "paraphraser.pth",
    "paraphraser_checkpoint": FT_DIR / "paraphraser_checkpoint.pth",
    "npz": _npz(FT, "kd"),
    "model_cache": layout.model_cache_path(ANALYSIS, "fuzz", "Digits", _npz(FT, "kd")),
    "pair_cache": layout.pair_cache_path(ANALYSIS, "fuzz", "Digits", _npz(OTHERS[0], "teacher"),
                                         _npz(FT, "kd")),
    "figure_manifest": layout.figure_manifest_path(ANALYSIS, "fuzz"),
    "train_lock": FT_DIR / "train.lock",
    "queue_lock": Path("experiments") / ".kdlab-queue.lock",
    "study": Path(STUDY),
}

COMMANDS = {
    "status": ["status", STUDY],
    "status_json": ["status", "--json", STUDY],
    "queue": ["queue", "--dry-run", STUDY],
    "plot": ["plot", STUDY],
    "extract": ["extract", STUDY, "--device", "cpu"],
    "analyze": ["analyze", STUDY, "--jobs", "1"],
    "train_config": ["train", "--quiet", "--config", str(FT_DIR / "config.json")],
    "train_flags": None,   # built from the run's config.json (see _train_flags)
}
STUDY_COMMANDS = ("status", "status_json", "queue", "plot", "extract", "analyze")
TRAIN = ("train_config", "train_flags")

# target -> the commands that read it (and so must name it when it is damaged)
READERS = {
    "status": set(STUDY_COMMANDS) - {"analyze"} | set(TRAIN),
    "metrics": {"plot"},
    "config": set(TRAIN),   # train by flags would rewrite it: it refuses instead
    "checkpoint": set(TRAIN),
    "best": {"extract"},
    "teacher_best": {"extract"} | set(TRAIN),
    "paraphraser": set(TRAIN),
    "paraphraser_checkpoint": set(),     # read only while paraphraser.pth is missing
    "npz": {"extract", "analyze"},
    "model_cache": set(),                # a damaged cache entry is recomputed
    "pair_cache": set(),
    "figure_manifest": set(),
    "train_lock": set(),                 # holder details only: see the test at the end
    "queue_lock": set(),                 # its content is never read
    "study": set(STUDY_COMMANDS),
}

# ---- the corruptions ---------------------------------------------------------------------------


def _kind_of(path: Path) -> str:
    if path.suffix == ".json" or path.name == "train.lock":
        return "json"
    return {".pth": "torch", ".npz": "npz", ".toml": "toml"}.get(path.suffix, "text")


def _swap_type(value):
    """A value of another JSON type than ``value``."""
    if isinstance(value, bool):
        return "yes"
    if isinstance(value, (int, float)):
        return "x"
    if isinstance(value, str):
        return 12345
    if isinstance(value, dict):
        return [1, 2]
    if isinstance(value, list):
        return {"a": 1}
    return {}


def _nan_numbers(value):
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return math.nan
    if isinstance(value, list):
        return [_nan_numbers(item) for item in value]
    if isinstance(value, dict):
        return {key: _nan_numbers(item) for key, item in value.items()}
    return value


def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _npz_bytes(arrays: dict) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _wrong_torch(data: bytes) -> bytes:
    """The same archive with every top-level entry of another type (weights as text)."""
    payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(payload, dict):
        return _torch_bytes(["not", "a", "dict"])

    def swapped(value):
        if isinstance(value, torch.Tensor):
            return "tensor"
        if isinstance(value, dict):
            return {key: torch.zeros(1) for key in list(value)[:3]} or [1]
        return _swap_type(value)
    return _torch_bytes({key: swapped(value) for key, value in payload.items()})


def _toml_wrong_types(data: bytes) -> bytes:
    """Every top-level ``key = value`` line with a value of another TOML type."""
    lines = []
    for line in data.decode().splitlines():
        key, sep, value = line.partition(" = ")
        if sep and not line.startswith((" ", "[")):
            value = value.strip()
            value = ('"x"' if value.startswith("[") else
                     "[1, 2]" if value.startswith('"') else '"text"')
            line = f"{key} = {value}"
        lines.append(line)
    return ("\n".join(lines) + "\n").encode()


def corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    rng = random.Random(f"{path.name}/{how}")
    kind = _kind_of(path)
    if how == "random":
        new = bytes(rng.randrange(256) for _ in range(max(16, min(len(data), 4096))))
    elif how == "truncated":
        new = data[:len(data) // 2]
    elif how == "empty":
        new = b""
    elif how == "json_list":
        new = b"[1, 2, 3]\n"
    elif how == "json_types":
        new = json.dumps({key: _swap_type(value) for key, value in json.loads(data).items()}).encode()
    elif how == "json_nan":
        new = json.dumps(_nan_numbers(json.loads(data))).encode()
    elif how == "wrong_content" and kind == "torch":
        new = _wrong_torch(data)
    elif how == "wrong_content" and kind == "npz":
        new = _npz_bytes({key: np.array(["x", "y"]) for key in np.load(io.BytesIO(data)).files})
    elif how == "nan_values" and kind == "npz":
        with np.load(io.BytesIO(data)) as archive:
            arrays = {key: archive[key] for key in archive.files}
        new = _npz_bytes({key: (np.full_like(value, np.nan)
                                if np.issubdtype(value.dtype, np.floating) else value)
                          for key, value in arrays.items()})
    elif how == "wrong_content" and kind == "toml":
        new = _toml_wrong_types(data)
    else:
        raise AssertionError(f"no corruption {how} for {path}")
    assert new != data
    path.write_bytes(new)


def kinds_of(target: str) -> list[str]:
    """Every corruption that applies to the target's kind of file."""
    common = ["random", "truncated", "empty"]
    kind = _kind_of(TARGETS[target])
    if kind == "json":
        return common + ["json_list", "json_types", "json_nan"]
    if kind == "npz":
        return common + ["wrong_content", "nan_values"]
    if kind in ("torch", "toml"):
        return common + ["wrong_content"]
    return common


# The slow commands (extract, analyze, train) get two corruptions per file: garbage and
# well-formed content of the wrong shape; the fast ones get every corruption.
SLOW_KINDS = {"json": ["random", "json_types"], "torch": ["truncated", "wrong_content"],
              "npz": ["random", "nan_values"], "toml": ["random", "wrong_content"],
              "text": ["random"]}
FAST = ("status", "status_json", "queue", "plot")
SLOW = ("extract", "analyze") + TRAIN
SLOW_CASES = ([(target, how, command) for target in TARGETS
               for how in SLOW_KINDS[_kind_of(TARGETS[target])] for command in SLOW
               if not (command in TRAIN and target == "study")]
              + [(None, "intact", command) for command in SLOW])

# ---- the trained tree --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    from kdlab.training.run import train_run

    root = tmp_path_factory.mktemp("fuzz-pristine")
    previous = Path.cwd()
    os.chdir(root)
    try:
        write_study(Path(STUDY), name="fuzz", methods=("logit", "factor_transfer"),
                    experiments_dir="experiments", top=f'analysis_dir = "{ANALYSIS}"\n',
                    training="epochs = 1\nbatch_size = 128\ndevice = \"cpu\"",
                    tables="[method_options.factor_transfer]\nparaphraser_epochs = 1\n")
        study = load_study(STUDY)
        for spec in study.runs():   # teacher first
            assert train_run(study.train_config(spec), quiet=True) == "completed"
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            for argv in (COMMANDS["extract"], COMMANDS["plot"], COMMANDS["analyze"],
                         ["queue", STUDY]):
                assert cli.main(argv) == 0, argv
    finally:
        os.chdir(previous)
    for target, path in TARGETS.items():
        assert (root / path).is_file(), f"the trained tree lacks its {target} file {path}"
    return root


@pytest.fixture
def tree(pristine, tmp_path, monkeypatch):
    copy = tmp_path / "tree"
    shutil.copytree(pristine, copy)   # keeps modification times: caches stay valid
    monkeypatch.chdir(copy)
    return copy




def run(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)   # any exception escaping here is a traceback: the test fails
    return code, out.getvalue() + err.getvalue()


def _train_flags(config: dict) -> list[str]:
    argv = ["train", "--quiet"]
    for key, value in sorted(config.items()):
        if key == "method_options":
            argv += [item for name, option in sorted(value.items())
                     for item in ("--option", f"{name}={option}")]
        elif value is not None:
            argv += ["--" + key.replace("_", "-"), str(value)]
    return argv


# Derived files that a command recomputes and may replace when damaged (after naming it,
# for the representation): analyze its caches, extract a representation (from best.pth).
CACHES = ("model_cache", "pair_cache", "figure_manifest")
REDERIVED = {"analyze": CACHES, "extract": ("npz",)}


def _may_write(command: str, name: str) -> bool:
    """Whether ``command`` is meant to write the file ``name`` (relative path)."""
    analysis = f"{ANALYSIS}/experiment_fuzz/"
    if command == "plot":
        return name.startswith(analysis + "progress/") or (
            name.startswith("experiments/") and name.endswith("/curves.png"))
    if command == "extract":
        return name.startswith(analysis + "representations/")
    if command == "analyze":
        return name.startswith(analysis) and not name.startswith(analysis + "representations/")
    if command in TRAIN:
        return name.startswith(FT_DIR.as_posix() + "/")
    return False


def _prepare(tree: Path, command: str, pristine: Path) -> list[str]:
    """Set the copy up for ``command``; returns its argv."""
    if command in TRAIN:
        # Killed between the last checkpoint and the final status: train resumes the run,
        # reading its checkpoint, paraphraser and teacher.
        status = state_files.read_status(FT_DIR)
        status["status"] = state_files.IN_PROGRESS
        state_files.write_status(FT_DIR, status)
    if command == "extract":
        for spec in OTHERS:   # extract must write these again
            _npz(spec).unlink()
    if command == "train_flags":
        return _train_flags(json.loads((pristine / FT_DIR / "config.json").read_text()))
    return list(COMMANDS[command])


def _check_others(command: str, target: str | None, output: str) -> None:
    """Every run other than the damaged one was still processed."""
    others = [spec for spec in OTHERS if not (target == "teacher_best" and spec == OTHERS[0])]
    names = [spec.name for spec in others]
    if command == "status_json":
        runs = {run["run"]: run["state"] for run in json.loads(output[:output.rindex("}") + 1])["runs"]}
        assert all(runs.get(name) == "completed" for name in names), runs
    elif command == "status":
        assert "completed" in output
    elif command == "queue":
        assert all(any(line.startswith("done") and name in line for line in output.splitlines())
                   for name in names), output
    elif command == "plot":
        assert "curves:" in output
    elif command == "extract":
        from kdlab.analysis import store
        for spec in others:
            assert store.is_readable(_npz(spec)), (spec.name, output)
    elif command == "analyze":
        assert any(line.startswith("analyze fuzz: 3 representations")
                   or line.startswith("analyze fuzz: 4 representations")
                   for line in output.splitlines()), output


def check_command(tree: Path, target: str | None, how: str, command: str,
                  argv: list[str]) -> None:
    """Run one command over the tree (already damaged) and check everything the module
    docstring promises."""
    before = snapshot(tree)
    code, output = run(argv)

    assert "Traceback" not in output, output
    assert code in (0, 2), (command, code, output)
    if target is None:
        assert code == 0, output
    study_broken = target == "study" and command in STUDY_COMMANDS
    if study_broken:
        assert code == 2 and len(output.strip().splitlines()) == 1, output
    # NaN numbers are well-formed JSON that a reader may accept; extract checks only an
    # .npz's directory of arrays (its values are analyze's to read).
    if target is not None and command in READERS[target] and how != "json_nan" \
            and not (how == "nan_values" and command == "extract"):
        path = TARGETS[target]
        assert str(path) in output or str(tree / path) in output, (command, str(path), output)
    if not study_broken and not (command in TRAIN and target is not None
                                 and command in READERS[target]):
        _check_others(command, target, output)

    after = snapshot(tree)
    changed = sorted(name for name in set(before) | set(after)
                     if before.get(name) != after.get(name))
    damaged = TARGETS[target].as_posix() if target else None
    for name in changed:
        if name == damaged and target not in REDERIVED.get(command, ()) \
                and not (target == "train_lock" and command in TRAIN):
            pytest.fail(f"{command} rewrote the damaged {name}:\n{output}")
        assert _may_write(command, name), f"{command} changed {name}:\n{output}"


FAST_CASES = [(target, how) for target in TARGETS for how in kinds_of(target)] + [(None, "intact")]


@pytest.mark.parametrize("target,how", FAST_CASES,
                         ids=[f"{target or 'none'}-{how}" for target, how in FAST_CASES])
def test_status_queue_and_plot_name_a_damaged_file_and_go_on(target, how, tree, pristine):
    """status, status --json, queue --dry-run and plot, one after the other over one copy
    (none of them may change a state file, so each sees the same damage)."""
    if target is not None:
        corrupt(tree / TARGETS[target], how)
    for command in FAST:
        check_command(tree, target, how, command, _prepare(tree, command, pristine))


@pytest.mark.parametrize("target,how,command", SLOW_CASES,
                         ids=[f"{t or 'none'}-{h}-{c}" for t, h, c in SLOW_CASES])
def test_extract_analyze_and_train_name_a_damaged_file_and_go_on(target, how, command, tree,
                                                                 pristine):
    argv = _prepare(tree, command, pristine)
    if target is not None:
        corrupt(tree / TARGETS[target], how)
    check_command(tree, target, how, command, argv)


@pytest.mark.parametrize("how", ["random", "json_types"])
def test_a_held_run_lock_with_damaged_content_is_refused_in_one_line(how, tree, pristine):
    """The one reader of train.lock's content: the refusal of a second ``kdlab train``
    names the lock, though the holder's pid and host cannot be read from it."""
    import fcntl

    lock_path = tree / TARGETS["train_lock"]
    corrupt(lock_path, how)
    argv = _prepare(tree, "train_config", pristine)
    with open(lock_path, "a") as holder:   # another open file description: a second holder
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        before = snapshot(tree)
        code, output = run(argv)
        after = snapshot(tree)
    assert code == 2 and len(output.strip().splitlines()) == 1, output
    assert str(TARGETS["train_lock"]) in output and "another process" in output, output
    assert before == after
