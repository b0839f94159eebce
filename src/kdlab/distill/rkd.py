"""Relational knowledge distillation (Park et al. 2019): transfer the geometry of the batch
(pairwise distances and triplet angles) of the pooled last-stage embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..run import catalog
from ..run.errors import UserError
from . import register
from .base import Distiller, autocast_off

# Squared distances are clamped here before the square root (RepDistiller / lenscloth pdist):
# a duplicate pair gets distance 1e-6 and a zero gradient instead of sqrt's infinite slope.
SQUARED_DISTANCE_FLOOR = 1e-12
ANGLE_FORMS = ("triplet", "pairwise_cosine")


def embedding(feature: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` -> global-average-pooled ``[B, C]`` (``[B, D]`` passes through)."""
    return feature.mean(dim=(2, 3)) if feature.dim() == 4 else feature.flatten(1)


def normalised_distances(points: torch.Tensor) -> torch.Tensor:
    """``[B, D]`` -> ``[B, B]`` Euclidean distances, zero diagonal, divided by the mean of the
    ``B(B−1)`` off-diagonal entries (equal to the references' mean of the positive entries,
    since the floor keeps every off-diagonal entry positive)."""
    batch = points.shape[0]
    differences = points.unsqueeze(0) - points.unsqueeze(1)
    # Differences rather than the Gram-matrix expansion: exact zeros for duplicates and no
    # cancellation error for nearby points.
    squared = differences.pow(2).sum(dim=2).clamp(min=SQUARED_DISTANCE_FLOOR)
    off_diagonal = ~torch.eye(batch, dtype=torch.bool, device=points.device)
    distances = squared.sqrt() * off_diagonal
    mean = distances.sum() / max(batch * (batch - 1), 1)
    return distances / mean.clamp(min=SQUARED_DISTANCE_FLOOR)


def triplet_angles(points: torch.Tensor) -> torch.Tensor:
    """``[B, D]`` -> ``[B, B, B]``: entry ``(j, i, k)`` is the cosine of the angle at vertex
    ``j`` between ``i`` and ``k``, ``⟨e(i−j), e(k−j)⟩`` with ``e`` the unit vector; a zero
    difference vector (``i = j``, duplicates) gives cosine 0 and no gradient."""
    differences = points.unsqueeze(0) - points.unsqueeze(1)          # [j, i] = x_i − x_j
    norms = differences.norm(dim=2, keepdim=True)
    nonzero = norms > 0
    # Unit vectors with a masked division: for an exact zero vector F.normalize would divide
    # by 1e-12 and pass a gradient of ~1e12 back; here it is exactly zero.
    units = torch.where(nonzero, differences / torch.where(nonzero, norms, torch.ones_like(norms)),
                        torch.zeros_like(differences))
    return torch.bmm(units, units.transpose(1, 2))


def pairwise_cosines(points: torch.Tensor) -> torch.Tensor:
    """``[B, D]`` -> ``[B, B]`` cosine similarities of the embeddings themselves (the earlier
    round's simplified "angle": O(B²) instead of O(B³))."""
    units = F.normalize(points, dim=1)
    return units @ units.t()


@register
class RKDDistiller(Distiller):
    """``rkd_distance = weight · distance_weight · mean_{B²} Huber(ψ_D(s), ψ_D(t))``,
    ``rkd_angle = weight · angle_weight · mean_{B³} Huber(ψ_A(s), ψ_A(t))`` (smooth L1 with
    β = 1, mean over all entries, as RepDistiller ``RKDLoss`` and lenscloth ``RkdDistance`` /
    ``RKdAngle``), on the GAP-pooled last-stage embeddings."""

    name = "rkd"
    citation = ("Park, Kim, Lu & Cho (2019), Relational Knowledge Distillation, CVPR 2019, "
                "arXiv:1904.05068")
    defaults = catalog.method_defaults("rkd")  # defaults and sources: kdlab/catalog.py

    def __init__(self, student, teacher, options) -> None:
        super().__init__(student, teacher, options)
        if self.options["angle"] not in ANGLE_FORMS:
            raise UserError(f"option angle={self.options['angle']!r} for method 'rkd': "
                            f"expected one of {', '.join(ANGLE_FORMS)}")
        self.angle_form = self.options["angle"]
        self.distance_weight = float(self.options["weight"]) * float(self.options["distance_weight"])
        self.angle_weight = float(self.options["weight"]) * float(self.options["angle_weight"])

    def forward(self, student, teacher, batch):
        """Last stage maps ``[B, C, H, W]`` -> ``{"rkd_distance": scalar, "rkd_angle": scalar}``."""
        with autocast_off(student):
            student_map, teacher_map = student.stages[-1], teacher.stages[-1]
            student = embedding(student_map.float())
            with torch.no_grad():
                teacher = embedding(teacher_map.float())
            terms = {}
            terms["rkd_distance"] = self.distance_weight * F.smooth_l1_loss(
                normalised_distances(student), _no_grad(normalised_distances, teacher))
            relation = triplet_angles if self.angle_form == "triplet" else pairwise_cosines
            terms["rkd_angle"] = self.angle_weight * F.smooth_l1_loss(
                relation(student), _no_grad(relation, teacher))
            return terms


def _no_grad(function, tensor):
    with torch.no_grad():
        return function(tensor)
