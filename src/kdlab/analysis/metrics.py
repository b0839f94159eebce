"""Representation metrics: pure functions on numpy arrays.

Conventions: a representation is ``features`` [n_samples, n_features] (float); rows of two
representations compared with each other are the same inputs in the same order; ``labels``
is [n_samples] (int). Nothing here reads or writes files. Library routines are used where
they exist (sklearn PCA / FastICA / k-NN, scipy's assignment, subspace angles, ranks and
pairwise distances); CKA, effective dimensionality, participation ratio,
the Fisher criterion, TwoNN and RSA are written out here after their papers.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.linalg import subspace_angles
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import pdist
from scipy.stats import rankdata
from sklearn.decomposition import PCA, FastICA
from sklearn.exceptions import ConvergenceWarning
from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors


def as_features(features, name: str = "features") -> np.ndarray:
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] < 2 or array.shape[1] < 1:
        raise ValueError(f"{name}: expected a 2-D array [n_samples >= 2, n_features >= 1], "
                         f"found shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return array


def _paired(features_a, features_b) -> tuple[np.ndarray, np.ndarray]:
    a = as_features(features_a, "features_a")
    b = as_features(features_b, "features_b")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"paired representations need the same samples: {a.shape[0]} rows "
                         f"against {b.shape[0]}")
    return a, b


def subsample_indices(n_samples: int, size: int, seed: int = 0) -> np.ndarray:
    """Sorted indices [min(size, n_samples)] drawn without replacement with a fixed seed.

    Depends only on (n_samples, size, seed), so every model of one data set (same test
    split, same order) gets the same subsample and paired metrics compare the same inputs.
    """
    if size >= n_samples:
        return np.arange(n_samples)
    return np.sort(np.random.default_rng(seed).choice(n_samples, size=size, replace=False))


# ---- spectrum: PCA, effective dimensionality, participation ratio ---------------------------

def _tall(array: np.ndarray) -> bool:
    """n >> d: a decomposition may go through the d x d covariance instead of an SVD of the
    n x d data (exact up to round-off, ~100x faster for a 10,000 x 64 representation)."""
    return array.shape[0] >= 4 * array.shape[1]


def _pca(array: np.ndarray, n_components: int | None = None) -> PCA:
    """sklearn's PCA, through the covariance when the data are :func:`_tall`."""
    solver = "covariance_eigh" if _tall(array) else "full"
    return PCA(n_components=n_components, svd_solver=solver)


def pca_spectrum(features) -> np.ndarray:
    """Variances [min(n_samples, n_features)] of the principal components, largest first
    (eigenvalues of the sample covariance, ddof=1). Pearson 1901 / Hotelling 1933."""
    array = as_features(features)
    spectrum = _pca(array).fit(array).explained_variance_
    return np.clip(spectrum, 0.0, None)  # round-off can make a zero variance slightly negative


def explained_variance_ratio(spectrum) -> np.ndarray:
    """Fraction of the total variance per component [k] from a spectrum [k] (e.g.
    :func:`pca_spectrum`); all zeros when the representation is constant."""
    spectrum = np.clip(np.asarray(spectrum, dtype=np.float64), 0.0, None)
    total = spectrum.sum()
    return spectrum / total if total > 0 else np.zeros_like(spectrum)


def cumulative_explained_variance(spectrum) -> np.ndarray:
    """Cumulative explained-variance curve [k], non-decreasing, ending at 1 (or 0 when the
    representation is constant)."""
    return np.cumsum(explained_variance_ratio(spectrum))


