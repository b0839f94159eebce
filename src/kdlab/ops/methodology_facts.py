"""The methodology's statements about the training objective and how numbers were chosen:
label smoothing, each method's weight against cross-entropy at each alpha, RKD's weights,
the learning-rate schedule against RepDistiller's, how ``best.pth`` was selected, and the
runs of the earlier research code.

Each function returns document blocks in :class:`kdlab.ops.methodology.Section`'s format
(``('p', text)``, ``('ul', [items])``, ``('table', headers, rows)``), built from the study
and the runs' state files; methodology.py places them.
"""

from __future__ import annotations

import functools

from ..run import catalog
from ..run.config import (KD_LABEL_SMOOTHING, PURE_LABEL_SMOOTHING, schedule_words,
    snapshot_epochs_of)
from ..run.layout import format_alpha
from ..study.progress import COMPLETED, RunState
from ..study.study_file import Study
from ..study.summaries import earlier_code_runs, effective_method_options, is_earlier_code

MULLER_2019 = ("Müller, Kornblith & Hinton (2019), When Does Label Smoothing Help?, "
               "NeurIPS 2019")
# RepDistiller's CIFAR-100 recipe (Tian, Krishnan & Isola 2020, train_student.py)
REPDISTILLER_SCHEDULE = ("240 epochs, SGD with learning rate 0.05 (0.01 for ShuffleNet and "
                         "MobileNet students), divided by 10 at epochs 150, 180 and 210")
DEFAULT_VALIDATION_FRACTION = 0.1


def _number(value: float) -> str:
    return f"{value:g}"


def label_smoothing_text(study: Study) -> str:
    smoothing = study.training.get("label_smoothing")
    if smoothing is not None:
        return (f"Every run, teacher or student, trains with label smoothing {_number(smoothing)} "
                "(set by the study). Teachers trained with label smoothing can distil worse "
                f"students: their soft targets carry less about class similarity ({MULLER_2019}).")
    return (f"Teachers (and the pure-student baselines) train with label smoothing "
            f"{_number(PURE_LABEL_SMOOTHING)}; distilled students use {_number(KD_LABEL_SMOOTHING)} "
            "(their soft targets come from the teacher). Teachers trained with label smoothing "
            "can distil worse students, because smoothing erases what their outputs say about "
            f"class similarity ({MULLER_2019}); this study's teachers are such teachers.")


def method_term_weights(study: Study, method: str) -> dict[str, float] | None:
    """The weight of each of a method's loss terms inside the distillation loss: ``weight``
    times each ``*_weight`` option (RKD: distance and angle), else ``weight`` alone. None
    when the options give no weight."""
    options = effective_method_options(study, method)
    parts = catalog.combination_parts(method)
    if parts is not None:  # each part's terms, named as the run logs them
        combined = {}
        for part in parts:
            own = {key.partition(".")[2]: value for key, value in options.items()
                   if key.partition(".")[0] == part}
            terms = _term_weights(own, part)
            if terms is None:
                return None
            combined.update({term if term.startswith(part) else f"{part}_{term}": weight
                             for term, weight in terms.items()})
        return combined
    return _term_weights(options, method)


def _term_weights(options: dict, method: str) -> dict[str, float] | None:
    weight = options.get("weight")
    if not isinstance(weight, (int, float)) or isinstance(weight, bool):
        return None
    terms = {key[:-len("_weight")]: float(weight) * float(value) for key, value in options.items()
             if key.endswith("_weight") and isinstance(value, (int, float))
             and not isinstance(value, bool)}
    return terms or {method: float(weight)}


def weight_table(study: Study) -> tuple[list[str], list[list[str]]]:
    """Rows: method (term) x the study's alphas; a cell is the term's weight relative to
    cross-entropy, α·w / (1 − α), in the loss (1 − α)·CE + α·Σ w·term."""
    headers = ["method (term)", "w"] + [f"α={format_alpha(alpha)}" for alpha in study.alphas]
    rows = []
    for method in study.methods:
        terms = method_term_weights(study, method)
        if terms is None:
            rows.append([method, "—"] + ["—"] * len(study.alphas))
            continue
        for term, weight in terms.items():
            name = method if term == method else f"{method} ({term})"
            cells = [("no CE" if alpha >= 1 else f"{alpha * weight / (1 - alpha):.4g}")
                     for alpha in study.alphas]
            rows.append([name, _number(weight)] + cells)
    return headers, rows


