"""Representation metrics against independent computations and known properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.linalg import subspace_angles
from scipy.spatial.distance import pdist
from scipy.stats import ortho_group, spearmanr

from kdlab.analysis import metrics


def _random(n, d, seed):
    return np.random.default_rng(seed).normal(size=(n, d))


def _data_with_spectrum(variances, n=500, seed=0):
    """Data [n, d] whose sample covariance (ddof=1) has exactly ``variances`` as eigenvalues,
    in a random orientation: orthonormal centred scores scaled to those variances."""
    rng = np.random.default_rng(seed)
    d = len(variances)
    raw = rng.normal(size=(n, d))
    raw -= raw.mean(axis=0)
    orthonormal, _ = np.linalg.qr(raw)  # columns orthonormal, still orthogonal to 1
    scores = orthonormal * np.sqrt(np.asarray(variances) * (n - 1))
    rotation = ortho_group.rvs(d, random_state=seed)
    return scores @ rotation.T + rng.normal(size=d)  # an offset must not matter


# ---- CKA ----------------------------------------------------------------------------------

def test_linear_cka_is_one_under_orthogonal_transform_and_isotropic_scaling():
    features = _random(300, 20, 1)
    rotation = ortho_group.rvs(20, random_state=2)
    assert metrics.linear_cka(features, features @ rotation) == pytest.approx(1.0, abs=1e-10)
    assert metrics.linear_cka(features, 7.5 * features) == pytest.approx(1.0, abs=1e-10)
    assert metrics.linear_cka(features, -0.1 * features @ rotation + 3.0) == pytest.approx(
        1.0, abs=1e-10)


def test_linear_cka_is_not_invariant_to_anisotropic_scaling_and_is_low_for_unrelated_data():
    features = _random(400, 10, 3)
    stretched = features * np.array([10.0] + [0.1] * 9)
    assert metrics.linear_cka(features, stretched) < 0.5
    assert metrics.linear_cka(features, _random(400, 10, 4)) < 0.1


def test_linear_cka_matches_the_direct_kernel_formula():
    """HSIC with centred n x n Gram matrices: tr(K H L H) / sqrt(tr(K H K H) tr(L H L H))."""
    x = _random(120, 8, 5)
    y = x[:, :5] @ _random(5, 12, 6) + 0.5 * _random(120, 12, 7)
    n = x.shape[0]
    centering = np.eye(n) - np.ones((n, n)) / n
    k = x @ x.T
    l = y @ y.T

    def hsic(a, b):
        return np.trace(a @ centering @ b @ centering)

    expected = hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))
    assert 0.2 < expected < 0.99  # a non-trivial case
    assert metrics.linear_cka(x, y) == pytest.approx(expected, rel=1e-10)
    assert metrics.gram_cka(k, l) == pytest.approx(expected, rel=1e-10)


def test_rbf_cka_matches_the_kernel_formula_and_invariances():
    x = _random(150, 6, 8)
    y = np.tanh(x @ _random(6, 9, 9))
    n = x.shape[0]

    def rbf(a):
        distances = np.sqrt(((a[:, None, :] - a[None, :, :]) ** 2).sum(-1))
        sigma = 0.8 * np.median(distances[np.triu_indices(n, 1)])
        return np.exp(-distances ** 2 / (2 * sigma ** 2))

    centering = np.eye(n) - np.ones((n, n)) / n
    k, l = rbf(x), rbf(y)
    hsic = lambda a, b: np.trace(a @ centering @ b @ centering)  # noqa: E731
    expected = hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))
    assert metrics.rbf_cka(x, y) == pytest.approx(expected, rel=1e-8)
    rotation = ortho_group.rvs(6, random_state=10)
    # the bandwidth follows the median distance, so isotropic scaling leaves it unchanged
    assert metrics.rbf_cka(x, 4.0 * x @ rotation) == pytest.approx(1.0, abs=1e-10)


def test_cross_layer_cka_entries_are_pairwise_cka():
    layers_a = [_random(100, d, 11 + d) for d in (4, 8, 16)]
    layers_b = [layers_a[0] @ _random(4, 6, 1), _random(100, 5, 2)]
    matrix = metrics.cross_layer_linear_cka(layers_a, layers_b)
    assert matrix.shape == (3, 2)
    for i, a in enumerate(layers_a):
        for j, b in enumerate(layers_b):
            assert matrix[i, j] == metrics.linear_cka(a, b)
    assert matrix[:, 1].max() < 0.3  # unrelated data


# ---- principal angles ------------------------------------------------------------------------

def _with_known_components(scores, seed):
    """Features whose top principal-component scores span the columns of ``scores``
    (orthogonal, centred, decreasing norms), embedded by a random orthogonal map."""
    d = scores.shape[1] + 3
    rng = np.random.default_rng(seed)
    padded = np.hstack([scores, 1e-3 * rng.normal(size=(scores.shape[0], 3))])
    return padded @ ortho_group.rvs(d, random_state=seed).T


def test_principal_angles_match_scipy_on_independently_built_subspaces():
    rng = np.random.default_rng(12)
    n, k = 400, 4
    raw = rng.normal(size=(n, 2 * k))
    raw -= raw.mean(axis=0)
    basis, _ = np.linalg.qr(raw)
    scale = np.array([40.0, 30.0, 20.0, 10.0])
    scores_a = basis[:, :k] * scale
    # B's subspace shares two directions with A and turns the other two by known amounts
    theta = np.array([0.0, 0.0, 0.3, 1.1])
    turned = np.cos(theta) * basis[:, :k] + np.sin(theta) * basis[:, k:]
    scores_b = turned * scale
    features_a = _with_known_components(scores_a, 13)
    features_b = _with_known_components(scores_b, 14)
    angles = metrics.principal_angles(features_a, features_b, n_components=k)
    expected = np.sort(subspace_angles(scores_a, scores_b))
    np.testing.assert_allclose(angles, expected, atol=1e-4)
    np.testing.assert_allclose(angles, np.sort(theta), atol=1e-4)


def test_principal_angles_are_zero_for_a_rotated_copy_and_validate_k():
    features = _random(200, 10, 15)
    rotation = ortho_group.rvs(10, random_state=16)
    np.testing.assert_allclose(metrics.principal_angles(features, 3 * features @ rotation, 5),
                               0.0, atol=1e-6)
    with pytest.raises(ValueError):
        metrics.principal_angles(features, features[:, :4], 5)


# ---- spectrum -----------------------------------------------------------------------------------

def test_effective_dimensionality_and_participation_ratio_of_a_known_spectrum():
    variances = np.array([50.0, 25.0, 10.0, 8.0, 4.0, 2.0, 1.0])  # total 100
    features = _data_with_spectrum(variances, n=400, seed=17)
    spectrum = metrics.pca_spectrum(features)
    np.testing.assert_allclose(spectrum, variances, rtol=1e-8)
    cumulative = metrics.cumulative_explained_variance(spectrum)
    np.testing.assert_allclose(cumulative, np.cumsum(variances) / 100.0, rtol=1e-8)
    # 50 + 25 + 10 = 85 % < 90 %; + 8 = 93 % -> 4 components; 95 % needs 5 (97 %)
    assert metrics.effective_dimensionality(spectrum, 0.90) == 4
    assert metrics.effective_dimensionality(spectrum, 0.95) == 5
    assert metrics.effective_dimensionality(spectrum, 0.85) == 3  # exactly reached
    expected_ratio = 100.0 ** 2 / np.sum(variances ** 2)
    assert metrics.participation_ratio(spectrum) == pytest.approx(expected_ratio, rel=1e-8)


def test_participation_ratio_counts_equal_directions():
    spectrum = metrics.pca_spectrum(_data_with_spectrum([3.0] * 6 + [0.0] * 4, seed=18))
    assert metrics.participation_ratio(spectrum) == pytest.approx(6.0, rel=1e-6)
    assert metrics.numerical_rank(spectrum) == 6
    assert metrics.effective_dimensionality(spectrum, 1.0) == 6


# ---- Fisher, k-NN, accuracy --------------------------------------------------------------------

def _clusters(separation, n_per_class=100, classes=4, d=5, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d))
    centres *= separation / np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(classes), n_per_class)
    return centres[labels] + rng.normal(size=(labels.size, d)), labels


def test_fisher_criterion_grows_with_cluster_separation():
    values = [metrics.fisher_criterion(*_clusters(s, seed=19)) for s in (0.0, 1.0, 3.0, 10.0)]
    assert values == sorted(values)
    assert values[0] < 0.05 and values[-1] > 10


def test_fisher_criterion_is_the_trace_ratio_of_scatter_matrices():
    features, labels = _clusters(2.0, n_per_class=30, seed=20)
    mean = features.mean(axis=0)
    between = np.zeros((5, 5))
    within = np.zeros((5, 5))
    for label in np.unique(labels):
        members = features[labels == label]
        offset = members.mean(axis=0) - mean
        between += len(members) * np.outer(offset, offset)
        centred = members - members.mean(axis=0)
        within += centred.T @ centred
    expected = np.trace(between) / np.trace(within)
    assert metrics.fisher_criterion(features, labels) == pytest.approx(expected, rel=1e-10)
    # invariant to isotropic scaling and translation
    assert metrics.fisher_criterion(3 * features + 1, labels) == pytest.approx(expected, rel=1e-10)


def test_knn_probe_separates_clusters_and_is_near_chance_on_random_labels():
    features, labels = _clusters(12.0, n_per_class=100, seed=21)
    assert metrics.knn_probe_accuracy(features, labels) == 100.0
    shuffled = np.random.default_rng(22).permutation(labels)
    assert metrics.knn_probe_accuracy(features, shuffled) < 40.0  # chance is 25 %


def test_accuracy_from_logits():
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 1.0], [5.0, 0.0, 0.0]])
    assert metrics.accuracy_from_logits(logits, np.array([0, 1, 0, 0])) == 75.0


# ---- ICA -----------------------------------------------------------------------------------------

def _sources(n=4000, seed=23):
    rng = np.random.default_rng(seed)
    time = np.linspace(0, 40, n)
    return np.column_stack([np.sign(np.sin(3 * time)), rng.uniform(-1, 1, n),
                            rng.laplace(size=n), np.sin(1.3 * time) ** 3])


def test_ica_recovers_known_mixed_sources():
    sources = _sources()
    mixed_a = sources @ np.random.default_rng(24).normal(size=(4, 7))
    mixed_b = sources @ np.random.default_rng(25).normal(size=(4, 9)) + 2.0
    fit_a = metrics.fit_ica(mixed_a, 4, random_state=0)
    fit_b = metrics.fit_ica(mixed_b, 4, random_state=0)
    assert fit_a.converged and fit_b.converged
    recovered, index_true, _ = metrics.match_components(sources, fit_a.sources(mixed_a))
    assert sorted(index_true) == [0, 1, 2, 3]
    assert recovered.min() > 0.98
    across, _, _ = metrics.match_components(fit_a.sources(mixed_a), fit_b.sources(mixed_b))
    assert across.min() > 0.97
    # unrelated sources do not match
    unrelated = np.random.default_rng(26).laplace(size=(4000, 4))
    chance, _, _ = metrics.match_components(sources, unrelated)
    assert chance.max() < 0.1


def test_ica_reports_non_convergence_instead_of_hiding_it():
    mixed = _sources() @ np.random.default_rng(27).normal(size=(4, 6))
    fit = metrics.fit_ica(mixed, 4, random_state=0, max_iter=2, tol=1e-12)
    assert fit.converged is False
    assert fit.iterations == 2


def test_match_components_is_the_optimal_assignment():
    rng = np.random.default_rng(28)
    base = rng.normal(size=(500, 3))
    permuted = -base[:, [2, 0, 1]]  # sign flips do not matter (absolute correlation)
    abs_r, index_a, index_b = metrics.match_components(base, permuted)
    np.testing.assert_allclose(abs_r, 1.0, atol=1e-12)
    assert list(index_b[np.argsort(index_a)]) == [1, 2, 0]


# ---- TwoNN, RSA, PCA projection --------------------------------------------------------------

def test_twonn_estimates_the_dimension_of_a_linear_manifold():
    rng = np.random.default_rng(29)
    for dimension in (2, 5):
        latent = rng.uniform(size=(3000, dimension))
        embedded = latent @ ortho_group.rvs(12, random_state=dimension)[:dimension]
        assert metrics.twonn_dimension(embedded) == pytest.approx(dimension, rel=0.15)


def test_twonn_on_a_curved_manifold_and_duplicates():
    rng = np.random.default_rng(30)
    points = rng.normal(size=(3000, 3))
    sphere = points / np.linalg.norm(points, axis=1, keepdims=True)  # a 2-manifold in R^3
    estimate = metrics.twonn_dimension(np.vstack([sphere, sphere[:100]]))  # duplicates dropped
    assert estimate == pytest.approx(2.0, rel=0.15)


def test_rsa_is_one_for_a_similarity_transform_and_matches_an_independent_spearman():
    features = _random(80, 6, 31)
    rotation = ortho_group.rvs(6, random_state=32)
    assert metrics.rsa_spearman(features, 2 * features @ rotation + 1) == pytest.approx(1.0)
    other = np.tanh(features @ _random(6, 4, 33))
    a = np.sqrt(((features[:, None] - features[None]) ** 2).sum(-1))
    b = np.sqrt(((other[:, None] - other[None]) ** 2).sum(-1))
    upper = np.triu_indices(80, 1)
    rank_a = np.argsort(np.argsort(a[upper]))  # no ties in continuous distances
    rank_b = np.argsort(np.argsort(b[upper]))
    expected = np.corrcoef(rank_a, rank_b)[0, 1]
    assert metrics.rsa_spearman(features, other) == pytest.approx(expected, rel=1e-10)
    assert abs(metrics.rsa_spearman(features, _random(80, 6, 34))) < 0.1


def test_rsa_matches_scipy_spearman_with_tied_distances():
    rng = np.random.default_rng(36)
    a = rng.integers(0, 3, size=(40, 2)).astype(float)  # many equal distances
    b = a + rng.integers(0, 2, size=(40, 2))
    expected = spearmanr(pdist(a, "cityblock"), pdist(b, "cityblock")).statistic
    assert metrics.rsa_spearman(a, b, metric="cityblock") == pytest.approx(expected, rel=1e-10)
    assert math.isnan(metrics.rsa_spearman(np.ones((5, 2)), a[:5]))


def test_pca_projection_orientation_is_deterministic():
    features = _data_with_spectrum([9.0, 4.0, 1.0], seed=35)
    projection = metrics.pca_projection(features, 2)
    flipped = metrics.pca_projection(-features, 2)
    np.testing.assert_allclose(projection, flipped, atol=1e-9)
    np.testing.assert_allclose(projection.var(axis=0, ddof=1), [9.0, 4.0], rtol=1e-8)


def test_subsample_indices_are_fixed_and_sorted():
    first = metrics.subsample_indices(10_000, 500, seed=3)
    np.testing.assert_array_equal(first, metrics.subsample_indices(10_000, 500, seed=3))
    assert len(np.unique(first)) == 500 and np.all(np.diff(first) > 0)
    np.testing.assert_array_equal(metrics.subsample_indices(50, 500), np.arange(50))


def test_inputs_are_validated():
    with pytest.raises(ValueError, match="same samples"):
        metrics.linear_cka(_random(10, 3, 0), _random(11, 3, 0))
    with pytest.raises(ValueError, match="NaN"):
        metrics.linear_cka(np.full((5, 2), np.nan), _random(5, 2, 0))
    with pytest.raises(ValueError, match="2-D"):
        metrics.fisher_criterion(np.zeros(5), np.zeros(5))


# ---- debiased CKA, Procrustes, rsatoolbox (issue 15) ---------------------------------------

def _direct_unbiased_hsic(k, l):
    """Song et al. 2012, eq. 5, written with explicit n x n matrices and ones vectors."""
    n = k.shape[0]
    k = k.copy()
    l = l.copy()
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(l, 0.0)
    ones = np.ones(n)
    return (np.trace(k @ l) + (ones @ k @ ones) * (ones @ l @ ones) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * (ones @ k @ l @ ones)) / (n * (n - 3))


def test_debiased_cka_matches_a_direct_n_by_n_computation():
    a = _random(40, 7, 50) + 3.0  # uncentred: the estimator is translation invariant
    b = np.tanh(a @ _random(7, 5, 51)) + _random(40, 5, 52)
    k, l = a @ a.T, b @ b.T
    expected = _direct_unbiased_hsic(k, l) / np.sqrt(_direct_unbiased_hsic(k, k)
                                                     * _direct_unbiased_hsic(l, l))
    assert metrics.linear_cka_debiased(a, b) == pytest.approx(expected, rel=1e-9)
    rotation = ortho_group.rvs(7, random_state=53)
    assert metrics.linear_cka_debiased(a, 2.0 * a @ rotation - 1.0) == pytest.approx(1.0)


def test_debiased_cka_is_not_inflated_for_unrelated_wide_features():
    """Few samples, many features: the biased estimator reports a large similarity of
    independent data, the debiased one stays near 0."""
    a, b = _random(30, 200, 54), _random(30, 200, 55)
    assert metrics.linear_cka(a, b) > 0.5
    assert abs(metrics.linear_cka_debiased(a, b)) < 0.1
    with pytest.raises(ValueError, match="at least 4"):
        metrics.linear_cka_debiased(a[:3], b[:3])


def test_procrustes_distance_against_the_nuclear_norm_formula():
    a = _random(60, 6, 56)
    rotation = ortho_group.rvs(6, random_state=57)
    assert metrics.procrustes_distance(a, 3.0 * a @ rotation + 2.0) == pytest.approx(0.0, abs=1e-9)
    b = np.tanh(a @ _random(6, 4, 58))
    # independent form: for unit-norm centred A, B: d^2 = 2 - 2 ||A^T B||_* (Ding et al. 2021)
    ca, cb = a - a.mean(0), b - b.mean(0)
    ca, cb = ca / np.linalg.norm(ca), cb / np.linalg.norm(cb)
    nuclear = np.linalg.svd(ca.T @ cb, compute_uv=False).sum()
    expected = np.sqrt(2.0 - 2.0 * nuclear)
    assert metrics.procrustes_distance(a, b) == pytest.approx(expected, rel=1e-9)


def test_rsa_spearman_agrees_with_rsatoolbox():
    pytest.importorskip("rsatoolbox", reason="rsatoolbox (test-only dependency) is not "
                        "installed")
    from rsatoolbox.data import Dataset
    from rsatoolbox.rdm import calc_rdm, compare_spearman

    a = _random(50, 8, 59)
    b = np.maximum(a @ _random(8, 6, 60), 0.0) + 0.3 * _random(50, 6, 61)
    rdms = [calc_rdm(Dataset(x), method="euclidean") for x in (a, b)]
    expected = float(np.ravel(compare_spearman(rdms[0], rdms[1]))[0])
    assert metrics.rsa_spearman(a, b) == pytest.approx(expected, rel=1e-9)
