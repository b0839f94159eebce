"""Cost of one knowledge-distillation training step relative to a pure step, per method.

A pure step: student forward, cross-entropy, backward, SGD step. A KD step adds the frozen
teacher's forward (under ``torch.inference_mode()``, outputs cloned out of it as the
training loop does), the method's loss terms in float32 and the backward through its extra
modules. Steps of all variants are interleaved round by round, so that a change in machine
load hits every variant alike; the figure per variant is the median over rounds.

Then, per method, what it adds beside the student: trainable parameters (counted as
mdistiller's ``get_extra_parameters`` counts them: the method's own modules, CRD's banks
listed apart) and buffers, in floats and MiB. CRD's training set has CIFAR-100's size (50,000
labels, 500 per class; the batch is 64 of its indices), so its banks, its negatives' draw and
its memory update cost what they cost on the benchmark; the draw and the update are also
timed alone, as shares of CRD's step.

Last figure: the RKD angle term alone (forward + backward) at the batch size, the paper's
O(B³) triplet form against the earlier round's O(B²) pairwise-cosine form.

Usage: python benchmarks/bench_kd_step.py [--batch-size 128] [--rounds 5] [--threads N]
Factor transfer's stage 1 (the paraphraser's pre-training) is not part of a step.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from kdlab.distill import METHOD_NAMES, build_distiller
from kdlab.distill.base import BatchContext
from kdlab.models import build_model, describe_features


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", default="ResNet56")
    parser.add_argument("--teacher", default="ResNet110")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (after one warm-up)")
    parser.add_argument("--angle-repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--methods", default=",".join(METHOD_NAMES))
    parser.add_argument("--device", default="cpu", help="cpu or cuda (steps are synchronised)")
    parser.add_argument("--train-size", type=int, default=50_000,
                        help="training-set size for CRD's banks (CIFAR-100: 50,000)")
    return parser.parse_args()


class StepRunner:
    """One training step of the student, pure (``distiller=None``) or with a method."""

    def __init__(self, args, distiller, teacher, images, labels, indices) -> None:
        torch.manual_seed(0)
        self.device = torch.device(args.device)
        self.student = build_model(args.student, args.num_classes).to(self.device).train()
        self.distiller = distiller
        self.teacher = teacher
        self.images, self.labels = images, labels
        self.indices = indices
        parameters = list(self.student.parameters())
        if distiller is not None:
            distiller.train()
            parameters += list(distiller.parameters())
        self.optimizer = torch.optim.SGD(parameters, lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step(self) -> float:
        """Seconds for one step."""
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        outputs = self.student(self.images)
        loss = F.cross_entropy(outputs[-1], self.labels)
        if self.distiller is not None:
            with torch.inference_mode():
                teacher_outputs = self.teacher(self.images)
            teacher_outputs = teacher_outputs.map(torch.clone)
            terms = self.distiller(outputs, teacher_outputs,
                                   BatchContext(self.labels, self.indices))
            loss = 0.5 * loss + 0.5 * sum(terms.values())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start


def time_angle(form: str, embeddings: torch.Tensor, teacher: torch.Tensor, repeats: int) -> float:
    """Median seconds of forward + backward of the RKD angle term alone (the last stage
    given as [B, D, 1, 1] maps, so its pooled embedding is the vector itself)."""
    from kdlab.models.features import FeatureShapes, Features

    def shapes(width: int) -> FeatureShapes:
        return FeatureShapes(stages=((width, 1, 1),), pooled=width, classes=10)

    distiller = build_distiller("rkd", shapes(embeddings.shape[1]), shapes(teacher.shape[1]),
                                {"distance_weight": 0.0, "angle_weight": 1.0, "angle": form})
    teacher_maps = teacher[:, :, None, None]
    teacher_features = Features([teacher_maps], [teacher_maps], teacher, teacher[:, :10])
    times = []
    for index in range(repeats + 1):
        leaf = embeddings[:, :, None, None].detach().clone().requires_grad_(True)
        start = time.perf_counter()
        student_features = Features([leaf], [leaf], leaf.flatten(1), leaf.flatten(1)[:, :10])
        distiller(student_features, teacher_features, None)["rkd_angle"].backward()
        if index:  # the first call warms up
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def print_extras(runners, times, pure) -> None:
    """Per method: extra trainable parameters and buffers beside the student, and the step
    against logit KD's."""
    logit = statistics.median(times["logit"]) if "logit" in times else None
    print(f"\n{'method':<20}{'trainable params':>17}{'buffers (floats)':>18}{'buffers MiB':>12}"
          f"{'step vs logit':>15}")
    for name, runner in runners.items():
        if runner.distiller is None:
            continue
        params = sum(p.numel() for p in runner.distiller.parameters() if p.requires_grad)
        floats = sum(b.numel() for b in runner.distiller.buffers() if b.is_floating_point())
        mib = sum(b.numel() * b.element_size() for b in runner.distiller.buffers()) / 2 ** 20
        versus = (f"{statistics.median(times[name]) / logit:>14.2f}x" if logit else f"{'':>15}")
        print(f"{name:<20}{params:>17,}{floats:>18,}{mib:>12.1f}{versus}")
    print("(mdistiller's get_extra_parameters counts the trainable parameters, and for CRD "
          "its banks too: the sum of both columns)")


