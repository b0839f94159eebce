"""kdlab import-teacher: a RepDistiller checkpoint becomes the study's completed teacher run,
measured on the test set with the file's own normalisation, and students distil from it."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from kdlab.run import catalog
from kdlab.cli import main
from kdlab.run.config import complete_options, write_config_file
from kdlab.data import load_arrays
from kdlab.run.layout import RunSpec
from kdlab.models import build_model
from kdlab.study.study_file import load_study
from kdlab.training.lock import RunLock
from builders import snapshot, write_study

TEACHER, STUDENT = "ResNet14", "ResNet8"
DIGITS_MEAN, DIGITS_STD = (0.3054,) * 3, (0.3760,) * 3


@pytest.fixture
def study_path(tmp_path):
    return write_study(tmp_path / "study.toml", teacher=TEACHER, student=STUDENT,
                       methods=("logit",), alphas=(0.5,), seeds=(0,), training='epochs = 1\ndevice = "cpu"')


def teacher_model(model: str = TEACHER, classes: int = 10, seed: int = 3) -> torch.nn.Module:
    """A model whose batch norms carry statistics of their own (not the 0/1 of a fresh
    one), so that its predictions depend on how the images are normalised."""
    torch.manual_seed(seed)
    network = build_model(model, classes)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                size = module.num_features
                module.running_mean.copy_(torch.randn(size, generator=generator) * 0.2)
                module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(size, generator=generator) * 0.2)
    return network.eval()


def repdistiller_state_dict(state_dict: dict) -> dict:
    """kdlab's CIFAR ResNet keys as RepDistiller's models/resnet.py names them."""
    renamed = {}
    for key, value in state_dict.items():
        key = key.replace(".shortcut.", ".downsample.")
        renamed["fc." + key[len("linear."):] if key.startswith("linear.") else key] = value
    return renamed


def write_repdistiller_file(path, network) -> None:
    """What RepDistiller's train_teacher.py saves every save_freq epochs."""
    torch.save({"epoch": 240, "model": repdistiller_state_dict(network.state_dict()),
                "accuracy": torch.tensor(71.5), "optimizer": {}}, path)


def accuracy_by_hand(network, mean, std) -> float:
    """Digits test accuracy (%) with (pixels / 255 - mean) / std worked out in NumPy."""
    arrays = load_arrays("Digits")
    images = (arrays.test_images.astype(np.float64) / 255.0
              - np.asarray(mean).reshape(1, 3, 1, 1)) / np.asarray(std).reshape(1, 3, 1, 1)
    with torch.no_grad():
        logits = network(torch.from_numpy(images).float()).logits.numpy()
    return 100.0 * float(np.mean(logits.argmax(1) == arrays.test_labels))


def teacher_dir(study_path):
    study = load_study(study_path)
    return study.run_dir(RunSpec("Digits", TEACHER, 0))


def import_args(study_path, source, *extra, model=TEACHER, dataset="Digits", seed="0"):
    return ["import-teacher", str(source), "--model", model, "--dataset", dataset, "--seed",
            seed, "--study", str(study_path), *extra]


