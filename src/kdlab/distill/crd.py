"""Contrastive representation distillation (Tian, Krishnan & Isola 2020), as RepDistiller's
``crd/`` computes it.

Both models' pooled vectors are embedded (a linear map each) into ``feature_dim`` dimensions
and L2-normalised. A memory bank per model holds one embedding per training sample; each
sample is contrasted with its own entry (the positive) and ``negatives`` entries of samples
of other classes, drawn afresh every step, in the other model's bank: the student's
embedding against the teacher's bank and the teacher's against the student's. After the
loss is taken, each batch sample's bank entries move towards its new embeddings
(``momentum``) and are renormalised. The banks and the generator of the negatives are part
of the checkpoint (a resumed run draws the same negatives).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..run import catalog
from ..run.errors import UserError
from . import register
from .base import Distiller, autocast_off

# RepDistiller's eps in ContrastLoss (added to every denominator).
NCE_EPSILON = 1e-7

# Scores come from one dense product with the whole bank when the training set is at most
# this many times the contrast width (1 + negatives), else from the gathered rows as in
# RepDistiller. Both give the same values; the dense product is a compute-bound matmul where
# the gather copies B x (K+1) x D floats. On CIFAR-100 (N 50,000, K 16,384, D 128, B 64,
# 2 CPU threads) one side's forward + backward took 27 ms dense against 499 ms gathered
# (benchmarks/bench_kd_step.py prints the method's step); ImageNet's 1.28 M samples (78x the
# width) keep the gather, whose cost does not grow with N.
DENSE_SCORES_LIMIT = 16


def contrast_loss(scores: torch.Tensor, train_size: int) -> torch.Tensor:
    """NCE loss of RepDistiller's ``ContrastLoss`` (the paper's eq. 18) for ``scores`` [B, K+1]
    (column 0 the positive's normalised ``exp(<v, m>/T) / Z``, the others the K negatives'):
    ``-(Σ_b log(P⁺/(P⁺ + K/N + ε)) + Σ_{b,k} log((K/N)/(P⁻ + K/N + ε))) / B``."""
    negatives = scores.shape[1] - 1
    noise = negatives / float(train_size)
    positive = scores[:, 0]
    log_positive = torch.log(positive / (positive + noise + NCE_EPSILON))
    log_negative = torch.log(noise / (scores[:, 1:] + noise + NCE_EPSILON))
    return -(log_positive.sum() + log_negative.sum()) / scores.shape[0]


class Embedding(nn.Module):
    """``[B, D_in]`` -> L2-normalised ``[B, feature_dim]`` (RepDistiller ``Embed``; a zero
    vector stays zero here instead of RepDistiller's 0/0)."""

    def __init__(self, in_features: int, feature_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, feature_dim)

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(vectors.flatten(1)), dim=1)


