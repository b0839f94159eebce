"""Read-only pandas views of a study, for notebooks: ``kdlab.runs``, ``kdlab.curves``,
``kdlab.metrics``.

They read the files the other commands write (status.json, metrics.json, the analysis'
metrics.csv) and nothing else: no scheduler is asked, nothing is written, and torch is
never imported, so they are quick on a laptop holding a synced copy of the experiments.

    import kdlab
    runs = kdlab.runs("studies/charlie.toml")          # one row per run of the grid
    runs.groupby(["dataset", "method", "alpha"], dropna=False)["max_acc"].agg(["mean", "std"])
    curves = kdlab.curves("studies/charlie.toml")      # long form: one row per run x epoch x metric
    metrics = kdlab.metrics("studies/charlie.toml")    # the analysis' metrics.csv, typed

Naming follows metrics.csv so the frames join: ``method`` is the KD method, or 'teacher'
/ 'pure' for the two kinds of pure run (``role`` says the same), ``alpha`` is NaN for them
(so group with ``dropna=False`` to keep the pure runs).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from . import runstate
from .errors import UserError
from .layout import analysis_dir
from .ops.common import made_by_of
from .status import RunState, study_run_states
from .study import Study, load_study

RUN_COLUMNS = ["dataset", "role", "method", "alpha", "seed", "model", "teacher", "state",
               "detail", "epoch", "epochs", "max_acc", "final_acc", "selected_acc",
               "started_at", "completed_at", "duration_seconds", "epoch_seconds_mean",
               "job_id", "scheduler", "run_dir", "made_by"]
CURVE_COLUMNS = ["dataset", "role", "method", "alpha", "seed", "run_dir", "epoch", "metric",
                 "value"]
_TEXT_COLUMNS = ("dataset", "role", "method", "model", "teacher", "state", "detail", "job_id",
                 "scheduler", "run_dir", "made_by", "metric", "layer")


def _study(study: Study | str | Path) -> Study:
    return study if isinstance(study, Study) else load_study(study)


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _numbers(values: Any) -> list[float] | None:
    """A list of finite-or-NaN numbers, or None when ``values`` is not such a list."""
    if not isinstance(values, list) or not values:
        return None
    numbers = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        numbers.append(float(value))
    return numbers


def _read_metrics(run_dir: Path) -> dict:
    """metrics.json, or {} when absent or unreadable (the run's state already says so)."""
    try:
        return runstate.read_metrics(run_dir) or {}
    except runstate.StateFileError:
        return {}


def _identity(state: RunState) -> dict[str, Any]:
    spec = state.spec
    return {"dataset": spec.dataset, "role": state.role,
            "method": spec.method if state.role == "kd" else state.role,
            "alpha": spec.alpha if spec.alpha is not None else math.nan, "seed": spec.seed}


def _run_row(state: RunState) -> dict[str, Any]:
    status = state.status or {}
    metrics = _read_metrics(state.run_dir) if state.status is not None else {}
    test_acc = _numbers(metrics.get("test_acc")) or []
    epoch_seconds = _numbers(metrics.get("epoch_seconds")) or []
    final = _number(status.get("final_acc"))
    if final is None and test_acc and state.state == "completed":
        final = test_acc[-1]
    config = status.get("config") if isinstance(status.get("config"), dict) else {}
    return {**_identity(state), "model": state.spec.model, "teacher": state.spec.teacher,
            "state": state.state, "detail": state.detail,
            "epoch": _number(status.get("epoch")),
            "epochs": _number(status.get("epochs")) or _number(config.get("epochs")),
            "max_acc": state.max_acc, "final_acc": final,
            "selected_acc": _number(status.get("selected_acc")),
            "started_at": _number(status.get("started_at")),
            "completed_at": _number(status.get("completed_at")),
            "duration_seconds": _number(status.get("duration_seconds")),
            "epoch_seconds_mean": (sum(epoch_seconds) / len(epoch_seconds)
                                   if epoch_seconds else None),
            "job_id": state.job_id, "scheduler": status.get("scheduler"),
            "run_dir": str(state.run_dir),
            "made_by": made_by_of(state.status) if state.status is not None else None}


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    for column in frame.columns:
        if column in _TEXT_COLUMNS:
            frame[column] = frame[column].astype("string")
        elif column in ("seed", "epoch", "epochs"):
            frame[column] = pd.to_numeric(frame[column]).astype("Int64")
        elif column in ("started_at", "completed_at"):
            frame[column] = pd.to_datetime(frame[column], unit="s", utc=True)
        else:
            frame[column] = pd.to_numeric(frame[column]).astype("float64")
    return frame


def runs(study: Study | str | Path) -> pd.DataFrame:
    """One row per run of the study's grid, in the grid's order (teachers, pure students,
    KD runs), from the state files alone.

    Columns: dataset, role ('teacher' | 'pure' | 'kd'), method (KD method, or 'teacher' /
    'pure'), alpha (NaN for pure runs), seed, model, teacher, state (completed, running,
    queued, failed, waiting, not_started, unreadable), detail (one line, e.g. the failure
    reason), epoch, epochs, max_acc / final_acc / selected_acc (test accuracy in percent:
    best epoch, last epoch, the epoch chosen on a validation split when recorded),
    started_at / completed_at (UTC timestamps), duration_seconds, epoch_seconds_mean,
    job_id, scheduler, run_dir, made_by ('kdlab <version>', 'kdlab' for kdlab runs that
    predate the field, 'earlier code' for runs of the earlier research code).
    """
    study = _study(study)
    frame = pd.DataFrame([_run_row(state) for state in study_run_states(study)],
                         columns=RUN_COLUMNS)
    return _typed(frame)


def _curve_rows(metrics: dict, identity: dict[str, Any]) -> list[dict[str, Any]]:
    test_acc = _numbers(metrics.get("test_acc"))
    epochs = len(test_acc) if test_acc else None
    rows = []
    for metric, values in sorted(metrics.items()):
        values = _numbers(values)
        if values is None or (epochs is not None and len(values) != epochs):
            continue    # not a per-epoch series (config, a stage's own list)
        rows += [{**identity, "epoch": epoch, "metric": metric, "value": value}
                 for epoch, value in enumerate(values, start=1)]
    return rows


def curves(study_or_run: Study | str | Path) -> pd.DataFrame:
    """Per-epoch metrics in long form: one row per run x epoch (1-based) x metric
    (train_loss, train_acc, test_loss, test_acc, epoch_seconds, lr, each loss term ...).

    Given a study (a loaded one or its file): every run of the grid that has a readable
    metrics.json. Given a run directory: that run alone, identified from its recorded
    config. Columns: dataset, role, method, alpha, seed, run_dir, epoch, metric, value."""
    if not isinstance(study_or_run, Study) and Path(study_or_run).is_dir():
        run_dir = Path(study_or_run)
        path = run_dir / runstate.METRICS_FILE
        try:
            metrics = runstate.read_metrics(run_dir)
        except runstate.StateFileError as error:
            raise UserError(f"{error}; expected the run's per-epoch metrics") from None
        if metrics is None:
            raise UserError(f"{path}: no such file; expected a run directory with metrics")
        config = metrics.get("config") if isinstance(metrics.get("config"), dict) else {}
        method = config.get("distillation") or "none"
        identity = {"dataset": config.get("dataset"), "role": None if method == "none" else "kd",
                    "method": None if method == "none" else method,
                    "alpha": config.get("alpha") if method != "none" else math.nan,
                    "seed": config.get("seed"), "run_dir": str(run_dir)}
        rows = _curve_rows(metrics, identity)
    else:
        rows = []
        for state in study_run_states(_study(study_or_run)):
            if state.status is not None:
                identity = {**_identity(state), "run_dir": str(state.run_dir)}
                rows += _curve_rows(_read_metrics(state.run_dir), identity)
    return _typed(pd.DataFrame(rows, columns=CURVE_COLUMNS))


def metrics(study: Study | str | Path) -> pd.DataFrame:
    """The analysis' ``metrics.csv`` (written by ``kdlab analyze``) with typed columns:
    text for dataset, method, layer and metric; alpha and value (and any interval column)
    as floats, NaN where empty; seed as an integer."""
    study = _study(study)
    path = analysis_dir(study.analysis_dir, study.name) / "metrics.csv"
    try:
        frame = pd.read_csv(path, dtype="string", keep_default_na=False)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file; expected the analysis' metrics (run kdlab "
                        "analyze first)") from None
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: unreadable ({error}); expected kdlab analyze's "
                        "metrics.csv") from None
    missing = {"dataset", "method", "seed", "metric", "value"} - set(frame.columns)
    if missing:
        raise UserError(f"{path}: no column {', '.join(sorted(missing))}; expected kdlab "
                        "analyze's metrics.csv")
    for column in frame.columns:
        values = frame[column].replace("", pd.NA)
        numeric = pd.to_numeric(values, errors="coerce")
        if column == "seed":
            frame[column] = numeric.astype("Int64")
        elif column not in _TEXT_COLUMNS and numeric.isna().sum() == values.isna().sum():
            frame[column] = numeric.astype("float64")   # alpha, value, interval bounds
        else:
            frame[column] = values.astype("string")     # text, or a column of words
    return frame
