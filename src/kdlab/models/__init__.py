"""The model registry: name -> builder, and the helpers every family shares (strict weight
loading, feature shapes). Each family lives in its own module; every forward returns
:class:`~kdlab.models.features.Features`.

A family module declares ``BUILDERS`` (kdlab name -> ``build(name, num_classes)``),
``REPDISTILLER_NAMES`` (kdlab name -> the benchmark's name) and ``from_repdistiller(key)``
(a RepDistiller state-dict key -> kdlab's); its models answer ``modules_after(stage_index)``
and ``preact_batchnorms()`` (per stage, the BN before its last ReLU, or a UserError saying why
the family has none).
Its facts (stage names, channels, strides) are in :data:`kdlab.run.catalog.MODEL_FACTS`, which
must stay importable without torch; tests/models/test_models.py checks every model against them.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..run.errors import UserError
from . import mobilenetv2, resnet, resnet50, shufflenetv1, shufflenetv2, vgg, wrn
from .features import Features, FeatureShapes
from .resnet import BLOCKS_PER_STAGE, LAYER_NAMES, STAGE_CHANNELS, CifarResNet

FAMILIES = (resnet, wrn, vgg, mobilenetv2, shufflenetv1, shufflenetv2, resnet50)
BUILDERS: dict[str, Callable[[str, int], nn.Module]] = {
    name: builder for family in FAMILIES for name, builder in family.BUILDERS.items()}
MODEL_NAMES = tuple(BUILDERS)
FAMILY_OF = {name: family for family in FAMILIES for name in family.BUILDERS}


def modules_after(model: nn.Module, stage_index: int) -> list[nn.Module]:
    """The sub-modules of ``model`` that only compute outputs after stage ``stage_index`` of
    its ``Features.stages`` (0-based; ``len(stages)``, the logits, -> none). Each family
    answers it: FitNets' hint stage keeps these in eval mode."""
    return model.modules_after(stage_index)


def build_model(name: str, num_classes: int) -> nn.Module:
    """The named model with a ``num_classes``-way classifier (UserError listing the known
    names for an unknown one)."""
    if name not in BUILDERS:
        raise UserError(f"unknown model {name!r}: expected one of {', '.join(MODEL_NAMES)}")
    return BUILDERS[name](name, num_classes)


def repdistiller_name(name: str) -> str | None:
    """RepDistiller's name of kdlab's model ``name`` (``WRN40_2`` -> ``wrn_40_2``), or None."""
    return FAMILY_OF[name].REPDISTILLER_NAMES.get(name) if name in FAMILY_OF else None


def from_repdistiller(name: str, state_dict: dict) -> dict:
    """A RepDistiller state dict of the model ``name`` with kdlab's key names (values
    untouched; the ``module.`` prefix that ``DataParallel`` adds is dropped)."""
    mapping = FAMILY_OF[name].from_repdistiller
    return {mapping(key[len("module."):] if key.startswith("module.") else key): value
            for key, value in state_dict.items()}


def describe_features(name: str, num_classes: int, image_size: int) -> FeatureShapes:
    """:class:`FeatureShapes` of the named model for square inputs of ``image_size``, from a
    dry forward pass on the meta device (no arithmetic, the global random stream untouched)."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = build_model(name, num_classes)
        features = model(torch.empty(1, 3, image_size, image_size))
    return FeatureShapes(tuple(tuple(stage.shape[1:]) for stage in features.stages),
                         int(features.pooled.shape[1]), int(features.logits.shape[1]))


def read_weights_payload(path, what: str = "checkpoint"):
    """What ``torch.load(path, weights_only=True)`` returns, on the CPU; UserError naming the
    file when it is missing, unreadable or corrupt."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as error:
        raise UserError(f"{what} {path} does not exist") from error
    except Exception as error:  # torch raises many types for a corrupt file
        raise UserError(f"{what} {path} is unreadable or corrupt ({type(error).__name__}: "
                        f"{str(error).splitlines()[0] if str(error) else ''})") from error


