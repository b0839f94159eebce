"""Every metric of the analysis, declared once.

A :class:`Metric` names a metric, says whether it describes one model's layer
(``scope='model'``) or compares a model with its reference at the same layer
(``scope='pair'``), and gives its function, the settings it reads, its axis label, a
one-line description and its reference. :mod:`kdlab.analysis.compute` computes every
declared metric, the sweep and heatmap figures draw those with a ``sweep`` row, and the
report's glossary lists them all. Adding a metric is one :func:`register` call plus its
function:

    def _my_metric(pair):                     # a views.PairView (or views.LayerView)
        return metrics.my_similarity(pair.a.features, pair.b.features)

    register(Metric("my_metric", "pair", _my_metric, "my similarity with teacher",
                    "What it measures, in one line.", "Author et al. 2024"))

A function returns a float (one row named after the metric), a dict {row name: float}
(several rows), or None (no row, e.g. a degenerate layer). A pair metric may also give
``resamples(pair) -> (values [B] on bootstrap resamples, scale of their spread)``: then
bootstrap intervals (:mod:`kdlab.analysis.bootstrap`) are written as ``{name}_ci_low`` /
``{name}_ci_high`` rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import bootstrap, earlier_metrics, metrics
from .store import UNNAMED_STAGES

# Bump when a metric's definition or its output rows change: every cache entry is recomputed.
METRIC_VERSION = 3

SETTINGS = {
    "subsample_seed": 0,
    "rbf_cka_samples": 2000,
    "rbf_sigma_fraction": 0.8,
    "rsa_samples": 1000,
    "rsa_distance": "euclidean",
    "twonn_samples": 5000,
    "twonn_discard_fraction": 0.1,
    "knn_k": 5,
    "knn_max_train": 5000,
    "knn_max_test": 5000,
    "ica_components": 10,
    "ica_fit_samples": 5000,
    "ica_max_iter": 500,
    "ica_tol": 1e-4,
    "ica_random_state": 0,
    "principal_angle_components": 10,
    "scatter_samples": 2000,
    "effective_dim_thresholds": [0.9, 0.95],
    "bootstrap_samples": 200,   # 0: no intervals
    "bootstrap_matrix_samples": 1000,  # rows of the CKA Gram matrices the bootstrap resamples
    "bootstrap_seed": 0,
}

MATCH_THRESHOLD = 0.5  # ICA components count as matched above this |r|


def setup_differences() -> str:
    """The paragraph (Markdown) on how kdlab's ICA and principal angles differ from the
    earlier analysis's, with the settings above."""
    keys = ("ica_components", "ica_fit_samples", "ica_max_iter", "ica_tol", "ica_random_state",
            "principal_angle_components")
    return earlier_metrics.earlier_setup_differences(**{key: SETTINGS[key] for key in keys})


@dataclass(frozen=True)
class Metric:
    """One metric. ``rows`` names what it writes when that is not just ``name`` (for the
    glossary); ``sweep`` is the row drawn against alpha (None: no sweep figure);
    ``layers`` where it is computed (None: every stage of each model; a pair metric
    compares the stages at the same position from the last); ``settings`` the keys of :data:`SETTINGS` it reads
    (``{key}`` in the description is filled from them)."""

    name: str
    scope: str
    function: Callable
    label: str
    description: str
    reference: str = ""
    settings: tuple[str, ...] = ()
    rows: str | None = None
    sweep: str | None = None
    layers: tuple[str, ...] | None = None
    resamples: Callable | None = None
    digits: int = 2

    def __post_init__(self) -> None:
        if self.scope not in ("model", "pair"):
            raise ValueError(f"metric {self.name}: scope must be 'model' or 'pair'")

    def glossary(self) -> tuple[str, str]:
        """(row names, description with settings filled in, and the reference)."""
        text = self.description.format(**SETTINGS, match_threshold=MATCH_THRESHOLD)
        if self.reference:
            text += f" ({self.reference})"
        return self.rows or self.name, text


