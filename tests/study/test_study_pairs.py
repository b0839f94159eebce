"""Studies with several teacher-student pairs (``pairs = [[T, S], ...]``): the grid trains
each teacher once, the queue packs the students of one teacher run whatever their model,
status groups its rows by pair, and validation names an unknown model with the known ones.
"""

from __future__ import annotations

import textwrap

import pytest

from kdlab.run import catalog, state_files
from kdlab.cli import main
from kdlab.run.errors import UserError
from kdlab.run.layout import RunSpec
from kdlab.study.decisions import SUBMIT, WAIT
from kdlab.study.queue import plan_queue, run_queue
from kdlab.study.status import format_report, status_report
from kdlab.study.progress import study_run_states
from kdlab.study.study_file import Cell, Pair, Role, load_study

# Two pairs sharing the teacher ResNet56.
SHARED_TEACHER = '[["ResNet56", "ResNet20"], ["ResNet56", "ResNet8"]]'


def pairs_study(tmp_path, pairs=SHARED_TEACHER, *, pack_size=4, seeds=(0, 1),
                methods=("logit",), extra_top=""):
    path = tmp_path / "pairs.toml"
    path.write_text(textwrap.dedent(f"""\
        name = "pairs"
        datasets = ["Digits"]
        pairs = {pairs}
        methods = {list(methods)!r}
        alphas = [0.5]
        seeds = {list(seeds)!r}
        experiments_dir = "{tmp_path / 'experiments'}"
        data_root = "{tmp_path / 'data'}"
        """).replace("'", '"') + extra_top + textwrap.dedent(f"""\
        [training]
        epochs = 2
        device = "cpu"

        [scheduler]
        backend = "local"
        max_live_jobs = 10
        pack_size = {pack_size}
        """))
    return path


def complete(study, spec, accuracy=90.0):
    state_files.write_status(study.run_dir(spec), {"status": "completed", "epoch": 2, "epochs": 2,
                                                "max_acc": accuracy, "run": spec.name})


def test_two_pairs_sharing_a_teacher_expand_to_each_run_once(tmp_path):
    study = load_study(pairs_study(tmp_path))
    first, second = Pair("ResNet56", "ResNet20"), Pair("ResNet56", "ResNet8")
    assert study.pairs == [first, second]
    assert study.teachers() == ["ResNet56"] and study.students() == ["ResNet20", "ResNet8"]
    kd = [RunSpec("Digits", pair.student, seed, method="logit", teacher="ResNet56", alpha=0.5)
          for pair in (first, second) for seed in (0, 1)]
    # Priority order: the shared teacher once per seed, the pure students, then KD runs.
    assert study.runs() == [
        RunSpec("Digits", "ResNet56", 0), RunSpec("Digits", "ResNet56", 1),
        RunSpec("Digits", "ResNet20", 0), RunSpec("Digits", "ResNet20", 1),
        RunSpec("Digits", "ResNet8", 0), RunSpec("Digits", "ResNet8", 1), *kd]
    # Run directories are today's: one pair's runs are found where they always were.
    assert study.run_dir(kd[0]) == (tmp_path / "experiments" / "Digits" / "logit"
                                    / "alpha_0.5" / "ResNet56_to_ResNet20" / "0")
    assert study.run_dir(RunSpec("Digits", "ResNet56", 1)) == (
        tmp_path / "experiments" / "Digits" / "pure" / "ResNet56" / "1")
    # Cells in report order: each pair shows its teacher, pure student and methods.
    assert study.cells() == [
        Cell("Digits", Role.TEACHER, pair=first), Cell("Digits", Role.PURE, pair=first),
        Cell("Digits", Role.KD, "logit", 0.5, first),
        Cell("Digits", Role.TEACHER, pair=second), Cell("Digits", Role.PURE, pair=second),
        Cell("Digits", Role.KD, "logit", 0.5, second)]
    teacher = RunSpec("Digits", "ResNet56", 0)
    assert study.role_of(teacher) == "teacher"
    assert study.cells_of(teacher) == [Cell("Digits", Role.TEACHER, pair=first),
                                       Cell("Digits", Role.TEACHER, pair=second)]
    # Every run lies in the cells of its pair; together the cells hold each run.
    members = {spec for cell in study.cells() for spec in study.cell_runs(cell)}
    assert members == set(study.runs())


def test_a_student_that_is_another_pairs_teacher_trains_once(tmp_path):
    study = load_study(pairs_study(
        tmp_path, '[["ResNet56", "ResNet20"], ["ResNet20", "ResNet8"]]', seeds=(0,)))
    assert [spec.name for spec in study.runs()] == [
        "Digits-pure-ResNet56-s0", "Digits-pure-ResNet20-s0", "Digits-pure-ResNet8-s0",
        "Digits-logit-a0.5-ResNet56_to_ResNet20-s0", "Digits-logit-a0.5-ResNet20_to_ResNet8-s0"]
    middle = RunSpec("Digits", "ResNet20", 0)
    assert study.role_of(middle) == "teacher"
    # The ResNet20 run is the second pair's teacher and the first pair's pure student.
    assert study.cells_of(middle) == [Cell("Digits", Role.PURE, pair=study.pairs[0]),
                                      Cell("Digits", Role.TEACHER, pair=study.pairs[1])]


