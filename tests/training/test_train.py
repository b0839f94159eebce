"""The training loop on the embedded Digits data set (ResNet8, CPU): determinism, resume
after kills, signals, guards, and the CLI's errors."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kdlab.run import state_files
from kdlab.cli import main
from kdlab.run.config import TrainConfig
from kdlab.run.errors import EXIT_PREEMPTED, UserError
from kdlab.run.layout import RunSpec, run_dir
from kdlab.training.guards import check_epoch as _guard
from kdlab.training.run import train_run
from builders import snapshot

EPOCHS = 3


def config(tmp_path, epochs=EPOCHS, **changes) -> TrainConfig:
    base = dict(dataset="Digits", model="ResNet8", seed=1, epochs=epochs, batch_size=128,
                experiments_dir=str(tmp_path / "experiments"), data_root=str(tmp_path / "data"),
                device="cpu")
    base.update(changes)
    return TrainConfig(**base)


def train_args(tmp_path, epochs=EPOCHS, *extra):
    return ["train", "--dataset", "Digits", "--model", "ResNet8", "--seed", "1", "--epochs",
            str(epochs), "--experiments-dir", str(tmp_path / "experiments"), "--data-root",
            str(tmp_path / "data"), "--device", "cpu", *extra]


def the_run_dir(tmp_path) -> Path:
    return run_dir(tmp_path / "experiments", RunSpec("Digits", "ResNet8", 1))


def comparable(metrics: dict) -> dict:
    """Everything but wall-clock figures and paths."""
    return {key: value for key, value in metrics.items() if key not in ("epoch_seconds", "config")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: metrics and best weights."""
    root = tmp_path_factory.mktemp("reference")
    assert train_run(config(root), quiet=True) == state_files.COMPLETED
    directory = the_run_dir(root)
    return {"metrics": state_files.read_metrics(directory),
            "best": torch.load(directory / "best.pth")["weights"],
            "status": state_files.read_status(directory)}


def test_run_writes_state_files(reference):
    metrics, status = reference["metrics"], reference["status"]
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "epoch_seconds", "train_ce"):
        assert len(metrics[key]) == EPOCHS
    assert status["status"] == "completed" and status["epoch"] == EPOCHS
    assert status["max_acc"] == max(metrics["test_acc"])
    assert status["config"]["label_smoothing"] is None and metrics["config"]["model"] == "ResNet8"
    assert metrics["test_acc"][-1] > 30  # three epochs learn digits far above chance (10%)


def test_same_seed_is_bit_identical(tmp_path, reference):
    train_run(config(tmp_path), quiet=True)
    assert comparable(state_files.read_metrics(the_run_dir(tmp_path))) == comparable(
        reference["metrics"])


def test_completed_run_is_not_retrained(tmp_path, capsys):
    train_run(config(tmp_path, epochs=1), quiet=True)
    before = (the_run_dir(tmp_path) / "checkpoint.pth").stat().st_mtime_ns
    assert main(train_args(tmp_path, 1)) == 0
    assert "already completed" in capsys.readouterr().out
    assert (the_run_dir(tmp_path) / "checkpoint.pth").stat().st_mtime_ns == before


