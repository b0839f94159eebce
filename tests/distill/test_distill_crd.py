"""CRD (RepDistiller crd/): the loss against the NCE formula written out here in float64,
its gradients, the banks' momentum update, the negatives' sampling, and that the banks and
the generator of the negatives travel with the state dict (a resumed run is bit-identical)."""

import io
import math

import pytest
import torch

from kdlab.distill import BatchContext, build_distiller
from kdlab.run.errors import UserError
from kdlab.models import Features, describe_features

SHAPES = describe_features("ResNet8", 10, 8)
TRAIN_LABELS = torch.arange(40) % 10  # 40 samples, 4 per class: 36 others per class
NEGATIVES, DIM, TEMPERATURE, MOMENTUM = 12, 6, 0.07, 0.5


def crd(**options):
    """The method with this file's small sizes, its embeddings and banks drawn from a fixed
    seed (the same distiller whatever ran before)."""
    options = {"negatives": NEGATIVES, "feature_dim": DIM, "nce_temperature": TEMPERATURE,
               "momentum": MOMENTUM, **options}
    torch.manual_seed(0)
    distiller = build_distiller("crd", SHAPES, SHAPES, options)
    distiller.attach_training_set(TRAIN_LABELS)
    return distiller


def features(seed: int, batch: int = 5) -> Features:
    generator = torch.Generator().manual_seed(seed)
    stages = [torch.randn(batch, *shape, generator=generator).relu() for shape in SHAPES.stages]
    pooled = torch.randn(batch, SHAPES.pooled, generator=generator)
    return Features(stages, stages, pooled, torch.randn(batch, 10, generator=generator))


def context(indices) -> BatchContext:
    indices = torch.as_tensor(indices)
    return BatchContext(TRAIN_LABELS[indices], indices)


def reference_loss(student_pooled, teacher_pooled, distiller, student_bank, teacher_bank,
                   contrast, normalisers=None):
    """RepDistiller's CRDLoss in float64 torch, written from the formula: embed, L2-normalise,
    scores exp(<bank row, v>/T), Z = mean score · N on the first batch, NCE with K/N noise."""
    def embed(module, x):
        y = x.double() @ module.linear.weight.double().t() + module.linear.bias.double()
        return y / y.pow(2).sum(1, keepdim=True).sqrt()

    student = embed(distiller.embed_student, student_pooled)
    teacher = embed(distiller.embed_teacher, teacher_pooled)
    size = student_bank.shape[0]
    scores = {}
    for name, anchor, bank in (("student", student, teacher_bank), ("teacher", teacher,
                                                                     student_bank)):
        rows = bank.double()[contrast]  # [B, K+1, D]
        scores[name] = torch.exp((rows * anchor[:, None, :]).sum(2) / TEMPERATURE)
    if normalisers is None:
        normalisers = [float(scores["student"].detach().mean()) * size,
                       float(scores["teacher"].detach().mean()) * size]
    total = 0.0
    for name, z in zip(("student", "teacher"), normalisers):
        p = scores[name] / z
        k = p.shape[1] - 1
        noise = k / size
        positive = torch.log(p[:, 0] / (p[:, 0] + noise + 1e-7)).sum()
        negative = torch.log(noise / (p[:, 1:] + noise + 1e-7)).sum()
        total = total - (positive + negative) / p.shape[0]
    return total, student, teacher, normalisers


