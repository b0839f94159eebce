"""Time `kdlab analyze` on the full charlie-sized grid of synthetic representations.

Grid: studies/charlie.toml (4 data sets x (6 methods x 3 alphas + teacher + pure student)
x 3 seeds = 240 representations), each with ``--samples`` test samples (CIFAR: 10,000) of
the real shapes: layer1 [N,16], layer2 [N,32], layer3 [N,64], logits [N,C] with C = 10 /
100 / 10 / 200. Everything is written to a temporary directory.

The representations are synthetic but shaped like a network's: post-ReLU features with
class structure and a decaying spectrum; a student shares a part of its teacher's features
that grows with alpha, seen through a random rotation of its own channels.

Printed: the wall time of each step of a first (cold-cache) analysis without and with
bootstrap intervals and noise floors, side by side (the same representations, each with a
cold cache), the CPU time of each metric summed over all models / pairs, and the time of a
re-run after adding one run (the cache at work). Goals: a first analysis under 10 minutes
on 2 cores (issue 5); intervals and floors add at most 25 %, the re-run stays under 15 s
(issue 15).

Snapshots (issue 25, ``--snapshots K``, default 3): then every student gets K snapshot
representations (epochs 1..K, closer to the teacher as they go), the analysis is re-run and
the snapshots' cost printed beside the first analysis' per-model and pair work (goal: about K
times it); then one more snapshot of one run is added and the re-run must redo only that one
(1 model, 1 pair). ``--snapshots 0`` skips this part.

Usage: python benchmarks/bench_analysis.py [--jobs 2] [--samples 10000] [--snapshots 3]
                                           [--datasets Cifar10,SVHN] [--keep DIR]
A quick run: --samples 2000 --datasets Cifar10 (a quarter of the grid, a fifth of the
samples; the O(n^2) subsamples then cover all 2,000 samples).
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

from kdlab.run import layout
from kdlab.analysis import analyze, figures
from kdlab.analysis.registry import SETTINGS
from kdlab.analysis.store import save_representation
from kdlab.study.study_file import load_study

CLASSES = {"Cifar10": 10, "Cifar100": 100, "SVHN": 10, "TinyImageNet": 200}
WIDTHS = {"layer1": 16, "layer2": 32, "layer3": 64}
STUDY = Path(__file__).resolve().parent.parent / "studies" / "charlie.toml"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (0: all cores)")
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--datasets", default=None, help="comma-separated subset of charlie's")
    parser.add_argument("--keep", default=None, help="work in this directory and keep it")
    parser.add_argument("--snapshots", type=int, default=3,
                        help="snapshot epochs per student for the dynamics part (0: skip it)")
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


def _run(study, jobs: int, title: str, **options):
    started = time.perf_counter()
    report = analyze.analyze_study(study, jobs=jobs, log=lambda line: None, show_progress=False,
                                   **options)
    elapsed = time.perf_counter() - started
    print(f"\n{title}: {elapsed:.1f} s wall ({report.summary()})")
    for step, seconds in report.step_seconds.items():
        print(f"  step {step:<24} {seconds:8.1f} s wall")
    return report, elapsed


def _side_by_side(without, with_both) -> None:
    (cold_off, seconds_off), (cold_on, seconds_on) = without, with_both
    print("\nfirst analysis, side by side (wall s)      without   with intervals+floors")
    for step in cold_on.step_seconds:
        print(f"  {step:<40} {cold_off.step_seconds.get(step, 0.0):8.1f}   "
              f"{cold_on.step_seconds[step]:8.1f}")
    print(f"  {'total':<40} {seconds_off:8.1f}   {seconds_on:8.1f}   "
          f"(+{100 * (seconds_on / seconds_off - 1):.0f} %, goal <= +25 %)")
    cpu_off, cpu_on = sum(cold_off.metric_seconds.values()), sum(cold_on.metric_seconds.values())
    print(f"  {'metric CPU s, all workers (load-proof)':<40} {cpu_off:8.1f}   {cpu_on:8.1f}   "
          f"(+{100 * (cpu_on / cpu_off - 1):.0f} %)")
    print("  CPU time per metric with intervals and floors, summed over all models / pairs "
          "(workers run one BLAS thread each):")
    for name, seconds in sorted(cold_on.metric_seconds.items(), key=lambda kv: -kv[1]):
        print(f"    {name:<28} {seconds:8.1f} s")


def _snapshot_phase(study, entries, generators, args, first) -> None:
    """Snapshots of every student after epochs 1..K; their analysis against the first
    analysis' per-model and pair work, then one more snapshot's incremental re-run."""
    students = [entry for entry in entries if entry.method not in ("teacher", "pure")]
    for index, entry in enumerate(students):
        for epoch in range(1, args.snapshots + 1):
            closeness = closeness_of(entry) * epoch / (args.snapshots + 1)
            save_representation(layout.representation_path(
                study.analysis_dir, study.name, entry.spec, entry.role, epoch=epoch),
                generators[entry.dataset].representation(10_000 * epoch + index, closeness))
    count = len(students) * args.snapshots
    report, seconds = _run(study, args.jobs, f"analysis with {count} snapshots "
                                             f"({args.snapshots} per student)")
    per_model = first.step_seconds.get("per-model metrics", 0.0)
    pairs = first.step_seconds.get("pair metrics", 0.0)
    snapshot_steps = {step: value for step, value in report.step_seconds.items()
                      if "snapshot" in step}
    snapshot_total = sum(snapshot_steps.values())
    baseline = (per_model + pairs) * count / max(len(entries), 1)
    print(f"  snapshot steps: {', '.join(f'{k} {v:.1f} s' for k, v in snapshot_steps.items())}"
          f"; {snapshot_total:.1f} s for {count} snapshots = {snapshot_total / count:.2f} s "
          f"each, against {(per_model + pairs) / max(len(entries), 1):.2f} s per final "
          f"representation in the first analysis (per-model + pair steps): "
          f"{snapshot_total / baseline if baseline else float('nan'):.2f}x its work per model")
    entry = students[0]
    save_representation(layout.representation_path(
        study.analysis_dir, study.name, entry.spec, entry.role, epoch=args.snapshots + 1),
        generators[entry.dataset].representation(99_999, closeness_of(entry)))
    again, again_seconds = _run(study, args.jobs, f"re-run after one new snapshot "
                                                  f"({entry.label} epoch {args.snapshots + 1})")
    print(f"  one new snapshot: {again_seconds:.1f} s; snapshot models computed "
          f"{again.snapshot_models_computed}, pairs {again.snapshot_pairs_computed} "
          f"(goal: 1 and 1), cached {again.snapshot_models_cached} / "
          f"{again.snapshot_pairs_cached}")


def main() -> int:
    args = parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="kdlab-bench-"))
    cpu_started = os.times()
    try:
        study = load_study(STUDY)
        if args.datasets:
            study.datasets = [name for name in args.datasets.split(",") if name]
        study.experiments_dir = work / "experiments"
        study.analysis_dir = work / "without"
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
        without = _run(study, args.jobs, f"first analysis without intervals and floors, "
                                         f"{args.jobs or 'all'} worker(s)",
                       bootstrap=0, floors=False)
        # the same representations, a cold cache, intervals and floors on
        source = layout.representations_dir(study.analysis_dir, study.name)
        study.analysis_dir = work / "with"
        shutil.copytree(source, layout.representations_dir(study.analysis_dir, study.name))
        with_both = _run(study, args.jobs, "first analysis with intervals (bootstrap "
                                           f"{SETTINGS['bootstrap_samples']}) and noise floors")
        _side_by_side(without, with_both)
        print(f"  figures drawn: {with_both[0].figures_drawn} "
              f"({len(figures.sweep_metrics())} sweep metrics per data set)")

        save_representation(held_back.path, generators[held_back.dataset].representation(
            len(entries), closeness_of(held_back)))
        held_back_with = layout.representation_path(study.analysis_dir, study.name,
                                                    held_back.spec, "kd")
        shutil.copy2(held_back.path, held_back_with)
        warm, warm_seconds = _run(study, args.jobs, f"re-run after adding one run "
                                                    f"({held_back.label}), intervals and floors on")
        print(f"\nsummary ({args.samples} samples, {len(study.datasets)} data set(s), "
              f"{args.jobs or 'all'} worker(s)): first analysis {without[1]:.1f} s without, "
              f"{with_both[1]:.1f} s with intervals and floors "
              f"(+{100 * (with_both[1] / without[1] - 1):.0f} %); re-run after one new run "
              f"{warm_seconds:.1f} s ({warm.models_computed} model(s), {warm.pairs_computed} "
              f"pair(s) recomputed, {warm.figures_drawn} figures redrawn; goal < 15 s)")
        if args.snapshots:
            _snapshot_phase(study, entries, generators, args, with_both[0])
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