def benchmark_weight_table(study: Study) -> tuple[list[str], list[list[str]]]:
    """Rows: method (term) with its β and the γ (ce_weight) and κ (kd_weight) its runs take
    ([training] with the method's [training.method.NAME] values over it)."""
    headers = ["method (term)", "β", "γ (CE)", "κ (KD)"]
    rows = []
    for method in study.methods:
        weights = {**study.training, **study.method_training.get(method, {})}
        gamma, kappa = _number(weights["ce_weight"]), _number(weights["kd_weight"])
        terms = method_term_weights(study, method)
        if terms is None:
            rows.append([method, "—", gamma, kappa])
            continue
        for term, weight in terms.items():
            name = method if term == method else f"{method} ({term})"
            rows.append([name, _number(weight), gamma, kappa])
    return headers, rows


def method_detail_texts(study: Study) -> list[str]:
    """The paragraph each method of the study adds to the methodology
    (:attr:`~kdlab.run.catalog.MethodFacts.methodology`, from the options its runs use),
    once per method, a combination's parts included, in the study's order."""
    texts, seen = [], set()
    for method in study.methods:
        parts = catalog.combination_parts(method) or (method,)
        for part in parts:
            facts = catalog.METHODS.get(part)
            if part in seen or facts is None or facts.methodology is None:
                continue
            seen.add(part)
            options = effective_method_options(study, method)
            if len(parts) > 1:
                options = catalog.part_options(options, part)
            try:
                texts.append(facts.methodology(options))
            except (KeyError, TypeError, ValueError):
                continue
    return texts


def schedule_text(study: Study) -> str:
    training = study.training
    epochs = training["epochs"]
    return (f"Schedule: {epochs} epoch{'s' if epochs != 1 else ''}, SGD with learning rate "
            f"{_number(training['lr'])}, momentum {_number(training['momentum'])}, weight decay "
            f"{_number(training['weight_decay'])}, {schedule_words(training)} "
            f"(kdlab's default: 150 epochs, learning rate 0.1). RepDistiller, whose tables "
            f"KD papers usually compare with, trains {REPDISTILLER_SCHEDULE}: accuracies "
            "from the two schedules are not directly comparable.")


def selection_settings(study: Study) -> tuple[str, float]:
    """(selection, validation_fraction) of the study's runs, from their TrainConfig
    (defaults 'test' and 0.1 where the fields do not exist)."""
    runs = study.runs()
    config = study.train_config(runs[0]) if runs else None
    selection = getattr(config, "selection", None) or study.training.get("selection") or "test"
    fraction = getattr(config, "validation_fraction", None)
    if fraction is None:
        fraction = study.training.get("validation_fraction", DEFAULT_VALIDATION_FRACTION)
    return str(selection), float(fraction)


def selection_text(study: Study, states: list[RunState]) -> str:
    selection, fraction = selection_settings(study)
    if selection == "validation":
        text = (f"best.pth — the weights reported, distilled from and analysed — is the epoch "
                f"with the highest accuracy on a validation split: a stratified "
                f"{_number(fraction * 100)} % of the training split, fixed by the data set and "
                "the seed, that is never trained on. Test accuracy is measured every epoch but "
                "never used to choose.")
    else:
        text = ("best.pth — the weights reported, distilled from and analysed — is the epoch "
                "with the highest test accuracy, so the best accuracy reported (max_acc) is "
                "chosen on the test set and is optimistic; the last epoch's accuracy "
                "(final_acc) is not chosen that way.")
    recorded: dict[str, int] = {}
    for state in states:
        if state.state != COMPLETED or state.status is None:
            continue
        if is_earlier_code(state):
            recorded["test (earlier code)"] = recorded.get("test (earlier code)", 0) + 1
            continue
        config = state.status.get("config")
        found = config.get("selection", "test") if isinstance(config, dict) else "test"
        recorded[str(found)] = recorded.get(str(found), 0) + 1
    if recorded and set(recorded) != {selection}:
        text += (" Completed runs by how they selected best.pth: "
                 + ", ".join(f"{name}: {count}" for name, count in sorted(recorded.items()))
                 + ".")
    return text


