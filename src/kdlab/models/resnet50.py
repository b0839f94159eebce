"""The CIFAR ResNet-50 of the KD benchmark (RepDistiller's ``ResNet50``, from its
``resnetv2.py``): a 3x3 stem of 64 channels at full resolution, bottleneck stages of
3/4/6/3 blocks with 256/512/1024/2048 output channels (projection shortcuts where the
shape changes).

Module names are RepDistiller's (``conv1``, ``bn1``, ``layer1..4.N.{conv1..3,bn1..3,
shortcut.0/1}``, ``linear``), so its checkpoints load with the identity key mapping.

Stages are ``layer1..4`` (RepDistiller's and mdistiller's ``feats[1:-1]``) after their last
block's ReLU; ``preact`` is that block's sum before the ReLU.

Input size: ``layer2..4`` halve the resolution (stages at 1, 1/2, 1/4, 1/8 of the input side:
32x32 -> 32/16/8/4, 64x64 -> 64/32/16/8); adaptive average pooling (as in the reference)
gives the 2048 features at any size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .features import Features

BLOCKS = (3, 4, 6, 3)
WIDTHS = (64, 128, 256, 512)
EXPANSION = 4
STAGE_NAMES = ("layer1", "layer2", "layer3", "layer4")


class Bottleneck(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        out_planes = planes * EXPANSION
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes))

    def preactivation(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output before its final ReLU."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out)) + self.shortcut(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.preactivation(x))


class ResNet50(nn.Module):
    """``forward(x [B,3,H,W])`` returns :class:`Features`: stages [B,256,H,W],
    [B,512,H/2,W/2], [B,1024,H/4,W/4], [B,2048,H/8,W/8], their pre-ReLU values, the pooled
    [B,2048] vector and logits [B,num_classes]."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        stages = []
        for planes, blocks, stride in zip(WIDTHS, BLOCKS, (1, 2, 2, 2)):
            stage = []
            for index in range(blocks):
                stage.append(Bottleneck(in_planes, planes, stride if index == 0 else 1))
                in_planes = planes * EXPANSION
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(in_planes, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def preact_batchnorms(self) -> list[nn.BatchNorm2d]:
        """Per stage, the batch norm whose output (plus the shortcut, which OFD's margin
        ignores, as mdistiller's ``get_bn_before_relu``) precedes the stage's last ReLU: the
        last bottleneck's ``bn3``. Same order and length as ``Features.preact``."""
        return [stage[-1].bn3 for stage in (self.layer1, self.layer2, self.layer3, self.layer4)]

    def forward(self, x: torch.Tensor) -> Features:
        out = F.relu(self.bn1(self.conv1(x)))
        stages, preact = [], []
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage[:-1]:
                out = block(out)
            before_relu = stage[-1].preactivation(out)
            out = F.relu(before_relu)
            stages.append(out)
            preact.append(before_relu)
        pooled = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return Features(stages, preact, pooled, self.linear(pooled))

    def modules_after(self, stage_index: int) -> list[nn.Module]:
        """The sub-modules that only compute after stage ``stage_index`` (0-based; the
        number of stages means after the logits: none)."""
        return [self.layer2, self.layer3, self.layer4, self.linear][stage_index:]


def build(name: str, num_classes: int) -> ResNet50:
    return ResNet50(num_classes)


BUILDERS = {"ResNet50": build}
REPDISTILLER_NAMES = {"ResNet50": "ResNet50"}


def from_repdistiller(key: str) -> str:
    """kdlab's name of a RepDistiller ``ResNet50`` key: the same."""
    return key
