"""kdlab's notebook API: ``kdlab.runs``, ``kdlab.curves``, ``kdlab.metrics`` as pandas
DataFrames, checked against the files they read: a small study trained here for real
(tests/builders.py), and a hand-written tree with every run state and an
earlier-code run. They read files only and never import torch."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import kdlab
from kdlab.run import state_files
from kdlab.run.errors import UserError
from kdlab.run.layout import RunSpec, analysis_dir, run_dir
from kdlab.study.status import status_report
from kdlab.study.progress import study_run_states
from kdlab.study.study_file import load_study
from builders import analysed_copy, write_local_study, write_run

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    return analysed_copy(tmp_path_factory)


@pytest.mark.slow
def test_runs_of_a_trained_study(analysed):
    frame = kdlab.runs(analysed.path)
    assert len(frame) == len(analysed.runs()) == 3
    assert list(frame["role"]) == ["teacher", "pure", "kd"]
    assert list(frame["method"]) == ["teacher", "pure", "logit"]
    assert frame["alpha"].isna().tolist() == [True, True, False] and frame["alpha"][2] == 0.5
    assert (frame["state"] == "completed").all() and (frame["epoch"] == 1).all()
    for row, spec in zip(frame.itertuples(), analysed.runs()):
        directory = run_dir(analysed.experiments_dir, spec)
        status = json.loads((directory / "status.json").read_text())
        metrics = json.loads((directory / "metrics.json").read_text())
        assert row.run_dir == str(directory) and row.model == spec.model
        assert row.max_acc == status["max_acc"]
        assert row.final_acc == metrics["test_acc"][-1]
        assert row.duration_seconds == status["duration_seconds"]
        assert row.epoch_seconds_mean == pytest.approx(sum(metrics["epoch_seconds"]))
        assert row.completed_at == pd.Timestamp(status["completed_at"], unit="s", tz="UTC")
        assert row.made_by == status.get("made_by", "kdlab")
    # the same call with a loaded study
    pd.testing.assert_frame_equal(kdlab.runs(load_study(analysed.path)), frame)


@pytest.mark.slow
def test_curves_of_a_trained_study_and_of_one_run(analysed):
    long = kdlab.curves(analysed.path)
    for spec in analysed.runs():
        directory = run_dir(analysed.experiments_dir, spec)
        metrics = json.loads((directory / "metrics.json").read_text())
        of_run = long[long["run_dir"] == str(directory)]
        for name in ("train_loss", "train_acc", "test_loss", "test_acc", "epoch_seconds"):
            series = of_run[of_run["metric"] == name].sort_values("epoch")
            assert series["value"].tolist() == metrics[name]
            assert series["epoch"].tolist() == list(range(1, len(metrics[name]) + 1))
        assert "config" not in set(of_run["metric"])
        single = kdlab.curves(directory)
        assert set(single["metric"]) == set(of_run["metric"])
        assert sorted(single["value"]) == sorted(of_run["value"])
        assert (single["dataset"] == "Digits").all() and (single["seed"] == spec.seed).all()


@pytest.mark.slow
def test_metrics_csv_typed_and_joinable_with_runs(analysed):
    frame = kdlab.metrics(analysed)
    path = analysis_dir(analysed.analysis_dir, analysed.name) / "metrics.csv"
    with open(path, newline="") as handle:
        raw = list(csv.DictReader(handle))
    assert len(frame) == len(raw) > 0
    assert str(frame["value"].dtype) == "float64" and str(frame["alpha"].dtype) == "float64"
    assert str(frame["seed"].dtype) == "Int64" and str(frame["metric"].dtype) == "string"
    for row, record in zip(frame.itertuples(), raw):
        assert row.value == pytest.approx(float(record["value"]), rel=1e-12)
        assert (math.isnan(row.alpha) if record["alpha"] == "" else
                row.alpha == float(record["alpha"]))
    joined = frame.merge(kdlab.runs(analysed), on=["dataset", "method", "alpha", "seed"])
    assert len(joined) == len(frame)                # every metric row finds its run
    assert set(joined["role"]) == {"teacher", "pure", "kd"}


def test_runs_of_a_tree_in_every_state(tmp_path):
    study = load_study(write_local_study(tmp_path / "study.toml", methods=["logit", "rkd"],
                                   alphas=[0.5], seeds=[0, 1]))
    experiments = study.experiments_dir
    write_run(experiments, RunSpec("Digits", "ResNet20", 0), test_acc=[40.0, 70.0, 65.0])
    write_run(experiments, RunSpec("Digits", "ResNet20", 1), status="failed", epoch=1,
              reason="non-finite loss")
    write_run(experiments, RunSpec("Digits", "ResNet8", 0, "logit", "ResNet20", 0.5),
              status="in_progress", epoch=2, job_id="123.sched", scheduler="pbs")
    broken = run_dir(experiments, RunSpec("Digits", "ResNet8", 0))
    broken.mkdir(parents=True)
    (broken / "status.json").write_text('{"status": "completed", "epoch": ')   # torn
    # the earlier research code's completed run: status, epoch, max_acc, config; no 'run'
    earlier = run_dir(experiments, RunSpec("Digits", "ResNet8", 0, "rkd", "ResNet20", 0.5))
    earlier.mkdir(parents=True)
    (earlier / "status.json").write_text(json.dumps(
        {"status": "completed", "epoch": 150, "max_acc": 27.01,
         "config": {"model": "ResNet8", "dataset": "Digits", "seed": 0}}))
    before = {p: p.read_bytes() for p in experiments.rglob("*") if p.is_file()}

    frame = kdlab.runs(study).set_index("run_dir")
    states = {str(state.run_dir): state for state in study_run_states(study)}
    assert list(frame.index) == list(states)
    assert (frame["state"] == pd.Series({k: s.state for k, s in states.items()})).all()
    teacher = frame.loc[str(run_dir(experiments, RunSpec("Digits", "ResNet20", 0)))]
    assert (teacher.max_acc, teacher.final_acc, teacher.made_by) == (70.0, 65.0, "kdlab")
    failed = frame.loc[str(run_dir(experiments, RunSpec("Digits", "ResNet20", 1)))]
    assert failed.state == "failed" and "non-finite loss" in failed.detail
    assert pd.isna(failed.final_acc)           # only a completed run has a final accuracy
    live = frame.loc[str(run_dir(experiments,
                                 RunSpec("Digits", "ResNet8", 0, "logit", "ResNet20", 0.5)))]
    assert (live.state, live.job_id, live.scheduler, live.epoch) == ("running", "123.sched",
                                                                    "pbs", 2)
    unreadable = frame.loc[str(broken)]
    assert unreadable.state == "unreadable" and str(broken) in unreadable.detail
    assert pd.isna(unreadable.made_by)
    old = frame.loc[str(earlier)]
    assert (old.state, old.made_by, old.max_acc, old.epoch) == ("completed", "earlier code",
                                                               27.01, 150)
    assert pd.isna(old.epochs) and pd.isna(old.final_acc)   # no metrics.json, no epochs key
    assert set(frame["state"]) >= {"not_started", "waiting"}
    curves = kdlab.curves(study)                   # the unreadable file is left out, named
    assert str(broken) not in set(curves["run_dir"])
    assert {p: p.read_bytes() for p in experiments.rglob("*") if p.is_file()} == before


def test_missing_or_damaged_inputs_are_one_line_errors(tmp_path):
    study = load_study(write_local_study(tmp_path / "study.toml"))
    with pytest.raises(UserError, match="metrics.csv: no such file.*kdlab analyze"):
        kdlab.metrics(study)
    csv_path = analysis_dir(study.analysis_dir, study.name) / "metrics.csv"
    state_files.atomic_write_text(csv_path, "a,b\n1,2\n")
    with pytest.raises(UserError, match="no column dataset"):
        kdlab.metrics(study)
    with pytest.raises(UserError, match="metrics.json: no such file"):
        kdlab.curves(tmp_path)


def test_the_api_reads_files_without_importing_torch(tmp_path):
    study = write_local_study(tmp_path / "study.toml")
    write_run(study.parent / "experiments", RunSpec("Digits", "ResNet20", 0))
    csv_path = analysis_dir(study.parent / "analysis", "tiny") / "metrics.csv"
    state_files.atomic_write_text(csv_path, "dataset,method,alpha,seed,layer,metric,value\n"
                                         "Digits,teacher,,0,layer1,effective_dim,3.5\n")
    code = f"""
