"""`kdlab analyze` end to end on a small study with gaps, written as synthetic
representation files in the real on-disk format."""

from __future__ import annotations

import math
import os
import re
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kdlab.run import layout
from kdlab.analysis import analyze, compute, figures, floors, metrics, workers
from kdlab.analysis.figures import cache as figure_cache, common as figure_common, summary as figure_summary
from kdlab.analysis.store import LAYERS, load_representation, save_representation
from kdlab.cli import main
from kdlab.run.errors import UserError
from kdlab.study.study_file import load_study
from builders import synthetic_representation

STUDY_TEXT = """
name = "mini"
datasets = ["Digits", "SVHN"]
teacher = "ResNet56"
student = "ResNet20"
methods = ["logit", "rkd"]
alphas = [0.5, 0.9]
seeds = [0, 1]
experiments_dir = "experiments"
analysis_dir = "analysis"
"""
# Grid runs left out (SVHN has none at all); rkd a0.5 s1 is written corrupt.
MISSING = {("Digits", "teacher", None, 1), ("Digits", "logit", 0.5, 1),
           ("Digits", "rkd", 0.9, 0), ("Digits", "rkd", 0.9, 1)}
CORRUPT = ("Digits", "rkd", 0.5, 1)


def _key(entry):
    return (entry.dataset, entry.method, entry.alpha, entry.seed)


def write_study(root: Path, skip=MISSING) -> tuple:
    (root / "study.toml").write_text(STUDY_TEXT)
    study = load_study(root / "study.toml")
    study.experiments_dir = root / "experiments"
    study.analysis_dir = root / "analysis"
    for index, entry in enumerate(analyze.expected_entries(study)):
        if entry.dataset != "Digits" or _key(entry) in skip:
            continue
        if _key(entry) == CORRUPT:
            entry.path.parent.mkdir(parents=True, exist_ok=True)
            entry.path.write_bytes(b"not an npz archive")
            continue
        closeness = {"teacher": 1.0, "pure": 0.2}.get(entry.method, 0.2 + 0.7 * (entry.alpha or 0))
        save_representation(entry.path, synthetic_representation(100 + index, closeness))
    return study


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    root = tmp_path_factory.mktemp("analyze")
    study = write_study(root)
    lines = []
    report = analyze.analyze_study(study, jobs=2, log=lines.append, show_progress=False)
    return root, study, report, lines


def _path(study, dataset, method, alpha, seed):
    for entry in analyze.expected_entries(study):
        if _key(entry) == (dataset, method, alpha, seed):
            return entry.path
    raise KeyError((dataset, method, alpha, seed))


def test_inventory_counts_missing_and_corrupt_runs(analysed):
    _, study, report, lines = analysed
    expected = len(analyze.expected_entries(study))
    assert expected == 2 * (2 + 2 * 2) * 2
    assert len(report.missing) == len(MISSING) + (2 + 2 * 2) * 2  # SVHN entirely missing
    assert len(report.available) == expected - len(report.missing)
    assert any("rkd a0.5 s1" in problem and "corrupt" in problem for problem in report.problems)
    assert any("Digits seed 1: no teacher representation" in note for note in report.notes)
    assert any("SVHN: no representations yet" in note for note in report.notes)
    assert lines and lines[0].startswith("analyze mini:")