def test_queue_trains_the_shared_teacher_once_then_packs_both_pairs_students(tmp_path):
    study = load_study(pairs_study(tmp_path))
    decisions = plan_queue(study, liveness={})
    actions = {decision.run.spec.name: decision.action for decision in decisions}
    assert [name for name, action in actions.items() if action == SUBMIT] == [
        "Digits-pure-ResNet56-s0", "Digits-pure-ResNet56-s1", "Digits-pure-ResNet20-s0",
        "Digits-pure-ResNet20-s1", "Digits-pure-ResNet8-s0", "Digits-pure-ResNet8-s1"]
    assert all(action == WAIT for name, action in actions.items() if "logit" in name)

    for spec in study.teacher_runs():
        complete(study, spec)
    lines = []
    before = sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*"))
    decisions, code = run_queue(study, dry_run=True, say=lines.append)
    assert code == 0
    assert sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*")) == before
    # One pack per seed: both pure students, then the students of both pairs of the teacher
    # run of that seed (ResNet20 and ResNet8 together).
    assert [line for line in lines if line.startswith("pack ")] == [
        "pack 1 (4 runs, one job): Digits-pure-ResNet20-s0, Digits-pure-ResNet8-s0, "
        "Digits-logit-a0.5-ResNet56_to_ResNet20-s0, Digits-logit-a0.5-ResNet56_to_ResNet8-s0",
        "pack 2 (4 runs, one job): Digits-pure-ResNet20-s1, Digits-pure-ResNet8-s1, "
        "Digits-logit-a0.5-ResNet56_to_ResNet20-s1, Digits-logit-a0.5-ResNet56_to_ResNet8-s1"]
    assert "8 would submit in 2 jobs" in lines[-1]


def test_status_groups_rows_by_pair_and_counts_a_shared_teacher_once(tmp_path):
    study = load_study(pairs_study(tmp_path))
    for spec, accuracy in zip(study.teacher_runs(), (96.0, 98.0)):
        complete(study, spec, accuracy)
    complete(study, RunSpec("Digits", "ResNet8", 0, method="logit", teacher="ResNet56",
                            alpha=0.5), 80.0)
    report = status_report(study, study_run_states(study), liveness={})
    assert report["total"] == 10 and report["counts"]["completed"] == 3
    rows = [(group["pair"], group["method"], group["model"], group["runs"], group["completed"],
             group["mean_max_acc"]) for group in report["groups"]]
    assert rows == [
        ("ResNet56 -> ResNet20", "teacher", "ResNet56", 2, 2, 97.0),
        ("ResNet56 -> ResNet20", "pure", "ResNet20", 2, 0, None),
        ("ResNet56 -> ResNet20", "logit", "ResNet20", 2, 0, None),
        ("ResNet56 -> ResNet8", "teacher", "ResNet56", 2, 2, 97.0),
        ("ResNet56 -> ResNet8", "pure", "ResNet8", 2, 0, None),
        ("ResNet56 -> ResNet8", "logit", "ResNet8", 2, 1, 80.0)]
    text = format_report(report).splitlines()
    header = next(line for line in text if line.startswith("data set"))
    assert header.split()[:4] == ["data", "set", "pair", "runs"]
    logit_rows = [line for line in text if " logit " in f" {line} "]
    assert [line.split()[1:4] for line in logit_rows] == [
        ["ResNet56", "->", "ResNet20"], ["ResNet56", "->", "ResNet8"]]


def test_one_pair_status_table_has_no_pair_column(tmp_path):
    study = load_study(pairs_study(tmp_path, '[["ResNet56", "ResNet20"]]'))
    assert study.teacher == "ResNet56" and study.student == "ResNet20"
    text = format_report(status_report(study, liveness={}, check_jobs=False))
    header = next(line for line in text.splitlines() if line.startswith("data set"))
    assert header.split()[:4] == ["data", "set", "runs", "of"]


@pytest.mark.parametrize("pairs,key,words", [
    ('[["ResNet56", "VGG99"]]', "pairs", "'VGG99'"),
    ('[["Nope", "ResNet8"]]', "pairs", "'Nope'"),
    ('[["ResNet56"]]', "pairs", "[teacher, student]"),
    ('[["ResNet56", "ResNet8", "ResNet20"]]', "pairs", "[teacher, student]"),
    ('[]', "pairs", "non-empty"),
    ('"ResNet56"', "pairs", "non-empty list"),
    ('[["ResNet56", "ResNet8"], ["ResNet56", "ResNet8"]]', "pairs", "repeated"),
])
def test_bad_pairs_are_one_line_naming_the_key(tmp_path, pairs, key, words):
    path = pairs_study(tmp_path, pairs)
    with pytest.raises(UserError) as caught:
        load_study(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(path))
    assert f"'{key}'" in message and words in message, message


def test_unknown_model_lists_the_known_ones_through_the_cli(tmp_path, capsys):
    path = pairs_study(tmp_path, '[["ResNet56", "VGG99"]]')
    assert main(["status", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "VGG99" in err
    assert all(name in err for name in catalog.MODEL_FACTS)


def test_pairs_beside_teacher_and_student_is_refused(tmp_path):
    path = pairs_study(tmp_path, extra_top='teacher = "ResNet56"\n')
    with pytest.raises(UserError, match="'teacher'.*either pairs or teacher/student"):
        load_study(path)
