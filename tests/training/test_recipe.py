"""The benchmark's recipe as run settings: the multi-step schedule, per-model [training]
values, the 'benchmark' augmentation, and which epoch's accuracy the tables report."""

from __future__ import annotations

import json
import math
import os
import signal
import statistics

import numpy as np
import pytest
import torch

from kdlab.run import state_files
from kdlab.cli import main
from kdlab.run.config import (SettingError, TrainConfig, config_flags, config_json,
                          configs_from_args, read_config_file, schedule_words,
                          validate_config)
from kdlab.run.errors import UserError
from kdlab.run.layout import RunSpec, run_dir
from kdlab.study.packs import pack_key
from kdlab.study.study_file import load_study
from kdlab.training.run import train_run
from kdlab.training.state import lr_scheduler
from builders import RecordingScheduler, write_run, write_study

# RepDistiller's CIFAR-100 recipe (train_student.py defaults).
REPDISTILLER = dict(lr=0.05, lr_schedule="multistep", lr_milestones=[150, 180, 210],
                    lr_decay=0.1, epochs=240, batch_size=64, weight_decay=5e-4, momentum=0.9)


def repdistiller_rate(epoch_one_based: int, base=0.05, milestones=(150, 180, 210), decay=0.1):
    """RepDistiller's adjust_learning_rate, written out: the number of milestones the
    1-based epoch is past."""
    steps = sum(1 for milestone in milestones if epoch_one_based > milestone)
    return base * decay ** steps


