"""Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018): match the conditional
probability of each sample's neighbours, estimated with a cosine kernel on the pooled
features."""

from __future__ import annotations

import torch

from ..run import catalog
from . import register
from .base import BatchContext, Distiller

# The author's code (and RepDistiller's, torchdistill's) adds this to norms and probabilities.
EPSILON = 1e-7


def neighbour_probabilities(points: torch.Tensor) -> torch.Tensor:
    """``[B, D]`` -> ``[B, B]``: cosine similarities mapped to [0, 1] by ``(c + 1) / 2`` and
    each row divided by its sum (row i: how likely each sample is i's neighbour)."""
    # vector_norm's gradient at a zero vector is 0 (sqrt's would be 0/0).
    units = points / (torch.linalg.vector_norm(points, dim=1, keepdim=True) + EPSILON)
    kernel = (units @ units.t() + 1.0) / 2.0
    return kernel / kernel.sum(dim=1, keepdim=True)


@register
class PKTDistiller(Distiller):
    """``pkt = weight · mean_{B²} p_t · log((p_t + ε) / (p_s + ε))`` (ε = 1e-7; the mean is over
    all B² entries, as RepDistiller ``PKT`` and the author's code) on the pooled features
    (``pooled`` [B, D]: RepDistiller's ``feat[-1]``); student and teacher widths may differ."""

    name = "pkt"
    citation = ("Passalis & Tefas (2018), Learning Deep Representations with Probabilistic "
                "Knowledge Transfer, ECCV 2018, arXiv:1803.10837")
    defaults = catalog.method_defaults("pkt")  # defaults and sources: kdlab/catalog.py

    def __init__(self, student, teacher, options) -> None:
        super().__init__(student, teacher, options)
        self.weight = float(self.options["weight"])

    def forward(self, student, teacher, batch: BatchContext):
        """``pooled`` ``[B, D]`` of both -> ``{"pkt": scalar}``."""
        with torch.autocast(student.pooled.device.type, enabled=False):
            student_p = neighbour_probabilities(student.pooled.float())
            with torch.no_grad():
                teacher_p = neighbour_probabilities(teacher.pooled.float())
            divergence = teacher_p * torch.log((teacher_p + EPSILON) / (student_p + EPSILON))
            return {"pkt": self.weight * divergence.mean()}