def test_metrics_csv_rows_match_independent_computations(analysed):
    root, study, _, _ = analysed
    frame = pd.read_csv(layout.analysis_dir(study.analysis_dir, "mini") / "metrics.csv")
    assert list(frame.columns) == analyze.COLUMNS
    assert set(frame["dataset"]) == {"Digits"}
    # teacher and pure rows have the role as method and no alpha
    assert frame.loc[frame["method"].isin(["teacher", "pure"]), "alpha"].isna().all()
    assert frame.loc[frame["method"].isin(["logit", "rkd"]), "alpha"].notna().all()
    # one row per data set x method x alpha x seed x layer x metric
    keys = frame[["dataset", "method", "alpha", "seed", "layer", "metric"]].astype(str)
    assert not keys.duplicated().any()

    teacher = load_representation(_path(study, "Digits", "teacher", None, 0))
    student = load_representation(_path(study, "Digits", "logit", 0.9, 0))

    def value(method, alpha, seed, layer, metric):
        rows = frame[(frame["method"] == method) & (frame["seed"] == seed)
                     & (frame["layer"] == layer) & (frame["metric"] == metric)]
        rows = rows[rows["alpha"].isna()] if alpha is None else rows[rows["alpha"] == alpha]
        assert len(rows) == 1, (method, alpha, seed, layer, metric)
        return float(rows["value"].iloc[0])

    accuracy = 100 * np.mean(student["logits"].argmax(1) == student["labels"])
    assert value("logit", 0.9, 0, "logits", "test_acc") == pytest.approx(accuracy, rel=1e-5)
    for layer in LAYERS:
        expected = metrics.linear_cka(teacher[layer], student[layer])
        assert value("logit", 0.9, 0, layer, "cka_linear") == pytest.approx(expected, rel=1e-5)
        assert value("logit", 0.9, 0, layer, f"cka_linear_vs_teacher_{layer}") == pytest.approx(
            expected, rel=1e-5)
        spectrum = np.linalg.eigvalsh(np.cov(student[layer].astype(float).T))[::-1]
        assert value("logit", 0.9, 0, layer, "participation_ratio") == pytest.approx(
            spectrum.sum() ** 2 / np.sum(spectrum ** 2), rel=1e-4)
    width = {"layer1": 16, "layer2": 32, "layer3": 64}
    for layer in LAYERS:  # the cumulative PCA curve has one row per component, ending at 1
        curve = frame[(frame["method"] == "teacher") & (frame["seed"] == 0)
                      & (frame["layer"] == layer) & frame["metric"].str.startswith("pca_cumvar_")]
        assert len(curve) == width[layer]
        assert curve["value"].max() == pytest.approx(1.0)
    # students of the seed without a teacher have per-model rows but no pair rows
    seed1 = frame[(frame["method"] == "logit") & (frame["seed"] == 1)]
    assert "fisher" in set(seed1["metric"]) and "cka_linear" not in set(seed1["metric"])
    # more alignment with a larger alpha in the synthetic data: the metric sees it
    assert value("logit", 0.9, 0, "layer3", "cka_linear") > value("logit", 0.5, 0, "layer3",
                                                                 "cka_linear")
    assert value("logit", 0.5, 0, "layer3", "cka_linear") > value("pure", None, 0, "layer3",
                                                                 "cka_linear")
    assert set(frame.loc[frame["metric"] == "ica_converged", "value"]) <= {0.0, 1.0}


def test_accuracy_table_has_every_grid_cell_with_gaps_as_na(analysed):
    root, study, _, _ = analysed
    folder = layout.analysis_dir(study.analysis_dir, "mini")
    table = pd.read_csv(folder / "accuracy.csv")
    assert len(table) == 2 * (2 + 2 * 2)  # data sets x (teacher, pure, methods x alphas)
    digits = table[table["dataset"] == "Digits"]
    rkd_09 = digits[(digits["method"] == "rkd") & (digits["alpha"] == 0.9)]
    assert int(rkd_09["n_seeds"].iloc[0]) == 0 and math.isnan(rkd_09["accuracy_mean"].iloc[0])
    pure = digits[digits["method"] == "pure"].iloc[0]
    accuracies = []
    for seed in (0, 1):
        arrays = load_representation(_path(study, "Digits", "pure", None, seed))
        accuracies.append(100 * np.mean(arrays["logits"].argmax(1) == arrays["labels"]))
    assert pure["accuracy_mean"] == pytest.approx(np.mean(accuracies), rel=1e-4)
    assert pure["accuracy_std"] == pytest.approx(np.std(accuracies, ddof=1), rel=1e-3, abs=1e-3)
    markdown = (folder / "accuracy.md").read_text()
    assert "| rkd | 0.9 | n/a | 0/2 |" in markdown
    assert "| teacher | — | " in markdown and "(1 seed) | 1/2 |" in markdown


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.targets: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("href", "src"):
                self.targets.append(value)


