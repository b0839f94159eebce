"""The methods written against the feature contract (sp, pkt, cc, vid, dkd, dist, ofd,
reviewkd and logit's standardize option): each loss and its gradient against a computation of
the formula written out here in float64 (loops and numpy-style algebra, nothing from kdlab's
modules), against torchdistill where its loss has the same form (and the documented
difference where it does not), finite gradients in degenerate batches, and one-line errors
for bad options. torchdistill has no OFD loss (its AltActTransferLoss is AB's); its
HierarchicalContextLoss is ReviewKD's HCL for one level."""

import math

import pytest
import torch

from kdlab.distill import build_distiller, method_class, resolve_options
from kdlab.distill.base import BatchContext
from kdlab.run.errors import UserError
from kdlab.models.features import Features, FeatureShapes

RELATIVE = 1e-5
BATCH = 6
CLASSES = 10
# A student and a wider teacher with the same stage sizes, and a teacher whose stages are twice
# the student's size (VID pools the larger map).
STUDENT = FeatureShapes(((16, 8, 8), (32, 4, 4), (64, 2, 2)), 64, CLASSES)
TEACHER = FeatureShapes(((32, 8, 8), (64, 4, 4), (128, 2, 2)), 128, CLASSES)
LARGER_TEACHER = FeatureShapes(((32, 16, 16), (64, 8, 8), (128, 4, 4)), 128, CLASSES)
NEW_METHODS = ("sp", "pkt", "cc", "vid", "dkd", "dist", "ofd", "reviewkd")


def random_features(seed: int, shapes: FeatureShapes, batch: int = BATCH) -> Features:
    """Features of ``batch`` fake samples: post-ReLU stages, their pre-ReLU maps, a pooled
    vector (the last stage's mean, as the ResNets) and logits."""
    generator = torch.Generator().manual_seed(seed)
    preact = [torch.randn(batch, *shape, generator=generator) for shape in shapes.stages]
    stages = [map_.relu() for map_ in preact]
    logits = 3 * torch.randn(batch, shapes.classes, generator=generator)
    return Features(stages, preact, stages[-1].mean(dim=(2, 3)), logits)


def leaf_features(features: Features) -> Features:
    return features.map(lambda t: t.clone().requires_grad_(True))


def labels_for(seed: int, batch: int = BATCH) -> torch.Tensor:
    return torch.randint(0, CLASSES, (batch,), generator=torch.Generator().manual_seed(seed))


