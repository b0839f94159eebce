"""A study of three pairs end to end on Digits, as a new user runs it: ``kdlab queue`` (local
backend, real ``kdlab train`` processes) until every run completes, ``kdlab extract``,
``kdlab analyze``. Two pairs share a teacher (trained and extracted once), one model is the
student of one pair and the teacher of another, and the pairs cross families with different
stage names and counts (ResNet -> WRN, WRN (3 stages) -> MobileNetV2 (4 stages)). Every
pair's representations, metrics rows, figures and report section exist and are its own."""

from __future__ import annotations

import functools
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kdlab.run import catalog, layout
from kdlab.analysis import metrics as analysis_metrics
from kdlab.analysis.store import load_representation
from kdlab.run.layout import RunSpec
from kdlab.study.progress import study_run_states
from kdlab.study.study_file import Pair, load_study
import builders

pytestmark = pytest.mark.slow

DEADLINE_SECONDS = 900  # generous, for a loaded machine; nothing here asserts a duration
wait_until = functools.partial(builders.wait_until, timeout=DEADLINE_SECONDS)
PAIRS = [Pair("ResNet20", "ResNet8"), Pair("ResNet20", "WRN16_1"),
         Pair("WRN16_1", "MobileNetV2")]


def kdlab(*arguments: str, cwd: Path) -> list[str]:
    result = subprocess.run([sys.executable, "-m", "kdlab", *arguments], cwd=cwd,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    pairs = ", ".join(f'["{pair.teacher}", "{pair.student}"]' for pair in PAIRS)
    (root / "study.toml").write_text(textwrap.dedent(f"""\
        name = "pairs"
        datasets = ["Digits"]
        pairs = [{pairs}]
        methods = ["logit"]
        alphas = [0.5]
        seeds = [1]
        experiments_dir = "{root / 'experiments'}"
        data_root = "{root / 'data'}"
        analysis_dir = "{root / 'analysis'}"

        [training]
        epochs = 1
        batch_size = 256
        device = "cpu"

        [scheduler]
        backend = "local"
        max_live_jobs = 2
        """))
    study = load_study(root / "study.toml")

    def all_completed():
        kdlab("queue", "study.toml", cwd=root)
        return all(state.state == "completed" for state in study_run_states(study))
    wait_until(all_completed, "the study to complete", every=2.0)
    extract = kdlab("extract", "study.toml", cwd=root)
    analyze = kdlab("analyze", "study.toml", "--jobs", "1", "--bootstrap", "0", cwd=root)
    return root, study, extract, analyze


def test_each_model_trains_once_and_each_run_is_extracted_once(trained):
    _, study, extract, _ = trained
    # teachers ResNet20 and WRN16_1 (WRN16_1's pure run: it is also a student), pure
    # ResNet8 and MobileNetV2, one KD run per pair
    assert sorted(spec.name for spec in study.runs()) == sorted([
        "Digits-pure-ResNet20-s1", "Digits-pure-WRN16_1-s1", "Digits-pure-ResNet8-s1",
        "Digits-pure-MobileNetV2-s1", "Digits-logit-a0.5-ResNet20_to_ResNet8-s1",
        "Digits-logit-a0.5-ResNet20_to_WRN16_1-s1",
        "Digits-logit-a0.5-WRN16_1_to_MobileNetV2-s1"])
    extracted = [line for line in extract if "extracted" in line and "->" in line]
    assert len(extracted) == len(study.runs()) == 7     # the shared teacher: one line
    assert extract[-1] == "extract pairs: 8 extracted, 0 up to date, 0 skipped"


def test_every_pair_has_its_own_representations(trained):
    _, study, _, _ = trained
    folder = layout.representations_dir(study.analysis_dir, study.name) / "Digits"
    assert sorted(path.name for path in folder.glob("*.npz")) == sorted([
        "teacher_ResNet20_s1.npz", "teacher_WRN16_1_s1.npz", "pure_WRN16_1_s1.npz",
        "pure_ResNet8_s1.npz", "pure_MobileNetV2_s1.npz",
        "logit_a0.5_ResNet20_to_ResNet8_s1.npz", "logit_a0.5_ResNet20_to_WRN16_1_s1.npz",
        "logit_a0.5_WRN16_1_to_MobileNetV2_s1.npz"])
    for path in folder.glob("*.npz"):
        arrays = load_representation(path)
        model = next(name for name in catalog.MODEL_FACTS
                     if path.stem.split("_s1")[0].endswith(f"_{name}")
                     or path.stem.split("_s1")[0].endswith(f"to_{name}"))
        stages = catalog.model_facts(model).stage_names
        assert {"logits", "labels", *stages} <= set(arrays), path
    kd = [load_representation(folder / f"logit_a0.5_{pair.teacher}_to_{pair.student}_s1.npz")
          for pair in PAIRS]
    assert not np.array_equal(kd[0]["logits"], kd[1]["logits"])   # distinct runs, not copies


def test_metrics_rows_are_grouped_by_pair(trained):
    root, study, _, analyze = trained
    assert "problem" not in "\n".join(analyze)
    frame = pd.read_csv(layout.analysis_table_path(study.analysis_dir, study.name,
                                                   "metrics.csv"))
    assert set(frame["pair"]) == {pair.label for pair in PAIRS}
    folder = layout.representations_dir(study.analysis_dir, study.name) / "Digits"
    for pair in PAIRS:
        rows = frame[frame["pair"] == pair.label]
        assert set(rows["method"]) == {"teacher", "pure", "logit"}
        student = catalog.model_facts(pair.student).stage_names
        teacher = catalog.model_facts(pair.teacher).stage_names
        kd_cka = rows[(rows["method"] == "logit") & (rows["metric"] == "cka_linear")]
        # the pair metrics name the student's stages, paired from the last with the teacher's
        assert set(kd_cka["layer"]) == set(student[-min(len(student), len(teacher)):])
        first = load_representation(folder / f"teacher_{pair.teacher}_s1.npz")
        second = load_representation(
            folder / f"logit_a0.5_{pair.teacher}_to_{pair.student}_s1.npz")
        last = kd_cka[kd_cka["layer"] == student[-1]]["value"]
        assert len(last) == 1
        assert float(last.iloc[0]) == pytest.approx(analysis_metrics.linear_cka(
            first[teacher[-1]], second[student[-1]]), rel=1e-5)
        # the teacher's per-model rows are shown with each of its pairs, on its own stages
        teacher_rows = rows[(rows["method"] == "teacher") & (rows["metric"] == "test_acc")]
        assert len(teacher_rows) == 1
    accuracy = pd.read_csv(layout.analysis_table_path(study.analysis_dir, study.name,
                                                      "accuracy.csv"))
    assert list(accuracy["pair"]) == [pair.label for pair in PAIRS for _ in range(3)]
    assert (accuracy["n_seeds"] == 1).all()
    markdown = layout.analysis_table_path(study.analysis_dir, study.name,
                                          "accuracy.md").read_text()
    for pair in PAIRS:
        assert f"## Digits — {pair.label}" in markdown


def test_every_pair_has_its_own_figures_and_report_section(trained):
    _, study, _, _ = trained
    figures = layout.analysis_dir(study.analysis_dir, study.name) / "figures" / "Digits"
    drawn = {}
    for pair in PAIRS:
        folder = figures / f"{pair.teacher}_to_{pair.student}"
        files = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*.png"))
        assert "per_method/logit/cka_same_layer.png" in files
        assert "summary/accuracy_table.png" in files
        drawn[pair] = (folder / "per_method/logit/cka_same_layer.png").read_bytes()
    assert len(set(drawn.values())) == len(PAIRS)      # each pair's figure is its own
    html = layout.report_path(study.analysis_dir, study.name).read_text()
    assert "Pairs (teacher -&gt; student): " + ", ".join(
        pair.label.replace(">", "&gt;") for pair in PAIRS) in html
    for pair in PAIRS:
        heading = f"<h3>Digits — {pair.label.replace('>', '&gt;')}</h3>"
        assert html.count(heading) == 1
        section = html.split(heading, 1)[1].split("<h3>", 1)[0]
        assert f"figures/Digits/{pair.teacher}_to_{pair.student}/per_method/logit/" in section
    progress = kdlab("plot", "study.toml", cwd=trained[0])
    assert any("progress_grid.png" in line for line in progress)


def test_status_groups_by_pair(trained):
    root, _, _, _ = trained
    lines = kdlab("status", "study.toml", cwd=root)
    text = "\n".join(lines)
    for pair in PAIRS:
        assert pair.label in text
