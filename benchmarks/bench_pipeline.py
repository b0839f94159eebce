"""Training throughput of kdlab's tensor pipeline against a torchvision per-image pipeline.

Both feed the same ResNet56 training steps (SGD, cross-entropy) on the current device with
the same augmentation of the same synthetic CIFAR-shaped uint8 images. ``--augmentation
kdlab`` (default): random crop 32 with 4-pixel zero padding, horizontal flip, normalisation;
``--augmentation earlier``: RandomResizedCrop(32) + horizontal flip + the earlier code's
normalisation:

  kdlab        DeviceData.train_batches: uint8 tensor on the device, one gather per batch
               (earlier: boxes drawn as tensors, two gathers of bilinear taps per axis)
  torchvision  Dataset of PIL images + RandomCrop (or RandomResizedCrop) /
               RandomHorizontalFlip/ToTensor/Normalize, DataLoader with num_workers 0 and 2

The pipelines are measured interleaved (one training step each in turn, order rotated every
round) so that other load on a shared machine affects them alike. Prints figures; asserts
nothing.

    python benchmarks/bench_pipeline.py [--images 4096] [--steps 24] [--threads 1]
                                        [--augmentation earlier]
"""

from __future__ import annotations

import argparse
import copy
import itertools
import statistics
import time
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from kdlab.data import DATASETS, EARLIER_NORMALIZATION, DatasetArrays, DeviceData
from kdlab.models import build_model

INFO = DATASETS["Cifar10"]


