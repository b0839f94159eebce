"""The CIFAR-100 benchmark study (studies/cifar100-benchmark.toml) expands to the CRD/DKD
grid with RepDistiller's recipe and dry-runs through the queue; [training.method.NAME] gives
one method's runs their own objective weights (RepDistiller's KD row: gamma 0.1) and is
refused where it cannot apply; the GPU-hour estimate prices runs by their MACs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kdlab.cli import main
from kdlab.run.config import validate_config
from kdlab.run.errors import UserError
from kdlab.run.layout import RunSpec
from kdlab.study.study_file import load_study
from builders import write_run, write_study

ROOT = Path(__file__).resolve().parents[2]
STUDY = ROOT / "studies" / "cifar100-benchmark.toml"
BENCHMARK = 'objective = "benchmark"'


def test_the_digits_study_has_every_registered_method_with_its_stages_scaled(tmp_path):
    """studies/digits-methods.toml, the all-methods grid a new user runs on CPU: every
    method kdlab registers (a new method must join it), the benchmark objective with
    RepDistiller's KD row, snapshots every epoch, the init stages and warm-ups one epoch."""
    from kdlab.distill import METHOD_NAMES

    path = tmp_path / "digits-methods.toml"
    shutil.copy(ROOT / "studies" / "digits-methods.toml", path)
    study = load_study(path)
    assert sorted(study.methods) == sorted(METHOD_NAMES)
    runs = study.runs()
    assert len(runs) == len(METHOD_NAMES) + 2
    configs = {spec.method: study.train_config(spec) for spec in runs if not spec.is_pure}
    for config in configs.values():
        validate_config(config)
        assert (config.objective, config.snapshot_epoch_list) == ("benchmark",
                                                                  [1, 2, 3, 4, 5, 6])
    assert (configs["logit"].ce_weight, configs["logit"].method_options["weight"]) == (0.1, 0.9)
    assert configs["crd"].ce_weight == 1.0 and configs["crd"].kd_weight == 0.0
    for method, option in (("ab", "init_epochs"), ("fsp", "init_epochs"),
                           ("factor_transfer", "paraphraser_epochs"),
                           ("dkd", "warmup_epochs"), ("reviewkd", "warmup_epochs")):
        assert configs[method].method_options[option] == 1, method


@pytest.fixture
def benchmark_study(tmp_path):
    path = tmp_path / STUDY.name
    shutil.copy(STUDY, path)
    return load_study(path)


def test_the_benchmark_study_expands_to_the_published_grid(benchmark_study):
    study = benchmark_study
    pairs = {(pair.teacher, pair.student) for pair in study.pairs}
    assert len(pairs) == 13 and ("ResNet32x4", "ShuffleNetV2") in pairs
    runs = study.runs()
    kd = [spec for spec in runs if not spec.is_pure]
    assert len(kd) == 13 * 14 * 3
    assert len(study.teacher_runs()) == 6 * 3
    assert len(runs) == 546 + 18 + 27
    assert all(spec.alpha is None for spec in kd)   # the no-alpha layout

    def config(spec):
        value = study.train_config(spec)
        validate_config(value)
        return value

    crd = config(RunSpec("Cifar100", "ResNet8x4", 0, "crd", "ResNet32x4"))
    assert (crd.epochs, crd.batch_size, crd.lr, crd.lr_schedule, crd.lr_milestones) == (
        240, 64, 0.05, "multistep", [150, 180, 210])
    assert (crd.objective, crd.ce_weight, crd.kd_weight, crd.augmentation) == (
        "benchmark", 1.0, 0.0, "benchmark")
    kd_row = config(RunSpec("Cifar100", "ResNet8x4", 0, "logit", "ResNet32x4"))
    assert (kd_row.ce_weight, kd_row.method_options["weight"]) == (0.1, 0.9)
    # lr 0.01 for MobileNetV2 and the ShuffleNets only, as student or pure run.
    assert config(RunSpec("Cifar100", "MobileNetV2", 1, "dkd", "VGG13")).lr == 0.01
    assert config(RunSpec("Cifar100", "ShuffleNetV2", 0)).lr == 0.01
    assert config(RunSpec("Cifar100", "VGG8", 0, "crd", "ResNet50")).lr == 0.05
    # A teacher is a pure run: the objective's defaults, whatever the methods say.
    teacher = config(RunSpec("Cifar100", "ResNet50", 0))
    assert (teacher.objective, teacher.ce_weight, teacher.lr) == ("kdlab", 1.0, 0.05)


def test_the_benchmark_study_dry_runs_through_the_queue(benchmark_study, capsys):
    assert main(["queue", str(benchmark_study.path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "591 runs: 0 completed" in out and "546 waiting for teacher" in out
    assert "Cifar100-pure-ResNet32x4-s0" in out


def test_methodology_states_the_benchmark_weights(benchmark_study, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["methodology", str(benchmark_study.path)]) == 0
    out = next(tmp_path.rglob("methodology.md")).read_text()
    assert "on the benchmark's objective (no alpha level)" in out
    assert "γ·CE + κ·KD + Σ β·(term)" in out
    assert "(1 − α)·CE" not in out
    weights = out[out.index("γ·CE + κ·KD + Σ β·(term)"):]
    weights = weights[:weights.index("\n\n", weights.index("|"))]   # the weight table
    rows = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:5]]
            for line in weights.splitlines() if line.startswith("| ")}
    assert rows["logit"] == ["0.9", "0.1", "0"] and rows["crd"] == ["0.8", "1", "0"]


