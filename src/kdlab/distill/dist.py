"""DIST (Huang, You, Wang, Qian & Xu, NeurIPS 2022): instead of matching the teacher's
probabilities exactly, the student keeps their relations — the Pearson correlation of each
sample's class probabilities (inter-class) and of each class's probabilities across the batch
(intra-class)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..run import catalog
from ..run.errors import UserError
from . import register
from .base import BatchContext, Distiller

# cosine_similarity's floor on the product of norms (the reference code's and torchdistill's).
EPSILON = 1e-8


def mean_pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[N, M]`` twice -> the mean over the N rows of the Pearson correlation of row i of
    ``a`` with row i of ``b`` (cosine of the centred rows)."""
    return F.cosine_similarity(a - a.mean(dim=1, keepdim=True),
                               b - b.mean(dim=1, keepdim=True), dim=1, eps=EPSILON).mean()


@register
class DISTDistiller(Distiller):
    """With ``p = softmax(z / τ)`` ``[B, K]``: ``dist_inter = w · β · τ² · (1 − ρ̄_rows)``,
    ``dist_intra = w · γ · τ² · (1 − ρ̄_columns)``, ``ρ̄`` the mean Pearson correlation of the
    student's and teacher's rows (each sample over classes) or columns (each class over the
    batch) (the authors' ``DIST`` loss, torchdistill ``DISTLoss``)."""

    name = "dist"
    citation = ("Huang, You, Wang, Qian & Xu (2022), Knowledge Distillation from A Stronger "
                "Teacher, NeurIPS 2022, arXiv:2205.10536")
    defaults = catalog.method_defaults("dist")  # defaults and sources: kdlab/catalog.py

    def __init__(self, student, teacher, options) -> None:
        super().__init__(student, teacher, options)
        if student.classes != teacher.classes:
            raise UserError(f"dist: student has {student.classes} classes, teacher "
                            f"{teacher.classes}: expected the same class count")
        self.weight = float(self.options["weight"])
        self.beta = float(self.options["beta"])
        self.gamma = float(self.options["gamma"])
        self.tau = float(self.options["tau"])

    def forward(self, student, teacher, batch: BatchContext):
        """Logits ``[B, K]`` -> ``{"dist_inter": scalar, "dist_intra": scalar}``."""
        with torch.autocast(student.logits.device.type, enabled=False):
            student_p = F.softmax(student.logits.float() / self.tau, dim=1)
            teacher_p = F.softmax(teacher.logits.float().detach() / self.tau, dim=1)
            scale = self.weight * self.tau ** 2
            inter = 1 - mean_pearson(student_p, teacher_p)
            intra = 1 - mean_pearson(student_p.t(), teacher_p.t())
            return {"dist_inter": scale * self.beta * inter,
                    "dist_intra": scale * self.gamma * intra}
