"""kdlab plot: per-run curves (redrawn only when metrics.json changes), the overview
figures, and the list of runs without complete curves — on the legacy tree and on trees in
kdlab's own format."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest
from PIL import Image

from kdlab import cli
from kdlab.run.layout import RunSpec, run_dir
from kdlab.ops import plot_curves, plots
from kdlab.study.progress import is_collapsed, study_run_states
from kdlab.study.study_file import load_study
from builders import (EARLIER_OUTSIDE, build_earlier_tree, copy_legacy_tree,
                      write_earlier_study, write_local_study, write_run)

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
    pair = legacy.pairs[0]
    assert len(cells) == len(legacy.runs()) == 16
    assert cells[("Cifar10", pair, "teacher", None, 1)] == "completed"
    assert cells[("Cifar10", pair, "pure", None, 1)] == "running"
    assert cells[("Cifar10", pair, "logit", 0.5, 1)] == "failed"
    assert cells[("SVHN", pair, "logit", 0.5, 0)] == "unreadable"
    assert cells[("SVHN", pair, "fitnets", 0.5, 1)] == "waiting"
    assert cells[("Cifar10", pair, "fitnets", 0.5, 1)] == "not_started"
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
        stamp = image.info[plot_curves.STAMP_KEY]
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
    study_path = write_local_study(tmp_path / "study.toml", datasets=["Digits"],
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
    assert cli.main(["plot", "--verbose", str(study_path)]) == 0
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


# ---- trees in the earlier research code's formats (issue 12) ------------------------------

EARLIER_CONFIG_KEYS = ("model", "dataset", "seed", "distillation", "teacher_model",
                       "teacher_weights", "alpha", "temperature", "force_restart")


def _earlier_config(spec):
    """vars(args) of the earlier train.py: no 'epochs' key."""
    return {"model": spec.model, "dataset": spec.dataset, "seed": spec.seed,
            "distillation": spec.method if spec.method != "pure" else "none",
            "teacher_model": spec.teacher, "alpha": 0.5 if spec.teacher else 0.5,
            "teacher_weights": f"experiments/{spec.dataset}/pure/{spec.teacher}/0/best.pth"
            if spec.teacher else None, "temperature": 4.0, "force_restart": False}


def _earlier_curves(accuracies):
    return {"train_loss": [4.0 / (i + 1) for i in range(len(accuracies))],
            "train_acc": [a + 3.0 for a in accuracies],
            "test_loss": [4.2 / (i + 1) for i in range(len(accuracies))],
            "test_acc": list(accuracies)}


def _write_earlier_completed(experiments, spec, accuracies):
    directory = run_dir(experiments, spec)
    directory.mkdir(parents=True)
    config = _earlier_config(spec)
    (directory / "status.json").write_text(json.dumps(
        {"status": "completed", "epoch": len(accuracies), "max_acc": max(accuracies),
         "config": config}, indent=2))
    (directory / "metrics.json").write_text(json.dumps(
        {**_earlier_curves(accuracies), "config": config}))
    return directory


def _write_earlier_checkpoint(directory, accuracies):
    """checkpoint.pth as the earlier train.py saved it (real SGD and cosine schedule state)."""
    import torch

    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=150)
    model(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    scheduler.step()
    curves = _earlier_curves(accuracies)
    torch.save({"epoch": len(accuracies) - 1, "model_state_dict": model.state_dict(),
                "optimizer_state_dict": optimizer.state_dict(),
                "scheduler_state_dict": scheduler.state_dict(), "distillation_state_dict": None,
                **curves, "max_acc": max(accuracies), "config": _earlier_config(
                    RunSpec("Cifar100", S, 1))}, directory / "checkpoint.pth")


class _Payload:
    """Pickles to a call of os.mkdir: loading it unsafely would create ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def _write_earlier_in_progress(experiments, spec, epoch, checkpoint=None):
    directory = run_dir(experiments, spec)
    directory.mkdir(parents=True)
    (directory / "status.json").write_text(json.dumps(
        {"status": "in_progress", "epoch": epoch, "max_acc": 27.01,
         "config": _earlier_config(spec), "pbs_job_id": "7000522.sched01"}, indent=2))
    return directory


