"""Files on disk -> cached uint8 arrays: finds the reader of a data set and runs it."""

from __future__ import annotations

from pathlib import Path

from ..run.errors import UserError
from . import cache
from .cifar import CIFAR10, CIFAR100
from .digits import load_digits
from ..run.layout import default_data_root
from .info import DatasetArrays, dataset_info
from .reader import MissingFiles, Reader
from .svhn import SVHN
from .tiny_imagenet import TINY_IMAGENET

READERS: dict[str, Reader] = {
    "Cifar10": CIFAR10,
    "Cifar100": CIFAR100,
    "SVHN": SVHN,
    "TinyImageNet": TINY_IMAGENET,
}


def load_arrays(name: str, data_root: str | Path | None = None,
                download: bool = False) -> DatasetArrays:
    """Decode (or read from the cache) data set ``name`` under ``data_root``.

    ``data_root`` None means :func:`default_data_root`. ``download`` fetches a missing
    CIFAR or SVHN data set through torchvision first. Missing, corrupt or malformed files
    raise UserError naming the file and what was expected.
    """
    info = dataset_info(name)
    if name == "Digits":
        return load_digits(info)
    root = Path(data_root) if data_root is not None else default_data_root()
    reader = READERS[name]
    try:
        sources = reader.locate(root)
    except MissingFiles as missing:
        if not download:
            raise UserError(f"{name} data not found under {root}: expected {missing.expected}; "
                            f"{reader.how_to_get(root)}") from None
        reader.download(root)
        try:
            sources = reader.locate(root)
        except MissingFiles as still_missing:
            raise UserError(f"{name} data still not found under {root} after downloading: "
                            f"expected {still_missing.expected}") from None
    return cache.cached(info, root, sources, lambda: reader.decode(info, sources))