import sys
import kdlab
runs = kdlab.runs({str(study)!r})
curves = kdlab.curves({str(study)!r})
metrics = kdlab.metrics({str(study)!r})
assert runs['state'].tolist()[0] == 'completed', runs
assert len(curves) > 0 and metrics['value'].tolist() == [3.5]
assert 'torch' not in sys.modules, 'torch was imported'
print('ok')
"""
    env = dict(os.environ, PYTHONPATH=str(SRC))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_import_kdlab_stays_light():
    code = ("import sys, kdlab; assert 'pandas' not in sys.modules; "
            "assert callable(kdlab.runs) and callable(kdlab.curves) and callable(kdlab.metrics)")
    env = dict(os.environ, PYTHONPATH=str(SRC))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=60)
    assert result.returncode == 0, result.stderr


def test_api_names_survive_every_kdlab_module_being_imported():
    """A submodule named like an API function would replace it once imported."""
    code = ("import pkgutil, importlib, kdlab\n"
            "names = [m.name for m in pkgutil.walk_packages(kdlab.__path__, 'kdlab.')]\n"
            "assert not {'kdlab.runs', 'kdlab.curves', 'kdlab.metrics'} & set(names), names\n"
            "import kdlab.study.status, kdlab.study.queue, kdlab.api\n"
            "assert callable(kdlab.runs) and callable(kdlab.curves) and callable(kdlab.metrics)\n"
            "print('ok')")
    env = dict(os.environ, PYTHONPATH=str(SRC))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def _damaged_runs(tmp_path):
    """A teacher run per seed, each status.json carrying one value as a hostile tester wrote
    it; seed 3 is left intact."""
    study = load_study(write_local_study(tmp_path / "study.toml", seeds=[0, 1, 2, 3]))
    changes = {0: lambda status: status.update(started_at=status["started_at"] * 1000),
               1: lambda status: status.update(epoch=10 ** 30),
               2: lambda status: (status.pop("epochs"), status["config"].update(epochs=2.5))}
    directories = {}
    for seed in range(4):
        directory = write_run(study.experiments_dir, RunSpec("Digits", "ResNet20", seed))
        status = json.loads((directory / "status.json").read_text())
        if seed in changes:
            changes[seed](status)
        (directory / "status.json").write_text(json.dumps(status))
        directories[seed] = directory
    return study, directories


def test_runs_reads_out_of_range_values_as_missing_and_says_why(tmp_path):
    """started_at in milliseconds (OutOfBoundsDatetime), epoch 10**30 and config epochs 2.5
    (TypeError) once made runs() raise where kdlab status copes."""
    study, directories = _damaged_runs(tmp_path)
    report = status_report(study, check_jobs=False)      # the command copes: so must the API
    assert report["counts"]["completed"] == 4

    frame = kdlab.runs(study).set_index("run_dir")
    rows = {seed: frame.loc[str(directory)] for seed, directory in directories.items()}
    assert (frame.loc[[str(d) for d in directories.values()], "state"] == "completed").all()
    milliseconds = rows[0]
    assert pd.isna(milliseconds.started_at)
    assert milliseconds.problem.startswith("started_at is ") and "unix seconds" in \
        milliseconds.problem
    intact = json.loads((directories[0] / "status.json").read_text())
    assert milliseconds.completed_at == pd.Timestamp(intact["completed_at"], unit="s", tz="UTC")
    assert milliseconds.epoch == 3 and milliseconds.epochs == 3

    huge_epoch = rows[1]
    assert pd.isna(huge_epoch.epoch) and huge_epoch.epochs == 3
    assert huge_epoch.problem == ("epoch is a 31-digit integer, expected a whole number in "
                                  f"0..{2 ** 63 - 1}")

    fractional = rows[2]
    assert pd.isna(fractional.epochs) and fractional.epoch == 3
    assert fractional.problem == "config epochs is 2.5, expected a whole number"

    assert pd.isna(rows[3].problem) and rows[3].epochs == 3
    assert str(frame["problem"].dtype) == "string" and str(frame["epoch"].dtype) == "Int64"
    assert str(frame["started_at"].dtype).startswith("datetime64")
    # every other value of the damaged rows is read as from the intact one
    for seed in (0, 1, 2):
        assert rows[seed].max_acc == rows[3].max_acc and rows[seed].final_acc == 70.0


def test_a_number_beyond_float_range_makes_status_unreadable_not_a_traceback(tmp_path):
    """A 400-digit integer is valid JSON; float() of it raised OverflowError in kdlab status
    and in runs()."""
    study = load_study(write_local_study(tmp_path / "study.toml"))
    directory = write_run(study.experiments_dir, RunSpec("Digits", "ResNet20", 0))
    text = (directory / "status.json").read_text()
    status = json.loads(text)
    (directory / "status.json").write_text(
        text.replace(json.dumps(status["max_acc"]), "1" + "0" * 400, 1))
    [state] = [s for s in study_run_states(study) if s.run_dir == directory]
    assert state.state == "unreadable"
    assert "'max_acc' is a 401-digit integer, expected a number within float range" in \
        state.detail
    row = kdlab.runs(study).set_index("run_dir").loc[str(directory)]
    assert row.state == "unreadable" and pd.isna(row.max_acc)


def test_metrics_reads_a_seed_it_cannot_hold_as_missing_and_says_why(tmp_path):
    """seed '1.5' read as 1, and a 23-digit seed as INT64_MIN."""
    study = load_study(write_local_study(tmp_path / "study.toml"))
    csv_path = analysis_dir(study.analysis_dir, study.name) / "metrics.csv"
    state_files.atomic_write_text(csv_path, "dataset,method,alpha,seed,layer,metric,value\n"
                                         "Digits,teacher,,1.5,layer1,effective_dim,3.5\n"
                                         "Digits,teacher,,12345678901234567890123,layer1,"
                                         "effective_dim,4.5\n"
                                         "Digits,logit,0.5,2,layer1,effective_dim,many\n"
                                         "Digits,pure,,3.0,layer1,effective_dim,inf\n")
    frame = kdlab.metrics(study)
    assert str(frame["seed"].dtype) == "Int64" and str(frame["value"].dtype) == "float64"
    assert pd.isna(frame["seed"][0]) and pd.isna(frame["seed"][1])
    assert frame["seed"][2] == 2 and frame["seed"][3] == 3
    assert frame["problem"][0] == "seed is '1.5', expected a whole number"
    assert frame["problem"][1] == ("seed is '12345678901234567890123', expected a whole "
                                   f"number in {-2 ** 63}..{2 ** 63 - 1}")
    assert frame["value"].tolist()[:2] == [3.5, 4.5]
    assert math.isnan(frame["value"][2]) and frame["problem"][2] == \
        "value is 'many', expected a number"
    assert frame["value"][3] == math.inf and pd.isna(frame["problem"][3])
    assert frame["alpha"][2] == 0.5 and str(frame["problem"].dtype) == "string"


def _tree_for_curves(tmp_path):
    """Every kind of run of a two-method, two-seed grid, with curves of their own values;
    one run not started (no rows), one with an extra per-epoch metric."""
    study = load_study(write_local_study(tmp_path / "study.toml", methods=["logit", "rkd"],
                                   alphas=[0.5, 0.9], seeds=[0, 1]))
    for index, spec in enumerate(study.runs()):
        if spec.seed == 1 and spec.method == "rkd" and spec.alpha == 0.9:
            continue                                  # not started
        directory = write_run(study.experiments_dir, spec, epochs=3 + index % 3,
                              test_acc=[10.0 * index + 0.1 * epoch
                                        for epoch in range(3 + index % 3)])
        if index == 2:
            path = directory / "metrics.json"
            metrics = json.loads(path.read_text())
            metrics["lr"] = [0.1, 0.05, 0.025, 0.0125, 0.00625][:len(metrics["test_acc"])]
            path.write_text(json.dumps(metrics))
    return study


def _without_categories(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with its categoricals as text: a selection holds only its own categories."""
    return frame.astype({column: "string" for column in frame.columns
                         if isinstance(frame[column].dtype, pd.CategoricalDtype)})