REGISTRY: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    if metric.name in REGISTRY:
        raise ValueError(f"metric {metric.name} is declared twice")
    REGISTRY[metric.name] = metric
    return metric


def of_scope(scope: str) -> list[Metric]:
    return [metric for metric in REGISTRY.values() if metric.scope == scope]


def sweep_metrics(stages: tuple[str, ...] = UNNAMED_STAGES
                  ) -> list[tuple[str, str, bool, tuple[str, ...], int]]:
    """(row, axis label, compares with the teacher, layers, digits) of every metric drawn
    against alpha, in declaration order; a metric of every stage lists ``stages`` (the
    student's stage names; default the CIFAR ResNets')."""
    return [(m.sweep, m.label, m.scope == "pair", m.layers or tuple(stages), m.digits)
            for m in REGISTRY.values() if m.sweep]


def with_intervals() -> list[str]:
    return [metric.name for metric in REGISTRY.values() if metric.resamples is not None]


# ---- model metrics ------------------------------------------------------------------------

def _test_accuracy(view):
    return metrics.accuracy_from_logits(view.model.arrays["logits"], view.labels)


def _pca_cumulative(view):
    curve = metrics.cumulative_explained_variance(view.spectrum)
    return {f"pca_cumvar_{k:02d}": float(v) for k, v in enumerate(curve, 1)}


def _effective_dimensionality(view):
    return {f"effective_dim_{round(t * 100)}": float(metrics.effective_dimensionality(
        view.spectrum, t)) for t in view.settings["effective_dim_thresholds"]}


def _twonn(view):
    return metrics.twonn_dimension(view.sample("twonn"), view.settings["twonn_discard_fraction"])


def _knn(view):
    s = view.settings
    return metrics.knn_probe_accuracy(view.features, view.labels, k=s["knn_k"],
                                      max_train=s["knn_max_train"], max_test=s["knn_max_test"],
                                      seed=s["subsample_seed"])


def _ica_fit(view):
    fit = view.ica_fit
    if fit is None:
        return None
    return {"ica_converged": float(fit.converged), "ica_iterations": float(fit.iterations),
            "ica_components": float(fit.unmixing.shape[0])}


for _metric in (
    Metric("pca_cumvar", "model", _pca_cumulative, "cumulative explained variance",
           "Fraction of the layer's variance captured by its first k principal components "
           "(PCA of the global-average-pooled features).", "Pearson 1901; Hotelling 1933",
           rows="pca_cumvar_k"),
    Metric("effective_dim", "model", _effective_dimensionality, "components for 90% variance",
           "Number of principal components needed to explain 90% / 95% of the variance.",
           settings=("effective_dim_thresholds",), rows="effective_dim_90 / effective_dim_95",
           sweep="effective_dim_90"),
    Metric("participation_ratio", "model",
           lambda view: metrics.participation_ratio(view.spectrum), "participation ratio",
           "(Σλ)² / Σλ² of the PCA eigenvalues λ: how many directions the variance is spread "
           "over.", "Gao et al. 2017", sweep="participation_ratio"),
    Metric("numerical_rank", "model", lambda view: float(view.rank), "numerical rank",
           "Number of principal components with non-negligible variance (dead channels "
           "lower it)."),
    Metric("fisher", "model", lambda view: metrics.fisher_criterion(view.features, view.labels),
           "Fisher criterion tr(S_B)/tr(S_W)",
           "Between-class over within-class scatter of the features; higher = classes more "
           "separable.", "Fisher 1936", sweep="fisher"),
    Metric("ica", "model", _ica_fit, "ICA convergence",
           "Whether FastICA ({ica_components} components, fixed seed, {ica_fit_samples:,} "
           "samples) converged within {ica_max_iter} iterations, the iterations used and the "
           "components fitted; non-converged fits are flagged, not dropped.",
           "Hyvärinen & Oja 2000", settings=("ica_components", "ica_fit_samples", "ica_max_iter"),
           rows="ica_converged / ica_iterations / ica_components"),
):
    register(_metric)


