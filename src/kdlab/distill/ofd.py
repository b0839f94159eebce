"""Overhaul of feature distillation (Heo et al., ICCV 2019): distil each stage *before* its
ReLU, through a 1×1 conv + BN connector on the student, with a partial L2 distance that
ignores what the ReLU would erase anyway, against a teacher whose negative responses are
lifted to a per-channel margin taken from its batch-norm statistics.

As mdistiller's ``OFD.py`` (itself following the authors' code): every paired stage's
pre-ReLU map (``Features.preact``), the teacher's average-pooled to the student's size, the
last stage weighted 1 and each earlier one half the next; the whole scaled by ``weight``
(0.001). One difference from mdistiller: its OFD distiller switches the teacher to training
mode (batch statistics in the teacher's BN), kdlab keeps the teacher in evaluation mode as
for every method. The margins depend only on the BN's affine weight and bias, not on its
running statistics, so they are the same either way.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..run import catalog
from ..run.errors import UserError
from . import register
from .base import BatchContext, Distiller
from .vid import paired_stages

# Below this probability of a negative response the expectation is ill-conditioned and the
# reference takes −3σ instead (mdistiller / the authors' get_margin_from_BN).
NEGATIVE_PROBABILITY_FLOOR = 0.001


def margins_from_batchnorm(batchnorm: nn.BatchNorm2d) -> torch.Tensor:
    """``[C]``: per channel, the expectation of the BN's output ``x ~ N(β, γ²)`` given
    ``x < 0``, ``m = β − |γ| φ(β/|γ|) / Φ(−β/|γ|)``, or ``−3|γ|`` where ``Φ(−β/|γ|) ≤ 0.001``.
    A channel with ``γ = 0`` (a constant ``β``) gets ``min(β, 0)``, the formula's limit.
    Computed in float64 from the affine parameters only (not the running statistics)."""
    channels = batchnorm.num_features
    gamma = (batchnorm.weight.detach() if batchnorm.weight is not None
             else torch.ones(channels))
    beta = (batchnorm.bias.detach() if batchnorm.bias is not None
            else torch.zeros(channels))
    scale, shift = gamma.double().abs().cpu(), beta.double().cpu()
    safe_scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    standardised = shift / safe_scale
    negative_probability = torch.special.ndtr(-standardised)
    density = torch.exp(-standardised ** 2 / 2) / math.sqrt(2 * math.pi)
    expectation = shift - safe_scale * density / negative_probability.clamp(min=1e-300)
    margin = torch.where(negative_probability > NEGATIVE_PROBABILITY_FLOOR, expectation,
                         -3 * scale)
    return torch.where(scale > 0, margin, shift.clamp(max=0)).float()


def partial_l2(student: torch.Tensor, teacher: torch.Tensor,
               margin: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` twice, margin ``[1, C, 1, 1]`` -> scalar: the squared distance from
    the student to ``max(teacher, margin)``, left out where both are ≤ 0 and the student is
    below (the ReLU would give both 0), summed over C, H, W and averaged over the batch."""
    lifted = teacher <= margin
    distance = torch.where(lifted, student - margin, student - teacher).pow(2)
    counted = torch.where(lifted, student > margin, (teacher > 0) | (student > teacher))
    return (distance * counted).sum() / student.shape[0]


