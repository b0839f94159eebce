"""The benchmark's objective, ``gamma CE + alpha KD + beta L_method`` (RepDistiller's
train_student.py), beside kdlab's ``(1 - alpha) CE + alpha distill``: one step's loss against
the formula written out here, a study on it without an alpha level (its run directories, the
queue's dry run, its errors), and a run that trains and resumes bit-identically."""

import os
import signal
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from kdlab.run import state_files
from kdlab.cli import main
from kdlab.run.config import TrainConfig, validate_config
from kdlab.distill import BatchContext, build_distiller
from kdlab.run.errors import UserError
from kdlab.run.layout import RunSpec, run_dir
from kdlab.models import build_model, describe_features
from kdlab.study.study_file import load_study
from kdlab.training.run import train_run
from kdlab.training.loop import batch_loss
from builders import write_study

BENCHMARK = 'objective = "benchmark"'


def test_one_step_loss_is_gamma_ce_plus_alpha_kd_plus_beta_l():
    torch.manual_seed(0)
    gamma, alpha, beta, run_temperature, method_temperature = 0.1, 0.9, 0.7, 4.0, 2.0
    config = TrainConfig(dataset="Digits", model="ResNet8", distillation="logit",
                         teacher_model="ResNet8", objective="benchmark", ce_weight=gamma,
                         kd_weight=alpha, temperature=run_temperature,
                         method_options={"weight": beta, "temperature": method_temperature})
    validate_config(config)
    shapes = describe_features("ResNet8", 10, 8)
    student, teacher = build_model("ResNet8", 10), build_model("ResNet8", 10)
    distiller = build_distiller("logit", shapes, shapes, config.method_options)
    images, labels = torch.randn(6, 3, 8, 8), torch.arange(6) % 10
    ctx = SimpleNamespace(config=config, device=torch.device("cpu"), amp_dtype=None)
    state = SimpleNamespace(model=student, distiller=distiller)
    teacher.eval()
    with torch.no_grad():
        teacher_features = teacher(images).map(lambda tensor: tensor.float())
    total, terms, _ = batch_loss(ctx, state, teacher_features, images, labels,
                                 batch=BatchContext(labels))

    logits, teacher_logits = student(images).logits, teacher_features.logits

    def kl_times_t2(temperature):  # T² · mean over samples of sum_k p_t (log p_t - log p_s)
        p_teacher = torch.softmax(teacher_logits / temperature, dim=1)
        log_p_student = torch.log_softmax(logits / temperature, dim=1)
        per_sample = (p_teacher * (torch.log(p_teacher) - log_p_student)).sum(dim=1)
        return temperature ** 2 * per_sample.mean()

    picked = torch.log_softmax(logits, dim=1)[torch.arange(6), labels]
    ce = -picked.mean()
    expected = gamma * ce + alpha * kl_times_t2(run_temperature) + beta * kl_times_t2(
        method_temperature)
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=0)
    torch.testing.assert_close(terms["ce"], ce, rtol=1e-5, atol=0)
    torch.testing.assert_close(terms["kd"], kl_times_t2(run_temperature), rtol=1e-5, atol=0)
    torch.testing.assert_close(terms["distill"], beta * kl_times_t2(method_temperature),
                               rtol=1e-5, atol=0)
    # The same gradients as the formula's.
    expected_gradient = torch.autograd.grad(expected, student.linear.weight, retain_graph=True)[0]
    gradient = torch.autograd.grad(total, student.linear.weight)[0]
    torch.testing.assert_close(gradient, expected_gradient, rtol=1e-5, atol=1e-8)

    # kdlab's objective on the same step: (1 - a) CE + a distill, no KD term.
    kdlab = SimpleNamespace(config=TrainConfig(
        dataset="Digits", model="ResNet8", distillation="logit", teacher_model="ResNet8",
        alpha=0.3, method_options=config.method_options), device=ctx.device, amp_dtype=None)
    total, terms, _ = batch_loss(kdlab, state, teacher_features, images, labels)
    torch.testing.assert_close(total, 0.7 * ce + 0.3 * beta * kl_times_t2(method_temperature),
                               rtol=1e-5, atol=0)
    assert "kd" not in terms


def test_objective_settings_are_checked_in_one_line():
    base = dict(dataset="Digits", model="ResNet8", distillation="logit", teacher_model="ResNet8")
    for config, key in [(TrainConfig(**base, alpha=0.5, objective="benchmark"), "--alpha"),
                        (TrainConfig(**base, alpha=0.5, ce_weight=0.1), "--ce-weight"),
                        (TrainConfig(**base, alpha=0.5, kd_weight=0.9), "--kd-weight"),
                        (TrainConfig(**base, objective="benchmark", kd_weight=-1.0),
                         "--kd-weight"),
                        (TrainConfig(**base, objective="paper"), "--objective"),
                        (TrainConfig(**base, objective="kdlab"), "--alpha")]:
        with pytest.raises(UserError) as error:
            validate_config(config)
        assert str(error.value).startswith(key) and "\n" not in str(error.value)
    validate_config(TrainConfig(**base, objective="benchmark", ce_weight=0.1, kd_weight=0.9))
    # A pure run trains on the cross-entropy whatever the objective says.
    validate_config(TrainConfig(dataset="Digits", model="ResNet8", objective="benchmark"))


