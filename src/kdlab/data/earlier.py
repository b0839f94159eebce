"""The earlier research code's preprocessing, batched on the device (``augmentation = "earlier"``).

The earlier code (its ``toolbox/data_loader.py``) fed PIL images through torchvision:

train  ``RandomResizedCrop(size)`` (scale 0.08..1 of the area, aspect ratio 3/4..4/3,
       bilinear) + ``RandomHorizontalFlip()`` on every data set, SVHN included
test   ``Resize(size + 8)`` + ``CenterCrop(size)`` (bilinear)
both   ``ToTensor()`` + ``Normalize(mean, std)`` with the constants of
       :data:`kdlab.data.info.EARLIER_NORMALIZATION` (ImageNet's for TinyImageNet)

Here the same boxes are drawn as tensors for a whole batch and the crop is resampled by
separable bilinear interpolation with two gathers, sampling at pixel centres and clamping
at the crop's own edges, as PIL resizes a cropped image. Because a crop is never larger
than the image it is taken from (and Resize only enlarges), every resampling enlarges,
so antialiasing never applies. The result is rounded to uint8 once, where PIL rounds after
each of its two passes: pixels may differ from PIL's by one grey level.
"""

from __future__ import annotations

import math

import torch


SCALE = (0.08, 1.0)
RATIO = (3.0 / 4.0, 4.0 / 3.0)
_ATTEMPTS = 10        # torchvision's RandomResizedCrop tries ten boxes before its fallback
TEST_RESIZE_MARGIN = 8