@pytest.fixture
def earlier(tmp_path):
    """A Cifar100 study over a tree in the earlier code's formats: completed runs whose
    metrics' config has no 'epochs', one collapsed RKD run, an in-progress teacher with a
    readable checkpoint.pth and no metrics.json, an in-progress KD run whose checkpoint is a
    pickle payload, a run submitted but not started (status.json holds only pbs_job_id)."""
    study_path = write_local_study(tmp_path / "study.toml", name="earlier", datasets=["Cifar100"],
                             teacher=T, student=S, methods=["logit", "rkd"], alphas=[0.5],
                             seeds=[0, 1], epochs=150)
    study = load_study(study_path)
    experiments = study.experiments_dir
    rising = [5.0 + 5.0 * i for i in range(12)]
    _write_earlier_completed(experiments, RunSpec("Cifar100", T, 0), [a + 16 for a in rising])
    _write_earlier_completed(experiments, RunSpec("Cifar100", S, 0), [a + 13 for a in rising])
    _write_earlier_completed(experiments, RunSpec("Cifar100", S, 0, "logit", T, 0.5),
                             [a + 11 for a in rising])
    _write_earlier_completed(experiments, RunSpec("Cifar100", S, 0, "rkd", T, 0.5),
                             [1.0, 1.1, 1.25, 1.0] * 3)
    teacher = _write_earlier_in_progress(experiments, RunSpec("Cifar100", T, 1), 5)
    _write_earlier_checkpoint(teacher, [10.0, 15.0, 18.0, 22.0, 25.0, 27.01])
    crafted = _write_earlier_in_progress(experiments, RunSpec("Cifar100", S, 1, "logit", T, 0.5),
                                         3)
    import torch
    torch.save({"train_loss": [1.0], "test_acc": _Payload(tmp_path / "payload-ran")},
               crafted / "checkpoint.pth")
    submitted = run_dir(experiments, RunSpec("Cifar100", S, 1))
    submitted.mkdir(parents=True)
    (submitted / "status.json").write_text('{"pbs_job_id": "7000521.sched01"}')
    return study_path