def print_crd_parts(distiller, indices, step: float, rounds: int) -> None:
    """CRD's draw of negatives and its memory update alone, as shares of its whole step."""
    vectors = torch.randn(2, len(indices), distiller.feature_dim, device=indices.device)
    vectors = torch.nn.functional.normalize(vectors, dim=2)
    draws, updates = [], []
    for _ in range(rounds + 1):
        start = time.perf_counter()
        distiller.draw_contrast_indices(indices)
        draws.append(time.perf_counter() - start)
        start = time.perf_counter()
        distiller.update_banks(indices, vectors[0], vectors[1])
        if indices.device.type == "cuda":
            torch.cuda.synchronize()
        updates.append(time.perf_counter() - start)
    draw, update = statistics.median(draws[1:]), statistics.median(updates[1:])
    print(f"CRD parts: drawing {distiller.negatives:,} negatives per sample {1e3 * draw:.1f} ms "
          f"({100 * draw / step:.1f}% of its step), the memory update {1e3 * update:.2f} ms "
          f"({100 * update / step:.2f}%; goal <= 5%)")


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = [name.strip() for name in args.methods.split(",") if name.strip()]
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=generator)
    # A training set of the benchmark's size, `train_size // classes` per class; the batch is
    # a random draw of its indices.
    train_labels = torch.arange(args.train_size) % args.num_classes
    indices = torch.randperm(args.train_size, generator=generator)[:args.batch_size]
    labels = train_labels[indices]
    images, labels, indices = images.to(args.device), labels.to(args.device), indices.to(args.device)
    teacher = build_model(args.teacher, args.num_classes).to(args.device).eval()
    teacher.requires_grad_(False)
    student_shapes = describe_features(args.student, args.num_classes, args.image_size)
    teacher_shapes = describe_features(args.teacher, args.num_classes, args.image_size)

    runners = {"pure": StepRunner(args, None, teacher, images, labels, indices)}
    for name in methods:
        distiller = build_distiller(name, student_shapes, teacher_shapes, {})
        distiller.attach_training_set(train_labels)
        distiller = distiller.to(args.device)
        distiller.attach_teacher(teacher)   # OFD reads its margins from the teacher, as the loop gives it
        if name == "factor_transfer":
            distiller.paraphraser_ready = True  # stage 1 is a one-off, not part of a step
        runners[name] = StepRunner(args, distiller, teacher, images, labels, indices)

    print(f"{args.student} student, {args.teacher} teacher, batch {args.batch_size} x 3 x "
          f"{args.image_size} x {args.image_size}, {torch.get_num_threads()} threads, "
          f"{args.rounds} interleaved rounds after 1 warm-up", flush=True)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for round_index in range(args.rounds + 1):
        for name, runner in runners.items():
            seconds = runner.step()
            if round_index:
                times[name].append(seconds)
        print(f"round {round_index}/{args.rounds}: "
              + "  ".join(f"{name} {runner_times[-1]:.2f}s" if runner_times else f"{name} warm-up"
                          for name, runner_times in times.items()), flush=True)

    pure = statistics.median(times["pure"])
    print(f"\n{'variant':<20}{'median step (s)':>16}{'vs pure':>10}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<20}{median:>16.3f}{median / pure:>9.2f}x")

    print_extras(runners, times, pure)
    if "crd" in runners:
        print_crd_parts(runners["crd"].distiller, indices, statistics.median(times["crd"]),
                        args.rounds)

    embeddings = torch.randn(args.batch_size, student_shapes.stages[-1][0], generator=generator)
    teacher_embeddings = torch.randn(args.batch_size, teacher_shapes.stages[-1][0],
                                     generator=generator)
    triplet = time_angle("triplet", embeddings, teacher_embeddings, args.angle_repeats)
    pairwise = time_angle("pairwise_cosine", embeddings, teacher_embeddings, args.angle_repeats)
    print(f"\nRKD angle term alone, B = {args.batch_size} (forward + backward, median of "
          f"{args.angle_repeats}):")
    print(f"  triplet (B^3 = {args.batch_size ** 3:,} entries)   {1e3 * triplet:8.2f} ms  "
          f"= {100 * triplet / pure:.1f}% of a pure step")
    print(f"  pairwise_cosine (B^2 entries)     {1e3 * pairwise:8.2f} ms  "
          f"= {100 * pairwise / pure:.2f}% of a pure step; triplet/pairwise = "
          f"{triplet / pairwise:.0f}x")


if __name__ == "__main__":
    main()
