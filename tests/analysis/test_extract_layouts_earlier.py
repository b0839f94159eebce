"""``kdlab extract``/``analyze``/``plot`` on a study trained here for real
(tests/builders.py): a tree in the no-alpha layout, and earlier-code runs (which
preprocessing their weights are evaluated under)."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from kdlab import cli
from kdlab.run import layout, state_files
from kdlab.analysis.extract import representations_of
from kdlab.analysis.store import load_representation, read_provenance
from kdlab.ops.plot_curves import CURVES_FILE
from kdlab.study.study_file import load_study
from builders import trained_copy

pytestmark = pytest.mark.slow


def _rewrite(study, old: str, new: str):
    text = study.path.read_text()
    assert old in text
    study.path.write_text(text.replace(old, new, 1))
    return load_study(study.path)


def _kd_spec(study):
    return next(spec for spec in study.runs() if not spec.is_pure)


def test_no_alpha_tree_works_with_extract_analyze_and_plot(tmp_path_factory, capsys):
    study = trained_copy(tmp_path_factory)
    spec = _kd_spec(study)
    old_dir = study.run_dir(spec)
    study.path.write_text('layout = "no-alpha"\n' + study.path.read_text())
    study = load_study(study.path)
    new_dir = study.run_dir(spec)
    assert new_dir != old_dir and "alpha_" not in new_dir.as_posix()
    new_dir.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(old_dir, new_dir)
    shutil.rmtree(old_dir.parent.parent)       # the emptied alpha_0.5 level

    assert cli.main(["extract", str(study.path), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "3 extracted" in out, out
    kd_file = layout.representation_path(study.analysis_dir, study.name, spec, "kd")
    assert load_representation(kd_file)["labels"].size > 0

    assert cli.main(["analyze", str(study.path), "--jobs", "1"]) == 0
    metrics_csv = layout.analysis_table_path(study.analysis_dir, study.name, "metrics.csv")
    rows = list(csv.DictReader(metrics_csv.open()))
    assert {(r["method"], float(r["alpha"])) for r in rows if r["metric"] == "cka_linear"
            and r["method"] == "logit"} == {("logit", 0.5)}

    assert cli.main(["plot", str(study.path)]) == 0
    assert (new_dir / CURVES_FILE).is_file()


def _make_earlier_code(run_dir):
    """Rewrite a kdlab status.json as the earlier code wrote it (no made_by, no run, its
    own config keys)."""
    status = state_files.read_status(run_dir)
    earlier = {"status": "completed", "epoch": status["epoch"], "max_acc": status["max_acc"],
               "config": {"model": "ResNet8", "dataset": "Digits", "seed": 0,
                          "distillation": "logit", "teacher_model": "ResNet20",
                          "teacher_weights": "x/best.pth", "alpha": 0.5, "temperature": 4,
                          "force_restart": False}}
    (run_dir / state_files.STATUS_FILE).write_text(json.dumps(earlier))
    assert state_files.is_earlier_code(state_files.read_status(run_dir))


def test_extract_says_which_preprocessing_earlier_code_weights_get(tmp_path_factory, capsys):
    from kdlab import data as kdata
    from kdlab.models import build_model, load_weights_file

    study = trained_copy(tmp_path_factory)
    spec = _kd_spec(study)
    _make_earlier_code(study.run_dir(spec))
    assert cli.main(["extract", str(study.path), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    notes = [line for line in out.splitlines() if "run of the earlier code" in line]
    assert notes == [notes[0]] and notes[0].startswith("Digits: 1 run of the earlier code "
                                                       "evaluated under kdlab's preprocessing")
    kd_file = layout.representation_path(study.analysis_dir, study.name, spec, "kd")
    under_kdlab = load_representation(kd_file)

    # switching the study's augmentation makes every representation stale: all re-extracted
    study = _rewrite(study, 'device = "cpu"', 'device = "cpu"\naugmentation = "earlier"')
    assert cli.main(["extract", str(study.path), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "3 extracted, 0 up to date" in out, out
    assert ("Digits: 1 run of the earlier code evaluated under the earlier code's "
            "preprocessing") in out, out
    under_earlier = load_representation(kd_file)

    # the stored outputs are the model's on the earlier test view, not on kdlab's
    model = build_model(spec.model, 10)
    load_weights_file(model, study.run_dir(spec) / state_files.BEST_FILE, what="best weights")
    arrays = kdata.load_arrays("Digits", study.data_root)
    expected = representations_of(model, kdata.DeviceData(arrays, "cpu",
                                                          augmentation="earlier"))
    np.testing.assert_allclose(under_earlier["logits"], expected["logits"], rtol=1e-5,
                               atol=1e-5)
    assert not np.allclose(under_earlier["logits"], under_kdlab["logits"], atol=1e-3)
    assert read_provenance(kd_file)["augmentation"] == "earlier"
    assert cli.main(["extract", str(study.path), "--device", "cpu"]) == 0
    assert "0 extracted, 3 up to date" in capsys.readouterr().out


def test_extract_of_kdlab_runs_prints_no_earlier_code_line(tmp_path_factory, capsys):
    study = trained_copy(tmp_path_factory)
    assert cli.main(["extract", str(study.path), "--device", "cpu"]) == 0
    assert "earlier code" not in capsys.readouterr().out