def rates_over_epochs(config: TrainConfig) -> list[float]:
    """The rate each 0-based epoch trains with, as the epoch loop reads it (before the
    schedule's step after the epoch)."""
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    scheduler = lr_scheduler(optimizer, config)
    rates = []
    for _ in range(config.epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_multistep_rate_at_every_milestone_and_between():
    config = TrainConfig(dataset="Cifar100", model="ResNet8", **REPDISTILLER)
    validate_config(config)
    rates = rates_over_epochs(config)
    assert len(rates) == 240
    for epoch, rate in enumerate(rates):
        assert rate == pytest.approx(repdistiller_rate(epoch + 1), rel=1e-12), epoch
    # The milestone epochs themselves (0-based 150 is RepDistiller's epoch 151) and between.
    expected = {0: 0.05, 149: 0.05, 150: 0.005, 165: 0.005, 179: 0.005, 180: 0.0005,
                209: 0.0005, 210: 0.00005, 239: 0.00005}
    for epoch, rate in expected.items():
        assert rates[epoch] == pytest.approx(rate, rel=1e-12), epoch
    assert schedule_words(config.to_dict()) == "multiplied by 0.1 after epochs 150, 180, 210"


def test_cosine_stays_the_default_schedule():
    config = TrainConfig(dataset="Digits", model="ResNet8", epochs=10, lr=0.1)
    assert config.lr_schedule == "cosine"
    for epoch, rate in enumerate(rates_over_epochs(config)):
        assert rate == pytest.approx(0.05 * (1 + math.cos(math.pi * epoch / 10)), abs=1e-12)


@pytest.mark.parametrize("changes, key, expected", [
    (dict(lr_schedule="multistep"), "lr_milestones", "one or more epochs below --epochs 150"),
    (dict(lr_schedule="multistep", lr_milestones=[10, 150]), "lr_milestones",
     "one or more epochs below --epochs 150"),
    (dict(lr_milestones=[20, 10]), "lr_milestones", "strictly increasing epochs >= 1"),
    (dict(lr_milestones=[0, 10]), "lr_milestones", "strictly increasing epochs >= 1"),
    (dict(lr_milestones=[10.5]), "lr_milestones", "a list of integers"),
    (dict(lr_decay=0.0), "lr_decay", "a number in (0, 1]"),
    (dict(lr_schedule="step"), "lr_schedule", "one of cosine, multistep"),
    (dict(augmentation="crd"), "augmentation", "one of kdlab, earlier, benchmark"),
])
def test_bad_schedule_settings_are_one_setting_error(changes, key, expected):
    with pytest.raises(SettingError) as caught:
        validate_config(TrainConfig(dataset="Digits", model="ResNet8", **changes))
    assert caught.value.key == key and expected in caught.value.expected


def test_schedule_flags_round_trip_through_config_json(tmp_path):
    from kdlab.cli import build_parser

    argv = ["train", "--dataset", "Digits", "--model", "ResNet8", "--epochs", "240",
            "--lr", "0.05", "--lr-schedule", "multistep", "--lr-milestones", "150,180,210",
            "--lr-decay", "0.1", "--augmentation", "benchmark"]
    config = configs_from_args(build_parser().parse_args(argv))[0]
    validate_config(config)
    assert config.lr_milestones == [150, 180, 210] and config.augmentation == "benchmark"
    path = tmp_path / "config.json"
    path.write_text(config_json(config))
    assert json.loads(path.read_text())["lr_milestones"] == [150, 180, 210]
    assert read_config_file(path) == config
    flags = config_flags(config)
    assert flags[flags.index("--lr-milestones") + 1] == "150,180,210"
    again = configs_from_args(build_parser().parse_args(["train", *flags]))[0]
    assert again == config
    bracketed = [*argv[:argv.index("150,180,210")], "[150, 180, 210]"]
    assert configs_from_args(build_parser().parse_args(bracketed))[0].lr_milestones == [
        150, 180, 210]


def test_a_bad_milestone_flag_is_one_line_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        main(["train", "--dataset", "Digits", "--model", "ResNet8", "--lr-schedule",
              "multistep", "--lr-milestones", "5,x", "--data-root", str(tmp_path)])
    assert caught.value.code == 2
    assert "'5,x': expected a comma list of numbers" in capsys.readouterr().err


# ---- per-model values ----------------------------------------------------------------------

PER_MODEL = """
[training.model.ResNet8]
lr = 0.01
batch_size = 64
lr_schedule = "multistep"
lr_milestones = [2, 3]
"""


def test_a_model_s_training_values_apply_to_its_runs_only(tmp_path):
    study = load_study(write_study(tmp_path / "s.toml", training="epochs = 4\nlr = 0.1",
                                   methods=("logit", "fitnets"), tables=PER_MODEL))
    teacher = study.train_config(RunSpec("Digits", "ResNet20", 0))
    pure = study.train_config(RunSpec("Digits", "ResNet8", 0))
    kd = study.train_config(RunSpec("Digits", "ResNet8", 0, "logit", "ResNet20", 0.5))
    assert (teacher.lr, teacher.batch_size, teacher.lr_schedule) == (0.1, 128, "cosine")
    for student in (pure, kd):
        assert (student.lr, student.batch_size, student.lr_schedule,
                student.lr_milestones, student.epochs) == (0.01, 64, "multistep", [2, 3], 4)
    assert isinstance(pure.lr, float)
    # A batch size is shared by a pack: the teacher and the students no longer pack together.
    assert dict(pack_key_fields(study, RunSpec("Digits", "ResNet20", 0)))["batch_size"] == "128"
    assert dict(pack_key_fields(study, RunSpec("Digits", "ResNet8", 0)))["batch_size"] == "64"


def pack_key_fields(study, spec):
    from types import SimpleNamespace

    return pack_key(study, SimpleNamespace(run=SimpleNamespace(spec=spec)))


@pytest.mark.parametrize("tables, message", [
    ("[training.model.ResNet8]\nlr = -1.0\n",
     "key 'training.model.ResNet8.lr': expected a finite number > 0, found -1.0"),
    ("[training.model.ResNet8]\nlr = \"fast\"\n",
     "key 'training.model.ResNet8.lr': expected a number, found 'fast'"),
    ("[training.model.ResNet8]\nseed = 3\n",
     "key 'training.model.ResNet8.seed': expected one of the known keys"),
    ("[training.model.ResNet9]\nlr = 0.01\n",
     "key 'training.model.ResNet9': expected a model from ResNet8"),
    ("[training.model.ResNet56]\nlr = 0.01\n",
     "key 'training.model.ResNet56': expected a model this study trains (ResNet20, ResNet8)"),
    ("[training.model.ResNet8]\nlr_schedule = \"multistep\"\nlr_milestones = [9]\n",
     "key 'training.model.ResNet8.lr_milestones': expected one or more epochs below "
     "--epochs 4 for the 'multistep' schedule, found [9]"),
])
def test_bad_per_model_values_are_one_line_naming_the_key(tmp_path, tables, message):
    with pytest.raises(UserError) as caught:
        load_study(write_study(tmp_path / "s.toml", tables=tables))
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_queue_writes_the_per_model_values_into_each_run_s_config(tmp_path):

    from kdlab.study.queue import run_queue

    path = write_study(tmp_path / "s.toml", training="epochs = 4\nlr = 0.1", tables=PER_MODEL,
                       top=f'data_root = "{tmp_path / "data"}"\n')
    study = load_study(path)
    for spec in study.teacher_runs():  # the students wait for a completed teacher
        state_files.write_status(study.run_dir(spec), {"status": "completed", "epoch": 4,
                                                    "max_acc": 95.0, "run": spec.name})
    scheduler = RecordingScheduler()
    _, code = run_queue(study, say=lambda line: None, scheduler=scheduler)
    assert code == 0 and len(scheduler.submitted) == 2
    for spec in study.pure_student_runs() + study.kd_runs():
        written = read_config_file(study.config_path(spec))
        assert (written.lr, written.batch_size, written.lr_milestones) == (0.01, 64, [2, 3])


# ---- the benchmark augmentation ------------------------------------------------------------

def _cifar100_arrays(count=10, seed=3):
    from kdlab.data.info import DATASETS, DatasetArrays

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 100, count).astype(np.int64)
    return DatasetArrays(DATASETS["Cifar100"], images, labels, images[:4].copy(), labels[:4])


