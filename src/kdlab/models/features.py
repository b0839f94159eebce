"""The one feature contract every model's forward honours.

A model's ``forward(images [B,3,H,W])`` returns :class:`Features`. Distillation methods and
the analysis read stages by position (``stages[-1]`` is the last stage), never by a family's
module names, so one method works for every teacher-student pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch


@dataclass
class Features:
    """``stages``: each stage's output [B,C_i,H_i,W_i] as the methods and the analysis read it
    (after the stage's last ReLU); ``preact``: the same before that ReLU (what AB, OFD and
    ReviewKD distil); ``pooled``: the vector before the classifier [B,D]; ``logits`` [B,K].

    It also reads as the sequence ``[*stages, logits]`` so that code indexing outputs by
    position (``outputs[-1]`` for the logits) keeps working.
    """

    stages: list[torch.Tensor]
    preact: list[torch.Tensor]
    pooled: torch.Tensor
    logits: torch.Tensor

    def as_list(self) -> list[torch.Tensor]:
        return [*self.stages, self.logits]

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(self.as_list())

    def __len__(self) -> int:
        return len(self.stages) + 1

    def __getitem__(self, index):
        return self.as_list()[index]

    def map(self, function: Callable[[torch.Tensor], torch.Tensor]) -> "Features":
        """The same features with ``function`` applied to every tensor (``.float()``,
        ``.detach()``, ``.clone()``)."""
        return Features([function(t) for t in self.stages], [function(t) for t in self.preact],
                        function(self.pooled), function(self.logits))


@dataclass(frozen=True)
class FeatureShapes:
    """Shapes (without batch) of a model's :class:`Features` for one input size:
    ``stages`` (C, H, W) per stage, ``pooled`` D, ``classes`` K. What a method sizes its
    connectors from."""

    stages: tuple[tuple[int, int, int], ...]
    pooled: int
    classes: int
