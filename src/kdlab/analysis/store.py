"""Representation files: one ``.npz`` per run, written atomically, read with clear errors.

Keys: one per stage of the model, under the stage's own name (``catalog.ModelFacts
.stage_names``: [N, channels of the stage], its global-average-pooled output), ``logits``
[N,C] (float32), ``labels`` [N] (int64), rows in the order of the data set's test split,
and ``stage_names`` (the stage keys, first to last; left out for the ResNets' stages). Files without ``stage_names`` (the
earlier research code's and kdlab's before it named stages) hold the CIFAR ResNets'
:data:`UNNAMED_STAGES`. Where a file lives is decided by
:func:`kdlab.run.layout.representation_path`.

Provenance (optional key ``provenance``, a JSON string): the run (its name and directory),
the study, the SHA-256 of the weights file the features came from and kdlab's version.
Files written before provenance existed have none and still load
(:func:`read_provenance` returns None).
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np

from ..run import catalog, state_files
from ..run.errors import UserError
from ..run.state_files import atomic_write_bytes
from .. import __version__

# The stages of a file that does not name them: every model that wrote such files was a
# CIFAR ResNet, whose stages the ResNet facts name.
UNNAMED_STAGES = catalog.LAYER_NAMES
LAYERS = UNNAMED_STAGES   # the name earlier callers import
STAGE_NAMES_KEY = "stage_names"
BASE_KEYS = ("logits", "labels")
PROVENANCE_KEY = "provenance"


def stage_names_of(arrays: dict, where: str = "") -> tuple[str, ...]:
    """The stage keys of a representation's ``arrays``, first to last."""
    if STAGE_NAMES_KEY not in arrays:
        return UNNAMED_STAGES
    names = np.asarray(arrays[STAGE_NAMES_KEY])
    if names.ndim != 1 or names.size == 0 or names.dtype.kind != "U":
        raise UserError(f"representation {where}: '{STAGE_NAMES_KEY}' must be a non-empty "
                        f"list of names, found {names.dtype} {names.shape}")
    stages = tuple(str(name) for name in names)
    reserved = set(stages) & {*BASE_KEYS, STAGE_NAMES_KEY, PROVENANCE_KEY}
    if reserved or len(set(stages)) != len(stages):
        raise UserError(f"representation {where}: stage names {', '.join(stages)}: expected "
                        "distinct names other than " + ", ".join(BASE_KEYS))
    return stages


def validate_representation(arrays: dict, where: str) -> dict[str, np.ndarray]:
    """Check keys, ranks, dtypes, that every array has the same N and that the features are
    finite; return the arrays as float32 features (each stage, logits), int64 labels and,
    unless they are :data:`UNNAMED_STAGES`, ``stage_names`` (str [S]). UserError naming
    ``where`` otherwise."""
    stages = stage_names_of(arrays, where)
    keys = (*stages, *BASE_KEYS)
    missing = [key for key in keys if key not in arrays]
    if missing:
        raise UserError(f"representation {where}: missing array(s) {', '.join(missing)}; "
                        f"expected {', '.join(keys)}")
    labels = np.asarray(arrays["labels"])
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"representation {where}: 'labels' must be integer [N], found "
                        f"{labels.dtype} {labels.shape}")
    result = {"labels": labels.astype(np.int64, copy=False)}
    if stages != UNNAMED_STAGES:   # the ResNets' files read and write as they always did
        result[STAGE_NAMES_KEY] = np.array(stages, dtype=str)
    for key in (*stages, "logits"):
        array = np.asarray(arrays[key])
        if array.ndim != 2 or array.shape[0] != labels.shape[0] or array.shape[1] < 1:
            raise UserError(f"representation {where}: '{key}' must be [{labels.shape[0]}, d], "
                            f"found {array.shape}")
        if not np.issubdtype(array.dtype, np.floating):
            raise UserError(f"representation {where}: '{key}' must be float, found {array.dtype}")
        finite = np.isfinite(array)
        if not finite.all():
            raise UserError(f"representation {where}: '{key}' holds {int(finite.size - finite.sum())} "
                            "NaN or infinite values, expected finite numbers")
        result[key] = array.astype(np.float32, copy=False)
    return result


