"""The validation hold-out: a stratified part of the training split that is never trained on.

With ``selection = "validation"`` a run chooses ``best.pth`` on these images, so that the
test split is measured but never used to choose. The split depends only on the data set
(its training labels) and the run's seed, so the teacher and the students of one seed hold
out the same images.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np

from ..run.errors import UserError
from .info import DatasetArrays


def validation_split_indices(labels: np.ndarray, fraction: float,
                             seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held out): sorted int64 indices into ``labels`` (int [N]).

    scikit-learn's ``train_test_split`` with ``stratify=labels`` and ``random_state=seed``:
    each class keeps its share in both parts. UserError when ``fraction`` is not in (0, 1)
    or the split cannot hold every class.
    """
    from sklearn.model_selection import train_test_split

    if not 0.0 < fraction < 1.0:
        raise UserError(f"validation_fraction {fraction}: expected a fraction in (0, 1)")
    index = np.arange(len(labels))
    try:
        kept, held_out = train_test_split(index, test_size=fraction, stratify=labels,
                                          random_state=seed)
    except ValueError as error:
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise UserError(f"validation_fraction {fraction} of {len(labels)} training images "
                        f"cannot be split by class ({first_line}): expected every class "
                        "to keep images on both sides") from None
    return np.sort(kept).astype(np.int64), np.sort(held_out).astype(np.int64)


def hold_out_validation(arrays: DatasetArrays, fraction: float,
                        seed: int) -> tuple[DatasetArrays, dict]:
    """``arrays`` with the validation part moved out of the training split, and its record.

    The returned arrays' ``train_*`` hold only the kept images (original order) and
    ``validation_*`` the held-out ones. The record (for status.json) names the fraction,
    the seed, both sizes and the SHA-256 of the held-out indices (int64, little-endian), so
    that two runs can be seen to share their split.
    """
    kept, held_out = validation_split_indices(arrays.train_labels, fraction, seed)
    split = replace(arrays, train_images=arrays.train_images[kept],
                    train_labels=arrays.train_labels[kept],
                    validation_images=arrays.train_images[held_out],
                    validation_labels=arrays.train_labels[held_out])
    record = {"fraction": fraction, "seed": seed, "stratified": True,
              "train_size": int(len(kept)), "validation_size": int(len(held_out)),
              "validation_indices_sha256": hashlib.sha256(
                  held_out.astype("<i8").tobytes()).hexdigest()}
    return split, record
