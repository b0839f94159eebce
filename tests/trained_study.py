"""A small study trained here for real (Digits, ResNet20 teacher, ResNet8 student, one
logit-distilled run at alpha 0.5, seed 0, one epoch each), trained once per test session
and handed to each test module as its own copy, so modules that move or change files (the
archive) cannot disturb each other.

- :func:`trained_copy`: the trained runs.
- :func:`analysed_copy`: the same after ``kdlab extract`` and ``kdlab analyze`` (report.html,
  metrics.csv, figures).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from kdlab import cli
from kdlab.study.study_file import Study, load_study
from legacy_tree import write_study

STUDY_SETTINGS = dict(name="trained", methods=["logit"], alphas=[0.5], seeds=[0], epochs=1)

_pristine: dict[str, Path] = {}      # stage -> root of the session's original tree


def _study_at(root: Path) -> Study:
    """The study file of a tree under ``root`` (its paths point into ``root``)."""
    return load_study(write_study(root / "study.toml", root=root, **STUDY_SETTINGS))


def _train(root: Path) -> None:
    from kdlab.training.run import train_run

    study = _study_at(root)
    for spec in study.runs():   # teacher first: the KD run needs its best.pth
        assert train_run(study.train_config(spec), quiet=True) == "completed"


def _analyse(root: Path) -> None:
    study = _study_at(root)
    assert cli.main(["extract", str(study.path), "--device", "cpu"]) == 0
    assert cli.main(["analyze", str(study.path), "--jobs", "1"]) == 0


def _stage(tmp_path_factory, stage: str) -> Path:
    if stage not in _pristine:
        root = tmp_path_factory.mktemp(f"pristine-{stage}")
        if stage == "trained":
            _train(root)
        else:
            shutil.copytree(_stage(tmp_path_factory, "trained"), root, dirs_exist_ok=True)
            _analyse(root)
        _pristine[stage] = root
    return _pristine[stage]


def _copy(tmp_path_factory, stage: str) -> Study:
    source = _stage(tmp_path_factory, stage)
    target = tmp_path_factory.mktemp(stage)
    shutil.copytree(source, target, dirs_exist_ok=True)   # keeps modification times
    return _study_at(target)


def trained_copy(tmp_path_factory) -> Study:
    """A fresh copy of the session's trained study."""
    return _copy(tmp_path_factory, "trained")


def analysed_copy(tmp_path_factory) -> Study:
    """A fresh copy of the session's trained study with representations and the analysis."""
    return _copy(tmp_path_factory, "analysed")
