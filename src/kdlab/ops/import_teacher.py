"""``kdlab import-teacher FILE --model NAME --dataset D --seed S --study STUDY``: a published
teacher (RepDistiller's ``{name}_vanilla/ckpt_epoch_240.pth``, or mdistiller's
``cifar_teachers.tar`` files, which are the same) becomes the study's completed teacher run
of that data set and seed, so that its students distil from it like from any teacher.

The file's state dict is mapped onto kdlab's model (:func:`kdlab.models.fitting_state_dict`)
and loaded strictly; the model is evaluated on the test set with the normalisation the file
was trained with (RepDistiller's for CIFAR-100, see :data:`kdlab.run.catalog.
REPDISTILLER_NORMALIZATION`) and, where the study prepares images otherwise, also as the
study does (what its students will distil under). The run directory then holds ``best.pth``
(kdlab's ``{'weights': state_dict}``), ``config.json`` (the study's teacher config) and
``status.json`` (completed, ``max_acc`` = the measured accuracy, ``made_by`` naming the file
and its SHA-256, ``imported`` with the file's record); no ``metrics.json``, since kdlab saw
no epoch of its training.

Every check (file, model, data set, classes, an existing run) comes before the first write:
a refusal is one line, exit 2, and nothing written. A finished (or any existing) teacher run
is replaced only with ``--force``; its files then move to ``replaced-TIME/`` inside the run
directory, so that nothing is lost and no stale file (checkpoint, curves, factor transfer's
paraphrasers of the old teacher) is read as the imported teacher's.
"""

from __future__ import annotations

import hashlib
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..run import catalog, state_files
from ..run.config import write_config_file
from ..run.errors import UserError
from ..run.layout import REPLACED_PREFIX, RunSpec
from ..study.study_file import Study, load_study

# A measured accuracy this many points under the published one earns a warning line.
WARN_BELOW_PUBLISHED_POINTS = 1.0


@dataclass(frozen=True)
class Normalization:
    """Per RGB channel, in [0, 1] pixel units; ``source``: where the numbers come from."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "source": self.source}


def file_normalization(dataset: str, mean=None, std=None) -> Normalization:
    """The normalisation the file was trained with: ``mean``/``std`` when given (both),
    RepDistiller's for the data sets it trained on, else kdlab's statistics of ``dataset``."""
    if (mean is None) != (std is None):
        raise UserError("--mean and --std: expected both (three numbers each) or neither")
    if mean is not None:
        values = [*mean, *std]
        if len(mean) != 3 or len(std) != 3 or not all(math.isfinite(v) for v in values) \
                or min(std) <= 0:
            raise UserError(f"--mean {list(mean)} --std {list(std)}: expected three finite "
                            "numbers each, the std above 0")
        return Normalization(tuple(mean), tuple(std), "the --mean/--std normalisation")
    if dataset in catalog.REPDISTILLER_NORMALIZATION:
        mean, std = catalog.REPDISTILLER_NORMALIZATION[dataset]
        return Normalization(mean, std, f"RepDistiller's {dataset} normalisation")
    from ..data import dataset_info

    info = dataset_info(dataset)
    return Normalization(info.mean, info.std,
                         f"kdlab's {dataset} statistics (none published for {dataset}: "
                         "--mean/--std give the file's own)")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def teacher_spec(study: Study, model: str, dataset: str, seed: int) -> RunSpec:
    """The study's teacher run of ``dataset`` and ``seed`` trained as ``model``; UserError
    naming what the study has when it has no such teacher run."""
    if model not in catalog.MODEL_FACTS:
        from ..models import MODEL_NAMES, repdistiller_name

        ours = [name for name in MODEL_NAMES if repdistiller_name(name) == model]
        if ours:
            raise UserError(f"unknown model {model!r}: that is RepDistiller's name of kdlab's "
                            f"{ours[0]}; expected kdlab's name (--model {ours[0]})")
    catalog.model_facts(model)  # an unknown name lists the known ones
    if dataset not in study.datasets:
        raise UserError(f"data set {dataset!r} is not in study {study.name} ({study.path}): "
                        f"expected one of {', '.join(study.datasets)}")
    if seed not in study.seeds:
        raise UserError(f"seed {seed} is not in study {study.name} ({study.path}): expected "
                        f"one of {', '.join(str(s) for s in study.seeds)}")
    spec = RunSpec(dataset, model, seed)
    teachers = study.teacher_runs()
    if spec not in teachers:
        names = sorted({run.model for run in teachers})
        raise UserError(f"{model} is not a teacher of study {study.name} ({study.path}): "
                        f"expected {' or '.join(names)}")
    return spec


def existing_run(run_dir: Path) -> str | None:
    """What the run directory holds already, in words ('completed (best 71.20%)'), or None
    when it holds no run."""
    try:
        status = state_files.read_status(run_dir)
    except state_files.StateFileError as error:
        return f"an unreadable status.json ({error})"
    if status is None:
        return None
    accuracy = status.get("max_acc")
    best = (f" (best {accuracy:.2f}%)" if isinstance(accuracy, (int, float))
            and not isinstance(accuracy, bool) else "")
    return f"a {status['status'].replace('_', ' ')} run{best}"


def refuse_existing(run_dir: Path, force: bool) -> None:
    found = existing_run(run_dir)
    if found is not None and not force:
        raise UserError(f"teacher run {run_dir} holds {found}: expected no run there; "
                        f"--force replaces it (its files move to {run_dir}/{REPLACED_PREFIX}"
                        "TIME/)")


def classifier_key(model) -> str:
    """The state-dict key of the model's classifier weight (its last Linear layer)."""
    from torch import nn

    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    return f"{names[-1]}.weight"


