"""Representations over training: `kdlab analyze` over snapshot representation files
(written in the real on-disk format at layout.representation_path(..., epoch=N)) into
dynamics.csv, its figures, the report's section and kdlab.metrics' epoch column."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import kdlab
from kdlab.run import layout
from kdlab.analysis import analyze, dynamics
from kdlab.analysis.figures import cache as figure_cache
from kdlab.analysis.store import LAYERS, save_representation
from kdlab.run.state_files import atomic_write_json
from kdlab.study.study_file import load_study
from builders import synthetic_representation

STUDY_TEXT = """
name = "dyn"
datasets = ["Digits"]
teacher = "ResNet56"
student = "ResNet20"
methods = ["logit"]
alphas = [0.5, 0.9]
seeds = [0, 1]
experiments_dir = "experiments"
analysis_dir = "analysis"
"""
LAST_EPOCH = 5
# closeness to the teacher's shared component at each snapshot before the last: rises, then
# (at the last epoch, the final weights) falls back
SNAPSHOT_CLOSENESS = {1: 0.05, 3: 0.95}


def _final_closeness(entry) -> float:
    return {"teacher": 1.0, "pure": 0.2}.get(entry.method, 0.2 + 0.7 * (entry.alpha or 0))


def _final_seed(index: int) -> int:
    return 100 + index


def _load(root: Path):
    study = load_study(root / "study.toml")
    study.experiments_dir = root / "experiments"
    study.analysis_dir = root / "analysis"
    return study


def write_dynamics_study(root: Path):
    """Final representations of every run; snapshots after epochs 1, 3 and 5 of every
    student (epoch 5's arrays equal to the final ones) and after epoch 1 of teacher s0; a
    metrics.json with test_acc per epoch for every student."""
    (root / "study.toml").write_text(STUDY_TEXT)
    study = _load(root)
    for index, entry in enumerate(analyze.expected_entries(study)):
        final = synthetic_representation(_final_seed(index), _final_closeness(entry))
        save_representation(entry.path, final)
        if entry.method == "teacher":
            if entry.seed == 0:
                save_representation(layout.representation_path(
                    study.analysis_dir, study.name, entry.spec, "teacher", epoch=1),
                    synthetic_representation(500 + index, 0.3))
            continue
        for epoch, closeness in SNAPSHOT_CLOSENESS.items():
            save_representation(layout.representation_path(
                study.analysis_dir, study.name, entry.spec, entry.role, epoch=epoch),
                synthetic_representation(1000 * epoch + index, closeness))
        save_representation(layout.representation_path(
            study.analysis_dir, study.name, entry.spec, entry.role, epoch=LAST_EPOCH), final)
        atomic_write_json(study.run_dir(entry.spec) / "metrics.json",
                          {"test_acc": [10.0 + 10 * epoch + index
                                        for epoch in range(1, LAST_EPOCH + 1)]})
    return study


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    root = tmp_path_factory.mktemp("dynamics")
    study = write_dynamics_study(root)
    report = analyze.analyze_study(study, jobs=1, log=lambda line: None, show_progress=False)
    return root, study, report


def _table(study, name) -> pd.DataFrame:
    return pd.read_csv(layout.analysis_table_path(study.analysis_dir, study.name, name))


def test_snapshots_found_by_the_layout_and_nothing_else(analysed):
    _, study, report = analysed
    # 3 students per seed (pure, logit a0.5, logit a0.9) x 2 seeds x 3 epochs + 1 teacher's
    assert len(report.snapshots) == 3 * 2 * 3 + 1
    assert report.snapshot_models_computed == 19 and report.snapshot_pairs_computed == 18
    entry = analyze.expected_entries(study)[-1]
    folder = entry.path.parent / layout.SNAPSHOTS_DIR
    (folder / f"{entry.path.stem}_e7.npz").write_bytes(b"not the layout's name")
    (folder / f"{entry.path.stem}_e0000.npz").write_bytes(b"no epoch 0")
    try:
        found = analyze.snapshot_entries(study, [entry])
    finally:
        (folder / f"{entry.path.stem}_e7.npz").unlink()
        (folder / f"{entry.path.stem}_e0000.npz").unlink()
    assert [e.epoch for e in found] == [1, 3, 5]
    assert [e.path for e in found] == [layout.representation_path(
        study.analysis_dir, study.name, entry.spec, "kd", epoch=epoch) for epoch in (1, 3, 5)]


def test_last_snapshot_equal_to_the_final_weights_gives_the_final_metrics_exactly(analysed):
    _, study, report = analysed
    final = _table(study, "metrics.csv")
    over_training = _table(study, "dynamics.csv")
    assert list(over_training.columns) == dynamics.COLUMNS
    last = over_training[over_training["epoch"] == LAST_EPOCH]
    # metrics.csv's form of the last snapshot's rows: interval bounds as METRIC_ci_* rows
    as_final = pd.concat(
        [last[["method", "alpha", "seed", "stage", "metric", "value"]]] + [
            last[last[bound].notna()].assign(metric=lambda f, b=bound: f["metric"] + "_" + b,
                                             value=lambda f, b=bound: f[b])[
                ["method", "alpha", "seed", "stage", "metric", "value"]]
            for bound in ("ci_low", "ci_high")]).rename(columns={"stage": "layer"})
    students = final[final["method"] != "teacher"]
    key = ["method", "alpha", "seed", "layer", "metric"]
    merged = students.merge(as_final, on=key, how="outer", suffixes=("_final", "_snapshot"),
                            indicator=True)
    assert (merged["_merge"] == "both").all(), merged[merged["_merge"] != "both"].head()
    assert len(merged) == len(students) > 100
    assert (merged["value_final"].to_numpy() == merged["value_snapshot"].to_numpy()).all()
    # and in full precision: the frame this pass computed against the final file's results
    frame = report.dynamics
    for entry in analyze.expected_entries(study):
        if entry.method == "teacher":
            continue
        rows = frame[(frame["run"] == entry.spec.name) & (frame["epoch"] == LAST_EPOCH)
                     & (frame["metric"] == "cka_linear")]
        expected = final[(final["method"] == entry.method) & (final["seed"] == entry.seed)
                         & (final["metric"] == "cka_linear")
                         & ((final["alpha"] == entry.alpha) if entry.alpha is not None
                            else final["alpha"].isna())]
        assert sorted(rows["stage"]) == sorted(expected["layer"]) == sorted(LAYERS)


def _linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. 2019, eq. 5: ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F), centred."""
    x = x.astype(np.float64) - x.mean(axis=0)
    y = y.astype(np.float64) - y.mean(axis=0)
    return float(np.linalg.norm(y.T @ x) ** 2
                 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def test_snapshot_pairs_with_its_teachers_final_representation(analysed):
    _, study, report = analysed
    entries = {(e.method, e.alpha, e.seed): e for e in analyze.expected_entries(study)}
    teacher, student = entries[("teacher", None, 1)], entries[("logit", 0.9, 1)]
    snapshot = layout.representation_path(study.analysis_dir, study.name, student.spec, "kd",
                                          epoch=3)
    with np.load(teacher.path) as t, np.load(snapshot) as s:
        expected = {layer: _linear_cka(t[layer], s[layer]) for layer in LAYERS}
    frame = report.dynamics
    rows = frame[(frame["run"] == student.spec.name) & (frame["epoch"] == 3)
                 & (frame["metric"] == "cka_linear")].set_index("stage")
    for layer in LAYERS:
        assert rows.loc[layer, "value"] == pytest.approx(expected[layer], rel=1e-4)
        assert rows.loc[layer, "ci_low"] <= rows.loc[layer, "value"] <= rows.loc[layer, "ci_high"]
    # the teacher's own snapshot: per-model metrics only, no pair with itself
    teacher_rows = frame[frame["method"] == "teacher"]
    assert set(teacher_rows["epoch"]) == {1} and "cka_linear" not in set(teacher_rows["metric"])
    assert "effective_dim_90" in set(teacher_rows["metric"])
    assert teacher_rows["ci_low"].isna().all()


def test_snapshot_accuracy_comes_from_the_runs_metrics_json(analysed):
    _, study, report = analysed
    accuracies = dynamics.snapshot_accuracies(study, report.snapshots)
    index_of = {e.spec.name: i for i, e in enumerate(analyze.expected_entries(study))}
    # the teacher's snapshot has no metrics.json here: left out, not invented
    assert len(accuracies) == 18
    for run, epoch, value in accuracies:
        assert value == 10.0 + 10 * epoch + index_of[run]


def test_figures_and_report_section_over_training(analysed):
    _, study, report = analysed
    folder = layout.figures_dir(study.analysis_dir, study.name, "Digits") / "dynamics"
    names = {"cka_over_training.png", "effective_dim_over_training.png",
             "accuracy_vs_cka_over_training.png"}
    assert {path.name for path in folder.iterdir()} == names
    for name in names:
        assert (folder / name).read_bytes()[:4] == b"\x89PNG"
    html = layout.report_path(study.analysis_dir, study.name).read_text()
    assert "<h2>Representations over training</h2>" in html
    for name in names:
        assert f"figures/Digits/dynamics/{name}" in html
    # the sentence: the peak of each method, computed here from dynamics.csv
    frame = _table(study, "dynamics.csv")
    last = frame[(frame["metric"] == "cka_linear") & (frame["stage"] == LAYERS[-1])]
    for method in ("logit", "pure"):
        cells = last[last["method"] == method].groupby(["alpha", "epoch"], dropna=False)[
            "value"].mean()
        alpha, epoch = cells.idxmax()
        where = "" if np.isnan(alpha) else f" at α = {layout.format_alpha(alpha)}"
        assert f"{method} peaks at epoch {epoch}{where} ({cells.max():.3f}, 95% CI" in html
    assert "t interval over 2 seeds" in html


def test_rerun_after_one_new_snapshot_does_only_its_work(analysed, tmp_path, monkeypatch):
    source, _, first = analysed
    root = tmp_path / "copy"
    shutil.copytree(source, root, copy_function=shutil.copy2)   # times kept: caches valid
    study = _load(root)
    drawn = []

    def recorder(kind, grid, frame, payload, out_dir):
        drawn.append(kind)
        return {"files": [], "notes": []}

    monkeypatch.setattr(figure_cache, "draw_group", recorder)
    unchanged = analyze.analyze_study(study, jobs=1, log=lambda line: None, show_progress=False)
    assert (unchanged.snapshot_models_computed, unchanged.snapshot_pairs_computed) == (0, 0)
    assert (unchanged.snapshot_models_cached, unchanged.snapshot_pairs_cached) == (19, 18)
    assert unchanged.models_computed == unchanged.pairs_computed == 0
    assert drawn == []

    student = next(e for e in analyze.expected_entries(study) if e.method == "logit")
    save_representation(layout.representation_path(study.analysis_dir, study.name,
                                                    student.spec, "kd", epoch=4),
                        synthetic_representation(77, 0.5))
    added = analyze.analyze_study(study, jobs=1, log=lambda line: None, show_progress=False)
    assert (added.snapshot_models_computed, added.snapshot_pairs_computed) == (1, 1)
    assert (added.snapshot_models_cached, added.snapshot_pairs_cached) == (19, 18)
    assert (added.models_computed, added.pairs_computed, added.floors_computed) == (0, 0, 0)
    assert drawn == ["dynamics"]   # only the figures over training show the new snapshot
    frame = _table(study, "dynamics.csv")
    assert 4 in set(frame.loc[frame["run"] == student.spec.name, "epoch"])
    # the rows of every other snapshot are those of the first pass
    before = _table(analysed[1], "dynamics.csv")
    assert frame[frame["epoch"] != 4].reset_index(drop=True).equals(before)


def test_without_snapshots_the_section_says_so_in_one_line(analysed, tmp_path):
    source, _, _ = analysed
    root = tmp_path / "copy"
    shutil.copytree(source, root, copy_function=shutil.copy2)
    for folder in (root / "analysis").rglob(layout.SNAPSHOTS_DIR):
        shutil.rmtree(folder)
    study = _load(root)
    report = analyze.analyze_study(study, jobs=1, log=lambda line: None, show_progress=False)
    assert report.snapshots == [] and len(report.dynamics) == 0
    assert list(_table(study, "dynamics.csv").columns) == dynamics.COLUMNS
    html = layout.report_path(study.analysis_dir, study.name).read_text()
    section = html.split("<h2>Representations over training</h2>")[1]
    assert section.strip().startswith('<p class="note">No snapshot representations')
    assert "dynamics/" not in html   # the figures over training were removed with them
    assert not (layout.figures_dir(study.analysis_dir, study.name, "Digits")
                / "dynamics" / "cka_over_training.png").exists()


def test_api_metrics_epoch_column(analysed):
    _, study, _ = analysed
    final = kdlab.metrics(study)
    assert str(final["epoch"].dtype) == "Int64" and final["epoch"].isna().all()
    assert len(final) == len(_table(study, "metrics.csv"))
    both = kdlab.metrics(study, snapshots=True)
    assert list(both.columns) == list(final.columns)
    over_training = both[both["epoch"].notna()]
    assert both[both["epoch"].isna()].reset_index(drop=True).equals(final)
    assert set(over_training["epoch"]) == {1, 3, 5} and over_training["problem"].isna().all()
    frame = _table(study, "dynamics.csv")
    assert len(over_training) == len(frame) + frame["ci_low"].notna().sum() \
        + frame["ci_high"].notna().sum()
    row = frame[(frame["metric"] == "cka_linear") & (frame["epoch"] == 3)].iloc[0]
    picked = over_training[(over_training["metric"] == "cka_linear_ci_low")
                           & (over_training["epoch"] == 3) & (over_training["seed"] == row.seed)
                           & (over_training["method"] == row.method)
                           & (over_training["layer"] == row.stage)
                           & ((over_training["alpha"] == row.alpha) if not np.isnan(row.alpha)
                              else over_training["alpha"].isna())]
    assert picked["value"].tolist() == [row.ci_low]