def test_imported_teacher_is_a_completed_run_that_a_student_distils_from(study_path, tmp_path,
                                                                          capsys):
    network = teacher_model()
    source = tmp_path / "resnet14_vanilla" / "ckpt_epoch_240.pth"
    source.parent.mkdir()
    write_repdistiller_file(source, network)
    assert main(import_args(study_path, source)) == 0
    out, err = capsys.readouterr()
    assert err == ""
    directory = teacher_dir(study_path)
    expected_acc = accuracy_by_hand(network, DIGITS_MEAN, DIGITS_STD)
    sha256 = hashlib.sha256(source.read_bytes()).hexdigest()
    assert out.strip().splitlines() == [
        f"Digits-pure-{TEACHER}-s0: imported {source} (sha256 {sha256[:16]}...) into "
        f"{directory}: test accuracy {expected_acc:.2f}% with kdlab's Digits statistics (none "
        "published for Digits: --mean/--std give the file's own)"]

    assert sorted(path.name for path in directory.iterdir()) == [
        "best.pth", "config.json", "status.json", "train.lock"]  # no curves: kdlab trained none
    status = json.loads((directory / "status.json").read_text())
    assert status["status"] == "completed" and status["run"] == f"Digits-pure-{TEACHER}-s0"
    assert status["max_acc"] == pytest.approx(expected_acc, abs=1e-9)
    assert status["made_by"].endswith(f"import-teacher from {source.resolve()} (sha256 {sha256})")
    imported = status["imported"]
    assert imported["sha256"] == sha256 and imported["source"] == str(source.resolve())
    assert imported["file"] == {"epoch": 240, "accuracy": 71.5}
    assert imported["normalization"]["mean"] == list(DIGITS_MEAN)
    assert imported["study_preprocessing_test_acc"] is None  # the study prepares them alike
    assert imported["published_acc"] is None
    weights = torch.load(directory / "best.pth", weights_only=True)["weights"]
    assert weights.keys() == network.state_dict().keys()
    assert all(torch.equal(weights[key], value) for key, value in network.state_dict().items())
    config = json.loads((directory / "config.json").read_text())
    assert (config["model"], config["dataset"], config["seed"]) == (TEACHER, "Digits", 0)

    assert main(["queue", "--dry-run", str(study_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split()[:2] == ["done", f"Digits-pure-{TEACHER}-s0:"] and "imported" in line
               for line in lines), lines
    assert "1 completed" in lines[-1] and "0 waiting for teacher" in lines[-1]

    # A student of the study trains one epoch from it, as from a teacher kdlab trained.
    study = load_study(study_path)
    student = RunSpec("Digits", STUDENT, 0, method="logit", teacher=TEACHER, alpha=0.5)
    write_config_file(study.run_dir(student), complete_options(study.train_config(student)))
    assert main(["train", "--config", str(study.config_path(student)), "--quiet"]) == 0
    student_status = json.loads((study.run_dir(student) / "status.json").read_text())
    assert student_status["status"] == "completed" and student_status["epoch"] == 1

    assert main(["status", str(study_path)]) == 0
    text = capsys.readouterr().out
    assert "imported teachers (1; kdlab import-teacher):" in text
    assert (f"  Digits-pure-{TEACHER}-s0: measured {expected_acc:.2f}%, no published accuracy "
            f"known, from {source.resolve()}") in text
    assert "outside the grid" not in text


def test_accuracy_is_measured_with_the_files_normalisation(study_path, tmp_path, capsys):
    network = teacher_model()
    source = tmp_path / "ckpt_epoch_240.pth"
    write_repdistiller_file(source, network)
    mean, std = (0.6, 0.5, 0.4), (0.15, 0.2, 0.25)
    assert main(import_args(study_path, source, "--mean", *map(str, mean),
                            "--std", *map(str, std))) == 0
    imported = json.loads((teacher_dir(study_path) / "status.json").read_text())["imported"]
    files_acc = accuracy_by_hand(network, mean, std)
    study_acc = accuracy_by_hand(network, DIGITS_MEAN, DIGITS_STD)
    assert files_acc != study_acc  # the check below can tell the two apart
    assert imported["test_acc"] == pytest.approx(files_acc, abs=1e-9)
    assert imported["study_preprocessing_test_acc"] == pytest.approx(study_acc, abs=1e-9)
    assert imported["normalization"] == {"mean": list(mean), "std": list(std),
                                         "source": "the --mean/--std normalisation"}
    out = capsys.readouterr().out
    assert f"{study_acc:.2f}% as the study prepares images for its students" in out


def test_cifar100_files_are_measured_with_repdistillers_normalisation():
    from kdlab.ops.import_teacher import file_normalization

    normalization = file_normalization("Cifar100")
    # RepDistiller's dataset/cifar100.py (transforms.Normalize of its train and test sets)
    assert normalization.mean == (0.5071, 0.4867, 0.4408)
    assert normalization.std == (0.2675, 0.2565, 0.2761)
    assert normalization.source == "RepDistiller's Cifar100 normalisation"


@pytest.mark.parametrize("margin, warned", [(1.5, True), (0.5, False)])
def test_measured_more_than_a_point_under_the_published_accuracy_is_one_warning(
        study_path, tmp_path, capsys, monkeypatch, margin, warned):
    network = teacher_model()
    source = tmp_path / "ckpt_epoch_240.pth"
    write_repdistiller_file(source, network)
    measured = accuracy_by_hand(network, DIGITS_MEAN, DIGITS_STD)
    published = round(measured + margin, 2)
    monkeypatch.setitem(catalog.PUBLISHED_TEACHER_ACCURACY, (TEACHER, "Digits"), published)
    assert main(import_args(study_path, source)) == 0
    out, err = capsys.readouterr()
    assert f"; published {published:.2f}%" in out
    if warned:
        assert err.splitlines() == [
            f"kdlab import-teacher: warning: {TEACHER} on Digits measures {measured:.2f}%, "
            f"{published - measured:.2f} points under the published {published:.2f}% "
            f"({catalog.PUBLISHED_TEACHER_SOURCE}): check the file and the data before "
            "distilling from it"]
    else:
        assert err == ""
    imported = json.loads((teacher_dir(study_path) / "status.json").read_text())["imported"]
    assert imported["published_acc"] == published
    assert main(["status", str(study_path)]) == 0
    assert (f"measured {measured:.2f}%, published {published:.2f}% "
            f"({catalog.PUBLISHED_TEACHER_SOURCE})") in capsys.readouterr().out


def test_published_accuracies_name_the_benchmarks_teachers():
    # The teacher rows of RepDistiller's README tables (CIFAR-100).
    assert catalog.PUBLISHED_TEACHER_ACCURACY == {
        ("ResNet56", "Cifar100"): 72.34, ("ResNet110", "Cifar100"): 74.31,
        ("ResNet32x4", "Cifar100"): 79.42, ("WRN40_2", "Cifar100"): 75.61,
        ("VGG13", "Cifar100"): 74.64, ("ResNet50", "Cifar100"): 79.34}
    from kdlab.models import repdistiller_name

    assert all(repdistiller_name(model) for model, _ in catalog.PUBLISHED_TEACHER_ACCURACY)


def wrong_files(tmp_path) -> dict:
    """name -> (file, expected words of the refusal)."""
    network = teacher_model()
    files = {}
    text = tmp_path / "notes.pth"
    text.write_text("not a torch file")
    files["not a torch file"] = (text, "is unreadable or corrupt")
    listed = tmp_path / "list.pth"
    torch.save([1, 2, 3], listed)
    files["not a dict"] = (listed, "expected RepDistiller's checkpoint, a dict whose 'model' "
                                   "is a state dict (as {name}_vanilla/ckpt_epoch_240.pth); "
                                   "found list")
    kdlab_best = tmp_path / "best.pth"
    torch.save({"weights": network.state_dict()}, kdlab_best)
    files["no 'model'"] = (kdlab_best, "found a dict with keys weights")
    kdlab_checkpoint = tmp_path / "checkpoint.pth"
    torch.save({"model": network.state_dict(), "optimizer": {}, "epoch": 3, "rng": {},
                "config": {"model": TEACHER}}, kdlab_checkpoint)
    files["kdlab's checkpoint"] = (kdlab_checkpoint, "is kdlab's own checkpoint.pth: expected "
                                                     "RepDistiller's checkpoint")
    hundred = tmp_path / "hundred.pth"
    write_repdistiller_file(hundred, teacher_model(classes=100))
    files["100 classes"] = (hundred, f"holds a 100-class {TEACHER} (classifier (100, 64)): "
                                     "expected 10 classes, those of Digits")
    other = tmp_path / "wrn.pth"
    write_repdistiller_file(other, teacher_model("WRN16_1"))
    files["another architecture"] = (other, f"does not fit {TEACHER} (10 classes) in kdlab's "
                                            "or RepDistiller's key names")
    files["missing"] = (tmp_path / "absent.pth", "absent.pth does not exist")
    return files


@pytest.mark.parametrize("case", ["not a torch file", "not a dict", "no 'model'",
                                  "kdlab's checkpoint", "100 classes", "another architecture",
                                  "missing"])
def test_a_wrong_file_is_one_line_and_writes_nothing(study_path, tmp_path, capsys, case):
    source, words = wrong_files(tmp_path)[case]
    before = snapshot(tmp_path)
    assert main(import_args(study_path, source)) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("kdlab import-teacher: error: ")
    assert words in err and str(source) in err
    assert snapshot(tmp_path) == before and not (tmp_path / "experiments").exists()


@pytest.mark.parametrize("change, words", [
    ({"model": "resnet14"}, "unknown model 'resnet14': that is RepDistiller's name of kdlab's "
                            "ResNet14; expected kdlab's name (--model ResNet14)"),
    ({"model": "ResNet15"}, "unknown model 'ResNet15': expected one of ResNet8, ResNet14"),
    ({"model": STUDENT}, f"{STUDENT} is not a teacher of study s"),
    ({"dataset": "Cifar10"}, "data set 'Cifar10' is not in study s"),
    ({"seed": "7"}, "seed 7 is not in study s"),
])
def test_a_wrong_model_data_set_or_seed_is_one_line(study_path, tmp_path, capsys, change, words):
    source = tmp_path / "ckpt_epoch_240.pth"
    write_repdistiller_file(source, teacher_model())
    before = snapshot(tmp_path)
    assert main(import_args(study_path, source, **change)) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and words in err
    assert snapshot(tmp_path) == before


def test_an_existing_teacher_run_is_replaced_only_with_force(study_path, tmp_path, capsys):
    first, second = tmp_path / "first.pth", tmp_path / "second.pth"
    write_repdistiller_file(first, teacher_model(seed=3))
    write_repdistiller_file(second, teacher_model(seed=4))
    assert main(import_args(study_path, first)) == 0
    directory = teacher_dir(study_path)
    kept = snapshot(directory)
    capsys.readouterr()
    assert main(import_args(study_path, second)) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert f"teacher run {directory} holds a completed run (best " in err and "--force" in err
    assert snapshot(directory) == kept

    assert main(import_args(study_path, second, "--force")) == 0
    replaced = [path for path in directory.iterdir() if path.name.startswith("replaced-")]
    assert len(replaced) == 1 and f"the run it replaced is in {replaced[0]}" in \
        capsys.readouterr().out
    # the first import's files, moved as they were
    assert snapshot(replaced[0]) == {name: digest for name, digest in kept.items()
                                     if name != "train.lock"}
    status = json.loads((directory / "status.json").read_text())
    assert status["imported"]["sha256"] == hashlib.sha256(second.read_bytes()).hexdigest()
    assert main(["status", str(study_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["outside_grid"] == [] and len(report["imported"]) == 1


def test_a_teacher_run_being_trained_is_not_written(study_path, tmp_path, capsys):
    source = tmp_path / "ckpt_epoch_240.pth"
    write_repdistiller_file(source, teacher_model())
    directory = teacher_dir(study_path)
    with RunLock(directory) as lock:
        lock.acquire()
        assert main(import_args(study_path, source)) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and f"run {directory} is being trained by pid" in err
    assert sorted(path.name for path in directory.iterdir()) == ["train.lock"]