def read_teacher_file(path: Path, model_name: str, model, dataset: str) -> tuple[dict, dict]:
    """(kdlab state dict fitting ``model``, the file's own record: epoch and accuracy where
    it keeps them). UserError naming the file when it is not RepDistiller's checkpoint of
    this model for ``dataset``'s classes."""
    import torch

    from ..models import fitting_state_dict, from_repdistiller, read_weights_payload

    payload = read_weights_payload(path, "teacher file")
    if isinstance(payload, dict) and {"model", "rng", "config"} <= set(payload):
        # kdlab's checkpoint.pth: its weights were trained with kdlab's normalisation, not
        # RepDistiller's, and the run it belongs to is a kdlab run already.
        raise UserError(f"teacher file {path} is kdlab's own checkpoint.pth: expected "
                        "RepDistiller's checkpoint; a kdlab run needs no import (copy its run "
                        "directory into the study's experiments directory instead)")
    weights = payload.get("model") if isinstance(payload, dict) else None
    if not isinstance(weights, dict) or not weights or not all(
            isinstance(value, torch.Tensor) for value in weights.values()):
        found = (f"a dict with keys {', '.join(sorted(map(str, payload))[:5])}"
                 if isinstance(payload, dict) else type(payload).__name__)
        raise UserError(f"teacher file {path}: expected RepDistiller's checkpoint, a dict whose "
                        f"'model' is a state dict (as {{name}}_vanilla/ckpt_epoch_240.pth); "
                        f"found {found}")
    key = classifier_key(model)
    expected = model.state_dict()[key]
    found = from_repdistiller(model_name, weights).get(key, weights.get(key))
    if isinstance(found, torch.Tensor) and found.ndim == 2 and \
            found.shape[1] == expected.shape[1] and found.shape[0] != expected.shape[0]:
        raise UserError(f"teacher file {path} holds a {found.shape[0]}-class {model_name} "
                        f"(classifier {tuple(found.shape)}): expected {expected.shape[0]} "
                        f"classes, those of {dataset}")
    state_dict, _ = fitting_state_dict(model_name, model, {"model": weights}, path,
                                       "teacher file")
    record = {}
    for name, value in (("epoch", payload.get("epoch")),
                        ("accuracy", payload.get("accuracy", payload.get("best_acc")))):
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            record[name] = value
    return state_dict, record


class NormalizedTestSet:
    """The test split normalised with given constants, images otherwise as they are; it
    answers ``test_batches`` as :class:`kdlab.data.DeviceData` does, for
    :func:`kdlab.training.loop.evaluate`."""

    def __init__(self, arrays, normalization: Normalization, device) -> None:
        import torch

        from ..data.augmentation import normalization as scale_and_shift

        self.images = torch.as_tensor(arrays.test_images).to(device)
        self.labels = torch.as_tensor(arrays.test_labels, dtype=torch.int64).to(device)
        self.scale, self.shift = scale_and_shift(normalization.mean, normalization.std, device)

    def test_batches(self, batch_size: int):
        import torch

        for start in range(0, len(self.labels), batch_size):
            images = self.images[start:start + batch_size]
            yield torch.addcmul(self.shift, images.float(), self.scale), \
                self.labels[start:start + batch_size]


@dataclass
class Imported:
    """What one import measured and wrote."""

    spec: RunSpec
    run_dir: Path
    source: Path
    sha256: str
    accuracy: float                    # % on the test set, the file's normalisation
    study_accuracy: float | None       # % as the study prepares images, where that differs
    normalization: Normalization
    published: float | None
    replaced: Path | None

    @property
    def below_published(self) -> float | None:
        """Points under the published accuracy, when more than the warning's margin."""
        if self.published is None:
            return None
        gap = self.published - self.accuracy
        return gap if gap > WARN_BELOW_PUBLISHED_POINTS else None


