"""scikit-learn's bundled 8x8 digits (no files, no data root) as a 32x32 RGB data set."""

from __future__ import annotations

import numpy as np

from .info import DatasetArrays, DatasetInfo

DIGITS_TEST_FRACTION = 0.2
DIGITS_UPSAMPLE = 4


def load_digits(info: DatasetInfo) -> DatasetArrays:
    """scikit-learn's 1,797 8x8 digits as 32x32 RGB, split 80/20 (stratified, random_state=0).

    Conversion: values 0..16 -> round(v * 255 / 16) (half to even; only v = 8 hits a half,
    127.5 -> 128), each pixel replicated into a 4x4 block (exact nearest-neighbour
    upsampling to 32x32), the grey channel copied to R, G and B. Both splits keep the
    original order of the images.
    """
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    digits = sklearn_digits()
    grey = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)  # [N,8,8]
    grey = grey.repeat(DIGITS_UPSAMPLE, axis=1).repeat(DIGITS_UPSAMPLE, axis=2)
    images = np.ascontiguousarray(np.broadcast_to(grey[:, None], (len(grey), 3, *grey.shape[1:])))
    labels = digits.target.astype(np.int64)
    train_index, test_index = train_test_split(
        np.arange(len(labels)), test_size=DIGITS_TEST_FRACTION, stratify=labels, random_state=0)
    train_index, test_index = np.sort(train_index), np.sort(test_index)
    return DatasetArrays(info, images[train_index], labels[train_index],
                         images[test_index], labels[test_index])
