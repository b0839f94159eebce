"""kdlab archive: the move, the README, the refusal while runs are live, and no loss of data
when an archive is interrupted at any step (same file system and across file systems)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from kdlab import cli
from kdlab.run.errors import UserError
from kdlab.run.layout import RunSpec, analysis_dir, run_dir
from kdlab.ops import archive
from kdlab.schedulers.local import make_job_id
from kdlab.study.study_file import load_study
from builders import copy_legacy_tree, snapshot, write_local_study, write_run




@pytest.fixture
def small(tmp_path):
    """A study in kdlab's format with completed, failed and never-started runs."""
    study_path = write_local_study(tmp_path / "study.toml", methods=["logit", "nst"],
                             alphas=[0.5], seeds=[0, 1])
    study = load_study(study_path)
    experiments = study.experiments_dir
    for seed, accuracy in ((0, 91.0), (1, 93.0)):
        write_run(experiments, RunSpec("Digits", "ResNet20", seed), test_acc=[70.0, accuracy])
        write_run(experiments, RunSpec("Digits", "ResNet8", seed), test_acc=[60.0, accuracy - 5])
        write_run(experiments, RunSpec("Digits", "ResNet8", seed, "logit", "ResNet20", 0.5),
                  test_acc=[65.0, accuracy - 3])
    write_run(experiments, RunSpec("Digits", "ResNet8", 0, "nst", "ResNet20", 0.5),
              status="failed", epoch=1, test_acc=[12.0], reason="loss became NaN at epoch 1")
    # a file that is not a state file, a nested folder and a link must move as well
    (experiments / "Digits" / "notes.txt").write_text("kept\n")
    (experiments / "Digits" / "pure" / "ResNet8" / "0" / "extra").mkdir()
    (experiments / "Digits" / "pure" / "ResNet8" / "0" / "extra" / "log.txt").write_text("x")
    (experiments / "latest").symlink_to("Digits/pure")
    return study


def _check_archived(study, before: dict[str, str]) -> Path:
    destination = analysis_dir(study.analysis_dir, study.name) / "experiments"
    assert snapshot(destination) == before                     # every byte of every file
    assert (destination / "latest").is_symlink()
    assert study.experiments_dir.is_dir() and not any(study.experiments_dir.iterdir())
    root = analysis_dir(study.analysis_dir, study.name)
    assert not (root / archive.JOURNAL_FILE).exists()
    assert not list(root.rglob("*.tmp"))
    return root / archive.README_FILE


def test_archive_readme_accuracy_table(small, capsys):
    before = snapshot(small.experiments_dir)
    assert cli.main(["archive", str(small.path)]) == 0
    readme = _check_archived(small, before).read_text()
    # mean ± sample std over the two seeds, computed here independently
    for label, values in (("teacher (ResNet20)", [91.0, 93.0]),
                          ("pure student (ResNet8)", [86.0, 88.0]),
                          ("logit", [88.0, 90.0])):
        alpha = "0.5" if label == "logit" else "—"
        text = f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"
        assert f"| Digits | {label} | {alpha} | {text} | 2/2 |" in readme
    assert "| Digits | nst | 0.5 | — | 0/2 |" in readme
    assert "Digits-nst-a0.5-ResNet20_to_ResNet8-s0 | failed | failed at epoch 1/3: loss " \
           "became NaN at epoch 1" in readme
    assert "Digits-nst-a0.5-ResNet20_to_ResNet8-s1 | not started" in readme
    assert "- Runs in the grid: 8 (2 teacher, 2 pure student, 4 distilled); completed: 6" \
        in readme
    assert "| epochs | 1 | 3 |" in readme          # the study says 1, the runs recorded 3
    assert "archived tiny" in capsys.readouterr().out
    # a second archive has nothing to do and changes nothing
    assert cli.main(["archive", str(small.path)]) == 0
    assert "nothing to archive" in capsys.readouterr().out


def test_refuses_when_destination_holds_a_round(small):
    destination = analysis_dir(small.analysis_dir, small.name) / "experiments"
    destination.mkdir(parents=True)
    (destination / "old.txt").write_text("previous round")
    before = snapshot(small.experiments_dir)
    with pytest.raises(UserError, match="already holds an archived round"):
        archive.archive_study(small, log=lambda line: None)
    assert snapshot(small.experiments_dir) == before
    assert (destination / "old.txt").read_text() == "previous round"


