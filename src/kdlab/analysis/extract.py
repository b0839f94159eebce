"""``kdlab extract STUDY``: save the representations of every finished run of a study.

Runs are discovered by walking the experiments tree in the study's layout
(:meth:`kdlab.study.study_file.Study.run_dirs`), not from a list of models: a run is finished when its status is ``completed`` and it has a
``best.pth``. Each finished run of the study's teacher/student on one of its data sets is
evaluated on the test split (no augmentation, eval mode, inference mode); the output of
every stage of the model is global-average-pooled and saved under the stage's own name
(the model's facts) with the logits and labels in one ``.npz`` per run (see :mod:`kdlab.analysis.store`). A representation newer than its
``best.pth`` is kept; unfinished, failed or corrupt runs are skipped with a one-line reason.
Each snapshot a finished run kept (``snapshot_epochs``) is extracted the same way into
:func:`kdlab.run.layout.representation_path` ``(..., epoch=N)``, with ``epoch`` in its
provenance, and kept while it is newer than its snapshot file.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..run import catalog, layout, state_files
from ..run.errors import UserError, WriteError
from ..run.layout import RunSpec
from ..study.study_file import Pair, Study, load_study
from . import store

DEFAULT_BATCH_SIZE = 500
_KDLAB, EARLIER, _BENCHMARK = catalog.AUGMENTATIONS   # as kdlab.data.info names them (no torch import)


@dataclass
class ExtractReport:
    """What one extraction pass did: files written, files already up to date, and
    (run name, reason) for every run skipped."""

    extracted: list[Path] = field(default_factory=list)
    up_to_date: list[Path] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    not_in_study: Counter = field(default_factory=Counter)
    earlier_code: Counter = field(default_factory=Counter)   # data set -> earlier-code runs

    def summary(self) -> str:
        line = (f"{len(self.extracted)} extracted, {len(self.up_to_date)} up to date, "
                f"{len(self.skipped)} skipped")
        if self.not_in_study:
            notes = ", ".join(f"{count} {reason}" for reason, count in
                              sorted(self.not_in_study.items()))
            line += f"; ignored runs not in this study: {notes}"
        return line


def _roles(study: Study, spec: RunSpec) -> list[str]:
    """Representation roles of a run: a pure run of a model the study uses both as teacher
    and as student is written as both."""
    role = study.role_of(spec)
    if role == "teacher" and spec.model in {pair.student for pair in study.pairs}:
        return ["teacher", "pure"]
    return [role]


def _outside_study(study: Study, spec: RunSpec) -> str | None:
    """Why a discovered run does not belong to the study (a short category), or None."""
    if spec.dataset not in study.datasets:
        return f"data set {spec.dataset}"
    if spec.model not in {model for pair in study.pairs for model in (pair.teacher,
                                                                      pair.student)}:
        return f"model {spec.model}"
    if not spec.is_pure:
        if Pair(spec.teacher, spec.model) not in study.pairs:
            return f"pair {spec.teacher}->{spec.model}"
        if spec.method not in study.methods:
            return f"method {spec.method}"
        if spec.alpha not in study.alpha_levels():
            return ("no alpha" if spec.alpha is None
                    else f"alpha {layout.format_alpha(spec.alpha)}")
    if spec.seed not in study.seeds:
        return f"seed {spec.seed}"
    return None


def _is_earlier_code(run_dir: Path) -> bool:
    try:
        return state_files.is_earlier_code(state_files.read_status(run_dir))
    except state_files.StateFileError:
        return False


def earlier_code_note(dataset: str, count: int, augmentation: str) -> str:
    """The line ``extract`` prints for a data set with ``count`` earlier-code runs: under
    which preprocessing their weights were evaluated."""
    runs = f"{count} run{'s' if count != 1 else ''} of the earlier code"
    if augmentation == EARLIER:
        return (f"{dataset}: {runs} evaluated under the earlier code's preprocessing "
                "(resize + centre crop, its normalisation), as they were trained "
                "([training] augmentation = \"earlier\")")
    return (f"{dataset}: {runs} evaluated under kdlab's preprocessing (test images as they "
            "are, kdlab's normalisation), not the resize + centre crop and normalisation "
            "they were trained with; set [training] augmentation = \"earlier\" in the study "
            "to evaluate them as trained")


def _unfinished_reason(run_dir: Path) -> str | None:
    """Why the run in ``run_dir`` cannot be extracted yet (None when it can)."""
    try:
        status = state_files.read_status(run_dir)
    except state_files.StateFileError as error:
        return f"corrupt status.json ({error})"
    if status is None:
        return "no status.json (never started)"
    state = status["status"]
    if state == state_files.FAILED:
        return f"failed: {status.get('reason') or 'no reason recorded'}"
    if state != state_files.COMPLETED:
        progress = ""
        if status.get("epoch") is not None and status.get("epochs") is not None:
            progress = f" (epoch {status['epoch']}/{status['epochs']})"
        return f"not finished: {state}{progress}"
    if not (run_dir / state_files.BEST_FILE).is_file():
        return f"completed but {state_files.BEST_FILE} is missing"
    return None


def _is_up_to_date(targets: list[Path], weights_path: Path, augmentation: str) -> bool:
    """Every target exists, is a complete representation, is not older than the weights and
    was evaluated under ``augmentation``'s test view (provenance without one: kdlab's)."""
    weights_mtime = weights_path.stat().st_mtime_ns
    for target in targets:
        try:
            if target.stat().st_mtime_ns < weights_mtime:
                return False
        except FileNotFoundError:
            return False
        if not store.is_readable(target):
            return False
        if (store.read_provenance(target) or {}).get("augmentation", _KDLAB) != augmentation:
            return False
    return True


def _damaged_representation(targets: list[Path]) -> str | None:
    """Why an existing representation file of a run is damaged, or None. Such a file holds
    nothing that its run's best.pth does not: it is named and extracted again."""
    for target in targets:
        if target.exists():
            reason = store.unreadable_reason(target)
            if reason is not None:
                return f"representation {target} is {reason}; extracting it again"
    return None


