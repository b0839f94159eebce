"""Experiment trees for the operations tests, in the real on-disk formats.

- :func:`copy_legacy_tree`: a copy of ``tests/fixtures/legacy/`` (a trimmed tree in the
  earlier research code's format, with its ``study.toml``; see its README for what it holds).
- :func:`write_run`: one run directory as kdlab's training loop writes it (status.json and
  metrics.json with the keys train.py records), with the numbers a test chooses.
- :func:`write_study`: a study file with absolute paths under a temporary directory.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from conftest import write_study as shared_write_study
from kdlab.run import state_files
from kdlab.run.config import TrainConfig
from kdlab.run.layout import run_dir

FIXTURE = Path(__file__).parent / "fixtures" / "legacy"


def copy_legacy_tree(destination: Path) -> Path:
    """Copy the legacy fixture (study.toml + experiments/) to ``destination/legacy``."""
    target = Path(destination) / "legacy"
    shutil.copytree(FIXTURE, target)
    return target


def write_run(experiments: Path, spec, *, status: str = "completed", epochs: int = 3,
              epoch: int | None = None, test_acc: list[float] | None = None,
              epoch_seconds: list[float] | None = None, completed_at: float | None = None,
              reason: str | None = None, job_id: str | None = None,
              scheduler: str | None = None) -> Path:
    """Write status.json and metrics.json of ``spec`` under ``experiments``; returns the run
    directory. ``test_acc`` defaults to a rising curve; ``max_acc`` is its maximum."""
    directory = run_dir(experiments, spec)
    done = epochs if epoch is None else epoch
    if test_acc is None:
        test_acc = [50.0 + 10.0 * i for i in range(done)]
    if epoch_seconds is None:
        epoch_seconds = [2.0] * done
    config = TrainConfig(dataset=spec.dataset, model=spec.model, seed=spec.seed, epochs=epochs,
                         distillation=spec.method, teacher_model=spec.teacher,
                         alpha=spec.alpha, experiments_dir=str(experiments)).to_dict()
    metrics = {"train_loss": [2.0 / (i + 1) for i in range(done)],
               "train_acc": [a + 2.0 for a in test_acc],
               "test_loss": [2.2 / (i + 1) for i in range(done)],
               "test_acc": list(test_acc), "epoch_seconds": list(epoch_seconds),
               "config": config}
    now = time.time()
    body = {"status": status, "epoch": done, "epochs": epochs,
            "max_acc": max(test_acc) if test_acc else 0.0, "config": config,
            "started_at": now - sum(epoch_seconds), "run": spec.name}
    if status == "completed":
        body["completed_at"] = now if completed_at is None else completed_at
        body["duration_seconds"] = sum(epoch_seconds)
    if reason is not None:
        body["reason"] = reason
    if job_id is not None:
        body["job_id"] = job_id
        body["scheduler"] = scheduler or "local"
    body["updated_at"] = body.get("completed_at", now)
    state_files.atomic_write_json(directory / state_files.METRICS_FILE, metrics)
    state_files.atomic_write_json(directory / state_files.STATUS_FILE, body)
    return directory


def write_study(path: Path, *, name: str = "tiny", datasets=("Digits",), teacher="ResNet20",
                student="ResNet8", methods=("logit",), alphas=(0.5,), seeds=(0,), epochs=1,
                root: Path | None = None, extra: str = "") -> Path:
    """A study file whose experiments/analysis/data paths are absolute, under ``root``
    (default: the study file's directory), with the local backend (two live jobs)."""
    root = Path(root or Path(path).parent)
    return shared_write_study(
        path, name=name, datasets=datasets, teacher=teacher, student=student, methods=methods,
        alphas=alphas, seeds=seeds, experiments_dir=root / "experiments",
        top=f'analysis_dir = "{root / "analysis"}"\ndata_root = "{root / "data"}"\n',
        training=f'epochs = {epochs}\ndevice = "cpu"',
        tables=f'[scheduler]\nbackend = "local"\nmax_live_jobs = 2\n{extra}\n')
