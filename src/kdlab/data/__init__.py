"""Data sets: files on disk -> cached uint8 arrays -> uint8 tensors on the training device.

One reader module per on-disk format, read under the data root (``--data-root``,
``$KDLAB_DATA_ROOT``, ``./data``):

``cifar``          Cifar10 / Cifar100 python pickles
``svhn``           SVHN ``*_32x32.mat``
``tiny_imagenet``  the ``tiny-imagenet-200/`` folders, read in place
``digits``         scikit-learn's bundled 8x8 digits; no files, no data root

``cache`` keeps each decoded file-based data set in ``{root}/.kdlab-cache/{name}.npz``,
reused while it is newer than every source file; ``load`` ties readers and cache together.
``device`` holds :class:`DeviceData` (the arrays as tensors on the training device) and
``augmentation`` its batched augmentation, ``earlier`` the earlier research code's
(``augmentation = "earlier"``): no PIL and no per-image Python in the hot loop.
``validation`` holds out the stratified validation part of the training split
(``selection = "validation"``).
"""

from __future__ import annotations

from .augmentation import augment, normalize
from .cache import CACHE_DIR_NAME, CACHE_FORMAT_VERSION
from .device import DeviceData
from .info import (AUGMENTATIONS, DATASET_NAMES, DATASETS, EARLIER_NORMALIZATION,
                   DatasetArrays, DatasetInfo, dataset_info)
from .load import load_arrays
from .tiny_imagenet import TINY_IMAGENET_URL

__all__ = [
    "AUGMENTATIONS", "CACHE_DIR_NAME", "CACHE_FORMAT_VERSION", "DATASETS", "DATASET_NAMES",
    "EARLIER_NORMALIZATION", "DatasetArrays", "DatasetInfo", "DeviceData",
    "TINY_IMAGENET_URL", "augment", "dataset_info", "load_arrays", "normalize",
]
