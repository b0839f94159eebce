"""The accuracy tables (accuracy.csv/.md, the archive README) report the accuracy the study
selects by — max_acc with selection 'test', selected_acc with 'validation' — as mean, std,
Student-t 95 % interval and n over seeds, say which it is, and give final_acc's mean."""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from kdlab import cli
from kdlab.run import state_files
from kdlab.analysis import tables
from kdlab.analysis.analyze import COLUMNS
from kdlab.run.layout import RunSpec, analysis_dir
from kdlab.ops import archive
from kdlab.study.study_file import load_study
from builders import write_local_study, write_run

SEEDS = (0, 1, 2)
MAX = {0: 90.0, 1: 92.5, 2: 93.0}          # logit runs' best-epoch test accuracy
SELECTED = {0: 88.0, 1: 91.0, 2: 89.5}     # test accuracy of the validation-chosen epoch
FINAL = {0: 89.0, 1: 92.0, 2: 90.0}


def _study(tmp_path, selection: str | None):
    path = write_local_study(tmp_path / "study.toml", methods=["logit"], alphas=[0.5], seeds=SEEDS)
    if selection is not None:
        text = path.read_text().replace('device = "cpu"',
                                        f'device = "cpu"\nselection = "{selection}"', 1)
        path.write_text(text)
    study = load_study(path)
    for seed in SEEDS:
        write_run(study.experiments_dir, RunSpec("Digits", "ResNet20", seed),
                  test_acc=[70.0, 95.0])
        directory = write_run(study.experiments_dir,
                              RunSpec("Digits", "ResNet8", seed, "logit", "ResNet20", 0.5),
                              test_acc=[60.0, MAX[seed]])
        status = json.loads((directory / state_files.STATUS_FILE).read_text())
        status.update(final_acc=FINAL[seed], selected_acc=SELECTED[seed])
        (directory / state_files.STATUS_FILE).write_text(json.dumps(status))
    return study


def _t_interval(values):
    values = list(values)
    return scipy_stats.t.interval(0.95, len(values) - 1, loc=np.mean(values),
                                  scale=scipy_stats.sem(values))


@pytest.mark.parametrize("selection, key, chosen", [
    (None, "max_acc", MAX), ("test", "max_acc", MAX), ("validation", "selected_acc", SELECTED)])
def test_accuracy_table_summarises_the_accuracy_the_study_selects_by(tmp_path, selection, key,
                                                                     chosen):
    study = _study(tmp_path, selection)
    table = tables.accuracy_table(pd.DataFrame(columns=COLUMNS), study)
    logit = table[table["method"] == "logit"].iloc[0]
    values = [chosen[seed] for seed in SEEDS]
    low, high = _t_interval(values)
    assert logit["selected_by"] == key
    assert logit["selected_mean"] == pytest.approx(statistics.fmean(values))
    assert logit["selected_std"] == pytest.approx(statistics.stdev(values))
    assert (logit["selected_ci95_low"], logit["selected_ci95_high"]) == (
        pytest.approx(low), pytest.approx(high))
    assert logit["selected_n"] == 3
    assert logit["final_acc_mean"] == pytest.approx(statistics.fmean(FINAL.values()))
    teacher = table[table["method"] == "teacher"].iloc[0]
    # the teachers record no final_acc: n 0, no mean
    assert teacher["selected_n"] == (3 if key == "max_acc" else 0)
    assert teacher["final_acc_n"] == 0 and math.isnan(teacher["final_acc_mean"])

    markdown = tables.accuracy_markdown(table, study)
    assert f'selection = "{selection or "test"}"' in markdown
    assert f"| method | alpha | accuracy (%) | seeds | {key} (%) | final_acc (%) |" in markdown
    cell = (f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}, 95% CI "
            f"[{low:.2f}, {high:.2f}] (n=3)")
    final = f"{statistics.fmean(FINAL.values()):.2f} (n=3)"
    assert f"| logit | 0.5 | n/a | 0/3 | {cell} | {final} |" in markdown


def test_archive_readme_reports_the_selected_accuracy_with_interval(tmp_path, capsys):
    study = _study(tmp_path, "validation")
    assert cli.main(["archive", str(study.path)]) == 0
    readme = (analysis_dir(study.analysis_dir, study.name) / archive.README_FILE).read_text()
    assert 'Selection rule: [training] selection = "validation"' in readme
    assert "| data set | run | α | accuracy (%, selected_acc) | n | 95 % CI | final_acc (%) |" \
        in readme
    values = list(SELECTED.values())
    low, high = _t_interval(values)
    assert (f"| Digits | logit | 0.5 | {statistics.fmean(values):.2f} ± "
            f"{statistics.stdev(values):.2f} | 3/3 | [{low:.2f}, {high:.2f}] | "
            f"{statistics.fmean(FINAL.values()):.2f} (n=3) |") in readme
    # teachers without selected_acc: no value, said as such
    assert "| Digits | teacher (ResNet20) | — | — | 0/3 | — | — |" in readme


def test_each_row_says_what_chose_its_best_pth(tmp_path, capsys):
    """Issue 20, wording: a validation-selecting study whose teachers the test set chose
    said "the test set chose nothing", and the teachers' n/a read as "no finished run"."""
    from kdlab.study.status import format_report, status_report

    study = _study(tmp_path, "validation")
    for seed in SEEDS:  # the students chose on the validation hold-out, as they record
        directory = study.run_dir(RunSpec("Digits", "ResNet8", seed, "logit", "ResNet20", 0.5))
        status = json.loads((directory / state_files.STATUS_FILE).read_text())
        status["selection"] = "validation"
        (directory / state_files.STATUS_FILE).write_text(json.dumps(status))
    table = tables.accuracy_table(pd.DataFrame(columns=COLUMNS), study)
    markdown = tables.accuracy_markdown(table, study)
    assert cli.main(["archive", str(study.path)]) == 0
    readme = (analysis_dir(study.analysis_dir, study.name) / archive.README_FILE).read_text()
    report = format_report(status_report(study, check_jobs=False))
    for text in (markdown, readme, report):
        assert "chose nothing" not in text and "no finished run." not in text
    assert "| teacher | — | n/a | 0/3 | n/a | n/a | test (3): no selected_acc recorded |" \
        in markdown
    assert "| Digits | teacher (ResNet20) | — | — | 0/3 | — | — | test (3): no selected_acc " \
           "recorded |" in readme
    values = list(SELECTED.values())
    assert (f"| {statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f} | 3/3 | "
            f"[{_t_interval(values)[0]:.2f}, {_t_interval(values)[1]:.2f}] | "
            f"{statistics.fmean(FINAL.values()):.2f} (n=3) | validation (3) |") in readme
    assert list(table["chosen_on"]) == ["test (3): no selected_acc recorded",
                                        "— (no finished run)", "validation (3)"]
    assert "a teacher trained with selection 'test'" in report
