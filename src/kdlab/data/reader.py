"""What every file-based reader shares: the reader record, missing files, label checks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..run.errors import UserError
from .info import DatasetArrays, DatasetInfo


class MissingFiles(Exception):
    """Raised by a reader's ``locate``; ``expected`` says which files were expected where."""

    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


@dataclass(frozen=True)
class Reader:
    """How one file-based data set is found, fetched and decoded.

    ``locate(root)`` returns the source files (a dict; ``"all"`` lists every file whose
    modification time the cache must beat) or raises :class:`MissingFiles`.
    """

    locate: Callable[[Path], dict]
    decode: Callable[[DatasetInfo, dict], DatasetArrays]
    how_to_get: Callable[[Path], str]
    download: Callable[[Path], None]


def check_labels(labels: np.ndarray, info: DatasetInfo, path: Path) -> np.ndarray:
    """``labels`` as int64 [N]; UserError naming ``path`` unless all are in 0..classes-1."""
    labels = np.asarray(labels).reshape(-1)
    if labels.size and (not np.issubdtype(labels.dtype, np.integer)
                        or labels.min() < 0 or labels.max() >= info.num_classes):
        raise UserError(f"{path}: labels must be integers in 0..{info.num_classes - 1}, "
                        f"found {labels.dtype} values in {labels.min()}..{labels.max()}")
    return labels.astype(np.int64)


def describe(error: Exception) -> str:
    """``Type: first line of the message`` (one line, for a UserError)."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def torchvision_download(what: str, root: Path, fetch: Callable[[], None]) -> None:
    """Run ``fetch`` (torchvision's downloader); any failure becomes one UserError line."""
    try:
        fetch()
    except Exception as error:  # urllib, integrity and archive errors all end up here
        raise UserError(f"downloading {what} into {root} failed ({describe(error)})") from error