def effective_dimensionality(spectrum, threshold: float = 0.9) -> int:
    """Smallest number of principal components whose cumulative explained variance reaches
    ``threshold`` (0 < threshold <= 1), from a spectrum [k] sorted largest first.
    0 for a constant representation."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold: expected a fraction in (0, 1], found {threshold}")
    curve = cumulative_explained_variance(spectrum)
    if curve.size == 0 or curve[-1] == 0:
        return 0
    # The tolerance absorbs round-off in the cumulative sum (0.9 written as 0.8999999...).
    return int(np.argmax(curve >= threshold - 1e-9)) + 1


def participation_ratio(spectrum) -> float:
    """Participation ratio (sum lambda)^2 / sum lambda^2 of a spectrum [k]: k for k equal
    variances, 1 for a single direction (Gao et al. 2017, "A theory of multineuronal
    dimensionality"). 0 for a constant representation."""
    spectrum = np.clip(np.asarray(spectrum, dtype=np.float64), 0.0, None)
    squares = np.sum(spectrum ** 2)
    return float(spectrum.sum() ** 2 / squares) if squares > 0 else 0.0


def numerical_rank(spectrum, relative_tolerance: float = 1e-8) -> int:
    """Number of variances [k] above ``relative_tolerance`` times the largest (dead ReLU
    channels give exactly zero variance)."""
    spectrum = np.asarray(spectrum, dtype=np.float64)
    if spectrum.size == 0 or spectrum.max() <= 0:
        return 0
    return int(np.sum(spectrum > relative_tolerance * spectrum.max()))


# ---- CKA (Kornblith et al. 2019, "Similarity of Neural Network Representations Revisited") --

def linear_cka(features_a, features_b) -> float:
    """Linear CKA of [n, p] and [n, q] in its feature-space form
    ||B^T A||_F^2 / (||A^T A||_F ||B^T B||_F) with column-centred A, B (Kornblith et al.
    2019, eq. 5 / section 3). In [0, 1]; invariant to orthogonal transforms and isotropic
    scaling of either side. 0 when either side is constant."""
    a, b = _paired(features_a, features_b)
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    cross = np.linalg.norm(b.T @ a, "fro") ** 2
    norm_a = np.linalg.norm(a.T @ a, "fro")
    norm_b = np.linalg.norm(b.T @ b, "fro")
    if norm_a == 0 or norm_b == 0:
        return 0.0
    return float(cross / (norm_a * norm_b))


def linear_cka_debiased(features_a, features_b) -> float:
    """Linear CKA with the unbiased HSIC estimator (Song et al. 2012, "Feature selection via
    dependence maximization", eq. 5), as used by Nguyen et al. 2021 ("Do wide and deep
    networks learn the same things?"): the biased estimator is inflated when n is not much
    larger than the feature count. Computed in feature space for [n, p] and [n, q] (n >= 4),
    without forming n x n matrices. Can be slightly negative for unrelated data; NaN when
    either side's unbiased self-similarity is not positive."""
    a, b = _paired(features_a, features_b)
    if a.shape[0] < 4:
        raise ValueError(f"debiased CKA needs at least 4 samples, found {a.shape[0]}")
    a = a - a.mean(axis=0)  # the estimator is translation invariant; centring aids round-off
    b = b - b.mean(axis=0)
    cross = _unbiased_linear_hsic(a, b)
    self_a = _unbiased_linear_hsic(a, a)
    self_b = _unbiased_linear_hsic(b, b)
    if self_a <= 0 or self_b <= 0:
        return float("nan")
    return float(cross / np.sqrt(self_a * self_b))


def _unbiased_linear_hsic(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased HSIC of the linear kernels K = a a^T, L = b b^T with zeroed diagonals:
    [tr(KL) + 1'K1 1'L1 / ((n-1)(n-2)) - 2/(n-2) 1'KL1] / (n(n-3))."""
    n = a.shape[0]
    diag_k = np.einsum("ij,ij->i", a, a)
    diag_l = np.einsum("ij,ij->i", b, b)
    trace = np.linalg.norm(a.T @ b, "fro") ** 2 - float(diag_k @ diag_l)
    row_k = a @ a.sum(axis=0) - diag_k  # K~ 1
    row_l = b @ b.sum(axis=0) - diag_l
    sum_k, sum_l = row_k.sum(), row_l.sum()
    return float((trace + sum_k * sum_l / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * row_k @ row_l)
                 / (n * (n - 3)))


def _center_gram(gram: np.ndarray) -> np.ndarray:
    """H K H with H = I - 11^T/n, without forming H."""
    gram = gram - gram.mean(axis=0, keepdims=True)
    return gram - gram.mean(axis=1, keepdims=True)


def gram_cka(gram_a, gram_b) -> float:
    """CKA of two Gram (kernel) matrices [n, n]: HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))
    with the biased HSIC estimator tr(KHLH) (Kornblith et al. 2019, eq. 3-4)."""
    return cka_from_normalized(normalized_centered_gram(gram_a), normalized_centered_gram(gram_b))


def rbf_gram(features, sigma_fraction: float = 0.8) -> np.ndarray:
    """RBF kernel exp(-||x_i - x_j||^2 / (2 sigma^2)) [n, n] with sigma = ``sigma_fraction``
    times the median pairwise distance, the bandwidth rule of Kornblith et al. 2019."""
    array = as_features(features)
    squared = np.sum(array ** 2, axis=1)
    distances_sq = np.maximum(squared[:, None] + squared[None, :] - 2.0 * array @ array.T, 0.0)
    upper = distances_sq[np.triu_indices_from(distances_sq, k=1)]
    median = float(np.median(np.sqrt(upper))) if upper.size else 0.0
    if median == 0.0:
        return np.ones_like(distances_sq)  # all points equal: a constant kernel
    sigma = sigma_fraction * median
    return np.exp(-distances_sq / (2.0 * sigma ** 2))


def normalized_centered_gram(gram) -> np.ndarray | None:
    """H K H / ||H K H||_F [n, n] of a Gram matrix, so that the CKA of two Gram matrices is
    the sum of the elementwise product of theirs; None for a constant kernel. Lets a
    teacher's Gram matrix be computed once for all its students."""
    centered = _center_gram(np.asarray(gram, dtype=np.float64))
    norm = np.linalg.norm(centered)
    return centered / norm if norm > 0 else None


def cka_from_normalized(gram_a: np.ndarray | None, gram_b: np.ndarray | None) -> float:
    """CKA from two :func:`normalized_centered_gram` results (0 when either is constant)."""
    if gram_a is None or gram_b is None:
        return 0.0
    return float(np.sum(gram_a * gram_b))


def rbf_cka(features_a, features_b, sigma_fraction: float = 0.8) -> float:
    """RBF-kernel CKA of [n, p] and [n, q] (Kornblith et al. 2019, section 3); O(n^2)
    memory and time, so callers pass a subsample."""
    a, b = _paired(features_a, features_b)
    return gram_cka(rbf_gram(a, sigma_fraction), rbf_gram(b, sigma_fraction))


def cross_layer_linear_cka(layers_a, layers_b) -> np.ndarray:
    """Linear CKA of every layer of A against every layer of B: [len(layers_a),
    len(layers_b)], entry [i, j] = CKA(layers_a[i], layers_b[j]); each layer [n, d_i]."""
    return np.array([[linear_cka(a, b) for b in layers_b] for a in layers_a])


# ---- principal angles ------------------------------------------------------------------

def principal_angles(features_a, features_b, n_components: int) -> np.ndarray:
    """Principal angles [n_components] in radians, ascending, between the top-k PCA
    subspaces of two representations (Björck & Golub 1973).

    The subspaces live in sample space (R^n): the span of the top-k principal-component
    score vectors of each representation. Two networks' channels are not aligned with each
    other, so angles between feature-space subspaces would compare arbitrary axes; in
    sample space the cosines are the canonical correlations of the top-k components, as in
    SVCCA (Raghu et al. 2017). ``features_a`` [n, p], ``features_b`` [n, q],
    n_components <= min(p, q, n).
    """
    a, b = _paired(features_a, features_b)
    limit = min(a.shape[1], b.shape[1], a.shape[0])
    if not 1 <= n_components <= limit:
        raise ValueError(f"n_components: expected 1..{limit}, found {n_components}")
    scores_a = _pca(a, n_components).fit_transform(a)
    scores_b = _pca(b, n_components).fit_transform(b)
    return np.sort(subspace_angles(scores_a, scores_b))


def procrustes_distance(features_a, features_b) -> float:
    """Orthogonal Procrustes distance (Ding et al. 2021; Williams et al. 2021) of [n, p] and
    [n, q]: both sides column-centred and scaled to unit Frobenius norm, the narrower padded
    with zero columns, then min over orthogonal R of ||A R - B||_F (scipy's
    orthogonal_procrustes). 0 = equal up to rotation, reflection and scale; at most 2."""
    from scipy.linalg import orthogonal_procrustes

    a, b = _paired(features_a, features_b)
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    width = max(a.shape[1], b.shape[1])
    a = np.pad(a, ((0, 0), (0, width - a.shape[1])))
    b = np.pad(b, ((0, 0), (0, width - b.shape[1])))
    norm_a, norm_b = np.linalg.norm(a), np.linalg.norm(b)
    if norm_a == 0 or norm_b == 0:
        return float("nan")
    a, b = a / norm_a, b / norm_b
    rotation, _ = orthogonal_procrustes(a, b)
    return float(np.linalg.norm(a @ rotation - b))


# ---- ICA (Hyvärinen & Oja 2000, FastICA) ------------------------------------------------------

@dataclass
class IcaFit:
    """A fitted FastICA model: sources = (features - mean) @ unmixing.T.

    ``unmixing`` [k, d], ``mean`` [d]; ``converged`` False when FastICA stopped at
    ``max_iter`` (its ConvergenceWarning is captured, not shown); ``iterations`` used."""

    unmixing: np.ndarray
    mean: np.ndarray
    converged: bool
    iterations: int

    def sources(self, features) -> np.ndarray:
        """Independent components [n, k] of ``features`` [n, d]."""
        return (np.asarray(features, dtype=np.float64) - self.mean) @ self.unmixing.T


def fit_ica(features, n_components: int, random_state: int = 0, max_iter: int = 1000,
            tol: float = 1e-4) -> IcaFit:
    """FastICA (Hyvärinen & Oja 2000; sklearn, logcosh contrast, unit-variance whitening)
    of ``features`` [n, d] into ``n_components`` <= numerical rank sources, with a fixed
    ``random_state``. Convergence failure is returned in the result, never hidden."""
    array = as_features(features)
    if not 1 <= n_components <= min(array.shape):
        raise ValueError(f"n_components: expected 1..{min(array.shape)}, found {n_components}")
    solver = "eigh" if _tall(array) else "svd"  # whitening through the covariance
    model = FastICA(n_components=n_components, whiten="unit-variance", whiten_solver=solver,
                    random_state=random_state, max_iter=max_iter, tol=tol)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(array)
    not_converged = any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return IcaFit(unmixing=np.asarray(model.components_, dtype=np.float64),
                  mean=np.asarray(model.mean_, dtype=np.float64),
                  converged=not not_converged,
                  iterations=int(model.n_iter_))


def match_components(sources_a, sources_b) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Match components of ``sources_a`` [n, ka] to ``sources_b`` [n, kb] one-to-one by the
    Hungarian algorithm (Kuhn 1955) maximising total absolute Pearson correlation.

    Returns (abs_r [m], index_a [m], index_b [m]) with m = min(ka, kb), ordered by index_a.
    A constant component correlates 0 with everything."""
    a, b = _paired(sources_a, sources_b)
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    norm_a = np.linalg.norm(a, axis=0)
    norm_b = np.linalg.norm(b, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        correlation = (a.T @ b) / np.outer(norm_a, norm_b)
    correlation = np.abs(np.nan_to_num(correlation, nan=0.0, posinf=0.0, neginf=0.0))
    index_a, index_b = linear_sum_assignment(correlation, maximize=True)
    return correlation[index_a, index_b], index_a, index_b


# ---- class structure ----------------------------------------------------------------------

def fisher_criterion(features, labels) -> float:
    """Fisher criterion tr(S_B) / tr(S_W) of ``features`` [n, d] with ``labels`` [n]:
    between-class scatter sum_c n_c ||mu_c - mu||^2 over within-class scatter
    sum_i ||x_i - mu_{c(i)}||^2 (Fisher 1936; the trace-ratio form, Fukunaga 1990).
    Larger = classes more separated. inf when every class is a single point."""
    array = as_features(features)
    labels = np.asarray(labels)
    if labels.shape != (array.shape[0],):
        raise ValueError(f"labels: expected shape ({array.shape[0]},), found {labels.shape}")
    overall = array.mean(axis=0)
    between = 0.0
    within = 0.0
    for label in np.unique(labels):
        members = array[labels == label]
        centre = members.mean(axis=0)
        between += members.shape[0] * float(np.sum((centre - overall) ** 2))
        within += float(np.sum((members - centre) ** 2))
    if within == 0.0:
        return float("inf") if between > 0 else 0.0
    return between / within


def knn_probe_accuracy(features, labels, k: int = 5, train_fraction: float = 0.5,
                       max_train: int | None = None, max_test: int | None = None,
                       seed: int = 0) -> float:
    """Accuracy in percent of a k-nearest-neighbour classifier (Euclidean, majority vote;
    Cover & Hart 1967) fitted on a fixed random ``train_fraction`` of ``features`` [n, d]
    / ``labels`` [n] and scored on the rest; ``max_train`` / ``max_test`` cap both parts."""
    array = as_features(features)
    labels = np.asarray(labels)
    order = np.random.default_rng(seed).permutation(array.shape[0])
    n_train = int(round(train_fraction * array.shape[0]))
    if not k <= n_train < array.shape[0]:
        raise ValueError(f"k-NN probe: {array.shape[0]} samples cannot give {k} neighbours "
                         f"and a test part with train_fraction={train_fraction}")
    train, test = order[:n_train], order[n_train:]
    if max_train is not None:
        train = train[:max_train]
    if max_test is not None:
        test = test[:max_test]
    classifier = KNeighborsClassifier(n_neighbors=k).fit(array[train], labels[train])
    return float(100.0 * np.mean(classifier.predict(array[test]) == labels[test]))


def accuracy_from_logits(logits, labels) -> float:
    """Top-1 accuracy in percent of ``logits`` [n, classes] against ``labels`` [n]."""
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"expected logits [n, classes] and labels [n], found {logits.shape} "
                         f"and {labels.shape}")
    return float(100.0 * np.mean(np.argmax(logits, axis=1) == labels))


# ---- geometry ---------------------------------------------------------------------------------

def twonn_dimension(features, discard_fraction: float = 0.1) -> float:
    """Intrinsic dimension of ``features`` [n, d] by TwoNN (Facco et al. 2017, Sci. Rep. 7).

    mu_i = r2/r1 (distances to the second and first nearest neighbour) is Pareto
    distributed with exponent d, so -log(1 - F(mu)) = d log(mu); d is the slope of that
    line through the origin fitted on the empirical F, after discarding the largest
    ``discard_fraction`` of mu (the paper's guard against outliers). Duplicate points
    (r1 = 0) are dropped first. NaN when fewer than 3 distinct points remain."""
    array = as_features(features)
    array = np.unique(array, axis=0)
    if array.shape[0] < 3:
        return float("nan")
    distances, _ = NearestNeighbors(n_neighbors=3).fit(array).kneighbors(array)
    r1, r2 = distances[:, 1], distances[:, 2]
    valid = r1 > 0
    mu = np.sort(r2[valid] / r1[valid])
    n = mu.size
    keep = int(np.floor(n * (1.0 - discard_fraction)))
    if keep < 2:
        return float("nan")
    empirical_cdf = np.arange(1, n + 1) / n
    x = np.log(mu[:keep])
    y = -np.log(1.0 - empirical_cdf[:keep])
    denominator = float(np.dot(x, x))
    return float(np.dot(x, y) / denominator) if denominator > 0 else float("nan")


def distance_ranks(features, metric: str = "euclidean") -> np.ndarray | None:
    """Ranks of the condensed pairwise distances [n(n-1)/2] of ``features`` [n, d] (ties
    averaged, as Spearman's rho does), centred and scaled to unit norm, so that the
    Spearman correlation of two such vectors is their dot product. None when all distances
    are equal. Lets a teacher's ranks be computed once for all its students."""
    distances = pdist(as_features(features), metric=metric)
    ranks = rankdata(distances)
    ranks -= ranks.mean()
    norm = np.linalg.norm(ranks)
    return ranks / norm if norm > 0 else None


def rsa_from_ranks(ranks_a: np.ndarray | None, ranks_b: np.ndarray | None) -> float:
    """Spearman correlation from two :func:`distance_ranks` results (NaN if one is None)."""
    if ranks_a is None or ranks_b is None:
        return float("nan")  # a constant distance vector has no ranks to correlate
    if ranks_a.shape != ranks_b.shape:
        raise ValueError(f"rank vectors of different lengths: {ranks_a.shape} and {ranks_b.shape}")
    return float(np.dot(ranks_a, ranks_b))


def rsa_spearman(features_a, features_b, metric: str = "euclidean") -> float:
    """Representational similarity analysis (Kriegeskorte et al. 2008): Spearman rank
    correlation between the condensed pairwise-distance vectors [n(n-1)/2] of two
    representations of the same n inputs. O(n^2): callers pass a subsample."""
    a, b = _paired(features_a, features_b)
    return rsa_from_ranks(distance_ranks(a, metric), distance_ranks(b, metric))


def pca_projection(features, n_components: int = 2) -> np.ndarray:
    """Scores [n, n_components] of ``features`` [n, d] on its top principal components,
    each column's sign fixed so that its largest-magnitude entry is positive (so reruns
    and similar models draw the same orientation)."""
    array = as_features(features)
    scores = _pca(array, n_components).fit_transform(array)
    signs = np.sign(scores[np.argmax(np.abs(scores), axis=0), np.arange(scores.shape[1])])
    signs[signs == 0] = 1.0
    return scores * signs
