"""FitNets' two-stage form (issue 15): ``hint_epochs = N`` trains only the student up to the
guided layer and the regressor, on the hint alone, for the first N epochs."""

from __future__ import annotations

import copy

import pytest
import torch

from kdlab.run.config import TrainConfig
from kdlab.data import DatasetArrays, DeviceData, load_arrays
from kdlab.run.errors import UserError
from kdlab.models import build_model
from kdlab.training.guards import StopFlag
from kdlab.training.loop import train_epoch
from kdlab.run.config import complete_options
from kdlab.training.state import RunContext, Student, build_state, read_checkpoint

STUDENT_UP_TO_LAYER1 = ("conv1.", "bn1.", "layer1.")
STUDENT_AFTER_LAYER1 = ("layer2.", "layer3.", "linear.")


def fitnets_config(tmp_path, **options) -> TrainConfig:
    return TrainConfig(dataset="Digits", model="ResNet8", seed=0, epochs=3, batch_size=64,
                       distillation="fitnets", teacher_model="ResNet8", alpha=0.5,
                       method_options={"student_layer": "layer1", "hint_layer": "layer2",
                                       **options},
                       experiments_dir=str(tmp_path), device="cpu")


def small_digits() -> DeviceData:
    arrays = load_arrays("Digits")
    subset = DatasetArrays(arrays.info, arrays.train_images[:256], arrays.train_labels[:256],
                           arrays.test_images[:64], arrays.test_labels[:64])
    return DeviceData(subset, "cpu")


def changed(before: dict, after: dict, prefixes: tuple[str, ...]) -> dict[str, bool]:
    return {key: not torch.equal(before[key], after[key])
            for key in before if key.startswith(prefixes)}


def test_hint_stage_trains_only_the_student_up_to_the_guided_layer_and_the_regressor(tmp_path):
    config = complete_options(fitnets_config(tmp_path, hint_epochs=1))
    assert config.method_options["hint_epochs"] == 1
    ctx = RunContext(config, config.run_spec(), tmp_path, torch.device("cpu"), quiet=True)
    torch.manual_seed(0)
    state = build_state(ctx, 10, 32)
    teacher = build_model("ResNet8", 10).eval().requires_grad_(False)
    data = small_digits()

    before = copy.deepcopy(state.model.state_dict())
    regressor_before = copy.deepcopy(state.distiller.state_dict())
    (stats,) = train_epoch([Student(ctx, state)], teacher, data, 0, StopFlag())
    after = state.model.state_dict()
    # Stage 1: every tensor of the stem and layer1 moved (weights and BN statistics) ...
    trained = changed(before, after, STUDENT_UP_TO_LAYER1)
    assert trained and all(trained.values()), [k for k, v in trained.items() if not v]
    # ... the regressor too, and nothing after the guided layer, BN statistics included.
    assert all(changed(regressor_before, state.distiller.state_dict(), ("regressor.",)).values())
    untouched = changed(before, after, STUDENT_AFTER_LAYER1)
    assert untouched and not any(untouched.values()), [k for k, v in untouched.items() if v]
    # The loss is the hint alone; the cross-entropy is only logged.
    assert stats["loss"] == pytest.approx(stats["terms"]["hint"], rel=1e-9)
    assert "ce" in stats["terms"]

    # Stage 2 (epoch 1 of 3): the normal objective trains the whole student.
    before = copy.deepcopy(state.model.state_dict())
    (stats,) = train_epoch([Student(ctx, state)], teacher, data, 1, StopFlag())
    assert all(changed(before, state.model.state_dict(), STUDENT_AFTER_LAYER1).values())
    expected = 0.5 * stats["terms"]["ce"] + 0.5 * stats["terms"]["distill"]
    assert stats["loss"] == pytest.approx(expected, rel=1e-6)


def test_without_hint_epochs_the_first_epoch_is_joint(tmp_path):
    config = complete_options(fitnets_config(tmp_path))
    assert config.method_options["hint_epochs"] == 0
    ctx = RunContext(config, config.run_spec(), tmp_path, torch.device("cpu"), quiet=True)
    torch.manual_seed(0)
    state = build_state(ctx, 10, 32)
    before = copy.deepcopy(state.model.state_dict())
    train_epoch([Student(ctx, state)], build_model("ResNet8", 10).eval().requires_grad_(False),
                small_digits(), 0, StopFlag())
    assert all(changed(before, state.model.state_dict(), STUDENT_AFTER_LAYER1).values())


@pytest.mark.parametrize("hint_epochs, expected", [(3, "fewer than --epochs 3"),
                                                   (-1, "hint_epochs -1: expected a number >= 0")])
def test_impossible_hint_epochs_are_one_line(tmp_path, hint_epochs, expected):
    from kdlab.data import dataset_info
    from kdlab.models import describe_features
    from kdlab.distill import build_distiller

    with pytest.raises(UserError) as error:
        config = complete_options(fitnets_config(tmp_path, hint_epochs=hint_epochs))
        shapes = describe_features("ResNet8", 10, dataset_info("Digits").image_size)
        build_distiller("fitnets", shapes, shapes, config.method_options)
    assert "\n" not in str(error.value) and expected in str(error.value)


def test_fitnets_checkpoint_from_before_hint_epochs_resumes(tmp_path):
    config = complete_options(fitnets_config(tmp_path))
    older = copy.deepcopy(config.identity())
    del older["method_options"]["hint_epochs"]
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": {}, "optimizer": {}, "scheduler": {}, "metrics": {}, "best_acc": 1.0,
                "epoch": 1, "rng": {}, "config": older}, path)
    assert read_checkpoint(path, config)["epoch"] == 1
    two_stage = complete_options(fitnets_config(tmp_path, hint_epochs=1))
    with pytest.raises(UserError) as error:
        read_checkpoint(path, two_stage)
    assert "method_options" in str(error.value)
