"""Model selection off the test set (issue 15): the stratified validation hold-out, best.pth
chosen on it, final/selected accuracies, the learning rate each epoch trained with."""

from __future__ import annotations

import hashlib
import math
from collections import Counter

import numpy as np
import pytest
import torch

from kdlab.run import state_files
from kdlab.run.config import TrainConfig
from kdlab.data import DeviceData, load_arrays
from kdlab.data.validation import hold_out_validation, validation_split_indices
from kdlab.run.errors import UserError
from kdlab.run.layout import RunSpec, run_dir
from kdlab.models import build_model
from kdlab.training.loop import evaluate
from kdlab.training.run import train_run
from kdlab.training.selection import accuracy_summary
from kdlab.training.state import read_checkpoint


def config(tmp_path, **changes) -> TrainConfig:
    base = dict(dataset="Digits", model="ResNet8", seed=3, epochs=2, batch_size=128,
                experiments_dir=str(tmp_path / "experiments"), data_root=str(tmp_path / "data"),
                device="cpu")
    base.update(changes)
    return TrainConfig(**base)


def the_run_dir(tmp_path, seed=3):
    return run_dir(tmp_path / "experiments", RunSpec("Digits", "ResNet8", seed))


# --------------------------------------------------------------------------- the split


def test_validation_split_is_stratified_disjoint_and_fixed_by_seed():
    arrays = load_arrays("Digits")
    labels = arrays.train_labels
    kept, held_out = validation_split_indices(labels, 0.1, seed=3)
    assert len(set(kept) & set(held_out)) == 0
    assert sorted([*kept, *held_out]) == list(range(len(labels)))
    assert len(held_out) == math.ceil(0.1 * len(labels))
    per_class, held_per_class = Counter(labels.tolist()), Counter(labels[held_out].tolist())
    for label, count in per_class.items():
        assert abs(held_per_class[label] - 0.1 * count) <= 1, label  # stratified
    again = validation_split_indices(labels, 0.1, seed=3)
    assert np.array_equal(again[1], held_out)
    assert not np.array_equal(validation_split_indices(labels, 0.1, seed=4)[1], held_out)

    split, record = hold_out_validation(arrays, 0.1, seed=3)
    np.testing.assert_array_equal(split.train_images, arrays.train_images[kept])
    np.testing.assert_array_equal(split.validation_images, arrays.train_images[held_out])
    np.testing.assert_array_equal(split.validation_labels, labels[held_out])
    np.testing.assert_array_equal(split.test_images, arrays.test_images)
    assert record == {"fraction": 0.1, "seed": 3, "stratified": True,
                      "train_size": len(kept), "validation_size": len(held_out),
                      "validation_indices_sha256": hashlib.sha256(
                          held_out.astype("<i8").tobytes()).hexdigest()}


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 0.001])
def test_impossible_split_is_one_line(fraction):
    labels = np.repeat(np.arange(10), 20)
    with pytest.raises(UserError) as error:
        validation_split_indices(labels, fraction, seed=0)
    assert "\n" not in str(error.value) and "validation_fraction" in str(error.value)


def test_accuracy_summary_picks_the_earliest_best_epoch_of_the_selection_split():
    metrics = {"test_acc": [50.0, 70.0, 65.0, 60.0], "validation_acc": [40.0, 55.0, 58.0, 58.0]}
    assert accuracy_summary(metrics, "test") == {"max_acc": 70.0, "final_acc": 60.0,
                                                 "selected_epoch": 2}
    assert accuracy_summary(metrics, "validation") == {
        "max_acc": 70.0, "final_acc": 60.0, "selected_epoch": 3, "selected_acc": 65.0,
        "selected_validation_acc": 58.0}
    assert accuracy_summary({}, "validation") == {"max_acc": 0.0}


# --------------------------------------------------------------------------- a run


def test_validation_selection_run(tmp_path, monkeypatch):
    made = []
    original_init = DeviceData.__init__

    def recording_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(DeviceData, "__init__", recording_init)
    assert train_run(config(tmp_path, selection="validation", epochs=3),
                     quiet=True) == state_files.COMPLETED
    directory = the_run_dir(tmp_path)
    status = state_files.read_status(directory)
    metrics = state_files.read_metrics(directory)

    # The held-out images are never trained on: the run's data holds them apart.
    arrays = load_arrays("Digits")
    kept, held_out = validation_split_indices(arrays.train_labels, 0.1, seed=3)
    (data,) = made
    assert data.num_train == len(kept) and data.num_validation == len(held_out)
    assert torch.equal(data.train_images, torch.from_numpy(arrays.train_images[kept]))
    assert torch.equal(data.validation_images, torch.from_numpy(arrays.train_images[held_out]))
    assert status["validation_split"]["validation_size"] == len(held_out)
    assert status["validation_split"]["train_size"] == len(kept)
    assert status["selection"] == "validation" and status["config"]["selection"] == "validation"

    # Test accuracy is measured every epoch; best.pth is the epoch of the best validation.
    assert len(metrics["test_acc"]) == len(metrics["validation_acc"]) == 3
    chosen = int(np.argmax(metrics["validation_acc"]))
    assert status["selected_epoch"] == chosen + 1
    assert status["selected_acc"] == metrics["test_acc"][chosen]
    assert status["selected_validation_acc"] == metrics["validation_acc"][chosen]
    assert status["final_acc"] == metrics["test_acc"][-1]
    assert status["max_acc"] == max(metrics["test_acc"])
    model = build_model("ResNet8", 10)
    model.load_state_dict(torch.load(directory / "best.pth", weights_only=True)["weights"])
    assert evaluate(model, data, 1000, split="validation")[1] == metrics["validation_acc"][chosen]
    assert evaluate(model, data, 1000)[1] == metrics["test_acc"][chosen]


def test_test_selection_records_final_acc_and_the_rate_each_epoch_trained_with(tmp_path):
    assert train_run(config(tmp_path, epochs=1), quiet=True) == state_files.COMPLETED
    directory = the_run_dir(tmp_path)
    metrics, status = state_files.read_metrics(directory), state_files.read_status(directory)
    assert metrics["lr"] == [0.1]  # not the next epoch's 0.0
    assert "validation_acc" not in metrics and "selected_acc" not in status
    assert status["selection"] == "test" and "validation_split" not in status
    assert status["final_acc"] == metrics["test_acc"][-1] == status["max_acc"]

    assert train_run(config(tmp_path, epochs=2, seed=4), quiet=True) == state_files.COMPLETED
    metrics = state_files.read_metrics(the_run_dir(tmp_path, seed=4))
    # Cosine over 2 epochs: 0.1, then 0.1 (1 + cos(pi/2)) / 2.
    assert metrics["lr"] == pytest.approx([0.1, 0.05])


def test_checkpoint_from_before_the_new_settings_resumes_with_their_defaults(tmp_path):
    current = config(tmp_path)
    older = {key: value for key, value in current.identity().items()
             if key not in ("augmentation", "selection", "validation_fraction")}
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": {}, "optimizer": {}, "scheduler": {}, "metrics": {}, "best_acc": 1.0,
                "epoch": 1, "rng": {}, "config": older}, path)
    assert read_checkpoint(path, current)["epoch"] == 1
    with pytest.raises(UserError) as error:
        read_checkpoint(path, config(tmp_path, selection="validation"))
    assert "selection" in str(error.value)
