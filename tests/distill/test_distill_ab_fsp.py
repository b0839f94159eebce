"""AB and FSP (RepDistiller's AB.py, FSP.py and their init stage): each loss against its
formula written out here (float32, rtol 1e-5, gradients too), torchdistill's where the form
is the same, the init stage through the loop's partial stage, and option errors in one line."""

import pytest
import torch
import torch.nn.functional as F

from kdlab.run.config import TrainConfig, complete_options
from kdlab.distill import BatchContext, build_distiller
from kdlab.distill.ab import alternative_l2
from kdlab.distill.fsp import fsp_matrices
from kdlab.run.errors import UserError
from kdlab.models import Features, FeatureShapes, describe_features

SHAPES = FeatureShapes(((4, 8, 8), (6, 4, 4), (8, 2, 2)), 8, 10)
WIDE = FeatureShapes(((5, 8, 8), (6, 4, 4), (9, 2, 2)), 9, 10)
LABELS = torch.arange(3) % 10


def features(shapes, seed, grad=False):
    generator = torch.Generator().manual_seed(seed)
    preact = [torch.randn(3, *shape, generator=generator) * 1.5 for shape in shapes.stages]
    preact = [tensor.requires_grad_(grad) for tensor in preact]
    stages = [tensor.relu() for tensor in preact]
    return Features(stages, preact, torch.randn(3, shapes.pooled, generator=generator),
                    torch.randn(3, 10, generator=generator))


def at(epoch):
    return BatchContext(LABELS, None, epoch=epoch)


def test_ab_equals_the_formula_with_its_gradient():
    ab = build_distiller("ab", SHAPES, SHAPES, {"margin": 0.5, "weight": 2.0})
    student, teacher = features(SHAPES, 1, grad=True), features(SHAPES, 2)
    value = ab(student, teacher, at(0))["ab"]
    margin, count, expected = 0.5, 3, 0.0
    for index, (s, t) in enumerate(zip(student.preact, teacher.preact)):
        # Same shapes: the connector is the identity (RepDistiller's Connector).
        off = (s > -margin) & (t <= 0)
        on = (s <= margin) & (t > 0)
        per_element = torch.where(off, (s + margin) ** 2, 0.0) + torch.where(on, (s - margin) ** 2, 0.0)
        expected = expected + 2.0 ** (index - count + 1) * per_element.sum() / 3 * 3 / 1000
    expected = 2.0 * expected
    torch.testing.assert_close(value, expected, rtol=1e-5, atol=0)
    got = torch.autograd.grad(value, student.preact, retain_graph=True)
    want = torch.autograd.grad(expected, student.preact)
    for left, right in zip(got, want):
        torch.testing.assert_close(left, right, rtol=1e-5, atol=1e-9)
    # Post-ReLU stages are not what AB reads: changing them changes nothing.
    moved = Features([stage + 1 for stage in student.stages], student.preact, student.pooled,
                     student.logits)
    assert torch.equal(ab(moved, teacher, at(0))["ab"], value)


def test_ab_connectors_map_other_shapes_and_it_acts_only_in_its_init_stage():
    ab = build_distiller("ab", SHAPES, WIDE, {"init_epochs": 2})
    assert [type(c).__name__ for c in ab.connectors] == ["Sequential", "Identity", "Sequential"]
    student, teacher = features(SHAPES, 3, grad=True), features(WIDE, 4)
    assert float(ab(student, teacher, at(1))["ab"].detach()) > 0
    assert float(ab(student, teacher, at(2))["ab"]) == 0.0      # beta 0 after the init stage
    assert [ab.partial_stage(epoch) for epoch in range(3)] == [2, 2, None]


def test_ab_stage_loss_equals_torchdistill():
    torchdistill = pytest.importorskip("torchdistill.losses.mid_level")
    source, target = torch.randn(4, 3, 5, 5) * 2, torch.randn(4, 3, 5, 5)
    theirs = torchdistill.AltActTransferLoss.compute_alt_act_transfer_loss(source, target, 1.0)
    torch.testing.assert_close(alternative_l2(source, target, 1.0), theirs, rtol=1e-5, atol=0)


def fsp_by_hand(stages):
    matrices = []
    for lower, upper in zip(stages, stages[1:]):
        size = min(lower.shape[2], upper.shape[2])
        lower = F.adaptive_avg_pool2d(lower, size) if lower.shape[2] > size else lower
        upper = F.adaptive_avg_pool2d(upper, size) if upper.shape[2] > size else upper
        batch, channels_lower, channels_upper = lower.shape[0], lower.shape[1], upper.shape[1]
        matrix = torch.zeros(batch, channels_lower, channels_upper)
        for j in range(channels_lower):
            for k in range(channels_upper):
                matrix[:, j, k] = (lower[:, j] * upper[:, k]).mean(dim=(1, 2))
        matrices.append(matrix)
    return matrices