def _spawn(tmp_path, *extra, env_extra=None):
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env_extra or {}))
    return subprocess.Popen([sys.executable, "-m", "kdlab", *train_args(tmp_path, EPOCHS, *extra)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _wait_for_epoch(tmp_path, epoch, process, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            status = state_files.read_status(the_run_dir(tmp_path))
        except state_files.StateFileError:
            status = None
        if status and status.get("epoch", 0) >= epoch:
            return
        assert process.poll() is None, process.stdout.read()
        time.sleep(0.05)
    raise AssertionError("the run made no progress")


def test_resume_after_sigkill_mid_epoch_equals_uninterrupted(tmp_path, reference):
    process = _spawn(tmp_path, "--quiet")
    _wait_for_epoch(tmp_path, 1, process)
    time.sleep(0.3)  # somewhere inside epoch 2
    process.kill()
    process.wait()
    status = state_files.read_status(the_run_dir(tmp_path))
    assert status["status"] == "in_progress"
    assert main(train_args(tmp_path, EPOCHS, "--quiet")) == 0
    directory = the_run_dir(tmp_path)
    assert comparable(state_files.read_metrics(directory)) == comparable(reference["metrics"])
    best = torch.load(directory / "best.pth")["weights"]
    assert all(torch.equal(best[key], value) for key, value in reference["best"].items())


_DIE_IN_CHECKPOINT_WRITE = """
import os, sys
from kdlab.run import state_files
real_fsync = os.fsync
calls = {"n": 0}
def dying_fsync(fd):
    name = os.readlink(f"/proc/self/fd/{fd}")
    if os.path.basename(name).startswith(".checkpoint.pth."):
        calls["n"] += 1
        if calls["n"] == 2:   # the second epoch's checkpoint: bytes written, not yet renamed
            os._exit(9)
    real_fsync(fd)
state_files.os.fsync = dying_fsync
from kdlab.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_resume_after_kill_inside_checkpoint_write(tmp_path, reference):
    result = subprocess.run([sys.executable, "-c", _DIE_IN_CHECKPOINT_WRITE,
                             *train_args(tmp_path, EPOCHS, "--quiet")], capture_output=True)
    assert result.returncode == 9
    directory = the_run_dir(tmp_path)
    leftovers = [p.name for p in directory.iterdir() if p.name.startswith(".checkpoint.pth.")]
    assert leftovers, "the kill should leave a half-written temporary file behind"
    checkpoint = torch.load(directory / "checkpoint.pth", weights_only=False)
    assert checkpoint["epoch"] == 1  # the previous, complete checkpoint is intact
    assert main(train_args(tmp_path, EPOCHS, "--quiet")) == 0
    assert comparable(state_files.read_metrics(directory)) == comparable(reference["metrics"])


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_stop_signal_saves_and_exits_distinctly(tmp_path, reference, signum):
    process = _spawn(tmp_path)
    _wait_for_epoch(tmp_path, 1, process)
    process.send_signal(signum)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == EXIT_PREEMPTED, output
    status = state_files.read_status(the_run_dir(tmp_path))
    assert status["status"] == "in_progress"
    assert status["stopped_by"] == signal.Signals(signum).name
    assert "resumes from there" in output
    assert main(train_args(tmp_path, EPOCHS, "--quiet")) == 0
    assert comparable(state_files.read_metrics(the_run_dir(tmp_path))) == comparable(
        reference["metrics"])


def test_scheduler_fields_survive_training(tmp_path):
    directory = the_run_dir(tmp_path)
    state_files.write_status(directory, {"status": "queued", "job_id": "4242", "scheduler": "slurm"})
    train_run(config(tmp_path, epochs=1), quiet=True)
    status = state_files.read_status(directory)
    assert status["status"] == "completed" and status["job_id"] == "4242"
    assert status["scheduler"] == "slurm"


def test_non_finite_loss_fails_the_run_with_a_reason(tmp_path, monkeypatch):
    import kdlab.models as models

    real_forward = models.CifarResNet.forward

    def exploding_forward(self, x):
        outputs = real_forward(self, x)
        if self.training:
            outputs.logits = outputs.logits * float("nan")
        return outputs

    monkeypatch.setattr(models.CifarResNet, "forward", exploding_forward)
    assert train_run(config(tmp_path), quiet=True) == state_files.FAILED
    status = state_files.read_status(the_run_dir(tmp_path))
    assert status["status"] == "failed" and status["failed_epoch"] == 1
    assert "non-finite loss in 12 of 12 steps of epoch 1" in status["reason"]
    assert len(state_files.read_metrics(the_run_dir(tmp_path))["train_loss"]) == 1


def test_guard_stops_an_epoch_whose_steps_were_skipped():
    stats = {"nonfinite": 0, "steps": 12, "skipped": 11, "terms": {"ce": 2.3}}
    assert "skipped 11 of 12 steps in epoch 4" in _guard(stats, 3)
    assert _guard({**stats, "skipped": 2}, 3) is None


def test_failed_run_exit_code(tmp_path, monkeypatch):
    import kdlab.training.epochs as epochs_module

    monkeypatch.setattr(epochs_module, "check_epoch", lambda stats, epoch: "forced failure")
    assert main(train_args(tmp_path, 1, "--quiet")) == 1
    assert state_files.read_status(the_run_dir(tmp_path))["reason"] == "forced failure"


def _error_line(capsys, args) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


def test_cli_errors_are_one_line(tmp_path, capsys):
    bad_dataset = train_args(tmp_path, 1)
    bad_dataset[bad_dataset.index("Digits")] = "MNIST"
    assert "Cifar10" in _error_line(capsys, bad_dataset)
    bad_model = train_args(tmp_path, 1)
    bad_model[bad_model.index("ResNet8")] = "AlexNet"
    assert "ResNet56" in _error_line(capsys, bad_model)
    assert "--alpha" in _error_line(capsys, train_args(tmp_path, 1, "--alpha", "0.5"))
    assert "positive" in _error_line(capsys, train_args(tmp_path, 0))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    unwritable = train_args(tmp_path, 1)
    unwritable[unwritable.index("--experiments-dir") + 1] = str(blocker / "experiments")
    assert "cannot write the run directory" in _error_line(capsys, unwritable)


def test_missing_dataset_files_is_one_line(tmp_path, capsys):
    args = train_args(tmp_path, 1)
    args[args.index("Digits")] = "Cifar10"
    line = _error_line(capsys, args)
    assert "cifar-10-batches-py" in line and str(tmp_path / "data") in line


def test_corrupt_checkpoint_is_kept_until_force_restart(tmp_path, capsys):
    directory = the_run_dir(tmp_path)
    directory.mkdir(parents=True)
    (directory / "checkpoint.pth").write_bytes(b"\x00garbage")
    line = _error_line(capsys, train_args(tmp_path, 1))
    assert "corrupt" in line and "--force-restart" in line
    assert (directory / "checkpoint.pth").read_bytes() == b"\x00garbage"
    assert main(train_args(tmp_path, 1, "--quiet", "--force-restart")) == 0
    assert state_files.read_status(directory)["status"] == "completed"


def test_resume_with_other_settings_is_refused(tmp_path, capsys):
    train_run(config(tmp_path, epochs=2), quiet=True)
    directory = the_run_dir(tmp_path)
    status = state_files.read_status(directory)
    status["status"] = "in_progress"
    state_files.write_status(directory, status)
    line = _error_line(capsys, train_args(tmp_path, 1, "--lr", "0.05"))
    assert "other settings" in line and "lr" in line


def test_per_epoch_progress_line(tmp_path, capsys):
    assert main(train_args(tmp_path, 1)) == 0
    out = capsys.readouterr().out
    assert "epoch 1/1" in out and "img/s" in out and "test_acc" in out
    assert json.loads((the_run_dir(tmp_path) / "metrics.json").read_text())["epochs"] == 1


def test_a_crash_marks_the_run_failed_with_its_reason(tmp_path, monkeypatch, capsys):
    import kdlab.training.epochs as epochs_module

    def crash(*args, **kwargs):
        raise FloatingPointError("non-finite reconstruction loss in epoch 1")

    monkeypatch.setattr(epochs_module, "evaluate", crash)
    assert main(train_args(tmp_path, 1, "--quiet")) == 1
    status = state_files.read_status(the_run_dir(tmp_path))
    assert status["status"] == "failed"
    assert status["reason"] == ("crashed: FloatingPointError: non-finite reconstruction loss "
                                "in epoch 1")
    assert "Traceback" in capsys.readouterr().err


# ---------------------------------------------------------------- hardening (issue 11)

class _Payload:
    """Unpickling it creates ``marker``: what a crafted file would do with os.system."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _teacher_run_dir(tmp_path) -> Path:
    return run_dir(tmp_path / "experiments", RunSpec("Digits", "ResNet8", 1))


def _kd_args(tmp_path, method="logit"):
    options = ["--option", "paraphraser_epochs=1"] if method == "factor_transfer" else []
    return train_args(tmp_path, 1, "--quiet", "--distillation", method, "--teacher-model",
                      "ResNet8", "--alpha", "0.5", *options)


def _fake_teacher(tmp_path, best=None) -> None:
    from kdlab.models import build_model

    directory = _teacher_run_dir(tmp_path)
    state_files.write_status(directory, {"status": "completed", "epoch": 1})
    state_files.atomic_torch_save(best if best is not None else
                               {"weights": build_model("ResNet8", 10).state_dict()},
                               directory / state_files.BEST_FILE)


@pytest.mark.parametrize("target", ["checkpoint", "best", "paraphraser",
                                    "paraphraser_checkpoint"])
def test_a_pickle_payload_is_refused_and_runs_nothing(tmp_path, capsys, target):
    marker = tmp_path / "payload-ran"
    payload = {"weights": _Payload(marker), "model": _Payload(marker)}
    probe = tmp_path / "probe.pth"
    state_files.atomic_torch_save(payload, probe)
    torch.load(probe, weights_only=False)  # the payload is live: an unsafe load runs it
    assert marker.exists()
    marker.unlink()

    kd_spec = RunSpec("Digits", "ResNet8", 1, method="factor_transfer", teacher="ResNet8",
                      alpha=0.5)
    kd_dir = run_dir(tmp_path / "experiments", kd_spec)
    if target == "checkpoint":
        args, path = train_args(tmp_path, 1), the_run_dir(tmp_path) / "checkpoint.pth"
    else:
        _fake_teacher(tmp_path, best=payload if target == "best" else None)
        args = _kd_args(tmp_path, "factor_transfer")
        path = (_teacher_run_dir(tmp_path) / "best.pth" if target == "best"
                else kd_dir / f"{target}.pth")
    if target != "best":
        state_files.atomic_torch_save(payload, path)
    line = _error_line(capsys, args)
    assert str(path) in line, line
    assert not marker.exists()


def test_a_second_train_of_one_run_is_refused_until_the_holder_dies(tmp_path, capsys,
                                                                      reference):
    holder = _spawn(tmp_path, "--quiet")
    _wait_for_epoch(tmp_path, 1, holder)
    line = _error_line(capsys, train_args(tmp_path, EPOCHS, "--quiet"))
    assert f"pid {holder.pid} on host {os.uname().nodename}" in line, line
    assert state_files.read_status(the_run_dir(tmp_path))["pid"] == holder.pid
    holder.kill()  # SIGKILL: the kernel releases the lock
    holder.wait()
    assert main(train_args(tmp_path, EPOCHS, "--quiet")) == 0
    assert comparable(state_files.read_metrics(the_run_dir(tmp_path))) == comparable(
        reference["metrics"])


@pytest.mark.parametrize("as_raised_by", ["os", "atomic_writer"])
def test_a_full_disk_keeps_the_run_resumable(tmp_path, monkeypatch, capsys, reference,
                                             as_raised_by):
    import errno

    real_write = state_files.atomic_write_bytes
    calls = {"checkpoint": 0}

    def full_disk_on_second_checkpoint(path, data):
        if Path(path).name == "checkpoint.pth":
            calls["checkpoint"] += 1
            if calls["checkpoint"] == 2:
                error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
                # The atomic writer turns it into its one-line WriteError (a UserError too).
                raise state_files._write_error(Path(path), error) if as_raised_by == "atomic_writer" \
                    else error
        real_write(path, data)

    monkeypatch.setattr(state_files, "atomic_write_bytes", full_disk_on_second_checkpoint)
    assert main(train_args(tmp_path, EPOCHS, "--quiet")) == EXIT_PREEMPTED
    assert "No space left on device" in capsys.readouterr().err
    directory = the_run_dir(tmp_path)
    status = state_files.read_status(directory)
    assert status["status"] == "in_progress" and status["environment_failures"] == 1
    assert "environment failure" in status["reason"] and "No space left" in status["reason"]
    assert torch.load(directory / "checkpoint.pth", weights_only=True)["epoch"] == 1
    monkeypatch.undo()
    assert main(train_args(tmp_path, EPOCHS, "--quiet")) == 0
    status = state_files.read_status(directory)
    assert status["status"] == "completed" and "environment_failures" not in status
    assert comparable(state_files.read_metrics(directory)) == comparable(reference["metrics"])


def test_a_refused_train_leaves_no_run_directory(tmp_path, capsys):
    _error_line(capsys, _kd_args(tmp_path))  # no teacher yet
    _error_line(capsys, train_args(tmp_path, 1, "--data-root", str(tmp_path / "none"),
                                   "--dataset", "Cifar10"))
    assert not (tmp_path / "experiments").exists()


def test_a_new_hand_typed_run_leaves_its_config_json(tmp_path):
    from kdlab.run.config import config_json, read_config_file

    assert main(train_args(tmp_path, 1, "--quiet")) == 0
    path = the_run_dir(tmp_path) / "config.json"
    written = read_config_file(path)
    assert written.run_spec() == RunSpec("Digits", "ResNet8", 1) and written.epochs == 1
    assert path.read_text() == config_json(written)


def test_a_teacher_of_another_architecture_is_named_in_a_short_line(tmp_path, capsys):
    from kdlab.models import build_model

    _fake_teacher(tmp_path, best={"weights": build_model("ResNet56", 100).state_dict()})
    line = _error_line(capsys, _kd_args(tmp_path))
    assert len(line) < 400, line
    assert "keys unexpected: layer1.1.conv1.weight" in line and "more)" in line
    assert "2 keys with another shape: linear.weight (100, 64) instead of (10, 64)" in line


# ---------------------------------------------------------------- precision (issue 14)

class _TinyNet(torch.nn.Module):
    """Stands in for the ResNet where fp16 runs on the CPU: PyTorch's CPU fp16 convolution
    backward takes about a minute per ResNet8 step, its fp16 matmuls milliseconds. Same
    interface: ``[layer1, layer2, layer3, logits]``."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.hidden = torch.nn.Linear(3 * 4 * 4, 32)
        self.linear = torch.nn.Linear(32, num_classes)

    def forward(self, x):
        pooled = torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)
        hidden = _overflow.apply(torch.relu(self.hidden(pooled)), self.training)
        from kdlab.models import Features

        return Features([x, x, x], [x, x, x], hidden, self.linear(hidden))  # every model's contract


class _overflow(torch.autograd.Function):
    """Identity; its backward blows the gradient past fp16's range on the steps listed in
    ``OVERFLOW_STEPS`` (a forced overflow: the same gradient is finite in fp32)."""

    steps = {"count": 0, "overflow": set()}

    @staticmethod
    def forward(ctx, hidden, training):
        ctx.overflow = False
        if training:
            _overflow.steps["count"] += 1
            ctx.overflow = _overflow.steps["count"] in _overflow.steps["overflow"]
        return hidden.clone()

    @staticmethod
    def backward(ctx, grad):
        return (grad * 1e6 if ctx.overflow else grad), None


@pytest.fixture
def tiny_fp16(monkeypatch):
    import kdlab.models as models

    monkeypatch.setattr(models, "build_model", lambda name, num_classes: _TinyNet(num_classes))
    _overflow.steps.update(count=0, overflow=set())
    return _overflow.steps


def _fp16_checkpoint(tmp_path) -> dict:
    return torch.load(the_run_dir(tmp_path) / "checkpoint.pth", weights_only=True)


def test_fp16_on_cpu_steps_through_the_grad_scaler_and_resumes_its_state(tmp_path, tiny_fp16,
                                                                          monkeypatch):
    tiny_fp16["overflow"] = {2, 3, 5}  # three steps of epoch 1 (12 steps an epoch) overflow
    reference_root = tmp_path / "reference"
    assert train_run(config(reference_root, epochs=2, precision="fp16"), quiet=True) == "completed"
    reference = state_files.read_metrics(the_run_dir(reference_root))
    assert reference["skipped_steps"] == [3, 0]
    scaler_state = _fp16_checkpoint(reference_root)["scaler"]
    assert scaler_state["scale"] == 65536.0 / 2 ** 3  # halved once per skipped step

    tiny_fp16.update(count=0)
    real_forward = _TinyNet.forward

    def stop_in_epoch_2(self, x):
        if self.training and tiny_fp16["count"] == 12 + 4:
            os.kill(os.getpid(), signal.SIGUSR1)
        return real_forward(self, x)

    monkeypatch.setattr(_TinyNet, "forward", stop_in_epoch_2)
    assert train_run(config(tmp_path, epochs=2, precision="fp16"), quiet=True) == "in_progress"
    after_epoch_1 = _fp16_checkpoint(tmp_path)["scaler"]
    assert after_epoch_1["scale"] == scaler_state["scale"]
    assert after_epoch_1["_growth_tracker"] == 12 - 5  # good steps since the last skip
    monkeypatch.setattr(_TinyNet, "forward", real_forward)
    assert train_run(config(tmp_path, epochs=2, precision="fp16"), quiet=True) == "completed"
    assert comparable(state_files.read_metrics(the_run_dir(tmp_path))) == comparable(reference)
    # Restored, not restarted: a fresh scaler would have written its initial scale.
    assert _fp16_checkpoint(tmp_path)["scaler"] == scaler_state


def test_an_fp16_overflow_in_every_step_fails_the_run_with_the_reason(tmp_path, tiny_fp16):
    tiny_fp16["overflow"] = set(range(1, 100))
    assert train_run(config(tmp_path, epochs=2, precision="fp16"), quiet=True) == "failed"
    status = state_files.read_status(the_run_dir(tmp_path))
    assert status["failed_epoch"] == 1
    assert status["reason"] == ("the optimizer skipped 12 of 12 steps in epoch 1 (grad scaler "
                                "found inf/NaN gradients): the model is not training")
    tiny_fp16.update(count=0)  # the same gradients are finite in fp32: the run trains
    assert train_run(config(tmp_path / "fp32", epochs=1, precision="fp32"),
                     quiet=True) == "completed"


def test_precision_choices(tmp_path, capsys):
    with pytest.raises(UserError, match="expected one of auto, fp32, bf16, fp16"):
        train_run(config(tmp_path, precision="fp8"), quiet=True)
    assert not (tmp_path / "experiments").exists()
    # bf16 on the CPU (autocast, no scaler) and the NHWC layout both train a real ResNet.
    assert main(train_args(tmp_path, 1, "--quiet", "--precision", "bf16",
                           "--channels-last")) == 0
    checkpoint = torch.load(the_run_dir(tmp_path) / "checkpoint.pth", weights_only=True)
    assert checkpoint["scaler"] is None
    assert checkpoint["config"]["precision"] == "bf16" and checkpoint["config"]["channels_last"]
    metrics = state_files.read_metrics(the_run_dir(tmp_path))
    assert metrics["skipped_steps"] == [0]
    assert all(math.isfinite(value) for value in metrics["train_loss"] + metrics["test_loss"])


RUN_STATE_FILES = ("config.json", "status.json", "metrics.json", "checkpoint.pth", "best.pth")


def _state_bytes(directory: Path) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in RUN_STATE_FILES}


def _edit_config(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data, indent=2))


def test_a_copied_run_never_trains_over_its_original(tmp_path, capsys):
    """Issue 20.1: a finished run copied to mycopy/run, its lr changed and trained with
    --force-restart: the copy's config.json still names the original's directory."""
    import shutil


    assert main(train_args(tmp_path, 1, "--quiet")) == 0
    original = the_run_dir(tmp_path)
    before = _state_bytes(original)
    copy = tmp_path / "mycopy" / "run"
    shutil.copytree(original, copy)
    _edit_config(copy / "config.json", lr=0.05)
    copied = snapshot(copy)
    line = _error_line(capsys, ["train", "--config", str(copy / "config.json"),
                                "--force-restart"])
    assert str(copy) in line and str(original) in line and "config.json" in line
    assert _state_bytes(original) == before
    assert snapshot(copy) == copied
    assert sorted(path.name for path in (tmp_path / "mycopy").iterdir()) == ["run"]


def test_a_copied_experiments_tree_trains_where_it_lies(tmp_path):
    """A whole tree copied elsewhere: the run's place in the copy is coherent with the
    layout, so the copy trains there and the original stays as it was."""
    import shutil

    assert main(train_args(tmp_path, 1, "--quiet")) == 0
    original = the_run_dir(tmp_path)
    before = _state_bytes(original)
    shutil.copytree(tmp_path / "experiments", tmp_path / "elsewhere" / "experiments")
    copy = run_dir(tmp_path / "elsewhere" / "experiments", RunSpec("Digits", "ResNet8", 1))
    _edit_config(copy / "config.json", lr=0.05)
    assert main(["train", "--config", str(copy / "config.json"), "--force-restart",
                 "--quiet"]) == 0
    assert _state_bytes(original) == before
    written = json.loads((copy / "config.json").read_text())
    assert written["lr"] == 0.05
    assert written["experiments_dir"] == str(tmp_path / "elsewhere" / "experiments")
    status = state_files.read_status(copy)
    assert status["status"] == "completed" and status["config"]["lr"] == 0.05
    assert (state_files.read_metrics(copy)["train_loss"]
            != state_files.read_metrics(original)["train_loss"])


def test_a_refused_resume_leaves_config_json_as_it_was(tmp_path, capsys):
    """Issue 20.2: resuming a run in progress by flags with another batch size is refused,
    and nothing (config.json above all) is written: its own job resumes it afterwards."""
    train_run(config(tmp_path, epochs=2), quiet=True)
    directory = the_run_dir(tmp_path)
    status = state_files.read_status(directory)
    status["status"] = "in_progress"
    state_files.write_status(directory, status)
    before = _state_bytes(directory)
    line = _error_line(capsys, train_args(tmp_path, 2, "--batch-size", "64"))
    assert "other settings" in line and "batch_size" in line
    assert _state_bytes(directory) == before
    assert json.loads(before["config.json"])["batch_size"] == 128
    assert main(["train", "--config", str(directory / "config.json"), "--quiet"]) == 0
    assert state_files.read_status(directory)["status"] == "completed"


# ---- snapshots (issue 25): the weights after chosen epochs, equal however the run got there --

SNAPSHOTS = [1, 2, 3]


def _snapshots(directory: Path) -> dict[int, dict]:
    from kdlab.run.layout import snapshot_epochs_present, snapshot_path

    return {epoch: torch.load(snapshot_path(directory, epoch), weights_only=True)
            for epoch in snapshot_epochs_present(directory)}


def _same_snapshots(found: dict[int, dict], expected: dict[int, dict]) -> bool:
    return sorted(found) == sorted(expected) and all(
        found[epoch]["epoch"] == epoch and set(found[epoch]["weights"]) ==
        set(expected[epoch]["weights"]) and all(
            torch.equal(found[epoch]["weights"][key], value)
            for key, value in expected[epoch]["weights"].items())
        for epoch in expected)


@pytest.fixture(scope="module")
def snapshot_reference(tmp_path_factory):
    """A run with snapshots after every epoch, trained straight through."""
    root = tmp_path_factory.mktemp("snapshot_reference")
    assert train_run(config(root, snapshot_epochs=SNAPSHOTS), quiet=True) == state_files.COMPLETED
    directory = the_run_dir(root)
    return {"snapshots": _snapshots(directory), "metrics": state_files.read_metrics(directory),
            "last": torch.load(directory / "checkpoint.pth", weights_only=True)["model"]}


def test_snapshots_hold_the_weights_after_their_epochs(snapshot_reference, reference):
    snapshots = snapshot_reference["snapshots"]
    assert sorted(snapshots) == SNAPSHOTS
    assert all(set(payload) == {"weights", "epoch"} for payload in snapshots.values())
    last = snapshot_reference["last"]   # the weights after the last epoch, from the checkpoint
    assert all(torch.equal(snapshots[3]["weights"][key], value) for key, value in last.items())
    assert not all(torch.equal(snapshots[1]["weights"][key], value)
                   for key, value in last.items())
    # keeping snapshots changes nothing of the training
    assert comparable(snapshot_reference["metrics"]) == comparable(reference["metrics"])


def test_snapshots_after_a_sigkill_and_resume_equal_the_straight_run(tmp_path,
                                                                      snapshot_reference):
    flags = ("--snapshot-epochs", "1,2,3", "--quiet")
    process = _spawn(tmp_path, *flags)
    _wait_for_epoch(tmp_path, 1, process)
    time.sleep(0.3)  # somewhere inside epoch 2
    process.kill()
    process.wait()
    assert state_files.read_status(the_run_dir(tmp_path))["status"] == "in_progress"
    assert main(train_args(tmp_path, EPOCHS, *flags)) == 0
    assert _same_snapshots(_snapshots(the_run_dir(tmp_path)), snapshot_reference["snapshots"])


def test_a_snapshot_written_before_a_kill_in_the_checkpoint_write_is_rewritten_equal(
        tmp_path, snapshot_reference):
    """The snapshot of epoch 2 is on disk, its checkpoint not: the resume repeats epoch 2
    and writes the same snapshot again."""
    flags = ("--snapshot-epochs", "1,2,3", "--quiet")
    result = subprocess.run([sys.executable, "-c", _DIE_IN_CHECKPOINT_WRITE,
                             *train_args(tmp_path, EPOCHS, *flags)], capture_output=True)
    assert result.returncode == 9
    directory = the_run_dir(tmp_path)
    assert torch.load(directory / "checkpoint.pth", weights_only=True)["epoch"] == 1
    assert sorted(_snapshots(directory)) == [1, 2]
    assert main(train_args(tmp_path, EPOCHS, *flags)) == 0
    assert _same_snapshots(_snapshots(directory), snapshot_reference["snapshots"])


def test_a_run_past_an_epoch_when_snapshots_are_added_does_not_invent_one(
        tmp_path, snapshot_reference, monkeypatch):
    import kdlab.training.epochs as epochs_module

    real_train_epoch = epochs_module.train_epoch

    def stop_before_epoch_2(students, teacher, data, epoch, flag, **kwargs):
        if epoch == 1:
            raise epochs_module.Preempted("stopped")
        return real_train_epoch(students, teacher, data, epoch, flag, **kwargs)

    monkeypatch.setattr(epochs_module, "train_epoch", stop_before_epoch_2)
    assert train_run(config(tmp_path), quiet=True) == state_files.IN_PROGRESS
    monkeypatch.undo()
    # the setting is not part of what a resume must match: the run goes on from epoch 1
    assert train_run(config(tmp_path, snapshot_epochs=[1, 3]), quiet=True) == \
        state_files.COMPLETED
    expected = {3: snapshot_reference["snapshots"][3]}
    assert _same_snapshots(_snapshots(the_run_dir(tmp_path)), expected)
    assert json.loads((the_run_dir(tmp_path) / "config.json").read_text())[
        "snapshot_epochs"] == [1, 3]


def test_force_restart_removes_the_old_snapshots(tmp_path, capsys):
    assert train_run(config(tmp_path, epochs=1, snapshot_epochs=[1]), quiet=True) == \
        state_files.COMPLETED
    assert sorted(_snapshots(the_run_dir(tmp_path))) == [1]
    assert main(train_args(tmp_path, 1, "--force-restart", "--quiet")) == 0
    assert _snapshots(the_run_dir(tmp_path)) == {}
