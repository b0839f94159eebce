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
    over_training = kdlab.metrics("studies/charlie.toml", snapshots=True)  # + dynamics.csv

Naming follows metrics.csv so the frames join: ``method`` is the KD method, or 'teacher'
/ 'pure' for the two kinds of pure run (``role`` says the same), ``alpha`` is NaN for them
(so group with ``dropna=False`` to keep the pure runs).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .run import state_files
from .run.errors import UserError
from .run.layout import analysis_dir
from .study.summaries import made_by_of
from .study.progress import RunState, classify_run, study_run_states
from .study.study_file import Study, load_study

RUN_COLUMNS = ["dataset", "role", "method", "alpha", "seed", "model", "teacher", "state",
               "detail", "problem", "epoch", "epochs", "max_acc", "final_acc", "selected_acc",
               "started_at", "completed_at", "duration_seconds", "epoch_seconds_mean",
               "job_id", "scheduler", "run_dir", "made_by"]
CURVE_COLUMNS = ["dataset", "role", "method", "alpha", "seed", "run_dir", "epoch", "metric",
                 "value"]
_TEXT_COLUMNS = ("dataset", "role", "method", "model", "teacher", "state", "detail", "problem",
                 "job_id", "scheduler", "run_dir", "made_by", "metric", "layer")
# The columns of curves() that repeat a few values over millions of rows: categoricals.
_CURVE_CATEGORIES = ("dataset", "role", "method", "run_dir", "metric")

_INT64_RANGE = (-(2 ** 63), 2 ** 63 - 1)
_INT32_RANGE = (-(2 ** 31), 2 ** 31 - 1)
# Unix seconds that pandas' timestamps hold (1677-09-22 .. 2262-04-11). A value outside is
# no time in seconds (milliseconds, say), and one such value would fail the whole column.
_SECONDS_RANGE = (math.ceil(pd.Timestamp.min.timestamp()),
                  math.floor(pd.Timestamp.max.timestamp()))


def _study(study: Study | str | Path) -> Study:
    return study if isinstance(study, Study) else load_study(study)


def _shown(value: Any) -> str:
    """A value as a problem line quotes it: huge integers by their length, long text cut."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10 ** 15:
        return f"a {len(str(abs(value)))}-digit integer"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class _Values:
    """The values of one row, each checked against its column's dtype as it is read: a value
    the column cannot hold exactly is left missing and :attr:`problem` says why (one line).
    What kdlab status tolerates, the notebook API tolerates too."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    @property
    def problem(self) -> str | None:
        return "; ".join(self.problems) or None

    def refuse(self, name: str, value: Any, expected: str) -> None:
        """Note ``value`` of ``name`` as left missing (quoted as :func:`_shown` writes it)."""
        self.problems.append(f"{name} is {_shown(value)}, expected {expected}")

    def real(self, name: str, value: Any) -> float | None:
        """A float (NaN and infinities read as missing, as before); None for None."""
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.refuse(name, value, "a number")
            return None
        try:
            number = float(value)
        except OverflowError:
            self.refuse(name, value, "a number within float range")
            return None
        return number if math.isfinite(number) else None

    def whole(self, name: str, value: Any, low: int = _INT64_RANGE[0],
              high: int = _INT64_RANGE[1], written: str | None = None) -> int | None:
        """An exact integer in ``low..high`` (a float only when it is a whole number);
        ``written``: the text the value was read from, quoted instead of it."""
        if value is None:
            return None
        shown = value if written is None else written
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.refuse(name, shown, "a whole number")
            return None
        if isinstance(value, float) and not value.is_integer():
            self.refuse(name, shown, "a whole number")
            return None
        if not low <= value <= high:
            self.refuse(name, shown, f"a whole number in {low}..{high}")
            return None
        return int(value)

    def seconds(self, name: str, value: Any) -> float | None:
        """Unix seconds within the range of a pandas timestamp."""
        number = self.real(name, value)
        if number is not None and not _SECONDS_RANGE[0] <= number <= _SECONDS_RANGE[1]:
            self.refuse(name, value, "unix seconds (years 1677..2262; milliseconds?)")
            return None
        return number

    def series(self, name: str, values: Any) -> list[float] | None:
        """A per-epoch list of numbers (NaN kept), or None when ``values`` is none."""
        if values is None or values == []:
            return None
        numbers = _numbers(values)
        if numbers is None:
            self.refuse(name, values, "a list of numbers")
        return numbers


