import json
import multiprocessing
import os
import signal
import time

import pytest

from kdlab.run import state_files
from kdlab.run.layout import (RunSpec, format_alpha, iter_run_dirs, parse_run_dir,
                          representation_path, run_dir)


def test_run_dir_scheme_and_inverse(tmp_path):
    pure = RunSpec("Cifar10", "ResNet112", 2)
    kd = RunSpec("Cifar10", "ResNet56", 1, method="rkd", teacher="ResNet112", alpha=0.25)
    assert run_dir(tmp_path, pure) == tmp_path / "Cifar10/pure/ResNet112/2"
    assert run_dir(tmp_path, kd) == tmp_path / "Cifar10/rkd/alpha_0.25/ResNet112_to_ResNet56/1"
    for spec in (pure, kd):
        assert parse_run_dir(tmp_path, run_dir(tmp_path, spec)) == spec
    assert parse_run_dir(tmp_path, tmp_path / "Cifar10/pure/ResNet56") is None
    assert kd.teacher_run() == RunSpec("Cifar10", "ResNet112", 1)


def test_iter_run_dirs_walks_the_tree(tmp_path):
    specs = [RunSpec("SVHN", "ResNet8", 0), RunSpec("SVHN", "ResNet8", 0, "nst", "ResNet20", 0.5)]
    for spec in specs:
        run_dir(tmp_path, spec).mkdir(parents=True)
    (tmp_path / "SVHN/notes").mkdir()
    assert sorted(spec for spec, _ in iter_run_dirs(tmp_path)) == sorted(specs)


def test_alpha_text_and_representation_names(tmp_path):
    assert format_alpha(0.5) == "0.5" and format_alpha(1) == "1.0"
    kd = RunSpec("Digits", "ResNet8", 3, "logit", "ResNet20", 0.75)
    assert representation_path(tmp_path, "demo", kd, "kd").name == "logit_a0.75_s3.npz"
    assert representation_path(tmp_path, "demo", RunSpec("Digits", "ResNet20", 3),
                               "teacher").name == "teacher_s3.npz"
    # a study of several pairs: the model (or pair) names the file, so a second pair's
    # teacher, pure student or KD run of the same method does not overwrite the first's
    names = {representation_path(tmp_path, "demo", spec, role, named_by_model=True).name
             for spec, role in ((kd, "kd"), (RunSpec("Digits", "ResNet8", 3, "logit",
                                                     "WRN16_2", 0.75), "kd"),
                                (RunSpec("Digits", "ResNet20", 3), "teacher"),
                                (RunSpec("Digits", "WRN16_2", 3), "teacher"),
                                (RunSpec("Digits", "ResNet8", 3), "pure"))}
    assert names == {"logit_a0.75_ResNet20_to_ResNet8_s3.npz",
                     "logit_a0.75_WRN16_2_to_ResNet8_s3.npz", "teacher_ResNet20_s3.npz",
                     "teacher_WRN16_2_s3.npz", "pure_ResNet8_s3.npz"}


def test_pure_spec_rejects_alpha():
    with pytest.raises(ValueError):
        RunSpec("Digits", "ResNet8", 0, alpha=0.5)


def test_status_round_trip_and_merge(tmp_path):
    state_files.write_status(tmp_path, {"status": "queued", "job_id": "12"})
    state_files.update_status(tmp_path, status="in_progress", epoch=3)
    status = state_files.read_status(tmp_path)
    assert status["status"] == "in_progress" and status["job_id"] == "12" and status["epoch"] == 3
    assert state_files.job_id_of({"pbs_job_id": 77}) == "77"


@pytest.mark.parametrize("text,match", [
    ("{", "not valid JSON"), ("[]", "expected a JSON object"),
    ('{"status": "weird"}', "expected one of"), ('{"status": "queued"}'.encode() + b"\xff",
                                                  "not UTF-8"),
    (b'{"status": "completed", "max_acc": 9\xe9}', "not UTF-8"),
    ("[" * 100000, "not valid JSON"),
    ('{"status": "queued", "job_id": "1", "missed_starts": "x"}', "'missed_starts'"),
    ('{"status": "queued", "job_id": "1", "submissions": "two"}', "'submissions'"),
    ('{"status": "queued", "job_id": "1", "job_history": 5}', "'job_history'"),
    ('{"status": "queued", "job_id": "1", "job_history": [[1]]}', "'job_history'"),
    ('{"status": "completed", "max_acc": "high"}', "'max_acc'"),
    ('{"status": "completed", "epoch": true}', "'epoch'"),
    ('{"status": "completed", "config": []}', "'config'"),
    ('{"pbs_job_id": ["x"]}', "'pbs_job_id'"),
    ('{"epoch": 3}', "expected one of"),
])
def test_malformed_status_names_the_file(tmp_path, text, match):
    path = tmp_path / "status.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(state_files.StateFileError, match=match) as info:
        state_files.read_status(tmp_path)
    assert str(tmp_path / "status.json") in str(info.value)


