"""Training throughput of kdlab's tensor pipeline against a torchvision per-image pipeline.

Both feed the same ResNet56 training steps (SGD, cross-entropy) on the current device with
the same augmentation (random crop 32 with 4-pixel zero padding, horizontal flip,
normalisation) of the same synthetic CIFAR-shaped uint8 images:

  kdlab        DeviceData.train_batches: uint8 tensor on the device, one gather per batch
  torchvision  Dataset of PIL images + RandomCrop/RandomHorizontalFlip/ToTensor/Normalize,
               DataLoader with num_workers 0 and 2

The pipelines are measured interleaved (round robin, order rotated every round) so that
other load on a shared machine affects them alike. Prints figures; asserts nothing.

    python benchmarks/bench_pipeline.py [--images 4096] [--steps 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import copy
import itertools
import time
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from kdlab.data import DATASETS, DatasetArrays, DeviceData
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

    def __init__(self, arrays: DatasetArrays) -> None:
        self.images = [Image.fromarray(image.transpose(1, 2, 0)) for image in arrays.train_images]
        self.labels = arrays.train_labels.tolist()
        self.transform = transforms.Compose([
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(INFO.mean, INFO.std),
        ])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.transform(self.images[index]), self.labels[index]


def kdlab_batches(arrays: DatasetArrays, batch_size: int,
                  device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    device_data = DeviceData(arrays, device)
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
        self.train_images = self.train_seconds = 0.0
        self.pipeline_batches = self.pipeline_images = self.pipeline_seconds = 0.0

    def step(self) -> int:
        images, labels = next(self.batches)
        loss = F.cross_entropy(self.model(images)[-1], labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return len(labels)

    def fetch(self) -> int:
        return len(next(self.batches)[1])

    def timed(self, steps: int, warmup: int, action: Callable[[], int]) -> tuple[int, float]:
        for _ in range(warmup):
            action()
        synchronize(self.device)
        start = time.perf_counter()
        images = sum(action() for _ in range(steps))
        synchronize(self.device)
        return images, time.perf_counter() - start

    def train_round(self, steps: int, warmup: int) -> None:
        self.model.train()
        images, seconds = self.timed(steps, warmup, self.step)
        self.train_images += images
        self.train_seconds += seconds

    def pipeline_round(self, batches: int, warmup: int) -> None:
        images, seconds = self.timed(batches, warmup, self.fetch)
        self.pipeline_batches += batches
        self.pipeline_images += images
        self.pipeline_seconds += seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4096, help="synthetic training images")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--model", default="ResNet56")
    parser.add_argument("--steps", type=int, default=8, help="timed training steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--pipeline-batches", type=int, default=30,
                        help="timed batches per round of the pipeline-only measurement")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of the main process (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    torch.manual_seed(0)
    arrays = synthetic_arrays(args.images, seed=0)
    dataset = PilDataset(arrays)
    base_model = build_model(args.model, INFO.num_classes).to(device)
    contenders = [Contender("kdlab DeviceData", kdlab_batches(arrays, args.batch_size, device),
                            copy.deepcopy(base_model), device)]
    for workers in args.workers:
        contenders.append(Contender(
            f"torchvision DataLoader, {workers} workers",
            torchvision_batches(dataset, args.batch_size, workers, device),
            copy.deepcopy(base_model), device))
    # A DataLoader prefetches 2 batches per worker while the other pipelines run: fetching
    # that many (without the model) first keeps them out of the timed steps.
    drain = 2 + 2 * max(args.workers, default=0)
    print(f"device {device}, torch threads {torch.get_num_threads()}, {args.model}, "
          f"batch {args.batch_size}, {args.images} synthetic images, {args.rounds} rounds x "
          f"{args.steps} timed training steps per pipeline (after 1 warm-up step), "
          f"{args.pipeline_batches} timed batches of pipeline alone per round", flush=True)

    for round_index in range(args.rounds):
        shift = round_index % len(contenders)
        for contender in contenders[shift:] + contenders[:shift]:
            contender.pipeline_round(args.pipeline_batches, warmup=drain)
            contender.train_round(args.steps, warmup=1)
            print(f"  round {round_index + 1}: {contender.name:<34} "
                  f"train {contender.train_images / contender.train_seconds:8.1f} img/s so far",
                  flush=True)

    kdlab = contenders[0]
    kdlab_rate = kdlab.train_images / kdlab.train_seconds
    print("\npipeline alone (no model):")
    for contender in contenders:
        seconds = contender.pipeline_seconds
        print(f"  {contender.name:<34} {contender.pipeline_batches / seconds:9.1f} batches/s"
              f"  {contender.pipeline_images / seconds:10.0f} img/s")
    print(f"\n{args.model} training steps fed by each pipeline:")
    for contender in contenders:
        rate = contender.train_images / contender.train_seconds
        ms_per_step = 1000 * contender.train_seconds / (contender.train_images / args.batch_size)
        ratio = "" if contender is kdlab else f"   kdlab is {kdlab_rate / rate:.2f}x faster"
        print(f"  {contender.name:<34} {rate:8.1f} img/s  {ms_per_step:7.1f} ms/step{ratio}")
    kdlab_ms = 1000 * args.batch_size / (kdlab.pipeline_images / kdlab.pipeline_seconds)
    step_ms = 1000 * kdlab.train_seconds / (kdlab.train_images / args.batch_size)
    print(f"\nwhere the time goes with kdlab: {kdlab_ms:.2f} ms of {step_ms:.1f} ms per step "
          f"is the pipeline ({100 * kdlab_ms / step_ms:.1f}%), the rest is the model")


if __name__ == "__main__":
    main()
