"""The earlier research code's variants of kdlab's metrics, kept so that its numbers can be
reproduced beside kdlab's own (pure functions on numpy arrays, as in :mod:`.metrics`).

Principal angles, two definitions
---------------------------------
kdlab's ``principal_angle_mean`` (:func:`kdlab.analysis.metrics.principal_angles`) works in
**sample space**: each representation's top-k principal-component *scores* span a
k-dimensional subspace of R^n (n = test samples), and the angles between the two spans
are the arc-cosines of the canonical correlations of the top-k components (as in SVCCA).

The earlier code's angle, :func:`principal_angle_channel_mean` here, works in **channel
space**: each representation's top-k principal *directions* (eigenvectors of its d x d
channel covariance) span a subspace of R^d, and the angles are taken between those two
spans, with k the larger of the two 95 % effective dimensions. It needs both networks to
have the same number of channels at the layer.

Why they differ: channel space treats channel i of the teacher and channel i of the
student as the same axis, but two independently trained networks number their channels
arbitrarily. Permuting (or rotating) a student's channels changes nothing the network
computes, yet moves its channel-space subspace and so changes the channel-space angles;
the sample-space angles do not change at all, because they only see which inputs vary
together. The channel-space angle is therefore meaningful only where channels are tied
(e.g. a student trained to match the teacher's features channel by channel), and small
sample-space angles with large channel-space angles mean "the same subspace, other axes".
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import subspace_angles
from sklearn.decomposition import PCA

from .metrics import as_features, effective_dimensionality

# The earlier code sized the channel-space subspaces at this share of variance.
CHANNEL_ANGLE_VARIANCE = 0.95

# (metric, meaning) for the report's glossary, to stand next to principal_angle_mean.
PRINCIPAL_ANGLE_CHANNEL_DOC = (
    "principal_angle_channel_mean",
    "The earlier analysis's principal angle (degrees, mean): between the channel-space PCA "
    "subspaces of student and teacher (eigenvectors of each one's channel covariance, k = "
    "the larger 95 % effective dimensionality). Unlike principal_angle_mean, which compares "
    "sample-space spans, it changes when a network's channels are merely renumbered, so it "
    "mixes subspace similarity with the arbitrary channel order of two networks.")


def channel_pca(features) -> tuple[np.ndarray, np.ndarray]:
    """Principal directions and variances of ``features`` [n, d] in channel space.

    Returns (directions [d, m], variances [m]) with m = min(n, d): column j is the j-th
    eigenvector of the channel covariance (ddof=1), largest variance first."""
    array = as_features(features, "features")
    with np.errstate(divide="ignore", invalid="ignore"):   # a constant input: 0 / 0 shares
        model = PCA(svd_solver="full").fit(array)
    return model.components_.T, np.clip(model.explained_variance_, 0.0, None)


def principal_angles_channel(features_a, features_b,
                             variance: float = CHANNEL_ANGLE_VARIANCE) -> np.ndarray:
    """Principal angles in degrees [k], ascending, between the channel-space PCA subspaces
    of ``features_a`` [n_a, d] and ``features_b`` [n_b, d] (the earlier code's variant).

    k = the larger of the two effective dimensionalities at ``variance`` (the smallest
    number of components explaining that share), at most min(n_a, n_b, d). The two
    representations need the same channel count d; their samples need not be paired,
    since only each one's own covariance enters. A constant representation has no
    principal directions: ValueError."""
    a = as_features(features_a, "features_a")
    b = as_features(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"channel-space angles need the same channel count: {a.shape[1]} "
                         f"against {b.shape[1]}")
    directions_a, variances_a = channel_pca(a)
    directions_b, variances_b = channel_pca(b)
    dims = (effective_dimensionality(variances_a, variance),
            effective_dimensionality(variances_b, variance))
    if min(dims) == 0:
        raise ValueError("channel-space angles: a representation is constant")
    k = min(max(dims), directions_a.shape[1], directions_b.shape[1])
    return np.sort(np.degrees(subspace_angles(directions_a[:, :k], directions_b[:, :k])))


def principal_angle_channel_mean(features_a, features_b,
                                 variance: float = CHANNEL_ANGLE_VARIANCE) -> float:
    """Mean of :func:`principal_angles_channel` in degrees: 0 = the same channel-space
    subspace, 90 = orthogonal ones. Not invariant to permuting either side's channels
    (see the module docstring for how it differs from kdlab's ``principal_angle_mean``)."""
    return float(np.mean(principal_angles_channel(features_a, features_b, variance)))


def earlier_setup_differences(*, ica_components: int = 10, ica_fit_samples: int = 5000,
                              ica_max_iter: int = 500, ica_tol: float = 1e-4,
                              ica_random_state: int = 0,
                              principal_angle_components: int = 10) -> str:
    """One paragraph (Markdown) for the report and ``kdlab methodology``: how kdlab's ICA
    and principal angles are set up, against the earlier research code's ``analyze.py``.
    Pass kdlab's analysis settings (the defaults are kdlab's at the time of writing)."""
    return (
        "**ICA and principal angles: kdlab against the earlier analysis.** "
        f"kdlab fits FastICA with {ica_components} components (fewer where a layer's "
        f"numerical rank is lower) on a fixed subsample of {ica_fit_samples:,} test inputs, "
        f"with unit-variance whitening of the raw features, random state {ica_random_state}, "
        f"at most {ica_max_iter} iterations at tolerance {ica_tol:g}, and reports a fit that "
        "did not converge instead of hiding it. The earlier analysis z-scored every channel "
        "first and extracted as many components as the layer has channels (16, 32 or 64) "
        "from all test inputs, with random state 42, at most 2,000 iterations at tolerance "
        "1e-3; its warnings were silenced, so a fit that stopped at the limit was not "
        "visible. Both match teacher and student components one-to-one by the Hungarian "
        "algorithm on |correlation| and count pairs above 0.5, but the earlier figures "
        "came from one seed and two students (logit KD and factor transfer), kdlab's from "
        "every seed and method of the grid. kdlab's principal angles are taken in sample "
        f"space, between the spans of the top-{principal_angle_components} principal-"
        "component scores of teacher and student (the arc-cosines of their canonical "
        "correlations), which does not depend on how either network orders its channels. "
        "The earlier angles, kept as `principal_angle_channel_mean`, are taken in channel "
        "space, between the eigenvectors of the two channel covariances with k the larger "
        "95 % effective dimensionality; they change when a student's channels are merely "
        "permuted, so they compare the networks' arbitrary channel numbering as well as "
        "their subspaces.")