def test_curves_lean_dtypes_and_values_equal_to_the_files(tmp_path):
    study = _tree_for_curves(tmp_path)
    full = kdlab.curves(study)
    assert list(full.columns) == ["dataset", "role", "method", "alpha", "seed", "run_dir",
                                  "epoch", "metric", "value"]
    for column in ("dataset", "role", "method", "run_dir", "metric"):
        assert isinstance(full[column].dtype, pd.CategoricalDtype), column
    assert str(full["seed"].dtype) == "int32" and str(full["epoch"].dtype) == "int32"
    assert str(full["value"].dtype) == "float64" and str(full["alpha"].dtype) == "float64"
    expected_rows = []
    for state in study_run_states(study):
        if state.status is None:
            continue
        metrics = json.loads((state.run_dir / "metrics.json").read_text())
        method = state.spec.method if state.role == "kd" else str(state.role)
        for name in sorted(metrics):
            if name == "config":
                continue
            expected_rows += [(state.spec.dataset, str(state.role), method, state.spec.alpha,
                               state.spec.seed, str(state.run_dir), epoch, name, value)
                              for epoch, value in enumerate(metrics[name], start=1)]
    got = [tuple(None if isinstance(v, float) and math.isnan(v) and column == "alpha" else v
                 for v, column in zip(row, full.columns))
           for row in full.itertuples(index=False)]
    assert got == expected_rows       # every value exactly as in metrics.json, in order


