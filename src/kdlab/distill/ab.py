"""Activation boundaries (Heo et al., AAAI 2019), as RepDistiller's ``distiller_zoo/AB.py``
and its init stage (``helper/pretrain.py``) compute it.

A connector maps each student stage's pre-ReLU maps onto the teacher's; an alternative
squared hinge of margin ``m`` pushes each connected value beyond ``-m`` where the teacher's
neuron is off (pre-activation <= 0) and beyond ``+m`` where it is on. As in the reference, AB
acts only in its init stage: the run's first ``init_epochs`` epochs train the student's
stages and the connectors on this loss alone (the classifier untouched: the loop's partial
stage, FitNets' hint stage's mechanism); afterwards the run trains on the labels and the
method's term is 0 (RepDistiller: ``loss_kd = 0`` for ``abound``). Unlike the reference,
whose 30 init epochs come before the 240 of training with their own optimizer, kdlab's init
epochs are the first of the run's epochs, under its learning-rate schedule.
"""

from __future__ import annotations

import torch
from torch import nn

from ..run import catalog
from ..run.errors import UserError
from . import register
from .base import Distiller, autocast_off
from .fitnets import regressor_conv

# RepDistiller's ABLoss divides each stage's sum by the batch size, then scales it by 3/1000.
STAGE_SCALE = 3.0 / 1000.0


def alternative_l2(source: torch.Tensor, target: torch.Tensor, margin: float) -> torch.Tensor:
    """``[B, C, H, W]`` connected student and teacher pre-activations -> scalar sum of
    ``(s + m)² [s > -m and t <= 0] + (s - m)² [s <= m and t > 0]``."""
    off = ((source > -margin) & (target <= 0)).float()
    on = ((source <= margin) & (target > 0)).float()
    return ((source + margin) ** 2 * off + (source - margin) ** 2 * on).sum()


@register
class ActivationBoundariesDistiller(Distiller):
    """``ab = weight · Σ_i 2^(i-n+1) · alt_l2(C_i(s_i), t_i) / B · 3/1000`` over the n stages'
    pre-ReLU maps (``Features.preact``); ``C_i`` identity where the shapes agree, else conv ->
    BN (RepDistiller ``Connector``: ``ConvReg(use_relu=False)``)."""

    name = "ab"
    citation = ("Heo, Lee, Yun & Choi (2019), Knowledge Transfer via Distillation of "
                "Activation Boundaries Formed by Hidden Neurons, AAAI 2019, arXiv:1811.03233")
    defaults = catalog.method_defaults("ab")  # defaults and sources: kdlab/catalog.py

    def __init__(self, student, teacher, options) -> None:
        super().__init__(student, teacher, options)
        if len(student.stages) != len(teacher.stages):
            raise UserError(f"ab: the student has {len(student.stages)} stages, the teacher "
                            f"{len(teacher.stages)}: expected as many (each student stage "
                            "learns the boundaries of the teacher's at its position)")
        self.connectors = nn.ModuleList(
            nn.Identity() if tuple(s) == tuple(t) else nn.Sequential(
                regressor_conv(tuple(s), tuple(t)), nn.BatchNorm2d(t[0]))
            for s, t in zip(student.stages, teacher.stages))
        count = len(student.stages)
        self.stage_weights = [2.0 ** (index - count + 1) for index in range(count)]
        self.margin = float(self.options["margin"])
        self.weight = float(self.options["weight"])
        self.init_epochs = int(self.options["init_epochs"])

    def partial_stage(self, epoch: int) -> int | None:
        """The init stage: the stages (not the classifier) train on AB alone."""
        return len(self.stage_weights) - 1 if epoch < self.init_epochs else None

    def forward(self, student, teacher, batch):
        """Pre-ReLU maps ``[B, C, H, W]`` per stage -> ``{"ab": scalar}`` (0 after the init
        stage)."""
        if batch.epoch >= self.init_epochs:
            return {"ab": student.logits.new_zeros((), dtype=torch.float32)}
        with autocast_off(student):
            size = student.logits.shape[0]
            total = 0.0
            for connector, stage_weight, source, target in zip(
                    self.connectors, self.stage_weights, student.preact, teacher.preact):
                connected = connector(source.float())
                total = total + stage_weight * alternative_l2(
                    connected, target.float().detach(), self.margin) / size * STAGE_SCALE
            return {"ab": self.weight * total}
