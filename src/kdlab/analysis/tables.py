"""Tables derived from the long metrics frame (columns of :data:`analyze.COLUMNS`)."""

from __future__ import annotations

import math

import numpy as np

from ..layout import format_alpha
from ..study import Study

TEACHER = "teacher"
PURE = "pure"


def grid_rows(study: Study) -> list[tuple[str, float | None]]:
    """(method, alpha) of each row of a per-data-set table: teacher, pure student, then
    every method x alpha of the study in its order."""
    return ([(TEACHER, None), (PURE, None)]
            + [(method, alpha) for method in study.methods for alpha in study.alphas])


def select(frame, method: str, alpha: float | None):
    """Rows of ``frame`` of one method and alpha (alpha None: the teacher/pure rows)."""
    rows = frame[frame["method"] == method]
    if alpha is None:
        return rows[rows["alpha"].isna()]
    return rows[np.isclose(rows["alpha"].astype(float), alpha)]


def seed_values(frame, dataset: str, method: str, alpha: float | None, metric: str,
                layer: str | None = None):
    """Values [seeds] of one metric (one per seed present, ordered by seed)."""
    rows = select(frame[frame["dataset"] == dataset], method, alpha)
    rows = rows[rows["metric"] == metric]
    if layer is not None:
        rows = rows[rows["layer"] == layer]
    return rows.sort_values("seed")["value"].to_numpy(dtype=float)


def mean_std(values) -> tuple[float, float, int]:
    """(mean, sample std (ddof=1; NaN for one value), count) of finite ``values``."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan, 0
    std = float(np.std(values, ddof=1)) if values.size > 1 else math.nan
    return float(np.mean(values)), std, int(values.size)


def accuracy_table(frame, study: Study):
    """Test accuracy (%) mean and std over seeds per data set x method x alpha, teacher and
    pure student included; grid cells without any run have n_seeds 0 and NaN values."""
    import pandas as pd

    records = []
    for dataset in study.datasets:
        for method, alpha in grid_rows(study):
            mean, std, count = mean_std(seed_values(frame, dataset, method, alpha, "test_acc"))
            records.append({"dataset": dataset, "method": method,
                            "alpha": math.nan if alpha is None else alpha,
                            "accuracy_mean": mean, "accuracy_std": std, "n_seeds": count,
                            "seeds_expected": len(study.seeds)})
    return pd.DataFrame.from_records(records)


def format_mean_std(mean: float, std: float, count: int, digits: int = 2) -> str:
    if count == 0 or math.isnan(mean):
        return "n/a"
    if count == 1 or math.isnan(std):
        return f"{mean:.{digits}f} (1 seed)"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def accuracy_markdown(table, study: Study) -> str:
    """The accuracy table as Markdown, one section per data set."""
    lines = [f"# Test accuracy — study {study.name}", "",
             f"Mean ± sample standard deviation over seeds (%), from the stored logits of "
             f"each run's best weights; {len(study.seeds)} seed(s) expected per cell; "
             "'n/a' = no finished run.", ""]
    for dataset in study.datasets:
        lines += [f"## {dataset}", "", "| method | alpha | accuracy (%) | seeds |",
                  "|---|---|---|---|"]
        for row in table[table["dataset"] == dataset].itertuples():
            alpha = "—" if math.isnan(row.alpha) else format_alpha(row.alpha)
            cell = format_mean_std(row.accuracy_mean, row.accuracy_std, row.n_seeds)
            lines.append(f"| {row.method} | {alpha} | {cell} | {row.n_seeds}/{row.seeds_expected} |")
        lines.append("")
    return "\n".join(lines)
