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
* ICA: FastICA fitted on 5,000 samples (10 components of at most 64 dimensions), at most
  500 iterations; the sources of all samples are then matched. A fit that stops at the
  limit is flagged (ica_converged = 0), not dropped.
* 2-D PCA scatter: 2,000 points (PCA fitted on all samples, only the drawing subsampled).

Linear metrics (linear CKA, PCA, principal angles, Fisher) use every sample. A teacher's
share of the pair metrics (RBF Gram matrices, distance ranks) is computed once for all
its students (:func:`teacher_task`).
"""

from __future__ import annotations

import io
import json
import time
import zipfile
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
    "ica_fit_samples": 5000,
    "ica_max_iter": 500,
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
    """Accumulates CPU seconds of this process per metric name (CPU, not wall time, so the
    figures do not depend on what else the machine runs; a worker uses one BLAS thread,
    so on an idle core the two agree)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def run(self, name: str, function, *args, **kwargs):
        start = time.process_time()
        try:
            return function(*args, **kwargs)
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.process_time() - start


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
    except (OSError, ValueError, KeyError, EOFError, TypeError, zipfile.BadZipFile):
        return None  # absent or unreadable cache: recompute


def _write_model_cache(cache_path: Path, key: dict, result: dict) -> None:
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
    ica_index = metrics.subsample_indices(n, SETTINGS["ica_fit_samples"], seed)
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
            fit = timer.run("ica_fit", metrics.fit_ica, features[ica_index], components,
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

def _prepare_teacher(teacher: dict, timer: _Timer) -> dict:
    """What every pair of one teacher shares, computed once: per layer the float64
    features, numerical rank, normalised centred RBF Gram matrix of the RBF subsample and
    the distance ranks of the RSA subsample."""
    n = teacher["labels"].shape[0]
    seed = SETTINGS["subsample_seed"]
    rbf_index = metrics.subsample_indices(n, SETTINGS["rbf_cka_samples"], seed)
    rsa_index = metrics.subsample_indices(n, SETTINGS["rsa_samples"], seed)
    prepared = {"rbf_index": rbf_index, "rsa_index": rsa_index, "layers": {}}
    for layer in LAYERS:
        features = teacher[layer].astype(np.float64)
        prepared["layers"][layer] = {
            "features": features,
            "rank": metrics.numerical_rank(metrics.pca_spectrum(features)),
            "gram": timer.run("cka_rbf", _rbf_gram, features[rbf_index]),
            "ranks": timer.run("rsa", metrics.distance_ranks, features[rsa_index],
                               SETTINGS["rsa_distance"]),
        }
    return prepared


def _rbf_gram(features: np.ndarray):
    return metrics.normalized_centered_gram(
        metrics.rbf_gram(features, SETTINGS["rbf_sigma_fraction"]))


def _pair_rows(teacher: dict, student: dict, teacher_ica: dict, student_ica: dict,
               timer: _Timer) -> list:
    """Rows (student layer, metric, value) of one teacher-student pair; ``teacher`` from
    :func:`_prepare_teacher`, ``student`` the student's arrays."""
    rows: list[tuple[str, str, float]] = []
    student_layers = {layer: student[layer].astype(np.float64) for layer in LAYERS}
    cross = timer.run("cka_linear", metrics.cross_layer_linear_cka,
                      [teacher["layers"][layer]["features"] for layer in LAYERS],
                      [student_layers[layer] for layer in LAYERS])
    for j, student_layer in enumerate(LAYERS):
        for i, teacher_layer in enumerate(LAYERS):
            rows.append((student_layer, f"cka_linear_vs_teacher_{teacher_layer}",
                         float(cross[i, j])))
    for index, layer in enumerate(LAYERS):
        prepared = teacher["layers"][layer]
        a, b = prepared["features"], student_layers[layer]
        linear = float(cross[index, index])
        student_gram = timer.run("cka_rbf", _rbf_gram, b[teacher["rbf_index"]])
        rbf = metrics.cka_from_normalized(prepared["gram"], student_gram)
        rows += [(layer, "cka_linear", linear), (layer, "cka_rbf", rbf),
                 (layer, "cka_rbf_minus_linear", rbf - linear)]
        rank = min(prepared["rank"], metrics.numerical_rank(metrics.pca_spectrum(b)))
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
        student_ranks = timer.run("rsa", metrics.distance_ranks, b[teacher["rsa_index"]],
                                  SETTINGS["rsa_distance"])
        rows.append((layer, "rsa_spearman", metrics.rsa_from_ranks(prepared["ranks"],
                                                                   student_ranks)))
    return rows


def _read_pair_cache(cache_path: Path, key: dict) -> list | None:
    try:
        cached = read_json(cache_path)
    except StateFileError:
        return None
    if cached is None or cached.get("key") != json.loads(json.dumps(key)):
        return None
    return [tuple(row) for row in cached["rows"]]


def teacher_task(teacher_path: str, teacher_cache: str,
                 students: list[tuple[str, str, str]]) -> list[dict]:
    """Teacher-student metrics of every student of one teacher (same data set and seed).

    ``students``: (representation path, model cache path, pair cache path) per student.
    Pairs whose cache is current are read from it; for the others the teacher's share of
    the work (RBF Gram matrices, distance ranks) is done once. The model caches (written by
    :func:`model_task`) supply the ICA fits. Returns one {'rows', 'timings', 'cached',
    'error'} per student, in order; rows are keyed by the student's layer."""
    outcomes: list[dict | None] = [None] * len(students)
    keys: dict[int, dict] = {}
    for index, (student_path, _, pair_cache) in enumerate(students):
        try:
            keys[index] = cache_key(teacher_path, student_path)
        except FileNotFoundError as error:
            outcomes[index] = {"error": f"representation {error.filename} disappeared"}
            continue
        rows = _read_pair_cache(Path(pair_cache), keys[index])
        if rows is not None:
            outcomes[index] = {"rows": rows, "timings": {}, "cached": True, "error": None}
    todo = [index for index, outcome in enumerate(outcomes) if outcome is None]
    if not todo:
        return outcomes
    timer = _Timer()
    try:
        teacher = timer.run("load", load_representation, teacher_path)
    except UserError as error:
        return [outcome or {"error": str(error)} for outcome in outcomes]
    teacher_model = _read_model_cache(Path(teacher_cache), cache_key(teacher_path))
    if teacher_model is None:
        message = f"per-model results of {teacher_path} are missing"
        return [outcome or {"error": message} for outcome in outcomes]
    prepared = _prepare_teacher(teacher, timer)
    for index in todo:
        student_path, student_cache, pair_cache = students[index]
        try:
            student = timer.run("load", load_representation, student_path)
        except UserError as error:
            outcomes[index] = {"error": str(error)}
            continue
        if not np.array_equal(teacher["labels"], student["labels"]):
            outcomes[index] = {"error": f"labels of {student_path} differ from its teacher's "
                                        f"{teacher_path}: expected both extracted from the "
                                        "same test split"}
            continue
        student_model = _read_model_cache(Path(student_cache), cache_key(student_path))
        if student_model is None:
            outcomes[index] = {"error": f"per-model results of {student_path} are missing"}
            continue
        rows = _pair_rows(prepared, student, teacher_model["ica"], student_model["ica"], timer)
        atomic_write_json(pair_cache, {"key": keys[index], "rows": rows})
        # the group's time (teacher preparation included) goes with its first pair
        outcomes[index] = {"rows": rows, "timings": timer.seconds, "cached": False,
                           "error": None}
        timer = _Timer()
    return outcomes
