"""Figure groups: which groups a study has, what each shows (a digest of its data), and
drawing only the groups whose data changed since the last analysis.

Figures are drawn in groups (one per data set x method, one per sweep metric, one for the
summary); a group is redrawn only when the data it shows changed (digest in the manifest
:func:`kdlab.run.layout.figure_manifest_path`), so a re-run after one new run redraws only
what it touches. Files a redrawn group no longer produces are removed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ...run import catalog, layout
from ...run.state_files import atomic_write_json, read_json, StateFileError
from .. import workers
from ..registry import SETTINGS
from .common import FIGURE_VERSION, FLOORS, PURE, TEACHER, Grid, Values, alpha_text
from .dynamics import draw_dynamics, floor_payload
from .earlier import PATH_KEYS as _EARLIER_PATH_KEYS, draw_earlier, earlier_payload
from .per_method import draw_per_method
from .summary import draw_summary, umap_figure
from .sweeps import draw_accuracy_vs_alignment, draw_sweep, sweep_metrics
from ..compute import file_key



@dataclass
class FigureOutcome:
    """What one :func:`draw_study` pass did: figure files drawn and kept (unchanged), and
    notes for the report."""

    drawn: int = 0
    kept: int = 0
    notes: list[str] = field(default_factory=list)


def draw_group(kind: str, grid: Grid, frame, payload: dict, out_dir: str) -> dict:
    """Draw one group of figures (worker entry point). Returns {'files': [str], 'notes'}."""
    out = Path(out_dir)
    notes: list[str] = []
    if kind == "dynamics":   # dynamics.csv rows, not metrics.csv's
        return {"files": [str(path) for path in draw_dynamics(grid, frame, payload, out)],
                "notes": notes}
    values = Values(frame)
    if kind == "per_method":
        files = draw_per_method(grid, values, payload["method"], out)
    elif kind == "sweep":
        files = draw_sweep(grid, values, out, payload["metric"])
    elif kind == "accuracy_vs_alignment":
        files = draw_accuracy_vs_alignment(grid, values, out)
    elif kind == "summary":
        files, notes = draw_summary(grid, values, payload, out)
    elif kind == "earlier":
        files, notes = draw_earlier(grid, payload, out)
    elif kind == "umap":
        drawn = umap_figure(grid, payload, out)
        files, notes = ([drawn], []) if isinstance(drawn, Path) else ([], [drawn])
    else:
        raise ValueError(f"unknown figure group {kind!r}")
    return {"files": [str(path) for path in files], "notes": notes}


def _digest(kind: str, grid: Grid, frame, payload: dict) -> str:
    import pandas as pd

    digest = hashlib.sha256()
    digest.update(json.dumps([FIGURE_VERSION, kind, asdict(grid)], sort_keys=True).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    # Paths are left out (the files are identified by name, size and time in 'umap_files'),
    # so a moved or synced analysis folder keeps its figures.
    digest.update(_payload_bytes({key: value for key, value in payload.items()
                                  if key not in _PATH_KEYS}))
    return digest.hexdigest()


_PATH_KEYS = ("umap_teacher", "umap_students") + _EARLIER_PATH_KEYS


def _payload_bytes(value) -> bytes:
    if isinstance(value, np.ndarray):
        return value.tobytes() + str(value.shape).encode()
    if isinstance(value, dict):
        return b"{" + b"".join(key.encode() + b":" + _payload_bytes(value[key])
                               for key in sorted(value)) + b"}"
    if isinstance(value, (list, tuple)):
        return b"[" + b",".join(_payload_bytes(item) for item in value) + b"]"
    return repr(value).encode()


def _scatter_panels(grid: Grid, entries_scatter: dict):
    """Teacher, pure student and one student per method (largest alpha present, then the
    smallest seed) for the last stage's PCA scatter."""
    def pick(method):
        candidates = [entry for entry in entries_scatter if entry.method == method]
        if not candidates:
            return None
        return sorted(candidates, key=lambda e: (-(e.alpha or 0.0), e.seed))[0]

    panels, chosen = [], []
    for method in [TEACHER, PURE] + list(grid.methods):
        entry = pick(method)
        name = {TEACHER: f"teacher ({grid.teacher_model})",
                PURE: f"pure ({grid.student_model})"}.get(method, method)
        if entry is None:
            panels.append((name, None, None))
            continue
        coords, labels = entries_scatter[entry]
        suffix = (f" α={alpha_text(entry.alpha)}" if entry.alpha is not None else "") + \
            f" s{entry.seed}"
        panels.append((name + suffix, coords, labels))
        chosen.append((method, entry, name + suffix))
    return panels, chosen


