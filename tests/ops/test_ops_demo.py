"""kdlab demo: the packaged study equals the repository's, the work directory is prepared
with the study's paths anchored there, and (slow) the fast variant runs end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdlab import cli
from kdlab.run.errors import UserError
from kdlab.ops import demo
from kdlab.study.progress import COMPLETED, study_run_states

REPO = Path(__file__).resolve().parents[2]


def test_packaged_demo_study_is_the_repository_one():
    """``src/kdlab/studies/demo.toml`` ships inside the package so an installed kdlab can run
    the demo; it must stay a copy of ``studies/demo.toml``."""
    assert (REPO / "src/kdlab/studies/demo.toml").read_text() == \
        (REPO / "studies/demo.toml").read_text()
    assert demo.packaged_demo_study() == (REPO / "studies/demo.toml").read_text()


def test_prepare_workdir_anchors_paths_and_overrides_epochs(tmp_path):
    study = demo.prepare_workdir(tmp_path / "work", epochs=1)
    work = (tmp_path / "work").resolve()
    assert study.training["epochs"] == 1
    assert study.experiments_dir == work / "experiments"
    assert study.analysis_dir == work / "analysis"
    assert (work / "demo.toml").is_file()
    assert study.scheduler.backend == "local"
    assert study.datasets == ["Digits"]
    assert len(study.methods) == 6
    # the copy in the work directory is a valid study with the override
    from kdlab.study.study_file import load_study
    assert load_study(work / "demo.toml").training["epochs"] == 1
    with pytest.raises(UserError, match="--epochs 0"):
        demo.prepare_workdir(tmp_path / "other", epochs=0)


def test_prepare_workdir_overrides_the_pack_size(tmp_path):
    """--pack-size N replaces the demo's [scheduler] pack_size (bench_demo's unpacked run)
    and leaves every other setting, the training epochs included, as shipped."""
    shipped = demo.prepare_workdir(tmp_path / "shipped")
    assert shipped.scheduler.pack_size > 1          # the demo packs its KD runs
    study = demo.prepare_workdir(tmp_path / "solo", pack_size=1, epochs=2)
    assert study.scheduler.pack_size == 1
    assert study.training["epochs"] == 2
    assert study.scheduler.max_live_jobs == shipped.scheduler.max_live_jobs
    assert study.training["batch_size"] == shipped.training["batch_size"]
    with pytest.raises(UserError, match="--pack-size 0"):
        demo.prepare_workdir(tmp_path / "other", pack_size=0)
    assert not (tmp_path / "other").exists()     # refused before anything is written


@pytest.mark.slow
def test_demo_fast_variant_end_to_end(tmp_path, capsys):
    """The CI variant: every run of the demo grid for one epoch, through the real queue with
    the local backend, then extract, analyze and plot."""
    workdir = tmp_path / "demo"
    assert cli.main(["demo", "--workdir", str(workdir), "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    study = demo.prepare_workdir(workdir, epochs=1)
    states = study_run_states(study)
    assert [s.state for s in states] == [COMPLETED] * len(study.runs())
    report = workdir.resolve() / "analysis" / "experiment_demo" / "report.html"
    assert report.is_file() and report.stat().st_size > 1000
    assert out.rstrip().endswith(f"report: {report}")
    assert f"training finished: {len(states)}/{len(states)} runs completed" in out
    progress = workdir.resolve() / "analysis" / "experiment_demo" / "progress"
    assert (progress / "progress_grid.png").is_file()
    for state in states:
        assert (state.run_dir / "curves.png").is_file()
    # running it again does no training: everything is already there
    assert cli.main(["demo", "--workdir", str(workdir), "--epochs", "1"]) == 0
    again = capsys.readouterr().out
    assert "in progress" not in again


def test_run_whose_jobs_keep_dying_is_given_up(tmp_path, monkeypatch):
    """A job that ends at start-up over and over (a bug in training) must not keep the demo
    looping nor hold a job slot: after a few fruitless submissions the run is marked failed
    with the last line of its train.log, and the loop ends."""
    from kdlab.study import decisions as queue_decisions
    from kdlab.run import state_files

    study = demo.prepare_workdir(tmp_path / "work", epochs=1)
    first = study.runs()[0]
    submissions = []

    def decide(states):
        decisions = []
        for state in states:
            if state.spec != first:
                decisions.append(queue_decisions.Decision(state, queue_decisions.DONE, "test"))
            elif state.state == "failed":
                decisions.append(queue_decisions.Decision(state, queue_decisions.FAILED_ACTION, state.detail))
            else:
                decisions.append(queue_decisions.Decision(state, queue_decisions.SUBMIT, "test"))
        return decisions

    def fake_run_queue(study, say, scheduler):
        decisions = decide(study_run_states(study))
        for decision in decisions:
            if decision.action == queue_decisions.SUBMIT:   # a job that dies at once, log and all
                submissions.append(decision.run.spec.name)
                decision.job_id = f"job{len(submissions)}"
                decision.run.run_dir.mkdir(parents=True, exist_ok=True)
                with open(decision.run.run_dir / "train.log", "a") as log:
                    log.write(f"Traceback\nRuntimeError: crash {len(submissions)}\n")
        return decisions, 0

    monkeypatch.setattr(demo, "plan_queue", lambda study: decide(study_run_states(study)))
    monkeypatch.setattr(demo, "run_queue", fake_run_queue)
    lines = []
    counts = demo.train_grid(study, poll_seconds=0.0, log=lines.append)
    assert submissions == [first.name] * demo.MAX_FRUITLESS_SUBMISSIONS
    status = state_files.read_status(study_run_states(study)[0].run_dir)
    assert status["status"] == "failed"
    assert status["reason"] == (f"kdlab demo gave up: its jobs ended "
                                f"{demo.MAX_FRUITLESS_SUBMISSIONS} times without finishing an "
                                f"epoch (train.log: RuntimeError: crash "
                                f"{demo.MAX_FRUITLESS_SUBMISSIONS})")
    assert counts == {"failed": 1, "not_started": 1, "waiting": len(study.kd_runs())}
    assert lines[-1].endswith("0/14 runs completed, 1 failed (1 given up by the demo)")
