"""Packs (issue 14): runs of one data set, seed and teacher trained by one process end with
exactly the metrics and weights they get alone (CPU, every method), one student's failure is
its own, and a stopped pack resumes every student to the same end."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from kdlab.run import state_files
from kdlab.run.config import TrainConfig
from kdlab.distill import METHOD_NAMES
from kdlab.run.errors import UserError
from kdlab.run.layout import run_dir
from kdlab.training.run import train_pack
from kdlab.training.run import train_run
from builders import fast_method_options, snapshot

TEACHER, STUDENT, SEED, EPOCHS = "ResNet20", "ResNet8", 2, 2


def configs(root, epochs=EPOCHS) -> list[TrainConfig]:
    """The pure student and one KD student per method (logit trains one epoch less: a pack
    holds runs of different lengths)."""
    base = dict(dataset="Digits", model=STUDENT, seed=SEED, batch_size=128, device="cpu",
                experiments_dir=str(root / "experiments"), data_root=str(root / "data"))
    runs = [TrainConfig(epochs=epochs, **base)]
    for method in METHOD_NAMES:
        options = fast_method_options(method)
        runs.append(TrainConfig(epochs=epochs - (method == "logit"), distillation=method,
                                teacher_model=TEACHER, alpha=0.9, method_options=options,
                                **base))
    return runs


def outcome(config: TrainConfig) -> dict:
    directory = run_dir(config.experiments_dir, config.run_spec())
    metrics = state_files.read_metrics(directory)
    return {"metrics": {key: value for key, value in metrics.items()
                        if key not in ("epoch_seconds", "config")},
            "weights": torch.load(directory / "checkpoint.pth", weights_only=True)["model"],
            "status": state_files.read_status(directory)["status"]}


def same(left: dict, right: dict) -> bool:
    return (left["metrics"] == right["metrics"] and left["status"] == right["status"]
            and all(torch.equal(left["weights"][key], right["weights"][key])
                    for key in left["weights"]))


@pytest.fixture(scope="module")
def solo(tmp_path_factory):
    """A trained teacher, and every run of :func:`configs` trained alone. The teacher trains
    two epochs: after one (12 steps) its batch norms' running statistics are far from the
    batch statistics, its pooled features reach ~200 in eval mode, and CC's unnormalised
    linear embeddings (RepDistiller's form) then diverge at lr 0.05 (the run fails with a
    non-finite loss, as it should: a teacher that poor is a test artefact)."""
    root = tmp_path_factory.mktemp("solo")
    teacher = TrainConfig(dataset="Digits", model=TEACHER, seed=SEED, epochs=2, batch_size=128,
                          device="cpu", experiments_dir=str(root / "experiments"),
                          data_root=str(root / "data"))
    assert train_run(teacher, quiet=True) == "completed"
    outcomes = {}
    for config in configs(root):
        assert train_run(config, quiet=True) == "completed"
        outcomes[config.run_spec().name] = outcome(config)
    return {"root": root, "teacher_dir": run_dir(teacher.experiments_dir, teacher.run_spec()),
            "outcomes": outcomes}


def with_teacher(solo, root):
    import shutil

    target = run_dir(root / "experiments", TrainConfig(dataset="Digits", model=TEACHER,
                                                       seed=SEED).run_spec())
    shutil.copytree(solo["teacher_dir"], target)


def test_every_method_packed_equals_solo(solo, tmp_path):
    with_teacher(solo, tmp_path)
    results = train_pack(configs(tmp_path), quiet=True)
    assert set(results.values()) == {"completed"} and len(results) == len(METHOD_NAMES) + 1
    for config in configs(tmp_path):
        assert same(outcome(config), solo["outcomes"][config.run_spec().name]), config.run_spec()


def test_runs_at_different_epochs_are_levelled_first(solo, tmp_path, monkeypatch):
    """The pure run was stopped after epoch 1 alone: it waits while the others train their
    epoch 1, then all train epoch 2 in lock-step; every end is the solo end."""
    import kdlab.training.epochs as epochs_module

    with_teacher(solo, tmp_path)
    real_train_epoch = epochs_module.train_epoch

    def stop_before_epoch_2(students, teacher, data, epoch, flag, **kwargs):
        if epoch == 1:
            raise epochs_module.Preempted("stopped")
        return real_train_epoch(students, teacher, data, epoch, flag, **kwargs)

    monkeypatch.setattr(epochs_module, "train_epoch", stop_before_epoch_2)
    pure = configs(tmp_path)[0]
    assert train_run(pure, quiet=True) == "in_progress"
    monkeypatch.undo()
    epochs_trained = []

    def recording(students, teacher, data, epoch, flag, **kwargs):
        epochs_trained.append((epoch, sorted(s.ctx.config.distillation for s in students)))
        return real_train_epoch(students, teacher, data, epoch, flag, **kwargs)

    monkeypatch.setattr(epochs_module, "train_epoch", recording)
    assert set(train_pack(configs(tmp_path), quiet=True).values()) == {"completed"}
    assert [epoch for epoch, _ in epochs_trained] == [0, 1]
    assert "none" not in epochs_trained[0][1] and "none" in epochs_trained[1][1]
    assert "logit" not in epochs_trained[1][1]  # its single epoch was done
    for config in configs(tmp_path):
        name = config.run_spec().name
        assert same(outcome(config), solo["outcomes"][name]), name
        assert state_files.read_status(run_dir(config.experiments_dir, config.run_spec()))[
            "pack"] == sorted(c.run_spec().name for c in configs(tmp_path))


def test_one_students_failure_is_its_own(solo, tmp_path, monkeypatch):
    import kdlab.distill.nst as nst

    with_teacher(solo, tmp_path)

    def broken(self, *args):
        raise RuntimeError("nst exploded")

    monkeypatch.setattr(nst.NSTDistiller, "forward", broken)
    results = train_pack(configs(tmp_path), quiet=True)
    failed = [name for name, result in results.items() if result == "failed"]
    assert len(failed) == 1 and "nst" in failed[0]
    for config in configs(tmp_path):
        name = config.run_spec().name
        if name in failed:
            status = state_files.read_status(run_dir(config.experiments_dir, config.run_spec()))
            assert status["reason"] == "crashed: RuntimeError: nst exploded"
        else:
            assert same(outcome(config), solo["outcomes"][name]), name


def test_a_pack_must_share_its_settings(tmp_path):
    runs = configs(tmp_path)
    runs[1].batch_size = 64
    with pytest.raises(UserError, match="differ in batch_size"):
        train_pack(runs, quiet=True)
    with pytest.raises(UserError, match="given twice"):
        train_pack([runs[0], runs[0]], quiet=True)
    assert not (tmp_path / "experiments").exists()


_PACK_JOB = """
import sys
from kdlab.run.config import TrainConfig
from kdlab.training.run import train_pack
sys.path[:0] = [{tests!r}, {builders!r}]  # test_pack, and the builders it imports
from test_pack import configs
from pathlib import Path
results = train_pack(configs(Path({root!r})), quiet=True)
sys.exit(0 if set(results.values()) == {{"completed"}} else 75)
"""


def test_a_pack_resumes_after_sigkill_and_stops_on_sigterm(solo, tmp_path):
    with_teacher(solo, tmp_path)
    here = os.path.dirname(os.path.abspath(__file__))
    script = _PACK_JOB.format(tests=here, builders=os.path.dirname(here), root=str(tmp_path))
    pure = configs(tmp_path)[0]
    pure_dir = run_dir(pure.experiments_dir, pure.run_spec())

    def start_and_wait_for_epoch_1():
        process = subprocess.Popen([sys.executable, "-c", script])
        deadline = time.time() + 600
        while time.time() < deadline and process.poll() is None:
            try:
                if (state_files.read_status(pure_dir) or {}).get("epoch", 0) >= 1:
                    return process
            except state_files.StateFileError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"no progress (exit {process.poll()})")

    process = start_and_wait_for_epoch_1()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=600) == 75
    assert state_files.read_status(pure_dir)["stopped_by"] == "SIGTERM"
    process = start_and_wait_for_epoch_1()
    time.sleep(0.5)
    process.kill()
    process.wait()
    assert train_pack(configs(tmp_path), quiet=True)
    for config in configs(tmp_path):
        assert same(outcome(config), solo["outcomes"][config.run_spec().name]), config.run_spec()


def test_cli_trains_a_pack_from_config_files(solo, tmp_path, capsys):
    from kdlab.cli import main

    paths = []
    for config in configs(solo["root"])[:3]:
        path = tmp_path / f"{config.run_spec().name}.json"
        state_files.atomic_write_json(path, config.to_dict())
        paths += ["--config", str(path)]
    assert main(["train", *paths]) == 0  # every member is done: nothing trains again
    assert capsys.readouterr().out.count("already completed") == 3
    broken = tmp_path / "broken.json"
    broken.write_bytes(b"{\xff")
    assert main(["train", *paths, "--config", str(broken)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(broken) in err
    assert main(["train", "--model", STUDENT]) == 2
    assert "--dataset and --model are required" in capsys.readouterr().err


def test_a_new_family_packed_equals_solo(solo, tmp_path):
    """A pure WRN16_1 and a WRN16_1 distilled from the ResNet20 teacher (across families),
    trained in one pack, end as each ends alone."""
    def wrn_configs(root):
        base = dict(dataset="Digits", model="WRN16_1", seed=SEED, batch_size=128, epochs=1,
                    device="cpu", experiments_dir=str(root / "experiments"),
                    data_root=str(root / "data"))
        return [TrainConfig(**base), TrainConfig(distillation="logit", teacher_model=TEACHER,
                                                 alpha=0.9, **base)]

    alone = tmp_path / "alone"
    with_teacher(solo, alone)
    for config in wrn_configs(alone):
        assert train_run(config, quiet=True) == "completed"
    packed = tmp_path / "packed"
    with_teacher(solo, packed)
    assert set(train_pack(wrn_configs(packed), quiet=True).values()) == {"completed"}
    for alone_config, packed_config in zip(wrn_configs(alone), wrn_configs(packed)):
        assert same(outcome(packed_config), outcome(alone_config)), packed_config.run_spec()


def _stopped_after_epoch_1(monkeypatch, runs):
    """Train ``runs`` as a pack and stop it after its first epoch (every member resumable)."""
    import kdlab.training.epochs as epochs_module

    real_train_epoch = epochs_module.train_epoch

    def stop_before_epoch_2(students, teacher, data, epoch, flag, **kwargs):
        if epoch == 1:
            raise epochs_module.Preempted("stopped")
        return real_train_epoch(students, teacher, data, epoch, flag, **kwargs)

    monkeypatch.setattr(epochs_module, "train_epoch", stop_before_epoch_2)
    assert set(train_pack(runs, quiet=True).values()) == {"in_progress"}
    monkeypatch.undo()


def test_a_member_that_cannot_resume_leaves_the_pack(solo, tmp_path, monkeypatch, capsys):
    """Issue 20.3: one member's checkpoint truncated after epoch 1: it leaves the pack,
    failed with a reason naming the file (its files kept), and the others train on to
    exactly their solo ends."""
    with_teacher(solo, tmp_path)
    runs = [config for config in configs(tmp_path)
            if config.distillation in ("none", "fitnets", "nst")]
    _stopped_after_epoch_1(monkeypatch, runs)
    damaged = run_dir(runs[1].experiments_dir, runs[1].run_spec())
    checkpoint = damaged / "checkpoint.pth"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    kept = {name: (damaged / name).read_bytes() for name in ("checkpoint.pth", "config.json")}
    capsys.readouterr()
    results = train_pack(runs, quiet=True)
    assert results == {runs[0].run_spec().name: "completed",
                       runs[1].run_spec().name: "failed", runs[2].run_spec().name: "completed"}
    status = state_files.read_status(damaged)
    assert status["status"] == "failed" and str(checkpoint) in status["reason"]
    assert "corrupt" in status["reason"] and "--force-restart" in status["reason"]
    assert str(checkpoint) in capsys.readouterr().err
    assert {name: (damaged / name).read_bytes() for name in kept} == kept
    for config in (runs[0], runs[2]):
        name = config.run_spec().name
        assert same(outcome(config), solo["outcomes"][name]), name
        assert state_files.read_status(run_dir(config.experiments_dir, config.run_spec()))[
            "pack"] == sorted([runs[0].run_spec().name, runs[2].run_spec().name])
    # --force-restart clears it: the run trains from the start, alone, to its solo end.
    assert train_run(runs[1], force_restart=True, quiet=True) == "completed"
    assert same(outcome(runs[1]), solo["outcomes"][runs[1].run_spec().name])


def test_a_member_with_a_damaged_status_leaves_the_pack(solo, tmp_path, monkeypatch, capsys):
    """Issue 20.3 for a damaged status.json: that member is named and left out (its file
    kept for the user, not replaced by a 'failed' status), and the others train on to
    exactly their solo ends."""
    with_teacher(solo, tmp_path)
    runs = [config for config in configs(tmp_path)
            if config.distillation in ("none", "fitnets", "nst")]
    _stopped_after_epoch_1(monkeypatch, runs)
    damaged = run_dir(runs[1].experiments_dir, runs[1].run_spec())
    (damaged / "status.json").write_bytes(b"{not json")
    capsys.readouterr()
    results = train_pack(runs, quiet=True)
    assert results == {runs[0].run_spec().name: "completed",
                       runs[1].run_spec().name: "failed", runs[2].run_spec().name: "completed"}
    assert (damaged / "status.json").read_bytes() == b"{not json"
    err = capsys.readouterr().err
    assert f"{runs[1].run_spec().name}: FAILED, left its pack" in err
    assert str(damaged / "status.json") in err
    for config in (runs[0], runs[2]):
        assert same(outcome(config), solo["outcomes"][config.run_spec().name])


def test_a_pack_refused_for_a_differing_setting_writes_nothing(tmp_path, capsys):
    """Issue 20.2 for packs: a member given with another batch size is refused before any
    member's config.json is written."""
    from kdlab.cli import main
    from kdlab.run.config import write_config_file

    first, second = configs(tmp_path)[:2]
    paths = []
    for config in (first, second):
        directory = run_dir(config.experiments_dir, config.run_spec())
        write_config_file(directory, config)
        state_files.write_status(directory, {"status": "in_progress", "epoch": 1,
                                          "run": config.run_spec().name})
        paths.append(directory / "config.json")
    before = [path.read_bytes() for path in paths]
    template = tmp_path / "other-batch-size.json"
    state_files.atomic_write_json(template, {**second.to_dict(), "batch_size": 64})
    assert main(["train", "--config", str(paths[0]), "--config", str(template)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "differ in batch_size" in err
    assert [path.read_bytes() for path in paths] == before


def test_a_pack_holding_its_own_teacher_is_refused(solo, tmp_path, capsys):
    """Issue 20.5: `kdlab train --config TEACHER --config STUDENT --force-restart` would
    distil the student from the old teacher while the teacher is retrained."""
    from dataclasses import replace

    from kdlab.cli import main
    from kdlab.run.config import read_config_file, write_config_file

    with_teacher(solo, tmp_path)
    teacher_dir = run_dir(tmp_path / "experiments", TrainConfig(
        dataset="Digits", model=TEACHER, seed=SEED).run_spec())
    teacher = read_config_file(teacher_dir / "config.json")
    write_config_file(teacher_dir, replace(teacher, experiments_dir=str(tmp_path / "experiments")))
    before = snapshot(teacher_dir)
    student = configs(tmp_path)[1]
    template = tmp_path / "student.json"
    state_files.atomic_write_json(template, student.to_dict())
    for order in ([teacher_dir / "config.json", template],
                  [template, teacher_dir / "config.json"]):
        arguments = [item for path in order for item in ("--config", str(path))]
        assert main(["train", *arguments, "--force-restart"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert teacher.run_spec().name in err and student.run_spec().name in err
        assert "teacher" in err
    assert snapshot(teacher_dir) == before
    assert not run_dir(student.experiments_dir, student.run_spec()).exists()


def test_a_pack_member_s_snapshots_equal_the_solo_run_s(solo, tmp_path, monkeypatch):
    """Snapshots after every epoch of a pure and a distilled student: alone, and in a pack
    preempted after epoch 1 and resumed, the files hold the same tensors."""
    from kdlab.run.layout import snapshot_epochs_present, snapshot_path

    def snapshot_configs(root):
        base = dict(dataset="Digits", model=STUDENT, seed=SEED, batch_size=128, epochs=2,
                    device="cpu", snapshot_epochs=[1, 2],
                    experiments_dir=str(root / "experiments"), data_root=str(root / "data"))
        return [TrainConfig(**base), TrainConfig(distillation="logit", teacher_model=TEACHER,
                                                 alpha=0.9, **base)]

    def snapshots(config):
        directory = run_dir(config.experiments_dir, config.run_spec())
        return {epoch: torch.load(snapshot_path(directory, epoch), weights_only=True)
                for epoch in snapshot_epochs_present(directory)}

    alone = tmp_path / "alone"
    with_teacher(solo, alone)
    for config in snapshot_configs(alone):
        assert train_run(config, quiet=True) == "completed"
    packed = tmp_path / "packed"
    with_teacher(solo, packed)
    _stopped_after_epoch_1(monkeypatch, snapshot_configs(packed))
    assert all(sorted(snapshots(config)) == [1] for config in snapshot_configs(packed))
    assert set(train_pack(snapshot_configs(packed), quiet=True).values()) == {"completed"}
    for alone_config, packed_config in zip(snapshot_configs(alone), snapshot_configs(packed)):
        expected, found = snapshots(alone_config), snapshots(packed_config)
        assert sorted(expected) == sorted(found) == [1, 2]
        for epoch in (1, 2):
            assert found[epoch]["epoch"] == epoch
            assert all(torch.equal(found[epoch]["weights"][key], value)
                       for key, value in expected[epoch]["weights"].items())