def test_benchmark_augmentation_equals_torchvision_on_the_same_draws(monkeypatch):
    from PIL import Image
    from torchvision import transforms

    from kdlab.data.device import DeviceData

    arrays = _cifar100_arrays()
    data = DeviceData(arrays, "cpu", augmentation="benchmark")
    generator = torch.Generator().manual_seed(11)
    batches = list(data.train_batches(4, generator))

    # The same draws, in the order train_batches takes them: the permutation, then per batch
    # the crop offsets (row, column) and the flips.
    replay = torch.Generator().manual_seed(11)
    order = torch.randperm(10, generator=replay)
    mean, std = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)  # RepDistiller's
    crop = transforms.RandomCrop(32, padding=4)
    tail = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])
    for start, (images, labels) in zip(range(0, 10, 4), batches):
        index = order[start:start + 4]
        if len(index) < 2:
            break
        offsets = torch.randint(0, 9, (len(index), 2), generator=replay)
        flips = torch.randint(0, 2, (len(index),), generator=replay).bool()
        expected = []
        for position, sample in enumerate(index.tolist()):
            top, left = offsets[position].tolist()
            monkeypatch.setattr(transforms.RandomCrop, "get_params",
                                staticmethod(lambda img, size, t=top, l=left: (t, l, 32, 32)))
            image = Image.fromarray(arrays.train_images[sample].transpose(1, 2, 0))
            image = crop(image)
            image = transforms.RandomHorizontalFlip(p=1.0 if flips[position] else 0.0)(image)
            expected.append(tail(image))
        torch.testing.assert_close(images, torch.stack(expected), rtol=0, atol=2e-6)
        assert torch.equal(labels, torch.as_tensor(arrays.train_labels[index.numpy()]))
    # The test images: ToTensor + Normalize only.
    test_images, _ = next(data.test_batches(100))
    expected = torch.stack([tail(Image.fromarray(image.transpose(1, 2, 0)))
                            for image in arrays.test_images])
    torch.testing.assert_close(test_images, expected, rtol=0, atol=2e-6)


