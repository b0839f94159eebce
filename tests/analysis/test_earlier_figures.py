"""The earlier research code's figures and its channel-space principal angle, beside
kdlab's own (issue 12, item 9): checked against independent computations and drawn from
synthetic representations with known structure."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image
from scipy.linalg import subspace_angles

from kdlab.analysis import earlier_figures, earlier_metrics, metrics
from builders import write_local_study

LAYERS = ("layer1", "layer2", "layer3")
WIDTHS = {"layer1": 16, "layer2": 32, "layer3": 64}


def _structured(n=600, d=16, strong=3, seed=0):
    """Features [n, d] whose variance lies mostly in the first ``strong`` channels."""
    rng = np.random.default_rng(seed)
    scale = np.full(d, 0.05)
    scale[:strong] = [5.0, 3.0, 2.0][:strong]
    return rng.normal(size=(n, d)) * scale + rng.normal(size=d)


def _reference_channel_mean(a, b, variance=0.95):
    """The channel-space angle computed another way: eigenvectors of np.cov by eigh, k by
    the cumulative share, angles by scipy."""
    def basis(x):
        values, vectors = np.linalg.eigh(np.cov(x, rowvar=False))
        order = np.argsort(values)[::-1]
        values, vectors = np.clip(values[order], 0, None), vectors[:, order]
        share = np.cumsum(values) / values.sum()
        return vectors, int(np.searchsorted(share, variance - 1e-12) + 1)

    vectors_a, k_a = basis(a)
    vectors_b, k_b = basis(b)
    k = max(k_a, k_b)
    return float(np.degrees(subspace_angles(vectors_a[:, :k], vectors_b[:, :k])).mean()), k


def test_channel_angle_matches_an_independent_computation():
    rng = np.random.default_rng(3)
    rotation = np.linalg.qr(rng.normal(size=(12, 12)))[0]
    a = (rng.normal(size=(500, 12)) * np.geomspace(4.0, 0.1, 12)) @ rotation
    b = a @ np.linalg.qr(np.eye(12) + 0.4 * rng.normal(size=(12, 12)))[0] \
        + 0.3 * rng.normal(size=(500, 12))
    expected, k = _reference_channel_mean(a, b)
    assert 1 < k < 12
    angles = earlier_metrics.principal_angles_channel(a, b)
    assert angles.shape == (k,) and np.all(np.diff(angles) >= 0)
    assert earlier_metrics.principal_angle_channel_mean(a, b) == pytest.approx(expected,
                                                                               abs=1e-6)
    assert 5.0 < expected < 85.0    # a case with neither trivial answer
    assert earlier_metrics.principal_angle_channel_mean(a, a) == pytest.approx(0.0, abs=1e-6)


def test_channel_angle_is_not_invariant_to_permuting_channels_but_kdlab_angle_is():
    teacher = _structured()
    # the same representation with its channels renumbered: what the network computes is
    # unchanged, the strong channels 0..2 now sit at 13..15
    permutation = np.r_[13, 14, 15, 3:13, 0, 1, 2]
    student = teacher[:, permutation]
    assert earlier_metrics.principal_angle_channel_mean(teacher, student) > 80.0
    assert earlier_metrics.principal_angle_channel_mean(teacher, teacher) == pytest.approx(
        0.0, abs=1e-6)
    sample_space = np.degrees(metrics.principal_angles(teacher, student, 3))
    assert np.max(sample_space) == pytest.approx(0.0, abs=1e-4)


def test_channel_angle_refuses_unlike_channel_counts_and_constant_input():
    with pytest.raises(ValueError, match="same channel count: 16 against 32"):
        earlier_metrics.principal_angle_channel_mean(_structured(), _structured(d=32))
    with pytest.raises(ValueError, match="constant"):
        earlier_metrics.principal_angle_channel_mean(_structured(), np.ones((600, 16)))


def test_matched_correlation_puts_the_best_matching_on_the_diagonal():
    rng = np.random.default_rng(1)
    teacher = rng.laplace(size=(800, 5))
    truth = np.array([3, 0, 4, 1, 2])           # student component j = teacher truth[j]
    noise = np.array([0.1, 0.4, 0.8, 1.5, 3.0])
    student = np.empty_like(teacher)
    for j, source in enumerate(truth):
        student[:, j] = (-1) ** j * teacher[:, source] + noise[j] * rng.normal(size=800)
    matrix, teacher_order, student_order = earlier_figures.matched_correlation(teacher, student)
    # the matching found is the planted one, strongest pair first
    assert [truth[j] for j in student_order] == list(teacher_order)
    assert list(student_order) == [0, 1, 2, 3, 4]
    diagonal = np.diag(matrix)
    assert np.all(np.diff(diagonal) <= 0) and diagonal[0] > 0.99
    # independent: |r| by np.corrcoef, best assignment by trying every permutation
    r = np.abs(np.corrcoef(teacher.T, student.T)[:5, 5:])
    best = max(sum(r[i, p[i]] for i in range(5)) for p in itertools.permutations(range(5)))
    assert diagonal.sum() == pytest.approx(best)
    np.testing.assert_allclose(matrix, r[np.ix_(teacher_order, student_order)], atol=1e-12)


def test_matched_correlation_with_unequal_component_counts():
    rng = np.random.default_rng(2)
    teacher = rng.laplace(size=(300, 4))
    student = np.c_[teacher[:, [2, 0]], rng.laplace(size=(300, 1))]
    matrix, teacher_order, student_order = earlier_figures.matched_correlation(teacher, student)
    assert matrix.shape == (4, 3)
    assert sorted(teacher_order) == [0, 1, 2, 3] and sorted(student_order) == [0, 1, 2]
    assert list(teacher_order[:2]) in ([2, 0], [0, 2])
    assert np.diag(matrix)[:2] == pytest.approx([1.0, 1.0])


def test_scatter_classes_and_representative_run():
    assert earlier_figures.scatter_classes(10) == list(range(10))
    assert earlier_figures.scatter_classes(100) == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90]
    assert earlier_figures.scatter_classes(200) == list(range(0, 200, 10))
    assert earlier_figures.representative_run({0: 70.0, 1: 71.0, 2: 90.0}) == 1
    assert earlier_figures.representative_run({(0.5, 1): 60.0, (0.5, 0): 60.0}) == (0.5, 0)
    with pytest.raises(ValueError):
        earlier_figures.representative_run({})


def test_teacher_basis_projection_is_the_teachers_pca():
    from sklearn.decomposition import PCA

    teacher = _structured(d=8, seed=4)
    scores = earlier_figures.teacher_basis_projection(teacher, teacher)
    reference = PCA(n_components=2).fit_transform(teacher)
    for column in range(2):   # equal up to each direction's sign
        assert min(np.abs(scores[:, column] - reference[:, column]).max(),
                   np.abs(scores[:, column] + reference[:, column]).max()) < 1e-8
    student = _structured(d=8, seed=5)
    projected = earlier_figures.teacher_basis_projection(teacher, student)
    centred = student - teacher.mean(axis=0)
    pca = PCA(n_components=2).fit(teacher)
    np.testing.assert_allclose(np.abs(projected), np.abs(centred @ pca.components_.T),
                               atol=1e-8)
    with pytest.raises(ValueError, match="teacher's channel count"):
        earlier_figures.teacher_basis_projection(teacher, _structured(d=16))


# ---- the figures, from synthetic representations ---------------------------------------------

def _representations(classes=100, n=1500, seed=0):
    """Teacher and two students: per layer, six shared non-Gaussian sources (plus a class
    signal) mixed into the layer's channels by each model's own matrix, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=n)
    sources = np.c_[rng.laplace(size=(n, 6)), labels / classes * 4.0]
    models = {}
    for name, noise in (("teacher", 0.05), ("logit", 0.3), ("rkd", 1.5)):
        models[name] = {layer: sources @ rng.normal(size=(7, width))
                        + noise * rng.normal(size=(n, width))
                        for layer, width in WIDTHS.items()}
    return models, labels


