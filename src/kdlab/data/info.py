"""What kdlab knows about each data set, and the decoded arrays' container (no torch)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..run import catalog
from ..run.errors import UserError



@dataclass(frozen=True)
class DatasetInfo:
    """What the pipeline needs to know about a data set.

    ``mean``/``std`` are per RGB channel in [0, 1] pixel units; ``image_size`` is the side
    in pixels of the square images; ``pad`` the zero padding (pixels) of the random crop.
    """

    name: str
    num_classes: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    flip: bool
    pad: int = 4


def _info(name: str, mean, std, flip: bool) -> DatasetInfo:
    """Classes and image size come from the catalog (one place); the pipeline's own facts
    (normalisation, flip) are given here."""
    facts = catalog.DATASETS[name]
    return DatasetInfo(name, facts.classes, facts.image_size, mean, std, flip=flip)


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        # Channel statistics of the training splits as commonly published (the exact
        # per-pixel std, not the 0.2023/0.1994/0.2010 that circulates for CIFAR-10).
        _info("Cifar10", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), flip=True),
        _info("Cifar100", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), flip=True),
        # House numbers: a mirrored digit is not the same digit, so no flip.
        _info("SVHN", (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), flip=False),
        _info("TinyImageNet", (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262), flip=True),
        # Computed from this package's Digits train split (1,437 images) after the conversion
        # in digits.load_digits: mean and population std of all pixel values / 255 (the three
        # channels are copies of one grey channel; 4x replication changes neither statistic).
        # tests/data/test_data.py recomputes them.
        _info("Digits", (0.3054, 0.3054, 0.3054), (0.3760, 0.3760, 0.3760), flip=False),
    )
}
DATASET_NAMES: tuple[str, ...] = tuple(DATASETS)

# Augmentations a run can name (TrainConfig.augmentation); see kdlab.data.earlier.
KDLAB, EARLIER, BENCHMARK = catalog.AUGMENTATIONS
AUGMENTATIONS = catalog.AUGMENTATIONS

# The field's benchmark (``augmentation = "benchmark"``): RepDistiller's CIFAR-100 loader
# (dataset/cifar100.py; mdistiller's is the same) trains on RandomCrop(32, padding=4) +
# RandomHorizontalFlip and normalises with these (mean, std), which differ from the
# statistics above in the third decimal. It defines no other data set: there the benchmark
# choice keeps kdlab's statistics (and its crop and flip, which are the same transforms).
BENCHMARK_NORMALIZATION: dict[str, tuple[tuple[float, float, float],
                                         tuple[float, float, float]]] = {
    "Cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}

# The earlier research code's Normalize constants per data set (mean, std), as its data
# loader (toolbox/data_loader.py) set them: ImageNet's for TinyImageNet. It had no Digits:
# those runs keep kdlab's own statistics (see DeviceData).
EARLIER_NORMALIZATION: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "Cifar10": ((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)),
    "Cifar100": ((0.5071, 0.4867, 0.4409), (0.267, 0.256, 0.276)),
    "SVHN": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "TinyImageNet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name``; UserError listing the valid names otherwise."""
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        raise UserError(f"unknown data set {name!r}: expected one of "
                        f"{', '.join(DATASET_NAMES)}") from None


@dataclass
class DatasetArrays:
    """A decoded data set in host memory.

    ``train_images`` uint8 [N,3,H,W], ``train_labels`` int64 [N] (class indices),
    ``test_images`` uint8 [M,3,H,W], ``test_labels`` int64 [M]; H = W = ``info.image_size``.
    ``validation_images``/``validation_labels`` ([V,3,H,W] / [V]) only after
    :func:`kdlab.data.validation.hold_out_validation` moved them out of the training split.
    """

    info: DatasetInfo
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    validation_images: np.ndarray | None = None
    validation_labels: np.ndarray | None = None
