"""The earlier analysis's figures as one figure group per data set (``earlier/``): the ICA
correlation heatmap of one representative run per method, the teacher-vs-itself
cross-layer CKA panel, and the PCA scatter in the teacher's basis
(:mod:`kdlab.analysis.earlier_figures` draws them from arrays; this module picks the runs
and reads their representations).
"""

from __future__ import annotations

from pathlib import Path

from .common import PURE, TEACHER, Grid, alpha_text
from ..compute import cached_ica_fits, file_key, model_settings, stage_pairs
from ..earlier_figures import representative_run
from ..store import load_representation, stage_names_of
from ..views import ModelView
from .. import earlier_figures as ef

# payload keys holding paths (left out of the group's digest; the files enter it by name,
# size and time in 'earlier_files')
PATH_KEYS = ("earlier_teachers", "earlier_ica", "earlier_scatter")


def _title(entry) -> str:
    alpha = f" α={alpha_text(entry.alpha)}" if entry.alpha is not None else ""
    return f"{entry.method}{alpha} s{entry.seed}"


def earlier_payload(grid: Grid, entries, data, cache_of, settings: dict) -> dict:
    """Which representations the group shows: every teacher (by seed), one representative
    run per method (test accuracy nearest the method's median; its own seed's teacher),
    and for the scatter the teacher, the pure student and those representatives.
    ``cache_of(entry)``: the entry's per-model cache, whose ICA fits the heatmap reuses
    (made with ``settings``, the analysis' metric settings)."""
    teachers = {e.seed: e for e in sorted(entries, key=lambda e: e.seed) if e.method == TEACHER}
    accuracy = {(row.method, row.alpha, row.seed): row.value for row in
                data[data["metric"] == "test_acc"].itertuples()}
    representatives = []
    for method in grid.methods:
        runs = {(e.alpha, e.seed): e for e in entries if e.method == method
                and e.seed in teachers and (method, e.alpha, e.seed) in accuracy}
        if runs:
            key = representative_run({k: accuracy[(method, *k)] for k in runs})
            representatives.append(runs[key])
    pure = sorted((e for e in entries if e.method == PURE), key=lambda e: e.seed)
    first_teacher = next(iter(teachers.values()), None)
    scatter = ([] if first_teacher is None else
               [(f"teacher ({grid.teacher_model}) s{first_teacher.seed}", first_teacher)]
               + [(f"pure ({grid.student_model}) s{e.seed}", e) for e in pure[:1]]
               + [(_title(e), e) for e in representatives])
    shown = list(teachers.values()) + representatives + pure[:1]
    return {"earlier_teachers": [str(e.path) for e in teachers.values()],
            "earlier_ica": [(_title(e), str(teachers[e.seed].path), str(e.path),
                             cache_of(teachers[e.seed]), cache_of(e)) for e in representatives],
            "settings": model_settings(settings),
            "earlier_scatter": [(title, str(e.path)) for title, e in scatter],
            "earlier_files": [file_key(e.path) for e in shown if e.path.exists()]}


def _ica_sources(view, fits: dict, layer: str):
    """The layer's ICA sources, from the fit the per-model step stored when there is one
    (the same fit: same subsample, seed and settings), fitted here otherwise."""
    layer_view = view.layer(layer)
    if layer in fits:
        layer_view.__dict__["ica_fit"] = fits[layer]
    fit = layer_view.ica_fit
    return None if fit is None else fit.sources(layer_view.features)


def _ica_view(path: str, cache: str, settings: dict):
    return ModelView(load_representation(path), settings), cached_ica_fits(path, cache, settings)


def draw_earlier(grid: Grid, payload: dict, out: Path) -> tuple[list[Path], list[str]]:
    """Draw the group's figures under ``out``; returns (files, notes on what was skipped)."""
    if not payload["earlier_teachers"]:
        return [], [f"{grid.dataset}: figures of the earlier analysis skipped: no teacher "
                    "representation"]
    files, notes = [], []
    teachers = [load_representation(path) for path in payload["earlier_teachers"]]
    teacher_stages = stage_names_of(teachers[0])
    matrices = [ef.teacher_self_cka([t[layer] for layer in teacher_stages]) for t in teachers]
    files.append(ef.plot_teacher_self_cka(
        matrices, out / ef.TEACHER_SELF_CKA_FILE, layer_names=teacher_stages,
        title=f"{grid.dataset}: cross-layer linear CKA of the teacher ({grid.teacher_model})"))
    if payload["earlier_ica"]:
        panels = {}
        settings = payload["settings"]
        for title, teacher_path, student_path, teacher_cache, student_cache in \
                payload["earlier_ica"]:
            teacher = _ica_view(teacher_path, teacher_cache, settings)
            student = _ica_view(student_path, student_cache, settings)
            row = {}
            # stages paired by position from the last, labelled by the student's name
            for teacher_layer, layer in stage_pairs(teacher_stages, grid.student_stages):
                a, b = _ica_sources(*teacher, teacher_layer), _ica_sources(*student, layer)
                if a is not None and b is not None:
                    row[layer] = (a, b)
            panels[title] = row
        if any(panels.values()):
            files.append(ef.plot_ica_correlation(
                panels, out / ef.ICA_CORRELATION_FILE,
                title=f"{grid.dataset}: ICA components, teacher vs a representative student "
                      "per method (|r|, Hungarian-matched order)"))
    else:
        notes.append(f"{grid.dataset}: ICA correlation heatmap skipped: no KD run with a "
                     "teacher of its seed")
    first = teachers[0]
    last_stages = [(title, load_representation(path)) for title, path in payload["earlier_scatter"]]
    models = [(title, arrays[stage_names_of(arrays)[-1]]) for title, arrays in last_stages]
    files.append(ef.plot_pca_scatter_teacher_basis(
        first[teacher_stages[-1]], models, first["labels"], out / ef.PCA_SCATTER_TEACHER_BASIS_FILE,
        num_classes=int(first["labels"].max()) + 1,
        title=f"{grid.dataset}: {teacher_stages[-1]} (the last stage)"))
    return files, notes