def load_weights_file(model: nn.Module, path, what: str = "checkpoint") -> None:
    """Load ``{'weights': state_dict}`` (or a bare state dict) from ``path`` with strict keys.

    Raises UserError naming the file when it is unreadable or its shapes/keys do not fit.
    """
    payload = read_weights_payload(path, what)
    state_dict = payload.get("weights", payload) if isinstance(payload, dict) else None
    if not isinstance(state_dict, dict):
        raise UserError(f"{what} {path}: expected a dict {{'weights': state_dict}}")
    mismatch = describe_mismatch(model.state_dict(), state_dict)
    if mismatch:
        raise UserError(f"{what} {path} does not fit {type(model).__name__} "
                        f"({getattr(model, 'num_classes', '?')} classes): {mismatch}")
    model.load_state_dict(state_dict, strict=True)


def describe_mismatch(expected: dict, found: dict, shown: int = 3) -> str:
    """'' when ``found`` has exactly the keys and shapes of ``expected`` (two state dicts);
    else the first ``shown`` missing, unexpected and wrongly shaped keys with their counts."""
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    wrong_shape = [f"{key} {tuple(getattr(found[key], 'shape', ()))} instead of "
                   f"{tuple(expected[key].shape)}" for key in expected
                   if key in found and tuple(getattr(found[key], "shape", ())) !=
                   tuple(expected[key].shape)]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected),
                        ("with another shape", wrong_shape)):
        if keys:
            more = f", ... ({len(keys) - shown} more)" if len(keys) > shown else ""
            parts.append(f"{len(keys)} keys {label}: {', '.join(keys[:shown])}{more}")
    return "; ".join(parts)


def fitting_state_dict(name: str, model: nn.Module, payload, path,
                       what: str = "checkpoint") -> tuple[dict, str]:
    """The state dict in ``payload`` (as read from ``path``) that fits ``model`` (kdlab's
    model ``name``) with strict keys and shapes, in kdlab's key names, and its format:
    ``"kdlab"`` (best.pth ``{'weights': ...}``, checkpoint.pth ``{'model': ...}`` or a bare
    state dict) or ``"repdistiller"`` (``{'model': state_dict, ...}`` in RepDistiller's key
    names, as its ``ckpt_epoch_240.pth`` teachers). UserError naming the file otherwise."""
    if not isinstance(payload, dict):
        raise UserError(f"{what} {path}: expected a dict holding a state dict, found "
                        f"{type(payload).__name__}")
    state_dict = payload.get("weights", payload.get("model", payload))
    if not isinstance(state_dict, dict) or not all(
            isinstance(value, torch.Tensor) for value in state_dict.values()):
        raise UserError(f"{what} {path}: expected a state dict under 'weights' (kdlab) or "
                        "'model' (kdlab checkpoint, RepDistiller), or a bare state dict")
    expected = model.state_dict()
    mismatch = describe_mismatch(expected, state_dict)
    if not mismatch:
        return state_dict, "kdlab"
    renamed = from_repdistiller(name, state_dict)
    if not describe_mismatch(expected, renamed):
        return renamed, "repdistiller"
    raise UserError(f"{what} {path} does not fit {name} ({getattr(model, 'num_classes', '?')} "
                    f"classes) in kdlab's or RepDistiller's key names: {mismatch}")


def load_model(path, model: str, num_classes: int) -> nn.Module:
    """The model ``model`` with a ``num_classes``-way classifier and the weights of ``path``
    (kdlab's best.pth or checkpoint.pth, or a RepDistiller checkpoint), in eval mode, on the
    CPU. For notebooks: ``kdlab.load_model("experiments/.../best.pth", model="WRN40_2",
    num_classes=100)``."""
    network = build_model(model, num_classes)
    payload = read_weights_payload(path, "weights file")
    state_dict, _ = fitting_state_dict(model, network, payload, path, "weights file")
    network.load_state_dict(state_dict, strict=True)
    return network.eval()