def test_figures_exist_and_report_links_only_existing_files(analysed):
    root, study, report, _ = analysed
    folder = layout.analysis_dir(study.analysis_dir, "mini")
    digits = layout.figures_dir(study.analysis_dir, "mini", "Digits")
    for method in study.methods:
        for name in ("pca_variance", "effective_dimensionality", "cka_same_layer",
                     "cka_cross_layer", "principal_angles", "ica_summary", "fisher"):
            assert (digits / "per_method" / method / f"{name}.png").is_file()
    for metric, *_ in figures.sweep_metrics():
        assert (digits / "sweeps" / f"sweep_{metric}.png").is_file()
        assert (digits / "sweeps" / f"heatmap_{metric}.png").is_file()
    assert (digits / "sweeps" / "accuracy_vs_cka_layer3.png").is_file()
    assert (digits / "summary" / "pca_scatter_layer3.png").is_file()  # 10 classes
    assert (digits / "summary" / "accuracy_table.png").is_file()
    assert not layout.figures_dir(study.analysis_dir, "mini", "SVHN").exists()
    for png in digits.rglob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    html = (folder / "report.html").read_text()
    parser = _Links()
    parser.feed(html)
    assert parser.targets
    for target in parser.targets:
        assert not re.match(r"^[a-z]+:|^/", target), f"not a relative link: {target}"
        assert (folder / target).is_file(), f"report links a missing file: {target}"
    linked = {(folder / target).resolve() for target in parser.targets}
    every_output = set(p.resolve() for p in (folder / "figures").rglob("*.png"))
    every_output |= {(folder / name).resolve() for name in ("metrics.csv", "accuracy.csv",
                                                             "accuracy.md")}
    assert every_output <= linked  # and every figure and table is linked
    assert "Digits logit a0.5 s1" in html  # the missing runs are listed
    assert "participation_ratio" in html and "Kornblith" in html  # metric descriptions
    try:
        import umap  # noqa: F401
    except ImportError:
        assert "UMAP projection skipped" in html
    else:  # umap-learn installed (the test extra): the real figure is drawn and linked
        assert (digits / "summary" / "umap_teacher_layer3.png").is_file()
        assert "umap_teacher_layer3.png" in html
    # The report leads with the findings; the glossary and the galleries follow, folded.
    findings = html.index("<h2>Findings</h2>")
    assert findings < html.index("Metrics glossary") < html.index("<figure>")
    assert "<img" not in html[:html.index("<details>")]
    assert html.count("<details><summary>Figures: ") == len(study.datasets)
    section = html[findings:html.index("<h2>", findings + 1)]
    assert "CKA shift (student ↔ teacher stage)" in section
    assert ("Spearman ρ" in section) != ("a rank correlation needs at least" in section)
    assert 'accuracy_vs_cka_layer3.png">figure</a>' in section


def test_figure_helpers_show_gaps():
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots()
    figure_common.heatmap(ax, np.array([[0.5, np.nan], [0.2, 0.9]]), ["a", "b"], ["x", "y"])
    assert "n/a" in [text.get_text() for text in ax.texts]
    figure2, ax2 = plt.subplots()
    figure_common.grouped_bars(ax2, [("s", "red", [(1.0, 0.1, 2), (math.nan, math.nan, 0),
                                              (2.0, 0.0, 1)])])
    assert [text.get_text() for text in ax2.texts] == ["n/a"]
    plt.close(figure)
    plt.close(figure2)