def _number_array(values: Any) -> np.ndarray | None:
    """A non-empty list of numbers (JSON's int and float; NaN kept, True is no number) as
    float64, or None when ``values`` is no such list."""
    if not isinstance(values, list) or not values:
        return None
    if not set(map(type, values)) <= {int, float}:    # type, not isinstance: bool is out
        return None
    try:
        return np.array(values, dtype=np.float64)
    except OverflowError:    # an integer beyond float range
        return None


def _numbers(values: Any) -> list[float] | None:
    """:func:`_number_array` as a list of floats."""
    numbers = _number_array(values)
    return None if numbers is None else numbers.tolist()


def _read_metrics(run_dir: Path) -> dict:
    """metrics.json, or {} when absent or unreadable (the run's state already says so)."""
    try:
        return state_files.read_metrics(run_dir) or {}
    except state_files.StateFileError:
        return {}


def _identity(state: RunState) -> dict[str, Any]:
    spec = state.spec
    return {"dataset": spec.dataset, "role": state.role,
            "method": spec.method if state.role == "kd" else state.role,
            "alpha": spec.alpha if spec.alpha is not None else math.nan, "seed": spec.seed}


def _run_row(state: RunState) -> dict[str, Any]:
    status = state.status or {}
    metrics = _read_metrics(state.run_dir) if state.status is not None else {}
    values = _Values()
    test_acc = values.series("metrics.json test_acc", metrics.get("test_acc")) or []
    epoch_seconds = values.series("metrics.json epoch_seconds",
                                  metrics.get("epoch_seconds")) or []
    final = values.real("final_acc", status.get("final_acc"))
    if final is None and test_acc and state.state == "completed":
        final = test_acc[-1]
    config = status.get("config") if isinstance(status.get("config"), dict) else {}
    # the run's epoch count as kdlab status reads it: status.json's, else its config's
    epochs = (values.whole("epochs", status.get("epochs"), 1) if "epochs" in status
              and status["epochs"] is not None
              else values.whole("config epochs", config.get("epochs"), 1))
    mean_seconds = sum(epoch_seconds) / len(epoch_seconds) if epoch_seconds else None
    return {**_identity(state), "model": state.spec.model, "teacher": state.spec.teacher,
            "state": state.state, "detail": state.detail,
            "epoch": values.whole("epoch", status.get("epoch"), 0),
            "epochs": epochs,
            "max_acc": state.max_acc, "final_acc": final,
            "selected_acc": values.real("selected_acc", status.get("selected_acc")),
            "started_at": values.seconds("started_at", status.get("started_at")),
            "completed_at": values.seconds("completed_at", status.get("completed_at")),
            "duration_seconds": values.real("duration_seconds", status.get("duration_seconds")),
            "epoch_seconds_mean": mean_seconds if mean_seconds is None
            or math.isfinite(mean_seconds) else None,
            "job_id": state.job_id, "scheduler": status.get("scheduler"),
            "run_dir": str(state.run_dir),
            "made_by": made_by_of(state.status) if state.status is not None else None,
            "problem": values.problem}


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    """The columns of runs() typed; every value was checked for its column by _Values."""
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
    reason), problem (one line naming each value of the state files that was left missing
    because its column cannot hold it — a fractional or out-of-range epoch count, a time
    in milliseconds, a metrics.json list that holds no numbers —; NA when none), epoch,
    epochs, max_acc / final_acc / selected_acc (test accuracy in percent: best epoch, last
    epoch, the epoch chosen on a validation split when recorded), started_at / completed_at
    (UTC timestamps), duration_seconds, epoch_seconds_mean, job_id, scheduler, run_dir,
    made_by ('kdlab <version>', 'kdlab' for kdlab runs that predate the field, 'earlier
    code' for runs of the earlier research code).
    """
    study = _study(study)
    frame = pd.DataFrame([_run_row(state) for state in study_run_states(study)],
                         columns=RUN_COLUMNS)
    return _typed(frame)


def _run_selection(study: Study, runs: Any) -> list[RunState]:
    """The states of the study's runs that ``runs`` names (names, run directories, or a
    runs() frame), in the grid's order; a one-line UserError for a name not in the grid."""
    if isinstance(runs, pd.DataFrame):
        if "run_dir" not in runs.columns:
            raise UserError("curves(runs=...): the frame has no run_dir column; expected "
                            "rows of kdlab.runs()")
        runs = runs["run_dir"]
    if isinstance(runs, (str, Path)):
        runs = [runs]
    wanted = {str(name) for name in runs if not pd.isna(name)}
    specs = study.runs()
    chosen = [spec for spec in specs
              if spec.name in wanted or str(study.run_dir(spec)) in wanted]
    unknown = wanted - {spec.name for spec in chosen} - {str(study.run_dir(spec))
                                                          for spec in chosen}
    if unknown:
        shown = ", ".join(sorted(unknown)[:3]) + (" ..." if len(unknown) > 3 else "")
        raise UserError(f"curves(runs=...): {len(unknown)} not a run of study {study.name} "
                        f"({shown}); expected run names such as {specs[0].name}, run "
                        "directories, or rows of kdlab.runs()")
    return [classify_run(study, spec) for spec in chosen]