def _study(tmp_path, tables: str, training: str = BENCHMARK):
    return write_study(tmp_path / "s.toml", methods=("logit", "crd"), alphas=(),
                       training=f"epochs = 2\n{training}", tables=tables)


def test_per_method_weights_apply_to_that_method_only(tmp_path):
    study = load_study(_study(tmp_path, "[training.method.logit]\nce_weight = 0.1\n"
                                        "kd_weight = 0.5\n"))
    logit = study.train_config(RunSpec("Digits", "ResNet8", 0, "logit", "ResNet20"))
    crd = study.train_config(RunSpec("Digits", "ResNet8", 0, "crd", "ResNet20"))
    pure = study.train_config(RunSpec("Digits", "ResNet8", 0))
    assert (logit.ce_weight, logit.kd_weight) == (0.1, 0.5)
    assert (crd.ce_weight, crd.kd_weight) == (1.0, 0.0)
    assert (pure.ce_weight, pure.kd_weight) == (1.0, 0.0)


@pytest.mark.parametrize("tables, training, expected", [
    ("[training.method.logit]\nce_weight = 0.1\n", "", r"training\.method.*only with "
     r"training\.objective = \"benchmark\""),
    ("[training.method.dkd]\nce_weight = 0.1\n", BENCHMARK,
     r"training\.method\.dkd.*a method of this study \(logit, crd\)"),
    ("[training.method.logit]\nlr = 0.1\n", BENCHMARK,
     r"training\.method\.logit\.lr.*(ce_weight, kd_weight|kd_weight)"),
    ("[training.method.logit]\nce_weight = \"high\"\n", BENCHMARK,
     r"training\.method\.logit\.ce_weight"),
    ("[training.method.logit]\nce_weight = -1.0\n", BENCHMARK,
     r"training\.method\.logit\.ce_weight"),
])
def test_per_method_weights_are_refused_in_one_line(tmp_path, tables, training, expected):
    path = _study(tmp_path, tables, training) if training else write_study(
        tmp_path / "s.toml", methods=("logit", "crd"), alphas=(0.5,), training="epochs = 2",
        tables=tables)
    with pytest.raises(UserError, match=expected) as error:
        load_study(path)
    assert "\n" not in str(error.value)


def test_the_gpu_hour_estimate_scales_with_multiply_accumulates(tmp_path):
    """Two one-run studies: a pure ResNet56 at the anchor's size costs the anchor's epoch time
    times its MAC share; the same study with twice the epochs costs twice as much."""
    def hours(epochs: int) -> float:
        path = write_study(tmp_path / f"e{epochs}.toml", datasets=("Cifar100",), methods=(),
                           alphas=(), teacher="ResNet56", student="ResNet56",
                           training=f"epochs = {epochs}")
        result = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "estimate_gpu_hours.py"), str(path),
             "--anchor-seconds", "36", "--anchor-teacher", "", "--anchor-student", "ResNet56"],
            capture_output=True, text=True, cwd=tmp_path, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        total = [line for line in result.stdout.splitlines() if line.startswith("total")][0]
        return float(total.split("runs")[1].split("GPU-h")[0])

    # 1 run x epochs x 36 s (the anchor's own model and image count) = epochs / 100 hours.
    assert hours(10) == pytest.approx(0.1, abs=0.05)
    assert hours(100) == pytest.approx(1.0, abs=0.05)


def test_a_benchmark_study_compares_and_tabulates_its_distilled_runs(tmp_path):
    """On the benchmark's objective the KD cells have no alpha: compare, the accuracy groups
    and the overview still hold them (they once iterated the empty `alphas`)."""

    from kdlab.ops import compare
    from kdlab.study.summaries import accuracy_groups
    from kdlab.study.progress import study_run_states

    reference = tmp_path / "reference.csv"
    reference.write_text("dataset,teacher,student,method,top1,source,epoch\n"
                         "Digits,ResNet20,ResNet8,crd,91.0,a paper,last\n")
    study = load_study(write_study(tmp_path / "s.toml", methods=("crd",), alphas=(),
                                   seeds=(0, 1, 2), training=f"epochs = 2\n{BENCHMARK}",
                                   tables='[compare]\nreference = "reference.csv"\n'))
    accuracies = {0: 90.0, 1: 92.0, 2: 91.0}
    for seed, accuracy in accuracies.items():
        write_run(study.experiments_dir, RunSpec("Digits", "ResNet20", seed),
                  test_acc=[50.0, 97.0])
        write_run(study.experiments_dir, RunSpec("Digits", "ResNet8", seed),
                  test_acc=[50.0, 85.0])
        spec = RunSpec("Digits", "ResNet8", seed, "crd", "ResNet20")
        assert study.run_dir(spec).parent.name == "ResNet20_to_ResNet8"   # no alpha level
        assert write_run(study.experiments_dir, spec, test_acc=[50.0, accuracy]) == \
            study.run_dir(spec)
    rows = {row.row: row for row in compare.compare(study)}
    assert rows["crd"].alpha is None and rows["crd"].summary.n == 3
    assert rows["crd"].summary.mean == pytest.approx(91.0)
    assert rows["crd"].inside is True and rows["crd"].difference == pytest.approx(0.0)
    groups = {(group.method, group.alpha): group
              for group in accuracy_groups(study, study_run_states(study))}
    assert groups[("crd", None)].n == 3
