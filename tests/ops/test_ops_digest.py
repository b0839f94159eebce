"""kdlab digest: commits of the period by area (a temporary git repository with dated
commits), study progress then and now, new results; empty periods and empty repositories."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from kdlab import cli
from kdlab.run.errors import UserError
from kdlab.run.layout import RunSpec
from kdlab.ops.digest import area_of, digest_text, read_commits
from kdlab.study.study_file import load_study
from builders import copy_legacy_tree, write_local_study, write_run

DAY = 86400
NOW = time.time()


def git(repo, *args, when: float | None = None):
    env = dict(os.environ, GIT_AUTHOR_NAME="Ada", GIT_AUTHOR_EMAIL="ada@example.org",
               GIT_COMMITTER_NAME="Ada", GIT_COMMITTER_EMAIL="ada@example.org")
    if when is not None:
        env["GIT_AUTHOR_DATE"] = env["GIT_COMMITTER_DATE"] = f"@{int(when)} +0000"
    subprocess.run(["git", "-C", str(repo), *args], check=True, env=env, capture_output=True)


def commit(repo, files: dict[str, str], message: str, when: float):
    for name, text in files.items():
        path = repo / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        git(repo, "add", name)
    git(repo, "commit", "-q", "-m", message, when=when)


@pytest.fixture
def repo(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    return repo


def test_area_of_paths():
    assert area_of("src/kdlab/train.py") == "training"
    assert area_of("src/kdlab/distill/nst.py") == "distillation"
    assert area_of("src/kdlab/schedulers/slurm.py") == "orchestration"
    assert area_of("src/kdlab/queue.py") == "orchestration"
    assert area_of("src/kdlab/analysis/metrics.py") == "analysis"
    assert area_of("src/kdlab/ops/plots.py") == "operations"
    assert area_of("src/kdlab/cli.py") == "core"
    assert area_of("tests/training/test_train.py") == "tests"
    assert area_of("studies/charlie.toml") == "studies"
    assert area_of("README.md") == "docs"
    assert area_of("pyproject.toml") == "build and CI"
    assert area_of("notebooks/x.ipynb") == "other"


def test_commits_of_the_period_grouped_by_area(repo):
    commit(repo, {"src/kdlab/train.py": "a\nb\n"}, "old training work", NOW - 30 * DAY)
    commit(repo, {"src/kdlab/train.py": "a\nb\nc\nd\n", "tests/training/test_train.py": "t\n"},
           "resume from checkpoints", NOW - 3 * DAY)
    commit(repo, {"src/kdlab/distill/nst.py": "x\ny\nz\n", "README.md": "doc\n"},
           "NST loss", NOW - 1 * DAY)
    commit(repo, {"src/kdlab/train.py": "a\nc\nd\n"}, "drop b", NOW - 2 * DAY)

    commits = read_commits(repo, "1 week ago")
    # git's order: the branch history, newest first (dates may be out of order)
    assert [c.subject for c in commits] == ["drop b", "NST loss", "resume from checkpoints"]
    resume = commits[2]
    assert resume.files == {"src/kdlab/train.py": (2, 0), "tests/training/test_train.py": (1, 0)}
    assert resume.lines_by_area() == {"training": (2, 0), "tests": (1, 0)}

    text = digest_text(repo, "1 week ago", now=NOW)
    assert "3 commits, +7 −1 lines in 4 files, by Ada." in text
    assert "| training | 2 | +2 | −1 |" in text
    assert "| distillation | 1 | +3 | −0 |" in text
    assert "| tests | 1 | +1 | −0 |" in text
    assert "| docs | 1 | +1 | −0 |" in text
    assert "old training work" not in text
    training = text.split("### training")[1].split("###")[0]
    assert "drop b" in training and "resume from checkpoints" in training
    assert "NST loss" not in training


def test_no_commits_in_the_period_and_no_commits_at_all(repo, capsys):
    assert "The repository has no commits yet." in digest_text(repo, "1 week ago")
    commit(repo, {"a.py": "1\n"}, "long ago", NOW - 60 * DAY)
    assert "No commits since 1 week ago." in digest_text(repo, "1 week ago")
    assert cli.main(["digest", "--repo", str(repo), "--since", "2 weeks ago"]) == 0
    assert "No commits since 2 weeks ago." in capsys.readouterr().out


def test_not_a_repository(tmp_path):
    with pytest.raises(UserError, match="is not a git repository"):
        digest_text(tmp_path, "1 week ago")


def test_study_progress_then_and_now(repo, tmp_path):
    commit(repo, {"a.py": "1\n"}, "work", NOW - DAY)
    study = load_study(write_local_study(tmp_path / "study.toml", methods=["logit"], alphas=[0.5],
                                   seeds=[0, 1]))
    experiments = study.experiments_dir
    write_run(experiments, RunSpec("Digits", "ResNet20", 0), test_acc=[70.0, 91.25],
              completed_at=NOW - 20 * DAY)
    write_run(experiments, RunSpec("Digits", "ResNet20", 1), test_acc=[70.0, 92.5],
              completed_at=NOW - 2 * DAY)
    write_run(experiments, RunSpec("Digits", "ResNet8", 0, "logit", "ResNet20", 0.5),
              test_acc=[60.0, 88.75], completed_at=NOW - DAY)
    write_run(experiments, RunSpec("Digits", "ResNet8", 1, "logit", "ResNet20", 0.5),
              status="failed", epoch=1, test_acc=[10.0], reason="loss became NaN")
    output = tmp_path / "digest.md"
    assert cli.main(["digest", "--repo", str(repo), "--study", str(study.path),
                     "--output", str(output)]) == 0
    text = output.read_text()
    assert "Completed runs: 1/6 on " in text and "→ 3/6 now (2 completed in the period)." in text
    assert "| Digits | 1 | 3 | 6 |" in text
    assert "- Digits-logit-a0.5-ResNet20_to_ResNet8-s1: loss became NaN" in text
    new = text.split("### New results")[1]
    assert "| Digits | teacher ResNet20 | — | 1 | 92.50 |" in new
    assert "| Digits | logit | 0.5 | 0 | 88.75 |" in new
    assert "91.25" not in new   # completed before the period


def _legacy_tree_digest(repo, root, monkeypatch) -> str:
    """The digest of the legacy fixture at ``root`` after making every status.json's
    modification time 'now', as a fresh clone does."""
    commit(repo, {"a.py": "1\n"}, "work", NOW - DAY)
    for status in (root / "experiments").rglob("status.json"):
        os.utime(status, (NOW, NOW))
    monkeypatch.chdir(root)            # the study's paths are relative to it
    return digest_text(repo, "1 week ago", load_study(root / "study.toml"), now=NOW)


def test_earlier_code_runs_are_dated_by_git_history_not_modification_time(repo, tmp_path,
                                                                          monkeypatch):
    """The earlier code's status.json has no timestamp: the last commit of the file dates
    it, whatever its modification time."""
    root = copy_legacy_tree(tmp_path)
    recent = "experiments/Cifar10/pure/ResNet112/1/status.json"
    git(root, "init", "-q")
    git(root, "add", "-A", ".")
    git(root, "reset", "-q", "--", recent)
    git(root, "commit", "-q", "-m", "results so far", when=NOW - 30 * DAY)
    git(root, "add", recent)
    git(root, "commit", "-q", "-m", "teacher seed 1 finished", when=NOW - DAY)
    text = _legacy_tree_digest(repo, root, monkeypatch)
    assert "Completed runs: 5/16 on" in text and "6/16 now (1 completed in the period)" in text
    new = text.split("### New results")[1]
    assert "| Cifar10 | teacher ResNet112 | — | 1 |" in new
    assert "| Cifar10 | teacher ResNet112 | — | 0 |" not in new
    assert "no completion date" not in text


def test_undated_earlier_code_runs_are_counted_before_the_period(repo, tmp_path, monkeypatch):
    root = copy_legacy_tree(tmp_path)              # not in any git repository
    text = _legacy_tree_digest(repo, root, monkeypatch)
    assert "Completed runs: 6/16 on" in text and "6/16 now (0 completed in the period)" in text
    assert "6 completed runs have no completion date" in text
    assert "No run completed in the period." in text