def _metric_selection(metrics: Any) -> set[str] | None:
    if metrics is None:
        return None
    if isinstance(metrics, str) or not isinstance(metrics, Iterable):
        metrics = [metrics]
    return {str(name) for name in metrics}


def _curve_series(metrics: dict, wanted: set[str] | None) -> list[tuple[str, np.ndarray]]:
    """(metric, values) of the run's per-epoch series, by metric name; a list of another
    length than test_acc (a stage's own list) or of non-numbers is no per-epoch series."""
    test_acc = _number_array(metrics.get("test_acc"))
    epochs = len(test_acc) if test_acc is not None else None
    series = []
    for metric in sorted(metrics):
        if wanted is not None and metric not in wanted:
            continue
        # an array per series at once: the file's Python floats are freed run by run
        values = test_acc if metric == "test_acc" else _number_array(metrics[metric])
        if values is None or (epochs is not None and len(values) != epochs):
            continue    # not a per-epoch series (config, a stage's own list)
        series.append((metric, values))
    return series


def _categorical(values: list[Any], codes_of_rows: np.ndarray) -> pd.Categorical:
    """A categorical column from per-run ``values`` (None: missing) and each row's run."""
    categories = sorted({str(value) for value in values if value is not None})
    index = {category: code for code, category in enumerate(categories)}
    run_codes = np.array([-1 if value is None else index[str(value)] for value in values],
                         dtype=_code_type(len(categories)))
    return pd.Categorical.from_codes(run_codes[codes_of_rows] if len(values) else
                                     np.zeros(0, dtype=np.int8),
                                     categories=pd.Index(categories, dtype="string"))


def _code_type(categories: int) -> type:
    """The narrowest integer type pandas keeps a categorical's codes in: the rows' codes are
    gathered in it, never in int64 (12 million rows: 12 MB instead of 96 MB)."""
    return next(kind for kind in (np.int8, np.int16, np.int32, np.int64)
                if categories < np.iinfo(kind).max)


def _long_frame(sources: list[tuple[dict[str, Any], list[tuple[str, np.ndarray]]]]
                ) -> pd.DataFrame:
    """curves()' frame from (identity, series) per run, built column by column."""
    identities = [identity for identity, _ in sources]
    lengths, run_of_series, metric_names, value_parts = [], [], [], []
    for run_index, (_, series) in enumerate(sources):
        for metric, values in series:
            lengths.append(len(values))
            run_of_series.append(run_index)
            metric_names.append(metric)
            value_parts.append(values)
    lengths_array = np.array(lengths, dtype=np.int64)
    row_run = np.repeat(np.array(run_of_series, dtype=np.int32), lengths_array)
    epoch = (np.concatenate([np.arange(1, length + 1, dtype=np.int32) for length in lengths])
             if lengths else np.zeros(0, dtype=np.int32))
    values = np.concatenate(value_parts) if value_parts else np.zeros(0, dtype=np.float64)
    columns: dict[str, Any] = {}
    for name in ("dataset", "role", "method"):
        columns[name] = _categorical([identity[name] for identity in identities], row_run)
    alphas = np.array([math.nan if identity["alpha"] is None else identity["alpha"]
                       for identity in identities], dtype=np.float64)
    columns["alpha"] = alphas[row_run] if len(identities) else np.zeros(0)
    seeds = [identity["seed"] for identity in identities]
    if all(seed is not None and _INT32_RANGE[0] <= seed <= _INT32_RANGE[1] for seed in seeds):
        columns["seed"] = np.array(seeds, dtype=np.int32)[row_run] if seeds else \
            np.zeros(0, dtype=np.int32)
    else:    # a seed int32 cannot hold exactly, or one left missing
        columns["seed"] = pd.array(seeds, dtype="Int64")[row_run]
    columns["run_dir"] = _categorical([identity["run_dir"] for identity in identities], row_run)
    columns["epoch"] = epoch
    metric_categories = sorted(set(metric_names))
    metric_index = {metric: code for code, metric in enumerate(metric_categories)}
    metric_codes = np.array([metric_index[name] for name in metric_names],
                            dtype=_code_type(len(metric_categories)))
    columns["metric"] = pd.Categorical.from_codes(
        np.repeat(metric_codes, lengths_array),
        categories=pd.Index(metric_categories, dtype="string"))
    columns["value"] = values
    return pd.DataFrame(columns, columns=CURVE_COLUMNS)


