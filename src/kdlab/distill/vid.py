"""Variational information distillation (Ahn et al., CVPR 2019): maximise a variational lower
bound on the mutual information between teacher and student stages, i.e. minimise the
negative log-likelihood of each teacher map under a Gaussian whose mean a small network
predicts from the student's map and whose per-channel variance is learnt."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..run import catalog
from . import register
from .base import BatchContext, Distiller

# Added to the softplus variance (RepDistiller / the authors' code): the variance never reaches 0.
VARIANCE_FLOOR = 1e-5


def paired_stages(student_count: int, teacher_count: int) -> list[tuple[int, int]]:
    """(student stage, teacher stage) positions distilled: the last ``min`` stages of each,
    in order (mdistiller's ``_align_list``); for equal counts every stage with its
    namesake, as RepDistiller's ``feat[1:-1]``."""
    count = min(student_count, teacher_count)
    return [(student_count - count + i, teacher_count - count + i) for i in range(count)]


def matched_sizes(student_map: torch.Tensor, teacher_map: torch.Tensor):
    """The larger of the two maps average-pooled to the other's height and width
    (RepDistiller ``VIDLoss``)."""
    student_size, teacher_size = student_map.shape[-2:], teacher_map.shape[-2:]
    if student_size[0] > teacher_size[0]:
        student_map = F.adaptive_avg_pool2d(student_map, teacher_size)
    elif student_size[0] < teacher_size[0]:
        teacher_map = F.adaptive_avg_pool2d(teacher_map, student_size)
    return student_map, teacher_map


class VariationalRegressor(nn.Module):
    """Student map ``[B, C_s, H, W]`` -> predicted mean ``[B, C_t, H, W]`` (three 1×1
    convolutions without bias, ReLUs between, ``C_t`` hidden channels: RepDistiller's
    ``VIDLoss(s, t, t)``) and a per-channel variance ``softplus(log_scale) + 1e-5``,
    initialised to ``initial_variance``."""

    def __init__(self, student_channels: int, teacher_channels: int,
                 initial_variance: float) -> None:
        super().__init__()
        self.mean = nn.Sequential(
            nn.Conv2d(student_channels, teacher_channels, 1, bias=False), nn.ReLU(),
            nn.Conv2d(teacher_channels, teacher_channels, 1, bias=False), nn.ReLU(),
            nn.Conv2d(teacher_channels, teacher_channels, 1, bias=False))
        # softplus⁻¹(v − floor): the variance starts at initial_variance.
        start = math.log(math.expm1(initial_variance - VARIANCE_FLOOR))
        self.log_scale = nn.Parameter(torch.full((teacher_channels,), start))

    def variance(self) -> torch.Tensor:
        """``[C_t]``."""
        return F.softplus(self.log_scale) + VARIANCE_FLOOR


def gaussian_negative_log_likelihood(mean: torch.Tensor, variance: torch.Tensor,
                                     target: torch.Tensor) -> torch.Tensor:
    """Mean over all elements of ``0.5 · ((μ − t)² / σ² + log σ²)`` (the constant
    ``0.5 · log 2π`` left out, as the references do); ``variance`` ``[C]`` broadcasts over
    ``[B, C, H, W]``."""
    variance = variance.view(1, -1, 1, 1)
    return (0.5 * ((mean - target).pow(2) / variance + variance.log())).mean()


@register
class VIDDistiller(Distiller):
    """``vid = weight · Σ_stages NLL(t_i | R_i(s_i))`` over every paired stage (after its ReLU,
    RepDistiller's ``feat[1:-1]``: all three groups of the CIFAR ResNets), each with its own
    :class:`VariationalRegressor`."""

    name = "vid"
    citation = ("Ahn, Hu, Damianou, Lawrence & Dai (2019), Variational Information "
                "Distillation for Knowledge Transfer, CVPR 2019, arXiv:1904.05835")
    defaults = catalog.method_defaults("vid")  # defaults and sources: kdlab/catalog.py

    def __init__(self, student, teacher, options) -> None:
        super().__init__(student, teacher, options)
        self.pairs = paired_stages(len(student.stages), len(teacher.stages))
        initial_variance = float(self.options["initial_variance"])
        self.regressors = nn.ModuleList(
            VariationalRegressor(student.stages[s][0], teacher.stages[t][0], initial_variance)
            for s, t in self.pairs)
        self.weight = float(self.options["weight"])

    def forward(self, student, teacher, batch: BatchContext):
        """Paired ``stages`` ``[B, C, H, W]`` -> ``{"vid": scalar}``."""
        with torch.autocast(student.logits.device.type, enabled=False):
            total = student.logits.new_zeros((), dtype=torch.float32)
            for (s, t), regressor in zip(self.pairs, self.regressors):
                student_map, teacher_map = matched_sizes(student.stages[s].float(),
                                                         teacher.stages[t].float().detach())
                total = total + gaussian_negative_log_likelihood(
                    regressor.mean(student_map), regressor.variance(), teacher_map)
            return {"vid": self.weight * total}
