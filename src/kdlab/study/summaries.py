"""Pieces shared by the operations commands: accuracy tables over a study's runs and
plain-text table formatting."""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field

from ..run.catalog import SELECTIONS, reported_accuracy
from ..run.layout import format_alpha
from .stats import SeedSummary, summarize
from .progress import COMPLETED, RunState
from .study_file import Pair, Study


def selection_accuracy(study: Study) -> tuple[str, str]:
    """(status.json key, description) of the accuracy ``study``'s tables report: the one it
    selects by, or the last epoch's with ``reported_accuracy = "last"``."""
    return reported_accuracy(study.training.get("selection", "test"), study.reported_accuracy)


def _recorded(status: dict | None, key: str) -> float | None:
    value = (status or {}).get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def mean_std_text(summary: SeedSummary, digits: int = 2) -> str:
    """'mean ± std', 'mean' (one seed) or '—' (none)."""
    if summary.mean is None:
        return "—"
    if summary.std is None:
        return f"{summary.mean:.{digits}f}"
    return f"{summary.mean:.{digits}f} ± {summary.std:.{digits}f}"


def interval_text(summary: SeedSummary, digits: int = 2) -> str:
    """'[low, high]' (95 % t-interval of the mean) or '—' below two seeds."""
    if summary.ci_low is None:
        return "—"
    return f"[{summary.ci_low:.{digits}f}, {summary.ci_high:.{digits}f}]"


def summary_text(summary: SeedSummary, digits: int = 2) -> str:
    """'mean ± std, 95% CI [low, high] (n=3)', 'mean (n=1)' or '—'."""
    if summary.mean is None:
        return "—"
    if summary.std is None:
        return f"{summary.mean:.{digits}f} (n={summary.n})"
    return (f"{summary.mean:.{digits}f} ± {summary.std:.{digits}f}, 95% CI "
            f"[{summary.ci_low:.{digits}f}, {summary.ci_high:.{digits}f}] (n={summary.n})")


