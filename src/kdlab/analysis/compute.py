"""Per-model and per-pair metric computation with an on-disk cache (runs in worker processes).

A *model task* turns one representation file into its per-model metrics (spectrum,
effective dimensionality, Fisher criterion, TwoNN, k-NN probe, ICA fit, accuracy, 2-D PCA
coordinates); a *pair task* compares a student's file with its teacher's (same data set,
same seed): linear CKA same-layer and cross-layer, RBF CKA, principal angles, ICA matching,
RSA. Each result is cached next to the analysis, keyed by the size and modification time
of the representation file(s), :data:`METRIC_VERSION` and :data:`SETTINGS`, so re-running
``kdlab analyze`` after one new run recomputes only that run and its pair (or, for a new
teacher, the pairs of its seed).

Subsample sizes of the O(n^2) metrics are chosen for a CIFAR-sized test split (10,000
samples) on a 2-core machine, with fixed seeds so every model of a data set uses the same
inputs (:func:`kdlab.analysis.metrics.subsample_indices`):

* RBF CKA on 2,000 samples: two 2,000 x 2,000 Gram matrices (32 MB each); the standard
  error of CKA at this size is far below the differences between methods.
* RSA on 1,000 samples: 499,500 distance pairs per representation.
* TwoNN on 5,000 samples: nearest-neighbour ratios need no more (Facco et al. use a few
  thousand points); the estimate is of the subsample's scale.
* k-NN probe (k = 5): fixed half/half split, at most 5,000 train and 5,000 test points.
* 2-D PCA scatter: 2,000 points (PCA fitted on all samples, only the drawing subsampled).

Linear metrics (linear CKA, PCA, principal angles, ICA, Fisher) use every sample.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..runstate import atomic_write_bytes, atomic_write_json, read_json, StateFileError
from . import metrics
from .store import LAYERS, load_representation

# Bump when a metric's definition or its output rows change: every cache entry is recomputed.
METRIC_VERSION = 1

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
    "ica_max_iter": 1000,
    "ica_tol": 1e-4,
    "ica_random_state": 0,
    "principal_angle_components": 10,
    "scatter_samples": 2000,
    "effective_dim_thresholds": [0.9, 0.95],
}

MATCH_THRESHOLD = 0.5  # ICA components count as matched above this |r|


def file_key(path: str | Path) -> dict:
    """Identity of a file for the cache: name, size and modification time (ns)."""
    stat = Path(path).stat()
    return {"file": Path(path).name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def cache_key(*paths: str | Path) -> dict:
    return {"files": [file_key(path) for path in paths], "version": METRIC_VERSION,
            "settings": SETTINGS}


class _Timer:
    """Accumulates seconds per metric name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def run(self, name: str, function, *args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


# ---- per model --------------------------------------------------------------------------

def _read_model_cache(cache_path: Path, key: dict) -> dict | None:
    try:
        with np.load(cache_path, allow_pickle=False) as archive:
            if json.loads(str(archive["key"])) != key:
                return None
            result = {"rows": [tuple(row) for row in json.loads(str(archive["rows"]))],
                      "scatter": archive["scatter"], "scatter_labels": archive["scatter_labels"],
                      "ica": {}}
            for layer in LAYERS:
                if f"ica_{layer}_unmixing" in archive.files:
                    result["ica"][layer] = metrics.IcaFit(
                        archive[f"ica_{layer}_unmixing"], archive[f"ica_{layer}_mean"],
                        bool(archive[f"ica_{layer}_converged"]),
                        int(archive[f"ica_{layer}_iterations"]))
            return result
    except (OSError, ValueError, KeyError, EOFError, TypeError):
        return None  # absent or unreadable cache: recompute


def _write_model_cache(cache_path: Path, key: dict, result: dict) -> None:
    import io

    arrays = {"key": np.array(json.dumps(key, sort_keys=True)),
              "rows": np.array(json.dumps(result["rows"])),
              "scatter": result["scatter"], "scatter_labels": result["scatter_labels"]}
    for layer, fit in result["ica"].items():
        arrays[f"ica_{layer}_unmixing"] = fit.unmixing
        arrays[f"ica_{layer}_mean"] = fit.mean
        arrays[f"ica_{layer}_converged"] = np.array(fit.converged)
        arrays[f"ica_{layer}_iterations"] = np.array(fit.iterations)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(cache_path, buffer.getvalue())


def _model_rows(arrays: dict, timer: _Timer) -> tuple[list, dict, np.ndarray]:
    """Rows (layer, metric, value), ICA fits per layer and the layer3 2-D PCA scores."""
    rows: list[tuple[str, str, float]] = []
    ica: dict[str, metrics.IcaFit] = {}
    labels = arrays["labels"]
    n = labels.shape[0]
    seed = SETTINGS["subsample_seed"]
    twonn_index = metrics.subsample_indices(n, SETTINGS["twonn_samples"], seed)
    rows.append(("logits", "test_acc",
                 timer.run("accuracy", metrics.accuracy_from_logits, arrays["logits"], labels)))
    for layer in LAYERS:
        features = arrays[layer].astype(np.float64)
        spectrum = timer.run("pca", metrics.pca_spectrum, features)
        cumulative = metrics.cumulative_explained_variance(spectrum)
        rows += [(layer, f"pca_cumvar_{k:02d}", float(v)) for k, v in enumerate(cumulative, 1)]
        for threshold in SETTINGS["effective_dim_thresholds"]:
            rows.append((layer, f"effective_dim_{round(threshold * 100)}",
                         float(metrics.effective_dimensionality(spectrum, threshold))))
        rows.append((layer, "participation_ratio", metrics.participation_ratio(spectrum)))
        rank = metrics.numerical_rank(spectrum)
        rows.append((layer, "numerical_rank", float(rank)))
        rows.append((layer, "fisher",
                     timer.run("fisher", metrics.fisher_criterion, features, labels)))
        rows.append((layer, "twonn_dim",
                     timer.run("twonn", metrics.twonn_dimension, features[twonn_index],
                               SETTINGS["twonn_discard_fraction"])))
        rows.append((layer, "knn_acc", timer.run(
            "knn", metrics.knn_probe_accuracy, features, labels, k=SETTINGS["knn_k"],
            max_train=SETTINGS["knn_max_train"], max_test=SETTINGS["knn_max_test"], seed=seed)))
        components = min(SETTINGS["ica_components"], rank)
        if components >= 1:
            fit = timer.run("ica_fit", metrics.fit_ica, features, components,
                            random_state=SETTINGS["ica_random_state"],
                            max_iter=SETTINGS["ica_max_iter"], tol=SETTINGS["ica_tol"])
            ica[layer] = fit
            rows.append((layer, "ica_converged", float(fit.converged)))
            rows.append((layer, "ica_iterations", float(fit.iterations)))
            rows.append((layer, "ica_components", float(components)))
    scatter_index = metrics.subsample_indices(n, SETTINGS["scatter_samples"], seed)
    if metrics.numerical_rank(metrics.pca_spectrum(arrays["layer3"])) >= 2:
        scores = timer.run("scatter", metrics.pca_projection, arrays["layer3"], 2)
        scatter = scores[scatter_index].astype(np.float32)
    else:
        scatter = np.full((scatter_index.size, 2), np.nan, dtype=np.float32)
    return rows, ica, scatter


def model_task(representation_path: str, cache_path: str) -> dict:
    """Per-model metrics of one representation file, from the cache when it is current.

    Returns {'rows': [(layer, metric, value)], 'scatter': float32 [m, 2] layer3 PCA scores
    of the fixed scatter subsample, 'scatter_labels': int64 [m], 'timings': {metric: s},
    'cached': bool, 'error': None or one line}."""
    representation_path, cache_path = Path(representation_path), Path(cache_path)
    try:
        key = cache_key(representation_path)
    except FileNotFoundError:
        return {"error": f"representation {representation_path} disappeared"}
    cached = _read_model_cache(cache_path, key)
    if cached is not None:
        return {"rows": cached["rows"], "scatter": cached["scatter"],
                "scatter_labels": cached["scatter_labels"], "timings": {}, "cached": True,
                "error": None}
    timer = _Timer()
    try:
        arrays = timer.run("load", load_representation, representation_path)
    except UserError as error:
        return {"error": str(error)}
    rows, ica, scatter = _model_rows(arrays, timer)
    scatter_index = metrics.subsample_indices(arrays["labels"].shape[0],
                                              SETTINGS["scatter_samples"],
                                              SETTINGS["subsample_seed"])
    result = {"rows": rows, "scatter": scatter, "scatter_labels": arrays["labels"][scatter_index],
              "ica": ica}
    _write_model_cache(cache_path, key, result)
    return {"rows": rows, "scatter": scatter, "scatter_labels": result["scatter_labels"],
            "timings": timer.seconds, "cached": False, "error": None}


# ---- per teacher-student pair ------------------------------------------------------------

def _pair_rows(teacher: dict, student: dict, teacher_ica: dict, student_ica: dict,
               timer: _Timer) -> list:
    rows: list[tuple[str, str, float]] = []
    n = teacher["labels"].shape[0]
    seed = SETTINGS["subsample_seed"]
    rbf_index = metrics.subsample_indices(n, SETTINGS["rbf_cka_samples"], seed)
    rsa_index = metrics.subsample_indices(n, SETTINGS["rsa_samples"], seed)
    cross = timer.run("cka_linear", metrics.cross_layer_linear_cka,
                      [teacher[layer].astype(np.float64) for layer in LAYERS],
                      [student[layer].astype(np.float64) for layer in LAYERS])
    for j, student_layer in enumerate(LAYERS):
        for i, teacher_layer in enumerate(LAYERS):
            rows.append((student_layer, f"cka_linear_vs_teacher_{teacher_layer}",
                         float(cross[i, j])))
    for index, layer in enumerate(LAYERS):
        a = teacher[layer].astype(np.float64)
        b = student[layer].astype(np.float64)
        linear = float(cross[index, index])
        rbf = timer.run("cka_rbf", metrics.rbf_cka, a[rbf_index], b[rbf_index],
                        SETTINGS["rbf_sigma_fraction"])
        rows += [(layer, "cka_linear", linear), (layer, "cka_rbf", rbf),
                 (layer, "cka_rbf_minus_linear", rbf - linear)]
        rank = min(metrics.numerical_rank(metrics.pca_spectrum(a)),
                   metrics.numerical_rank(metrics.pca_spectrum(b)))
        k = min(SETTINGS["principal_angle_components"], rank)
        if k >= 1:
            angles = np.degrees(timer.run("principal_angles", metrics.principal_angles, a, b, k))
            rows += [(layer, f"principal_angle_{i:02d}", float(v)) for i, v in enumerate(angles, 1)]
            rows.append((layer, "principal_angle_mean", float(np.mean(angles))))
        if layer in teacher_ica and layer in student_ica:
            abs_r, _, _ = timer.run("ica_match", metrics.match_components,
                                    teacher_ica[layer].sources(a), student_ica[layer].sources(b))
            rows += [(layer, "ica_matched_r_mean", float(np.mean(abs_r))),
                     (layer, f"ica_matched_above_{MATCH_THRESHOLD}",
                      float(np.sum(abs_r > MATCH_THRESHOLD))),
                     (layer, "ica_pair_converged",
                      float(teacher_ica[layer].converged and student_ica[layer].converged))]
        rows.append((layer, "rsa_spearman", timer.run(
            "rsa", metrics.rsa_spearman, a[rsa_index], b[rsa_index], SETTINGS["rsa_distance"])))
    return rows


def pair_task(teacher_path: str, student_path: str, teacher_cache: str, student_cache: str,
              cache_path: str) -> dict:
    """Teacher-student pair metrics (rows keyed by the student's layer), cached per pair.

    Needs the model caches of both files (written by :func:`model_task`) for the ICA fits.
    Returns {'rows', 'timings', 'cached', 'error'} like :func:`model_task`."""
    cache_path = Path(cache_path)
    try:
        key = cache_key(teacher_path, student_path)
    except FileNotFoundError as error:
        return {"error": f"representation {error.filename} disappeared"}
    try:
        cached = read_json(cache_path)
    except StateFileError:
        cached = None
    if cached is not None and cached.get("key") == json.loads(json.dumps(key)):
        return {"rows": [tuple(row) for row in cached["rows"]], "timings": {}, "cached": True,
                "error": None}
    timer = _Timer()
    try:
        teacher = timer.run("load", load_representation, teacher_path)
        student = timer.run("load", load_representation, student_path)
    except UserError as error:
        return {"error": str(error)}
    if not np.array_equal(teacher["labels"], student["labels"]):
        return {"error": f"labels of {student_path} differ from its teacher's {teacher_path}: "
                         "expected both extracted from the same test split"}
    teacher_model = _read_model_cache(Path(teacher_cache), cache_key(teacher_path))
    student_model = _read_model_cache(Path(student_cache), cache_key(student_path))
    if teacher_model is None or student_model is None:
        return {"error": f"per-model results of {teacher_path} or {student_path} are missing"}
    rows = _pair_rows(teacher, student, teacher_model["ica"], student_model["ica"], timer)
    atomic_write_json(cache_path, {"key": key, "rows": rows})
    return {"rows": rows, "timings": timer.seconds, "cached": False, "error": None}
