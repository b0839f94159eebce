"""`kdlab extract`: shapes and naming, the pooled forward pass, incremental behaviour and
one-line reasons for runs that cannot be extracted. Most tests use finished runs written
in the real on-disk format with randomly initialised weights (fast); one trains a ResNet8
on Digits for an epoch and extracts it (slow)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from kdlab.run import layout, state_files
from kdlab.analysis import extract, metrics
from kdlab.analysis.store import load_representation
from kdlab.cli import main
from kdlab.run.config import TrainConfig
from kdlab.data import load_arrays, normalize
from kdlab.run.layout import RunSpec
from kdlab.models import build_model
from kdlab.study.study_file import load_study
from kdlab.training.run import train_run
import builders

STUDY = """
name = "ext"
datasets = ["Digits"]
teacher = "ResNet20"
student = "ResNet8"
methods = ["logit", "rkd"]
alphas = [0.5]
seeds = [0, 1, 2, 3]
experiments_dir = "{root}/experiments"
analysis_dir = "{root}/analysis"
data_root = "{root}/data"
"""


def _fake_finished_run(experiments: Path, spec: RunSpec, seed: int, **status) -> Path:
    """A completed run in the real on-disk format, with randomly initialised weights."""
    torch.manual_seed(seed)
    model = build_model(spec.model, 10)
    run_dir = layout.run_dir(experiments, spec)
    state_files.atomic_torch_save({"weights": model.state_dict()}, run_dir / state_files.BEST_FILE)
    state_files.write_status(run_dir, {"status": "completed", "epoch": 1, "epochs": 1,
                                    "max_acc": 10.0, **status})
    return run_dir


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("extract")
    (root / "study.toml").write_text(STUDY.format(root=root.as_posix()))
    experiments = root / "experiments"
    _fake_finished_run(experiments, RunSpec("Digits", "ResNet8", 0), 0)
    _fake_finished_run(experiments, RunSpec("Digits", "ResNet20", 0), 1)
    _fake_finished_run(experiments, RunSpec("Digits", "ResNet8", 0, "logit", "ResNet20", 0.5), 2)
    # runs that cannot be extracted, each for its own reason
    unfinished = _fake_finished_run(experiments, RunSpec("Digits", "ResNet8", 1), 3)
    state_files.write_status(unfinished, {"status": "in_progress", "epoch": 3, "epochs": 150})
    failed = _fake_finished_run(experiments, RunSpec("Digits", "ResNet8", 2), 4)
    state_files.write_status(failed, {"status": "failed", "reason": "loss became NaN at epoch 2"})
    corrupt = _fake_finished_run(experiments, RunSpec("Digits", "ResNet20", 1), 5)
    (corrupt / state_files.BEST_FILE).write_bytes(b"\x00" * 100)
    no_weights = _fake_finished_run(experiments, RunSpec("Digits", "ResNet20", 2), 6)
    (no_weights / state_files.BEST_FILE).unlink()
    broken_status = _fake_finished_run(experiments, RunSpec("Digits", "ResNet20", 3), 7)
    (broken_status / state_files.STATUS_FILE).write_text("{not json")
    # runs of another study sharing the tree
    _fake_finished_run(experiments, RunSpec("Digits", "ResNet56", 0), 8)
    _fake_finished_run(experiments, RunSpec("Digits", "ResNet8", 0, "logit", "ResNet20", 0.7), 9)
    study = load_study(root / "study.toml")
    lines: list[str] = []
    report = extract.extract_study(study, device="cpu", log=lines.append)
    return root, study, report, lines


def test_extracts_finished_runs_with_the_documented_names_and_shapes(tree):
    root, study, report, _ = tree
    folder = root / "analysis" / "experiment_ext" / "representations" / "Digits"
    expected = {folder / "pure_s0.npz", folder / "teacher_s0.npz", folder / "logit_a0.5_s0.npz"}
    assert set(report.extracted) == expected
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in expected)
    labels = load_arrays("Digits").test_labels
    for path in expected:
        arrays = load_representation(path)
        n = labels.shape[0]
        assert {k: v.shape for k, v in arrays.items()} == {
            "layer1": (n, 16), "layer2": (n, 32), "layer3": (n, 64), "logits": (n, 10),
            "labels": (n,)}
        with np.load(path) as raw:  # stored dtypes, not converted on reading
            assert all(raw[key].dtype == np.float32 for key in ("layer1", "layer2", "layer3",
                                                                "logits"))
            assert raw["labels"].dtype == np.int64
        np.testing.assert_array_equal(arrays["labels"], labels)


def _check_forward_pass(run_dir: Path, stored: dict, weights: Path | None = None) -> None:
    """The stored rows are the spatial means of an independent forward pass (of the run's
    best.pth, or of ``weights``)."""
    model = build_model("ResNet8", 10)
    model.load_state_dict(torch.load(weights or run_dir / state_files.BEST_FILE,
                                     weights_only=True)["weights"])
    model.eval()
    arrays = load_arrays("Digits")
    images = normalize(torch.as_tensor(arrays.test_images[:7]), arrays.info)
    with torch.no_grad():
        outputs = model(images)
    for name, output in zip(("layer1", "layer2", "layer3"), outputs[:3]):
        np.testing.assert_allclose(stored[name][:7], output.mean(dim=(2, 3)).numpy(),
                                   rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stored["logits"][:7], outputs[3].numpy(), rtol=1e-4, atol=1e-4)


def test_representation_is_the_pooled_forward_pass_of_best_weights(tree):
    _, study, _, _ = tree
    spec = RunSpec("Digits", "ResNet8", 0)
    stored = load_representation(layout.representation_path(study.analysis_dir, "ext", spec,
                                                             "pure"))
    _check_forward_pass(layout.run_dir(study.experiments_dir, spec), stored)


@pytest.mark.slow
def test_extracts_a_run_trained_here(tmp_path):
    (tmp_path / "study.toml").write_text(STUDY.format(root=tmp_path.as_posix()))
    study = load_study(tmp_path / "study.toml")
    config = TrainConfig(dataset="Digits", model="ResNet8", seed=0, epochs=1, device="cpu",
                         experiments_dir=str(study.experiments_dir),
                         data_root=str(study.data_root))
    assert train_run(config, quiet=True) == "completed"
    report = extract.extract_study(study, device="cpu", log=lambda line: None)
    spec = RunSpec("Digits", "ResNet8", 0)
    path = layout.representation_path(study.analysis_dir, "ext", spec, "pure")
    assert report.extracted == [path] and path.name == "pure_s0.npz"
    stored = load_representation(path)
    assert stored["layer3"].shape == (load_arrays("Digits").test_labels.shape[0], 64)
    run_dir = layout.run_dir(study.experiments_dir, spec)
    _check_forward_pass(run_dir, stored)
    # the stored logits reproduce the best test accuracy the training loop recorded
    assert metrics.accuracy_from_logits(stored["logits"], stored["labels"]) == pytest.approx(
        state_files.read_status(run_dir)["max_acc"], abs=1e-6)


def test_unfinished_failed_and_corrupt_runs_are_skipped_with_one_line_reasons(tree):
    _, _, report, lines = tree
    reasons = dict(report.skipped)
    assert reasons["Digits-pure-ResNet8-s1"] == "not finished: in_progress (epoch 3/150)"
    assert reasons["Digits-pure-ResNet8-s2"] == "failed: loss became NaN at epoch 2"
    assert reasons["Digits-pure-ResNet20-s1"].startswith("corrupt: best weights")
    assert reasons["Digits-pure-ResNet20-s2"] == "completed but best.pth is missing"
    assert reasons["Digits-pure-ResNet20-s3"].startswith("corrupt status.json")
    assert len(reasons) == 5
    for name, reason in report.skipped:
        assert "\n" not in reason
        assert any(line == f"skip {name}: {reason}" for line in lines)
    assert report.not_in_study == {"model ResNet56": 1, "alpha 0.7": 1}


def test_second_pass_is_incremental(tree, tmp_path):
    root, study, _, _ = tree
    folder = root / "analysis" / "experiment_ext" / "representations" / "Digits"
    before = {path.name: path.stat().st_mtime_ns for path in folder.iterdir()}
    again = extract.extract_study(study, device="cpu", log=lambda line: None)
    assert again.extracted == [] and len(again.up_to_date) == 3
    assert {path.name: path.stat().st_mtime_ns for path in folder.iterdir()} == before

    # newer weights -> that run only is extracted again; a damaged file is rewritten
    best = layout.run_dir(study.experiments_dir, RunSpec("Digits", "ResNet20", 0)) / "best.pth"
    future = before["teacher_s0.npz"] + 10_000_000_000
    os.utime(best, ns=(future, future))
    damaged = folder / "logit_a0.5_s0.npz"
    damaged.write_bytes(damaged.read_bytes()[:200])
    third = extract.extract_study(study, device="cpu", log=lambda line: None)
    assert set(third.extracted) == {folder / "teacher_s0.npz", damaged}
    assert load_representation(damaged)["layer3"].shape[1] == 64
    # Put the weights' time back in the past: the module's tree is shared with later tests,
    # which would otherwise see the teacher as stale until that future time had passed.
    past = before["teacher_s0.npz"] - 1_000_000_000
    os.utime(best, ns=(past, past))


def test_cli_extract(tree, tmp_path, capsys):
    root, _, _, _ = tree
    assert main(["extract", str(root / "study.toml"), "--device", "cpu"]) == 0
    assert "extract ext: 0 extracted, 3 up to date, 5 skipped" in capsys.readouterr().out
    missing = tmp_path / "study.toml"
    missing.write_text(STUDY.format(root=(tmp_path / "nowhere").as_posix()))
    assert main(["extract", str(missing)]) == 2
    assert "experiments directory" in capsys.readouterr().err


def test_representations_record_their_provenance(tree):
    import hashlib

    import kdlab
    from kdlab.analysis.store import read_provenance

    root, study, _, _ = tree
    spec = RunSpec("Digits", "ResNet8", 0, "logit", "ResNet20", 0.5)
    run_dir = layout.run_dir(study.experiments_dir, spec)
    provenance = read_provenance(layout.representation_path(study.analysis_dir, "ext", spec,
                                                            "kd"))
    assert provenance == {
        "run": spec.name, "run_dir": str(run_dir), "study": "ext",
        "weights_sha256": hashlib.sha256((run_dir / state_files.BEST_FILE).read_bytes()).hexdigest(),
        "kdlab_version": kdlab.__version__}


def test_analysis_folder_that_is_a_file_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "study.toml").write_text(STUDY.format(root=tmp_path.as_posix()))
    _fake_finished_run(tmp_path / "experiments", RunSpec("Digits", "ResNet8", 0), 0)
    (tmp_path / "analysis").write_text("a file where the analysis folder should be")
    assert main(["extract", str(tmp_path / "study.toml"), "--device", "cpu"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error
    assert str(tmp_path / "analysis") in error and "writable" in error
    assert (tmp_path / "analysis").read_text().startswith("a file")


@pytest.mark.slow
def test_snapshots_of_a_queued_study_are_extracted_incrementally(tmp_path):
    """A Digits study keeping snapshots after epochs 1 and 2, trained through the queue
    (local backend): each snapshot becomes a representation with its epoch in the
    provenance, computed as the final weights' is; a second pass does nothing."""
    import json
    import subprocess
    import sys

    from kdlab.analysis.store import read_provenance
    from kdlab.study.progress import study_run_states

    study_path = builders.write_study(
        tmp_path / "study.toml", name="snap", methods=(), alphas=(), student="ResNet8",
        top=f'data_root = "{tmp_path / "data"}"\nanalysis_dir = "{tmp_path / "analysis"}"\n',
        training='epochs = 2\ndevice = "cpu"\nsnapshot_epochs = [1, 2]',
        tables='[scheduler]\nbackend = "local"\nmax_live_jobs = 2\n')
    study = load_study(study_path)

    def all_completed():
        result = subprocess.run([sys.executable, "-m", "kdlab", "queue", str(study_path)],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return all(state.state == "completed" for state in study_run_states(study))
    builders.wait_until(all_completed, "the study to complete", timeout=900, every=2.0)

    report = extract.extract_study(study, device="cpu", log=lambda line: None)
    pure, teacher = RunSpec("Digits", "ResNet8", 0), RunSpec("Digits", "ResNet20", 0)
    expected = {layout.representation_path(study.analysis_dir, "snap", spec, role, epoch=epoch)
                for spec, role in ((pure, "pure"), (teacher, "teacher"))
                for epoch in (None, 1, 2)}
    assert set(report.extracted) == expected and report.skipped == []
    run_dir = layout.run_dir(study.experiments_dir, pure)
    for epoch in (1, 2):
        path = layout.representation_path(study.analysis_dir, "snap", pure, "pure", epoch=epoch)
        assert path.parent.name == "snapshots" and path.name == f"pure_s0_e{epoch:04d}.npz"
        snapshot = layout.snapshot_path(run_dir, epoch)
        provenance = read_provenance(path)
        assert provenance["epoch"] == epoch and provenance["run"] == pure.name
        assert provenance["weights_sha256"] == hashlib.sha256(snapshot.read_bytes()).hexdigest()
        _check_forward_pass(run_dir, load_representation(path), weights=snapshot)
    assert "epoch" not in read_provenance(
        layout.representation_path(study.analysis_dir, "snap", pure, "pure"))
    # best.pth is the snapshot of the epoch with the best test accuracy (the first of equals):
    # the two representations hold the same arrays
    test_acc = json.loads((run_dir / state_files.METRICS_FILE).read_text())["test_acc"]
    best_epoch = test_acc.index(max(test_acc)) + 1
    final = load_representation(layout.representation_path(study.analysis_dir, "snap", pure,
                                                            "pure"))
    at_best = load_representation(layout.representation_path(study.analysis_dir, "snap", pure,
                                                              "pure", epoch=best_epoch))
    assert final.keys() == at_best.keys()
    assert all(np.array_equal(final[key], at_best[key]) for key in final)

    again = extract.extract_study(study, device="cpu", log=lambda line: None)
    assert again.extracted == [] and set(again.up_to_date) == expected
    # a snapshot written anew (as --force-restart's training writes it) is extracted again
    snapshot = layout.snapshot_path(run_dir, 1)
    stored = layout.representation_path(study.analysis_dir, "snap", pure, "pure", epoch=1)
    future = stored.stat().st_mtime_ns + 10_000_000_000
    os.utime(snapshot, ns=(future, future))
    third = extract.extract_study(study, device="cpu", log=lambda line: None)
    assert third.extracted == [stored]
