"""The analysis on each model's own stages: a test-only family whose teacher has four stages
and student two, with names no ResNet has. Extraction saves every stage under its name;
same-stage pair metrics pair stages by position from the last; the cross-layer CKA covers
every pair of stages; files without stage names read as the ResNets' layer1..3."""

from __future__ import annotations

import numpy as np
import pytest

from kdlab.run import catalog
from kdlab.analysis import compute, registry
from kdlab.analysis.store import load_representation, save_representation, stage_names_of

TEACHER_STAGES = ("stem_out", "block_a", "block_b", "head")
STUDENT_STAGES = ("early", "late")


@pytest.fixture
def tiny_family(monkeypatch):
    """Two test-only models in the catalog (restored after the test)."""
    facts = dict(catalog.MODEL_FACTS)
    facts["TinyFour"] = catalog.ModelFacts("TinyFour", "tiny", TEACHER_STAGES, (3, 4, 5, 6),
                                           (1, 2, 2, 4), 6)
    facts["TinyTwo"] = catalog.ModelFacts("TinyTwo", "tiny", STUDENT_STAGES, (4, 5), (2, 4), 5)
    monkeypatch.setattr(catalog, "MODEL_FACTS", facts)
    return facts


def _arrays(stages, widths, seed, n=96):
    rng = np.random.default_rng(seed)
    arrays = {"labels": (np.arange(n) % 4).astype(np.int64),
              "logits": rng.normal(size=(n, 4)).astype(np.float32),
              "stage_names": np.array(stages)}
    for name, width in zip(stages, widths):
        arrays[name] = rng.normal(size=(n, width)).astype(np.float32)
    return arrays


def linear_cka(x, y):
    """Kornblith et al. 2019, eq. for linear CKA, written out: centred features."""
    x = x - x.mean(0)
    y = y - y.mean(0)
    cross = np.linalg.norm(y.T @ x, "fro") ** 2
    return cross / (np.linalg.norm(x.T @ x, "fro") * np.linalg.norm(y.T @ y, "fro"))