def _state_hashes(root):
    """SHA-256 of every file under ``root`` except the curves figures plot draws."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != plots.CURVES_FILE}


def _curves_options(path):
    with Image.open(path) as image:
        return json.loads(image.info[plot_curves._OPTIONS_KEY])


def test_is_collapsed_is_within_two_points_of_chance_or_below():
    assert is_collapsed(12.0, 10) and is_collapsed(3.0, 100)
    assert is_collapsed(1.25, 100) and is_collapsed(0.0, 200)
    assert not is_collapsed(12.01, 10) and not is_collapsed(3.01, 100)
    assert not is_collapsed(None, 10) and not is_collapsed(1.0, None)
    assert not is_collapsed(float("nan"), 10)


def test_earlier_tree_plot_changes_no_state_file(earlier, tmp_path):
    experiments = load_study(earlier).experiments_dir
    before = _state_hashes(experiments)
    assert cli.main(["plot", str(earlier)]) == 0
    assert cli.main(["plot", "--verbose", "--full-accuracy-axis", str(earlier)]) == 0
    assert _state_hashes(experiments) == before
    assert not (tmp_path / "payload-ran").exists()


def test_collapsed_run_marked_and_left_out_of_the_overview_scale(earlier):
    study = load_study(earlier)
    report = plots.plot_study(study)
    collapsed = "Cifar100-rkd-a0.5-ResNet112_to_ResNet56-s0"
    assert report.collapsed == [collapsed]
    states = study_run_states(study)
    cells = plots.progress_cells(study, states)
    pair = study.pairs[0]
    assert cells[("Cifar100", pair, "rkd", 0.5, 0)] == plots.COLLAPSED
    assert cells[("Cifar100", pair, "logit", 0.5, 0)] == "completed"
    assert "4/8 runs completed (1 collapsed); " in plots.progress_title(study, states, 0)

    groups, left_out = plots.overview_groups(study, states)
    by_key = {(g.method, g.alpha): g for g in groups}
    assert by_key[("rkd", 0.5)].accuracies == [] and left_out == {
        ("Cifar100", pair, "kd", "rkd", 0.5): [1.25]}
    assert by_key[("logit", 0.5)].accuracies == [71.0]
    figure = plots.plot_accuracy_overview(study, states, plots.progress_dir(study) / "o.png", 0)
    low, high = figure.axes[0].get_ylim()
    assert 65.0 < low < 71.0 and 76.0 < high < 85.0   # 71..76 readable, 1.25 out of range

    experiments = study.experiments_dir
    rkd = run_dir(experiments, RunSpec("Cifar100", S, 0, "rkd", T, 0.5)) / plots.CURVES_FILE
    logit = run_dir(experiments, RunSpec("Cifar100", S, 0, "logit", T, 0.5)) / plots.CURVES_FILE
    assert _curves_options(rkd)["full_scale"] and "COLLAPSED" in _curves_options(rkd)["title"]
    assert _curves_options(rkd)["chance"] == 1.0
    assert not _curves_options(logit)["full_scale"]
    # the option draws every run on 0-100 %, and changing it redraws the figures
    report = plots.plot_study(study, full_scale=True)
    assert "Cifar100-logit-a0.5-ResNet112_to_ResNet56-s0" in report.written
    assert collapsed in report.unchanged
    assert _curves_options(logit)["full_scale"]


def test_titles_take_the_epoch_count_from_the_metrics(earlier):
    study = load_study(earlier)
    plots.plot_study(study)
    titles = {}
    for spec in study.runs():
        png = run_dir(study.experiments_dir, spec) / plots.CURVES_FILE
        if png.exists():
            titles[spec.name] = _curves_options(png)["title"]
    assert len(titles) == 5
    assert not any("?" in title for title in titles.values())
    assert "completed, epoch 12/12, best 76.00%" in titles["Cifar100-pure-ResNet112-s0"]
    teacher = titles["Cifar100-pure-ResNet112-s1"]
    assert "in progress, epoch 6, best 27.01%" in teacher and "checkpoint.pth" in teacher
    states = {s.spec.name: s for s in study_run_states(study)}
    assert plots._why_incomplete(states["Cifar100-pure-ResNet112-s1"]) == (
        "in progress", "in progress (epoch 5)")


def test_in_progress_earlier_run_gets_curves_from_its_checkpoint(earlier, tmp_path):
    study = load_study(earlier)
    report = plots.plot_study(study)
    teacher_dir = run_dir(study.experiments_dir, RunSpec("Cifar100", T, 1))
    assert "Cifar100-pure-ResNet112-s1" in report.written
    assert not (teacher_dir / "metrics.json").exists()
    with Image.open(teacher_dir / plots.CURVES_FILE) as image:
        assert image.info[plot_curves.STAMP_KEY] == hashlib.sha256(
            (teacher_dir / "checkpoint.pth").read_bytes()).hexdigest()
    curves = plot_curves.read_curves(teacher_dir)
    assert curves.series["test_acc"] == [10.0, 15.0, 18.0, 22.0, 25.0, 27.01]
    why = {name: (reason, partial) for name, reason, partial in report.incomplete}
    assert why["Cifar100-pure-ResNet112-s1"] == ("in progress (epoch 5)", True)

    # the crafted checkpoint: refused in one line naming it, and its payload never ran
    crafted = "Cifar100-logit-a0.5-ResNet112_to_ResNet56-s1"
    reason, partial = why[crafted]
    assert not partial and "\n" not in reason
    assert reason.startswith("unreadable file ") and "checkpoint.pth: refused by the safe " \
        "loader (needs posix.mkdir" in reason
    assert not (tmp_path / "payload-ran").exists()
    assert not (run_dir(study.experiments_dir, RunSpec("Cifar100", S, 1, "logit", T, 0.5))
                / plots.CURVES_FILE).exists()


def test_skip_report_is_one_line_per_reason(earlier, capsys):
    assert cli.main(["plot", str(earlier)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "collapsed (completed at chance accuracy): 1" in lines
    assert "  in progress: 1 (1 with curves so far)" in lines
    assert "  waiting for the teacher: 1" in lines
    # the run submitted but not started (status.json holds only pbs_job_id) is 'queued'
    # where status reads such a file (issue 12 item 1), else a second unreadable file
    assert ("  unreadable file: 1" in lines and "  queued: 1" in lines) or (
        "  unreadable file: 2" in lines and not any("queued" in line for line in lines))
    assert "  (kdlab plot --verbose lists the runs)" in lines
    assert "Cifar100" not in out.split("runs without complete curves")[1]   # no run names
    reasons = [line.split(":")[0].strip() for line in lines if line.startswith("  ")
               and not line.startswith("  (")]
    assert len(reasons) == len(set(reasons))
    total = int(out.split("runs without complete curves (")[1].split(")")[0])
    assert sum(int(line.split(": ")[1].split()[0]) for line in lines
               if line.startswith("  ") and not line.startswith("  (")) == total

    assert cli.main(["plot", "--verbose", str(earlier)]) == 0
    out = capsys.readouterr().out
    assert "    Cifar100-rkd-a0.5-ResNet112_to_ResNet56-s1: not started: waiting for the " \
           "teacher (teacher Cifar100-pure-ResNet112-s1 is running)" in out
    assert "collapsed (completed at chance accuracy): 1 — " \
           "Cifar100-rkd-a0.5-ResNet112_to_ResNet56-s0" in out


# ---- an analysis directory plot cannot write (issue 11, item 9) ---------------------------

def test_figures_directory_that_is_a_file_is_one_line_exit_2(tmp_path, capsys):
    study_path = write_local_study(tmp_path / "study.toml")
    study = load_study(study_path)
    write_run(study.experiments_dir, RunSpec("Digits", "ResNet20", 0))
    analysis = tmp_path / "analysis"
    analysis.write_text("not a directory")
    assert cli.main(["plot", str(study_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    error = captured.err.strip()
    assert "\n" not in error and "Traceback" not in error
    assert error == (f"kdlab plot: error: cannot write {plots.progress_dir(study)} "
                     f"({analysis} is a file, not a directory): expected a writable location")
    assert analysis.read_text() == "not a directory"
    # nothing drawn before the refusal
    assert not (run_dir(study.experiments_dir, RunSpec("Digits", "ResNet20", 0))
                / plots.CURVES_FILE).exists()


def test_figure_write_failure_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    study_path = write_local_study(tmp_path / "study.toml")
    study = load_study(study_path)
    write_run(study.experiments_dir, RunSpec("Digits", "ResNet20", 0))
    out = plots.progress_dir(study)
    real_write = plot_curves.state_files.atomic_write_bytes

    def write(path, data):   # the disk fills up while the overview is being written
        if Path(path).parent == out:
            raise OSError(28, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(plot_curves.state_files, "atomic_write_bytes", write)
    assert cli.main(["plot", str(study_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert error == (f"kdlab plot: error: cannot write {out / plots.PROGRESS_GRID_FILE}: "
                     "No space left on device")


def test_read_only_figures_directory_is_one_line_exit_2(tmp_path):
    """Run as a user the directory is read-only for (root ignores permission bits, so under
    root the command runs as nobody through setpriv)."""
    import shutil
    import subprocess
    import sys
    import tempfile

    as_other_user = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: no read-only directory can be had")
        as_other_user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    root = Path(tempfile.mkdtemp(prefix="kdlab-readonly-"))
    try:
        root.chmod(0o755)
        study_path = write_local_study(root / "study.toml")
        study = load_study(study_path)
        write_run(study.experiments_dir, RunSpec("Digits", "ResNet20", 0))
        out = plots.progress_dir(study)
        out.mkdir(parents=True)
        for path in [root, *root.rglob("*")]:
            path.chmod(0o555 if path.is_dir() else 0o444)
        before = _state_hashes(root)
        source = Path(cli.__file__).resolve().parents[1]
        result = subprocess.run(
            [*as_other_user, sys.executable, "-m", "kdlab", "plot", str(study_path)],
            capture_output=True, text=True, timeout=120, cwd=root,
            env={**os.environ, "PYTHONPATH": str(source), "MPLCONFIGDIR": str(root / "mpl")})
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip() == (f"kdlab plot: error: cannot write {out} (the "
                                         "directory is read-only): expected a writable location")
        assert _state_hashes(root) == before
    finally:
        for path in [root, *root.rglob("*")]:
            path.chmod(0o755)
        shutil.rmtree(root)


def test_plot_prints_the_outside_grid_line_that_status_prints(tmp_path, capsys):

    build_earlier_tree(tmp_path)
    study_path = write_earlier_study(tmp_path)
    assert cli.main(["status", str(study_path)]) == 0
    (status_line,) = [line for line in capsys.readouterr().out.splitlines()
                      if line.startswith("outside the grid")]
    assert cli.main(["plot", str(study_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line for line in out if line.startswith("outside the grid")] == [status_line]
    assert "6 run directories" in status_line
    assert cli.main(["plot", "--verbose", str(study_path)]) == 0
    out = capsys.readouterr().out
    for relative, reason in EARLIER_OUTSIDE.items():
        assert f"  {relative}: {reason}\n" in out


def test_plot_and_status_share_one_collapse_rule(tmp_path):
    from kdlab.study import progress as study_progress
    from kdlab.study.study_file import Role

    assert is_collapsed is study_progress.is_collapsed  # the one rule; ops keeps no copy
    assert not any(hasattr(module, "is_collapsed") for module in (plots, plot_curves))
    spec = RunSpec("Cifar10", "ResNet8", 0)
    for accuracy, expected in ((12.0, True), (12.01, False), (0.0, True), (None, False)):
        for state_name in ("completed", "running"):
            state = study_progress.RunState(spec, tmp_path, Role.PURE, state_name,
                                        {"status": "completed", "max_acc": accuracy}, "")
            assert state.collapsed is (expected and state_name == "completed")
            assert plots.run_is_collapsed(state) is state.collapsed
