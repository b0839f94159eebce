"""Neuron selectivity transfer (Huang & Wang 2017): match the distributions of the channels'
spatial activation patterns by a squared MMD with a polynomial kernel."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..run import catalog
from . import register
from .attention_transfer import match_spatial_size, parse_layers
from .base import Distiller, autocast_off


def polynomial_kernel_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over the ``B × C_a × C_b`` entries of ``k(x, y) = (xᵀy)²`` for ``a [B, C_a, N]``
    and ``b [B, C_b, N]`` (kernel between channels of the same sample)."""
    return torch.bmm(a, b.transpose(1, 2)).pow(2).mean()


def squared_mmd(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Squared MMD between the L2-normalised channel vectors of ``[B, C, H, W]`` maps:
    ``mean k(s,s) + mean k(t,t) − 2 mean k(s,t)`` (RepDistiller ``NSTLoss``, full form)."""
    student = F.normalize(student.flatten(2), dim=2)
    teacher = F.normalize(teacher.flatten(2), dim=2)
    return (polynomial_kernel_mean(student, student) + polynomial_kernel_mean(teacher, teacher)
            - 2 * polynomial_kernel_mean(student, teacher))


@register
class NSTDistiller(Distiller):
    """``nst = weight · Σ_layers MMD²(student channels, teacher channels)``. (The earlier round
    used an MSE between Gram matrices instead; that is not the paper's loss.)"""

    name = "nst"
    citation = ("Huang & Wang (2017), Like What You Like: Knowledge Distill via Neuron "
                "Selectivity Transfer, arXiv:1707.01219")
    defaults = catalog.method_defaults("nst")  # defaults and sources: kdlab/catalog.py

    def __init__(self, student, teacher, options) -> None:
        super().__init__(student, teacher, options)
        self.layer_indices = parse_layers(self.options["layers"], self.name, student, teacher)
        self.weight = float(self.options["weight"])

    def forward(self, student, teacher, batch):
        """Stage maps ``[B, C, H, W]`` -> ``{"nst": scalar}``."""
        with autocast_off(student):
            total = student.logits.new_zeros((), dtype=torch.float32)
            for index in self.layer_indices:
                student_map, teacher_map = match_spatial_size(
                    student.stages[index].float(), teacher.stages[index].float().detach())
                total = total + squared_mmd(student_map, teacher_map)
            return {"nst": self.weight * total}