def _writer(path, stop_at):
    big = {"payload": "x" * 2_000_000}
    index = 0
    while time.time() < stop_at:
        big["index"] = index
        state_files.atomic_write_json(path, big)
        index += 1


def test_atomic_write_survives_kill_mid_write(tmp_path):
    """Kill a process that rewrites a large state file in a loop, many times: the file on disk
    is always a complete, parseable version, and no temp file is mistaken for it."""
    path = tmp_path / "status.json"
    state_files.atomic_write_json(path, {"payload": "", "index": -1})
    context = multiprocessing.get_context("fork")
    for delay in (0.05, 0.11, 0.17, 0.23):
        process = context.Process(target=_writer, args=(path, time.time() + 5))
        process.start()
        time.sleep(delay)
        os.kill(process.pid, signal.SIGKILL)
        process.join()
        data = json.loads(path.read_text())
        assert "index" in data
        assert data["payload"] in ("", "x" * 2_000_000)


def test_aliases_and_negative_seeds_are_no_run_directories(tmp_path):
    kd = RunSpec("Cifar10", "ResNet56", 0, "logit", "ResNet112", 0.5)
    for alias in ("Cifar10/logit/alpha_0.50/ResNet112_to_ResNet56/0",
                  "Cifar10/logit/alpha_0.5/ResNet112_to_ResNet56/00",
                  "Cifar10/logit/alpha_.5/ResNet112_to_ResNet56/0",
                  "Cifar10/pure/ResNet56/007", "Cifar10/pure/ResNet56/-1"):
        (tmp_path / alias).mkdir(parents=True)
        assert parse_run_dir(tmp_path, tmp_path / alias) is None, alias
    run_dir(tmp_path, kd).mkdir(parents=True)
    assert [spec for spec, _ in iter_run_dirs(tmp_path)] == [kd]


def test_no_alpha_layout_round_trip(tmp_path):
    from kdlab.run.layout import NO_ALPHA_LAYOUT

    kd = RunSpec("SVHN", "ResNet56", 2, "nst", "ResNet112", 0.5)
    path = run_dir(tmp_path, kd, NO_ALPHA_LAYOUT)
    assert path == tmp_path / "SVHN/nst/ResNet112_to_ResNet56/2"
    assert parse_run_dir(tmp_path, path, NO_ALPHA_LAYOUT, no_alpha_value=0.5) == kd
    assert parse_run_dir(tmp_path, path) is None
    path.mkdir(parents=True)
    pure = RunSpec("SVHN", "ResNet56", 2)
    run_dir(tmp_path, pure, NO_ALPHA_LAYOUT).mkdir(parents=True)
    found = [spec for spec, _ in iter_run_dirs(tmp_path, NO_ALPHA_LAYOUT, no_alpha_value=0.5)]
    assert found == [pure, kd]


def test_job_id_only_status_reads_as_queued_and_is_not_rewritten(tmp_path):
    for key in ("pbs_job_id", "job_id"):
        path = tmp_path / "status.json"
        path.write_text(json.dumps({key: "7000521.sched01"}))
        before = path.read_bytes()
        status = state_files.read_status(tmp_path)
        assert status["status"] == "queued" and state_files.job_id_of(status) == "7000521.sched01"
        assert path.read_bytes() == before


def test_written_status_carries_made_by_and_earlier_code_is_told_apart(tmp_path):
    from kdlab import __version__

    written = state_files.write_status(tmp_path, {"status": "queued", "job_id": "1"})
    assert written["made_by"] == f"kdlab {__version__}"
    assert state_files.read_status(tmp_path)["made_by"] == f"kdlab {__version__}"
    assert state_files.update_status(tmp_path, epoch=1)["made_by"] == f"kdlab {__version__}"
    assert not state_files.is_earlier_code(state_files.read_status(tmp_path))
    earlier = {"status": "completed", "epoch": 150, "max_acc": 90.0, "pbs_job_id": "1",
               "config": {"model": "ResNet56", "dataset": "Cifar10", "seed": 0,
                          "distillation": "none", "teacher_model": None,
                          "teacher_weights": None, "alpha": None, "temperature": 4.0,
                          "force_restart": False}}
    assert state_files.is_earlier_code(earlier)
    assert state_files.is_earlier_code({"pbs_job_id": "1"})
    assert not state_files.is_earlier_code({**earlier, "run": "Cifar10-pure-ResNet56-s0"})
    # kdlab's own runs from before the mark: their config is a kdlab run config.
    assert not state_files.is_earlier_code({**earlier, "config": {"method_options": {}}})


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_honour_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        state_files.atomic_write_json(tmp_path / "status.json", {"status": "queued"})
        state_files.atomic_write_bytes(tmp_path / "best.pth", b"weights")
        assert state_files.current_umask() == umask
    finally:
        os.umask(previous)
    for name in ("status.json", "best.pth"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode
