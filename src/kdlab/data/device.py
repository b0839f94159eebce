"""The data set as uint8 tensors on the training device; batches are built there."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from ..run.errors import UserError
from .augmentation import augment, normalization
from .earlier import earlier_test_view, earlier_train_augment
from .info import (AUGMENTATIONS, BENCHMARK, BENCHMARK_NORMALIZATION, EARLIER,
                   EARLIER_NORMALIZATION, DatasetArrays)


class DeviceData:
    """The data set as uint8 tensors on the training device; batches are built there.

    ``info``: the :class:`DatasetInfo`; ``num_train``/``num_test``: number of images.
    ``augmentation``: ``"kdlab"`` (pad-and-crop + flip where the data set flips, test
    images as they are, ``info``'s statistics) or ``"earlier"`` (the earlier research
    code's preprocessing, see :mod:`kdlab.data.earlier`: resized crops + flip on every
    data set, resized centre crops for testing, its normalisation constants) or
    ``"benchmark"`` (kdlab's pad-and-crop + flip, which are RepDistiller's RandomCrop(32,
    padding=4) + RandomHorizontalFlip, with RepDistiller's normalisation constants where it
    gives them: :data:`kdlab.data.info.BENCHMARK_NORMALIZATION`).
    """

    def __init__(self, arrays: DatasetArrays, device: torch.device | str,
                 augmentation: str = "kdlab") -> None:
        if augmentation not in AUGMENTATIONS:
            raise UserError(f"unknown augmentation {augmentation!r}: expected one of "
                            f"{', '.join(AUGMENTATIONS)}")
        self.augmentation = augmentation
        self.info = arrays.info
        self.device = torch.device(device)
        self.train_images = torch.as_tensor(arrays.train_images).to(self.device)
        self.train_labels = torch.as_tensor(arrays.train_labels, dtype=torch.int64).to(self.device)
        self.test_images = torch.as_tensor(arrays.test_images).to(self.device)
        self.test_labels = torch.as_tensor(arrays.test_labels, dtype=torch.int64).to(self.device)
        self.num_train = len(self.train_labels)
        self.num_test = len(self.test_labels)
        self.validation_images = self.validation_labels = None
        if arrays.validation_images is not None:
            self.validation_images = torch.as_tensor(arrays.validation_images).to(self.device)
            self.validation_labels = torch.as_tensor(arrays.validation_labels,
                                                     dtype=torch.int64).to(self.device)
        self.num_validation = 0 if self.validation_labels is None else len(self.validation_labels)
        # The earlier code had no Digits, the benchmark only CIFAR-100: elsewhere their runs
        # keep kdlab's statistics.
        constants = {EARLIER: EARLIER_NORMALIZATION, BENCHMARK: BENCHMARK_NORMALIZATION}
        mean, std = constants.get(augmentation, {}).get(self.info.name,
                                                        (self.info.mean, self.info.std))
        self.mean, self.std = mean, std
        self._scale, self._shift = normalization(mean, std, self.device)

    def _normalize(self, images: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self._shift, images.float(), self._scale)

    def _augment(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.augmentation == EARLIER:
            return earlier_train_augment(images, generator)
        return augment(images, generator, self.info.pad, self.info.flip)

    @contextlib.contextmanager
    def _batch_threads(self) -> Iterator[None]:
        """On the CPU, build a batch on one thread, then give the model its threads back.

        A batch is a handful of memory-bound ops of ~0.4M elements: threading them gains
        little, but when the cores are shared (a busy node, several jobs per machine) every
        OpenMP barrier waits for a descheduled thread, which was measured to make a batch
        ~30x slower (112 ms instead of 4 ms on a loaded 2-core machine).
        """
        previous = torch.get_num_threads()
        if self.device.type != "cpu" or previous == 1:
            yield
            return
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(previous)

    def train_batches(self, batch_size: int, generator: torch.Generator, *,
                      with_indices: bool = False) -> Iterator[tuple[torch.Tensor, ...]]:
        """One epoch of (float32 [B,3,H,W] augmented, normalised images, int64 [B] labels),
        with ``with_indices`` also int64 [B] indices: each sample's position in the training
        set (``train_images``), on the device.

        The order is a permutation drawn from ``generator`` (a CPU ``torch.Generator``), as
        are the crops and flips; asking for the indices draws nothing more. Every image
        appears once; a final partial batch is kept unless it holds a single image
        (BatchNorm needs two).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if generator.device.type != "cpu":
            raise ValueError("train_batches needs a CPU torch.Generator (device-independent "
                             "random numbers)")
        order = torch.randperm(self.num_train, generator=generator)
        for start in range(0, self.num_train, batch_size):
            index = order[start:start + batch_size]
            if len(index) < 2 and len(index) < batch_size:
                break
            with self._batch_threads():
                index = index.to(self.device, non_blocking=True)
                images = self._augment(self.train_images[index], generator)
                batch = self._normalize(images), self.train_labels[index]
            yield (*batch, index) if with_indices else batch

    def test_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The test set in order, normalised, never augmented: (float32 [B,3,H,W], int64 [B])."""
        return self._evaluation_batches(self.test_images, self.test_labels, batch_size)

    def validation_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The held-out validation images in order, prepared exactly like the test set."""
        if self.validation_images is None:
            raise ValueError("this DeviceData holds no validation split "
                             "(see kdlab.data.validation.hold_out_validation)")
        return self._evaluation_batches(self.validation_images, self.validation_labels,
                                        batch_size)

    def _evaluation_batches(self, all_images: torch.Tensor, all_labels: torch.Tensor,
                            batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        for start in range(0, len(all_labels), batch_size):
            stop = start + batch_size
            with self._batch_threads():
                images = all_images[start:stop]
                if self.augmentation == EARLIER:
                    images = earlier_test_view(images)
                batch = self._normalize(images), all_labels[start:stop]
            yield batch
