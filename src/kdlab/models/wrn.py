"""Wide ResNets (Zagoruyko & Komodakis 2016) as the KD benchmark uses them: pre-activation
BasicBlocks, depth 6n+4, widths 16/32/64 x k (``WRN40_2`` = depth 40, k = 2; RepDistiller's
``wrn_40_2``).

Module names are RepDistiller's (``conv1``, ``block1..3.layer.N.{bn1,conv1,bn2,conv2,
convShortcut}``, ``bn1``, ``fc``), so its checkpoints load with the identity key mapping.

Stages are the raw outputs of ``block1..3`` (RepDistiller's and mdistiller's ``feats[1:-1]``:
a pre-activation block ends in a sum, not a ReLU); ``preact`` is each of them after the
BatchNorm that the next block (or the final ``bn1``) applies before its ReLU — mdistiller's
``preact_feats``. That BatchNorm runs once per forward (mdistiller runs it a second time for
the preact features, moving its running statistics twice per step in training).

Input size: ``block2`` and ``block3`` halve the resolution (stages at 1, 1/2, 1/4 of the
input side); global average pooling (instead of RepDistiller's ``avg_pool2d(8)``) gives one
vector at 32x32 and at 64x64 alike.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .features import Features

# name -> (depth, widen factor)
DEPTH_AND_WIDTH = {"WRN16_1": (16, 1), "WRN16_2": (16, 2), "WRN40_1": (40, 1),
                   "WRN40_2": (40, 2)}
STAGE_NAMES = ("block1", "block2", "block3")


class WideBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus the input (a 1x1 convolution of the activated
    input where the channels change)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        # RepDistiller's name, kept so that its checkpoints need no key mapping.
        self.convShortcut = (nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)
                             if in_planes != out_planes else None)

    def forward(self, x: torch.Tensor, activated: torch.Tensor | None = None) -> torch.Tensor:
        """``activated``: ``relu(bn1(x))`` when the caller has it already (the previous
        stage's preact went through this block's ``bn1``)."""
        if activated is None:
            activated = F.relu(self.bn1(x))
        branch = self.conv2(F.relu(self.bn2(self.conv1(activated))))
        shortcut = x if self.convShortcut is None else self.convShortcut(activated)
        return shortcut + branch


class WideStage(nn.Module):
    def __init__(self, blocks: int, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[
            WideBlock(in_planes if index == 0 else out_planes, out_planes,
                      stride if index == 0 else 1) for index in range(blocks)])


class WideResNet(nn.Module):
    """``forward(x [B,3,H,W])`` returns :class:`Features`: stages [B,16k,H,W],
    [B,32k,H/2,W/2], [B,64k,H/4,W/4] (raw block outputs), their BN'd preact values, the
    pooled [B,64k] vector and logits [B,num_classes]."""

    def __init__(self, depth: int, widen_factor: int, num_classes: int) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth {depth}: expected 6n+4")
        blocks = (depth - 4) // 6
        self.num_classes = num_classes
        channels = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = nn.Conv2d(3, channels[0], 3, stride=1, padding=1, bias=False)
        self.block1 = WideStage(blocks, channels[0], channels[1], 1)
        self.block2 = WideStage(blocks, channels[1], channels[2], 2)
        self.block3 = WideStage(blocks, channels[2], channels[3], 2)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.fc = nn.Linear(channels[3], num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):  # He init over fan-out, as the reference
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def preact_batchnorms(self) -> list[nn.BatchNorm2d]:
        """Per stage, the batch norm whose output is the stage's ``preact`` exactly (no
        shortcut is added after it): the next stage's first ``bn1``, and the final ``bn1``
        for the last stage (mdistiller's ``get_bn_before_relu``). Same order and length as
        ``Features.preact``."""
        return [self.block2.layer[0].bn1, self.block3.layer[0].bn1, self.bn1]

    def forward(self, x: torch.Tensor) -> Features:
        raw = self.conv1(x)
        activated = None
        stages, preact = [], []
        stage_modules = (self.block1, self.block2, self.block3)
        # The BatchNorm each stage's output passes before its ReLU: the next stage's first.
        next_norms = (self.block2.layer[0].bn1, self.block3.layer[0].bn1, self.bn1)
        for stage, norm in zip(stage_modules, next_norms):
            for index, block in enumerate(stage.layer):
                raw = block(raw, activated if index == 0 else None)
            before_relu = norm(raw)
            activated = F.relu(before_relu)
            stages.append(raw)
            preact.append(before_relu)
        pooled = F.adaptive_avg_pool2d(activated, 1).flatten(1)
        return Features(stages, preact, pooled, self.fc(pooled))

    def modules_after(self, stage_index: int) -> list[nn.Module]:
        """The sub-modules that only compute after stage ``stage_index`` (0-based; the
        number of stages means after the logits: none). The next stage's first ``bn1`` gives
        this stage's preact but not its output, so it belongs to what comes after."""
        return [self.block2, self.block3, self.bn1, self.fc][stage_index:] \
            if stage_index < 3 else []


def build(name: str, num_classes: int) -> WideResNet:
    return WideResNet(*DEPTH_AND_WIDTH[name], num_classes)


BUILDERS = {name: build for name in DEPTH_AND_WIDTH}
REPDISTILLER_NAMES = {name: f"wrn_{depth}_{width}"
                      for name, (depth, width) in DEPTH_AND_WIDTH.items()}


def from_repdistiller(key: str) -> str:
    """kdlab's name of a RepDistiller ``wrn_*`` key: the same (the modules carry its names)."""
    return key
