"""CIFAR-10 and CIFAR-100 as distributed: python pickles of uint8 rows (R, G, B planes).

``Cifar10``   ``cifar-10-batches-py/data_batch_1..5``, ``test_batch``
``Cifar100``  ``cifar-100-python/train``, ``test`` (fine labels)
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from ..run.errors import UserError
from ..run.layout import DATA_ROOT_ENV
from .info import DatasetArrays, DatasetInfo
from .reader import MissingFiles, Reader, check_labels, describe, torchvision_download


def cifar_reader(name: str, folder: str, train_files: tuple[str, ...], test_file: str,
                 label_key: bytes, dataset_class: str) -> Reader:
    """The :class:`Reader` of one CIFAR variant (``dataset_class``: torchvision's class)."""
    files = (*train_files, test_file)

    def locate(root: Path) -> dict:
        directory = root / folder
        missing = [name for name in files if not (directory / name).is_file()]
        if missing:
            listing = (f"{train_files[0]}..{train_files[-1][-1]}, {test_file}"
                       if len(train_files) > 1 else ", ".join(files))
            raise MissingFiles(f"{listing} in {directory} (missing: {', '.join(missing)})")
        return {"train": [directory / name for name in train_files],
                "test": [directory / test_file],
                "all": [directory / name for name in files]}

    def decode(info: DatasetInfo, sources: dict) -> DatasetArrays:
        train = [read_cifar_pickle(path, label_key, info) for path in sources["train"]]
        test_images, test_labels = read_cifar_pickle(sources["test"][0], label_key, info)
        return DatasetArrays(info, np.concatenate([images for images, _ in train]),
                             np.concatenate([labels for _, labels in train]),
                             test_images, test_labels)

    def how_to_get(root: Path) -> str:
        return (f"run with --download to fetch it through torchvision "
                f"(torchvision.datasets.{dataset_class}(root={str(root)!r}, download=True)), "
                f"or point --data-root / ${DATA_ROOT_ENV} at the folder that holds {folder}/")

    def download(root: Path) -> None:
        import torchvision

        dataset = getattr(torchvision.datasets, dataset_class)

        def fetch() -> None:
            dataset(root=str(root), train=True, download=True)
            dataset(root=str(root), train=False, download=True)

        torchvision_download(name, root, fetch)

    return Reader(locate, decode, how_to_get, download)


def read_cifar_pickle(path: Path, label_key: bytes,
                      info: DatasetInfo) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [N,3,32,32], int64 [N]) from one CIFAR python pickle (rows are R,G,B planes)."""
    try:
        with open(path, "rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
    except Exception as error:
        raise UserError(f"{path} is not a readable CIFAR python pickle "
                        f"({describe(error)})") from error
    size = info.image_size
    data = batch.get(b"data") if isinstance(batch, dict) else None
    labels = batch.get(label_key) if isinstance(batch, dict) else None
    if (not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2
            or data.shape[1] != 3 * size * size or labels is None or len(labels) != len(data)):
        raise UserError(f"{path}: expected a CIFAR batch dict with b'data' uint8 "
                        f"[N,{3 * size * size}] and {label_key!r} of length N")
    return data.reshape(-1, 3, size, size), check_labels(np.asarray(labels), info, path)


CIFAR10 = cifar_reader("Cifar10", "cifar-10-batches-py",
                       tuple(f"data_batch_{index}" for index in range(1, 6)),
                       "test_batch", b"labels", "CIFAR10")
CIFAR100 = cifar_reader("Cifar100", "cifar-100-python", ("train",), "test",
                        b"fine_labels", "CIFAR100")
