"""Pieces shared by the operations commands: accuracy tables over a study's runs and
plain-text table formatting."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from ..layout import format_alpha
from ..status import COMPLETED, RunState
from ..study import Study


@dataclass
class AccuracyGroup:
    """Best test accuracies (percent) of the completed runs of one grid cell: a data set ×
    (teacher | pure student | method × alpha). ``accuracies`` in seed order."""

    dataset: str
    role: str                 # 'teacher' | 'pure' | 'kd'
    method: str               # 'teacher' / 'pure' for pure runs, else the KD method
    alpha: float | None
    accuracies: list[float]
    planned: int              # runs of this cell in the grid (completed or not)

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
        if self.role == "teacher":
            return f"teacher ({study.teacher})"
        if self.role == "pure":
            return f"pure student ({study.student})"
        return f"{self.method} α={format_alpha(self.alpha)}"

    def mean_std_text(self) -> str:
        if self.mean is None:
            return "—"
        if self.std is None:
            return f"{self.mean:.2f}"
        return f"{self.mean:.2f} ± {self.std:.2f}"


def accuracy_groups(study: Study, states: list[RunState]) -> list[AccuracyGroup]:
    """One group per data set × row of the grid, in the study's order (data set, then
    teacher, pure student, each method × alpha); only completed runs with a recorded
    ``max_acc`` contribute accuracies."""
    groups: dict[tuple, AccuracyGroup] = {}
    order = []
    for dataset in study.datasets:
        order.append((dataset, "teacher", "teacher", None))
        order.append((dataset, "pure", "pure", None))
        for method in study.methods:
            for alpha in study.alphas:
                order.append((dataset, "kd", method, alpha))
    for key in order:
        groups[key] = AccuracyGroup(key[0], key[1], key[2], key[3], [], 0)
    for state in states:
        key = group_key(state)
        group = groups.get(key)
        if group is None:
            continue
        group.planned += 1
        if state.state == COMPLETED and state.max_acc is not None:
            group.accuracies.append(state.max_acc)
    return [groups[key] for key in order]


def group_key(state: RunState) -> tuple:
    spec = state.spec
    if state.role == "kd":
        return (spec.dataset, "kd", spec.method, spec.alpha)
    return (spec.dataset, state.role, state.role, None)


def effective_method_options(study: Study, method: str) -> dict:
    """The options a run of ``method`` trains with: the method's defaults, the study's
    training temperature for methods that take one (as ``kdlab train`` does), then the
    study's ``method_options``. Without torch (no registry): the study's options only."""
    options = dict(study.method_options.get(method, {}))
    try:
        from ..distill import method_defaults, resolve_options
    except ImportError:
        return options
    if "temperature" in method_defaults(method):
        options.setdefault("temperature", study.training["temperature"])
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