def test_fsp_equals_the_formula_with_its_gradient():
    fsp = build_distiller("fsp", SHAPES, SHAPES, {"weight": 3.0})
    student, teacher = features(SHAPES, 5, grad=True), features(SHAPES, 6)
    value = fsp(student, teacher, at(0))["fsp"]
    expected = 3.0 * sum(((s - t) ** 2).mean() for s, t in zip(fsp_by_hand(student.stages),
                                                                fsp_by_hand(teacher.stages)))
    torch.testing.assert_close(value, expected, rtol=1e-5, atol=0)
    got = torch.autograd.grad(value, student.preact, retain_graph=True)
    want = torch.autograd.grad(expected, student.preact)
    for left, right in zip(got, want):
        torch.testing.assert_close(left, right, rtol=1e-5, atol=1e-9)
    assert float(fsp(student, teacher, at(30))["fsp"]) == 0.0
    assert fsp.partial_stage(29) == 2 and fsp.partial_stage(30) is None


def test_fsp_matrix_equals_torchdistill_where_the_form_is_the_same():
    """torchdistill's FSPLoss: the same matrix for maps of one size; it max-pools a larger map
    (RepDistiller, and kdlab, average-pool) and reduces by the L2 norm over the first axis
    summed over the batch (RepDistiller: the mean squared error): the difference asserted."""
    torchdistill = pytest.importorskip("torchdistill.losses.mid_level")
    generator = torch.Generator().manual_seed(7)
    lower, upper = torch.rand(2, 3, 4, 4, generator=generator), torch.rand(2, 5, 4, 4,
                                                                           generator=generator)
    theirs = torchdistill.FSPLoss.compute_fsp_matrix(lower, upper)
    torch.testing.assert_close(fsp_matrices([lower, upper])[0], theirs, rtol=1e-5, atol=0)
    larger = torch.rand(2, 3, 8, 8, generator=generator)
    pooled_max = torchdistill.FSPLoss.compute_fsp_matrix(larger, upper)
    assert not torch.allclose(fsp_matrices([larger, upper])[0], pooled_max)


def test_option_and_pair_errors_are_one_line():
    for method, options, text in [("ab", {"margin": 0}, "margin"),
                                  ("ab", {"init_epochs": -1}, "init_epochs"),
                                  ("fsp", {"weight": "lots"}, "weight")]:
        with pytest.raises(UserError) as error:
            build_distiller(method, SHAPES, SHAPES, options)
        assert text in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(UserError) as error:
        build_distiller("fsp", SHAPES, WIDE, {})
    assert "same channels" in str(error.value) and "\n" not in str(error.value)
    shorter = FeatureShapes(SHAPES.stages[:2], 6, 10)
    with pytest.raises(UserError) as error:
        build_distiller("ab", shorter, SHAPES, {})
    assert "stages" in str(error.value) and "\n" not in str(error.value)
    # The init stage must leave epochs to train the classifier, as FitNets' hint stage.
    config = TrainConfig(dataset="Digits", model="ResNet8", distillation="ab",
                         teacher_model="ResNet20", alpha=0.5, epochs=30)
    with pytest.raises(UserError) as error:
        complete_options(config)
    assert "init_epochs" in str(error.value) and "\n" not in str(error.value)


def test_resnet_pair_uses_every_stage():
    student, teacher = describe_features("ResNet8", 10, 8), describe_features("ResNet20", 10, 8)
    assert len(build_distiller("ab", student, teacher, {}).connectors) == len(student.stages)


@pytest.mark.parametrize("method, key", [("ab", "init_epochs"), ("fsp", "init_epochs"),
                                         ("fitnets", "hint_epochs"),
                                         ("fitnets+logit", "fitnets.hint_epochs"),
                                         ("logit+ab", "ab.init_epochs")])
def test_a_student_stage_as_long_as_the_run_is_refused_in_one_line(tmp_path, method, key):
    """The catalog names each method's student-alone stage (MethodFacts.student_stage_option);
    a stage that fills the run leaves the classifier untrained, alone or in a combination."""
    from kdlab.run import catalog
    from kdlab.run.config import TrainConfig, complete_options

    config = TrainConfig(dataset="Digits", model="ResNet8", seed=0, epochs=3, batch_size=64,
                         distillation=method, teacher_model="ResNet20", alpha=0.5,
                         method_options={key: 3}, experiments_dir=str(tmp_path), device="cpu")
    with pytest.raises(UserError) as error:
        complete_options(config)
    assert str(error.value).splitlines() == [str(error.value)]
    assert f"--option {key} 3: expected fewer than --epochs 3" in str(error.value)
    complete_options(TrainConfig(**{**config.__dict__, "method_options": {key: 2}}))
    stages = {name: facts.student_stage_option for name, facts in catalog.METHODS.items()
              if facts.student_stage_option}
    assert stages == {"fitnets": "hint_epochs", "ab": "init_epochs", "fsp": "init_epochs"}
