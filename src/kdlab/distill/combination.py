"""Several methods distilled at once (``crd+logit``), each with its own options and weight:
the sum of their terms, each term logged under its method's name."""

from __future__ import annotations

from torch import nn

from .base import Distiller


class Combination(Distiller):
    """``parts``: the built methods by name. The terms of each are prefixed with the method's
    name (``logit_kl``; a term already named after its method, such as ``crd`` or
    ``rkd_angle``, keeps its name), so they stay apart in ``metrics.json``."""

    def __init__(self, student, teacher, options, parts: dict[str, Distiller]) -> None:
        super().__init__(student, teacher, options)
        self.name = "+".join(parts)
        self.parts = nn.ModuleDict(parts)

    def forward(self, student, teacher, batch):
        terms = {}
        for name, part in self.parts.items():
            for term, value in part(student, teacher, batch).items():
                terms[term if term.startswith(name) else f"{name}_{term}"] = value
        return terms

    def attach_training_set(self, labels) -> None:
        for part in self.parts.values():
            part.attach_training_set(labels)

    def partial_stage(self, epoch: int) -> int | None:
        """The furthest output any part trains up to alone in ``epoch`` (None: none does)."""
        stages = [stage for stage in (part.partial_stage(epoch) for part in self.parts.values())
                  if stage is not None]
        return max(stages) if stages else None

    def pretrain(self, context) -> None:
        for part in self.parts.values():
            part.pretrain(context)

    def frozen_state_files(self) -> list[str]:
        return [name for part in self.parts.values() for name in part.frozen_state_files()]
