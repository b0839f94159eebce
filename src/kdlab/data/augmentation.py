"""Batched augmentation and normalisation on the device (the airbench approach).

One gather per batch does the random crop from the zero-padded image and the horizontal
flip; one fused multiply-add normalises. No PIL and no per-image Python in the hot loop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .info import DatasetInfo


def augment(images: torch.Tensor, generator: torch.Generator, pad: int,
            flip: bool) -> torch.Tensor:
    """Random crop from the zero-padded image (+ random horizontal flip), batched.

    ``images`` uint8 [B,C,H,W] on any device; returns uint8 [B,C,H,W] on the same device.
    Each image gets a window of its ``pad``-pixel zero-padded version at an offset drawn
    uniformly from 0..2*pad per axis and, if ``flip``, is mirrored left-right with
    probability 1/2. Random numbers come only from ``generator`` (a CPU generator), so the
    result does not depend on the device.
    """
    batch, channels, height, width = images.shape
    device = images.device
    offsets = torch.randint(0, 2 * pad + 1, (batch, 2), generator=generator)
    flips = torch.randint(0, 2, (batch,), generator=generator).bool() if flip else None
    offsets = offsets.to(device, non_blocking=True)
    padded = F.pad(images, (pad, pad, pad, pad)) if pad else images
    padded_width = width + 2 * pad
    rows = offsets[:, :1] + torch.arange(height, device=device)        # [B,H]
    columns = offsets[:, 1:] + torch.arange(width, device=device)      # [B,W]
    if flips is not None:
        # A flip reads the window's columns right to left: the same gather does both.
        columns = torch.where(flips.to(device, non_blocking=True)[:, None],
                              columns.flip(1), columns)
    # One gather over the flattened padded planes: index [B,C,H*W] into [B,C,(H+2p)(W+2p)].
    flat_index = (rows[:, :, None] * padded_width + columns[:, None, :]).reshape(batch, 1, -1)
    flat = padded.reshape(batch, channels, -1)
    cropped = torch.gather(flat, 2, flat_index.expand(batch, channels, -1))
    return cropped.reshape(batch, channels, height, width)


def normalization(mean: tuple[float, ...], std: tuple[float, ...],
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), each float32 [1,3,1,1], with (x/255 - mean)/std == x*scale + shift."""
    mean_tensor = torch.tensor(mean, dtype=torch.float64)
    std_tensor = torch.tensor(std, dtype=torch.float64)
    scale = (1.0 / (255.0 * std_tensor)).float().view(1, 3, 1, 1).to(device)
    shift = (-mean_tensor / std_tensor).float().view(1, 3, 1, 1).to(device)
    return scale, shift


def normalize(images: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    """uint8 [B,3,H,W] pixels -> float32 [B,3,H,W] = (pixels/255 - mean) / std."""
    scale, shift = normalization(info.mean, info.std, images.device)
    return torch.addcmul(shift, images.float(), scale)
