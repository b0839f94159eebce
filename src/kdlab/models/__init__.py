"""The model registry: name -> builder, and the helpers every family shares (strict weight
loading, feature shapes). Each family lives in its own module; every forward returns
:class:`~kdlab.models.features.Features`."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError
from .features import Features, FeatureShapes
from .resnet import BLOCKS_PER_STAGE, LAYER_NAMES, STAGE_CHANNELS, CifarResNet

MODEL_NAMES = tuple(BLOCKS_PER_STAGE)


def modules_after(model: CifarResNet, output_index: int) -> list[nn.Module]:
    """The sub-modules that only compute outputs after ``output_index`` of ``forward``'s
    ``[layer1, layer2, layer3, logits]`` (0 -> layer2, layer3, linear; 3 -> none)."""
    return [model.layer2, model.layer3, model.linear][output_index:]


def build_model(name: str, num_classes: int) -> CifarResNet:
    """The named CIFAR ResNet with a ``num_classes``-way classifier."""
    if name not in BLOCKS_PER_STAGE:
        raise UserError(f"unknown model {name!r}: expected one of {', '.join(MODEL_NAMES)}")
    return CifarResNet(BLOCKS_PER_STAGE[name], num_classes)


def describe_features(name: str, num_classes: int, image_size: int) -> FeatureShapes:
    """:class:`FeatureShapes` of the named model for square inputs of ``image_size``, from a
    dry forward pass on the meta device (no arithmetic, the global random stream untouched)."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = build_model(name, num_classes)
        features = model(torch.empty(1, 3, image_size, image_size))
    return FeatureShapes(tuple(tuple(stage.shape[1:]) for stage in features.stages),
                         int(features.pooled.shape[1]), int(features.logits.shape[1]))


def load_weights_file(model: nn.Module, path, what: str = "checkpoint") -> None:
    """Load ``{'weights': state_dict}`` (or a bare state dict) from ``path`` with strict keys.

    Raises UserError naming the file when it is unreadable or its shapes/keys do not fit.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as error:
        raise UserError(f"{what} {path} does not exist") from error
    except Exception as error:  # torch raises many types for a corrupt file
        raise UserError(f"{what} {path} is unreadable or corrupt ({type(error).__name__}: "
                        f"{str(error).splitlines()[0] if str(error) else ''})") from error
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
