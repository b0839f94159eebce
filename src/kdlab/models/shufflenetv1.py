"""ShuffleNet V1 (Zhang et al. 2018) as the KD benchmark uses it: RepDistiller's
``ShuffleV1`` — 3 groups, stages of 240/480/960 channels with 4/8/4 bottlenecks, a 1x1
stem that keeps the resolution.

Module names are RepDistiller's (``conv1``, ``bn1``, ``layer1..3.N.{conv1,bn1,conv2,bn2,
conv3,bn3}``, ``linear``), so its checkpoints load with the identity key mapping.

Stages are ``layer1..3`` (RepDistiller's and mdistiller's ``feats[1:-1]``) after their last
bottleneck's ReLU; ``preact`` is that bottleneck's sum before the ReLU.

Input size: each stage's first bottleneck halves the resolution (stages at 1/2, 1/4, 1/8 of
the input side: 32x32 -> 16/8/4, 64x64 -> 32/16/8); global average pooling (instead of
RepDistiller's ``avg_pool2d(4)``) gives the 960 features at any size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .features import Features

GROUPS = 3
STAGE_CHANNELS = (240, 480, 960)
STAGE_BLOCKS = (4, 8, 4)
STEM_CHANNELS = 24
STAGE_NAMES = ("layer1", "layer2", "layer3")


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[B,C,H,W] with channel ``g*(C/groups)+i`` moved to ``i*groups+g``: the channels of each
    group spread over every group of the next grouped convolution."""
    batch, channels, height, width = x.shape
    return (x.view(batch, groups, channels // groups, height, width).transpose(1, 2)
            .reshape(batch, channels, height, width))


class ShuffleBottleneck(nn.Module):
    """Grouped 1x1, channel shuffle, 3x3 depthwise (stride 1 or 2), grouped 1x1; added to the
    input, or concatenated with its 3x3 average pool where the stride is 2."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride = stride
        middle = out_channels // 4
        # The stem's 24 channels are too few for groups: the first 1x1 is dense there.
        self.first_groups = 1 if in_channels == STEM_CHANNELS else groups
        self.conv1 = nn.Conv2d(in_channels, middle, 1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(middle)
        self.conv2 = nn.Conv2d(middle, middle, 3, stride=stride, padding=1, groups=middle,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(middle)
        self.conv3 = nn.Conv2d(middle, out_channels, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)

    def preactivation(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output before its final ReLU."""
        out = channel_shuffle(F.relu(self.bn1(self.conv1(x))), self.first_groups)
        out = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(out)))))
        if self.stride == 2:
            return torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], 1)
        return out + x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.preactivation(x))


class ShuffleNetV1(nn.Module):
    """``forward(x [B,3,H,W])`` returns :class:`Features`: stages [B,240,H/2,W/2],
    [B,480,H/4,W/4], [B,960,H/8,W/8], their pre-ReLU values, the pooled [B,960] vector and
    logits [B,num_classes]."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(3, STEM_CHANNELS, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_CHANNELS)
        in_channels = STEM_CHANNELS
        stages = []
        for channels, blocks in zip(STAGE_CHANNELS, STAGE_BLOCKS):
            # The first block's output is concatenated with its pooled input.
            stage = [ShuffleBottleneck(in_channels, channels - in_channels, 2, GROUPS)]
            stage += [ShuffleBottleneck(channels, channels, 1, GROUPS) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            in_channels = channels
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(in_channels, num_classes)

    def preact_batchnorms(self) -> list[nn.BatchNorm2d]:
        """Per stage, the batch norm whose output plus the shortcut (the block's input: every
        stage's last bottleneck has stride 1) is the stage's ``preact``: the last
        bottleneck's ``bn3``. mdistiller's ShuffleNet raises NotImplementedError here; this
        BN is the one its own forward adds to the shortcut before the ReLU, as in the
        ResNets. Same order and length as ``Features.preact``."""
        return [stage[-1].bn3 for stage in (self.layer1, self.layer2, self.layer3)]

    def forward(self, x: torch.Tensor) -> Features:
        out = F.relu(self.bn1(self.conv1(x)))
        stages, preact = [], []
        for stage in (self.layer1, self.layer2, self.layer3):
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
        return [self.layer2, self.layer3, self.linear][stage_index:]


def build(name: str, num_classes: int) -> ShuffleNetV1:
    return ShuffleNetV1(num_classes)


BUILDERS = {"ShuffleNetV1": build}
REPDISTILLER_NAMES = {"ShuffleNetV1": "ShuffleV1"}


def from_repdistiller(key: str) -> str:
    """kdlab's name of a RepDistiller ``ShuffleV1`` key: the same."""
    return key
