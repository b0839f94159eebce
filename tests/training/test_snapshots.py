"""The snapshot_epochs setting (issue 25): lists and rules, as a flag, a study key and in
config.json; every bad value is one line."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from kdlab.cli import build_parser, main
from kdlab.run.config import (SettingError, TrainConfig, config_flags, config_json,
                          configs_from_args, read_config_file, validate_config)
from kdlab.run.errors import UserError
from kdlab.run.layout import RunSpec
from kdlab.study.study_file import load_study
from builders import write_study


def log_rule(count: int, epochs: int) -> list[int]:
    """The documented 'log:N' rule, computed independently: N points geometrically spaced
    from 1 to the last epoch (numpy), rounded half up, repeats dropped."""
    if count == 1:
        return [epochs]
    points = np.geomspace(1, epochs, count)
    return sorted({int(math.floor(point + 0.5)) for point in points})


@pytest.mark.parametrize("count, epochs", [(6, 150), (6, 240), (5, 2), (3, 1), (1, 150),
                                           (10, 30), (2, 7)])
def test_the_log_rule_is_the_documented_one(count, epochs):
    config = TrainConfig(dataset="Digits", model="ResNet8", epochs=epochs,
                         snapshot_epochs=f"log:{count}")
    validate_config(config)
    found = config.snapshot_epoch_list
    assert found == log_rule(count, epochs)
    assert found[-1] == epochs and found == sorted(set(found))
    assert len(found) <= count


def test_the_log_rule_for_150_epochs():
    config = TrainConfig(dataset="Digits", model="ResNet8", epochs=150, snapshot_epochs="log:6")
    # 150 ** (i / 5): 1, 2.725, 7.425, 20.23, 55.12, 150
    assert config.snapshot_epoch_list == [1, 3, 7, 20, 55, 150]


def test_every_k_and_a_plain_list():
    every = TrainConfig(dataset="Digits", model="ResNet8", epochs=10, snapshot_epochs="every:4")
    assert every.snapshot_epoch_list == [4, 8, 10]
    listed = TrainConfig(dataset="Digits", model="ResNet8", epochs=10,
                         snapshot_epochs=[1, 5, 10])
    assert listed.snapshot_epoch_list == [1, 5, 10]
    assert TrainConfig(dataset="Digits", model="ResNet8").snapshot_epoch_list == []


@pytest.mark.parametrize("value, expected", [
    ([3, 2], "strictly increasing epochs >= 1"),
    ([0, 2], "strictly increasing epochs >= 1"),
    ([1, 11], "epochs up to --epochs 10"),
    ("log:0", "a list of epochs or a rule: log:N"),
    ("log", "a list of epochs or a rule: log:N"),
    ("lin:4", "a list of epochs or a rule: log:N"),
    ("every:-1", "a list of epochs or a rule: log:N"),
    ([1.5], "a list of integers or a rule"),
    (5, "a list of integers or a rule"),
])
def test_bad_snapshot_epochs_are_one_setting_error(value, expected):
    with pytest.raises(SettingError) as caught:
        validate_config(TrainConfig(dataset="Digits", model="ResNet8", epochs=10,
                                    snapshot_epochs=value))
    assert caught.value.key == "snapshot_epochs" and expected in caught.value.expected


@pytest.mark.parametrize("flag, value", [("1,5,10", [1, 5, 10]), ("[1, 5, 10]", [1, 5, 10]),
                                         ("log:4", "log:4")])
def test_the_flag_round_trips_through_config_json(tmp_path, flag, value):
    argv = ["train", "--dataset", "Digits", "--model", "ResNet8", "--epochs", "10",
            "--snapshot-epochs", flag]
    config = configs_from_args(build_parser().parse_args(argv))[0]
    validate_config(config)
    assert config.snapshot_epochs == value
    path = tmp_path / "config.json"
    path.write_text(config_json(config))
    assert json.loads(path.read_text())["snapshot_epochs"] == value
    assert read_config_file(path) == config
    assert configs_from_args(build_parser().parse_args(["train", *config_flags(config)]))[
        0] == config


def test_a_bad_flag_is_one_line_exit_2(tmp_path, capsys):
    code = main(["train", "--dataset", "Digits", "--model", "ResNet8", "--epochs", "10",
                 "--snapshot-epochs", "log:x", "--data-root", str(tmp_path),
                 "--experiments-dir", str(tmp_path / "experiments")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "--snapshot-epochs 'log:x': expected a list of epochs or a rule" in err
    assert not (tmp_path / "experiments").exists()


@pytest.mark.parametrize("value, expected", [("[1, 2, 4]", [1, 2, 4]), ('"log:3"', "log:3")])
def test_a_study_sets_snapshot_epochs_for_its_runs(tmp_path, value, expected):
    study = load_study(write_study(tmp_path / "s.toml",
                                   training=f"epochs = 4\nsnapshot_epochs = {value}"))
    for spec in (RunSpec("Digits", "ResNet20", 0),
                 RunSpec("Digits", "ResNet8", 0, "logit", "ResNet20", 0.5)):
        config = study.train_config(spec)
        assert config.snapshot_epochs == expected
    assert study.train_config(RunSpec("Digits", "ResNet8", 0)).snapshot_epoch_list == (
        [1, 2, 4])


@pytest.mark.parametrize("value, message", [
    ("[1, 9]", "key 'training.snapshot_epochs': expected epochs up to --epochs 4, found [1, 9]"),
    ('"often"', "key 'training.snapshot_epochs': expected a list of epochs or a rule: log:N"),
    ("true", "key 'training.snapshot_epochs': expected a list of integers or a rule"),
])
def test_a_bad_study_value_is_one_line_naming_the_key(tmp_path, value, message):
    with pytest.raises(UserError) as caught:
        load_study(write_study(tmp_path / "s.toml",
                               training=f"epochs = 4\nsnapshot_epochs = {value}"))
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_the_methodology_states_the_snapshots_disk_use(tmp_path):
    import torch

    from kdlab.models import build_model
    from kdlab.ops.methodology_facts import objective_blocks

    study = load_study(write_study(tmp_path / "s.toml", teacher="ResNet56", student="ResNet8",
                                   training='epochs = 4\nsnapshot_epochs = "log:3"'))
    text = " ".join(block[1] for block in objective_blocks(study, [])
                    if block[0] == "p" and block[1].startswith("Snapshots"))

    def size(name: str) -> tuple[int, int]:   # float32 values, int64 BatchNorm counters
        model = build_model(name, 10)
        values = sum(p.numel() for p in model.parameters()) + sum(
            b.numel() for b in model.buffers())
        counters = sum(1 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
        return values, 4 * (values - counters) + 8 * counters

    values, nbytes = size("ResNet56")
    assert f"ResNet56 after epochs 1, 2, 4: {values:,} parameters and buffers, " \
           f"{nbytes / 1e6:.1f} MB a snapshot" in text
    runs = study.runs()
    total = sum(3 * size(spec.model)[1] for spec in runs)
    assert f"The {len(runs)} runs of the grid keep {total / 1e9:.2f} GB of snapshots." in text
    plain = load_study(write_study(tmp_path / "p.toml"))
    assert not any(block[1].startswith("Snapshots") for block in objective_blocks(plain, [])
                   if block[0] == "p")
