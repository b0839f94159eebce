"""Logit distillation (Hinton, Vinyals & Dean 2015): match the teacher's softened outputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..run import catalog
from ..run.errors import UserError
from . import register
from .base import Distiller, autocast_off

# Added to the standard deviation before dividing (Sun et al.'s reference code and torchdistill's
# LogitStdKDLoss): keeps a constant logit vector finite.
STANDARDIZE_EPSILON = 1e-7
# The variance is floored here before its square root: a constant logit vector (variance 0)
# then gets a zero gradient instead of sqrt's 0/0; above it the value is torch.std's.
VARIANCE_FLOOR = 1e-30


def standardize(logits: torch.Tensor) -> torch.Tensor:
    """``[B, K]`` -> the same logits z-scored per sample along the class axis,
    ``(z - mean) / (1e-7 + std)`` with the unbiased standard deviation (``torch.std``), as
    Sun et al. (CVPR 2024, logit standardisation) compute it."""
    mean = logits.mean(dim=1, keepdim=True)
    std = logits.var(dim=1, keepdim=True).clamp(min=VARIANCE_FLOOR).sqrt()
    return (logits - mean) / (STANDARDIZE_EPSILON + std)


def kd_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                  temperature: float) -> torch.Tensor:
    """``[B, K]`` logits -> scalar ``T² · KL(softmax(t/T) ‖ softmax(s/T))``, summed over classes,
    mean over the batch (RepDistiller ``DistillKL``): the KD term of the benchmark's
    objective, in float32."""
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.float().detach() / temperature, dim=1)
    return temperature ** 2 * F.kl_div(log_p_student, log_p_teacher, reduction="batchmean",
                                       log_target=True)


@register
class LogitDistiller(Distiller):
    """``kl = weight · T² · KL(softmax(t/T) ‖ softmax(s/T))``, summed over classes, mean over
    the batch (RepDistiller ``DistillKL``: ``kl_div(sum) · T² / B``; mdistiller ``kd_loss``:
    ``kl_div(none).sum(1).mean() · T²``). The T² keeps the gradient scale independent of T.
    ``standardize``: both logits z-scored first (:func:`standardize`, Sun et al. 2024)."""

    name = "logit"
    citation = ("Hinton, Vinyals & Dean (2015), Distilling the Knowledge in a Neural Network, "
                "arXiv:1503.02531")
    defaults = catalog.method_defaults("logit")  # defaults and sources: kdlab/catalog.py

    def __init__(self, student, teacher, options) -> None:
        super().__init__(student, teacher, options)
        if student.classes != teacher.classes:
            raise UserError(f"logit distillation: student has {student.classes} classes, "
                            f"teacher {teacher.classes}: expected the same class count")
        self.temperature = float(self.options["temperature"])
        if not self.temperature > 0:
            raise UserError(f"option temperature={self.temperature} for method 'logit': "
                            "expected a positive number")
        self.weight = float(self.options["weight"])
        self.standardize_logits = bool(self.options["standardize"])

    def forward(self, student, teacher, batch):
        """Logits ``[B, K]`` -> ``{"kl": scalar}``."""
        with autocast_off(student):
            student_logits = student.logits.float()
            teacher_logits = teacher.logits.float().detach()
            if self.standardize_logits:
                student_logits = standardize(student_logits)
                teacher_logits = standardize(teacher_logits)
            temperature = self.temperature
            log_p_student = F.log_softmax(student_logits / temperature, dim=1)
            log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
            # KL in log space on both sides: finite even where a teacher probability
            # underflows to 0 (target 0 · log 0 would otherwise give NaN).
            kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
            return {"kl": self.weight * temperature ** 2 * kl}