def test_benchmark_constants_apply_to_cifar100_only():
    from kdlab.data.device import DeviceData
    from kdlab.data.info import DATASETS, DatasetArrays

    cifar = DeviceData(_cifar100_arrays(), "cpu", augmentation="benchmark")
    assert (cifar.mean, cifar.std) == ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
    kdlab = DeviceData(_cifar100_arrays(), "cpu")
    assert (kdlab.mean, kdlab.std) == (DATASETS["Cifar100"].mean, DATASETS["Cifar100"].std)
    arrays = _cifar100_arrays()
    digits = DatasetArrays(DATASETS["Digits"], arrays.train_images, arrays.train_labels % 10,
                           arrays.test_images, arrays.test_labels % 10)
    benchmark_digits = DeviceData(digits, "cpu", augmentation="benchmark")
    assert (benchmark_digits.mean, benchmark_digits.std) == (DATASETS["Digits"].mean,
                                                             DATASETS["Digits"].std)


# ---- training with the recipe, and its resume ----------------------------------------------

def _recipe_config(root, **changes):
    base = dict(dataset="Digits", model="ResNet8", seed=1, epochs=3, batch_size=64,
                lr=0.05, lr_schedule="multistep", lr_milestones=[1, 2], lr_decay=0.1,
                augmentation="benchmark", experiments_dir=str(root / "experiments"),
                data_root=str(root / "data"), device="cpu")
    base.update(changes)
    return TrainConfig(**base)


def _comparable(metrics):
    return {key: value for key, value in metrics.items() if key not in ("epoch_seconds", "config")}


def test_multistep_run_trains_at_the_schedule_s_rates_and_resumes_bit_identically(
        tmp_path, monkeypatch):
    reference_root = tmp_path / "reference"
    assert train_run(_recipe_config(reference_root), quiet=True) == state_files.COMPLETED
    spec = RunSpec("Digits", "ResNet8", 1)
    reference = state_files.read_metrics(run_dir(reference_root / "experiments", spec))
    assert reference["lr"] == pytest.approx([0.05, 0.005, 0.0005], rel=1e-12)
    recorded = state_files.read_status(run_dir(reference_root / "experiments", spec))["config"]
    assert (recorded["augmentation"], recorded["lr_milestones"]) == ("benchmark", [1, 2])

    # Stopped (SIGUSR1, as a scheduler warns) inside epoch 2, then resumed.
    from kdlab.data.device import DeviceData

    real_batches = DeviceData.train_batches
    calls = {"batches": 0}

    def stopping_batches(self, batch_size, generator, **options):
        for batch in real_batches(self, batch_size, generator, **options):
            calls["batches"] += 1
            if calls["batches"] == 23 + 5:   # 23 batches of 64 per epoch: inside epoch 2
                os.kill(os.getpid(), signal.SIGUSR1)
            yield batch

    monkeypatch.setattr(DeviceData, "train_batches", stopping_batches)
    assert train_run(_recipe_config(tmp_path), quiet=True) == state_files.IN_PROGRESS
    directory = run_dir(tmp_path / "experiments", spec)
    assert state_files.read_status(directory)["epoch"] == 1
    monkeypatch.setattr(DeviceData, "train_batches", real_batches)
    assert train_run(_recipe_config(tmp_path), quiet=True) == state_files.COMPLETED
    assert _comparable(state_files.read_metrics(directory)) == _comparable(reference)
    best = torch.load(directory / "best.pth", weights_only=True)["weights"]
    reference_best = torch.load(run_dir(reference_root / "experiments", spec) / "best.pth",
                                weights_only=True)["weights"]
    assert all(torch.equal(best[key], value) for key, value in reference_best.items())

    # Other milestones are other settings: the checkpoint is not resumed with them.
    with pytest.raises(UserError, match=r"other settings \(lr_milestones\)"):
        from kdlab.training.state import read_checkpoint

        read_checkpoint(directory / state_files.CHECKPOINT_FILE,
                        _recipe_config(tmp_path, lr_milestones=[2]))