def test_live_local_job_blocks_even_when_assuming_stopped(small):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        spec = RunSpec("Digits", "ResNet8", 1, "nst", "ResNet20", 0.5)
        write_run(small.experiments_dir, spec, status="in_progress", epoch=1,
                  job_id=make_job_id(sleeper.pid), scheduler="local")
        before = snapshot(small.experiments_dir)
        for assume in (False, True):
            with pytest.raises(UserError, match=r"1 run\(s\) may be live: Digits-nst-a0.5-"
                                                r"ResNet20_to_ResNet8-s1 \(local job .* is "
                                                r"pending or running\)"):
                archive.archive_study(small, assume_stopped=assume, log=lambda line: None)
        assert snapshot(small.experiments_dir) == before
    finally:
        sleeper.kill()
        sleeper.wait()
    # the job is gone now: the run is stale, not live, and the archive goes ahead
    archive.archive_study(small, log=lambda line: None)
    _check_archived(small, before)


def test_run_without_job_id_counts_as_live(small):
    spec = RunSpec("Digits", "ResNet8", 1, "nst", "ResNet20", 0.5)
    write_run(small.experiments_dir, spec, status="in_progress", epoch=1)
    with pytest.raises(UserError, match="without a recorded job id.*--assume-stopped"):
        archive.archive_study(small, log=lambda line: None)
    before = snapshot(small.experiments_dir)
    archive.archive_study(small, assume_stopped=True, log=lambda line: None)
    readme = _check_archived(small, before).read_text()
    assert "Digits-nst-a0.5-ResNet20_to_ResNet8-s1 | did not finish (in progress)" in readme


def test_legacy_tree_refused_then_archived(tmp_path, monkeypatch, capsys):
    root = copy_legacy_tree(tmp_path)
    monkeypatch.chdir(root)
    monkeypatch.setenv("PATH", "/nonexistent")    # no qstat here: PBS liveness unknown
    study = load_study("study.toml")
    before = snapshot(study.experiments_dir)
    assert cli.main(["archive", "study.toml"]) == 2
    error = capsys.readouterr().err
    assert "Cifar10-pure-ResNet56-s1" in error and "pbs job 4101237.sched01" in error
    assert "liveness unknown" in error
    assert snapshot(study.experiments_dir) == before
    assert cli.main(["archive", "study.toml", "--assume-stopped"]) == 0
    destination = root / "analysis" / "experiment_legacy" / "experiments"
    assert snapshot(destination) == before
    readme = (root / "analysis" / "experiment_legacy" / "README.md").read_text()
    statuses = [json.loads((destination / f"Cifar10/pure/ResNet112/{seed}/status.json")
                           .read_text())["max_acc"] for seed in (0, 1)]
    teacher = f"{statistics.fmean(statuses):.2f} ± {statistics.stdev(statuses):.2f}"
    assert f"| Cifar10 | teacher (ResNet112) | — | {teacher} | 2/2 |" in readme
    assert "failed at epoch 3/12: no reason recorded" in readme
    assert "SVHN-logit-a0.5-ResNet112_to_ResNet56-s0 | unreadable" in readme
    assert (root / "experiments").is_dir() and not any((root / "experiments").iterdir())


class Crash(Exception):
    """A simulated kill in the middle of an archive."""


def _crash_after(monkeypatch, name: str, calls: int):
    original = getattr(archive, name)
    count = {"n": 0}

    def wrapper(*args, **kwargs):
        count["n"] += 1
        if count["n"] > calls:
            raise Crash(f"{name} call {count['n']}")
        return original(*args, **kwargs)

    monkeypatch.setattr(archive, name, wrapper)


@pytest.mark.parametrize("step, calls", [("_copy_file", 0), ("_copy_file", 4),
                                         ("_write_journal", 1), ("_write_journal", 2),
                                         ("_remove_file", 0), ("_remove_file", 5),
                                         ("_make_fresh", 0), ("readme_text", 0)])
def test_interrupted_copy_archive_finishes_on_rerun(small, monkeypatch, step, calls):
    """Across file systems (forced): copy, verify, remove — killed at each stage, then run
    again: every file ends up archived, byte for byte; none is ever missing from both."""
    before = snapshot(small.experiments_dir)
    monkeypatch.setattr(archive, "_same_filesystem", lambda *paths: False)
    with monkeypatch.context() as patch:
        _crash_after(patch, step, calls)
        with pytest.raises(Crash):
            archive.archive_study(small, log=lambda line: None)
    destination = analysis_dir(small.analysis_dir, small.name) / "experiments"
    # at the moment of the crash every file exists, complete, in the source or the copy
    present = snapshot(small.experiments_dir)
    if destination.exists():
        for path, digest in snapshot(destination).items():
            present.setdefault(path, digest)
            assert present[path] == digest
    assert present == before
    result = archive.archive_study(small, log=lambda line: None)
    assert result.resumed and result.method == "copy"
    _check_archived(small, before)


