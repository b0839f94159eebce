"""What metric functions see: one model's layer, or one pair of models at a layer.

Everything a metric needs beyond the raw features (float64 features, the PCA spectrum,
subsamples, Gram matrices, distance ranks, bootstrap terms, the ICA fit) is computed on
first use and kept on the view, so metrics that share an input compute it once, and a
reference model's share of the pair metrics is computed once for all models compared
with it (netrep's and rsatoolbox's shape: prepare per network, compare pairs cheaply).
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
from scipy.spatial.distance import squareform

from . import bootstrap, metrics
from .store import stage_names_of


class ModelView:
    """One representation file's arrays (see :mod:`kdlab.analysis.store`) and its layers."""

    def __init__(self, arrays: dict, settings: dict) -> None:
        self.arrays = arrays
        self.settings = settings
        self.layers: dict[str, LayerView] = {}

    @property
    def stage_names(self) -> tuple[str, ...]:
        """The model's stage keys, first to last (see :mod:`kdlab.analysis.store`)."""
        return stage_names_of(self.arrays)

    @property
    def size(self) -> int:
        return int(self.arrays["labels"].shape[0])

    def layer(self, name: str) -> LayerView:
        if name not in self.layers:
            self.layers[name] = LayerView(self, name)
        return self.layers[name]

    def subsample(self, what: str) -> np.ndarray:
        """Fixed indices of the ``{what}_samples`` subsample (the same for every model of a
        data set, so pairs compare the same inputs)."""
        return metrics.subsample_indices(self.size, self.settings[f"{what}_samples"],
                                         self.settings["subsample_seed"])

    @cached_property
    def bootstrap_positions(self) -> np.ndarray:
        """Rows / columns of the RBF-CKA subsample's n x n matrices that the CKA bootstrap
        resamples (``bootstrap_matrix_samples`` of them: the cost grows with its square)."""
        return metrics.subsample_indices(self.subsample("rbf_cka").size,
                                         self.settings["bootstrap_matrix_samples"],
                                         self.settings["bootstrap_seed"])

    def _counts(self, size: int) -> np.ndarray:
        # float32: the resamples' products are the bootstrap's whole cost; single precision
        # halves it and is far finer than any interval
        return bootstrap.resample_counts(size, self.settings["bootstrap_samples"],
                                         self.settings["bootstrap_seed"]).astype(np.float32)

    @cached_property
    def counts(self) -> np.ndarray:
        """Bootstrap count matrix [m, B] over :attr:`bootstrap_positions`."""
        return self._counts(self.bootstrap_positions.size)

    @cached_property
    def rsa_counts(self) -> np.ndarray:
        """Bootstrap count matrix [m, B] over the RSA subsample."""
        return self._counts(self.subsample("rsa").size)


class LayerView:
    """One layer of one model: ``features`` [n, d] float64 and what is derived from them."""

    def __init__(self, model: ModelView, name: str) -> None:
        self.model = model
        self.name = name
        self.settings = model.settings

    @cached_property
    def features(self) -> np.ndarray:
        return self.model.arrays[self.name].astype(np.float64)

    @property
    def labels(self) -> np.ndarray:
        return self.model.arrays["labels"]

    @cached_property
    def spectrum(self) -> np.ndarray:
        return metrics.pca_spectrum(self.features)

    @cached_property
    def rank(self) -> int:
        return metrics.numerical_rank(self.spectrum)

    def sample(self, what: str) -> np.ndarray:
        return self.features[self.model.subsample(what)]

    @cached_property
    def rbf_gram(self):
        """Normalised centred RBF Gram matrix of the RBF-CKA subsample (None: constant)."""
        return metrics.normalized_centered_gram(
            metrics.rbf_gram(self.sample("rbf_cka"), self.settings["rbf_sigma_fraction"]))

    def _bootstrap_block(self, gram):
        block = gram[np.ix_(self.model.bootstrap_positions, self.model.bootstrap_positions)]
        return block.astype(np.float32)

    @cached_property
    def linear_gram(self):
        """Normalised centred linear Gram matrix of the bootstrap's rows of the RBF-CKA
        subsample (for the interval of linear CKA), float32."""
        sample = self.sample("rbf_cka")[self.model.bootstrap_positions]
        gram = metrics.normalized_centered_gram(sample @ sample.T)
        return None if gram is None else gram.astype(np.float32)

    @cached_property
    def distance_ranks(self):
        """Condensed, centred, unit-norm distance ranks of the RSA subsample (or None)."""
        return metrics.distance_ranks(self.sample("rsa"), self.settings["rsa_distance"])

    @cached_property
    def rbf_terms(self):
        gram = None if self.rbf_gram is None else self._bootstrap_block(self.rbf_gram)
        return _terms(gram, self.model.counts, bootstrap.gram_terms)

    @cached_property
    def linear_terms(self):
        return _terms(self.linear_gram, self.model.counts, bootstrap.gram_terms)

    @cached_property
    def rank_terms(self):
        ranks = self.distance_ranks
        matrix = None if ranks is None else squareform(ranks.astype(np.float32), checks=False)
        return _terms(matrix, self.model.rsa_counts, bootstrap.rank_terms)

    @cached_property
    def ica_fit(self):
        """FastICA of the ICA subsample (None when the layer has no variance); a cached
        fit can be set before first use (``view.__dict__['ica_fit'] = fit``)."""
        components = min(self.settings["ica_components"], self.rank)
        if components < 1:
            return None
        return metrics.fit_ica(self.sample("ica_fit"), components,
                               random_state=self.settings["ica_random_state"],
                               max_iter=self.settings["ica_max_iter"],
                               tol=self.settings["ica_tol"])


def _terms(matrix, counts, make):
    return None if matrix is None else make(matrix, counts)


class PairView:
    """A reference model (the teacher, or the first of a floor pair) and another model,
    compared at one stage of each: ``a`` (the reference's ``reference_layer``, default the
    same name) and ``b`` (the other's ``layer``) are their :class:`LayerView` s. ``shared``
    is one dict per model pair, for values several layers' metrics reuse."""

    def __init__(self, reference: ModelView, other: ModelView, layer: str,
                 shared: dict, reference_layer: str | None = None) -> None:
        self.reference = reference
        self.other = other
        self.layer = layer
        self.reference_layer = reference_layer or layer
        self.a = reference.layer(self.reference_layer)
        self.b = other.layer(layer)
        self.settings = reference.settings
        self.shared = shared

    def linear_cka(self, reference_layer: str) -> float:
        """Linear CKA of the reference's ``reference_layer`` with this layer (memoised)."""
        key = ("linear_cka", reference_layer, self.layer)
        if key not in self.shared:
            self.shared[key] = metrics.linear_cka(self.reference.layer(reference_layer).features,
                                                  self.b.features)
        return self.shared[key]