def _png(path, min_width=400):
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] >= min_width and image.size[1] >= 250
        return image.size


def test_earlier_figures_draw_from_representations(tmp_path):
    models, labels = _representations()
    teacher = models["teacher"]
    panels = {}
    fits = {layer: metrics.fit_ica(teacher[layer], 6, max_iter=400) for layer in LAYERS}
    for method in ("logit", "rkd"):
        panels[f"{method} α=0.5 seed 0"] = {
            layer: (fits[layer].sources(teacher[layer]),
                    metrics.fit_ica(models[method][layer], 6, max_iter=400).sources(
                        models[method][layer]))
            for layer in LAYERS}
    ica = earlier_figures.plot_ica_correlation(
        panels, tmp_path / earlier_figures.ICA_CORRELATION_FILE,
        title="Cifar100 · ICA |r|, teacher vs student")
    width, height = _png(ica, 800)
    assert height > 450   # two rows of panels
    # the shared sources are found again: the closer student matches better
    logit = earlier_figures.matched_correlation(*panels["logit α=0.5 seed 0"]["layer3"])[0]
    rkd = earlier_figures.matched_correlation(*panels["rkd α=0.5 seed 0"]["layer3"])[0]
    assert np.diag(logit).mean() > 0.9 and np.diag(logit).mean() > np.diag(rkd).mean()

    matrices = [earlier_figures.teacher_self_cka([teacher[layer] for layer in LAYERS])]
    assert np.diag(matrices[0]) == pytest.approx(np.ones(3))
    np.testing.assert_allclose(matrices[0], matrices[0].T, atol=1e-12)
    assert matrices[0][0, 2] == pytest.approx(metrics.linear_cka(teacher["layer1"],
                                                                 teacher["layer3"]))
    cka = earlier_figures.plot_teacher_self_cka(
        matrices * 2, tmp_path / earlier_figures.TEACHER_SELF_CKA_FILE,
        layer_names=LAYERS, title="Cifar100 · linear CKA across layers")
    _png(cka, 300)

    scatter = earlier_figures.plot_pca_scatter_teacher_basis(
        teacher["layer3"], [("teacher", teacher["layer3"]), ("logit", models["logit"]["layer3"]),
                            ("rkd", models["rkd"]["layer3"]),
                            ("narrow", models["rkd"]["layer1"])],
        labels, tmp_path / earlier_figures.PCA_SCATTER_TEACHER_BASIS_FILE, num_classes=100,
        title="Cifar100 · layer3")
    _png(scatter, 800)
    with pytest.raises(ValueError, match="expected 3 x 3"):
        earlier_figures.plot_teacher_self_cka([np.eye(2)], tmp_path / "x.png",
                                              layer_names=LAYERS, title="t")