def curves(study_or_run: Study | str | Path, runs: Any = None,
           metrics: Iterable[str] | str | None = None) -> pd.DataFrame:
    """Per-epoch metrics in long form: one row per run x epoch (1-based) x metric
    (train_loss, train_acc, test_loss, test_acc, epoch_seconds, lr, each loss term ...), in
    the grid's order, then by metric name and epoch.

    Given a study (a loaded one or its file): every run of the grid that has a readable
    metrics.json, or those of ``runs`` (run names such as 'Cifar10-pure-ResNet56-s0', run
    directories, or a subset of the rows of :func:`runs`; only those runs' files are read).
    Given a run directory: that run alone, identified from its recorded config (a seed or
    alpha the column cannot hold is left missing). ``metrics``: only these metric names.
    A selection gives exactly the rows of the full call that it names.

    Columns and dtypes, lean for large trees: dataset, role, method, run_dir and metric as
    categoricals; alpha (NaN for pure runs) and value as float64 (value exactly as in
    metrics.json); seed as int32 (Int64 where a seed is missing or beyond int32's range);
    epoch as int32.

    What it costs (benchmarks/bench_api.py: a 9,984-run tree of 150 epochs x 8 metrics, on
    a busy 2-core machine): the full call, 12.0 million rows, took 13.5 s, a 344 MB frame
    and 0.9 GB of peak memory (the row-by-row layout took 52 s and 5.8 GB for 12.7 million
    rows); ``runs=`` with 10 runs, 0.3 s (only their files are read); ``metrics=
    ["test_acc"]``, 1.5 million rows, 12.5 s (every metrics.json is still parsed) and 44 MB.
    """
    wanted_metrics = _metric_selection(metrics)
    if not isinstance(study_or_run, Study) and Path(study_or_run).is_dir():
        if runs is not None:
            raise UserError("curves(runs=...): a selection of runs needs a study; given the "
                            f"run directory {study_or_run}")
        run_dir = Path(study_or_run)
        path = run_dir / state_files.METRICS_FILE
        try:
            metrics_of_run = state_files.read_metrics(run_dir)
        except state_files.StateFileError as error:
            raise UserError(f"{error}; expected the run's per-epoch metrics") from None
        if metrics_of_run is None:
            raise UserError(f"{path}: no such file; expected a run directory with metrics")
        config = (metrics_of_run.get("config")
                  if isinstance(metrics_of_run.get("config"), dict) else {})
        method = config.get("distillation") or "none"
        values = _Values()
        identity = {"dataset": config.get("dataset"),
                    "role": None if method == "none" else "kd",
                    "method": None if method == "none" else method,
                    "alpha": values.real("alpha", config.get("alpha")) if method != "none"
                    else math.nan,
                    "seed": values.whole("seed", config.get("seed")), "run_dir": str(run_dir)}
        sources = [(identity, _curve_series(metrics_of_run, wanted_metrics))]
    else:
        study = _study(study_or_run)
        states = study_run_states(study) if runs is None else _run_selection(study, runs)
        sources = [({**_identity(state), "run_dir": str(state.run_dir)},
                    _curve_series(_read_metrics(state.run_dir), wanted_metrics))
                   for state in states if state.status is not None]
    return _long_frame(sources)


