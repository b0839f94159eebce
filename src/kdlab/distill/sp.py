"""Similarity-preserving distillation (Tung & Mori, ICCV 2019): the student's batch of
last-stage maps should have the same pairwise similarity pattern as the teacher's."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..run import catalog
from . import register
from .base import BatchContext, Distiller


def similarity_matrix(features: torch.Tensor) -> torch.Tensor:
    """``[B, ...]`` -> ``[B, B]``: the Gram matrix of the flattened samples with each row
    divided by its L2 norm (a zero row stays zero)."""
    flat = features.flatten(1)
    return F.normalize(flat @ flat.t(), dim=1)


@register
class SPDistiller(Distiller):
    """``sp = weight · ‖G_t − G_s‖²_F / B²`` with ``G`` the row-normalised Gram matrix of
    the last stage's maps (``stages[-1]``, after its ReLU: RepDistiller's ``feat[-2]``, the
    one group ``Similarity`` is given in train_student.py). Student and teacher maps may
    differ in channels and size: only the ``[B, B]`` matrices are compared."""

    name = "sp"
    citation = ("Tung & Mori (2019), Similarity-Preserving Knowledge Distillation, ICCV 2019, "
                "arXiv:1907.09682")
    defaults = catalog.method_defaults("sp")  # defaults and sources: kdlab/catalog.py

    def __init__(self, student, teacher, options) -> None:
        super().__init__(student, teacher, options)
        self.weight = float(self.options["weight"])

    def forward(self, student, teacher, batch: BatchContext):
        """``stages[-1]`` ``[B, C, H, W]`` of both -> ``{"sp": scalar}``."""
        student_map = student.stages[-1]
        with torch.autocast(student_map.device.type, enabled=False):
            student_similarity = similarity_matrix(student_map.float())
            with torch.no_grad():
                teacher_similarity = similarity_matrix(teacher.stages[-1].float())
            batch_size = student_map.shape[0]
            difference = teacher_similarity - student_similarity
            return {"sp": self.weight * difference.pow(2).sum() / batch_size ** 2}
