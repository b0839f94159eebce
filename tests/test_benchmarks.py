"""The benchmark scripts still run against today's code.

They are not run as part of the suite (they print timings, and timings are not asserted
anywhere), but a script that no longer imports — bench_pack.py once imported a module the
training redesign had moved — makes the figures a closing note relies on impossible to
reproduce. Each script must at least start and explain itself; bench_pack, the one that
drives the training loop's own step functions, runs one tiny round and prints its ratios.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = sorted(path.name for path in BENCHMARKS.glob("*.py"))


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          cwd=BENCHMARKS.parent, timeout=300)


def test_every_benchmark_is_listed():
    assert {"bench_pack.py", "bench_demo.py", "bench_analysis.py", "bench_kd_step.py"} <= \
        set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_starts_and_explains_itself(script):
    result = _run(str(BENCHMARKS / script), "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage:")


def test_bench_pack_prints_per_student_ratios():
    result = _run(str(BENCHMARKS / "bench_pack.py"), "--quick", "--rounds", "1",
                  "--threads", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    ratios = re.findall(r"pack of +(\d+): [\d.]+ ms per student = ([\d.]+)x a pure step",
                        result.stdout)
    assert [size for size, _ in ratios] == ["1", "6"]
    assert all(float(ratio) > 0 for _, ratio in ratios)
    assert re.search(r"packed / separate = [\d.]+", result.stdout)


def test_bench_models_prints_every_asked_model_with_its_size():
    result = _run(str(BENCHMARKS / "bench_models.py"), "--quick", "--threads", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = re.findall(r"^(ResNet8|WRN16_1) +([\d,]+) +(\S+) +([\d.]+) +([\d.]+) +([\d.]+)$",
                      result.stdout, re.MULTILINE)
    # 100 classes: the exact counts of tests/models/test_models.py's reference table.
    assert [(name, int(count.replace(",", ""))) for name, count, *_ in rows] == [
        ("ResNet8", 83_892), ("WRN16_1", 180_916)]
    for _, _, _, macs, milliseconds, memory in rows:
        assert float(macs) > 0 and float(milliseconds) > 0 and float(memory) > 0


def test_bench_api_prints_rows_seconds_and_megabytes():
    result = _run(str(BENCHMARKS / "bench_api.py"), "--quick")
    assert result.returncode == 0, result.stderr[-2000:]
    figures = re.findall(r"^(full tree|runs= \(10 runs\)|metrics=\['test_acc'\]) +(\d+) +"
                         r"([\d,]+) +([\d.]+) +([\d.]+) +(\d+)$", result.stdout, re.MULTILINE)
    assert [label for label, *_ in figures] == ["full tree", "runs= (10 runs)",
                                                "metrics=['test_acc']"]
    runs, rows = int(figures[0][1]), int(figures[0][2].replace(",", ""))
    # the quick tree: 104 runs x 5 epochs x 8 metrics; 10 runs; one metric of every run
    assert (runs, rows) == (104, 104 * 5 * 8)
    assert int(figures[1][2].replace(",", "")) == 10 * 5 * 8
    assert int(figures[2][2].replace(",", "")) == 104 * 5


def test_bench_kd_step_times_every_method_and_the_angle_terms():
    """It had rotted twice unnoticed (the feature contract, then OFD's attached teacher):
    every registered method takes a timed step, and the RKD angle part runs."""
    from kdlab.distill import METHOD_NAMES

    result = _run(str(BENCHMARKS / "bench_kd_step.py"), "--student", "ResNet8", "--teacher",
                  "ResNet20", "--batch-size", "8", "--rounds", "1", "--angle-repeats", "1",
                  "--threads", "1", "--num-classes", "10", "--train-size", "1000")
    assert result.returncode == 0, result.stderr[-2000:]
    timed = dict(re.findall(r"^(\w+) +[\d.]+ +([\d.]+)x$", result.stdout, re.MULTILINE))
    assert set(timed) == {"pure", *METHOD_NAMES} and timed["pure"] == "1.00"
    assert re.search(r"triplet/pairwise = \d+x", result.stdout)
    # The extras table: CRD's two embeddings (ResNet8 and ResNet20 pool 64 -> 128) and its
    # two banks over the 1,000-sample training set (plus its two normalisers); logit adds none.
    extras = {name: (int(params.replace(",", "")), int(floats.replace(",", "")))
              for name, params, floats in re.findall(r"^(\w+) +([\d,]+) +([\d,]+) +[\d.]+ +"
                                                     r"[\d.]+x$", result.stdout, re.MULTILINE)}
    assert set(extras) == set(METHOD_NAMES)
    assert extras["crd"] == (2 * (64 * 128 + 128), 2 * 1000 * 128 + 2)
    assert extras["logit"] == (0, 0)
    assert re.search(r"CRD parts: drawing 16,384 negatives per sample [\d.]+ ms .* the memory "
                     r"update [\d.]+ ms", result.stdout)


def test_bench_pack_per_method_prints_each_methods_saving():
    result = _run(str(BENCHMARKS / "bench_pack.py"), "--per-method", "--quick", "--rounds", "1",
                  "--threads", "1", "--methods", "logit,crd,ofd")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = re.findall(r"^(\w+) +[\d.]+ +[\d.]+ +-?[\d.]+ +-?[\d.]+x$", result.stdout,
                      re.MULTILINE)
    assert rows == ["logit", "crd", "ofd"]