def objective_blocks(study: Study, states: list[RunState]) -> list[tuple]:
    """The section 'Objective, schedule and model selection'."""
    blocks: list[tuple] = [("p", label_smoothing_text(study))]
    if study.methods and study.trains_without_alpha:
        headers, rows = benchmark_weight_table(study)
        blocks.append(("p", "A distilled student minimises the benchmark's objective, "
                            "γ·CE + κ·KD + Σ β·(term) (RepDistiller's train_student.py: "
                            "its -r, -a and -b), where KD is the logit divergence at the "
                            "run's temperature. The table gives each method's weights:"))
        blocks.append(("table", headers, rows))
    elif study.methods:
        headers, rows = weight_table(study)
        blocks.append(("p", "A distilled student minimises (1 − α)·CE + α·Σ w·(term). The "
                            "table gives each term's weight w and its weight relative to "
                            "cross-entropy, α·w / (1 − α), at each alpha of the study:"))
        blocks.append(("table", headers, rows))
    for text in method_detail_texts(study):
        blocks.append(("p", text))
    blocks.append(("p", schedule_text(study)))
    snapshots = snapshot_text(study)
    if snapshots:
        blocks.append(("p", snapshots))
    blocks.append(("p", selection_text(study, states)))
    return blocks


@functools.cache
def snapshot_bytes(model: str, classes: int) -> tuple[int, int]:
    """(values, bytes) of one snapshot's weights of ``model`` with ``classes`` outputs: its
    parameters and buffers (float32, the BatchNorm counters int64) as the file stores them,
    without the few hundred bytes of the file's own framing."""
    from ..models import build_model

    state = build_model(model, classes).state_dict()
    return (sum(tensor.numel() for tensor in state.values()),
            sum(tensor.numel() * tensor.element_size() for tensor in state.values()))


def snapshot_text(study: Study) -> str | None:
    """Which epochs the study's runs keep as snapshots and their disk use (None when they
    keep none): per model, one snapshot's size from its parameter and buffer count, and the
    whole grid's."""
    runs = study.runs()
    per_model: dict[str, tuple[list[int], int, int]] = {}
    total = 0
    for spec in runs:
        settings = {**study.training, **study.model_training.get(spec.model, {})}
        epochs = snapshot_epochs_of(settings.get("snapshot_epochs", []), settings["epochs"])
        classes = catalog.DATASETS[spec.dataset].classes
        if spec.model not in per_model:
            per_model[spec.model] = (epochs, *snapshot_bytes(spec.model, classes))
        total += len(epochs) * snapshot_bytes(spec.model, classes)[1]
    if not total:
        return None
    parts = [f"{model} after epochs {', '.join(map(str, epochs))}: {values:,} parameters and "
             f"buffers, {size / 1e6:.1f} MB a snapshot"
             for model, (epochs, values, size) in per_model.items() if epochs]
    return ("Snapshots: besides its final weights each run keeps its weights (only, written "
            "atomically like the checkpoint) after chosen epochs, for representations over "
            f"training: {'; '.join(parts)}. The {len(runs)} runs of the grid keep "
            f"{total / 1e9:.2f} GB of snapshots.")


def earlier_code_blocks(study: Study, states: list[RunState]) -> list[tuple]:
    """A paragraph on the earlier code's runs, or nothing when there are none."""
    earlier = earlier_code_runs(states)
    if earlier is None:
        return []
    return [("p", earlier.description(study.training.get("augmentation")))]
