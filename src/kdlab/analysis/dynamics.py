"""Representations over training: the dynamics.csv table, each snapshot's test accuracy
from its run's metrics.json, and the report's computed sentence.

``dynamics.csv`` (written by ``kdlab analyze``): one row per snapshot x stage x metric, with
the columns of :data:`COLUMNS`. It follows metrics.csv's conventions: ``method`` is the KD
method or 'teacher' / 'pure', ``alpha`` is empty for those two, values are written with 6
significant digits, and per-model metrics sit beside the teacher-student metrics (the
snapshot against its teacher's *final* representation, stages paired from the last).
Unlike metrics.csv, a pair metric's bootstrap interval is in the ``ci_low`` / ``ci_high``
columns of its own row (empty where the metric has none), ``stage`` names the layer and
``run`` names the run (:attr:`kdlab.run.layout.RunSpec.name`).
"""

from __future__ import annotations

import math

from ..run import layout, state_files
from ..study.stats import summarize

COLUMNS = ["dataset", "run", "method", "alpha", "seed", "epoch", "stage", "metric", "value",
           "ci_low", "ci_high"]
_LOW, _HIGH = "_ci_low", "_ci_high"


def dynamics_frame(records: list[tuple]):
    """The dynamics table from (dataset, run, method, alpha or None, seed, epoch, rows) per
    snapshot outcome, ``rows`` as the compute tasks return them ((layer, metric, value),
    interval bounds as rows named METRIC_ci_low / METRIC_ci_high). Sorted like
    metrics.csv, then by epoch."""
    import pandas as pd

    table: dict[tuple, list[float]] = {}
    for dataset, run, method, alpha, seed, epoch, rows in records:
        identity = (dataset, run, method, math.nan if alpha is None else alpha, seed, epoch)
        for layer, metric, value in rows:
            for suffix, column in ((_LOW, 1), (_HIGH, 2)):
                if metric.endswith(suffix):
                    key = (*identity, layer, metric[:-len(suffix)])
                    table.setdefault(key, [math.nan] * 3)[column] = float(value)
                    break
            else:
                table.setdefault((*identity, layer, metric), [math.nan] * 3)[0] = float(value)
    frame = pd.DataFrame.from_records([(*key, *values) for key, values in table.items()],
                                      columns=COLUMNS)
    for column in ("value", "ci_low", "ci_high", "alpha"):
        frame[column] = frame[column].astype(float)
    frame["epoch"] = frame["epoch"].astype("int64")
    return frame.sort_values(["dataset", "method", "alpha", "seed", "epoch", "stage", "metric"],
                             na_position="first", kind="stable").reset_index(drop=True)


def snapshot_accuracies(study, snapshots) -> list[tuple[str, int, float]]:
    """(run name, epoch, test accuracy in %) of every snapshot whose run's metrics.json
    records that epoch's ``test_acc`` (the accuracy the run measured after the epoch the
    snapshot was taken); snapshots whose run has no such value are left out."""
    accuracies = []
    series_of: dict[str, list | None] = {}
    for entry in snapshots:
        name = entry.spec.name
        if name not in series_of:
            try:
                recorded = state_files.read_metrics(study.run_dir(entry.spec)) or {}
            except state_files.StateFileError:
                recorded = {}
            test_acc = recorded.get("test_acc")
            series_of[name] = test_acc if isinstance(test_acc, list) else None
        series = series_of[name]
        if series is None or len(series) < entry.epoch:
            continue
        value = series[entry.epoch - 1]
        if isinstance(value, (int, float)) and not isinstance(value, bool) \
                and math.isfinite(value):
            accuracies.append((name, int(entry.epoch), float(value)))
    return accuracies


def peak_sentence(frame, dataset: str, stage: str, metric: str = "cka_linear") -> str:
    """One sentence on ``dataset``: per method (and the pure student), the snapshot epoch
    at which ``metric`` of ``stage`` with the teacher peaks (the mean over seeds of the
    alpha and epoch with the largest mean), with a 95% interval — the Student-t interval
    over seeds when there are several, else the run's bootstrap interval."""
    rows = frame[(frame["dataset"] == dataset) & (frame["stage"] == stage)
                 & (frame["metric"] == metric)]
    if rows.empty:
        return (f"{dataset}: no snapshot has {metric} of {stage} with a teacher (no student "
                "snapshot, or no teacher representation of its seed).")
    parts = []
    for method, of_method in rows.groupby("method", sort=False):
        cells = of_method.groupby(["alpha", "epoch"], dropna=False)["value"].mean()
        (alpha, epoch), mean = max(cells.items(), key=lambda item: (item[1], -item[0][1]))
        chosen = of_method[(of_method["epoch"] == epoch) & (
            of_method["alpha"].isna() if math.isnan(alpha) else of_method["alpha"] == alpha)]
        summary = summarize(chosen["value"])
        if summary.n >= 2:
            low, high, how = summary.ci_low, summary.ci_high, f"t interval over {summary.n} seeds"
        else:
            low, high = chosen["ci_low"].iloc[0], chosen["ci_high"].iloc[0]
            how = "bootstrap interval, 1 seed"
        interval = ("no interval" if low is None or not math.isfinite(low)
                    else f"95% CI {low:.3f}–{high:.3f}, {how}")
        where = "" if math.isnan(alpha) else f" at α = {layout.format_alpha(alpha)}"
        epochs = sorted(of_method["epoch"].unique())
        parts.append(f"{method} peaks at epoch {int(epoch)}{where} ({mean:.3f}, {interval}; "
                     f"snapshots at epochs {', '.join(str(int(e)) for e in epochs)})")
    return f"{dataset}: {metric} of {stage} with the teacher — " + "; ".join(parts) + "."