# ---- which epoch's accuracy the tables report ----------------------------------------------

def test_reported_accuracy_last_makes_the_tables_report_final_acc(tmp_path):

    from kdlab.study.summaries import accuracy_groups, selection_accuracy
    from kdlab.study.status import format_report, status_report
    from kdlab.study.progress import study_run_states

    path = write_study(tmp_path / "s.toml", seeds=(0, 1, 2), top='reported_accuracy = "last"\n')
    study = load_study(path)
    finals = {0: 71.0, 1: 73.0, 2: 72.5}
    for seed in (0, 1, 2):
        directory = write_run(study.experiments_dir,
                              RunSpec("Digits", "ResNet8", seed, "logit", "ResNet20", 0.5),
                              test_acc=[60.0, 80.0, finals[seed]])
        status = json.loads((directory / state_files.STATUS_FILE).read_text())
        status["final_acc"] = finals[seed]
        (directory / state_files.STATUS_FILE).write_text(json.dumps(status))
    key, words = selection_accuracy(study)
    assert key == "final_acc" and words.startswith("last-epoch test accuracy")
    logit = [group for group in accuracy_groups(study, study_run_states(study))
             if group.method == "logit"][0]
    assert logit.selected == [finals[0], finals[1], finals[2]]
    assert logit.selected_summary.mean == pytest.approx(statistics.fmean(finals.values()))
    text = format_report(status_report(study, check_jobs=False))
    assert "last-epoch test accuracy" in text

    default = load_study(write_study(tmp_path / "d.toml"))
    assert default.reported_accuracy == "best"
    assert selection_accuracy(default)[0] == "max_acc"
    with pytest.raises(UserError, match="key 'reported_accuracy': expected one of best, last"):
        load_study(write_study(tmp_path / "b.toml", top='reported_accuracy = "mean"\n'))


def test_a_checkpoint_from_before_the_schedule_settings_still_resumes(tmp_path):
    """A checkpoint written before lr_schedule/lr_milestones/lr_decay existed trained with
    the cosine schedule: it resumes under the defaults, and not under 'multistep'."""
    from kdlab.training.state import read_checkpoint

    config = _recipe_config(tmp_path, lr_schedule="cosine", lr_milestones=[], lr_decay=0.1,
                            augmentation="kdlab")
    identity = config.identity()
    for key in ("lr_schedule", "lr_milestones", "lr_decay"):
        del identity[key]
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": {}, "optimizer": {}, "scheduler": {}, "metrics": {}, "best_acc": 1.0,
                "epoch": 1, "rng": {}, "config": identity}, path)
    assert read_checkpoint(path, config)["epoch"] == 1
    with pytest.raises(UserError, match=r"other settings \(lr_milestones, lr_schedule\)"):
        read_checkpoint(path, _recipe_config(tmp_path, augmentation="kdlab"))


def test_methodology_states_the_schedule_and_the_per_model_values(tmp_path):
    from kdlab.ops.methodology import methodology_sections, render_markdown

    study = load_study(write_study(tmp_path / "s.toml", training="epochs = 4", tables=PER_MODEL))
    text = render_markdown("Methodology", methodology_sections(study, []))
    assert "| ResNet8's runs | lr 0.01, batch_size 64, lr_schedule multistep, lr_milestones " \
           "[2, 3] |" in text
    assert "cosine annealing to 0 over the epochs" in text
