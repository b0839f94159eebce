"""VGG with batch normalisation as the KD benchmark uses it (RepDistiller's ``vgg8_bn`` ...
``vgg19_bn``): five blocks of 3x3 convolutions (with bias) + BN + ReLU at 64/128/256/512/512
channels, max-pooling between blocks, no fully connected layers but the classifier.

Module names are RepDistiller's (``block0..4`` as sequences conv, BN, ReLU, ..., conv, BN;
``classifier``), so its checkpoints load with the identity key mapping.

Stages are ``block1..4`` (RepDistiller's and mdistiller's ``feats[1:-1]``; ``block0`` plays
the stem) after the ReLU that follows each block; ``preact`` is each block's last BN output.

Input size: each of the first three blocks is followed by a 2x2 max-pool and ``block4`` works
at ``block3``'s resolution, so the stages are at 1/2, 1/4, 1/8, 1/8 of the input side
(32x32: 16/8/4/4; 64x64: 32/16/8/8) and global average pooling makes the classifier's input
512 at any size. (RepDistiller pools once more before ``block4`` at 64x64; kdlab does not, so
that each stage's stride is one fact for every input size.)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .features import Features

# name -> convolutions' output channels, per block (RepDistiller's configurations S, A, B, D, E).
BLOCK_CHANNELS = {
    "VGG8": ((64,), (128,), (256,), (512,), (512,)),
    "VGG11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "VGG13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "VGG16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "VGG19": ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512),
              (512, 512, 512, 512)),
}
STAGE_NAMES = ("block1", "block2", "block3", "block4")


def conv_block(in_channels: int, channels: tuple[int, ...]) -> nn.Sequential:
    """conv-BN-ReLU per entry of ``channels``, without the last ReLU (the forward applies it,
    so that the block's output is the stage's preact)."""
    layers: list[nn.Module] = []
    for out_channels in channels:
        layers += [nn.Conv2d(in_channels, out_channels, 3, padding=1),
                   nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
        in_channels = out_channels
    return nn.Sequential(*layers[:-1])


class VGG(nn.Module):
    """``forward(x [B,3,H,W])`` returns :class:`Features`: stages [B,128,H/2,W/2],
    [B,256,H/4,W/4], [B,512,H/8,W/8], [B,512,H/8,W/8], their pre-ReLU values, the pooled
    [B,512] vector and logits [B,num_classes]."""

    def __init__(self, block_channels, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        in_channels = 3
        for index, channels in enumerate(block_channels):
            setattr(self, f"block{index}", conv_block(in_channels, channels))
            in_channels = channels[-1]
        self.classifier = nn.Linear(in_channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):  # He init over fan-out, as the reference
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def preact_batchnorms(self) -> list[nn.BatchNorm2d]:
        """Per stage, the batch norm whose output is the stage's ``preact`` exactly: the last
        module of ``block1..4`` (mdistiller's ``get_bn_before_relu``). Same order and length
        as ``Features.preact``."""
        return [block[-1] for block in (self.block1, self.block2, self.block3, self.block4)]

    def forward(self, x: torch.Tensor) -> Features:
        out = F.max_pool2d(F.relu(self.block0(x)), 2)
        stages, preact = [], []
        for index, block in enumerate((self.block1, self.block2, self.block3, self.block4)):
            before_relu = block(out)
            out = F.relu(before_relu)
            stages.append(out)
            preact.append(before_relu)
            if index < 2:
                out = F.max_pool2d(out, 2)
        pooled = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return Features(stages, preact, pooled, self.classifier(pooled))

    def modules_after(self, stage_index: int) -> list[nn.Module]:
        """The sub-modules that only compute after stage ``stage_index`` (0-based; the
        number of stages means after the logits: none)."""
        return [self.block2, self.block3, self.block4, self.classifier][stage_index:]


def build(name: str, num_classes: int) -> VGG:
    return VGG(BLOCK_CHANNELS[name], num_classes)


BUILDERS = {name: build for name in BLOCK_CHANNELS}
REPDISTILLER_NAMES = {name: name.lower() for name in BLOCK_CHANNELS}


def from_repdistiller(key: str) -> str:
    """kdlab's name of a RepDistiller ``vgg*`` key: the same (the modules carry its names)."""
    return key