@pytest.mark.parametrize("dense_limit", [16, 0], ids=["dense-product", "gathered-rows"])
def test_crd_loss_and_gradient_equal_the_nce_formula(dense_limit, monkeypatch):
    # Both ways of scoring (one product with the whole bank, or the gathered rows) give the
    # formula's values; the training set here (40) is within 16x the contrast width (13).
    from kdlab.distill import crd as crd_module
    monkeypatch.setattr(crd_module, "DENSE_SCORES_LIMIT", dense_limit)
    distiller = crd(weight=0.8)
    student, teacher = features(1), features(2)
    indices = [3, 17, 22, 8, 39]
    banks = distiller.student_bank.clone(), distiller.teacher_bank.clone()
    state = distiller.generator.get_state()
    contrast = distiller.draw_contrast_indices(torch.tensor(indices))
    distiller.generator.set_state(state)  # the forward draws the same negatives
    pooled = student.pooled.clone().requires_grad_(True)
    value = distiller(Features(student.stages, student.preact, pooled, student.logits), teacher,
                      context(indices))["crd"]
    pooled64 = student.pooled.clone().double().requires_grad_(True)
    expected, s_vec, t_vec, z = reference_loss(pooled64, teacher.pooled, distiller, *banks, contrast)
    assert math.isclose(float(value), 0.8 * float(expected), rel_tol=1e-5)
    value.backward()
    (0.8 * expected).backward()
    # float32 against float64: each element within 1e-4 relative, or within 1e-5 of the
    # gradient's largest element (round-off of sums that cancel to near zero: per element,
    # an absolute 1e-9 failed for 5 of 30 random initialisations of the embeddings).
    torch.testing.assert_close(pooled.grad.double(), pooled64.grad, rtol=1e-4,
                               atol=1e-5 * float(pooled64.grad.abs().max()))
    # Z was set from this first batch and is kept.
    assert torch.allclose(distiller.normalisers.double(), torch.tensor(z, dtype=torch.float64),
                          rtol=1e-5)
    # Momentum update of both banks at the batch's rows, renormalised; the others untouched.
    for bank, before, vector in ((distiller.student_bank, banks[0], s_vec),
                                 (distiller.teacher_bank, banks[1], t_vec)):
        moved = MOMENTUM * before.double()[indices] + (1 - MOMENTUM) * vector.detach()
        moved = moved / (moved ** 2).sum(1, keepdim=True).sqrt()
        assert torch.allclose(bank[indices].double(), moved, rtol=1e-5, atol=1e-7)
        others = [i for i in range(40) if i not in indices]
        assert torch.equal(bank[others], before[others])

    # A second batch keeps the first batch's Z.
    z_before = distiller.normalisers.clone()
    banks = distiller.student_bank.clone(), distiller.teacher_bank.clone()
    state = distiller.generator.get_state()
    contrast = distiller.draw_contrast_indices(torch.tensor(indices))
    distiller.generator.set_state(state)
    student, teacher = features(3), features(4)
    value = distiller(student, teacher, context(indices))["crd"]
    expected, *_ = reference_loss(student.pooled, teacher.pooled, distiller, *banks, contrast,
                                  normalisers=[float(z) for z in z_before])
    assert torch.equal(distiller.normalisers, z_before)
    assert math.isclose(float(value), 0.8 * float(expected), rel_tol=1e-5)


def test_negatives_are_other_classes_distinct_when_there_are_enough():
    distiller = crd(negatives=36)  # exactly the 36 others: every one, once
    contrast = distiller.draw_contrast_indices(torch.tensor([0, 13, 25]))
    assert contrast[:, 0].tolist() == [0, 13, 25]
    for row, own in zip(contrast, [0, 13, 25]):
        negatives = row[1:]
        assert (TRAIN_LABELS[negatives] != TRAIN_LABELS[own]).all()
        assert sorted(negatives.tolist()) == [i for i in range(40) if i % 10 != own % 10]
    more = crd(negatives=100)  # more than the pool: drawn with replacement, still other classes
    contrast = more.draw_contrast_indices(torch.tensor([4, 5]))
    assert contrast.shape == (2, 101)
    for row in contrast:
        assert (TRAIN_LABELS[row[1:]] != TRAIN_LABELS[row[0]]).all()
        assert len(set(row[1:].tolist())) < 100  # repeats


def test_banks_start_uniform_in_the_reference_range_with_z_unset():
    distiller = crd(feature_dim=12)
    bound = 1 / math.sqrt(12 / 3)
    for bank in (distiller.student_bank, distiller.teacher_bank):
        assert bank.shape == (40, 12) and bank.abs().max() <= bound
        assert bank.abs().max() > 0.9 * bound
    assert distiller.normalisers.tolist() == [-1.0, -1.0]


def test_resumed_crd_is_bit_identical():
    torch.manual_seed(0)
    straight = crd()
    torch.manual_seed(0)
    interrupted = crd()
    steps = [([1, 2, 3, 4], 10), ([5, 6, 7, 8], 11), ([9, 30, 31, 0], 12)]
    for indices, seed in steps[:1]:
        for distiller in (straight, interrupted):
            distiller(features(seed, 4), features(seed + 50, 4), context(indices))
    buffer = io.BytesIO()
    torch.save(interrupted.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(123)  # another global stream: the restored state must not depend on it
    resumed = crd()
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for indices, seed in steps[1:]:
        a = straight(features(seed, 4), features(seed + 50, 4), context(indices))["crd"]
        b = resumed(features(seed, 4), features(seed + 50, 4), context(indices))["crd"]
        assert torch.equal(a, b)
    for key, value in straight.state_dict().items():
        other = resumed.state_dict()[key]
        assert (torch.equal(value["generator"], other["generator"]) if key == "_extra_state"
                else torch.equal(value, other)), key


def test_crd_errors_are_one_line():
    with pytest.raises(UserError, match="momentum=1.5.*expected a number in"):
        crd(momentum=1.5)
    distiller = crd()
    with pytest.raises(UserError, match="needs each sample's index"):
        distiller(features(1), features(2), BatchContext(torch.zeros(5, dtype=torch.int64)))
    with pytest.raises(UserError, match="only class"):
        _draw_one(8)


def _draw_one(size):
    distiller = build_distiller("crd", SHAPES, SHAPES, {})
    distiller.attach_training_set(torch.zeros(size).long())
    distiller.draw_contrast_indices(torch.tensor([0]))
