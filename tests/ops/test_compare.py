"""`kdlab compare`: kdlab's numbers beside reference numbers (a Digits study with its own
reference CSV), and the published CIFAR-100 numbers shipped with kdlab."""

from __future__ import annotations

import csv
import io
import statistics

import numpy as np
import pytest
from scipy import stats as scipy_stats

from kdlab import cli
from kdlab.run.errors import UserError
from kdlab.run.layout import RunSpec
from kdlab.ops import compare
from kdlab.study.references import read_references
from kdlab.study.study_file import load_study
from builders import write_run, write_study

TEACHER = {0: 95.0, 1: 96.5, 2: 97.0}
PURE = {0: 88.0, 1: 89.0}                 # seed 2 still training
LOGIT = {0: 90.0, 1: 91.5, 2: 91.0}

REFERENCE = """dataset,teacher,student,method,top1,source,epoch
Digits,ResNet20,ResNet8,teacher,96.0,earlier round,best
Digits,ResNet20,ResNet8,pure,80.0,earlier round,best
Digits,ResNet20,ResNet8,logit,91.0,earlier round,best
Digits,ResNet20,ResNet8,logit,85.0,another paper Table 3,last
Digits,ResNet20,ResNet8,nst,70.0,another paper Table 3,last
Digits,ResNet56,ResNet8,logit,99.0,another pair,best
"""


def interval(values):
    values = list(values)
    return scipy_stats.t.interval(0.95, len(values) - 1, loc=np.mean(values),
                                  scale=scipy_stats.sem(values))


@pytest.fixture
def study(tmp_path):
    (tmp_path / "reference.csv").write_text(REFERENCE)
    path = write_study(tmp_path / "study.toml", methods=("logit", "fitnets"), seeds=(0, 1, 2),
                       top=f'analysis_dir = "{tmp_path / "analysis"}"\n',
                       tables='[compare]\nreference = "reference.csv"\n')
    loaded = load_study(path)
    experiments = loaded.experiments_dir
    for seed in (0, 1, 2):
        write_run(experiments, RunSpec("Digits", "ResNet20", seed), test_acc=[50.0, TEACHER[seed]])
        write_run(experiments, RunSpec("Digits", "ResNet8", seed, "logit", "ResNet20", 0.5),
                  test_acc=[60.0, LOGIT[seed]])
    for seed, accuracy in PURE.items():
        write_run(experiments, RunSpec("Digits", "ResNet8", seed), test_acc=[40.0, accuracy])
    write_run(experiments, RunSpec("Digits", "ResNet8", 2), status="in_progress", epochs=4,
              epoch=1, test_acc=[30.0])
    return loaded


def by_row(rows):
    found = {}
    for row in rows:
        found.setdefault(row.row, []).append(row)
    return found


def test_study_pairs_is_the_study_s_teacher_and_student(study):
    assert compare.study_pairs(study) == [("ResNet20", "ResNet8")]
    assert study.compare_reference.name == "reference.csv"


def test_numbers_inside_and_outside_the_interval_missing_cells_and_runs_in_progress(study):
    rows = by_row(compare.compare(study))
    assert list(rows) == ["teacher", "pure", "logit", "fitnets"]

    (teacher,) = rows["teacher"]
    low, high = interval(TEACHER.values())
    assert teacher.summary.n == 3 and teacher.unfinished == 0
    assert teacher.summary.mean == pytest.approx(statistics.fmean(TEACHER.values()))
    assert (teacher.summary.ci_low, teacher.summary.ci_high) == (pytest.approx(low),
                                                                 pytest.approx(high))
    assert low <= 96.0 <= high and teacher.inside is True
    assert teacher.difference == pytest.approx(statistics.fmean(TEACHER.values()) - 96.0)

    (pure,) = rows["pure"]
    low, high = interval(PURE.values())
    assert pure.summary.n == 2 and pure.unfinished == 1   # seed 2 still training
    assert not low <= 80.0 <= high and pure.inside is False
    assert pure.difference == pytest.approx(88.5 - 80.0)

    best, last = rows["logit"]           # both references of the cell, in file order
    assert (best.reference.top1, last.reference.top1) == (91.0, 85.0)
    low, high = interval(LOGIT.values())
    assert low <= 91.0 <= high and best.inside is True
    assert not low <= 85.0 <= high and last.inside is False
    assert best.alpha == 0.5

    (fitnets,) = rows["fitnets"]          # no runs, no reference
    assert fitnets.reference is None and fitnets.summary.n == 0
    assert fitnets.difference is None and fitnets.inside is None
    assert fitnets.unfinished == 3


