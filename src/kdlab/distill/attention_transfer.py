"""Attention transfer (Zagoruyko & Komodakis 2017): match the spatial attention maps of the
student and the teacher after each layer group."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..run import catalog
from ..run.errors import UserError
from . import register
from .base import Distiller, autocast_off, stage_positions


def parse_layers(text: str, method: str, student, teacher) -> list[int]:
    """``"layer1,layer3"`` -> ``[0, 2]``: positions in both models' stages (see
    :func:`~kdlab.distill.base.stage_positions`); the pair must have as many stages."""
    if len(student.stages) != len(teacher.stages):
        raise UserError(f"method {method!r} pairs stages by position: the student has "
                        f"{len(student.stages)} stages, the teacher {len(teacher.stages)}; "
                        "expected the same number")
    return stage_positions(text, len(student.stages), "layers", method)


def match_spatial_size(student: torch.Tensor, teacher: torch.Tensor):
    """Average-pool the larger of two ``[B, C, H, W]`` maps to the other's size (RepDistiller)."""
    if student.shape[2:] == teacher.shape[2:]:
        return student, teacher
    if student.shape[2] > teacher.shape[2]:
        return F.adaptive_avg_pool2d(student, teacher.shape[2:]), teacher
    return student, F.adaptive_avg_pool2d(teacher, student.shape[2:])


def attention_map(feature: torch.Tensor, p: float) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, H·W]``: channel mean of ``f^p``, L2-normalised over H·W
    (``F.normalize`` divides by ``max(‖·‖, 1e-12)``, so an all-zero map gives 0, not NaN)."""
    return F.normalize(feature.pow(p).mean(dim=1).flatten(1), dim=1)


@register
class AttentionTransferDistiller(Distiller):
    """``attention = weight · Σ_layers mean_{B·H·W} (Q_s − Q_t)²`` (RepDistiller ``Attention``,
    mdistiller ``AT``: ``(at(s) − at(t)).pow(2).mean()`` per layer, summed)."""

    name = "attention_transfer"
    citation = ("Zagoruyko & Komodakis (2017), Paying More Attention to Attention: Improving the "
                "Performance of Convolutional Neural Networks via Attention Transfer, ICLR 2017, "
                "arXiv:1612.03928")
    defaults = catalog.method_defaults("attention_transfer")  # defaults and sources: kdlab/catalog.py

    def __init__(self, student, teacher, options) -> None:
        super().__init__(student, teacher, options)
        self.layer_indices = parse_layers(self.options["layers"], self.name, student, teacher)
        self.p = float(self.options["p"])
        if not self.p >= 1:
            # f^p with p < 1 has an infinite slope at 0, and ReLU maps are 0 in many places.
            raise UserError(f"option p={self.p} for method {self.name!r}: expected a number >= 1")
        self.weight = float(self.options["weight"])

    def forward(self, student, teacher, batch):
        """Stage maps ``[B, C, H, W]`` -> ``{"attention": scalar}``."""
        with autocast_off(student):
            total = student.logits.new_zeros((), dtype=torch.float32)
            for index in self.layer_indices:
                student_map, teacher_map = match_spatial_size(
                    student.stages[index].float(), teacher.stages[index].float().detach())
                difference = (attention_map(student_map, self.p)
                              - attention_map(teacher_map, self.p))
                total = total + difference.pow(2).mean()
            return {"attention": self.weight * total}
