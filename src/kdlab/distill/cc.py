"""Correlation congruence (Peng et al., ICCV 2019): besides matching instances, the student
should reproduce the correlations between the samples of a batch, on linear embeddings of
the pooled features.

Two forms. The default is RepDistiller's ``Correlation`` (code the authors sent Tian et
al., which produced RepDistiller's CC numbers): with ``δ_i = |e_s(i) − e_t(i)|`` it averages
``⟨δ_i, δ_{i+1}⟩`` over consecutive samples of the batch. ``form = "gaussian"`` is the
paper's: the correlation matrix of each model's L2-normalised embeddings under a Gaussian RBF
kernel (approximated by its Taylor series of order P, as the paper does), compared by mean
squared difference.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..run import catalog
from . import register
from .base import BatchContext, Distiller

FORMS = ("consecutive", "gaussian")


def consecutive_congruence(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``[B, E]`` twice -> scalar ``Σ_{i<B−1} ⟨δ_i, δ_{i+1}⟩ / (B − 1)``, ``δ = |s − t|``
    (RepDistiller ``Correlation``); 0 for a batch of one sample (no consecutive pair)."""
    delta = (student - teacher).abs()
    pairs = (delta[:-1] * delta[1:]).sum(dim=1)
    return pairs.sum() / max(delta.shape[0] - 1, 1)


def gaussian_correlation(embeddings: torch.Tensor, gamma: float, order: int) -> torch.Tensor:
    """``[B, E]`` -> ``[B, B]``: ``k(x, y) = exp(−γ‖x − y‖²)`` for L2-normalised rows, where
    ``‖x − y‖² = 2 − 2⟨x, y⟩``, expanded as ``exp(−2γ) Σ_{p=0}^{P} (2γ)^p ⟨x, y⟩^p / p!``."""
    units = nn.functional.normalize(embeddings, dim=1)
    inner = units @ units.t()
    kernel = torch.zeros_like(inner)
    for power in range(order + 1):
        kernel = kernel + (2 * gamma) ** power / math.factorial(power) * inner.pow(power)
    return math.exp(-2 * gamma) * kernel


@register
class CCDistiller(Distiller):
    """``cc = weight · consecutive_congruence(W_s·pooled_s, W_t·pooled_t)`` (default) or
    ``weight · mean_{B²} (K_s − K_t)²`` (``form = "gaussian"``, ``K`` from
    :func:`gaussian_correlation`). ``W_s``, ``W_t``: linear embeddings with bias of the pooled
    features (``pooled``: RepDistiller's ``feat[-1]``) to ``embedding`` dimensions; both are
    trained (RepDistiller puts ``embed_t`` in its trainable list too), the teacher's features
    themselves stay detached."""

    name = "cc"
    citation = ("Peng et al. (2019), Correlation Congruence for Knowledge Distillation, "
                "ICCV 2019, arXiv:1904.01802")
    defaults = catalog.method_defaults("cc")  # defaults and sources: kdlab/catalog.py

    def __init__(self, student, teacher, options) -> None:
        super().__init__(student, teacher, options)
        size = int(self.options["embedding"])
        self.student_embedding = nn.Linear(student.pooled, size)
        self.teacher_embedding = nn.Linear(teacher.pooled, size)
        self.form = self.options["form"]  # one of FORMS: checked by the catalog
        self.gamma = float(self.options["gamma"])
        self.order = int(self.options["order"])
        self.weight = float(self.options["weight"])

    def forward(self, student, teacher, batch: BatchContext):
        """``pooled`` ``[B, D_s]``, ``[B, D_t]`` -> ``{"cc": scalar}``."""
        with torch.autocast(student.pooled.device.type, enabled=False):
            student_embedded = self.student_embedding(student.pooled.float())
            teacher_embedded = self.teacher_embedding(teacher.pooled.float().detach())
            if self.form == "consecutive":
                loss = consecutive_congruence(student_embedded, teacher_embedded)
            else:
                difference = (gaussian_correlation(student_embedded, self.gamma, self.order)
                              - gaussian_correlation(teacher_embedded, self.gamma, self.order))
                loss = difference.pow(2).mean()
            return {"cc": self.weight * loss}