@dataclass
class _Weights:
    """One weights file of a finished run to extract: its final ``best.pth`` (``epoch``
    None) or the snapshot after ``epoch``, and the representation files it becomes."""

    spec: RunSpec
    run_dir: Path
    path: Path
    targets: list[Path]
    epoch: int | None = None

    @property
    def label(self) -> str:
        return self.spec.name if self.epoch is None else f"{self.spec.name} epoch {self.epoch}"


def _weights_of(study: Study, spec: RunSpec, run_dir: Path) -> list[_Weights]:
    """The final weights and every snapshot of one finished run, with their targets."""
    roles = _roles(study, spec)
    weights = [_Weights(spec, run_dir, run_dir / state_files.BEST_FILE,
                        [study.representation_path(spec, role) for role in roles])]
    for epoch in layout.snapshot_epochs_present(run_dir):
        weights.append(_Weights(spec, run_dir, layout.snapshot_path(run_dir, epoch),
                                [study.representation_path(spec, role, epoch)
                                 for role in roles], epoch))
    return weights


def _pending_runs(study: Study, experiments_dir: Path, report: ExtractReport,
                  log: Callable[[str], None]) -> list[_Weights]:
    """The weights (final and snapshots) of every finished run of the study whose
    representations are missing or older than them; records the others."""
    work: list[_Weights] = []
    for spec, run_dir in study.run_dirs(experiments_dir):
        outside = _outside_study(study, spec)
        if outside is not None:
            report.not_in_study[outside] += 1
            continue
        reason = _unfinished_reason(run_dir)
        if reason is not None:
            report.skipped.append((spec.name, reason))
            log(f"skip {spec.name}: {reason}")
            continue
        # a teacher shared by several pairs is one run: extracted once
        for weights in _weights_of(study, spec, run_dir):
            damaged = _damaged_representation(weights.targets)
            if damaged is not None:  # derived from the weights: named, then extracted again
                log(f"{weights.label}: {damaged}")
            try:
                if _is_up_to_date(weights.targets, weights.path,
                                  study.training["augmentation"]):
                    report.up_to_date.extend(weights.targets)
                    continue
            except FileNotFoundError:  # a snapshot removed since it was listed
                continue
            work.append(weights)
    return work