# ---- pair metrics (reference: the teacher, or the first model of a noise-floor pair) ---------

def _cross_layer_cka(pair):
    """Every stage of the reference against this stage of the other model."""
    return {f"cka_linear_vs_teacher_{layer}": pair.linear_cka(layer)
            for layer in pair.reference.stage_names}


def _rbf_cka(pair):
    return metrics.cka_from_normalized(pair.a.rbf_gram, pair.b.rbf_gram)


def _resamples_of(terms: str, statistic: Callable, counts: str, full: str | None) -> Callable:
    """A ``resamples`` function: ``statistic`` of both sides' bootstrap ``terms`` (attribute
    of a LayerView) with the reference's ``counts``; the spread is scaled from the
    resampled size to the ``{full}_samples`` subsample the point estimate used (None: all
    samples)."""
    def resamples(pair):
        a, b = getattr(pair.a, terms), getattr(pair.b, terms)
        if a is None or b is None:
            return None
        resampled = getattr(pair.reference, counts)
        used = pair.reference.subsample(full).size if full else pair.reference.size
        return statistic(a, b, resampled), float(np.sqrt(resampled.shape[0] / used))
    return resamples


def _principal_angles(pair):
    k = min(pair.settings["principal_angle_components"], pair.a.rank, pair.b.rank)
    if k < 1:
        return None
    angles = np.degrees(metrics.principal_angles(pair.a.features, pair.b.features, k))
    rows = {f"principal_angle_{i:02d}": float(v) for i, v in enumerate(angles, 1)}
    rows["principal_angle_mean"] = float(np.mean(angles))
    return rows


def _principal_angle_channel(pair):
    try:
        return earlier_metrics.principal_angle_channel_mean(pair.a.features, pair.b.features)
    except ValueError:   # other channel counts, or a constant layer: no row
        return None


def _ica_match(pair):
    fit_a, fit_b = pair.a.ica_fit, pair.b.ica_fit
    if fit_a is None or fit_b is None:
        return None
    abs_r, _, _ = metrics.match_components(fit_a.sources(pair.a.features),
                                           fit_b.sources(pair.b.features))
    return {"ica_matched_r_mean": float(np.mean(abs_r)),
            f"ica_matched_above_{MATCH_THRESHOLD}": float(np.sum(abs_r > MATCH_THRESHOLD)),
            "ica_pair_converged": float(fit_a.converged and fit_b.converged)}


def _rsa(pair):
    return metrics.rsa_from_ranks(pair.a.distance_ranks, pair.b.distance_ranks)