class Connector(nn.Sequential):
    """Student map ``[B, C_s, H, W]`` -> ``[B, C_t, H, W]``: a ``k×k`` conv without bias
    (He-normal over ``k²·C_t``, as mdistiller) and a BN."""

    def __init__(self, student_channels: int, teacher_channels: int, kernel_size: int) -> None:
        convolution = nn.Conv2d(student_channels, teacher_channels, kernel_size,
                                padding=(kernel_size - 1) // 2, bias=False)
        nn.init.normal_(convolution.weight, 0.0,
                        math.sqrt(2.0 / (kernel_size * kernel_size * teacher_channels)))
        super().__init__(convolution, nn.BatchNorm2d(teacher_channels))


@register
class OFDDistiller(Distiller):
    """``ofd = weight · Σ_i partial_l2(C_i(s_i), pool(t_i), m_i) / 2^(n−1−i)`` over the ``n``
    paired stages' pre-ReLU maps (the last ``n = min`` stages of each model), ``C_i`` the
    connector, ``m_i`` the teacher stage's margins (buffers ``margin_i``, set by
    :meth:`attach_teacher` from the teacher's ``preact_batchnorms()``, saved with the
    checkpoint)."""

    name = "ofd"
    citation = ("Heo, Kim, Yun, Park, Kwak & Choi (2019), A Comprehensive Overhaul of Feature "
                "Distillation, ICCV 2019, arXiv:1904.01866")
    defaults = catalog.method_defaults("ofd")  # defaults and sources: kdlab/catalog.py

    def __init__(self, student, teacher, options) -> None:
        super().__init__(student, teacher, options)
        kernel_size = int(self.options["kernel_size"])
        if kernel_size % 2 == 0:
            raise UserError(f"option kernel_size={kernel_size} for method 'ofd': expected an "
                            "odd number (the connector keeps the student's map size)")
        self.teacher_stage_count = len(teacher.stages)
        self.pairs = paired_stages(len(student.stages), len(teacher.stages))
        self.connectors = nn.ModuleList(
            Connector(student.stages[s][0], teacher.stages[t][0], kernel_size)
            for s, t in self.pairs)
        for index, (_, t) in enumerate(self.pairs):
            # NaN until attach_teacher: a forward without the teacher's margins is refused.
            self.register_buffer(f"margin_{index}",
                                 torch.full((1, teacher.stages[t][0], 1, 1), math.nan))
        self.margins_known = False
        self.register_load_state_dict_post_hook(self._mark_margins_loaded)
        self.weight = float(self.options["weight"])

    @staticmethod
    def _mark_margins_loaded(module, incompatible_keys) -> None:
        if not any(key.startswith("margin_") for key in incompatible_keys.missing_keys):
            module.margins_known = True

    def margin(self, index: int) -> torch.Tensor:
        """``[1, C_t, 1, 1]`` margins of the ``index``-th pair's teacher stage."""
        return getattr(self, f"margin_{index}")

    def attach_teacher(self, teacher: nn.Module) -> None:
        """Margins from ``teacher.preact_batchnorms()`` (one BN per stage)."""
        batchnorms = getattr(teacher, "preact_batchnorms", None)
        if batchnorms is None:
            raise UserError(f"ofd: the teacher ({type(teacher).__name__}) has no "
                            "preact_batchnorms(): expected a model family that names the BN "
                            "before each stage's last ReLU")
        batchnorms = list(batchnorms())
        if len(batchnorms) != self.teacher_stage_count:
            raise UserError(f"ofd: the teacher ({type(teacher).__name__}) gives "
                            f"{len(batchnorms)} pre-ReLU batch norms for "
                            f"{self.teacher_stage_count} stages: expected one per stage")
        for index, (_, t) in enumerate(self.pairs):
            buffer = self.margin(index)
            margins = margins_from_batchnorm(batchnorms[t])
            if margins.numel() != buffer.numel():
                raise UserError(f"ofd: the teacher's stage {t} batch norm has "
                                f"{margins.numel()} channels: expected {buffer.numel()}")
            buffer.copy_(margins.view_as(buffer))
        self.margins_known = True

    def forward(self, student, teacher, batch: BatchContext):
        """Paired ``preact`` maps ``[B, C, H, W]`` -> ``{"ofd": scalar}``."""
        if not self.margins_known:
            raise UserError("ofd: the teacher's margins are unset: expected attach_teacher("
                            "teacher) before the first step")
        with torch.autocast(student.logits.device.type, enabled=False):
            total = student.logits.new_zeros((), dtype=torch.float32)
            count = len(self.pairs)
            for index, ((s, t), connector) in enumerate(zip(self.pairs, self.connectors)):
                student_map = connector(student.preact[s].float())
                teacher_map = F.adaptive_avg_pool2d(teacher.preact[t].float().detach(),
                                                    student_map.shape[-2:])
                total = total + partial_l2(student_map, teacher_map,
                                           self.margin(index)) / 2 ** (count - 1 - index)
            return {"ofd": self.weight * total}