def _summary_payloads(grid: Grid, scatter: dict) -> tuple[dict, dict]:
    """What the summary and UMAP groups show besides the frame: the scatter panels, and
    the UMAP's input files (identified by name, size and time)."""
    panels, chosen = _scatter_panels(grid, scatter)
    label_sets = [labels for _, _, labels in panels if labels is not None]
    summary = {"scatter_panels": panels,
               "num_classes": int(max(int(labels.max()) + 1 for labels in label_sets))
               if label_sets else None}
    umap = {"umap_teacher": next((str(e.path) for m, e, _ in chosen if m == TEACHER), None),
            "umap_students": [(title, str(e.path)) for m, e, title in chosen if m != TEACHER],
            "umap_files": [file_key(e.path) for _, e, _ in chosen if e.path.exists()]}
    return summary, umap


def group_prefix(study, dataset: str, pair) -> str:
    """The start of the ids of one data set's (and, in a study of several pairs, one
    pair's) figure groups: 'Digits' or 'Digits/ResNet56_to_ResNet20'."""
    if not study.has_several_pairs:
        return dataset
    return f"{dataset}/{pair.teacher}_to_{pair.student}"


def dataset_groups(study, dataset: str, data, scatter: dict, settings: dict,
                   pair=None, dynamics=None, snapshot_accuracy=()) -> list[tuple]:
    """(group id, kind, frame subset, payload, output folder) of one data set's groups of
    one pair (default: the study's first); ``data``: that pair's rows of the frame;
    ``settings``: the analysis' metric settings (the earlier group reuses its ICA fits);
    ``dynamics``: the pair's dynamics.csv rows of the data set (a group when there are any)
    and ``snapshot_accuracy``: (run, epoch, test_acc %) of the snapshots."""
    pair = study.pairs[0] if pair is None else pair
    # alpha_levels: (None,) on the benchmark's objective, whose KD cells have no alpha
    grid = Grid(study.name, dataset, tuple(study.methods), tuple(study.alpha_levels()),
                tuple(study.seeds), pair.teacher, pair.student,
                catalog.model_facts(pair.teacher).stage_names,
                catalog.model_facts(pair.student).stage_names)
    prefix = group_prefix(study, dataset, pair)
    base = layout.figures_dir(study.analysis_dir, study.name, dataset,
                              (pair.teacher, pair.student) if study.has_several_pairs
                              else None)
    groups = []
    if study.methods and study.alpha_levels():
        for method in study.methods:
            shown = [method, TEACHER, PURE] + [floor[0] for floor in FLOORS]
            subset = data[data["method"].isin(shown)].reset_index(drop=True)
            groups.append((f"{prefix}/per_method/{method}", "per_method", subset,
                           {"method": method}, base / "per_method" / method))
        # alpha sweeps need alphas to sweep (none on the benchmark's objective)
        for metric, *_ in ([] if study.trains_without_alpha else sweep_metrics()):
            groups.append((f"{prefix}/sweeps/{metric}", "sweep",
                           data[data["metric"] == metric].reset_index(drop=True),
                           {"metric": metric}, base / "sweeps"))
        groups.append((f"{prefix}/sweeps/accuracy_vs_alignment", "accuracy_vs_alignment",
                       data[((data["metric"] == "cka_linear") & (data["layer"] == grid.last_stage))
                            | (data["metric"] == "test_acc")].reset_index(drop=True),
                       {}, base / "sweeps"))
    summary, umap = _summary_payloads(grid, scatter)
    groups.append((f"{prefix}/summary", "summary",
                   data[data["metric"] == "test_acc"].reset_index(drop=True), summary,
                   base / "summary"))
    # apart from the summary: the UMAP (slow) is redrawn only when the files it shows change
    groups.append((f"{prefix}/umap", "umap", data.iloc[0:0], umap, base / "summary"))
    # the earlier analysis's figures: redrawn only when the representations they show
    # change (the test accuracies choose each method's representative run; the payload
    # names the runs chosen, so a new run that is no method's representative redraws
    # nothing here)
    def cache_of(entry):
        return str(layout.model_cache_path(study.analysis_dir, study.name, dataset, entry.path))

    groups.append((f"{prefix}/earlier", "earlier", data.iloc[0:0],
                   earlier_payload(grid, list(scatter), data, cache_of, settings),
                   base / "earlier"))
    if dynamics is not None and len(dynamics):
        shown = dynamics[dynamics["metric"].isin(["cka_linear", "effective_dim_90"])]
        runs = set(shown["run"])
        groups.append((f"{prefix}/dynamics", "dynamics", shown.reset_index(drop=True),
                       {"floors": floor_payload(grid, data),
                        "accuracy": sorted(item for item in snapshot_accuracy
                                           if item[0] in runs)},
                       base / "dynamics"))
    return [(group_id, kind, grid, subset, payload, out)
            for group_id, kind, subset, payload, out in groups]


# figure kinds by drawing time, slowest first (one data set of charlie: UMAP ~15 s,
# earlier ~4 s, per-method ~3 s, a sweep ~1 s; one thread)
_SLOW_FIRST = {"umap": 0, "earlier": 1, "per_method": 2}


