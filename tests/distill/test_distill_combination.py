"""Combinations of methods (``crd+logit``): options per method, each method's terms under
its own name and equal to the method alone, and a run trained into its own directory."""

import pytest
import torch

from kdlab.run import catalog, state_files
from kdlab.run.config import TrainConfig, complete_options, validate_config
from kdlab.distill import BatchContext, build_distiller, resolve_options
from kdlab.run.errors import UserError
from kdlab.run.layout import run_dir
from kdlab.models import Features, describe_features
from kdlab.training.run import train_run

SHAPES = describe_features("ResNet8", 10, 8)
LABELS = torch.arange(30) % 10


def features(seed):
    generator = torch.Generator().manual_seed(seed)
    stages = [torch.randn(4, *shape, generator=generator).relu() for shape in SHAPES.stages]
    return Features(stages, stages, torch.randn(4, 64, generator=generator),
                    torch.randn(4, 10, generator=generator))


def test_options_are_per_method_and_checked_in_one_line():
    options = resolve_options("crd+logit", {"logit.temperature": "2", "crd.negatives": "16"})
    assert options["logit.temperature"] == 2.0 and options["crd.negatives"] == 16
    assert options["crd.weight"] == 0.8 and options["logit.weight"] == 1.0
    for bad, message in [({"kl.weight": 1}, "kl.weight"), ({"weight": 1}, "weight"),
                         ({"logit.temperature": "0"}, "logit.temperature=0.0")]:
        with pytest.raises(UserError) as error:
            resolve_options("crd+logit", bad)
        assert message in str(error.value) and "\n" not in str(error.value)
    assert "crd+logit" in catalog.METHOD_NAMES and "logit+logit" not in catalog.METHOD_NAMES
    assert "logit+none" not in catalog.METHOD_NAMES


def test_each_terms_equal_the_method_alone_under_its_name():
    torch.manual_seed(5)
    combined = build_distiller("crd+logit", SHAPES, SHAPES,
                               {"crd.negatives": 16, "logit.weight": 0.5})
    combined.attach_training_set(LABELS)
    torch.manual_seed(5)  # the same draws for CRD's embeddings and generator as alone
    crd = build_distiller("crd", SHAPES, SHAPES, {"negatives": 16})
    crd.attach_training_set(LABELS)
    logit = build_distiller("logit", SHAPES, SHAPES, {"weight": 0.5})
    student, teacher = features(1), features(2)
    batch = BatchContext(LABELS[:4], torch.arange(4))
    terms = combined(student, teacher, batch)
    assert set(terms) == {"crd", "logit_kl"}
    assert torch.equal(terms["crd"], crd(student, teacher, batch)["crd"])
    assert torch.equal(terms["logit_kl"], logit(student, teacher, batch)["kl"])


def test_a_combination_trains_into_its_own_run_directory(tmp_path):
    base = dict(dataset="Digits", seed=0, epochs=1, batch_size=256, device="cpu",
                experiments_dir=str(tmp_path / "experiments"), data_root=str(tmp_path / "data"))
    assert train_run(TrainConfig(model="ResNet8", **base), quiet=True) == "completed"
    config = TrainConfig(model="ResNet8", distillation="crd+logit", teacher_model="ResNet8",
                         alpha=0.5, method_options={"crd.negatives": 32}, **base)
    validate_config(config)
    assert complete_options(config).method_options["logit.temperature"] == config.temperature
    assert train_run(config, quiet=True) == "completed"
    directory = run_dir(config.experiments_dir, config.run_spec())
    assert "crd+logit" in directory.parts
    metrics = state_files.read_metrics(directory)
    assert metrics["train_crd"][0] > 0 and metrics["train_logit_kl"][0] > 0
    assert metrics["train_distill"][0] == pytest.approx(
        metrics["train_crd"][0] + metrics["train_logit_kl"][0], rel=1e-6)