def benchmark_study(tmp_path, **changes):
    values = dict(teacher="ResNet8", student="ResNet8", methods=("logit", "crd+logit"),
                  alphas=(), training=f"epochs = 1\nbatch_size = 256\n{BENCHMARK}\n"
                                      "ce_weight = 1.0\nkd_weight = 0.0",
                  tables='[method_options."crd+logit"]\n"crd.negatives" = 32\n')
    values.update(changes)
    return write_study(tmp_path / "s.toml", **values)


def test_a_benchmark_study_has_no_alpha_level_and_dry_runs_through_the_queue(tmp_path, capsys):
    study = load_study(benchmark_study(tmp_path))
    kd_runs = study.kd_runs()
    assert [spec.alpha for spec in kd_runs] == [None, None]
    assert [cell.alpha for cell in study.cells() if cell.role == "kd"] == [None, None]
    for spec in kd_runs:
        relative = study.run_dir(spec).relative_to(study.experiments_dir)
        assert relative.parts == ("Digits", spec.method, "ResNet8_to_ResNet8", "0")
        assert "-a" not in spec.name.replace("-alpha", "")
        assert study.cells_of(spec)[0].alpha is None
        config = study.train_config(spec)
        assert (config.objective, config.alpha) == ("benchmark", None)
        validate_config(config)
    # Pure runs train on the labels alone: the objective's fields stay at their defaults.
    assert study.train_config(RunSpec("Digits", "ResNet8", 0)).objective == "kdlab"
    assert main(["queue", str(study.path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "Digits-logit-ResNet8_to_ResNet8-s0" in out
    assert "Digits-crd+logit-ResNet8_to_ResNet8-s0" in out and "alpha" not in out
    assert not study.experiments_dir.exists()


@pytest.mark.parametrize("changes, key", [
    (dict(alphas=(0.5,)), "alphas"),
    (dict(top='layout = "alpha"\n'), "layout"),
    (dict(training="kd_weight = 0.9", alphas=(0.5,)), "training.kd_weight"),  # kdlab's
    (dict(tables="[training.model.ResNet8]\nobjective = \"kdlab\"\n"),
     "training.model.ResNet8.objective"),
])
def test_benchmark_study_errors_are_one_line(tmp_path, changes, key):
    with pytest.raises(UserError) as error:
        load_study(benchmark_study(tmp_path, **changes))
    assert f"key '{key}'" in str(error.value) and "\n" not in str(error.value)


def _config(root, epochs=2) -> TrainConfig:
    return TrainConfig(dataset="Digits", model="ResNet8", seed=0, epochs=epochs, batch_size=64,
                       experiments_dir=str(root / "experiments"), data_root=str(root / "data"),
                       device="cpu", distillation="logit", teacher_model="ResNet8",
                       objective="benchmark", ce_weight=0.1, kd_weight=0.9,
                       method_options={"weight": 0.5})


def _comparable(metrics):
    return {key: value for key, value in metrics.items() if key not in ("epoch_seconds", "config")}


def test_a_benchmark_run_trains_and_resumes_bit_identically(tmp_path, monkeypatch):
    teacher = TrainConfig(dataset="Digits", model="ResNet8", seed=0, epochs=1, batch_size=256,
                          experiments_dir=str(tmp_path / "experiments"),
                          data_root=str(tmp_path / "data"), device="cpu")
    assert train_run(teacher, quiet=True) == state_files.COMPLETED
    reference_root = tmp_path / "reference"
    (reference_root / "experiments").mkdir(parents=True)
    import shutil

    shutil.copytree(tmp_path / "experiments" / "Digits", reference_root / "experiments" / "Digits")
    assert train_run(_config(reference_root), quiet=True) == state_files.COMPLETED
    spec = _config(reference_root).run_spec()
    assert spec.alpha is None
    reference_dir = run_dir(reference_root / "experiments", spec)
    assert reference_dir.relative_to(reference_root / "experiments").parts == (
        "Digits", "logit", "ResNet8_to_ResNet8", "0")
    reference = state_files.read_metrics(reference_dir)
    # Every term logged apart: the loss is 0.1 CE + 0.9 KD + the method's weighted term.
    for epoch in range(2):
        mixed = (0.1 * reference["train_ce"][epoch] + 0.9 * reference["train_kd"][epoch]
                 + reference["train_distill"][epoch])
        assert reference["train_loss"][epoch] == pytest.approx(mixed, rel=1e-6)
        assert reference["train_distill"][epoch] == pytest.approx(
            reference["train_kl"][epoch], rel=1e-6)

    # Stopped (SIGUSR1) inside epoch 2, then resumed: the metrics of the uninterrupted run.
    from kdlab.data.device import DeviceData

    real_batches = DeviceData.train_batches
    calls = {"batches": 0}

    def stopping_batches(self, *args, **kwargs):
        for batch in real_batches(self, *args, **kwargs):
            calls["batches"] += 1
            if calls["batches"] == 23 + 5:   # 23 batches of 64 per epoch: inside epoch 2
                os.kill(os.getpid(), signal.SIGUSR1)
            yield batch

    monkeypatch.setattr(DeviceData, "train_batches", stopping_batches)
    assert train_run(_config(tmp_path), quiet=True) == state_files.IN_PROGRESS
    directory = run_dir(tmp_path / "experiments", spec)
    assert state_files.read_status(directory)["epoch"] == 1
    monkeypatch.setattr(DeviceData, "train_batches", real_batches)
    assert train_run(_config(tmp_path), quiet=True) == state_files.COMPLETED
    assert _comparable(state_files.read_metrics(directory)) == _comparable(reference)