def test_markdown_states_the_accuracy_and_each_cell_s_situation(study):
    rows = compare.compare(study)
    text = compare.comparison_markdown(study, rows, "the study's numbers")
    assert "## Digits: ResNet20 → ResNet8" in text
    assert 'best-epoch test accuracy (max_acc' in text and 'reported_accuracy = "best"' in text
    lines = {line.split("|")[1].strip() + "/" + line.split("|")[6].strip(): line
             for line in text.splitlines() if line.startswith("| ") and "row" not in line}
    pure = lines["pure/80.00 (best epoch)"]
    assert "2 (+1 still training or to come)" in pure and "| no |" in pure
    assert "| yes |" in lines["logit/91.00 (best epoch)"]
    assert "this study reports the best epoch" in lines[
        "logit/85.00 (last epoch); this study reports the best epoch"]
    assert "no reference number" in lines["fitnets/no reference number"]
    assert "0 (+3 still training or to come)" in lines["fitnets/no reference number"]


def test_a_single_seed_has_no_interval_to_hold_the_reference(tmp_path):
    (tmp_path / "reference.csv").write_text(REFERENCE)
    study = load_study(write_study(tmp_path / "study.toml", seeds=(0,),
                                   tables='[compare]\nreference = "reference.csv"\n'))
    write_run(study.experiments_dir, RunSpec("Digits", "ResNet20", 0), test_acc=[96.0])
    (teacher,) = by_row(compare.compare(study))["teacher"]
    assert teacher.summary.n == 1 and teacher.inside is None
    assert teacher.difference == pytest.approx(0.0)
    text = compare.comparison_markdown(study, compare.compare(study), "x")
    assert "— (no interval below 2 seeds)" in text


