"""Bootstrap intervals over samples for pair metrics, from precomputed n x n matrices.

A bootstrap resample of n samples drawn with replacement is a count vector w (w_i = how
often sample i was drawn, sum w = n). A statistic of the resampled data that is built
from an n x n matrix K (a Gram matrix, or a matrix of distance ranks) needs only w: the
rows and columns of K are indexed, never recomputed from features. All resamples are
evaluated at once as matrix products with the count matrix W [n, B]:

* CKA: HSIC of the resample = tr(K M L M) with M = diag(w) - w w^T / n, which expands to
  w'(K*L)w - 2/n (Kw)' diag(w) (Lw) + (w'Kw)(w'Lw)/n^2  (* = elementwise product).
* RSA: the Pearson correlation of rank matrices A, B over the pairs i != j of the
  resample, weighted w_i w_j (pairs of one sample drawn twice are left out, as in
  rsatoolbox's pattern bootstrap). The ranks are those of the full subsample (not
  re-ranked per resample), so the interval is that of the rank correlation's sampling.

The counts depend only on (n, B, seed), so the reference model's terms are computed once
for all models compared with it. An interval is the spread of the resamples (their 2.5 and
97.5 percentiles' distances from their median) placed around the point estimate; where the
point estimate uses all N samples but the matrices only a subsample of n (linear CKA), the
spread is scaled by sqrt(n / N) (m-out-of-n bootstrap, Bickel et al. 1997).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

LEVEL = 0.95


@lru_cache(maxsize=8)
def resample_counts(n: int, count: int, seed: int) -> np.ndarray:
    """Count matrix [n, count] (float64): column b counts how often each of n samples was
    drawn in resample b (n draws with replacement, fixed seed). Read-only."""
    rng = np.random.default_rng(seed)
    counts = np.zeros((n, count))
    for column in range(count):
        counts[:, column] = np.bincount(rng.integers(0, n, size=n), minlength=n)
    counts.flags.writeable = False
    return counts


@dataclass
class GramTerms:
    """What one side's bootstrap needs of its n x n matrix ``matrix``: K W, and its
    self-similarity per resample (HSIC(K, K) for CKA; weighted sums for RSA)."""

    matrix: np.ndarray
    product: np.ndarray       # matrix @ counts [n, B]
    self_term: np.ndarray     # [B]
    total: np.ndarray         # w' matrix w [B]


def _quadratic(counts: np.ndarray, product: np.ndarray) -> np.ndarray:
    """w_b' (matrix w_b) per resample b, from product = matrix @ counts."""
    return np.einsum("ib,ib->b", counts, product)


def _hsic(counts, n, product_ab, product_a, product_b, total_a, total_b) -> np.ndarray:
    return (_quadratic(counts, product_ab)
            - 2.0 / n * np.einsum("ib,ib,ib->b", counts, product_a, product_b)
            + total_a * total_b / n ** 2)


def gram_terms(gram: np.ndarray, counts: np.ndarray) -> GramTerms:
    """Bootstrap terms of one Gram matrix [n, n] (symmetric) for :func:`cka_resamples`."""
    n = gram.shape[0]
    product = gram @ counts
    total = _quadratic(counts, product)
    self_term = _hsic(counts, n, (gram * gram) @ counts, product, product, total, total)
    return GramTerms(gram, product, self_term, total)


def cka_resamples(terms_a: GramTerms, terms_b: GramTerms, counts: np.ndarray) -> np.ndarray:
    """CKA [B] of every resample, from two sides' :func:`gram_terms` (same samples)."""
    n = counts.shape[0]
    cross = _hsic(counts, n, (terms_a.matrix * terms_b.matrix) @ counts, terms_a.product,
                  terms_b.product, terms_a.total, terms_b.total)
    with np.errstate(divide="ignore", invalid="ignore"):
        return cross / np.sqrt(terms_a.self_term * terms_b.self_term)


def rank_terms(ranks: np.ndarray, counts: np.ndarray) -> GramTerms:
    """Bootstrap terms of a symmetric rank matrix [n, n] with a zero diagonal for
    :func:`rsa_resamples`; ``self_term`` is w'(A*A)w."""
    product = ranks @ counts
    return GramTerms(ranks, product, _quadratic(counts, (ranks * ranks) @ counts),
                     _quadratic(counts, product))


def rsa_resamples(terms_a: GramTerms, terms_b: GramTerms, counts: np.ndarray) -> np.ndarray:
    """Weighted Pearson correlation [B] of two rank matrices over the pairs i != j of each
    resample (weights w_i w_j)."""
    pairs = counts.sum(axis=0) ** 2 - np.sum(counts ** 2, axis=0)
    mean_a, mean_b = terms_a.total / pairs, terms_b.total / pairs
    cross = _quadratic(counts, (terms_a.matrix * terms_b.matrix) @ counts) / pairs
    covariance = cross - mean_a * mean_b
    variance_a = terms_a.self_term / pairs - mean_a ** 2
    variance_b = terms_b.self_term / pairs - mean_b ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        return covariance / np.sqrt(variance_a * variance_b)


def interval(point: float, resamples: np.ndarray, scale: float = 1.0,
             level: float = LEVEL) -> tuple[float, float]:
    """(low, high) of the ``level`` interval around ``point`` from the statistic's values
    on bootstrap resamples [B]: the percentiles' distances from the resamples' median,
    times ``scale`` (sqrt(subsample / full size) when the resamples are of a subsample),
    added to ``point``. Resampling with replacement duplicates samples, which biases
    kernel statistics (a duplicated pair agrees perfectly in both kernels); the median is
    taken off so only the spread is used. (NaN, NaN) when no resample is finite."""
    finite = resamples[np.isfinite(resamples)]
    if finite.size == 0 or not np.isfinite(point):
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2.0
    low, centre, high = np.quantile(finite, [tail, 0.5, 1.0 - tail])
    return float(point + scale * (low - centre)), float(point + scale * (high - centre))
