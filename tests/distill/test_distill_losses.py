"""The six distillation losses against independent computations of their formulas (numpy,
explicit loops, other algebraic routes), their zeros, finite gradients in degenerate batches,
the registry, the FitNets regressor's shape choice and factor transfer's stage 1."""

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdlab.distill import (METHOD_NAMES, BatchContext, Preempted, PretrainContext, build_distiller,
                           method_class, resolve_options)
from kdlab.distill.factor_transfer import (PARAPHRASER_CHECKPOINT_FILE, PARAPHRASER_FILE,
                                          settings_key)
from kdlab.distill.fitnets import regressor_conv
from kdlab.run.errors import UserError
from kdlab.models import Features, build_model, describe_features
from kdlab.run.state_files import atomic_torch_save

RELATIVE = 1e-5
BATCH = 6
IMAGE = 8  # maps 8x8, 4x4, 2x2: small enough for explicit loops
SHAPES = describe_features("ResNet8", 10, IMAGE)
TEACHER_MODEL = build_model("ResNet8", 10)


def as_features(tensors) -> Features:
    """Features from ``[*stages, logits]`` (pre-activations = the stages themselves, pooled =
    the last stage's spatial mean; ``None`` entries stay None)."""
    *stages, logits = list(tensors)
    last = stages[-1]
    return Features(stages, list(stages), None if last is None else last.mean(dim=(2, 3)), logits)


def random_outputs(seed: int, batch: int = BATCH, shapes=SHAPES, relu=True):
    """Fake model outputs [layer1, layer2, layer3, logits] (post-ReLU maps like the ResNets)."""
    generator = torch.Generator().manual_seed(seed)
    outputs = []
    for shape in [*shapes.stages, (shapes.classes,)]:
        tensor = torch.randn(batch, *shape, generator=generator)
        outputs.append(tensor.relu() if relu and len(shape) == 3 else tensor)
    return as_features(outputs)


# A batch of BATCH samples of a 40-sample training set of 10 classes (CRD reads the indices).
TRAIN_LABELS = torch.arange(40) % 10
CONTEXT = BatchContext(torch.arange(BATCH) % 10, torch.arange(BATCH) * 3)


def build(name, **options):
    distiller = build_distiller(name, SHAPES, SHAPES, options)
    distiller.attach_training_set(TRAIN_LABELS)
    distiller.attach_teacher(TEACHER_MODEL)  # the teacher SHAPES describes (OFD's margins)
    if name == "factor_transfer":
        distiller.paraphraser_ready = True  # stage 1 is tested on its own below
    return distiller


def close(actual: torch.Tensor, expected: float) -> bool:
    return math.isclose(float(actual.detach()), float(expected), rel_tol=RELATIVE, abs_tol=1e-12)