@pytest.mark.parametrize("step", ["_make_fresh", "readme_text", "_write_journal"])
def test_interrupted_rename_archive_finishes_on_rerun(small, monkeypatch, step):
    before = snapshot(small.experiments_dir)
    with monkeypatch.context() as patch:
        _crash_after(patch, step, 1 if step == "_write_journal" else 0)
        with pytest.raises(Crash):
            archive.archive_study(small, log=lambda line: None)
    result = archive.archive_study(small, log=lambda line: None)
    assert result.resumed
    _check_archived(small, before)


def test_bad_copy_is_caught_before_anything_is_removed(small, monkeypatch):
    before = snapshot(small.experiments_dir)
    monkeypatch.setattr(archive, "_same_filesystem", lambda *paths: False)
    original = archive._copy_file

    def corrupting_copy(source, destination):
        original(source, destination)
        if source.name == "metrics.json":
            with open(destination, "ab") as handle:
                handle.write(b" ")

    with monkeypatch.context() as patch:
        patch.setattr(archive, "_copy_file", corrupting_copy)
        corrupted = len(list(small.experiments_dir.rglob("metrics.json")))
        with pytest.raises(UserError, match=rf"{corrupted} copied file\(s\) do not match .*"
                                            "no source file was removed"):
            archive.archive_study(small, log=lambda line: None)
    assert snapshot(small.experiments_dir) == before
    archive.archive_study(small, log=lambda line: None)
    _check_archived(small, before)


def test_conflicting_file_in_destination_is_never_overwritten(small, monkeypatch):
    before = snapshot(small.experiments_dir)
    monkeypatch.setattr(archive, "_same_filesystem", lambda *paths: False)
    with monkeypatch.context() as patch:
        _crash_after(patch, "_copy_file", 2)
        with pytest.raises(Crash):
            archive.archive_study(small, log=lambda line: None)
    destination = analysis_dir(small.analysis_dir, small.name) / "experiments"
    intruder = destination / "Digits" / "notes.txt"
    intruder.parent.mkdir(parents=True, exist_ok=True)
    intruder.write_text("written by someone else\n")
    with pytest.raises(UserError, match="already exists and differs"):
        archive.archive_study(small, log=lambda line: None)
    assert intruder.read_text() == "written by someone else\n"
    assert snapshot(small.experiments_dir) == before


def test_readme_describes_earlier_code_runs_as_such(small):
    """A mixed tree: kdlab's runs of ``small`` plus one completed run of the earlier code
    (status.json without made_by or run; its config records the earlier code's settings)."""
    earlier = run_dir(small.experiments_dir, RunSpec("Digits", "ResNet8", 1, "nst", "ResNet20",
                                                     0.5))
    earlier.mkdir(parents=True)
    (earlier / "status.json").write_text(json.dumps(
        {"status": "completed", "epoch": 150, "max_acc": 41.5, "pbs_job_id": "7000521.sched01",
         "config": {"model": "ResNet8", "dataset": "Digits", "seed": 1, "distillation": "nst",
                    "teacher_model": "ResNet20", "teacher_weights": "/old/path/best.pth",
                    "alpha": 0.5, "temperature": 4, "force_restart": False}}))
    archive.archive_study(small, log=lambda line: None)
    readme = (analysis_dir(small.analysis_dir, small.name) / archive.README_FILE).read_text()
    section = readme.split("## Runs of the earlier code")[1].split("\n## ")[0]
    assert "1 run (1 completed) was trained by the earlier research code, not by kdlab" in section
    assert "7 runs were trained by kdlab" in section    # 6 completed, 1 failed
    assert "describe kdlab's runs only" in section and "RandomResizedCrop" in section
    assert "what its runs recorded of their settings: alpha: 0.5; distillation: nst; " \
           "epochs of the completed runs: 150; teacher_model: ResNet20; temperature: 4." in section
    assert "/old/path" not in readme and "force_restart" not in readme
    # the accuracy cell says which of its runs are the earlier code's
    assert "| Digits | nst | 0.5 | 41.50 | 1/2 | 1 |" in readme
    assert "| Digits | logit | 0.5 | 89.00 ± 1.41 | 2/2 | 0 |" in readme
    assert "(kdlab's runs only; the earlier code's are described above)" in readme


def test_readme_of_kdlab_runs_has_no_earlier_code_section(small):
    archive.archive_study(small, log=lambda line: None)
    readme = (analysis_dir(small.analysis_dir, small.name) / archive.README_FILE).read_text()
    assert "earlier code" not in readme and "earlier research code" not in readme


def test_archive_help_says_what_archiving_does(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["archive", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for phrase in ("move the whole experiments directory",
                   "analysis/experiment_STUDY/experiments/", "README.md",
                   "leave an empty experiments directory", "Refuses while a run's job may "
                   "still be live", "verified (SHA-256)", "finishes when run again"):
        assert phrase in text, phrase
