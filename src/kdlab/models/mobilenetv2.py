"""MobileNetV2 (Sandler et al. 2018) as the KD benchmark uses it: RepDistiller's
``mobile_half`` — width multiplier 0.5, expansion 6, a stride-2 stem, inverted residual
blocks with linear bottlenecks, a 1x1 convolution to 1280 channels and the classifier.

Module names are RepDistiller's (``conv1.0/1``, ``blocks.S.B.conv.0..7``, ``conv2.0/1``,
``classifier.0``), so its checkpoints load with the identity key mapping.

Stages are the outputs of ``blocks[1]``, ``blocks[2]``, ``blocks[4]`` and ``blocks[6]``,
named ``stage1..4`` (RepDistiller's and mdistiller's ``feats[1:-1]``). A linear bottleneck
ends without a ReLU, so ``preact`` holds the same tensors as ``stages`` (mdistiller reports
no preact features for this network).

Input size: the stem and ``blocks[2]``, ``blocks[3]``, ``blocks[5]`` halve the resolution,
so the stages are at 1/2, 1/4, 1/8, 1/16 of the input side (32x32: 16/8/4/2; 64x64:
32/16/8/4); global average pooling (instead of RepDistiller's ``AvgPool2d`` sized for 32x32)
gives the 1280 features at any size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .features import Features

WIDTH = 0.5
EXPANSION = 6
# (expansion, output channels at width 1, blocks, first block's stride) per block group.
GROUPS = ((1, 16, 1, 1), (EXPANSION, 24, 2, 1), (EXPANSION, 32, 3, 2), (EXPANSION, 64, 4, 2),
          (EXPANSION, 96, 3, 1), (EXPANSION, 160, 3, 2), (EXPANSION, 320, 1, 1))
# The block groups whose outputs are the stages.
STAGE_GROUPS = (1, 2, 4, 6)
STAGE_NAMES = ("stage1", "stage2", "stage3", "stage4")
LAST_CHANNELS = 1280


def conv_bn_relu(in_channels: int, out_channels: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2,
                                   bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class InvertedResidual(nn.Module):
    """1x1 expansion, 3x3 depthwise, 1x1 linear projection; plus the input where the shape
    stays."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.residual = stride == 1 and in_channels == out_channels
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    """``forward(x [B,3,H,W])`` returns :class:`Features`: stages [B,12,H/2,W/2],
    [B,16,H/4,W/4], [B,48,H/8,W/8], [B,160,H/16,W/16] (preact: the same), the pooled
    [B,1280] vector and logits [B,num_classes]."""

    def __init__(self, num_classes: int, width: float = WIDTH) -> None:
        super().__init__()
        self.num_classes = num_classes
        in_channels = int(32 * width)
        self.conv1 = conv_bn_relu(3, in_channels, 3, 2)
        groups = []
        for expansion, channels, blocks, stride in GROUPS:
            out_channels = int(channels * width)
            group = []
            for index in range(blocks):
                group.append(InvertedResidual(in_channels, out_channels,
                                              stride if index == 0 else 1, expansion))
                in_channels = out_channels
            groups.append(nn.Sequential(*group))
        self.blocks = nn.ModuleList(groups)
        last_channels = int(LAST_CHANNELS * width) if width > 1.0 else LAST_CHANNELS
        self.conv2 = conv_bn_relu(in_channels, last_channels, 1, 1)
        self.classifier = nn.Sequential(nn.Linear(last_channels, num_classes))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):  # He init over fan-out, as the reference
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def preact_batchnorms(self) -> list[nn.BatchNorm2d]:
        """Per stage, the batch norm of the stage's last linear bottleneck (its projection's
        BN, mdistiller's ``get_bn_before_relu``): its output, plus the block's input where the
        block is residual, is the stage's ``preact`` (= the stage: no ReLU follows a linear
        bottleneck). Same order and length as ``Features.preact``."""
        return [self.blocks[group][-1].conv[-1] for group in STAGE_GROUPS]

    def forward(self, x: torch.Tensor) -> Features:
        out = self.conv1(x)
        stages = []
        for index, group in enumerate(self.blocks):
            out = group(out)
            if index in STAGE_GROUPS:
                stages.append(out)
        pooled = F.adaptive_avg_pool2d(self.conv2(out), 1).flatten(1)
        return Features(stages, list(stages), pooled, self.classifier(pooled))

    def modules_after(self, stage_index: int) -> list[nn.Module]:
        """The sub-modules that only compute after stage ``stage_index`` (0-based; the
        number of stages means after the logits: none)."""
        if stage_index >= len(STAGE_GROUPS):
            return []
        return [*self.blocks[STAGE_GROUPS[stage_index] + 1:], self.conv2, self.classifier]


def build(name: str, num_classes: int) -> MobileNetV2:
    return MobileNetV2(num_classes)


BUILDERS = {"MobileNetV2": build}
REPDISTILLER_NAMES = {"MobileNetV2": "mobile_half"}


def from_repdistiller(key: str) -> str:
    """kdlab's name of a RepDistiller ``mobile_half`` key: the same."""
    return key