def huber(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def as64(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().double().numpy()


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm; an all-zero row stays zero (no direction to keep)."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


# ---------------------------------------------------------------- equals an independent computation

@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_logit_equals_kl_by_loops(temperature):
    student, teacher = random_outputs(1), random_outputs(2)
    value = build("logit", temperature=temperature, weight=0.7)(student, teacher, CONTEXT)["kl"]
    s, t = as64(student[3]) / temperature, as64(teacher[3]) / temperature
    total = 0.0
    for row in range(BATCH):
        p_t = np.exp(t[row] - t[row].max()) / np.exp(t[row] - t[row].max()).sum()
        log_p_s = s[row] - s[row].max() - np.log(np.exp(s[row] - s[row].max()).sum())
        total += sum(p * (math.log(p) - q) for p, q in zip(p_t, log_p_s))
    assert close(value, 0.7 * temperature ** 2 * total / BATCH)


def test_fitnets_equals_unfolded_regression():
    student, teacher = random_outputs(3), random_outputs(4)
    distiller = build("fitnets", weight=100.0)  # layer1 [16,8,8] -> layer2 [32,4,4]
    value = distiller(student, teacher, CONTEXT)["hint"]
    conv, bn = distiller.regressor[0], distiller.regressor[1]
    # The strided 3x3 conv as explicit patches (zero padding 1, stride 2) times the weights.
    x = np.pad(as64(student[0]), ((0, 0), (0, 0), (1, 1), (1, 1)))
    weight, bias = as64(conv.weight), as64(conv.bias)
    out = np.zeros((BATCH, 32, 4, 4))
    for i, j in itertools.product(range(4), range(4)):
        patch = x[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3]
        out[:, :, i, j] = np.einsum("bckl,ockl->bo", patch, weight) + bias
    # Training-mode BatchNorm: batch statistics, biased variance.
    mean = out.mean(axis=(0, 2, 3), keepdims=True)
    var = out.var(axis=(0, 2, 3), keepdims=True)
    normed = (out - mean) / np.sqrt(var + bn.eps)
    normed = normed * as64(bn.weight)[None, :, None, None] + as64(bn.bias)[None, :, None, None]
    regressed = np.maximum(normed, 0)
    expected = 100.0 * ((regressed - as64(teacher[1])) ** 2).sum() / regressed.size
    assert close(value, expected)


def test_attention_transfer_equals_loops():
    student, teacher = random_outputs(5), random_outputs(6)
    value = build("attention_transfer")(student, teacher, CONTEXT)["attention"]
    expected = 0.0
    for index in range(3):
        s, t = as64(student[index]), as64(teacher[index])
        height_width = s.shape[2] * s.shape[3]
        squared_sum = 0.0
        for row in range(BATCH):
            q_s = (s[row] ** 2).mean(axis=0).ravel()
            q_t = (t[row] ** 2).mean(axis=0).ravel()
            q_s, q_t = q_s / np.linalg.norm(q_s), q_t / np.linalg.norm(q_t)
            squared_sum += ((q_s - q_t) ** 2).sum()
        expected += squared_sum / (BATCH * height_width)
    assert close(value, 1000.0 * expected)


def test_attention_transfer_p_and_layers_options():
    student, teacher = random_outputs(7), random_outputs(8)
    value = build("attention_transfer", p=4.0, layers="layer3", weight=1.0)(
        student, teacher, CONTEXT)["attention"]
    q_s = as64(student[2]).__pow__(4).mean(axis=1).reshape(BATCH, -1)
    q_t = as64(teacher[2]).__pow__(4).mean(axis=1).reshape(BATCH, -1)
    q_s /= np.linalg.norm(q_s, axis=1, keepdims=True)
    q_t /= np.linalg.norm(q_t, axis=1, keepdims=True)
    assert close(value, ((q_s - q_t) ** 2).mean())


def test_nst_equals_second_moment_route():
    """mean_{b,i,j} (x_bi·y_bj)² = mean_b <M_x^b, M_y^b>_F with M^b = (1/C) Σ_i x_bi x_biᵀ, so the
    squared MMD is mean_b ‖M_s^b − M_t^b‖_F²: a different route to the same number."""
    student, teacher = random_outputs(9), random_outputs(10)
    value = build("nst")(student, teacher, CONTEXT)["nst"]
    expected = 0.0
    for index in range(3):
        per_sample = []
        for row in range(BATCH):
            moments = []
            for maps in (as64(student[index][row]), as64(teacher[index][row])):
                vectors = unit_rows(maps.reshape(maps.shape[0], -1))
                moments.append(vectors.T @ vectors / vectors.shape[0])
            per_sample.append(((moments[0] - moments[1]) ** 2).sum())
        expected += np.mean(per_sample)
    assert close(value, 50.0 * expected)


def _rkd_reference(student: np.ndarray, teacher: np.ndarray, angle: str):
    """(distance loss, angle loss) by explicit loops over pairs and triplets."""
    batch = len(student)

    def distances(points):
        d = np.zeros((batch, batch))
        for i, j in itertools.product(range(batch), repeat=2):
            if i != j:
                d[i, j] = math.dist(points[i], points[j])
        return d / (d.sum() / (batch * (batch - 1)))

    def triplets(points):
        a = np.zeros((batch, batch, batch))
        for j, i, k in itertools.product(range(batch), repeat=3):
            u, v = points[i] - points[j], points[k] - points[j]
            if np.linalg.norm(u) > 0 and np.linalg.norm(v) > 0:
                a[j, i, k] = u @ v / (np.linalg.norm(u) * np.linalg.norm(v))
        return a

    def cosines(points):
        return np.array([[p @ q / (np.linalg.norm(p) * np.linalg.norm(q)) for q in points]
                         for p in points])

    d_s, d_t = distances(student), distances(teacher)
    distance = np.mean([huber(x - y) for x, y in zip(d_s.ravel(), d_t.ravel())])
    relation = triplets if angle == "triplet" else cosines
    a_s, a_t = relation(student), relation(teacher)
    angle_loss = np.mean([huber(x - y) for x, y in zip(a_s.ravel(), a_t.ravel())])
    return distance, angle_loss


@pytest.mark.parametrize("angle", ["triplet", "pairwise_cosine"])
def test_rkd_equals_loops(angle):
    student, teacher = random_outputs(11), random_outputs(12)
    # Scale the student so that some Huber entries fall in the linear (|x| > 1) branch.
    student = student.map(lambda output: output * 3)
    terms = build("rkd", angle=angle, distance_weight=1.5, angle_weight=2.0, weight=2.0)(
        student, teacher, CONTEXT)
    distance, angle_loss = _rkd_reference(as64(student[2]).mean(axis=(2, 3)),
                                          as64(teacher[2]).mean(axis=(2, 3)), angle)
    assert close(terms["rkd_distance"], 3.0 * distance)
    assert close(terms["rkd_angle"], 4.0 * angle_loss)


def test_rkd_default_weights_are_the_earlier_rounds():
    options = resolve_options("rkd", {})
    assert (options["distance_weight"], options["angle_weight"], options["angle"]) == (
        1.0, 2.0, "triplet")


def test_factor_transfer_equals_normalised_l1_mean():
    student, teacher = random_outputs(13), random_outputs(14)
    distiller = build("factor_transfer")
    value = distiller(student, teacher, CONTEXT)["factor"]
    with torch.no_grad():
        factor_s = as64(distiller.translator(student[2])).reshape(BATCH, -1)
        factor_t = as64(distiller.paraphraser.encoder(teacher[2])).reshape(BATCH, -1)
    total = 0.0
    for row in range(BATCH):
        total += np.abs(factor_s[row] / np.linalg.norm(factor_s[row])
                        - factor_t[row] / np.linalg.norm(factor_t[row])).sum()
    # The FT authors' nn.L1Loss: mean over all B·F·H·W entries.
    assert close(value, 500.0 * total / factor_s.size)
    assert distiller.factor_channels == 32  # rate 0.5 of the teacher's 64 layer3 channels


# ---------------------------------------------------------------- zero where student and teacher agree

def test_zero_when_student_equals_teacher():
    outputs = random_outputs(15)
    copies = outputs.map(torch.clone)
    assert float(build("logit")(outputs, copies, CONTEXT)["kl"]) == pytest.approx(0, abs=1e-7)
    assert float(build("attention_transfer")(outputs, copies, CONTEXT)["attention"]) == 0
    assert float(build("nst")(outputs, copies, CONTEXT)["nst"]) == pytest.approx(0, abs=1e-5)
    terms = build("rkd")(outputs, copies, CONTEXT)
    assert float(terms["rkd_distance"]) == 0 and float(terms["rkd_angle"]) == 0


def test_fitnets_zero_with_identity_regressor():
    outputs = random_outputs(16)
    distiller = build("fitnets", hint_layer="layer1")  # same size: a 1x1 conv
    conv, bn = distiller.regressor[0], distiller.regressor[1]
    with torch.no_grad():
        conv.weight.copy_(torch.eye(16).view(16, 16, 1, 1))
        conv.bias.zero_()
    bn.eps = 0.0
    distiller.eval()  # running statistics 0 / 1: BN is the identity
    value = distiller(outputs, outputs.map(torch.clone), CONTEXT)["hint"]
    assert float(value.detach()) == 0


def test_factor_transfer_zero_when_translator_is_the_encoder():
    outputs = random_outputs(17)
    distiller = build("factor_transfer")
    distiller.translator.load_state_dict(distiller.paraphraser.encoder.state_dict())
    distiller.eval()  # the translator's BN on running statistics, like the frozen encoder's
    value = distiller(outputs, outputs.map(torch.clone), CONTEXT)["factor"]
    assert float(value.detach()) == pytest.approx(0, abs=1e-6)


# ---------------------------------------------------------------- finite gradients in degenerate batches

def _degenerate_batches():
    base = random_outputs(18)
    duplicates = as_features([torch.cat([output[:3], output[:3]]) for output in base])
    identical = as_features([output[:1].expand_as(output).clone() for output in base])
    zeros = as_features([torch.zeros_like(output) for output in base])
    return {
        "duplicates": (duplicates, as_features([torch.cat([o[:3], o[:3]])
                                                for o in random_outputs(19)])),
        "identical embeddings": (identical, as_features([o[:1].expand_as(o).clone()
                                                         for o in random_outputs(20)])),
        "identical student only": (identical, random_outputs(21)),
        "all-zero maps": (zeros, as_features([torch.zeros_like(o) for o in base])),
        "all-zero student": (zeros, random_outputs(22)),
        "all-zero teacher": (base, as_features([torch.zeros_like(o) for o in base])),
    }


@pytest.mark.parametrize("method", METHOD_NAMES)
@pytest.mark.parametrize("precision", ["float32", "bf16 autocast"])
def test_gradients_finite_in_degenerate_batches(method, precision):
    for case, (student, teacher) in _degenerate_batches().items():
        distiller = build(method)
        leaves = [output.clone().requires_grad_(True) for output in student]
        if precision == "float32":
            terms = distiller(as_features(leaves), teacher, CONTEXT)
        else:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                terms = distiller(as_features([leaf.bfloat16() for leaf in leaves]),
                                  teacher.map(lambda t: t.bfloat16()), CONTEXT)
        assert all(term.dtype == torch.float32 for term in terms.values()), case
        total = sum(terms.values())
        assert torch.isfinite(total), (case, terms)
        total.backward()
        gradients = [leaf.grad for leaf in leaves if leaf.grad is not None]
        gradients += [p.grad for p in distiller.parameters() if p.grad is not None]
        assert gradients or float(total) == 0, case
        assert all(torch.isfinite(g).all() for g in gradients), case


def test_rkd_exact_duplicates_pass_no_gradient_through_their_zero_difference():
    """A student pair that coincides has no angle direction: its triplets contribute 0 and
    no gradient (F.normalize would divide by 1e-12 and pass ~1e12 back)."""
    student = torch.randn(4, 8)
    student = torch.cat([student, student[:1]]).requires_grad_(True)  # row 4 duplicates row 0
    teacher = torch.randn(5, 8)
    distiller = build("rkd", distance_weight=0.0)
    terms = distiller(as_features([None, None, student[:, :, None, None], torch.zeros(5, 10)]),
                      as_features([None, None, teacher[:, :, None, None], torch.zeros(5, 10)]),
                      None)
    terms["rkd_angle"].backward()
    assert student.grad.abs().max() < 1e3


# ---------------------------------------------------------------- registry, options, citations

def test_every_method_registered_with_documented_defaults():
    for name in METHOD_NAMES:
        cls = method_class(name)
        assert cls.name == name and "weight" in cls.defaults and cls.citation
        assert set(build(name).forward(random_outputs(23), random_outputs(24), CONTEXT)) != set()


def test_unknown_method_and_option_are_user_errors():
    with pytest.raises(UserError, match="unknown distillation method 'no_such_method'"):
        method_class("no_such_method")
    with pytest.raises(UserError, match="unknown option.*beta.*for method 'nst'"):
        resolve_options("nst", {"beta": "3"})


def test_option_values_are_converted_and_checked():
    options = resolve_options("fitnets", {"weight": "25", "regressor_relu": "false"})
    assert options["weight"] == 25.0 and isinstance(options["weight"], float)
    assert options["regressor_relu"] is False
    assert resolve_options("factor_transfer", {"paraphraser_epochs": "7"})["paraphraser_epochs"] == 7
    with pytest.raises(UserError, match="expected float"):
        resolve_options("logit", {"temperature": "hot"})
    with pytest.raises(UserError, match="expected true or false"):
        resolve_options("factor_transfer", {"batch_norm": "maybe"})


@pytest.mark.parametrize("name, options, message", [
    ("fitnets", {"hint_layer": "layer4"}, "hint_layer='layer4'.*expected one of layer1"),
    ("rkd", {"angle": "cosine"}, "angle='cosine'.*expected one of triplet, pairwise_cosine"),
    ("attention_transfer", {"layers": "layer1,layer1"}, "layers='layer1,layer1'"),
    ("attention_transfer", {"p": "0.5"}, "p=0.5.*expected a number >= 1"),
    ("logit", {"temperature": "0"}, "temperature=0.0.*positive"),
    ("factor_transfer", {"rate": "0"}, "rate=0.0.*positive"),
])
def test_bad_option_values_are_user_errors(name, options, message):
    with pytest.raises(UserError, match=message):
        build_distiller(name, SHAPES, SHAPES, resolve_options(name, options))


# ---------------------------------------------------------------- FitNets regressor shapes

def _conv_of(student_shape, teacher_shape):
    conv = regressor_conv(student_shape, teacher_shape)
    out = conv(torch.zeros(2, *student_shape))
    assert tuple(out.shape[1:]) == tuple(teacher_shape)
    return conv


def test_fitnets_stride_from_spatial_ratio():
    cifar = describe_features("ResNet8", 10, 32).stages
    conv = _conv_of(cifar[0], cifar[1])  # layer1 -> layer2: 32x32 -> 16x16
    assert (type(conv).__name__, conv.kernel_size, conv.stride, conv.padding) == (
        "Conv2d", (3, 3), (2, 2), (1, 1))
    conv = _conv_of(cifar[0], (16, 32, 32))  # layer1 -> layer1: same size
    assert (conv.kernel_size, conv.stride) == ((1, 1), (1, 1))
    conv = _conv_of(cifar[0], cifar[2])  # layer1 -> layer3: 32 -> 8
    assert conv.stride == (4, 4)
    odd = describe_features("ResNet8", 10, 7).stages  # 7 -> 4 -> 2, like the ResNets' own strides
    assert _conv_of(odd[0], odd[1]).stride == (2, 2)
    conv = _conv_of(cifar[1], cifar[0])  # student map at half the hint's size
    assert type(conv).__name__ == "ConvTranspose2d"
    with pytest.raises(UserError, match="cannot regress a 16x16 guided map onto a 5x5 hint"):
        regressor_conv((16, 16, 16), (32, 5, 5))
    with pytest.raises(UserError, match="cannot regress a 4x4 guided map onto a 16x16 hint"):
        regressor_conv((16, 4, 4), (32, 16, 16))


def test_fitnets_regressor_is_a_trainable_submodule():
    distiller = build("fitnets")
    names = {name for name, _ in distiller.named_parameters()}
    assert {"regressor.0.weight", "regressor.1.weight"} <= names
    assert "regressor.1.running_mean" in distiller.state_dict()


# ---------------------------------------------------------------- factor transfer stage 1

class _Context:
    """A PretrainContext over a tiny deterministic data stream; counts batches served."""

    def __init__(self, run_dir, stop_after=None, serve=True, teacher_seed=0, batch_size=4,
                 teacher_dir=None):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(teacher_seed)  # the same teacher in every context
            self.teacher = build_model("ResNet8", 10).eval()
        self.teacher.requires_grad_(False)
        self.batches_served = 0
        self.stop_after = stop_after
        self.serve = serve
        self.context = PretrainContext(
            teacher=self.teacher, train_batches=self.batches, device=torch.device("cpu"),
            run_dir=run_dir, seed=3, should_stop=self.should_stop, log=lambda line: None,
            save=lambda path, obj: atomic_torch_save(obj, path), batch_size=batch_size,
            teacher_dir=teacher_dir)
        self.batch_size = batch_size
        self.stop_checks = 0

    def batches(self, epoch):
        assert self.serve, "stage 1 should have been skipped"
        generator = torch.Generator().manual_seed(100 + epoch)
        for _ in range(2):
            self.batches_served += 1
            yield (torch.randn(self.batch_size, 3, IMAGE, IMAGE, generator=generator),
                   torch.zeros(self.batch_size).long())

    def should_stop(self):
        self.stop_checks += 1
        return self.stop_after is not None and self.batches_served >= self.stop_after


def _paraphraser_weights(distiller):
    return {key: value.clone() for key, value in distiller.paraphraser.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def test_paraphraser_pretrain_writes_file_and_is_skipped_when_present(tmp_path):
    distiller = build_distiller("factor_transfer", SHAPES, SHAPES,
                                resolve_options("factor_transfer", {"paraphraser_epochs": 2}))
    with pytest.raises(RuntimeError, match="pretrain"):
        distiller(random_outputs(25), random_outputs(26), CONTEXT)
    before = _paraphraser_weights(distiller)
    fake = _Context(tmp_path)
    rng_before = torch.get_rng_state()
    distiller.pretrain(fake.context)
    assert torch.equal(torch.get_rng_state(), rng_before)  # stage 1 leaves the global RNG alone
    assert fake.batches_served == 4
    assert (tmp_path / PARAPHRASER_FILE).exists()
    assert torch.load(tmp_path / PARAPHRASER_CHECKPOINT_FILE)["epoch"] == 2
    trained = _paraphraser_weights(distiller)
    assert not _same(trained, before)
    assert _same(torch.load(tmp_path / PARAPHRASER_FILE)["weights"], trained)
    assert all(not p.requires_grad for p in distiller.paraphraser.parameters())

    again = build_distiller("factor_transfer", SHAPES, SHAPES,
                            resolve_options("factor_transfer", {"paraphraser_epochs": 2}))
    again.pretrain(_Context(tmp_path, serve=False).context)
    assert again.paraphraser_ready and _same(_paraphraser_weights(again), trained)


def test_paraphraser_pretrain_resumes_after_a_stop(tmp_path):
    options = resolve_options("factor_transfer", {"paraphraser_epochs": 3})
    uninterrupted = build_distiller("factor_transfer", SHAPES, SHAPES, options)
    uninterrupted.pretrain(_Context(tmp_path / "reference").context)

    run_dir = tmp_path / "stopped"
    run_dir.mkdir()
    stopped = build_distiller("factor_transfer", SHAPES, SHAPES, options)
    with pytest.raises(Preempted):
        stopped.pretrain(_Context(run_dir, stop_after=3).context)  # inside epoch 2
    assert torch.load(run_dir / PARAPHRASER_CHECKPOINT_FILE)["epoch"] == 1
    assert not (run_dir / PARAPHRASER_FILE).exists() and not stopped.paraphraser_ready

    resumed = build_distiller("factor_transfer", SHAPES, SHAPES, options)
    fake = _Context(run_dir)
    resumed.pretrain(fake.context)
    assert fake.batches_served == 4  # epochs 2 and 3 only
    assert _same(_paraphraser_weights(resumed), _paraphraser_weights(uninterrupted))


def test_paraphraser_with_other_settings_is_retrained(tmp_path):
    build_distiller("factor_transfer", SHAPES, SHAPES, resolve_options(
        "factor_transfer", {"paraphraser_epochs": 1})).pretrain(_Context(tmp_path).context)
    distiller = build_distiller("factor_transfer", SHAPES, SHAPES, resolve_options(
        "factor_transfer", {"paraphraser_epochs": 2}))
    fake = _Context(tmp_path)
    distiller.pretrain(fake.context)
    assert fake.batches_served == 4
    assert torch.load(tmp_path / PARAPHRASER_FILE)["settings"]["paraphraser_epochs"] == 2
    # A teacher retrained since (other weights) makes the stored paraphraser stale too.
    fake = _Context(tmp_path, teacher_seed=1)
    distiller.pretrain(fake.context)
    assert fake.batches_served == 4
    # So does another batch stream (a changed batch size keeps the run directory).
    fake = _Context(tmp_path, teacher_seed=1, batch_size=5)
    distiller.pretrain(fake.context)
    assert fake.batches_served == 4
    assert torch.load(tmp_path / PARAPHRASER_FILE)["settings"]["batch_size"] == 5


def test_one_paraphraser_per_teacher_is_shared_by_its_students(tmp_path):
    options = resolve_options("factor_transfer", {"paraphraser_epochs": 2})
    teacher_dir = tmp_path / "teacher"
    solo = build_distiller("factor_transfer", SHAPES, SHAPES, options)
    solo.pretrain(_Context(tmp_path / "solo").context)  # no sharing: today's per-run stage 1

    first = build_distiller("factor_transfer", SHAPES, SHAPES, options)
    fake = _Context(tmp_path / "alpha_0.5", teacher_dir=teacher_dir)
    first.pretrain(fake.context)
    assert fake.batches_served == 4
    shared = list((teacher_dir / "paraphrasers").glob("paraphraser-*.pth"))
    assert len(shared) == 1
    second = build_distiller("factor_transfer", SHAPES, SHAPES, options)
    second.pretrain(_Context(tmp_path / "alpha_0.9", teacher_dir=teacher_dir, serve=False).context)
    assert second.paraphraser_ready
    assert _same(_paraphraser_weights(second), _paraphraser_weights(solo))
    assert _same(_paraphraser_weights(first), _paraphraser_weights(solo))
    assert (tmp_path / "alpha_0.9" / PARAPHRASER_FILE).exists()


def test_a_student_waits_for_the_teachers_paraphraser_and_stops_on_request(tmp_path):
    import fcntl

    options = resolve_options("factor_transfer", {"paraphraser_epochs": 1})
    teacher_dir = tmp_path / "teacher"
    (teacher_dir / "paraphrasers").mkdir(parents=True)
    distiller = build_distiller("factor_transfer", SHAPES, SHAPES, options)
    fake = _Context(tmp_path / "student", teacher_dir=teacher_dir, stop_after=0)
    key_path = (teacher_dir / "paraphrasers" /
                f"paraphraser-{settings_key(distiller.stage_settings(fake.context))}.lock")
    with open(key_path, "a+") as holder:  # another job trains it now
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX)
        with pytest.raises(Preempted, match="waiting"):
            distiller.pretrain(fake.context)
    assert fake.batches_served == 0 and fake.stop_checks >= 1


def test_frozen_paraphraser_stays_in_eval_mode():
    distiller = build("factor_transfer", batch_norm=True)
    distiller.train()
    assert distiller.translator.training and not distiller.paraphraser.training
    assert all(not module.training for module in distiller.paraphraser.modules())
    running_mean = distiller.paraphraser.encoder[1].running_mean.clone()
    distiller(random_outputs(27), random_outputs(28), CONTEXT)
    assert torch.equal(distiller.paraphraser.encoder[1].running_mean, running_mean)
