"""kdlab plot: per-run curves (redrawn only when metrics.json changes), the overview
figures, and the list of runs without complete curves — on the legacy tree and on trees in
kdlab's own format."""

from __future__ import annotations

import hashlib
import json
import os
import time

import pytest
from PIL import Image

from kdlab import cli
from kdlab.layout import RunSpec, run_dir
from kdlab.ops import plots
from kdlab.status import study_run_states
from kdlab.study import load_study
from legacy_tree import copy_legacy_tree, write_run, write_study

T, S = "ResNet112", "ResNet56"


@pytest.fixture
def legacy(tmp_path, monkeypatch):
    root = copy_legacy_tree(tmp_path)
    monkeypatch.chdir(root)   # the legacy study's paths are relative
    return load_study("study.toml")


def _png_size(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_legacy_tree_curves_and_reasons(legacy):
    report = plots.plot_study(legacy)
    experiments = legacy.experiments_dir
    drawn_expected = {
        RunSpec("Cifar10", T, 0), RunSpec("Cifar10", T, 1), RunSpec("Cifar10", S, 0),
        RunSpec("Cifar10", S, 1), RunSpec("SVHN", T, 0),
        RunSpec("Cifar10", S, 0, "logit", T, 0.5), RunSpec("Cifar10", S, 1, "logit", T, 0.5)}
    for spec in legacy.runs():
        png = run_dir(experiments, spec) / plots.CURVES_FILE
        assert png.exists() == (spec in drawn_expected), spec.name
    assert sorted(report.written) == sorted(spec.name for spec in drawn_expected)
    for spec in drawn_expected:
        width, height = _png_size(run_dir(experiments, spec) / plots.CURVES_FILE)
        assert width >= 800 and height >= 300

    why = {name: (reason, partial) for name, reason, partial in report.incomplete}
    assert why["Cifar10-pure-ResNet56-s1"] == ("in progress (epoch 7/12)", True)
    assert why["Cifar10-logit-a0.5-ResNet112_to_ResNet56-s1"] == (
        "failed at epoch 3/12: no reason recorded", True)
    reason, partial = why["Cifar10-fitnets-a0.5-ResNet112_to_ResNet56-s0"]
    assert reason.startswith("unreadable file ") and "metrics.json" in reason
    assert "not valid JSON" in reason and not partial
    reason, partial = why["SVHN-logit-a0.5-ResNet112_to_ResNet56-s0"]
    assert "status.json" in reason and "not valid JSON" in reason and not partial
    assert why["SVHN-pure-ResNet112-s1"] == ("not started", False)
    assert why["SVHN-logit-a0.5-ResNet112_to_ResNet56-s1"][0].startswith(
        "not started: waiting for the teacher")
    # every run of the grid is either completed with curves or listed with a reason
    completed_drawn = {"Cifar10-pure-ResNet112-s0", "Cifar10-pure-ResNet112-s1",
                       "Cifar10-pure-ResNet56-s0", "SVHN-pure-ResNet112-s0",
                       "Cifar10-logit-a0.5-ResNet112_to_ResNet56-s0"}
    assert set(why) | completed_drawn == {spec.name for spec in legacy.runs()}
    assert not set(why) & completed_drawn

    for path in report.figures:
        assert path.parent == plots.progress_dir(legacy)
        _png_size(path)
    assert {p.name for p in report.figures} == {plots.PROGRESS_GRID_FILE,
                                                plots.ACCURACY_OVERVIEW_FILE}


def test_progress_cells_and_title_count_states(legacy):
    states = study_run_states(legacy)
    cells = plots.progress_cells(legacy, states)
    assert len(cells) == len(legacy.runs()) == 16
    assert cells[("Cifar10", "teacher", None, 1)] == "completed"
    assert cells[("Cifar10", "pure", None, 1)] == "running"
    assert cells[("Cifar10", "logit", 0.5, 1)] == "failed"
    assert cells[("SVHN", "logit", 0.5, 0)] == "unreadable"
    assert cells[("SVHN", "fitnets", 0.5, 1)] == "waiting"
    assert cells[("Cifar10", "fitnets", 0.5, 1)] == "not_started"
    made = time.mktime((2024, 5, 6, 7, 8, 0, 0, 0, -1))
    title = plots.progress_title(legacy, states, made)
    assert title.startswith("legacy: 6/16 runs completed; 1 running, 1 failed, 2 waiting for "
                            "teacher, 5 not started, 1 unreadable")
    assert title.endswith("made 2024-05-06 07:08")


def test_curves_redrawn_only_when_metrics_change(tmp_path):
    spec = RunSpec("Digits", "ResNet8", 0)
    directory = write_run(tmp_path / "experiments", spec, epochs=3)
    assert plots.plot_run_curves(directory, "t") == "written"
    png = directory / plots.CURVES_FILE
    first = png.read_bytes()
    assert plots.plot_run_curves(directory, "t") == "unchanged"
    assert png.read_bytes() == first

    metrics_path = directory / "metrics.json"
    later = time.time() + 100   # a newer mtime alone (rsync, touch) is not a change
    os.utime(metrics_path, (later, later))
    assert plots.plot_run_curves(directory, "t") == "unchanged"

    metrics = json.loads(metrics_path.read_text())
    metrics["test_acc"].append(99.0)
    metrics_path.write_text(json.dumps(metrics))
    assert plots.plot_run_curves(directory, "t") == "written"
    with Image.open(png) as image:
        stamp = image.info[plots._STAMP_KEY]
    assert stamp == hashlib.sha256(metrics_path.read_bytes()).hexdigest()


def test_run_without_epochs_is_not_drawn(tmp_path):
    directory = tmp_path / "run"
    directory.mkdir()
    assert plots.plot_run_curves(directory, "t") is None          # no metrics.json
    (directory / "metrics.json").write_text(json.dumps(
        {"train_loss": [], "train_acc": [], "test_loss": [], "test_acc": []}))
    assert plots.plot_run_curves(directory, "t") is None          # no epoch yet
    assert not (directory / plots.CURVES_FILE).exists()
    (directory / "metrics.json").write_text(json.dumps({"test_acc": "high"}))
    with pytest.raises(Exception, match="'test_acc' is not a list of numbers"):
        plots.plot_run_curves(directory, "t")


def test_kdlab_plot_command_on_own_format(tmp_path, capsys):
    study_path = write_study(tmp_path / "study.toml", datasets=["Digits"],
                             methods=["logit", "rkd"], alphas=[0.5, 0.9], seeds=[0, 1])
    study = load_study(study_path)
    experiments = study.experiments_dir
    for seed, accuracy in ((0, 80.0), (1, 84.0)):
        write_run(experiments, RunSpec("Digits", "ResNet20", seed), test_acc=[60.0, accuracy])
        write_run(experiments, RunSpec("Digits", "ResNet8", seed), test_acc=[50.0, accuracy - 6])
    write_run(experiments, RunSpec("Digits", "ResNet8", 0, "logit", "ResNet20", 0.5),
              test_acc=[55.0, 78.0])
    write_run(experiments, RunSpec("Digits", "ResNet8", 1, "logit", "ResNet20", 0.5),
              status="failed", epoch=1, epochs=2, test_acc=[10.0],
              reason="loss became NaN at epoch 1")
    assert cli.main(["plot", str(study_path)]) == 0
    out = capsys.readouterr().out
    assert "curves: 6 drawn, 0 unchanged" in out
    assert "Digits-logit-a0.5-ResNet20_to_ResNet8-s1: failed at epoch 1/2: loss became NaN " \
           "at epoch 1  [curves so far drawn]" in out
    assert "Digits-rkd-a0.9-ResNet20_to_ResNet8-s1: not started" in out
    grid = plots.progress_dir(study) / plots.PROGRESS_GRID_FILE
    overview = plots.progress_dir(study) / plots.ACCURACY_OVERVIEW_FILE
    assert _png_size(grid)[0] > 500 and _png_size(overview)[0] > 500
    assert cli.main(["plot", str(study_path)]) == 0
    assert "curves: 0 drawn, 6 unchanged" in capsys.readouterr().out
