"""Every decision of ``kdlab queue`` with the local backend, against jobs of a stand-in
trainer (a small script that takes ``kdlab train``'s arguments, records what it saw and
writes status.json like the real loop), so that the decisions are tested in seconds. The
real ``kdlab train`` under the queue is in test_queue_e2e.py; Slurm in test_queue_slurm.py."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest

from kdlab.run import state_files
from kdlab.cli import main
from kdlab.run.layout import run_dir
from kdlab.study.decisions import (DONE, ERROR, FAILED_ACTION, LATER, LIVE, SUBMIT, UNKNOWN,
                                   WAIT)
from kdlab.study.queue import MAX_MISSED_STARTS, plan_queue, queue_lock, run_queue
from kdlab.schedulers.local import LocalScheduler
from kdlab.study.progress import study_run_states
from kdlab.study.study_file import load_study
from builders import (build_earlier_tree, by_name, dead_local_job_id, snapshot, starts,
                      wait_for_jobs, write_earlier_study, write_fake_trainer_study)


def quiet_queue(study, **kwargs):
    lines = []
    decisions, code = run_queue(study, say=lines.append, **kwargs)
    return decisions, code, lines


def test_whole_study_runs_to_completion_teachers_first(tmp_path):
    study = load_study(write_fake_trainer_study(tmp_path, seeds=(0, 1)))
    assert len(study.runs()) == 8
    decisions, code, lines = quiet_queue(study)
    assert code == 0
    actions = by_name(decisions)
    teachers_and_pure = [spec.name for spec in study.teacher_runs() + study.pure_student_runs()]
    assert {name for name, d in actions.items() if d.action == SUBMIT} == set(teachers_and_pure)
    assert all(d.action == WAIT for d in decisions if d.run.role == "kd")
    assert len(lines) == 9 and lines[-1].startswith("study qtest: 8 runs")
    # The job id was in status.json before the job itself looked at it.
    for decision in decisions:
        if decision.action == SUBMIT:
            status = state_files.read_status(decision.run.run_dir)
            assert status["job_id"] == decision.job_id and status["scheduler"] == "local"
            assert isinstance(status["submitted_at"], float)
    wait_for_jobs(study)
    for decision in decisions:
        if decision.action == SUBMIT:
            (start,) = starts(decision.run.run_dir)
            assert start["seen"]["status"] == "queued"
            assert start["seen"]["job_id"] == decision.job_id
            assert state_files.read_status(decision.run.run_dir)["job_id"] == decision.job_id
    decisions, _, _ = quiet_queue(study)
    assert all(d.action == DONE for d in decisions if d.run.role != "kd")
    assert all(d.action == SUBMIT for d in decisions if d.run.role == "kd")
    wait_for_jobs(study)
    decisions, _, lines = quiet_queue(study)
    assert all(d.action == DONE for d in decisions)
    assert "8 completed" in lines[-1]
    # Every run trained exactly once.
    assert all(len(starts(state.run_dir)) == 1 for state in study_run_states(study))


def test_live_jobs_are_left_alone_and_the_limit_holds(tmp_path, monkeypatch):
    study = load_study(write_fake_trainer_study(tmp_path, seeds=(0, 1, 2), max_live_jobs=4))
    names = [spec.name for spec in study.runs()]
    monkeypatch.setenv("FAKE_MODES", json.dumps({name: "hang" for name in names}))
    decisions, _, _ = quiet_queue(study)
    submitted = [d for d in decisions if d.action == SUBMIT]
    held_back = [d for d in decisions if d.action == LATER]
    # Priority order: the three teachers, then the first pure student.
    assert [d.run.spec for d in submitted] == (study.teacher_runs() + study.pure_student_runs())[:4]
    assert [d.run.spec for d in held_back] == study.pure_student_runs()[1:]
    assert all("held back: 4 of 4" in d.reason for d in held_back)
    try:
        decisions, _, _ = quiet_queue(study)
        assert [d.run.spec for d in decisions if d.action == LIVE] == [d.run.spec for d in submitted]
        assert not [d for d in decisions if d.action == SUBMIT]
        # One job ends (killed: no completed status): its slot and the run go back in.
        scheduler = LocalScheduler()
        first = submitted[0]
        scheduler.cancel(first.job_id)
        deadline = time.time() + 120
        while scheduler.is_alive(first.job_id) and time.time() < deadline:
            time.sleep(0.05)
        decisions, _, _ = quiet_queue(study)
        again = [d for d in decisions if d.action == SUBMIT]
        assert [d.run.spec for d in again] == [first.run.spec]
        assert "is gone" in again[0].reason
        status = state_files.read_status(first.run.run_dir)
        assert status["job_history"] == [first.job_id] and status["job_id"] == again[0].job_id
        assert status["submissions"] == 2
    finally:
        for state in study_run_states(study):
            if state.job_id:
                LocalScheduler().cancel(state.job_id)
        wait_for_jobs(study)


def test_gone_in_progress_run_is_resubmitted_and_keeps_its_state(tmp_path):
    study = load_study(write_fake_trainer_study(tmp_path, methods=(), alphas=()))
    teacher = study.teacher_runs()[0]
    directory = run_dir(study.experiments_dir, teacher)
    old_job = dead_local_job_id()
    state_files.write_status(directory, {"status": "in_progress", "epoch": 1, "epochs": 2,
                                      "max_acc": 40.0, "job_id": old_job, "scheduler": "local"})
    decisions, _, lines = quiet_queue(study)
    decision = by_name(decisions)[teacher.name]
    assert decision.action == SUBMIT
    assert f"job {old_job} is gone" in decision.reason and "resumes" in decision.reason
    status = state_files.read_status(directory)
    assert status["status"] == "queued" and status["epoch"] == 1 and status["max_acc"] == 40.0
    assert status["job_history"] == [old_job]
    wait_for_jobs(study)


def test_failed_runs_are_reported_and_only_retried_when_asked(tmp_path):
    study = load_study(write_fake_trainer_study(tmp_path, methods=(), alphas=()))
    teacher = study.teacher_runs()[0]
    directory = run_dir(study.experiments_dir, teacher)
    state_files.write_status(directory, {"status": "failed", "epoch": 1, "epochs": 2,
                                      "reason": "loss is NaN at epoch 2", "job_id": "7-7-x"})
    before = (directory / "status.json").read_bytes()
    decisions, _, lines = quiet_queue(study)
    decision = by_name(decisions)[teacher.name]
    assert decision.action == FAILED_ACTION
    assert "loss is NaN at epoch 2" in decision.reason and "--retry-failed" in decision.reason
    assert any(line.startswith("failed") and "loss is NaN" in line for line in lines)
    assert (directory / "status.json").read_bytes() == before
    decisions, _, _ = quiet_queue(study, retry_failed=True)
    assert by_name(decisions)[teacher.name].action == SUBMIT
    status = state_files.read_status(directory)
    assert status["status"] == "queued" and "reason" not in status
    assert status["previous_reason"] == "loss is NaN at epoch 2"
    wait_for_jobs(study)


def test_kd_runs_wait_for_a_completed_teacher(tmp_path):
    study = load_study(write_fake_trainer_study(tmp_path, methods=("logit",), seeds=(0, 1, 2)))
    teachers = study.teacher_runs()
    state_files.write_status(run_dir(study.experiments_dir, teachers[0]),
                          {"status": "completed", "epoch": 2, "max_acc": 90.0})
    state_files.write_status(run_dir(study.experiments_dir, teachers[1]),
                          {"status": "failed", "reason": "diverged"})
    state_files.write_status(run_dir(study.experiments_dir, teachers[2]),
                          {"status": "in_progress", "epoch": 1, "job_id": dead_local_job_id(),
                           "scheduler": "local"})
    # A KD run that was running but whose teacher is being retrained: wait, not resubmit.
    kd = study.kd_runs()
    state_files.write_status(run_dir(study.experiments_dir, kd[2]),
                          {"status": "in_progress", "epoch": 1, "job_id": dead_local_job_id(),
                           "scheduler": "local"})
    plan = by_name(plan_queue(study, liveness={
        run_dir(study.experiments_dir, teachers[2]): False,
        run_dir(study.experiments_dir, kd[2]): False}))
    assert plan[kd[0].name].action == SUBMIT
    assert plan[kd[1].name].action == WAIT and "is failed" in plan[kd[1].name].reason
    assert plan[kd[2].name].action == WAIT and "is running" in plan[kd[2].name].reason


def test_unreadable_status_is_reported_and_left_alone(tmp_path):
    study = load_study(write_fake_trainer_study(tmp_path, methods=(), alphas=()))
    teacher, pure = study.teacher_runs()[0], study.pure_student_runs()[0]
    directory = run_dir(study.experiments_dir, teacher)
    directory.mkdir(parents=True)
    (directory / "status.json").write_text('{"status": "in_progress", "epoch": ')
    other = run_dir(study.experiments_dir, pure)
    other.mkdir(parents=True)
    (other / "status.json").write_text('{"status": "paused"}')
    decisions, code, lines = quiet_queue(study)
    assert code == 0
    first, second = by_name(decisions)[teacher.name], by_name(decisions)[pure.name]
    assert first.action == ERROR and second.action == ERROR
    assert str(directory / "status.json") in first.reason and "not valid JSON" in first.reason
    assert "'paused'" in second.reason
    assert (directory / "status.json").read_text() == '{"status": "in_progress", "epoch": '
    assert sorted(p.name for p in directory.iterdir()) == ["status.json"]
    assert "2 errors" in lines[-1]


def test_dry_run_submits_and_writes_nothing(tmp_path):
    study = load_study(write_fake_trainer_study(tmp_path))
    decisions, code, lines = quiet_queue(study, dry_run=True)
    assert code == 0
    assert [d.action for d in decisions].count(SUBMIT) == 2
    assert all(line.split()[0] in ("would-submit", "wait") for line in lines[:-1])
    assert lines[-1].startswith("dry run: ")
    assert not (tmp_path / "experiments").exists()


def test_liveness_unknown_is_left_alone_and_counts_as_live(tmp_path, monkeypatch):
    # Jobs recorded by Slurm and PBS (legacy key), neither installed here.
    monkeypatch.setenv("PATH", "/nonexistent")
    study = load_study(write_fake_trainer_study(tmp_path, methods=(), alphas=(), seeds=(0, 1),
                                   max_live_jobs=3))
    t0, t1 = study.teacher_runs()
    state_files.write_status(run_dir(study.experiments_dir, t0),
                          {"status": "in_progress", "epoch": 1, "job_id": "4242",
                           "scheduler": "slurm"})
    state_files.write_status(run_dir(study.experiments_dir, t1),
                          {"status": "queued", "pbs_job_id": "4101237.sched01"})
    decisions, _, _ = quiet_queue(study)
    plan = by_name(decisions)
    assert plan[t0.name].action == UNKNOWN and "sbatch" in plan[t0.name].reason
    assert plan[t1.name].action == UNKNOWN and "qsub" in plan[t1.name].reason
    # Two possibly-live jobs of a limit of three: one submission, one held back.
    assert [d.action for d in decisions if d.run.role == "pure"] == [SUBMIT, LATER]
    wait_for_jobs(study)


def test_a_job_that_never_starts_is_given_up_after_a_few_tries(tmp_path, monkeypatch):
    study = load_study(write_fake_trainer_study(tmp_path, methods=(), alphas=()))
    teacher = study.teacher_runs()[0]
    monkeypatch.setenv("FAKE_MODES", json.dumps({teacher.name: "die"}))
    directory = run_dir(study.experiments_dir, teacher)
    for attempt in range(1, MAX_MISSED_STARTS + 1):
        decisions, _, _ = quiet_queue(study)
        wait_for_jobs(study)
        assert by_name(decisions)[teacher.name].action == SUBMIT, attempt
    assert len(starts(directory)) == MAX_MISSED_STARTS
    decisions, _, _ = quiet_queue(study)
    decision = by_name(decisions)[teacher.name]
    assert decision.action == FAILED_ACTION and "never began" in decision.reason
    decisions, _, _ = quiet_queue(study, retry_failed=True)
    assert by_name(decisions)[teacher.name].action == SUBMIT
    wait_for_jobs(study)


def test_in_progress_without_job_id_is_not_touched(tmp_path):
    study = load_study(write_fake_trainer_study(tmp_path, methods=(), alphas=()))
    teacher = study.teacher_runs()[0]
    directory = run_dir(study.experiments_dir, teacher)
    state_files.write_status(directory, {"status": "in_progress", "epoch": 1})
    plan = by_name(plan_queue(study))
    assert plan[teacher.name].action == UNKNOWN and "no job id" in plan[teacher.name].reason


def test_lock_waits_for_the_holder_and_times_out(tmp_path):
    experiments = tmp_path / "experiments"
    finished = tmp_path / "holder-finished"
    messages = []
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""\
        import pathlib, sys
        from kdlab.study.queue import queue_lock
        with queue_lock({str(experiments)!r}):
            print("held", flush=True)
            sys.stdin.readline()
            pathlib.Path({str(finished)!r}).write_text("done")
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    from kdlab.run.errors import UserError
    with pytest.raises(UserError, match="another kdlab queue"):
        with queue_lock(experiments, timeout=0.2, say=messages.append):
            pass
    assert messages and "waiting for another kdlab queue" in messages[0]
    holder.stdin.write("go\n")
    holder.stdin.close()
    with queue_lock(experiments, timeout=120, say=messages.append):
        assert finished.exists()  # only once the holder was done with it
    assert holder.wait(timeout=60) == 0


def test_cli_queue_and_bad_study(tmp_path, capsys):
    study_path = write_fake_trainer_study(tmp_path, methods=(), alphas=())
    assert main(["queue", str(study_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would-submit Digits-pure-ResNet20-s0: not started" in out
    bad = tmp_path / "bad.toml"
    bad.write_text(study_path.read_text().replace('"local"', '"condor"'))
    assert main(["queue", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "scheduler.backend" in err and "condor" in err


# ---- config.json, the job's one argument ---------------------------------------------------

def test_queue_writes_config_json_and_hand_typed_train_writes_the_same(tmp_path, monkeypatch):
    from kdlab.cli import build_parser
    from kdlab.run.config import prepare_configs, write_config_file

    study = load_study(write_fake_trainer_study(tmp_path, methods=("fitnets",), alphas=(0.75,)))
    # The job ends before training (a completed run's config.json is never rewritten).
    monkeypatch.setenv("FAKE_MODES", json.dumps({spec.name: "die" for spec in study.runs()}))
    teacher = study.teacher_runs()[0]
    state_files.write_status(study.run_dir(teacher), {"status": "completed", "max_acc": 90.0})
    decisions, code, _ = quiet_queue(study)
    wait_for_jobs(study)
    kd = next(d for d in decisions if d.run.role == "kd")
    assert code == 0 and kd.action == SUBMIT
    config_path = kd.run.run_dir / "config.json"
    written = config_path.read_bytes()
    config = json.loads(written)
    # Complete: every setting, the method's options with their defaults.
    assert config["distillation"] == "fitnets" and config["alpha"] == 0.75
    assert config["method_options"] == {"hint_epochs": 0, "hint_layer": "layer2",
                                        "regressor_relu": True, "student_layer": "layer1",
                                        "weight": 100.0}
    # The job was given only that file.
    (start,) = starts(kd.run.run_dir)
    assert start["seen"]["job_id"] == kd.job_id
    # A hand-typed `kdlab train` of the same run writes the same file.
    config_path.unlink()
    args = build_parser().parse_args([
        "train", "--dataset", "Digits", "--model", "ResNet8", "--distillation", "fitnets",
        "--teacher-model", "ResNet20", "--alpha", "0.75", "--epochs", "2", "--device", "cpu",
        "--experiments-dir", str(study.experiments_dir), "--data-root", str(study.data_root)])
    (typed,) = prepare_configs(args)
    # Preparing writes nothing (issue 20.2: a refused train leaves the run as it was);
    # training writes the prepared config once every check has passed, with this call.
    assert not config_path.exists()
    write_config_file(config_path.parent, typed)
    assert config_path.read_bytes() == written
    # ... and reading that file back gives that run.
    (read,) = prepare_configs(build_parser().parse_args(["train", "--config", str(config_path)]))
    assert read == typed and read.run_spec() == kd.run.spec


def test_train_command_is_the_run_config(tmp_path):
    study = load_study(write_fake_trainer_study(tmp_path))
    for spec in study.runs():
        assert study.train_command(spec) == ["train", "--config",
                                             str(study.run_dir(spec) / "config.json")]


def test_config_flag_is_exclusive_and_bad_config_files_are_one_line(tmp_path, capsys):
    bad = tmp_path / "config.json"
    bad.write_bytes(b'{"dataset": "Digits", "model": "ResNet8", "colour": 1}')
    assert main(["train", "--config", str(bad)]) == 2
    assert "'colour'" in capsys.readouterr().err
    assert main(["train", "--config", str(bad), "--lr", "0.2"]) == 2
    assert "either config files or setting flags" in capsys.readouterr().err
    bad.write_bytes(b"\xff\xfe")
    assert main(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "UTF-8" in err


# ---- earlier-code trees ---------------------------------------------------------------------

def test_job_id_only_status_counts_towards_max_live_jobs(tmp_path):

    build_earlier_tree(tmp_path)
    study = load_study(write_earlier_study(tmp_path, max_live_jobs=3,
                                           top_extra="accept_earlier_teachers = true\n"))
    states = study_run_states(study)
    alive = {state.run_dir: True for state in states if state.job_id}
    before = snapshot(tmp_path)
    plan = by_name(plan_queue(study, states, liveness=alive))
    assert plan["Cifar10-pure-ResNet112-s1"].action == LIVE      # {"pbs_job_id": ...}
    assert plan["Cifar10-pure-ResNet56-s1"].action == LIVE       # {"job_id": ...}
    assert plan["Cifar10-pure-ResNet56-s0"].action == LIVE
    # Three live jobs of a limit of three: the one KD run that could go is held back.
    (held,) = [d for d in plan.values() if d.action == LATER]
    assert held.run.spec.name == "Cifar10-fitnets-a0.5-ResNet112_to_ResNet56-s0"
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("setting,refused", [
    ("", True),
    ("accept_earlier_teachers = true\n", False),
    ("[training] augmentation", False),
])
def test_earlier_code_teacher_is_refused_unless_the_study_accepts_it(tmp_path, setting,
                                                                     refused):
    from kdlab.study.decisions import REFUSED

    build_earlier_tree(tmp_path)
    if setting.startswith("[training]"):
        path = write_earlier_study(tmp_path, training='epochs = 150\naugmentation = "earlier"')
    else:
        path = write_earlier_study(tmp_path, top_extra=setting)
    study = load_study(path)
    before = snapshot(tmp_path)
    plan = by_name(plan_queue(study, liveness={}))
    decision = plan["Cifar10-fitnets-a0.5-ResNet112_to_ResNet56-s0"]
    if refused:
        assert decision.action == REFUSED and "accept_earlier_teachers" in decision.reason
    else:
        assert decision.action == SUBMIT
    assert snapshot(tmp_path) == before


def test_self_distillation_submits_each_run_directory_once(tmp_path):
    study = load_study(write_fake_trainer_study(tmp_path, teacher="ResNet8", methods=("logit",)))
    runs = study.runs()
    assert len(runs) == 2 and len({study.run_dir(spec) for spec in runs}) == 2
    assert [study.role_of(spec) for spec in runs] == ["teacher", "kd"]
    decisions, code, _ = quiet_queue(study)
    wait_for_jobs(study)
    assert code == 0 and [d.action for d in decisions] == [SUBMIT, WAIT]
    (teacher,) = study.teacher_runs()
    assert len(starts(study.run_dir(teacher))) == 1


def test_queue_into_a_closed_pipe_finishes_its_pass_quietly(tmp_path):
    study_path = write_fake_trainer_study(tmp_path, seeds=tuple(range(40)), max_live_jobs=80)
    process = subprocess.Popen([sys.executable, "-m", "kdlab", "queue", str(study_path)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()   # the reader is gone before the first line (`| head -0`)
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    assert b"Traceback" not in err and b"BrokenPipe" not in err
    study = load_study(study_path)
    wait_for_jobs(study)
    # The pass went on to the end: every teacher and pure run was submitted.
    submitted = [state for state in study_run_states(study) if state.role != "kd"]
    assert len(submitted) == 80 and all(state.job_id for state in submitted)


def test_no_alpha_study_is_read_but_never_submitted(tmp_path, capsys):
    build_earlier_tree(tmp_path)
    path = write_earlier_study(tmp_path, layout="no-alpha")
    before = snapshot(tmp_path)
    assert main(["queue", "--dry-run", str(path)]) == 0
    capsys.readouterr()
    assert main(["queue", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no-alpha" in err and str(path) in err
    assert snapshot(tmp_path) == before
