"""CIFAR ResNets (He et al. 2016, section 4.2): 6n+2 layers, BasicBlocks, 16/32/64 channels.

Module names follow the earlier research code's checkpoints (``conv1``, ``bn1``,
``layer1..3`` with blocks ``conv1/bn1/conv2/bn2`` and ``shortcut.0/.1``, ``linear``) so its
``best.pth`` files load with strict key matching.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError

# name -> BasicBlocks per stage. "ResNet112" is the name the study's teacher carries in the
# existing experiment trees; it is the 18-blocks-per-stage network (= ResNet110).
BLOCKS_PER_STAGE = {
    "ResNet8": 1,
    "ResNet20": 3,
    "ResNet56": 9,
    "ResNet110": 18,
    "ResNet112": 18,
}
MODEL_NAMES = tuple(BLOCKS_PER_STAGE)
STAGE_CHANNELS = (16, 32, 64)
LAYER_NAMES = ("layer1", "layer2", "layer3")


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            # Option B of the ResNet paper: 1x1 conv + BN projection when the shape changes.
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """``forward(x [B,3,H,W])`` returns ``[layer1, layer2, layer3, logits]``:
    feature maps [B,16,H,W], [B,32,H/2,W/2], [B,64,H/4,W/4] (after each stage, before
    pooling) and logits [B,num_classes]."""

    def __init__(self, blocks_per_stage: int, num_classes: int) -> None:
        super().__init__()
        self.blocks_per_stage = blocks_per_stage
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_planes = 16
        stages = []
        for planes, stride in zip(STAGE_CHANNELS, (1, 2, 2)):
            blocks = []
            for index in range(blocks_per_stage):
                blocks.append(BasicBlock(in_planes, planes, stride if index == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(STAGE_CHANNELS[-1], num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        feature1 = self.layer1(out)
        feature2 = self.layer2(feature1)
        feature3 = self.layer3(feature2)
        pooled = F.adaptive_avg_pool2d(feature3, 1).flatten(1)
        return [feature1, feature2, feature3, self.linear(pooled)]


def modules_after(model: CifarResNet, output_index: int) -> list[nn.Module]:
    """The sub-modules that only compute outputs after ``output_index`` of ``forward``'s
    ``[layer1, layer2, layer3, logits]`` (0 -> layer2, layer3, linear; 3 -> none)."""
    return [model.layer2, model.layer3, model.linear][output_index:]


def build_model(name: str, num_classes: int) -> CifarResNet:
    """The named CIFAR ResNet with a ``num_classes``-way classifier."""
    if name not in BLOCKS_PER_STAGE:
        raise UserError(f"unknown model {name!r}: expected one of {', '.join(MODEL_NAMES)}")
    return CifarResNet(BLOCKS_PER_STAGE[name], num_classes)


def feature_shapes(name: str, num_classes: int, image_size: int) -> list[tuple[int, ...]]:
    """Shapes (without batch) of the four outputs of ``forward`` for an input of
    ``image_size``, from a dry forward pass of the named model on the meta device (no
    arithmetic, no memory, the global random stream untouched)."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = build_model(name, num_classes)
        outputs = model(torch.empty(1, 3, image_size, image_size))
    return [tuple(output.shape[1:]) for output in outputs]


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