for _metric in (
    Metric("cka_linear", "pair", lambda pair: pair.linear_cka(pair.reference_layer),
           "linear CKA with teacher",
           "Linear centred kernel alignment with the teacher at the same layer, 1 = the same "
           "representation up to rotation and scale; interval: bootstrap of "
           "{bootstrap_matrix_samples:,}-sample linear Gram matrices, scaled to all samples.",
           "Kornblith et al. 2019", settings=("rbf_cka_samples",), sweep="cka_linear",
           resamples=_resamples_of("linear_terms", bootstrap.cka_resamples, "counts",
                                   None)),
    Metric("cka_linear_vs_teacher", "pair", _cross_layer_cka, "linear CKA across layers",
           "Linear CKA of this student layer against the named teacher layer (the 3 × 3 "
           "cross-layer matrix).", "Kornblith et al. 2019",
           rows="cka_linear_vs_teacher_LAYER"),
    Metric("cka_linear_debiased", "pair",
           lambda pair: metrics.linear_cka_debiased(pair.a.features, pair.b.features),
           "debiased linear CKA with teacher",
           "Linear CKA with the unbiased HSIC estimator, not inflated on small sample counts.",
           "Song et al. 2012; Nguyen et al. 2021", sweep="cka_linear_debiased"),
    Metric("cka_rbf", "pair", _rbf_cka, "RBF CKA with teacher",
           "CKA with a Gaussian kernel (bandwidth {rbf_sigma_fraction} × the median distance, "
           "on {rbf_cka_samples:,} samples); interval: bootstrap of {bootstrap_matrix_samples:,} "
           "rows of those Gram matrices, scaled to the {rbf_cka_samples:,}.",
           "Kornblith et al. 2019", settings=("rbf_cka_samples", "rbf_sigma_fraction"),
           sweep="cka_rbf",
           resamples=_resamples_of("rbf_terms", bootstrap.cka_resamples, "counts", "rbf_cka")),
    Metric("cka_rbf_minus_linear", "pair",
           lambda pair: _rbf_cka(pair) - pair.linear_cka(pair.reference_layer), "RBF CKA − linear CKA",
           "How far RBF CKA exceeds linear CKA: similarity a linear kernel misses.",
           sweep="cka_rbf_minus_linear"),
    Metric("principal_angles", "pair", _principal_angles, "mean principal angle (°)",
           "Angles (degrees) between the spans of the top-{principal_angle_components} "
           "principal-component scores of student and teacher; 0° = the same subspace.",
           "Björck & Golub 1973", settings=("principal_angle_components",),
           rows="principal_angle_i / principal_angle_mean", sweep="principal_angle_mean",
           digits=1),
    Metric(earlier_metrics.PRINCIPAL_ANGLE_CHANNEL_DOC[0], "pair", _principal_angle_channel,
           "mean channel-space principal angle (°)",
           earlier_metrics.PRINCIPAL_ANGLE_CHANNEL_DOC[1].replace("{", "{{").replace("}", "}}"),
           "the earlier analysis; Björck & Golub 1973", digits=1),
    Metric("ica_match", "pair", _ica_match, "mean matched ICA |r|",
           "FastICA components of student and teacher matched one-to-one by the Hungarian "
           "algorithm on |correlation|: mean matched |r|, the count above {match_threshold}, "
           "and whether both fits converged.", "Hyvärinen & Oja 2000; Kuhn 1955",
           rows=f"ica_matched_r_mean / ica_matched_above_{MATCH_THRESHOLD} / "
                "ica_pair_converged", sweep="ica_matched_r_mean"),
    Metric("rsa_spearman", "pair", _rsa, "RSA Spearman ρ with teacher",
           "Spearman correlation of student and teacher pairwise-distance matrices on "
           "{rsa_samples:,} samples; interval: bootstrap over those samples.",
           "Kriegeskorte et al. 2008", settings=("rsa_samples", "rsa_distance"),
           sweep="rsa_spearman", resamples=_resamples_of("rank_terms", bootstrap.rsa_resamples,
                                            "rsa_counts", "rsa")),
    Metric("procrustes_distance", "pair",
           lambda pair: metrics.procrustes_distance(pair.a.features, pair.b.features),
           "orthogonal Procrustes distance to teacher",
           "Distance after the best rotation of unit-norm centred features (0 = the same "
           "shape, at most 2).", "Ding et al. 2021; Williams et al. 2021"),
    Metric("twonn_dim", "model", _twonn, "TwoNN intrinsic dimension",
           "Intrinsic dimension from the ratios of second to first nearest-neighbour "
           "distances on {twonn_samples:,} samples.", "Facco et al. 2017",
           settings=("twonn_samples", "twonn_discard_fraction"), sweep="twonn_dim"),
    Metric("knn_acc", "model", _knn, "5-NN probe accuracy (%)",
           "Accuracy (%) of a {knn_k}-nearest-neighbour probe on the layer's features (fixed "
           "half/half split of the test split).", "Cover & Hart 1967",
           settings=("knn_k", "knn_max_train", "knn_max_test"), sweep="knn_acc", digits=1),
    Metric("test_acc", "model", _test_accuracy, "test accuracy (%)",
           "Top-1 accuracy (%) on the test split, from the stored logits of the run's best "
           "weights.", sweep="test_acc", layers=("logits",), digits=1),
):
    register(_metric)
