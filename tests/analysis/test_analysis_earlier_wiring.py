"""The earlier analysis's figures and metric, wired into ``kdlab analyze``, the report and
``kdlab methodology``, on a small Digits study trained here for real (tests/builders.py)."""

from __future__ import annotations

import csv
import re

import numpy as np
import pytest

from kdlab import cli
from kdlab.run import layout
from kdlab.analysis import earlier_figures, earlier_metrics, registry
from kdlab.analysis.store import load_representation
from kdlab.analysis.analyze import expected_entries
from builders import analysed_copy

pytestmark = pytest.mark.slow

EARLIER_FILES = (earlier_figures.ICA_CORRELATION_FILE, earlier_figures.TEACHER_SELF_CKA_FILE,
                 earlier_figures.PCA_SCATTER_TEACHER_BASIS_FILE)


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    return analysed_copy(tmp_path_factory)


def _earlier_dir(study):
    return layout.figures_dir(study.analysis_dir, study.name, "Digits") / "earlier"


def test_analyze_draws_the_three_earlier_figures_and_the_report_links_them(analysed):
    folder = _earlier_dir(analysed)
    for name in EARLIER_FILES:
        assert (folder / name).is_file() and (folder / name).stat().st_size > 1000, name
    report = layout.report_path(analysed.analysis_dir, analysed.name).read_text()
    section = report.split("Figures of the earlier analysis", 1)[1]
    for name in EARLIER_FILES:
        assert f'figures/Digits/earlier/{name}"' in section.split("<h2>", 1)[0], name


def test_metrics_csv_has_channel_space_angles_equal_to_a_direct_computation(analysed):
    path = layout.analysis_table_path(analysed.analysis_dir, analysed.name, "metrics.csv")
    rows = [row for row in csv.DictReader(path.open())
            if row["metric"] == "principal_angle_channel_mean"]
    # ResNet20 and ResNet8 have the same channel counts (16, 32, 64): pure and logit, 3 layers
    assert {(row["method"], row["layer"]) for row in rows} == {
        (method, layer) for method in ("pure", "logit") for layer in ("layer1", "layer2",
                                                                       "layer3")}
    entries = {entry.method: entry for entry in expected_entries(analysed)}
    teacher = load_representation(entries["teacher"].path)
    student = load_representation(entries["logit"].path)
    written = next(float(row["value"]) for row in rows
                   if row["method"] == "logit" and row["layer"] == "layer3")
    expected = earlier_metrics.principal_angle_channel_mean(teacher["layer3"],
                                                            student["layer3"])
    assert written == pytest.approx(expected, abs=1e-3)
    assert 0.0 <= written <= 90.0


def test_report_glossary_and_setup_paragraph(analysed):
    report = layout.report_path(analysed.analysis_dir, analysed.name).read_text()
    assert "<dt>principal_angle_channel_mean</dt>" in report
    assert "merely renumbered" in report   # the glossary says why it differs
    assert "<strong>ICA and principal angles: kdlab against the earlier analysis.</strong>" \
        in report
    assert f"top-{registry.SETTINGS['principal_angle_components']} principal" in report


def test_rerun_keeps_the_earlier_figures_unless_their_representations_change(analysed,
                                                                             capsys):
    files = [_earlier_dir(analysed) / name for name in EARLIER_FILES]
    before = [path.stat().st_mtime_ns for path in files]
    assert cli.main(["analyze", str(analysed.path), "--jobs", "1"]) == 0
    assert [path.stat().st_mtime_ns for path in files] == before
    # a changed student representation redraws them
    student = next(e for e in expected_entries(analysed) if e.method == "logit")
    arrays = dict(np.load(student.path))
    arrays["layer3"] = arrays["layer3"] * 1.5
    np.savez(student.path, **arrays)
    capsys.readouterr()
    assert cli.main(["analyze", str(analysed.path), "--jobs", "1"]) == 0
    assert all(after != old for after, old in
               zip([path.stat().st_mtime_ns for path in files], before))


def test_methodology_contains_the_setup_paragraph(analysed):
    assert cli.main(["methodology", str(analysed.path)]) == 0
    folder = layout.analysis_dir(analysed.analysis_dir, analysed.name)
    markdown = next(folder.rglob("methodology.md"), None)
    assert markdown is not None
    text = re.sub(r"\s+", " ", markdown.read_text())
    paragraph = earlier_metrics.earlier_setup_differences(
        **{key: registry.SETTINGS[key] for key in (
            "ica_components", "ica_fit_samples", "ica_max_iter", "ica_tol",
            "ica_random_state", "principal_angle_components")})
    plain = re.sub(r"\s+", " ", paragraph.replace("**", "").replace("`", ""))
    assert plain in text


def test_report_states_the_selection_rule_and_the_selected_accuracy(analysed):
    from kdlab.study.progress import study_run_states

    report = layout.report_path(analysed.analysis_dir, analysed.name).read_text()
    assert "Selection rule: [training] selection = &quot;test&quot;" in report
    assert "<th>max_acc (%): mean ± std, 95% CI (n)</th><th>final_acc (%)</th>" in report
    kd = next(state for state in study_run_states(analysed) if state.spec.method == "logit")
    # one seed: the mean and n, no interval
    assert f"<td>{kd.max_acc:.2f} (n=1)</td>" in report


def test_ica_heatmap_reuses_the_per_model_fit_and_gets_the_same_sources(analysed):
    """The earlier group's ICA heatmap takes each model's FastICA fit from the per-model
    cache instead of fitting again; the sources are those of a fresh fit."""
    from kdlab.analysis.figures import earlier

    for entry in expected_entries(analysed):
        if entry.method not in ("teacher", "logit"):
            continue
        cache = layout.model_cache_path(analysed.analysis_dir, analysed.name, entry.dataset,
                                        entry.path)
        view, fits = earlier._ica_view(str(entry.path), str(cache), registry.SETTINGS)
        assert fits and set(fits) <= {"layer1", "layer2", "layer3", "logits"}
        fresh_view, _ = earlier._ica_view(str(entry.path), str(cache), registry.SETTINGS)
        for layer in fits:
            reused = earlier._ica_sources(view, fits, layer)
            fitted = earlier._ica_sources(fresh_view, {}, layer)
            np.testing.assert_allclose(reused, fitted, rtol=1e-6, atol=1e-6)
        # a stale cache (another file) gives no fit: the heatmap fits again
        assert earlier._ica_view(str(entry.path), str(cache.with_name("absent.npz")),
                                 registry.SETTINGS)[1] == {}
