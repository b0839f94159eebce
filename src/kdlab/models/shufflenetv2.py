"""ShuffleNet V2 (Ma et al. 2018) as the KD benchmark uses it: RepDistiller's ``ShuffleV2``
(net size 1) — a 1x1 stem that keeps the resolution, stages of 116/232/464 channels (a
down-sampling unit then 3/7/3 basic units), a 1x1 convolution to 1024 channels.

Module names are RepDistiller's (``conv1``, ``bn1``, ``layer1..3.0.{conv1..5,bn1..5}`` for
the down-sampling unit, ``layer1..3.N.{conv1..3,bn1..3}``, ``conv2``, ``bn2``, ``linear``),
so its checkpoints load with the identity key mapping.

Stages are ``layer1..3`` (RepDistiller's and mdistiller's ``feats[1:-1]``): the last unit's
shuffled output. ``preact`` is the same before the unit's ReLU, shuffled like the output so
that ``relu(preact) == stage`` channel by channel (RepDistiller returns it unshuffled: the
same values in another channel order).

Input size: each stage's down-sampling unit halves the resolution (stages at 1/2, 1/4, 1/8
of the input side: 32x32 -> 16/8/4, 64x64 -> 32/16/8); global average pooling (instead of
RepDistiller's ``avg_pool2d(4)``) gives the 1024 features at any size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..run.errors import UserError
from .features import Features
from .shufflenetv1 import channel_shuffle

STEM_CHANNELS = 24
STAGE_CHANNELS = (116, 232, 464)
STAGE_BLOCKS = (3, 7, 3)
LAST_CHANNELS = 1024
STAGE_NAMES = ("layer1", "layer2", "layer3")


class BasicUnit(nn.Module):
    """Half the channels pass; the other half go 1x1, 3x3 depthwise, 1x1; concatenated and
    shuffled."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.conv1 = nn.Conv2d(half, half, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)

    def preactivation(self, x: torch.Tensor) -> torch.Tensor:
        """The unit's output before its ReLU. The passed half is a ReLU output already, so
        ``relu`` of this is the unit's output."""
        passed, processed = x.chunk(2, dim=1)
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(processed)))))
        return channel_shuffle(torch.cat([passed, self.bn3(self.conv3(out))], 1), 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.preactivation(x))


class DownUnit(nn.Module):
    """Two stride-2 branches (3x3 depthwise then 1x1; 1x1, 3x3 depthwise, 1x1), each to half
    the output channels, concatenated and shuffled."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        half = out_channels // 2
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, stride=2, padding=1,
                               groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, half, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(in_channels, half, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)
        self.conv4 = nn.Conv2d(half, half, 3, stride=2, padding=1, groups=half, bias=False)
        self.bn4 = nn.BatchNorm2d(half)
        self.conv5 = nn.Conv2d(half, half, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = self.bn4(self.conv4(F.relu(self.bn3(self.conv3(x)))))
        right = F.relu(self.bn5(self.conv5(right)))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(nn.Module):
    """``forward(x [B,3,H,W])`` returns :class:`Features`: stages [B,116,H/2,W/2],
    [B,232,H/4,W/4], [B,464,H/8,W/8], their pre-ReLU values, the pooled [B,1024] vector and
    logits [B,num_classes]."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(3, STEM_CHANNELS, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_CHANNELS)
        in_channels = STEM_CHANNELS
        stages = []
        for channels, blocks in zip(STAGE_CHANNELS, STAGE_BLOCKS):
            stages.append(nn.Sequential(DownUnit(in_channels, channels),
                                        *[BasicUnit(channels) for _ in range(blocks)]))
            in_channels = channels
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = nn.Conv2d(in_channels, LAST_CHANNELS, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(LAST_CHANNELS)
        self.linear = nn.Linear(LAST_CHANNELS, num_classes)

    def preact_batchnorms(self) -> list[nn.BatchNorm2d]:
        """None exists: half of each stage's ``preact`` channels are the unit's passed half,
        already a ReLU output, and the other half come from ``bn3`` (half the stage's
        channels), interleaved by the shuffle; no batch norm of the stage's width precedes
        its last ReLU. Raises UserError (mdistiller's ``get_bn_before_relu`` raises
        NotImplementedError for the same network), so OFD cannot take it as a teacher."""
        raise UserError("ShuffleNetV2 has no batch norm before its stages' last ReLU (half of "
                        "each stage's channels pass the unit already activated): OFD's margin "
                        "cannot be read from it; expected a teacher of another family")

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
        pooled = F.adaptive_avg_pool2d(F.relu(self.bn2(self.conv2(out))), 1).flatten(1)
        return Features(stages, preact, pooled, self.linear(pooled))

    def modules_after(self, stage_index: int) -> list[nn.Module]:
        """The sub-modules that only compute after stage ``stage_index`` (0-based; the
        number of stages means after the logits: none)."""
        return [self.layer2, self.layer3, self.conv2, self.bn2, self.linear][stage_index:] \
            if stage_index < 3 else []


def build(name: str, num_classes: int) -> ShuffleNetV2:
    return ShuffleNetV2(num_classes)


BUILDERS = {"ShuffleNetV2": build}
REPDISTILLER_NAMES = {"ShuffleNetV2": "ShuffleV2"}


def from_repdistiller(key: str) -> str:
    """kdlab's name of a RepDistiller ``ShuffleV2`` key: the same."""
    return key