@register
class CRDDistiller(Distiller):
    """``crd = weight · (NCE(student anchor, teacher bank) + NCE(teacher anchor, student bank))``
    on the pooled vectors (RepDistiller ``CRDLoss`` on ``feat[-1]``)."""

    name = "crd"
    citation = ("Tian, Krishnan & Isola (2020), Contrastive Representation Distillation, "
                "ICLR 2020, arXiv:1910.10699")
    defaults = catalog.method_defaults("crd")  # defaults and sources: kdlab/catalog.py

    def __init__(self, student, teacher, options) -> None:
        super().__init__(student, teacher, options)
        self.feature_dim = int(self.options["feature_dim"])
        self.negatives = int(self.options["negatives"])
        self.nce_temperature = float(self.options["nce_temperature"])
        self.momentum = float(self.options["momentum"])
        self.weight = float(self.options["weight"])
        if not self.momentum <= 1:
            raise UserError(f"option momentum={self.momentum} for method 'crd': expected a "
                            "number in [0, 1] (the share of a bank entry that is kept)")
        self.embed_student = Embedding(student.pooled, self.feature_dim)
        self.embed_teacher = Embedding(teacher.pooled, self.feature_dim)
        # The negatives and the banks' start come from the method's own generator, seeded
        # from the global one: a run is reproducible from its seed, and the student's
        # random stream does not depend on how many negatives are drawn.
        self.generator = torch.Generator()
        self.generator.manual_seed(int(torch.randint(0, 2 ** 62, (1,)).item()))
        self.train_size = 0

    def attach_training_set(self, labels: torch.Tensor) -> None:
        """Banks [N, feature_dim] uniform in ±1/sqrt(feature_dim/3) (RepDistiller's start),
        the normalisation constants Z unset (-1), and per class the pool of other-class
        samples the negatives are drawn from."""
        labels = torch.as_tensor(labels, dtype=torch.int64).cpu()
        if labels.dim() != 1 or len(labels) < 2:
            raise UserError(f"crd: expected the labels of a training set of 2 or more samples, "
                            f"got shape {tuple(labels.shape)}")
        self.train_size = len(labels)
        bound = 1.0 / math.sqrt(self.feature_dim / 3)
        shape = (self.train_size, self.feature_dim)
        self.register_buffer("student_bank",
                             torch.rand(shape, generator=self.generator) * (2 * bound) - bound)
        self.register_buffer("teacher_bank",
                             torch.rand(shape, generator=self.generator) * (2 * bound) - bound)
        self.register_buffer("normalisers", torch.full((2,), -1.0))  # Z (student, teacher)
        # Samples sorted by class: the pool of class c is this order without c's run.
        self.train_labels = labels
        self.class_order = torch.argsort(labels, stable=True)
        classes = int(labels.max()) + 1
        self.class_sizes = torch.bincount(labels, minlength=classes)
        self.class_starts = torch.cumsum(self.class_sizes, 0) - self.class_sizes

    # ---- the generator is state: saved and restored with the banks ----
    def get_extra_state(self):
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state) -> None:
        self.generator.set_state(state["generator"])

    def draw_contrast_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """[B] training-set indices -> [B, 1 + negatives]: each sample's own index, then
        ``negatives`` samples of other classes (without replacement where the class has that
        many others, as RepDistiller's sampling data set; with replacement otherwise), on
        the CPU from the method's generator."""
        indices = indices.cpu()
        labels = self.train_labels[indices]
        pool_sizes = self.train_size - self.class_sizes[labels]
        if bool((pool_sizes == 0).any()):
            raise UserError("crd: a batch sample's class is the only class of the training "
                            "set: expected other classes to draw negatives from")
        count = self.negatives
        positions = torch.empty(len(indices), count, dtype=torch.int64)
        distinct = pool_sizes >= count
        if bool(distinct.any()):
            width = int(pool_sizes[distinct].max())
            keys = torch.rand(int(distinct.sum()), width, generator=self.generator)
            keys[torch.arange(width) >= pool_sizes[distinct, None]] = 2.0  # past the pool
            # The count smallest keys, in no particular order (the loss sums over negatives):
            # a uniform draw without replacement, 2.7x faster than a sorted top-k.
            positions[distinct] = keys.topk(count, dim=1, largest=False, sorted=False).indices
        if bool((~distinct).any()):
            uniform = torch.rand(int((~distinct).sum()), count, generator=self.generator,
                                 dtype=torch.float64)
            sizes = pool_sizes[~distinct, None]
            positions[~distinct] = (uniform * sizes).long().clamp_max(sizes - 1)
        # Position p in class c's pool: before c's run in class order, or after it.
        starts = self.class_starts[labels][:, None]
        shifted = positions + (positions >= starts) * self.class_sizes[labels][:, None]
        return torch.cat([indices[:, None], self.class_order[shifted]], dim=1)

    def scores(self, anchors: torch.Tensor, bank: torch.Tensor,
               contrast: torch.Tensor) -> torch.Tensor:
        """``exp(<bank[contrast[b, k]], anchors[b]> / T)`` as ``[B, K+1]``: a dense product
        with the whole bank then the contrast columns (small training sets, see
        ``DENSE_SCORES_LIMIT``), or the gathered rows' batched product."""
        if self.train_size <= DENSE_SCORES_LIMIT * contrast.shape[1]:
            # The product's backward needs the bank as it is now, and the forward moves the
            # bank's rows afterwards: a copy for autograd (the gather below copies anyway).
            if anchors.requires_grad and torch.is_grad_enabled():
                bank = bank.clone()
            products = (anchors @ bank.t()).gather(1, contrast)
        else:
            rows = bank[contrast.reshape(-1)].view(*contrast.shape, self.feature_dim)
            products = torch.bmm(rows, anchors[:, :, None]).squeeze(2)
        return torch.exp(products / self.nce_temperature)

    def forward(self, student, teacher, batch):
        """Pooled vectors ``[B, D]`` and the batch's training-set indices -> ``{"crd": scalar}``;
        updates both banks."""
        if self.train_size == 0:
            raise RuntimeError("crd: attach_training_set(labels) must be called before training")
        if batch is None or batch.indices is None:
            raise UserError("crd needs each sample's index in the training set "
                            "(BatchContext.indices): expected a batch with indices")
        device = student.pooled.device
        with autocast_off(student):
            student_vector = self.embed_student(student.pooled.float())
            teacher_vector = self.embed_teacher(teacher.pooled.float().detach())
            indices = batch.indices.to(device)
            contrast = self.draw_contrast_indices(batch.indices).to(device)
            # Student anchor against the teacher's bank, and the teacher's against the student's.
            student_scores = self.scores(student_vector, self.teacher_bank, contrast)
            teacher_scores = self.scores(teacher_vector, self.student_bank, contrast)
            with torch.no_grad():
                # Z is estimated once, on the first batch, and then kept (RepDistiller).
                if float(self.normalisers[0]) < 0:
                    self.normalisers[0] = student_scores.mean() * self.train_size
                if float(self.normalisers[1]) < 0:
                    self.normalisers[1] = teacher_scores.mean() * self.train_size
            loss = (contrast_loss(student_scores / self.normalisers[0], self.train_size)
                    + contrast_loss(teacher_scores / self.normalisers[1], self.train_size))
            self.update_banks(indices, student_vector, teacher_vector)
            return {"crd": self.weight * loss}

    @torch.no_grad()
    def update_banks(self, indices: torch.Tensor, student_vector: torch.Tensor,
                     teacher_vector: torch.Tensor) -> None:
        """Move the batch's bank rows towards their new embeddings:
        ``row <- normalise(momentum · row + (1 - momentum) · vector)`` in both banks."""
        for bank, vector in ((self.student_bank, student_vector),
                             (self.teacher_bank, teacher_vector)):
            moved = bank[indices] * self.momentum + vector.detach() * (1 - self.momentum)
            bank.index_copy_(0, indices, moved / moved.pow(2).sum(1, keepdim=True).sqrt())