def synthetic_arrays(count: int, seed: int) -> DatasetArrays:
    """Random uint8 [count,3,32,32] images with 10 labels (content does not matter for speed)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, count).astype(np.int64)
    return DatasetArrays(INFO, images, labels, images[:256], labels[:256])


class PilDataset(Dataset):
    """The classic torchvision recipe: one PIL image per sample, transformed per image."""

    def __init__(self, arrays: DatasetArrays, augmentation: str) -> None:
        self.images = [Image.fromarray(image.transpose(1, 2, 0)) for image in arrays.train_images]
        self.labels = arrays.train_labels.tolist()
        crop, (mean, std) = ((transforms.RandomResizedCrop(32), EARLIER_NORMALIZATION[INFO.name])
                             if augmentation == "earlier"
                             else (transforms.RandomCrop(32, padding=4), (INFO.mean, INFO.std)))
        self.transform = transforms.Compose([
            crop,
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.transform(self.images[index]), self.labels[index]


def kdlab_batches(arrays: DatasetArrays, batch_size: int, device: torch.device,
                  augmentation: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    device_data = DeviceData(arrays, device, augmentation=augmentation)
    for epoch in itertools.count():
        generator = torch.Generator().manual_seed(epoch)
        yield from device_data.train_batches(batch_size, generator)


def torchvision_batches(dataset: PilDataset, batch_size: int, workers: int,
                        device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0, pin_memory=device.type == "cuda",
                        drop_last=True)
    while True:
        for images, labels in loader:
            yield (images.to(device, non_blocking=True), labels.to(device, non_blocking=True))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Contender:
    """One pipeline feeding its own copy of the model; accumulates timed images and seconds."""

    def __init__(self, name: str, batches: Iterator, model: torch.nn.Module,
                 device: torch.device) -> None:
        self.name, self.batches, self.device = name, batches, device
        self.model = model
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9,
                                         weight_decay=5e-4)
        self.step_seconds: list[float] = []
        self.pipeline_batches = self.pipeline_seconds = 0.0

    def step(self) -> None:
        images, labels = next(self.batches)
        loss = F.cross_entropy(self.model(images)[-1], labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def timed_step(self) -> None:
        synchronize(self.device)
        start = time.perf_counter()
        self.step()
        synchronize(self.device)
        self.step_seconds.append(time.perf_counter() - start)

    def pipeline_block(self, batches: int, drain: int) -> None:
        for _ in range(drain):
            next(self.batches)
        synchronize(self.device)
        start = time.perf_counter()
        for _ in range(batches):
            next(self.batches)
        synchronize(self.device)
        self.pipeline_seconds += time.perf_counter() - start
        self.pipeline_batches += batches


def rotated(items: list, shift: int) -> list:
    shift %= len(items)
    return items[shift:] + items[:shift]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4096, help="synthetic training images")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--model", default="ResNet56")
    parser.add_argument("--steps", type=int, default=24,
                        help="timed training steps per pipeline (alternated one by one)")
    parser.add_argument("--pipeline-rounds", type=int, default=6)
    parser.add_argument("--pipeline-batches", type=int, default=10,
                        help="timed batches per round of the pipeline-alone measurement")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of the main process (default: torch's choice)")
    parser.add_argument("--augmentation", default="kdlab", choices=("kdlab", "earlier"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    torch.manual_seed(0)
    arrays = synthetic_arrays(args.images, seed=0)
    dataset = PilDataset(arrays, args.augmentation)
    base_model = build_model(args.model, INFO.num_classes).to(device)
    contenders = [Contender("kdlab DeviceData", kdlab_batches(arrays, args.batch_size, device,
                                                          args.augmentation),
                            copy.deepcopy(base_model), device)]
    for workers in args.workers:
        contenders.append(Contender(
            f"torchvision DataLoader, {workers} workers",
            torchvision_batches(dataset, args.batch_size, workers, device),
            copy.deepcopy(base_model), device))
    # A DataLoader prefetches 2 batches per worker while the other pipelines run: those are
    # fetched untimed before each block of the pipeline-alone measurement.
    drain = 2 * max(args.workers, default=0)
    print(f"device {device}, torch threads {torch.get_num_threads()}, {args.model}, "
          f"batch {args.batch_size}, {args.images} synthetic images, "
          f"augmentation {args.augmentation}", flush=True)

    print(f"pipeline alone: {args.pipeline_rounds} rounds x {args.pipeline_batches} batches "
          f"per pipeline, interleaved", flush=True)
    for round_index in range(args.pipeline_rounds):
        for contender in rotated(contenders, round_index):
            contender.pipeline_block(args.pipeline_batches, drain)

    print(f"training: 1 warm-up step each, then {args.steps} rounds of one timed step per "
          f"pipeline, order rotated every round", flush=True)
    for contender in contenders:
        contender.model.train()
        contender.step()
    for round_index in range(args.steps):
        for contender in rotated(contenders, round_index):
            contender.timed_step()
        if (round_index + 1) % 4 == 0 or round_index + 1 == args.steps:
            print(f"  {round_index + 1}/{args.steps}: " + ", ".join(
                f"{1000 * statistics.median(c.step_seconds):.0f}" for c in contenders)
                + " ms/step (median so far)", flush=True)

    batch = args.batch_size
    print("\npipeline alone (no model):")
    for contender in contenders:
        rate = contender.pipeline_batches / contender.pipeline_seconds
        print(f"  {contender.name:<34} {rate:9.1f} batches/s  {rate * batch:10.0f} img/s  "
              f"{1000 / rate:7.2f} ms/batch")
    kdlab = contenders[0]
    kdlab_rate = batch * len(kdlab.step_seconds) / sum(kdlab.step_seconds)
    kdlab_median = statistics.median(kdlab.step_seconds)
    print(f"\n{args.model} training steps fed by each pipeline:")
    for contender in contenders:
        rate = batch * len(contender.step_seconds) / sum(contender.step_seconds)
        median = statistics.median(contender.step_seconds)
        ratio = ("" if contender is kdlab else
                 f"   kdlab/this: {kdlab_rate / rate:.2f}x (mean), {median / kdlab_median:.2f}x "
                 f"(median)")
        print(f"  {contender.name:<34} {rate:8.1f} img/s  median {1000 * median:7.1f} ms/step"
              f"{ratio}")
    pipeline_ms = 1000 * kdlab.pipeline_seconds / kdlab.pipeline_batches
    print(f"\nwhere the time goes with kdlab: {pipeline_ms:.2f} ms of a median "
          f"{1000 * kdlab_median:.1f} ms per step is the pipeline "
          f"({100 * pipeline_ms / (1000 * kdlab_median):.1f}%), the rest is the model")
    if 0 in args.workers:
        # In the main process the per-image pipeline runs in series with the model, so this
        # is the most any pipeline can gain over it on this device with this model.
        serial = contenders[1 + args.workers.index(0)]
        model_ms = 1000 * kdlab_median - pipeline_ms
        serial_ms = 1000 * serial.pipeline_seconds / serial.pipeline_batches
        print(f"bound: against {serial.name}, even a pipeline that cost nothing could make a "
              f"step at most {(model_ms + serial_ms) / model_ms:.2f}x faster here "
              f"(({model_ms:.0f} + {serial_ms:.1f}) ms / {model_ms:.0f} ms)")
    if args.workers and max(args.workers) > 0:
        print("note: DataLoader workers prepare batches in the background while the other "
              "pipelines' steps run, so their CPU time partly lands in those steps (a bias in "
              "the workers' favour)")


if __name__ == "__main__":
    main()
