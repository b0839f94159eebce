"""``kdlab status``: classifying every run from its state files (new and legacy trees), the
table's counts and accuracies, failed / stuck / liveness-unknown runs, and the CLI."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import textwrap
from pathlib import Path

import pytest
from scipy import stats as scipy_stats

from kdlab.run import state_files
from kdlab.cli import main
from kdlab.run.errors import UserError
from kdlab.run.layout import run_dir
from kdlab.study.status import format_report, status_report
from kdlab.study.progress import (COMPLETED, FAILED, NOT_STARTED, QUEUED, RUN_STATES, RUNNING,
                                  UNREADABLE, WAITING, check_liveness, study_run_states)
from kdlab.study.study_file import load_study
from builders import (EARLIER_OUTSIDE, FakeScheduler, build_earlier_tree, snapshot,
                      write_earlier_study, write_run, write_study)

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy"

# What tests/fixtures/legacy/README.md says the tree holds, run by run.
LEGACY_STATES = {
    "Cifar10-pure-ResNet112-s0": COMPLETED, "Cifar10-pure-ResNet112-s1": COMPLETED,
    "Cifar10-pure-ResNet56-s0": COMPLETED, "Cifar10-pure-ResNet56-s1": RUNNING,
    "Cifar10-logit-a0.5-ResNet112_to_ResNet56-s0": COMPLETED,
    "Cifar10-logit-a0.5-ResNet112_to_ResNet56-s1": FAILED,
    "Cifar10-fitnets-a0.5-ResNet112_to_ResNet56-s0": COMPLETED,
    "Cifar10-fitnets-a0.5-ResNet112_to_ResNet56-s1": NOT_STARTED,
    "SVHN-pure-ResNet112-s0": COMPLETED, "SVHN-pure-ResNet112-s1": NOT_STARTED,
    "SVHN-pure-ResNet56-s0": NOT_STARTED, "SVHN-pure-ResNet56-s1": NOT_STARTED,
    "SVHN-logit-a0.5-ResNet112_to_ResNet56-s0": UNREADABLE,
    "SVHN-logit-a0.5-ResNet112_to_ResNet56-s1": WAITING,
    "SVHN-fitnets-a0.5-ResNet112_to_ResNet56-s0": NOT_STARTED,
    "SVHN-fitnets-a0.5-ResNet112_to_ResNet56-s1": WAITING,
}


@pytest.fixture
def legacy(tmp_path, monkeypatch):
    """A copy of the legacy tree, the working directory set to it (the study's paths are
    relative)."""
    copy = tmp_path / "legacy"
    shutil.copytree(LEGACY, copy)
    monkeypatch.chdir(copy)
    return load_study(copy / "study.toml")


def test_legacy_tree_is_classified_run_by_run(legacy):
    states = study_run_states(legacy)
    assert [state.spec for state in states] == legacy.runs()
    assert {state.spec.name: state.state for state in states} == LEGACY_STATES
    by_name = {state.spec.name: state for state in states}
    running = by_name["Cifar10-pure-ResNet56-s1"]
    assert running.job_id == "4101237.sched01"
    assert "epoch 7/12" in running.detail  # epochs from the legacy config
    unreadable = by_name["SVHN-logit-a0.5-ResNet112_to_ResNet56-s0"]
    assert unreadable.status is None
    assert str(Path("experiments/SVHN/logit/alpha_0.5/ResNet112_to_ResNet56/0/status.json")) \
        in unreadable.detail and "not valid JSON" in unreadable.detail
    waiting = by_name["SVHN-logit-a0.5-ResNet112_to_ResNet56-s1"]
    assert "SVHN-pure-ResNet112-s1" in waiting.detail
    assert [state.role for state in states[:2]] == ["teacher", "teacher"]
    assert by_name["Cifar10-pure-ResNet112-s0"].max_acc == 90.94


def test_report_counts_and_accuracies_match_an_independent_count(legacy):
    states = study_run_states(legacy)
    fake = FakeScheduler({"4101237.sched01": False})
    liveness = check_liveness(states, "pbs", scheduler_factory=lambda name: fake)
    assert fake.asked == ["4101237.sched01"]
    report = status_report(legacy, states, liveness)
    expected_counts = {name: list(LEGACY_STATES.values()).count(name) for name in RUN_STATES}
    assert report["counts"] == expected_counts and report["total"] == 16
    assert report["progress_percent"] == pytest.approx(100 * 6 / 16)
    completed_accuracies = []
    for name, state in LEGACY_STATES.items():
        if state == COMPLETED:
            spec = next(s for s in legacy.runs() if s.name == name)
            completed_accuracies.append(
                json.loads((run_dir(legacy.experiments_dir, spec) / "status.json")
                           .read_text())["max_acc"])
    assert report["mean_max_acc_completed"] == pytest.approx(statistics.fmean(completed_accuracies))
    groups = {(g["dataset"], g["method"], g["alpha"]): g for g in report["groups"]}
    assert len(groups) == 2 * (2 + 2)   # data sets x (teacher, pure, logit 0.5, fitnets 0.5)
    teacher = groups[("Cifar10", "teacher", None)]
    assert (teacher["completed"], teacher["runs"]) == (2, 2)
    assert teacher["mean_max_acc"] == pytest.approx((90.94 + 89.9) / 2)
    logit = groups[("Cifar10", "logit", 0.5)]
    assert (logit["completed"], logit["failed"], logit["mean_max_acc"]) == (1, 1, 88.61)
    svhn_logit = groups[("SVHN", "logit", 0.5)]
    assert (svhn_logit["unreadable"], svhn_logit["waiting"], svhn_logit["mean_max_acc"]) == \
        (1, 1, None)
    # Epochs trained: completed runs whole, the running one 7 of 12, the failed one 3.
    assert report["epoch_progress_percent"] == pytest.approx(100 * (6 * 12 + 7 + 3) / (16 * 12))
    # Problems, with reasons.
    assert [entry["run"] for entry in report["failed"]] == \
        ["Cifar10-logit-a0.5-ResNet112_to_ResNet56-s1"]
    assert report["failed"][0]["reason"] == "no reason recorded"
    (stuck,) = report["stuck"]
    assert stuck["run"] == "Cifar10-pure-ResNet56-s1" and "4101237.sched01 is gone" in stuck["reason"]
    assert [entry["run"] for entry in report["unreadable"]] == \
        ["SVHN-logit-a0.5-ResNet112_to_ResNet56-s0"]
    text = format_report(report)
    assert "stuck (1):" in text and "failed (1):" in text and "unreadable status.json (1):" in text
    assert "6/16 runs completed" in text


def test_liveness_unknown_when_the_scheduler_is_missing_or_failing(legacy):
    states = study_run_states(legacy)
    missing = FakeScheduler({}, problem="qstat not found on PATH")
    liveness = check_liveness(states, "pbs", scheduler_factory=lambda name: missing)
    report = status_report(legacy, states, liveness)
    assert report["stuck"] == []
    (entry,) = report["liveness_unknown"]
    assert "liveness unknown (pbs: qstat not found on PATH)" in entry["reason"]
    failing = FakeScheduler({"4101237.sched01": "qstat: cannot connect to server"})
    liveness = check_liveness(states, "pbs", scheduler_factory=lambda name: failing)
    (entry,) = status_report(legacy, states, liveness)["liveness_unknown"]
    assert "cannot connect" in entry["reason"]
    alive = FakeScheduler({"4101237.sched01": True})
    liveness = check_liveness(states, "pbs", scheduler_factory=lambda name: alive)
    report = status_report(legacy, states, liveness)
    assert report["stuck"] == [] and report["liveness_unknown"] == []


def test_cli_status_on_the_legacy_tree_without_qstat(legacy, capsys, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert main(["status", "study.toml", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["counts"][RUNNING] == 1 and report["counts"][COMPLETED] == 6
    (entry,) = report["liveness_unknown"]
    assert "qstat" in entry["reason"]
    runs = {run["run"]: run for run in report["runs"]}
    assert runs["Cifar10-pure-ResNet56-s1"]["job_id"] == "4101237.sched01"
    assert runs["Cifar10-pure-ResNet56-s1"]["job_alive"] is None
    assert main(["status", "study.toml"]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("data set"))
    assert "done" in header and "waiting" in header and "mean acc %" in header
    row = next(line for line in lines if line.startswith("Cifar10") and "logit" in line)
    assert row.split()[:5] == ["Cifar10", "logit", "0.5", "1", "0"]
    assert "liveness unknown (1):" in text


def test_stuck_runs_from_a_real_scheduler_answer(tmp_path, monkeypatch):
    """A fake qstat on PATH that says the legacy job is unknown: the run is stuck."""
    copy = tmp_path / "legacy"
    shutil.copytree(LEGACY, copy)
    monkeypatch.chdir(copy)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("qsub", "qdel", "qrls"):
        (bin_dir / name).write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "qstat").write_text("#!/bin/sh\necho \"qstat: Unknown Job Id $5\" >&2\nexit 153\n")
    for path in bin_dir.iterdir():
        path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    report = status_report(load_study("study.toml"))
    assert [entry["run"] for entry in report["stuck"]] == ["Cifar10-pure-ResNet56-s1"]


def test_new_style_states_and_no_job_id(tmp_path):
    study_path = tmp_path / "study.toml"
    study_path.write_text(textwrap.dedent(f"""\
        name = "s"
        datasets = ["Digits"]
        teacher = "ResNet20"
        student = "ResNet8"
        methods = ["logit"]
        alphas = [0.5]
        seeds = [0]
        experiments_dir = "{tmp_path / 'experiments'}"
        [training]
        epochs = 4
        """))
    study = load_study(study_path)
    teacher, pure, kd = study.runs()
    state_files.write_status(run_dir(study.experiments_dir, teacher),
                          {"status": "queued", "job_id": "17", "scheduler": "fake"})
    state_files.write_status(run_dir(study.experiments_dir, pure),
                          {"status": "in_progress", "epoch": 2, "epochs": 4})
    states = study_run_states(study)
    assert [state.state for state in states] == [QUEUED, RUNNING, WAITING]
    assert "teacher Digits-pure-ResNet20-s0 is queued" == states[2].detail
    report = status_report(study, states, liveness={states[0].run_dir: True})
    assert report["stuck"] == []
    (entry,) = report["liveness_unknown"]
    assert entry["run"] == pure.name and "no job id" in entry["reason"]
    assert report["epoch_progress_percent"] == pytest.approx(100 * 2 / 12)
    assert report["mean_max_acc_completed"] is None


# ---- trees of the earlier research code (issue 12) ----------------------------------------

@pytest.fixture
def earlier(tmp_path):
    """The earlier-format tree of builders.build_earlier_tree and its study."""
    build_earlier_tree(tmp_path)
    return tmp_path


def test_earlier_tree_every_status_variant(earlier):
    study = load_study(write_earlier_study(earlier))
    states = {state.spec.name: state for state in study_run_states(study)}
    teacher0, teacher1 = (states[f"Cifar10-pure-ResNet112-s{seed}"] for seed in (0, 1))
    pure0, pure1 = (states[f"Cifar10-pure-ResNet56-s{seed}"] for seed in (0, 1))
    assert teacher0.state == COMPLETED and teacher0.max_acc == 93.4
    assert "epoch 150/150" in teacher0.detail   # the count comes from the run, never '?'
    # A status.json holding only a job id (either key) is a queued run with that job.
    assert (teacher1.state, teacher1.job_id) == (QUEUED, "7000521.sched01")
    assert (pure1.state, pure1.job_id) == (QUEUED, "7000522.sched01")
    assert pure0.state == RUNNING and pure0.job_id == "7000520.sched01"
    assert states["Cifar10-fitnets-a0.5-ResNet112_to_ResNet56-s1"].state == WAITING
    # Both job ids are asked of the scheduler like any other.
    fake = FakeScheduler({"7000521.sched01": True, "7000522.sched01": False})
    liveness = check_liveness(list(states.values()), "pbs", scheduler_factory=lambda name: fake)
    assert liveness[teacher1.run_dir] is True and liveness[pure1.run_dir] is False
    assert {"7000521.sched01", "7000522.sched01"} <= set(fake.asked)


def test_earlier_tree_provenance_collapse_and_outside_grid_in_json(earlier, capsys,
                                                                    monkeypatch):
    study_path = write_earlier_study(earlier)
    before = snapshot(earlier)
    monkeypatch.setenv("PATH", "/nonexistent")
    assert main(["status", str(study_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    runs = {run["run"]: run for run in report["runs"]}
    assert runs["Cifar10-pure-ResNet112-s0"]["made_by"] == "earlier code"
    assert runs["Cifar10-pure-ResNet112-s1"]["state"] == QUEUED
    collapsed = runs["Cifar10-logit-a0.5-ResNet112_to_ResNet56-s0"]
    assert collapsed["collapsed"] is True and "collapsed" in collapsed["detail"]
    assert runs["Cifar10-pure-ResNet112-s0"]["collapsed"] is False
    assert report["collapsed"] == ["Cifar10-logit-a0.5-ResNet112_to_ResNet56-s0"]
    outside = {entry["run_dir"]: entry["reason"] for entry in report["outside_grid"]}
    assert outside == EARLIER_OUTSIDE
    assert main(["status", str(study_path)]) == 0
    text = capsys.readouterr().out
    (line,) = [line for line in text.splitlines() if line.startswith("outside the grid")]
    assert "6 run directories" in line and "0.95" in line
    assert "earlier research code" in text
    header = next(line for line in text.splitlines() if line.startswith("data set"))
    assert header.endswith("collapsed  made by earlier code")
    teacher_row = next(line for line in text.splitlines() if "teacher ResNet112" in line)
    assert teacher_row.split()[-2:] == ["-", "2"]   # the completed and the job-id-only run
    assert snapshot(earlier) == before   # nothing read was rewritten


def test_no_alpha_layout_reads_the_beta_tree(earlier):
    study = load_study(write_earlier_study(earlier, layout="no-alpha"))
    states = {state.spec.name: state for state in study_run_states(study)}
    fitnets = states["Cifar10-fitnets-a0.5-ResNet112_to_ResNet56-s0"]
    assert fitnets.state == COMPLETED and fitnets.max_acc == 72.5
    assert fitnets.run_dir == earlier / "experiments/Cifar10/fitnets/ResNet112_to_ResNet56/0"
    outside = {entry["run_dir"]: entry["reason"] for entry in status_report(
        study, check_jobs=False)["outside_grid"]}
    assert outside["Cifar10/logit/alpha_0.5/ResNet112_to_ResNet56/0"] == "other layout"
    assert outside["Cifar10/logit/alpha_0.95/ResNet112_to_ResNet56/0"] == "other layout"


def test_no_alpha_layout_needs_exactly_one_alpha(tmp_path):
    path = write_study(tmp_path / "s.toml", alphas=(0.5, 0.75), top='layout = "no-alpha"\n')
    with pytest.raises(UserError, match="'alphas'.*exactly one alpha"):
        load_study(path)


def test_groups_report_mean_std_ci_and_count(tmp_path):

    study = load_study(write_study(tmp_path / "s.toml", seeds=(0, 1, 2)))
    accuracies = [61.0, 64.0, 70.0]
    for seed, accuracy in enumerate(accuracies):
        write_run(study.experiments_dir, study.runs()[seed], test_acc=[accuracy])
    report = status_report(study, check_jobs=False)
    teacher = next(group for group in report["groups"] if group["method"] == "teacher")
    summary = teacher["max_acc_summary"]
    assert summary["n"] == 3 and summary["mean"] == pytest.approx(statistics.fmean(accuracies))
    assert summary["std"] == pytest.approx(statistics.stdev(accuracies))
    low, high = scipy_stats.t.interval(0.95, 2, loc=statistics.fmean(accuracies),
                                       scale=statistics.stdev(accuracies) / 3 ** 0.5)
    assert summary["ci95"] == pytest.approx([low, high])
    text = format_report(report)
    assert "95% CI" in text and f"{low:.2f}..{high:.2f}" in text


def test_seed_summary_conventions():
    from kdlab.study.stats import summarize

    assert summarize([]).mean is None and summarize([]).n == 0
    one = summarize([71.5])
    assert (one.n, one.mean, one.std, one.ci_low) == (1, 71.5, None, None)
    assert one.text() == "71.50 (n=1)"
    two = summarize([70.0, 72.0, float("nan")])
    assert two.n == 2 and two.std == pytest.approx(2 ** 0.5)
    low, high = scipy_stats.t.interval(0.95, 1, loc=71.0, scale=1.0)
    assert (two.ci_low, two.ci_high) == pytest.approx((low, high))


@pytest.mark.parametrize("damage", ["bytes", "wrong_types"])
def test_damaged_status_is_unreadable_and_named_never_fatal(tmp_path, capsys, damage):
    study_path = write_study(tmp_path / "s.toml", seeds=(0, 1))
    study = load_study(study_path)
    broken = study.run_dir(study.runs()[0])
    broken.mkdir(parents=True)
    (broken / "status.json").write_bytes(
        b'{"status": "completed", "max_acc": 9\xff}' if damage == "bytes" else
        b'{"status": "queued", "job_id": "1", "missed_starts": "x", "job_history": 5}')
    before = snapshot(tmp_path)
    assert main(["status", str(study_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (entry,) = report["unreadable"]
    assert entry["run_dir"] == str(broken) and entry["detail"].startswith("unreadable: ")
    assert ("UTF-8" if damage == "bytes" else "missed_starts") in entry["detail"]
    # the other runs are still classified: teacher s1 and both pure runs, KD runs waiting
    assert report["counts"][NOT_STARTED] == 3 and report["counts"][WAITING] == 2
    assert main(["queue", "--dry-run", str(study_path)]) == 0
    assert "error" in capsys.readouterr().out
    assert snapshot(tmp_path) == before


def test_study_file_that_is_not_utf8_is_one_line(tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_bytes(b'name = "caf\xe9"\n')
    assert main(["status", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and "UTF-8" in err


def test_states_by_cell_follow_the_study_order(legacy):
    from kdlab.study.progress import states_by_cell

    states = study_run_states(legacy)
    cells = states_by_cell(legacy, states)
    assert [cell for cell, _ in cells] == legacy.cells()
    assert sorted((s.spec for _, members in cells for s in members)) == sorted(legacy.runs())
    for cell, members in cells:
        assert [state.spec for state in members] == legacy.cell_runs(cell)


def test_status_summarises_the_accuracy_the_study_selects_by(tmp_path, capsys):
    """With selection = "validation" the mean, std and interval are of selected_acc (the test
    accuracy of the epoch chosen on the hold-out), not of the best-epoch max_acc."""

    path = write_study(tmp_path / "study.toml", methods=(), alphas=(), seeds=(0, 1),
                       training='epochs = 4\nselection = "validation"')
    study = load_study(path)
    selected = {0: 90.0, 1: 94.0}
    for spec in study.runs():
        if spec.model == study.student:
            state_files.write_status(study.run_dir(spec), {
                "status": "completed", "epoch": 4, "max_acc": 99.0, "final_acc": 95.0,
                "selected_acc": selected[spec.seed], "run": spec.name})
    report = status_report(study, check_jobs=False)
    assert report["accuracy_selected_by"]["key"] == "selected_acc"
    (pure,) = [group for group in report["groups"] if group["method"] == "pure"]
    summary = pure["selected_acc_summary"]
    assert summary["n"] == 2 and summary["mean"] == pytest.approx(92.0)
    assert summary["std"] == pytest.approx(2.0 ** 1.5)   # sample std of 90 and 94
    assert pure["max_acc_summary"]["mean"] == pytest.approx(99.0)
    text = format_report(report)
    assert "92.00" in text and "selected_acc" in text