def resized_crop_boxes(batch: int, height: int, width: int,
                       generator: torch.Generator) -> torch.Tensor:
    """int64 [batch,4] boxes (top, left, box height, box width), drawn as RandomResizedCrop does.

    Per image up to ten candidates: area fraction uniform in ``SCALE``, log aspect ratio
    uniform in log ``RATIO``, sides rounded half to even; the first that fits is placed
    uniformly. An image with no fitting candidate gets torchvision's fallback, the largest
    centred box whose ratio lies in ``RATIO``. Random numbers come from ``generator``.
    """
    area = float(height * width)
    scale = torch.empty(batch, _ATTEMPTS, dtype=torch.float64).uniform_(*SCALE,
                                                                         generator=generator)
    log_ratio = torch.empty(batch, _ATTEMPTS, dtype=torch.float64).uniform_(
        math.log(RATIO[0]), math.log(RATIO[1]), generator=generator)
    placement = torch.rand(batch, 2, dtype=torch.float64, generator=generator)
    ratio = torch.exp(log_ratio)
    box_w = torch.round(torch.sqrt(area * scale * ratio)).long()
    box_h = torch.round(torch.sqrt(area * scale / ratio)).long()
    fits = (box_w > 0) & (box_w <= width) & (box_h > 0) & (box_h <= height)
    first = fits.long().argmax(dim=1, keepdim=True)   # first fitting attempt (0 if none)
    box_w = box_w.gather(1, first).squeeze(1)
    box_h = box_h.gather(1, first).squeeze(1)
    fallback_h, fallback_w = _fallback_box(height, width)
    any_fit = fits.any(dim=1)
    box_h = torch.where(any_fit, box_h, fallback_h)
    box_w = torch.where(any_fit, box_w, fallback_w)
    top = torch.floor(placement[:, 0] * (height - box_h + 1)).long()
    left = torch.floor(placement[:, 1] * (width - box_w + 1)).long()
    top = torch.where(any_fit, top, (height - box_h) // 2)
    left = torch.where(any_fit, left, (width - box_w) // 2)
    return torch.stack([top, left, box_h, box_w], dim=1)


def _fallback_box(height: int, width: int) -> tuple[int, int]:
    """(box height, box width) of torchvision's central fallback crop."""
    in_ratio = width / height
    if in_ratio < RATIO[0]:
        return round(width / RATIO[0]), width
    if in_ratio > RATIO[1]:
        return height, round(height * RATIO[1])
    return height, width


def _axis_samples(start: torch.Tensor, length: torch.Tensor, out_size: int, offset: int,
                  total: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinear taps along one axis: (low index, high index, weight of high), each [B,out].

    Output pixel ``o`` reads the crop ``[start, start + length)`` enlarged to ``total``
    pixels at position ``o + offset``: source ``(o + offset + 0.5) * length / total - 0.5``
    (pixel centres), clamped to the crop so that its edge pixels repeat.
    """
    position = torch.arange(out_size, dtype=torch.float32, device=start.device) + offset + 0.5
    length_f = length.to(torch.float32)[:, None]
    source = (position[None, :] * length_f / total - 0.5).clamp(min=0.0)
    low = source.floor()
    weight = source - low
    low = low.long()
    high = torch.minimum(low + 1, length[:, None] - 1)
    return start[:, None] + low, start[:, None] + high, weight


def resample(images: torch.Tensor, rows: tuple, columns: tuple) -> torch.Tensor:
    """uint8 [B,C,H,W] -> uint8 [B,C,R,S] by separable bilinear interpolation.

    ``rows``/``columns``: :func:`_axis_samples` results (low, high, weight), [B,R] / [B,S].
    """
    batch, channels, height, width = images.shape
    row_low, row_high, row_weight = rows
    column_low, column_high, column_weight = columns
    pixels = images.float()

    def take_rows(index: torch.Tensor) -> torch.Tensor:   # [B,R] -> [B,C,R,W]
        return pixels.gather(2, index[:, None, :, None].expand(batch, channels, -1, width))

    top, bottom = take_rows(row_low), take_rows(row_high)
    vertical = torch.lerp(top, bottom, row_weight[:, None, :, None])

    def take_columns(index: torch.Tensor) -> torch.Tensor:  # [B,S] -> [B,C,R,S]
        return vertical.gather(3, index[:, None, None, :].expand(batch, channels,
                                                                 vertical.shape[2], -1))

    left, right = take_columns(column_low), take_columns(column_high)
    result = torch.lerp(left, right, column_weight[:, None, None, :])
    return result.round_().clamp_(0, 255).to(torch.uint8)


def crop_resize(images: torch.Tensor, boxes: torch.Tensor, size: int,
                flips: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 [B,C,H,W] -> uint8 [B,C,size,size]: box ``boxes[b]`` (top, left, height, width)
    of image ``b`` enlarged bilinearly to ``size`` x ``size``, mirrored where ``flips[b]``."""
    boxes = boxes.to(images.device)
    rows = _axis_samples(boxes[:, 0], boxes[:, 2], size, 0, size)
    columns = _axis_samples(boxes[:, 1], boxes[:, 3], size, 0, size)
    if flips is not None:
        # A mirrored crop reads its columns right to left: the same taps, reversed.
        mirrored = flips.to(images.device)[:, None]
        columns = tuple(torch.where(mirrored, part.flip(1), part) for part in columns)
    return resample(images, rows, columns)


def earlier_train_augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """RandomResizedCrop(size) + RandomHorizontalFlip() of a uint8 [B,C,H,W] batch (H = W = size).

    Boxes and flips come from ``generator`` (CPU), so the result does not depend on the device.
    """
    batch, _, height, width = images.shape
    boxes = resized_crop_boxes(batch, height, width, generator)
    flips = torch.randint(0, 2, (batch,), generator=generator).bool()
    return crop_resize(images, boxes, height, flips)


def earlier_test_view(images: torch.Tensor) -> torch.Tensor:
    """Resize(size + 8) + CenterCrop(size) of a uint8 [B,C,size,size] batch, as uint8."""
    batch, _, size, _ = images.shape
    enlarged = size + TEST_RESIZE_MARGIN
    # CenterCrop's offset into the enlarged image: round((enlarged - size) / 2).
    offset = int(round(TEST_RESIZE_MARGIN / 2.0))
    start = torch.zeros(batch, dtype=torch.long, device=images.device)
    length = torch.full((batch,), size, dtype=torch.long, device=images.device)
    axis = _axis_samples(start, length, size, offset, enlarged)
    return resample(images, axis, axis)