def test_setup_differences_text_names_both_setups():
    text = earlier_metrics.earlier_setup_differences(ica_components=12, ica_fit_samples=4000,
                                                     principal_angle_components=8)
    assert "\n" not in text
    for fact in ("12 components", "4,000 test inputs", "top-8", "z-scored", "random state 42",
                 "2,000 iterations", "sample space", "channel space",
                 "principal_angle_channel_mean", "permuted"):
        assert fact in text, fact


def test_glossary_entry_sits_beside_the_sample_space_angle():
    name, meaning = earlier_metrics.PRINCIPAL_ANGLE_CHANNEL_DOC
    assert name == "principal_angle_channel_mean"
    assert "principal_angle_mean" in meaning and "channel" in meaning and "95 %" in meaning


@pytest.mark.slow
def test_earlier_figures_on_a_trained_digits_study(tmp_path):
    """A teacher, a pure student and a logit-distilled student trained here (Digits, one
    epoch each), extracted, then every earlier figure and the channel-space angle."""
    from kdlab.analysis.extract import extract_study
    from kdlab.analysis.store import load_representation
    from kdlab.run.layout import RunSpec, representation_path
    from kdlab.study.study_file import load_study
    from kdlab.training.run import train_run

    study = load_study(write_local_study(tmp_path / "study.toml", name="earlier", methods=["logit"],
                                   alphas=[0.5], seeds=[0], epochs=1))
    for spec in study.runs():
        assert train_run(study.train_config(spec), quiet=True) == "completed"
    extract_study(study, device="cpu", log=lambda line: None)
    teacher = load_representation(representation_path(
        study.analysis_dir, study.name, RunSpec("Digits", "ResNet20", 0), "teacher"))
    student = load_representation(representation_path(
        study.analysis_dir, study.name, RunSpec("Digits", "ResNet8", 0, "logit", "ResNet20",
                                                0.5), "kd"))
    out = tmp_path / "figures"
    panels = {"logit α=0.5 seed 0": {}}
    for layer in LAYERS:
        angle = earlier_metrics.principal_angle_channel_mean(teacher[layer], student[layer])
        assert 0.0 <= angle <= 90.0
        rank = min(metrics.numerical_rank(metrics.pca_spectrum(teacher[layer])),
                   metrics.numerical_rank(metrics.pca_spectrum(student[layer])), 5)
        fits = [metrics.fit_ica(x[layer], rank, max_iter=200) for x in (teacher, student)]
        panels["logit α=0.5 seed 0"][layer] = (fits[0].sources(teacher[layer]),
                                               fits[1].sources(student[layer]))
    _png(earlier_figures.plot_ica_correlation(panels, out / "ica.png", title="Digits"), 800)
    matrix = earlier_figures.teacher_self_cka([teacher[layer] for layer in LAYERS])
    _png(earlier_figures.plot_teacher_self_cka([matrix], out / "cka.png", layer_names=LAYERS,
                                               title="Digits"), 300)
    _png(earlier_figures.plot_pca_scatter_teacher_basis(
        teacher["layer3"], [("teacher", teacher["layer3"]), ("logit", student["layer3"])],
        teacher["labels"], out / "scatter.png", num_classes=10, title="Digits"), 600)
