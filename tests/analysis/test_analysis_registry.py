"""The metric registry, bootstrap intervals over samples, noise floors and the provenance of
representation files."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from scipy.spatial.distance import squareform

import kdlab
from kdlab.analysis import bootstrap, compute, metrics, registry
from kdlab.analysis.report import metric_descriptions
from kdlab.analysis.store import (PROVENANCE_KEY, load_representation, provenance_of,
                                  read_provenance, save_representation)


def _arrays(seed: int, n: int = 120, closeness: float = 0.5) -> dict:
    shared = np.random.default_rng(0)
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 4
    arrays = {"labels": labels.astype(np.int64)}
    for layer, width in (("layer1", 6), ("layer2", 8), ("layer3", 10)):
        arrays[layer] = (closeness * shared.normal(size=(n, width))
                         + rng.normal(size=(n, width))).astype(np.float32)
    arrays["logits"] = rng.normal(size=(n, 4)).astype(np.float32)
    return arrays


# ---- registry ---------------------------------------------------------------------------

def test_a_declared_metric_reaches_compute_sweeps_and_glossary(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "REGISTRY", dict(registry.REGISTRY))
    registry.register(registry.Metric(
        "mean_abs_gap", "pair", lambda pair: float(np.mean(np.abs(
            pair.a.features.mean(0)[:3] - pair.b.features.mean(0)[:3]))),
        "mean |gap| of channel means", "A test metric declared in one place.",
        "nobody 2026", sweep="mean_abs_gap"))
    registry.register(registry.Metric(
        "row_count", "model", lambda view: float(view.features.shape[0]), "rows",
        "Rows of the layer.", layers=("layer2",)))
    teacher, student = tmp_path / "t.npz", tmp_path / "s.npz"
    save_representation(teacher, _arrays(1))
    save_representation(student, _arrays(2))
    settings = dict(registry.SETTINGS, bootstrap_samples=0)
    for path in (teacher, student):
        outcome = compute.model_task(str(path), str(tmp_path / f"m_{path.stem}.npz"), settings)
        assert ("layer2", "row_count", 120.0) in outcome["rows"]
        assert not any(metric == "row_count" for layer, metric, _ in outcome["rows"]
                       if layer != "layer2")
    [pair] = compute.teacher_task(str(teacher), str(tmp_path / "m_t.npz"),
                                  [(str(student), str(tmp_path / "m_s.npz"),
                                    str(tmp_path / "pair.json"))], settings)
    gaps = {layer: value for layer, metric, value in pair["rows"] if metric == "mean_abs_gap"}
    a, b = load_representation(teacher), load_representation(student)
    for layer in ("layer1", "layer2", "layer3"):
        expected = np.mean(np.abs(a[layer].mean(0)[:3].astype(float)
                                  - b[layer].mean(0)[:3].astype(float)))
        assert gaps[layer] == pytest.approx(expected, rel=1e-5)
    assert ("mean_abs_gap", "mean |gap| of channel means", True,
            ("layer1", "layer2", "layer3"), 2) in registry.sweep_metrics()
    glossary = dict(metric_descriptions())
    assert glossary["mean_abs_gap"] == "A test metric declared in one place. (nobody 2026)"
    # the cache key names the registry's metrics: a new metric invalidates old entries
    assert "mean_abs_gap" in compute.cache_key(teacher)["metrics"]


def test_declarations_are_checked():
    with pytest.raises(ValueError, match="declared twice"):
        registry.register(registry.REGISTRY["cka_linear"])
    with pytest.raises(ValueError, match="scope"):
        registry.Metric("x", "triple", len, "x", "x")
    for metric in registry.REGISTRY.values():  # every description's placeholders resolve
        name, text = metric.glossary()
        assert name and text and "{" not in text


# ---- bootstrap --------------------------------------------------------------------------

def test_counts_are_fixed_by_seed_and_sum_to_n():
    counts = bootstrap.resample_counts(50, 30, 7)
    assert counts.shape == (50, 30) and np.all(counts.sum(axis=0) == 50)
    np.testing.assert_array_equal(counts, bootstrap.resample_counts(50, 30, 7))
    assert not np.array_equal(counts, bootstrap.resample_counts(50, 30, 8))


def _resample_indices(counts, column):
    return np.repeat(np.arange(counts.shape[0]), counts[:, column].astype(int))


def test_cka_of_resamples_equals_cka_recomputed_on_indexed_gram_matrices():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(40, 5))
    b = np.tanh(a @ rng.normal(size=(5, 4))) + 0.5 * rng.normal(size=(40, 4))
    counts = bootstrap.resample_counts(40, 12, 0)
    gram_a = metrics.normalized_centered_gram(metrics.rbf_gram(a))
    gram_b = metrics.normalized_centered_gram(metrics.rbf_gram(b))
    fast = bootstrap.cka_resamples(bootstrap.gram_terms(gram_a, counts),
                                   bootstrap.gram_terms(gram_b, counts), counts)
    raw_a, raw_b = metrics.rbf_gram(a), metrics.rbf_gram(b)
    for column in range(12):
        index = _resample_indices(counts, column)
        expected = metrics.gram_cka(raw_a[np.ix_(index, index)], raw_b[np.ix_(index, index)])
        assert fast[column] == pytest.approx(expected, rel=1e-9)
    # linear kernel: the resample's CKA is linear CKA of the resampled features
    linear = bootstrap.cka_resamples(
        bootstrap.gram_terms(metrics.normalized_centered_gram(a @ a.T), counts),
        bootstrap.gram_terms(metrics.normalized_centered_gram(b @ b.T), counts), counts)
    index = _resample_indices(counts, 5)
    assert linear[5] == pytest.approx(metrics.linear_cka(a[index], b[index]), rel=1e-9)


def test_rsa_of_resamples_is_the_rank_correlation_over_distinct_sample_pairs():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(30, 4))
    b = a + rng.normal(size=(30, 4))
    counts = bootstrap.resample_counts(30, 6, 1)
    ranks = [squareform(metrics.distance_ranks(x), checks=False) for x in (a, b)]
    fast = bootstrap.rsa_resamples(bootstrap.rank_terms(ranks[0], counts),
                                   bootstrap.rank_terms(ranks[1], counts), counts)
    for column in range(6):
        index = _resample_indices(counts, column)
        i, j = np.triu_indices(index.size, 1)
        keep = index[i] != index[j]  # a sample drawn twice is no pair
        x = ranks[0][index[i][keep], index[j][keep]]
        y = ranks[1][index[i][keep], index[j][keep]]
        assert fast[column] == pytest.approx(np.corrcoef(x, y)[0, 1], rel=1e-9)


def test_interval_places_the_resamples_spread_around_the_point():
    values = np.linspace(0.0, 1.0, 1001) ** 2  # skewed: median 0.25
    low, high = bootstrap.interval(0.4, values)
    assert (low, high) == pytest.approx((0.4 + 0.025 ** 2 - 0.25, 0.4 + 0.975 ** 2 - 0.25))
    # resamples of a subsample of 100 when the point used 400: half the spread
    low, high = bootstrap.interval(0.4, values, scale=0.5)
    assert (low, high) == pytest.approx((0.4 + 0.5 * (0.025 ** 2 - 0.25),
                                         0.4 + 0.5 * (0.975 ** 2 - 0.25)))
    assert all(np.isnan(bootstrap.interval(0.5, np.array([np.nan]))))


# ---- provenance -------------------------------------------------------------------------

def test_provenance_is_stored_and_old_or_damaged_files_still_load(tmp_path):
    weights = tmp_path / "best.pth"
    weights.write_bytes(b"weights")
    provenance = provenance_of("Digits-pure-ResNet8-s0", tmp_path, "ext", weights)
    assert provenance == {"run": "Digits-pure-ResNet8-s0", "run_dir": str(tmp_path),
                          "study": "ext",
                          "weights_sha256": hashlib.sha256(b"weights").hexdigest(),
                          "kdlab_version": kdlab.__version__}
    with_provenance, old, damaged = (tmp_path / f"{name}.npz" for name in ("new", "old", "bad"))
    save_representation(with_provenance, _arrays(1), provenance)
    save_representation(old, _arrays(1))
    assert read_provenance(with_provenance) == provenance
    assert read_provenance(old) is None
    np.testing.assert_array_equal(load_representation(old)["layer1"],
                                  load_representation(with_provenance)["layer1"])
    arrays = dict(_arrays(1), **{PROVENANCE_KEY: np.array("{not json")})
    np.savez(damaged, **arrays)
    assert read_provenance(damaged) is None
    assert load_representation(damaged)["labels"].shape == (120,)
    assert json.loads(json.dumps(provenance)) == provenance


# ---- shape of the package (issue 13) -------------------------------------------------------

def test_figures_and_report_do_not_import_the_analyze_pass():
    """The pass imports figures and report, never the other way round (no import circle)."""
    import subprocess
    import sys

    code = ("import sys; import kdlab.analysis.figures, kdlab.analysis.report, "
            "kdlab.analysis.compute, kdlab.analysis.workers; "
            "print('kdlab.analysis.analyze' in sys.modules)")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout
    assert output.strip() == "False"


def test_the_analysis_folder_layout_lives_in_layout(tmp_path):
    from kdlab.run import layout

    root = layout.analysis_dir(tmp_path, "s")
    representation = layout.representations_dir(tmp_path, "s") / "Digits" / "pure_s0.npz"
    paths = [layout.model_cache_path(tmp_path, "s", "Digits", representation),
             layout.pair_cache_path(tmp_path, "s", "Digits", "teacher_s0.npz", representation),
             layout.figure_manifest_path(tmp_path, "s"), layout.report_path(tmp_path, "s"),
             layout.figures_dir(tmp_path, "s", "Digits"),
             layout.analysis_table_path(tmp_path, "s", "floors.csv")]
    assert all(path.is_relative_to(root) for path in paths)
    assert paths[0].name == "model_pure_s0.npz"
    assert paths[1].name == "pair_teacher_s0__pure_s0.json"
    with pytest.raises(ValueError, match="unknown analysis table"):
        layout.analysis_table_path(tmp_path, "s", "../x.csv")
