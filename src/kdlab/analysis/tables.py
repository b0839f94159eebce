"""Tables derived from the long metrics frame (columns of :data:`analyze.COLUMNS`)."""

from __future__ import annotations

import math

import numpy as np

from ..run.layout import format_alpha
from ..study.study_file import Study
from ..study.summaries import accuracy_groups, selection_accuracy, summary_text
from ..study.progress import study_run_states
from ..study.stats import SeedSummary

TEACHER = "teacher"
PURE = "pure"


def grid_rows(study: Study) -> list[tuple[str, float | None]]:
    """(method, alpha) of each row of a per-data-set table: teacher, pure student, then
    every method x alpha of the study in its order."""
    return ([(TEACHER, None), (PURE, None)]
            + [(method, alpha) for method in study.methods for alpha in study.alpha_levels()])


def of_pair(frame, pair):
    """Rows of ``frame`` shown with ``pair`` (:class:`kdlab.study.study_file.Pair`); a frame without
    the pair column (written before pairs) is one pair's."""
    if "pair" not in frame.columns:
        return frame
    return frame[frame["pair"] == pair.label]


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


def accuracy_table(frame, study: Study, states=None):
    """Per data set x pair x method x alpha (teacher and pure student included; ``pair``:
    its label, 'ResNet56 -> ResNet20'), over seeds:

    - ``accuracy_mean``/``accuracy_std``/``n_seeds``: test accuracy (%) of the extracted
      weights (best.pth), from the stored logits;
    - ``selected_by`` and ``selected_mean``/``_std``/``_ci95_low``/``_ci95_high``/``_n``: the
      accuracy the study selects by, as the runs recorded it (``max_acc`` with selection
      'test', ``selected_acc`` with 'validation'; :func:`kdlab.study.summaries.selection_accuracy`),
      summarised by :func:`kdlab.study.stats.summarize` (Student-t 95 % interval of the mean);
    - ``final_acc_mean``/``final_acc_n``: the last epoch's test accuracy;
    - ``chosen_on``: the split that chose the best.pth of the cell's completed runs, and
      why some record no selected accuracy (:meth:`kdlab.study.summaries.AccuracyGroup.chosen_on_text`).

    Grid cells without any run have n 0 and NaN values. ``states``: the study's run states
    (read here when not given)."""
    import pandas as pd


    if states is None:
        states = study_run_states(study)
    selected_key, _ = selection_accuracy(study)
    groups = {(g.dataset, g.pair, g.method, g.alpha): g
              for g in accuracy_groups(study, states)}
    records = []
    for dataset in study.datasets:
        for pair, method, alpha in ((pair, method, alpha) for pair in study.pairs
                                    for method, alpha in grid_rows(study)):
            mean, std, count = mean_std(seed_values(of_pair(frame, pair), dataset, method,
                                                    alpha, "test_acc"))
            group = groups[(dataset, pair, method, alpha)]
            chosen, final = group.selected_summary, group.final_summary
            records.append({"dataset": dataset, "pair": pair.label, "method": method,
                            "alpha": math.nan if alpha is None else alpha,
                            "accuracy_mean": mean, "accuracy_std": std, "n_seeds": count,
                            "seeds_expected": len(study.seeds), "selected_by": selected_key,
                            **{f"selected_{name}": _nan(getattr(chosen, attribute))
                               for name, attribute in (("mean", "mean"), ("std", "std"),
                                                       ("ci95_low", "ci_low"),
                                                       ("ci95_high", "ci_high"))},
                            "selected_n": chosen.n, "final_acc_mean": _nan(final.mean),
                            "final_acc_n": final.n,
                            "chosen_on": group.chosen_on_text(selected_key)})
    return pd.DataFrame.from_records(records)


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def selection_cells(row) -> tuple[str, str]:
    """(selected accuracy 'mean ± std [low, high] (n=3)', final_acc 'mean (n=3)') of one
    row of :func:`accuracy_table`, for the Markdown and HTML tables."""
    n = int(row.selected_n)
    summary = SeedSummary(n, *(None if math.isnan(v) else float(v) for v in (
        row.selected_mean, row.selected_std, row.selected_ci95_low, row.selected_ci95_high)))
    final = ("n/a" if int(row.final_acc_n) == 0
             else f"{row.final_acc_mean:.2f} (n={int(row.final_acc_n)})")
    return ("n/a" if n == 0 else summary_text(summary)), final


def selection_sentence(study: Study) -> str:
    """What the selected-accuracy column is and how best.pth was chosen."""
    key, words = selection_accuracy(study)
    return (f"Selection rule: [training] selection = \"{study.training.get('selection', 'test')}"
            f"\"; the '{key}' column is the {words}, mean ± sample std, Student-t 95 % "
            "interval of the mean and n over seeds, as the runs recorded it; final_acc is "
            "the last epoch's test accuracy.")


def format_mean_std(mean: float, std: float, count: int, digits: int = 2) -> str:
    if count == 0 or math.isnan(mean):
        return "n/a"
    if count == 1 or math.isnan(std):
        return f"{mean:.{digits}f} (1 seed)"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def accuracy_markdown(table, study: Study) -> str:
    """The accuracy table as Markdown, one section per data set."""
    lines = [f"# Test accuracy — study {study.name}", "",
             f"accuracy: mean ± sample standard deviation over seeds (%), from the stored "
             f"logits of each run's best weights; {len(study.seeds)} seed(s) expected per cell; "
             "'n/a' = no value: the last column says why (no finished run, or runs whose "
             "best.pth another split chose, which record no such value).", "",
             selection_sentence(study), ""]
    key = table["selected_by"].iloc[0] if len(table) else "max_acc"
    for dataset, pair in ((dataset, pair) for dataset in study.datasets
                          for pair in study.pairs):
        title = f"{dataset} — {pair.label}" if study.has_several_pairs else dataset
        lines += [f"## {title}", "", f"| method | alpha | accuracy (%) | seeds | {key} (%) "
                  "| final_acc (%) | best.pth chosen on (runs) |", "|---|---|---|---|---|---|---|"]
        for row in table[(table["dataset"] == dataset)
                         & (table["pair"] == pair.label)].itertuples():
            alpha = "—" if math.isnan(row.alpha) else format_alpha(row.alpha)
            cell = format_mean_std(row.accuracy_mean, row.accuracy_std, row.n_seeds)
            selected, final = selection_cells(row)
            lines.append(f"| {row.method} | {alpha} | {cell} | {row.n_seeds}/{row.seeds_expected}"
                         f" | {selected} | {final} | {row.chosen_on} |")
        lines.append("")
    return "\n".join(lines)
