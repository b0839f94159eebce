"""Registry of distillation methods: name -> :class:`~kdlab.distill.base.Distiller` class,
and :func:`build`, which gives any training loop a method's loss module."""

from __future__ import annotations

import importlib
from typing import Any

from ..run import catalog
from ..run.errors import UserError
from .base import BatchContext, Distiller, PretrainContext, Preempted

METHODS: dict[str, type[Distiller]] = {}

# A method is its module here, named as the method (imported on first use, so that one broken
# method cannot hide the others), plus its facts in kdlab.run.catalog.METHODS (options, checks,
# the methodology's text): the catalog's names are the registry's.
METHOD_NAMES = tuple(catalog.METHODS)


def register(cls: type[Distiller]) -> type[Distiller]:
    """Class decorator: make a method available under ``cls.name``."""
    METHODS[cls.name] = cls
    return cls


def method_class(name: str) -> type[Distiller]:
    if name not in catalog.METHODS:
        raise UserError(f"unknown distillation method {name!r}: expected one of "
                        f"none, {', '.join(METHOD_NAMES)}")
    if name not in METHODS:
        importlib.import_module(f"{__name__}.{name}")
    return METHODS[name]


def method_defaults(name: str) -> dict[str, Any]:
    """Every option of a method with its default value (declared in :mod:`kdlab.run.catalog`)."""
    for part in catalog.combination_parts(name) or (name,):
        method_class(part)
    return catalog.method_defaults(name)


def resolve_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Defaults overridden by ``options``, typed and checked by :mod:`kdlab.run.catalog`; a
    combination's (``"crd+logit"``) keyed ``"method.option"``."""
    for part in catalog.combination_parts(name) or (name,):
        method_class(part)
    return catalog.resolve_options(name, options)


def build_distiller(name: str, student_shapes, teacher_shapes, options: dict[str, Any], *,
                    student_model: str | None = None,
                    teacher_model: str | None = None) -> Distiller:
    """The method ``name`` for a pair with these :class:`~kdlab.models.features.FeatureShapes`
    and complete ``options``. Given the models' names, options that name stages by a model's
    own stage names (``catalog.model_facts(model).stage_names``) reach the method as
    positions."""
    parts = catalog.combination_parts(name)
    if parts is not None:
        from .combination import Combination

        options = resolve_options(name, options)
        built = {part: build_distiller(part, student_shapes, teacher_shapes,
                                       catalog.part_options(options, part),
                                       student_model=student_model, teacher_model=teacher_model)
                 for part in parts}
        return Combination(student_shapes, teacher_shapes, options, built)
    cls = method_class(name)
    options = resolve_options(name, options)
    for key in catalog.stage_options(name):
        model = teacher_model if key.startswith(("hint", "teacher")) else student_model
        options[key] = _named_stages_as_positions(options[key], model)
    return cls(student_shapes, teacher_shapes, options)


def _named_stages_as_positions(value: str, model: str | None) -> str:
    if model is None or model not in catalog.MODEL_FACTS:
        return value
    names = catalog.MODEL_FACTS[model].stage_names
    parts = [part.strip() for part in str(value).split(",")]
    return ",".join(str(names.index(part)) if part in names else part for part in parts)


def build(name: str, student="ResNet8x4", teacher="ResNet32x4", *, num_classes: int = 100,
          image_size: int = 32, train_labels=None, **options) -> Distiller:
    """A method's loss module for use in any training loop.

    ``student``/``teacher``: model names (shapes from ``models.describe_features`` for
    ``num_classes`` classes and ``image_size``-pixel square images), built models (shapes from
    a dry forward of an ``image_size`` input) or :class:`FeatureShapes`; ``options``: the
    method's options (defaults from :mod:`kdlab.run.catalog`); ``train_labels`` [N] int64: the
    training set's labels, for methods with state over it (CRD). The module's
    ``forward(student_features, teacher_features, batch)`` returns the named, weighted loss
    terms; put its ``parameters()`` into the optimizer beside the student's. A method that
    reads the teacher's weights (OFD's margins) needs the built teacher, with its weights.
    """
    from ..models import FeatureShapes

    student_shapes = _shapes_of(student, num_classes, image_size)
    teacher_shapes = _shapes_of(teacher, num_classes, image_size)
    distiller = build_distiller(name, student_shapes, teacher_shapes, options,
                                student_model=student if isinstance(student, str) else None,
                                teacher_model=teacher if isinstance(teacher, str) else None)
    if train_labels is not None:
        import torch

        distiller.attach_training_set(torch.as_tensor(train_labels, dtype=torch.int64))
    if not isinstance(teacher, (str, FeatureShapes)):  # a built teacher: its weights too
        distiller.attach_teacher(teacher)
    return distiller


def _shapes_of(model, num_classes: int, image_size: int):
    import torch

    from ..models import FeatureShapes, describe_features

    if isinstance(model, FeatureShapes):
        return model
    if isinstance(model, str):
        catalog.model_facts(model)  # one line naming the known models for an unknown name
        return describe_features(model, num_classes, image_size)
    if isinstance(model, torch.nn.Module):
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        was_training = model.training
        model.eval()  # a dry forward must not move BatchNorm's running statistics
        try:
            with torch.no_grad():
                features = model(torch.zeros(2, 3, image_size, image_size, device=device))
        finally:
            model.train(was_training)
        return FeatureShapes(tuple(tuple(stage.shape[1:]) for stage in features.stages),
                             int(features.pooled.shape[1]), int(features.logits.shape[1]))
    raise UserError(f"kdlab.distill.build: got {type(model).__name__} for a model: expected a "
                    "model name, a built model or FeatureShapes")


__all__ = ["Distiller", "PretrainContext", "Preempted", "BatchContext", "METHODS",
           "METHOD_NAMES", "register", "method_class", "method_defaults", "resolve_options",
           "build_distiller", "build"]
