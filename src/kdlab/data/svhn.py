"""SVHN as distributed: ``SVHN/train_32x32.mat``, ``test_32x32.mat`` (or directly in the
root), MATLAB files with X uint8 [32,32,3,N] and y [N,1] (digit 0 written as class 10)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..run.errors import UserError
from ..run.layout import DATA_ROOT_ENV
from .info import DatasetArrays, DatasetInfo
from .reader import MissingFiles, Reader, check_labels, describe, torchvision_download

_SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}


def _locate(root: Path) -> dict:
    found, missing = {}, []
    for split, name in _SVHN_FILES.items():
        candidates = (root / "SVHN" / name, root / name)
        found[split] = next((path for path in candidates if path.is_file()), None)
        if found[split] is None:
            missing.append(name)
    if missing:
        raise MissingFiles(f"{', '.join(_SVHN_FILES.values())} in {root / 'SVHN'} or {root} "
                           f"(missing: {', '.join(missing)})")
    return {**found, "all": list(found.values())}


def _decode(info: DatasetInfo, sources: dict) -> DatasetArrays:
    train_images, train_labels = read_svhn_mat(sources["train"], info)
    test_images, test_labels = read_svhn_mat(sources["test"], info)
    return DatasetArrays(info, train_images, train_labels, test_images, test_labels)


def read_svhn_mat(path: Path, info: DatasetInfo) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [N,3,32,32], int64 [N]) from an SVHN ``*_32x32.mat`` (X [32,32,3,N], y [N,1])."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(path, variable_names=("X", "y"))
    except Exception as error:
        raise UserError(f"{path} is not a readable MATLAB file ({describe(error)})") from error
    images, labels = mat.get("X"), mat.get("y")
    size = info.image_size
    if (images is None or labels is None or images.dtype != np.uint8
            or images.shape[:3] != (size, size, 3) or images.ndim != 4
            or labels.size != images.shape[3]):
        raise UserError(f"{path}: expected X uint8 [{size},{size},3,N] and y [N,1]")
    labels = labels.reshape(-1).astype(np.int64)
    labels[labels == 10] = 0  # SVHN writes digit 0 as class 10
    images = np.ascontiguousarray(images.transpose(3, 2, 0, 1))
    return images, check_labels(labels, info, path)


def _how_to_get(root: Path) -> str:
    return (f"run with --download to fetch it through torchvision "
            f"(torchvision.datasets.SVHN(root={str(root / 'SVHN')!r}, split=..., download=True))"
            f", or point --data-root / ${DATA_ROOT_ENV} at the folder that holds SVHN/")


def _download(root: Path) -> None:
    import torchvision

    def fetch() -> None:
        for split in _SVHN_FILES:
            torchvision.datasets.SVHN(root=str(root / "SVHN"), split=split, download=True)

    torchvision_download("SVHN", root, fetch)


SVHN = Reader(_locate, _decode, _how_to_get, _download)
