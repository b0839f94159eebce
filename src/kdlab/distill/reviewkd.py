"""Knowledge review (Chen, Liu, Zhao & Jia, CVPR 2021): each teacher stage is matched not by
the student's stage alone but by a fusion of that stage with every deeper one (the review
path), built deepest first by attention-based fusion (ABF) modules, and compared by the
hierarchical context loss (HCL): the MSE at full size and at pyramid levels 4, 2 and 1.

As mdistiller's ``ReviewKD.py``: the student's stages (after their ReLU; ``student_preact``
for before) and its pooled vector as a 1×1 map, the teacher's stages before their ReLU and
its pooled vector; the deepest level (the pooled vector) has no fusion; the loss rises
linearly over ``warmup_epochs``. Where mdistiller reads each pair's channels and sizes from
its configs, they come here from both models' :class:`FeatureShapes`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..run import catalog
from . import register
from .base import BatchContext, Distiller
from .dkd import warmup_factor
from .vid import paired_stages

# HCL's pyramid: the map average-pooled to each side below its own, each level weighing half
# the previous one (mdistiller / the authors' hcl).
PYRAMID_SIDES = (4, 2, 1)


def hierarchical_context_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` twice -> scalar: ``(MSE + Σ_k w_k MSE_k) / (1 + Σ_k w_k)`` over the
    pyramid sides ``k`` in 4, 2, 1 smaller than the student's height ``H``, both maps
    average-pooled to ``k×k``, ``w`` = 1/2, 1/4, 1/8 in the order the sides are used."""
    loss = F.mse_loss(student, teacher)
    level_weight, total_weight = 1.0, 1.0
    for side in PYRAMID_SIDES:
        if side >= student.shape[2]:
            continue
        level_weight /= 2.0
        loss = loss + level_weight * F.mse_loss(F.adaptive_avg_pool2d(student, side),
                                                F.adaptive_avg_pool2d(teacher, side))
        total_weight += level_weight
    return loss / total_weight


class AttentionFusion(nn.Module):
    """One ABF level. Student map ``[B, C_in, h, w]`` -> 1×1 conv + BN to ``C_mid``; where
    ``fuse``, the deeper level's fused map (upsampled, nearest, to ``h×w``) is mixed in by
    two per-pixel sigmoid weights from a 1×1 conv over both; the result, resized (nearest) to
    the teacher stage's size, is the level's fused map (passed to the next shallower level)
    and, through a 3×3 conv + BN to ``C_out``, its output."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int,
                 fuse: bool) -> None:
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False),
                                    nn.BatchNorm2d(mid_channels))
        self.output = nn.Sequential(nn.Conv2d(mid_channels, out_channels, 3, padding=1,
                                              bias=False),
                                    nn.BatchNorm2d(out_channels))
        self.attention = (nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid())
                          if fuse else None)
        # mdistiller / the authors: kaiming_uniform_(a=1) on both convolutions.
        nn.init.kaiming_uniform_(self.reduce[0].weight, a=1)
        nn.init.kaiming_uniform_(self.output[0].weight, a=1)

    def forward(self, student_map: torch.Tensor, deeper: torch.Tensor | None,
                output_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (output ``[B, C_out, *output_size]``, fused ``[B, C_mid, *output_size]``)."""
        fused = self.reduce(student_map)
        if self.attention is not None:
            deeper = F.interpolate(deeper, size=fused.shape[-2:], mode="nearest")
            weights = self.attention(torch.cat([fused, deeper], dim=1))
            fused = fused * weights[:, 0:1] + deeper * weights[:, 1:2]
        if tuple(fused.shape[-2:]) != tuple(output_size):
            fused = F.interpolate(fused, size=output_size, mode="nearest")
        return self.output(fused), fused


@register
class ReviewKDDistiller(Distiller):
    """``reviewkd = weight · r · Σ_levels HCL(ABF_level, teacher_level)`` with ``r`` the
    linear warm-up (:func:`~kdlab.distill.dkd.warmup_factor`). Levels, shallow to deep: the
    paired stages (the last ``min`` stages of each model) and the pooled vectors. ABF widths:
    in = the student level's channels, mid = ``min(max_mid_channels, student pooled width)``,
    out = the teacher level's channels."""

    name = "reviewkd"
    citation = ("Chen, Liu, Zhao & Jia (2021), Distilling Knowledge via Knowledge Review, "
                "CVPR 2021, arXiv:2104.09044")
    defaults = catalog.method_defaults("reviewkd")  # defaults and sources: kdlab/catalog.py

    def __init__(self, student, teacher, options) -> None:
        super().__init__(student, teacher, options)
        self.pairs = paired_stages(len(student.stages), len(teacher.stages))
        in_channels = [student.stages[s][0] for s, _ in self.pairs] + [student.pooled]
        out_channels = [teacher.stages[t][0] for _, t in self.pairs] + [teacher.pooled]
        self.output_sizes = [tuple(teacher.stages[t][1:]) for _, t in self.pairs] + [(1, 1)]
        mid_channels = min(int(self.options["max_mid_channels"]), student.pooled)
        deepest = len(in_channels) - 1
        # Shallow to deep; every level but the deepest fuses the deeper levels' result.
        self.fusions = nn.ModuleList(
            AttentionFusion(inputs, mid_channels, outputs, fuse=level < deepest)
            for level, (inputs, outputs) in enumerate(zip(in_channels, out_channels)))
        self.weight = float(self.options["weight"])
        self.warmup_epochs = int(self.options["warmup_epochs"])
        self.student_preact = bool(self.options["student_preact"])

    def reviewed(self, student) -> list[torch.Tensor]:
        """The ABF outputs, shallow to deep, each of its teacher level's shape."""
        maps = student.preact if self.student_preact else student.stages
        inputs = [maps[s].float() for s, _ in self.pairs]
        inputs.append(student.pooled.float()[:, :, None, None])
        outputs: list[torch.Tensor] = []
        deeper = None
        for level in reversed(range(len(inputs))):
            output, deeper = self.fusions[level](inputs[level], deeper, self.output_sizes[level])
            outputs.insert(0, output)
        return outputs

    def forward(self, student, teacher, batch: BatchContext):
        """Paired stages ``[B, C, H, W]`` and pooled ``[B, D]`` -> ``{"reviewkd": scalar}``."""
        with torch.autocast(student.logits.device.type, enabled=False):
            targets = [teacher.preact[t].float().detach() for _, t in self.pairs]
            targets.append(teacher.pooled.float().detach()[:, :, None, None])
            total = sum(hierarchical_context_loss(output, target)
                        for output, target in zip(self.reviewed(student), targets))
            scale = self.weight * warmup_factor(batch.epoch, self.warmup_epochs)
            return {"reviewkd": scale * total}
