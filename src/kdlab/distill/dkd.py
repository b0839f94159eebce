"""Decoupled knowledge distillation (Zhao et al., CVPR 2022): the KD loss split into a
target-class term (TCKD: the binary "target vs the rest" distributions) and a non-target
term (NCKD: the distributions over the other classes), weighted separately."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..run import catalog
from ..run.errors import UserError
from . import register
from .base import BatchContext, Distiller
from .logit import standardize


def warmup_factor(epoch: int, warmup_epochs: int) -> float:
    """mdistiller's ``min(epoch / WARMUP, 1)`` with its 1-based epoch: ``epoch`` here is
    0-based, so the first epoch weighs ``1 / warmup_epochs`` and epoch ``warmup_epochs − 1``
    onwards 1; constant within an epoch. ``warmup_epochs = 0``: always 1."""
    return 1.0 if warmup_epochs <= 0 else min((epoch + 1) / warmup_epochs, 1.0)


def decoupled_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                    labels: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``[B, K]``, labels ``[B]`` -> (TCKD, NCKD), each ``T² · Σ KL / B``:

    * TCKD: KL between the teacher's and student's ``(p_target, 1 − p_target)`` at
      temperature T;
    * NCKD: KL between their softmaxes at temperature T over the K − 1 non-target classes.

    Computed in log space with the target column removed, where mdistiller takes the log of
    summed probabilities and subtracts 1000 from the target logit: the same values, finite
    when a probability underflows.
    """
    batch, classes = student_logits.shape
    target = F.one_hot(labels, classes).bool()
    others = torch.arange(classes, device=labels.device).expand(batch, classes)[~target]
    others = others.view(batch, classes - 1)

    def binary_and_rest(logits):
        log_p = F.log_softmax(logits / temperature, dim=1)
        log_target = log_p.gather(1, labels.view(-1, 1))
        log_rest = torch.logsumexp(log_p.gather(1, others), dim=1, keepdim=True)
        binary = torch.cat([log_target, log_rest], dim=1)
        non_target = F.log_softmax(logits.gather(1, others) / temperature, dim=1)
        return binary, non_target

    student_binary, student_rest = binary_and_rest(student_logits)
    with torch.no_grad():
        teacher_binary, teacher_rest = binary_and_rest(teacher_logits)
    scale = temperature ** 2
    tckd = F.kl_div(student_binary, teacher_binary, reduction="batchmean", log_target=True)
    nckd = F.kl_div(student_rest, teacher_rest, reduction="batchmean", log_target=True)
    return scale * tckd, scale * nckd


@register
class DKDDistiller(Distiller):
    """``dkd_target = w · r · α · TCKD``, ``dkd_nontarget = w · r · β · NCKD`` (mdistiller
    ``dkd_loss``; its ``loss_kd`` is their sum) with ``r`` the linear warm-up
    (:func:`warmup_factor`) and ``w`` = ``weight``. ``standardize``: both logits z-scored
    first (Sun et al. 2024's DKD variant)."""

    name = "dkd"
    citation = ("Zhao, Cui, Song, Qiu & Liang (2022), Decoupled Knowledge Distillation, "
                "CVPR 2022, arXiv:2203.08679")
    defaults = catalog.method_defaults("dkd")  # defaults and sources: kdlab/catalog.py

    def __init__(self, student, teacher, options) -> None:
        super().__init__(student, teacher, options)
        if student.classes != teacher.classes:
            raise UserError(f"dkd: student has {student.classes} classes, teacher "
                            f"{teacher.classes}: expected the same class count")
        if student.classes < 2:
            raise UserError(f"dkd: {student.classes} class: expected at least 2 (the "
                            "non-target term needs another class)")
        self.weight = float(self.options["weight"])
        self.alpha = float(self.options["alpha"])
        self.beta = float(self.options["beta"])
        self.temperature = float(self.options["temperature"])
        self.warmup_epochs = int(self.options["warmup_epochs"])
        self.standardize_logits = bool(self.options["standardize"])

    def forward(self, student, teacher, batch: BatchContext):
        """Logits ``[B, K]``, ``batch.labels`` ``[B]``, ``batch.epoch`` ->
        ``{"dkd_target": scalar, "dkd_nontarget": scalar}``."""
        with torch.autocast(student.logits.device.type, enabled=False):
            student_logits = student.logits.float()
            teacher_logits = teacher.logits.float().detach()
            if self.standardize_logits:
                student_logits = standardize(student_logits)
                teacher_logits = standardize(teacher_logits)
            tckd, nckd = decoupled_terms(student_logits, teacher_logits, batch.labels,
                                         self.temperature)
            scale = self.weight * warmup_factor(batch.epoch, self.warmup_epochs)
            return {"dkd_target": scale * self.alpha * tckd,
                    "dkd_nontarget": scale * self.beta * nckd}