def representations_of(model, device_data, batch_size: int = DEFAULT_BATCH_SIZE,
                       stage_names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """Evaluate ``model`` on ``device_data``'s test split in order.

    Returns one array per stage of the model's ``Features.stages``, under its name in
    ``stage_names`` (the model's facts; None: 'stage1', 'stage2', ...): [N, channels], the
    feature map averaged over height and width; ``logits`` [N, C] as float32, ``labels``
    [N] int64 on the host and ``stage_names`` (str [S])."""
    import torch

    model.eval()
    stages: list[list] = []
    outputs: dict[str, list] = {"logits": [], "labels": []}
    with torch.inference_mode():
        for images, labels in device_data.test_batches(batch_size):
            features = model(images)
            if not stages:
                stages = [[] for _ in features.stages]
            for parts, feature_map in zip(stages, features.stages):
                parts.append(feature_map.float().mean(dim=(2, 3)).cpu())
            outputs["logits"].append(features.logits.float().cpu())
            outputs["labels"].append(labels.cpu())
    names = stage_names or tuple(f"stage{index}" for index in range(1, len(stages) + 1))
    if len(names) != len(stages):
        raise ValueError(f"the model has {len(stages)} stages, its facts name {len(names)}: "
                         f"{', '.join(names)}")
    arrays = {key: torch.cat(parts).numpy() for key, parts in outputs.items()}
    arrays.update({name: torch.cat(parts).numpy() for name, parts in zip(names, stages)})
    arrays[store.STAGE_NAMES_KEY] = np.array(names, dtype=str)
    return arrays


def extract_study(study: Study, device: str = "auto", batch_size: int = DEFAULT_BATCH_SIZE,
                  log: Callable[[str], None] = print) -> ExtractReport:
    """Extract every finished run of ``study`` that has no up-to-date representation.

    Prints one line per run written or skipped (through ``log``)."""
    from .. import data as kdata
    from ..models import build_model, load_weights_file
    from ..training.device import resolve_device

    experiments_dir = Path(study.experiments_dir)
    if not experiments_dir.is_dir():
        raise UserError(f"experiments directory {experiments_dir} (study {study.path}, key "
                        f"experiments_dir) does not exist: expected the folder the study's "
                        f"runs are trained into")
    report = ExtractReport()
    work = _pending_runs(study, experiments_dir, report, log)
    if work:
        store.ensure_writable_dir(layout.representations_dir(study.analysis_dir, study.name),
                                  "representations folder")
    torch_device = resolve_device(device) if work else None
    data_of: dict[str, object] = {}  # data set -> DeviceData, or the UserError text
    augmentation = study.training["augmentation"]   # the test view: kdlab's or the earlier one
    # grouped by data set (stable: walk order within one), one data set in memory at a time
    for index, weights in enumerate(sorted(work, key=lambda w: w.spec.dataset), 1):
        spec, run_dir, targets = weights.spec, weights.run_dir, weights.targets
        if spec.dataset not in data_of:
            data_of.clear()
            try:
                arrays = kdata.load_arrays(spec.dataset, study.data_root)
                data_of[spec.dataset] = kdata.DeviceData(arrays, torch_device,
                                                         augmentation=augmentation)
            except UserError as error:
                data_of[spec.dataset] = str(error)
        device_data = data_of[spec.dataset]
        if isinstance(device_data, str):
            report.skipped.append((weights.label, f"test data unavailable: {device_data}"))
            log(f"skip {weights.label}: test data unavailable: {device_data}")
            continue
        model = build_model(spec.model, device_data.info.num_classes)
        try:
            load_weights_file(model, weights.path, what="best weights" if weights.epoch is None
                              else "snapshot weights")
        except UserError as error:
            report.skipped.append((weights.label, f"corrupt: {error}"))
            log(f"skip {weights.label}: corrupt: {error}")
            continue
        if _is_earlier_code(run_dir) and weights.epoch is None:
            report.earlier_code[spec.dataset] += 1
        arrays = representations_of(model.to(torch_device), device_data, batch_size,
                                    catalog.model_facts(spec.model).stage_names)
        provenance = store.provenance_of(spec.name, run_dir, study.name, weights.path)
        if weights.epoch is not None:
            provenance["epoch"] = weights.epoch
        if augmentation != _KDLAB:   # the test view the outputs come from (absent: kdlab's)
            provenance["augmentation"] = augmentation
        if not _save(weights.label, targets, arrays, provenance, report, log):
            continue
        log(f"[{index}/{len(work)}] extracted {weights.label} -> {targets[0]}"
            + (f" (+{len(targets) - 1} more)" if len(targets) > 1 else "")
            + f" ({arrays['labels'].shape[0]} samples)")
    for dataset, count in sorted(report.earlier_code.items()):
        log(earlier_code_note(dataset, count, augmentation))
    return report


def _save(label: str, targets: list[Path], arrays: dict, provenance: dict,
          report: ExtractReport, log: Callable[[str], None]) -> bool:
    """Write the run's representation files; False (the run skipped, with the reason) when
    its arrays are not a valid representation, e.g. a diverged model's NaN features."""
    try:
        for target in targets:
            store.save_representation(target, arrays, provenance)
            report.extracted.append(target)
    except WriteError:
        raise
    except UserError as error:
        report.skipped.append((label, f"not saved: {error}"))
        log(f"skip {label}: not saved: {error}")
        return False
    return True


def command(args) -> int:
    """``kdlab extract STUDY [--device]``."""
    study = load_study(args.study)
    try:
        report = extract_study(study, device=args.device)
    except OSError as error:
        raise store.write_failure(error) from None
    print(f"extract {study.name}: {report.summary()}")
    return 0
