"""kdlab.distill.build: a method's loss module outside kdlab's loop, from model names, built
models or FeatureShapes, usable in a plain training loop."""

import math

import pytest
import torch
import torch.nn.functional as F

from kdlab.run import catalog
from kdlab.distill import BatchContext, build
from kdlab.run.errors import UserError
from kdlab.models import FeatureShapes, build_model


def test_build_by_name_gives_the_named_weighted_terms():
    torch.manual_seed(0)
    student, teacher = build_model("ResNet8", 10), build_model("ResNet20", 10).eval()
    loss = build("logit", student="ResNet8", teacher="ResNet20", num_classes=10, temperature=2.0,
                 weight=0.5)
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        teacher_features = teacher(images)
    student_features = student(images)
    terms = loss(student_features, teacher_features, BatchContext(labels))
    assert set(terms) == {"kl"}
    p_teacher = F.softmax(teacher_features.logits / 2, dim=1).double()
    log_p_student = F.log_softmax(student_features.logits.detach() / 2, dim=1).double()
    expected = 0.5 * 4 * (p_teacher * (p_teacher.log() - log_p_student)).sum(1).mean()
    assert math.isclose(float(terms["kl"].detach()), float(expected), rel_tol=1e-5)


def test_build_from_built_models_and_shapes_trains_in_a_plain_loop():
    torch.manual_seed(1)
    student, teacher = build_model("ResNet8", 10), build_model("ResNet20", 10).eval()
    running_mean = student.bn1.running_mean.clone()
    loss = build("fitnets", student=student, teacher=teacher, image_size=16,
                 student_layer="layer3", hint_layer="last")
    assert torch.equal(student.bn1.running_mean, running_mean)  # the dry forward moved nothing
    assert loss.student_index == 2 and loss.hint_index == 2
    optimizer = torch.optim.SGD([*student.parameters(), *loss.parameters()], lr=0.1)
    images = torch.randn(6, 3, 16, 16)
    with torch.no_grad():
        teacher_features = teacher(images)
    losses = []
    for _ in range(3):
        terms = loss(student(images), teacher_features, BatchContext(torch.zeros(6).long()))
        total = sum(terms.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        losses.append(float(total.detach()))
    assert losses[-1] < losses[0]
    shapes = FeatureShapes(((16, 16, 16), (32, 8, 8), (64, 4, 4)), 64, 10)
    assert build("attention_transfer", student=shapes, teacher=shapes).layer_indices == [0, 1, 2]


def test_build_crd_needs_the_training_labels_for_its_banks():
    loss = build("crd", student="ResNet8", teacher="ResNet20", num_classes=10,
                 train_labels=torch.arange(50) % 10, negatives=20)
    assert loss.student_bank.shape == (50, 128)
    student, teacher = build_model("ResNet8", 10), build_model("ResNet20", 10).eval()
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        teacher_features = teacher(images)
    indices = torch.tensor([1, 2, 3, 4])
    terms = loss(student(images), teacher_features, BatchContext(indices % 10, indices))
    assert set(terms) == {"crd"} and torch.isfinite(terms["crd"])


def test_build_errors_are_one_line():
    for call, message in [
            (lambda: build("logit", student="ResNet9", teacher="ResNet20"), "unknown model 'ResNet9'"),
            (lambda: build("no_such", student="ResNet8", teacher="ResNet20"),
             "unknown distillation method 'no_such'"),
            (lambda: build("logit", student=3, teacher="ResNet20"), "got int for a model"),
            (lambda: build("fitnets", student="ResNet8", teacher="ResNet20", hint_layer="layer7"),
             "hint_layer='layer7'")]:
        with pytest.raises(UserError) as error:
            call()
        assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.skipif("ResNet8x4" not in catalog.MODEL_FACTS or "ResNet32x4" not in catalog.MODEL_FACTS,
                    reason="the ResNet-x4 family is not registered in this build")
def test_build_defaults_to_the_benchmark_pair():
    loss = build("attention_transfer")
    assert loss.student_shapes.classes == loss.teacher_shapes.classes == 100