class TeacherBatchNorms(torch.nn.Module):
    """Stands in for a teacher where a method reads its weights (OFD's margins): per stage
    the batch norm before its last ReLU, with seeded affine parameters (some γ negative)."""

    def __init__(self, shapes: FeatureShapes, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.norms = torch.nn.ModuleList(torch.nn.BatchNorm2d(c) for c, _, _ in shapes.stages)
        with torch.no_grad():
            for norm in self.norms:
                norm.weight.copy_(torch.randn(norm.num_features, generator=generator) * 0.6)
                norm.bias.copy_(torch.randn(norm.num_features, generator=generator) * 0.6)

    def preact_batchnorms(self):
        return list(self.norms)


def build(name, student=STUDENT, teacher=TEACHER, **options):
    """The method built from shapes and attached to a stand-in teacher (a no-op for the
    methods that read nothing from it)."""
    torch.manual_seed(0)
    distiller = build_distiller(name, student, teacher, options)
    distiller.attach_teacher(TeacherBatchNorms(teacher))
    return distiller


def close(actual: torch.Tensor, expected: torch.Tensor | float) -> bool:
    value = expected.detach() if isinstance(expected, torch.Tensor) else expected
    return math.isclose(float(actual.detach()), float(value), rel_tol=RELATIVE, abs_tol=1e-12)


def assert_gradients_match(actual: torch.Tensor | None, expected: torch.Tensor) -> None:
    """float32 against float64: each element within 1e-5 relative, or within 1e-5 of the
    gradient's largest element (float32 round-off of sums that cancel to near zero)."""
    assert actual is not None
    torch.testing.assert_close(actual.double(), expected, rtol=RELATIVE,
                               atol=RELATIVE * float(expected.abs().max()))


def float64_leaf(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().double().requires_grad_(True)


# ------------------------------------------------------------------ independent formulas (float64)

def sp_reference(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Tung & Mori eq. 2-4: G = Q Qᵀ, each row divided by its L2 norm, ‖G_t − G_s‖²_F / B²."""
    batch = student.shape[0]

    def normalised_gram(maps):
        flat = maps.reshape(batch, -1)
        rows = []
        for i in range(batch):
            row = torch.stack([torch.dot(flat[i], flat[j]) for j in range(batch)])
            rows.append(row / torch.sqrt((row * row).sum()))
        return torch.stack(rows)

    total = 0
    gram_s, gram_t = normalised_gram(student), normalised_gram(teacher)
    for i in range(batch):
        for j in range(batch):
            total = total + (gram_t[i, j] - gram_s[i, j]) ** 2
    return total / batch ** 2


def pkt_reference(student: torch.Tensor, teacher: torch.Tensor, eps=1e-7) -> torch.Tensor:
    """Passalis & Tefas: cosine kernel (c + 1) / 2, rows to probabilities, mean of
    p_t · log((p_t + ε) / (p_s + ε)) over the B² entries (the author's code)."""
    batch = student.shape[0]

    def probabilities(x):
        kernel = [[(torch.dot(x[i], x[j]) / ((x[i].norm() + eps) * (x[j].norm() + eps)) + 1) / 2
                   for j in range(batch)] for i in range(batch)]
        rows = [torch.stack(row) for row in kernel]
        return torch.stack([row / row.sum() for row in rows])

    p_s, p_t = probabilities(student), probabilities(teacher)
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).sum() / batch ** 2


def cc_consecutive_reference(e_s: torch.Tensor, e_t: torch.Tensor) -> torch.Tensor:
    """RepDistiller's Correlation: mean over i < B−1 of Σ_d |δ_i,d| |δ_{i+1},d|."""
    batch = e_s.shape[0]
    total = 0
    for i in range(batch - 1):
        total = total + ((e_s[i] - e_t[i]).abs() * (e_s[i + 1] - e_t[i + 1]).abs()).sum()
    return total / (batch - 1)


def gaussian_kernel_reference(e: torch.Tensor, gamma: float, order: int) -> torch.Tensor:
    """Peng et al. eq. 9: exp(−γ‖x − y‖²) of unit rows, Taylor-expanded to order P."""
    units = e / e.norm(dim=1, keepdim=True)
    batch = e.shape[0]
    rows = []
    for i in range(batch):
        row = []
        for j in range(batch):
            inner = torch.dot(units[i], units[j])
            series = sum((2 * gamma) ** p / math.factorial(p) * inner ** p
                         for p in range(order + 1))
            row.append(math.exp(-2 * gamma) * series)
        rows.append(torch.stack(row))
    return torch.stack(rows)


def vid_reference(mean: torch.Tensor, log_scale: torch.Tensor, target: torch.Tensor,
                  floor=1e-5) -> torch.Tensor:
    """Ahn et al. eq. 6 (the references drop 0.5 log 2π): mean over all elements of
    0.5 (log σ²_c + (t − μ)² / σ²_c), σ²_c = log(1 + exp(α_c)) + ε."""
    variance = torch.log(1 + torch.exp(log_scale)) + floor
    variance = variance[None, :, None, None]
    return (0.5 * (torch.log(variance) + (target - mean) ** 2 / variance)).mean()


def dkd_reference(z_s, z_t, labels, temperature):
    """Zhao et al. eq. 1-7 as mdistiller's dkd_loss: b = (p_target, Σ_{other} p), p̂ the
    softmax over the non-target classes; T² · Σ KL / B of each."""
    batch, classes = z_s.shape
    tckd, nckd = 0, 0
    for i in range(batch):
        target = int(labels[i])
        p_s = torch.softmax(z_s[i] / temperature, dim=0)
        p_t = torch.softmax(z_t[i] / temperature, dim=0)
        b_s = torch.stack([p_s[target], 1 - p_s[target]])
        b_t = torch.stack([p_t[target], 1 - p_t[target]])
        tckd = tckd + (b_t * torch.log(b_t / b_s)).sum()
        keep = [k for k in range(classes) if k != target]
        q_s, q_t = p_s[keep] / p_s[keep].sum(), p_t[keep] / p_t[keep].sum()
        nckd = nckd + (q_t * torch.log(q_t / q_s)).sum()
    return temperature ** 2 * tckd / batch, temperature ** 2 * nckd / batch


def pearson_reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a - a.mean(), b - b.mean()
    return (a * b).sum() / torch.sqrt((a * a).sum() * (b * b).sum())


def dist_reference(z_s, z_t, tau):
    """Huang et al. eq. 5-8: 1 − mean Pearson of rows (inter) and of columns (intra), × τ²."""
    y_s, y_t = torch.softmax(z_s / tau, dim=1), torch.softmax(z_t / tau, dim=1)
    inter = 1 - sum(pearson_reference(y_s[i], y_t[i]) for i in range(y_s.shape[0])) / y_s.shape[0]
    intra = 1 - sum(pearson_reference(y_s[:, k], y_t[:, k])
                    for k in range(y_s.shape[1])) / y_s.shape[1]
    return tau ** 2 * inter, tau ** 2 * intra


def standardized_reference(z: torch.Tensor) -> torch.Tensor:
    """Sun et al.: (z − mean) / (1e-7 + std), the sample (N − 1) standard deviation."""
    classes = z.shape[1]
    mean = z.sum(dim=1, keepdim=True) / classes
    std = torch.sqrt(((z - mean) ** 2).sum(dim=1, keepdim=True) / (classes - 1))
    return (z - mean) / (1e-7 + std)


def kd_reference(z_s, z_t, temperature):
    """T² · Σ_k p_t log(p_t / p_s) averaged over the batch."""
    p_s = torch.softmax(z_s / temperature, dim=1)
    p_t = torch.softmax(z_t / temperature, dim=1)
    return temperature ** 2 * (p_t * torch.log(p_t / p_s)).sum() / z_s.shape[0]


# ----------------------------------------------------------------------- each method's value

def logit_distiller(options):
    """The logit method, built from the same shapes as the others."""
    return build_distiller("logit", STUDENT, TEACHER, options)


def run(distiller, student, teacher, batch=None):
    leaves = leaf_features(student)
    terms = distiller(leaves, teacher, batch or BatchContext(labels=labels_for(0)))
    assert all(term.dtype == torch.float32 and term.dim() == 0 for term in terms.values())
    sum(terms.values()).backward()
    return terms, leaves


def test_sp_equals_its_formula_with_gradients():
    student, teacher = random_features(1, STUDENT), random_features(2, TEACHER)
    terms, leaves = run(build("sp"), student, teacher)
    student64 = float64_leaf(student.stages[-1])
    expected = 3000 * sp_reference(student64, teacher.stages[-1].double())
    expected.backward()
    assert set(terms) == {"sp"} and close(terms["sp"], expected)
    assert_gradients_match(leaves.stages[-1].grad, student64.grad)
    assert all(leaf.grad is None for leaf in leaves.stages[:-1])


def signed_pooled(features: Features, seed: int) -> Features:
    """The features with a pooled vector of either sign. PKT's loss on post-ReLU vectors
    (cosines near 1, rows near uniform) is a KL of nearly equal distributions, which float32
    resolves only to ~1e-4 relative: signed vectors give a loss float32 resolves to 1e-5."""
    generator = torch.Generator().manual_seed(seed)
    pooled = torch.randn(features.pooled.shape, generator=generator)
    return Features(features.stages, features.preact, pooled, features.logits)


def test_pkt_equals_its_formula_with_gradients():
    student = signed_pooled(random_features(3, STUDENT), 0)
    teacher = signed_pooled(random_features(4, TEACHER), 1)
    terms, leaves = run(build("pkt"), student, teacher)
    student64 = float64_leaf(student.pooled)
    expected = 30000 * pkt_reference(student64, teacher.pooled.double())
    expected.backward()
    assert set(terms) == {"pkt"} and close(terms["pkt"], expected)
    assert_gradients_match(leaves.pooled.grad, student64.grad)


@pytest.mark.parametrize("form", ["consecutive", "gaussian"])
def test_cc_equals_its_formula_with_gradients(form):
    student, teacher = random_features(5, STUDENT), random_features(6, TEACHER)
    distiller = build("cc", form=form)
    terms, leaves = run(distiller, student, teacher)
    student64 = float64_leaf(student.pooled)
    w_s = float64_leaf(distiller.student_embedding.weight)
    w_t = float64_leaf(distiller.teacher_embedding.weight)
    e_s = student64 @ w_s.t() + distiller.student_embedding.bias.detach().double()
    e_t = teacher.pooled.double() @ w_t.t() + distiller.teacher_embedding.bias.detach().double()
    if form == "consecutive":
        expected = 0.02 * cc_consecutive_reference(e_s, e_t)
    else:
        difference = gaussian_kernel_reference(e_s, 0.4, 2) - gaussian_kernel_reference(e_t, 0.4, 2)
        expected = 0.02 * (difference ** 2).sum() / BATCH ** 2
    expected.backward()
    assert set(terms) == {"cc"} and close(terms["cc"], expected)
    assert distiller.student_embedding.weight.shape == (128, STUDENT.pooled)
    assert distiller.teacher_embedding.weight.shape == (128, TEACHER.pooled)
    assert_gradients_match(leaves.pooled.grad, student64.grad)
    # Both embeddings are trained (RepDistiller's trainable list holds embed_s and embed_t).
    assert_gradients_match(distiller.student_embedding.weight.grad, w_s.grad)
    assert_gradients_match(distiller.teacher_embedding.weight.grad, w_t.grad)


@pytest.mark.parametrize("teacher_shapes", [TEACHER, LARGER_TEACHER], ids=["same size", "larger"])
def test_vid_equals_its_formula_with_gradients(teacher_shapes):
    student, teacher = random_features(7, STUDENT), random_features(8, teacher_shapes)
    distiller = build("vid", teacher=teacher_shapes)
    # Distinct variances per channel, so that a mixed-up channel order would show.
    with torch.no_grad():
        for regressor in distiller.regressors:
            regressor.log_scale.copy_(torch.linspace(-1.0, 3.0, regressor.log_scale.numel()))
    terms, leaves = run(distiller, student, teacher)
    expected, student_leaves = 0, []
    for stage, regressor in enumerate(distiller.regressors):
        student_map = float64_leaf(student.stages[stage])
        student_leaves.append(student_map)
        target = teacher.stages[stage].double()
        if target.shape[-1] > student_map.shape[-1]:  # average 2×2 blocks by hand
            factor = target.shape[-1] // student_map.shape[-1]
            b, c, h, w = target.shape
            target = target.reshape(b, c, h // factor, factor, w // factor, factor).mean(dim=(3, 5))
        hidden = student_map
        convolutions = [m for m in regressor.mean if isinstance(m, torch.nn.Conv2d)]
        for position, convolution in enumerate(convolutions):
            weight = convolution.weight.detach().double()[:, :, 0, 0]
            hidden = torch.einsum("oc,bchw->bohw", weight, hidden)
            if position < 2:
                hidden = hidden.clamp(min=0)
        expected = expected + vid_reference(hidden, regressor.log_scale.detach().double(), target)
        assert convolutions[0].weight.shape[:2] == (teacher_shapes.stages[stage][0],
                                                    STUDENT.stages[stage][0])
    expected.backward()
    assert set(terms) == {"vid"} and close(terms["vid"], expected)
    for leaf, student_leaf in zip(leaves.stages, student_leaves):
        assert_gradients_match(leaf.grad, student_leaf.grad)


def test_vid_starts_at_the_initial_variance():
    distiller = build("vid", initial_variance=2.5)
    for regressor in distiller.regressors:
        torch.testing.assert_close(regressor.variance(), torch.full_like(regressor.variance(), 2.5))


@pytest.mark.parametrize("epoch, factor", [(0, 1 / 20), (9, 10 / 20), (19, 1.0), (150, 1.0)])
def test_dkd_equals_its_formula_with_warmup(epoch, factor):
    student, teacher = random_features(9, STUDENT), random_features(10, TEACHER)
    labels = labels_for(11)
    batch = BatchContext(labels=labels, epoch=epoch, step=3, steps_per_epoch=7)
    terms, leaves = run(build("dkd"), student, teacher, batch)
    logits64 = float64_leaf(student.logits)
    tckd, nckd = dkd_reference(logits64, teacher.logits.double(), labels, 4.0)
    (factor * (1.0 * tckd + 8.0 * nckd)).backward()
    assert set(terms) == {"dkd_target", "dkd_nontarget"}
    assert close(terms["dkd_target"], factor * tckd)
    assert close(terms["dkd_nontarget"], factor * 8 * nckd)
    assert_gradients_match(leaves.logits.grad, logits64.grad)


def test_dkd_terms_recompose_classical_kd():
    """The paper's eq. 7: KD = TCKD + (1 − p_t^target) NCKD, per sample (batch of one), with
    kdlab's logit method giving KD."""
    student, teacher = random_features(12, STUDENT, batch=1), random_features(13, TEACHER, batch=1)
    labels = labels_for(14, batch=1)
    terms = build("dkd", warmup_epochs=0, beta=1.0)(student, teacher, BatchContext(labels=labels))
    kd = logit_distiller({})(student, teacher, labels)["kl"]
    teacher_target = torch.softmax(teacher.logits / 4.0, dim=1)[0, labels[0]]
    assert close(kd, terms["dkd_target"] + (1 - teacher_target) * terms["dkd_nontarget"])


def test_dist_equals_its_formula_with_gradients():
    student, teacher = random_features(15, STUDENT), random_features(16, TEACHER)
    terms, leaves = run(build("dist", tau=2.0, beta=1.5, gamma=0.5), student, teacher)
    logits64 = float64_leaf(student.logits)
    inter, intra = dist_reference(logits64, teacher.logits.double(), 2.0)
    (1.5 * inter + 0.5 * intra).backward()
    assert close(terms["dist_inter"], 1.5 * inter) and close(terms["dist_intra"], 0.5 * intra)
    assert_gradients_match(leaves.logits.grad, logits64.grad)


def test_logit_standardize_equals_its_formula_with_gradients():
    student, teacher = random_features(17, STUDENT), random_features(18, TEACHER)
    distiller = logit_distiller({"standardize": True, "temperature": 2.0})
    leaves = leaf_features(student)
    terms = distiller(leaves, teacher, None)
    terms["kl"].backward()
    logits64 = float64_leaf(student.logits)
    expected = kd_reference(standardized_reference(logits64),
                            standardized_reference(teacher.logits.double()), 2.0)
    expected.backward()
    assert close(terms["kl"], expected)
    assert_gradients_match(leaves.logits.grad, logits64.grad)
    # Standardised logits make the loss blind to each sample's logit shift and scale.
    scaled = Features(student.stages, student.preact, student.pooled, 5 * student.logits + 3)
    assert close(distiller(scaled, teacher, None)["kl"], expected)


def test_dkd_standardize_equals_its_formula():
    student, teacher = random_features(19, STUDENT), random_features(20, TEACHER)
    labels = labels_for(21)
    terms = build("dkd", standardize=True, temperature=2.0, warmup_epochs=0)(
        student, teacher, BatchContext(labels=labels))
    tckd, nckd = dkd_reference(standardized_reference(student.logits.double()),
                               standardized_reference(teacher.logits.double()), labels, 2.0)
    assert close(terms["dkd_target"], tckd) and close(terms["dkd_nontarget"], 8 * nckd)


# ------------------------------------------------------------------------- against torchdistill

@pytest.fixture(scope="module")
def torchdistill_losses():
    return pytest.importorskip("torchdistill.losses.mid_level",
                               reason="torchdistill (the test extra) is not installed")


def io(tensor, io_type="output"):
    return {"module": {io_type: tensor}}


def test_sp_against_torchdistill_differs_as_documented(torchdistill_losses):
    """torchdistill's SPKDLoss calls ``normalize(G, 1)``, whose second argument is the norm's
    order: it divides each Gram row by its L1 norm, where the paper (eq. 3) and RepDistiller
    divide by the L2 norm. With L1 rows in the formula, the values agree."""
    student, teacher = random_features(22, STUDENT), random_features(23, TEACHER)
    ours = build("sp", weight=1.0)(student, teacher, BatchContext(labels=labels_for(0)))["sp"]
    theirs = torchdistill_losses.SPKDLoss("module", "module", "batchmean")(
        io(student.stages[-1]), io(teacher.stages[-1]))

    def l1_rows(maps):
        flat = maps.double().flatten(1)
        gram = flat @ flat.t()
        return gram / gram.abs().sum(dim=1, keepdim=True)

    l1_form = ((l1_rows(teacher.stages[-1]) - l1_rows(student.stages[-1])) ** 2).sum() / BATCH ** 2
    assert close(theirs, l1_form)
    assert close(ours, sp_reference(student.stages[-1].double(), teacher.stages[-1].double()))
    assert not math.isclose(float(ours), float(theirs), rel_tol=0.1)


def test_pkt_equals_torchdistill(torchdistill_losses):
    student = signed_pooled(random_features(24, STUDENT), 2)
    teacher = signed_pooled(random_features(25, TEACHER), 3)
    ours = build("pkt", weight=1.0)(student, teacher, BatchContext(labels=labels_for(0)))["pkt"]
    theirs = torchdistill_losses.PKTLoss("module", "input", "module", "input")(
        io(student.pooled, "input"), io(teacher.pooled, "input"))
    assert close(ours, theirs)


def test_vid_equals_torchdistill(torchdistill_losses):
    student, teacher = random_features(26, STUDENT), random_features(27, TEACHER)
    distiller = build("vid")
    ours = distiller(student, teacher, BatchContext(labels=labels_for(0)))["vid"]
    pairs = {}
    student_io, teacher_io = {}, {}
    for stage, regressor in enumerate(distiller.regressors):
        student_io[f"regressor{stage}"] = {"output": (regressor.mean(student.stages[stage]),
                                                      regressor.variance().view(1, -1, 1, 1))}
        teacher_io[f"layer{stage}"] = {"output": teacher.stages[stage]}
        pairs[f"pair{stage}"] = {"student": {"io": "output", "path": f"regressor{stage}"},
                                 "teacher": {"io": "output", "path": f"layer{stage}"}}
    theirs = torchdistill_losses.VIDLoss(pairs)(student_io, teacher_io)
    assert close(ours, theirs)


def test_cc_against_torchdistill_differs_as_documented(torchdistill_losses):
    """torchdistill's CCKDLoss implements only the paper's kernels and reduces with the
    Frobenius norm itself, ‖K_s − K_t‖ / B², where kdlab's (and the paper's eq. 4) mean
    squared difference is ‖K_s − K_t‖² / B²: ours = B² · theirs². RepDistiller's default
    consecutive form has no torchdistill counterpart and gives another value."""
    student, teacher = random_features(28, STUDENT), random_features(29, TEACHER)
    distiller = build("cc", form="gaussian", weight=1.0)
    ours = distiller(student, teacher, BatchContext(labels=labels_for(0)))["cc"]
    with torch.no_grad():
        e_s = torch.nn.functional.normalize(distiller.student_embedding(student.pooled), dim=1)
        e_t = torch.nn.functional.normalize(distiller.teacher_embedding(teacher.pooled), dim=1)
    loss = torchdistill_losses.CCKDLoss("s", "t", {"type": "gaussian", "gamma": 0.4, "max_p": 2},
                                        "batchmean")
    theirs = loss({"s": {"output": e_s}}, {"t": {"output": e_t}})
    assert close(ours, BATCH ** 2 * theirs ** 2)
    assert not close(ours, theirs)
    consecutive = build("cc", weight=1.0)(student, teacher, BatchContext(labels=labels_for(0)))
    assert not close(consecutive["cc"], ours)


def test_dist_equals_torchdistill(torchdistill_losses):
    student, teacher = random_features(30, STUDENT), random_features(31, TEACHER)
    terms = build("dist", tau=4.0, beta=2.0, gamma=2.0)(
        student, teacher, BatchContext(labels=labels_for(0)))
    theirs = torchdistill_losses.DISTLoss("m", "output", "m", "output", beta=2.0, gamma=2.0,
                                          tau=4.0)({"m": {"output": student.logits}},
                                                   {"m": {"output": teacher.logits}})
    assert close(terms["dist_inter"] + terms["dist_intra"], theirs)


def test_logit_standardize_against_torchdistill_differs_by_t_squared(torchdistill_losses):
    """torchdistill's LogitStdKDLoss returns the bare KL when no cross-entropy weight is
    given (its T² enters only with CE); kdlab's term carries T² as Sun et al.'s kd_loss."""
    student, teacher = random_features(32, STUDENT), random_features(33, TEACHER)
    distiller = logit_distiller({"standardize": True, "temperature": 2.0})
    ours = distiller(student, teacher, None)["kl"]
    # alpha 0: torchdistill's soft term alone (alpha None fails in its 1 - alpha).
    loss = torchdistill_losses.LogitStdKDLoss("m", "output", "m", "output", temperature=2.0,
                                              alpha=0.0)
    theirs = loss({"m": {"output": student.logits}}, {"m": {"output": teacher.logits}})
    assert close(ours, 2.0 ** 2 * theirs)


# ------------------------------------------------------------------- degenerate batches, options

def degenerate_batches():
    base_student, base_teacher = random_features(40, STUDENT), random_features(41, TEACHER)

    def constant(features):
        return features.map(lambda t: t[:1].expand_as(t).clone())

    def zeros(features):
        return features.map(torch.zeros_like)

    return {
        "identical samples": (constant(base_student), constant(base_teacher)),
        "identical student only": (constant(base_student), base_teacher),
        "all-zero student": (zeros(base_student), base_teacher),
        "all-zero teacher": (base_student, zeros(base_teacher)),
        "all zero": (zeros(base_student), zeros(base_teacher)),
        "one sample": (random_features(42, STUDENT, batch=1),
                       random_features(43, TEACHER, batch=1)),
    }


@pytest.mark.parametrize("name, options", [(name, {}) for name in NEW_METHODS] + [
    ("cc", {"form": "gaussian"}), ("dkd", {"standardize": True})],
    ids=[*NEW_METHODS, "cc gaussian", "dkd standardize"])
@pytest.mark.parametrize("precision", ["float32", "bf16 autocast"])
def test_gradients_finite_in_degenerate_batches(name, options, precision):
    for case, (student, teacher) in degenerate_batches().items():
        distiller = build(name, **options)
        if student.logits.shape[0] == 1:
            # Training batches hold at least 2 samples (data/device.py drops a last batch of
            # one), as batch norm over ReviewKD's 1×1 pooled level needs: one sample is the
            # evaluation case.
            distiller.eval()
        leaves = leaf_features(student)
        batch = BatchContext(labels=labels_for(44, batch=student.logits.shape[0]), epoch=30)
        if precision == "float32":
            terms = distiller(leaves, teacher, batch)
        else:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                terms = distiller(leaves.map(lambda t: t.bfloat16()),
                                  teacher.map(lambda t: t.bfloat16()), batch)
        assert all(term.dtype == torch.float32 for term in terms.values()), case
        total = sum(terms.values())
        assert torch.isfinite(total), (case, terms)
        total.backward()
        gradients = [leaf.grad for leaf in (*leaves.stages, leaves.pooled, leaves.logits)
                     if leaf.grad is not None]
        gradients += [p.grad for p in distiller.parameters() if p.grad is not None]
        assert all(torch.isfinite(g).all() for g in gradients), case


def test_every_new_method_registered_with_documented_defaults():
    for name in NEW_METHODS:
        cls = method_class(name)
        assert cls.name == name and "weight" in cls.defaults and cls.citation
        terms = build(name)(random_features(45, STUDENT), random_features(46, TEACHER),
                            BatchContext(labels=labels_for(47)))
        assert terms and all(key.startswith(name) for key in terms)
    assert resolve_options("dkd", {})["beta"] == 8.0
    assert (resolve_options("sp", {})["weight"], resolve_options("cc", {})["weight"],
            resolve_options("vid", {})["weight"], resolve_options("pkt", {})["weight"]) \
        == (3000.0, 0.02, 1.0, 30000.0)
    assert (resolve_options("ofd", {})["weight"], resolve_options("reviewkd", {})["weight"],
            resolve_options("reviewkd", {})["warmup_epochs"]) == (0.001, 5.0, 20)


@pytest.mark.parametrize("name, options, message", [
    ("sp", {"weight": "-1"}, r"option weight=-1.0 for method 'sp': expected a number >= 0"),
    ("pkt", {"weight": "lots"}, r"option weight='lots' for method 'pkt': expected float"),
    ("cc", {"form": "kernel"}, r"option form='kernel' for method 'cc': expected one of "
                               r"consecutive, gaussian"),
    ("cc", {"embedding": "0"}, r"option embedding=0 for method 'cc': expected a number >= 1"),
    ("cc", {"gamma": "0"}, r"option gamma=0.0 for method 'cc': expected a positive number"),
    ("vid", {"initial_variance": "0"}, r"option initial_variance=0.0 for method 'vid': "
                                       r"expected a number > 1e-05"),
    ("dkd", {"temperature": "0"}, r"option temperature=0.0 for method 'dkd': expected a "
                                  r"positive number"),
    ("dkd", {"warmup_epochs": "2.5"}, r"option warmup_epochs='2.5' for method 'dkd': "
                                      r"expected int"),
    ("dkd", {"standardize": "maybe"}, r"standardize.*for method 'dkd'.*expected true or false"),
    ("dist", {"temperature": "4"}, r"unknown option temperature='4' for method 'dist'"),
    ("dist", {"tau": "0"}, r"option tau=0.0 for method 'dist': expected a positive number"),
    ("dist", {"gamma": "-2"}, r"option gamma=-2.0 for method 'dist': expected a number >= 0"),
    ("logit", {"standardize": "maybe"}, r"standardize.*for method 'logit'.*expected true or false"),
    ("ofd", {"kernel_size": "2"}, r"option kernel_size=2 for method 'ofd': expected an odd "
                                  r"number"),
    ("ofd", {"kernel_size": "0"}, r"option kernel_size=0 for method 'ofd': expected a number >= 1"),
    ("ofd", {"weight": "-0.1"}, r"option weight=-0.1 for method 'ofd': expected a number >= 0"),
    ("reviewkd", {"warmup_epochs": "-1"}, r"option warmup_epochs=-1 for method 'reviewkd': "
                                          r"expected a number >= 0"),
    ("reviewkd", {"max_mid_channels": "0"}, r"option max_mid_channels=0 for method 'reviewkd': "
                                            r"expected a number >= 1"),
    ("reviewkd", {"student_preact": "pre"}, r"student_preact.*for method 'reviewkd'.*expected "
                                            r"true or false"),
])
def test_bad_options_are_one_line_user_errors(name, options, message):
    with pytest.raises(UserError, match=message) as caught:
        build(name, **options)
    assert "\n" not in str(caught.value)


def test_dkd_and_dist_reject_different_class_counts():
    other = FeatureShapes(TEACHER.stages, TEACHER.pooled, CLASSES + 1)
    for name in ("dkd", "dist"):
        with pytest.raises(UserError, match=f"{name}: student has 10 classes, teacher 11"):
            build(name, teacher=other)


@pytest.mark.parametrize("name", NEW_METHODS)
def test_every_new_method_runs_on_real_models_sized_from_their_shapes(name):
    """Connectors sized by describe_features fit the models' real Features (a ResNet8
    student, a ResNet20 teacher: 10 classes, 16-pixel images)."""
    from kdlab.models import build_model, describe_features

    torch.manual_seed(0)
    student_model, teacher_model = build_model("ResNet8", 10), build_model("ResNet20", 10)
    distiller = build_distiller(name, describe_features("ResNet8", 10, 16),
                                describe_features("ResNet20", 10, 16), {})
    distiller.attach_teacher(teacher_model)
    images = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        teacher = teacher_model(images)
    terms = distiller(student_model(images), teacher, BatchContext(labels=labels_for(48, 4)))
    total = sum(terms.values())
    total.backward()
    assert torch.isfinite(total)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student_model.parameters())


# --------------------------------------------------------------------------- ofd and reviewkd

def clipped_normal_margin(gamma: float, beta: float) -> float:
    """Heo et al. eq. 4 / get_margin_from_BN: E[x | x < 0] for x ~ N(β, γ²), integrated
    numerically by scipy; −3|γ| where P(x < 0) ≤ 0.001."""
    from scipy.stats import norm

    distribution = norm(loc=beta, scale=abs(gamma))
    if distribution.cdf(0.0) > 0.001:
        return distribution.expect(lambda x: x, ub=0.0, conditional=True)
    return -3 * abs(gamma)


def test_ofd_margin_equals_the_clipped_normal_expectation():
    from kdlab.distill.ofd import margins_from_batchnorm

    gammas = [1.0, -1.0, 0.3, 2.5, -0.7, 0.5, 1.0, 0.2]
    betas = [0.0, 0.0, -0.4, 1.2, 0.9, 1.4, -2.0, 1.0]    # the last: P(x < 0) < 0.001
    norm_layer = torch.nn.BatchNorm2d(len(gammas))
    with torch.no_grad():
        norm_layer.weight.copy_(torch.tensor(gammas))
        norm_layer.bias.copy_(torch.tensor(betas))
        norm_layer.running_mean.fill_(7.0)      # the running statistics play no part
    margins = margins_from_batchnorm(norm_layer)
    expected = torch.tensor([clipped_normal_margin(g, b) for g, b in zip(gammas, betas)],
                            dtype=torch.float64)
    torch.testing.assert_close(margins.double(), expected, rtol=RELATIVE, atol=0)
    assert margins[-1] == pytest.approx(-0.6) and bool((margins < 0).all())
    # γ = 0: the output is the constant β; the formula's limit is min(β, 0).
    with torch.no_grad():
        norm_layer.weight.zero_()
    assert torch.equal(margins_from_batchnorm(norm_layer),
                       torch.tensor([min(b, 0.0) for b in betas]))


def ofd_partial_l2_reference(student, teacher, margin):
    """Heo et al. eq. 5-6: the teacher lifted to its margin, T = max(t, m); the distance
    (T − S)² except where S ≤ T ≤ 0; summed over C, H, W and averaged over the batch."""
    target = torch.maximum(teacher, margin)
    skipped = (student <= target) & (target <= 0)
    return torch.where(skipped, torch.zeros_like(student), (target - student) ** 2).sum() \
        / student.shape[0]


def batchnorm_training_reference(x, norm_layer):
    """(x − batch mean) / sqrt(biased batch variance + ε) · γ + β per channel."""
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    variance = ((x - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
    gamma = norm_layer.weight.detach().double().view(1, -1, 1, 1)
    beta = norm_layer.bias.detach().double().view(1, -1, 1, 1)
    return (x - mean) / torch.sqrt(variance + norm_layer.eps) * gamma + beta


def block_mean(x, side_h, side_w):
    """Average of equal blocks: [B, C, H, W] -> [B, C, side_h, side_w]."""
    b, c, h, w = x.shape
    return x.reshape(b, c, side_h, h // side_h, side_w, w // side_w).mean(dim=(3, 5))


@pytest.mark.parametrize("teacher_shapes", [TEACHER, LARGER_TEACHER], ids=["same size", "larger"])
def test_ofd_equals_its_formula_with_gradients(teacher_shapes):
    student, teacher = random_features(50, STUDENT), random_features(51, teacher_shapes)
    distiller = build("ofd", teacher=teacher_shapes)
    with torch.no_grad():   # connectors' BN away from its (1, 0) start, so a mix-up shows
        for connector in distiller.connectors:
            connector[1].weight.uniform_(0.5, 1.5)
            connector[1].bias.uniform_(-0.5, 0.5)
    terms, leaves = run(distiller, student, teacher)
    stand_in = TeacherBatchNorms(teacher_shapes)
    expected, student_leaves = 0, []
    for stage, connector in enumerate(distiller.connectors):
        student_map = float64_leaf(student.preact[stage])
        student_leaves.append(student_map)
        weight = connector[0].weight.detach().double()[:, :, 0, 0]
        connected = batchnorm_training_reference(
            torch.einsum("oc,bchw->bohw", weight, student_map), connector[1])
        target = block_mean(teacher.preact[stage].double(), *connected.shape[-2:])
        norm_layer = stand_in.preact_batchnorms()[stage]
        margin = torch.tensor([clipped_normal_margin(g, b) for g, b in
                               zip(norm_layer.weight.tolist(), norm_layer.bias.tolist())],
                              dtype=torch.float64).view(1, -1, 1, 1)
        # the last stage weighs 1, each earlier one half the next (mdistiller's ofd_loss)
        expected = expected + ofd_partial_l2_reference(connected, target, margin) \
            / 2 ** (len(distiller.connectors) - 1 - stage)
        assert connector[0].weight.shape == (teacher_shapes.stages[stage][0],
                                             STUDENT.stages[stage][0], 1, 1)
    expected = 0.001 * expected
    expected.backward()
    assert set(terms) == {"ofd"} and close(terms["ofd"], expected)
    for leaf, student_leaf in zip(leaves.preact, student_leaves):
        assert_gradients_match(leaf.grad, student_leaf.grad)
    assert all(leaf.grad is None for leaf in leaves.stages)   # pre-ReLU maps only


def test_ofd_margins_are_buffers_restored_with_the_state_dict():
    student, teacher = random_features(52, STUDENT), random_features(53, TEACHER)
    trained = build("ofd")
    batch = BatchContext(labels=labels_for(0))
    state = trained.state_dict()
    assert {f"margin_{i}" for i in range(3)} <= set(state)
    restored = build_distiller("ofd", STUDENT, TEACHER, {})
    with pytest.raises(UserError, match=r"ofd: the teacher's margins are unset") as caught:
        restored(student, teacher, batch)
    assert "\n" not in str(caught.value)
    restored.load_state_dict(state)
    for index in range(3):
        assert torch.equal(restored.margin(index), trained.margin(index))
    assert torch.equal(restored(student, teacher, batch)["ofd"],
                       trained(student, teacher, batch)["ofd"])


def test_ofd_reads_the_resnet_batchnorm_before_each_stage_relu():
    """preact_batchnorms(): the BN whose output plus the block's shortcut is Features.preact."""
    from kdlab.models import build_model

    torch.manual_seed(0)
    for name in ("ResNet8", "ResNet20"):
        model = build_model(name, 10).eval()
        norms = model.preact_batchnorms()
        blocks = [stage[-1] for stage in (model.layer1, model.layer2, model.layer3)]
        norm_outputs, block_inputs = {}, {}
        handles = []
        for stage, (norm, block) in enumerate(zip(norms, blocks)):
            handles.append(norm.register_forward_hook(
                lambda m, i, o, stage=stage: norm_outputs.__setitem__(stage, o)))
            # the block's input is its first convolution's (the forward calls the block's
            # preactivation, not its forward)
            handles.append(block.conv1.register_forward_pre_hook(
                lambda m, i, stage=stage: block_inputs.__setitem__(stage, i[0])))
        with torch.no_grad():
            features = model(torch.randn(2, 3, 16, 16))
        for handle in handles:
            handle.remove()
        assert len(norms) == len(features.preact) == 3
        for stage, (block, preact) in enumerate(zip(blocks, features.preact)):
            with torch.no_grad():
                shortcut = block.shortcut(block_inputs[stage])
            norm_output = norm_outputs[stage]
            torch.testing.assert_close(norm_output + shortcut, preact)


def test_ofd_teacher_without_batchnorms_or_with_too_few_is_a_user_error():
    distiller = build_distiller("ofd", STUDENT, TEACHER, {})
    with pytest.raises(UserError, match=r"ofd: the teacher \(Linear\) has no "
                                        r"preact_batchnorms\(\)") as caught:
        distiller.attach_teacher(torch.nn.Linear(2, 2))
    assert "\n" not in str(caught.value)
    two_stages = FeatureShapes(TEACHER.stages[:2], TEACHER.pooled, CLASSES)
    with pytest.raises(UserError, match=r"gives 2 pre-ReLU batch norms for 3 stages"):
        distiller.attach_teacher(TeacherBatchNorms(two_stages))


def nearest_resize(x, height, width):
    """Nearest-neighbour resize by whole factors (each pixel repeated)."""
    return x.repeat_interleave(height // x.shape[2], dim=2) \
        .repeat_interleave(width // x.shape[3], dim=3)


def hcl_reference(student, teacher):
    """Chen et al.'s HCL as mdistiller's hcl_loss: MSE, plus the MSE of both maps averaged to
    4×4, 2×2, 1×1 (each side below the map's), weighted 1/2, 1/4, ... and normalised by the
    weights' sum."""
    loss, weight, total = ((student - teacher) ** 2).mean(), 1.0, 1.0
    for side in (4, 2, 1):
        if side >= student.shape[2]:
            continue
        weight /= 2
        loss = loss + weight * ((block_mean(student, side, side)
                                 - block_mean(teacher, side, side)) ** 2).mean()
        total += weight
    return loss / total


def abf_reference(fusion, student_map, deeper, output_size):
    """One ABF level in float64: 1×1 conv + BN; sigmoid attention over [x, deeper↑] mixing
    both; nearest resize to the teacher's size; 3×3 conv + BN."""
    weight = fusion.reduce[0].weight.detach().double()[:, :, 0, 0]
    x = batchnorm_training_reference(torch.einsum("oc,bchw->bohw", weight, student_map),
                                     fusion.reduce[1])
    if deeper is not None:
        deeper = nearest_resize(deeper, *x.shape[-2:])
        attention = fusion.attention[0]
        logits = torch.einsum("oc,bchw->bohw", attention.weight.detach().double()[:, :, 0, 0],
                              torch.cat([x, deeper], dim=1)) \
            + attention.bias.detach().double().view(1, -1, 1, 1)
        gates = 1 / (1 + torch.exp(-logits))
        x = x * gates[:, :1] + deeper * gates[:, 1:]
    x = nearest_resize(x, *output_size)
    out = torch.nn.functional.conv2d(x, fusion.output[0].weight.detach().double(), padding=1)
    return batchnorm_training_reference(out, fusion.output[1]), x


@pytest.mark.parametrize("teacher_shapes, epoch, factor",
                         [(TEACHER, 30, 1.0), (LARGER_TEACHER, 30, 1.0), (TEACHER, 4, 5 / 20)],
                         ids=["same size", "larger", "warm-up"])
def test_reviewkd_equals_its_formula_with_gradients(teacher_shapes, epoch, factor):
    student, teacher = random_features(54, STUDENT), random_features(55, teacher_shapes)
    student = signed_pooled(student, 4)
    distiller = build("reviewkd", teacher=teacher_shapes)
    labels = labels_for(56)
    terms, leaves = run(distiller, student, teacher, BatchContext(labels=labels, epoch=epoch))
    inputs = [float64_leaf(map_) for map_ in student.stages] + [float64_leaf(student.pooled)]
    levels = inputs[:3] + [inputs[3][:, :, None, None]]
    targets = [t.double() for t in teacher.preact] + [teacher.pooled.double()[:, :, None, None]]
    expected, deeper = 0, None
    for level in (3, 2, 1, 0):     # deepest first, each fusing the deeper result
        output, deeper = abf_reference(distiller.fusions[level], levels[level], deeper,
                                       targets[level].shape[-2:])
        expected = expected + hcl_reference(output, targets[level])
    expected = 5.0 * factor * expected
    expected.backward()
    assert set(terms) == {"reviewkd"} and close(terms["reviewkd"], expected)
    for leaf, reference in zip([*leaves.stages, leaves.pooled], inputs):
        assert_gradients_match(leaf.grad, reference.grad)
    assert all(leaf.grad is None for leaf in leaves.preact)   # student after its ReLU
    # widths: in = student level, mid = min(512, student pooled), out = teacher level
    assert [f.reduce[0].weight.shape[:2] for f in distiller.fusions] == \
        [(64, 16), (64, 32), (64, 64), (64, 64)]
    assert [f.output[0].weight.shape[0] for f in distiller.fusions] == [32, 64, 128, 128]
    assert [f.attention is None for f in distiller.fusions] == [False, False, False, True]


def test_reviewkd_student_preact_option_reads_the_pre_relu_maps():
    student, teacher = random_features(57, STUDENT), random_features(58, TEACHER)
    terms, leaves = run(build("reviewkd", student_preact=True), student, teacher)
    assert all(leaf.grad is not None for leaf in leaves.preact)
    assert all(leaf.grad is None for leaf in leaves.stages)
    post = build("reviewkd")(student, teacher, BatchContext(labels=labels_for(0)))
    assert not close(post["reviewkd"], terms["reviewkd"])


def test_reviewkd_hcl_equals_torchdistill(torchdistill_losses):
    """torchdistill's HierarchicalContextLoss (after the authors' ImageNet code) is HCL of
    one level; kdlab's sum over levels equals the sum of torchdistill's per level."""
    from kdlab.distill.reviewkd import hierarchical_context_loss

    generator = torch.Generator().manual_seed(59)
    for side in (8, 4, 2, 1):
        fused = torch.randn(BATCH, 5, side, side, generator=generator)
        target = torch.randn(BATCH, 5, side, side, generator=generator)
        loss = torchdistill_losses.HierarchicalContextLoss("s", "output", "t", "output")
        theirs = loss({"s": {"output": (fused, None)}}, {"t": {"output": target}})
        assert close(hierarchical_context_loss(fused, target), theirs)
        assert close(hierarchical_context_loss(fused, target), hcl_reference(fused.double(),
                                                                             target.double()))
