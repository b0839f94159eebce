import json
import multiprocessing
import os
import signal
import time

import pytest

from kdlab import runstate
from kdlab.layout import (RunSpec, format_alpha, iter_run_dirs, parse_run_dir,
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


def test_pure_spec_rejects_alpha():
    with pytest.raises(ValueError):
        RunSpec("Digits", "ResNet8", 0, alpha=0.5)


def test_status_round_trip_and_merge(tmp_path):
    runstate.write_status(tmp_path, {"status": "queued", "job_id": "12"})
    runstate.update_status(tmp_path, status="in_progress", epoch=3)
    status = runstate.read_status(tmp_path)
    assert status["status"] == "in_progress" and status["job_id"] == "12" and status["epoch"] == 3
    assert runstate.job_id_of({"pbs_job_id": 77}) == "77"


@pytest.mark.parametrize("text,match", [("{", "not valid JSON"), ("[]", "expected a JSON object"),
                                        ('{"status": "weird"}', "expected one of")])
def test_malformed_status_names_the_file(tmp_path, text, match):
    (tmp_path / "status.json").write_text(text)
    with pytest.raises(runstate.StateFileError, match=match) as info:
        runstate.read_status(tmp_path)
    assert str(tmp_path / "status.json") in str(info.value)


def _writer(path, stop_at):
    big = {"payload": "x" * 2_000_000}
    index = 0
    while time.time() < stop_at:
        big["index"] = index
        runstate.atomic_write_json(path, big)
        index += 1


def test_atomic_write_survives_kill_mid_write(tmp_path):
    """Kill a process that rewrites a large state file in a loop, many times: the file on disk
    is always a complete, parseable version, and no temp file is mistaken for it."""
    path = tmp_path / "status.json"
    runstate.atomic_write_json(path, {"payload": "", "index": -1})
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
