"""Per-student cost of a KD step in a pack, relative to one pure step (issue 14).

A pack step is what `kdlab train` does per batch for a pack (kdlab.training.loop): one
teacher forward, then for every student its forward, loss terms, backward and SGD step. The
students of a pack of N cycle through the methods (mixed). Steps of every variant are
interleaved round by round, so that machine load hits them alike; medians are printed.

Also: the charlie grid's compute for one epoch of one data set and seed (a ResNet110 teacher,
the pure student and 18 KD students), separate against packed (teacher alone, then the pure
student and the 18 KD students as one pack), as the ratio of summed measured step costs.

Usage: python benchmarks/bench_pack.py [--sizes 1,6,18] [--rounds 5] [--threads N]
       python benchmarks/bench_pack.py --quick   (ResNet8 students, ResNet20 teacher, B=32)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from kdlab.config import TrainConfig
from kdlab.distill import METHOD_NAMES
from kdlab.layout import RunSpec
from kdlab.training.device import resolve_device
from kdlab.training.loop import batch_loss, optimizer_step, teacher_forward
from kdlab.config import complete_options
from kdlab.training.state import RunContext, build_state


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", default="ResNet56")
    parser.add_argument("--teacher", default="ResNet110")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--sizes", default="1,6,18")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (after one warm-up)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true",
                        help="ResNet8 students, ResNet20 teacher, batch 32, sizes 1,6")
    args = parser.parse_args()
    if args.quick:
        args.student, args.teacher, args.batch_size, args.sizes = "ResNet8", "ResNet20", 32, "1,6"
    return args


def student(args, device, method: str | None):
    """(context, state) of a student as the training code builds it."""
    kd = method is not None
    config = TrainConfig(dataset="Cifar100", model=args.student, batch_size=args.batch_size,
                         distillation=method or "none", alpha=0.5 if kd else None,
                         teacher_model=args.teacher if kd else None, device=str(device))
    if kd:
        config = complete_options(config)
    ctx = RunContext(config, RunSpec("Cifar100", args.student, 0), None, device, True, None)
    state = build_state(ctx, args.num_classes, 32)
    if state.distiller is not None and hasattr(state.distiller, "paraphraser_ready"):
        state.distiller.paraphraser_ready = True  # stage 1 is not part of a step
    return ctx, state


def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def pack_step(members, teacher, images, labels, device) -> float:
    """Seconds for one batch of a pack: one teacher forward, then every student's step."""
    synchronize(device)
    start = time.perf_counter()
    teacher_outputs = None
    if any(state.distiller is not None for _, state in members):
        teacher_outputs = teacher_forward(members[0][0], teacher, images)
    for ctx, state in members:
        total, _, _ = batch_loss(ctx, state, teacher_outputs, images, labels)
        optimizer_step(state, total)
    synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    from kdlab.models import build_model

    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    images = torch.randn(args.batch_size, 3, 32, 32, device=device)
    labels = torch.randint(0, args.num_classes, (args.batch_size,), device=device)
    teacher = build_model(args.teacher, args.num_classes).to(device).eval().requires_grad_(False)
    sizes = [int(size) for size in args.sizes.split(",")]
    variants = {"pure": [student(args, device, None)]}
    for size in sizes:
        variants[f"pack of {size}"] = [student(args, device, METHOD_NAMES[i % len(METHOD_NAMES)])
                                       for i in range(size)]
    teacher_args = argparse.Namespace(**{**vars(args), "student": args.teacher})
    variants["teacher (pure step)"] = [student(teacher_args, device, None)]
    times = {name: [] for name in variants}
    for round_index in range(args.rounds + 1):
        for name, members in variants.items():
            seconds = pack_step(members, teacher, images, labels, device)
            if round_index:  # the first round warms up
                times[name].append(seconds)
    median = {name: statistics.median(values) for name, values in times.items()}
    pure = median["pure"]
    print(f"device {device}, threads {torch.get_num_threads()}, students {args.student}, "
          f"teacher {args.teacher}, batch {args.batch_size}, {args.rounds} rounds (medians)")
    print(f"pure step: {pure * 1000:.1f} ms")
    for size in sizes:
        per_student = median[f"pack of {size}"] / size
        print(f"pack of {size:>2}: {per_student * 1000:.1f} ms per student = "
              f"{per_student / pure:.2f}x a pure step")
    largest = max(sizes)
    kd_solo = median["pack of 1"] if 1 in sizes else None
    if kd_solo is not None:
        # One data set and seed of charlie: the teacher, the pure student, 18 KD students.
        teacher_step = median["teacher (pure step)"]
        separate = teacher_step + pure + 18 * kd_solo
        packed = teacher_step + pure + 18 * median[f"pack of {largest}"] / largest
        print(f"charlie grid, one epoch (teacher + pure + 18 KD; KD at pack of {largest}): "
              f"packed / separate = {packed / separate:.2f}")


if __name__ == "__main__":
    main()