def test_kdlab_compare_writes_table_csv_and_figure(study, capsys):
    assert cli.main(["compare", str(study.path)]) == 0
    out = capsys.readouterr().out
    assert "no reference number" in out
    directory = study.analysis_dir / "experiment_s" / "compare"
    assert (directory / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = list(csv.DictReader(io.StringIO((directory / "compare.csv").read_text())))
    assert [row["row"] for row in table] == ["teacher", "pure", "logit", "logit", "fitnets"]
    assert table[1]["inside_ci"] == "false" and table[0]["inside_ci"] == "true"
    assert table[4]["reference"] == "" and table[1]["unfinished"] == "1"


@pytest.mark.parametrize("text, message", [
    ("dataset,teacher,student,method,top1,source\n", "column 'epoch' is missing"),
    (REFERENCE.replace("96.0", "960"), "line 2: column 'top1' is '960': expected an accuracy"),
    (REFERENCE.replace(",best\n", ",final\n", 1), "line 2: column 'epoch' is 'final'"),
    (REFERENCE.replace("Digits,ResNet20", "MNIST,ResNet20", 1), "column 'dataset' is 'MNIST'"),
    (REFERENCE.replace("earlier round", "", 1), "column 'source' is ''"),
])
def test_a_bad_reference_file_is_one_line_exit_2(study, capsys, text, message):
    study.compare_reference.write_text(text)
    assert cli.main(["compare", str(study.path)]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "reference.csv" in error and "\n" not in error


def test_a_missing_reference_file_is_refused_when_the_study_loads(tmp_path):
    path = write_study(tmp_path / "study.toml", tables='[compare]\nreference = "none.csv"\n')
    with pytest.raises(UserError, match=r"key 'compare.reference': expected an existing CSV"):
        load_study(path)


# ---- the published numbers -----------------------------------------------------------------

# kdlab's names of the benchmark's models (issue 22's table) and methods.
MODELS = {"ResNet56", "ResNet20", "ResNet110", "ResNet32", "ResNet32x4", "ResNet8x4",
          "WRN40_2", "WRN16_2", "WRN40_1", "VGG13", "VGG8", "MobileNetV2", "ResNet50",
          "ShuffleNetV1", "ShuffleNetV2"}
METHODS = {"teacher", "pure", "logit", "fitnets", "attention_transfer", "sp", "cc", "vid",
           "rkd", "pkt", "ab", "factor_transfer", "fsp", "nst", "crd", "crd+logit", "ofd",
           "reviewkd", "dkd"}
CRD1, CRD2 = "CRD (Tian et al. ICLR 2020) Table 1", "CRD (Tian et al. ICLR 2020) Table 2"
DKD1, DKD2 = "DKD (Zhao et al. CVPR 2022) Table 1", "DKD (Zhao et al. CVPR 2022) Table 2"

# Typed by hand from the READMEs (RepDistiller's for CRD, mdistiller's for DKD): every
# pair's teacher and student, and one cell of every method row.
HAND_READ = [
    (CRD1, "WRN40_2", "WRN16_2", "teacher", 75.61), (CRD1, "WRN40_2", "WRN16_2", "pure", 73.26),
    (CRD1, "WRN40_2", "WRN40_1", "pure", 71.98), (CRD1, "ResNet56", "ResNet20", "teacher", 72.34),
    (CRD1, "ResNet56", "ResNet20", "pure", 69.06), (CRD1, "ResNet110", "ResNet32", "teacher", 74.31),
    (CRD1, "ResNet110", "ResNet32", "pure", 71.14), (CRD1, "ResNet32x4", "ResNet8x4", "teacher", 79.42),
    (CRD1, "ResNet32x4", "ResNet8x4", "pure", 72.50), (CRD1, "VGG13", "VGG8", "teacher", 74.64),
    (CRD1, "VGG13", "VGG8", "pure", 70.36),
    (CRD1, "WRN40_2", "WRN16_2", "logit", 74.92), (CRD1, "WRN40_2", "WRN40_1", "fitnets", 72.24),
    (CRD1, "ResNet56", "ResNet20", "attention_transfer", 70.55),
    (CRD1, "ResNet110", "ResNet32", "sp", 72.69), (CRD1, "ResNet32x4", "ResNet8x4", "cc", 72.97),
    (CRD1, "VGG13", "VGG8", "vid", 71.23), (CRD1, "ResNet56", "ResNet20", "rkd", 69.61),
    (CRD1, "WRN40_2", "WRN40_1", "pkt", 73.45), (CRD1, "WRN40_2", "WRN16_2", "ab", 72.50),
    (CRD1, "ResNet32x4", "ResNet8x4", "factor_transfer", 72.86),
    (CRD1, "ResNet56", "ResNet20", "fsp", 69.95), (CRD1, "VGG13", "VGG8", "nst", 71.53),
    (CRD1, "ResNet32x4", "ResNet8x4", "crd", 75.51),
    (CRD1, "ResNet110", "ResNet20", "teacher", 74.31), (CRD1, "ResNet110", "ResNet20", "pure", 69.06),
    (CRD1, "ResNet110", "ResNet20", "logit", 70.67), (CRD1, "ResNet110", "ResNet20", "fitnets", 68.99),
    (CRD1, "ResNet110", "ResNet20", "fsp", 70.11), (CRD1, "ResNet110", "ResNet20", "crd", 71.46),
    (CRD2, "VGG13", "MobileNetV2", "teacher", 74.64), (CRD2, "VGG13", "MobileNetV2", "pure", 64.60),
    (CRD2, "ResNet50", "MobileNetV2", "teacher", 79.34), (CRD2, "ResNet50", "VGG8", "pure", 70.36),
    (CRD2, "ResNet32x4", "ShuffleNetV1", "pure", 70.50),
    (CRD2, "ResNet32x4", "ShuffleNetV2", "pure", 71.82),
    (CRD2, "WRN40_2", "ShuffleNetV1", "teacher", 75.61),
    (CRD2, "VGG13", "MobileNetV2", "attention_transfer", 59.40),
    (CRD2, "ResNet50", "VGG8", "logit", 73.81), (CRD2, "ResNet32x4", "ShuffleNetV2", "nst", 74.68),
    (CRD2, "WRN40_2", "ShuffleNetV1", "crd", 76.05), (CRD2, "ResNet50", "MobileNetV2", "ab", 67.20),
    (DKD1, "ResNet56", "ResNet20", "dkd", 71.97), (DKD1, "ResNet110", "ResNet32", "dkd", 74.11),
    (DKD1, "ResNet32x4", "ResNet8x4", "dkd", 76.32), (DKD1, "WRN40_2", "WRN16_2", "dkd", 76.23),
    (DKD1, "WRN40_2", "WRN40_1", "dkd", 74.81), (DKD1, "VGG13", "VGG8", "dkd", 74.68),
    (DKD1, "VGG13", "VGG8", "logit", 72.98),
    (DKD2, "ResNet32x4", "ShuffleNetV1", "dkd", 76.45), (DKD2, "WRN40_2", "ShuffleNetV1", "dkd", 76.70),
    (DKD2, "VGG13", "MobileNetV2", "dkd", 69.71), (DKD2, "ResNet50", "MobileNetV2", "dkd", 70.35),
    (DKD2, "ResNet50", "MobileNetV2", "logit", 67.35),
]


def test_published_numbers_hold_every_cell_with_valid_fields():
    references = read_references()
    counts = {source: 0 for source in (CRD1, CRD2, DKD1, DKD2)}
    cells = set()
    for reference in references:
        assert reference.dataset == "Cifar100"
        assert {reference.teacher, reference.student} <= MODELS
        assert reference.method in METHODS
        assert 50.0 < reference.top1 < 80.0
        assert reference.epoch == ("last" if reference.source.startswith("CRD") else "best")
        counts[reference.source] += 1
        key = (reference.source, reference.teacher, reference.student, reference.method)
        assert key not in cells
        cells.add(key)
    assert counts == {CRD1: 7 * 15 - 1, CRD2: 6 * 14, DKD1: 6 * 2, DKD2: 4 * 2}
    assert {(r.teacher, r.student) for r in references} == {
        ("ResNet56", "ResNet20"), ("ResNet110", "ResNet20"), ("ResNet110", "ResNet32"),
        ("ResNet32x4", "ResNet8x4"), ("WRN40_2", "WRN16_2"), ("WRN40_2", "WRN40_1"), ("VGG13", "VGG8"),
        ("VGG13", "MobileNetV2"), ("ResNet50", "MobileNetV2"), ("ResNet50", "VGG8"),
        ("ResNet32x4", "ShuffleNetV1"), ("ResNet32x4", "ShuffleNetV2"),
        ("WRN40_2", "ShuffleNetV1")}
    # FSP for WRN40_2 -> WRN40_1 has no result (README: 0.00): absent, not 0.
    assert (CRD1, "WRN40_2", "WRN40_1", "fsp") not in cells
    top1 = {(r.source, r.teacher, r.student, r.method): r.top1 for r in references}
    for source, teacher, student, method, value in HAND_READ:
        assert top1[(source, teacher, student, method)] == value, (source, teacher, student,
                                                                   method)
    # Each table names a row of every method it gives, for every pair.
    assert {r.method for r in references if r.source == CRD2} == METHODS - {
        "fsp", "crd+logit", "ofd", "reviewkd", "dkd"}


def test_each_pair_of_a_study_gets_its_own_rows(tmp_path):
    """Two pairs sharing the teacher ResNet56 (students ResNet20 and ResNet8): each pair's
    rows hold its own student's pure and distilled runs and the shared teacher's."""
    path = tmp_path / "study.toml"
    path.write_text(f"""name = "two"
datasets = ["Digits"]
pairs = [["ResNet56", "ResNet20"], ["ResNet56", "ResNet8"]]
methods = ["logit"]
alphas = [0.5]
seeds = [0, 1]
experiments_dir = "{tmp_path / 'experiments'}"
[training]
epochs = 4
""")
    study = load_study(path)
    experiments = study.experiments_dir
    for seed in (0, 1):
        write_run(experiments, RunSpec("Digits", "ResNet56", seed), test_acc=[50.0, 97.0 + seed])
        write_run(experiments, RunSpec("Digits", "ResNet20", seed), test_acc=[40.0, 90.0 + seed])
        write_run(experiments, RunSpec("Digits", "ResNet8", seed), test_acc=[40.0, 80.0 + seed])
        write_run(experiments, RunSpec("Digits", "ResNet20", seed, "logit", "ResNet56", 0.5),
                  test_acc=[60.0, 92.0 + seed])
        write_run(experiments, RunSpec("Digits", "ResNet8", seed, "logit", "ResNet56", 0.5),
                  test_acc=[60.0, 84.0 + seed])
    assert compare.study_pairs(study) == [("ResNet56", "ResNet20"), ("ResNet56", "ResNet8")]
    rows = compare.compare(study, references=[])
    means = {(row.student, row.row): (row.summary.mean, row.summary.n) for row in rows}
    assert means == {("ResNet20", "teacher"): (97.5, 2), ("ResNet20", "pure"): (90.5, 2),
                     ("ResNet20", "logit"): (92.5, 2), ("ResNet8", "teacher"): (97.5, 2),
                     ("ResNet8", "pure"): (80.5, 2), ("ResNet8", "logit"): (84.5, 2)}
