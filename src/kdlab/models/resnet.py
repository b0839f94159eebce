"""CIFAR ResNets (He et al. 2016, section 4.2): 6n+2 layers, BasicBlocks, 16/32/64 channels.

Module names follow the earlier research code's checkpoints (``conv1``, ``bn1``,
``layer1..3`` with blocks ``conv1/bn1/conv2/bn2`` and ``shortcut.0/.1``, ``linear``) so its
``best.pth`` files load with strict key matching.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .features import Features

# name -> BasicBlocks per stage. "ResNet112" is the name the study's teacher carries in the
# existing experiment trees; it is the 18-blocks-per-stage network (= ResNet110).
BLOCKS_PER_STAGE = {
    "ResNet8": 1,
    "ResNet20": 3,
    "ResNet56": 9,
    "ResNet110": 18,
    "ResNet112": 18,
}
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

    def preactivation(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output before its final ReLU."""
        out = F.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out)) + self.shortcut(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.preactivation(x))


class CifarResNet(nn.Module):
    """``forward(x [B,3,H,W])`` returns :class:`Features` with stages ``layer1..3``:
    feature maps [B,16,H,W], [B,32,H/2,W/2], [B,64,H/4,W/4] (after each stage, before
    pooling), their pre-ReLU values, the pooled [B,64] vector and logits [B,num_classes]."""

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

    def preact_batchnorms(self) -> list[nn.BatchNorm2d]:
        """Per stage, the batch norm whose output (plus the shortcut, which OFD's margin
        ignores, as mdistiller's ``get_bn_before_relu``) precedes the stage's last ReLU: the
        last block's ``bn2``. Same order and length as ``Features.preact``."""
        return [stage[-1].bn2 for stage in (self.layer1, self.layer2, self.layer3)]

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
