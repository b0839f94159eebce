"""``kdlab queue`` with ``[scheduler] pack_size``: ready runs grouped into packs (one job
each, ``kdlab train --config A --config B ...``), counted once towards ``max_live_jobs``,
tracked through every member's status.json, resubmitted as a pack when the job dies; and
the two kinds of run the queue must not resubmit in a loop (environment failures, runs of
the earlier research code). Decisions with hand-written state files; submissions with a
recording stand-in scheduler, and one case with the real local backend and the stand-in
trainer of test_queue.py."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from kdlab.run import state_files
from kdlab.run.errors import UserError
from kdlab.study.decisions import DONE, FAILED_ACTION, LATER, LIVE, SUBMIT, Decision
from kdlab.study.packs import make_packs
from kdlab.study.queue import plan_queue, run_queue, submit_pack
from kdlab.study.progress import MAX_ENVIRONMENT_RESUBMISSIONS, NOT_STARTED, RunState
from kdlab.schedulers.local import LocalScheduler
from kdlab.study.status import format_report, status_report
from kdlab.study.progress import study_run_states
from kdlab.study.study_file import Role, load_study
import builders
from builders import (RecordingScheduler, build_earlier_tree, by_name, dead_local_job_id,
                      starts, wait_for_jobs, wait_until, write_earlier_study,
                      write_fake_trainer_study)

ENOSPC = "OSError: [Errno 28] No space left on device"


def make_study(tmp_path, *, pack_size=4, seeds=(0, 1), methods=("logit", "nst"),
               alphas=(0.5, 0.9), max_live_jobs=10, teachers_done=True):
    study = load_study(write_fake_trainer_study(tmp_path, methods=methods, alphas=alphas, seeds=seeds,
                                         max_live_jobs=max_live_jobs,
                                         extra=f"pack_size = {pack_size}\n"))
    if teachers_done:
        for spec in study.teacher_runs():
            state_files.write_status(study.run_dir(spec), {"status": "completed", "epoch": 2,
                                                        "max_acc": 95.0, "run": spec.name})
    return study


def packs_of(decisions):
    packs = {}
    for decision in decisions:
        if decision.action in (SUBMIT, LATER):
            packs.setdefault(id(decision.pack), decision.pack)
    return sorted(packs.values(), key=lambda pack: pack.number)


# ---- grouping ------------------------------------------------------------------------------

def test_packs_hold_one_seed_and_teacher_and_respect_pack_size(tmp_path):
    study = make_study(tmp_path, pack_size=3)
    decisions = plan_queue(study, liveness={})
    packs = packs_of(decisions)
    # Per seed: the pure student and 2 methods x 2 alphas = 5 runs -> packs of 3 and 2.
    assert [len(pack.members) for pack in packs] == [3, 3, 2, 2]
    assert sorted(name for pack in packs for name in pack.names) == sorted(
        spec.name for spec in study.pure_student_runs() + study.kd_runs())
    for pack in packs:
        specs = [decision.run.spec for decision in pack.members]
        assert len({spec.seed for spec in specs}) == 1
        assert len({spec.teacher_run() for spec in specs if not spec.is_pure}) == 1
    # The pure student joined its seed's KD students, first in the pack.
    for seed in (0, 1):
        (pure_pack,) = [pack for pack in packs if f"Digits-pure-ResNet8-s{seed}" in pack.names]
        assert pure_pack.names[0] == f"Digits-pure-ResNet8-s{seed}"
        assert len(pure_pack.members) == 3
    assert all(f"pack {d.pack.number} ({len(d.pack.members)} runs)" in d.reason
               for d in decisions if d.action == SUBMIT)


def test_a_large_group_is_cut_into_packs_of_even_size(tmp_path):
    # The pure student and 12 KD runs of one seed, packs of at most 6: 5 + 4 + 4, not 6 + 6 + 1.
    study = make_study(tmp_path, pack_size=6, seeds=(0,), methods=("logit", "nst", "rkd"),
                       alphas=(0.25, 0.5, 0.75, 0.9))
    packs = packs_of(plan_queue(study, liveness={}))
    assert [len(pack.members) for pack in packs] == [5, 4, 4]
    assert [name for pack in packs for name in pack.names] == [
        spec.name for spec in study.pure_student_runs() + study.kd_runs()]


def test_pack_size_one_is_one_run_per_job(tmp_path):
    study = make_study(tmp_path, pack_size=1)
    decisions = plan_queue(study, liveness={})
    packs = packs_of(decisions)
    assert len(packs) == 10 and all(len(pack.members) == 1 for pack in packs)
    assert not any("pack" in d.reason for d in decisions)


def test_teachers_are_never_packed_with_their_students(tmp_path):
    study = make_study(tmp_path, pack_size=10, teachers_done=False)
    decisions = plan_queue(study, liveness={})
    for decision in decisions:
        if decision.run.role is Role.TEACHER:
            assert decision.action == SUBMIT and decision.pack.names == [decision.run.spec.name]
        elif decision.run.role is Role.KD:
            assert decision.pack is None  # waiting for the teacher
    # Teacher s0 done, teacher s1 not: the s1 pure student goes alone, s0's with its KD runs.
    state_files.write_status(study.run_dir(study.teacher_runs()[0]),
                          {"status": "completed", "max_acc": 95.0, "run": "t"})
    plan = by_name(plan_queue(study, liveness={}))
    assert len(plan["Digits-pure-ResNet8-s0"].pack.members) == 5
    assert plan["Digits-pure-ResNet8-s1"].pack.names == ["Digits-pure-ResNet8-s1"]
    assert plan["Digits-pure-ResNet20-s1"].pack.names == ["Digits-pure-ResNet20-s1"]


def test_runs_with_other_data_settings_or_teacher_never_share_a_pack(tmp_path, monkeypatch):
    study = make_study(tmp_path, pack_size=10, seeds=(0,))
    kd = study.kd_runs()   # logit 0.5, logit 0.9, nst 0.5, nst 0.9
    original = study.train_config
    other = {kd[1]: {"batch_size": 64}, kd[2]: {"augmentation": "earlier"}}
    monkeypatch.setattr(study, "train_config",
                        lambda spec: replace(original(spec), **other.get(spec, {})))
    another_teacher = replace(kd[3], teacher="ResNet32")

    def decision(spec):
        state = RunState(spec, study.run_dir(spec), study.role_of(spec), NOT_STARTED, None,
                         "not started")
        return Decision(state, SUBMIT, "not started")

    candidates = [decision(spec) for spec in [*kd, another_teacher]]
    packs = make_packs(study, candidates)
    # kd[0] and kd[3] differ in method and alpha only: one pack; the rest each alone.
    assert sorted(tuple(pack.names) for pack in packs) == sorted(
        [(kd[0].name, kd[3].name), (kd[1].name,), (kd[2].name,), (another_teacher.name,)])
    # The per-run settings (method, alpha, lr, epochs, ...) do not separate runs.
    monkeypatch.setattr(study, "train_config",
                        lambda spec: replace(original(spec), lr=0.01 * (1 + spec.alpha),
                                             epochs=3 if spec.method == "nst" else 2))
    (single,) = make_packs(study, [decision(spec) for spec in kd])
    assert single.names == [spec.name for spec in kd]


def test_pack_size_is_validated(tmp_path):
    for value in ("0", "-2", '"4"', "2.5"):
        path = write_fake_trainer_study(tmp_path, extra=f"pack_size = {value}\n")
        with pytest.raises(UserError, match="scheduler.pack_size"):
            load_study(path)


# ---- submitting and tracking ---------------------------------------------------------------

def test_one_job_per_pack_counted_once_and_recorded_in_every_member(tmp_path):
    study = make_study(tmp_path, pack_size=3, max_live_jobs=3)
    scheduler = RecordingScheduler()
    decisions, code = run_queue(study, say=lambda line: None, scheduler=scheduler)
    assert code == 0
    # 4 packs to go, 3 slots: three jobs.
    assert len(scheduler.submitted) == 3
    assert [d.action for d in decisions].count(LATER) == 2
    for job in scheduler.submitted:
        members = [d for d in decisions if d.job_id == job["job_id"]]
        names = [d.run.spec.name for d in members]
        configs = [job["argv"][i + 1] for i, arg in enumerate(job["argv"]) if arg == "--config"]
        assert configs == [str(d.run.run_dir / "config.json") for d in members]
        assert job["run_dir"] == members[0].run.run_dir
        assert job["name"] == f"{names[0]}-pack{len(names)}"
        for member in members:
            status = state_files.read_status(member.run.run_dir)
            assert status["job_id"] == job["job_id"] and status["pack"] == names
            assert status["status"] == "queued"
            assert json.loads((member.run.run_dir / "config.json").read_text())["seed"] == \
                member.run.spec.seed
    # Next pass: every member of the three jobs is live; three jobs, not eight runs, count.
    states = study_run_states(study)
    alive = {state.run_dir: True for state in states if state.job_id}
    decisions = plan_queue(study, states, liveness=alive)
    assert [d.action for d in decisions].count(LIVE) == 8
    assert [d.action for d in decisions].count(LATER) == 2
    assert all("held back: 3 of 3 live jobs" in d.reason for d in decisions if d.action == LATER)


def test_dead_pack_job_resubmits_its_unfinished_members_as_a_pack(tmp_path):
    study = make_study(tmp_path, pack_size=3, seeds=(0,), methods=("logit",),
                       alphas=(0.25, 0.5, 0.75, 0.9))
    scheduler = RecordingScheduler()
    run_queue(study, say=lambda line: None, scheduler=scheduler)
    (first, second) = scheduler.submitted
    pure, kd1, kd2 = [study.run_dir(spec) for spec in
                      study.pure_student_runs() + study.kd_runs()[:2]]
    # The job trained the pure run to the end, kd1 to epoch 1, and died before kd2 began.
    state_files.update_status(pure, status="completed", epoch=2, max_acc=90.0, run="p")
    state_files.update_status(kd1, status="in_progress", epoch=1, run="k1")
    states = study_run_states(study)
    gone = {state.run_dir: state.job_id != first["job_id"] for state in states if state.job_id}
    plan = plan_queue(study, states, liveness=gone)
    by_dir = {d.run.run_dir: d for d in plan}
    assert by_dir[pure].action == DONE
    assert by_dir[kd1].action == SUBMIT and "resumes" in by_dir[kd1].reason
    assert by_dir[kd2].action == SUBMIT and "had not begun" in by_dir[kd2].reason
    assert by_dir[kd1].pack is by_dir[kd2].pack and len(by_dir[kd1].pack.members) == 2
    # Submit that plan: one new job for both; kd2 did not miss a start (its job began).
    job_id = submit_pack(study, by_dir[kd1].pack, scheduler)
    for directory in (kd1, kd2):
        status = state_files.read_status(directory)
        assert status["job_id"] == job_id and status["job_history"] == [first["job_id"]]
        assert status["pack"] == [d.run.spec.name for d in by_dir[kd1].pack.members]
        assert "missed_starts" not in status
    assert state_files.read_status(pure)["job_id"] == first["job_id"]


def test_real_local_pack_job_dies_and_only_unfinished_members_go_again(tmp_path, monkeypatch):
    study = make_study(tmp_path, pack_size=3, seeds=(0,), methods=("logit",),
                       alphas=(0.25, 0.5, 0.75, 0.9), max_live_jobs=1)
    pure, kd1, kd2, kd3, kd4 = study.pure_student_runs() + study.kd_runs()
    monkeypatch.setenv("FAKE_MODES", json.dumps({kd1.name: "hang"}))
    decisions, code = run_queue(study, say=lambda line: None)
    plan = by_name(decisions)
    job = plan[pure.name].job_id
    assert code == 0 and job and plan[kd1.name].job_id == job == plan[kd2.name].job_id
    assert plan[kd3.name].action == plan[kd4.name].action == LATER
    try:
        wait_until(lambda: state_files.read_status(study.run_dir(kd1))["status"] == "in_progress",
                   "the pack's second run to start")
        assert state_files.read_status(study.run_dir(pure))["status"] == "completed"
        # The pack's job is alive: its runs are live, one job of one: nothing more goes.
        decisions, _ = run_queue(study, say=lambda line: None)
        plan = by_name(decisions)
        assert plan[kd1.name].action == LIVE and plan[kd2.name].action == LIVE
        assert plan[kd3.name].action == LATER
        LocalScheduler().cancel(job)
        wait_until(lambda: not LocalScheduler().is_alive(job), "the pack's job to end")
        monkeypatch.setenv("FAKE_MODES", "{}")
        decisions, _ = run_queue(study, say=lambda line: None)
        plan = by_name(decisions)
        assert plan[pure.name].action == DONE
        again = plan[kd1.name].job_id
        assert again and again != job and plan[kd2.name].job_id == again
        assert plan[kd3.name].action == plan[kd4.name].action == LATER
        wait_for_jobs(study)
        decisions, _ = run_queue(study, say=lambda line: None)
        assert by_name(decisions)[kd3.name].job_id == by_name(decisions)[kd4.name].job_id
        wait_for_jobs(study)
    finally:
        for state in study_run_states(study):
            if state.job_id and state.state in ("queued", "running"):
                LocalScheduler().cancel(state.job_id)
        wait_for_jobs(study)
    assert len(starts(study.run_dir(pure))) == 1
    assert len(starts(study.run_dir(kd1))) == 2   # resumed by the second job
    assert len(starts(study.run_dir(kd2))) == 1   # never began under the first
    assert all(state_files.read_status(study.run_dir(spec))["status"] == "completed"
               for spec in (pure, kd1, kd2, kd3, kd4))


def test_dry_run_prints_the_packs(tmp_path):
    study = make_study(tmp_path, pack_size=3, max_live_jobs=3)
    before = sorted(path.name for path in tmp_path.rglob("*"))
    lines = []
    decisions, code = run_queue(study, dry_run=True, say=lines.append)
    assert code == 0
    pack_lines = [line for line in lines if line.startswith("pack ")]
    assert pack_lines == [
        "pack 1 (3 runs, one job): Digits-pure-ResNet8-s0, Digits-logit-a0.5-ResNet20_to_"
        "ResNet8-s0, Digits-logit-a0.9-ResNet20_to_ResNet8-s0",
        "pack 2 (3 runs, one job): Digits-pure-ResNet8-s1, Digits-logit-a0.5-ResNet20_to_"
        "ResNet8-s1, Digits-logit-a0.9-ResNet20_to_ResNet8-s1",
        "pack 3 (2 runs, one job): Digits-nst-a0.5-ResNet20_to_ResNet8-s0, Digits-nst-a0.9-"
        "ResNet20_to_ResNet8-s0",
        "pack 4 (2 runs, held back): Digits-nst-a0.5-ResNet20_to_ResNet8-s1, Digits-nst-a0.9-"
        "ResNet20_to_ResNet8-s1"]
    assert "8 would submit in 3 jobs" in lines[-1]
    assert sorted(path.name for path in tmp_path.rglob("*")) == before


def test_status_shows_pack_membership(tmp_path):
    study = make_study(tmp_path, pack_size=3, max_live_jobs=1, seeds=(0,))
    scheduler = RecordingScheduler()
    run_queue(study, say=lambda line: None, scheduler=scheduler)
    (job,) = scheduler.submitted
    states = study_run_states(study)
    liveness = {state.run_dir: True for state in states if state.job_id == job["job_id"]}
    report = status_report(study, states, liveness=liveness)
    members = [run["run"] for run in report["runs"] if run["pack"]]
    assert len(members) == 3
    assert all(run["pack"] == members for run in report["runs"] if run["pack"])
    assert report["packs"] == [{"job_id": job["job_id"], "runs": members, "job_alive": True,
                                "unfinished": members}]
    text = format_report(report)
    assert f"job {job['job_id']} (live, 3 of 3 runs unfinished): {', '.join(members)}" in text
    detail = next(run["detail"] for run in report["runs"] if run["pack"])
    assert detail == f"queued, job {job['job_id']} (pack of 3)"


# ---- runs the queue must not resubmit in a loop -------------------------------------------

@pytest.mark.parametrize("failures", [1, MAX_ENVIRONMENT_RESUBMISSIONS,
                                      MAX_ENVIRONMENT_RESUBMISSIONS + 1])
def test_environment_failures_are_resubmitted_a_bounded_number_of_times(tmp_path, failures):
    study = make_study(tmp_path, methods=(), alphas=(), seeds=(0,), teachers_done=False)
    (teacher,) = study.teacher_runs()
    directory = study.run_dir(teacher)
    state_files.write_status(directory, {
        "status": "in_progress", "epoch": 1, "epochs": 2, "run": teacher.name,
        "reason": ENOSPC, "environment_failures": failures, "job_id": dead_local_job_id(),
        "scheduler": "local"})
    plan = by_name(plan_queue(study, liveness={directory: False}))
    decision = plan[teacher.name]
    if failures <= MAX_ENVIRONMENT_RESUBMISSIONS:
        assert decision.action == SUBMIT and "resumes from its checkpoint" in decision.reason
        return
    assert decision.action == FAILED_ACTION
    assert f"environment failure {failures} times" in decision.reason
    assert ENOSPC in decision.reason and "--retry-failed" in decision.reason
    report = status_report(study, liveness={directory: False})
    assert "kdlab queue leaves it" in report["stuck"][0]["reason"]
    # --retry-failed submits it, and the count starts over.
    plan = by_name(plan_queue(study, liveness={directory: False}, retry_failed=True))
    assert plan[teacher.name].action == SUBMIT
    submit_pack(study, plan[teacher.name].pack, RecordingScheduler())
    status = state_files.read_status(directory)
    assert status["status"] == "queued" and "environment_failures" not in status
    assert status["previous_reason"] == ENOSPC and "reason" not in status
    assert status["epoch"] == 1


def test_earlier_code_run_in_progress_with_its_job_gone_is_not_resubmitted(tmp_path):
    build_earlier_tree(tmp_path)
    study = load_study(write_earlier_study(tmp_path))
    name = "Cifar10-pure-ResNet56-s0"
    state = next(state for state in study_run_states(study) if state.spec.name == name)
    assert state.state == "running" and state.earlier_code
    before = (state.run_dir / "status.json").read_bytes()
    plan = by_name(plan_queue(study, liveness={state.run_dir: False}))
    decision = plan[name]
    assert decision.action == FAILED_ACTION
    assert "earlier-code run in progress" in decision.reason
    assert "not resumable by kdlab" in decision.reason and "--retry-failed" in decision.reason
    report = status_report(study, liveness={state.run_dir: False})
    (stuck,) = [entry for entry in report["stuck"] if entry["run"] == name]
    assert "kdlab queue leaves it" in stuck["reason"]
    assert (state.run_dir / "status.json").read_bytes() == before
    # --retry-failed restarts it under kdlab, alone, with --force-restart.
    plan = by_name(plan_queue(study, liveness={state.run_dir: False}, retry_failed=True))
    decision = plan[name]
    assert decision.action == SUBMIT and decision.restart
    scheduler = RecordingScheduler()
    submit_pack(study, decision.pack, scheduler)
    (job,) = scheduler.submitted
    assert job["argv"][-4:] == ["train", "--force-restart", "--config",
                                str(state.run_dir / "config.json")]
    assert state_files.read_status(state.run_dir)["status"] == "queued"


# ---- the real Slurm test cluster -------------------------------------------------------------

@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_pack_is_one_job_and_its_unfinished_runs_go_again_as_one(slurm_cluster, tmp_path,
                                                                      monkeypatch):
    import subprocess

    study = make_study(tmp_path, pack_size=4, seeds=(0,), methods=("logit",),
                       alphas=(0.25, 0.5, 0.9), max_live_jobs=1)
    path = tmp_path / "study.toml"
    path.write_text(path.read_text().replace('backend = "local"', 'backend = "slurm"'))
    study = load_study(path)
    pure, kd1, kd2, kd3 = study.pure_student_runs() + study.kd_runs()
    monkeypatch.setenv("FAKE_MODES", json.dumps({kd2.name: "hang"}))
    decisions, code = run_queue(study, say=lambda line: None)
    job = by_name(decisions)[pure.name].job_id
    assert code == 0 and job.isdigit()
    assert {by_name(decisions)[spec.name].job_id for spec in (kd1, kd2, kd3)} == {job}
    names = [spec.name for spec in (pure, kd1, kd2, kd3)]
    assert all(state_files.read_status(study.run_dir(spec))["pack"] == names
               for spec in (pure, kd1, kd2, kd3))
    jobs = subprocess.run(["squeue", "-h", "-j", job, "-o", "%i %j"], capture_output=True,
                          text=True)
    assert jobs.stdout.split() == [job, f"{pure.name}-pack4"]
    wait_until(lambda: state_files.read_status(study.run_dir(kd2))["status"] == "in_progress",
               "the pack's third run to start", timeout=300)
    decisions, _ = run_queue(study, say=lambda line: None)   # squeue says: live, one job
    assert [by_name(decisions)[spec.name].action for spec in (pure, kd1, kd2, kd3)] == \
        [DONE, DONE, LIVE, LIVE]
    subprocess.run(["scancel", job], check=True)
    wait_until(lambda: not subprocess.run(["squeue", "-h", "-j", job, "-o", "%i"],
                                          capture_output=True, text=True).stdout.strip(),
               "the cancelled pack job to leave the queue", timeout=300)
    monkeypatch.setenv("FAKE_MODES", "{}")
    decisions, _ = run_queue(study, say=lambda line: None)
    plan = by_name(decisions)
    again = plan[kd2.name].job_id
    assert plan[pure.name].action == plan[kd1.name].action == DONE
    assert again and again != job and plan[kd3.name].job_id == again
    wait_until(lambda: all(state.state == "completed" for state in study_run_states(study)),
               "the second pack job to finish its two runs", timeout=300)
    assert state_files.read_status(study.run_dir(kd3))["pack"] == [kd2.name, kd3.name]
    assert len(starts(study.run_dir(kd1))) == 1 and len(starts(study.run_dir(kd2))) == 2


@pytest.mark.parametrize("fields,named", [
    ({"pack": "Digits-pure-ResNet8-s0"}, "'pack'"),
    ({"pack": ["Digits-pure-ResNet8-s0", 7]}, "'pack' holds"),
    ({"environment_failures": "three"}, "'environment_failures'"),
])
def test_wrong_typed_pack_fields_make_the_status_unreadable_and_left_alone(tmp_path, fields,
                                                                          named):
    study = make_study(tmp_path, seeds=(0,))
    (pure,) = study.pure_student_runs()
    state_files.write_status(study.run_dir(pure), {"status": "queued", "job_id": "1-2-x",
                                                "run": pure.name, **fields})
    before = (study.run_dir(pure) / "status.json").read_bytes()
    decision = by_name(plan_queue(study, liveness={}))[pure.name]
    assert decision.action == "error" and named in decision.reason
    assert str(study.run_dir(pure) / "status.json") in decision.reason
    assert (study.run_dir(pure) / "status.json").read_bytes() == before


# ---- a member that cannot resume -------------------------------------------------------------

class DeadJobScheduler(RecordingScheduler):
    """Records a real local job id whose process has already ended: the job is gone."""

    def submit(self, run_name, command, run_dir, settings, record):
        job_id = dead_local_job_id()
        self.submitted.append({"name": run_name, "argv": command, "job_id": job_id})
        record(job_id)
        return job_id


@pytest.mark.slow
def test_a_damaged_checkpoint_leaves_its_pack_and_the_others_train_on(tmp_path, monkeypatch):
    """Issue 20.3 as found, with real ``kdlab train`` jobs of the local backend: a pack's
    job ended after epoch 1, then one member's checkpoint.pth was truncated. The damaged
    member leaves the pack (failed, its file named in ``status``, waiting for the user),
    the healthy members train to the end, and the queue submits nothing more for it."""
    import kdlab.training.epochs as epochs_module
    from kdlab.cli import main
    from kdlab.run.config import complete_options
    from kdlab.training.run import train_run

    study = load_study(builders.write_study(
        tmp_path / "study.toml", name="damaged", methods=("logit", "nst"), alphas=(0.5,),
        top=f'data_root = "{tmp_path / "data"}"\n', training='epochs = 2\ndevice = "cpu"',
        tables='[scheduler]\nbackend = "local"\nmax_live_jobs = 2\npack_size = 3\n'))
    teacher, pure, logit, nst = study.runs()
    assert train_run(complete_options(study.train_config(teacher)), quiet=True) == "completed"
    # The pack's first job: its `kdlab train --config ...` stopped after epoch 1, job gone.
    scheduler = DeadJobScheduler()
    run_queue(study, say=lambda line: None, scheduler=scheduler)
    (job,) = scheduler.submitted
    real_train_epoch = epochs_module.train_epoch

    def stop_before_epoch_2(students, teacher, data, epoch, flag, **kwargs):
        if epoch == 1:
            raise epochs_module.Preempted("stopped")
        return real_train_epoch(students, teacher, data, epoch, flag, **kwargs)

    monkeypatch.setattr(epochs_module, "train_epoch", stop_before_epoch_2)
    assert main(job["argv"][job["argv"].index("train"):] + ["--quiet"]) == 75
    monkeypatch.undo()
    members = {spec.name: study.run_dir(spec) for spec in (pure, logit, nst)}
    assert all(state_files.read_status(directory)["epoch"] == 1 for directory in members.values())
    damaged = members[logit.name] / "checkpoint.pth"
    damaged.write_bytes(damaged.read_bytes()[:2000])
    kept = damaged.read_bytes()
    # The next cycle resubmits the pack; its real job trains the healthy members on.
    decisions, code = run_queue(study, say=lambda line: None)
    plan = by_name(decisions)
    assert code == 0 and plan[pure.name].action == SUBMIT
    assert plan[pure.name].job_id == plan[logit.name].job_id == plan[nst.name].job_id
    wait_for_jobs(study)
    for name in (pure.name, nst.name):
        status = state_files.read_status(members[name])
        assert status["status"] == "completed" and status["epoch"] == 2, (name, status)
    status = state_files.read_status(members[logit.name])
    assert status["status"] == "failed" and str(damaged) in status["reason"]
    assert damaged.read_bytes() == kept
    report = status_report(study)
    (failed,) = report["failed"]
    assert failed["run"] == logit.name and str(damaged) in failed["reason"]
    assert str(damaged) in format_report(report)
    # It waits for the user: the queue leaves it alone...
    decisions, _ = run_queue(study, say=lambda line: None)
    plan = by_name(decisions)
    assert plan[logit.name].action == FAILED_ACTION and "--retry-failed" in plan[logit.name].reason
    assert [d.action for d in decisions].count(SUBMIT) == 0
    # ... until it starts the run over.
    assert main(["train", "--config", str(study.config_path(logit)), "--force-restart",
                 "--quiet"]) == 0
    decisions, _ = run_queue(study, say=lambda line: None)
    assert {decision.action for decision in decisions} == {DONE}
