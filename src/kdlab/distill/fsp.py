"""Flow of solution procedure (Yim et al., CVPR 2017), as RepDistiller's
``distiller_zoo/FSP.py`` and its init stage (``helper/pretrain.py``) compute it.

The FSP matrix of two consecutive stages is the Gram matrix between their channels, averaged
over positions (the larger map average-pooled to the smaller's size first). RepDistiller's
pairs run over ``feat[:-1]``, which starts with the stem's output; kdlab's ``Features.stages``
have no stem, so the pairs here are consecutive pairs of the stages (one pair fewer: for the
CIFAR ResNets (layer1, layer2), (layer2, layer3), without (stem, layer1)). As in the reference,
FSP acts only in its init stage: the first ``init_epochs`` epochs train the student's stages
on it alone (the loop's partial stage, FitNets' hint stage's mechanism); afterwards the run
trains on the labels and the term is 0 (RepDistiller: ``loss_kd = 0`` for ``fsp``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..run import catalog
from ..run.errors import UserError
from . import register
from .base import Distiller, autocast_off


def fsp_matrices(stages: list[torch.Tensor]) -> list[torch.Tensor]:
    """Stage maps ``[B, C_i, H_i, W_i]`` -> per consecutive pair ``[B, C_i, C_{i+1}]``:
    ``G[b, j, k] = mean over positions of lower[b, j] · upper[b, k]``, the larger of the
    two maps average-pooled to the smaller's size."""
    matrices = []
    for lower, upper in zip(stages, stages[1:]):
        if lower.shape[2] > upper.shape[2]:
            lower = F.adaptive_avg_pool2d(lower, upper.shape[2:])
        elif lower.shape[2] < upper.shape[2]:
            upper = F.adaptive_avg_pool2d(upper, lower.shape[2:])
        positions = lower.shape[2] * lower.shape[3]
        matrices.append(torch.bmm(lower.flatten(2), upper.flatten(2).transpose(1, 2))
                        / positions)
    return matrices


@register
class FSPDistiller(Distiller):
    """``fsp = weight · Σ_pairs mean((G_s - G_t)²)`` (RepDistiller: the init stage sums its
    pairs' losses unweighted); needs as many stages of the same channels in both models."""

    name = "fsp"
    citation = ("Yim, Joo, Bae & Kim (2017), A Gift from Knowledge Distillation: Fast "
                "Optimization, Network Minimization and Transfer Learning, CVPR 2017")
    defaults = catalog.method_defaults("fsp")  # defaults and sources: kdlab/catalog.py

    def __init__(self, student, teacher, options) -> None:
        super().__init__(student, teacher, options)
        student_channels = [shape[0] for shape in student.stages]
        teacher_channels = [shape[0] for shape in teacher.stages]
        if student_channels != teacher_channels or len(student_channels) < 2:
            raise UserError(f"fsp: stage channels {student_channels} (student) and "
                            f"{teacher_channels} (teacher): expected the same channels at "
                            "every stage, two stages or more (RepDistiller's FSP)")
        self.weight = float(self.options["weight"])
        self.init_epochs = int(self.options["init_epochs"])
        self.stage_count = len(student_channels)

    def partial_stage(self, epoch: int) -> int | None:
        """The init stage: the stages (not the classifier) train on FSP alone."""
        return self.stage_count - 1 if epoch < self.init_epochs else None

    def forward(self, student, teacher, batch):
        """Post-ReLU stage maps -> ``{"fsp": scalar}`` (0 after the init stage)."""
        if batch.epoch >= self.init_epochs:
            return {"fsp": student.logits.new_zeros((), dtype=torch.float32)}
        with autocast_off(student):
            student_fsp = fsp_matrices([stage.float() for stage in student.stages])
            teacher_fsp = fsp_matrices([stage.float().detach() for stage in teacher.stages])
            total = sum((s - t).pow(2).mean() for s, t in zip(student_fsp, teacher_fsp))
            return {"fsp": self.weight * total}
