"""Per-student cost of a KD step in a pack, relative to one pure step (issue 14).

A pack step is what `kdlab train` does per batch for a pack (kdlab.training.loop): one
teacher forward, then for every student its forward, loss terms, backward and SGD step. The
students of a pack of N cycle through the methods (mixed). Steps of every variant are
interleaved round by round, so that machine load hits them alike; medians are printed.

Also: the charlie grid's compute for one epoch of one data set and seed (a ResNet110 teacher,
the pure student and 18 KD students), separate against packed (teacher alone, then the pure
student and the 18 KD students as one pack), as the ratio of summed measured step costs.

Per method (``--per-method``): every method solo (the teacher's forward and one student) and
in a pack of 6 students of that method, the cost per student of each and what packing saves
per student beside what it should save, 5/6 of the teacher's forward (the one forward the six
share). CRD gets a training set of CIFAR-100's size (50,000 labels, 500 per class) and the
batch's indices in it; OFD the teacher.

Usage: python benchmarks/bench_pack.py [--sizes 1,6,18] [--rounds 5] [--threads N]
       python benchmarks/bench_pack.py --quick   (ResNet8 students, ResNet20 teacher, B=32)
       python benchmarks/bench_pack.py --per-method [--quick] [--methods crd,dkd]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from kdlab.run.config import TrainConfig
from kdlab.distill import METHOD_NAMES
from kdlab.run.layout import RunSpec
from kdlab.training.device import resolve_device
from kdlab.training.loop import batch_loss, optimizer_step, teacher_forward
from kdlab.run.config import complete_options
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
    parser.add_argument("--per-method", action="store_true",
                        help="every method solo and in a pack of 6 of that method")
    parser.add_argument("--methods", default=",".join(METHOD_NAMES),
                        help="methods of --per-method")
    args = parser.parse_args()
    if args.quick:
        args.student, args.teacher, args.batch_size, args.sizes = "ResNet8", "ResNet20", 32, "1,6"
    return args


CIFAR100_TRAIN_LABELS = torch.arange(50_000) % 100  # 500 per class, as CIFAR-100's training set


def student(args, device, method: str | None, teacher=None):
    """(context, state) of a student as the training code builds it; ``teacher``: the loaded
    teacher and a CIFAR-100-sized training set for the methods that need them."""
    kd = method is not None
    config = TrainConfig(dataset="Cifar100", model=args.student, batch_size=args.batch_size,
                         distillation=method or "none", alpha=0.5 if kd else None,
                         teacher_model=args.teacher if kd else None, device=str(device))
    if kd:
        config = complete_options(config)
    ctx = RunContext(config, RunSpec("Cifar100", args.student, 0), None, device, True, None)
    state = build_state(ctx, args.num_classes, 32,
                        CIFAR100_TRAIN_LABELS if teacher is not None else None, teacher)
    if state.distiller is not None and hasattr(state.distiller, "paraphraser_ready"):
        state.distiller.paraphraser_ready = True  # stage 1 is not part of a step
    return ctx, state


def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def pack_step(members, teacher, images, labels, device, batch=None) -> float:
    """Seconds for one batch of a pack: one teacher forward, then every student's step."""
    synchronize(device)
    start = time.perf_counter()
    teacher_outputs = None
    if any(state.distiller is not None for _, state in members):
        teacher_outputs = teacher_forward(members[0][0], teacher, images)
    for ctx, state in members:
        total, _, _ = batch_loss(ctx, state, teacher_outputs, images, labels, batch=batch)
        optimizer_step(state, total)
    synchronize(device)
    return time.perf_counter() - start


def per_method(args, device, teacher, images) -> None:
    """Every method solo and in a pack of 6 of itself, interleaved round by round."""
    from kdlab.distill import BatchContext

    indices = torch.randperm(len(CIFAR100_TRAIN_LABELS))[:args.batch_size]
    labels = CIFAR100_TRAIN_LABELS[indices].to(device)
    batch = BatchContext(labels, indices.to(device), epoch=1000, step=0)  # past any warm-up
    methods = [name.strip() for name in args.methods.split(",") if name.strip()]
    variants = {("teacher forward", 0): None}
    for name in methods:
        variants[(name, 1)] = [student(args, device, name, teacher)]
        variants[(name, 6)] = [student(args, device, name, teacher) for _ in range(6)]
    ctx = variants[(methods[0], 1)][0][0]
    times = {key: [] for key in variants}
    for round_index in range(args.rounds + 1):
        for key, members in variants.items():
            if members is None:
                synchronize(device)
                start = time.perf_counter()
                teacher_forward(ctx, teacher, images)
                synchronize(device)
                seconds = time.perf_counter() - start
            else:
                seconds = pack_step(members, teacher, images, labels, device, batch)
            if round_index:
                times[key].append(seconds)
        print(f"round {round_index}/{args.rounds} done", flush=True)
    median = {key: statistics.median(values) for key, values in times.items()}
    forward = median[("teacher forward", 0)]
    print(f"device {device}, threads {torch.get_num_threads()}, students {args.student}, "
          f"teacher {args.teacher}, batch {args.batch_size}, {args.rounds} rounds (medians); "
          f"teacher forward {forward * 1000:.1f} ms: a pack of 6 should save 5/6 of it, "
          f"{forward * 5 / 6 * 1000:.1f} ms per student")
    print(f"{'method':<18}{'solo (ms)':>10}{'pack of 6 (ms/student)':>24}{'saved (ms)':>12}"
          f"{'saved / expected':>18}")
    for name in methods:
        solo, packed = median[(name, 1)], median[(name, 6)] / 6
        print(f"{name:<18}{solo * 1000:>10.1f}{packed * 1000:>24.1f}"
              f"{(solo - packed) * 1000:>12.1f}{(solo - packed) / (forward * 5 / 6):>17.2f}x")


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
    if args.per_method:
        per_method(args, device, teacher, images)
        return
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
