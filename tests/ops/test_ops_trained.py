"""The operations commands on a small study trained here for real (tests/builders.py:
Digits, ResNet20 teacher, ResNet8 student, one logit-distilled run, one epoch each): what
train.py actually writes must be what plot, methodology, digest and archive read."""

from __future__ import annotations

import json
import statistics
import subprocess

import pytest

from kdlab import cli
from kdlab.run.layout import analysis_dir
from kdlab.ops import plots
from kdlab.ops.methodology import duration_text
from kdlab.study.progress import COMPLETED, study_run_states
from builders import trained_copy

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return trained_copy(tmp_path_factory)   # trained once per session, copied per module


def test_plot_trained_runs(trained, capsys):
    assert cli.main(["plot", str(trained.path)]) == 0
    out = capsys.readouterr().out
    assert "curves: 3 drawn, 0 unchanged" in out
    assert "runs without complete curves" not in out
    for state in study_run_states(trained):
        assert (state.run_dir / plots.CURVES_FILE).is_file()
    assert cli.main(["plot", str(trained.path)]) == 0
    assert "curves: 0 drawn, 3 unchanged" in capsys.readouterr().out


def test_methodology_reports_measured_epoch_times(trained):
    assert cli.main(["methodology", str(trained.path)]) == 0
    markdown = (analysis_dir(trained.analysis_dir, trained.name) / "methodology"
                / "methodology.md").read_text()
    for state in study_run_states(trained):
        metrics = json.loads((state.run_dir / "metrics.json").read_text())
        seconds = metrics["epoch_seconds"]
        assert len(seconds) == 1 and seconds[0] > 0
        role = {"teacher": "teacher", "pure": "pure student", "kd": "distilled student"}
        assert (f"| Digits | {role[state.role]} | {state.spec.model} | "
                f"{duration_text(statistics.fmean(seconds))} |") in markdown


def test_digest_counts_the_trained_runs_as_new(trained, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "-C", str(repo), "init", "-q"], check=True)
    assert cli.main(["digest", "--repo", str(repo), "--study", str(trained.path),
                     "--output", str(tmp_path / "digest.md")]) == 0
    text = (tmp_path / "digest.md").read_text()
    assert "→ 3/3 now (3 completed in the period)" in text
    accuracy = study_run_states(trained)[0].max_acc
    assert f"| Digits | teacher ResNet20 | — | 0 | {accuracy:.2f} |" in text


def test_archive_trained_study(trained):
    before = {path.relative_to(trained.experiments_dir): path.read_bytes()
              for path in trained.experiments_dir.rglob("*") if path.is_file()}
    assert any(path.name == "best.pth" for path in before)
    states = study_run_states(trained)
    assert [s.state for s in states] == [COMPLETED] * 3
    assert cli.main(["archive", str(trained.path)]) == 0
    destination = analysis_dir(trained.analysis_dir, trained.name) / "experiments"
    after = {path.relative_to(destination): path.read_bytes()
             for path in destination.rglob("*") if path.is_file()}
    assert after == before
    readme = (destination.parent / "README.md").read_text()
    assert f"| Digits | teacher (ResNet20) | — | {states[0].max_acc:.2f} | 1/1 |" in readme
    assert "Every run of the grid completed." in readme
    assert not any(trained.experiments_dir.iterdir())