def _read_manifest(path: Path) -> dict:
    """The figure manifest; a damaged file, or an entry of the wrong shape, counts as absent
    (its groups are drawn again)."""
    try:
        manifest = read_json(path) or {}
    except StateFileError:
        return {}
    return {group: entry for group, entry in manifest.items()
            if isinstance(entry, dict) and isinstance(entry.get("digest"), str)
            and all(isinstance(entry.get(key, []), list)
                    and all(isinstance(item, str) for item in entry.get(key, []))
                    for key in ("files", "notes"))}


def draw_study(study, frame, scatter: dict, pool, show_progress: bool = True,
               settings: dict | None = None, dynamics=None,
               snapshot_accuracy=()) -> FigureOutcome:
    """Draw (or keep, when unchanged) every figure group of every data set of the study.

    ``frame``: metrics frame; ``scatter``: Entry -> (coords [m,2], labels [m]); ``pool``:
    where groups are drawn (:mod:`kdlab.analysis.workers`); ``settings``: the metric
    settings of the analysis (default: the registry's); ``dynamics``: the dynamics.csv
    frame and ``snapshot_accuracy`` (run, epoch, test_acc %) of its snapshots (the figures
    over training). Returns what was drawn, kept and noticed. The manifest maps each
    group to its digest and files."""
    root = layout.analysis_dir(study.analysis_dir, study.name)
    manifest_path = layout.figure_manifest_path(study.analysis_dir, study.name)
    manifest = _read_manifest(manifest_path)
    outcome = FigureOutcome()
    tasks, new_manifest = [], {}
    for dataset in study.datasets:
        if frame[frame["dataset"] == dataset].empty:
            outcome.notes.append(f"{dataset}: no representations yet, no figures")
            continue
        if not (study.methods and study.alpha_levels()):
            outcome.notes.append(f"{dataset}: the study has no KD methods / alphas, so no "
                                 "per-method figures and no alpha sweeps")
        dataset_dynamics = (None if dynamics is None
                            else dynamics[dynamics["dataset"] == dataset].reset_index(drop=True))
        for pair in study.pairs:
            data = frame[(frame["dataset"] == dataset)
                         & (frame["pair"] == pair.label)].reset_index(drop=True)
            if data.empty:
                outcome.notes.append(f"{dataset}, pair {pair.label}: no representations "
                                     "yet, no figures")
                continue
            pair_scatter = {entry: value for entry, value in scatter.items()
                            if entry.dataset == dataset and pair in entry.pairs}
            pair_dynamics = None
            if dataset_dynamics is not None:
                pair_dynamics = dataset_dynamics[dataset_dynamics["run"].isin(
                    study.run_names_of(pair))].reset_index(drop=True)
            for group_id, kind, grid, subset, payload, out in dataset_groups(
                    study, dataset, data, pair_scatter, settings or SETTINGS, pair,
                    pair_dynamics, snapshot_accuracy):
                digest = _digest(kind, grid, subset, payload)
                previous = manifest.get(group_id, {})
                if (previous.get("digest") == digest
                        and all((root / f).is_file() for f in previous.get("files", []))):
                    new_manifest[group_id] = previous
                    outcome.notes += previous.get("notes", [])
                    outcome.kept += len(previous.get("files", []))
                    continue
                tasks.append((group_id, draw_group, kind, grid, subset, payload, str(out)))
                new_manifest[group_id] = {"digest": digest, "files": [], "notes": []}
    # the slowest kinds first, so that no worker starts a long group while the others
    # have run out of work
    tasks.sort(key=lambda task: _SLOW_FIRST.get(task[2], len(_SLOW_FIRST)))
    _draw_tasks(tasks, pool, show_progress, root, manifest, new_manifest, outcome)
    atomic_write_json(manifest_path, new_manifest)
    return outcome


def _draw_tasks(tasks, pool, show_progress, root: Path, manifest: dict, new_manifest: dict,
                outcome: FigureOutcome) -> None:
    """Draw the groups that changed; remove files no group produces any more."""
    for group_id, drawn in workers.run_all(pool, tasks, "figures", show_progress):
        # relative to the analysis folder, so the folder can be moved or synced
        files = [Path(os.path.relpath(f, root)).as_posix() for f in drawn["files"]]
        new_manifest[group_id]["files"] = files
        new_manifest[group_id]["notes"] = drawn["notes"]
        outcome.notes += drawn["notes"]
        outcome.drawn += len(files)
    # files of the last pass that no group produces now (a group redrawn with fewer files,
    # a group that no longer exists, or a file that moved to another group)
    current = {name for entry in new_manifest.values() for name in entry["files"]}
    for entry in manifest.values():
        for stale in set(entry.get("files", [])) - current:
            (root / stale).unlink(missing_ok=True)


def figure_files(study) -> dict[str, list[Path]]:
    """Group id -> existing figure files (paths under the analysis folder), from the
    manifest of the last analysis."""
    root = layout.analysis_dir(study.analysis_dir, study.name)
    manifest = _read_manifest(layout.figure_manifest_path(study.analysis_dir, study.name))
    return {group_id: [root / f for f in entry.get("files", []) if (root / f).is_file()]
            for group_id, entry in manifest.items()}
