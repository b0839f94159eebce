"""GPU-hours a study's grid needs, scaled from one measured epoch time.

Cost model: an epoch of a run costs its training images x multiply-accumulates per image,
where a trained model counts three times its forward MACs (forward, and a backward of about
twice the forward) and a KD run's frozen teacher counts its forward once. The anchor is one
measured epoch: by default the earlier research code's ResNet112 -> ResNet56 KD run on one
V100 (CIFAR, 50,000 training images, batch 128): 2,603 s for 150 epochs, 17.4 s an epoch
(charlie's records, studies/charlie.toml). Its throughput (MACs per second) prices every other
run. It is an estimate, not a measurement: small models (MobileNetV2, the ShuffleNets) and
small batches (the benchmark's 64) use a GPU less well than the anchor, so their time is
under-estimated; method overheads (CRD's bank, ReviewKD's fusion) are not counted. Replace
the anchor with an epoch you measured (`benchmarks/gpu_check.sh` prints epoch seconds):

    python benchmarks/estimate_gpu_hours.py studies/cifar100-benchmark.toml \
        [--anchor-seconds 17.4 --anchor-student ResNet56 --anchor-teacher ResNet112 \
         --anchor-images 50000] [--train-images 50000]
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_models import multiply_accumulates  # noqa: E402

from kdlab.run import catalog  # noqa: E402
from kdlab.models import build_model  # noqa: E402
from kdlab.study.study_file import load_study  # noqa: E402

# Training images per data set (the standard splits kdlab reads).
TRAIN_IMAGES = {"Cifar10": 50_000, "Cifar100": 50_000, "SVHN": 73_257,
                "TinyImageNet": 100_000, "Digits": 1_437}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("--anchor-seconds", type=float, default=2603 / 150,
                        help="measured seconds of one epoch of the anchor run")
    parser.add_argument("--anchor-student", default="ResNet56")
    parser.add_argument("--anchor-teacher", default="ResNet112",
                        help="the anchor run's teacher ('' for a run without one)")
    parser.add_argument("--anchor-images", type=int, default=50_000)
    parser.add_argument("--anchor-classes", type=int, default=100)
    return parser.parse_args(argv)


@functools.cache
def forward_macs(model: str, classes: int, image_size: int) -> int:
    return multiply_accumulates(build_model(model, classes), image_size)


def image_macs(model: str, teacher: str | None, classes: int, image_size: int) -> int:
    """MACs of one training image: 3x the trained model's forward, plus a teacher forward."""
    macs = 3 * forward_macs(model, classes, image_size)
    return macs + (forward_macs(teacher, classes, image_size) if teacher else 0)


def main(argv=None) -> None:
    args = parse_args(argv)
    study = load_study(args.study)
    anchor = image_macs(args.anchor_student, args.anchor_teacher or None, args.anchor_classes, 32)
    throughput = anchor * args.anchor_images / args.anchor_seconds  # MACs per second
    print(f"anchor: {args.anchor_student} <- {args.anchor_teacher or 'no teacher'}, "
          f"{args.anchor_seconds:.1f} s an epoch of {args.anchor_images:,} images: "
          f"{throughput / 1e12:.2f} TMAC/s")
    hours: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for spec in study.runs():
        facts = catalog.DATASETS[spec.dataset]
        config = study.train_config(spec)
        teacher = None if spec.is_pure else spec.teacher
        seconds = (config.epochs * TRAIN_IMAGES[spec.dataset]
                   * image_macs(spec.model, teacher, facts.classes, facts.image_size)
                   / throughput)
        group = ("teacher/pure " + spec.model if spec.is_pure
                 else f"KD {spec.teacher} -> {spec.model}")
        hours[group] += seconds / 3600
        counts[group] += 1
    width = max(map(len, hours))
    for group in sorted(hours):
        print(f"{group:<{width}}  {counts[group]:4d} runs  {hours[group]:8.1f} GPU-h")
    total = sum(hours.values())
    print(f"{'total':<{width}}  {sum(counts.values()):4d} runs  {total:8.1f} GPU-h "
          f"(~{total / max(study.scheduler.max_live_jobs, 1) / 24:.1f} days at "
          f"{study.scheduler.max_live_jobs} jobs at a time)")


if __name__ == "__main__":
    main()
