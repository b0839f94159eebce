"""``kdlab train --threads`` (issue 16 item 4) and TensorBoard event files (item 9)."""

from __future__ import annotations

import os

import pytest
import torch

from kdlab.run import state_files
from kdlab.cli import build_parser
from kdlab.run.config import TrainConfig
from kdlab.run.errors import UserError
from kdlab.run.layout import RunSpec, run_dir
from kdlab.training.run import train_run
from kdlab.run.config import config_from_args, validate_config
from kdlab.training.tensorboard import tag_of
from kdlab.training.threads import default_threads, thread_limits


def config(tmp_path, **changes) -> TrainConfig:
    base = dict(dataset="Digits", model="ResNet8", seed=0, epochs=2, batch_size=256,
                experiments_dir=str(tmp_path / "experiments"), device="cpu")
    base.update(changes)
    return TrainConfig(**base)


def the_run_dir(tmp_path):
    return run_dir(tmp_path / "experiments", RunSpec("Digits", "ResNet8", 0))


# --------------------------------------------------------------------------- threads


def test_default_threads_are_the_cores_the_job_was_given():
    assert default_threads({"SLURM_CPUS_PER_TASK": "6", "NCPUS": "4"}) == (6, "SLURM_CPUS_PER_TASK")
    assert default_threads({"NCPUS": "4", "OMP_NUM_THREADS": "2"}) == (4, "NCPUS")
    assert default_threads({"OMP_NUM_THREADS": "2"}) == (2, "OMP_NUM_THREADS")
    affinity = (len(os.sched_getaffinity(0)), "cpu affinity")
    assert default_threads({}) == affinity
    # Not a positive count: the next source decides.
    assert default_threads({"SLURM_CPUS_PER_TASK": "0", "NCPUS": "x",
                            "OMP_NUM_THREADS": ""}) == affinity


def test_thread_limits_apply_to_torch_and_the_libraries_and_are_restored():
    from threadpoolctl import threadpool_info

    previous = torch.get_num_threads()
    wanted = 3 if previous != 3 else 2
    with thread_limits(wanted) as record:
        assert torch.get_num_threads() == wanted
        assert record["count"] == wanted and record["source"] == "--threads"
        assert record["openmp_blas"] == "limited through threadpoolctl"
        assert all(pool["num_threads"] == wanted for pool in threadpool_info())
    assert torch.get_num_threads() == previous


def test_threads_flag_and_its_validation(tmp_path):
    args = build_parser().parse_args(["train", "--dataset", "Digits", "--model", "ResNet8",
                                      "--threads", "3", "--tensorboard",
                                      "--selection", "validation"])
    derived = config_from_args(args)
    assert (derived.threads, derived.tensorboard, derived.selection) == (3, True, "validation")
    with pytest.raises(UserError) as error:
        validate_config(config(tmp_path, threads=0))
    assert "--threads 0" in str(error.value) and "\n" not in str(error.value)


def test_a_run_records_its_threads(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    previous = torch.get_num_threads()
    assert train_run(config(tmp_path, epochs=1), quiet=True) == state_files.COMPLETED
    status = state_files.read_status(the_run_dir(tmp_path))
    assert status["threads"] == 1
    assert status["thread_settings"]["source"] == "SLURM_CPUS_PER_TASK"
    assert status["thread_settings"]["torch"] == 1
    assert status["config"]["threads"] is None  # the default, resolved per job
    assert torch.get_num_threads() == previous


# --------------------------------------------------------------------------- TensorBoard


def test_tags():
    assert [tag_of(key) for key in ("train_acc", "test_loss", "validation_acc", "train_hint",
                                    "lr")] == ["accuracy/train", "loss/test",
                                               "accuracy/validation", "loss_terms/hint", "lr"]


def test_tensorboard_event_files_hold_every_epoch(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert train_run(config(tmp_path, tensorboard=True, threads=1),
                     quiet=True) == state_files.COMPLETED
    directory = the_run_dir(tmp_path)
    assert any(path.name.startswith("events.out.tfevents") for path in directory.iterdir())
    metrics = state_files.read_metrics(directory)
    events = EventAccumulator(str(directory))
    events.Reload()
    for key in ("test_acc", "train_loss", "lr", "train_ce"):
        scalars = events.Scalars(tag_of(key))
        assert [scalar.step for scalar in scalars] == [1, 2]
        assert [scalar.value for scalar in scalars] == pytest.approx(metrics[key], rel=1e-6)


def test_without_tensorboard_no_event_files(tmp_path):
    assert train_run(config(tmp_path, epochs=1, threads=1), quiet=True) == state_files.COMPLETED
    assert not any(path.name.startswith("events.") for path in the_run_dir(tmp_path).iterdir())
