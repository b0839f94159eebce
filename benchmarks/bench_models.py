"""Size and cost of every registered model: parameters, multiply-accumulates, one training step.

Per model (100 classes): its parameters beside the size the KD literature quotes for the
benchmark's model (CRD / RepDistiller, millions); multiply-accumulates of one 32x32 image
(every Conv2d and Linear, counted by forward hooks: output elements x input channels per
group x kernel area; BatchNorm, ReLU and pooling are not counted); one SGD training step's
median time (forward, cross-entropy, backward, step) at the batch size and its memory. On
the CPU the memory is what the step holds that the model does not: the distinct tensors
autograd saves for the backward (MiB); on CUDA it is the peak allocated memory of the step,
and the step is also timed with channels_last and with bf16 autocast.

Usage: python benchmarks/bench_models.py [--batch-size 64] [--rounds 3] [--threads N]
       [--models ResNet56,WRN40_2] [--device cpu|cuda] [--quick]
``--quick``: two small models, batch 8, one round (what tests/test_benchmarks.py runs).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from kdlab.models import MODEL_NAMES, build_model

# The sizes (millions of parameters, 100 classes) quoted for the benchmark's models since
# CRD (Tian et al. ICLR 2020); tests/models/test_models.py checks the exact counts round to them.
PUBLISHED_MILLIONS = {
    "ResNet20": 0.28, "ResNet32": 0.47, "ResNet56": 0.86, "ResNet110": 1.74,
    "ResNet8x4": 1.23, "ResNet32x4": 7.43, "WRN16_2": 0.70, "WRN40_1": 0.57, "WRN40_2": 2.26,
    "VGG8": 3.97, "VGG13": 9.46, "MobileNetV2": 0.81, "ShuffleNetV1": 0.95,
    "ShuffleNetV2": 1.36, "ResNet50": 23.71,
}
QUICK_MODELS = ("ResNet8", "WRN16_1")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODEL_NAMES))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3, help="timed steps (after one warm-up)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (steps are synchronised)")
    parser.add_argument("--quick", action="store_true",
                        help=f"{', '.join(QUICK_MODELS)} at batch 8, one round")
    args = parser.parse_args()
    if args.quick:
        args.models, args.batch_size, args.rounds = ",".join(QUICK_MODELS), 8, 1
    return args


def multiply_accumulates(model: nn.Module, image_size: int = 32) -> int:
    """Multiply-accumulates of one forward pass of one image of ``image_size`` pixels square,
    over every Conv2d and Linear (hooks on the real forward, so every family is counted as it
    computes)."""
    total = 0

    def count(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kernel = module.kernel_size[0] * module.kernel_size[1]
            total += output.numel() * (module.in_channels // module.groups) * kernel
        else:
            total += output.numel() * module.in_features

    hooks = [module.register_forward_hook(count) for module in model.modules()
             if isinstance(module, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, image_size, image_size))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return total


def saved_activation_bytes(model: nn.Module, images: torch.Tensor) -> int:
    """Bytes of the distinct tensors autograd saves for the backward of one forward pass
    (parameters excluded: they are the model's, not the step's)."""
    parameters = {p.data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor):
        pointer = tensor.untyped_storage().data_ptr()
        if pointer not in parameters:
            storages[pointer] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(images).logits.sum()
    return sum(storages.values())


def step_seconds(model, images, labels, rounds: int, autocast_dtype=None) -> float:
    """Median seconds of one SGD step (after one warm-up step)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    device = images.device
    times = []
    for round_index in range(rounds + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16,
                            enabled=autocast_dtype is not None):
            loss = F.cross_entropy(model(images).logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if round_index:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = [name.strip() for name in args.models.split(",") if name.strip()]
    cuda = device.type == "cuda"
    header = (f"{'model':<13}{'params':>12}{'published':>11}{'MMACs/img':>11}"
              f"{'step ms':>10}{'memory MiB':>12}")
    if cuda:
        header += f"{'ch-last ms':>12}{'bf16 ms':>10}"
    print(f"batch {args.batch_size}, {args.num_classes} classes, device {device}, "
          f"torch threads {torch.get_num_threads()}; memory: "
          f"{'peak allocated in a step' if cuda else 'saved for backward'}")
    print(header)
    for name in names:
        torch.manual_seed(0)
        model = build_model(name, args.num_classes)
        parameters = sum(p.numel() for p in model.parameters())
        macs = multiply_accumulates(model)
        model = model.to(device).train()
        images = torch.randn(args.batch_size, 3, 32, 32, device=device)
        labels = torch.randint(0, args.num_classes, (args.batch_size,), device=device)
        if cuda:
            step_seconds(model, images, labels, 0)
            torch.cuda.reset_peak_memory_stats(device)
            seconds = step_seconds(model, images, labels, args.rounds)
            memory = torch.cuda.max_memory_allocated(device) / 2**20
        else:
            seconds = step_seconds(model, images, labels, args.rounds)
            memory = saved_activation_bytes(model, images) / 2**20
        published = PUBLISHED_MILLIONS.get(name)
        line = (f"{name:<13}{parameters:>12,}{f'{published:.2f}M' if published else '-':>11}"
                f"{macs / 1e6:>11.1f}{seconds * 1e3:>10.1f}{memory:>12.1f}")
        if cuda:
            channels_last = model.to(memory_format=torch.channels_last)
            line += f"{step_seconds(channels_last, images.contiguous(memory_format=torch.channels_last), labels, args.rounds) * 1e3:>12.1f}"
            line += f"{step_seconds(model, images, labels, args.rounds, torch.bfloat16) * 1e3:>10.1f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