def test_curves_selection_is_exactly_the_full_call_filtered(tmp_path):
    study = _tree_for_curves(tmp_path)
    full = kdlab.curves(study)
    runs = kdlab.runs(study)
    names = [spec.name for spec in study.runs()]

    def filtered(mask) -> pd.DataFrame:
        return _without_categories(full[mask].reset_index(drop=True))

    chosen = [names[5], names[1]]                  # any order: rows come in grid order
    directories = [str(study.run_dir(spec)) for spec in study.runs()
                   if spec.name in chosen]
    by_name = kdlab.curves(study, runs=chosen)
    pd.testing.assert_frame_equal(_without_categories(by_name),
                                  filtered(full["run_dir"].isin(directories)))
    assert set(by_name["run_dir"]) == set(directories)
    assert by_name.dtypes.to_dict() == {column: (full[column].dtype if not isinstance(
        full[column].dtype, pd.CategoricalDtype) else by_name[column].dtype)
        for column in full.columns}
    pd.testing.assert_frame_equal(kdlab.curves(study, runs=directories), by_name)

    logit = runs[runs["method"] == "logit"]        # a subset of runs()' rows
    from_frame = kdlab.curves(study, runs=logit)
    pd.testing.assert_frame_equal(_without_categories(from_frame),
                                  filtered(full["method"] == "logit"))
    assert len(from_frame) > 0

    two = kdlab.curves(study, metrics=["test_acc", "lr"])
    pd.testing.assert_frame_equal(_without_categories(two),
                                  filtered(full["metric"].isin(["test_acc", "lr"])))
    assert set(two["metric"]) == {"test_acc", "lr"}
    both = kdlab.curves(study, runs=logit, metrics="test_acc")
    pd.testing.assert_frame_equal(
        _without_categories(both),
        filtered((full["method"] == "logit") & (full["metric"] == "test_acc")))
    not_started = [name for name in names if name.endswith("rkd-a0.9-ResNet20_to_ResNet8-s1")]
    assert len(kdlab.curves(study, runs=not_started)) == 0

    with pytest.raises(UserError, match=r"curves\(runs=\.\.\.\): 1 not a run of study tiny "
                                        r"\(Digits-pure-ResNet8-s7\)"):
        kdlab.curves(study, runs=[names[0], "Digits-pure-ResNet8-s7"])


def test_curves_of_one_run_with_a_seed_its_column_cannot_hold(tmp_path):
    """A run's own curves identify it from its config: a seed of 2.5 made the cast raise."""
    directory = write_run(tmp_path / "experiments", RunSpec("Digits", "ResNet20", 0))
    metrics = json.loads((directory / "metrics.json").read_text())
    metrics["config"]["seed"] = 2.5
    (directory / "metrics.json").write_text(json.dumps(metrics))
    frame = kdlab.curves(directory)
    assert frame["seed"].isna().all() and str(frame["seed"].dtype) == "Int64"
    assert frame[frame["metric"] == "test_acc"]["value"].tolist() == metrics["test_acc"]
