"""Time `kdlab analyze` on the full charlie-sized grid of synthetic representations.

Grid: studies/charlie.toml (4 data sets x (6 methods x 3 alphas + teacher + pure student)
x 3 seeds = 240 representations), each with ``--samples`` test samples (CIFAR: 10,000) of
the real shapes: layer1 [N,16], layer2 [N,32], layer3 [N,64], logits [N,C] with C = 10 /
100 / 10 / 200. Everything is written to a temporary directory.

The representations are synthetic but shaped like a network's: post-ReLU features with
class structure and a decaying spectrum; a student shares a part of its teacher's features
that grows with alpha, seen through a random rotation of its own channels.

Printed: the wall time of each step of a first (cold-cache) analysis, the CPU time of each
metric summed over all models / pairs, the total, and the time of a re-run after adding one run (the cache
at work). The goal of issue 5 is a first analysis under 10 minutes on 2 cores.

Usage: python benchmarks/bench_analysis.py [--jobs 2] [--samples 10000]
                                           [--datasets Cifar10,SVHN] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

from kdlab.analysis import analyze, figures
from kdlab.analysis.store import save_representation
from kdlab.study import load_study

CLASSES = {"Cifar10": 10, "Cifar100": 100, "SVHN": 10, "TinyImageNet": 200}
WIDTHS = {"layer1": 16, "layer2": 32, "layer3": 64}
STUDY = Path(__file__).resolve().parent.parent / "studies" / "charlie.toml"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (0: all cores)")
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--datasets", default=None, help="comma-separated subset of charlie's")
    parser.add_argument("--keep", default=None, help="work in this directory and keep it")
    return parser.parse_args()


class Generator:
    """Synthetic representations of one data set (deterministic per data set and run)."""

    def __init__(self, dataset: str, samples: int) -> None:
        rng = np.random.default_rng(zlib.crc32(dataset.encode()))
        self.classes = CLASSES[dataset]
        self.labels = rng.permutation(np.arange(samples) % self.classes).astype(np.int64)
        self.shared = {}
        for layer, width in WIDTHS.items():
            spectrum = 1.0 / np.arange(1, width + 1) ** 0.8     # decaying variance
            class_means = rng.normal(size=(self.classes, width)) * (0.4 + 0.3 * width / 64)
            latent = rng.normal(size=(samples, width)) * np.sqrt(spectrum)
            self.shared[layer] = class_means[self.labels] + latent

    def representation(self, seed: int, closeness: float) -> dict:
        rng = np.random.default_rng(seed)
        arrays = {"labels": self.labels}
        for layer, width in WIDTHS.items():
            own = rng.normal(size=self.shared[layer].shape) * 0.8
            mixed = closeness * self.shared[layer] + (1.0 - closeness) * own
            rotation, _ = np.linalg.qr(rng.normal(size=(width, width)))
            # post-ReLU, as the pooled outputs of a ResNet stage
            arrays[layer] = np.maximum(mixed @ rotation + 0.3, 0.0).astype(np.float32)
        readout = rng.normal(size=(WIDTHS["layer3"], self.classes)) * 0.1
        logits = arrays["layer3"] @ readout + rng.normal(size=(len(self.labels), self.classes))
        logits[np.arange(len(self.labels)), self.labels] += 1.0 + 2.0 * closeness
        arrays["logits"] = logits.astype(np.float32)
        return arrays


def closeness_of(entry) -> float:
    if entry.method == "teacher":
        return 1.0
    if entry.method == "pure":
        return 0.3
    return 0.3 + 0.6 * entry.alpha


def main() -> int:
    args = parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="kdlab-bench-"))
    cpu_started = os.times()
    try:
        study = load_study(STUDY)
        if args.datasets:
            study.datasets = [name for name in args.datasets.split(",") if name]
        study.experiments_dir = work / "experiments"
        study.analysis_dir = work / "analysis"
        entries = analyze.expected_entries(study)
        held_back = next(e for e in entries if e.method not in ("teacher", "pure"))

        started = time.perf_counter()
        generators = {dataset: Generator(dataset, args.samples) for dataset in study.datasets}
        for index, entry in enumerate(entries):
            if entry != held_back:
                save_representation(entry.path, generators[entry.dataset].representation(
                    index, closeness_of(entry)))
        print(f"wrote {len(entries) - 1} synthetic representations of {args.samples} samples "
              f"({', '.join(study.datasets)}) in {time.perf_counter() - started:.1f} s "
              f"under {work}")

        def run(title: str):
            started = time.perf_counter()
            report = analyze.analyze_study(study, jobs=args.jobs, log=lambda line: None,
                                           show_progress=False)
            elapsed = time.perf_counter() - started
            print(f"\n{title}: {elapsed:.1f} s wall ({report.summary()})")
            for step, seconds in report.step_seconds.items():
                print(f"  step {step:<24} {seconds:8.1f} s wall")
            return report, elapsed

        cold, cold_seconds = run(f"first analysis, {args.jobs or 'all'} worker(s)")
        print("  CPU time per metric, summed over all models / pairs (workers run one BLAS "
              "thread each):")
        for name, seconds in sorted(cold.metric_seconds.items(), key=lambda kv: -kv[1]):
            print(f"    {name:<20} {seconds:8.1f} s")
        print(f"  figures drawn: {cold.figures_drawn} "
              f"({len(figures.sweep_metrics())} sweep metrics per data set)")

        save_representation(held_back.path, generators[held_back.dataset].representation(
            len(entries), closeness_of(held_back)))
        warm, warm_seconds = run(f"re-run after adding one run ({held_back.label})")
        print(f"\nsummary: first analysis {cold_seconds:.1f} s (goal < 600 s on 2 cores); "
              f"re-run after one new run {warm_seconds:.1f} s "
              f"({warm.models_computed} model(s), {warm.pairs_computed} pair(s) recomputed, "
              f"{warm.figures_drawn} figures redrawn)")
        times = os.times()
        cpu = (times.user + times.system + times.children_user + times.children_system
               - sum(cpu_started[:4]))
        print(f"CPU time of the whole benchmark (generation included, all processes): "
              f"{cpu:.0f} s; load average now {os.getloadavg()[0]:.1f} "
              f"(other programs on the machine slow the wall times)")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