@dataclass
class AccuracyGroup:
    """Best test accuracies (percent) of the completed runs of one grid cell: a data set ×
    pair × (teacher | pure student | method × alpha). ``accuracies`` in seed order; a
    teacher shared by two pairs counts in each pair's group."""

    dataset: str
    role: str                 # 'teacher' | 'pure' | 'kd'
    method: str               # 'teacher' / 'pure' for pure runs, else the KD method
    alpha: float | None
    accuracies: list[float]
    planned: int              # runs of this cell in the grid (completed or not)
    selected: list[float] = field(default_factory=list)   # the accuracy the study selects by
    finals: list[float] = field(default_factory=list)     # final_acc (last epoch)
    chosen_on: list[str] = field(default_factory=list)    # what chose each one's best.pth
    pair: Pair | None = None

    @property
    def key(self) -> tuple:
        """(data set, pair, role, method, alpha), as :func:`group_keys` gives them."""
        return self.dataset, self.pair, self.role, self.method, self.alpha

    def chosen_on_text(self, selected_key: str) -> str:
        """What chose the best.pth of the completed runs, per split ('validation (3)',
        'test (2), validation (1)'), and why some record no ``selected_key`` ('test (3): no
        selected_acc recorded'); '— (no finished run)' without any."""
        if not self.chosen_on:
            return "— (no finished run)"
        counts: dict[str, int] = {}
        for split in self.chosen_on:
            counts[split] = counts.get(split, 0) + 1
        text = ", ".join(f"{split} ({count})" for split, count in sorted(counts.items()))
        missing = len(self.chosen_on) - len(self.selected)
        if missing:
            text += (f": no {selected_key} recorded" if missing == len(self.chosen_on)
                     else f"; {missing} with no {selected_key} recorded")
        return text

    @property
    def selected_summary(self) -> SeedSummary:
        """Mean, std, 95 % t-interval and n of :attr:`selected` (kdlab.study.stats.summarize)."""
        return summarize(self.selected)

    @property
    def final_summary(self) -> SeedSummary:
        return summarize(self.finals)

    @property
    def n(self) -> int:
        return len(self.accuracies)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.accuracies) if self.accuracies else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation (n-1); None below two runs."""
        return statistics.stdev(self.accuracies) if len(self.accuracies) > 1 else None

    def label(self, study: Study) -> str:
        pair = self.pair or study.pairs[0]
        if self.role == "teacher":
            return f"teacher ({pair.teacher})"
        if self.role == "pure":
            return f"pure student ({pair.student})"
        return f"{self.method} α={format_alpha(self.alpha)}"

    def mean_std_text(self) -> str:
        if self.mean is None:
            return "—"
        if self.std is None:
            return f"{self.mean:.2f}"
        return f"{self.mean:.2f} ± {self.std:.2f}"


def accuracy_groups(study: Study, states: list[RunState]) -> list[AccuracyGroup]:
    """One group per data set × pair × row of the grid, in the study's order (data set,
    pair, then teacher, pure student, each method × alpha); only completed runs
    contribute: their ``max_acc`` to ``accuracies``, the accuracy the study selects by
    (:func:`selection_accuracy`) to ``selected``, ``final_acc`` to ``finals``."""
    groups: dict[tuple, AccuracyGroup] = {}
    for dataset in study.datasets:
        for pair in study.pairs:
            rows = [("teacher", "teacher", None), ("pure", "pure", None)]
            rows += [("kd", method, alpha) for method in study.methods
                     for alpha in study.alpha_levels()]
            for role, method, alpha in rows:
                group = AccuracyGroup(dataset, role, method, alpha, [], 0, pair=pair)
                groups[group.key] = group
    selected_key, _ = selection_accuracy(study)
    for state in states:
        for key in group_keys(study, state):
            group = groups.get(key)
            if group is None:
                continue
            group.planned += 1
            if state.state != COMPLETED:
                continue
            if state.max_acc is not None:
                group.accuracies.append(state.max_acc)
            group.chosen_on.append(chosen_on(state))
            for values, name in ((group.selected, selected_key), (group.finals, "final_acc")):
                value = _recorded(state.status, name)
                if value is not None:
                    values.append(value)
    return list(groups.values())


def chosen_on(state: RunState) -> str:
    """The split that chose the run's best.pth, as status.json records it: 'test' or
    'validation'; 'test' for the earlier research code's runs and kdlab's from before
    the setting (they chose on the test set)."""
    status = state.status or {}
    config = status.get("config") if isinstance(status.get("config"), dict) else {}
    found = status.get("selection") or config.get("selection") or "test"
    return found if found in SELECTIONS else f"unknown ({found!r})"


def group_keys(study: Study, state: RunState) -> list[tuple]:
    """The keys (data set, pair, role, method, alpha) of the accuracy groups that hold the
    run: one per cell of the grid holding it (:meth:`kdlab.study.study_file.Study.cells_of`; a
    teacher shared by two pairs is in both); none for a run outside the grid."""
    keys = []
    for cell in study.cells_of(state.spec):
        role = str(cell.role)
        keys.append((cell.dataset, cell.pair, role, cell.row, cell.alpha))
    return keys


def effective_method_options(study: Study, method: str) -> dict:
    """The options a run of ``method`` trains with: the method's defaults, the study's
    training temperature for methods that take one (as ``kdlab train`` does), then the
    study's ``method_options``. Without torch (no registry): the study's options only."""
    options = dict(study.method_options.get(method, {}))
    try:
        from ..distill import method_defaults, resolve_options
    except ImportError:
        return options
    for key in method_defaults(method):
        if key == "temperature" or key.endswith(".temperature"):
            options.setdefault(key, study.training["temperature"])
    return resolve_options(method, options)


EARLIER_CODE = "earlier code"


def made_by_of(status: dict) -> str:
    """Who wrote a run: status.json's ``made_by`` ('kdlab <version>'); 'kdlab' for a kdlab
    run from before that field (its status has kdlab's ``run`` field); else 'earlier code'
    (the earlier research code's status.json has neither)."""
    made_by = status.get("made_by")
    if isinstance(made_by, str) and made_by.strip():
        return made_by
    return "kdlab" if "run" in status else EARLIER_CODE


def is_earlier_code(state: RunState) -> bool:
    """A run with a status.json written by the earlier research code, not by kdlab."""
    return state.status is not None and made_by_of(state.status) == EARLIER_CODE


# Config keys of the earlier code's status.json that name the run rather than a setting.
_IDENTITY_KEYS = ("model", "dataset", "seed", "teacher_weights", "force_restart")


@dataclass
class EarlierCodeRuns:
    """The runs of a study written by the earlier research code (see :func:`made_by_of`)."""

    states: list[RunState]
    kdlab_count: int           # runs with a status.json written by kdlab

    @property
    def completed(self) -> int:
        return sum(1 for state in self.states if state.state == COMPLETED)

    def recorded_settings(self) -> list[str]:
        """'key: values' for every setting their status.json configs record, plus the
        epochs their completed runs ran."""
        values: dict[str, set[str]] = {}
        for state in self.states:
            config = (state.status or {}).get("config")
            for key, value in (config.items() if isinstance(config, dict) else ()):
                if key not in _IDENTITY_KEYS and value is not None:
                    values.setdefault(key, set()).add(str(value))
        epochs = {str(state.status.get("epoch")) for state in self.states
                  if state.state == COMPLETED and state.status.get("epoch") is not None}
        if epochs:
            values["epochs of the completed runs"] = epochs
        return [f"{key}: {', '.join(sorted(found))}" for key, found in sorted(values.items())]

    def description(self, augmentation: str | None = None) -> str:
        """One paragraph: how many, why they are the earlier code's, what is known of their
        settings, and that kdlab's settings do not describe them."""
        count = len(self.states)
        settings = self.recorded_settings()
        text = (f"{count} run{'s' if count != 1 else ''} ({self.completed} completed) "
                f"{'were' if count != 1 else 'was'} trained by the earlier research code, not by "
                "kdlab (their status.json has neither kdlab's made_by nor its run field); "
                f"{self.kdlab_count} run{'s were' if self.kdlab_count != 1 else ' was'} "
                "trained by kdlab. The study's settings and kdlab's method defaults stated "
                "here describe kdlab's runs only. The earlier code trained with other "
                "augmentation (RandomResizedCrop and a horizontal flip for training, "
                "Resize(size + 8) and CenterCrop(size) for testing, its own normalisation "
                "constants, ImageNet's for TinyImageNet) and other distillation-method weights")
        text += ("; what its runs recorded of their settings: " + "; ".join(settings) + "."
                 if settings else "; its runs recorded none of their settings.")
        if augmentation == "earlier":
            text += (" This study's kdlab runs use the earlier code's augmentation "
                     "(augmentation = \"earlier\"), so their accuracies are comparable.")
        return text


def earlier_code_runs(states: list[RunState]) -> EarlierCodeRuns | None:
    """The earlier code's runs among ``states`` (None when there are none)."""
    earlier = [state for state in states if is_earlier_code(state)]
    if not earlier:
        return None
    kdlab = sum(1 for state in states if state.status is not None) - len(earlier)
    return EarlierCodeRuns(earlier, kdlab)


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured Markdown table (``|`` in cells escaped)."""
    def cell(text) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def time_text(unix_seconds: float | None) -> str:
    """Local time as ``YYYY-MM-DD HH:MM`` ('—' when unknown)."""
    if unix_seconds is None:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(unix_seconds))