def test_representations_of_names_every_stage_from_the_facts(tiny_family):
    torch = pytest.importorskip("torch")
    from kdlab.analysis.extract import representations_of
    from kdlab.models.features import Features

    class TinyTwo(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.first = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)
            self.second = torch.nn.Conv2d(4, 5, 3, stride=2, padding=1)
            self.classifier = torch.nn.Linear(5, 4)

        def forward(self, images):
            early = torch.relu(self.first(images))
            late = torch.relu(self.second(early))
            pooled = late.mean(dim=(2, 3))
            return Features([early, late], [early, late], pooled, self.classifier(pooled))

    class Data:
        def test_batches(self, batch_size):
            generator = torch.Generator().manual_seed(0)
            for start in range(0, 10, batch_size):
                count = min(batch_size, 10 - start)
                yield (torch.randn(count, 3, 8, 8, generator=generator),
                       torch.arange(start, start + count) % 4)

    model = TinyTwo()
    arrays = representations_of(model, Data(), batch_size=4,
                                stage_names=catalog.model_facts("TinyTwo").stage_names)
    assert stage_names_of(arrays) == STUDENT_STAGES
    images = torch.cat([images for images, _ in Data().test_batches(4)])
    with torch.no_grad():
        expected = model(images)
    np.testing.assert_allclose(arrays["early"], expected.stages[0].mean(dim=(2, 3)).numpy(),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(arrays["late"], expected.stages[1].mean(dim=(2, 3)).numpy(),
                               rtol=1e-5, atol=1e-6)
    assert arrays["early"].shape == (10, 4) and arrays["late"].shape == (10, 5)
    with pytest.raises(ValueError, match="2 stages, its facts name 3"):
        representations_of(model, Data(), stage_names=("a", "b", "c"))


def test_pairs_of_stages_by_position_from_the_last_and_every_cross_pair(tmp_path, tiny_family):
    teacher_path, student_path = tmp_path / "teacher.npz", tmp_path / "student.npz"
    save_representation(teacher_path, _arrays(TEACHER_STAGES, (3, 4, 5, 6), seed=1))
    save_representation(student_path, _arrays(STUDENT_STAGES, (4, 5), seed=2))
    teacher, student = load_representation(teacher_path), load_representation(student_path)
    assert stage_names_of(teacher) == TEACHER_STAGES
    settings = dict(registry.SETTINGS, bootstrap_samples=0)
    for path in (teacher_path, student_path):
        outcome = compute.model_task(str(path), str(tmp_path / f"m_{path.stem}.npz"), settings)
        assert outcome["error"] is None
        layers = {layer for layer, metric, _ in outcome["rows"] if metric == "effective_dim_90"}
        assert layers == set(stage_names_of(load_representation(path)))
    [pair] = compute.teacher_task(str(teacher_path), str(tmp_path / "m_teacher.npz"),
                                  [(str(student_path), str(tmp_path / "m_student.npz"),
                                    str(tmp_path / "pair.json"))], settings)
    assert pair["error"] is None
    rows = {(layer, metric): value for layer, metric, value in pair["rows"]}
    # Same stage: the student's last with the teacher's last, its first with the teacher's
    # second-to-last; the teacher's first two stages have no counterpart.
    assert compute.stage_pairs(TEACHER_STAGES, STUDENT_STAGES) == [("block_b", "early"),
                                                                   ("head", "late")]
    assert rows[("late", "cka_linear")] == pytest.approx(
        linear_cka(teacher["head"].astype(float), student["late"].astype(float)), rel=1e-6)
    assert rows[("early", "cka_linear")] == pytest.approx(
        linear_cka(teacher["block_b"].astype(float), student["early"].astype(float)), rel=1e-6)
    assert {layer for layer, metric in rows if metric == "cka_linear"} == {"early", "late"}
    # Cross-layer: every teacher stage against every student stage.
    for teacher_stage in TEACHER_STAGES:
        for student_stage in STUDENT_STAGES:
            assert rows[(student_stage, f"cka_linear_vs_teacher_{teacher_stage}")] == \
                pytest.approx(linear_cka(teacher[teacher_stage].astype(float),
                                         student[student_stage].astype(float)), rel=1e-6)


def test_a_file_without_stage_names_reads_as_the_resnet_stages(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"labels": np.arange(20) % 2, "logits": rng.normal(size=(20, 2)),
              **{name: rng.normal(size=(20, 3)) for name in catalog.LAYER_NAMES}}
    path = tmp_path / "old.npz"
    np.savez(path, **arrays)   # as files written before stages were named
    loaded = load_representation(path)
    assert stage_names_of(loaded) == catalog.LAYER_NAMES
    for name in catalog.LAYER_NAMES:
        np.testing.assert_allclose(loaded[name], arrays[name].astype(np.float32))


def test_noise_floor_bands_pair_the_teachers_stages_by_position_from_the_last():
    """A pair across families: the teacher-vs-teacher floor lives on the teacher's stage
    names, the same-layer CKA panel is drawn on the student's. The band of each student
    stage is the teacher floor at the same position from the last (none where the teacher
    has no stage there); the pure-vs-pure band is the student's own stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from kdlab.analysis.figures.common import Grid, Values, floor_bands

    grid = Grid("s", "Digits", ("logit",), (0.5,), (0, 1), "TinyTwo", "TinyFour",
                teacher_stages=STUDENT_STAGES, student_stages=TEACHER_STAGES)
    rows = [("floor_teacher_vs_teacher", stage, value)
            for stage, value in zip(STUDENT_STAGES, (0.25, 0.5))]
    rows += [("floor_pure_vs_pure", stage, value)
             for stage, value in zip(TEACHER_STAGES, (0.1, 0.2, 0.3, 0.4))]
    frame = pd.DataFrame([{"dataset": "Digits", "pair": "TinyTwo -> TinyFour",
                           "method": method, "alpha": float("nan"), "seed": 0,
                           "layer": layer, "metric": "cka_linear", "value": value}
                          for method, layer, value in rows])
    values = Values(frame)
    expected = {"stem_out": (None, 0.1), "block_a": (None, 0.2), "block_b": (0.25, 0.3),
                "head": (0.5, 0.4)}
    for stage, (teacher_floor, pure_floor) in expected.items():
        figure, ax = plt.subplots()
        assert floor_bands(ax, grid, values, stage, "cka_linear")
        drawn = {line.get_label(): line.get_ydata()[0] for line in ax.get_lines()}
        plt.close(figure)
        assert drawn["floor: pure vs pure (other seed) (n=1)"] == pure_floor
        assert drawn.get("floor: teacher vs teacher (other seed) (n=1)") == teacher_floor