def _number_of_text(text: str) -> int | float | str:
    """A CSV cell as the number it spells (an int when written as one, so that no digit of
    a long integer is rounded away), else the text itself."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def metrics(study: Study | str | Path, snapshots: bool = False) -> pd.DataFrame:
    """The analysis' ``metrics.csv`` (written by ``kdlab analyze``) with typed columns:
    text for dataset, method, layer and metric; alpha and value (and any other column of
    numbers) as floats, NaN where empty; seed and epoch as integers (Int64). A cell its
    column cannot hold (a seed '1.5', or beyond Int64; words where alpha or value belongs)
    is left missing, and the row's ``problem`` (text, NA when none) names it.

    ``epoch`` says which weights a row measures: NA for the final weights (every row of
    metrics.csv), the snapshot's epoch for a row over training. By default only the final
    weights' rows are returned, so a mean over seeds never mixes in half-trained networks;
    ``snapshots=True`` appends the rows of ``dynamics.csv`` beside metrics.csv, written in
    metrics.csv's form (its stage as ``layer``; its interval as rows METRIC_ci_low /
    METRIC_ci_high, as metrics.csv holds them). Select them with ``epoch.notna()``. A
    study analysed before snapshots existed has no dynamics.csv: no rows are appended."""
    study = _study(study)
    folder = analysis_dir(study.analysis_dir, study.name)
    frame = _metrics_file(folder / "metrics.csv")
    frame.insert(frame.columns.get_loc("layer") + 1 if "layer" in frame.columns
                 else len(frame.columns), "epoch", pd.NA)
    if snapshots:
        over_training = _dynamics_as_metrics(folder / "dynamics.csv")
        if over_training is not None:
            frame = pd.concat([frame, over_training[[c for c in frame.columns
                                                     if c in over_training.columns]]],
                              ignore_index=True)
    return _typed_metrics(frame)


def _dynamics_as_metrics(path: Path) -> pd.DataFrame | None:
    """dynamics.csv's rows as text cells in metrics.csv's form (see :func:`metrics`); None
    when the file is absent."""
    if not path.is_file():
        return None
    frame = _metrics_file(path, ("dataset", "method", "alpha", "seed", "epoch", "stage",
                                 "metric", "value", "ci_low", "ci_high"))
    identity = ["dataset", "method", "alpha", "seed", "epoch", "stage"]
    parts = [frame[identity + ["metric", "value"]]]
    for bound in ("ci_low", "ci_high"):
        has = frame[frame[bound] != ""]
        parts.append(pd.DataFrame({**{c: has[c] for c in identity},
                                   "metric": has["metric"] + f"_{bound}",
                                   "value": has[bound]}))
    return pd.concat(parts, ignore_index=True).rename(columns={"stage": "layer"})


def _metrics_file(path: Path, required=("dataset", "method", "seed", "metric",
                                        "value")) -> pd.DataFrame:
    """One of the analysis' CSV tables as text cells ('' where empty); one-line UserError
    when it is absent, unreadable or lacks a column."""
    try:
        frame = pd.read_csv(path, dtype="string", keep_default_na=False)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file; expected the analysis' metrics (run kdlab "
                        "analyze first)") from None
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: unreadable ({error}); expected kdlab analyze's "
                        f"{path.name}") from None
    missing = set(required) - set(frame.columns)
    if missing:
        raise UserError(f"{path}: no column {', '.join(sorted(missing))}; expected kdlab "
                        f"analyze's {path.name}")
    return frame


def _typed_metrics(frame: pd.DataFrame) -> pd.DataFrame:
    """:func:`metrics`' columns typed, each refused cell named in its row's problem."""
    problems: list[list[str]] = [[] for _ in range(len(frame))]
    for column in frame.columns:
        values = frame[column].replace("", pd.NA)
        if column in ("seed", "epoch"):
            frame[column] = pd.array(_checked_cells(values, column, problems, whole=True),
                                     dtype="Int64")
            continue
        numeric = pd.to_numeric(values, errors="coerce")
        if column in ("alpha", "value"):
            frame[column] = pd.array(_checked_cells(values, column, problems, whole=False),
                                     dtype="float64")
        elif column not in _TEXT_COLUMNS and numeric.isna().sum() == values.isna().sum():
            frame[column] = numeric.astype("float64")   # interval bounds and the like
        else:
            frame[column] = values.astype("string")     # text, or a column of words
    frame["problem"] = pd.array(["; ".join(row) or None for row in problems], dtype="string")
    return frame


def _checked_cells(cells: pd.Series, column: str, problems: list[list[str]],
                   whole: bool) -> list[int | float | None]:
    """The cells of one column as numbers (missing: None or NaN); each refused cell's reason
    is added to its row's ``problems``."""
    numbers: list[int | float | None] = []
    for row, cell in enumerate(cells):
        if pd.isna(cell):
            numbers.append(None if whole else math.nan)
            continue
        values = _Values()
        if whole:
            number = values.whole(column, _number_of_text(str(cell)), written=str(cell))
        else:
            try:
                number = float(str(cell))    # 'inf' and 'nan' as written
            except ValueError:
                values.refuse(column, str(cell), "a number")
                number = math.nan
        problems[row] += values.problems
        numbers.append(number)
    return numbers