def import_teacher(study: Study, source: str | Path, model_name: str, dataset: str, seed: int,
                   *, force: bool = False, device: str = "auto", mean=None, std=None,
                   download: bool = False) -> Imported:
    """Import ``source`` as the study's completed teacher run (see the module docstring)."""
    source = Path(source)
    spec = teacher_spec(study, model_name, dataset, seed)
    run_dir = study.run_dir(spec)
    refuse_existing(run_dir, force)
    normalization = file_normalization(dataset, mean, std)

    from ..data import DeviceData, load_arrays
    from ..models import build_model
    from ..training.device import resolve_device
    from ..training.loop import evaluate

    info = catalog.DATASETS[dataset]
    model = build_model(model_name, info.classes)
    state_dict, record = read_teacher_file(source, model_name, model, dataset)
    model.load_state_dict(state_dict, strict=True)
    digest = sha256_of(source)

    target = resolve_device(device)
    arrays = load_arrays(dataset, study.data_root, download=download)
    model.to(target).eval()
    batch_size = int(study.training["eval_batch_size"])
    _, accuracy = evaluate(model, NormalizedTestSet(arrays, normalization, target), batch_size)
    augmentation = study.training["augmentation"]
    study_data = DeviceData(arrays, target, augmentation=augmentation)
    study_accuracy = None
    if augmentation != "kdlab" or (tuple(study_data.mean), tuple(study_data.std)) != \
            (tuple(normalization.mean), tuple(normalization.std)):
        _, study_accuracy = evaluate(model, study_data, batch_size)
    published = catalog.PUBLISHED_TEACHER_ACCURACY.get((model_name, dataset))

    config = study.train_config(spec)
    now = time.time()
    imported = {
        "source": str(source.resolve()), "sha256": digest, "file": record,
        "normalization": normalization.to_dict(), "test_acc": accuracy,
        "study_preprocessing_test_acc": study_accuracy, "study_augmentation": augmentation,
        "published_acc": published,
        "published_source": catalog.PUBLISHED_TEACHER_SOURCE if published is not None else None,
        "imported_at": now,
    }
    # No epoch/epochs: kdlab trained none (the file's own epoch is in imported.file), and the
    # study's epoch progress counts a completed run as its planned epochs.
    status = {"status": state_files.COMPLETED, "config": config.to_dict(), "max_acc": accuracy,
              "final_acc": accuracy, "run": spec.name, "started_at": now, "completed_at": now,
              "imported": imported}

    from ..training.lock import RunLock

    with RunLock(run_dir) as lock:
        lock.acquire()  # no kdlab train may start this run while it is written
        refuse_existing(run_dir, force)  # nothing appeared while the file was evaluated
        replaced = move_aside(run_dir, lock.path.name)
        state_files.atomic_torch_save({"weights": model.cpu().state_dict()},
                                   run_dir / state_files.BEST_FILE)
        write_config_file(run_dir, config, force=True)
        # status.json last: the run reads as completed only once best.pth is in place
        state_files.write_status(run_dir, status, provenance=f"import-teacher from "
                              f"{imported['source']} (sha256 {digest})")
    return Imported(spec, run_dir, source, digest, accuracy, study_accuracy, normalization,
                    published, replaced)


def move_aside(run_dir: Path, keep: str) -> Path | None:
    """Move every entry of ``run_dir`` but ``keep`` (the lock) into ``replaced-TIME/`` inside
    it; that directory, or None when there was nothing to move."""
    entries = [entry for entry in sorted(run_dir.iterdir()) if entry.name != keep
               and not entry.name.startswith(REPLACED_PREFIX)]
    if not entries:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    target = run_dir / f"{REPLACED_PREFIX}{stamp}"
    suffix = 1
    while target.exists():
        suffix += 1
        target = run_dir / f"{REPLACED_PREFIX}{stamp}-{suffix}"
    target.mkdir()
    for entry in entries:
        entry.rename(target / entry.name)
    return target


def summary_lines(result: Imported) -> tuple[str, str | None]:
    """(the line saying what was imported, a warning line or None)."""
    line = (f"{result.spec.name}: imported {result.source} (sha256 {result.sha256[:16]}...) "
            f"into {result.run_dir}: test accuracy {result.accuracy:.2f}% with "
            f"{result.normalization.source}")
    if result.study_accuracy is not None:
        line += f", {result.study_accuracy:.2f}% as the study prepares images for its students"
    if result.published is not None:
        line += f"; published {result.published:.2f}%"
    if result.replaced is not None:
        line += f"; the run it replaced is in {result.replaced}"
    warning = None
    gap = result.below_published
    if gap is not None:
        warning = (f"warning: {result.spec.model} on {result.spec.dataset} measures "
                   f"{result.accuracy:.2f}%, {gap:.2f} points under the published "
                   f"{result.published:.2f}% ({catalog.PUBLISHED_TEACHER_SOURCE}): check the "
                   "file and the data before distilling from it")
    return line, warning


def command(args) -> int:
    study = load_study(args.study)
    result = import_teacher(study, args.file, args.model, args.dataset, args.seed,
                            force=args.force, device=args.device, mean=args.mean,
                            std=args.std, download=args.download)
    line, warning = summary_lines(result)
    print(line)
    if warning is not None:
        print(f"kdlab import-teacher: {warning}", file=sys.stderr)
    return 0