def test_umap_projection_maps_students_into_the_teacher_space(analysed, tmp_path, monkeypatch):
    """With the real umap-learn (the test extra): the teacher fit, the least-squares map of
    a student into the teacher's feature space, the figure, and the note when the package
    is absent."""
    umap = pytest.importorskip("umap", reason="umap-learn (test extra) is not installed")
    _, study, _, _ = analysed
    teacher_path = _path(study, "Digits", "teacher", None, 0)
    teacher = load_representation(teacher_path)
    rotation = np.linalg.qr(np.random.default_rng(40).normal(size=(64, 64)))[0]
    rotated = dict(teacher, layer3=(teacher["layer3"] @ rotation * 3.0 + 1.0).astype(np.float32))
    student_path = tmp_path / "rotated.npz"
    save_representation(student_path, rotated)
    # a rotated, scaled, shifted copy maps exactly back onto the teacher's features
    features = teacher["layer3"].astype(np.float64)
    np.testing.assert_allclose(figure_summary.map_into(rotated["layer3"].astype(np.float64),
                                                       features), features, atol=1e-3)
    grid = figures.Grid("mini", "Digits", ("logit",), (0.5,), (0,), "ResNet56", "ResNet20")
    payload = {"umap_teacher": str(teacher_path),
               "umap_students": [("rotated copy", str(student_path))]}
    written = figure_summary.umap_figure(grid, payload, tmp_path)
    assert written == tmp_path / "umap_teacher_layer3.png"
    assert written.read_bytes()[:4] == b"\x89PNG"
    # the real UMAP of the teacher keeps the classes apart (synthetic class means), and the
    # mapped copy lands where the teacher's own points do
    mapped_features = figure_summary.map_into(rotated["layer3"].astype(np.float64), features)
    embedded, (mapped, itself) = figure_summary.teacher_umap(features,
                                                             [mapped_features, features])
    from sklearn.neighbors import KNeighborsClassifier

    labels = teacher["labels"]
    order = np.random.default_rng(42).permutation(labels.size)
    train, test = order[: labels.size // 2], order[labels.size // 2:]
    probe = KNeighborsClassifier(5).fit(embedded[train], labels[train])
    assert probe.score(embedded[test], labels[test]) > 0.5  # chance: 0.1
    spread = np.ptp(embedded, axis=0).max()
    assert np.median(np.linalg.norm(mapped - itself, axis=1)) < 0.02 * spread
    # umap-learn's own Euclidean path (distances not precomputed) keeps local neighbourhoods
    # as well: scikit-learn's trustworthiness of the two embeddings agrees (across UMAP
    # seeds it varies by about 0.005)
    from sklearn.manifold import trustworthiness

    own = umap.UMAP(n_components=2, random_state=0, n_jobs=1).fit_transform(features)
    ours_trust = trustworthiness(features, embedded, n_neighbors=10)
    own_trust = trustworthiness(features, own, n_neighbors=10)
    assert ours_trust > own_trust - 0.02

    monkeypatch.setitem(sys.modules, "umap", None)  # import fails as if not installed
    note = figure_summary.umap_figure(grid, payload, tmp_path)
    assert isinstance(note, str) and "umap-learn is not installed" in note


def test_many_classes_get_distinct_colours_in_the_scatter_figures(tmp_path):
    for classes in (10, 20, 100, 200):
        colours = figure_summary.class_colours(classes)
        assert len({tuple(np.round(c, 6)) for c in colours}) == classes  # never label % 10
    rng = np.random.default_rng(41)
    labels = np.arange(400) % 100
    panels = [("teacher", rng.normal(size=(400, 2)), labels), ("no run", None, None)]
    grid = figures.Grid("mini", "Cifar100", ("logit",), (0.5,), (0,), "ResNet56", "ResNet20")
    written = figure_summary.pca_scatter(grid, {"scatter_panels": panels, "num_classes": 100},
                                         tmp_path)
    assert written == tmp_path / "pca_scatter_layer3.png"
    assert written.read_bytes()[:4] == b"\x89PNG"


def test_rerun_recomputes_only_what_a_new_run_touches(analysed, tmp_path, monkeypatch):
    """Copy the analysed tree (modification times kept, so caches stay valid), add runs, and
    count what is recomputed. Figure drawing is replaced by a recorder: what matters here
    is which groups are redrawn; drawing itself is covered above."""
    source_root, _, _, _ = analysed
    root = tmp_path / "copy"
    shutil.copytree(source_root, root, copy_function=shutil.copy2)
    study = load_study(root / "study.toml")
    study.experiments_dir = root / "experiments"
    study.analysis_dir = root / "analysis"
    drawn = []

    def recorder(kind, grid, frame, payload, out_dir):
        drawn.append((grid.dataset, kind, payload.get("method") or payload.get("metric")))
        return {"files": [], "notes": []}

    monkeypatch.setattr(figure_cache, "draw_group", recorder)

    unchanged = analyze.analyze_study(study, jobs=1, log=lambda line: None, show_progress=False)
    assert unchanged.models_computed == 0 and unchanged.pairs_computed == 0
    # 8 files of the grid, one corrupt; 4 students of seed 0 have a teacher
    assert unchanged.models_cached == 7 and unchanged.pairs_cached == 4
    assert drawn == [] and unchanged.figures_drawn == 0 and unchanged.figures_kept > 40

    save_representation(_path(study, "Digits", "rkd", 0.9, 0), synthetic_representation(7, 0.8))
    added = analyze.analyze_study(study, jobs=1, log=lambda line: None, show_progress=False)
    assert (added.models_computed, added.pairs_computed) == (1, 1)
    assert (added.models_cached, added.pairs_cached) == (7, 4)
    redrawn_methods = {name for _, kind, name in drawn if kind == "per_method"}
    assert redrawn_methods == {"rkd"}  # logit's figures do not show rkd
    assert {dataset for dataset, _, _ in drawn} == {"Digits"}

    drawn.clear()
    save_representation(_path(study, "Digits", "teacher", None, 1),
                        synthetic_representation(8, 1.0))
    teacher_added = analyze.analyze_study(study, jobs=1, log=lambda line: None,
                                          show_progress=False)
    # the new teacher, and the pairs of every seed-1 student (pure, logit a0.9)
    assert teacher_added.models_computed == 1
    assert teacher_added.pairs_computed == 2
    assert not any("seed 1: no teacher" in note for note in teacher_added.notes)
    # the UMAP shows the teacher of the smallest seed: a new seed-1 teacher leaves it alone
    assert ("Digits", "umap", None) not in drawn and ("Digits", "summary", None) in drawn


def test_model_cache_outlives_a_bootstrap_change_but_not_a_model_setting(analysed, tmp_path):
    """Per-model metrics do not use the bootstrap: analysing with another --bootstrap count
    (or 0) reuses them; a setting they do use recomputes them."""
    _, study, _, _ = analysed
    path = _path(study, "Digits", "logit", 0.9, 0)
    cache = str(tmp_path / "model.npz")
    assert not compute.model_task(str(path), cache)["cached"]
    for bootstrap in (0, 50):
        other = {**compute.SETTINGS, "bootstrap_samples": bootstrap}
        assert compute.model_task(str(path), cache, other)["cached"]
    changed = {**compute.SETTINGS, "knn_k": compute.SETTINGS["knn_k"] + 2}
    assert not compute.model_task(str(path), cache, changed)["cached"]


def test_cached_results_equal_fresh_results(analysed, tmp_path):
    _, study, _, _ = analysed
    path = _path(study, "Digits", "logit", 0.9, 0)
    copy = tmp_path / path.name
    shutil.copy2(path, copy)
    fresh = compute.model_task(str(copy), str(tmp_path / "model.npz"))
    cached = compute.model_task(str(copy), str(tmp_path / "model.npz"))
    assert not fresh["cached"] and cached["cached"]
    assert fresh["rows"] == cached["rows"]
    np.testing.assert_array_equal(fresh["scatter"], cached["scatter"])
    # a damaged cache entry is recomputed, not trusted and not fatal
    cache = tmp_path / "model.npz"
    cache.write_bytes(cache.read_bytes()[:300])
    again = compute.model_task(str(copy), str(cache))
    assert not again["cached"] and again["rows"] == fresh["rows"]
    # a changed representation file invalidates its entry
    os.utime(copy, ns=(copy.stat().st_atime_ns, copy.stat().st_mtime_ns + 1))
    assert not compute.model_task(str(copy), str(cache))["cached"]


def test_no_representations_is_a_user_error(tmp_path):
    (tmp_path / "study.toml").write_text(STUDY_TEXT)
    study = load_study(tmp_path / "study.toml")
    study.analysis_dir = tmp_path / "analysis"
    with pytest.raises(UserError, match="kdlab extract"):
        analyze.analyze_study(study, jobs=1, log=lambda line: None, show_progress=False)
    with pytest.raises(UserError, match="--jobs"):
        workers.resolve_jobs(-1)


def test_cli_analyze_reports_and_exits_zero(analysed, tmp_path, monkeypatch, capsys):
    source_root, _, _, _ = analysed
    root = tmp_path / "copy"
    shutil.copytree(source_root, root, copy_function=shutil.copy2)
    monkeypatch.chdir(root)  # the study's paths are relative to the working directory
    assert main(["analyze", "study.toml", "--jobs", "1"]) == 0
    output = capsys.readouterr().out
    assert "analyze mini:" in output and "problem: Digits rkd a0.5 s1" in output
    assert "figures 0 drawn" in output  # all cached from the copied tree


def test_pair_metrics_have_bootstrap_intervals_around_their_values(analysed):
    _, study, _, _ = analysed
    frame = pd.read_csv(layout.analysis_dir(study.analysis_dir, "mini") / "metrics.csv")
    pairs = frame[frame["method"].isin(["pure", "logit", "rkd"])]
    for metric in ("cka_linear", "cka_rbf", "rsa_spearman"):
        names = [metric, f"{metric}_ci_low", f"{metric}_ci_high"]
        rows = pairs[pairs["metric"].isin(names)].fillna({"alpha": -1.0})
        table = rows.pivot_table(index=["method", "alpha", "seed", "layer"], columns="metric",
                                 values="value")
        assert len(table) == 4 * 3 and table.notna().all().all()  # 4 pairs x 3 layers
        assert (table[names[1]] <= table[metric]).all()
        assert (table[metric] <= table[names[2]]).all()
        assert (table[names[2]] - table[names[1]] > 0).all()
    assert not frame["metric"].str.startswith("cka_linear_debiased_ci").any()  # no interval


def test_noise_floors_compare_networks_without_distillation(analysed):
    _, study, _, _ = analysed
    folder = layout.analysis_dir(study.analysis_dir, "mini")
    floors = pd.read_csv(folder / "floors.csv")
    # Digits: pure students of seeds 0 and 1; only one teacher seed, so no teacher floor
    assert set(floors["floor"]) == {"floor_pure_vs_pure"}
    assert set(zip(floors["seed_a"], floors["seed_b"])) == {(0, 1)}
    first = load_representation(_path(study, "Digits", "pure", None, 0))
    second = load_representation(_path(study, "Digits", "pure", None, 1))
    for layer in LAYERS:
        row = floors[(floors["layer"] == layer) & (floors["metric"] == "cka_linear")]
        assert float(row["value"].iloc[0]) == pytest.approx(
            metrics.linear_cka(first[layer], second[layer]), rel=1e-5)
    html = (folder / "report.html").read_text()
    assert "floors.csv" in html and "noise floors" in html
    # the absent teacher floor is explained, the present pure floor is not called absent
    assert ("Digits: no teacher vs teacher (1 seed with a representation) noise floor: a "
            "floor across seeds needs at least two seeds") in html
    assert "no pure student vs pure student" not in html


def test_missing_floor_notes_name_each_data_set_and_role():
    from types import SimpleNamespace as Entry

    entries = [Entry(dataset="Cifar10", method="teacher", seed=0, model="ResNet56"),
               Entry(dataset="Cifar10", method="pure", seed=0, model="ResNet20"),
               Entry(dataset="Cifar10", method="logit", seed=1, model="ResNet20"),
               Entry(dataset="SVHN", method="teacher", seed=0, model="ResNet56"),
               Entry(dataset="SVHN", method="teacher", seed=2, model="ResNet56"),
               Entry(dataset="SVHN", method="pure", seed=0, model="ResNet20"),
               Entry(dataset="SVHN", method="pure", seed=1, model="ResNet20")]
    notes = floors.missing_floor_notes(entries)
    assert notes == [
        "Cifar10: no pure student vs pure student (1 seed with a representation) and teacher "
        "vs teacher (1 seed with a representation) noise floors: a floor across seeds needs "
        "at least two seeds; the pure student against the teacher (the 'pure' rows) is the "
        "only no-distillation reference drawn"]
    assert floors.missing_floor_notes(entries[3:]) == []


def test_without_intervals_and_floors(analysed, tmp_path):
    source_root, _, _, _ = analysed
    root = tmp_path / "copy"
    shutil.copytree(source_root / "analysis" / "experiment_mini" / "representations",
                    root / "analysis" / "experiment_mini" / "representations")
    (root / "study.toml").write_text(STUDY_TEXT)
    study = load_study(root / "study.toml")
    study.analysis_dir = root / "analysis"
    report = analyze.analyze_study(study, jobs=1, log=lambda line: None, show_progress=False,
                                   bootstrap=0, floors=False)
    frame = pd.read_csv(layout.analysis_dir(study.analysis_dir, "mini") / "metrics.csv")
    assert not frame["metric"].str.contains("_ci_").any()
    assert "cka_linear" in set(frame["metric"])
    assert report.floors_computed == 0
    with pytest.raises(UserError, match="--bootstrap"):
        analyze.analyze_study(study, jobs=1, log=lambda line: None, show_progress=False,
                              bootstrap=-1)


def test_summary_names_corrupt_files_as_unreadable_not_present(analysed):
    _, _, report, lines = analysed
    assert [entry.label for entry, _ in report.unreadable] == ["Digits rkd a0.5 s1"]
    assert report.unreadable[0][1].startswith("unreadable:")
    assert len(report.readable) == len(report.available) - 1
    summary = report.summary()
    assert summary.startswith(f"{len(report.readable)} representations, 1 unreadable "
                              "(Digits rkd a0.5 s1)")
    assert "1 unreadable (Digits rkd a0.5 s1)" in lines[0]


def _copied_study(analysed, tmp_path):
    source_root, _, _, _ = analysed
    root = tmp_path / "copy"
    shutil.copytree(source_root, root, copy_function=shutil.copy2)
    return root


def test_analysis_folder_that_is_a_file_is_one_line_and_exit_2(analysed, tmp_path,
                                                               monkeypatch, capsys):
    root = _copied_study(analysed, tmp_path)
    folder = root / "analysis" / "experiment_mini"
    shutil.rmtree(folder)
    folder.write_text("not a folder")
    monkeypatch.chdir(root)
    assert main(["analyze", "study.toml", "--jobs", "1"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error
    assert str(Path("analysis") / "experiment_mini") in error and "writable" in error
    assert folder.read_text() == "not a folder"  # nothing lost


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_analysis_folder_is_one_line_and_exit_2(analysed, tmp_path, monkeypatch,
                                                          capsys):
    root = _copied_study(analysed, tmp_path)
    folder = root / "analysis" / "experiment_mini"
    folder.chmod(0o555)
    monkeypatch.chdir(root)
    try:
        assert main(["analyze", "study.toml", "--jobs", "1"]) == 2
    finally:
        folder.chmod(0o755)
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "experiment_mini" in error


def test_a_write_failing_part_way_is_one_line_naming_the_file(analysed, tmp_path,
                                                              monkeypatch, capsys):
    import errno

    root = _copied_study(analysed, tmp_path)
    monkeypatch.chdir(root)

    def full_disk(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(analyze, "atomic_write_text", full_disk)
    assert main(["analyze", "study.toml", "--jobs", "1"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "metrics.csv" in error and "No space left" in error


def test_earlier_figures_are_digested_by_the_runs_they_show(analysed):
    """The earlier analysis's group is redrawn when the runs it shows change, not whenever a
    test accuracy does: a KD run that is no method's representative leaves its digest alone
    (the summary, which tabulates every accuracy, changes)."""
    _, study, _, _ = analysed
    frame = pd.read_csv(layout.analysis_table_path(study.analysis_dir, study.name,
                                                   "metrics.csv"))
    data = frame[frame["dataset"] == "Digits"].reset_index(drop=True)
    entries = [entry for entry in analyze.expected_entries(study)
               if entry.dataset == "Digits" and entry.path.is_file()]
    scatter = {entry: (np.zeros((2, 2)), np.zeros(2, dtype=int)) for entry in entries}

    def groups(data):
        return {group_id: (figure_cache._digest(kind, grid, subset, payload), payload)
                for group_id, kind, grid, subset, payload, _ in figure_cache.dataset_groups(
                    study, "Digits", data, scatter, compute.SETTINGS)}

    before = groups(data)
    shown = {item["file"] for item in before["Digits/earlier"][1]["earlier_files"]}
    other = next(entry for entry in entries if entry.method not in ("teacher", "pure")
                 and entry.path.name not in shown)
    row = ((data["method"] == other.method) & (data["alpha"] == other.alpha)
           & (data["seed"] == other.seed) & (data["metric"] == "test_acc"))
    assert row.sum() == 1
    changed = data.copy()
    changed.loc[row, "value"] = changed.loc[row, "value"] - 50.0   # further from the median
    after = groups(changed)
    assert after["Digits/earlier"][0] == before["Digits/earlier"][0]
    assert after["Digits/summary"][0] != before["Digits/summary"][0]
    # a representative's own file changing redraws the group
    representative = next(entry for entry in entries if entry.path.name in shown
                          and entry.method not in ("teacher", "pure"))
    stat = representative.path.stat()
    os.utime(representative.path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    try:
        assert groups(data)["Digits/earlier"][0] != before["Digits/earlier"][0]
    finally:
        os.utime(representative.path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
