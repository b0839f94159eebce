"""Per-model and per-pair metric computation with an on-disk cache (runs in worker processes).

A *model task* computes every model metric of :mod:`kdlab.analysis.registry` for one
representation file (plus the 2-D PCA coordinates of the scatter figure); a *pair task*
computes every pair metric between a reference file and the files compared with it (the
teacher and its students of the same seed, or two networks that share no distillation for
the noise floors), with bootstrap intervals where a metric declares them. Each result is
cached next to the analysis, keyed by the size and modification time of the
representation file(s), the metric version, the registry's names and the settings, so
re-running
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
its students (:func:`teacher_task`), and so are the teacher's bootstrap terms.
"""

from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path

import numpy as np

from ..run.errors import UserError
from ..run.state_files import atomic_write_bytes, atomic_write_json, read_json, StateFileError
from . import bootstrap, metrics, registry
from .registry import METRIC_VERSION, SETTINGS
from .store import load_representation
from .views import ModelView, PairView


def file_key(path: str | Path) -> dict:
    """Identity of a file for the cache: name, size and modification time (ns)."""
    stat = Path(path).stat()
    return {"file": Path(path).name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def cache_key(*paths: str | Path, settings: dict | None = None) -> dict:
    return {"files": [file_key(path) for path in paths], "version": METRIC_VERSION,
            "metrics": sorted(registry.REGISTRY), "settings": settings or SETTINGS}


def model_settings(settings: dict | None = None) -> dict:
    """The settings per-model results depend on: all but the bootstrap's, which only pair
    metrics use (``--bootstrap N`` or 0 must not recompute or redraw every model)."""
    return {name: value for name, value in (settings or SETTINGS).items()
            if not name.startswith("bootstrap_")}


def model_cache_key(path: str | Path, settings: dict | None = None) -> dict:
    """The per-model cache key (see :func:`model_settings`)."""
    return cache_key(path, settings=model_settings(settings))


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


def _rows(metric: registry.Metric, layer: str, value) -> list[tuple[str, str, float]]:
    """Rows (layer, name, value) of one metric function's result."""
    if value is None:
        return []
    if isinstance(value, dict):
        return [(layer, name, float(v)) for name, v in value.items()]
    return [(layer, metric.name, float(value))]


# ---- per model --------------------------------------------------------------------------

def _read_model_cache(cache_path: Path, key: dict) -> dict | None:
    try:
        with np.load(cache_path, allow_pickle=False) as archive:
            if json.loads(str(archive["key"])) != json.loads(json.dumps(key)):
                return None
            result = {"rows": [tuple(row) for row in json.loads(str(archive["rows"]))],
                      "scatter": archive["scatter"], "scatter_labels": archive["scatter_labels"],
                      "ica": {}}
            fitted = [name[len("ica_"):-len("_unmixing")] for name in archive.files
                      if name.startswith("ica_") and name.endswith("_unmixing")]
            for layer in fitted:
                    result["ica"][layer] = metrics.IcaFit(
                        archive[f"ica_{layer}_unmixing"], archive[f"ica_{layer}_mean"],
                        bool(archive[f"ica_{layer}_converged"]),
                        int(archive[f"ica_{layer}_iterations"]))
            return result
    except (OSError, ValueError, KeyError, EOFError, TypeError, zipfile.BadZipFile):
        return None  # absent or unreadable cache: recompute


def cached_ica_fits(path: str | Path, cache: str | Path, settings: dict) -> dict:
    """Layer -> the FastICA fit the per-model step stored for the representation at
    ``path`` (its cache ``cache``, made with ``settings``); {} when the cache is absent,
    stale or unreadable (the caller fits again)."""
    cached = _read_model_cache(Path(cache), model_cache_key(path, settings))
    return {} if cached is None else cached["ica"]


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


def _model_rows(model: ModelView, timer: _Timer) -> tuple[list, dict, np.ndarray]:
    """Rows (layer, metric, value) of every model metric, the ICA fits per layer and the
    2-D PCA scores of the last stage on the scatter subsample."""
    rows: list[tuple[str, str, float]] = []
    for metric in registry.of_scope("model"):
        for layer in metric.layers or model.stage_names:
            view = model.layer(layer)
            rows += _rows(metric, layer, timer.run(metric.name, metric.function, view))
    ica = {layer: view.ica_fit for layer, view in model.layers.items()
           if view.__dict__.get("ica_fit") is not None}
    scatter_index = model.subsample("scatter")
    last_stage = model.layer(model.stage_names[-1])
    if last_stage.rank >= 2:
        scores = timer.run("scatter", metrics.pca_projection, last_stage.features, 2)
        scatter = scores[scatter_index].astype(np.float32)
    else:
        scatter = np.full((scatter_index.size, 2), np.nan, dtype=np.float32)
    return rows, ica, scatter


def model_task(representation_path: str, cache_path: str, settings: dict | None = None) -> dict:
    """Per-model metrics of one representation file, from the cache when it is current.

    Returns {'rows': [(layer, metric, value)], 'scatter': float32 [m, 2] last-stage PCA scores
    of the fixed scatter subsample, 'scatter_labels': int64 [m], 'timings': {metric: s},
    'cached': bool, 'error': None or one line}."""
    settings = settings or SETTINGS
    representation_path, cache_path = Path(representation_path), Path(cache_path)
    try:
        key = model_cache_key(representation_path, settings)
    except FileNotFoundError:
        return {"error": f"representation {representation_path} disappeared"}
    cached = _read_model_cache(cache_path, key)
    if cached is not None:
        return {"rows": cached["rows"], "scatter": cached["scatter"],
                "scatter_labels": cached["scatter_labels"], "timings": {}, "cached": True,
                "error": None}
    timer = _Timer()
    try:
        model = ModelView(timer.run("load", load_representation, representation_path), settings)
    except UserError as error:
        return {"error": str(error)}
    rows, ica, scatter = _model_rows(model, timer)
    result = {"rows": rows, "scatter": scatter, "ica": ica,
              "scatter_labels": model.arrays["labels"][model.subsample("scatter")]}
    _write_model_cache(cache_path, key, result)
    return {"rows": rows, "scatter": scatter, "scatter_labels": result["scatter_labels"],
            "timings": timer.seconds, "cached": False, "error": None}


# ---- per pair ---------------------------------------------------------------------------------

def _interval_rows(metric: registry.Metric, pair: PairView, point: float,
                   timer: _Timer) -> list[tuple[str, str, float]]:
    if metric.resamples is None or not pair.settings["bootstrap_samples"]:
        return []
    drawn = timer.run(f"{metric.name} interval", metric.resamples, pair)
    if drawn is None:
        return []
    values, scale = drawn
    low, high = bootstrap.interval(point, values, scale)
    return [(pair.layer, f"{metric.name}_ci_low", low), (pair.layer, f"{metric.name}_ci_high",
                                                         high)]


def _pair_rows(reference: ModelView, other: ModelView, timer: _Timer) -> list:
    """Rows (layer, metric, value) of every pair metric of ``other`` against
    ``reference``, keyed by the compared model's layer: the stages are paired by position
    from the last (the reference's last with the other's last, and so on for as many
    stages as both have), whatever their names and counts."""
    rows: list[tuple[str, str, float]] = []
    shared: dict = {}
    for reference_layer, layer in stage_pairs(reference.stage_names, other.stage_names):
        pair = PairView(reference, other, layer, shared, reference_layer)
        for metric in registry.of_scope("pair"):
            if metric.layers is not None and layer not in metric.layers:
                continue
            value = timer.run(metric.name, metric.function, pair)
            rows += _rows(metric, layer, value)
            if isinstance(value, float):
                rows += _interval_rows(metric, pair, value, timer)
    return rows


def stage_pairs(reference_stages, other_stages) -> list[tuple[str, str]]:
    """(reference stage, other stage) compared by the same-stage metrics, first to last:
    position -k of one with position -k of the other for k = 1 .. the shorter count."""
    count = min(len(reference_stages), len(other_stages))
    return list(zip(reference_stages[len(reference_stages) - count:],
                    other_stages[len(other_stages) - count:]))


def _read_pair_cache(cache_path: Path, key: dict) -> list | None:
    try:
        cached = read_json(cache_path)
    except StateFileError:
        return None
    if cached is None or cached.get("key") != json.loads(json.dumps(key)):
        return None
    return [tuple(row) for row in cached["rows"]]


def _load_view(path: str, cache: str, settings: dict, timer: _Timer) -> ModelView:
    """The model's arrays with its cached ICA fits set on its layers; UserError (one line)
    when the file is unreadable or its per-model results are missing."""
    model = ModelView(timer.run("load", load_representation, path), settings)
    cached = _read_model_cache(Path(cache), model_cache_key(path, settings))
    if cached is None:
        raise UserError(f"per-model results of {path} are missing")
    for layer in model.stage_names:
        model.layer(layer).__dict__["ica_fit"] = cached["ica"].get(layer)
    return model


def _compare(reference: ModelView, reference_path: str, other_path: str, other_cache: str,
             settings: dict, timer: _Timer) -> list | str:
    """Rows of one pair, or the one-line reason it cannot be compared."""
    try:
        other = _load_view(other_path, other_cache, settings, timer)
    except UserError as error:
        return str(error)
    if not np.array_equal(reference.arrays["labels"], other.arrays["labels"]):
        return (f"labels of {other_path} differ from its teacher's {reference_path}: expected "
                "both extracted from the same test split")
    return _pair_rows(reference, other, timer)


def teacher_task(teacher_path: str, teacher_cache: str, students: list[tuple[str, str, str]],
                 settings: dict | None = None) -> list[dict]:
    """Pair metrics of every model compared with one reference (a teacher and its students
    of the same data set and seed, or a noise-floor reference and its partners).

    ``students``: (representation path, model cache path, pair cache path) per compared
    model. Pairs whose cache is current are read from it; for the others the reference's
    share of the work (Gram matrices, distance ranks, bootstrap terms) is done once. The
    model caches (written by :func:`model_task`) supply the ICA fits. Returns one {'rows',
    'timings', 'cached', 'error'} per compared model, in order."""
    settings = settings or SETTINGS
    outcomes: list[dict | None] = [None] * len(students)
    keys: dict[int, dict] = {}
    for index, (student_path, _, pair_cache) in enumerate(students):
        try:
            keys[index] = cache_key(teacher_path, student_path, settings=settings)
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
        teacher = _load_view(teacher_path, teacher_cache, settings, timer)
    except UserError as error:
        return [outcome or {"error": str(error)} for outcome in outcomes]
    for index in todo:
        student_path, student_cache, pair_cache = students[index]
        rows = _compare(teacher, teacher_path, student_path, student_cache, settings, timer)
        if isinstance(rows, str):
            outcomes[index] = {"error": rows}
            continue
        atomic_write_json(pair_cache, {"key": keys[index], "rows": rows})
        # the group's time (reference preparation included) goes with its first pair
        outcomes[index] = {"rows": rows, "timings": timer.seconds, "cached": False,
                           "error": None}
        timer = _Timer()
    return outcomes
