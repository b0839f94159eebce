"""Model selection: which epoch's weights become ``best.pth``, and the accuracies a run reports.

``selection = "test"`` (what the completed runs did): the epoch of the highest test
accuracy. ``selection = "validation"``: the epoch of the highest accuracy on the held-out
part of the training split (:mod:`kdlab.data.validation`); the test accuracy is measured
every epoch but never used to choose. Ties go to the earliest epoch, as ``best.pth`` is only
replaced on a strict improvement.
"""

from __future__ import annotations

TEST = "test"
VALIDATION = "validation"


def selection_scores(metrics: dict, selection: str) -> list[float]:
    """The per-epoch accuracies (%) that choose ``best.pth``."""
    return list(metrics.get("validation_acc" if selection == VALIDATION else "test_acc") or [])


def accuracy_summary(metrics: dict, selection: str) -> dict:
    """The status.json accuracy fields of a run's ``metrics`` so far.

    ``max_acc``: the highest test accuracy of any epoch (0.0 before the first);
    ``final_acc``: the last epoch's test accuracy; ``selected_epoch`` (1-based): the epoch
    whose weights are ``best.pth``; with validation selection also ``selected_acc`` (the test
    accuracy of that epoch) and ``selected_validation_acc``.
    """
    test = list(metrics.get("test_acc") or [])
    scores = selection_scores(metrics, selection)
    if not test or len(scores) != len(test):
        return {"max_acc": 0.0}
    chosen = max(range(len(scores)), key=lambda epoch: (scores[epoch], -epoch))
    summary = {"max_acc": max(test), "final_acc": test[-1], "selected_epoch": chosen + 1}
    if selection == VALIDATION:
        summary.update(selected_acc=test[chosen], selected_validation_acc=scores[chosen])
    return summary
