"""FitNets (Romero et al. 2015): a regressor maps the student's guided layer onto the
teacher's hint layer; the student learns to make that regression small.

Two forms. By default (``hint_epochs = 0``) the hint is trained jointly with the
cross-entropy from the first epoch, ``(1 - alpha) CE + alpha hint``, as the earlier research
code and RepDistiller do. The paper trains in two stages: first the student up to the guided
layer and the regressor on the hint loss alone, then the whole student on the KD objective.
``hint_epochs = N`` gives that form: the run's first N epochs are stage 1 (only the stem,
the stages up to ``student_layer`` and the regressor are updated; the later stages and the
classifier are untouched, their BatchNorm statistics included), the remaining epochs train
the normal objective; the learning-rate schedule runs over all epochs.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import nn

from ..run import catalog
from ..run.errors import UserError
from . import register
from .base import Distiller, autocast_off, stage_position


def regressor_conv(student_shape, teacher_shape) -> nn.Module:
    """The convolution that maps a guided map ``student_shape = (C_s, H_s, W_s)`` to the hint's
    ``teacher_shape = (C_t, H_t, W_t)``, as RepDistiller's ``ConvReg`` chooses it:

    * same size: 1×1 conv (ConvReg's ``kernel 1 + H_s - H_t`` = 1), stride 1;
    * student larger: 3×3 conv, padding 1, stride ``s = ceil(H_s / H_t)`` (ConvReg: stride 2
      when ``H_s = 2 H_t``; the ResNets downsample the same way, so ``(H_s - 1) // s + 1``
      equals ``H_t`` for their odd sizes too);
    * student half the size: 4×4 transposed conv, stride 2, padding 1 (ConvReg).
    """
    s_channels, s_height, s_width = student_shape
    t_channels, t_height, t_width = teacher_shape
    if (s_height, s_width) == (t_height, t_width):
        return nn.Conv2d(s_channels, t_channels, kernel_size=1, stride=1)
    if s_height > t_height and s_width > t_width:
        stride = math.ceil(s_height / t_height)
        if ((s_height - 1) // stride + 1, (s_width - 1) // stride + 1) == (t_height, t_width):
            return nn.Conv2d(s_channels, t_channels, kernel_size=3, stride=stride, padding=1)
    if (2 * s_height, 2 * s_width) == (t_height, t_width):
        return nn.ConvTranspose2d(s_channels, t_channels, kernel_size=4, stride=2, padding=1)
    raise UserError(f"fitnets: cannot regress a {s_height}x{s_width} guided map onto a "
                    f"{t_height}x{t_width} hint: expected the same size, an integer "
                    "downsampling, or the student map at half the hint's size")


@register
class FitNetsDistiller(Distiller):
    """``hint = weight · mean((R(guided_student) - hint_teacher)²)`` over all B·C·H·W elements
    (RepDistiller ``HintLoss`` = ``nn.MSELoss()``), R = conv (size-matching) -> BN [-> ReLU]."""

    name = "fitnets"
    citation = ("Romero et al. (2015), FitNets: Hints for Thin Deep Nets, ICLR 2015, "
                "arXiv:1412.6550")
    defaults = catalog.method_defaults("fitnets")  # defaults and sources: kdlab/catalog.py

    def __init__(self, student, teacher, options) -> None:
        super().__init__(student, teacher, options)
        self.student_index = stage_position(self.options["student_layer"], len(student.stages),
                                            "student_layer", self.name)
        self.hint_index = stage_position(self.options["hint_layer"], len(teacher.stages),
                                         "hint_layer", self.name)
        student_shape = tuple(student.stages[self.student_index])
        teacher_shape = tuple(teacher.stages[self.hint_index])
        layers = [regressor_conv(student_shape, teacher_shape), nn.BatchNorm2d(teacher_shape[0])]
        if self.options["regressor_relu"]:
            layers.append(nn.ReLU())
        self.regressor = nn.Sequential(*layers)
        self.weight = float(self.options["weight"])
        self.hint_epochs = int(self.options["hint_epochs"])  # >= 0: checked by the catalog

    def partial_stage(self, epoch: int) -> int | None:
        """Stage 1 (``epoch < hint_epochs``): train up to the guided layer on the hint alone."""
        return self.student_index if epoch < self.hint_epochs else None

    def forward(self, student, teacher, batch):
        """Feature maps ``[B, C, H, W]`` -> ``{"hint": scalar}``."""
        with autocast_off(student):
            regressed = self.regressor(student.stages[self.student_index].float())
            hint = teacher.stages[self.hint_index].float().detach()
            return {"hint": self.weight * F.mse_loss(regressed, hint)}