def save_representation(path: str | Path, arrays: dict, provenance: dict | None = None) -> None:
    """Validate ``arrays`` (see module docstring) and write them to ``path`` atomically,
    with ``provenance`` (JSON-serialisable) when given."""
    arrays = validate_representation(arrays, str(path))
    stored = {key: arrays[key] for key in (*stage_names_of(arrays), *BASE_KEYS,
                                           STAGE_NAMES_KEY) if key in arrays}
    if provenance is not None:
        stored[PROVENANCE_KEY] = np.array(json.dumps(provenance, sort_keys=True))
    buffer = io.BytesIO()
    np.savez(buffer, **stored)
    atomic_write_bytes(path, buffer.getvalue())


def load_representation(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of one representation file. UserError naming the file when it is missing,
    unreadable, corrupt or malformed."""
    try:
        with _open_archive(path) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except FileNotFoundError:
        raise UserError(f"representation {path} does not exist") from None
    except _READ_ERRORS as error:
        raise UserError(f"representation {path} is unreadable or corrupt "
                        f"({type(error).__name__}: {error})") from None
    return validate_representation(arrays, str(path))


def weights_digest(path: str | Path) -> str:
    """SHA-256 (hex) of a weights file, for a representation's provenance."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def provenance_of(run_name: str, run_dir: str | Path, study_name: str,
                  weights_path: str | Path) -> dict:
    return {"run": run_name, "run_dir": str(run_dir), "study": study_name,
            "weights_sha256": weights_digest(weights_path), "kdlab_version": __version__}


def read_provenance(path: str | Path) -> dict | None:
    """The provenance stored with a representation; None when the file has none (written
    before provenance existed) or it cannot be read or parsed."""
    try:
        with _open_archive(path) as archive:
            if PROVENANCE_KEY not in archive.files:
                return None
            value = json.loads(str(archive[PROVENANCE_KEY]))
    except _READ_ERRORS:
        return None
    return value if isinstance(value, dict) else None


# What numpy and zipfile raise for a truncated, garbled or non-npz file.
_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError, TypeError)


def _open_archive(path: str | Path):
    archive = np.load(path, allow_pickle=False)
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError("a single .npy array, expected an .npz archive")
    return archive


def is_readable(path: str | Path) -> bool:
    """True when ``path`` is a complete representation file (all keys present). Cheap: reads
    the archive's directory, not the arrays."""
    return unreadable_reason(path) is None


def unreadable_reason(path: str | Path) -> str | None:
    """Why ``path`` is not a complete representation file (one line), or None when it is."""
    try:
        with _open_archive(path) as archive:
            names = {STAGE_NAMES_KEY: archive[STAGE_NAMES_KEY]} \
                if STAGE_NAMES_KEY in archive.files else {}
            keys = (*stage_names_of(names, str(path)), *BASE_KEYS)
            missing = [key for key in keys if key not in archive.files]
    except UserError as error:
        return f"unreadable: {error}"
    except _READ_ERRORS as error:
        return f"unreadable: {type(error).__name__}: {error}"
    return f"unreadable: missing array(s) {', '.join(missing)}" if missing else None


def ensure_writable_dir(folder: str | Path, what: str) -> None:
    """Create ``folder`` if needed and check a file can be written in it; the writer's one
    line naming it (e.g. a file in the way, or read-only) otherwise, before any work."""
    state_files.ensure_directory(folder)


def write_failure(error: OSError) -> UserError:
    """One line for a write that failed part-way (a full disk, a read-only subfolder)."""
    where = error.filename or "the analysis folder"
    return UserError(f"cannot write {where} ({error.strerror or error}): expected a writable "
                     "analysis folder with free space")
