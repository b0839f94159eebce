"""The distiller contract, checked for every registered method (a new method module is
covered once it is listed in the registry): option errors are one line, fuzzed options
build or fail in one line, forward/backward on a ResNet pair's Features gives finite
float32 terms and gradients, and a 2-epoch Digits run stopped after epoch 1 and resumed in
a pack ends bit-identical to the same run trained alone without a stop."""

import random

import pytest
import torch

from kdlab.run import catalog, state_files
from kdlab.run.config import TrainConfig
from kdlab.distill import METHOD_NAMES, BatchContext, build_distiller
from kdlab.run.errors import UserError
from kdlab.run.layout import run_dir
from kdlab.models import build_model, describe_features
from kdlab.training.run import train_pack
from kdlab.training.run import train_run
from builders import fast_method_options

STUDENT, TEACHER, IMAGE, BATCH = "ResNet8", "ResNet20", 8, 6
STUDENT_SHAPES = describe_features(STUDENT, 10, IMAGE)
TEACHER_SHAPES = describe_features(TEACHER, 10, IMAGE)
TRAIN_LABELS = torch.arange(60) % 10
# The teacher a method is given before training, as the loop gives it (OFD reads its margins
# from the batch norms; its weights are those of a fresh model: ones and zeros).
TEACHER_MODEL = build_model(TEACHER, 10).eval()


def built(method, options):
    distiller = build_distiller(method, STUDENT_SHAPES, TEACHER_SHAPES, options,
                                student_model=STUDENT, teacher_model=TEACHER)
    distiller.attach_training_set(TRAIN_LABELS)
    distiller.attach_teacher(TEACHER_MODEL)
    if hasattr(distiller, "paraphraser_ready"):
        distiller.paraphraser_ready = True  # stage 1 is tested in test_distill_losses
    return distiller


def pair_features(seed: int):
    """Features of a real ResNet pair on a tiny batch: the student's with gradients, the
    teacher's detached float32 (as the loop hands them over); and the batch's context."""
    torch.manual_seed(seed)
    student, teacher = build_model(STUDENT, 10).train(), build_model(TEACHER, 10).eval()
    images = torch.randn(BATCH, 3, IMAGE, IMAGE)
    with torch.no_grad():
        teacher_features = teacher(images).map(lambda t: t.float().clone())
    indices = torch.tensor([0, 7, 13, 21, 38, 59])
    return student, student(images), teacher_features, BatchContext(
        TRAIN_LABELS[indices], indices, epoch=0, step=0, steps_per_epoch=10)


def bad_value(option: catalog.Option):
    if option.kind is bool:
        return "maybe"
    if option.kind in (int, float):
        return "lots"
    if option.stage or option.layers:
        return "layer99"
    return "no-such-choice" if option.choices else 12


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_every_bad_option_is_one_line(method):
    for key, option in catalog.method_facts(method).options.items():
        with pytest.raises(UserError) as error:
            built(method, {key: bad_value(option)})
        message = str(error.value)
        assert "\n" not in message and key in message and method in message, message
    with pytest.raises(UserError) as error:
        built(method, {"no_such_option": 1})
    assert "\n" not in str(error.value) and "no_such_option" in str(error.value)


FUZZ_VALUES = [0, 1, 2, 3, -1, 0.5, 1e-3, 7, "0", "-1", "last", "layer2", "all", "x", "true",
               "false", "", "layer1,layer1", True]


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_fuzzed_options_build_and_train_or_fail_in_one_line(method):
    draw = random.Random(f"fuzz-{method}")
    keys = list(catalog.method_facts(method).options)
    student, student_features, teacher_features, batch = pair_features(1)
    for _ in range(25):
        options = {key: draw.choice(FUZZ_VALUES)
                   for key in draw.sample(keys, draw.randint(1, len(keys)))}
        try:
            distiller = built(method, options)
        except UserError as error:
            assert "\n" not in str(error), (options, str(error))
            continue
        terms = distiller(student_features, teacher_features, batch)
        assert terms and all(term.dtype == torch.float32 and term.dim() == 0
                             and torch.isfinite(term) for term in terms.values()), options


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_forward_backward_on_a_resnet_pair(method):
    student, student_features, teacher_features, batch = pair_features(2)
    distiller = built(method, fast_method_options(method))
    terms = distiller(student_features, teacher_features, batch)
    assert terms and all(term.dtype == torch.float32 and term.dim() == 0
                         for term in terms.values())
    total = sum(terms.values())
    assert torch.isfinite(total) and float(total.detach()) != 0
    total.backward()
    gradients = [p.grad for p in [*student.parameters(), *distiller.parameters()]
                 if p.grad is not None]
    assert gradients and all(torch.isfinite(g).all() for g in gradients)
    assert any(g.abs().sum() > 0 for g in gradients)


SEED, EPOCHS = 1, 2


def run_config(root, method) -> TrainConfig:
    base = dict(dataset="Digits", model=STUDENT, seed=SEED, epochs=EPOCHS, batch_size=256,
                device="cpu", experiments_dir=str(root / "experiments"),
                data_root=str(root / "data"))
    if method == "none":
        return TrainConfig(**base)
    return TrainConfig(distillation=method, teacher_model=TEACHER, alpha=0.5,
                       method_options=fast_method_options(method), **base)


def outcome(config: TrainConfig) -> dict:
    directory = run_dir(config.experiments_dir, config.run_spec())
    metrics = state_files.read_metrics(directory)
    checkpoint = torch.load(directory / "checkpoint.pth", weights_only=True)
    return {"metrics": {key: value for key, value in metrics.items()
                        if key not in ("epoch_seconds", "config")},
            "model": checkpoint["model"], "distiller": checkpoint["distiller"]}


def same_tensors(left, right) -> bool:
    if isinstance(left, dict):
        return left.keys() == right.keys() and all(same_tensors(left[k], right[k]) for k in left)
    return torch.equal(left, right) if isinstance(left, torch.Tensor) else left == right


@pytest.fixture(scope="module")
def teacher_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("contract_teacher")
    teacher = TrainConfig(dataset="Digits", model=TEACHER, seed=SEED, epochs=1, batch_size=256,
                          device="cpu", experiments_dir=str(root / "experiments"),
                          data_root=str(root / "data"))
    assert train_run(teacher, quiet=True) == "completed"
    return root


def copy_teacher(teacher_root, root):
    import shutil

    shutil.copytree(teacher_root / "experiments", root / "experiments")


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_stopped_packed_and_resumed_equals_solo(method, teacher_root, tmp_path, monkeypatch):
    import kdlab.training.epochs as epochs_module

    copy_teacher(teacher_root, tmp_path / "solo")
    solo = run_config(tmp_path / "solo", method)
    assert train_run(solo, quiet=True) == "completed"

    copy_teacher(teacher_root, tmp_path / "pack")
    pack = [run_config(tmp_path / "pack", "none"), run_config(tmp_path / "pack", method)]
    real_train_epoch = epochs_module.train_epoch

    def stop_before_epoch_2(students, teacher, data, epoch, flag, **kwargs):
        if epoch == 1:
            raise epochs_module.Preempted("stopped")
        return real_train_epoch(students, teacher, data, epoch, flag, **kwargs)

    monkeypatch.setattr(epochs_module, "train_epoch", stop_before_epoch_2)
    assert set(train_pack(pack, quiet=True).values()) == {"in_progress"}
    monkeypatch.undo()
    assert set(train_pack(pack, quiet=True).values()) == {"completed"}
    assert same_tensors(outcome(pack[1]), outcome(solo))
